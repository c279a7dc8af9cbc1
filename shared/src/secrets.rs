//! The admin secret: parsed, cached per instance, refreshed on a mismatching
//! bearer so a rotated token works at once, and compared in constant time.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
// tokio's clock, so tests can move time without sleeping.
use tokio::time::Instant;

use crate::budget::Budget;
use crate::domain::ApiError;
use crate::ports::{RcCredentials, SecretSource};

/// A wrong token may trigger at most one re-read per this interval per
/// instance, so a caller guessing tokens cannot hammer Secrets Manager.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// The parsed secret value.
#[derive(Clone)]
pub struct AdminSecret {
    admin_token_digest: [u8; 32],
    /// Kept to authenticate our own calls to the gateway.
    admin_token: String,
    pub revenuecat: RcCredentials,
}

impl std::fmt::Debug for AdminSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSecret").field("revenuecat", &self.revenuecat).finish_non_exhaustive()
    }
}

impl AdminSecret {
    pub fn new(admin_token: String, revenuecat: RcCredentials) -> Self {
        Self { admin_token_digest: digest(&admin_token), admin_token, revenuecat }
    }

    /// Parses the JSON secret; `AdminUnconfigured` says which key is missing
    /// (naming only RevenueCat keys, never revealing anything of a value).
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        #[derive(Deserialize)]
        struct Raw {
            admin_secret: Option<String>,
            revenuecat_api_key: Option<String>,
            revenuecat_project_id: Option<String>,
        }
        let raw: Raw = serde_json::from_str(raw).map_err(|_| ApiError::AdminUnconfigured(None))?;
        let present = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let admin = present(raw.admin_secret).ok_or(ApiError::AdminUnconfigured(None))?;
        let api_key =
            present(raw.revenuecat_api_key).ok_or(ApiError::AdminUnconfigured(Some("revenuecat_api_key")))?;
        let project_id = present(raw.revenuecat_project_id)
            .ok_or(ApiError::AdminUnconfigured(Some("revenuecat_project_id")))?;
        Ok(Self::new(admin, RcCredentials { api_key, project_id }))
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Compares fixed-length digests, so neither content nor length leaks through timing.
    pub fn accepts(&self, bearer: &str) -> bool {
        let offered = digest(bearer);
        let difference =
            offered.iter().zip(self.admin_token_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

struct Cached {
    secret: Result<Arc<AdminSecret>, ApiError>,
    /// When `secret` was read.
    fetched_at: Instant,
    /// When a later re-read last failed: remembered, so while Secrets
    /// Manager is throttled or down a flood of requests does not call it again.
    failed_at: Option<Instant>,
}

impl Cached {
    fn last_attempt(&self) -> Instant {
        self.failed_at.map_or(self.fetched_at, |failed| failed.max(self.fetched_at))
    }

    fn failed_recently(&self, within: Duration) -> bool {
        self.failed_at.is_some_and(|failed| failed > self.fetched_at && failed.elapsed() < within)
    }
}

/// A failed read is not retried by `current` for this long.
pub const FAILED_READ_MEMORY: Duration = Duration::from_secs(1);

pub struct SecretCache {
    source: Arc<dyn SecretSource>,
    ttl: Duration,
    state: Mutex<Option<Cached>>,
}

impl SecretCache {
    pub fn new(source: Arc<dyn SecretSource>, ttl: Duration) -> Self {
        Self { source, ttl, state: Mutex::new(None) }
    }

    /// The current secret: from the cache while fresh, else re-read.
    /// A missing/incomplete secret is remembered only briefly, so fixing it
    /// takes effect within seconds.
    pub async fn current(&self, budget: &Budget) -> Result<Arc<AdminSecret>, ApiError> {
        let mut state = self.state.lock().await;
        if let Some(cached) = state.as_ref() {
            let lifetime = match &cached.secret {
                Ok(_) => self.ttl,
                Err(ApiError::SecretStoreUnavailable) => FAILED_READ_MEMORY,
                Err(_) => MIN_REFRESH_INTERVAL.min(self.ttl),
            };
            if cached.fetched_at.elapsed() < lifetime {
                return cached.secret.clone();
            }
            if cached.failed_recently(FAILED_READ_MEMORY) {
                return Err(ApiError::SecretStoreUnavailable);
            }
        }
        self.reload(&mut state, budget).await
    }

    /// Steps 1 and 2 of the pipeline: configuration, then the bearer.
    pub async fn authorize(
        &self,
        bearer: Option<&str>,
        budget: &Budget,
    ) -> Result<Arc<AdminSecret>, ApiError> {
        let secret = self.current(budget).await?;
        let bearer = bearer.ok_or(ApiError::MissingBearer)?;
        if secret.accepts(bearer) {
            return Ok(secret);
        }
        // Maybe the token was rotated since we cached it: re-read once, unless
        // we (or a concurrent request) tried moments ago, successfully or not.
        let mut state = self.state.lock().await;
        let recently_tried =
            state.as_ref().is_some_and(|c| c.last_attempt().elapsed() < MIN_REFRESH_INTERVAL);
        let secret = match state.as_ref() {
            Some(cached) if recently_tried => cached.secret.clone()?,
            // The cached secret is still within its TTL (`current` just said
            // so): when the re-read fails, judge the bearer by it.
            _ => match self.reload(&mut state, budget).await {
                Err(ApiError::SecretStoreUnavailable) => secret,
                other => other?,
            },
        };
        if secret.accepts(bearer) {
            Ok(secret)
        } else {
            Err(ApiError::InvalidAdminSecret)
        }
    }

    async fn reload(
        &self,
        state: &mut Option<Cached>,
        budget: &Budget,
    ) -> Result<Arc<AdminSecret>, ApiError> {
        let secret = match budget.try_run(self.source.fetch(budget)).await {
            Ok(Some(raw)) => AdminSecret::parse(&raw).map(Arc::new),
            Ok(None) => Err(ApiError::AdminUnconfigured(None)),
            Err(error) => {
                tracing::error!(%error, "secret store unavailable");
                let now = Instant::now();
                match state {
                    Some(cached) => cached.failed_at = Some(now),
                    None => {
                        *state = Some(Cached {
                            secret: Err(ApiError::SecretStoreUnavailable),
                            fetched_at: now,
                            failed_at: Some(now),
                        })
                    }
                }
                return Err(ApiError::SecretStoreUnavailable);
            }
        };
        if let Err(error) = &secret {
            tracing::error!(detail = %error.detail(), "admin secret is not usable");
        }
        *state = Some(Cached { secret: secret.clone(), fetched_at: Instant::now(), failed_at: None });
        secret
    }
}

/// Extracts the token of an `Authorization: Bearer <token>` header; the
/// scheme is matched case-insensitively (RFC 9110 §11.1).
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::StoreError;

    #[test]
    fn parse_names_the_missing_revenuecat_key() {
        let ok = r#"{"admin_secret":"a","revenuecat_api_key":"sk_1","revenuecat_project_id":"p"}"#;
        assert!(AdminSecret::parse(ok).is_ok());
        assert_eq!(AdminSecret::parse("not json").unwrap_err(), ApiError::AdminUnconfigured(None));
        assert_eq!(
            AdminSecret::parse(r#"{"revenuecat_api_key":"sk","revenuecat_project_id":"p"}"#).unwrap_err(),
            ApiError::AdminUnconfigured(None)
        );
        assert_eq!(
            AdminSecret::parse(
                r#"{"admin_secret":"a","revenuecat_api_key":" ","revenuecat_project_id":"p"}"#
            )
            .unwrap_err(),
            ApiError::AdminUnconfigured(Some("revenuecat_api_key"))
        );
    }

    #[test]
    fn token_comparison() {
        let secret = AdminSecret::new(
            "adm_token".into(),
            RcCredentials { api_key: "k".into(), project_id: "p".into() },
        );
        assert!(secret.accepts("adm_token"));
        assert!(!secret.accepts("adm_toke"));
        assert!(!secret.accepts(""));
        assert!(!format!("{secret:?}").contains("adm_token"));
    }

    /// Counts reads; stands in for Secrets Manager, which may be down.
    struct CountingSource {
        reads: std::sync::atomic::AtomicUsize,
        value: std::sync::Mutex<String>,
        down: std::sync::atomic::AtomicBool,
    }

    impl CountingSource {
        fn new(value: String) -> Arc<Self> {
            Arc::new(Self { reads: Default::default(), value: value.into(), down: Default::default() })
        }
    }

    #[async_trait::async_trait]
    impl SecretSource for CountingSource {
        async fn fetch(&self, _: &Budget) -> Result<Option<String>, StoreError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError("ThrottlingException".into()));
            }
            Ok(Some(self.value.lock().unwrap().clone()))
        }
    }

