//! The seams between the handlers and the outside world. Each port has a
//! production adapter in `adapters/`; the local runner supplies in-process ones.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::budget::Budget;
use crate::domain::ledger::LedgerEntry;
use crate::domain::UsageChanged;

/// Why an adapter call failed, in words safe to log (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<crate::budget::OutOfTime> for StoreError {
    fn from(out_of_time: crate::budget::OutOfTime) -> Self {
        StoreError(format!("{out_of_time} (the invocation's budget ran out)"))
    }
}

/// Where the admin secret JSON lives.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// `Ok(None)` when the secret does not exist or has no value.
    async fn fetch(&self, budget: &Budget) -> Result<Option<String>, StoreError>;
}

/// One request's place in a rate-limit window: which counter it was counted
/// in, and under what limit. An adjustment's claim records it, so
/// reconciliation can tell a claim whose request was refused (and answered
/// 429) from one that was admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionRef {
    pub bucket: String,
    pub window_start: u64,
    pub limit: u32,
    /// The request's own mark in the counter (its Lambda request id).
    pub ticket: String,
}

impl AdmissionRef {
    /// Whether a position in the window is within the limit.
    pub fn admits(&self, position: u32) -> bool {
        position <= self.limit
    }
}

/// Atomic per-window counters.
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Counts one request in `bucket`/`window_start`, in one atomic step, and
    /// returns its position in the window (1 for the first). Positions above
    /// the limit are refusals. With a `ticket`, the position is also stored
    /// under it for [`RateLimitStore::position_of`].
    async fn count(
        &self,
        bucket: &str,
        window_start: u64,
        expires_at: u64,
        ticket: Option<&str>,
        budget: &Budget,
    ) -> Result<u32, StoreError>;

    /// The position stored for `ticket`; `None` when it was never counted
    /// (the limiter was unreachable for that request and let it through).
    async fn position_of(
        &self,
        bucket: &str,
        window_start: u64,
        ticket: &str,
        budget: &Budget,
    ) -> Result<Option<u32>, StoreError>;

    /// Opens the connection the first admission will use (called during init).
    async fn warm_up(&self) {}
}

/// Credentials for one RevenueCat project, read from the admin secret.
#[derive(Clone, PartialEq, Eq)]
pub struct RcCredentials {
    pub api_key: String,
    pub project_id: String,
}

impl std::fmt::Debug for RcCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RcCredentials").field("project_id", &self.project_id).finish_non_exhaustive()
    }
}

/// A project's virtual currency, grants flattened to one entry per product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Currency {
    pub code: String,
    pub name: String,
    pub description: Option<String>,
    pub product_grants: Vec<ProductGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductGrant {
    pub product_id: String,
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub currency_code: String,
    pub name: Option<String>,
    pub balance: i64,
}

/// One virtual-currency transaction, exactly as it is (re)sent to RevenueCat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub customer_id: String,
    pub currency: String,
    pub amount: i64,
    /// The audit reason, shown on the RevenueCat dashboard.
    pub reference: String,
    /// RevenueCat's own `Idempotency-Key`: the same for every retry.
    pub idempotency_key: String,
}

/// RevenueCat failures, classified by what they mean for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcError {
    CustomerNotFound,
    CurrencyNotFound,
    InsufficientBalance,
    /// RevenueCat definitely did not apply the request (a 4xx, or no connection).
    Rejected {
        kind: String,
    },
    /// RevenueCat may or may not have applied it (timeout, 5xx, unreadable
    /// answer, `409 idempotency_error`, `423`).
    OutcomeUnknown {
        kind: String,
    },
}

impl RcError {
    /// RevenueCat's error `type`, or `timeout`/`connect`/`invalid_response`.
    pub fn kind(&self) -> &str {
        match self {
            RcError::CustomerNotFound | RcError::CurrencyNotFound => "resource_missing",
            RcError::InsufficientBalance => "unprocessable_entity_error",
            RcError::Rejected { kind } | RcError::OutcomeUnknown { kind } => kind,
        }
    }
}

