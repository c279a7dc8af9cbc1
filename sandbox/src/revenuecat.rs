//! In-process stand-in for RevenueCat's REST API v2, virtual-currency subset.
//!
//! Shapes, status codes and messages follow /work/shared/revenuecat-v2.md, cited as §N.
//! Where the notes mark a behaviour as undocumented ([I]), the choice made here is stated
//! next to the code that makes it.

mod error;
mod handler;
mod routes;
mod transaction;
mod wire;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;

pub use crate::server::SandboxServer;
use crate::server::{self, ephemeral_loopback};
use crate::Gate;
use transaction::IdempotencyEntry;

/// A fake RevenueCat project: currencies, customers and their balances, plus the knobs tests
/// use (fault injection, request counters, a recorded transaction log).
///
/// Clones share state, so a test can keep one clone for assertions while the server runs.
#[derive(Clone)]
pub struct RevenueCatSandbox {
    state: Arc<Mutex<State>>,
}

/// A virtual currency configured in the project (§3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency {
    pub code: String,
    pub name: String,
    pub description: Option<String>,
    pub grants: Vec<ProductGrant>,
}

impl Currency {
    /// A currency without description or product grants.
    pub fn new(code: &str, name: &str) -> Self {
        Self { code: code.to_owned(), name: name.to_owned(), description: None, grants: Vec::new() }
    }
}

/// One product grant of a currency (§3): buying any of `product_ids` grants `amount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductGrant {
    pub product_ids: Vec<String>,
    pub amount: i64,
}

/// One `POST …/virtual_currencies/transactions` request, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedTransaction {
    pub customer_id: String,
    /// The integer adjustments found in the body (best effort: empty if the body was not JSON).
    pub adjustments: BTreeMap<String, i64>,
    pub reference: Option<String>,
    pub idempotency_key: Option<String>,
    /// True only for the call that changed balances. Replays, rejections and faulted calls
    /// are false.
    pub applied: bool,
    /// The status answered; `None` while in progress or when no answer was sent
    /// (`Fault::Hang`, `Fault::CloseConnection`).
    pub status: Option<u16>,
}

/// A failure injected into the next matching requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer `status` with a RevenueCat error object of type `error_type` (§8). `backoff_ms`
    /// is sent only when `retryable`; a 429 also gets `Retry-After` =
    /// ceil(backoff_ms / 1000), 1 s by default (§9).
    Status { status: u16, error_type: String, retryable: bool, backoff_ms: Option<u64> },
    /// Sleep, then process and answer normally. A transaction holds its Idempotency-Key
    /// while sleeping, so a concurrent duplicate gets 423.
    Delay(Duration),
    /// Process first (a transaction is applied), then sleep before answering. Simulates a
    /// caller that times out after RevenueCat applied the change.
    ApplyThenDelay(Duration),
    /// Never answer. The connection stays open until the caller gives up or the server stops.
    Hang,
    /// 200 with the body `not json{`.
    InvalidJson,
    /// This error status with a body that is not RevenueCat's error object
    /// (a proxy's HTML page, a truncated answer).
    UnreadableStatus(u16),
    /// Drop the TCP connection without writing any response.
    CloseConnection,
    /// Like `Delay`, but until the test opens the gate: the request is in flight (a
    /// transaction holding its Idempotency-Key) for exactly as long as the test needs.
    HoldUntil(Gate),
    /// Like `ApplyThenDelay`, but the answer waits until the test opens the gate.
    ApplyThenHoldUntil(Gate),
}

impl Fault {
    /// RevenueCat's `500 server_error`, retryable, asking to wait `backoff_ms` if given.
    pub fn server_error(backoff_ms: Option<u64>) -> Fault {
        Fault::Status { status: 500, error_type: "server_error".into(), retryable: true, backoff_ms }
    }

    /// RevenueCat's `429 rate_limit_error`, asking to wait `backoff_ms`.
    pub fn rate_limited(backoff_ms: u64) -> Fault {
        Fault::Status {
            status: 429,
            error_type: "rate_limit_error".into(),
            retryable: true,
            backoff_ms: Some(backoff_ms),
        }
    }

    /// RevenueCat's `423 resource_locked_error`, asking to wait `backoff_ms`.
    pub fn locked(backoff_ms: u64) -> Fault {
        Fault::Status {
            status: 423,
            error_type: "resource_locked_error".into(),
            retryable: true,
            backoff_ms: Some(backoff_ms),
        }
    }
}

