//! One bounded reconciliation pass (spec §7), run by the schedule on
//! `adjust-credits`: settle adjustments whose lease lapsed without a result,
//! and re-deliver queued envelopes, side by side so neither starves the other.
//!
//! Safe to run concurrently with itself and with live traffic: a lapsed claim
//! is taken over with a conditional lease renewal (one winner), the identical
//! transaction is re-sent with its recorded RevenueCat `Idempotency-Key`
//! (RevenueCat applies it at most once), and envelopes carry a stable
//! `envelope_id` that the gateway deduplicates.
//!
//! Every call is bounded by the pass's budget, so the pass answers before its
//! deadline whatever an upstream does; an item cut short stays where it was
//! (a lapsed claim, a queued envelope) for the next pass.

use std::time::Duration;

use serde::Serialize;

use crate::app::App;
use crate::budget::{Budget, MIN_GATEWAY_CALL, MIN_STORE_CALL};
use crate::clock;
use crate::domain::ledger::{EntryStatus, Origin};
use crate::handlers::adjust::{settle, LEASE_MARGIN_MS};
use crate::metrics;
use crate::ports::{PendingClaim, QueuedEnvelope, RcError};
use crate::secrets::AdminSecret;

/// Work items fetched per pass; the next scheduled pass takes the rest.
const BATCH: usize = 25;
/// Deliveries of one envelope (the live one included) before it is dead-lettered.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 8;
/// The wait after a refused delivery doubles from this, up to `MAX_REDELIVERY_BACKOFF`.
const FIRST_REDELIVERY_BACKOFF: Duration = Duration::from_secs(30);
const MAX_REDELIVERY_BACKOFF: Duration = Duration::from_secs(3600);

/// The budget for a pass started outside Lambda (the local runner).
pub const LOCAL_PASS_BUDGET: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileSummary {
    /// Queued envelopes the gateway accepted in this pass.
    pub redelivered: u32,
    /// Lapsed adjustments whose RevenueCat answer is now recorded.
    pub settled: u32,
    /// Lapsed adjustments RevenueCat definitely rejected; their claims were released.
    pub released: u32,
    /// Claims of requests the rate limiter refused (answered 429) whose
    /// release had failed: dropped, never applied.
    pub abandoned: u32,
    /// Adjustments or envelopes that still could not be settled or delivered.
    pub failed: u32,
    /// Envelopes the gateway refused `MAX_DELIVERY_ATTEMPTS` times, moved to the dead letter.
    pub dead_lettered: u32,
    /// Records that could not be read; skipped and logged for a person.
    pub unreadable: u32,
    /// False when the pass stopped early (deadline, store unreachable).
    pub complete: bool,
}

impl ReconcileSummary {
    fn merge(mut self, other: ReconcileSummary) -> Self {
        self.redelivered += other.redelivered;
        self.settled += other.settled;
        self.released += other.released;
        self.abandoned += other.abandoned;
        self.failed += other.failed;
        self.dead_lettered += other.dead_lettered;
        self.unreadable += other.unreadable;
        self.complete &= other.complete;
        self
    }
}

/// The wait before the next delivery of an envelope that failed `attempts` times.
pub fn redelivery_backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (FIRST_REDELIVERY_BACKOFF * 2u32.pow(doublings)).min(MAX_REDELIVERY_BACKOFF)
}

pub async fn run_pass(app: &App, budget: Budget) -> ReconcileSummary {
    let started = std::time::Instant::now();
    let secret = match app.secrets.current(&budget).await {
        Ok(secret) => secret,
        Err(error) => {
            tracing::error!(detail = %error.detail(), "reconciliation cannot read the admin secret");
            return ReconcileSummary::default();
        }
    };
    let (claims, (envelopes, oldest_envelope)) =
        tokio::join!(settle_lapsed(app, &secret, &budget), redeliver(app, &secret, &budget));
    let summary = claims.merge(envelopes);
    let failed = summary.failed + summary.dead_lettered;
    metrics::reconciliation(summary.settled, failed, summary.unreadable, started.elapsed(), oldest_envelope);
    tracing::info!(?summary, "reconciliation pass finished");
    summary
}

