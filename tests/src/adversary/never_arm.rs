//! A provider that never arms (THREATS C16): a [`Twist`] of the node's real service host
//! ([`ServiceControl`]) whose staging of a contract's image never ends, so the provider
//! countersigns, sees the contract registered, and never sends `MarkMigrated` or `MarkArmed`:
//! the customer's payment and stake stay locked until the customer calls the contract off.
//! Everything else (the node's own service included) goes to the real host.
//!
//! `agora-byzantine --never-arm` runs a real node behind it (`agora_daemon::start_wrapped`).
//! Each staging it stalls prints `byzantine: never-arm stalls staging service=…` to stdout
//! (the devnet's `node.log`).

use agora_hosting::ceiling::ContractCeiling;
use agora_hosting::control::{ServiceControl, StageError, StagedService};
use async_trait::async_trait;
use cid::Cid;

use super::twist::Twist;

/// Its twist: every contract staging stalls.
pub struct StallingHost;

#[async_trait]
impl Twist for StallingHost {
    /// Never returns: the contract stays unarmed.
    async fn stage_for_contract(
        &self,
        _inner: &dyn ServiceControl,
        id: &str,
        _image: Cid,
        _ceiling: ContractCeiling,
    ) -> Result<StagedService, StageError> {
        println!("byzantine: never-arm stalls staging service={id}");
        std::future::pending().await
    }
}
