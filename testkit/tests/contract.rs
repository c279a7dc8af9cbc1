//! The HTTP contract (spec §3–§5, §9) through the shared router with every
//! real adapter: moto for DynamoDB and Secrets Manager, the RevenueCat
//! sandbox and the gateway stand-in. Each test has its own table and secret.

use std::time::{Duration, Instant};

use credits_sandbox::{Currency, Fault, ProductGrant, Route};
use credits_testkit::stack::{within_one_rate_window, Call, Stack, DEMO_USER};
use serde_json::json;

const ADJUST: &str = "/admin/credits/adjust";
const CURRENCIES: &str = "/admin/credits/currencies";

fn balances(user: &str) -> String {
    format!("/admin/credits/balances/{user}")
}

fn ledger(user: &str) -> String {
    format!("/admin/credits/ledger/{user}")
}

#[tokio::test]
async fn currencies_have_the_published_shape() {
    let stack = Stack::start().await;
    let reply = stack.get(CURRENCIES).send(&stack.router()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({"items": [{"code": "CRD", "name": "Credits", "description": "ManticScore credits",
            "product_grants": [{"product_id": "com.bairisland.manticscore.pro.monthly", "amount": 500}]}]})
    );
    assert_eq!(reply.header("ratelimit-limit"), Some("60"));
}

#[tokio::test]
async fn currencies_follow_every_page_and_flatten_grants() {
    let stack = Stack::start().await;
    for i in 0..24 {
        stack.revenuecat.add_currency(Currency::new(&format!("C{i:02}"), &format!("Currency {i}")));
    }
    stack.revenuecat.add_currency(Currency {
        grants: vec![ProductGrant { product_ids: vec!["p.one".into(), "p.two".into()], amount: 7 }],
        ..Currency::new("GEM", "Gems")
    });
    stack.revenuecat.set_page_limit_cap(10);
    let reply = stack.get(CURRENCIES).send(&stack.router()).await;
    assert_eq!(reply.status, 200);
    let items = reply.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 26, "all pages: {items:?}");
    assert_eq!(stack.revenuecat.request_count(Route::ListCurrencies), 3);
    let gem = items.iter().find(|c| c["code"] == "GEM").unwrap();
    assert_eq!(
        gem["product_grants"],
        json!([{"product_id": "p.one", "amount": 7}, {"product_id": "p.two", "amount": 7}])
    );
}

#[tokio::test]
async fn the_currency_list_is_cached_per_instance() {
    let stack = Stack::start().await;
    let router = stack.router();
    for _ in 0..3 {
        assert_eq!(stack.get(CURRENCIES).send(&router).await.status, 200);
    }
    assert_eq!(stack.revenuecat.request_count(Route::ListCurrencies), 1);
}

#[tokio::test]
async fn balances_omit_zero_unless_include_empty() {
    let stack = Stack::start().await;
    stack.revenuecat.add_currency(Currency::new("GLD", "Gold"));
    let router = stack.router();

    let reply = stack.get(&balances(DEMO_USER)).send(&router).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({"user_id": DEMO_USER, "items": [{"currency_code": "CRD", "name": "Credits", "balance": 120}]})
    );
    assert_eq!(reply.header("ratelimit-limit"), Some("120"));

    for spelling in ["true", "1"] {
        let reply =
            stack.get(&format!("{}?include_empty={spelling}", balances(DEMO_USER))).send(&router).await;
        let codes: Vec<_> =
            reply.json()["items"].as_array().unwrap().iter().map(|i| i["currency_code"].clone()).collect();
        assert_eq!(codes, vec![json!("CRD"), json!("GLD")], "include_empty={spelling}");
    }
    for spelling in ["false", "0"] {
        let reply =
            stack.get(&format!("{}?include_empty={spelling}", balances(DEMO_USER))).send(&router).await;
        assert_eq!(reply.json()["items"].as_array().unwrap().len(), 1, "include_empty={spelling}");
    }
    for bad in ["maybe", "TRUE", "", "true&include_empty=false"] {
        stack
            .get(&format!("{}?include_empty={bad}", balances(DEMO_USER)))
            .send(&router)
            .await
            .assert_error(422, "invalid_include_empty");
    }
}

#[tokio::test]
async fn an_unknown_customer_is_404_rc_customer_not_found() {
    let stack = Stack::start().await;
    stack
        .get(&balances("user_nobody"))
        .send(&stack.router())
        .await
        .assert_error(404, "rc_customer_not_found");
}

