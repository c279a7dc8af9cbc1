//! JSON log lines to stdout, honouring Lambda's advanced logging controls
//! (`AWS_LAMBDA_LOG_FORMAT`, `AWS_LAMBDA_LOG_LEVEL`; `RUST_LOG` as a fallback).
//!
//! JSON is the default because CloudWatch Logs Insights queries the audit
//! fields directly; `AWS_LAMBDA_LOG_FORMAT=Text` switches to plain lines.

use tracing_subscriber::filter::{EnvFilter, LevelFilter};

pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let filter = EnvFilter::builder().with_default_directive(level.into()).parse_lossy("");
    let text = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    // `try_init`: a second call (tests, the local runner) keeps the first subscriber.
    let _ = if text {
        builder.with_ansi(false).try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    };
}
