//! The functions' metrics, as CloudWatch reads them: Embedded Metric Format
//! documents in the log lines of the real binaries, after a run that makes
//! every metric happen.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use credits::adapters::dynamodb::DynamoStore;
use credits::budget::Budget;
use credits::domain::UsageChanged;
use credits::ports::{Outbox, QueuedEnvelope};
use credits::reconcile::MAX_DELIVERY_ATTEMPTS;
use credits_sandbox::{Fault, GatewayFault, Route};
use credits_testkit::aws::dynamodb_client;
use credits_testkit::faults::StalledListener;
use credits_testkit::stack::{scheduled_event, within_one_rate_window, Stack};
use serde_json::Value;

/// Every EMF document in `logs`, checked against the EMF specification's
/// required shape; panics on a malformed one.
fn emf_documents(logs: &[String]) -> Vec<Value> {
    let mut documents = Vec::new();
    for line in logs {
        let Some(json) = line.find('{').and_then(|i| serde_json::from_str::<Value>(&line[i..]).ok()) else {
            continue;
        };
        let Some(aws) = json.get("_aws") else { continue };
        assert!(aws["Timestamp"].is_u64(), "EMF needs a numeric Timestamp: {line}");
        let directives = aws["CloudWatchMetrics"].as_array().expect("CloudWatchMetrics is an array");
        for directive in directives {
            assert_eq!(directive["Namespace"], credits::metrics::NAMESPACE, "{line}");
            for set in directive["Dimensions"].as_array().expect("Dimensions") {
                for name in set.as_array().expect("a dimension set is an array") {
                    let value = &json[name.as_str().expect("dimension names are strings")];
                    assert!(value.is_string(), "dimension {name} has a string value: {line}");
                    assert!(!value.as_str().unwrap().contains("user_"), "no user ids as dimensions: {line}");
                }
            }
            for metric in directive["Metrics"].as_array().expect("Metrics") {
                let name = metric["Name"].as_str().expect("a metric has a Name");
                assert!(metric["Unit"].is_string(), "{name} has a unit: {line}");
                let value = &json[name];
                assert!(value.is_number() || value.is_array(), "{name} has a value: {line}");
            }
        }
        documents.push(json);
    }
    documents
}

/// Metric name → the units and dimension values it was seen with.
fn metrics_seen(documents: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for doc in documents {
        for directive in doc["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            let dimensions: Vec<String> = directive["Dimensions"][0]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| format!("{}={}", d.as_str().unwrap(), doc[d.as_str().unwrap()].as_str().unwrap()))
                .collect();
            for metric in directive["Metrics"].as_array().unwrap() {
                let name = metric["Name"].as_str().unwrap().to_owned();
                let entry = seen.entry(name).or_default();
                entry.insert(format!("unit={}", metric["Unit"].as_str().unwrap()));
                entry.extend(dimensions.iter().cloned());
            }
        }
    }
    seen
}

/// The sum of `metric`'s values over `documents` (a value may be a number or
/// an array of numbers).
fn total(documents: &[Value], metric: &str) -> f64 {
    let numbers = |value: &Value| match value {
        Value::Array(values) => values.iter().filter_map(Value::as_f64).sum(),
        other => other.as_f64().unwrap_or(0.0),
    };
    documents.iter().map(|doc| numbers(&doc[metric])).sum()
}

