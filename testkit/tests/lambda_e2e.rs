//! The built function binaries, run as Lambda runs them: separate processes
//! polling the Runtime API (our emulator), fed API Gateway and EventBridge
//! events, several processes per function standing in for concurrent instances.

use std::time::{Duration, Instant};

use credits_sandbox::{Fault, Route};
use credits_testkit::runtime_api::{EmulatorOptions, Invocation};
use credits_testkit::stack::{
    scheduled_event, within_one_rate_window, Call, Lambda, Reply, Stack, DEMO_USER,
};
use serde_json::{json, Value};

#[tokio::test]
async fn each_binary_serves_its_route_and_nothing_else() {
    let stack = Stack::start().await;
    let currencies = stack.lambda("list-currencies", 1).await;
    let reply = currencies.call(&stack.get("/admin/credits/currencies")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["items"][0]["code"], "CRD");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    currencies.call(&stack.get("/admin/credits/balances/x")).await.assert_error(404, "not_found");

    let balances = stack.lambda("get-balances", 1).await;
    let reply =
        balances.call(&stack.get(&format!("/admin/credits/balances/{DEMO_USER}?include_empty=true"))).await;
    assert_eq!(reply.json()["items"][0]["balance"], 120);
    assert_eq!(reply.header("ratelimit-limit"), Some("120"));

    let adjust = stack.lambda("adjust-credits", 1).await;
    let reply = adjust.call(&stack.adjust(100, Some("e2e-1"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["balance"], 220);
    assert_eq!(reply.json()["notified"], true);
    adjust.call(&stack.adjust(0, None)).await.assert_error(400, "amount_must_be_nonzero");
}

#[tokio::test]
async fn rest_api_payload_v1_events_work_too() {
    let stack = Stack::start().await;
    let adjust = stack.lambda("adjust-credits", 1).await;
    let body = json!({"user_id": DEMO_USER, "amount": 5, "reason": "ZD-5 via REST API"}).to_string();
    let event = json!({
        "resource": "/admin/credits/adjust",
        "path": "/admin/credits/adjust",
        "httpMethod": "POST",
        "headers": {"Authorization": stack.bearer(), "Content-Type": "application/json"},
        "multiValueHeaders": {"Authorization": [stack.bearer()], "Content-Type": ["application/json"]},
        "queryStringParameters": null,
        "multiValueQueryStringParameters": null,
        "pathParameters": null,
        "stageVariables": null,
        "requestContext": {
            "resourcePath": "/admin/credits/adjust", "httpMethod": "POST", "path": "/prod/admin/credits/adjust",
            "stage": "prod", "requestId": "rest-1", "accountId": "123456789012", "apiId": "restapi",
            "identity": {"sourceIp": "127.0.0.1"}, "protocol": "HTTP/1.1", "requestTimeEpoch": 1795000000000u64
        },
        "body": body,
        "isBase64Encoded": false
    });
    let response = adjust.invoke(event).await.into_response();
    assert_eq!(response["statusCode"], 200, "{response}");
    assert!(response["multiValueHeaders"].is_object(), "REST APIs get the payload 1.0 response shape");
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["balance"], 125);
}

#[tokio::test]
async fn forty_concurrent_adjusts_over_four_instances_admit_exactly_thirty() {
    let stack = Stack::start().await;
    let adjust = stack.lambda("adjust-credits", 4).await;
    within_one_rate_window(Duration::from_secs(25)).await;
    let calls: Vec<Call> = (0..40).map(|_| stack.adjust(1, None)).collect();
    let replies = concurrently(&adjust, calls).await;
    let count = |status| replies.iter().filter(|r| r.status == status).count();
    assert_eq!(
        (count(200), count(429)),
        (30, 10),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(stack.revenuecat.applied_transactions().len(), 30);
    assert_eq!(stack.revenuecat.transactions().len(), 30);
    assert_eq!(stack.gateway.unique_envelope_ids().len(), 30);
    let logs = logs_once(&adjust, "40 request lines", |logs| request_lines(logs) >= 40).await;
    let applied = logs.iter().filter(|l| l.contains("\"outcome\":\"applied\"")).count();
    assert_eq!(applied, 30, "one audit line per applied adjustment");
    assert_every_instance_answered(&adjust, 40);
}

/// The function's "request" log lines (one per invocation answered).
fn request_lines(logs: &[String]) -> usize {
    logs.iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "request")
        .count()
}

/// The instances' log lines once `condition` holds on them: a function's
/// output is read on another thread, so a line can arrive after the response
/// it belongs to. Panics after 10 s.
async fn logs_once(lambda: &Lambda, what: &str, condition: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = lambda.logs();
        if condition(&logs) {
            return logs;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {logs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each instance's "request" log lines: every process answered some of the
/// `total` invocations, and together they answered all of them. (Each
/// instance handles one invocation at a time and all were polling before the
/// first was sent, so a concurrent burst reaches every one of them.)
#[track_caller]
fn assert_every_instance_answered(lambda: &Lambda, total: usize) {
    let answered: Vec<usize> =
        lambda.pool.instances().iter().map(|process| request_lines(&process.logs())).collect();
    assert_eq!(answered.iter().sum::<usize>(), total, "answers per instance: {answered:?}");
    assert!(answered.iter().all(|n| *n > 0), "an instance answered nothing: {answered:?}");
}

#[tokio::test]
async fn twenty_concurrent_duplicates_over_four_instances_apply_once() {
    let stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::Delay(Duration::from_millis(700)), 20);
    let adjust = stack.lambda("adjust-credits", 4).await;
    let calls: Vec<Call> = (0..20).map(|_| stack.adjust(9, Some("e2e-dup"))).collect();
    let replies = concurrently(&adjust, calls).await;
    for reply in &replies {
        match reply.status {
            200 => assert_eq!(reply.json()["balance"], 129),
            409 => reply.assert_error(409, "idempotency_key_in_progress"),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(stack.revenuecat.transactions().len(), 1);
    assert_eq!(stack.gateway.envelopes().len(), 1);
    logs_once(&adjust, "20 request lines", |logs| request_lines(logs) >= 20).await;
    assert_every_instance_answered(&adjust, 20);
}

#[tokio::test]
async fn a_process_killed_after_revenuecat_applied_is_settled_by_the_schedule() {
    let stack = Stack::start().await;
    // The dead attempt's lease ends 2 s after this deadline: room for the checks
    // below to run before it lapses, however slowly the machine starts a process.
    let deadline = Duration::from_secs(5);
    let options = EmulatorOptions { deadline, ..Default::default() };
    let mut adjust = stack.lambda_with("adjust-credits", 1, options).await;
    stack.revenuecat.inject(Route::Transaction, Fault::ApplyThenDelay(Duration::from_millis(2500)), 1);

    let emulator = adjust.emulator.clone();
    let event = stack.adjust(60, Some("e2e-crash")).http_api_event();
    let invoked = Instant::now();
    let pending = tokio::spawn(async move { emulator.invoke_with_wait(event, Duration::from_secs(1)).await });
    wait_until(|| stack.revenuecat.applied_transactions().len() == 1, "RevenueCat applies the transaction")
        .await;
    adjust.pool.instance_mut(0).kill();
    assert_eq!(pending.await.unwrap(), Invocation::TimedOut, "the caller never got an answer");
    assert_eq!(stack.revenuecat.balance(DEMO_USER, "CRD"), Some(180));

    let _replacement = adjust.add_instance(&stack, "adjust-credits");
    adjust.emulator.set_deadline(Duration::from_secs(20));
    // Until the dead attempt's lease lapses, a retry is told to wait …
    let lease_lapses = invoked + deadline + Duration::from_millis(credits::handlers::adjust::LEASE_MARGIN_MS);
    let told_to_wait = adjust.call(&stack.adjust(60, Some("e2e-crash"))).await;
    assert!(Instant::now() < lease_lapses, "the retry came too late to find the lease held");
    told_to_wait.assert_error(409, "idempotency_key_in_progress");
    // … and scheduled passes leave it alone; the first pass after the lease
    // lapsed settles it with the recorded RevenueCat key.
    let summary = loop {
        let started = Instant::now();
        let summary = adjust.invoke(scheduled_event()).await.into_response();
        assert_eq!(summary["failed"], 0, "{summary}");
        if summary["settled"] == 1 {
            // The pass's own clock reads at least `started`; the lease must have lapsed by then.
            assert!(Instant::now() + Duration::from_millis(200) >= lease_lapses, "settled inside the lease");
            break summary;
        }
        assert_eq!(summary["settled"], 0, "{summary}");
        assert!(started < lease_lapses + Duration::from_secs(10), "never settled after the lease lapsed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
    assert_eq!(stack.gateway.unique_envelope_ids().len(), 1);
    let retry = adjust.call(&stack.adjust(60, Some("e2e-crash"))).await;
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json()["balance"], 180);
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1, "still applied exactly once");
}

#[tokio::test]
async fn with_the_gateway_down_the_schedule_delivers_the_envelope_once() {
    let stack = Stack::start().await;
    let adjust = stack.lambda("adjust-credits", 1).await;
    stack.gateway.set_down(true);
    let reply = adjust.call(&stack.adjust(15, None)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["notified"], false);
    stack.gateway.set_down(false);
    let summary = adjust.invoke(scheduled_event()).await.into_response();
    assert_eq!(
        summary,
        json!({"redelivered": 1, "settled": 0, "released": 0, "abandoned": 0, "failed": 0,
               "dead_lettered": 0, "unreadable": 0, "complete": true})
    );
    let envelopes = stack.gateway.envelopes();
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0]["payload"]["balance"], 135);
    let again = adjust.invoke(scheduled_event()).await.into_response();
    assert_eq!(again["redelivered"], 0, "a second pass sends nothing");
    assert_eq!(stack.gateway.envelopes().len(), 1);
}

#[tokio::test]
async fn with_dynamodb_unreachable_keyed_adjusts_are_refused_and_the_limiter_fails_open() {
    let mut stack = Stack::start().await;
    stack.set_env("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9");
    let adjust = stack.lambda("adjust-credits", 1).await;
    adjust.call(&stack.adjust(5, Some("e2e-nodb"))).await.assert_error(503, "idempotency_store_unavailable");
    assert_eq!(stack.revenuecat.request_count(Route::Transaction), 0, "nothing applied");
    let reply = adjust.call(&stack.adjust(5, None)).await;
    assert_eq!(reply.status, 200, "admin work does not stop: {}", reply.body);
    assert!(reply.header("ratelimit-limit").is_none());
    logs_once(&adjust, "the limiter's ERROR", |logs| {
        logs.iter().any(|l| l.contains("\"level\":\"ERROR\"") && l.contains("rate limiter unavailable"))
    })
    .await;
}

#[tokio::test]
async fn logs_are_json_lines_with_an_audit_line_and_no_secrets() {
    let stack = Stack::start().await;
    let adjust = stack.lambda("adjust-credits", 1).await;
    adjust.call(&stack.adjust(11, Some("e2e-audit"))).await;
    adjust.call(&stack.adjust(-5000, None)).await.assert_error(409, "insufficient_balance");
    adjust.call(&stack.adjust(1, None).header("authorization", "Bearer adm_wrong_guess")).await;
    // The refusal's audit line comes after every line of the two calls before.
    let logs = logs_once(&adjust, "the refusal's audit line", |logs| {
        logs.iter().any(|l| l.contains("\"message\":\"refused\"") && l.contains("invalid_admin_secret"))
    })
    .await;
    let lines: Vec<Value> = logs.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(lines.len(), logs.len(), "every line is JSON: {logs:#?}");
    let audits: Vec<&Value> = lines.iter().filter(|l| l["target"] == "audit").collect();
    let applied = audits.iter().find(|a| a["outcome"] == "applied").expect("an audit line for the grant");
    assert_eq!(applied["user_id"], DEMO_USER);
    assert_eq!(applied["amount"], 11);
    assert_eq!(applied["currency"], "CRD");
    assert_eq!(applied["reason"], "ZD-1234 test adjustment");
    assert_eq!(applied["idempotency_key"], "e2e-audit");
    assert!(applied["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(applied["rc_latency_ms"].is_u64());
    assert_eq!(applied["source_ip"], "127.0.0.1", "who: API Gateway's view of the caller");
    assert_eq!(applied["user_agent"], "credits-testkit");
    let refused =
        lines.iter().find(|l| l["message"] == "refused" && l["status"] == 403).expect("refusals are audited");
    assert_eq!(refused["target"], "audit");
    assert_eq!(refused["detail"], "invalid_admin_secret");
    assert_eq!(refused["route"], "/admin/credits/adjust");
    assert_eq!(refused["source_ip"], "127.0.0.1");
    assert!(audits.iter().any(|a| a["outcome"] == "rejected:unprocessable_entity_error"));
    let everything = logs.join("\n");
    for secret in [stack.admin_token.as_str(), &stack.revenuecat.api_key(), &stack.secret_json()] {
        assert!(!everything.contains(secret), "a log line leaks a secret");
    }
    assert!(!everything.contains("adm_wrong_guess"), "not even a wrong token is logged");
}

#[tokio::test]
async fn lambda_log_format_and_level_controls_are_honoured() {
    let mut stack = Stack::start().await;
    stack.set_env("AWS_LAMBDA_LOG_FORMAT", "Text");
    let text = stack.lambda("get-balances", 1).await;
    text.call(&stack.get(&format!("/admin/credits/balances/{DEMO_USER}"))).await;
    let logs = logs_once(&text, "an INFO request line", |logs| {
        logs.iter().any(|l| l.contains("INFO") && l.contains("request"))
    })
    .await;
    // Metrics are EMF documents, JSON by definition, whatever the log format.
    assert!(
        logs.iter()
            .filter(|l| !l.starts_with("{\"_aws\""))
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "Text means plain lines: {logs:#?}"
    );

    // At WARN an instance whose rate-limit table is missing still logs that
    // (ERROR), and nothing at INFO or below: the request line is gone.
    stack.set_env("AWS_LAMBDA_LOG_FORMAT", "JSON");
    stack.set_env("AWS_LAMBDA_LOG_LEVEL", "WARN");
    stack.set_env("TABLE_NAME", "credits-table-that-does-not-exist");
    let quiet = stack.lambda("get-balances", 1).await;
    for _ in 0..2 {
        assert_eq!(quiet.call(&stack.get(&format!("/admin/credits/balances/{DEMO_USER}"))).await.status, 200);
    }
    // The second request's ERROR comes after every line the first one wrote.
    let logs = logs_once(&quiet, "two ERROR lines", |logs| {
        logs.iter().filter(|l| l.contains("rate limiter unavailable")).count() >= 2
    })
    .await;
    let levels: Vec<String> = logs
        .iter()
        .filter(|l| !l.starts_with("{\"_aws\""))
        .map(|l| {
            let line: Value = serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"));
            line["level"].as_str().unwrap_or_else(|| panic!("no level: {l}")).to_owned()
        })
        .collect();
    assert!(
        levels.iter().any(|level| level == "ERROR")
            && logs.iter().any(|l| l.contains("rate limiter unavailable")),
        "the ERROR is logged at WARN: {logs:#?}"
    );
    assert!(levels.iter().all(|level| level == "WARN" || level == "ERROR"), "{logs:#?}");
}

#[tokio::test]
async fn an_unrecognised_event_is_an_invocation_error_and_the_process_lives_on() {
    let stack = Stack::start().await;
    let adjust = stack.lambda("adjust-credits", 1).await;
    let error = adjust.invoke(json!({"hello": "world"})).await.into_error();
    assert!(error["errorMessage"].as_str().unwrap_or_default().contains("unsupported event"), "{error}");
    assert_eq!(adjust.call(&stack.adjust(1, None)).await.status, 200);
}

async fn concurrently(lambda: &Lambda, calls: Vec<Call>) -> Vec<Reply> {
    futures::future::join_all(calls.iter().map(|call| lambda.call(call))).await
}

async fn wait_until(condition: impl Fn() -> bool, what: &str) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}
