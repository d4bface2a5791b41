//! An honest but slow provider: a [`Twist`] of the node's service host that waits a while
//! before it starts the service of a contract of one given term (THREATS C13's race, made
//! deterministic: the customer's cancel, sent the moment a block arms the contract, reaches a
//! block before the provider has started the service and reported its activation, so the
//! provider's sweep must stop a service it started for a contract the ledger already ended).
//! Everything else goes to the real host at once.
//!
//! `agora-byzantine --slow-start-lasting 170s --slow-start-by 3s` runs a real node behind it
//! (`agora_daemon::start_wrapped`); each start it delays prints `byzantine: slow-start delays
//! service=… ms=…` to stdout (the devnet's `node.log`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agora_contracts::ContractId;
use agora_hosting::control::ServiceControl;
use agora_ledger::LedgerHandle;
use async_trait::async_trait;

use super::twist::Twist;

/// Its twist.
pub struct SlowStart {
    /// The term of the contracts whose services start late.
    pub lasting_ms: u64,
    /// How late.
    pub by: Duration,
    /// The node's ledger, set once the node runs (the host is wrapped before it exists).
    pub ledger: Arc<OnceLock<LedgerHandle>>,
}

impl SlowStart {
    /// Whether service `id` is a contract's of the slow term, as the ledger says now.
    async fn slow(&self, id: &str) -> bool {
        let (Ok(contract), Some(ledger)) = (id.parse::<ContractId>(), self.ledger.get()) else {
            return false;
        };
        let lasting = self.lasting_ms;
        ledger
            .query(move |v| {
                v.ledger
                    .contract(&contract)
                    .is_some_and(|r| r.contract.duration_ms == lasting)
            })
            .await
            .unwrap_or(false)
    }
}

#[async_trait]
impl Twist for SlowStart {
    async fn start(&self, inner: &dyn ServiceControl, id: &str) -> Result<(), String> {
        if self.slow(id).await {
            println!(
                "byzantine: slow-start delays service={id} ms={}",
                self.by.as_millis()
            );
            tokio::time::sleep(self.by).await;
        }
        inner.start(id).await
    }
}
