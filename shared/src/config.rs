//! Environment configuration (spec §2). Reading it never fails: a missing
//! required value turns into a `503` on each request rather than a crash loop
//! that would hide the reason from the caller.

use std::time::Duration;

pub const DEFAULT_REVENUECAT_API_URL: &str = "https://api.revenuecat.com/v2";
pub const DEFAULT_SECRET_TTL: Duration = Duration::from_secs(300);

/// The three functions; each has its own rate-limit bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    ListCurrencies,
    GetBalances,
    AdjustCredits,
}

impl Function {
    pub fn name(self) -> &'static str {
        match self {
            Function::ListCurrencies => "list-currencies",
            Function::GetBalances => "get-balances",
            Function::AdjustCredits => "adjust-credits",
        }
    }

    pub fn default_rate_limit(self) -> u32 {
        match self {
            Function::ListCurrencies => 60,
            Function::GetBalances => 120,
            Function::AdjustCredits => 30,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub admin_secret_id: Option<String>,
    pub table_name: Option<String>,
    pub revenuecat_api_url: String,
    pub gateway_url: Option<String>,
    pub secret_ttl: Duration,
    /// `RATE_LIMIT_PER_MINUTE`: replaces every function's default when set.
    pub rate_limit_override: Option<u32>,
    pub revenuecat_timeout: Duration,
    pub gateway_timeout: Duration,
    /// `LEDGER_RETENTION_DAYS`: ledger entries expire after this; kept for good when unset.
    pub ledger_retention: Option<Duration>,
}

impl Config {
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let millis =
            |name: &str| non_empty(name).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis);
        Self {
            admin_secret_id: non_empty("ADMIN_SECRET_ID"),
            table_name: non_empty("TABLE_NAME"),
            revenuecat_api_url: non_empty("REVENUECAT_API_URL")
                .unwrap_or_else(|| DEFAULT_REVENUECAT_API_URL.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            gateway_url: non_empty("GATEWAY_URL").map(|u| u.trim_end_matches('/').to_owned()),
            secret_ttl: non_empty("SECRET_TTL_SECONDS")
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_SECRET_TTL),
            rate_limit_override: non_empty("RATE_LIMIT_PER_MINUTE").and_then(|v| v.parse().ok()),
            // Both fit well inside the functions' 20 s timeout, with room for
            // one RevenueCat retry and the gateway post.
            revenuecat_timeout: millis("REVENUECAT_TIMEOUT_MS").unwrap_or(Duration::from_secs(5)),
            gateway_timeout: millis("GATEWAY_TIMEOUT_MS")
                .unwrap_or(Duration::from_secs(2))
                .min(Duration::from_secs(2)),
            ledger_retention: non_empty("LEDGER_RETENTION_DAYS")
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|days| *days > 0)
                .map(|days| Duration::from_secs(days * 24 * 3600)),
        }
    }

    pub fn rate_limit(&self, function: Function) -> u32 {
        self.rate_limit_override.unwrap_or_else(|| function.default_rate_limit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let config = Config::from_lookup(|_| None);
        assert_eq!(config.revenuecat_api_url, DEFAULT_REVENUECAT_API_URL);
        assert_eq!(config.secret_ttl, DEFAULT_SECRET_TTL);
        assert_eq!(config.rate_limit(Function::AdjustCredits), 30);
        assert_eq!(config.rate_limit(Function::GetBalances), 120);

        let config = Config::from_lookup(|name| match name {
            "RATE_LIMIT_PER_MINUTE" => Some("7".into()),
            "GATEWAY_URL" => Some("http://gw/".into()),
            "GATEWAY_TIMEOUT_MS" => Some("60000".into()),
            _ => None,
        });
        assert_eq!(config.rate_limit(Function::ListCurrencies), 7);
        assert_eq!(config.gateway_url.as_deref(), Some("http://gw"));
        assert_eq!(config.gateway_timeout, Duration::from_secs(2), "the envelope timeout is capped at 2 s");
    }
}
