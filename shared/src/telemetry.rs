//! JSON log lines to stdout, honouring Lambda's advanced logging controls
//! (`AWS_LAMBDA_LOG_FORMAT`, `AWS_LAMBDA_LOG_LEVEL`; `RUST_LOG` as a fallback).
//!
//! JSON is the default because CloudWatch Logs Insights queries the audit
//! fields directly; `AWS_LAMBDA_LOG_FORMAT=Text` switches to plain lines.
//!
//! No level setting may print a secret (spec §10). Our own code never logs
//! one; our dependencies do at their most verbose levels: the Lambda runtime
//! logs raw events (with the `Authorization` header) at TRACE, the AWS SDK
//! logs requests and responses (the secret value) at DEBUG/TRACE, and the
//! HTTP and TLS stacks log headers. Their levels are capped below that
//! whatever the setting asks for.

use tracing_subscriber::filter::{Directive, EnvFilter, LevelFilter};

/// The most verbose level each dependency may log at, by target prefix.
const DEPENDENCY_CAPS: &[(&str, LevelFilter)] = &[
    ("lambda_runtime", LevelFilter::INFO),
    ("lambda_runtime_api_client", LevelFilter::INFO),
    ("lambda_http", LevelFilter::INFO),
    ("aws_smithy", LevelFilter::INFO),
    ("aws_sdk", LevelFilter::INFO),
    ("aws_config", LevelFilter::INFO),
    ("aws_runtime", LevelFilter::INFO),
    ("aws_credential_types", LevelFilter::INFO),
    ("hyper", LevelFilter::INFO),
    ("hyper_util", LevelFilter::INFO),
    ("h2", LevelFilter::INFO),
    ("reqwest", LevelFilter::INFO),
    ("rustls", LevelFilter::INFO),
    ("tower", LevelFilter::INFO),
];

/// The level asked for by the environment (INFO when unset or unreadable).
pub fn requested_level() -> LevelFilter {
    std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO)
}

/// `level` for our code, and for each dependency the less verbose of
/// `level` and its cap (a directive never makes a dependency louder).
pub fn filter(level: LevelFilter) -> EnvFilter {
    DEPENDENCY_CAPS.iter().fold(
        EnvFilter::builder().with_default_directive(level.into()).parse_lossy(""),
        |filter, (target, cap)| {
            let directive: Directive =
                format!("{target}={}", level.min(*cap)).parse().expect("static directives parse");
            filter.add_directive(directive)
        },
    )
}

pub fn init() {
    let text = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter(requested_level())).with_writer(std::io::stdout);
    // `try_init`: a second call (tests, the local runner) keeps the first subscriber.
    let _ = if text {
        builder.with_ansi(false).try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_never_log_below_their_cap_and_never_above_the_setting() {
        let at_trace = filter(LevelFilter::TRACE).to_string();
        assert!(at_trace.contains("lambda_runtime=info"), "{at_trace}");
        assert!(at_trace.contains("aws_smithy=info"), "{at_trace}");
        assert!(at_trace.contains("trace"), "our own code still logs at TRACE: {at_trace}");
        let at_warn = filter(LevelFilter::WARN).to_string();
        assert!(at_warn.contains("hyper=warn"), "{at_warn}");
        assert!(!at_warn.contains("=info"), "a cap never raises a dependency above the setting: {at_warn}");
    }
}
