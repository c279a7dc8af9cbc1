//! In-process stand-in for the realtime gateway's control endpoint: records the envelopes
//! it accepts and can fail on demand.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::server::{self, ephemeral_loopback, Connection, SandboxServer};
use crate::Gate;

/// The one route the gateway serves.
const CONTROL_PATH: &str = "/internal/control";

/// Envelopes are small JSON objects; anything larger is a caller bug.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Records control envelopes POSTed to `/internal/control`.
///
/// Clones share state, so a test can keep one clone for assertions while the server runs.
#[derive(Clone)]
pub struct GatewayStandIn {
    state: Arc<Mutex<GatewayState>>,
}

/// A failure injected into the next POSTs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayFault {
    /// Answer this status with `{"error": …}` and record nothing.
    Status(u16),
    /// Sleep, then process and answer normally. Processing continues if the caller hangs up
    /// meanwhile, so the envelope is still recorded.
    Delay(Duration),
    /// Drop the TCP connection without writing any response; nothing is recorded.
    CloseConnection,
    /// Like `Delay`, but until the test opens the gate.
    HoldUntil(Gate),
}

#[derive(Default)]
struct GatewayState {
    expected_bearer: Option<String>,
    faults: VecDeque<(GatewayFault, usize)>,
    down: bool,
    envelopes: Vec<Value>,
    accepted_ids: HashSet<String>,
    attempts: usize,
}

impl GatewayState {
    /// Takes one use of the oldest queued fault.
    fn take_fault(&mut self) -> Option<GatewayFault> {
        let (fault, remaining) = self.faults.front_mut()?;
        let fault = fault.clone();
        *remaining -= 1;
        if *remaining == 0 {
            self.faults.pop_front();
        }
        Some(fault)
    }

    /// Records an accepted envelope; true if its `envelope_id` was accepted before.
    fn accept(&mut self, envelope: Value) -> bool {
        let duplicate = match envelope_id(&envelope) {
            Some(id) => !self.accepted_ids.insert(id.to_owned()),
            None => false,
        };
        self.envelopes.push(envelope);
        duplicate
    }
}

impl GatewayStandIn {
    /// `None` accepts any bearer token (one must still be sent); `Some` requires that token.
    pub fn new(expected_bearer: Option<String>) -> Self {
        let state = GatewayState { expected_bearer, ..GatewayState::default() };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    pub fn set_expected_bearer(&self, bearer: Option<String>) {
        self.lock().expected_bearer = bearer;
    }

    /// Queues `fault` for the next `times` POSTs, after the faults already queued.
    ///
    /// # Panics
    /// If a `GatewayFault::Status` carries a number that is not an HTTP status code.
    pub fn inject(&self, fault: GatewayFault, times: usize) {
        if let GatewayFault::Status(status) = fault {
            assert!(
                StatusCode::from_u16(status).is_ok(),
                "GatewayFault::Status: {status} is not an HTTP status code"
            );
        }
        if times > 0 {
            self.lock().faults.push_back((fault, times));
        }
    }

    /// While down, every POST to the control route answers 503 and queued faults wait.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Accepted (202) envelopes in arrival order, duplicates included.
    pub fn envelopes(&self) -> Vec<Value> {
        self.lock().envelopes.clone()
    }

    /// `envelope_id`s of the accepted envelopes, first-seen order, each once.
    pub fn unique_envelope_ids(&self) -> Vec<String> {
        let state = self.lock();
        let mut seen = HashSet::new();
        state
            .envelopes
            .iter()
            .filter_map(envelope_id)
            .filter(|id| seen.insert(*id))
            .map(str::to_owned)
            .collect()
    }

    /// Every POST received, on any path, whatever its outcome.
    pub fn attempts(&self) -> usize {
        self.lock().attempts
    }

    /// Serves on 127.0.0.1 with an ephemeral port. `base_url()` has no path suffix.
    pub async fn start(&self) -> io::Result<SandboxServer> {
        self.start_on(ephemeral_loopback()).await
    }

    /// Serves on `addr`.
    pub async fn start_on(&self, addr: SocketAddr) -> io::Result<SandboxServer> {
        let gateway = self.clone();
        server::serve(addr, "", move |request, connection| gateway.clone().handle(request, connection)).await
    }

    async fn handle(self, request: Request<Body>, connection: Connection) -> Response {
        let (parts, body) = request.into_parts();
        let is_post = parts.method == Method::POST;
        if is_post {
            self.lock().attempts += 1;
        }
        if !is_post || parts.uri.path() != CONTROL_PATH {
            return error(StatusCode::NOT_FOUND, "not found");
        }
        let Ok(body) = to_bytes(body, MAX_BODY_BYTES).await else {
            return error(StatusCode::BAD_REQUEST, "request body could not be read");
        };
        let fault = {
            let mut state = self.lock();
            if state.down {
                return error(StatusCode::SERVICE_UNAVAILABLE, "gateway is down");
            }
            state.take_fault()
        };
        let (delay, gate) = match fault {
            None => (Duration::ZERO, None),
            Some(GatewayFault::Delay(delay)) => (delay, None),
            Some(GatewayFault::HoldUntil(gate)) => (Duration::ZERO, Some(gate)),
            Some(GatewayFault::Status(status)) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return error(status, "injected fault");
            }
            Some(GatewayFault::CloseConnection) => return connection.close_without_answer().await,
        };
        // Own task: a caller that hangs up during the delay does not cancel processing.
        let gateway = self.clone();
        let processing = tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(gate) = gate {
                gate.passed().await;
            }
            gateway.process(&parts.headers, &body)
        });
        processing.await.unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "gateway panicked"))
    }

    /// Checks the bearer, parses the envelope and records it.
    fn process(&self, headers: &HeaderMap, body: &Bytes) -> Response {
        let mut state = self.lock();
        let authorized = match (bearer_token(headers), &state.expected_bearer) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(token), Some(expected)) => token == expected,
        };
        if !authorized {
            return error(StatusCode::UNAUTHORIZED, "invalid bearer token");
        }
        let Ok(envelope) = serde_json::from_slice::<Value>(body) else {
            return error(StatusCode::BAD_REQUEST, "body is not valid JSON");
        };
        let duplicate = state.accept(envelope);
        (StatusCode::ACCEPTED, Json(json!({ "accepted": true, "duplicate": duplicate }))).into_response()
    }

    fn lock(&self) -> MutexGuard<'_, GatewayState> {
        // A panicking test thread must not wedge every later request.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn envelope_id(envelope: &Value) -> Option<&str> {
    envelope.get("envelope_id")?.as_str()
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
