//! Every `events/*.json` (the files `sam local invoke -e` takes) runs through
//! its function binary under the Runtime API emulator and gets the status its
//! `_expect` block documents.

use std::collections::BTreeMap;

use credits_testkit::repo_root;
use credits_testkit::stack::{Reply, Stack};
use serde_json::Value;

/// The token the event files carry (see events/env.json and docs/deploy.md).
const EXAMPLE_TOKEN: &str = "adm_local_example_token";

#[tokio::test]
async fn every_sam_event_file_gets_the_status_it_documents() {
    let mut stack = Stack::start().await;
    stack.rotate_admin_token(EXAMPLE_TOKEN).await;
    let template = std::fs::read_to_string(repo_root().join("template.yaml")).expect("template.yaml");

    let mut by_binary: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("events"))
        .expect("events/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("env.json"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "events/ holds an event per route and error case");
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let event: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect(&name);
        let expect = &event["_expect"];
        let function = expect["function"].as_str().unwrap_or_else(|| panic!("{name}: _expect.function"));
        assert!(template.contains(&format!("  {function}:")), "{name}: {function} is not in template.yaml");
        by_binary.entry(expect["binary"].as_str().unwrap().to_owned()).or_default().push((name, event));
    }

    let mut checked = 0;
    for (binary, events) in by_binary {
        let lambda = stack.lambda(&binary, 1).await;
        for (name, event) in events {
            let expect = event["_expect"].clone();
            let response = lambda.invoke(event).await.into_response();
            match expect["status"].as_u64() {
                None => {
                    assert_eq!(response["complete"], true, "{name}: a reconciliation summary: {response}")
                }
                Some(status) => {
                    let reply = Reply::from_proxy_response(&response);
                    assert_eq!(u64::from(reply.status), status, "{name}: {}", reply.body);
                    if let Some(detail) = expect["detail"].as_str() {
                        assert!(reply.detail().starts_with(detail), "{name}: {}", reply.body);
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 10);
}
