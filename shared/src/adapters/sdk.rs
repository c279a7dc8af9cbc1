//! What the AWS SDK clients share: a retry policy that fits inside an
//! invocation, and per-call timeouts cut from the invocation's budget.

use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;

use crate::budget::Budget;
use crate::ports::StoreError;

/// The longest one DynamoDB or Secrets Manager operation may take, retries
/// included, however much of the budget is left: both answer in
/// milliseconds when healthy.
pub const OPERATION_CAP: Duration = Duration::from_secs(3);
/// Below this an operation is not started: it would only time out.
const MIN_OPERATION: Duration = Duration::from_millis(50);

/// Three attempts with short backoffs: a dropped connection or a throttle is
/// retried at once, and the operation timeout still bounds the whole.
pub fn retry_policy() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(20))
        .with_max_backoff(Duration::from_millis(200))
}

/// Timeouts for one operation under `budget`: the whole operation gets its
/// share, each attempt half of it when that is long enough to retry a stalled
/// connection. `Err` when no useful time is left.
pub fn timeouts(budget: &Budget, operation: &str) -> Result<TimeoutConfig, StoreError> {
    let share = budget.share(OPERATION_CAP);
    if share < MIN_OPERATION {
        return Err(StoreError(format!("{operation}: no time left in the invocation's budget")));
    }
    let attempt = if share >= Duration::from_secs(1) { share / 2 } else { share };
    Ok(TimeoutConfig::builder().operation_timeout(share).operation_attempt_timeout(attempt).build())
}