#[tokio::test]
async fn the_function_logs_carry_valid_emf_documents_for_every_metric() {
    let mut stack = Stack::start().await;
    stack.set_env("RATE_LIMIT_PER_MINUTE", 6);
    stack.set_env("REVENUECAT_TIMEOUT_MS", 1_000);
    within_one_rate_window(Duration::from_secs(30)).await;
    let mut logs = Vec::new();

    // A short deadline, so the lease of the adjustment with an unknown outcome lapses soon.
    let deadline = Duration::from_secs(3);
    let options = credits_testkit::runtime_api::EmulatorOptions { deadline, ..Default::default() };
    let adjust = stack.lambda_with("adjust-credits", 1, options).await;
    assert_eq!(adjust.call(&stack.adjust(50, Some("m-grant"))).await.status, 200);
    assert_eq!(adjust.call(&stack.adjust(50, Some("m-grant"))).await.status, 200, "a replay");
    assert_eq!(adjust.call(&stack.adjust(-20, None)).await.status, 200);
    assert_eq!(adjust.call(&stack.adjust(-5000, None)).await.status, 409, "rejected by RevenueCat");
    stack.revenuecat.inject(Route::Transaction, Fault::server_error(None), 1);
    assert_eq!(adjust.call(&stack.adjust(5, Some("m-unknown"))).await.status, 502, "outcome unknown");
    let lease_lapsed = tokio::time::Instant::now() + deadline + Duration::from_millis(2_500);
    stack.gateway.inject(GatewayFault::Status(503), 1);
    assert_eq!(adjust.call(&stack.adjust(5, None)).await.json()["notified"], false, "envelope queued");
    assert_eq!(adjust.call(&stack.adjust(5, None)).await.status, 429, "the seventh in the minute");
    // An envelope the gateway has refused all but once more: the pass dead-letters it.
    let store = DynamoStore::new(dynamodb_client(&stack.moto_endpoint), stack.table.clone());
    let envelope =
        UsageChanged::new("m-dead".into(), "user_2abcXYZ", "CRD", 1, 1, std::time::SystemTime::now());
    let last_try = QueuedEnvelope { envelope, attempts: MAX_DELIVERY_ATTEMPTS - 1, next_attempt_ms: 0 };
    store.enqueue(&last_try, u64::MAX / 2, &Budget::lasting(Duration::from_secs(5))).await.unwrap();
    stack.gateway.inject(GatewayFault::Status(503), 1);
    tokio::time::sleep_until(lease_lapsed).await;
    let first_pass = adjust.invoke(scheduled_event()).await.into_response();
    assert_eq!(
        (first_pass["dead_lettered"].as_u64(), first_pass["settled"].as_u64()),
        (Some(1), Some(1)),
        "{first_pass}"
    );
    let second_pass = adjust.invoke(scheduled_event()).await.into_response();
    assert_eq!(second_pass["redelivered"].as_u64().unwrap() + first_pass["redelivered"].as_u64().unwrap(), 1);
    // The EMF lines are written as each invocation ends; wait for the last one.
    assert!(adjust.pool.instances()[0].wait_for_log("ReconcileDuration", Duration::from_secs(5)).await);
    let passes = || adjust.logs().iter().filter(|l| l.contains("\"ReconcileDuration\"")).count();
    for _ in 0..50 {
        if passes() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    logs.extend(adjust.logs());

    // The limiter failing open, on get-balances with DynamoDB stalled.
    let stalled = StalledListener::start().await;
    stack.set_env("AWS_ENDPOINT_URL_DYNAMODB", stalled.url());
    let balances = stack.lambda("get-balances", 1).await;
    assert_eq!(balances.call(&stack.get("/admin/credits/balances/user_2abcXYZ")).await.status, 200);
    assert!(balances.pool.instances()[0].wait_for_log("\"LimiterFailOpen\"", Duration::from_secs(5)).await);
    logs.extend(balances.logs());

    let documents = emf_documents(&logs);
    let seen = metrics_seen(&documents);
    let expected = [
        ("Adjustments", "Outcome=applied"),
        ("Adjustments", "Outcome=replayed"),
        ("Adjustments", "Outcome=rejected"),
        ("Adjustments", "Outcome=outcome_unknown"),
        ("Refused", "Code=insufficient_balance"),
        ("Refused", "Code=rate_limited"),
        ("CreditsGranted", "Currency=CRD"),
        ("CreditsDeducted", "Currency=CRD"),
        ("RevenueCatCalls", "unit=Count"),
        ("RevenueCatLatency", "unit=Milliseconds"),
        ("RevenueCatErrors", "unit=Count"),
        ("RevenueCatErrorsByType", "Type=server_error"),
        ("RateLimited", "Function=adjust-credits"),
        ("LimiterFailOpen", "Function=get-balances"),
        ("EnvelopesQueued", "Function=adjust-credits"),
        ("EnvelopesRedelivered", "Function=adjust-credits"),
        ("EnvelopesDeadLettered", "Function=adjust-credits"),
        ("ReconcileSettled", "unit=Count"),
        ("ReconcileFailed", "unit=Count"),
        ("ReconcileDuration", "unit=Milliseconds"),
        ("OutboxOldestAge", "unit=Seconds"),
    ];
    for (metric, with) in expected {
        let found = seen.get(metric).unwrap_or_else(|| panic!("{metric} not emitted; seen: {seen:#?}"));
        assert!(found.contains(with), "{metric} without {with}: {found:?}");
    }
    // What a person is paged for must count what happened, not only appear.
    assert_eq!(total(&documents, "ReconcileFailed"), 1.0, "the dead-lettered envelope");
    assert_eq!(total(&documents, "EnvelopesDeadLettered"), 1.0);
    assert_eq!(total(&documents, "ReconcileSettled"), 1.0, "the adjustment with an unknown outcome");
}

#[test]
fn a_malformed_emf_document_is_refused_by_the_check() {
    let missing_unit = r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"CreditsAdmin","Dimensions":[["Function"]],"Metrics":[{"Name":"X"}]}]},"Function":"f","X":1}"#;
    let outcome = std::panic::catch_unwind(|| emf_documents(&[missing_unit.to_owned()]));
    assert!(outcome.is_err(), "a metric without a unit must fail the check");
    let user_dimension = r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"CreditsAdmin","Dimensions":[["User"]],"Metrics":[{"Name":"X","Unit":"Count"}]}]},"User":"user_2abcXYZ","X":1}"#;
    assert!(std::panic::catch_unwind(|| emf_documents(&[user_dimension.to_owned()])).is_err());
}