#[async_trait]
pub trait RevenueCat: Send + Sync {
    /// Every virtual currency of the project, all pages.
    async fn list_currencies(&self, creds: &RcCredentials, budget: &Budget)
        -> Result<Vec<Currency>, RcError>;
    /// A customer's balances, all pages.
    async fn balances(
        &self,
        creds: &RcCredentials,
        customer_id: &str,
        include_empty: bool,
        budget: &Budget,
    ) -> Result<Vec<Balance>, RcError>;
    /// Applies one transaction and returns the balance of its currency after it.
    async fn create_transaction(
        &self,
        creds: &RcCredentials,
        transaction: &Transaction,
        budget: &Budget,
    ) -> Result<i64, RcError>;

    /// Opens the connection the first call will use (called during init).
    async fn warm_up(&self) {}
}

/// The realtime gateway that relays `usage.changed` to the customer's devices.
#[async_trait]
pub trait Notifier: Send + Sync {
    async fn notify(&self, bearer: &str, envelope: &UsageChanged, budget: &Budget) -> Result<(), StoreError>;
}

impl From<crate::budget::OutOfTime> for RcError {
    /// A call cut off by the budget may have reached RevenueCat.
    fn from(_: crate::budget::OutOfTime) -> Self {
        RcError::OutcomeUnknown { kind: "timeout".into() }
    }
}

impl From<RcError> for crate::domain::ApiError {
    /// The one place RevenueCat failures become caller-visible details (spec §9).
    fn from(error: RcError) -> Self {
        use crate::domain::ApiError;
        match error {
            RcError::CustomerNotFound => ApiError::RcCustomerNotFound,
            RcError::CurrencyNotFound => ApiError::UnknownCurrency,
            RcError::InsufficientBalance => ApiError::InsufficientBalance,
            RcError::Rejected { kind } | RcError::OutcomeUnknown { kind } => ApiError::RcCallFailed(kind),
        }
    }
}

/// A request to own one adjustment (spec §6). The record remembers exactly
/// what is sent to RevenueCat so any later attempt re-sends the same thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClaim {
    /// `client#<key>` for client keys, `auto#<uuid>` for adjustments without one.
    pub record_key: String,
    pub client_key: Option<String>,
    pub fingerprint: String,
    pub transaction: Transaction,
    pub envelope_id: String,
    pub lease_until_ms: u64,
    pub expires_at: u64,
    /// Where this request is counted by the rate limiter.
    pub admission: AdmissionRef,
    /// When the adjustment was asked for (epoch ms): its ledger time.
    pub created_ms: u64,
    /// Who asked for it (spec §4 `actor`), for the ledger.
    pub actor: Option<String>,
}

impl NewClaim {
    /// The claim as its first owner holds it.
    pub fn first_attempt(&self) -> PendingClaim {
        PendingClaim {
            record_key: self.record_key.clone(),
            client_key: self.client_key.clone(),
            transaction: self.transaction.clone(),
            envelope_id: self.envelope_id.clone(),
            lease_until_ms: self.lease_until_ms,
            attempts: 1,
            admission: Some(self.admission.clone()),
            created_ms: self.created_ms,
            actor: self.actor.clone(),
        }
    }
}

/// An adjustment whose outcome is not recorded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingClaim {
    pub record_key: String,
    pub client_key: Option<String>,
    pub transaction: Transaction,
    pub envelope_id: String,
    pub lease_until_ms: u64,
    pub attempts: u32,
    /// Absent on records written before admissions were recorded.
    pub admission: Option<AdmissionRef>,
    pub created_ms: u64,
    pub actor: Option<String>,
}

impl PendingClaim {
    /// The ledger entry of this adjustment in `status`, settled by `origin`.
    pub fn ledger_entry(
        &self,
        status: crate::domain::ledger::EntryStatus,
        origin: crate::domain::ledger::Origin,
        balance_after: Option<i64>,
        rc_error: Option<String>,
    ) -> LedgerEntry {
        LedgerEntry {
            user_id: self.transaction.customer_id.clone(),
            entry_id: self.envelope_id.clone(),
            occurred_at_ms: self.created_ms,
            currency: self.transaction.currency.clone(),
            amount: self.transaction.amount,
            balance_after,
            reason: self.transaction.reference.clone(),
            actor: self.actor.clone(),
            idempotency_key: self.client_key.clone(),
            status,
            origin,
            rc_error,
        }
    }
}

