//! `adjust-credits` Lambda function.

use credits::handlers::AdjustCredits;
use credits::{App, Router};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    credits::telemetry::init();
    let app = App::from_env().await;
    lambda_http::run(Router::new(app).route::<AdjustCredits>()).await
}
