//! DynamoDB: rate-limit counters, idempotency records and the envelope
//! outbox in one table keyed by `pk`/`sk`, TTL on `expires_at`.
//!
//! Item layout (also in README "DynamoDB item layout"):
//! - rate-limit counter: `pk = "ratelimit#<function>"`, `sk = "<window start, epoch s>"`,
//!   `n` (N, requests counted so far; those past the limit were refused), `expires_at` (N),
//!   and for each adjustment `t#<request id>` (N, its position in the window).
//! - adjustment record: `pk = "idem#client#<key>"` or `"idem#auto#<uuid>"`, `sk = "adjustment"`,
//!   `status` (`in_progress` | `completed`), `fingerprint`, `client_key`?, `transaction`
//!   (JSON: exactly what is sent to RevenueCat, with its `Idempotency-Key`), `envelope_id`,
//!   `lease_until` (N, epoch ms), `attempts` (N), `admission` (JSON: the rate-limit counter
//!   and ticket its request was counted under), `response`? (the 200 body), `expires_at`
//!   (7 days). While in progress it also carries `pending = "pending"`, the hash key of the
//!   sparse GSI `pending-by-lease` (range key `lease_until`) that reconciliation queries.
//! - queued envelope: `pk = "outbox"`, `sk = "<envelope_id>"`, `envelope` (JSON),
//!   `attempts` (N), `enqueued_at` (N, epoch ms), `expires_at`, and `pending = "outbox"` with
//!   `lease_until` = its next attempt (epoch ms), so the same sparse GSI lists due envelopes
//!   in the order they fell due.
//! - ledger entry: `pk = "ledger#<user_id>"`, `sk = "<occurred_at, epoch ms, 13 digits>#<entry_id>"`,
//!   `entry` (JSON), `status` (`applied` | `pending` | `rejected`), `expires_at` only when
//!   `LEDGER_RETENTION_DAYS` is set.
//! - dead letter: `pk = "outbox-dead"`, `sk = "<envelope_id>"`, `envelope`, `attempts`,
//!   `dead_at` (N, epoch ms), `expires_at`: envelopes the gateway kept refusing.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, ReturnValue, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;

use crate::adapters::sdk;
use crate::budget::Budget;
use crate::domain::ledger::{EntryStatus, LedgerEntry};
use crate::domain::UsageChanged;
use crate::ports::{
    AdmissionRef, ClaimOutcome, DueEnvelopes, IdempotencyStore, Lapsed, Ledger, LedgerPage, NewClaim, Outbox,
    PendingClaim, QueuedEnvelope, RateLimitStore, StoreError, Transaction,
};

/// The sparse index of work that falls due: in-progress adjustments by lease
/// expiry (`pending = "pending"`) and queued envelopes by next attempt
/// (`pending = "outbox"`).
pub const PENDING_INDEX: &str = "pending-by-lease";
const RECORD_SK: &str = "adjustment";
const OUTBOX_PK: &str = "outbox";
const DEAD_LETTER_PK: &str = "outbox-dead";
const IN_PROGRESS: &str = "in_progress";
const COMPLETED: &str = "completed";

#[derive(Clone)]
pub struct DynamoStore {
    pub(crate) client: Client,
    pub(crate) table: String,
    /// `LEDGER_RETENTION_DAYS`: entries get a TTL only when set.
    ledger_retention: Option<std::time::Duration>,
}

impl DynamoStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table, ledger_retention: None }
    }

    pub fn with_ledger_retention(mut self, retention: Option<std::time::Duration>) -> Self {
        self.ledger_retention = retention;
        self
    }

    fn ledger_item(&self, entry: &LedgerEntry) -> Item {
        let mut item = HashMap::from([
            ("pk".to_owned(), ledger_pk(&entry.user_id)),
            ("sk".to_owned(), s(entry.position())),
            ("entry".to_owned(), s(serde_json::to_string(entry).expect("entries serialise"))),
            ("status".to_owned(), s(entry.status.as_str())),
        ]);
        if let Some(retention) = self.ledger_retention {
            item.insert("expires_at".to_owned(), n(entry.occurred_at_ms / 1000 + retention.as_secs()));
        }
        item
    }
}

fn ledger_pk(user_id: &str) -> AttributeValue {
    s(format!("ledger#{user_id}"))
}

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The per-call override that bounds one operation by the invocation's budget.
fn within(budget: &Budget, operation: &str) -> Result<aws_sdk_dynamodb::config::Builder, StoreError> {
    Ok(aws_sdk_dynamodb::Config::builder().timeout_config(sdk::timeouts(budget, operation)?))
}

