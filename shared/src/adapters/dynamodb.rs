//! DynamoDB: rate-limit counters, idempotency records and the envelope
//! outbox in one table keyed by `pk`/`sk`, TTL on `expires_at`.
//!
//! Item layout (also in README "DynamoDB item layout"):
//! - rate-limit counter: `pk = "ratelimit#<function>"`, `sk = "<window start, epoch s>"`,
//!   `n` (N, admissions so far), `expires_at` (N).
//! - adjustment record: `pk = "idem#client#<key>"` or `"idem#auto#<uuid>"`, `sk = "adjustment"`,
//!   `status` (`in_progress` | `completed`), `fingerprint`, `client_key`?, `transaction`
//!   (JSON: exactly what is sent to RevenueCat, with its `Idempotency-Key`), `envelope_id`,
//!   `lease_until` (N, epoch ms), `attempts` (N), `response`? (the 200 body), `expires_at`
//!   (7 days). While in progress it also carries `pending = "pending"`, the hash key of the
//!   sparse GSI `pending-by-lease` (range key `lease_until`) that reconciliation queries.
//! - queued envelope: `pk = "outbox"`, `sk = "<envelope_id>"`, `envelope` (JSON),
//!   `enqueued_at` (N, epoch ms), `expires_at`.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use crate::domain::UsageChanged;
use crate::ports::{
    ClaimOutcome, IdempotencyStore, NewClaim, Outbox, PendingClaim, RateLimitStore, StoreError, Transaction,
};

/// The sparse index of in-progress adjustments, by lease expiry.
pub const PENDING_INDEX: &str = "pending-by-lease";
const RECORD_SK: &str = "adjustment";
const OUTBOX_PK: &str = "outbox";
const IN_PROGRESS: &str = "in_progress";
const COMPLETED: &str = "completed";

#[derive(Clone)]
pub struct DynamoStore {
    pub(crate) client: Client,
    pub(crate) table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }
}

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

#[async_trait]
impl RateLimitStore for DynamoStore {
    /// A read of a key that never exists: cheap, and it leaves a warm
    /// connection in the SDK's pool.
    async fn warm_up(&self) {
        let _ = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s("warmup"))
            .key("sk", s("-"))
            .send()
            .await;
    }

    async fn try_admit(
        &self,
        bucket: &str,
        window_start: u64,
        limit: u32,
        expires_at: u64,
    ) -> Result<Option<u32>, StoreError> {
        // One conditional ADD: DynamoDB serialises writes to an item, so N+k
        // concurrent callers see exactly N successes, with no read-then-write race.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("ratelimit#{bucket}")))
            .key("sk", s(window_start.to_string()))
            .update_expression("ADD #n :one SET expires_at = if_not_exists(expires_at, :expires_at)")
            .condition_expression("attribute_not_exists(#n) OR #n < :limit")
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(limit))
            .expression_attribute_values(":expires_at", n(expires_at))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match result {
            Ok(output) => {
                let count = output
                    .attributes()
                    .and_then(|a| a.get("n"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| StoreError("UpdateItem returned no counter".into()))?;
                Ok(Some(count))
            }
            Err(error)
                if error.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(error) => Err(StoreError(format!("UpdateItem failed: {}", DisplayErrorContext(&error)))),
        }
    }
}

type Item = HashMap<String, AttributeValue>;

fn failed(operation: &str, error: &impl std::error::Error) -> StoreError {
    StoreError(format!("{operation} failed: {}", DisplayErrorContext(error)))
}

