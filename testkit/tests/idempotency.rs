//! Exactly-once adjustments (spec §6–§8): idempotency keys, leases,
//! RevenueCat's own `Idempotency-Key`, the outbox and reconciliation —
//! in-process against moto, the RevenueCat sandbox and the gateway stand-in.

use std::time::{Duration, Instant};

use credits::reconcile::{run_pass, ReconcileSummary};
use credits_sandbox::{Fault, Gate, Route};
use credits_testkit::logs::code_under_test;
use credits_testkit::stack::{Stack, DEMO_USER};
use serde_json::json;
use tracing::Instrument;

const ADJUST: &str = "/admin/credits/adjust";

async fn reconcile(stack: &Stack) -> ReconcileSummary {
    run_pass(&stack.app(), credits::budget::Budget::lasting(Duration::from_secs(20)))
        .instrument(code_under_test())
        .await
}

/// Polls `condition` until it holds; panics after 10 s.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_same_key_twice_applies_once_and_replays() {
    let stack = Stack::start().await;
    let router = stack.router();
    let first = stack.adjust(100, Some("ZD-1234-grant")).send(&router).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["idempotency_key"], "ZD-1234-grant");
    assert_eq!(first.json()["replayed"], false);
    assert!(first.header("idempotent-replayed").is_none());

    let second = stack.adjust(100, Some("ZD-1234-grant")).send(&stack.router()).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        second.json(),
        json!({"user_id": DEMO_USER, "currency": "CRD", "amount": 100, "balance": 220,
               "idempotency_key": "ZD-1234-grant", "replayed": true, "notified": false})
    );
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
    assert_eq!(stack.revenuecat.balance(DEMO_USER, "CRD"), Some(220));
    assert_eq!(stack.gateway.envelopes().len(), 1, "a replay sends no envelope");
}

#[tokio::test]
async fn the_key_may_come_as_a_header() {
    let stack = Stack::start().await;
    let router = stack.router();
    let call = stack.adjust(7, None).header("Idempotency-Key", "hdr-1");
    assert_eq!(call.send(&router).await.json()["idempotency_key"], "hdr-1");
    let body_key = stack.adjust(7, Some("hdr-1"));
    assert_eq!(
        body_key.send(&router).await.header("idempotent-replayed"),
        Some("true"),
        "same key either way"
    );
    let both = stack.adjust(7, Some("hdr-1")).header("Idempotency-Key", "hdr-1");
    assert_eq!(both.send(&router).await.status, 200);
    let disagree = stack.adjust(7, Some("hdr-1")).header("Idempotency-Key", "hdr-2");
    disagree.send(&router).await.assert_error(422, "invalid_idempotency_key");
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
}

#[tokio::test]
async fn a_key_reused_for_a_different_adjustment_is_422() {
    let stack = Stack::start().await;
    let router = stack.router();
    assert_eq!(stack.adjust(5, Some("k-reuse")).send(&router).await.status, 200);
    stack.adjust(6, Some("k-reuse")).send(&router).await.assert_error(422, "idempotency_key_reused");
    let other_reason = json!({"user_id": DEMO_USER, "amount": 5, "reason": "ZD-9 another reason", "idempotency_key": "k-reuse"});
    stack.post(ADJUST, other_reason).send(&router).await.assert_error(422, "idempotency_key_reused");
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
}

#[tokio::test]
async fn a_duplicate_in_flight_is_409_with_retry_after() {
    let stack = Stack::start().await;
    // The first request is held inside RevenueCat until the duplicate has been answered.
    let gate = Gate::new();
    stack.revenuecat.inject(Route::Transaction, Fault::HoldUntil(gate.clone()), 1);
    let first = {
        let call = stack.adjust(5, Some("k-flight"));
        let router = stack.router();
        tokio::spawn(async move { call.send(&router).await })
    };
    wait_until("the first request reaches RevenueCat", || gate.waiting() == 1).await;
    let duplicate = stack.adjust(5, Some("k-flight")).send(&stack.router()).await;
    duplicate.assert_error(409, "idempotency_key_in_progress");
    let retry_after: u64 = duplicate.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    gate.open();
    let first = first.await.unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["balance"], 125);
    assert_eq!(stack.revenuecat.transactions().len(), 1);
}

#[tokio::test]
async fn a_definite_revenuecat_rejection_releases_the_key() {
    let stack = Stack::start().await;
    let router = stack.router();
    let body = json!({"user_id": "user_later", "amount": 50, "reason": "ZD-77 welcome", "idempotency_key": "k-later"});
    stack.post(ADJUST, body.clone()).send(&router).await.assert_error(404, "rc_customer_not_found");
    stack.revenuecat.add_customer("user_later");
    let retry = stack.post(ADJUST, body.clone()).send(&router).await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.json()["balance"], 50);
    assert_eq!(stack.post(ADJUST, body).send(&router).await.header("idempotent-replayed"), Some("true"));
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);

    // Insufficient balance is definite too: the same key works once the balance allows it.
    stack.adjust(-500, Some("k-deduct")).send(&router).await.assert_error(409, "insufficient_balance");
    stack.revenuecat.set_balance(DEMO_USER, "CRD", 1000);
    assert_eq!(stack.adjust(-500, Some("k-deduct")).send(&router).await.json()["balance"], 500);
}