async fn settle_lapsed(app: &App, secret: &AdminSecret, budget: &Budget) -> ReconcileSummary {
    let mut summary = ReconcileSummary { complete: true, ..Default::default() };
    let lapsed = match budget.try_run(app.idempotency.lapsed(clock::now_ms(), BATCH, budget)).await {
        Ok(lapsed) => lapsed,
        Err(error) => {
            tracing::error!(%error, "reconciliation cannot list lapsed claims");
            summary.complete = false;
            return summary;
        }
    };
    for problem in lapsed.unreadable {
        summary.unreadable += 1;
        tracing::error!(%problem, "reconciliation skipped an adjustment record it cannot read; settle it by hand");
    }
    // An item is started only when one full RevenueCat attempt and the
    // envelope still fit; each of its calls is bounded by the pass's budget.
    let item_needs = app.config.revenuecat_timeout + MIN_GATEWAY_CALL + 2 * MIN_STORE_CALL;
    for stale in lapsed.claims {
        if !budget.allows(item_needs) {
            summary.complete = false;
            break;
        }
        let lease_until_ms = budget.deadline_epoch_ms() + LEASE_MARGIN_MS;
        match budget.try_run(app.idempotency.renew(&stale, lease_until_ms, budget)).await {
            Ok(true) => {}
            Ok(false) => continue, // a concurrent pass or a client retry owns it now
            Err(error) => {
                tracing::error!(%error, record = %stale.record_key, "could not take over a lapsed claim");
                summary.failed += 1;
                continue;
            }
        }
        let claim = PendingClaim { lease_until_ms, attempts: stale.attempts + 1, ..stale };
        match was_refused_admission(app, &claim, budget).await {
            Ok(false) => {}
            Ok(true) => {
                match budget.try_run(app.idempotency.release(&claim.record_key, budget)).await {
                    Ok(()) => summary.abandoned += 1,
                    Err(_) => summary.failed += 1,
                }
                tracing::warn!(record = %claim.record_key, "dropped the claim of a rate-limited request; it was never sent");
                continue;
            }
            Err(error) => {
                // Never apply what might have been answered 429; the lease lapses and the next pass asks again.
                tracing::error!(%error, record = %claim.record_key, "cannot tell whether a lapsed claim's request was admitted");
                summary.failed += 1;
                continue;
            }
        }
        // Listed as pending from now on (a crash left it unlisted), until settled below.
        let pending = claim.ledger_entry(EntryStatus::Pending, Origin::Reconciliation, None, None);
        if let Err(error) = budget.try_run(app.ledger.record(&pending, budget)).await {
            tracing::error!(%error, record = %claim.record_key, "could not list a lapsed adjustment as pending");
        }
        match settle(app, secret, &claim, true, Origin::Reconciliation, budget).await {
            Ok(result) => {
                summary.settled += 1;
                tracing::info!(record = %claim.record_key, balance = result.balance, "settled a lapsed adjustment");
            }
            Err(error) => {
                let definite = !matches!(error, RcError::OutcomeUnknown { .. });
                if definite {
                    summary.released += 1;
                } else {
                    summary.failed += 1;
                }
                // Everything a human needs to finish this by hand (never a secret).
                tracing::error!(
                    record = %claim.record_key,
                    client_key = claim.client_key.as_deref().unwrap_or(""),
                    user_id = %claim.transaction.customer_id,
                    currency = %claim.transaction.currency,
                    amount = claim.transaction.amount,
                    reference = %claim.transaction.reference,
                    revenuecat_idempotency_key = %claim.transaction.idempotency_key,
                    envelope_id = %claim.envelope_id,
                    attempts = claim.attempts,
                    rc_error = error.kind(),
                    released = definite,
                    "reconciliation could not settle an adjustment"
                );
            }
        }
    }
    summary
}

