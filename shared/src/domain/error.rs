//! The error catalogue: every failure a caller can see, mapped to its status
//! and `{"detail"}` body in exactly one place.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};
use lambda_http::Body;

/// A request that cannot be answered with a 2xx.
///
/// The variant names mirror the published detail codes so a reader can go from
/// a support ticket's `detail` straight to the code that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The secret is missing or incomplete; the text names what is missing
    /// when it is a RevenueCat credential (the admin secret itself is not named).
    AdminUnconfigured(Option<&'static str>),
    SecretStoreUnavailable,
    MissingBearer,
    InvalidAdminSecret,
    NotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
    PayloadTooLarge {
        limit: usize,
    },
    UnsupportedMediaType,
    InvalidJson,
    UnknownField(String),
    InvalidUserId,
    InvalidIncludeEmpty,
    AmountMustBeNonzero,
    InvalidAmount,
    InvalidReason,
    UnknownCurrency,
    InvalidIdempotencyKey,
    InvalidActor,
    InvalidLimit,
    InvalidCursor,
    /// The ledger could not be read (DynamoDB unusable).
    LedgerUnavailable,
    RateLimited {
        retry_after: Duration,
    },
    IdempotencyKeyReused,
    IdempotencyKeyInProgress {
        retry_after: Duration,
    },
    IdempotencyStoreUnavailable,
    RcCustomerNotFound,
    InsufficientBalance,
    /// Any other RevenueCat failure; carries RevenueCat's error `type`
    /// (or `timeout`, `connect`, `invalid_response`).
    RcCallFailed(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            AdminUnconfigured(_)
            | SecretStoreUnavailable
            | IdempotencyStoreUnavailable
            | LedgerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            MissingBearer => StatusCode::UNAUTHORIZED,
            InvalidAdminSecret => StatusCode::FORBIDDEN,
            NotFound | RcCustomerNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            InvalidJson | AmountMustBeNonzero => StatusCode::BAD_REQUEST,
            UnknownField(_)
            | InvalidUserId
            | InvalidIncludeEmpty
            | InvalidAmount
            | InvalidReason
            | UnknownCurrency
            | InvalidIdempotencyKey
            | InvalidActor
            | InvalidLimit
            | InvalidCursor
            | IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            IdempotencyKeyInProgress { .. } | InsufficientBalance => StatusCode::CONFLICT,
            RcCallFailed(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The machine-readable code, the part of `detail` before any `": "`.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            AdminUnconfigured(_) => "admin_unconfigured",
            SecretStoreUnavailable => "secret_store_unavailable",
            MissingBearer => "missing_bearer",
            InvalidAdminSecret => "invalid_admin_secret",
            NotFound => "not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            PayloadTooLarge { .. } => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            InvalidJson => "invalid_json",
            UnknownField(_) => "unknown_field",
            InvalidUserId => "invalid_user_id",
            InvalidIncludeEmpty => "invalid_include_empty",
            AmountMustBeNonzero => "amount_must_be_nonzero",
            InvalidAmount => "invalid_amount",
            InvalidReason => "invalid_reason",
            UnknownCurrency => "unknown_currency",
            InvalidIdempotencyKey => "invalid_idempotency_key",
            InvalidActor => "invalid_actor",
            InvalidLimit => "invalid_limit",
            InvalidCursor => "invalid_cursor",
            LedgerUnavailable => "ledger_unavailable",
            RateLimited { .. } => "rate_limited",
            IdempotencyKeyReused => "idempotency_key_reused",
            IdempotencyKeyInProgress { .. } => "idempotency_key_in_progress",
            IdempotencyStoreUnavailable => "idempotency_store_unavailable",
            RcCustomerNotFound => "rc_customer_not_found",
            InsufficientBalance => "insufficient_balance",
            RcCallFailed(_) => "rc_call_failed",
        }
    }

    /// The full `detail` string: the code, then a human hint where one helps.
    pub fn detail(&self) -> String {
        use ApiError::*;
        let hint: Option<String> = match self {
            AdminUnconfigured(what) => what.map(|w| format!("{w} is not set")),
            PayloadTooLarge { limit } => Some(format!("body exceeds {limit} bytes")),
            UnsupportedMediaType => Some("send Content-Type: application/json".into()),
            UnknownField(name) => Some(name.clone()),
            InvalidUserId => {
                Some("a Clerk user id of 1-200 characters without '/' or control characters".into())
            }
            InvalidIncludeEmpty => Some("use true, false, 1 or 0".into()),
            InvalidAmount => Some("an integer with |amount| <= 1000000000".into()),
            InvalidReason => Some("3-500 characters after trimming".into()),
            InvalidIdempotencyKey => Some("1-200 characters; header and body must agree".into()),
            InvalidActor => Some("1-200 characters without control characters".into()),
            InvalidLimit => Some("an integer from 1 to 100".into()),
            InvalidCursor => Some("use next_cursor of the previous page of the same user".into()),
            RcCallFailed(kind) => Some(kind.clone()),
            _ => None,
        };
        match hint {
            Some(hint) => format!("{}: {hint}", self.code()),
            None => self.code().to_string(),
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after } | ApiError::IdempotencyKeyInProgress { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "detail": self.detail() }).to_string();
        let mut response = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::Text(body))
            .expect("static status and header are valid");
        let headers = response.headers_mut();
        if let Some(after) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds_ceil(after)));
        }
        if let ApiError::MethodNotAllowed { allow } = self {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// Whole seconds for `Retry-After`-style headers, rounded up so a client that
/// waits exactly that long is never early.
pub fn seconds_ceil(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs.max(1)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status().as_u16(), self.detail())
    }
}

impl std::error::Error for ApiError {}