#[tokio::test]
async fn a_revenuecat_500_never_leads_to_a_second_transaction() {
    let stack = Stack::start().await;
    let router = stack.router();
    stack.revenuecat.inject(Route::Transaction, Fault::server_error(Some(1000)), 1);
    // The shortest deadline an adjustment fits in: the time budget keeps back
    // what RevenueCat and the envelope need. The lease outlives it by 2 s.
    let deadline = Duration::from_secs(3);
    let started = Instant::now();
    let call = stack.adjust(40, Some("k-500")).deadline_in(deadline);
    call.send(&router).await.assert_detail(502, "rc_call_failed: server_error");
    // Still leased: a retry is told to wait rather than sent again, and for how long.
    let told_to_wait = stack.adjust(40, Some("k-500")).send(&router).await;
    let lease_ends = started + deadline + Duration::from_millis(credits::handlers::adjust::LEASE_MARGIN_MS);
    assert!(Instant::now() < lease_ends, "the retry came too late to find the lease held");
    told_to_wait.assert_error(409, "idempotency_key_in_progress");
    let retry_after: u64 = told_to_wait.header("retry-after").unwrap().parse().unwrap();
    assert!(
        Instant::now() + Duration::from_secs(retry_after) >= lease_ends,
        "Retry-After {retry_after} s ends early"
    );
    // Once the lease the 409 announced has passed, the retry runs.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let retry = stack.adjust(40, Some("k-500")).send(&router).await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.json()["balance"], 160);
    let sent = stack.revenuecat.transactions();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0].idempotency_key, sent[1].idempotency_key,
        "the identical transaction, the same RevenueCat key"
    );
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
}

#[tokio::test]
async fn a_timeout_after_revenuecat_applied_is_settled_not_repeated() {
    let mut stack = Stack::start().await;
    stack.set_env("REVENUECAT_TIMEOUT_MS", 300);
    let router = stack.router();
    // RevenueCat applies the transaction, then holds its answer past our timeout.
    let gate = Gate::new();
    stack.revenuecat.inject(Route::Transaction, Fault::ApplyThenHoldUntil(gate.clone()), 1);
    let lease = Duration::from_secs(3);
    let reply = stack.adjust(25, Some("k-timeout")).deadline_in(lease).send(&router).await;
    reply.assert_detail(502, "rc_call_failed: timeout");
    wait_until("RevenueCat applied the transaction", || gate.waiting() == 1).await;
    assert_eq!(stack.revenuecat.balance(DEMO_USER, "CRD"), Some(145), "RevenueCat did apply it");
    gate.open();
    let answered = || stack.revenuecat.transactions().first().is_some_and(|t| t.status.is_some());
    wait_until("RevenueCat finished the first request", answered).await;

    // Passes leave the claim alone while its lease holds, then settle it.
    let give_up = Instant::now() + lease + Duration::from_secs(15);
    let summary = loop {
        let summary = reconcile(&stack).await;
        assert_eq!(summary.failed, 0, "{summary:?}");
        if summary.settled > 0 {
            break summary;
        }
        assert!(Instant::now() < give_up, "the lapsed claim was never settled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((summary.settled, summary.failed), (1, 0), "{summary:?}");
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1, "RevenueCat replayed, did not re-apply");
    assert_eq!(stack.gateway.unique_envelope_ids().len(), 1, "the settled adjustment notified the app");

    let retry = stack.adjust(25, Some("k-timeout")).send(&router).await;
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json()["balance"], 145);
    assert_eq!(reconcile(&stack).await, ReconcileSummary { complete: true, ..Default::default() });
}

#[tokio::test]
async fn a_failed_envelope_is_queued_and_delivered_once_by_reconciliation() {
    let stack = Stack::start().await;
    stack.gateway.set_down(true);
    let reply = stack.adjust(10, Some("k-gw")).send(&stack.router()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["notified"], false);
    let queued_id = {
        // Still down: the pass keeps it queued.
        let summary = reconcile(&stack).await;
        assert_eq!((summary.redelivered, summary.failed), (0, 1));
        stack.gateway.attempts()
    };
    assert!(queued_id >= 2);
    stack.gateway.set_down(false);
    // The refused envelope backs off before its next attempt.
    assert_eq!(reconcile(&stack).await, ReconcileSummary { complete: true, ..Default::default() });
    stack.make_queued_envelopes_due().await;
    assert_eq!(reconcile(&stack).await.redelivered, 1);
    let envelopes = stack.gateway.envelopes();
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0]["payload"], json!({"currency": "CRD", "balance": 130, "delta": 10}));
    assert_eq!(reconcile(&stack).await.redelivered, 0, "a second pass sends nothing");
}

#[tokio::test]
async fn an_unusable_store_refuses_keyed_adjustments_without_calling_revenuecat() {
    let mut stack = Stack::start().await;
    stack.set_env("TABLE_NAME", "credits-table-that-does-not-exist");
    let reply = stack.adjust(5, Some("k-nostore")).send(&stack.router()).await;
    reply.assert_error(503, "idempotency_store_unavailable");
    assert_eq!(stack.revenuecat.request_count(Route::Transaction), 0);
}

#[tokio::test]
async fn concurrent_duplicates_reach_revenuecat_once() {
    let stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::Delay(Duration::from_millis(500)), 20);
    let routers: Vec<_> = (0..4).map(|_| stack.router()).collect();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let call = stack.adjust(3, Some("k-dup"));
            let router = routers[i % 4].clone();
            tokio::spawn(async move { call.send(&router).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.unwrap().status);
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 409), "{statuses:?}");
    assert!(statuses.contains(&200));
    assert_eq!(stack.revenuecat.transactions().len(), 1);
    assert_eq!(stack.revenuecat.balance(DEMO_USER, "CRD"), Some(123));
}
