//! With no `GATEWAY_URL`, envelopes are printed as log lines: a developer
//! sees exactly what the iOS app would have been sent.

use async_trait::async_trait;
use credits::budget::Budget;
use credits::domain::UsageChanged;
use credits::ports::{Notifier, StoreError};

pub struct LogGateway;

#[async_trait]
impl Notifier for LogGateway {
    async fn notify(&self, _bearer: &str, envelope: &UsageChanged, _: &Budget) -> Result<(), StoreError> {
        let json = serde_json::to_string(envelope).expect("envelopes serialise");
        tracing::info!(envelope = %json, "usage.changed (GATEWAY_URL not set, printed instead of sent)");
        Ok(())
    }
}
