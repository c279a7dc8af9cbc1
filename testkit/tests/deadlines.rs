//! Every answer before the deadline (spec §3 "Time budget"), and the failure
//! paths that used to lose or leak (issue 10). Upstreams here accept the
//! connection and never answer — what a brown-out looks like — at a short
//! deadline and at the template's 20 s timeout; the functions must still send
//! a catalogued JSON answer in time, and keep what the spec says they keep.

use std::time::{Duration, Instant};

use credits::adapters::dynamodb::DynamoStore;
use credits::budget::Budget;
use credits::domain::UsageChanged;
use credits::ports::{Outbox, QueuedEnvelope};
use credits::reconcile::{run_pass, MAX_DELIVERY_ATTEMPTS};
use credits_sandbox::{Currency, Fault, GatewayFault, Route};
use credits_testkit::aws::dynamodb_client;
use credits_testkit::faults::{AwsFault, AwsFaultProxy, StalledListener};
use credits_testkit::runtime_api::EmulatorOptions;
use credits_testkit::stack::{scheduled_event, within_one_rate_window, Call, Lambda, Reply, Stack};

const SHORT: Duration = Duration::from_secs(3);
const TEMPLATE_TIMEOUT: Duration = Duration::from_secs(20);

async fn lambda(stack: &Stack, binary: &str, deadline: Duration) -> Lambda {
    stack.lambda_with(binary, 1, EmulatorOptions { deadline, ..EmulatorOptions::default() }).await
}

async fn timed(lambda: &Lambda, call: &Call) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = lambda.call(call).await;
    (reply, started.elapsed())
}

#[track_caller]
fn answered_in_time(took: Duration, deadline: Duration) {
    assert!(took < deadline, "answered after {took:?}, deadline {deadline:?}");
}

fn pass_budget() -> Budget {
    Budget::lasting(TEMPLATE_TIMEOUT)
}

#[tokio::test]
async fn a_stalled_secrets_manager_is_503_before_the_deadline() {
    let stalled = StalledListener::start().await;
    let mut stack = Stack::start().await;
    stack.set_env("AWS_ENDPOINT_URL_SECRETS_MANAGER", stalled.url());
    for deadline in [SHORT, TEMPLATE_TIMEOUT] {
        let lambda = lambda(&stack, "list-currencies", deadline).await;
        let (reply, took) = timed(&lambda, &stack.get("/admin/credits/currencies")).await;
        reply.assert_error(503, "secret_store_unavailable");
        answered_in_time(took, deadline);
    }
    assert_eq!(stack.revenuecat.request_count(Route::ListCurrencies), 0);
}

#[tokio::test]
async fn a_stalled_dynamodb_fails_the_limiter_open_and_balances_still_answer() {
    let stalled = StalledListener::start().await;
    let mut stack = Stack::start().await;
    stack.set_env("AWS_ENDPOINT_URL_DYNAMODB", stalled.url());
    for deadline in [SHORT, TEMPLATE_TIMEOUT] {
        let lambda = lambda(&stack, "get-balances", deadline).await;
        let (reply, took) = timed(&lambda, &stack.get("/admin/credits/balances/user_2abcXYZ")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["items"][0]["balance"], 120);
        assert_eq!(
            reply.header("ratelimit-limit"),
            None,
            "an uncounted request carries no RateLimit headers"
        );
        answered_in_time(took, deadline);
    }
}

#[tokio::test]
async fn a_keyed_adjustment_with_dynamodb_stalled_is_503_and_never_reaches_revenuecat() {
    let stalled = StalledListener::start().await;
    let mut stack = Stack::start().await;
    stack.set_env("AWS_ENDPOINT_URL_DYNAMODB", stalled.url());
    for deadline in [SHORT, TEMPLATE_TIMEOUT] {
        let lambda = lambda(&stack, "adjust-credits", deadline).await;
        let (reply, took) = timed(&lambda, &stack.adjust(10, Some("dl-dynamo-stalled"))).await;
        reply.assert_error(503, "idempotency_store_unavailable");
        answered_in_time(took, deadline);
    }
    assert_eq!(stack.revenuecat.request_count(Route::Transaction), 0);
}

