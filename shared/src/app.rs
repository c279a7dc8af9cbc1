//! Wiring: one `App` per Lambda instance, built once during init and shared
//! by every request that instance serves.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Mutex;

use crate::adapters::dynamodb::DynamoStore;
use crate::adapters::gateway::{GatewayHttp, NoGateway};
use crate::adapters::revenuecat::RevenueCatHttp;
use crate::adapters::sdk;
use crate::adapters::secrets_manager::{MissingSecret, SecretsManagerSource};
use crate::budget::Budget;
use crate::config::{Config, Function};
use crate::domain::ledger::LedgerEntry;
use crate::domain::rate_limit::{Admission, MinuteWindow};
use crate::ports::{
    AdmissionRef, ClaimOutcome, Currency, DueEnvelopes, IdempotencyStore, Lapsed, Ledger, LedgerPage,
    NewClaim, Notifier, Outbox, PendingClaim, QueuedEnvelope, RateLimitStore, RcCredentials, RcError,
    RevenueCat, SecretSource, StoreError,
};
use crate::secrets::SecretCache;

/// The currency list changes rarely; one read a minute per instance is plenty.
pub const CURRENCY_CACHE_TTL: Duration = Duration::from_secs(60);

/// The adapters an `App` talks to; swapping them is how the local runner and
/// tests reuse the handlers unchanged.
pub struct Adapters {
    pub secrets: Arc<dyn SecretSource>,
    pub rate_limits: Arc<dyn RateLimitStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub outbox: Arc<dyn Outbox>,
    pub ledger: Arc<dyn Ledger>,
    pub revenuecat: Arc<dyn RevenueCat>,
    pub notifier: Arc<dyn Notifier>,
}

pub struct App {
    pub config: Config,
    pub secrets: SecretCache,
    pub rate_limits: Arc<dyn RateLimitStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub outbox: Arc<dyn Outbox>,
    pub ledger: Arc<dyn Ledger>,
    pub revenuecat: Arc<dyn RevenueCat>,
    pub notifier: Arc<dyn Notifier>,
    currencies: Mutex<Option<CachedCurrencies>>,
}

struct CachedCurrencies {
    project_id: String,
    fetched_at: Instant,
    currencies: Arc<Vec<Currency>>,
}

impl App {
    pub fn new(config: Config, adapters: Adapters) -> Arc<Self> {
        Arc::new(Self {
            secrets: SecretCache::new(adapters.secrets, config.secret_ttl),
            rate_limits: adapters.rate_limits,
            idempotency: adapters.idempotency,
            outbox: adapters.outbox,
            ledger: adapters.ledger,
            revenuecat: adapters.revenuecat,
            notifier: adapters.notifier,
            currencies: Mutex::new(None),
            config,
        })
    }

    /// Production wiring from the environment (spec §2).
    pub async fn from_env() -> Arc<Self> {
        Self::from_config(Config::from_env(), &crate::lambda::sdk_config().await)
    }

