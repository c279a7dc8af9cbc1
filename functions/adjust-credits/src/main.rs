//! `adjust-credits` Lambda function: `POST /admin/credits/adjust`, plus one
//! reconciliation pass per EventBridge scheduled event.

use credits::handlers::AdjustCredits;
use credits::{App, Router};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    credits::telemetry::init();
    let app = App::from_env().await;
    credits::lambda::run_http_and_schedule(Router::new(app).route::<AdjustCredits>()).await
}
