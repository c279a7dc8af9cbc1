//! HTTP endpoints of the Runtime API, as documented by AWS.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::state::{Completion, State};
use super::Invocation;

/// Lambda's synchronous payload limit; axum's default (2 MiB) is lower.
const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

type Shared = AxumState<Arc<State>>;

pub(super) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{request_id}/response", post(response))
        .route("/2018-06-01/runtime/invocation/{request_id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD))
        .with_state(state)
}

async fn next(AxumState(state): Shared) -> Response {
    let Some(queued) = state.next_invocation().await else {
        return api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            "the runtime API emulator has shut down",
        );
    };
    let deadline = *state.deadline.lock().unwrap();
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        headers.insert(name, HeaderValue::from_str(&value).expect("header values are ASCII"));
    };
    set("lambda-runtime-aws-request-id", queued.request_id);
    set("lambda-runtime-deadline-ms", deadline_ms(deadline).to_string());
    set("lambda-runtime-invoked-function-arn", state.function_arn.clone());
    set("lambda-runtime-trace-id", trace_id());
    (headers, Json(queued.event)).into_response()
}

async fn response(AxumState(state): Shared, Path(request_id): Path<String>, body: Bytes) -> Response {
    let outcome = state.complete(&request_id, Invocation::Response(parse_body(&body)));
    completion_response(outcome, &request_id)
}

async fn error(AxumState(state): Shared, Path(request_id): Path<String>, body: Bytes) -> Response {
    let outcome = state.complete(&request_id, Invocation::Error(parse_body(&body)));
    completion_response(outcome, &request_id)
}

async fn init_error(AxumState(state): Shared, body: Bytes) -> Response {
    state.init_errors.lock().unwrap().push(parse_body(&body));
    accepted()
}

fn completion_response(outcome: Completion, request_id: &str) -> Response {
    match outcome {
        Completion::Accepted => accepted(),
        Completion::AlreadyAnswered => api_error(
            StatusCode::BAD_REQUEST,
            "InvalidStateTransition",
            &format!("invocation {request_id} was already answered"),
        ),
        // What real Lambda answers for a response to a timed-out invocation.
        Completion::Withdrawn => api_error(
            StatusCode::GONE,
            "InvocationTimedOut",
            &format!("invocation {request_id} is no longer awaited"),
        ),
        Completion::UnknownRequestId => api_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            &format!("unknown request id {request_id}"),
        ),
    }
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, Json(json!({ "status": "OK" }))).into_response()
}

fn api_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body = json!({ "errorType": error_type, "errorMessage": message });
    (status, Json(body)).into_response()
}

/// Function output is usually JSON; anything else is kept as a JSON string so
/// the test still sees what was sent.
fn parse_body(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// Milliseconds since the epoch at which the invocation times out.
fn deadline_ms(timeout: Duration) -> u128 {
    (SystemTime::now() + timeout).duration_since(UNIX_EPOCH).expect("clock is after 1970").as_millis()
}

/// An X-Ray trace header in the format Lambda sends.
fn trace_id() -> String {
    let epoch_secs = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock is after 1970").as_secs();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("Root=1-{epoch_secs:08x}-{};Parent={};Sampled=0", &random[..24], &random[16..])
}
