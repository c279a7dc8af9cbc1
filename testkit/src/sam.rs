//! What `sam build` and `sam local invoke` work with, for tests that run what
//! is deployed:
//!
//! * the event files `events/*.json`, each with an `_expect` block naming its
//!   function and the answer it documents ([`event_files`], [`check_event`]);
//! * `events/env.json`, the per-function environment `sam local invoke
//!   --env-vars` applies, mapped onto the local servers ([`local_env`]);
//! * the arm64 `bootstrap` files `sam build` writes to
//!   `.aws-sam/build/<Function>/bootstrap`, run through `qemu-aarch64` on
//!   machines that are not arm64 ([`SamBuild`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use serde_json::Value;

use crate::aws::aws_env;
use crate::function::Program;
use crate::repo_root;
use crate::runtime_api::Invocation;
use crate::stack::{record, Call, Lambda, Reply, Stack};

/// Directory holding `sam build`'s output (`.aws-sam/build`); set by
/// `scripts/sam-smoke`.
pub const BUILD_DIR_VAR: &str = "CREDITS_ARM64_BUILD_DIR";
/// Overrides how the arm64 bootstraps are run: a command line the bootstrap's
/// path is appended to, split on whitespace; empty runs them directly.
pub const RUNNER_VAR: &str = "CREDITS_ARM64_RUNNER";
/// Runs an arm64 Linux executable on another architecture (Debian
/// `qemu-user` + `libc6-arm64-cross`).
pub const DEFAULT_RUNNER: &str = "qemu-aarch64 -L /usr/aarch64-linux-gnu";
/// The admin token the event files carry (and docs/deploy.md's local secret).
pub const EXAMPLE_TOKEN: &str = "adm_local_example_token";

/// One `events/*.json` file.
#[derive(Debug, Clone)]
pub struct EventFile {
    /// File name, e.g. `adjust-grant.json`.
    pub name: String,
    /// The whole file, `_expect` included (the functions ignore it).
    pub event: Value,
    pub expect: Expect,
}

/// An event file's `_expect` block.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Logical id in template.yaml, e.g. `AdjustCreditsFunction`.
    pub function: String,
    /// Binary name, e.g. `adjust-credits`.
    pub binary: String,
    /// HTTP status, or `None` for the scheduled event (a reconciliation summary).
    pub status: Option<u16>,
    /// The error's detail code, for error statuses.
    pub detail: Option<String>,
}

/// Every `events/*.json` but `env.json`, sorted by name. Panics on a file
/// without a complete `_expect` or naming a function template.yaml lacks.
pub fn event_files() -> Vec<EventFile> {
    let template = template();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo_root().join("events"))
        .expect("events/")
        .map(|e| e.expect("events/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("env.json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let event: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let e = &event["_expect"];
            let text_field = |field: &str| e[field].as_str().map(str::to_owned);
            let expect = Expect {
                function: text_field("function").unwrap_or_else(|| panic!("{name}: _expect.function")),
                binary: text_field("binary").unwrap_or_else(|| panic!("{name}: _expect.binary")),
                status: e["status"].as_u64().map(|s| u16::try_from(s).expect("an HTTP status")),
                detail: text_field("detail"),
            };
            assert!(
                template.contains(&format!("\n  {}:\n", expect.function)),
                "{name}: {} is not a resource in template.yaml",
                expect.function
            );
            assert!(
                template.contains(&format!("Binary: {}\n", expect.binary)),
                "{name}: no function in template.yaml builds binary {}",
                expect.binary
            );
            EventFile { name, event, expect }
        })
        .collect()
}

fn template() -> String {
    std::fs::read_to_string(repo_root().join("template.yaml")).expect("template.yaml")
}

/// `events/env.json`: function logical id → variable → value.
pub fn env_json() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(repo_root().join("events/env.json")).expect("events/env.json");
    serde_json::from_str(&text).expect("events/env.json maps each function to string variables")
}

