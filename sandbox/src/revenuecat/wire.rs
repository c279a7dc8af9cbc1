//! JSON shapes the RevenueCat sandbox sends. Section numbers refer to
//! /work/shared/revenuecat-v2.md.

use serde::Serialize;
use serde_json::Value;

use super::{Currency, ProductGrant};

/// List envelope (§2). All four fields are always present: real responses send
/// `"next_page": null` on the last page [O], and `url` is absolute and query-free [O].
#[derive(Debug, Serialize)]
pub(super) struct List<T> {
    object: &'static str,
    pub(super) items: Vec<T>,
    next_page: Option<String>,
    url: String,
}

impl<T> List<T> {
    pub(super) fn new(items: Vec<T>, next_page: Option<String>, url: String) -> Self {
        Self { object: "list", items, next_page, url }
    }
}

/// `VirtualCurrency` (§3). `description` is nullable, so it is sent as `null` when absent.
/// No `state` field: S1 has none and sets `additionalProperties: false` (§3).
#[derive(Debug, Serialize)]
pub(super) struct VirtualCurrency {
    object: &'static str,
    project_id: String,
    code: String,
    name: String,
    created_at: u64,
    description: Option<String>,
    product_grants: Vec<VirtualCurrencyProductGrant>,
}

impl VirtualCurrency {
    pub(super) fn new(project_id: &str, currency: &Currency, created_at: u64) -> Self {
        Self {
            object: "virtual_currency",
            project_id: project_id.to_owned(),
            code: currency.code.clone(),
            name: currency.name.clone(),
            created_at,
            description: currency.description.clone(),
            product_grants: currency.grants.iter().map(VirtualCurrencyProductGrant::new).collect(),
        }
    }

    pub(super) fn code(&self) -> &str {
        &self.code
    }
}

/// `VirtualCurrencyProductGrant` (§3): every field is required and `object` has a dot.
#[derive(Debug, Serialize)]
struct VirtualCurrencyProductGrant {
    object: &'static str,
    product_ids: Vec<String>,
    amount: i64,
    trial_amount: i64,
    expire_at_cycle_end: bool,
}

impl VirtualCurrencyProductGrant {
    fn new(grant: &ProductGrant) -> Self {
        Self {
            object: "virtual_currency.product_grant",
            product_ids: grant.product_ids.clone(),
            amount: grant.amount,
            trial_amount: 0,
            expire_at_cycle_end: false,
        }
    }
}

/// `VirtualCurrencyBalance` (§4). `name` and `description` are optional non-nullable strings,
/// so a currency without a description omits the field instead of sending `null` (§4 [I]).
#[derive(Debug, Serialize)]
pub(super) struct VirtualCurrencyBalance {
    object: &'static str,
    currency_code: String,
    balance: i64,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

impl VirtualCurrencyBalance {
    pub(super) fn new(currency: &Currency, balance: i64) -> Self {
        Self {
            object: "virtual_currency_balance",
            currency_code: currency.code.clone(),
            balance,
            name: currency.name.clone(),
            description: currency.description.clone(),
        }
    }

    pub(super) fn currency_code(&self) -> &str {
        &self.currency_code
    }
}

/// `Customer` (§7). The four `last_seen_*` fields are required but nullable; this sandbox
/// has no SDK traffic, so they are `null`. `active_entitlements` appears only on
/// "Get a customer" (§7).
#[derive(Debug, Serialize)]
pub(super) struct Customer {
    object: &'static str,
    id: String,
    project_id: String,
    first_seen_at: u64,
    last_seen_at: Option<u64>,
    last_seen_app_version: Option<String>,
    last_seen_country: Option<String>,
    last_seen_platform: Option<String>,
    last_seen_platform_version: Option<String>,
    experiment: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    active_entitlements: Option<List<Value>>,
}

impl Customer {
    pub(super) fn new(project_id: &str, id: &str, first_seen_at: u64) -> Self {
        Self {
            object: "customer",
            id: id.to_owned(),
            project_id: project_id.to_owned(),
            first_seen_at,
            last_seen_at: Some(first_seen_at),
            last_seen_app_version: None,
            last_seen_country: None,
            last_seen_platform: None,
            last_seen_platform_version: None,
            experiment: None,
            active_entitlements: None,
        }
    }

    /// Adds the (always empty) entitlement list that "Get a customer" includes (§7 [O]).
    pub(super) fn with_active_entitlements(mut self, url: String) -> Self {
        self.active_entitlements = Some(List::new(Vec::new(), None, url));
        self
    }
}

/// `Error` (§8): `param` only when one parameter is at fault, `backoff_ms` only when
/// `retryable` (S1: "Only present for retryable errors").
#[derive(Debug, Serialize)]
pub(super) struct ErrorBody {
    pub(super) object: &'static str,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) param: Option<String>,
    pub(super) retryable: bool,
    pub(super) doc_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) backoff_ms: Option<u64>,
}
