//! AWS Secrets Manager as the source of the admin secret.

use async_trait::async_trait;
use aws_sdk_secretsmanager::error::DisplayErrorContext;
use aws_sdk_secretsmanager::Client;

use crate::adapters::sdk;
use crate::budget::Budget;
use crate::ports::{SecretSource, StoreError};

pub struct SecretsManagerSource {
    client: Client,
    secret_id: String,
}

impl SecretsManagerSource {
    pub fn new(client: Client, secret_id: String) -> Self {
        Self { client, secret_id }
    }
}

#[async_trait]
impl SecretSource for SecretsManagerSource {
    async fn fetch(&self, budget: &Budget) -> Result<Option<String>, StoreError> {
        let timeouts = sdk::timeouts(budget, "GetSecretValue")?;
        let result = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .customize()
            .config_override(aws_sdk_secretsmanager::Config::builder().timeout_config(timeouts))
            .send()
            .await;
        match result {
            Ok(output) => Ok(output.secret_string().map(str::to_owned)),
            Err(error) => {
                let service_error = error.as_service_error();
                if service_error.is_some_and(|e| e.is_resource_not_found_exception()) {
                    Ok(None)
                } else {
                    // The error text names the secret and the failure, never its value.
                    Err(StoreError(format!("GetSecretValue failed: {}", DisplayErrorContext(&error))))
                }
            }
        }
    }
}

/// Used when `ADMIN_SECRET_ID` is not set: every request answers
/// `503 admin_unconfigured`, which tells the operator exactly what to fix.
pub struct MissingSecret;

#[async_trait]
impl SecretSource for MissingSecret {
    async fn fetch(&self, _: &Budget) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

/// A fixed secret value, for the local runner.
pub struct StaticSecret(pub String);

#[async_trait]
impl SecretSource for StaticSecret {
    async fn fetch(&self, _: &Budget) -> Result<Option<String>, StoreError> {
        Ok(Some(self.0.clone()))
    }
}
