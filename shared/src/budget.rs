//! The time budget of one invocation (spec §3 "Time budget").
//!
//! One `Budget` is made per invocation from Lambda's deadline and passed down
//! to every upstream call. A step narrows it with [`Budget::keeping`] by what
//! the steps after it need, and an adapter bounds its call by
//! [`Budget::share`]; so however an upstream misbehaves (refuses, stalls after
//! accepting the connection, trickles bytes), the caller gets a catalogued
//! answer before the deadline.

use std::future::Future;
use std::time::Duration;

// tokio's clock, so tests can move time without sleeping.
use tokio::time::Instant;

use crate::clock;

/// Kept back from every deadline to serialise the answer and hand it to the
/// Runtime API.
pub const ANSWER_RESERVE: Duration = Duration::from_millis(200);
/// Budget of a request outside Lambda (the local runner): the functions' timeout.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(20);
/// A deadline in the past (or a clock skewed into it) still gets this long:
/// enough to answer with a catalogued error rather than not at all.
pub const MIN_BUDGET: Duration = Duration::from_secs(1);
/// Lambda's longest timeout; a deadline further away is not believed.
pub const MAX_BUDGET: Duration = Duration::from_secs(900);

/// The least time worth giving each kind of step; a step that cannot get it
/// answers as if its upstream were unavailable.
pub const MIN_STORE_CALL: Duration = Duration::from_millis(300);
pub const MIN_REVENUECAT_CALL: Duration = Duration::from_millis(800);
pub const MIN_GATEWAY_CALL: Duration = Duration::from_millis(300);

/// When the answer must be ready, as an instant on tokio's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    deadline: Instant,
}

/// The budget ran out before the call finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfTime;

impl std::fmt::Display for OutOfTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("out of time")
    }
}

impl Budget {
    /// From Lambda's `Lambda-Runtime-Deadline-Ms` (epoch ms), clamped to
    /// [`MIN_BUDGET`, `MAX_BUDGET`], less [`ANSWER_RESERVE`].
    pub fn from_deadline_ms(deadline_ms: u64) -> Self {
        let left = Duration::from_millis(deadline_ms.saturating_sub(clock::now_ms()));
        Self::lasting(left.clamp(MIN_BUDGET, MAX_BUDGET))
    }

    /// A budget for an invocation that lasts `total` from now, less [`ANSWER_RESERVE`].
    pub fn lasting(total: Duration) -> Self {
        Self { deadline: Instant::now() + total.saturating_sub(ANSWER_RESERVE) }
    }

    /// What is left.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn is_spent(&self) -> bool {
        self.remaining().is_zero()
    }

    /// The part of this budget a step may use when the steps after it need `later`.
    pub fn keeping(&self, later: Duration) -> Self {
        Self { deadline: self.deadline.checked_sub(later).unwrap_or_else(Instant::now) }
    }

    /// This budget, but ending no later than `cap` from now.
    pub fn at_most(&self, cap: Duration) -> Self {
        Self { deadline: self.deadline.min(Instant::now() + cap) }
    }

    /// The timeout for one upstream call: its own `cap`, or what is left if less.
    pub fn share(&self, cap: Duration) -> Duration {
        self.remaining().min(cap)
    }

    /// Whether at least `needed` is left.
    pub fn allows(&self, needed: Duration) -> bool {
        self.remaining() >= needed
    }

    /// The end of this budget as epoch milliseconds (for leases that must
    /// outlive every call made under it).
    pub fn deadline_epoch_ms(&self) -> u64 {
        clock::now_ms() + self.remaining().as_millis() as u64 + ANSWER_RESERVE.as_millis() as u64
    }

    /// Runs `work` until it finishes or the budget runs out (it is then dropped,
    /// which cancels any request it had in flight).
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, OutOfTime> {
        tokio::time::timeout_at(self.deadline, work).await.map_err(|_| OutOfTime)
    }

    /// Like [`Budget::run`] for fallible work: running out of time is one more error.
    pub async fn try_run<T, E: From<OutOfTime>>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.run(work).await.unwrap_or_else(|out_of_time| Err(out_of_time.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_are_clamped_and_keep_a_reserve() {
        let now = clock::now_ms();
        let in_five = Budget::from_deadline_ms(now + 5_000).remaining();
        assert!(in_five <= Duration::from_secs(5) - ANSWER_RESERVE);
        assert!(in_five >= Duration::from_millis(4_700), "{in_five:?}");
        assert_eq!(Budget::from_deadline_ms(0).remaining(), MIN_BUDGET - ANSWER_RESERVE);
        assert_eq!(
            Budget::from_deadline_ms(now.saturating_sub(60_000)).remaining(),
            MIN_BUDGET - ANSWER_RESERVE
        );
        assert_eq!(Budget::from_deadline_ms(u64::MAX).remaining(), MAX_BUDGET - ANSWER_RESERVE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_keeps_back_what_later_steps_need() {
        let budget = Budget::lasting(Duration::from_secs(3) + ANSWER_RESERVE);
        assert_eq!(budget.keeping(Duration::from_secs(1)).remaining(), Duration::from_secs(2));
        assert_eq!(budget.keeping(Duration::from_secs(10)).remaining(), Duration::ZERO);
        assert!(budget.keeping(Duration::from_secs(10)).is_spent());
        assert_eq!(budget.share(Duration::from_secs(5)), Duration::from_secs(3));
        assert_eq!(budget.share(Duration::from_secs(2)), Duration::from_secs(2));
        assert_eq!(budget.at_most(Duration::from_secs(1)).remaining(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_outlasts_the_budget_is_cut_off_at_its_end() {
        let budget = Budget::lasting(Duration::from_secs(2) + ANSWER_RESERVE);
        let started = Instant::now();
        let outcome = budget.run(std::future::pending::<()>()).await;
        assert_eq!(outcome, Err(OutOfTime));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(budget.run(async { 7 }).await, Ok(7));
    }
}
