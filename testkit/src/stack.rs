//! The whole world a credits-admin test talks to, started in one call: moto
//! (its own table and secret), the RevenueCat sandbox and the gateway
//! stand-in. Requests go either in-process through the shared `Router` or
//! through the built binaries under the Runtime API emulator; both record
//! every exchange so the OpenAPI check can validate real responses.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use credits::config::Config;
use credits::handlers::{AdjustCredits, GetBalances, GetLedger, ListCurrencies};
use credits::{App, Router};
use credits_sandbox::{GatewayStandIn, RevenueCatSandbox, SandboxServer};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::aws::{aws_env, create_table, put_secret, sdk_config, unique_name};
use crate::function::FunctionPool;
use crate::logs::{capture_in_process_logs, code_under_test};
use crate::moto::MotoServer;
use crate::runtime_api::{EmulatorOptions, Invocation, RuntimeApiEmulator};

pub const DEMO_USER: &str = "user_2abcXYZ";

pub struct Stack {
    pub moto_endpoint: String,
    pub table: String,
    pub secret_id: String,
    pub admin_token: String,
    pub revenuecat: RevenueCatSandbox,
    pub gateway: GatewayStandIn,
    revenuecat_server: SandboxServer,
    gateway_server: SandboxServer,
    extra_env: BTreeMap<String, String>,
}

impl Stack {
    /// A fresh table and secret on the shared moto, the demo RevenueCat
    /// project (CRD, `user_2abcXYZ` with 120) and a gateway that expects the
    /// admin token.
    pub async fn start() -> Stack {
        Self::start_on(MotoServer::shared().endpoint_url()).await
    }

    /// The same, on a specific moto (e.g. a private one a test will stop).
    pub async fn start_on(moto_endpoint: String) -> Stack {
        capture_in_process_logs();
        let table = unique_name("credits");
        let secret_id = unique_name("credits-admin");
        let admin_token = format!("adm_{}", uuid::Uuid::new_v4().simple());
        create_table(&moto_endpoint, &table).await;
        let revenuecat = RevenueCatSandbox::demo();
        let gateway = GatewayStandIn::new(Some(admin_token.clone()));
        let revenuecat_server = revenuecat.start().await.expect("start the RevenueCat sandbox");
        let gateway_server = gateway.start().await.expect("start the gateway stand-in");
        let stack = Stack {
            moto_endpoint,
            table,
            secret_id,
            admin_token,
            revenuecat,
            gateway,
            revenuecat_server,
            gateway_server,
            extra_env: BTreeMap::new(),
        };
        stack.remember_secrets();
        put_secret(&stack.moto_endpoint, &stack.secret_id, &stack.secret_json()).await;
        stack
    }

    /// Lists this stack's secrets for the suite-wide log scan.
    fn remember_secrets(&self) {
        for secret in [self.admin_token.clone(), self.revenuecat.api_key(), self.secret_json()] {
            remember_secret(&secret);
        }
    }

    /// The secret value for the current admin token and sandbox credentials.
    pub fn secret_json(&self) -> String {
        json!({
            "admin_secret": self.admin_token,
            "revenuecat_api_key": self.revenuecat.api_key(),
            "revenuecat_project_id": self.revenuecat.project_id(),
        })
        .to_string()
    }

    /// Rotates the admin token in Secrets Manager (a new secret version).
    pub async fn rotate_admin_token(&mut self, new_token: &str) {
        self.admin_token = new_token.to_owned();
        self.gateway.set_expected_bearer(Some(new_token.to_owned()));
        self.remember_secrets();
        put_secret(&self.moto_endpoint, &self.secret_id, &self.secret_json()).await;
    }

    /// Replaces the secret's value verbatim (not JSON, missing keys …). The
    /// value, and any token or key in it, joins the secrets the log scan looks
    /// for: a broken secret is exactly what an error path might log.
    pub async fn put_raw_secret(&self, raw: &str) {
        remember_secret(raw);
        if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(raw) {
            for key in ["admin_secret", "revenuecat_api_key"] {
                if let Some(value) = fields.get(key).and_then(Value::as_str) {
                    remember_secret(value);
                }
            }
        }
        put_secret(&self.moto_endpoint, &self.secret_id, raw).await;
    }