fn counter_key(bucket: &str) -> AttributeValue {
    s(format!("ratelimit#{bucket}"))
}

fn ticket_attribute(ticket: &str) -> String {
    format!("t#{ticket}")
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

    async fn count(
        &self,
        bucket: &str,
        window_start: u64,
        expires_at: u64,
        ticket: Option<&str>,
        budget: &Budget,
    ) -> Result<u32, StoreError> {
        // One update: DynamoDB serialises writes to an item, so N+k
        // concurrent callers get the positions 1..=N+k exactly once each.
        // Every SET reads the item as it was before this update, so the
        // ticket gets the same value as the new `n`.
        let mut expression = "SET #n = if_not_exists(#n, :zero) + :one, \
                              expires_at = if_not_exists(expires_at, :expires_at)"
            .to_owned();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", counter_key(bucket))
            .key("sk", s(window_start.to_string()))
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":expires_at", n(expires_at))
            .return_values(ReturnValue::UpdatedNew);
        if let Some(ticket) = ticket {
            expression.push_str(", #t = if_not_exists(#n, :zero) + :one");
            update = update.expression_attribute_names("#t", ticket_attribute(ticket));
        }
        let output = update
            .update_expression(expression)
            .customize()
            .config_override(within(budget, "UpdateItem")?)
            .send()
            .await
            .map_err(|e| failed("UpdateItem", &e))?;
        output
            .attributes()
            .and_then(|a| a.get("n"))
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| StoreError("UpdateItem returned no counter".into()))
    }

    async fn position_of(
        &self,
        bucket: &str,
        window_start: u64,
        ticket: &str,
        budget: &Budget,
    ) -> Result<Option<u32>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", counter_key(bucket))
            .key("sk", s(window_start.to_string()))
            .projection_expression("#t")
            .expression_attribute_names("#t", ticket_attribute(ticket))
            .consistent_read(true)
            .customize()
            .config_override(within(budget, "GetItem")?)
            .send()
            .await
            .map_err(|e| failed("GetItem", &e))?;
        Ok(output.item.as_ref().and_then(|item| get_n(item, &ticket_attribute(ticket))).map(|p| p as u32))
    }
}

#[async_trait]
impl Ledger for DynamoStore {
    async fn record(&self, entry: &LedgerEntry, budget: &Budget) -> Result<(), StoreError> {
        let mut put = self.client.put_item().table_name(&self.table).set_item(Some(self.ledger_item(entry)));
        put = match entry.status {
            EntryStatus::Applied => put,
            EntryStatus::Pending => {
                put.condition_expression("attribute_not_exists(pk) OR #status = :pending")
            }
            EntryStatus::Rejected => put.condition_expression("#status = :pending"),
        };
        if entry.status != EntryStatus::Applied {
            put = put
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":pending", s(EntryStatus::Pending.as_str()));
        }
        match put.customize().config_override(within(budget, "PutItem")?).send().await {
            Ok(_) => Ok(()),
            // Settled meanwhile (or an outright refusal with nothing pending): nothing to change.
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(failed("PutItem", &e)),
        }
    }

    async fn page(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: u32,
        budget: &Budget,
    ) -> Result<LedgerPage, StoreError> {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .expression_attribute_values(":pk", ledger_pk(user_id))
            .scan_index_forward(false)
            // One more than asked tells whether another page follows.
            .limit(limit as i32 + 1);
        query = match after {
            Some(position) => query
                .key_condition_expression("pk = :pk AND sk < :after")
                .expression_attribute_values(":after", s(position)),
            None => query.key_condition_expression("pk = :pk"),
        };
        let output = query
            .customize()
            .config_override(within(budget, "Query")?)
            .send()
            .await
            .map_err(|e| failed("Query", &e))?;
        let mut entries = Vec::new();
        for item in output.items() {
            let entry = get_s(item, "entry")
                .and_then(|e| serde_json::from_str::<LedgerEntry>(e).ok())
                .ok_or_else(|| StoreError(format!("unreadable ledger entry {:?}", get_s(item, "sk"))))?;
            entries.push(entry);
        }
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        let last_position = more.then(|| entries.last().map(LedgerEntry::position)).flatten();
        Ok(LedgerPage { entries, last_position })
    }

    async fn undelivered(
        &self,
        envelope_ids: &[String],
        budget: &Budget,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let keys: Vec<Item> = envelope_ids
            .iter()
            .flat_map(|id| {
                [OUTBOX_PK, DEAD_LETTER_PK]
                    .map(|pk| HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(id))]))
            })
            .collect();
        // A page holds at most 100 entries: at most two batches of 100 keys, read side by side.
        let mut batches = keys.chunks(100);
        let (first, second) = tokio::join!(
            self.get_batch(batches.next().unwrap_or_default(), budget),
            self.get_batch(batches.next().unwrap_or_default(), budget)
        );
        let mut undelivered = first?;
        undelivered.extend(second?);
        for rest in batches {
            undelivered.extend(self.get_batch(rest, budget).await?);
        }
        Ok(undelivered)
    }
}