#[tokio::test]
async fn an_unkeyed_adjustment_with_dynamodb_stalled_is_applied_once_in_time() {
    let stalled = StalledListener::start().await;
    let mut stack = Stack::start().await;
    stack.set_env("AWS_ENDPOINT_URL_DYNAMODB", stalled.url());
    let lambda = lambda(&stack, "adjust-credits", SHORT).await;
    let (reply, took) = timed(&lambda, &stack.adjust(10, None)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["balance"], 130);
    answered_in_time(took, SHORT);
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
}

#[tokio::test]
async fn a_stalled_revenuecat_is_502_timeout_in_time_and_the_claim_is_settled_once_later() {
    let stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::Hang, 1);
    // The configured RevenueCat timeout (5 s) is longer than this deadline.
    let lambda = lambda(&stack, "adjust-credits", SHORT).await;
    let started = Instant::now();
    let (reply, took) = timed(&lambda, &stack.adjust(10, Some("dl-rc-stalled"))).await;
    reply.assert_error(502, "rc_call_failed");
    assert_eq!(reply.detail(), "rc_call_failed: timeout");
    answered_in_time(took, SHORT);
    // Outcome unknown: the claim is kept, so the same key cannot be applied again meanwhile.
    let (retry, _) = timed(&lambda, &stack.adjust(10, Some("dl-rc-stalled"))).await;
    retry.assert_error(409, "idempotency_key_in_progress");
    // Once the lease lapses, reconciliation settles it exactly once.
    let lease_lapsed = started + SHORT + Duration::from_millis(2_500);
    tokio::time::sleep_until(lease_lapsed.into()).await;
    let summary = run_pass(&stack.app(), pass_budget()).await;
    assert_eq!(summary.settled, 1, "{summary:?}");
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
    assert_eq!(stack.revenuecat.balance("user_2abcXYZ", "CRD"), Some(130));
}

#[tokio::test]
async fn a_stalled_revenuecat_at_the_template_timeout_is_502_after_its_own_timeout() {
    let mut stack = Stack::start().await;
    stack.revenuecat.inject(Route::Balances, Fault::Hang, 1);
    stack.set_env("REVENUECAT_TIMEOUT_MS", 1_500);
    let lambda = lambda(&stack, "get-balances", TEMPLATE_TIMEOUT).await;
    let (reply, took) = timed(&lambda, &stack.get("/admin/credits/balances/user_2abcXYZ")).await;
    assert_eq!((reply.status, reply.detail()), (502, "rc_call_failed: timeout".to_owned()));
    assert!(took >= Duration::from_millis(1_500), "waited its configured timeout: {took:?}");
    answered_in_time(took, Duration::from_secs(4));
}

