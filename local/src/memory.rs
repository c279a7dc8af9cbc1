//! In-memory stand-ins for the DynamoDB table: the same ports, the same
//! semantics (atomic admissions, conditional claims), no AWS account needed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use credits::domain::UsageChanged;
use credits::ports::{
    ClaimOutcome, IdempotencyStore, NewClaim, Outbox, PendingClaim, RateLimitStore, StoreError,
};

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    counters: HashMap<(String, u64), u32>,
    records: HashMap<String, Record>,
    outbox: BTreeMap<String, UsageChanged>,
}

struct Record {
    fingerprint: String,
    pending: PendingClaim,
    response: Option<String>,
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not wedge the dev server.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl RateLimitStore for MemoryStore {
    async fn try_admit(
        &self,
        bucket: &str,
        window_start: u64,
        limit: u32,
        _: u64,
    ) -> Result<Option<u32>, StoreError> {
        let mut state = self.state();
        state.counters.retain(|(_, start), _| *start >= window_start);
        let count = state.counters.entry((bucket.to_owned(), window_start)).or_default();
        if *count >= limit {
            return Ok(None);
        }
        *count += 1;
        Ok(Some(*count))
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, claim: &NewClaim, now_ms: u64) -> Result<ClaimOutcome, StoreError> {
        let mut state = self.state();
        let Some(existing) = state.records.get_mut(&claim.record_key) else {
            let pending = claim.first_attempt();
            let record =
                Record { fingerprint: claim.fingerprint.clone(), pending: pending.clone(), response: None };
            state.records.insert(claim.record_key.clone(), record);
            return Ok(ClaimOutcome::Claimed(pending));
        };
        if existing.fingerprint != claim.fingerprint {
            return Ok(ClaimOutcome::FingerprintMismatch);
        }
        if let Some(response) = &existing.response {
            return Ok(ClaimOutcome::Completed { response: response.clone() });
        }
        if existing.pending.lease_until_ms > now_ms {
            return Ok(ClaimOutcome::InProgress { lease_until_ms: existing.pending.lease_until_ms });
        }
        existing.pending.lease_until_ms = claim.lease_until_ms;
        existing.pending.attempts += 1;
        Ok(ClaimOutcome::Claimed(existing.pending.clone()))
    }

    async fn complete(&self, record_key: &str, response: &str) -> Result<(), StoreError> {
        if let Some(record) = self.state().records.get_mut(record_key) {
            record.response = Some(response.to_owned());
        }
        Ok(())
    }

    async fn release(&self, record_key: &str) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.records.get(record_key).is_some_and(|r| r.response.is_none()) {
            state.records.remove(record_key);
        }
        Ok(())
    }

    async fn lapsed(&self, now_ms: u64, limit: usize) -> Result<Vec<PendingClaim>, StoreError> {
        let state = self.state();
        let mut lapsed: Vec<PendingClaim> = state
            .records
            .values()
            .filter(|r| r.response.is_none() && r.pending.lease_until_ms < now_ms)
            .map(|r| r.pending.clone())
            .collect();
        lapsed.sort_by_key(|p| p.lease_until_ms);
        lapsed.truncate(limit);
        Ok(lapsed)
    }

    async fn renew(&self, claim: &PendingClaim, lease_until_ms: u64) -> Result<bool, StoreError> {
        let mut state = self.state();
        match state.records.get_mut(&claim.record_key) {
            Some(r) if r.response.is_none() && r.pending.lease_until_ms == claim.lease_until_ms => {
                r.pending.lease_until_ms = lease_until_ms;
                r.pending.attempts += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn enqueue(&self, envelope: &UsageChanged, _: u64) -> Result<(), StoreError> {
        self.state().outbox.insert(envelope.envelope_id.clone(), envelope.clone());
        Ok(())
    }

    async fn queued(&self, limit: usize) -> Result<Vec<UsageChanged>, StoreError> {
        Ok(self.state().outbox.values().take(limit).cloned().collect())
    }

    async fn remove(&self, envelope_id: &str) -> Result<(), StoreError> {
        self.state().outbox.remove(envelope_id);
        Ok(())
    }
}
