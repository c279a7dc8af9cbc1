//! RevenueCat REST API v2, virtual currencies.
//!
//! Shapes follow RevenueCat's published v2 OpenAPI spec (`openapi-spec/api-v2.yaml`
//! in RevenueCat/docs) and the virtual-currency guide; see
//! `../shared/revenuecat-v2.md` for the section numbers cited below.

use std::time::Duration;

use async_trait::async_trait;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::adapters::gateway::describe;
use crate::budget::{Budget, MIN_REVENUECAT_CALL};
use crate::metrics;
use crate::ports::{Balance, Currency, ProductGrant, RcCredentials, RcError, RevenueCat, Transaction};

/// Everything but RFC 3986 unreserved characters is encoded, so a customer id
/// (which may contain `$`, `:` …) is always exactly one path segment (§1).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
/// A project has at most 100 currencies (§3); ask for them in one page.
const PAGE_LIMIT: u32 = 100;
/// Guards against a cursor that never ends.
const MAX_PAGES: usize = 50;
/// The longest RevenueCat backoff we wait out before answering ourselves.
const MAX_BACKOFF: Duration = Duration::from_secs(3);

pub struct RevenueCatHttp {
    client: reqwest::Client,
    base_url: String,
    /// One attempt's longest wait (`REVENUECAT_TIMEOUT_MS`), cut shorter when
    /// the invocation's budget has less left.
    timeout: Duration,
}

impl RevenueCatHttp {
    pub fn new(client: reqwest::Client, base_url: &str, timeout: Duration) -> Self {
        Self { client, base_url: base_url.trim_end_matches('/').to_owned(), timeout }
    }

    fn url(&self, creds: &RcCredentials, customer: Option<&str>, tail: &str) -> Result<Url, Failure> {
        let mut url = format!("{}/projects/{}", self.base_url, encode(&creds.project_id));
        if let Some(customer) = customer {
            url.push_str("/customers/");
            url.push_str(&encode(customer));
        }
        url.push_str(tail);
        Url::parse(&url).map_err(|_| Failure::Transport { kind: "invalid_url", maybe_sent: false })
    }

    /// Sends one request, waiting out one 429/423 backoff (§9) before giving
    /// up, if the wait and another attempt fit in `budget`.
    async fn send(&self, creds: &RcCredentials, call: RcCall<'_>, budget: &Budget) -> Result<Value, Failure> {
        let RcCall { operation, method, url, body, idempotency_key } = call;
        let mut waited = false;
        loop {
            let timeout = budget.share(self.timeout);
            if timeout.is_zero() {
                return Err(Failure::Transport { kind: "timeout", maybe_sent: waited });
            }
            let started = std::time::Instant::now();
            let observe = |error: Option<&str>| metrics::revenuecat_call(operation, started.elapsed(), error);
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .timeout(timeout)
                .bearer_auth(&creds.api_key)
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            let response = request.send().await.map_err(|e| {
                observe(Some(describe(&e)));
                // A refused connection never carried the request.
                Failure::Transport { kind: describe(&e), maybe_sent: waited || !e.is_connect() }
            })?;
            let status = response.status();
            let retry_after = retry_after_header(&response);
            let text = response.text().await.map_err(|e| {
                observe(Some(describe(&e)));
                Failure::Transport { kind: describe(&e), maybe_sent: true }
            })?;
            if status.is_success() {
                let answer = serde_json::from_str(&text).map_err(|_| Failure::InvalidResponse);
                observe(answer.as_ref().err().map(|_| "invalid_response"));
                return answer;
            }
            // A refusal we cannot read is not a definite refusal (spec §6).
            let error = serde_json::from_str::<ErrorBody>(&text).map_err(|_| {
                observe(Some("invalid_response"));
                Failure::InvalidResponse
            })?;
            observe(Some(&error.kind));
            let retryable_now = matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::LOCKED);
            let backoff =
                retry_after.or(error.backoff_ms.map(Duration::from_millis)).unwrap_or(Duration::from_secs(1));
            let fits = backoff <= MAX_BACKOFF && budget.allows(backoff + MIN_REVENUECAT_CALL);
            if retryable_now && !waited && fits {
                waited = true;
                tracing::warn!(
                    status = status.as_u16(),
                    backoff_ms = backoff.as_millis() as u64,
                    "RevenueCat asked us to back off"
                );
                tokio::time::sleep(backoff).await;
                continue;
            }
            return Err(Failure::Api { status, error });
        }
    }

    /// Follows `next_page` cursors (§2) from `url`: absolute or relative,
    /// only the `starting_after` value is taken so we never leave the
    /// configured host. A cursor that repeats or never ends is an invalid
    /// response, never a silently cut list.
    async fn get_all_pages(
        &self,
        creds: &RcCredentials,
        mut url: Url,
        budget: &Budget,
        operation: &'static str,
    ) -> Result<Vec<Value>, Failure> {
        url.query_pairs_mut().append_pair("limit", &PAGE_LIMIT.to_string());
        let mut items = Vec::new();
        let mut cursors_seen = Vec::new();
        for _ in 0..MAX_PAGES {
            let page: Page =
                serde_json::from_value(self.send(creds, RcCall::get(operation, url.clone()), budget).await?)
                    .map_err(|_| Failure::InvalidResponse)?;
            items.extend(page.items);
            let Some(cursor) = page.next_page.as_deref().and_then(starting_after) else {
                return Ok(items);
            };
            if cursors_seen.contains(&cursor) {
                return Err(Failure::InvalidResponse);
            }
            url = with_cursor(&url, &cursor);
            cursors_seen.push(cursor);
        }
        Err(Failure::InvalidResponse)
    }
}