impl DynamoStore {
    /// The `sk` (envelope id) of each of `keys` that exists.
    async fn get_batch(
        &self,
        keys: &[Item],
        budget: &Budget,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut found = std::collections::HashSet::new();
        let mut pending = keys.to_vec();
        // Unprocessed keys (throttling) are asked again while the budget lasts.
        while !pending.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(pending))
                .projection_expression("sk")
                .consistent_read(true)
                .build()
                .map_err(|e| StoreError(format!("BatchGetItem request: {e}")))?;
            let output = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .customize()
                .config_override(within(budget, "BatchGetItem")?)
                .send()
                .await
                .map_err(|e| failed("BatchGetItem", &e))?;
            for item in output.responses().and_then(|r| r.get(&self.table)).into_iter().flatten() {
                if let Some(sk) = get_s(item, "sk") {
                    found.insert(sk.to_owned());
                }
            }
            pending = output
                .unprocessed_keys()
                .and_then(|u| u.get(&self.table))
                .map(|k| k.keys().to_vec())
                .unwrap_or_default();
        }
        Ok(found)
    }
}

type Item = HashMap<String, AttributeValue>;

fn failed(operation: &str, error: &impl std::error::Error) -> StoreError {
    StoreError(format!("{operation} failed: {}", DisplayErrorContext(error)))
}

fn is_condition_failure<E, R>(error: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    error.as_service_error().and_then(|e| e.code()) == Some("ConditionalCheckFailedException")
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

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAdmission {
    bucket: String,
    window_start: u64,
    limit: u32,
    ticket: String,
}

fn pending_from_item(item: &Item) -> Result<PendingClaim, StoreError> {
    let record_key = get_s(item, "pk").and_then(|pk| pk.strip_prefix("idem#")).unwrap_or("?");
    let broken = |what: &str| StoreError(format!("adjustment record {record_key}: {what}"));
    if record_key == "?" {
        return Err(broken("no record key"));
    }
    let transaction: Transaction =
        serde_json::from_str(get_s(item, "transaction").ok_or_else(|| broken("no transaction"))?)
            .map_err(|e| broken(&format!("unreadable transaction: {e}")))?;
    let admission =
        get_s(item, "admission").and_then(|a| serde_json::from_str::<StoredAdmission>(a).ok()).map(|a| {
            AdmissionRef { bucket: a.bucket, window_start: a.window_start, limit: a.limit, ticket: a.ticket }
        });
    Ok(PendingClaim {
        record_key: record_key.to_owned(),
        client_key: get_s(item, "client_key").map(str::to_owned),
        transaction,
        envelope_id: get_s(item, "envelope_id").ok_or_else(|| broken("no envelope_id"))?.to_owned(),
        lease_until_ms: get_n(item, "lease_until").unwrap_or(0),
        attempts: get_n(item, "attempts").unwrap_or(0) as u32,
        admission,
        created_ms: get_n(item, "created_at").unwrap_or(0),
        actor: get_s(item, "actor").map(str::to_owned),
    })
}

impl DynamoStore {
    /// What to tell a caller whose claim met an existing record.
    async fn resolve_existing(
        &self,
        claim: &NewClaim,
        existing: Item,
        now_ms: u64,
        budget: &Budget,
    ) -> Result<ClaimOutcome, StoreError> {
        if get_s(&existing, "fingerprint") != Some(claim.fingerprint.as_str()) {
            return Ok(ClaimOutcome::FingerprintMismatch);
        }
        if get_s(&existing, "status") == Some(COMPLETED) {
            let response = get_s(&existing, "response").unwrap_or_default().to_owned();
            return Ok(ClaimOutcome::Completed { response });
        }
        let pending = pending_from_item(&existing)?;
        // Our own write, applied although its answer was lost and the SDK
        // retried it: the fresh RevenueCat key is unique to this claim.
        if pending.transaction.idempotency_key == claim.transaction.idempotency_key {
            return Ok(ClaimOutcome::Claimed(Box::new(claim.first_attempt())));
        }
        if pending.lease_until_ms > now_ms {
            return Ok(ClaimOutcome::InProgress { lease_until_ms: pending.lease_until_ms });
        }
        // The earlier attempt died or timed out: take it over with the same
        // transaction and RevenueCat key, so RevenueCat applies it at most once.
        if self.renew(&pending, claim.lease_until_ms, budget).await? {
            Ok(ClaimOutcome::Claimed(Box::new(PendingClaim {
                lease_until_ms: claim.lease_until_ms,
                attempts: pending.attempts + 1,
                ..pending
            })))
        } else {
            Ok(ClaimOutcome::InProgress { lease_until_ms: claim.lease_until_ms })
        }
    }

    async fn read_record(&self, record_key: &str, budget: &Budget) -> Result<Option<Item>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", record_pk(record_key))
            .key("sk", s(RECORD_SK))
            .consistent_read(true)
            .customize()
            .config_override(within(budget, "GetItem")?)
            .send()
            .await
            .map_err(|e| failed("GetItem", &e))?;
        Ok(output.item)
    }

    /// Items of the sparse due-work index under `kind` that fell due before `now_ms`.
    async fn due_items(
        &self,
        kind: &str,
        now_ms: u64,
        limit: usize,
        budget: &Budget,
    ) -> Result<Vec<Item>, StoreError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(PENDING_INDEX)
            .key_condition_expression("pending = :kind AND lease_until < :now")
            .expression_attribute_values(":kind", s(kind))
            .expression_attribute_values(":now", n(now_ms))
            .limit(limit as i32)
            .customize()
            .config_override(within(budget, "Query")?)
            .send()
            .await
            .map_err(|e| failed("Query", &e))?;
        Ok(output.items.unwrap_or_default())
    }
}