#[tokio::test]
async fn a_stalled_gateway_queues_the_envelope_in_time() {
    let stalled = StalledListener::start().await;
    let mut stack = Stack::start().await;
    stack.set_env("GATEWAY_URL", stalled.url());
    let lambda = lambda(&stack, "adjust-credits", SHORT).await;
    let (reply, took) = timed(&lambda, &stack.adjust(10, Some("dl-gateway-stalled"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["notified"], false);
    answered_in_time(took, SHORT);
    stack.set_env("GATEWAY_URL", stack.gateway_url());
    let summary = run_pass(&stack.app(), pass_budget()).await;
    assert_eq!(summary.redelivered, 1, "{summary:?}");
    assert_eq!(stack.gateway.unique_envelope_ids().len(), 1);
}

#[tokio::test]
async fn a_reconciliation_pass_against_a_stalled_dynamodb_ends_before_its_deadline() {
    let stalled = StalledListener::start().await;
    let mut stack = Stack::start().await;
    stack.set_env("AWS_ENDPOINT_URL_DYNAMODB", stalled.url());
    let lambda = lambda(&stack, "adjust-credits", SHORT).await;
    let started = Instant::now();
    let summary = lambda.invoke(scheduled_event()).await.into_response();
    answered_in_time(started.elapsed(), SHORT);
    assert_eq!(summary["complete"], false, "{summary}");
}

#[tokio::test]
async fn currency_paging_that_outlasts_the_budget_is_502_timeout_not_a_cut_list() {
    let stack = Stack::start().await;
    for code in ["AAA", "BBB", "DDD", "EEE"] {
        stack.revenuecat.add_currency(Currency::new(code, code));
    }
    stack.revenuecat.set_page_limit_cap(1);
    stack.revenuecat.inject(Route::ListCurrencies, Fault::Delay(Duration::from_millis(900)), 10);
    let lambda = lambda(&stack, "list-currencies", SHORT).await;
    let (reply, took) = timed(&lambda, &stack.get("/admin/credits/currencies")).await;
    assert_eq!((reply.status, reply.detail()), (502, "rc_call_failed: timeout".to_owned()));
    answered_in_time(took, SHORT);
}

#[tokio::test]
async fn a_currency_list_longer_than_the_page_cap_is_an_error_not_a_cut_list() {
    let stack = Stack::start().await;
    for n in 0..60 {
        let code = format!("C{n:02}");
        stack.revenuecat.add_currency(Currency::new(&code, &code));
    }
    stack.revenuecat.set_page_limit_cap(1);
    let reply = stack.get("/admin/credits/currencies").send(&stack.router()).await;
    assert_eq!((reply.status, reply.detail()), (502, "rc_call_failed: invalid_response".to_owned()));
}

#[tokio::test]
async fn the_adjusted_balance_is_read_across_pages_of_the_answer() {
    let stack = Stack::start().await;
    for code in ["AAA", "BBB"] {
        stack.revenuecat.add_currency(Currency::new(code, code));
    }
    stack.revenuecat.set_page_limit_cap(1);
    let reply = stack.adjust(10, Some("dl-paged")).send(&stack.router()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["balance"], 130, "CRD is on the third page of the answer");
    assert_eq!(stack.gateway.envelopes()[0]["payload"]["balance"], 130);
}

/// An in-process router whose DynamoDB and Secrets Manager calls go through `proxy`.
fn router_through(stack: &mut Stack, proxy: &AwsFaultProxy) -> credits::Router {
    stack.set_env("AWS_ENDPOINT_URL", proxy.url());
    let router = stack.router();
    stack.set_env("AWS_ENDPOINT_URL", stack.moto_endpoint.clone());
    router
}

#[tokio::test]
async fn a_claim_whose_answer_was_lost_is_recognised_as_its_own() {
    let mut stack = Stack::start().await;
    let proxy = AwsFaultProxy::start(&stack.moto_endpoint).await;
    proxy.inject("PutItem", AwsFault::ForwardThenStall, Some(1));
    let router = router_through(&mut stack, &proxy);
    let reply = stack.adjust(10, Some("dl-own-claim")).send(&router).await;
    assert_eq!(reply.status, 200, "the SDK's retry met its own claim: {}", reply.body);
    assert!(proxy.seen("PutItem") >= 2, "the claim was written, its answer lost, and retried");
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
}

#[tokio::test]
async fn a_rate_limited_claim_that_could_not_be_dropped_is_never_applied() {
    let mut stack = Stack::start().await;
    stack.set_env("RATE_LIMIT_PER_MINUTE", 1);
    let proxy = AwsFaultProxy::start(&stack.moto_endpoint).await;
    proxy.inject("DeleteItem", AwsFault::InternalError, None);
    let router = router_through(&mut stack, &proxy);
    within_one_rate_window(Duration::from_secs(10)).await;
    let first = stack.adjust(10, Some("dl-429-a")).send(&router).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let lease_lapsed = Instant::now() + SHORT + Duration::from_millis(2_500); // deadline + 2 s
    let refused = stack.adjust(10, Some("dl-429-b")).deadline_in(SHORT).send(&router).await;
    refused.assert_error(429, "rate_limited");
    assert!(proxy.seen("DeleteItem") >= 1, "the refused request tried to drop its claim");
    proxy.clear();
    // Once the refused claim's lease lapses, reconciliation must drop it, not apply it.
    tokio::time::sleep_until(lease_lapsed.into()).await;
    let summary = run_pass(&stack.app(), pass_budget()).await;
    assert_eq!((summary.abandoned, summary.settled), (1, 0), "{summary:?}");
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1, "only the admitted adjustment");
    assert_eq!(stack.revenuecat.balance("user_2abcXYZ", "CRD"), Some(130));
}

/// Sends one keyed adjustment while RevenueCat answers `fault` twice, and
/// returns what the caller saw and what a retry with the same key sees.
async fn adjust_against(fault: Fault) -> (Reply, Reply, Stack) {
    let stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, fault, 2);
    let router = stack.router();
    let reply = stack.adjust(10, Some("dl-not-definite")).send(&router).await;
    let retry = stack.adjust(10, Some("dl-not-definite")).send(&router).await;
    (reply, retry, stack)
}

