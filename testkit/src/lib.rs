//! Test harness for the credits-admin Lambda functions.
//!
//! Everything here talks to real protocols on loopback, so the code under test
//! runs exactly as it would in AWS:
//!
//! * [`moto::MotoServer`] — a local DynamoDB + Secrets Manager (moto, serialised
//!   so conditional writes are atomic like the real services).
//! * [`aws`] — AWS SDK clients and fixtures (tables, secrets) pointed at moto.
//! * [`runtime_api::RuntimeApiEmulator`] — the Lambda Runtime API, so the built
//!   function binaries can be invoked as Lambda would invoke them.
//! * [`function::FunctionProcess`] / [`function::FunctionPool`] — spawn those
//!   binaries against the emulator and capture their logs.
//!
//! # Running
//!
//! ```text
//! scripts/setup-test-env.sh     # once per machine: .venv with pinned moto
//! cargo build --workspace       # the function binaries the tests spawn
//! cargo test --workspace
//! ```
//!
//! # Example
//!
//! ```no_run
//! use credits_testkit::{aws, function::FunctionProcess, moto::MotoServer};
//! use credits_testkit::runtime_api::RuntimeApiEmulator;
//! use serde_json::json;
//!
//! # async fn example() {
//! let endpoint = MotoServer::shared().endpoint_url();
//! let table = aws::unique_name("credits");
//! aws::create_table(&endpoint, &table).await;
//!
//! let emulator = RuntimeApiEmulator::start().await;
//! let mut env = aws::aws_env(&endpoint);
//! env.push(("TABLE_NAME".into(), table));
//! let _function = FunctionProcess::spawn("list-currencies", env, &emulator);
//! let body = emulator.invoke(json!({ "rawPath": "/currencies" })).await.into_response();
//! # }
//! ```

pub mod aws;
pub mod faults;
pub mod function;
pub mod logs;
pub mod moto;
pub mod runtime_api;
pub mod stack;

mod lines;

use std::path::{Path, PathBuf};

/// Root of the workspace (the directory holding `scripts/` and `.venv/`).
///
/// Taken from this crate's manifest directory at compile time: tests always
/// run from a build of this checkout, wherever the current directory is.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives one level below the workspace root")
        .to_path_buf()
}

/// Where every function process's output and every test stack's secrets are
/// written, so `scripts/scan-logs-for-secrets.sh` can check the whole suite's
/// logs for leaked secrets after the run.
pub fn suite_log_dir() -> PathBuf {
    repo_root().join("target").join("function-logs")
}

/// Appends `line` to `<suite_log_dir>/<this test binary>.<extension>`.
pub fn append_suite_file(extension: &str, line: &str) {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};

    static FILES: OnceLock<Mutex<HashMap<String, std::fs::File>>> = OnceLock::new();
    let files = FILES.get_or_init(Default::default);
    let mut files = files.lock().unwrap_or_else(|p| p.into_inner());
    if !files.contains_key(extension) {
        let exe = std::env::current_exe().ok();
        let name = exe.as_deref().and_then(Path::file_name).map_or("unknown".into(), |n| n.to_string_lossy());
        let dir = suite_log_dir();
        let opened = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{name}.{extension}")))
        });
        match opened {
            Ok(file) => {
                files.insert(extension.to_owned(), file);
            }
            Err(_) => return,
        }
    }
    if let Some(file) = files.get_mut(extension) {
        let _ = writeln!(file, "{line}");
    }
}