/// The routes faults and counters refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /v2/projects/{pid}/virtual_currencies`
    ListCurrencies,
    /// `GET /v2/projects/{pid}/customers/{cid}`
    GetCustomer,
    /// `POST /v2/projects/{pid}/customers`
    CreateCustomer,
    /// `GET /v2/projects/{pid}/customers/{cid}/virtual_currencies`
    Balances,
    /// `POST /v2/projects/{pid}/customers/{cid}/virtual_currencies/transactions`
    Transaction,
    /// Every route. As a counter it also includes requests to unknown paths.
    Any,
}

impl Route {
    fn matches(self, route: Route) -> bool {
        self == Route::Any || self == route
    }
}

impl RevenueCatSandbox {
    /// An empty project: no currencies, no customers.
    pub fn new(project_id: &str, api_key: &str) -> Self {
        let state = State {
            project_id: project_id.to_owned(),
            api_key: api_key.to_owned(),
            currencies: BTreeMap::new(),
            customers: BTreeMap::new(),
            transactions: Vec::new(),
            idempotency: HashMap::new(),
            faults: VecDeque::new(),
            requests: HashMap::new(),
            arrivals: Vec::new(),
            rate_windows: HashMap::new(),
            page_limit_cap: None,
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    /// Project `proj1ab2c3d4` (key `sk_sandbox_demo`) with currency `CRD` and customer
    /// `user_2abcXYZ` holding 120 CRD.
    pub fn demo() -> Self {
        let sandbox = Self::new("proj1ab2c3d4", "sk_sandbox_demo");
        sandbox.add_currency(Currency {
            description: Some("ManticScore credits".to_owned()),
            grants: vec![ProductGrant {
                product_ids: vec!["com.bairisland.manticscore.pro.monthly".to_owned()],
                amount: 500,
            }],
            ..Currency::new("CRD", "Credits")
        });
        sandbox.set_balance("user_2abcXYZ", "CRD", 120);
        sandbox
    }

    pub fn project_id(&self) -> String {
        self.lock().project_id.clone()
    }

    pub fn api_key(&self) -> String {
        self.lock().api_key.clone()
    }

    /// Adds a currency, or replaces the one with the same code.
    pub fn add_currency(&self, currency: Currency) {
        let code = currency.code.clone();
        let stored = StoredCurrency { currency, created_at: now_ms() };
        self.lock().currencies.insert(code, stored);
    }

    /// Creates the customer with no balances; does nothing if it exists.
    pub fn add_customer(&self, id: &str) {
        self.lock().customer_entry(id);
    }

    /// Sets a balance directly, creating the customer if missing. Only codes of project
    /// currencies show up in balance lists.
    pub fn set_balance(&self, customer: &str, code: &str, balance: i64) {
        self.lock().customer_entry(customer).balances.insert(code.to_owned(), balance);
    }

    /// `None` if the customer does not exist; 0 for a currency it never held.
    pub fn balance(&self, customer: &str, code: &str) -> Option<i64> {
        let state = self.lock();
        let customer = state.customers.get(customer)?;
        Some(customer.balances.get(code).copied().unwrap_or(0))
    }

    /// Every transactions request received, in arrival order, faulted ones included.
    pub fn transactions(&self) -> Vec<RecordedTransaction> {
        self.lock().transactions.clone()
    }

    /// Only the transactions that changed balances. Idempotent replays are not counted again.
    pub fn applied_transactions(&self) -> Vec<RecordedTransaction> {
        let state = self.lock();
        state.transactions.iter().filter(|t| t.applied).cloned().collect()
    }

    /// Requests received on `route`, faulted and rejected ones included.
    pub fn request_count(&self, route: Route) -> usize {
        self.lock().requests.get(&route).copied().unwrap_or(0)
    }

    /// When each request on `route` arrived, in arrival order, faulted and rejected ones
    /// included (`Route::Any`: every routed request). For timing a client's backoff.
    pub fn arrivals(&self, route: Route) -> Vec<Instant> {
        let state = self.lock();
        state.arrivals.iter().filter(|(r, _)| route.matches(*r)).map(|(_, at)| *at).collect()
    }

    /// Queues `fault` for the next `times` requests matching `route`. Queued faults are used
    /// in the order they were injected.
    ///
    /// # Panics
    /// If a `Fault::Status` carries a number that is not an HTTP status code.
    pub fn inject(&self, route: Route, fault: Fault, times: usize) {
        if let Fault::Status { status, .. } = &fault {
            assert!(
                StatusCode::from_u16(*status).is_ok(),
                "Fault::Status: {status} is not an HTTP status code"
            );
        }
        if times > 0 {
            self.lock().faults.push_back(ArmedFault { route, fault, remaining: times });
        }
    }

    /// Caps every page at `cap` items whatever `limit` asks for, to force pagination.
    pub fn set_page_limit_cap(&self, cap: usize) {
        self.lock().page_limit_cap = Some(cap.max(1));
    }

    /// Serves on 127.0.0.1 with an ephemeral port.
    pub async fn start(&self) -> io::Result<SandboxServer> {
        self.start_on(ephemeral_loopback()).await
    }

    /// Serves on `addr`. `base_url()` of the result ends in `/v2`.
    pub async fn start_on(&self, addr: SocketAddr) -> io::Result<SandboxServer> {
        let sandbox = self.clone();
        server::serve(addr, routes::API_PREFIX, move |request, connection| {
            sandbox.clone().handle(request, connection)
        })
        .await
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not wedge every later request.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct State {
    project_id: String,
    api_key: String,
    currencies: BTreeMap<String, StoredCurrency>,
    customers: BTreeMap<String, StoredCustomer>,
    transactions: Vec<RecordedTransaction>,
    idempotency: HashMap<String, IdempotencyEntry>,
    faults: VecDeque<ArmedFault>,
    requests: HashMap<Route, usize>,
    /// When each routed request arrived, in arrival order.
    arrivals: Vec<(Route, Instant)>,
    rate_windows: HashMap<RateDomain, RateWindow>,
    page_limit_cap: Option<usize>,
}

impl State {
    fn customer_entry(&mut self, id: &str) -> &mut StoredCustomer {
        self.customers
            .entry(id.to_owned())
            .or_insert_with(|| StoredCustomer { first_seen_at: now_ms(), balances: BTreeMap::new() })
    }

    /// Takes one use of the first queued fault that matches `route`.
    fn take_fault(&mut self, route: Route) -> Option<Fault> {
        let index = self.faults.iter().position(|f| f.route.matches(route))?;
        let armed = &mut self.faults[index];
        armed.remaining -= 1;
        let fault = armed.fault.clone();
        if armed.remaining == 0 {
            self.faults.remove(index);
        }
        Some(fault)
    }

    fn count_request(&mut self, route: Option<Route>) {
        *self.requests.entry(Route::Any).or_default() += 1;
        if let Some(route) = route {
            *self.requests.entry(route).or_default() += 1;
            self.arrivals.push((route, Instant::now()));
        }
    }

    /// Counts a request against its rate-limit domain's current one-minute window (§9).
    fn rate_usage(&mut self, domain: RateDomain) -> RateUsage {
        let window =
            self.rate_windows.entry(domain).or_insert(RateWindow { started: Instant::now(), used: 0 });
        if window.started.elapsed() >= Duration::from_secs(60) {
            *window = RateWindow { started: Instant::now(), used: 0 };
        }
        window.used += 1;
        RateUsage { used: window.used, limit: domain.limit_per_minute() }
    }
}

struct StoredCurrency {
    currency: Currency,
    created_at: u64,
}

struct StoredCustomer {
    first_seen_at: u64,
    balances: BTreeMap<String, i64>,
}

struct ArmedFault {
    route: Route,
    fault: Fault,
    remaining: usize,
}

/// Rate-limit domains (§9). Limits are reported, not enforced; use `Fault::Status` for 429s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RateDomain {
    CustomerInformation,
    CreateTransaction,
    ProjectConfiguration,
}

impl RateDomain {
    fn of(route: Route) -> Self {
        match route {
            Route::ListCurrencies => Self::ProjectConfiguration,
            Route::Transaction => Self::CreateTransaction,
            Route::GetCustomer | Route::CreateCustomer | Route::Balances | Route::Any => {
                Self::CustomerInformation
            }
        }
    }

    fn limit_per_minute(self) -> u32 {
        match self {
            Self::CustomerInformation | Self::CreateTransaction => 480,
            Self::ProjectConfiguration => 60,
        }
    }
}

struct RateWindow {
    started: Instant,
    used: u32,
}

/// Values for the `RevenueCat-Rate-Limit-Current-*` headers (§9).
#[derive(Debug, Clone, Copy)]
struct RateUsage {
    used: u32,
    limit: u32,
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