    fn budget() -> Budget {
        Budget::lasting(Duration::from_secs(5))
    }

    fn secret_json(token: &str) -> String {
        format!(r#"{{"admin_secret":"{token}","revenuecat_api_key":"sk","revenuecat_project_id":"p"}}"#)
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_tokens_cannot_hammer_the_secret_store() {
        let source = CountingSource::new(secret_json("adm_1"));
        let cache = SecretCache::new(source.clone(), Duration::from_secs(300));
        let reads = || source.reads.load(std::sync::atomic::Ordering::SeqCst);
        assert!(cache.authorize(Some("adm_1"), &budget()).await.is_ok());
        for _ in 0..50 {
            assert_eq!(
                cache.authorize(Some("guess"), &budget()).await.unwrap_err(),
                ApiError::InvalidAdminSecret
            );
        }
        assert_eq!(reads(), 1, "a fresh cache is not re-read for wrong tokens");
        tokio::time::advance(MIN_REFRESH_INTERVAL).await;
        for _ in 0..50 {
            let _ = cache.authorize(Some("guess"), &budget()).await;
        }
        assert_eq!(reads(), 2, "one re-read per interval, however many wrong tokens");
        *source.value.lock().unwrap() = secret_json("adm_2");
        tokio::time::advance(MIN_REFRESH_INTERVAL).await;
        assert!(cache.authorize(Some("adm_2"), &budget()).await.is_ok(), "a rotated token works at once");
        assert_eq!(
            cache.authorize(Some("adm_1"), &budget()).await.unwrap_err(),
            ApiError::InvalidAdminSecret
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_reread_is_remembered_and_wrong_tokens_stay_403() {
        let source = CountingSource::new(secret_json("adm_1"));
        let cache = SecretCache::new(source.clone(), Duration::from_secs(300));
        let reads = || source.reads.load(std::sync::atomic::Ordering::SeqCst);
        assert!(cache.authorize(Some("adm_1"), &budget()).await.is_ok());
        source.down.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::advance(MIN_REFRESH_INTERVAL).await;
        for _ in 0..50 {
            assert_eq!(
                cache.authorize(Some("guess"), &budget()).await.unwrap_err(),
                ApiError::InvalidAdminSecret,
                "the cached secret is within its TTL: a wrong token is a wrong token"
            );
        }
        assert_eq!(reads(), 2, "the failed re-read is remembered, not repeated per request");
        assert!(cache.authorize(Some("adm_1"), &budget()).await.is_ok());
        tokio::time::advance(Duration::from_secs(300)).await;
        for _ in 0..20 {
            assert_eq!(
                cache.authorize(Some("adm_1"), &budget()).await.unwrap_err(),
                ApiError::SecretStoreUnavailable
            );
        }
        assert_eq!(reads(), 3, "after the TTL, one failed read answers 503 for a moment without re-reading");
        tokio::time::advance(FAILED_READ_MEMORY).await;
        source.down.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(cache.authorize(Some("adm_1"), &budget()).await.is_ok(), "recovers once the store answers");
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bEaReR   abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(Some("abc")), None);
        assert_eq!(bearer_token(None), None);
    }
}
