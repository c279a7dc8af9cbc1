//! An emulator of the AWS Lambda Runtime API
//! (<https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>).
//!
//! Function binaries find it through `AWS_LAMBDA_RUNTIME_API` and long-poll
//! `GET /2018-06-01/runtime/invocation/next`; the test calls
//! [`RuntimeApiEmulator::invoke`], which queues an event, hands it to exactly
//! one waiting poller and resolves when that process posts a response or an
//! error — or when the configured wait runs out.

mod routes;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use state::State;

/// Default time a function has per invocation (`Lambda-Runtime-Deadline-Ms`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// Default time [`RuntimeApiEmulator::invoke`] waits for an outcome.
pub const DEFAULT_INVOKE_WAIT: Duration = Duration::from_secs(30);

/// Outcome of one invocation, as a Lambda caller would observe it.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// Body the function posted to `/invocation/{id}/response` (JSON, or a
    /// JSON string holding the raw text if it was not JSON).
    Response(Value),
    /// Body the function posted to `/invocation/{id}/error`, typically
    /// `{"errorType": ..., "errorMessage": ...}`.
    Error(Value),
    /// No outcome within the wait: no poller took the event, or the function
    /// never answered (hung or crashed).
    TimedOut,
}

impl Invocation {
    /// The response body; panics with the actual outcome otherwise.
    pub fn into_response(self) -> Value {
        match self {
            Invocation::Response(body) => body,
            other => panic!("expected a function response, got {other:?}"),
        }
    }

    /// The error body; panics with the actual outcome otherwise.
    pub fn into_error(self) -> Value {
        match self {
            Invocation::Error(body) => body,
            other => panic!("expected a function error, got {other:?}"),
        }
    }
}

/// Settings fixed when the emulator starts.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Used in the `Lambda-Runtime-Invoked-Function-Arn` header.
    pub function_name: String,
    pub deadline: Duration,
    pub invoke_wait: Duration,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            function_name: "test-function".into(),
            deadline: DEFAULT_DEADLINE,
            invoke_wait: DEFAULT_INVOKE_WAIT,
        }
    }
}

/// A running Runtime API server on `127.0.0.1`. Cheap to clone (clones share
/// one server); the server stops when the last clone is dropped.
#[derive(Clone)]
pub struct RuntimeApiEmulator {
    state: Arc<State>,
    addr: SocketAddr,
    _server: Arc<ServerGuard>,
}

impl RuntimeApiEmulator {
    /// Starts an emulator with [`EmulatorOptions::default`].
    pub async fn start() -> RuntimeApiEmulator {
        Self::start_with(EmulatorOptions::default()).await
    }

    pub async fn start_with(options: EmulatorOptions) -> RuntimeApiEmulator {
        let state = Arc::new(State::new(&options));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Runtime API emulator to a loopback port");
        let addr = listener.local_addr().expect("listener has an address");
        let app = routes::router(Arc::clone(&state));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("runtime API emulator stopped: {e}");
            }
        });
        RuntimeApiEmulator { _server: Arc::new(ServerGuard { task, state: Arc::clone(&state) }), state, addr }
    }

    /// `127.0.0.1:PORT` — the value for `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The ARN sent to the function in `Lambda-Runtime-Invoked-Function-Arn`.
    pub fn function_arn(&self) -> String {
        self.state.function_arn.clone()
    }

    /// Invokes the function with `event`, waiting up to the configured
    /// invoke wait (default [`DEFAULT_INVOKE_WAIT`]).
    pub async fn invoke(&self, event: Value) -> Invocation {
        let wait = *self.state.invoke_wait.lock().unwrap();
        self.invoke_with_wait(event, wait).await
    }

    /// Invokes the function with `event`, waiting up to `wait` for an outcome.
    ///
    /// On timeout (or if this future is dropped) the invocation is withdrawn:
    /// if still queued no poller will get it, and a late answer from the
    /// function gets `410 Gone`, as from real Lambda.
    pub async fn invoke_with_wait(&self, event: Value, wait: Duration) -> Invocation {
        let mut pending = self.state.enqueue(event);
        match tokio::time::timeout(wait, pending.outcome()).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) | Err(_) => Invocation::TimedOut,
        }
    }

    /// Sets the time each subsequently delivered invocation gets, reported in
    /// `Lambda-Runtime-Deadline-Ms` (the emulator does not enforce it).
    pub fn set_deadline(&self, deadline: Duration) {
        *self.state.deadline.lock().unwrap() = deadline;
    }

    /// Sets how long [`invoke`](Self::invoke) waits for an outcome.
    pub fn set_invoke_wait(&self, wait: Duration) {
        *self.state.invoke_wait.lock().unwrap() = wait;
    }

    /// Bodies posted to `/runtime/init/error`, oldest first.
    pub fn init_errors(&self) -> Vec<Value> {
        self.state.init_errors.lock().unwrap().clone()
    }

    /// Number of `GET /invocation/next` requests received so far.
    pub fn poll_count(&self) -> usize {
        self.state.counters.polls()
    }

    /// Number of pollers currently parked waiting for an invocation.
    pub fn waiting_pollers(&self) -> usize {
        self.state.counters.waiting()
    }

    /// Number of invocations handed to a poller so far.
    pub fn delivered_count(&self) -> usize {
        self.state.counters.delivered()
    }

    /// Waits until at least `n` pollers are parked (e.g. every instance of a
    /// freshly spawned pool finished its init). Returns whether that happened
    /// within `timeout`.
    pub async fn wait_for_pollers(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.waiting_pollers() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Stops the server when the last emulator clone goes away.
struct ServerGuard {
    task: JoinHandle<()>,
    state: Arc<State>,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        // Aborting the accept loop does not end connections already being
        // served, so parked long-polls are released explicitly.
        self.state.close();
        self.task.abort();
    }
}
