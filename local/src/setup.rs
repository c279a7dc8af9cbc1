//! Chooses each adapter: real when configured, embedded otherwise.

use std::net::SocketAddr;
use std::sync::Arc;

use credits::adapters::dynamodb::DynamoStore;
use credits::adapters::gateway::GatewayHttp;
use credits::adapters::memory::MemoryStore;
use credits::adapters::revenuecat::RevenueCatHttp;
use credits::adapters::secrets_manager::StaticSecret;
use credits::app::{http_client, table_ports, TablePorts};
use credits::config::Config;
use credits::handlers::{AdjustCredits, GetBalances, GetLedger, ListCurrencies};
use credits::ports::Notifier;
use credits::{Adapters, App, Router};
use credits_sandbox::{RevenueCatSandbox, SandboxServer};

use crate::log_gateway::LogGateway;

pub struct Local {
    pub router: Router,
    pub listen: SocketAddr,
    pub admin_token: String,
    /// One line per adapter, for the start-up banner.
    pub adapters: Vec<String>,
    /// Keeps the embedded RevenueCat sandbox running while the server runs.
    pub _sandbox: Option<SandboxServer>,
}

impl Local {
    pub async fn from_env() -> Result<Self, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let port: u16 = match env("PORT") {
            Some(p) => p.parse().map_err(|_| format!("PORT must be a port number, not {p:?}"))?,
            None => 3000,
        };
        let mut config = Config::from_env();
        let mut adapters = Vec::new();

        let admin_token =
            env("ADMIN_TOKEN").unwrap_or_else(|| format!("adm_{}", uuid::Uuid::new_v4().simple()));

        let (api_key, project_id, sandbox) = match (env("REVENUECAT_API_KEY"), env("REVENUECAT_PROJECT_ID")) {
            (Some(key), Some(project)) => {
                adapters.push(format!("RevenueCat: {} (project {project})", config.revenuecat_api_url));
                (key, project, None)
            }
            _ => {
                let sandbox = RevenueCatSandbox::demo();
                let server =
                    sandbox.start().await.map_err(|e| format!("cannot start the RevenueCat sandbox: {e}"))?;
                config.revenuecat_api_url = server.base_url();
                adapters.push(format!(
                    "RevenueCat: embedded sandbox at {} (project {}, CRD = Credits, demo customer user_2abcXYZ)",
                    server.base_url(),
                    sandbox.project_id()
                ));
                (sandbox.api_key(), sandbox.project_id(), Some(server))
            }
        };
        let secret = serde_json::json!({
            "admin_secret": admin_token,
            "revenuecat_api_key": api_key,
            "revenuecat_project_id": project_id,
        })
        .to_string();

        let TablePorts { rate_limits, idempotency, outbox, ledger } = match &config.table_name {
            Some(table) => {
                let aws = aws_config::load_from_env().await;
                adapters.push(format!("Store: DynamoDB table {table}"));
                let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table.clone());
                table_ports(store.with_ledger_retention(config.ledger_retention))
            }
            None => {
                adapters.push("Store: in memory (rate limits, idempotency records, outbox, ledger)".into());
                table_ports(MemoryStore::default())
            }
        };

        let http = http_client(&config);
        let notifier: Arc<dyn Notifier> = match &config.gateway_url {
            Some(url) => {
                adapters.push(format!("Gateway: {url}/internal/control"));
                Arc::new(GatewayHttp::new(http.clone(), url, config.gateway_timeout))
            }
            None => {
                adapters.push("Gateway: none; envelopes are printed as log lines".into());
                Arc::new(LogGateway)
            }
        };
        let revenuecat =
            Arc::new(RevenueCatHttp::new(http, &config.revenuecat_api_url, config.revenuecat_timeout));
        let app = App::new(
            config,
            Adapters {
                secrets: Arc::new(StaticSecret(secret)),
                rate_limits,
                idempotency,
                outbox,
                ledger,
                revenuecat,
                notifier,
            },
        );
        let router = Router::new(app)
            .route::<ListCurrencies>()
            .route::<GetBalances>()
            .route::<GetLedger>()
            .route::<AdjustCredits>();
        Ok(Self {
            router,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            admin_token,
            adapters,
            _sandbox: sandbox,
        })
    }
}