/// One request to RevenueCat; `operation` names it in the metrics.
struct RcCall<'a> {
    operation: &'static str,
    method: Method,
    url: Url,
    body: Option<&'a Value>,
    idempotency_key: Option<&'a str>,
}

impl RcCall<'_> {
    fn get(operation: &'static str, url: Url) -> Self {
        Self { operation, method: Method::GET, url, body: None, idempotency_key: None }
    }
}

/// `url` asking for the page after `cursor`.
fn with_cursor(url: &Url, cursor: &str) -> Url {
    let kept: Vec<(String, String)> =
        url.query_pairs().filter(|(k, _)| k != "starting_after").map(|(k, v)| (k.into(), v.into())).collect();
    let mut next = url.clone();
    next.query_pairs_mut().clear().extend_pairs(kept).append_pair("starting_after", cursor);
    next
}

#[async_trait]
impl RevenueCat for RevenueCatHttp {
    /// An unauthenticated HEAD of the API root: no quota, no body, and a
    /// warm connection in reqwest's pool.
    async fn warm_up(&self) {
        let _ = self.client.head(&self.base_url).send().await;
    }

    async fn list_currencies(
        &self,
        creds: &RcCredentials,
        budget: &Budget,
    ) -> Result<Vec<Currency>, RcError> {
        let url = self.url(creds, None, "/virtual_currencies").map_err(Failure::into_generic)?;
        let items =
            self.get_all_pages(creds, url, budget, "list_currencies").await.map_err(Failure::into_generic)?;
        items
            .into_iter()
            .map(|item| serde_json::from_value::<RcCurrency>(item).map(RcCurrency::flatten))
            .collect::<Result<_, _>>()
            .map_err(|_| Failure::InvalidResponse.into_generic())
    }

    async fn balances(
        &self,
        creds: &RcCredentials,
        customer_id: &str,
        include_empty: bool,
        budget: &Budget,
    ) -> Result<Vec<Balance>, RcError> {
        let mut url =
            self.url(creds, Some(customer_id), "/virtual_currencies").map_err(Failure::into_generic)?;
        url.query_pairs_mut()
            .append_pair("include_empty_balances", if include_empty { "true" } else { "false" });
        let items =
            self.get_all_pages(creds, url, budget, "balances").await.map_err(Failure::into_customer)?;
        parse_balances(items).map_err(Failure::into_generic)
    }

