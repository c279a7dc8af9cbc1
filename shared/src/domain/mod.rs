//! Pure domain: validation, the error catalogue, the envelope and rate windows.
//! Nothing here performs I/O.

pub mod envelope;
pub mod error;
pub mod ledger;
pub mod rate_limit;
pub mod validation;

pub use envelope::UsageChanged;
pub use error::ApiError;
pub use validation::{Adjustment, UserId};
