//! `get-balances` Lambda function: a customer's balances, and their ledger.

use credits::handlers::{GetBalances, GetLedger};
use credits::{App, Router};

// One request at a time per instance: a single thread avoids cross-thread
// wake-ups while `tokio::join!` still overlaps the upstream calls.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    credits::telemetry::init();
    credits::metrics::init("get-balances");
    let router = Router::new(App::from_env().await).route::<GetBalances>().route::<GetLedger>();
    lambda_http::run(router.warm_up()).await
}
