//! A recording latency proxy in front of an upstream (moto, the RevenueCat
//! sandbox, the gateway stand-in).
//!
//! Each request waits the configured delay, then is forwarded (method, path,
//! query, headers, body) to the upstream with reqwest, and the answer is
//! returned as is. moto does not check SigV4 signatures, so a re-sent request
//! with a different `Host` is still accepted.
//!
//! Every forwarded call is recorded (start, end) in a [`Recorder`] shared by
//! all proxies: the benchmark sends one invocation at a time, so the calls
//! recorded while an invocation runs are exactly that invocation's upstream
//! calls. Their union is the time the function spent waiting on upstreams;
//! the number of disjoint groups is the number of sequential round trips.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Bodies here are small JSON documents; anything near this is a bug.
const MAX_BODY: usize = 16 << 20;

/// One forwarded call, as seen by the proxy.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamCall {
    pub service: &'static str,
    pub start: Instant,
    pub end: Instant,
}

/// The delay every proxy applies, and the calls they forwarded.
#[derive(Clone, Default)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

#[derive(Default)]
struct RecorderInner {
    delay_us: AtomicU64,
    calls: Mutex<Vec<UpstreamCall>>,
}

impl Recorder {
    /// Sets the delay added before each forwarded call, on every proxy sharing this recorder.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.delay_us.store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.inner.delay_us.load(Ordering::SeqCst))
    }

    /// The calls recorded since the last `take` or `clear`.
    pub fn take(&self) -> Vec<UpstreamCall> {
        std::mem::take(&mut *self.inner.calls.lock().unwrap())
    }

    pub fn clear(&self) {
        self.inner.calls.lock().unwrap().clear();
    }

    fn record(&self, call: UpstreamCall) {
        self.inner.calls.lock().unwrap().push(call);
    }
}

/// A running proxy on `127.0.0.1` (plain HTTP, and HTTPS if given a server
/// configuration); stops when dropped.
pub struct LatencyProxy {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

struct Forwarder {
    service: &'static str,
    target: String,
    client: reqwest::Client,
    recorder: Recorder,
}

impl LatencyProxy {
    /// Proxies to `target` (scheme, host and port; paths are kept as sent).
    pub async fn start(
        service: &'static str,
        target: &str,
        recorder: Recorder,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<LatencyProxy> {
        let target = origin_of(target);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(16)
            .build()
            .map_err(|e| io::Error::other(format!("proxy client: {e}")))?;
        let forwarder = Arc::new(Forwarder { service, target, client, recorder });
        let mut tasks = Vec::new();
        let tls_addr = match tls {
            Some(config) => {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                let forwarder = Arc::clone(&forwarder);
                tasks.push(crate::tls::serve_tls(listener, config, move |request: Request<Incoming>| {
                    forward(State(Arc::clone(&forwarder)), request.map(Body::new))
                }));
                Some(addr)
            }
            None => None,
        };
        let app = Router::new().fallback(forward).with_state(forwarder);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("latency proxy stopped: {e}");
            }
        }));
        Ok(LatencyProxy { addr, tls_addr, tasks })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:PORT`, if the proxy also serves HTTPS.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_addr.map(|addr| format!("https://{addr}"))
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// `http://host:port/v2` → `http://host:port`.
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

/// Hop-by-hop headers and those reqwest/hyper set themselves.
fn forwardable(name: &HeaderName) -> bool {
    ![
        header::HOST,
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        && name.as_str() != "keep-alive"
}

fn filtered(headers: &HeaderMap) -> HeaderMap {
    headers.iter().filter(|(n, _)| forwardable(n)).map(|(n, v)| (n.clone(), v.clone())).collect()
}

async fn forward(State(proxy): State<Arc<Forwarder>>, request: Request<Body>) -> Response<Body> {
    let start = Instant::now();
    let (parts, body) = request.into_parts();
    let (method, uri) = (parts.method.clone(), parts.uri.clone());
    let operation =
        parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut steps = [Duration::ZERO; 3];
    let response = async {
        let body = to_bytes(body, MAX_BODY).await.map_err(|e| format!("request body: {e}"))?;
        steps[0] = start.elapsed();
        let delay = proxy.recorder.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let answer = proxy
            .client
            .request(parts.method.clone(), format!("{}{path}", proxy.target))
            .headers(filtered(&parts.headers))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("forward to {}: {e}", proxy.target))?;
        steps[1] = start.elapsed();
        let status = answer.status();
        let headers = filtered(answer.headers());
        let bytes = answer.bytes().await.map_err(|e| format!("upstream body: {e}"))?;
        steps[2] = start.elapsed();
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok::<_, String>(response)
    }
    .await
    .unwrap_or_else(|message| {
        let mut response = Response::new(Body::from(message));
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        response
    });
    let end = Instant::now();
    proxy.recorder.record(UpstreamCall { service: proxy.service, start, end });
    // A call this slow stalls the run's figures; say where it stalled.
    if end - start > SLOW_CALL {
        eprintln!(
            "latency proxy ({}): {method} {uri} {operation} took {:?}: request body read at {:?}, upstream headers at {:?}, \
             upstream body at {:?} (zero: not reached), answered {}",
            proxy.service,
            end - start,
            steps[0],
            steps[1],
            steps[2],
            response.status()
        );
    }
    response
}

/// Calls slower than this are reported on stderr.
const SLOW_CALL: Duration = Duration::from_secs(1);

/// Time during which at least one call was in flight within `[from, to]`,
/// and the number of disjoint groups of overlapping calls (sequential round trips).
/// Calls are also counted per service (AWS, RevenueCat, gateway).
pub fn busy(calls: &[UpstreamCall], from: Instant, to: Instant) -> (Duration, usize, [u8; 3]) {
    let mut per_service = [0u8; 3];
    for call in calls.iter().filter(|c| c.start < to && c.end > from) {
        let index = match call.service {
            "aws" => 0,
            "revenuecat" => 1,
            _ => 2,
        };
        per_service[index] = per_service[index].saturating_add(1);
    }
    let mut spans: Vec<(Instant, Instant)> =
        calls.iter().map(|c| (c.start.max(from), c.end.min(to))).filter(|(start, end)| end > start).collect();
    spans.sort();
    let mut total = Duration::ZERO;
    let mut groups = 0;
    let mut current: Option<(Instant, Instant)> = None;
    for (start, end) in spans {
        match current {
            Some((cs, ce)) if start <= ce => current = Some((cs, ce.max(end))),
            _ => {
                if let Some((cs, ce)) = current {
                    total += ce - cs;
                }
                groups += 1;
                current = Some((start, end));
            }
        }
    }
    if let Some((cs, ce)) = current {
        total += ce - cs;
    }
    (total, groups, per_service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_and_groups() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let call = |a, b| UpstreamCall { service: "x", start: ms(a), end: ms(b) };
        // Two overlapping calls, then one alone.
        let calls = [call(10, 30), call(12, 25), call(40, 50)];
        let (total, groups, _) = busy(&calls, ms(0), ms(100));
        assert_eq!(total, Duration::from_millis(30));
        assert_eq!(groups, 2);
        // Clipped to the window.
        let (total, groups, per_service) = busy(&calls, ms(20), ms(45));
        assert_eq!(per_service, [0, 0, 3]);
        assert_eq!(total, Duration::from_millis(15));
        assert_eq!(groups, 2);
        assert_eq!(origin_of("http://127.0.0.1:9/v2"), "http://127.0.0.1:9");
    }
}
