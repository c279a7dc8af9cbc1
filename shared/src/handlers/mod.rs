//! One module per route; each is an `Endpoint` the router runs through the pipeline.

pub mod adjust;
pub mod get_balances;
pub mod get_ledger;
pub mod list_currencies;

pub use adjust::AdjustCredits;
pub use get_balances::GetBalances;
pub use get_ledger::GetLedger;
pub use list_currencies::ListCurrencies;