    /// Pretends every queued envelope's backoff has passed.
    pub async fn make_queued_envelopes_due(&self) {
        use aws_sdk_dynamodb::types::AttributeValue;
        let client = crate::aws::dynamodb_client(&self.moto_endpoint);
        let queued = client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :outbox")
            .expression_attribute_values(":outbox", AttributeValue::S("outbox".into()))
            .send()
            .await
            .expect("query the outbox");
        for item in queued.items() {
            client
                .update_item()
                .table_name(&self.table)
                .key("pk", item["pk"].clone())
                .key("sk", item["sk"].clone())
                .update_expression("SET lease_until = :now")
                .expression_attribute_values(
                    ":now",
                    AttributeValue::N(credits::clock::now_ms().saturating_sub(1).to_string()),
                )
                .send()
                .await
                .expect("make an envelope due");
        }
    }

    /// Sets (or overrides) a variable for apps and function processes made after this call.
    pub fn set_env(&mut self, name: &str, value: impl ToString) {
        self.extra_env.insert(name.to_owned(), value.to_string());
    }

    pub fn revenuecat_url(&self) -> String {
        self.revenuecat_server.base_url()
    }

    pub fn gateway_url(&self) -> String {
        self.gateway_server.base_url()
    }

    /// Everything a function needs, as Lambda + template.yaml would set it.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = aws_env(&self.moto_endpoint).into_iter().collect();
        env.insert("ADMIN_SECRET_ID".into(), self.secret_id.clone());
        env.insert("TABLE_NAME".into(), self.table.clone());
        env.insert("REVENUECAT_API_URL".into(), self.revenuecat_url());
        env.insert("GATEWAY_URL".into(), self.gateway_url());
        env.extend(self.extra_env.clone());
        env.into_iter().collect()
    }

    /// An in-process instance: production adapters, this stack's configuration.
    /// Each call is a separate "Lambda instance" with its own caches.
    pub fn app(&self) -> Arc<App> {
        let env: BTreeMap<String, String> = self.env().into_iter().collect();
        let config = Config::from_lookup(|name| env.get(name).cloned());
        let endpoint = env.get("AWS_ENDPOINT_URL").cloned().unwrap_or_default();
        App::from_config(config, &sdk_config(&endpoint))
    }

    /// All three routes on one in-process instance.
    pub fn router(&self) -> Router {
        Router::new(self.app())
            .route::<ListCurrencies>()
            .route::<GetBalances>()
            .route::<GetLedger>()
            .route::<AdjustCredits>()
    }

    /// `n` processes of one function binary polling a fresh emulator.
    pub async fn lambda(&self, binary: &str, instances: usize) -> Lambda {
        self.lambda_with(binary, instances, EmulatorOptions::default()).await
    }

    pub async fn lambda_with(&self, binary: &str, instances: usize, options: EmulatorOptions) -> Lambda {
        let emulator = RuntimeApiEmulator::start_with(options).await;
        let pool = FunctionPool::spawn(binary, instances, self.env(), &emulator);
        assert!(
            emulator.wait_for_pollers(instances, std::time::Duration::from_secs(20)).await,
            "{binary}: {instances} instances did not start polling; logs:\n{}",
            pool.logs().join("\n")
        );
        Lambda { emulator, pool }
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.admin_token)
    }

    /// A request already carrying this stack's admin token.
    pub fn get(&self, path: &str) -> Call {
        Call::new("GET", path).header("authorization", &self.bearer())
    }

    /// A JSON POST already carrying this stack's admin token.
    pub fn post(&self, path: &str, body: Value) -> Call {
        Call::new("POST", path)
            .header("authorization", &self.bearer())
            .header("content-type", "application/json")
            .body(&body.to_string())
    }

    /// An adjust request for the demo user.
    pub fn adjust(&self, amount: i64, key: Option<&str>) -> Call {
        let mut body = json!({"user_id": DEMO_USER, "amount": amount, "reason": "ZD-1234 test adjustment"});
        if let Some(key) = key {
            body["idempotency_key"] = json!(key);
        }
        self.post("/admin/credits/adjust", body)
    }
}

/// Shortest secret a test may use: the log scan looks for each one verbatim,
/// so a short or common value (`"p"`, `"sk_x"`) would match innocent lines.
pub const MIN_SECRET_LEN: usize = 8;

