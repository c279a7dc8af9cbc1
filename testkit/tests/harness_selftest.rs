//! Proves the harness itself: moto is reachable and atomic, the AWS fixtures
//! work, the Runtime API emulator follows the protocol, and function processes
//! can be spawned, invoked, crashed and pooled.
//!
//! Needs `scripts/setup-test-env.sh` to have been run once.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use credits_testkit::aws::{self, dynamodb_client};
use credits_testkit::function::{function_binary, FunctionPool, FunctionProcess};
use credits_testkit::moto::MotoServer;
use credits_testkit::runtime_api::{EmulatorOptions, Invocation, RuntimeApiEmulator};
use serde_json::{json, Value};
use tokio::task::JoinSet;

const FAKE_FUNCTION: &str = "testkit-fake-function";

fn moto() -> String {
    MotoServer::shared().endpoint_url()
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

// ---------------------------------------------------------------- moto + aws

#[tokio::test]
async fn create_table_has_the_functions_key_schema_and_ttl() {
    let endpoint = moto();
    let table = aws::unique_name("selftest-schema");
    aws::create_table(&endpoint, &table).await;

    let client = dynamodb_client(&endpoint);
    let description = client.describe_table().table_name(&table).send().await.unwrap().table.unwrap();
    let keys: Vec<(String, String)> = description
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name().to_owned(), k.key_type().as_str().to_owned()))
        .collect();
    assert_eq!(keys, [("pk".into(), "HASH".into()), ("sk".into(), "RANGE".into())]);

    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .time_to_live_description
        .unwrap();
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
    assert_eq!(ttl.time_to_live_status().unwrap().as_str(), "ENABLED");
}

/// One admission attempt against a counter capped at `limit`, the pattern a
/// rate limiter uses. `Err` carries the item returned by the failed check.
async fn conditional_add(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: &str,
    limit: u32,
) -> Result<(), HashMap<String, AttributeValue>> {
    let result = client
        .update_item()
        .table_name(table)
        .key("pk", s(pk))
        .key("sk", s("counter"))
        .update_expression("ADD #c :one")
        .condition_expression("attribute_not_exists(#c) OR #c < :limit")
        .expression_attribute_names("#c", "count")
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .expression_attribute_values(":limit", AttributeValue::N(limit.to_string()))
        .return_values(ReturnValue::UpdatedNew)
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) => match e.into_service_error() {
            UpdateItemError::ConditionalCheckFailedException(e) => Err(e.item().cloned().unwrap_or_default()),
            other => panic!("unexpected UpdateItem error: {other:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_adds_admit_exactly_the_limit() {
    const ATTEMPTS: usize = 50;
    const LIMIT: u32 = 30;
    let endpoint = moto();
    let table = aws::unique_name("selftest-atomic");
    aws::create_table(&endpoint, &table).await;
    let client = dynamodb_client(&endpoint);

    for round in 0..3 {
        let pk = format!("round-{round}");
        let mut attempts = JoinSet::new();
        for _ in 0..ATTEMPTS {
            let (client, table, pk) = (client.clone(), table.clone(), pk.clone());
            attempts.spawn(async move { conditional_add(&client, &table, &pk, LIMIT).await });
        }
        let outcomes = attempts.join_all().await;

        let admitted = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(admitted, LIMIT as usize, "round {round} admitted {admitted}");
        for rejected in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            // ReturnValuesOnConditionCheckFailure=ALL_OLD: the item at its cap.
            assert_eq!(rejected.get("count"), Some(&AttributeValue::N("30".into())));
        }
        let item = client
            .get_item()
            .table_name(&table)
            .key("pk", s(&pk))
            .key("sk", s("counter"))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .unwrap();
        assert_eq!(item["count"], AttributeValue::N("30".into()));
    }
}

