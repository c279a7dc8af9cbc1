//! `POST …/virtual_currencies/transactions` (§5): body validation, balance arithmetic and
//! `Idempotency-Key` bookkeeping (§10).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::wire::{List, VirtualCurrencyBalance};
use super::{RecordedTransaction, State, StoredCurrency};

/// Balances must stay within 0..=2,000,000,000 (§4, §13).
const MAX_BALANCE: i64 = 2_000_000_000;

/// The request body: `adjustments` (required) and `reference` (optional, nullable), nothing
/// else (`additionalProperties: false`, §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TransactionBody {
    pub(super) adjustments: BTreeMap<String, i64>,
    pub(super) reference: Option<String>,
}

impl TransactionBody {
    /// Validates the body. Every failure is 400 `parameter_error` (§5, §13 [I]).
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|_| ApiError::parameter("Request body is not valid JSON"))?;
        let Value::Object(mut fields) = value else {
            return Err(ApiError::parameter("Request body must be a JSON object"));
        };
        if let Some(unknown) = fields.keys().find(|k| !matches!(k.as_str(), "adjustments" | "reference")) {
            return Err(ApiError::parameter(format!("Unknown field '{unknown}'")).with_param(unknown));
        }
        let adjustments = parse_adjustments(fields.remove("adjustments"))?;
        let reference = match fields.remove("reference") {
            None | Some(Value::Null) => None,
            Some(Value::String(reference)) => Some(reference),
            Some(_) => {
                return Err(ApiError::parameter("reference must be a string or null").with_param("reference"))
            }
        };
        Ok(Self { adjustments, reference })
    }
}

/// `adjustments` maps currency codes to non-zero integers. Zero and empty maps are refused:
/// the notes leave both undocumented (§5 table) and a no-op transaction is almost certainly a
/// caller bug.
fn parse_adjustments(value: Option<Value>) -> Result<BTreeMap<String, i64>, ApiError> {
    let invalid = |message: String| ApiError::parameter(message).with_param("adjustments");
    let adjustments = match value {
        None => return Err(invalid("adjustments is required".to_owned())),
        Some(Value::Object(adjustments)) => adjustments,
        Some(_) => {
            return Err(invalid(
                "adjustments must be an object mapping currency codes to integers".to_owned(),
            ))
        }
    };
    if adjustments.is_empty() {
        return Err(invalid("adjustments must not be empty".to_owned()));
    }
    adjustments
        .into_iter()
        .map(|(code, amount)| match amount.as_i64() {
            Some(0) => Err(invalid(format!("Adjustment for '{code}' must not be zero"))),
            Some(amount) => Ok((code, amount)),
            None => Err(invalid(format!("Adjustment for '{code}' must be an integer"))),
        })
        .collect()
}

/// The log entry for a request, read leniently: the log keeps even requests whose body is
/// rejected, so it takes whatever integers and reference it can find.
pub(super) fn record_of(
    customer_id: &str,
    body: &[u8],
    idempotency_key: Option<String>,
) -> RecordedTransaction {
    let fields = serde_json::from_slice::<Map<String, Value>>(body).unwrap_or_default();
    let adjustments = fields
        .get("adjustments")
        .and_then(Value::as_object)
        .map(|adjustments| {
            adjustments.iter().filter_map(|(code, amount)| Some((code.clone(), amount.as_i64()?))).collect()
        })
        .unwrap_or_default();
    RecordedTransaction {
        customer_id: customer_id.to_owned(),
        adjustments,
        reference: fields.get("reference").and_then(Value::as_str).map(str::to_owned),
        idempotency_key,
        applied: false,
        status: None,
    }
}

/// What makes two requests "the same" for an Idempotency-Key: the customer and the body
/// (adjustments + reference). Key order and whitespace in the JSON do not matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fingerprint {
    pub(super) customer_id: String,
    pub(super) body: TransactionBody,
}

/// A finished answer, kept so that a replay returns exactly the same status and bytes.
#[derive(Debug, Clone)]
pub(super) struct StoredResponse {
    status: StatusCode,
    body: Bytes,
}

impl StoredResponse {
    pub(super) fn new(outcome: Result<List<VirtualCurrencyBalance>, ApiError>) -> Self {
        let (status, body) = match outcome {
            Ok(list) => (StatusCode::OK, serde_json::to_vec(&list)),
            Err(error) => (error.status(), serde_json::to_vec(&error.body())),
        };
        Self { status, body: Bytes::from(body.expect("response bodies always serialize")) }
    }
}

