//! `POST /admin/credits/adjust`: claim the adjustment, send one RevenueCat
//! transaction, then record the answer and post the `usage.changed` envelope.

use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::{header, HeaderValue, Method, Response};
use lambda_http::Body;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::budget::{Budget, MIN_GATEWAY_CALL, MIN_REVENUECAT_CALL, MIN_STORE_CALL};
use crate::clock;
use crate::config::Function;
use crate::domain::ledger::{EntryStatus, Origin};
use crate::domain::{Adjustment, ApiError, UsageChanged};
use crate::http::{json_ok, ApiRequest, Endpoint};
use crate::metrics;
use crate::ports::{
    AdmissionRef, ClaimOutcome, NewClaim, PendingClaim, QueuedEnvelope, RcError, Transaction,
};
use crate::secrets::AdminSecret;

/// Idempotency records and queued envelopes are kept this long (spec §6).
pub const RECORD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// A claim's lease outlives the invocation that holds it by this much, so a
/// retry never takes over from an attempt that may still be running.
pub const LEASE_MARGIN_MS: u64 = 2_000;
/// What an applied transaction still needs: the envelope post, then
/// queueing it when the gateway does not take it.
const AFTER_TRANSACTION: Duration = MIN_GATEWAY_CALL.saturating_add(MIN_STORE_CALL);

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
    type Prepared = Claim;
    const EXECUTE_NEEDS: Duration = MIN_REVENUECAT_CALL.saturating_add(AFTER_TRANSACTION);
    const TICKETED_ADMISSION: bool = true;

    fn validate(request: &ApiRequest) -> Result<Adjustment, ApiError> {
        if !is_json_or_unspecified(request.header(header::CONTENT_TYPE).as_deref()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        Adjustment::parse(&request.body, request.header("idempotency-key").as_deref())
    }

    /// Claims the adjustment while the rate limiter decides: every
    /// adjustment gets a record (keyed by the client's key, or a fresh one),
    /// so even an unkeyed one that dies half-way is settled by reconciliation.
    async fn prepare(
        app: &App,
        adjustment: &Adjustment,
        request: &ApiRequest,
        admission: &AdmissionRef,
        budget: &Budget,
    ) -> Claim {
        let lease_until_ms = request.budget.deadline_epoch_ms() + LEASE_MARGIN_MS;
        let new = new_claim(adjustment, lease_until_ms, admission.clone());
        let outcome = budget.try_run(app.idempotency.claim(&new, clock::now_ms(), budget)).await;
        Claim { new, outcome }
    }

    async fn abandon(app: &App, claim: Claim, budget: &Budget) {
        // Only a claim this request created is ours to drop; a lease taken
        // over from a lapsed attempt simply lapses again.
        if let Ok(ClaimOutcome::Claimed(pending)) = claim.outcome {
            if pending.attempts == 1 {
                if let Err(error) = app.idempotency.release(&pending.record_key, budget).await {
                    // Reconciliation finds the counter refused this request and drops the claim then.
                    tracing::warn!(%error, record = %pending.record_key, "could not drop the claim of a rate-limited request");
                }
            }
        }
    }

    async fn execute(
        app: &App,
        secret: &AdminSecret,
        adjustment: Adjustment,
        claim: Claim,
        request: &ApiRequest,
    ) -> Result<Response<Body>, ApiError> {
        let audit = Audit { request, adjustment: &adjustment };
        let Claim { new: new_claim, outcome } = claim;
        let (claim, recorded) = match outcome {
            Ok(ClaimOutcome::Claimed(claim)) => (*claim, true),
            Ok(ClaimOutcome::Completed { response }) => {
                audit.log("replayed", None);
                metrics::adjustment("replayed");
                return replay(&response);
            }
            Ok(ClaimOutcome::InProgress { lease_until_ms }) => {
                audit.log("in_progress", None);
                let wait = Duration::from_millis(lease_until_ms.saturating_sub(clock::now_ms()));
                return Err(ApiError::IdempotencyKeyInProgress { retry_after: wait });
            }
            Ok(ClaimOutcome::FingerprintMismatch) => {
                audit.log("idempotency_key_reused", None);
                return Err(ApiError::IdempotencyKeyReused);
            }
            Err(error) if adjustment.idempotency_key.is_some() => {
                tracing::error!(%error, "idempotency store unavailable; refusing a keyed adjustment");
                audit.log("idempotency_store_unavailable", None);
                return Err(ApiError::IdempotencyStoreUnavailable);
            }
            Err(error) => {
                // Without a client key there is nothing to deduplicate against,
                // and admin work must not stop: apply without a record.
                tracing::error!(%error, "idempotency store unavailable; applying an unkeyed adjustment without a record");
                (new_claim.first_attempt(), false)
            }
        };
        let started = Instant::now();
        let outcome = settle(app, secret, &claim, recorded, Origin::Api, &request.budget).await;
        let latency = Some(started.elapsed());
        match outcome {
            Ok(result) => {
                audit.log("applied", latency);
                Ok(json_ok(&result))
            }
            Err(error) => {
                audit.log(&outcome_label(&error), latency);
                let unknown = matches!(error, RcError::OutcomeUnknown { .. });
                metrics::adjustment(if unknown { "outcome_unknown" } else { "rejected" });
                Err(error.into())
            }
        }
    }
}

