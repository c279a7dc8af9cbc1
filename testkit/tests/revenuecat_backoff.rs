//! RevenueCat asking the `adjust-credits` binary to back off (§9 of the
//! RevenueCat notes): a 423 `resource_locked_error` or a 429
//! `rate_limit_error` is waited out once, for as long as RevenueCat asked and
//! no longer, unless that is more than the adapter's maximum (3 s); then the
//! answer is a 502 at once. Each wait is timed from RevenueCat's side: when
//! the sandbox received the first request and the retry.

use std::time::{Duration, Instant};

use credits_sandbox::{Fault, Route};
use credits_testkit::stack::{Reply, Stack};

/// The adapter's longest wait (`MAX_BACKOFF` in shared/src/adapters/revenuecat.rs).
const MAX_BACKOFF: Duration = Duration::from_secs(3);

/// One keyed adjustment through the binary; the reply and how long it took.
async fn adjust(stack: &Stack, key: &str) -> (Reply, Duration) {
    let lambda = stack.lambda("adjust-credits", 1).await;
    let started = Instant::now();
    let reply = lambda.call(&stack.adjust(10, Some(key))).await;
    (reply, started.elapsed())
}

/// How long after the first transaction request the second one arrived.
fn retry_gap(stack: &Stack) -> Duration {
    let arrivals = stack.revenuecat.arrivals(Route::Transaction);
    assert_eq!(arrivals.len(), 2, "one request and one retry");
    arrivals[1].duration_since(arrivals[0])
}

#[track_caller]
fn assert_waited(gap: Duration, asked: Duration) {
    assert!(gap >= asked, "retried {gap:?} after the answer, before the {asked:?} RevenueCat asked for");
    assert!(
        gap < asked + Duration::from_millis(1_500),
        "retried only {gap:?} after the answer, asked {asked:?}"
    );
}

/// 423: another request holds the transaction's key. One wait of `backoff_ms`
/// (no `Retry-After` on a 423), then the same transaction with the same key.
#[tokio::test]
async fn revenuecat_423_once_is_waited_out_for_its_backoff_then_applied() {
    let stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::locked(1_200), 1);
    let (reply, _) = adjust(&stack, "rb-423-once").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["balance"], 130);
    assert_waited(retry_gap(&stack), Duration::from_millis(1_200));
    let sent = stack.revenuecat.transactions();
    assert_eq!(sent[0].idempotency_key, sent[1].idempotency_key, "the retry re-sends the same key");
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
    assert_eq!(stack.gateway.envelopes().len(), 1);
}

/// Still locked after the one wait: the concurrent holder may be applying this
/// very transaction, so the outcome is unknown. 502, and the claim is kept: a
/// retry under the key is told to wait rather than sent again.
#[tokio::test]
async fn revenuecat_423_persisting_is_502_resource_locked_and_keeps_the_claim() {
    let stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::locked(1_200), 2);
    let (reply, _) = adjust(&stack, "rb-423").await;
    reply.assert_detail(502, "rc_call_failed: resource_locked_error");
    assert_waited(retry_gap(&stack), Duration::from_millis(1_200));
    let sent = stack.revenuecat.transactions();
    assert_eq!(sent[0].idempotency_key, sent[1].idempotency_key);
    assert!(stack.revenuecat.applied_transactions().is_empty());
    assert!(stack.gateway.envelopes().is_empty());

    let lambda = stack.lambda("adjust-credits", 1).await;
    let retry = lambda.call(&stack.adjust(10, Some("rb-423"))).await;
    retry.assert_error(409, "idempotency_key_in_progress");
    assert_eq!(stack.revenuecat.transactions().len(), 2, "the kept claim is not sent again");
}

/// A 429 whose `Retry-After` (5 s) is beyond the longest wait: 502 at once,
/// no retry, and the claim is released (RevenueCat applied nothing).
#[tokio::test]
async fn revenuecat_429_asking_for_more_than_the_maximum_backoff_is_502_at_once() {
    let stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::rate_limited(5_000), 1);
    let (reply, took) = adjust(&stack, "rb-429-long").await;
    reply.assert_detail(502, "rc_call_failed: rate_limit_error");
    assert_eq!(stack.revenuecat.transactions().len(), 1, "no retry");
    assert!(took < MAX_BACKOFF, "answered after {took:?}: it waited");

    let (retry, _) = adjust(&stack, "rb-429-long").await;
    assert_eq!(retry.status, 200, "a released key runs afresh: {}", retry.body);
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
}

/// The same for a 423 whose `backoff_ms` (5 s) is beyond the longest wait.
#[tokio::test]
async fn revenuecat_423_asking_for_more_than_the_maximum_backoff_is_502_at_once() {
    let stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::locked(5_000), 1);
    let (reply, took) = adjust(&stack, "rb-423-long").await;
    reply.assert_detail(502, "rc_call_failed: resource_locked_error");
    assert_eq!(stack.revenuecat.transactions().len(), 1, "no retry");
    assert!(took < MAX_BACKOFF, "answered after {took:?}: it waited");
}