fn record_pk(record_key: &str) -> AttributeValue {
    s(format!("idem#{record_key}"))
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn get_n(item: &Item, name: &str) -> Option<u64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

fn pending_from_item(item: &Item) -> Result<PendingClaim, StoreError> {
    let broken = || StoreError("malformed adjustment record".into());
    let record_key = get_s(item, "pk").and_then(|pk| pk.strip_prefix("idem#")).ok_or_else(broken)?;
    let transaction: Transaction =
        serde_json::from_str(get_s(item, "transaction").ok_or_else(broken)?).map_err(|_| broken())?;
    Ok(PendingClaim {
        record_key: record_key.to_owned(),
        client_key: get_s(item, "client_key").map(str::to_owned),
        transaction,
        envelope_id: get_s(item, "envelope_id").ok_or_else(broken)?.to_owned(),
        lease_until_ms: get_n(item, "lease_until").unwrap_or(0),
        attempts: get_n(item, "attempts").unwrap_or(0) as u32,
    })
}

impl DynamoStore {
    /// What to tell a caller whose claim met an existing record.
    async fn resolve_existing(
        &self,
        claim: &NewClaim,
        existing: Item,
        now_ms: u64,
    ) -> Result<ClaimOutcome, StoreError> {
        if get_s(&existing, "fingerprint") != Some(claim.fingerprint.as_str()) {
            return Ok(ClaimOutcome::FingerprintMismatch);
        }
        if get_s(&existing, "status") == Some(COMPLETED) {
            let response = get_s(&existing, "response").unwrap_or_default().to_owned();
            return Ok(ClaimOutcome::Completed { response });
        }
        let pending = pending_from_item(&existing)?;
        if pending.lease_until_ms > now_ms {
            return Ok(ClaimOutcome::InProgress { lease_until_ms: pending.lease_until_ms });
        }
        // The earlier attempt died or timed out: take it over with the same
        // transaction and RevenueCat key, so RevenueCat applies it at most once.
        if self.renew(&pending, claim.lease_until_ms).await? {
            Ok(ClaimOutcome::Claimed(PendingClaim {
                lease_until_ms: claim.lease_until_ms,
                attempts: pending.attempts + 1,
                ..pending
            }))
        } else {
            Ok(ClaimOutcome::InProgress { lease_until_ms: claim.lease_until_ms })
        }
    }

    async fn read_record(&self, record_key: &str) -> Result<Option<Item>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", record_pk(record_key))
            .key("sk", s(RECORD_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed("GetItem", &e))?;
        Ok(output.item)
    }
}

#[async_trait]
impl IdempotencyStore for DynamoStore {
    async fn claim(&self, claim: &NewClaim, now_ms: u64) -> Result<ClaimOutcome, StoreError> {
        let transaction = serde_json::to_string(&claim.transaction).expect("transactions serialise");
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", record_pk(&claim.record_key))
            .item("sk", s(RECORD_SK))
            .item("status", s(IN_PROGRESS))
            .item("pending", s("pending"))
            .item("fingerprint", s(&claim.fingerprint))
            .item("transaction", s(transaction))
            .item("envelope_id", s(&claim.envelope_id))
            .item("lease_until", n(claim.lease_until_ms))
            .item("attempts", n(1))
            .item("expires_at", n(claim.expires_at))
            .condition_expression("attribute_not_exists(pk)")
            // A duplicate learns what it collided with in the same round trip.
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(key) = &claim.client_key {
            put = put.item("client_key", s(key));
        }
        match put.send().await {
            Ok(_) => Ok(ClaimOutcome::Claimed(claim.first_attempt())),
            Err(error) => {
                let returned_item = match error.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(conflict)) => conflict.item.clone(),
                    _ => return Err(failed("PutItem", &error)),
                };
                let existing = match returned_item {
                    Some(item) => item,
                    // Servers that ignore ReturnValuesOnConditionCheckFailure cost one more read.
                    None => match self.read_record(&claim.record_key).await? {
                        Some(item) => item,
                        None => return Ok(ClaimOutcome::InProgress { lease_until_ms: claim.lease_until_ms }),
                    },
                };
                self.resolve_existing(claim, existing, now_ms).await
            }
        }
    }

    async fn complete(&self, record_key: &str, response: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", record_pk(record_key))
            .key("sk", s(RECORD_SK))
            .update_expression("SET #status = :completed, #response = :response REMOVE pending")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#response", "response")
            .expression_attribute_values(":completed", s(COMPLETED))
            .expression_attribute_values(":response", s(response))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failed("UpdateItem", &e))
    }

    async fn release(&self, record_key: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", record_pk(record_key))
            .key("sk", s(RECORD_SK))
            // Never forget a completed adjustment.
            .condition_expression("#status = :in_progress")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                Ok(())
            }
            Err(e) => Err(failed("DeleteItem", &e)),
        }
    }

    async fn lapsed(&self, now_ms: u64, limit: usize) -> Result<Vec<PendingClaim>, StoreError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(PENDING_INDEX)
            .key_condition_expression("pending = :pending AND lease_until < :now")
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":now", n(now_ms))
            .limit(limit as i32)
            .send()
            .await
            .map_err(|e| failed("Query", &e))?;
        output.items().iter().map(pending_from_item).collect()
    }

    async fn renew(&self, claim: &PendingClaim, lease_until_ms: u64) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", record_pk(&claim.record_key))
            .key("sk", s(RECORD_SK))
            .update_expression("SET lease_until = :new_lease ADD attempts :one")
            .condition_expression("#status = :in_progress AND lease_until = :old_lease")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .expression_attribute_values(":old_lease", n(claim.lease_until_ms))
            .expression_attribute_values(":new_lease", n(lease_until_ms))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                Ok(false)
            }
            Err(e) => Err(failed("UpdateItem", &e)),
        }
    }
}

#[async_trait]
impl Outbox for DynamoStore {
    async fn enqueue(&self, envelope: &UsageChanged, expires_at: u64) -> Result<(), StoreError> {
        let now_ms = crate::clock::now_ms();
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(OUTBOX_PK))
            .item("sk", s(&envelope.envelope_id))
            .item("envelope", s(serde_json::to_string(envelope).expect("envelopes serialise")))
            .item("enqueued_at", n(now_ms))
            .item("expires_at", n(expires_at))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failed("PutItem", &e))
    }

    async fn queued(&self, limit: usize) -> Result<Vec<UsageChanged>, StoreError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :outbox")
            .expression_attribute_values(":outbox", s(OUTBOX_PK))
            .consistent_read(true)
            .limit(limit as i32)
            .send()
            .await
            .map_err(|e| failed("Query", &e))?;
        Ok(output
            .items()
            .iter()
            .filter_map(|item| get_s(item, "envelope").and_then(|e| serde_json::from_str(e).ok()))
            .collect())
    }

    async fn remove(&self, envelope_id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(OUTBOX_PK))
            .key("sk", s(envelope_id))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failed("DeleteItem", &e))
    }
}
