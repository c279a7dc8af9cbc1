//! In-memory stand-ins for the DynamoDB table: the same ports, the same
//! semantics (atomic admissions, conditional claims, the ledger's write
//! rules), no AWS account needed. `credits-local` runs on it, and tests
//! build their doubles on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::budget::Budget;
use crate::domain::ledger::{EntryStatus, LedgerEntry};
use crate::ports::{
    ClaimOutcome, DueEnvelopes, IdempotencyStore, Lapsed, Ledger, LedgerPage, NewClaim, Outbox, PendingClaim,
    QueuedEnvelope, RateLimitStore, StoreError,
};
use async_trait::async_trait;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    counters: HashMap<(String, u64), Counter>,
    records: HashMap<String, Record>,
    outbox: BTreeMap<String, QueuedEnvelope>,
    dead_letters: BTreeMap<String, QueuedEnvelope>,
    /// Per user, by position (oldest first).
    ledger: HashMap<String, BTreeMap<String, LedgerEntry>>,
}

#[derive(Default)]
struct Counter {
    count: u32,
    tickets: HashMap<String, u32>,
}

struct Record {
    fingerprint: String,
    pending: PendingClaim,
    response: Option<String>,
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not wedge the dev server or the next test.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl RateLimitStore for MemoryStore {
    async fn count(
        &self,
        bucket: &str,
        window_start: u64,
        _: u64,
        ticket: Option<&str>,
        _: &Budget,
    ) -> Result<u32, StoreError> {
        let mut state = self.state();
        // Old windows matter only to reconciliation, which runs within minutes here.
        state.counters.retain(|(_, start), _| *start + 3600 >= window_start);
        let counter = state.counters.entry((bucket.to_owned(), window_start)).or_default();
        counter.count += 1;
        let position = counter.count;
        if let Some(ticket) = ticket {
            counter.tickets.insert(ticket.to_owned(), position);
        }
        Ok(position)
    }

    async fn position_of(
        &self,
        bucket: &str,
        window_start: u64,
        ticket: &str,
        _: &Budget,
    ) -> Result<Option<u32>, StoreError> {
        let state = self.state();
        Ok(state
            .counters
            .get(&(bucket.to_owned(), window_start))
            .and_then(|c| c.tickets.get(ticket).copied()))
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, claim: &NewClaim, now_ms: u64, _: &Budget) -> Result<ClaimOutcome, StoreError> {
        let mut state = self.state();
        let Some(existing) = state.records.get_mut(&claim.record_key) else {
            let pending = claim.first_attempt();
            let record =
                Record { fingerprint: claim.fingerprint.clone(), pending: pending.clone(), response: None };
            state.records.insert(claim.record_key.clone(), record);
            return Ok(ClaimOutcome::Claimed(Box::new(pending)));
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
        Ok(ClaimOutcome::Claimed(Box::new(existing.pending.clone())))
    }

    async fn complete(
        &self,
        record_key: &str,
        response: &str,
        entry: &LedgerEntry,
        _: &Budget,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        if let Some(record) = state.records.get_mut(record_key) {
            record.response = Some(response.to_owned());
        }
        state.write_entry(entry);
        Ok(())
    }

    async fn release(&self, record_key: &str, _: &Budget) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.records.get(record_key).is_some_and(|r| r.response.is_none()) {
            state.records.remove(record_key);
        }
        Ok(())
    }

    async fn lapsed(&self, now_ms: u64, limit: usize, _: &Budget) -> Result<Lapsed, StoreError> {
        let state = self.state();
        let mut lapsed: Vec<PendingClaim> = state
            .records
            .values()
            .filter(|r| r.response.is_none() && r.pending.lease_until_ms < now_ms)
            .map(|r| r.pending.clone())
            .collect();
        lapsed.sort_by_key(|p| p.lease_until_ms);
        lapsed.truncate(limit);
        Ok(Lapsed { claims: lapsed, unreadable: Vec::new() })
    }

    async fn renew(&self, claim: &PendingClaim, lease_until_ms: u64, _: &Budget) -> Result<bool, StoreError> {
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

impl State {
    /// The same rules as the DynamoDB conditional writes (see `Ledger::record`).
    fn write_entry(&mut self, entry: &LedgerEntry) {
        let entries = self.ledger.entry(entry.user_id.clone()).or_default();
        let current = entries.get(&entry.position()).map(|e| e.status);
        let replace = match entry.status {
            EntryStatus::Applied => true,
            EntryStatus::Pending => matches!(current, None | Some(EntryStatus::Pending)),
            EntryStatus::Rejected => current == Some(EntryStatus::Pending),
        };
        if replace {
            entries.insert(entry.position(), entry.clone());
        }
    }
}

#[async_trait]
impl Ledger for MemoryStore {
    async fn record(&self, entry: &LedgerEntry, _: &Budget) -> Result<(), StoreError> {
        self.state().write_entry(entry);
        Ok(())
    }

    async fn page(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: u32,
        _: &Budget,
    ) -> Result<LedgerPage, StoreError> {
        let state = self.state();
        let Some(entries) = state.ledger.get(user_id) else { return Ok(LedgerPage::default()) };
        let mut newest_first =
            entries.iter().rev().filter(|(position, _)| after.is_none_or(|a| position.as_str() < a));
        let page: Vec<LedgerEntry> =
            newest_first.by_ref().take(limit as usize).map(|(_, e)| e.clone()).collect();
        let more = newest_first.next().is_some();
        let last_position = more.then(|| page.last().map(LedgerEntry::position)).flatten();
        Ok(LedgerPage { entries: page, last_position })
    }

    async fn undelivered(
        &self,
        envelope_ids: &[String],
        _: &Budget,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let state = self.state();
        Ok(envelope_ids
            .iter()
            .filter(|id| state.outbox.contains_key(*id) || state.dead_letters.contains_key(*id))
            .cloned()
            .collect())
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn enqueue(&self, queued: &QueuedEnvelope, _: u64, _: &Budget) -> Result<(), StoreError> {
        self.state().outbox.insert(queued.envelope.envelope_id.clone(), queued.clone());
        Ok(())
    }

    async fn due(&self, now_ms: u64, limit: usize, _: &Budget) -> Result<DueEnvelopes, StoreError> {
        let mut due: Vec<QueuedEnvelope> =
            self.state().outbox.values().filter(|q| q.next_attempt_ms < now_ms).cloned().collect();
        due.sort_by_key(|q| q.next_attempt_ms);
        due.truncate(limit);
        Ok(DueEnvelopes { envelopes: due, unreadable: Vec::new() })
    }

    async fn remove(&self, envelope_id: &str, _: &Budget) -> Result<(), StoreError> {
        self.state().outbox.remove(envelope_id);
        Ok(())
    }

    async fn retry_later(&self, queued: &QueuedEnvelope, _: &Budget) -> Result<(), StoreError> {
        if let Some(entry) = self.state().outbox.get_mut(&queued.envelope.envelope_id) {
            *entry = queued.clone();
        }
        Ok(())
    }

    async fn dead_letter(&self, queued: &QueuedEnvelope, _: &Budget) -> Result<(), StoreError> {
        let mut state = self.state();
        state.outbox.remove(&queued.envelope.envelope_id);
        state.dead_letters.insert(queued.envelope.envelope_id.clone(), queued.clone());
        Ok(())
    }
}