#[tokio::test]
async fn transact_write_items_commit_and_cancel() {
    let endpoint = moto();
    let table = aws::unique_name("selftest-txn");
    aws::create_table(&endpoint, &table).await;
    let client = dynamodb_client(&endpoint);

    let put_once = || {
        let put = Put::builder()
            .table_name(&table)
            .item("pk", s("user#1"))
            .item("sk", s("ledger#1"))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .unwrap();
        TransactWriteItem::builder().put(put).build()
    };
    let add_balance = || {
        let update = Update::builder()
            .table_name(&table)
            .key("pk", s("user#1"))
            .key("sk", s("balance"))
            .update_expression("ADD #b :amount")
            .expression_attribute_names("#b", "balance")
            .expression_attribute_values(":amount", AttributeValue::N("5".into()))
            .build()
            .unwrap();
        TransactWriteItem::builder().update(update).build()
    };
    let write =
        || client.transact_write_items().transact_items(put_once()).transact_items(add_balance()).send();

    write().await.expect("first transaction commits");
    let err = write().await.expect_err("second transaction is cancelled");
    let cancelled = err
        .as_service_error()
        .and_then(|e| match e {
            aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => Some(c),
            _ => None,
        })
        .unwrap_or_else(|| panic!("expected TransactionCanceledException, got {err:?}"));
    let codes: Vec<_> =
        cancelled.cancellation_reasons().iter().map(|r| r.code().unwrap_or_default().to_owned()).collect();
    assert_eq!(codes[0], "ConditionalCheckFailed");

    // All or nothing: the balance was added once, by the first transaction.
    let balance = client
        .get_item()
        .table_name(&table)
        .key("pk", s("user#1"))
        .key("sk", s("balance"))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(balance["balance"], AttributeValue::N("5".into()));
}

#[tokio::test]
async fn secrets_can_be_created_rotated_read_and_deleted() {
    let endpoint = moto();
    let name = aws::unique_name("selftest/secret");
    aws::put_secret(&endpoint, &name, "v1").await;
    assert_eq!(aws::get_secret(&endpoint, &name).await, "v1");

    aws::put_secret(&endpoint, &name, "v2").await;
    assert_eq!(aws::get_secret(&endpoint, &name).await, "v2");

    aws::delete_secret(&endpoint, &name).await;
    let err = aws::secrets_client(&endpoint)
        .get_secret_value()
        .secret_id(&name)
        .send()
        .await
        .expect_err("deleted secret is gone");
    assert!(err.into_service_error().is_resource_not_found_exception());
}

#[tokio::test]
async fn private_server_is_isolated_and_can_be_stopped() {
    let mut private = MotoServer::start_private();
    let endpoint = private.endpoint_url();
    assert_ne!(endpoint, moto());
    let table = aws::unique_name("selftest-private");
    aws::create_table(&endpoint, &table).await;
    let tables = |endpoint: String| async move { dynamodb_client(&endpoint).list_tables().send().await };
    let names = tables(endpoint.clone()).await.unwrap().table_names;
    assert_eq!(names, Some(vec![table]));

    private.stop();
    let err = tables(endpoint).await.expect_err("stopped server is unreachable");
    assert!(
        matches!(err, aws_sdk_dynamodb::error::SdkError::DispatchFailure(_)),
        "expected a connection failure, got {err:?}"
    );
    // The shared server is unaffected.
    tables(moto()).await.unwrap();
}

#[test]
fn aws_env_points_children_at_the_endpoint_with_static_credentials() {
    let env: HashMap<_, _> = aws::aws_env("http://127.0.0.1:1").into_iter().collect();
    assert_eq!(env["AWS_ENDPOINT_URL"], "http://127.0.0.1:1");
    assert_eq!(env["AWS_ACCESS_KEY_ID"], "testing");
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "testing");
    assert_eq!(env["AWS_REGION"], "us-east-1");
    assert_eq!(env["AWS_EC2_METADATA_DISABLED"], "true");
    assert_eq!(env["AWS_CONFIG_FILE"], "/dev/null");
    assert_eq!(env["AWS_SHARED_CREDENTIALS_FILE"], "/dev/null");
    assert_ne!(aws::unique_name("t"), aws::unique_name("t"));
}

// ------------------------------------------------- emulator + fake runtime

/// A tiny runtime client: what a Lambda runtime does for one invocation.
struct FakeRuntime {
    http: reqwest::Client,
    base: String,
}

/// One invocation as a runtime receives it.
struct Received {
    request_id: String,
    headers: reqwest::header::HeaderMap,
    event: Value,
}

impl FakeRuntime {
    fn new(emulator: &RuntimeApiEmulator) -> FakeRuntime {
        FakeRuntime {
            http: reqwest::Client::new(),
            base: format!("http://{}/2018-06-01/runtime", emulator.address()),
        }
    }

