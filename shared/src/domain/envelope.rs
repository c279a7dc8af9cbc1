//! The silent `usage.changed` control envelope (spec §8).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageChanged {
    #[serde(rename = "type")]
    pub kind: String,
    pub silent: bool,
    /// Stable across re-deliveries so the gateway can drop duplicates.
    pub envelope_id: String,
    pub user_id: String,
    pub occurred_at: String,
    pub payload: UsagePayload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsagePayload {
    pub currency: String,
    pub balance: i64,
    pub delta: i64,
}

impl UsageChanged {
    /// Deliberately has no `reason` parameter: the audit reason never leaves the back office.
    pub fn new(
        envelope_id: String,
        user_id: &str,
        currency: &str,
        balance: i64,
        delta: i64,
        at: SystemTime,
    ) -> Self {
        Self {
            kind: "usage.changed".into(),
            silent: true,
            envelope_id,
            user_id: user_id.to_owned(),
            occurred_at: humantime::format_rfc3339_seconds(at).to_string(),
            payload: UsagePayload { currency: currency.to_owned(), balance, delta },
        }
    }
}