/// The environment `sam local invoke --env-vars events/env.json` gives
/// `function`, on this machine: every variable of env.json verbatim except
/// the endpoints, which point at `stack`'s servers instead —
/// `AWS_ENDPOINT_URL` at moto, `REVENUECAT_API_URL` at the RevenueCat
/// sandbox, `GATEWAY_URL` at the gateway stand-in — plus static test
/// credentials (what `sam local` takes from the caller's AWS profile).
///
/// Panics if env.json sets a variable template.yaml does not declare (SAM
/// would silently ignore it) or a URL this function does not know how to map
/// (nothing may leave the machine).
pub fn local_env(stack: &Stack, function: &str) -> Vec<(String, String)> {
    let all = env_json();
    let vars = all.get(function).unwrap_or_else(|| panic!("events/env.json has no {function}"));
    let template = template();
    let mut env: BTreeMap<String, String> = aws_env(&stack.moto_endpoint).into_iter().collect();
    for (name, value) in vars {
        assert!(
            template.contains(&format!(" {name}: ")),
            "events/env.json sets {name} for {function}, which template.yaml does not declare \
             (sam local only overrides declared variables)"
        );
        let value = match name.as_str() {
            "AWS_ENDPOINT_URL" => stack.moto_endpoint.clone(),
            "REVENUECAT_API_URL" => stack.revenuecat_url(),
            "GATEWAY_URL" => stack.gateway_url(),
            _ => {
                assert!(
                    !value.contains("://"),
                    "events/env.json: {function}.{name} is a URL with no local stand-in: map it in \
                     credits_testkit::sam::local_env"
                );
                value.clone()
            }
        };
        env.insert(name.clone(), value);
    }
    env.into_iter().collect()
}

/// The output of `sam build` (`.aws-sam/build`), whose bootstraps tests run
/// as Lambda would.
#[derive(Debug, Clone)]
pub struct SamBuild {
    dir: PathBuf,
    runner: Vec<OsString>,
}

impl SamBuild {
    /// The build named by `CREDITS_ARM64_BUILD_DIR`. Panics when it is unset:
    /// a test of the deployed binaries that finds none must fail, not pass.
    pub fn from_env() -> SamBuild {
        let dir = std::env::var_os(BUILD_DIR_VAR).unwrap_or_else(|| {
            panic!(
                "{BUILD_DIR_VAR} is not set. These tests run the arm64 bootstraps `sam build` \
                 produced; run them with `scripts/sam-smoke` (which builds them and sets \
                 {BUILD_DIR_VAR}=<repo>/.aws-sam/build)."
            )
        });
        let runner = match std::env::var(RUNNER_VAR) {
            Ok(custom) => custom.split_whitespace().map(OsString::from).collect(),
            Err(_) if std::env::consts::ARCH == "aarch64" => Vec::new(),
            Err(_) => DEFAULT_RUNNER.split_whitespace().map(OsString::from).collect(),
        };
        SamBuild { dir: PathBuf::from(dir), runner }
    }

    /// `<build dir>/<function>/bootstrap`, after checking that it is an arm64
    /// (aarch64) Linux executable.
    pub fn bootstrap(&self, function: &str) -> PathBuf {
        let path = self.dir.join(function).join("bootstrap");
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (did `sam build` run for {function}?)", path.display()));
        // ELF identification, then e_machine (little-endian u16 at offset 18).
        assert!(
            bytes.len() > 20 && bytes[..4] == *b"\x7fELF" && bytes[4] == 2 && bytes[5] == 1,
            "{}: not a 64-bit little-endian ELF file",
            path.display()
        );
        const EM_AARCH64: u16 = 183;
        let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
        assert_eq!(machine, EM_AARCH64, "{}: ELF machine {machine}, not aarch64", path.display());
        path
    }

