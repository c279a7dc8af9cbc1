//! Calendar-minute windows for the rate limiter (spec §5).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Counters outlive their minute as long as an adjustment's claim can wait
/// for reconciliation: the counter says whether that claim's request was
/// admitted (a refused request's claim must never be applied).
const COUNTER_TTL: Duration = Duration::from_secs(8 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteWindow {
    /// Epoch seconds of the window's first second (UTC).
    pub start: u64,
    /// Time left until the next window opens.
    pub reset_after: Duration,
}

impl MinuteWindow {
    pub fn containing(now: SystemTime) -> Self {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let start = since_epoch.as_secs() - since_epoch.as_secs() % 60;
        let reset_after = Duration::from_secs(start + 60).saturating_sub(since_epoch);
        Self { start, reset_after }
    }

    /// When DynamoDB TTL may delete this window's counter.
    pub fn expires_at(&self) -> u64 {
        self.start + 60 + COUNTER_TTL.as_secs()
    }
}

/// The outcome of asking for one admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted {
        limit: u32,
        remaining: u32,
        reset_after: Duration,
    },
    Refused {
        limit: u32,
        reset_after: Duration,
    },
    /// The counter store could not be reached: admitted without counting.
    Uncounted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts_on_the_minute() {
        let at = UNIX_EPOCH + Duration::from_millis(120_500);
        let w = MinuteWindow::containing(at);
        assert_eq!(w.start, 120);
        assert_eq!(w.reset_after, Duration::from_millis(59_500));
        assert_eq!(w.expires_at(), 180 + 8 * 24 * 3600, "kept while a claim may still need it");
    }
}
