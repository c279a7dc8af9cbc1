//! Request handling: admission (counters, transaction log, faults), authentication and the
//! five endpoints.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::error::ApiError;
use super::routes::{self, encode, Endpoint, Target, API_PREFIX};
use super::transaction::{adjusted_balances, record_of, Claim, Fingerprint, StoredResponse, TransactionBody};
use super::wire::{self, List, VirtualCurrency, VirtualCurrencyBalance};
use super::{Fault, RateDomain, RateUsage, RevenueCatSandbox, StoredCurrency};
use crate::server::Connection;
use crate::Gate;

/// Request bodies are small JSON objects; anything larger is a caller bug.
const MAX_BODY_BYTES: usize = 1 << 20;

/// `limit` when the caller sends none (§2).
const DEFAULT_PAGE_LIMIT: usize = 20;

/// §9: sent on every successful answer (and on 429).
const RATE_LIMIT_USAGE: HeaderName = HeaderName::from_static("revenuecat-rate-limit-current-usage");
const RATE_LIMIT_LIMIT: HeaderName = HeaderName::from_static("revenuecat-rate-limit-current-limit");

/// §2 [O]: RevenueCat's CLI reads it for error reports.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A routed request with its body read, detached from the connection so that processing can
/// run in a task of its own.
struct Incoming {
    target: Target,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Incoming {
    /// `http://<Host>`, for the absolute `url` / `next_page` real responses carry (§2 [O]).
    fn origin(&self) -> String {
        let host = self.headers.get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or("127.0.0.1");
        format!("http://{host}")
    }

    fn query(&self) -> Result<HashMap<String, String>, ApiError> {
        Query::try_from_uri(&self.uri)
            .map(|Query(query)| query)
            .map_err(|_| ApiError::invalid_request("Malformed query string"))
    }
}

/// What admission decided for one request.
struct Admission {
    fault: Option<Fault>,
    usage: RateUsage,
    /// Index of the request in the transaction log (transactions only).
    record: Option<usize>,
}

/// Waits around processing, from `Fault::Delay` / `Fault::HoldUntil` (before) and
/// `Fault::ApplyThenDelay` / `Fault::ApplyThenHoldUntil` (after).
#[derive(Debug, Default, Clone)]
struct Timing {
    before: Pause,
    after: Pause,
}

#[derive(Debug, Default, Clone)]
enum Pause {
    #[default]
    None,
    Sleep(Duration),
    Gate(Gate),
}

impl Timing {
    async fn around<T>(self, work: impl FnOnce() -> T) -> T {
        pause(&self.before).await;
        let output = work();
        pause(&self.after).await;
        output
    }
}

async fn pause(pause: &Pause) {
    match pause {
        Pause::None => {}
        Pause::Sleep(duration) => tokio::time::sleep(*duration).await,
        Pause::Gate(gate) => gate.passed().await,
    }
}

impl RevenueCatSandbox {
    pub(super) async fn handle(self, request: Request<Body>, connection: Connection) -> Response {
        let mut response = self.route(request, connection).await;
        if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        response
    }

    async fn route(self, request: Request<Body>, connection: Connection) -> Response {
        let (parts, body) = request.into_parts();
        let target = match routes::classify(&parts.method, parts.uri.path()) {
            Ok(target) => target,
            Err(error) => {
                self.lock().count_request(None);
                return error.into_response();
            }
        };
        let Ok(body) = to_bytes(body, MAX_BODY_BYTES).await else {
            self.lock().count_request(Some(target.route()));
            return ApiError::invalid_request("Request body could not be read").into_response();
        };
        let incoming = Incoming { target, uri: parts.uri, headers: parts.headers, body };
        let admission = self.admit(&incoming);
        let usage = admission.usage;
        let mut response = self.respond(incoming, admission, connection).await;
        let status = response.status();
        if status.is_success() || status == StatusCode::TOO_MANY_REQUESTS {
            let headers = response.headers_mut();
            headers.insert(RATE_LIMIT_USAGE, HeaderValue::from(usage.used));
            headers.insert(RATE_LIMIT_LIMIT, HeaderValue::from(usage.limit));
        }
        response
    }

    /// Counts the request, logs a transaction and takes the fault to apply, in one lock so
    /// concurrent requests see a consistent order.
    fn admit(&self, incoming: &Incoming) -> Admission {
        let route = incoming.target.route();
        let mut state = self.lock();
        state.count_request(Some(route));
        let usage = state.rate_usage(RateDomain::of(route));
        let record = match &incoming.target.endpoint {
            Endpoint::Transaction { customer_id } => {
                let key = idempotency_key(&incoming.headers);
                state.transactions.push(record_of(customer_id, &incoming.body, key));
                Some(state.transactions.len() - 1)
            }
            _ => None,
        };
        Admission { fault: state.take_fault(route), usage, record }
    }