    /// How to start `function`'s bootstrap here: through the runner (qemu)
    /// unless this machine is arm64.
    pub fn program(&self, function: &str) -> Program {
        Program::wrapped(self.runner.clone(), self.bootstrap(function))
    }
}

/// Sends `file`'s event to `lambda` and checks the answer against its
/// `_expect` block and the body against the shapes of docs/openapi.yaml (the
/// exchange is also recorded for `scripts/validate_responses.py`).
pub async fn check_event(lambda: &Lambda, file: &EventFile) {
    let name = &file.name;
    let outcome = lambda.invoke(file.event.clone()).await;
    let Invocation::Response(response) = outcome else {
        panic!("{name}: no response: {outcome:?}\nlogs:\n{}", lambda.logs().join("\n"));
    };
    let Some(status) = file.expect.status else {
        assert_reconcile_summary(name, &response);
        return;
    };
    let reply = Reply::from_proxy_response(&response);
    record(&call_of(&file.event), &reply, Some(&file.expect.binary));
    assert_eq!(reply.status, status, "{name}: {}", reply.body);
    let ledger = call_of(&file.event).path.starts_with("/admin/credits/ledger/");
    if ledger && status == 200 && reply.header("content-type").is_some_and(|t| t.starts_with("text/csv")) {
        assert_ledger_csv(name, &reply.body);
        return;
    }
    assert_eq!(reply.header("content-type"), Some("application/json"), "{name}");
    let body: Value =
        serde_json::from_str(&reply.body).unwrap_or_else(|_| panic!("{name}: not JSON: {}", reply.body));
    if status >= 400 {
        assert_keys(name, &body, &["detail"]);
        let detail = body["detail"].as_str().unwrap_or_else(|| panic!("{name}: detail is not a string"));
        if let Some(code) = &file.expect.detail {
            assert!(
                detail == code || detail.starts_with(&format!("{code}: ")),
                "{name}: expected detail {code:?}, got {detail:?}"
            );
        }
        return;
    }
    match file.expect.binary.as_str() {
        "list-currencies" => {
            assert_keys(name, &body, &["items"]);
            let items = body["items"].as_array().unwrap_or_else(|| panic!("{name}: items"));
            assert!(!items.is_empty(), "{name}: no currency");
            for item in items {
                assert_keys(name, item, &["code", "description", "name", "product_grants"]);
                assert!(item["code"].is_string() && item["name"].is_string(), "{name}: {item}");
                for grant in item["product_grants"].as_array().expect("product_grants") {
                    assert_keys(name, grant, &["amount", "product_id"]);
                    assert!(grant["amount"].is_i64() && grant["product_id"].is_string(), "{name}: {grant}");
                }
            }
        }
        "get-balances" if ledger => {
            assert_keys(name, &body, &["items", "next_cursor", "user_id"]);
            let user = path_user(&file.event);
            assert_eq!(body["user_id"].as_str(), Some(user.as_str()), "{name}: {body}");
            for entry in body["items"].as_array().unwrap_or_else(|| panic!("{name}: items")) {
                assert_keys(name, entry, &LEDGER_ENTRY_FIELDS);
                assert!(entry["amount"].is_i64() && entry["notified"].is_boolean(), "{name}: {entry}");
                let status = entry["status"].as_str().unwrap_or_default();
                assert!(["applied", "pending", "rejected"].contains(&status), "{name}: {entry}");
            }
        }
        "get-balances" => {
            assert_keys(name, &body, &["items", "user_id"]);
            let user = path_user(&file.event);
            assert_eq!(body["user_id"].as_str(), Some(user.as_str()), "{name}: {body}");
            for item in body["items"].as_array().unwrap_or_else(|| panic!("{name}: items")) {
                assert_keys(name, item, &["balance", "currency_code", "name"]);
                assert!(item["balance"].is_i64() && item["currency_code"].is_string(), "{name}: {item}");
            }
        }
        "adjust-credits" => {
            assert_keys(
                name,
                &body,
                &["amount", "balance", "currency", "idempotency_key", "notified", "replayed", "user_id"],
            );
            let request: Value = serde_json::from_str(file.event["body"].as_str().expect("a body")).unwrap();
            for field in ["user_id", "amount", "idempotency_key"] {
                assert_eq!(body[field], request[field], "{name}: {field}: {body}");
            }
            assert!(body["balance"].is_i64() && body["currency"].is_string(), "{name}: {body}");
            assert_eq!(body["replayed"], false, "{name}: a first request is not a replay");
            assert_eq!(body["notified"], true, "{name}: the gateway stand-in is up");
        }
        other => panic!("{name}: no body shape known for {other}"),
    }
}