#[tokio::test]
async fn revenuecat_409_idempotency_error_keeps_the_claim() {
    let fault = Fault::Status {
        status: 409,
        error_type: "idempotency_error".into(),
        retryable: false,
        backoff_ms: None,
    };
    let (reply, retry, stack) = adjust_against(fault).await;
    assert_eq!((reply.status, reply.detail()), (502, "rc_call_failed: idempotency_error".to_owned()));
    retry.assert_error(409, "idempotency_key_in_progress");
    assert_eq!(stack.revenuecat.transactions().len(), 1, "the retry did not reach RevenueCat with a new key");
}

#[tokio::test]
async fn revenuecat_423_persisting_is_waited_out_once_then_keeps_the_claim() {
    let fault = Fault::locked(300);
    let started = Instant::now();
    let (reply, retry, stack) = adjust_against(fault).await;
    assert_eq!((reply.status, reply.detail()), (502, "rc_call_failed: resource_locked_error".to_owned()));
    assert!(started.elapsed() >= Duration::from_millis(300), "the backoff was waited out");
    assert_eq!(stack.revenuecat.transactions().len(), 2, "one wait, one retry with the same key");
    retry.assert_error(409, "idempotency_key_in_progress");
}

#[tokio::test]
async fn an_unreadable_revenuecat_4xx_keeps_the_claim() {
    let (reply, retry, stack) = adjust_against(Fault::UnreadableStatus(400)).await;
    assert_eq!((reply.status, reply.detail()), (502, "rc_call_failed: invalid_response".to_owned()));
    retry.assert_error(409, "idempotency_key_in_progress");
    assert_eq!(stack.revenuecat.transactions().len(), 1);
}

fn envelope(id: &str) -> UsageChanged {
    UsageChanged::new(id.to_owned(), "user_2abcXYZ", "CRD", 120, 1, std::time::SystemTime::now())
}

fn store(stack: &Stack) -> DynamoStore {
    DynamoStore::new(dynamodb_client(&stack.moto_endpoint), stack.table.clone())
}

#[tokio::test]
async fn envelopes_the_gateway_keeps_refusing_do_not_block_newer_ones() {
    let stack = Stack::start().await;
    let outbox = store(&stack);
    let budget = pass_budget();
    let now = credits::clock::now_ms();
    // Thirty old envelopes the gateway refuses, ids sorted before the new one.
    for n in 0..30 {
        let queued = QueuedEnvelope {
            envelope: envelope(&format!("a-poison-{n:02}")),
            attempts: 1,
            next_attempt_ms: now - 60_000,
        };
        outbox.enqueue(&queued, u64::MAX / 2, &budget).await.unwrap();
    }
    stack.gateway.inject(GatewayFault::Status(503), 30);
    let first = run_pass(&stack.app(), pass_budget()).await;
    assert_eq!(first.failed, 25, "one batch tried and backed off: {first:?}");
    let second = run_pass(&stack.app(), pass_budget()).await;
    assert_eq!(second.failed, 5, "the rest of the batch: {second:?}");
    // A new envelope is due at once; the refused ones wait out their backoff.
    let fresh = QueuedEnvelope {
        envelope: envelope("z-fresh"),
        attempts: 1,
        next_attempt_ms: credits::clock::now_ms() - 1,
    };
    outbox.enqueue(&fresh, u64::MAX / 2, &budget).await.unwrap();
    let third = run_pass(&stack.app(), pass_budget()).await;
    assert_eq!((third.redelivered, third.failed), (1, 0), "{third:?}");
    assert_eq!(stack.gateway.unique_envelope_ids(), vec!["z-fresh".to_owned()]);
}