    async fn respond(&self, incoming: Incoming, admission: Admission, connection: Connection) -> Response {
        let record = admission.record;
        let timing = match admission.fault {
            None => Timing::default(),
            Some(Fault::Delay(delay)) => Timing { before: Pause::Sleep(delay), ..Timing::default() },
            Some(Fault::ApplyThenDelay(delay)) => Timing { after: Pause::Sleep(delay), ..Timing::default() },
            Some(Fault::HoldUntil(gate)) => Timing { before: Pause::Gate(gate), ..Timing::default() },
            Some(Fault::ApplyThenHoldUntil(gate)) => Timing { after: Pause::Gate(gate), ..Timing::default() },
            Some(Fault::Hang) => return std::future::pending().await,
            Some(Fault::CloseConnection) => return connection.close_without_answer().await,
            Some(Fault::InvalidJson) => return self.finish(record, invalid_json()),
            Some(Fault::UnreadableStatus(status)) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                let page = (status, [(header::CONTENT_TYPE, "text/html")], "<html>Bad Request</html>");
                return self.finish(record, page.into_response());
            }
            Some(Fault::Status { status, error_type, retryable, backoff_ms }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let error = ApiError::injected(status, &error_type, retryable, backoff_ms);
                return self.finish(record, error.into_response());
            }
        };
        // Processing gets its own task so that a caller hanging up (say, after a client-side
        // timeout) does not cancel it. A real server behaves the same way: a delayed
        // transaction is still applied after the caller has given up.
        let sandbox = self.clone();
        let processing = tokio::spawn(async move {
            let response =
                sandbox.process(incoming, record, timing).await.unwrap_or_else(IntoResponse::into_response);
            sandbox.finish(record, response)
        });
        processing.await.unwrap_or_else(|_| ApiError::internal().into_response())
    }

    /// Notes the answered status in the transaction log.
    fn finish(&self, record: Option<usize>, response: Response) -> Response {
        if let Some(index) = record {
            self.lock().transactions[index].status = Some(response.status().as_u16());
        }
        response
    }

    async fn process(
        &self,
        incoming: Incoming,
        record: Option<usize>,
        timing: Timing,
    ) -> Result<Response, ApiError> {
        self.authorize(&incoming)?;
        match &incoming.target.endpoint {
            Endpoint::ListCurrencies => timing.around(|| self.list_currencies(&incoming)).await,
            Endpoint::CreateCustomer => timing.around(|| self.create_customer(&incoming)).await,
            Endpoint::GetCustomer { customer_id } => {
                timing.around(|| self.get_customer(&incoming, customer_id)).await
            }
            Endpoint::Balances { customer_id } => {
                timing.around(|| self.list_balances(&incoming, customer_id)).await
            }
            // A transaction sleeps while holding its Idempotency-Key, so it applies the
            // timing itself.
            Endpoint::Transaction { customer_id } => {
                self.create_transaction(&incoming, customer_id, record, timing).await
            }
        }
    }

    /// 401 for a missing or wrong key, then 403 for another project's id (§1, §8, §13).
    fn authorize(&self, incoming: &Incoming) -> Result<(), ApiError> {
        let state = self.lock();
        if bearer_token(&incoming.headers) != Some(state.api_key.as_str()) {
            return Err(ApiError::invalid_api_key());
        }
        if incoming.target.project_id != state.project_id {
            return Err(ApiError::not_authorized());
        }
        Ok(())
    }

    /// `GET /projects/{pid}/virtual_currencies` (§3), sorted by code, paged by code.
    fn list_currencies(&self, incoming: &Incoming) -> Result<Response, ApiError> {
        let query = incoming.query()?;
        let state = self.lock();
        let page = Page::from_query(&query, state.page_limit_cap)?;
        let items = state
            .currencies
            .values()
            .map(|stored| VirtualCurrency::new(&state.project_id, &stored.currency, stored.created_at))
            .collect();
        let url = format!(
            "{}{API_PREFIX}/projects/{}/virtual_currencies",
            incoming.origin(),
            encode(&state.project_id)
        );
        Ok(json(StatusCode::OK, &page.cut(items, VirtualCurrency::code, url)))
    }

