//! `cargo run -p credits-local`: the three credits-admin routes on
//! http://127.0.0.1:3000, served by the same handlers as the Lambda functions,
//! with embedded defaults for everything AWS and RevenueCat would provide.

mod log_gateway;
mod server;
mod setup;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::var_os("AWS_LAMBDA_LOG_FORMAT").is_none() {
        // Plain lines read better in a terminal; JSON stays one variable away.
        std::env::set_var("AWS_LAMBDA_LOG_FORMAT", "Text");
    }
    credits::telemetry::init();
    let local = match setup::Local::from_env().await {
        Ok(local) => local,
        Err(error) => {
            eprintln!("credits-local: {error}");
            return ExitCode::FAILURE;
        }
    };
    match server::serve(local).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("credits-local: {error}");
            ExitCode::FAILURE
        }
    }
}
