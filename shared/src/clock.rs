//! Wall-clock helpers in the units DynamoDB attributes use.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

pub fn to_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub fn now_secs() -> u64 {
    now_ms() / 1000
}