#[async_trait]
impl IdempotencyStore for DynamoStore {
    async fn claim(
        &self,
        claim: &NewClaim,
        now_ms: u64,
        budget: &Budget,
    ) -> Result<ClaimOutcome, StoreError> {
        let transaction = serde_json::to_string(&claim.transaction).expect("transactions serialise");
        let admission = StoredAdmission {
            bucket: claim.admission.bucket.clone(),
            window_start: claim.admission.window_start,
            limit: claim.admission.limit,
            ticket: claim.admission.ticket.clone(),
        };
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
            .item("admission", s(serde_json::to_string(&admission).expect("admissions serialise")))
            .item("created_at", n(claim.created_ms))
            .item("expires_at", n(claim.expires_at))
            .condition_expression("attribute_not_exists(pk)")
            // A duplicate learns what it collided with in the same round trip.
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(key) = &claim.client_key {
            put = put.item("client_key", s(key));
        }
        if let Some(actor) = &claim.actor {
            put = put.item("actor", s(actor));
        }
        match put.customize().config_override(within(budget, "PutItem")?).send().await {
            Ok(_) => Ok(ClaimOutcome::Claimed(Box::new(claim.first_attempt()))),
            Err(error) => {
                let returned_item = match error.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(conflict)) => conflict.item.clone(),
                    _ => return Err(failed("PutItem", &error)),
                };
                let existing = match returned_item {
                    Some(item) => item,
                    // Servers that ignore ReturnValuesOnConditionCheckFailure cost one more read.
                    None => match self.read_record(&claim.record_key, budget).await? {
                        Some(item) => item,
                        None => return Ok(ClaimOutcome::InProgress { lease_until_ms: claim.lease_until_ms }),
                    },
                };
                self.resolve_existing(claim, existing, now_ms, budget).await
            }
        }
    }

    async fn complete(
        &self,
        record_key: &str,
        response: &str,
        entry: &LedgerEntry,
        budget: &Budget,
    ) -> Result<(), StoreError> {
        let built =
            |e: aws_sdk_dynamodb::error::BuildError| StoreError(format!("TransactWriteItems request: {e}"));
        let record = Update::builder()
            .table_name(&self.table)
            .key("pk", record_pk(record_key))
            .key("sk", s(RECORD_SK))
            .update_expression("SET #status = :completed, #response = :response REMOVE pending")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#response", "response")
            .expression_attribute_values(":completed", s(COMPLETED))
            .expression_attribute_values(":response", s(response))
            .build()
            .map_err(built)?;
        // Applied always wins, so a pending entry of the same adjustment is replaced.
        let ledger = Put::builder()
            .table_name(&self.table)
            .set_item(Some(self.ledger_item(entry)))
            .build()
            .map_err(built)?;
        self.client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(record).build())
            .transact_items(TransactWriteItem::builder().put(ledger).build())
            .customize()
            .config_override(within(budget, "TransactWriteItems")?)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failed("TransactWriteItems", &e))
    }

    async fn release(&self, record_key: &str, budget: &Budget) -> Result<(), StoreError> {
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
            .customize()
            .config_override(within(budget, "DeleteItem")?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(failed("DeleteItem", &e)),
        }
    }

    async fn lapsed(&self, now_ms: u64, limit: usize, budget: &Budget) -> Result<Lapsed, StoreError> {
        let mut lapsed = Lapsed::default();
        for item in self.due_items("pending", now_ms, limit, budget).await? {
            match pending_from_item(&item) {
                Ok(claim) => lapsed.claims.push(claim),
                Err(error) => lapsed.unreadable.push(error.0),
            }
        }
        Ok(lapsed)
    }

    async fn renew(
        &self,
        claim: &PendingClaim,
        lease_until_ms: u64,
        budget: &Budget,
    ) -> Result<bool, StoreError> {
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
            .customize()
            .config_override(within(budget, "UpdateItem")?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(failed("UpdateItem", &e)),
        }
    }
}

