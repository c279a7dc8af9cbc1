//! `POST /admin/credits/adjust`: one RevenueCat transaction, then the
//! `usage.changed` envelope.

use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use http::{header, Method, Response};
use lambda_http::Body;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::config::Function;
use crate::domain::{Adjustment, ApiError, UsageChanged};
use crate::http::{json_ok, ApiRequest, Endpoint};
use crate::ports::Transaction;
use crate::secrets::AdminSecret;

pub struct AdjustCredits;

/// The 200 body (spec §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustResult {
    pub user_id: String,
    pub currency: String,
    pub amount: i64,
    pub balance: i64,
    pub idempotency_key: Option<String>,
    pub replayed: bool,
    pub notified: bool,
}

#[async_trait]
impl Endpoint for AdjustCredits {
    const METHOD: Method = Method::POST;
    const PATH: &'static str = "/admin/credits/adjust";
    const FUNCTION: Function = Function::AdjustCredits;
    type Input = Adjustment;

    fn validate(request: &ApiRequest) -> Result<Adjustment, ApiError> {
        if !is_json_or_unspecified(request.header(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        Adjustment::parse(&request.body, request.header("idempotency-key"))
    }

    async fn execute(
        app: &App,
        secret: &AdminSecret,
        adjustment: Adjustment,
        request: &ApiRequest,
    ) -> Result<Response<Body>, ApiError> {
        let transaction = Transaction {
            customer_id: adjustment.user_id.to_string(),
            currency: adjustment.currency.clone(),
            amount: adjustment.amount,
            reference: adjustment.reason.clone(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        };
        let started = Instant::now();
        let outcome = app
            .revenuecat
            .create_transaction(&secret.revenuecat, &transaction)
            .await;
        let rc_latency_ms = started.elapsed().as_millis() as u64;
        let balances = match outcome {
            Ok(balances) => balances,
            Err(error) => {
                audit(request, &adjustment, error.kind(), rc_latency_ms);
                return Err(error.into());
            }
        };
        // A currency deducted to zero may be absent from the list (§5 of the notes).
        let balance = balances
            .iter()
            .find(|b| b.currency_code == adjustment.currency)
            .map_or(0, |b| b.balance);
        audit(request, &adjustment, "applied", rc_latency_ms);

        let envelope = UsageChanged::new(
            uuid::Uuid::new_v4().to_string(),
            adjustment.user_id.as_str(),
            &adjustment.currency,
            balance,
            adjustment.amount,
            SystemTime::now(),
        );
        let notified = match app.notifier.notify(secret.admin_token(), &envelope).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(envelope_id = %envelope.envelope_id, %error, "usage.changed not delivered");
                false
            }
        };
        Ok(json_ok(&AdjustResult {
            user_id: adjustment.user_id.to_string(),
            currency: adjustment.currency,
            amount: adjustment.amount,
            balance,
            idempotency_key: adjustment.idempotency_key,
            replayed: false,
            notified,
        }))
    }
}

/// No Content-Type is read as JSON (curl's `-d` sends a form type, so an
/// explicit non-JSON type is refused rather than silently reinterpreted).
fn is_json_or_unspecified(content_type: Option<&str>) -> bool {
    content_type.is_none_or(|ct| {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    })
}

/// The audit line (spec §10): who/what/why and how it ended. Never a token.
fn audit(request: &ApiRequest, adjustment: &Adjustment, outcome: &str, rc_latency_ms: u64) {
    tracing::info!(
        target: "audit",
        request_id = %request.request_id,
        user_id = %adjustment.user_id,
        amount = adjustment.amount,
        currency = %adjustment.currency,
        reason = %adjustment.reason,
        idempotency_key = adjustment.idempotency_key.as_deref().unwrap_or(""),
        outcome,
        rc_latency_ms,
        "adjustment"
    );
}

#[cfg(test)]
mod tests {
    use super::is_json_or_unspecified;

    #[test]
    fn content_types() {
        assert!(is_json_or_unspecified(None));
        assert!(is_json_or_unspecified(Some(
            "application/json; charset=utf-8"
        )));
        assert!(is_json_or_unspecified(Some("Application/JSON")));
        assert!(!is_json_or_unspecified(Some(
            "application/x-www-form-urlencoded"
        )));
        assert!(!is_json_or_unspecified(Some("text/plain")));
    }
}
