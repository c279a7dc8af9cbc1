//! DynamoDB: rate-limit counters (and, in later modules, idempotency records
//! and the envelope outbox) in one table keyed by `pk`/`sk`, TTL on `expires_at`.
//!
//! Item layout (also in README "DynamoDB item layout"):
//! - rate-limit counter: `pk = "ratelimit#<function>"`, `sk = "<window start, epoch s>"`,
//!   `n` (N, admissions so far), `expires_at` (N).

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;

use crate::ports::{RateLimitStore, StoreError};

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
            .update_expression(
                "ADD #n :one SET expires_at = if_not_exists(expires_at, :expires_at)",
            )
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
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(error) => Err(StoreError(format!(
                "UpdateItem failed: {}",
                DisplayErrorContext(&error)
            ))),
        }
    }
}