fn envelope_json(envelope: &UsageChanged) -> String {
    serde_json::to_string(envelope).expect("envelopes serialise")
}

fn queued_from_item(item: &Item) -> Result<QueuedEnvelope, String> {
    let id = get_s(item, "sk").unwrap_or("?");
    let envelope = get_s(item, "envelope").ok_or_else(|| format!("queued envelope {id}: no envelope"))?;
    let envelope: UsageChanged =
        serde_json::from_str(envelope).map_err(|e| format!("queued envelope {id}: unreadable: {e}"))?;
    Ok(QueuedEnvelope {
        envelope,
        attempts: get_n(item, "attempts").unwrap_or(1) as u32,
        next_attempt_ms: get_n(item, "lease_until").unwrap_or(0),
    })
}

#[async_trait]
impl Outbox for DynamoStore {
    async fn enqueue(
        &self,
        queued: &QueuedEnvelope,
        expires_at: u64,
        budget: &Budget,
    ) -> Result<(), StoreError> {
        let now_ms = crate::clock::now_ms();
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(OUTBOX_PK))
            .item("sk", s(&queued.envelope.envelope_id))
            .item("envelope", s(envelope_json(&queued.envelope)))
            .item("attempts", n(queued.attempts))
            .item("pending", s(OUTBOX_PK))
            .item("lease_until", n(queued.next_attempt_ms))
            .item("enqueued_at", n(now_ms))
            .item("expires_at", n(expires_at))
            .customize()
            .config_override(within(budget, "PutItem")?)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failed("PutItem", &e))
    }

    async fn due(&self, now_ms: u64, limit: usize, budget: &Budget) -> Result<DueEnvelopes, StoreError> {
        let mut due = DueEnvelopes::default();
        for item in self.due_items(OUTBOX_PK, now_ms, limit, budget).await? {
            match queued_from_item(&item) {
                Ok(queued) => due.envelopes.push(queued),
                Err(error) => due.unreadable.push(error),
            }
        }
        Ok(due)
    }

    async fn remove(&self, envelope_id: &str, budget: &Budget) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(OUTBOX_PK))
            .key("sk", s(envelope_id))
            .customize()
            .config_override(within(budget, "DeleteItem")?)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failed("DeleteItem", &e))
    }

    async fn retry_later(&self, queued: &QueuedEnvelope, budget: &Budget) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(OUTBOX_PK))
            .key("sk", s(&queued.envelope.envelope_id))
            .update_expression("SET attempts = :attempts, lease_until = :next")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":attempts", n(queued.attempts))
            .expression_attribute_values(":next", n(queued.next_attempt_ms))
            .customize()
            .config_override(within(budget, "UpdateItem")?)
            .send()
            .await;
        match result {
            // Delivered and removed meanwhile by a concurrent pass.
            Err(e) if is_condition_failure(&e) => Ok(()),
            other => other.map(|_| ()).map_err(|e| failed("UpdateItem", &e)),
        }
    }

    async fn dead_letter(&self, queued: &QueuedEnvelope, budget: &Budget) -> Result<(), StoreError> {
        let expires_at = crate::clock::now_secs() + crate::handlers::adjust::RECORD_TTL.as_secs();
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(DEAD_LETTER_PK))
            .item("sk", s(&queued.envelope.envelope_id))
            .item("envelope", s(envelope_json(&queued.envelope)))
            .item("attempts", n(queued.attempts))
            .item("dead_at", n(crate::clock::now_ms()))
            .item("expires_at", n(expires_at))
            .customize()
            .config_override(within(budget, "PutItem")?)
            .send()
            .await
            .map_err(|e| failed("PutItem", &e))?;
        self.remove(&queued.envelope.envelope_id, budget).await
    }
}