    async fn next(&self) -> Received {
        let response = self
            .http
            .get(format!("{}/invocation/next", self.base))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        let headers = response.headers().clone();
        let request_id = headers["lambda-runtime-aws-request-id"].to_str().unwrap().to_owned();
        let event = response.json().await.unwrap();
        Received { request_id, headers, event }
    }

    /// Posts to `invocation/{id}/{kind}` and returns the HTTP status.
    async fn post(&self, request_id: &str, kind: &str, body: Value) -> u16 {
        self.http
            .post(format!("{}/invocation/{request_id}/{kind}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

#[tokio::test]
async fn emulator_delivers_an_event_with_the_documented_headers() {
    let emulator = RuntimeApiEmulator::start_with(EmulatorOptions {
        function_name: "adjust-credits".into(),
        ..EmulatorOptions::default()
    })
    .await;
    let runtime = FakeRuntime::new(&emulator);
    let before = now_ms();
    let function = tokio::spawn(async move {
        let received = runtime.next().await;
        let status = runtime.post(&received.request_id, "response", json!({ "got": received.event })).await;
        (received, status)
    });

    let outcome = emulator.invoke(json!({ "hello": "world" })).await;
    assert_eq!(outcome.into_response(), json!({ "got": { "hello": "world" } }));

    let (received, status) = function.await.unwrap();
    assert_eq!(status, 202);
    let header = |name: &str| received.headers[name].to_str().unwrap().to_owned();
    let deadline: u128 = header("lambda-runtime-deadline-ms").parse().unwrap();
    assert!(
        (before + 9_000..=now_ms() + 10_000).contains(&deadline),
        "deadline {deadline} is not ~10 s from now"
    );
    assert_eq!(
        header("lambda-runtime-invoked-function-arn"),
        "arn:aws:lambda:us-east-1:123456789012:function:adjust-credits"
    );
    assert!(header("lambda-runtime-trace-id").starts_with("Root=1-"));
    assert_eq!(received.request_id.len(), 36, "a UUID request id");
    assert_eq!(emulator.poll_count(), 1);
    assert_eq!(emulator.delivered_count(), 1);
}

#[tokio::test]
async fn emulator_reports_function_errors_and_init_errors() {
    let emulator = RuntimeApiEmulator::start().await;
    let runtime = FakeRuntime::new(&emulator);
    let function = tokio::spawn(async move {
        let received = runtime.next().await;
        let error = json!({ "errorType": "Boom", "errorMessage": "it broke" });
        let first = runtime.post(&received.request_id, "error", error).await;
        // A second outcome for the same invocation is a protocol violation.
        let second = runtime.post(&received.request_id, "response", json!(1)).await;
        let unknown = runtime.post("no-such-id", "response", json!(1)).await;
        let init = runtime
            .http
            .post(format!("{}/init/error", runtime.base))
            .json(&json!({ "errorType": "Runtime.InitError", "errorMessage": "no config" }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        (first, second, unknown, init)
    });

    let error = emulator.invoke(json!({})).await.into_error();
    assert_eq!(error["errorType"], "Boom");
    assert_eq!(function.await.unwrap(), (202, 400, 400, 202));
    assert_eq!(emulator.init_errors()[0]["errorMessage"], "no config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pollers_each_get_distinct_invocations() {
    const POLLERS: usize = 2;
    const INVOCATIONS: usize = 20;
    let emulator = RuntimeApiEmulator::start().await;
    emulator.set_deadline(Duration::from_secs(3));

    let mut pollers = JoinSet::new();
    for poller in 0..POLLERS {
        let runtime = FakeRuntime::new(&emulator);
        pollers.spawn(async move {
            let mut request_ids = Vec::new();
            loop {
                let received = runtime.next().await;
                if received.event["stop"] == json!(true) {
                    runtime.post(&received.request_id, "response", json!("bye")).await;
                    return request_ids;
                }
                // Hold the invocation a moment so the other poller gets work.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let body = json!({ "poller": poller, "n": received.event["n"] });
                runtime.post(&received.request_id, "response", body).await;
                request_ids.push(received.request_id);
            }
        });
    }
    assert!(emulator.wait_for_pollers(POLLERS, Duration::from_secs(5)).await);

    let mut invocations = JoinSet::new();
    for n in 0..INVOCATIONS {
        let emulator = emulator.clone();
        invocations.spawn(async move { emulator.invoke(json!({ "n": n })).await.into_response() });
    }
    let responses = invocations.join_all().await;
    let numbers: HashSet<_> = responses.iter().map(|r| r["n"].as_u64().unwrap()).collect();
    assert_eq!(numbers.len(), INVOCATIONS, "every invocation answered once");
    let used_pollers: HashSet<_> = responses.iter().map(|r| r["poller"].clone()).collect();
    assert_eq!(used_pollers.len(), POLLERS, "both pollers took work");

    for _ in 0..POLLERS {
        emulator.invoke(json!({ "stop": true })).await.into_response();
    }
    let handled: Vec<String> = pollers.join_all().await.into_iter().flatten().collect();
    assert_eq!(handled.len(), INVOCATIONS);
    assert_eq!(handled.iter().collect::<HashSet<_>>().len(), INVOCATIONS);
    assert_eq!(emulator.delivered_count(), INVOCATIONS + POLLERS);
}

#[tokio::test]
async fn timed_out_invocations_are_withdrawn() {
    let emulator = RuntimeApiEmulator::start().await;
    emulator.set_invoke_wait(Duration::from_millis(200));

    // Nobody polls: the invocation times out and is never delivered later.
    assert_eq!(emulator.invoke(json!({ "n": 1 })).await, Invocation::TimedOut);
    let runtime = FakeRuntime::new(&emulator);
    let late_poll = tokio::time::timeout(Duration::from_millis(300), runtime.next()).await;
    assert!(late_poll.is_err(), "a withdrawn invocation must not be delivered");

    // A function that answers after the caller gave up gets 410, like Lambda.
    let function = tokio::spawn(async move {
        let received = runtime.next().await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        runtime.post(&received.request_id, "response", json!("late")).await
    });
    assert_eq!(emulator.invoke(json!({ "n": 2 })).await, Invocation::TimedOut);
    assert_eq!(function.await.unwrap(), 410);
}

#[tokio::test]
async fn a_poller_that_disconnects_does_not_swallow_an_invocation() {
    let emulator = RuntimeApiEmulator::start().await;
    let runtime = FakeRuntime::new(&emulator);
    // The client gives up on its long-poll (as a killed process would).
    let abandoned = tokio::time::timeout(Duration::from_millis(200), runtime.next()).await;
    assert!(abandoned.is_err());

    // Invoke at once, before the emulator has necessarily seen the EOF.
    let function = tokio::spawn(async move {
        let received = runtime.next().await;
        runtime.post(&received.request_id, "response", json!("ok")).await
    });
    assert_eq!(emulator.invoke(json!({})).await, Invocation::Response(json!("ok")));
    assert_eq!(function.await.unwrap(), 202);
    assert!(
        wait_until(Duration::from_secs(2), || emulator.waiting_pollers() == 0).await,
        "the abandoned poll is no longer counted as waiting"
    );
}

async fn wait_until(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

// ------------------------------------------------------- function processes

#[tokio::test]
async fn function_process_runs_with_the_lambda_environment() {
    assert_eq!(
        function_binary(FAKE_FUNCTION),
        std::path::Path::new(env!("CARGO_BIN_EXE_testkit-fake-function"))
    );
    let emulator = RuntimeApiEmulator::start().await;
    let mut function = FunctionProcess::spawn(FAKE_FUNCTION, [("GREETING", "hello")], &emulator);
    assert!(function.wait_for_log("fake-function started", Duration::from_secs(5)).await);

    let event = json!({ "env": [
        "GREETING", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_LOG_FORMAT",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "CARGO_MANIFEST_DIR"
    ] });
    let response = emulator.invoke(event).await.into_response();
    assert_eq!(response["pid"], function.pid());
    let env = &response["env"];
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], FAKE_FUNCTION);
    assert_eq!(env["AWS_LAMBDA_LOG_FORMAT"], "JSON");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "128");
    assert_eq!(env["CARGO_MANIFEST_DIR"], Value::Null, "test env is not inherited");

    let error = emulator.invoke(json!({ "fail": "nope" })).await.into_error();
    assert_eq!(error["errorMessage"], "nope");
    // Output is read on another thread: the line may trail the answer.
    assert!(function.wait_for_log("handling", Duration::from_secs(5)).await, "{:?}", function.logs());

    function.kill();
    assert!(function.try_exit_status().is_some());
    let outcome = emulator.invoke_with_wait(json!({}), Duration::from_millis(300)).await;
    assert_eq!(outcome, Invocation::TimedOut, "a killed function answers nothing");
}

#[tokio::test]
async fn function_init_errors_reach_the_emulator() {
    let emulator = RuntimeApiEmulator::start().await;
    let mut function = FunctionProcess::spawn(FAKE_FUNCTION, [("FAKE_INIT_ERROR", "bad config")], &emulator);
    let status = function.wait_for_exit(Duration::from_secs(5)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert_eq!(emulator.init_errors()[0]["errorMessage"], "bad config");
    assert!(function.wait_for_log("init failed", Duration::from_secs(5)).await, "{:?}", function.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_pool_spreads_invocations_and_survives_a_crash() {
    const INSTANCES: usize = 3;
    let emulator = RuntimeApiEmulator::start().await;
    let no_env: [(&str, &str); 0] = [];
    let mut pool = FunctionPool::spawn(FAKE_FUNCTION, INSTANCES, no_env, &emulator);
    assert_eq!(pool.len(), INSTANCES);
    assert!(emulator.wait_for_pollers(INSTANCES, Duration::from_secs(10)).await, "all instances poll");

    // Slow invocations in parallel: each instance must take one.
    let mut invocations = JoinSet::new();
    for _ in 0..INSTANCES {
        let emulator = emulator.clone();
        invocations.spawn(async move { emulator.invoke(json!({ "sleep_ms": 300 })).await.into_response() });
    }
    let pids: HashSet<_> = invocations.join_all().await.iter().map(|r| r["pid"].as_u64().unwrap()).collect();
    let expected: HashSet<_> = pool.instances().iter().map(|p| u64::from(p.pid())).collect();
    assert_eq!(pids, expected);

    // An instance that crashes mid-invocation leaves the caller timing out;
    // the others keep serving.
    let outcome = emulator.invoke_with_wait(json!({ "crash": true }), Duration::from_secs(2)).await;
    assert_eq!(outcome, Invocation::TimedOut);
    let crashed = wait_until(Duration::from_secs(5), || {
        pool.instances().iter().filter(|p| !is_alive(p.pid())).count() == 1
    })
    .await;
    assert!(crashed, "exactly one instance crashed");
    let response = emulator.invoke(json!({ "after": "crash" })).await.into_response();
    assert_eq!(response["echo"]["after"], "crash");

    // Killing a parked instance must not make the next invocations vanish
    // into its dead connection.
    let victim = pool.instances().iter().position(|p| is_alive(p.pid())).unwrap();
    pool.instance_mut(victim).kill();
    for n in 0..5 {
        let response = emulator.invoke(json!({ "n": n })).await.into_response();
        assert_ne!(response["pid"], pool.instances()[victim].pid());
    }
    assert!(pool.logs().iter().any(|l| l.contains("fake-function started")));
}

/// Whether `pid` is a live (not zombie) process, from /proc.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // Field 3, after the parenthesised command name, is the state.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------- in-process logs

/// What the code under test logs in-process reaches the suite log the secret
/// scan reads: its own crates' events anywhere, other crates' events only
/// inside `code_under_test` (the harness's own calls stay out).
#[tokio::test]
async fn in_process_logs_of_the_code_under_test_reach_the_suite_log() {
    use tracing::Instrument;
    credits_testkit::logs::capture_in_process_logs();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    tracing::trace!(target: "credits::probe", "service event {marker}");
    async { tracing::trace!(target: "some_dependency", "dependency event inside {marker}") }
        .instrument(credits_testkit::logs::code_under_test())
        .await;
    tracing::info!(target: "some_dependency", "harness event outside {marker}");

    let exe = std::env::current_exe().unwrap();
    let log =
        credits_testkit::suite_log_dir().join(format!("{}.log", exe.file_name().unwrap().to_string_lossy()));
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
        .lines()
        .filter(|l| l.contains(&marker))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let messages: Vec<&str> = lines.iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert_eq!(
        messages,
        [format!("service event {marker}"), format!("dependency event inside {marker}")],
        "{lines:#?}"
    );
    assert_eq!(lines[0]["level"], "TRACE");
}
