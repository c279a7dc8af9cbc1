//! Drives the RevenueCat sandbox over real HTTP with reqwest.

use std::time::{Duration, Instant};

use credits_sandbox::{Currency, Fault, Gate, RevenueCatSandbox, Route, SandboxServer};
use reqwest::header::CONTENT_TYPE;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};

const PROJECT: &str = "proj1ab2c3d4";
const KEY: &str = "sk_sandbox_demo";
const CUSTOMER: &str = "user_2abcXYZ";

/// A started sandbox plus a client that knows its base URL and key.
struct Api {
    sandbox: RevenueCatSandbox,
    server: SandboxServer,
    client: reqwest::Client,
}

impl Api {
    async fn demo() -> Self {
        Self::start(RevenueCatSandbox::demo()).await
    }

    async fn start(sandbox: RevenueCatSandbox) -> Self {
        let server = sandbox.start().await.expect("sandbox starts");
        Self { sandbox, server, client: reqwest::Client::new() }
    }

    /// `http://127.0.0.1:PORT`, the origin absolute URLs in responses start with.
    fn origin(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// `{base}/projects/{PROJECT}{path}`.
    fn url(&self, path: &str) -> String {
        format!("{}/projects/{PROJECT}{path}", self.server.base_url())
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(KEY)
    }

    fn post(&self, path: &str, body: &Value) -> RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(KEY).json(body)
    }

    fn transaction(&self, body: &Value, key: Option<&str>) -> RequestBuilder {
        let request = self.post(&format!("/customers/{CUSTOMER}/virtual_currencies/transactions"), body);
        match key {
            Some(key) => request.header("Idempotency-Key", key),
            None => request,
        }
    }
}

async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request succeeds");
    let status = response.status();
    let body = response.json().await.expect("JSON body");
    (status, body)
}

/// Polls `condition` until it holds; panics after 10 s.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn error_body(kind: &str, message: &str) -> Value {
    json!({
        "object": "error",
        "type": kind,
        "message": message,
        "retryable": false,
        "doc_url": format!("https://errors.rev.cat/{}", kind.replace('_', "-")),
    })
}

fn codes(list: &Value, field: &str) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item[field].as_str().expect("code").to_owned())
        .collect()
}

fn add_currencies(sandbox: &RevenueCatSandbox, codes: &[&str]) {
    for code in codes {
        sandbox.add_currency(Currency::new(code, &format!("{code} coins")));
    }
}

// ---------- project currencies (§3) ----------