/// A claim attempt and what the store answered.
pub struct Claim {
    new: NewClaim,
    outcome: Result<ClaimOutcome, crate::ports::StoreError>,
}

/// Sends a claimed transaction and records what happened. Shared by live
/// requests and reconciliation so both settle an adjustment the same way:
/// - applied → the 200 body is stored for replays and the envelope delivered
///   (or queued in the outbox when the gateway does not take it);
/// - definitely rejected → the claim is released so a retry may run;
/// - outcome unknown → the claim stays, to be settled once its lease lapses.
///
/// The ledger follows: the applied entry is written with the completion
/// record, an unknown outcome is listed as pending at once, and a pending
/// entry that RevenueCat then refused becomes rejected.
pub(crate) async fn settle(
    app: &App,
    secret: &AdminSecret,
    claim: &PendingClaim,
    recorded: bool,
    origin: Origin,
    budget: &Budget,
) -> Result<AdjustResult, RcError> {
    let transaction = &claim.transaction;
    let rc_budget = budget.keeping(AFTER_TRANSACTION);
    let sent =
        rc_budget.try_run(app.revenuecat.create_transaction(&secret.revenuecat, transaction, &rc_budget));
    let balance = match sent.await {
        Ok(balance) => balance,
        Err(error) => {
            let definite = !matches!(error, RcError::OutcomeUnknown { .. });
            if recorded && definite {
                if let Err(store_error) = app.idempotency.release(&claim.record_key, budget).await {
                    // The lease will lapse and reconciliation will find RevenueCat rejects it again.
                    tracing::error!(record = %claim.record_key, %store_error, "could not release a rejected claim");
                }
            }
            // A first attempt refused outright changed nothing and has no
            // entry; only an entry listed as pending turns into rejected.
            let entry = match definite {
                true if claim.attempts > 1 => Some(claim.ledger_entry(
                    EntryStatus::Rejected,
                    origin,
                    None,
                    Some(error.kind().to_owned()),
                )),
                true => None,
                false => Some(claim.ledger_entry(EntryStatus::Pending, origin, None, None)),
            };
            if let Some(entry) = entry {
                if let Err(store_error) = budget.try_run(app.ledger.record(&entry, budget)).await {
                    tracing::error!(record = %claim.record_key, %store_error, status = entry.status.as_str(),
                        "could not write the ledger entry");
                }
            }
            return Err(error);
        }
    };
    let mut result = AdjustResult {
        user_id: transaction.customer_id.clone(),
        currency: transaction.currency.clone(),
        amount: transaction.amount,
        balance,
        idempotency_key: claim.client_key.clone(),
        replayed: false,
        notified: false,
    };
    let envelope = UsageChanged::new(
        claim.envelope_id.clone(),
        &transaction.customer_id,
        &transaction.currency,
        balance,
        transaction.amount,
        SystemTime::now(),
    );
    // Stored with `notified: false`: a replay sends no envelope.
    metrics::adjustment("applied");
    metrics::credits(&transaction.currency, transaction.amount);
    let stored = serde_json::to_string(&result).expect("results serialise");
    let entry = claim.ledger_entry(EntryStatus::Applied, origin, Some(balance), None);
    let record = async {
        if recorded {
            if let Err(error) =
                budget.try_run(app.idempotency.complete(&claim.record_key, &stored, &entry, budget)).await
            {
                // Reconciliation will re-send the same transaction (RevenueCat
                // replays it) and store the answer and the entry then.
                tracing::error!(record = %claim.record_key, %error, "could not record a completed adjustment");
            }
        } else if let Err(error) = budget.try_run(app.ledger.record(&entry, budget)).await {
            // No claim to settle it later: say everything the ledger would have said.
            tracing::error!(entry = %serde_json::to_string(&entry).unwrap_or_default(), %error,
                "an unrecorded adjustment is missing from the ledger");
        }
    };
    let ((), notified) = tokio::join!(record, deliver(app, secret, &envelope, budget));
    result.notified = notified;
    Ok(result)
}