    async fn create_transaction(
        &self,
        creds: &RcCredentials,
        tx: &Transaction,
        budget: &Budget,
    ) -> Result<i64, RcError> {
        let mut balances_url =
            self.url(creds, Some(&tx.customer_id), "/virtual_currencies").map_err(Failure::into_generic)?;
        // Ask for zero balances too, so a deduction to 0 still reports the currency (§5).
        balances_url.query_pairs_mut().append_pair("include_empty_balances", "true");
        let mut url = self
            .url(creds, Some(&tx.customer_id), "/virtual_currencies/transactions")
            .map_err(Failure::into_generic)?;
        url.query_pairs_mut().append_pair("include_empty_balances", "true");
        let body = json!({ "adjustments": { &tx.currency: tx.amount }, "reference": tx.reference });
        let answer = self
            .send(
                creds,
                RcCall {
                    operation: "transaction",
                    method: Method::POST,
                    url,
                    body: Some(&body),
                    idempotency_key: Some(&tx.idempotency_key),
                },
                budget,
            )
            .await
            .map_err(|failure| failure.into_transaction(tx.amount))?;
        // From here on the transaction is applied: a failure reading the
        // balance leaves the outcome unknown to us, never "rejected".
        let unknown = |failure: Failure| match failure.into_generic() {
            RcError::Rejected { kind } | RcError::OutcomeUnknown { kind } => RcError::OutcomeUnknown { kind },
            _ => RcError::OutcomeUnknown { kind: "invalid_response".into() },
        };
        let page: Page = serde_json::from_value(answer).map_err(|_| unknown(Failure::InvalidResponse))?;
        let first = parse_balances(page.items).map_err(unknown)?;
        if let Some(balance) = first.iter().find(|b| b.currency_code == tx.currency) {
            return Ok(balance.balance);
        }
        // The answer lists every balance of the customer, paged like GET
        // balances: the adjusted currency may be on a later page.
        let Some(cursor) = page.next_page.as_deref().and_then(starting_after) else {
            // A currency deducted to zero may be missing from the list.
            return Ok(0);
        };
        let rest = self
            .get_all_pages(creds, with_cursor(&balances_url, &cursor), budget, "balances")
            .await
            .map_err(unknown)?;
        let rest = parse_balances(rest).map_err(unknown)?;
        Ok(rest.iter().find(|b| b.currency_code == tx.currency).map_or(0, |b| b.balance))
    }
}

fn encode(segment: &str) -> String {
    utf8_percent_encode(segment, PATH_SEGMENT).to_string()
}