    /// `GET /projects/{pid}/customers/{cid}` (§7).
    fn get_customer(&self, incoming: &Incoming, customer_id: &str) -> Result<Response, ApiError> {
        let state = self.lock();
        let customer = state.customers.get(customer_id).ok_or_else(ApiError::not_found)?;
        let entitlements_url = format!(
            "{}/active_entitlements",
            customer_url(&incoming.origin(), &state.project_id, customer_id)
        );
        let body = wire::Customer::new(&state.project_id, customer_id, customer.first_seen_at)
            .with_active_entitlements(entitlements_url);
        Ok(json(StatusCode::OK, &body))
    }

    /// `POST /projects/{pid}/customers` (§7): 201, or 409 if the id exists.
    fn create_customer(&self, incoming: &Incoming) -> Result<Response, ApiError> {
        require_json(&incoming.headers)?;
        let id = new_customer_id(&incoming.body)?;
        let mut state = self.lock();
        if state.customers.contains_key(&id) {
            // §7 [I]/[T]: 409 `resource_already_exists`.
            return Err(ApiError::already_exists(format!("Customer '{id}' already exists")));
        }
        let first_seen_at = state.customer_entry(&id).first_seen_at;
        let body = wire::Customer::new(&state.project_id, &id, first_seen_at);
        Ok(json(StatusCode::CREATED, &body))
    }

    /// `GET /projects/{pid}/customers/{cid}/virtual_currencies` (§4), paged by currency code.
    fn list_balances(&self, incoming: &Incoming, customer_id: &str) -> Result<Response, ApiError> {
        let query = incoming.query()?;
        let include_empty = include_empty_balances(&query)?;
        let state = self.lock();
        let page = Page::from_query(&query, state.page_limit_cap)?;
        // §4 [I]: an unknown customer is 404 `resource_missing` with S1's generic body.
        let customer = state.customers.get(customer_id).ok_or_else(ApiError::not_found)?;
        let items = balance_items(&state.currencies, &customer.balances, include_empty);
        let url = balances_url(&incoming.origin(), &state.project_id, customer_id);
        let list = page.cut(items, VirtualCurrencyBalance::currency_code, url);
        Ok(json(StatusCode::OK, &list))
    }

    /// `POST /projects/{pid}/customers/{cid}/virtual_currencies/transactions` (§5, §10).
    async fn create_transaction(
        &self,
        incoming: &Incoming,
        customer_id: &str,
        record: Option<usize>,
        timing: Timing,
    ) -> Result<Response, ApiError> {
        require_json(&incoming.headers)?;
        let body = TransactionBody::parse(&incoming.body)?;
        let include_empty = include_empty_balances(&incoming.query()?)?;
        let request = Fingerprint { customer_id: customer_id.to_owned(), body };
        let key = idempotency_key(&incoming.headers);
        if let Some(key) = &key {
            let claim = self.lock().claim_idempotency_key(key, &request);
            match claim {
                Claim::Fresh => {}
                Claim::Replay(stored) => return Ok(stored.into_response()),
                Claim::Conflict => return Err(ApiError::idempotency_conflict()),
                Claim::Locked => return Err(ApiError::locked()),
            }
        }
        pause(&timing.before).await;
        let url = balances_url(&incoming.origin(), &incoming.target.project_id, customer_id);
        let outcome = StoredResponse::new(self.apply_transaction(&request, include_empty, record, url));
        pause(&timing.after).await;
        if let Some(key) = key {
            self.lock().complete_idempotency_key(key, request, outcome.clone());
        }
        Ok(outcome.into_response())
    }

    /// Applies the adjustments atomically and lists the customer's balances afterwards.
    fn apply_transaction(
        &self,
        request: &Fingerprint,
        include_empty: bool,
        record: Option<usize>,
        url: String,
    ) -> Result<List<VirtualCurrencyBalance>, ApiError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        // §5 table [I]: transactions do not create customers.
        let customer = state.customers.get_mut(&request.customer_id).ok_or_else(ApiError::not_found)?;
        let updated = adjusted_balances(&state.currencies, &customer.balances, &request.body.adjustments)?;
        customer.balances.extend(updated);
        if let Some(index) = record {
            state.transactions[index].applied = true;
        }
        // §5 [I]: the answer lists every balance of the customer, as GET balances would
        // (honouring include_empty_balances), not only the adjusted currencies. With a page
        // cap set, it is the first page of that list, `next_page` pointing at GET balances.
        let items = balance_items(&state.currencies, &customer.balances, include_empty);
        match state.page_limit_cap {
            Some(limit) => Ok(Page { limit, starting_after: None }.cut(
                items,
                VirtualCurrencyBalance::currency_code,
                url,
            )),
            None => Ok(List::new(items, None, url)),
        }
    }
}