/// A ledger entry's fields, sorted (as `assert_keys` compares them).
const LEDGER_ENTRY_FIELDS: [&str; 11] = [
    "actor",
    "amount",
    "balance_after",
    "currency",
    "entry_id",
    "idempotency_key",
    "notified",
    "occurred_at",
    "origin",
    "reason",
    "status",
];

/// A ledger page as CSV: the header row, then rows of as many fields.
fn assert_ledger_csv(name: &str, body: &str) {
    let mut lines = body.split("\r\n");
    assert_eq!(lines.next(), Some(credits::domain::ledger::CSV_HEADER), "{name}: {body}");
    // The events' reasons hold no comma, quote or line break: a plain split
    // is enough here (the ledger suite round-trips the hard cases).
    for row in lines.filter(|l| !l.is_empty()) {
        assert_eq!(row.split(',').count(), LEDGER_ENTRY_FIELDS.len(), "{name}: {row}");
    }
}

/// A reconciliation pass's summary: counts and `complete`.
fn assert_reconcile_summary(name: &str, response: &Value) {
    let counts = ["abandoned", "dead_lettered", "failed", "redelivered", "released", "settled", "unreadable"];
    let mut keys = [&counts[..], &["complete"]].concat();
    keys.sort_unstable();
    assert_keys(name, response, &keys);
    for count in counts {
        assert!(response[count].is_u64(), "{name}: {count}: {response}");
    }
    assert_eq!(response["failed"], 0, "{name}: {response}");
    assert_eq!(response["complete"], true, "{name}: {response}");
}

/// `value` is an object with exactly `keys` (the schemas forbid others).
#[track_caller]
fn assert_keys(name: &str, value: &Value, keys: &[&str]) {
    let object = value.as_object().unwrap_or_else(|| panic!("{name}: not an object: {value}"));
    let mut found: Vec<&str> = object.keys().map(String::as_str).collect();
    found.sort_unstable();
    assert_eq!(found, keys, "{name}: {value}");
}

fn path_user(event: &Value) -> String {
    let parameters = &event["pathParameters"]["user_id"];
    parameters.as_str().expect("a balances event has pathParameters.user_id").to_owned()
}

/// The request an API Gateway event (HTTP API 2.0 or REST API 1.0) carries,
/// for the exchange record.
fn call_of(event: &Value) -> Call {
    let rest = event.get("httpMethod").is_some();
    let method = if rest { &event["httpMethod"] } else { &event["requestContext"]["http"]["method"] };
    let path = if rest { &event["path"] } else { &event["rawPath"] };
    let mut call = Call::new(method.as_str().expect("method"), path.as_str().expect("path"));
    call.query = if rest {
        let parameters = event["queryStringParameters"].as_object().cloned().unwrap_or_default();
        parameters
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("&")
    } else {
        event["rawQueryString"].as_str().unwrap_or_default().to_owned()
    };
    for (header, value) in event["headers"].as_object().into_iter().flatten() {
        call = call.header(header, value.as_str().unwrap_or_default());
    }
    if let Some(body) = event["body"].as_str() {
        call = call.body(body);
    }
    call
}
