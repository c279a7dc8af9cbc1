//! Business and health metrics as CloudWatch Embedded Metric Format (EMF):
//! JSON log lines CloudWatch turns into metrics, so recording one costs no
//! API call. Namespace [`NAMESPACE`], dimension `Function` on every metric,
//! plus the labels named below; every label value comes from a closed set
//! (the error catalogue, RevenueCat's error types, the project's currencies),
//! never from a user id or free text.
//!
//! The function binaries install the recorder ([`init`]) and flush after each
//! invocation ([`flush`]); elsewhere (tests in process, the local runner) the
//! `metrics` macros are no-ops.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_cloudwatch_embedded::Collector;

pub const NAMESPACE: &str = "CreditsAdmin";

static COLLECTOR: OnceLock<&'static Collector> = OnceLock::new();

/// Installs the EMF recorder. The `Function` dimension is the deployed
/// function's name (`<stack>-<binary>`, so two stacks in one account never
/// mix their figures), or `binary` outside Lambda.
pub fn init(binary: &'static str) {
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| binary.to_owned());
    let installed = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(NAMESPACE)
        .with_dimension("Function", function)
        .init();
    match installed {
        Ok(collector) => {
            let _ = COLLECTOR.set(collector);
            describe();
        }
        Err(error) => tracing::error!(%error, "metrics recorder not installed; no EMF metrics"),
    }
}

/// Writes what was recorded since the last flush as EMF lines on stdout.
pub fn flush() {
    if let Some(collector) = COLLECTOR.get() {
        if let Err(error) = collector.flush(std::io::stdout().lock()) {
            tracing::error!(%error, "could not write the EMF metrics");
        }
    }
}

fn describe() {
    for name in [
        "Adjustments",
        "Refused",
        "CreditsGranted",
        "CreditsDeducted",
        "RevenueCatCalls",
        "RevenueCatErrors",
        "RevenueCatErrorsByType",
        "RateLimited",
        "LimiterFailOpen",
        "EnvelopesQueued",
        "EnvelopesRedelivered",
        "EnvelopesDeadLettered",
        "EnvelopesLost",
        "ReconcileSettled",
        "ReconcileFailed",
        "ReconcileUnreadable",
    ] {
        describe_counter!(name, Unit::Count, "");
    }
    describe_histogram!("RevenueCatLatency", Unit::Milliseconds, "");
    describe_histogram!("ReconcileDuration", Unit::Milliseconds, "");
    describe_gauge!("OutboxOldestAge", Unit::Seconds, "");
}

/// How an adjustment that reached the idempotency step ended:
/// `applied`, `replayed`, `rejected` (RevenueCat refused) or `outcome_unknown`.
pub fn adjustment(outcome: &'static str) {
    counter!("Adjustments", "Outcome" => outcome).increment(1);
}

/// A request answered with an error from the catalogue, by its code.
pub fn refused(code: &'static str) {
    counter!("Refused", "Code" => code).increment(1);
}

/// Credits moved by an applied adjustment.
pub fn credits(currency: &str, amount: i64) {
    let currency = currency.to_owned();
    if amount >= 0 {
        counter!("CreditsGranted", "Currency" => currency).increment(amount.unsigned_abs());
    } else {
        counter!("CreditsDeducted", "Currency" => currency).increment(amount.unsigned_abs());
    }
}

/// One HTTP exchange with RevenueCat (each attempt).
pub fn revenuecat_call(operation: &'static str, latency: Duration, error: Option<&str>) {
    counter!("RevenueCatCalls").increment(1);
    histogram!("RevenueCatLatency", "Operation" => operation).record(latency.as_secs_f64() * 1000.0);
    if let Some(kind) = error {
        counter!("RevenueCatErrors").increment(1);
        counter!("RevenueCatErrorsByType", "Type" => bounded_error_type(kind)).increment(1);
    }
}

pub fn rate_limited() {
    counter!("RateLimited").increment(1);
}

pub fn limiter_fail_open() {
    counter!("LimiterFailOpen").increment(1);
}

pub fn envelope_queued() {
    counter!("EnvelopesQueued").increment(1);
}

/// An envelope that could neither be delivered nor queued.
pub fn envelope_lost() {
    counter!("EnvelopesLost").increment(1);
}

pub fn envelope_redelivered() {
    counter!("EnvelopesRedelivered").increment(1);
}

pub fn envelope_dead_lettered() {
    counter!("EnvelopesDeadLettered").increment(1);
}

/// One reconciliation pass.
pub fn reconciliation(
    settled: u32,
    failed: u32,
    unreadable: u32,
    duration: Duration,
    oldest_envelope: Duration,
) {
    counter!("ReconcileSettled").increment(settled.into());
    counter!("ReconcileFailed").increment(failed.into());
    counter!("ReconcileUnreadable").increment(unreadable.into());
    histogram!("ReconcileDuration").record(duration.as_secs_f64() * 1000.0);
    gauge!("OutboxOldestAge").set(oldest_envelope.as_secs_f64());
}

/// RevenueCat's documented error types and ours; anything else is `other`,
/// so a misbehaving upstream cannot mint new metric dimensions.
fn bounded_error_type(kind: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "parameter_error",
        "resource_already_exists",
        "resource_missing",
        "idempotency_error",
        "unprocessable_entity_error",
        "authentication_error",
        "authorization_error",
        "rate_limit_error",
        "resource_locked_error",
        "server_error",
        "store_error",
        "invalid_request",
        "timeout",
        "connect",
        "invalid_response",
        "transport",
    ];
    KNOWN.iter().find(|k| **k == kind).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_types_are_a_closed_set() {
        assert_eq!(super::bounded_error_type("rate_limit_error"), "rate_limit_error");
        assert_eq!(super::bounded_error_type("user_2abcXYZ was not found"), "other");
    }
}
