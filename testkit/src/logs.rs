//! What the code under test logs when it runs in-process (the contract and
//! idempotency suites drive the shared `Router` and the reconciliation pass
//! directly, not through a function binary): every event goes, as a JSON line,
//! to the same `target/function-logs/<test binary>.log` the function
//! processes' output goes to, so `scripts/scan-logs-for-secrets.sh` checks it
//! for leaked secrets too.
//!
//! Captured, at every level down to TRACE:
//! * every event of the service's own crates (`credits`, and the `audit`
//!   target its audit lines use), wherever it is emitted;
//! * every event of any crate (the AWS SDK, reqwest, hyper …) emitted while a
//!   request or pass of the code under test is running, i.e. inside
//!   [`code_under_test`]'s span.
//!
//! The harness's own calls (writing a secret to moto, say) happen outside that
//! span and are not captured: their logs are the test's, not the service's.

use std::io::Write;
use std::sync::OnceLock;

use tracing::Span;
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The span name that marks the code under test.
const SPAN: &str = "code_under_test";

/// Installs the capturing subscriber for this test process (once; later calls do nothing).
pub fn capture_in_process_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let filter = dynamic_filter_fn(|metadata, context| {
            is_service_target(metadata.target())
                || (metadata.is_span() && metadata.name() == SPAN)
                || context.lookup_current().is_some_and(|span| {
                    span.name() == SPAN || span.scope().skip(1).any(|outer| outer.name() == SPAN)
                })
        });
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(SuiteLog)
            .with_filter(filter);
        // A test binary that installed its own subscriber keeps it.
        let _ = tracing_subscriber::registry().with(layer).try_init();
    });
}

/// The span to run code under test in (see the module documentation).
pub fn code_under_test() -> Span {
    tracing::trace_span!(target: "credits_testkit", SPAN)
}

fn is_service_target(target: &str) -> bool {
    target == "audit" || target == "credits" || target.starts_with("credits::")
}

/// Hands each formatted event to [`crate::append_suite_file`], line by line.
struct SuiteLog;

struct SuiteLogLine(Vec<u8>);

impl<'a> MakeWriter<'a> for SuiteLog {
    type Writer = SuiteLogLine;

    fn make_writer(&'a self) -> SuiteLogLine {
        SuiteLogLine(Vec::new())
    }
}

impl Write for SuiteLogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SuiteLogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        for line in text.lines().filter(|l| !l.is_empty()) {
            crate::append_suite_file("log", line);
        }
    }
}
