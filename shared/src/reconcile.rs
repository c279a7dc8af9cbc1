//! One bounded reconciliation pass (spec §7), run by the schedule on
//! `adjust-credits`: settle adjustments whose lease lapsed without a result,
//! then re-deliver queued envelopes.
//!
//! Safe to run concurrently with itself and with live traffic: a lapsed claim
//! is taken over with a conditional lease renewal (one winner), the identical
//! transaction is re-sent with its recorded RevenueCat `Idempotency-Key`
//! (RevenueCat applies it at most once), and envelopes carry a stable
//! `envelope_id` that the gateway deduplicates.

use std::time::Duration;

use serde::Serialize;

use crate::app::App;
use crate::clock;
use crate::handlers::adjust::{settle, LEASE_MARGIN_MS};
use crate::ports::RcError;

/// Work items fetched per pass; the next scheduled pass takes the rest.
const BATCH: usize = 25;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileSummary {
    /// Queued envelopes the gateway accepted in this pass.
    pub redelivered: u32,
    /// Lapsed adjustments whose RevenueCat answer is now recorded.
    pub settled: u32,
    /// Lapsed adjustments RevenueCat definitely rejected; their claims were released.
    pub released: u32,
    /// Adjustments or envelopes that still could not be settled or delivered.
    pub failed: u32,
    /// False when the pass stopped early (deadline, store unreachable).
    pub complete: bool,
}

pub async fn run_pass(app: &App, deadline_ms: u64) -> ReconcileSummary {
    let mut summary = ReconcileSummary { complete: true, ..Default::default() };
    // Stop early enough that a RevenueCat call started now still fits.
    let stop_at = deadline_ms.saturating_sub(app.config.revenuecat_timeout.as_millis() as u64 + 1_000);
    let out_of_time = || clock::now_ms() >= stop_at;

    let secret = match app.secrets.current().await {
        Ok(secret) => secret,
        Err(error) => {
            tracing::error!(detail = %error.detail(), "reconciliation cannot read the admin secret");
            summary.complete = false;
            return summary;
        }
    };

    match app.idempotency.lapsed(clock::now_ms(), BATCH).await {
        Ok(lapsed) => {
            for stale in lapsed {
                if out_of_time() {
                    summary.complete = false;
                    break;
                }
                let lease_until_ms = deadline_ms + LEASE_MARGIN_MS;
                match app.idempotency.renew(&stale, lease_until_ms).await {
                    Ok(true) => {}
                    Ok(false) => continue, // a concurrent pass or a client retry owns it now
                    Err(error) => {
                        tracing::error!(%error, record = %stale.record_key, "could not take over a lapsed claim");
                        summary.failed += 1;
                        continue;
                    }
                }
                let claim = crate::ports::PendingClaim { lease_until_ms, ..stale };
                match settle(app, &secret, &claim, true).await {
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
                            attempts = claim.attempts + 1,
                            rc_error = error.kind(),
                            released = definite,
                            "reconciliation could not settle an adjustment"
                        );
                    }
                }
            }
        }
        Err(error) => {
            tracing::error!(%error, "reconciliation cannot list lapsed claims");
            summary.complete = false;
        }
    }

    match app.outbox.queued(BATCH).await {
        Ok(queued) => {
            for envelope in queued {
                if out_of_time() {
                    summary.complete = false;
                    break;
                }
                match app.notifier.notify(secret.admin_token(), &envelope).await {
                    Ok(()) => {
                        summary.redelivered += 1;
                        if let Err(error) = app.outbox.remove(&envelope.envelope_id).await {
                            // Harmless: it is sent again next pass and the gateway drops the duplicate.
                            tracing::warn!(%error, envelope_id = %envelope.envelope_id, "delivered but not dequeued");
                        }
                    }
                    Err(error) => {
                        summary.failed += 1;
                        tracing::error!(%error, envelope_id = %envelope.envelope_id, user_id = %envelope.user_id,
                            "queued usage.changed still not delivered");
                    }
                }
            }
        }
        Err(error) => {
            tracing::error!(%error, "reconciliation cannot read the outbox");
            summary.complete = false;
        }
    }
    tracing::info!(?summary, "reconciliation pass finished");
    summary
}

/// The budget for a pass started outside Lambda (the local runner).
pub const LOCAL_PASS_BUDGET: Duration = Duration::from_secs(30);
