//! Local stand-ins for the services credits-admin talks to, for integration tests and the
//! local dev runner:
//!
//! - [`RevenueCatSandbox`]: RevenueCat's REST API v2, virtual-currency subset, following
//!   /work/shared/revenuecat-v2.md;
//! - [`GatewayStandIn`]: the realtime gateway's `POST /internal/control`.
//!
//! Both serve HTTP/1.1 on the current tokio runtime, keep their state behind a cheap-to-clone
//! handle for assertions, and stop when the returned [`SandboxServer`] is dropped.

mod gate;
pub mod gateway;
pub mod revenuecat;
mod server;

pub use gate::Gate;
pub use gateway::*;
pub use revenuecat::*;
