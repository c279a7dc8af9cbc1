//! `list-currencies` Lambda function.

use credits::handlers::ListCurrencies;
use credits::{App, Router};

// One request at a time per instance: a single thread avoids cross-thread
// wake-ups while `tokio::join!` still overlaps the upstream calls.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    credits::telemetry::init();
    credits::metrics::init("list-currencies");
    let router = Router::new(App::from_env().await).route::<ListCurrencies>();
    lambda_http::run(router.warm_up()).await
}