/// Whether the claim's own request was refused by the rate limiter (and
/// answered 429) but its claim could not be dropped then. Only a claim that
/// was never taken over can be such a leftover; a takeover was admitted itself.
async fn was_refused_admission(
    app: &App,
    claim: &PendingClaim,
    budget: &Budget,
) -> Result<bool, crate::ports::StoreError> {
    let first_owner_died = claim.attempts == 2; // the live request, then this takeover
    let Some(admission) = claim.admission.as_ref().filter(|_| first_owner_died) else {
        return Ok(false);
    };
    let position = budget
        .try_run(app.rate_limits.position_of(
            &admission.bucket,
            admission.window_start,
            &admission.ticket,
            budget,
        ))
        .await?;
    // No position: the limiter was unreachable and let the request through.
    Ok(position.is_some_and(|p| !admission.admits(p)))
}

/// Re-delivers due envelopes; also says how long the oldest of them has waited.
async fn redeliver(app: &App, secret: &AdminSecret, budget: &Budget) -> (ReconcileSummary, Duration) {
    let mut summary = ReconcileSummary { complete: true, ..Default::default() };
    let due = match budget.try_run(app.outbox.due(clock::now_ms(), BATCH, budget)).await {
        Ok(due) => due,
        Err(error) => {
            tracing::error!(%error, "reconciliation cannot read the outbox");
            summary.complete = false;
            return (summary, Duration::ZERO);
        }
    };
    let now = std::time::SystemTime::now();
    let oldest = due
        .envelopes
        .iter()
        .filter_map(|q| humantime::parse_rfc3339(&q.envelope.occurred_at).ok())
        .filter_map(|at| now.duration_since(at).ok())
        .max()
        .unwrap_or_default();
    for problem in due.unreadable {
        summary.unreadable += 1;
        tracing::error!(%problem, "reconciliation skipped a queued envelope it cannot read");
    }
    for queued in due.envelopes {
        if !budget.allows(MIN_GATEWAY_CALL + MIN_STORE_CALL) {
            summary.complete = false;
            break;
        }
        let envelope = &queued.envelope;
        let post_budget = budget.keeping(MIN_STORE_CALL);
        match post_budget.try_run(app.notifier.notify(secret.admin_token(), envelope, &post_budget)).await {
            Ok(()) => {
                summary.redelivered += 1;
                metrics::envelope_redelivered();
                if let Err(error) = budget.try_run(app.outbox.remove(&envelope.envelope_id, budget)).await {
                    // Harmless: it is sent again next pass and the gateway drops the duplicate.
                    tracing::warn!(%error, envelope_id = %envelope.envelope_id, "delivered but not dequeued");
                }
            }
            Err(error) => {
                let attempts = queued.attempts + 1;
                let next_attempt_ms = clock::now_ms() + redelivery_backoff(attempts).as_millis() as u64;
                let retried = QueuedEnvelope { attempts, next_attempt_ms, ..queued.clone() };
                if attempts >= MAX_DELIVERY_ATTEMPTS {
                    summary.dead_lettered += 1;
                    metrics::envelope_dead_lettered();
                    let moved = budget.try_run(app.outbox.dead_letter(&retried, budget)).await;
                    tracing::error!(
                        %error,
                        envelope = %serde_json::to_string(envelope).unwrap_or_default(),
                        attempts,
                        moved = moved.is_ok(),
                        "usage.changed dead-lettered: the gateway refused it every time"
                    );
                } else {
                    summary.failed += 1;
                    let rescheduled = budget.try_run(app.outbox.retry_later(&retried, budget)).await;
                    tracing::error!(%error, envelope_id = %envelope.envelope_id, user_id = %envelope.user_id,
                        attempts, rescheduled = rescheduled.is_ok(), "queued usage.changed still not delivered");
                }
            }
        }
    }
    (summary, oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivery_backs_off_exponentially_up_to_an_hour() {
        assert_eq!(redelivery_backoff(1), Duration::from_secs(30));
        assert_eq!(redelivery_backoff(2), Duration::from_secs(60));
        assert_eq!(redelivery_backoff(5), Duration::from_secs(480));
        assert_eq!(redelivery_backoff(20), MAX_REDELIVERY_BACKOFF);
    }
}
