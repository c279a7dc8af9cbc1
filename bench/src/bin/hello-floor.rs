//! The benchmark's floor: the smallest useful `lambda_runtime` function. It
//! echoes the event, on the same tokio runtime as the real functions
//! (`#[tokio::main(flavor = "current_thread")]`; keep the two in step) and the
//! same `lambda_runtime` build (features, release profile), so any difference
//! in init time, memory or size is theirs.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move { Ok::<_, Error>(event.payload) }))
        .await
}