impl IntoResponse for StoredResponse {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// State of one Idempotency-Key. Keys are scoped to the project and never expire (the TTL is
/// undocumented, §10).
#[derive(Debug, Clone)]
pub(super) enum IdempotencyEntry {
    /// A request with this key is being processed.
    InFlight(Fingerprint),
    /// Processed; every final answer (200, 404, 422) is replayed. Validation failures (400)
    /// never reach this point, so they do not use up a key.
    Done(Fingerprint, StoredResponse),
}

/// What to do with a request that carries an Idempotency-Key.
#[derive(Debug)]
pub(super) enum Claim {
    /// First use: the key is now in flight.
    Fresh,
    /// Same request seen before: answer the stored response, apply nothing.
    Replay(StoredResponse),
    /// Key used for a different request: 409 `idempotency_error` (§5, §10).
    Conflict,
    /// Same request still being processed: 423 `resource_locked_error` (§10 [I]).
    Locked,
}

impl State {
    pub(super) fn claim_idempotency_key(&mut self, key: &str, request: &Fingerprint) -> Claim {
        match self.idempotency.get(key) {
            None => {
                self.idempotency.insert(key.to_owned(), IdempotencyEntry::InFlight(request.clone()));
                Claim::Fresh
            }
            Some(IdempotencyEntry::InFlight(first) | IdempotencyEntry::Done(first, _))
                if first != request =>
            {
                Claim::Conflict
            }
            Some(IdempotencyEntry::InFlight(_)) => Claim::Locked,
            Some(IdempotencyEntry::Done(_, stored)) => Claim::Replay(stored.clone()),
        }
    }

    pub(super) fn complete_idempotency_key(
        &mut self,
        key: String,
        request: Fingerprint,
        response: StoredResponse,
    ) {
        self.idempotency.insert(key, IdempotencyEntry::Done(request, response));
    }
}

/// The balances after `adjustments`, or why the transaction is refused. Everything is
/// checked before anything is written, so a refusal changes nothing (§5 atomicity).
pub(super) fn adjusted_balances(
    currencies: &BTreeMap<String, StoredCurrency>,
    balances: &BTreeMap<String, i64>,
    adjustments: &BTreeMap<String, i64>,
) -> Result<BTreeMap<String, i64>, ApiError> {
    // §5 table [I]: an unknown code is 404 `resource_missing` on `adjustments`.
    if let Some(code) = adjustments.keys().find(|c| !currencies.contains_key(*c)) {
        return Err(ApiError::not_found()
            .with_message(format!("Virtual currency '{code}' not found"))
            .with_param("adjustments"));
    }
    adjustments
        .iter()
        .map(|(code, delta)| {
            let current = balances.get(code).copied().unwrap_or(0);
            match current.checked_add(*delta) {
                // §5: S2's `transaction-adjustment-failed.json`, verbatim.
                Some(balance) if balance < 0 => Err(ApiError::unprocessable(
                    "Customer's balance is not enough to perform the transaction.",
                )
                .with_param("adjustments")),
                Some(balance) if balance <= MAX_BALANCE => Ok((code.clone(), balance)),
                // §5 table [I]: above the 2e9 cap is a 422 as well.
                _ => Err(ApiError::unprocessable(format!(
                    "The resulting balance of '{code}' would exceed the maximum of {MAX_BALANCE}."
                ))
                .with_param("adjustments")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<TransactionBody, ApiError> {
        TransactionBody::parse(body.as_bytes())
    }

    #[test]
    fn accepts_a_valid_body() {
        let body = parse(r#"{"adjustments":{"CRD":-5,"GEM":3},"reference":"r1"}"#).unwrap();
        assert_eq!(body.adjustments, BTreeMap::from([("CRD".to_owned(), -5), ("GEM".to_owned(), 3)]));
        assert_eq!(body.reference.as_deref(), Some("r1"));
        assert_eq!(parse(r#"{"adjustments":{"CRD":1},"reference":null}"#).unwrap().reference, None);
    }

    #[test]
    fn rejects_invalid_bodies() {
        for body in [
            "not json",
            "[]",
            r#"{"adjustments":{"CRD":1},"reason":"x"}"#,
            r#"{"reference":"x"}"#,
            r#"{"adjustments":{}}"#,
            r#"{"adjustments":{"CRD":0}}"#,
            r#"{"adjustments":{"CRD":1.5}}"#,
            r#"{"adjustments":{"CRD":"5"}}"#,
            r#"{"adjustments":{"CRD":1},"reference":5}"#,
        ] {
            let error = parse(body).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(error.body().kind, "parameter_error", "{body}");
        }
    }

    #[test]
    fn records_what_it_can_from_a_bad_body() {
        let record = record_of("c1", br#"{"adjustments":{"A":2,"B":1.5}}"#, None);
        assert_eq!(record.adjustments, BTreeMap::from([("A".to_owned(), 2)]));
        assert!(record_of("c1", b"garbage", None).adjustments.is_empty());
    }
}
