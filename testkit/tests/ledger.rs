//! The credit ledger (spec §11), against moto, the RevenueCat sandbox and the
//! gateway stand-in: one entry per adjustment RevenueCat applied, whoever
//! settled it; pending while the outcome is unknown; paging that loses and
//! repeats nothing; CSV that round-trips.

use std::time::{Duration, Instant};

use credits::budget::Budget;
use credits::reconcile::run_pass;
use credits_sandbox::{Fault, GatewayFault, Route};
use credits_testkit::faults::StalledListener;
use credits_testkit::stack::{Reply, Stack, DEMO_USER};
use serde_json::{json, Value};

const SHORT: Duration = Duration::from_secs(3);

fn ledger_path(user: &str, query: &str) -> String {
    format!("/admin/credits/ledger/{user}{}{query}", if query.is_empty() { "" } else { "?" })
}

async fn ledger(stack: &Stack, query: &str) -> Value {
    let reply = stack.get(&ledger_path(DEMO_USER, query)).send(&stack.router()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn adjustment(amount: i64, reason: &str, actor: Option<&str>, key: Option<&str>) -> Value {
    let mut body = json!({"user_id": DEMO_USER, "amount": amount, "reason": reason});
    if let Some(actor) = actor {
        body["actor"] = json!(actor);
    }
    if let Some(key) = key {
        body["idempotency_key"] = json!(key);
    }
    body
}

async fn adjust(stack: &Stack, body: Value) -> Reply {
    stack.post("/admin/credits/adjust", body).send(&stack.router()).await
}

async fn settle_lapsed(stack: &Stack) -> credits::reconcile::ReconcileSummary {
    run_pass(&stack.app(), Budget::lasting(Duration::from_secs(20))).await
}

#[tokio::test]
async fn adjustments_are_listed_newest_first_with_who_why_and_the_balance_after() {
    let stack = Stack::start().await;
    assert_eq!(
        adjust(&stack, adjustment(100, "ZD-1 goodwill", Some("ana@example.com"), Some("k1"))).await.status,
        200
    );
    assert_eq!(adjust(&stack, adjustment(-20, "ZD-2 correction", None, None)).await.status, 200);
    let page = ledger(&stack, "").await;
    assert_eq!(page["user_id"], DEMO_USER);
    assert_eq!(page["next_cursor"], Value::Null);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let (newest, oldest) = (&items[0], &items[1]);
    assert_eq!((newest["amount"].as_i64(), newest["balance_after"].as_i64()), (Some(-20), Some(200)));
    assert_eq!(newest["actor"], Value::Null);
    assert_eq!(newest["idempotency_key"], Value::Null);
    assert_eq!(oldest["amount"], 100);
    assert_eq!(oldest["balance_after"], 220);
    assert_eq!(oldest["reason"], "ZD-1 goodwill");
    assert_eq!(oldest["actor"], "ana@example.com");
    assert_eq!(oldest["idempotency_key"], "k1");
    for item in items {
        assert_eq!((item["status"].as_str(), item["origin"].as_str()), (Some("applied"), Some("api")));
        assert_eq!(item["notified"], true);
        assert_eq!(item["currency"], "CRD");
        assert!(item["occurred_at"].as_str().unwrap().ends_with('Z'));
    }
    // A replay adds nothing; a refusal changed nothing and is not listed.
    adjust(&stack, adjustment(100, "ZD-1 goodwill", Some("ana@example.com"), Some("k1"))).await;
    adjust(&stack, adjustment(-5000, "ZD-3 too much", None, None))
        .await
        .assert_error(409, "insufficient_balance");
    assert_eq!(ledger(&stack, "").await["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn pages_lose_and_repeat_nothing_while_new_entries_arrive() {
    let stack = Stack::start().await;
    for n in 0..7 {
        assert_eq!(
            adjust(&stack, adjustment(n + 1, &format!("first batch {n}"), None, None)).await.status,
            200
        );
    }
    let mut seen = Vec::new();
    let mut query = "limit=3".to_owned();
    loop {
        let page = ledger(&stack, &query).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|i| i["reason"].as_str().unwrap().to_owned()));
        // New entries arrive between pages; they are newer than any cursor.
        assert_eq!(adjust(&stack, adjustment(1, "arrived meanwhile", None, None)).await.status, 200);
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=3&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).rev().map(|n| format!("first batch {n}")).collect();
    assert_eq!(seen, expected, "every first-batch entry once, newest first");
}

#[tokio::test]
async fn a_user_without_entries_has_an_empty_ledger_and_revenuecat_is_not_asked() {
    let stack = Stack::start().await;
    let reply = stack.get(&ledger_path("user_never_seen", "")).send(&stack.router()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), json!({"user_id": "user_never_seen", "items": [], "next_cursor": null}));
    assert_eq!(stack.revenuecat.request_count(Route::Balances), 0);
}

#[tokio::test]
async fn bad_user_ids_limits_and_cursors_are_422() {
    let stack = Stack::start().await;
    for n in 0..3 {
        adjust(&stack, adjustment(1, &format!("cursor source {n}"), None, None)).await;
    }
    let cursor = ledger(&stack, "limit=1").await["next_cursor"].as_str().unwrap().to_owned();
    let router = stack.router();
    for user in ["a%2Fb", "tab%09", "..", &"u".repeat(201)] {
        stack.get(&ledger_path(user, "")).send(&router).await.assert_error(422, "invalid_user_id");
    }
    for limit in ["0", "101", "-1", "abc", "1.5", ""] {
        let reply = stack.get(&ledger_path(DEMO_USER, &format!("limit={limit}"))).send(&router).await;
        reply.assert_error(422, "invalid_limit");
    }
    let mut tampered = cursor.clone().into_bytes();
    tampered[12] = if tampered[12] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (user, bad) in
        [(DEMO_USER, "not-a-cursor"), (DEMO_USER, tampered.as_str()), ("user_other", cursor.as_str())]
    {
        let reply = stack.get(&ledger_path(user, &format!("cursor={bad}"))).send(&router).await;
        reply.assert_error(422, "invalid_cursor");
    }
    let ok = stack.get(&ledger_path(DEMO_USER, &format!("limit=1&cursor={cursor}"))).send(&router).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[tokio::test]
async fn an_unknown_outcome_is_pending_at_once_then_applied_by_reconciliation() {
    let stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::ApplyThenDelay(Duration::from_secs(4)), 1);
    let lease_lapsed = Instant::now() + SHORT + Duration::from_millis(2_500);
    let body = adjustment(40, "ZD-9 timed out", Some("bo@example.com"), Some("k-pending"));
    let reply = stack.post("/admin/credits/adjust", body).deadline_in(SHORT).send(&stack.router()).await;
    assert_eq!((reply.status, reply.detail()), (502, "rc_call_failed: timeout".to_owned()));
    let pending = ledger(&stack, "").await["items"][0].clone();
    assert_eq!(
        (pending["status"].as_str(), pending["balance_after"].clone()),
        (Some("pending"), Value::Null)
    );
    assert_eq!(pending["notified"], false);
    assert_eq!(pending["actor"], "bo@example.com");
    tokio::time::sleep_until(lease_lapsed.into()).await;
    assert_eq!(settle_lapsed(&stack).await.settled, 1);
    let items = ledger(&stack, "").await["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "the same entry, now settled");
    assert_eq!(items[0]["entry_id"], pending["entry_id"]);
    assert_eq!(items[0]["occurred_at"], pending["occurred_at"]);
    assert_eq!(
        (items[0]["status"].as_str(), items[0]["origin"].as_str()),
        (Some("applied"), Some("reconciliation"))
    );
    assert_eq!(items[0]["balance_after"], 160);
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
}

#[tokio::test]
async fn a_pending_entry_becomes_rejected_when_revenuecat_refuses_it_on_settlement() {
    let stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::server_error(None), 1);
    let lease_lapsed = Instant::now() + SHORT + Duration::from_millis(2_500);
    let body = adjustment(-100, "ZD-10 deduction", None, Some("k-rejected"));
    let reply = stack.post("/admin/credits/adjust", body).deadline_in(SHORT).send(&stack.router()).await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(ledger(&stack, "").await["items"][0]["status"], "pending");
    // Meanwhile the balance was spent: the re-sent deduction is refused.
    stack.revenuecat.set_balance(DEMO_USER, "CRD", 10);
    tokio::time::sleep_until(lease_lapsed.into()).await;
    assert_eq!(settle_lapsed(&stack).await.released, 1);
    let items = ledger(&stack, "").await["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0]["status"].as_str(), items[0]["origin"].as_str()),
        (Some("rejected"), Some("reconciliation"))
    );
    assert_eq!(items[0]["balance_after"], Value::Null);
}

#[tokio::test]
async fn a_client_retry_racing_reconciliation_leaves_one_entry() {
    let stack = Stack::start().await;
    stack.revenuecat.inject(Route::Transaction, Fault::ApplyThenDelay(Duration::from_secs(4)), 1);
    let lease_lapsed = Instant::now() + SHORT + Duration::from_millis(2_500);
    let body = adjustment(25, "ZD-11 race", None, Some("k-race"));
    let first =
        stack.post("/admin/credits/adjust", body.clone()).deadline_in(SHORT).send(&stack.router()).await;
    assert_eq!(first.status, 502, "{}", first.body);
    tokio::time::sleep_until(lease_lapsed.into()).await;
    let router = stack.router();
    let retry = stack.post("/admin/credits/adjust", body);
    let (retried, summary) = tokio::join!(retry.send(&router), settle_lapsed(&stack));
    // Who wins the takeover is a race: the retry answers 200 when it won, 409
    // (in progress) when the pass did. Either way one transaction, one entry.
    assert!(retried.status == 200 || retried.status == 409, "{}", retried.body);
    assert!(summary.settled <= 1, "{summary:?}");
    let items = ledger(&stack, "").await["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["status"], "applied");
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
}

#[tokio::test]
async fn twenty_concurrent_duplicates_leave_one_entry() {
    let stack = Stack::start().await;
    let router = stack.router();
    let body = adjustment(7, "ZD-12 double click", None, Some("k-dup"));
    let calls: Vec<_> = (0..20).map(|_| stack.post("/admin/credits/adjust", body.clone())).collect();
    let replies = futures::future::join_all(calls.iter().map(|c| c.send(&router))).await;
    assert!(replies.iter().any(|r| r.status == 200));
    assert_eq!(ledger(&stack, "").await["items"].as_array().unwrap().len(), 1);
    assert_eq!(stack.revenuecat.applied_transactions().len(), 1);
}

#[tokio::test]
async fn an_envelope_still_queued_shows_as_not_notified_until_delivered() {
    let stack = Stack::start().await;
    stack.gateway.inject(GatewayFault::Status(503), 1);
    assert_eq!(adjust(&stack, adjustment(5, "ZD-13 quiet", None, None)).await.json()["notified"], false);
    assert_eq!(ledger(&stack, "").await["items"][0]["notified"], false);
    assert_eq!(settle_lapsed(&stack).await.redelivered, 1);
    assert_eq!(ledger(&stack, "").await["items"][0]["notified"], true);
}

#[tokio::test]
async fn the_csv_export_round_trips_awkward_reasons() {
    let stack = Stack::start().await;
    let reasons =
        ["commas, in, it", "a \"quoted\" word", "two\nlines\r\nthree", "Grüße, 你好 🎁", "=SUM(A1)"];
    for (n, reason) in reasons.iter().enumerate() {
        let actor = format!("agent{n}@example.com");
        assert_eq!(adjust(&stack, adjustment(1, reason, Some(&actor), None)).await.status, 200);
    }
    let json_items = ledger(&stack, "limit=3").await["items"].as_array().unwrap().clone();
    let reply = stack
        .get(&ledger_path(DEMO_USER, "limit=3"))
        .header("accept", "text/csv")
        .send(&stack.router())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/csv; charset=utf-8"));
    let rows = parse_csv(&reply.body);
    assert_eq!(rows[0][0], "entry_id");
    assert_eq!(rows.len(), 1 + json_items.len());
    for (row, item) in rows[1..].iter().zip(&json_items) {
        let header = &rows[0];
        let field = |name: &str| &row[header.iter().position(|h| h == name).unwrap()];
        assert_eq!(field("entry_id"), item["entry_id"].as_str().unwrap());
        assert_eq!(field("reason"), item["reason"].as_str().unwrap());
        assert_eq!(field("actor"), item["actor"].as_str().unwrap());
        assert_eq!(field("amount"), &item["amount"].to_string());
        assert_eq!(field("balance_after"), &item["balance_after"].to_string());
        assert_eq!(field("notified"), &item["notified"].to_string());
    }
    let link = reply.header("link").expect("more pages: a Link header");
    let cursor = reply.header("next-cursor").expect("and the bare cursor");
    assert!(link.contains(&format!("cursor={cursor}>; rel=\"next\"")), "{link}");
    let rest =
        stack.get(&ledger_path(DEMO_USER, &format!("limit=3&cursor={cursor}"))).send(&stack.router()).await;
    assert_eq!(rest.json()["items"].as_array().unwrap().len(), 2);
}

/// RFC 4180, as a spreadsheet reads it.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

#[tokio::test]
async fn a_stalled_table_answers_503_ledger_unavailable_in_time() {
    let stalled = StalledListener::start().await;
    let mut stack = Stack::start().await;
    stack.set_env("AWS_ENDPOINT_URL", stalled.url());
    // Secrets Manager through the real moto, the table stalled.
    stack.set_env("AWS_ENDPOINT_URL_SECRETS_MANAGER", stack.moto_endpoint.clone());
    let lambda = stack
        .lambda_with(
            "get-balances",
            1,
            credits_testkit::runtime_api::EmulatorOptions { deadline: SHORT, ..Default::default() },
        )
        .await;
    let started = Instant::now();
    let reply = lambda.call(&stack.get(&ledger_path(DEMO_USER, ""))).await;
    reply.assert_error(503, "ledger_unavailable");
    assert!(started.elapsed() < SHORT, "{:?}", started.elapsed());
}

#[tokio::test]
async fn the_get_balances_binary_serves_the_ledger() {
    let stack = Stack::start().await;
    let adjust_fn = stack.lambda("adjust-credits", 1).await;
    let body = adjustment(15, "ZD-14 through the binaries", Some("cy@example.com"), None);
    assert_eq!(adjust_fn.call(&stack.post("/admin/credits/adjust", body)).await.status, 200);
    let balances_fn = stack.lambda("get-balances", 1).await;
    let reply = balances_fn.call(&stack.get(&ledger_path(DEMO_USER, "limit=5"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["items"][0]["reason"], "ZD-14 through the binaries");
    assert!(reply.header("ratelimit-limit").is_some(), "it shares get-balances' rate limit");
}

#[tokio::test]
async fn an_actor_that_is_empty_too_long_or_has_control_characters_is_422() {
    let stack = Stack::start().await;
    for actor in [json!(""), json!("a".repeat(201)), json!("ana\n@example.com"), json!(42)] {
        let mut body = adjustment(1, "ZD-15 actor check", None, None);
        body["actor"] = actor.clone();
        adjust(&stack, body).await.assert_error(422, "invalid_actor");
    }
    assert_eq!(stack.revenuecat.transactions().len(), 0);
    let mut body = adjustment(1, "ZD-15 actor check", None, None);
    body["actor"] = json!("a".repeat(200));
    assert_eq!(adjust(&stack, body).await.status, 200, "200 characters are fine");
}
