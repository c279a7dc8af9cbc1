//! A minimal Lambda function speaking the Runtime API directly, used by the
//! harness self-test to exercise `FunctionProcess`/`FunctionPool` without
//! depending on the real functions.
//!
//! The event drives its behaviour:
//! * `{"fail": "message"}` — posts an invocation error;
//! * `{"crash": true}` — exits abruptly without answering;
//! * `{"sleep_ms": n}` — sleeps before answering;
//! * `{"env": ["NAME", ...]}` — includes those variables in the response;
//! * anything — answers `{"echo": event, "pid": ..., "function_name": ...}`.
//!
//! With `FAKE_INIT_ERROR=message` set it reports an init error and exits.

use std::time::Duration;

use serde_json::{json, Map, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").expect("AWS_LAMBDA_RUNTIME_API is set");
    let base = format!("http://{api}/2018-06-01/runtime");
    let client = reqwest::Client::new();
    let pid = std::process::id();

    if let Ok(message) = std::env::var("FAKE_INIT_ERROR") {
        eprintln!("fake-function init failed: {message}");
        let body = json!({ "errorType": "Runtime.InitError", "errorMessage": message });
        let _ = client.post(format!("{base}/init/error")).json(&body).send().await;
        std::process::exit(1);
    }
    println!("fake-function started pid={pid}");

    loop {
        let next = client.get(format!("{base}/invocation/next")).send().await.expect("poll /invocation/next");
        let request_id = next
            .headers()
            .get("lambda-runtime-aws-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("request id header")
            .to_owned();
        let event: Value = next.json().await.expect("event is JSON");
        eprintln!("fake-function pid={pid} handling {request_id}");

        if event["crash"] == json!(true) {
            std::process::exit(101);
        }
        if let Some(ms) = event["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let (path, body) = match event["fail"].as_str() {
            Some(message) => ("error", json!({ "errorType": "FakeError", "errorMessage": message })),
            None => ("response", echo(&event, pid)),
        };
        client
            .post(format!("{base}/invocation/{request_id}/{path}"))
            .json(&body)
            .send()
            .await
            .expect("post the outcome");
    }
}

fn echo(event: &Value, pid: u32) -> Value {
    let env: Map<String, Value> = event["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|name| (name.to_owned(), std::env::var(name).map_or(Value::Null, Value::String)))
        .collect();
    json!({
        "echo": event,
        "pid": pid,
        "function_name": std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok(),
        "env": env,
    })
}
