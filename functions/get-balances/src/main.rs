//! `get-balances` Lambda function.

use credits::config::Config;
use credits::handlers::GetBalances;
use credits::{App, Router};

// One request at a time per instance: a single thread avoids cross-thread
// wake-ups while `tokio::join!` still overlaps the upstream calls.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    credits::telemetry::init();
    let app = App::from_config(Config::from_env(), &credits::lambda::sdk_config().await);
    let router = Router::new(app).route::<GetBalances>();
    lambda_http::run(router.warm_up()).await
}
