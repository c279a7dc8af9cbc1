//! `credits-local` as a developer runs it: the binary, its banner, the three
//! routes on embedded defaults, and a clean stop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use credits_testkit::function::function_binary;
use serde_json::{json, Value};

const TOKEN: &str = "adm_local_test_token";

#[tokio::test]
async fn the_local_runner_serves_every_route_on_embedded_defaults() {
    let mut child = Command::new(function_binary("credits-local"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start credits-local");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    let url = loop {
        let line = lines.recv_timeout(Duration::from_secs(20)).expect("a banner line");
        banner.push(line.clone());
        if let Some(url) = line.strip_prefix("credits-admin (local) listening on ") {
            break url.to_owned();
        }
    };
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
        banner.push(line);
    }
    let banner = banner.join("\n");
    assert!(banner.contains(&format!("admin token: {TOKEN}")));
    assert!(
        banner.contains("embedded sandbox") && banner.contains("in memory") && banner.contains("printed")
    );
    assert_eq!(banner.matches("curl -s").count(), 5, "four API examples and the reconcile one:\n{banner}");
    assert!(banner.contains("/admin/credits/ledger/user_2abcXYZ"), "the ledger is in the banner:\n{banner}");

    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{url}{path}")).bearer_auth(TOKEN).send();

    let index: Value = client.get(format!("{url}/")).send().await.unwrap().json().await.unwrap();
    assert_eq!(index["routes"].as_array().unwrap().len(), 4);

    let currencies = get("/admin/credits/currencies").await.unwrap();
    assert_eq!(currencies.status(), 200);
    assert_eq!(currencies.headers()["ratelimit-limit"], "60");
    let body: Value = currencies.json().await.unwrap();
    assert_eq!(body["items"][0]["code"], "CRD");

    let balances: Value = get("/admin/credits/balances/user_2abcXYZ").await.unwrap().json().await.unwrap();
    assert_eq!(balances["items"][0]["balance"], 120);

    let adjust = || {
        client
            .post(format!("{url}/admin/credits/adjust"))
            .bearer_auth(TOKEN)
            .json(&json!({"user_id": "user_2abcXYZ", "amount": 100, "reason": "ZD-1234 goodwill",
                "idempotency_key": "ZD-1234-grant", "actor": "ana@example.com"}))
            .send()
    };
    let first = adjust().await.unwrap();
    assert_eq!(first.headers()["ratelimit-remaining"], "29");
    let first: Value = first.json().await.unwrap();
    assert_eq!((first["balance"].clone(), first["replayed"].clone()), (json!(220), json!(false)));
    let second = adjust().await.unwrap();
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!((second["balance"].clone(), second["replayed"].clone()), (json!(220), json!(true)));

    // The adjustment is in the ledger, once, with who and why.
    let ledger: Value = get("/admin/credits/ledger/user_2abcXYZ").await.unwrap().json().await.unwrap();
    let items = ledger["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{ledger}");
    assert_eq!(
        (items[0]["actor"].as_str(), items[0]["reason"].as_str()),
        (Some("ana@example.com"), Some("ZD-1234 goodwill"))
    );
    assert_eq!(
        (items[0]["balance_after"].as_i64(), items[0]["status"].as_str()),
        (Some(220), Some("applied"))
    );

    let unauthorised = client.get(format!("{url}/admin/credits/currencies")).send().await.unwrap();
    assert_eq!(unauthorised.status(), 401);
    assert_eq!(unauthorised.json::<Value>().await.unwrap(), json!({"detail": "missing_bearer"}));

    let summary: Value =
        client.post(format!("{url}/_local/reconcile")).send().await.unwrap().json().await.unwrap();
    assert_eq!(summary["complete"], true);

    // The envelope went to the log, since no GATEWAY_URL was given.
    let mut output = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
        output.push(line);
    }
    assert!(output.iter().any(|l| l.contains("usage.changed") && l.contains("\"delta\":100")), "{output:#?}");

    // SIGTERM (like Ctrl-C's SIGINT) stops it cleanly.
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let status = wait_for_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

fn wait_for_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("credits-local did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