/// `limit` / `starting_after` paging (§2).
struct Page {
    limit: usize,
    starting_after: Option<String>,
}

impl Page {
    fn from_query(query: &HashMap<String, String>, cap: Option<usize>) -> Result<Self, ApiError> {
        let limit =
            match query.get("limit") {
                None => DEFAULT_PAGE_LIMIT,
                Some(raw) => raw.parse().ok().filter(|limit| *limit > 0).ok_or_else(|| {
                    ApiError::parameter("limit must be a positive integer").with_param("limit")
                })?,
            };
        Ok(Self {
            limit: cap.map_or(limit, |cap| limit.min(cap)),
            starting_after: query.get("starting_after").cloned(),
        })
    }

    /// Cuts this page out of `items` (sorted by `key`). `next_page` is absolute, carries the
    /// cursor and `limit` like real responses (§2 [O]), and is null on the last page.
    fn cut<T>(&self, items: Vec<T>, key: impl Fn(&T) -> &str, url: String) -> List<T> {
        let after_cursor = |item: &T| self.starting_after.as_deref().is_none_or(|cursor| key(item) > cursor);
        let mut rest = items.into_iter().filter(after_cursor).peekable();
        let page: Vec<T> = rest.by_ref().take(self.limit).collect();
        let next_page = match (rest.peek(), page.last()) {
            (Some(_), Some(last)) => {
                Some(format!("{url}?starting_after={}&limit={}", encode(key(last)), self.limit))
            }
            _ => None,
        };
        List::new(page, next_page, url)
    }
}

/// The customer's balances in currency-code order. Zero balances only with
/// `include_empty_balances=true`, which lists every project currency (§4 [I]).
fn balance_items(
    currencies: &BTreeMap<String, StoredCurrency>,
    balances: &BTreeMap<String, i64>,
    include_empty: bool,
) -> Vec<VirtualCurrencyBalance> {
    currencies
        .values()
        .filter_map(|stored| {
            let balance = balances.get(&stored.currency.code).copied().unwrap_or(0);
            (include_empty || balance != 0).then(|| VirtualCurrencyBalance::new(&stored.currency, balance))
        })
        .collect()
}

/// §4: `include_empty_balances` is a boolean; absent means false ([I]).
fn include_empty_balances(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("include_empty_balances").map(String::as_str) {
        None => Ok(false),
        Some(flag) if flag.eq_ignore_ascii_case("true") => Ok(true),
        Some(flag) if flag.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(ApiError::parameter("include_empty_balances must be true or false")
            .with_param("include_empty_balances")),
    }
}

/// §7: `id` is required, 1–1500 characters of `[0-9a-zA-Z_-]`. Other fields (`attributes`)
/// are accepted and ignored.
fn new_customer_id(body: &[u8]) -> Result<String, ApiError> {
    let body: Value =
        serde_json::from_slice(body).map_err(|_| ApiError::parameter("Request body is not valid JSON"))?;
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::parameter("id is required").with_param("id"))?;
    let valid = (1..=1500).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(ApiError::parameter("id must be 1-1500 characters of [0-9a-zA-Z_-]").with_param("id"));
    }
    Ok(id.to_owned())
}

/// §1: v2 requires the `Bearer` scheme; a bare key (accepted by v1) is refused.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// §1, §8: POST bodies need `Content-Type: application/json` (a charset parameter is fine).
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::invalid_request("Content-Type not application/json"))
    }
}

/// The optional `Idempotency-Key` header (§5). Kept even if it is not valid UTF-8, so a
/// strange key still deduplicates instead of silently being ignored.
fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers.get("idempotency-key").map(|key| String::from_utf8_lossy(key.as_bytes()).into_owned())
}

fn customer_url(origin: &str, project_id: &str, customer_id: &str) -> String {
    format!("{origin}{API_PREFIX}/projects/{}/customers/{}", encode(project_id), encode(customer_id))
}

fn balances_url(origin: &str, project_id: &str, customer_id: &str) -> String {
    format!("{}/virtual_currencies", customer_url(origin, project_id, customer_id))
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    (status, Json(body)).into_response()
}

/// `Fault::InvalidJson`: a 200 that claims JSON but is not.
fn invalid_json() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "not json{").into_response()
}
