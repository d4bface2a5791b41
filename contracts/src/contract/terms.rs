//! The agreed market terms as plain fields.
//!
//! Placeholder for the market crate's award/terms type, which is being written in parallel; the
//! node maps the market's type into this one. Kept flat so the canonical bytes stay stable.
//! Informational for settlement: the ledger pays and times out by `Contract::payment` and
//! `Contract::duration_ms`, not by these fields.

use serde::{Deserialize, Serialize};

use super::Amount;

/// Resources and price agreed in the market.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    /// CPU share in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory reserved for the service.
    pub memory_bytes: u64,
    /// Storage reserved for the service.
    pub storage_bytes: u64,
    /// Sensor/actuator interfaces the provider exposes (e.g. "temp0", "gpio:17").
    pub interfaces: Vec<String>,
    /// Agreed price for the whole duration (the contract's payment).
    pub price: Amount,
    /// Agreed duration in ms.
    pub duration_ms: u64,
}