    /// Production adapters for `config`, with AWS clients built from `aws`.
    pub fn from_config(config: Config, aws: &aws_config::SdkConfig) -> Arc<Self> {
        let http = http_client(&config);
        let secrets: Arc<dyn SecretSource> = match &config.admin_secret_id {
            Some(id) => {
                let client = aws_sdk_secretsmanager::config::Builder::from(aws)
                    .retry_config(sdk::retry_policy())
                    .build();
                Arc::new(SecretsManagerSource::new(
                    aws_sdk_secretsmanager::Client::from_conf(client),
                    id.clone(),
                ))
            }
            None => {
                tracing::error!(
                    "ADMIN_SECRET_ID is not set; every request will answer 503 admin_unconfigured"
                );
                Arc::new(MissingSecret)
            }
        };
        let TablePorts { rate_limits, idempotency, outbox, ledger } = match &config.table_name {
            Some(table) => {
                let client =
                    aws_sdk_dynamodb::config::Builder::from(aws).retry_config(sdk::retry_policy()).build();
                let store = DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(client), table.clone());
                table_ports(store.with_ledger_retention(config.ledger_retention))
            }
            None => {
                tracing::error!("TABLE_NAME is not set; rate limits and idempotency keys cannot work");
                table_ports(NoTable)
            }
        };
        let notifier: Arc<dyn Notifier> = match &config.gateway_url {
            Some(url) => Arc::new(GatewayHttp::new(http.clone(), url, config.gateway_timeout)),
            None => Arc::new(NoGateway),
        };
        let revenuecat =
            Arc::new(RevenueCatHttp::new(http, &config.revenuecat_api_url, config.revenuecat_timeout));
        Self::new(
            config,
            Adapters { secrets, rate_limits, idempotency, outbox, ledger, revenuecat, notifier },
        )
    }

    /// Starts, without waiting, what `function`'s first request would
    /// otherwise do itself: read the secret, open the DynamoDB and RevenueCat
    /// connections (TLS set-up included), and for `list-currencies` fetch the
    /// currency list. The first request joins whatever is still in flight
    /// through the caches' locks; failures are only logged, and everything is
    /// bounded, so a slow upstream never lengthens or fails init.
    pub fn warm_up(self: &Arc<Self>, functions: &[Function]) {
        const BUDGET: Duration = Duration::from_secs(2);
        let app = self.clone();
        let lists_currencies = functions.contains(&Function::ListCurrencies);
        tokio::spawn(async move {
            // On the single-threaded runtime this task would otherwise prepare
            // its requests before the runtime's first `GET /next` is written,
            // delaying it by ~1 ms; the event cannot arrive before that anyway.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let budget = Budget::lasting(BUDGET);
            let secret_and_currencies = async {
                let Ok(secret) = app.secrets.current(&budget).await else { return };
                if lists_currencies {
                    let _ = app.currencies(&secret.revenuecat, &budget).await;
                }
            };
            let revenuecat = async {
                if !lists_currencies {
                    app.revenuecat.warm_up().await;
                }
            };
            let warmed = tokio::time::timeout(BUDGET, async {
                tokio::join!(secret_and_currencies, app.rate_limits.warm_up(), revenuecat)
            })
            .await;
            tracing::debug!(complete = warmed.is_ok(), "init warm-up finished");
        });
    }

    /// Where a request of `function` arriving `now` is counted.
    pub fn admission_for(
        &self,
        function: Function,
        now: SystemTime,
        ticket: &str,
    ) -> (AdmissionRef, MinuteWindow) {
        let window = MinuteWindow::containing(now);
        let admission = AdmissionRef {
            bucket: function.name().to_owned(),
            window_start: window.start,
            limit: self.config.rate_limit(function),
            ticket: ticket.to_owned(),
        };
        (admission, window)
    }

    /// Step 4 of the pipeline: one atomic admission per request, marked with
    /// its ticket when `keep_ticket` (an adjustment's claim refers to it). An
    /// unreachable store admits (admin work must not stop) and says so loudly.
    pub async fn admit(
        &self,
        admission: &AdmissionRef,
        window: MinuteWindow,
        keep_ticket: bool,
        budget: &Budget,
    ) -> Admission {
        let (function, limit) = (admission.bucket.as_str(), admission.limit);
        let ticket = keep_ticket.then_some(admission.ticket.as_str());
        let counted = budget
            .try_run(self.rate_limits.count(function, window.start, window.expires_at(), ticket, budget))
            .await;
        match counted {
            Ok(position) if admission.admits(position) => Admission::Admitted {
                limit,
                remaining: limit.saturating_sub(position),
                reset_after: window.reset_after,
            },
            Ok(_) => {
                crate::metrics::rate_limited();
                Admission::Refused { limit, reset_after: window.reset_after }
            }
            Err(error) => {
                crate::metrics::limiter_fail_open();
                tracing::error!(%error, function, "rate limiter unavailable; admitting without counting");
                Admission::Uncounted
            }
        }
    }

    /// The project's currencies, from this instance's cache when it is fresh.
    pub async fn currencies(
        &self,
        creds: &RcCredentials,
        budget: &Budget,
    ) -> Result<Arc<Vec<Currency>>, RcError> {
        let mut cached = budget.run(self.currencies.lock()).await?;
        if let Some(c) = cached.as_ref() {
            if c.project_id == creds.project_id && c.fetched_at.elapsed() < CURRENCY_CACHE_TTL {
                return Ok(c.currencies.clone());
            }
        }
        let currencies = Arc::new(budget.try_run(self.revenuecat.list_currencies(creds, budget)).await?);
        *cached = Some(CachedCurrencies {
            project_id: creds.project_id.clone(),
            fetched_at: Instant::now(),
            currencies: currencies.clone(),
        });
        Ok(currencies)
    }
}

