//! The realtime gateway's control endpoint (spec §8).

use std::time::Duration;

use async_trait::async_trait;

use crate::budget::Budget;
use crate::domain::UsageChanged;
use crate::ports::{Notifier, StoreError};

pub struct GatewayHttp {
    client: reqwest::Client,
    control_url: String,
    timeout: Duration,
}

impl GatewayHttp {
    pub fn new(client: reqwest::Client, gateway_url: &str, timeout: Duration) -> Self {
        Self { client, control_url: format!("{gateway_url}/internal/control"), timeout }
    }
}

#[async_trait]
impl Notifier for GatewayHttp {
    async fn notify(&self, bearer: &str, envelope: &UsageChanged, budget: &Budget) -> Result<(), StoreError> {
        let timeout = budget.share(self.timeout);
        if timeout.is_zero() {
            return Err(StoreError("gateway post skipped: no time left in the invocation's budget".into()));
        }
        let response = self
            .client
            .post(&self.control_url)
            .bearer_auth(bearer)
            .json(envelope)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| StoreError(format!("gateway post failed: {}", describe(&e))))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(StoreError(format!("gateway answered {}", response.status().as_u16())))
        }
    }
}

/// Used when `GATEWAY_URL` is not configured: every envelope stays queued.
pub struct NoGateway;

#[async_trait]
impl Notifier for NoGateway {
    async fn notify(&self, _: &str, _: &UsageChanged, _: &Budget) -> Result<(), StoreError> {
        Err(StoreError("GATEWAY_URL is not set".into()))
    }
}

/// Names the failure without the URL's query or any header.
pub(crate) fn describe(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_decode() || error.is_body() {
        "invalid_response"
    } else {
        "transport"
    }
}