/// Posts the envelope; on failure queues it for reconciliation. `true` when
/// the gateway accepted it now.
pub(crate) async fn deliver(
    app: &App,
    secret: &AdminSecret,
    envelope: &UsageChanged,
    budget: &Budget,
) -> bool {
    let post_budget = budget.keeping(MIN_STORE_CALL);
    let posted = post_budget.try_run(app.notifier.notify(secret.admin_token(), envelope, &post_budget)).await;
    match posted {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(envelope_id = %envelope.envelope_id, %error, "usage.changed not delivered; queueing it");
            let expires_at = clock::now_secs() + RECORD_TTL.as_secs();
            // Due at once: the next reconciliation pass tries it again.
            let queued =
                QueuedEnvelope { envelope: envelope.clone(), attempts: 1, next_attempt_ms: clock::now_ms() };
            let enqueued = budget.try_run(app.outbox.enqueue(&queued, expires_at, budget)).await;
            match &enqueued {
                Ok(()) => metrics::envelope_queued(),
                Err(_) => metrics::envelope_lost(),
            }
            if let Err(store_error) = enqueued {
                tracing::error!(
                    envelope = %serde_json::to_string(envelope).unwrap_or_default(),
                    %store_error,
                    "usage.changed could not be queued either"
                );
            }
            false
        }
    }
}

fn new_claim(adjustment: &Adjustment, lease_until_ms: u64, admission: AdmissionRef) -> NewClaim {
    let created_ms = clock::now_ms();
    let record_key = match &adjustment.idempotency_key {
        Some(key) => format!("client#{key}"),
        None => format!("auto#{}", uuid::Uuid::new_v4()),
    };
    NewClaim {
        record_key,
        client_key: adjustment.idempotency_key.clone(),
        fingerprint: adjustment.fingerprint(),
        transaction: Transaction {
            customer_id: adjustment.user_id.to_string(),
            currency: adjustment.currency.clone(),
            amount: adjustment.amount,
            reference: adjustment.reason.clone(),
            // Fresh per claim; every retry of this claim re-sends it (spec §6).
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        },
        envelope_id: uuid::Uuid::new_v4().to_string(),
        lease_until_ms,
        expires_at: created_ms / 1000 + RECORD_TTL.as_secs(),
        admission,
        created_ms,
        actor: adjustment.actor.clone(),
    }
}

fn replay(stored: &str) -> Result<Response<Body>, ApiError> {
    let mut result: AdjustResult = serde_json::from_str(stored).map_err(|_| {
        tracing::error!("a completed idempotency record holds an unreadable response");
        ApiError::IdempotencyStoreUnavailable
    })?;
    result.replayed = true;
    result.notified = false;
    let mut response = json_ok(&result);
    response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
}

fn outcome_label(error: &RcError) -> String {
    match error {
        RcError::OutcomeUnknown { kind } => format!("outcome_unknown:{kind}"),
        other => format!("rejected:{}", other.kind()),
    }
}

/// No Content-Type is read as JSON (curl's `-d` sends a form type, so an
/// explicit non-JSON type is refused rather than silently reinterpreted).
fn is_json_or_unspecified(content_type: Option<&str>) -> bool {
    content_type.is_none_or(|ct| {
        let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
    })
}

/// The audit line (spec §10): who asked for what, why, and how it ended.
struct Audit<'a> {
    request: &'a ApiRequest,
    adjustment: &'a Adjustment,
}

impl Audit<'_> {
    fn log(&self, outcome: &str, rc_latency: Option<Duration>) {
        tracing::info!(
            target: "audit",
            request_id = %self.request.request_id,
            source_ip = self.request.caller.source_ip.as_deref().unwrap_or(""),
            user_agent = self.request.caller.user_agent.as_deref().unwrap_or(""),
            user_id = %self.adjustment.user_id,
            amount = self.adjustment.amount,
            currency = %self.adjustment.currency,
            reason = %self.adjustment.reason,
            idempotency_key = self.adjustment.idempotency_key.as_deref().unwrap_or(""),
            actor = self.adjustment.actor.as_deref().unwrap_or(""),
            outcome,
            rc_latency_ms = rc_latency.map(|d| d.as_millis() as u64),
            "adjustment"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::is_json_or_unspecified;

    #[test]
    fn content_types() {
        assert!(is_json_or_unspecified(None));
        assert!(is_json_or_unspecified(Some("application/json; charset=utf-8")));
        assert!(is_json_or_unspecified(Some("Application/JSON")));
        assert!(!is_json_or_unspecified(Some("application/x-www-form-urlencoded")));
        assert!(!is_json_or_unspecified(Some("text/plain")));
    }
}
