//! One pass-through [`ServiceControl`] for the byzantine providers of the test crate: a
//! [`Twist`] says what a misbehaving host does differently (staging, starting, stopping,
//! readings, what it reports running, probe answers), and [`Twisted`] sends every other call
//! to the node's real service host unchanged.
//!
//! `agora-byzantine` puts one in front of the real host with `agora_daemon::start_wrapped`
//! (`--host-nothing`, `--never-arm`, `--slow-start-lasting`).

use std::sync::Arc;

use agora_contracts::probe::GuestExpectation;
use agora_hosting::ceiling::ContractCeiling;
use agora_hosting::control::{ProbeWitness, ServiceControl, StageError, StagedService};
use async_trait::async_trait;
use cid::Cid;

/// What a byzantine host changes. Each method gets the real host (`inner`); by default it
/// passes the call through.
#[async_trait]
pub trait Twist: Send + Sync + 'static {
    /// [`ServiceControl::stage_for_contract`].
    async fn stage_for_contract(
        &self,
        inner: &dyn ServiceControl,
        id: &str,
        image: Cid,
        ceiling: ContractCeiling,
    ) -> Result<StagedService, StageError> {
        inner.stage_for_contract(id, image, ceiling).await
    }

    /// [`ServiceControl::start`].
    async fn start(&self, inner: &dyn ServiceControl, id: &str) -> Result<(), String> {
        inner.start(id).await
    }

    /// [`ServiceControl::stop`].
    async fn stop(&self, inner: &dyn ServiceControl, id: &str) -> Result<(), String> {
        inner.stop(id).await
    }

    /// [`ServiceControl::push_reading`].
    fn push_reading(
        &self,
        inner: &dyn ServiceControl,
        id: &str,
        frame: Vec<u8>,
    ) -> Result<(), String> {
        inner.push_reading(id, frame)
    }

    /// [`ServiceControl::running`].
    async fn running(&self, inner: &dyn ServiceControl, id: &str) -> bool {
        inner.running(id).await
    }

    /// [`ServiceControl::active`].
    async fn active(&self, inner: &dyn ServiceControl, id: &str) -> bool {
        inner.active(id).await
    }

    /// [`ServiceControl::probe`].
    async fn probe(&self, inner: &dyn ServiceControl, id: &str, nonce: i64) -> ProbeWitness {
        inner.probe(id, nonce).await
    }
}

/// The real host `inner` behind a [`Twist`].
pub struct Twisted<T> {
    inner: Arc<dyn ServiceControl>,
    twist: T,
}

impl<T: Twist> Twisted<T> {
    /// `inner`, as `twist` changes it.
    pub fn wrap(inner: Arc<dyn ServiceControl>, twist: T) -> Arc<dyn ServiceControl> {
        Arc::new(Twisted { inner, twist })
    }
}

#[async_trait]
impl<T: Twist> ServiceControl for Twisted<T> {
    async fn stage(&self, id: &str, image: Cid) -> Result<StagedService, String> {
        self.inner.stage(id, image).await
    }

    async fn stage_for_contract(
        &self,
        id: &str,
        image: Cid,
        ceiling: ContractCeiling,
    ) -> Result<StagedService, StageError> {
        self.twist
            .stage_for_contract(self.inner.as_ref(), id, image, ceiling)
            .await
    }

    async fn devices_of(&self, image: Cid) -> Result<Vec<u32>, String> {
        self.inner.devices_of(image).await
    }

    async fn start(&self, id: &str) -> Result<(), String> {
        self.twist.start(self.inner.as_ref(), id).await
    }

    async fn stop(&self, id: &str) -> Result<(), String> {
        self.twist.stop(self.inner.as_ref(), id).await
    }

    async fn forget(&self, id: &str) -> Result<(), String> {
        self.inner.forget(id).await
    }

    fn push_reading(&self, id: &str, frame: Vec<u8>) -> Result<(), String> {
        self.twist.push_reading(self.inner.as_ref(), id, frame)
    }

    async fn running(&self, id: &str) -> bool {
        self.twist.running(self.inner.as_ref(), id).await
    }

    async fn active(&self, id: &str) -> bool {
        self.twist.active(self.inner.as_ref(), id).await
    }

    async fn instance_rivals(&self, id: &str) -> (u32, Vec<String>) {
        self.inner.instance_rivals(id).await
    }

    async fn unresolved_dependency(&self, id: &str) -> Option<String> {
        self.inner.unresolved_dependency(id).await
    }

    async fn probe(&self, id: &str, nonce: i64) -> ProbeWitness {
        self.twist.probe(self.inner.as_ref(), id, nonce).await
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