/// Adds `secret` to this test binary's list for `scripts/scan-logs-for-secrets.sh`.
#[track_caller]
pub fn remember_secret(secret: &str) {
    assert!(
        secret.chars().count() >= MIN_SECRET_LEN && !secret.contains('\n'),
        "test secrets must be distinctive single lines of at least {MIN_SECRET_LEN} characters: {secret:?}"
    );
    crate::append_suite_file("secrets", secret);
}

/// The documented routes (`METHOD /path`) a unit serves: one per function
/// binary (as `template.yaml` wires them), all of them for the in-process
/// router; `None` for a binary not listed here (the validator then never
/// excuses a `404 not_found` it answers on a documented path).
fn routes_of(binary: Option<&str>) -> Option<Vec<&'static str>> {
    const CURRENCIES: &str = "GET /admin/credits/currencies";
    const BALANCES: &str = "GET /admin/credits/balances/{user_id}";
    const ADJUST: &str = "POST /admin/credits/adjust";
    Some(match binary {
        None => vec![CURRENCIES, BALANCES, ADJUST],
        Some("list-currencies") => vec![CURRENCIES],
        Some("get-balances") => vec![BALANCES],
        Some("adjust-credits") => vec![ADJUST],
        Some(_) => return None,
    })
}

/// Processes of one function under their own Runtime API emulator.
pub struct Lambda {
    pub emulator: RuntimeApiEmulator,
    pub pool: FunctionPool,
}

impl Lambda {
    /// Sends `call` as an API Gateway HTTP API (payload 2.0) event.
    pub async fn call(&self, call: &Call) -> Reply {
        let reply = match self.emulator.invoke(call.http_api_event()).await {
            Invocation::Response(response) => Reply::from_proxy_response(&response),
            other => panic!("{} {}: no HTTP response: {other:?}", call.method, call.path),
        };
        let binary = self.pool.instances().first().map(|p| p.name().to_owned());
        record(call, &reply, binary.as_deref());
        reply
    }

    /// Sends any event (scheduled, REST API …) and returns the raw outcome.
    pub async fn invoke(&self, event: Value) -> Invocation {
        self.emulator.invoke(event).await
    }

    pub fn logs(&self) -> Vec<String> {
        self.pool.logs()
    }

    /// One more process of the same function (e.g. after killing one).
    pub fn add_instance(&mut self, stack: &Stack, binary: &str) -> crate::function::FunctionProcess {
        crate::function::FunctionProcess::spawn(binary, stack.env(), &self.emulator)
    }
}

/// An EventBridge scheduled event, as the schedule on `AdjustCreditsFunction` sends it.
pub fn scheduled_event() -> Value {
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-11-25T12:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/credits-admin-reconcile"],
        "detail": {}
    })
}

/// An HTTP request, independent of how it is delivered.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// In-process only: the Lambda deadline to pretend (epoch ms), which
    /// bounds an adjustment's idempotency lease.
    pub deadline_ms: Option<u64>,
}

impl Call {
    pub fn new(method: &str, path: &str) -> Call {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        Call {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: Vec::new(),
            body: None,
            deadline_ms: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    pub fn without_header(mut self, name: &str) -> Call {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn body(mut self, body: &str) -> Call {
        self.body = Some(body.to_owned());
        self
    }

    /// Pretends the invocation must finish within `budget` (in-process calls).
    pub fn deadline_in(mut self, budget: std::time::Duration) -> Call {
        self.deadline_ms = Some(credits::clock::now_ms() + budget.as_millis() as u64);
        self
    }

    /// Delivers the call in-process through `router`.
    pub async fn send(&self, router: &Router) -> Reply {
        let uri =
            if self.query.is_empty() { self.path.clone() } else { format!("{}?{}", self.path, self.query) };
        let mut request = http::Request::builder().method(self.method.as_str()).uri(uri);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let body = match &self.body {
            Some(body) => lambda_http::Body::Text(body.clone()),
            None => lambda_http::Body::Empty,
        };
        let mut request = request.body(body).expect("a valid test request");
        if let Some(deadline) = self.deadline_ms {
            let mut context = lambda_http::Context::default();
            context.deadline = deadline;
            context.request_id = uuid::Uuid::new_v4().to_string();
            request = lambda_http::RequestExt::with_lambda_context(request, context);
        }
        let response = router.handle(request).instrument(code_under_test()).await;
        let (parts, body) = response.into_parts();
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = match body {
            lambda_http::Body::Text(text) => text,
            lambda_http::Body::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            _ => String::new(),
        };
        let reply = Reply { status: parts.status.as_u16(), headers, body };
        record(self, &reply, None);
        reply
    }

    /// The API Gateway HTTP API (payload format 2.0) event for this call.
    pub fn http_api_event(&self) -> Value {
        let headers: BTreeMap<&str, &str> =
            self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let mut event = json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": self.path,
            "rawQueryString": self.query,
            "headers": headers,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "testapi",
                "domainName": "testapi.execute-api.us-east-1.amazonaws.com",
                "domainPrefix": "testapi",
                "http": {"method": self.method, "path": self.path, "protocol": "HTTP/1.1",
                         "sourceIp": "127.0.0.1", "userAgent": "credits-testkit"},
                "requestId": uuid::Uuid::new_v4().to_string(),
                "routeKey": "$default",
                "stage": "$default",
                "time": "25/Nov/2026:12:00:00 +0000",
                "timeEpoch": 1_795_000_000_000u64,
            },
            "isBase64Encoded": false,
        });
        if let Some(body) = &self.body {
            event["body"] = json!(body);
        }
        event
    }
}