/// A batch of lapsed claims, and the keys of records that could not be read
/// (reported, never allowed to stop the batch).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lapsed {
    pub claims: Vec<PendingClaim>,
    pub unreadable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This caller owns the adjustment and must send `transaction`.
    Claimed(Box<PendingClaim>),
    /// Done before: the stored 200 body.
    Completed { response: String },
    /// Another attempt holds an unexpired lease.
    InProgress { lease_until_ms: u64 },
    /// The key was used for a different adjustment.
    FingerprintMismatch,
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims atomically; a lapsed lease with the same fingerprint is taken
    /// over, keeping the recorded transaction and RevenueCat key. Meeting a
    /// record this very claim wrote (a write whose answer was lost and that
    /// was retried) is `Claimed`, not a conflict.
    async fn claim(&self, claim: &NewClaim, now_ms: u64, budget: &Budget)
        -> Result<ClaimOutcome, StoreError>;
    /// Records the final 200 body for replays and the applied ledger entry,
    /// in one write (adjust's round trips stay three).
    async fn complete(
        &self,
        record_key: &str,
        response: &str,
        entry: &LedgerEntry,
        budget: &Budget,
    ) -> Result<(), StoreError>;
    /// Forgets a claim RevenueCat definitely rejected, so a retry may run.
    async fn release(&self, record_key: &str, budget: &Budget) -> Result<(), StoreError>;
    /// Claims whose lease lapsed without a result, oldest first.
    async fn lapsed(&self, now_ms: u64, limit: usize, budget: &Budget) -> Result<Lapsed, StoreError>;
    /// Extends a lapsed lease if nobody else did first; `false` if we lost the race.
    async fn renew(
        &self,
        claim: &PendingClaim,
        lease_until_ms: u64,
        budget: &Budget,
    ) -> Result<bool, StoreError>;
}

/// One page of a user's ledger, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerPage {
    pub entries: Vec<LedgerEntry>,
    /// Set when more entries follow: the position of the last one here.
    pub last_position: Option<String>,
}

/// The durable history of adjustments (spec §11). Writes are keyed by the
/// adjustment, so whoever settles it writes the same entry, exactly once.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Writes `entry`. `Applied` always wins; `Pending` never replaces a
    /// settled entry; `Rejected` only replaces a `Pending` one (an outright
    /// refusal changed nothing and is not listed).
    async fn record(&self, entry: &LedgerEntry, budget: &Budget) -> Result<(), StoreError>;
    /// Up to `limit` entries of `user_id` older than `after`, newest first.
    async fn page(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: u32,
        budget: &Budget,
    ) -> Result<LedgerPage, StoreError>;
    /// Which of these envelopes the app was not told of: still queued or dead-lettered.
    async fn undelivered(
        &self,
        envelope_ids: &[String],
        budget: &Budget,
    ) -> Result<std::collections::HashSet<String>, StoreError>;
}

/// An envelope waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEnvelope {
    pub envelope: UsageChanged,
    /// Deliveries tried so far (the live one included).
    pub attempts: u32,
    /// Not to be tried again before this (epoch ms).
    pub next_attempt_ms: u64,
}

/// A batch of due envelopes, and the ids of entries that could not be read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DueEnvelopes {
    pub envelopes: Vec<QueuedEnvelope>,
    pub unreadable: Vec<String>,
}

/// Envelopes the gateway did not accept yet (spec §8), each with its own
/// backoff, and a dead letter for those it keeps refusing.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Queues an envelope whose live delivery failed, due at `next_attempt_ms`.
    async fn enqueue(
        &self,
        queued: &QueuedEnvelope,
        expires_at: u64,
        budget: &Budget,
    ) -> Result<(), StoreError>;
    /// Envelopes due at `now_ms`, the longest overdue first.
    async fn due(&self, now_ms: u64, limit: usize, budget: &Budget) -> Result<DueEnvelopes, StoreError>;
    async fn remove(&self, envelope_id: &str, budget: &Budget) -> Result<(), StoreError>;
    /// Records one more failed attempt and when to try next.
    async fn retry_later(&self, queued: &QueuedEnvelope, budget: &Budget) -> Result<(), StoreError>;
    /// Moves an envelope out of the queue for good, kept for a person to see.
    async fn dead_letter(&self, queued: &QueuedEnvelope, budget: &Budget) -> Result<(), StoreError>;
}
