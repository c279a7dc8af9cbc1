//! Production adapters for the ports in `crate::ports`.

pub mod dynamodb;
pub mod gateway;
pub mod revenuecat;
pub mod sdk;
pub mod secrets_manager;