#[tokio::test]
async fn lists_the_demo_currency_in_the_spec_shape() {
    let api = Api::demo().await;
    let response = api.get("/virtual_currencies").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert!(headers.contains_key("revenuecat-rate-limit-current-usage"));
    assert_eq!(headers["revenuecat-rate-limit-current-limit"], "60");
    assert!(headers.contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    let created_at = body["items"][0]["created_at"].as_u64().expect("ms timestamp");
    assert_eq!(
        body,
        json!({
            "object": "list",
            "items": [{
                "object": "virtual_currency",
                "project_id": PROJECT,
                "code": "CRD",
                "name": "Credits",
                "created_at": created_at,
                "description": "ManticScore credits",
                "product_grants": [{
                    "object": "virtual_currency.product_grant",
                    "product_ids": ["com.bairisland.manticscore.pro.monthly"],
                    "amount": 500,
                    "trial_amount": 0,
                    "expire_at_cycle_end": false,
                }],
            }],
            "next_page": null,
            "url": format!("{}/v2/projects/{PROJECT}/virtual_currencies", api.origin()),
        })
    );
}

#[tokio::test]
async fn currency_without_description_sends_null() {
    let api = Api::start(RevenueCatSandbox::new(PROJECT, KEY)).await;
    add_currencies(&api.sandbox, &["GEM"]);
    let (_, body) = send(api.get("/virtual_currencies")).await;
    assert_eq!(body["items"][0]["description"], Value::Null);
    assert_eq!(body["items"][0]["product_grants"], json!([]));
}

#[tokio::test]
async fn pages_currencies_by_code() {
    let api = Api::demo().await;
    add_currencies(&api.sandbox, &["ZZZ", "GLD", "AAA", "SLV"]);

    let (status, first) = send(api.get("/virtual_currencies?limit=2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(codes(&first, "code"), ["AAA", "CRD"]);
    let next =
        format!("{}/v2/projects/{PROJECT}/virtual_currencies?starting_after=CRD&limit=2", api.origin());
    assert_eq!(first["next_page"], json!(next));

    let (_, second) = send(api.client.get(&next).bearer_auth(KEY)).await;
    assert_eq!(codes(&second, "code"), ["GLD", "SLV"]);

    let (_, last) = send(api.get("/virtual_currencies?limit=2&starting_after=SLV")).await;
    assert_eq!(codes(&last, "code"), ["ZZZ"]);
    assert_eq!(last["next_page"], Value::Null);
}

#[tokio::test]
async fn default_page_holds_twenty() {
    let api = Api::start(RevenueCatSandbox::new(PROJECT, KEY)).await;
    let many: Vec<String> = (0..25).map(|i| format!("C{i:02}")).collect();
    add_currencies(&api.sandbox, &many.iter().map(String::as_str).collect::<Vec<_>>());
    let (_, page) = send(api.get("/virtual_currencies")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    assert!(page["next_page"].as_str().unwrap().ends_with("?starting_after=C19&limit=20"));
}

#[tokio::test]
async fn page_limit_cap_forces_pagination() {
    let api = Api::demo().await;
    add_currencies(&api.sandbox, &["AAA", "GLD"]);
    api.sandbox.set_page_limit_cap(1);
    let (_, page) = send(api.get("/virtual_currencies?limit=100")).await;
    assert_eq!(codes(&page, "code"), ["AAA"]);
    assert!(page["next_page"].as_str().unwrap().ends_with("?starting_after=AAA&limit=1"));
}

#[tokio::test]
async fn rejects_a_bad_limit() {
    let api = Api::demo().await;
    for limit in ["0", "-1", "ten"] {
        let (status, body) = send(api.get(&format!("/virtual_currencies?limit={limit}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={limit}");
        assert_eq!(body["type"], "parameter_error");
        assert_eq!(body["param"], "limit");
    }
}

// ---------- customers (§7) ----------

#[tokio::test]
async fn gets_a_customer_in_the_spec_shape() {
    let api = Api::demo().await;
    let (status, body) = send(api.get(&format!("/customers/{CUSTOMER}"))).await;
    assert_eq!(status, StatusCode::OK);
    let first_seen_at = body["first_seen_at"].as_u64().expect("ms timestamp");
    let customer_url = format!("{}/v2/projects/{PROJECT}/customers/{CUSTOMER}", api.origin());
    assert_eq!(
        body,
        json!({
            "object": "customer",
            "id": CUSTOMER,
            "project_id": PROJECT,
            "first_seen_at": first_seen_at,
            "last_seen_at": first_seen_at,
            "last_seen_app_version": null,
            "last_seen_country": null,
            "last_seen_platform": null,
            "last_seen_platform_version": null,
            "experiment": null,
            "active_entitlements": {
                "object": "list",
                "items": [],
                "next_page": null,
                "url": format!("{customer_url}/active_entitlements"),
            },
        })
    );
}

#[tokio::test]
async fn unknown_customer_is_resource_missing() {
    let api = Api::demo().await;
    let (status, body) = send(api.get("/customers/nobody")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, error_body("resource_missing", "Resource not found"));
}

#[tokio::test]
async fn percent_decodes_customer_ids() {
    let api = Api::demo().await;
    api.sandbox.set_balance("$RCAnonymousID:a/b", "CRD", 7);
    let path = "/customers/%24RCAnonymousID%3Aa%2Fb";
    let (status, body) = send(api.get(path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], "$RCAnonymousID:a/b");
    let (_, balances) = send(api.get(&format!("{path}/virtual_currencies"))).await;
    assert_eq!(balances["items"][0]["balance"], 7);
    assert!(balances["url"]
        .as_str()
        .unwrap()
        .ends_with("/customers/%24RCAnonymousID%3Aa%2Fb/virtual_currencies"));
}

#[tokio::test]
async fn creates_customers_once() {
    let api = Api::demo().await;
    let (status, body) = send(api.post("/customers", &json!({"id": "user_new"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["object"], "customer");
    assert_eq!(body["id"], "user_new");
    assert!(body.get("active_entitlements").is_none());
    assert_eq!(api.sandbox.balance("user_new", "CRD"), Some(0));

    let (status, body) = send(api.post("/customers", &json!({"id": "user_new"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["type"], "resource_already_exists");

    let (status, body) = send(api.post("/customers", &json!({"id": "bad id!"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["param"], "id");

    let plain_text = api.client.post(api.url("/customers")).bearer_auth(KEY).body(r#"{"id":"user_x"}"#);
    let (status, body) = send(plain_text).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, error_body("invalid_request", "Content-Type not application/json"));
}

// ---------- balances (§4) ----------

#[tokio::test]
async fn omits_empty_balances_unless_asked() {
    let api = Api::demo().await;
    api.sandbox
        .add_currency(Currency { description: Some("Shiny".to_owned()), ..Currency::new("GEM", "Gems") });
    let path = format!("/customers/{CUSTOMER}/virtual_currencies");

    let (status, body) = send(api.get(&path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "object": "list",
            "items": [{
                "object": "virtual_currency_balance",
                "currency_code": "CRD",
                "balance": 120,
                "name": "Credits",
                "description": "ManticScore credits",
            }],
            "next_page": null,
            "url": format!("{}/v2/projects/{PROJECT}/customers/{CUSTOMER}/virtual_currencies", api.origin()),
        })
    );

    let (_, body) = send(api.get(&format!("{path}?include_empty_balances=true"))).await;
    assert_eq!(codes(&body, "currency_code"), ["CRD", "GEM"]);
    assert_eq!(body["items"][1]["balance"], 0);

    let (_, body) = send(api.get(&format!("{path}?include_empty_balances=false"))).await;
    assert_eq!(codes(&body, "currency_code"), ["CRD"]);

    let (status, body) = send(api.get(&format!("{path}?include_empty_balances=maybe"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["param"], "include_empty_balances");
}

#[tokio::test]
async fn balance_without_description_omits_the_field() {
    let api = Api::demo().await;
    add_currencies(&api.sandbox, &["GEM"]);
    api.sandbox.set_balance(CUSTOMER, "GEM", 3);
    let (_, body) = send(api.get(&format!("/customers/{CUSTOMER}/virtual_currencies"))).await;
    assert_eq!(body["items"][1]["currency_code"], "GEM");
    assert!(body["items"][1].get("description").is_none());
}

#[tokio::test]
async fn pages_balances_by_currency_code() {
    let api = Api::demo().await;
    add_currencies(&api.sandbox, &["AAA", "GLD"]);
    for code in ["AAA", "GLD"] {
        api.sandbox.set_balance(CUSTOMER, code, 1);
    }
    let path = format!("/customers/{CUSTOMER}/virtual_currencies");
    let (_, first) = send(api.get(&format!("{path}?limit=2"))).await;
    assert_eq!(codes(&first, "currency_code"), ["AAA", "CRD"]);
    let next = first["next_page"].as_str().unwrap();
    assert!(next.ends_with("/virtual_currencies?starting_after=CRD&limit=2"));
    let (_, second) = send(api.client.get(next).bearer_auth(KEY)).await;
    assert_eq!(codes(&second, "currency_code"), ["GLD"]);
    assert_eq!(second["next_page"], Value::Null);
}

#[tokio::test]
async fn balances_of_an_unknown_customer_are_resource_missing() {
    let api = Api::demo().await;
    let (status, body) = send(api.get("/customers/nobody/virtual_currencies")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, error_body("resource_missing", "Resource not found"));
}

// ---------- transactions (§5) ----------

#[tokio::test]
async fn applies_a_transaction_and_lists_balances() {
    let api = Api::demo().await;
    add_currencies(&api.sandbox, &["GEM"]);
    let body = json!({"adjustments": {"CRD": -20, "GEM": 5}, "reference": "ZD-1"});
    let response = api.transaction(&body, None).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["revenuecat-rate-limit-current-limit"], "480");
    let list: Value = response.json().await.unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["next_page"], Value::Null);
    assert_eq!(codes(&list, "currency_code"), ["CRD", "GEM"]);
    assert_eq!(list["items"][0]["balance"], 100);
    assert_eq!(list["items"][1]["balance"], 5);
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(100));

    let recorded = api.sandbox.transactions();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].customer_id, CUSTOMER);
    assert_eq!(recorded[0].adjustments["CRD"], -20);
    assert_eq!(recorded[0].reference.as_deref(), Some("ZD-1"));
    assert_eq!(recorded[0].idempotency_key, None);
    assert!(recorded[0].applied);
    assert_eq!(recorded[0].status, Some(200));
}

#[tokio::test]
async fn deducting_to_zero_drops_the_balance_unless_include_empty() {
    let api = Api::demo().await;
    let body = json!({"adjustments": {"CRD": -120}});
    let (_, list) = send(api.transaction(&body, None)).await;
    assert_eq!(list["items"], json!([]));

    api.sandbox.set_balance(CUSTOMER, "CRD", 120);
    let request = api.post(
        &format!("/customers/{CUSTOMER}/virtual_currencies/transactions?include_empty_balances=true"),
        &body,
    );
    let (_, list) = send(request).await;
    assert_eq!(list["items"][0]["balance"], 0);
}

#[tokio::test]
async fn insufficient_balance_is_422_and_changes_nothing() {
    let api = Api::demo().await;
    add_currencies(&api.sandbox, &["GEM"]);
    let body = json!({"adjustments": {"CRD": -121, "GEM": 10}});
    let (status, error) = send(api.transaction(&body, None)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // §5: S2's transaction-adjustment-failed.json, verbatim.
    assert_eq!(
        error,
        json!({
            "doc_url": "https://errors.rev.cat/unprocessable-entity-error",
            "message": "Customer's balance is not enough to perform the transaction.",
            "object": "error",
            "param": "adjustments",
            "retryable": false,
            "type": "unprocessable_entity_error",
        })
    );
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(120));
    assert_eq!(api.sandbox.balance(CUSTOMER, "GEM"), Some(0));
    let recorded = api.sandbox.transactions();
    assert!(!recorded[0].applied);
    assert_eq!(recorded[0].status, Some(422));
    assert!(api.sandbox.applied_transactions().is_empty());
}

#[tokio::test]
async fn balance_above_two_billion_is_422() {
    let api = Api::demo().await;
    let body = json!({"adjustments": {"CRD": 2_000_000_000}});
    let (status, error) = send(api.transaction(&body, None)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["type"], "unprocessable_entity_error");
    assert_eq!(error["param"], "adjustments");
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(120));

    let exactly_max = json!({"adjustments": {"CRD": 2_000_000_000 - 120}});
    let (status, _) = send(api.transaction(&exactly_max, None)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_currency_is_resource_missing_on_adjustments() {
    let api = Api::demo().await;
    let body = json!({"adjustments": {"CRD": 1, "XYZ": 1}});
    let (status, error) = send(api.transaction(&body, None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["type"], "resource_missing");
    assert_eq!(error["param"], "adjustments");
    assert_eq!(error["message"], "Virtual currency 'XYZ' not found");
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(120));
}

#[tokio::test]
async fn transaction_for_unknown_customer_is_resource_missing() {
    let api = Api::demo().await;
    let request =
        api.post("/customers/nobody/virtual_currencies/transactions", &json!({"adjustments": {"CRD": 1}}));
    let (status, body) = send(request).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, error_body("resource_missing", "Resource not found"));
    assert_eq!(api.sandbox.balance("nobody", "CRD"), None);
}

#[tokio::test]
async fn rejects_malformed_transaction_bodies() {
    let api = Api::demo().await;
    let cases = [
        (json!({"adjustments": {"CRD": 0}}), Some("adjustments")),
        (json!({"adjustments": {"CRD": 1.5}}), Some("adjustments")),
        (json!({"adjustments": {"CRD": "5"}}), Some("adjustments")),
        (json!({"adjustments": {}}), Some("adjustments")),
        (json!({"reference": "no adjustments"}), Some("adjustments")),
        (json!({"adjustments": {"CRD": 1}, "reason": "x"}), Some("reason")),
        (json!([1, 2]), None),
    ];
    for (body, param) in cases {
        let (status, error) = send(api.transaction(&body, None)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error["type"], "parameter_error", "{body}");
        assert_eq!(error.get("param").and_then(Value::as_str), param, "{body}");
    }
    let not_json = api
        .client
        .post(api.url(&format!("/customers/{CUSTOMER}/virtual_currencies/transactions")))
        .bearer_auth(KEY)
        .header(CONTENT_TYPE, "application/json")
        .body("{");
    let (status, error) = send(not_json).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["type"], "parameter_error");

    let no_content_type = api
        .client
        .post(api.url(&format!("/customers/{CUSTOMER}/virtual_currencies/transactions")))
        .bearer_auth(KEY)
        .body(r#"{"adjustments":{"CRD":1}}"#);
    let (status, error) = send(no_content_type).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["type"], "invalid_request");

    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(120));
    assert_eq!(api.sandbox.transactions().len(), 9);
    assert!(api.sandbox.applied_transactions().is_empty());
}

#[tokio::test]
async fn concurrent_deductions_never_overdraw() {
    let api = Api::demo().await;
    let requests = (0..200).map(|_| {
        let request = api.transaction(&json!({"adjustments": {"CRD": -1}}), None);
        async move { request.send().await.unwrap().status() }
    });
    let statuses = futures_join_all(requests).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY).count();
    assert_eq!((ok, refused), (120, 80));
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(0));
    assert_eq!(api.sandbox.applied_transactions().len(), 120);
    assert_eq!(api.sandbox.request_count(Route::Transaction), 200);
}

/// Runs futures concurrently on the current runtime (no `futures` crate needed).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("task completes"));
    }
    outputs
}

// ---------- idempotency (§10) ----------

#[tokio::test]
async fn replays_the_same_request_without_reapplying() {
    let api = Api::demo().await;
    let key = "2c15a0a5-8cf8-4eb3-95c2-56a343974663";
    let body = json!({"adjustments": {"CRD": -20}, "reference": "r1"});
    let first = api.transaction(&body, Some(key)).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first = first.text().await.unwrap();

    // Same request, different JSON spelling.
    let respelled = api
        .client
        .post(api.url(&format!("/customers/{CUSTOMER}/virtual_currencies/transactions")))
        .bearer_auth(KEY)
        .header(CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", key)
        .body(r#"{ "reference": "r1", "adjustments": { "CRD": -20 } }"#);
    let replay = respelled.send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.text().await.unwrap(), first);

    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(100));
    let recorded = api.sandbox.transactions();
    assert_eq!(recorded.len(), 2);
    assert!(recorded[0].applied && !recorded[1].applied);
    assert_eq!(recorded[1].idempotency_key.as_deref(), Some(key));
    assert_eq!(recorded[1].status, Some(200));
    assert_eq!(api.sandbox.applied_transactions().len(), 1);
}

#[tokio::test]
async fn replays_a_refusal_too() {
    let api = Api::demo().await;
    let body = json!({"adjustments": {"CRD": -500}});
    let (status, _) = send(api.transaction(&body, Some("k-422"))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    api.sandbox.set_balance(CUSTOMER, "CRD", 1000);
    let (status, _) = send(api.transaction(&body, Some("k-422"))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(1000));
}

#[tokio::test]
async fn reusing_a_key_for_another_request_is_409() {
    let api = Api::demo().await;
    let key = "k-1";
    let (status, _) = send(api.transaction(&json!({"adjustments": {"CRD": -1}}), Some(key))).await;
    assert_eq!(status, StatusCode::OK);
    for other in
        [json!({"adjustments": {"CRD": -2}}), json!({"adjustments": {"CRD": -1}, "reference": "different"})]
    {
        let (status, body) = send(api.transaction(&other, Some(key))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            body,
            error_body("idempotency_error", "Idempotency key already used for a different request")
        );
    }
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(119));
}

#[tokio::test]
async fn duplicate_in_flight_is_423_then_replayed() {
    let api = Api::demo().await;
    let gate = Gate::new();
    api.sandbox.inject(Route::Transaction, Fault::HoldUntil(gate.clone()), 1);
    let body = json!({"adjustments": {"CRD": -10}});
    let first = tokio::spawn(api.transaction(&body, Some("k-slow")).send());
    // Held at the gate means it has claimed its key and is still in flight.
    wait_until("the first request holds its key", || gate.waiting() == 1).await;

    let (status, locked) = send(api.transaction(&body, Some("k-slow"))).await;
    assert_eq!(status, StatusCode::LOCKED);
    assert_eq!(
        locked,
        json!({
            "object": "error",
            "type": "resource_locked_error",
            "message": "The resource is currently being modified by a concurrent request",
            "retryable": true,
            "doc_url": "https://errors.rev.cat/resource-locked-error",
            "backoff_ms": 1000,
        })
    );
    // A different body under the same in-flight key is a conflict, not a lock.
    let (status, _) = send(api.transaction(&json!({"adjustments": {"CRD": -11}}), Some("k-slow"))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(120), "nothing applied while held");

    gate.open();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (status, _) = send(api.transaction(&body, Some("k-slow"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(110));
    assert_eq!(api.sandbox.applied_transactions().len(), 1);
}

// ---------- auth (§1, §8) ----------

#[tokio::test]
async fn missing_or_wrong_key_is_401() {
    let api = Api::demo().await;
    let url = api.url("/virtual_currencies");
    let requests = [
        api.client.get(&url),
        api.client.get(&url).bearer_auth("sk_wrong"),
        // v2 requires the Bearer scheme (§1).
        api.client.get(&url).header("Authorization", KEY),
    ];
    for request in requests {
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, error_body("authentication_error", "Invalid API key"));
    }
}

#[tokio::test]
async fn another_project_is_403() {
    let api = Api::demo().await;
    let url = format!("{}/projects/projOTHER/virtual_currencies", api.server.base_url());
    let (status, body) = send(api.client.get(url).bearer_auth(KEY)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, error_body("authorization_error", "You're not authorized to access this resource"));
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods() {
    let api = Api::demo().await;
    let (status, body) = send(api.get("/products")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, error_body("resource_missing", "Resource not found"));

    let (status, body) = send(api.post("/virtual_currencies", &json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "invalid_request");
    assert_eq!(api.sandbox.request_count(Route::Any), 2);
    assert_eq!(api.sandbox.request_count(Route::ListCurrencies), 0);
}

// ---------- faults ----------

#[tokio::test]
async fn status_fault_answers_an_error_object_for_n_calls() {
    let api = Api::demo().await;
    api.sandbox.inject(Route::ListCurrencies, Fault::rate_limited(2500), 2);
    for _ in 0..2 {
        let response = api.get("/virtual_currencies").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "3");
        assert!(response.headers().contains_key("revenuecat-rate-limit-current-usage"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({
                "object": "error",
                "type": "rate_limit_error",
                "message": "Rate limit exceeded",
                "retryable": true,
                "doc_url": "https://errors.rev.cat/rate-limit-error",
                "backoff_ms": 2500,
            })
        );
    }
    let (status, _) = send(api.get("/virtual_currencies")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.sandbox.request_count(Route::ListCurrencies), 3);
}

#[tokio::test]
async fn status_fault_defaults() {
    let api = Api::demo().await;
    let fault = |status, retryable, backoff_ms| Fault::Status {
        status,
        error_type: if status == 429 { "rate_limit_error" } else { "server_error" }.to_owned(),
        retryable,
        backoff_ms,
    };
    api.sandbox.inject(Route::Any, fault(429, true, None), 1);
    api.sandbox.inject(Route::Any, fault(500, false, Some(1000)), 1);
    api.sandbox.inject(Route::Any, fault(503, true, None), 1);

    let response = api.get("/virtual_currencies").send().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, body) = send(api.get("/virtual_currencies")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.get("backoff_ms").is_none(), "only for retryable errors");
    let response = api.get("/virtual_currencies").send().await.unwrap();
    assert!(!response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["retryable"], true);
    assert!(body.get("backoff_ms").is_none());
}

#[tokio::test]
async fn faults_only_hit_their_route_and_run_in_order() {
    let api = Api::demo().await;
    let server_error = |status| Fault::Status {
        status,
        error_type: "server_error".to_owned(),
        retryable: true,
        backoff_ms: Some(1000),
    };
    api.sandbox.inject(Route::Transaction, server_error(500), 1);
    api.sandbox.inject(Route::Any, server_error(503), 1);

    // The Balances call skips the Transaction fault and takes the Any fault.
    let (status, _) = send(api.get(&format!("/customers/{CUSTOMER}/virtual_currencies"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = send(api.transaction(&json!({"adjustments": {"CRD": 1}}), Some("k"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _) = send(api.transaction(&json!({"adjustments": {"CRD": 1}}), Some("k"))).await;
    assert_eq!(status, StatusCode::OK);

    let recorded = api.sandbox.transactions();
    assert_eq!(recorded.len(), 2, "faulted transactions are recorded too");
    assert_eq!(recorded[0].status, Some(500));
    assert_eq!(recorded[0].adjustments["CRD"], 1);
    assert_eq!(recorded[0].idempotency_key.as_deref(), Some("k"));
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(121));
}

#[tokio::test]
async fn delay_fault_answers_normally_after_the_delay() {
    let api = Api::demo().await;
    api.sandbox.inject(Route::Balances, Fault::Delay(Duration::from_millis(300)), 1);
    let started = Instant::now();
    let (status, body) = send(api.get(&format!("/customers/{CUSTOMER}/virtual_currencies"))).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"][0]["balance"], 120);
}

#[tokio::test]
async fn delayed_transaction_is_applied_even_if_the_caller_gave_up() {
    let api = Api::demo().await;
    let gate = Gate::new();
    api.sandbox.inject(Route::Transaction, Fault::HoldUntil(gate.clone()), 1);
    let request =
        api.transaction(&json!({"adjustments": {"CRD": -20}}), None).timeout(Duration::from_millis(100));
    let error = request.send().await.unwrap_err();
    assert!(error.is_timeout());
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(120), "not yet");
    gate.open();
    let answered = || api.sandbox.transactions().first().is_some_and(|t| t.status.is_some());
    wait_until("the held transaction is answered", answered).await;
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(100));
    assert_eq!(api.sandbox.transactions()[0].status, Some(200));
}

#[tokio::test]
async fn delay_fault_on_a_transaction_applies_after_the_delay() {
    let api = Api::demo().await;
    api.sandbox.inject(Route::Transaction, Fault::Delay(Duration::from_millis(300)), 1);
    let started = Instant::now();
    let (status, list) = send(api.transaction(&json!({"adjustments": {"CRD": -20}}), None)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["balance"], 100);
}

#[tokio::test]
async fn apply_then_delay_applies_first_and_answers_after_the_delay() {
    let api = Api::demo().await;
    api.sandbox.inject(Route::Transaction, Fault::ApplyThenDelay(Duration::from_millis(300)), 1);
    let started = Instant::now();
    let (status, list) = send(api.transaction(&json!({"adjustments": {"CRD": -20}}), Some("k-late"))).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["balance"], 100);
    assert_eq!(api.sandbox.applied_transactions().len(), 1);
}

#[tokio::test]
async fn apply_then_hold_applies_before_the_caller_times_out() {
    let api = Api::demo().await;
    let gate = Gate::new();
    api.sandbox.inject(Route::Transaction, Fault::ApplyThenHoldUntil(gate.clone()), 1);
    let body = json!({"adjustments": {"CRD": -20}});
    let error = api
        .transaction(&body, Some("k-timeout"))
        .timeout(Duration::from_millis(150))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout());
    wait_until("the transaction is applied and held", || gate.waiting() == 1).await;
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(100), "already applied");

    // The retry arrives while the first request still holds the key.
    let (status, _) = send(api.transaction(&body, Some("k-timeout"))).await;
    assert_eq!(status, StatusCode::LOCKED);

    gate.open();
    let answered = || api.sandbox.transactions().first().is_some_and(|t| t.status.is_some());
    wait_until("the first request is answered", answered).await;
    let (status, list) = send(api.transaction(&body, Some("k-timeout"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["balance"], 100);
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(100));
    assert_eq!(api.sandbox.applied_transactions().len(), 1);
    assert_eq!(api.sandbox.transactions().len(), 3);
}

#[tokio::test]
async fn arrivals_are_timed_per_route() {
    let api = Api::demo().await;
    let before = Instant::now();
    send(api.get("/virtual_currencies")).await;
    send(api.transaction(&json!({"adjustments": {"CRD": 1}}), None)).await;
    send(api.transaction(&json!({"adjustments": {"CRD": 1}}), None)).await;
    let after = Instant::now();
    let transactions = api.sandbox.arrivals(Route::Transaction);
    assert_eq!(transactions.len(), 2);
    assert!(before <= transactions[0] && transactions[0] <= transactions[1] && transactions[1] <= after);
    assert_eq!(api.sandbox.arrivals(Route::ListCurrencies).len(), 1);
    assert_eq!(api.sandbox.arrivals(Route::Any).len(), 3);
}

#[tokio::test]
async fn invalid_json_fault() {
    let api = Api::demo().await;
    api.sandbox.inject(Route::ListCurrencies, Fault::InvalidJson, 1);
    let response = api.get("/virtual_currencies").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "not json{");
}

#[tokio::test]
async fn hang_fault_never_answers() {
    let api = Api::demo().await;
    api.sandbox.inject(Route::Balances, Fault::Hang, 1);
    let error = api
        .get(&format!("/customers/{CUSTOMER}/virtual_currencies"))
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout());
    assert_eq!(api.sandbox.request_count(Route::Balances), 1);
    let (status, _) = send(api.get(&format!("/customers/{CUSTOMER}/virtual_currencies"))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn close_connection_fault_drops_the_connection() {
    let api = Api::demo().await;
    api.sandbox.inject(Route::Transaction, Fault::CloseConnection, 1);
    let error = api
        .transaction(&json!({"adjustments": {"CRD": -1}}), None)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_err();
    assert!(!error.is_timeout(), "closed, not timed out: {error:?}");
    assert_eq!(api.sandbox.balance(CUSTOMER, "CRD"), Some(120));
    assert_eq!(api.sandbox.transactions()[0].status, None);

    let (status, _) = send(api.transaction(&json!({"adjustments": {"CRD": -1}}), None)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let api = Api::demo().await;
    let url = api.url("/virtual_currencies");
    let addr = api.server.addr();
    drop(api.server);
    // The aborted accept task releases the listener once the runtime runs its cancellation.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "{addr} still accepts connections");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let error = reqwest::Client::new()
        .get(url)
        .bearer_auth(KEY)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect() || error.is_request(), "{error:?}");
}
