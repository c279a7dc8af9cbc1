//! What is deployed is what was tested: the arm64 `bootstrap` files `sam
//! build` produced (`.aws-sam/build/<Function>/bootstrap`: cargo-lambda, zig,
//! the release profile with `panic = "abort"`), run under `qemu-aarch64` as
//! Lambda runs them — processes polling the Runtime API emulator — against
//! moto and the stand-ins, with the environment of `events/env.json`.
//!
//! `scripts/sam-smoke` builds them and runs this suite with
//! `CREDITS_ARM64_BUILD_DIR` set. `cargo test --workspace` leaves it out
//! (`test = false` in Cargo.toml: there is nothing to run before `sam build`);
//! run by name without that variable, every test fails.

use std::time::Duration;

use credits_sandbox::{Fault, Route};
use credits_testkit::moto::MotoServer;
use credits_testkit::runtime_api::EmulatorOptions;
use credits_testkit::sam::{self, SamBuild, EXAMPLE_TOKEN};
use credits_testkit::stack::{within_one_rate_window, Call, Lambda, Reply, Stack};
use serde_json::Value;

/// template.yaml's function timeout: the deadline each invocation gets.
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(20);

/// A stack on its own moto, with the table and secret names of
/// events/env.json and the admin token the event files carry.
async fn env_json_stack() -> (MotoServer, Stack) {
    let moto = MotoServer::start_private();
    let env = sam::env_json();
    let vars = env.values().next().expect("events/env.json names functions");
    let mut stack =
        Stack::start_named(moto.endpoint_url(), &vars["TABLE_NAME"], &vars["ADMIN_SECRET_ID"]).await;
    stack.rotate_admin_token(EXAMPLE_TOKEN).await;
    (moto, stack)
}

/// `instances` processes of `function`'s arm64 bootstrap, as function `binary`.
async fn arm64_lambda(
    stack: &Stack,
    build: &SamBuild,
    function: &str,
    binary: &str,
    instances: usize,
) -> Lambda {
    let options = EmulatorOptions { deadline: FUNCTION_TIMEOUT, ..Default::default() };
    let program = build.program(function);
    stack.lambda_program(binary, &program, instances, sam::local_env(stack, function), options).await
}

