//! RevenueCat error responses (§8 of /work/shared/revenuecat-v2.md).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::wire::ErrorBody;

/// Backoff RevenueCat suggests for its retryable errors (§8 table: 423, 429, 5xx).
pub(super) const DEFAULT_BACKOFF_MS: u64 = 1000;

/// An error answer, rendered as RevenueCat's error object.
#[derive(Debug, Clone)]
pub(super) struct ApiError {
    status: StatusCode,
    kind: String,
    message: String,
    param: Option<String>,
    retryable: bool,
    backoff_ms: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: kind.to_owned(),
            message: message.into(),
            param: None,
            retryable: false,
            backoff_ms: None,
        }
    }

    pub(super) fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    pub(super) fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 401 for a missing or wrong bearer token (§1, §8).
    pub(super) fn invalid_api_key() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", "Invalid API key")
    }

    /// 403 for a project the key does not belong to (§8, §13).
    pub(super) fn not_authorized() -> Self {
        Self::new(StatusCode::FORBIDDEN, "authorization_error", default_message("authorization_error"))
    }

    /// 404 with S1's generic example (§4).
    pub(super) fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "resource_missing", "Resource not found")
    }

    /// 400 `invalid_request`: wrong Content-Type or wrong method (§8 table).
    pub(super) fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 400 `parameter_error` (§8); callers add `param` when one field is at fault.
    pub(super) fn parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "parameter_error", message)
    }

    /// 422 `unprocessable_entity_error` (§5: insufficient balance, balance above the cap).
    pub(super) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_entity_error", message)
    }

    /// 409 `resource_already_exists` (§7, creating a customer that exists).
    pub(super) fn already_exists(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "resource_already_exists", message)
    }

    /// 409 `idempotency_error`, S1's `Conflict` example verbatim (§5, §10).
    pub(super) fn idempotency_conflict() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "idempotency_error",
            "Idempotency key already used for a different request",
        )
    }

    /// 423 `resource_locked_error`, S1's `Locked` example verbatim (§5).
    pub(super) fn locked() -> Self {
        Self::new(StatusCode::LOCKED, "resource_locked_error", default_message("resource_locked_error"))
            .retryable(Some(DEFAULT_BACKOFF_MS))
    }

    /// 500 when the sandbox itself failed (a panicked request task).
    pub(super) fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", default_message("server_error"))
            .retryable(Some(DEFAULT_BACKOFF_MS))
    }

    /// An injected `Fault::Status`. The message is the §8 example for the type.
    pub(super) fn injected(status: StatusCode, kind: &str, retryable: bool, backoff_ms: Option<u64>) -> Self {
        let error = Self::new(status, kind, default_message(kind));
        if retryable {
            error.retryable(backoff_ms)
        } else {
            error
        }
    }

    fn retryable(mut self, backoff_ms: Option<u64>) -> Self {
        self.retryable = true;
        self.backoff_ms = backoff_ms;
        self
    }

    pub(super) fn status(&self) -> StatusCode {
        self.status
    }

    pub(super) fn body(&self) -> ErrorBody {
        ErrorBody {
            object: "error",
            kind: self.kind.clone(),
            message: self.message.clone(),
            param: self.param.clone(),
            retryable: self.retryable,
            doc_url: format!("https://errors.rev.cat/{}", self.kind.replace('_', "-")),
            // §8: "Only present for retryable errors."
            backoff_ms: self.backoff_ms.filter(|_| self.retryable),
        }
    }

    /// `Retry-After` in whole seconds, rounded up; 429 only (§9).
    fn retry_after_seconds(&self) -> Option<u64> {
        (self.status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| self.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS).div_ceil(1000))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_seconds() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Example messages from the §8 status → type table.
fn default_message(kind: &str) -> &'static str {
    match kind {
        "parameter_error" => "Invalid parameter",
        "invalid_request" => "Content-Type not application/json",
        "authentication_error" => "Invalid API key",
        "authorization_error" => "You're not authorized to access this resource",
        "resource_missing" => "Resource not found",
        "resource_already_exists" => "Name is already taken",
        "idempotency_error" => "Idempotency key already used for a different request",
        "unprocessable_entity_error" => "Unprocessable entity",
        "store_error" => "There was a problem with the store",
        "resource_locked_error" => "The resource is currently being modified by a concurrent request",
        "rate_limit_error" => "Rate limit exceeded",
        _ => "There was an internal server error",
    }
}