#[tokio::test]
async fn user_ids_in_the_path_are_validated_before_revenuecat() {
    let stack = Stack::start().await;
    let router = stack.router();
    let too_long = "u".repeat(201);
    for bad in [too_long.as_str(), "a%2Fb", "tab%09", "%00", "..", "."] {
        stack.get(&balances(bad)).send(&router).await.assert_error(422, "invalid_user_id");
    }
    stack.get("/admin/credits/balances/").send(&router).await.assert_error(422, "invalid_user_id");
    assert_eq!(stack.revenuecat.request_count(Route::Balances), 0);
    // 200 characters is allowed, and percent-encoded characters reach RevenueCat intact.
    stack.revenuecat.set_balance(&"u".repeat(200), "CRD", 5);
    assert_eq!(stack.get(&balances(&"u".repeat(200))).send(&router).await.status, 200);
    stack.revenuecat.set_balance("$RCAnonymousID:abc", "CRD", 9);
    let reply = stack.get(&balances("%24RCAnonymousID%3Aabc")).send(&router).await;
    assert_eq!(reply.json()["items"][0]["balance"], 9);
}

#[tokio::test]
async fn adjust_grants_through_one_transaction_and_notifies_the_app() {
    let stack = Stack::start().await;
    let reply = stack
        .post(ADJUST, json!({"user_id": DEMO_USER, "amount": 100, "reason": "  ZD-1234 goodwill grant  "}))
        .send(&stack.router())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json(),
        json!({"user_id": DEMO_USER, "currency": "CRD", "amount": 100, "balance": 220,
               "idempotency_key": null, "replayed": false, "notified": true})
    );
    assert_eq!(reply.header("ratelimit-limit"), Some("30"));
    assert_eq!(reply.header("ratelimit-remaining"), Some("29"));

    let transactions = stack.revenuecat.applied_transactions();
    assert_eq!(transactions.len(), 1);
    assert_eq!(transactions[0].reference.as_deref(), Some("ZD-1234 goodwill grant"));
    assert_eq!(transactions[0].adjustments.get("CRD"), Some(&100));
    assert!(transactions[0].idempotency_key.is_some(), "every transaction carries an Idempotency-Key");

    let envelopes = stack.gateway.envelopes();
    assert_eq!(envelopes.len(), 1);
    let envelope = &envelopes[0];
    assert_eq!(envelope["type"], "usage.changed");
    assert_eq!(envelope["silent"], true);
    assert_eq!(envelope["user_id"], DEMO_USER);
    assert_eq!(envelope["payload"], json!({"currency": "CRD", "balance": 220, "delta": 100}));
    assert!(envelope["envelope_id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(envelope["occurred_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(!envelope.to_string().contains("goodwill"), "the audit reason never reaches the app");
}

#[tokio::test]
async fn a_deduction_to_zero_reports_balance_zero() {
    let stack = Stack::start().await;
    let reply = stack.adjust(-120, None).send(&stack.router()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["balance"], 0);
    assert_eq!(stack.gateway.envelopes()[0]["payload"]["delta"], -120);
}

#[tokio::test]
async fn deducting_more_than_the_balance_is_409_and_changes_nothing() {
    let stack = Stack::start().await;
    stack.adjust(-121, None).send(&stack.router()).await.assert_error(409, "insufficient_balance");
    assert_eq!(stack.revenuecat.balance(DEMO_USER, "CRD"), Some(120));
    assert!(stack.gateway.envelopes().is_empty());
}

#[tokio::test]
async fn a_currency_the_project_does_not_have_is_422_unknown_currency() {
    let stack = Stack::start().await;
    let body = json!({"user_id": DEMO_USER, "amount": 5, "reason": "ZD-1 wrong code", "currency": "GLD"});
    stack.post(ADJUST, body).send(&stack.router()).await.assert_error(422, "unknown_currency");
}

#[tokio::test]
async fn adjusting_an_unknown_customer_is_404() {
    let stack = Stack::start().await;
    let body = json!({"user_id": "user_nobody", "amount": 5, "reason": "ZD-1 nobody"});
    stack.post(ADJUST, body).send(&stack.router()).await.assert_error(404, "rc_customer_not_found");
}

/// Every row of the validation table (spec §4) and the body checks around it.
#[tokio::test]
async fn adjust_validation_table() {
    let stack = Stack::start().await;
    let router = stack.router();
    let ok = |extra: serde_json::Value| {
        let mut body = json!({"user_id": DEMO_USER, "amount": 5, "reason": "ZD-1 valid"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body.to_string()
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("not json".into(), 400, "invalid_json"),
        ("[1,2]".into(), 400, "invalid_json"),
        ("\"text\"".into(), 400, "invalid_json"),
        ("".into(), 400, "invalid_json"),
        (r#"{"user_id":"u","amount":1,"amount":2,"reason":"abc"}"#.into(), 400, "invalid_json"),
        (ok(json!({"amount": 0})), 400, "amount_must_be_nonzero"),
        (ok(json!({"extra": 1})), 422, "unknown_field"),
        (ok(json!({"user_id": null})), 422, "invalid_user_id"),
        (ok(json!({"user_id": ""})), 422, "invalid_user_id"),
        (ok(json!({"user_id": "a/b"})), 422, "invalid_user_id"),
        (ok(json!({"user_id": "new\nline"})), 422, "invalid_user_id"),
        (ok(json!({"user_id": "u".repeat(201)})), 422, "invalid_user_id"),
        (ok(json!({"user_id": 12})), 422, "invalid_user_id"),
        (ok(json!({"amount": null})), 422, "invalid_amount"),
        (ok(json!({"amount": 1.5})), 422, "invalid_amount"),
        (ok(json!({"amount": "5"})), 422, "invalid_amount"),
        (ok(json!({"amount": 1_000_000_001i64})), 422, "invalid_amount"),
        (ok(json!({"amount": -1_000_000_001i64})), 422, "invalid_amount"),
        (
            r#"{"user_id":"u","amount":123456789012345678901234567890,"reason":"abc"}"#.into(),
            422,
            "invalid_amount",
        ),
        (ok(json!({"reason": null})), 422, "invalid_reason"),
        (ok(json!({"reason": "ab"})), 422, "invalid_reason"),
        (ok(json!({"reason": "   ab   "})), 422, "invalid_reason"),
        (ok(json!({"reason": "x".repeat(501)})), 422, "invalid_reason"),
        (ok(json!({"reason": 42})), 422, "invalid_reason"),
        (ok(json!({"currency": "C-R-D"})), 422, "unknown_currency"),
        (ok(json!({"currency": 7})), 422, "unknown_currency"),
        (ok(json!({"idempotency_key": ""})), 422, "invalid_idempotency_key"),
        (ok(json!({"idempotency_key": "k".repeat(201)})), 422, "invalid_idempotency_key"),
        (ok(json!({"idempotency_key": 5})), 422, "invalid_idempotency_key"),
    ];
    for (body, status, code) in &cases {
        let reply = stack.post(ADJUST, json!(null)).body(body).send(&router).await;
        assert_eq!(reply.status, *status, "{body} -> {}", reply.body);
        reply.assert_error(*status, code);
        assert!(reply.header("ratelimit-limit").is_none(), "invalid requests are not counted: {body}");
    }
    // The boundaries themselves are valid: each is applied, in this order.
    for (extra, balance) in [
        (json!({"amount": 1_000_000_000}), 1_000_000_120i64),
        (json!({"reason": "abc"}), 1_000_000_125),
        (json!({"reason": "é".repeat(500)}), 1_000_000_130),
        (json!({"amount": -1_000_000_000}), 130),
        (json!({"idempotency_key": "k".repeat(200)}), 135),
    ] {
        let reply = stack.post(ADJUST, json!(null)).body(&ok(extra.clone())).send(&router).await;
        assert_eq!(reply.status, 200, "{extra} -> {}", reply.body);
        assert_eq!(reply.json()["balance"], balance, "{extra}");
    }
    assert_eq!(stack.revenuecat.balance(DEMO_USER, "CRD"), Some(135));
    assert_eq!(stack.revenuecat.applied_transactions().len(), 5);
    let mismatched = stack
        .post(ADJUST, json!(null))
        .body(&ok(json!({"idempotency_key": "a"})))
        .header("idempotency-key", "b");
    mismatched.send(&router).await.assert_error(422, "invalid_idempotency_key");
    let form = stack
        .post(ADJUST, json!(null))
        .body(&ok(json!({})))
        .header("content-type", "application/x-www-form-urlencoded");
    form.send(&router).await.assert_error(415, "unsupported_media_type");
    let huge = stack.post(ADJUST, json!(null)).body(&ok(json!({"reason": "x".repeat(20_000)})));
    huge.send(&router).await.assert_error(413, "payload_too_large");
}

#[tokio::test]
async fn auth_order_is_503_then_401_then_403_then_validation() {
    let stack = Stack::start().await;
    let invalid_body = |call: Call| call.body("not json");
    // Configured: 401 without a bearer, 403 with a wrong one — even for an invalid body.
    let router = stack.router();
    invalid_body(stack.adjust(1, None).without_header("authorization"))
        .send(&router)
        .await
        .assert_error(401, "missing_bearer");
    invalid_body(stack.adjust(1, None).header("authorization", "Basic abc"))
        .send(&router)
        .await
        .assert_error(401, "missing_bearer");
    invalid_body(stack.adjust(1, None).header("authorization", "Bearer nope"))
        .send(&router)
        .await
        .assert_error(403, "invalid_admin_secret");
    invalid_body(stack.adjust(1, None)).send(&router).await.assert_error(400, "invalid_json");

    // Unconfigured: 503 comes before everything else.
    stack.put_raw_secret("adm_raw_secret_that_is_not_json").await;
    let router = stack.router();
    stack
        .get(CURRENCIES)
        .without_header("authorization")
        .send(&router)
        .await
        .assert_error(503, "admin_unconfigured");
    stack
        .get(CURRENCIES)
        .header("authorization", "Bearer nope")
        .send(&router)
        .await
        .assert_error(503, "admin_unconfigured");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let stack = Stack::start().await;
    let router = stack.router();
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let call = stack.get(CURRENCIES).header("authorization", &format!("{scheme} {}", stack.admin_token));
        assert_eq!(call.send(&router).await.status, 200, "{scheme}");
    }
}

#[tokio::test]
async fn missing_configuration_is_named_in_the_detail() {
    let stack = Stack::start().await;
    stack
        .put_raw_secret(&json!({"admin_secret": stack.admin_token, "revenuecat_project_id": "p"}).to_string())
        .await;
    let reply = stack.get(CURRENCIES).send(&stack.router()).await;
    reply.assert_detail(503, "admin_unconfigured: revenuecat_api_key is not set");

    let key = format!("sk_incomplete_{}", uuid::Uuid::new_v4().simple());
    stack
        .put_raw_secret(&json!({"admin_secret": stack.admin_token, "revenuecat_api_key": key}).to_string())
        .await;
    let reply = stack.get(CURRENCIES).send(&stack.router()).await;
    reply.assert_detail(503, "admin_unconfigured: revenuecat_project_id is not set");

    let mut stack = stack;
    stack.set_env("ADMIN_SECRET_ID", "credits-admin-does-not-exist");
    stack.get(CURRENCIES).send(&stack.router()).await.assert_detail(503, "admin_unconfigured");
}

#[tokio::test]
async fn an_unreachable_secret_store_is_503_secret_store_unavailable() {
    let mut stack = Stack::start().await;
    // Port 9 (discard) is closed on loopback: connection refused.
    stack.set_env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    stack.get(CURRENCIES).send(&stack.router()).await.assert_error(503, "secret_store_unavailable");
}

#[tokio::test]
async fn a_rotated_token_works_at_once_and_the_old_one_stops() {
    let mut stack = Stack::start().await;
    let old = stack.admin_token.clone();
    let router = stack.router();
    assert_eq!(stack.get(CURRENCIES).send(&router).await.status, 200);
    // The cache is re-read on a mismatch only when it is a few seconds old.
    tokio::time::sleep(credits::secrets::MIN_REFRESH_INTERVAL + Duration::from_millis(100)).await;
    stack.rotate_admin_token("adm_rotated_token").await;
    assert_eq!(stack.get(CURRENCIES).send(&router).await.status, 200, "new token works at once");
    let old_call = stack.get(CURRENCIES).header("authorization", &format!("Bearer {old}"));
    old_call.send(&router).await.assert_error(403, "invalid_admin_secret");
}

/// The old token is accepted while the cached secret is younger than the TTL
/// and refused once it is older. What is asserted depends on when each call
/// ran, measured against when the cache was filled, so a slow machine cannot
/// turn either half into a false failure: a call that ended inside the TTL
/// must succeed, one that began after it must fail, and both must have happened.
#[tokio::test]
async fn an_old_token_keeps_working_only_until_the_ttl() {
    const TTL: Duration = Duration::from_secs(3);
    let mut stack = Stack::start().await;
    stack.set_env("SECRET_TTL_SECONDS", TTL.as_secs());
    let mut accepted_inside_ttl = 0;
    // A rotation slower than the TTL leaves nothing to observe inside it; then
    // the scenario runs again on a fresh instance.
    for attempt in 0..3 {
        let old = format!("Bearer {}", stack.admin_token);
        let router = stack.router();
        let filled_not_before = Instant::now();
        assert_eq!(stack.get(CURRENCIES).send(&router).await.status, 200);
        let filled_by = Instant::now();
        stack.rotate_admin_token(&format!("adm_rotated_{attempt}_{}", uuid::Uuid::new_v4().simple())).await;
        let old_call = stack.get(CURRENCIES).header("authorization", &old);
        let give_up = filled_by + TTL + Duration::from_secs(10);
        loop {
            let started = Instant::now();
            let reply = old_call.send(&router).await;
            let ended = Instant::now();
            if ended < filled_not_before + TTL {
                assert_eq!(reply.status, 200, "refused inside the TTL: {}", reply.body);
                accepted_inside_ttl += 1;
            } else if started > filled_by + TTL {
                reply.assert_error(403, "invalid_admin_secret");
                break;
            }
            assert!(Instant::now() < give_up, "the old token was never refused after the TTL");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if accepted_inside_ttl > 0 {
            break;
        }
    }
    assert!(accepted_inside_ttl > 0, "three rotations each took longer than the {TTL:?} TTL");
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let stack = Stack::start().await;
    let router = stack.router();
    stack.get("/admin/credits/nothing").send(&router).await.assert_error(404, "not_found");
    stack.get("/").send(&router).await.assert_error(404, "not_found");
    let reply = Call::new("DELETE", CURRENCIES).send(&router).await;
    reply.assert_error(405, "method_not_allowed");
    assert_eq!(reply.header("allow"), Some("GET"));
    let reply = stack.get(ADJUST).send(&router).await;
    reply.assert_error(405, "method_not_allowed");
    assert_eq!(reply.header("allow"), Some("POST"));
    // API Gateway stage prefixes are tolerated.
    assert_eq!(stack.get(&format!("/prod{CURRENCIES}")).send(&router).await.status, 200);
}

/// Every route gives each refusal every route documents: 401, 403, 413 (the
/// body-size check runs on the GET routes too), 405 naming its method, 502
/// when RevenueCat fails (the routes that call it), 429 once its budget is
/// spent, 503 while the secret is unusable.
#[tokio::test]
async fn every_route_answers_the_refusals_it_documents() {
    let mut stack = Stack::start().await;
    stack.set_env("RATE_LIMIT_PER_MINUTE", 1);
    let router = stack.router();
    let routes = [
        ("GET", CURRENCIES.to_owned(), Some(Route::ListCurrencies)),
        ("GET", balances(DEMO_USER), Some(Route::Balances)),
        // The ledger is ours: no RevenueCat call, so no 502.
        ("GET", ledger(DEMO_USER), None),
        ("POST", ADJUST.to_owned(), Some(Route::Transaction)),
    ];
    fn valid(stack: &Stack, method: &str, path: &str) -> Call {
        match method {
            "GET" => stack.get(path),
            _ => stack.adjust(1, None),
        }
    }
    let huge = "x".repeat(16 * 1024 + 1);
    for (method, path, _) in &routes {
        let what = format!("{method} {path}");
        let reply = valid(&stack, method, path).without_header("authorization").send(&router).await;
        reply.assert_detail(401, "missing_bearer");
        let reply =
            valid(&stack, method, path).header("authorization", "Bearer adm_wrong_guess").send(&router).await;
        reply.assert_detail(403, "invalid_admin_secret");
        valid(&stack, method, path).body(&huge).send(&router).await.assert_error(413, "payload_too_large");
        let other = if *method == "GET" { "PUT" } else { "DELETE" };
        let reply = Call::new(other, path).header("authorization", &stack.bearer()).send(&router).await;
        reply.assert_detail(405, "method_not_allowed");
        assert_eq!(reply.header("allow"), Some(*method), "{what}");
    }
    within_one_rate_window(Duration::from_secs(10)).await;
    for (method, path, upstream) in &routes {
        // A budget of 1: the 502 spends it. The ledger shares get-balances'
        // budget, which the balances route spent just before.
        if let Some(upstream) = upstream {
            stack.revenuecat.inject(*upstream, Fault::server_error(None), 1);
            valid(&stack, method, path)
                .send(&router)
                .await
                .assert_detail(502, "rc_call_failed: server_error");
        }
        let reply = valid(&stack, method, path).send(&router).await;
        reply.assert_detail(429, "rate_limited");
        assert!(reply.header("retry-after").is_some(), "{method} {path}");
    }
    stack.put_raw_secret(&json!({"admin_secret": stack.admin_token}).to_string()).await;
    let router = stack.router();
    for (method, path, _) in &routes {
        valid(&stack, method, path)
            .send(&router)
            .await
            .assert_detail(503, "admin_unconfigured: revenuecat_api_key is not set");
    }
    // Port 9 (discard) is closed on loopback: Secrets Manager cannot be reached.
    stack.set_env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    let router = stack.router();
    for (method, path, _) in &routes {
        valid(&stack, method, path).send(&router).await.assert_detail(503, "secret_store_unavailable");
    }
}

/// 40 concurrent adjustments over 4 instances (each its own caches and
/// clients) admit exactly the budget of 30, atomically in DynamoDB.
#[tokio::test]
async fn the_rate_limit_admits_exactly_its_budget_across_instances() {
    let stack = Stack::start().await;
    stack.revenuecat.set_balance(DEMO_USER, "CRD", 0);
    let routers: Vec<_> = (0..4).map(|_| stack.router()).collect();
    within_one_rate_window(Duration::from_secs(20)).await;
    let calls = (0..40).map(|i| {
        let router = routers[i % 4].clone();
        let call = stack.adjust(1, None);
        tokio::spawn(async move { call.send(&router).await })
    });
    let replies: Vec<_> =
        futures::future::join_all(calls).await.into_iter().map(|r| r.expect("no panic")).collect();
    let admitted: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
    let limited: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!((admitted.len(), limited.len()), (30, 10));
    assert_eq!(stack.revenuecat.applied_transactions().len(), 30);
    assert_eq!(stack.revenuecat.balance(DEMO_USER, "CRD"), Some(30));
    let mut remaining: Vec<u32> =
        admitted.iter().map(|r| r.header("ratelimit-remaining").unwrap().parse().unwrap()).collect();
    remaining.sort();
    assert_eq!(remaining, (0..30).collect::<Vec<_>>(), "each admission saw its own count");
    for reply in limited {
        reply.assert_error(429, "rate_limited");
        assert_eq!(reply.header("ratelimit-remaining"), Some("0"));
        let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry));
        assert_eq!(reply.header("ratelimit-reset"), reply.header("retry-after"));
    }
}

#[tokio::test]
async fn refused_and_invalid_requests_do_not_spend_the_budget() {
    let mut stack = Stack::start().await;
    stack.set_env("RATE_LIMIT_PER_MINUTE", 3);
    let router = stack.router();
    within_one_rate_window(Duration::from_secs(10)).await;
    for _ in 0..5 {
        stack
            .get(CURRENCIES)
            .without_header("authorization")
            .send(&router)
            .await
            .assert_error(401, "missing_bearer");
        stack
            .get(CURRENCIES)
            .header("authorization", "Bearer wrong")
            .send(&router)
            .await
            .assert_error(403, "invalid_admin_secret");
        stack.get(&balances("a%2Fb")).send(&router).await.assert_error(422, "invalid_user_id");
    }
    for expected_remaining in ["2", "1", "0"] {
        let reply = stack.get(CURRENCIES).send(&router).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("ratelimit-remaining"), Some(expected_remaining));
    }
    stack.get(CURRENCIES).send(&router).await.assert_error(429, "rate_limited");
    // Each function has its own bucket.
    assert_eq!(stack.get(&balances(DEMO_USER)).send(&router).await.status, 200);
}

#[tokio::test]
async fn the_limiter_fails_open_when_its_table_is_unusable() {
    let mut stack = Stack::start().await;
    stack.set_env("TABLE_NAME", "credits-table-that-does-not-exist");
    let router = stack.router();
    let reply = stack.get(CURRENCIES).send(&router).await;
    assert_eq!(reply.status, 200, "admin work must not stop");
    assert!(reply.header("ratelimit-limit").is_none(), "nothing was counted");
    let reply = stack.adjust(5, None).send(&router).await;
    assert_eq!(reply.status, 200, "an unkeyed adjustment still applies: {}", reply.body);
}

#[tokio::test]
async fn revenuecat_failures_map_to_502_with_their_type() {
    let mut stack = Stack::start().await;
    stack.set_env("REVENUECAT_TIMEOUT_MS", 400);
    let router = stack.router();
    let server_error = Fault::server_error(Some(1000));
    stack.revenuecat.inject(Route::Balances, server_error, 1);
    stack.get(&balances(DEMO_USER)).send(&router).await.assert_detail(502, "rc_call_failed: server_error");
    stack.revenuecat.inject(Route::Balances, Fault::Hang, 1);
    stack.get(&balances(DEMO_USER)).send(&router).await.assert_detail(502, "rc_call_failed: timeout");
    stack.revenuecat.inject(Route::Balances, Fault::InvalidJson, 1);
    let reply = stack.get(&balances(DEMO_USER)).send(&router).await;
    reply.assert_detail(502, "rc_call_failed: invalid_response");
    stack.revenuecat.inject(Route::Balances, Fault::CloseConnection, 1);
    let reply = stack.get(&balances(DEMO_USER)).send(&router).await;
    reply.assert_detail(502, "rc_call_failed: transport");

    // A wrong RevenueCat key is RevenueCat's 401, reported as such.
    let wrong_key = format!("sk_wrong_{}", uuid::Uuid::new_v4().simple());
    stack.put_raw_secret(
        &json!({"admin_secret": stack.admin_token, "revenuecat_api_key": wrong_key, "revenuecat_project_id": stack.revenuecat.project_id()}).to_string(),
    ).await;
    let reply = stack.get(&balances(DEMO_USER)).send(&stack.router()).await;
    reply.assert_detail(502, "rc_call_failed: authentication_error");
}

/// The gap between RevenueCat's last two arrivals on `route`.
fn last_gap(stack: &Stack, route: Route) -> Duration {
    let arrivals = stack.revenuecat.arrivals(route);
    let [.., first, second] = arrivals.as_slice() else { panic!("fewer than two requests: {arrivals:?}") };
    second.duration_since(*first)
}

/// RevenueCat's 429 carries `Retry-After: 1` (its `backoff_ms` of 1000): the
/// request is sent again once, after that second and not much later.
#[tokio::test]
async fn a_revenuecat_429_is_retried_once_after_its_retry_after() {
    let stack = Stack::start().await;
    let router = stack.router();
    stack.revenuecat.inject(Route::Balances, Fault::rate_limited(1000), 1);
    let reply = stack.get(&balances(DEMO_USER)).send(&router).await;
    assert_eq!(reply.status, 200, "one backoff, then success: {}", reply.body);
    assert_eq!(stack.revenuecat.request_count(Route::Balances), 2);
    let waited = last_gap(&stack, Route::Balances);
    assert!(
        (Duration::from_secs(1)..Duration::from_millis(2_500)).contains(&waited),
        "the retry came {waited:?} after the 429 (Retry-After: 1)"
    );

    stack.revenuecat.inject(Route::Balances, Fault::rate_limited(1000), 2);
    let reply = stack.get(&balances(DEMO_USER)).send(&router).await;
    reply.assert_detail(502, "rc_call_failed: rate_limit_error");
    assert_eq!(stack.revenuecat.request_count(Route::Balances), 4, "exactly one retry");
    let waited = last_gap(&stack, Route::Balances);
    assert!(
        (Duration::from_secs(1)..Duration::from_millis(2_500)).contains(&waited),
        "retry after {waited:?}"
    );
}

/// A backoff longer than the adapter waits for (3 s) is not waited out: the
/// answer is 502 at once, without a retry.
#[tokio::test]
async fn a_revenuecat_429_asking_for_more_than_the_maximum_backoff_is_502_at_once() {
    let stack = Stack::start().await;
    let router = stack.router();
    stack.revenuecat.inject(Route::Balances, Fault::rate_limited(5_000), 1);
    let started = Instant::now();
    let reply = stack.get(&balances(DEMO_USER)).send(&router).await;
    let took = started.elapsed();
    reply.assert_detail(502, "rc_call_failed: rate_limit_error");
    assert_eq!(stack.revenuecat.request_count(Route::Balances), 1, "no retry");
    assert!(took < Duration::from_secs(3), "answered after {took:?}: it waited");
}
