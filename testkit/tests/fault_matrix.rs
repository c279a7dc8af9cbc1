//! The fault matrix, end to end: the `adjust-credits` binary under the
//! Runtime API emulator while RevenueCat, the gateway, DynamoDB or Secrets
//! Manager misbehave. Each case checks the answer, what RevenueCat recorded
//! and what the gateway received.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use credits_sandbox::{Fault, GatewayFault, Route};
use credits_testkit::stack::{scheduled_event, Reply, Stack};
use serde_json::json;

fn rc_error(status: u16, error_type: &str) -> Fault {
    Fault::Status { status, error_type: error_type.into(), retryable: status >= 429, backoff_ms: Some(200) }
}

/// One adjustment through the binary, with RevenueCat's timeout short enough
/// to keep the suite fast (the 15 s function timeout is not at stake here).
async fn adjust_once(stack: &mut Stack, key: Option<&str>) -> (Reply, Duration) {
    stack.set_env("REVENUECAT_TIMEOUT_MS", 800);
    let lambda = stack.lambda("adjust-credits", 1).await;
    let started = Instant::now();
    let reply = lambda.call(&stack.adjust(10, key)).await;
    (reply, started.elapsed())
}

#[tokio::test]
async fn revenuecat_429_once_is_waited_out_then_applied() {
    let mut stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, rc_error(429, "rate_limit_error"), 1);
    let (reply, _) = adjust_once(&mut stack, Some("fm-429")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let sent = stack.revenuecat.transactions();
    assert_eq!(sent.len(), 2, "one backoff, one retry");
    assert_eq!(sent[0].idempotency_key, sent[1].idempotency_key, "the retry re-sends the same key");
    // The 429 said `Retry-After: 1` (backoff_ms 200, rounded up): waited, and not much longer.
    let arrivals = stack.revenuecat.arrivals(Route::Transaction);
    let waited = arrivals[1].duration_since(arrivals[0]);
    assert!(
        (Duration::from_secs(1)..Duration::from_millis(2_500)).contains(&waited),
        "the retry came {waited:?} after the 429"
    );
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
    assert_eq!(stack.gateway.envelopes().len(), 1);
}

#[tokio::test]
async fn revenuecat_429_persisting_is_502_rate_limit_error() {
    let mut stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, rc_error(429, "rate_limit_error"), 5);
    let (reply, _) = adjust_once(&mut stack, None).await;
    reply.assert_detail(502, "rc_call_failed: rate_limit_error");
    assert_eq!(stack.revenuecat.transactions().len(), 2, "exactly one retry");
    let arrivals = stack.revenuecat.arrivals(Route::Transaction);
    let waited = arrivals[1].duration_since(arrivals[0]);
    assert!(
        (Duration::from_secs(1)..Duration::from_millis(2_500)).contains(&waited),
        "retry after {waited:?}"
    );
    assert!(stack.revenuecat.applied_transactions().is_empty());
    assert!(stack.gateway.envelopes().is_empty());
}

#[tokio::test]
async fn revenuecat_500_is_502_server_error_and_not_applied() {
    let mut stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, rc_error(500, "server_error"), 1);
    let (reply, _) = adjust_once(&mut stack, Some("fm-500")).await;
    reply.assert_detail(502, "rc_call_failed: server_error");
    assert_eq!(stack.revenuecat.transactions().len(), 1, "an unknown outcome is not retried blindly");
    assert!(stack.revenuecat.applied_transactions().is_empty());
    assert!(stack.gateway.envelopes().is_empty());
}

#[tokio::test]
async fn revenuecat_hanging_is_502_timeout_well_inside_the_deadline() {
    let mut stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::Hang, 1);
    let (reply, took) = adjust_once(&mut stack, None).await;
    reply.assert_detail(502, "rc_call_failed: timeout");
    // REVENUECAT_TIMEOUT_MS is 800: it waited that long, and not for the hang.
    assert!(took >= Duration::from_millis(800), "gave up after {took:?}, before the 800 ms timeout");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert!(stack.revenuecat.applied_transactions().is_empty());
    assert!(stack.gateway.envelopes().is_empty());
}

#[tokio::test]
async fn revenuecat_refusing_connections_is_502_connect() {
    let mut stack = Stack::start().await;
    stack.set_env("REVENUECAT_API_URL", "http://127.0.0.1:9/v2");
    let (reply, _) = adjust_once(&mut stack, Some("fm-refused")).await;
    reply.assert_detail(502, "rc_call_failed: connect");
    assert!(stack.gateway.envelopes().is_empty());
    // Refused means never sent: the key is free for a retry at once.
    stack.set_env("REVENUECAT_API_URL", stack.revenuecat_url());
    let (retry, _) = adjust_once(&mut stack, Some("fm-refused")).await;
    assert_eq!(retry.status, 200, "{}", retry.body);
}