/// Every process is still up (a `panic = "abort"` path would have killed
/// it), none logged a panic, every line is JSON (the template's log format)
/// and none holds a secret. `requests`: how many HTTP requests were sent, each
/// of which logs one `request` line.
async fn assert_healthy(lambda: &mut Lambda, stack: &Stack, requests: usize, what: &str) {
    for i in 0..lambda.pool.len() {
        let status = lambda.pool.instance_mut(i).try_exit_status();
        assert!(
            status.is_none(),
            "{what}: instance {i} exited ({status:?}); logs:\n{}",
            lambda.logs().join("\n")
        );
    }
    // A line is written before its response is posted, but read from the
    // process's pipe by another thread: wait until every request's is in.
    let request_lines =
        |logs: &[String]| logs.iter().filter(|l| l.contains("\"message\":\"request\"")).count();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut logs = lambda.logs();
    while request_lines(&logs) < requests {
        assert!(std::time::Instant::now() < deadline, "{what}: {requests} request lines expected: {logs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        logs = lambda.logs();
    }
    for line in &logs {
        assert!(!line.contains("panicked"), "{what}: {line}");
        assert!(serde_json::from_str::<Value>(line).is_ok(), "{what}: not a JSON log line: {line}");
    }
    let everything = logs.join("\n");
    for secret in [stack.admin_token.clone(), stack.revenuecat.api_key(), stack.secret_json()] {
        assert!(!everything.contains(&secret), "{what}: a log line holds a secret");
    }
}

#[tokio::test]
async fn every_event_file_gets_its_documented_answer_from_the_arm64_bootstraps() {
    let build = SamBuild::from_env();
    let (_moto, stack) = env_json_stack().await;
    let files = sam::event_files();
    assert!(files.len() >= 12, "events/ holds an event per route and case: {}", files.len());

    let functions: std::collections::BTreeSet<(String, String)> =
        files.iter().map(|f| (f.expect.function.clone(), f.expect.binary.clone())).collect();
    let in_env_json: Vec<String> = sam::env_json().into_keys().collect();
    assert_eq!(
        functions.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
        in_env_json,
        "the event files cover exactly the functions of events/env.json"
    );

    let mut checked = 0;
    for (function, binary) in &functions {
        let mut lambda = arm64_lambda(&stack, &build, function, binary, 1).await;
        let mut requests = 0;
        for file in files.iter().filter(|f| &f.expect.function == function) {
            sam::check_event(&lambda, file).await;
            requests += usize::from(file.expect.status.is_some());
            checked += 1;
        }
        assert_healthy(&mut lambda, &stack, requests, function).await;
    }
    assert_eq!(checked, files.len(), "every event file was sent");
    // The grants, the deduction and the REST API grant reached RevenueCat once each.
    let adjust_files =
        files.iter().filter(|f| f.expect.binary == "adjust-credits" && f.expect.status == Some(200));
    assert_eq!(stack.revenuecat.applied_transactions().len(), adjust_files.count());
}

#[tokio::test]
async fn concurrent_duplicates_on_the_arm64_bootstrap_apply_once() {
    let build = SamBuild::from_env();
    let (_moto, stack) = env_json_stack().await;
    stack.revenuecat.inject(Route::Transaction, Fault::Delay(Duration::from_millis(700)), 20);
    let mut adjust = arm64_lambda(&stack, &build, "AdjustCreditsFunction", "adjust-credits", 4).await;
    let calls: Vec<Call> = (0..20).map(|_| stack.adjust(9, Some("arm64-dup"))).collect();
    let replies = concurrently(&adjust, &calls).await;
    let applied = replies.iter().filter(|r| r.status == 200).count();
    assert!(applied >= 1, "{:?}", statuses(&replies));
    for reply in &replies {
        match reply.status {
            200 => assert_eq!(reply.json()["balance"], 129, "{}", reply.body),
            409 => reply.assert_error(409, "idempotency_key_in_progress"),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(stack.revenuecat.transactions().len(), 1, "one RevenueCat transaction");
    assert_eq!(stack.gateway.envelopes().len(), 1, "one envelope");
    assert_healthy(&mut adjust, &stack, calls.len(), "adjust-credits").await;
}

#[tokio::test]
async fn the_arm64_bootstrap_admits_exactly_the_template_rate_limit() {
    let build = SamBuild::from_env();
    let (_moto, stack) = env_json_stack().await;
    let env = sam::env_json();
    let limit: usize = env["AdjustCreditsFunction"]["RATE_LIMIT_PER_MINUTE"].parse().expect("a number");
    let mut adjust = arm64_lambda(&stack, &build, "AdjustCreditsFunction", "adjust-credits", 4).await;
    // The burst takes a few seconds under qemu; 20 s left in the calendar
    // minute is ample.
    within_one_rate_window(Duration::from_secs(20)).await;
    let calls: Vec<Call> = (0..limit + 10).map(|_| stack.adjust(1, None)).collect();
    let replies = concurrently(&adjust, &calls).await;
    let count = |status| replies.iter().filter(|r| r.status == status).count();
    assert_eq!((count(200), count(429)), (limit, 10), "{:?}", statuses(&replies));
    for reply in replies.iter().filter(|r| r.status == 429) {
        reply.assert_error(429, "rate_limited");
        assert!(reply.header("retry-after").is_some(), "a 429 says when to retry");
    }
    assert_eq!(stack.revenuecat.applied_transactions().len(), limit);
    assert_healthy(&mut adjust, &stack, calls.len(), "adjust-credits").await;
}

async fn concurrently(lambda: &Lambda, calls: &[Call]) -> Vec<Reply> {
    futures::future::join_all(calls.iter().map(|call| lambda.call(call))).await
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status).collect()
}