/// The ports one table serves.
pub struct TablePorts {
    pub rate_limits: Arc<dyn RateLimitStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub outbox: Arc<dyn Outbox>,
    pub ledger: Arc<dyn Ledger>,
}

/// One store (DynamoDB, in memory …) behind all the table ports.
pub fn table_ports<S: RateLimitStore + IdempotencyStore + Outbox + Ledger + 'static>(store: S) -> TablePorts {
    let store = Arc::new(store);
    TablePorts {
        rate_limits: store.clone(),
        idempotency: store.clone(),
        outbox: store.clone(),
        ledger: store,
    }
}

/// One HTTP client for RevenueCat and the gateway. The connect timeout is
/// short because both are normally a few ms away; the total timeout leaves
/// room inside the Lambda deadline for a retry and the envelope.
pub fn http_client(config: &Config) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2).min(config.revenuecat_timeout))
        .timeout(config.revenuecat_timeout)
        .user_agent(concat!("credits-admin/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(crate::tls::public_tls_config())
        .build()
        .expect("a TLS backend is compiled in")
}

/// Stands in for the table when `TABLE_NAME` is missing, so the failure is
/// reported per request (limiter fails open, keyed adjustments get 503).
struct NoTable;

fn no_table<T>() -> Result<T, StoreError> {
    Err(StoreError("TABLE_NAME is not set".into()))
}

#[async_trait::async_trait]
impl RateLimitStore for NoTable {
    async fn count(&self, _: &str, _: u64, _: u64, _: Option<&str>, _: &Budget) -> Result<u32, StoreError> {
        no_table()
    }
    async fn position_of(&self, _: &str, _: u64, _: &str, _: &Budget) -> Result<Option<u32>, StoreError> {
        no_table()
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for NoTable {
    async fn claim(&self, _: &NewClaim, _: u64, _: &Budget) -> Result<ClaimOutcome, StoreError> {
        no_table()
    }
    async fn complete(&self, _: &str, _: &str, _: &LedgerEntry, _: &Budget) -> Result<(), StoreError> {
        no_table()
    }
    async fn release(&self, _: &str, _: &Budget) -> Result<(), StoreError> {
        no_table()
    }
    async fn lapsed(&self, _: u64, _: usize, _: &Budget) -> Result<Lapsed, StoreError> {
        no_table()
    }
    async fn renew(&self, _: &PendingClaim, _: u64, _: &Budget) -> Result<bool, StoreError> {
        no_table()
    }
}

#[async_trait::async_trait]
impl Ledger for NoTable {
    async fn record(&self, _: &LedgerEntry, _: &Budget) -> Result<(), StoreError> {
        no_table()
    }
    async fn page(&self, _: &str, _: Option<&str>, _: u32, _: &Budget) -> Result<LedgerPage, StoreError> {
        no_table()
    }
    async fn undelivered(
        &self,
        _: &[String],
        _: &Budget,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        no_table()
    }
}

#[async_trait::async_trait]
impl Outbox for NoTable {
    async fn enqueue(&self, _: &QueuedEnvelope, _: u64, _: &Budget) -> Result<(), StoreError> {
        no_table()
    }
    async fn due(&self, _: u64, _: usize, _: &Budget) -> Result<DueEnvelopes, StoreError> {
        no_table()
    }
    async fn remove(&self, _: &str, _: &Budget) -> Result<(), StoreError> {
        no_table()
    }
    async fn retry_later(&self, _: &QueuedEnvelope, _: &Budget) -> Result<(), StoreError> {
        no_table()
    }
    async fn dead_letter(&self, _: &QueuedEnvelope, _: &Budget) -> Result<(), StoreError> {
        no_table()
    }
}
