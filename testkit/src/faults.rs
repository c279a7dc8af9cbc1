//! Upstreams that misbehave the way brown-outs do, for the fault matrix:
//!
//! * [`StalledListener`] accepts TCP connections and never answers a byte —
//!   what an overloaded service or a black-holed route looks like (a refused
//!   connection is the easy case; this one only a deadline ends).
//! * [`AwsFaultProxy`] stands in front of moto and, per AWS operation
//!   (`X-Amz-Target`, e.g. `PutItem`), stalls, fails, or forwards the request
//!   and then withholds the answer (the write happened, the caller never
//!   hears of it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A listener that accepts every connection, reads whatever arrives, and
/// never writes. Stops when dropped.
pub struct StalledListener {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl StalledListener {
    pub async fn start() -> StalledListener {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut sink = [0u8; 4096];
                    while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                    // Keep the socket open until the peer gives up.
                    std::future::pending::<()>().await;
                });
            }
        });
        StalledListener { url, task }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        self.url.clone()
    }
}

impl Drop for StalledListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the proxy does with one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsFault {
    /// Never answer.
    Stall,
    /// Forward to moto (so the write is applied), then never answer.
    ForwardThenStall,
    /// Answer a retryable server error without forwarding.
    InternalError,
}

#[derive(Default)]
struct Rules {
    /// Operation name → (fault, how many more requests it applies to; `None` = all).
    faults: HashMap<String, (AwsFault, Option<usize>)>,
    seen: HashMap<String, usize>,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    rules: Arc<Mutex<Rules>>,
}

/// An HTTP proxy in front of moto with per-operation faults. Stops when dropped.
pub struct AwsFaultProxy {
    url: String,
    rules: Arc<Mutex<Rules>>,
    task: tokio::task::JoinHandle<()>,
}

impl AwsFaultProxy {
    pub async fn start(upstream: &str) -> AwsFaultProxy {
        let rules = Arc::new(Mutex::new(Rules::default()));
        let proxy = Proxy {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            rules: rules.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(proxy);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AwsFaultProxy { url, rules, task }
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Applies `fault` to the next `times` requests of `operation` (e.g.
    /// `"PutItem"`), or to all of them with `None`.
    pub fn inject(&self, operation: &str, fault: AwsFault, times: Option<usize>) {
        self.rules.lock().unwrap().faults.insert(operation.to_owned(), (fault, times));
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap().faults.clear();
    }

    /// Requests of `operation` that reached the proxy so far.
    pub fn seen(&self, operation: &str) -> usize {
        self.rules.lock().unwrap().seen.get(operation).copied().unwrap_or(0)
    }
}

impl Drop for AwsFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn operation_of(headers: &HeaderMap, body: &Bytes) -> String {
    // JSON protocols (DynamoDB, Secrets Manager) name it in X-Amz-Target.
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or(target).to_owned();
    }
    String::from_utf8_lossy(body).chars().take(40).collect()
}

async fn forward(
    State(proxy): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = operation_of(&headers, &body);
    let fault = {
        let mut rules = proxy.rules.lock().unwrap();
        *rules.seen.entry(operation.clone()).or_default() += 1;
        match rules.faults.get_mut(&operation) {
            Some((fault, Some(left))) if *left > 0 => {
                *left -= 1;
                Some(fault.clone())
            }
            Some((fault, None)) => Some(fault.clone()),
            _ => None,
        }
    };
    match fault {
        Some(AwsFault::Stall) => std::future::pending().await,
        Some(AwsFault::InternalError) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                [("content-type", "application/x-amz-json-1.0")],
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected"}"#,
            )
                .into_response()
        }
        _ => {}
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = proxy.client.request(method, format!("{}{path}", proxy.upstream)).body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    if fault == Some(AwsFault::ForwardThenStall) {
        std::future::pending::<()>().await;
    }
    let mut response = (status, bytes).into_response();
    for (name, value) in &answer_headers {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}
