//! Adapters for the ports in `crate::ports`: the production ones, and
//! `memory`, the table kept in memory (the local runner, tests).

pub mod dynamodb;
pub mod gateway;
pub mod memory;
pub mod revenuecat;
pub mod sdk;
pub mod secrets_manager;