#[tokio::test]
async fn revenuecat_answering_garbage_is_502_invalid_response() {
    let mut stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::InvalidJson, 1);
    let (reply, _) = adjust_once(&mut stack, None).await;
    reply.assert_detail(502, "rc_call_failed: invalid_response");
    assert!(stack.gateway.envelopes().is_empty());
}

async fn assert_envelope_queued_then_delivered(stack: &mut Stack, reply: Reply) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["notified"], false, "the adjustment stands; the envelope waits");
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
    stack.set_env("GATEWAY_URL", stack.gateway_url());
    let lambda = stack.lambda("adjust-credits", 1).await;
    let summary = lambda.invoke(scheduled_event()).await.into_response();
    assert_eq!(summary["redelivered"], 1, "{summary}");
    assert_eq!(stack.gateway.unique_envelope_ids().len(), 1, "one envelope id, however often it was sent");
}

#[tokio::test]
async fn gateway_5xx_keeps_the_adjustment_and_queues_the_envelope() {
    let mut stack = Stack::start().await;
    stack.gateway.inject(GatewayFault::Status(503), 1);
    let (reply, _) = adjust_once(&mut stack, None).await;
    assert_envelope_queued_then_delivered(&mut stack, reply).await;
}

#[tokio::test]
async fn a_slow_gateway_is_given_two_seconds() {
    let mut stack = Stack::start().await;
    stack.gateway.inject(GatewayFault::Delay(Duration::from_secs(4)), 1);
    let (reply, took) = adjust_once(&mut stack, None).await;
    // The gateway holds the envelope for 4 s; the post gives up after its 2 s.
    assert!(
        (Duration::from_secs(2)..Duration::from_millis(3_500)).contains(&took),
        "the envelope post is given 2 s, no less and not much more: {took:?}"
    );
    assert_envelope_queued_then_delivered(&mut stack, reply).await;
}

#[tokio::test]
async fn a_gateway_refusing_connections_queues_the_envelope() {
    let mut stack = Stack::start().await;
    stack.set_env("GATEWAY_URL", "http://127.0.0.1:9");
    let (reply, _) = adjust_once(&mut stack, None).await;
    assert_envelope_queued_then_delivered(&mut stack, reply).await;
}

#[tokio::test]
async fn secrets_manager_unreachable_is_503_secret_store_unavailable() {
    let mut stack = Stack::start().await;
    stack.set_env("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:9");
    let (reply, _) = adjust_once(&mut stack, None).await;
    reply.assert_error(503, "secret_store_unavailable");
    assert_eq!(stack.revenuecat.request_count(Route::Transaction), 0);
}

#[tokio::test]
async fn secrets_manager_denying_access_is_503_secret_store_unavailable() {
    let mut stack = Stack::start().await;
    let denied = access_denied_endpoint().await;
    stack.set_env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &denied);
    let (reply, _) = adjust_once(&mut stack, None).await;
    reply.assert_error(503, "secret_store_unavailable");
    assert_eq!(stack.revenuecat.request_count(Route::Transaction), 0);
}

#[tokio::test]
async fn a_secret_that_is_not_json_is_503_admin_unconfigured() {
    let mut stack = Stack::start().await;
    stack.put_raw_secret("adm_just_a_string").await;
    let (reply, _) = adjust_once(&mut stack, None).await;
    reply.assert_detail(503, "admin_unconfigured");
    assert_eq!(stack.revenuecat.request_count(Route::Transaction), 0);
}

#[tokio::test]
async fn a_secret_missing_a_key_is_503_naming_it() {
    let mut stack = Stack::start().await;
    let key = format!("sk_incomplete_{}", uuid::Uuid::new_v4().simple());
    let incomplete = json!({"admin_secret": stack.admin_token, "revenuecat_api_key": key});
    stack.put_raw_secret(&incomplete.to_string()).await;
    let (reply, _) = adjust_once(&mut stack, None).await;
    reply.assert_detail(503, "admin_unconfigured: revenuecat_project_id is not set");
    assert_eq!(stack.revenuecat.request_count(Route::Transaction), 0);
}

/// A stand-in for Secrets Manager that refuses every call as IAM would.
async fn access_denied_endpoint() -> String {
    let app = axum::Router::new().fallback(|| async {
        (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/x-amz-json-1.1"), ("x-amzn-errortype", "AccessDeniedException")],
            json!({"__type": "AccessDeniedException", "Message": "not authorized to perform secretsmanager:GetSecretValue"})
                .to_string(),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}