/// An HTTP response, however it was delivered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Reply {
    /// From an API Gateway proxy-integration response (what the function returned).
    pub fn from_proxy_response(response: &Value) -> Reply {
        let status = response["statusCode"].as_u64().expect("statusCode") as u16;
        let mut headers = BTreeMap::new();
        if let Some(map) = response["headers"].as_object() {
            for (name, value) in map {
                headers.insert(name.to_ascii_lowercase(), value.as_str().unwrap_or_default().to_owned());
            }
        }
        let body = response["body"].as_str().unwrap_or_default().to_owned();
        Reply { status, headers, body }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {:?}", self.body))
    }

    /// The `detail` of an error body.
    pub fn detail(&self) -> String {
        self.json()["detail"].as_str().unwrap_or_else(|| panic!("no detail in {:?}", self.body)).to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// Asserts status, content type and the whole detail, hint included.
    #[track_caller]
    pub fn assert_detail(&self, status: u16, detail: &str) {
        assert_eq!((self.status, self.detail().as_str()), (status, detail), "body: {}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"));
    }

    /// Asserts status and the detail's code (the part before any `": "`).
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"));
        let detail = self.detail();
        assert!(
            detail == code || detail.starts_with(&format!("{code}: ")),
            "expected detail {code:?}, got {detail:?}"
        );
    }
}

/// Appends the exchange to `target/exchanges/<test binary>.jsonl`, which
/// `scripts/validate_responses.py` checks against `docs/openapi.yaml`.
/// `binary` is the function that answered (`None`: the in-process router);
/// the routes it serves are recorded so the validator can tell a function
/// rightly refusing another's path from one failing to route its own.
fn record(call: &Call, reply: &Reply, binary: Option<&str>) {
    static FILE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    let file = FILE.get_or_init(|| {
        let dir = crate::repo_root().join("target").join("exchanges");
        std::fs::create_dir_all(&dir).ok()?;
        let exe = std::env::current_exe().ok()?;
        let name = exe.file_name()?.to_string_lossy().into_owned();
        let file = std::fs::File::create(dir.join(format!("{name}.jsonl"))).ok()?;
        Some(Mutex::new(file))
    });
    let Some(file) = file else { return };
    let request_headers: BTreeMap<&str, &str> = call
        .headers
        .iter()
        .filter(|(n, _)| n != "authorization")
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let line = json!({
        "method": call.method,
        "path": call.path,
        "query": call.query,
        "request_headers": request_headers,
        "request_body": call.body,
        "status": reply.status,
        "headers": reply.headers,
        "body": reply.body,
        "served_by": binary.unwrap_or("router"),
        "routes": routes_of(binary),
    });
    let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(file, "{line}");
}

/// Rate-limit windows are calendar minutes: a burst that straddles two would
/// be admitted twice. Waits for the next minute when fewer than `needed`
/// seconds are left in this one.
pub async fn within_one_rate_window(needed: std::time::Duration) {
    let now = credits::clock::now_ms();
    let left_ms = 60_000 - now % 60_000;
    if left_ms < needed.as_millis() as u64 {
        tokio::time::sleep(std::time::Duration::from_millis(left_ms + 50)).await;
    }
}
