//! Load, end to end: 520 mixed requests at concurrency 32 over 4 processes
//! per function, with a flaky gateway. Nothing 5xx, every rate limit admits
//! exactly its budget, every applied adjustment is one RevenueCat
//! transaction, and after reconciliation every one has been announced.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use credits_sandbox::GatewayFault;
use credits_testkit::stack::{scheduled_event, within_one_rate_window, Call, Stack, DEMO_USER};
use futures::stream::{self, StreamExt};

const CONCURRENCY: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_load_keeps_every_invariant() {
    let stack = Stack::start().await;
    stack.revenuecat.set_balance(DEMO_USER, "CRD", 1_000_000);
    // The first eight envelope posts fail: those wait in the outbox.
    stack.gateway.inject(GatewayFault::Status(503), 8);
    let functions = [
        ("list-currencies", stack.lambda("list-currencies", 4).await),
        ("get-balances", stack.lambda("get-balances", 4).await),
        ("adjust-credits", stack.lambda("adjust-credits", 4).await),
    ];
    let mut requests: Vec<(usize, Call)> = Vec::new();
    for i in 0..520 {
        let request = match i % 4 {
            0 => (0, stack.get("/admin/credits/currencies")),
            1 => (1, stack.get(&format!("/admin/credits/balances/{DEMO_USER}?include_empty=true"))),
            2 => (2, stack.adjust(1 + (i as i64 % 7), None)),
            // Keyed adjustments, each key sent twice.
            _ => (2, stack.adjust(2, Some(&format!("load-{}", i / 8)))),
        };
        requests.push(request);
    }
    within_one_rate_window(Duration::from_secs(40)).await;
    let replies: Vec<(usize, credits_testkit::stack::Reply)> = stream::iter(requests)
        .map(|(function, call)| {
            let lambda = &functions[function].1;
            async move { (function, lambda.call(&call).await) }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;

    let mut statuses: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for (function, reply) in &replies {
        assert!(reply.status < 500, "{}: {} {}", functions[*function].0, reply.status, reply.body);
        *statuses.entry((functions[*function].0, reply.status)).or_default() += 1;
    }
    let admitted = |name: &str| {
        replies
            .iter()
            .filter(|(f, r)| {
                functions[*f].0 == name && r.header("ratelimit-limit").is_some() && r.status != 429
            })
            .count()
    };
    assert_eq!(admitted("list-currencies"), 60, "{statuses:?}");
    assert_eq!(admitted("get-balances"), 120, "{statuses:?}");
    assert_eq!(admitted("adjust-credits"), 30, "{statuses:?}");

    // Every applied adjustment: exactly one RevenueCat transaction.
    let applied = stack.revenuecat.applied_transactions();
    let fresh_200s = replies
        .iter()
        .filter(|(f, r)| {
            functions[*f].0 == "adjust-credits" && r.status == 200 && r.json()["replayed"] == false
        })
        .count();
    assert_eq!(applied.len(), fresh_200s);
    let keys: HashSet<_> = applied.iter().map(|t| t.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), applied.len(), "no RevenueCat key applied twice");
    let total: i64 = applied.iter().map(|t| t.adjustments["CRD"]).sum();
    assert_eq!(stack.revenuecat.balance(DEMO_USER, "CRD"), Some(1_000_000 + total));

    // After reconciliation every applied adjustment has been announced.
    let summary = functions[2].1.invoke(scheduled_event()).await.into_response();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(stack.gateway.unique_envelope_ids().len(), applied.len());
}
