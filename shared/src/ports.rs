//! The seams between the handlers and the outside world. Each port has a
//! production adapter in `adapters/`; the local runner supplies in-process ones.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::UsageChanged;

/// Why an adapter call failed, in words safe to log (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the admin secret JSON lives.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// `Ok(None)` when the secret does not exist or has no value.
    async fn fetch(&self) -> Result<Option<String>, StoreError>;
}

/// Atomic per-window counters.
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Counts one admission in `bucket`/`window_start` unless `limit` was
    /// already reached, in one atomic step. Returns the count after this
    /// admission, or `None` when the window is full.
    async fn try_admit(
        &self,
        bucket: &str,
        window_start: u64,
        limit: u32,
        expires_at: u64,
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
    /// RevenueCat may or may not have applied it (timeout, 5xx, unreadable answer).
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
    async fn list_currencies(&self, creds: &RcCredentials) -> Result<Vec<Currency>, RcError>;
    /// A customer's balances, all pages.
    async fn balances(
        &self,
        creds: &RcCredentials,
        customer_id: &str,
        include_empty: bool,
    ) -> Result<Vec<Balance>, RcError>;
    /// Applies one transaction and returns the balances after it.
    async fn create_transaction(
        &self,
        creds: &RcCredentials,
        transaction: &Transaction,
    ) -> Result<Vec<Balance>, RcError>;

    /// Opens the connection the first call will use (called during init).
    async fn warm_up(&self) {}
}

/// The realtime gateway that relays `usage.changed` to the customer's devices.
#[async_trait]
pub trait Notifier: Send + Sync {
    async fn notify(&self, bearer: &str, envelope: &UsageChanged) -> Result<(), StoreError>;
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This caller owns the adjustment and must send `transaction`.
    Claimed(PendingClaim),
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
    /// over, keeping the recorded transaction and RevenueCat key.
    async fn claim(&self, claim: &NewClaim, now_ms: u64) -> Result<ClaimOutcome, StoreError>;
    /// Records the final 200 body for replays.
    async fn complete(&self, record_key: &str, response: &str) -> Result<(), StoreError>;
    /// Forgets a claim RevenueCat definitely rejected, so a retry may run.
    async fn release(&self, record_key: &str) -> Result<(), StoreError>;
    /// Claims whose lease lapsed without a result, oldest first.
    async fn lapsed(&self, now_ms: u64, limit: usize) -> Result<Vec<PendingClaim>, StoreError>;
    /// Extends a lapsed lease if nobody else did first; `false` if we lost the race.
    async fn renew(&self, claim: &PendingClaim, lease_until_ms: u64) -> Result<bool, StoreError>;
}

/// Envelopes the gateway did not accept yet (spec §8).
#[async_trait]
pub trait Outbox: Send + Sync {
    async fn enqueue(&self, envelope: &UsageChanged, expires_at: u64) -> Result<(), StoreError>;
    async fn queued(&self, limit: usize) -> Result<Vec<UsageChanged>, StoreError>;
    async fn remove(&self, envelope_id: &str) -> Result<(), StoreError>;
}
