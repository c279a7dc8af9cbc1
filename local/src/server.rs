//! A plain HTTP server in front of the shared `Router`: requests are turned
//! into the same `lambda_http::Request` type the Lambda runtime produces.

use axum::body::{to_bytes, Body as AxumBody};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use credits::reconcile;
use credits::Router;
use serde_json::json;

use crate::setup::Local;

/// API Gateway's own payload limit is far above this; the API's body limit
/// (16 KiB → 413) is enforced by the shared pipeline, this only bounds memory.
const MAX_READ_BYTES: usize = 1024 * 1024;

pub async fn serve(local: Local) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(local.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", local.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    print_banner(&local, &format!("http://{addr}"));

    let app = axum::Router::new()
        .route("/", get(index))
        .route("/_local/reconcile", post(reconcile_once))
        .fallback(api)
        .with_state(local.router.clone());
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.map_err(|e| e.to_string())
}

async fn api(State(router): State<Router>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_READ_BYTES).await else {
        let body = json!({"detail": format!("payload_too_large: body exceeds {MAX_READ_BYTES} bytes")});
        return (http::StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response();
    };
    let body =
        if bytes.is_empty() { lambda_http::Body::Empty } else { lambda_http::Body::Binary(bytes.to_vec()) };
    let response = router.handle(http::Request::from_parts(parts, body)).await;
    let (parts, body) = response.into_parts();
    let body = match body {
        lambda_http::Body::Text(text) => AxumBody::from(text),
        lambda_http::Body::Binary(bytes) => AxumBody::from(bytes),
        _ => AxumBody::empty(),
    };
    Response::from_parts(parts, body)
}

async fn index() -> Json<serde_json::Value> {
    Json(json!({
        "service": "credits-admin (local)",
        "routes": [
            "GET /admin/credits/currencies",
            "GET /admin/credits/balances/{user_id}?include_empty=true|false",
            "GET /admin/credits/ledger/{user_id}?limit=1..100&cursor=…  (Accept: text/csv for CSV)",
            "POST /admin/credits/adjust",
        ],
        "local_only": ["POST /_local/reconcile"],
        "auth": "Authorization: Bearer <admin token printed at start>",
    }))
}

/// One reconciliation pass, as the EventBridge schedule would run it.
async fn reconcile_once(State(router): State<Router>) -> Json<reconcile::ReconcileSummary> {
    let budget = credits::budget::Budget::lasting(reconcile::LOCAL_PASS_BUDGET);
    Json(reconcile::run_pass(router.app(), budget).await)
}

fn print_banner(local: &Local, url: &str) {
    let token = &local.admin_token;
    println!("credits-admin (local) listening on {url}");
    println!("admin token: {token}");
    for adapter in &local.adapters {
        println!("  {adapter}");
    }
    println!("try:");
    println!("  curl -s -H 'Authorization: Bearer {token}' {url}/admin/credits/currencies");
    println!("  curl -s -H 'Authorization: Bearer {token}' {url}/admin/credits/balances/user_2abcXYZ");
    println!(
        "  curl -s -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \
         -d '{{\"user_id\":\"user_2abcXYZ\",\"amount\":100,\"reason\":\"ZD-1234 goodwill\",\"idempotency_key\":\"ZD-1234-grant\",\"actor\":\"ana@example.com\"}}' \
         {url}/admin/credits/adjust"
    );
    println!("  curl -s -H 'Authorization: Bearer {token}' {url}/admin/credits/ledger/user_2abcXYZ   # who gave what, when, why");
    println!("  curl -s -X POST {url}/_local/reconcile   # one reconciliation pass");
}

/// Ctrl-C in a terminal, SIGTERM from a supervisor or a test.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    println!("credits-local: stopping");
}