fn retry_after_header(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn starting_after(next_page: &str) -> Option<String> {
    let base = Url::parse("http://relative.invalid/").expect("static URL");
    let url = base.join(next_page).ok()?;
    let cursor = url.query_pairs().find(|(k, _)| k == "starting_after")?.1.into_owned();
    (!cursor.is_empty()).then_some(cursor)
}

fn parse_balances(items: Vec<Value>) -> Result<Vec<Balance>, Failure> {
    items
        .into_iter()
        .map(|item| {
            serde_json::from_value::<RcBalance>(item).map(|b| Balance {
                currency_code: b.currency_code,
                name: b.name,
                balance: b.balance,
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|_| Failure::InvalidResponse)
}

/// The list envelope (§2): `{"object":"list","items":[…],"next_page":…,"url":…}`.
#[derive(Deserialize)]
struct Page {
    items: Vec<Value>,
    #[serde(default)]
    next_page: Option<String>,
}

/// `VirtualCurrency` (§3); unknown fields such as `state` are ignored on purpose.
#[derive(Deserialize)]
struct RcCurrency {
    code: String,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    product_grants: Option<Vec<RcProductGrant>>,
}

/// `VirtualCurrencyProductGrant` (§3): one amount for a list of products.
#[derive(Deserialize)]
struct RcProductGrant {
    product_ids: Vec<String>,
    amount: i64,
}

impl RcCurrency {
    /// Our published shape has one `{product_id, amount}` per product.
    fn flatten(self) -> Currency {
        let product_grants = self
            .product_grants
            .unwrap_or_default()
            .into_iter()
            .flat_map(|g| {
                g.product_ids.into_iter().map(move |product_id| ProductGrant { product_id, amount: g.amount })
            })
            .collect();
        Currency { code: self.code, name: self.name, description: self.description, product_grants }
    }
}

/// `VirtualCurrencyBalance` (§4); `name` exists since 2025-09.
#[derive(Deserialize)]
struct RcBalance {
    currency_code: String,
    balance: i64,
    #[serde(default)]
    name: Option<String>,
}

/// The error object (§8).
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    backoff_ms: Option<u64>,
}

enum Failure {
    Api { status: StatusCode, error: ErrorBody },
    Transport { kind: &'static str, maybe_sent: bool },
    InvalidResponse,
}

impl Failure {
    fn into_generic(self) -> RcError {
        match self {
            Failure::Api { status, error } if status.is_server_error() => {
                RcError::OutcomeUnknown { kind: error.kind }
            }
            Failure::Api { error, .. } => RcError::Rejected { kind: error.kind },
            Failure::Transport { kind, maybe_sent: true } => RcError::OutcomeUnknown { kind: kind.into() },
            Failure::Transport { kind, maybe_sent: false } => RcError::Rejected { kind: kind.into() },
            Failure::InvalidResponse => RcError::OutcomeUnknown { kind: "invalid_response".into() },
        }
    }

    /// On a customer path a 404 means the customer does not exist (§4).
    fn into_customer(self) -> RcError {
        match self {
            Failure::Api { status: StatusCode::NOT_FOUND, .. } => RcError::CustomerNotFound,
            other => other.into_generic(),
        }
    }

    /// Transactions (§5): 404 on `adjustments` is an unknown currency, else an
    /// unknown customer; 422 on `adjustments` for a deduction is the
    /// documented insufficient balance. 409 and 423 are not definite (spec §6).
    fn into_transaction(self, amount: i64) -> RcError {
        match self {
            Failure::Api { status: StatusCode::NOT_FOUND, error }
                if error.param.as_deref() == Some("adjustments") =>
            {
                RcError::CurrencyNotFound
            }
            Failure::Api { status: StatusCode::UNPROCESSABLE_ENTITY, error }
                if error.param.as_deref() == Some("adjustments") && amount < 0 =>
            {
                RcError::InsufficientBalance
            }
            // Another request with this key may be applying it right now
            // (423), or RevenueCat holds a different request under this key
            // (409 idempotency_error): neither says this one was not applied.
            Failure::Api { status: StatusCode::LOCKED, error }
            | Failure::Api { status: StatusCode::CONFLICT, error } => {
                RcError::OutcomeUnknown { kind: error.kind }
            }
            other => other.into_customer(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_is_read_from_absolute_and_relative_next_pages() {
        assert_eq!(
            starting_after(
                "https://api.revenuecat.com/v2/projects/p/virtual_currencies?starting_after=GLD&limit=3"
            ),
            Some("GLD".into())
        );
        assert_eq!(
            starting_after("/v2/projects/p/virtual_currencies?starting_after=%24RC"),
            Some("$RC".into())
        );
        assert_eq!(starting_after("/v2/projects/p/virtual_currencies"), None);
    }

    #[test]
    fn customer_ids_stay_one_segment() {
        assert_eq!(encode("$RCAnonymousID:21d7"), "%24RCAnonymousID%3A21d7");
        assert_eq!(encode("a/b?c#d"), "a%2Fb%3Fc%23d");
    }

    #[test]
    fn grants_are_flattened_per_product() {
        let raw = json!({"object":"virtual_currency","project_id":"p","code":"CRD","name":"Credits","created_at":1,
            "description":null,"state":"active",
            "product_grants":[{"object":"virtual_currency.product_grant","product_ids":["a","b"],"amount":5,
            "trial_amount":0,"expire_at_cycle_end":false}]});
        let currency = serde_json::from_value::<RcCurrency>(raw).unwrap().flatten();
        assert_eq!(currency.product_grants.len(), 2);
        assert_eq!(currency.product_grants[1], ProductGrant { product_id: "b".into(), amount: 5 });
    }
}
