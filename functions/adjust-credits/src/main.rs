//! `adjust-credits` Lambda function: `POST /admin/credits/adjust`, plus one
//! reconciliation pass per EventBridge scheduled event.

use credits::handlers::AdjustCredits;
use credits::{App, Router};

// One request at a time per instance: a single thread avoids cross-thread
// wake-ups while `tokio::join!` still overlaps the upstream calls.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    credits::telemetry::init();
    credits::metrics::init("adjust-credits");
    let router = Router::new(App::from_env().await).route::<AdjustCredits>();
    credits::lambda::run_http_and_schedule(router.warm_up()).await
}
