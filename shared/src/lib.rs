//! credits-admin: the library behind the three Lambda functions.
//!
//! - `domain`: validation, the error catalogue, the envelope (no I/O);
//! - `ports`: the traits the handlers depend on;
//! - `adapters`: Secrets Manager, DynamoDB, RevenueCat v2, the gateway;
//! - `http` + `handlers`: the request pipeline and one endpoint per route;
//! - `app`: wiring per Lambda instance.

pub mod adapters;
pub mod app;
pub mod budget;
pub mod clock;
pub mod config;
pub mod domain;
pub mod handlers;
pub mod http;
pub mod lambda;
pub mod metrics;
pub mod ports;
pub mod reconcile;
pub mod secrets;
pub mod telemetry;
pub mod tls;

pub use app::{Adapters, App};
pub use http::Router;
