//! A provider that never arms (THREATS C16): a [`ServiceControl`] in front of the node's real
//! service host whose staging of a contract's image never ends, so the provider countersigns,
//! sees the contract registered, and never sends `MarkMigrated` or `MarkArmed`: the customer's
//! payment and stake stay locked until the customer calls the contract off. Everything else
//! (the node's own service included) goes to the real host.
//!
//! `agora-byzantine --never-arm` runs a real node behind it (`agora_daemon::start_wrapped`).
//! Each staging it stalls prints `byzantine: never-arm stalls staging service=…` to stdout
//! (the devnet's `node.log`).

use std::sync::Arc;

use agora_contracts::probe::GuestExpectation;
use agora_hosting::ceiling::ContractCeiling;
use agora_hosting::control::{ProbeWitness, ServiceControl, StageError, StagedService};
use async_trait::async_trait;
use cid::Cid;

/// The wrapped service host.
pub struct StallingHost {
    inner: Arc<dyn ServiceControl>,
}

impl StallingHost {
    /// Stalls every contract staging `inner` is asked for; passes the rest through.
    pub fn wrap(inner: Arc<dyn ServiceControl>) -> Arc<dyn ServiceControl> {
        Arc::new(StallingHost { inner })
    }
}

#[async_trait]
impl ServiceControl for StallingHost {
    async fn stage(&self, id: &str, image: Cid) -> Result<StagedService, String> {
        self.inner.stage(id, image).await
    }

    /// Never returns: the contract stays unarmed.
    async fn stage_for_contract(
        &self,
        id: &str,
        _image: Cid,
        _ceiling: ContractCeiling,
    ) -> Result<StagedService, StageError> {
        println!("byzantine: never-arm stalls staging service={id}");
        std::future::pending().await
    }

    async fn devices_of(&self, image: Cid) -> Result<Vec<u32>, String> {
        self.inner.devices_of(image).await
    }

    async fn start(&self, id: &str) -> Result<(), String> {
        self.inner.start(id).await
    }

    async fn stop(&self, id: &str) -> Result<(), String> {
        self.inner.stop(id).await
    }

    async fn forget(&self, id: &str) -> Result<(), String> {
        self.inner.forget(id).await
    }

    fn push_reading(&self, id: &str, frame: Vec<u8>) -> Result<(), String> {
        self.inner.push_reading(id, frame)
    }

    async fn running(&self, id: &str) -> bool {
        self.inner.running(id).await
    }

    async fn active(&self, id: &str) -> bool {
        self.inner.active(id).await
    }

    async fn instance_rivals(&self, id: &str) -> (u32, Vec<String>) {
        self.inner.instance_rivals(id).await
    }

    async fn unresolved_dependency(&self, id: &str) -> Option<String> {
        self.inner.unresolved_dependency(id).await
    }

    async fn probe(&self, id: &str, nonce: i64) -> ProbeWitness {
        self.inner.probe(id, nonce).await
    }

    async fn probe_image(&self, image: Cid, nonce: i64) -> GuestExpectation {
        self.inner.probe_image(image, nonce).await
    }

    async fn retain_probe_images(&self, keep: &std::collections::BTreeSet<Cid>) -> usize {
        self.inner.retain_probe_images(keep).await
    }

    fn kv_snapshot(
        &self,
        id: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<agora_runtime::KvEntries>, String> {
        self.inner.kv_snapshot(id, max_entries, max_bytes)
    }

    async fn kv_replace(&self, id: &str, entries: agora_runtime::KvEntries) -> Result<(), String> {
        self.inner.kv_replace(id, entries).await
    }

    fn kv_move(
        &self,
        from: &str,
        to: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<usize>, String> {
        self.inner.kv_move(from, to, max_entries, max_bytes)
    }
}