#[tokio::test]
async fn an_envelope_refused_every_time_is_dead_lettered() {
    let stack = Stack::start().await;
    let outbox = store(&stack);
    let last_try = QueuedEnvelope {
        envelope: envelope("dead-one"),
        attempts: MAX_DELIVERY_ATTEMPTS - 1,
        next_attempt_ms: credits::clock::now_ms() - 1,
    };
    outbox.enqueue(&last_try, u64::MAX / 2, &pass_budget()).await.unwrap();
    stack.gateway.inject(GatewayFault::Status(503), 1);
    let summary = run_pass(&stack.app(), pass_budget()).await;
    assert_eq!(summary.dead_lettered, 1, "{summary:?}");
    let due = outbox.due(u64::MAX / 2, 25, &pass_budget()).await.unwrap();
    assert!(due.envelopes.is_empty(), "no longer queued");
    let dead = dynamodb_client(&stack.moto_endpoint)
        .get_item()
        .table_name(&stack.table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("outbox-dead".into()))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("dead-one".into()))
        .send()
        .await
        .unwrap();
    let item = dead.item.expect("kept in the dead letter for a person");
    assert_eq!(item["attempts"].as_n().unwrap(), &MAX_DELIVERY_ATTEMPTS.to_string());
}

#[tokio::test]
async fn an_unreadable_record_is_skipped_and_reported_while_the_rest_settle() {
    let stack = Stack::start().await;
    // A record a later deploy might write: nothing this one can read.
    use aws_sdk_dynamodb::types::AttributeValue::{N, S};
    dynamodb_client(&stack.moto_endpoint)
        .put_item()
        .table_name(&stack.table)
        .item("pk", S("idem#client#from-the-future".into()))
        .item("sk", S("adjustment".into()))
        .item("status", S("in_progress".into()))
        .item("pending", S("pending".into()))
        .item("lease_until", N("1".into()))
        .item("transaction", S(r#"{"v2":true}"#.into()))
        .send()
        .await
        .unwrap();
    // A real lapsed adjustment: RevenueCat's answer was lost.
    stack.revenuecat.inject(Route::Transaction, Fault::ApplyThenDelay(Duration::from_secs(3)), 1);
    let lease_lapsed = Instant::now() + SHORT + Duration::from_millis(2_500); // deadline + 2 s
    let reply = stack.adjust(10, Some("dl-lapsed")).deadline_in(SHORT).send(&stack.router()).await;
    assert_eq!((reply.status, reply.detail()), (502, "rc_call_failed: timeout".to_owned()));
    tokio::time::sleep_until(lease_lapsed.into()).await;
    let summary = run_pass(&stack.app(), pass_budget()).await;
    assert_eq!((summary.unreadable, summary.settled), (1, 1), "{summary:?}");
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
    let again = run_pass(&stack.app(), pass_budget()).await;
    assert_eq!(
        (again.unreadable, again.settled, again.failed),
        (1, 0, 0),
        "reported again, never fatal: {again:?}"
    );
}

#[tokio::test]
async fn no_secret_reaches_the_logs_at_debug_or_trace() {
    for level in ["DEBUG", "TRACE"] {
        let mut stack = Stack::start().await;
        stack.set_env("AWS_LAMBDA_LOG_LEVEL", level);
        stack.set_env("SECRET_TTL_SECONDS", 1);
        let mut logs = Vec::new();
        let currencies = lambda(&stack, "list-currencies", TEMPLATE_TIMEOUT).await;
        assert_eq!(currencies.call(&stack.get("/admin/credits/currencies")).await.status, 200);
        let wrong = stack.get("/admin/credits/currencies").header("authorization", "Bearer adm_wrong");
        assert_eq!(currencies.call(&wrong).await.status, 403);
        logs.extend(currencies.logs());
        let balances = lambda(&stack, "get-balances", TEMPLATE_TIMEOUT).await;
        assert_eq!(balances.call(&stack.get("/admin/credits/balances/user_2abcXYZ")).await.status, 200);
        logs.extend(balances.logs());
        stack.gateway.inject(GatewayFault::Status(503), 1);
        let adjust = lambda(&stack, "adjust-credits", TEMPLATE_TIMEOUT).await;
        assert_eq!(adjust.call(&stack.adjust(5, Some(&format!("dl-logs-{level}")))).await.status, 200);
        adjust.invoke(scheduled_event()).await.into_response();
        logs.extend(adjust.logs());
        let secrets = [stack.admin_token.clone(), stack.revenuecat.api_key()];
        for line in &logs {
            for secret in &secrets {
                assert!(!line.contains(secret.as_str()), "{level}: a log line holds a secret: {line}");
            }
        }
        let debug_lines = logs.iter().filter(|l| l.contains(r#""level":"DEBUG""#)).count();
        assert!(debug_lines > 0, "{level} took effect: {} lines, none at DEBUG", logs.len());
    }
}
