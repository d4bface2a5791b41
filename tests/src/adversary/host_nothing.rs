//! A provider that runs nothing (THREATS P1): a [`ServiceControl`] in front of the node's real
//! service host that stages a contract's image as usual (fetched, verified, compiled) but never
//! starts it, while telling the orchestrator it runs, so the provider activates the contract and
//! claims uptime in every heartbeat as an honest one would. Only its answer to the arbitrators'
//! probes differs between the two kinds ([`HostNothing`]).
//!
//! `agora-byzantine --host-nothing[=honest|lie]` runs a real node behind it
//! (`agora_daemon::start_wrapped`). Each service it pretends to start prints
//! `byzantine: host-nothing pretends to start service=…` and each probe it answers
//! `byzantine: probe answered service=… running=…` to stdout (the devnet's `node.log`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use agora_contracts::probe::GuestExpectation;
use agora_hosting::ceiling::ContractCeiling;
use agora_hosting::control::{ProbeWitness, ServiceControl, StagedService};
use async_trait::async_trait;
use cid::Cid;

/// How a provider that runs nothing answers the probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostNothing {
    /// "Not running": the truth about its hosting layer (yet its heartbeats claim uptime).
    Honest,
    /// "Running", with a made-up `agora_probe` value (the nonce): a lie about its hosting
    /// layer, which only the guest value can expose.
    Lie,
}

/// The wrapped service host.
pub struct NothingHost {
    inner: Arc<dyn ServiceControl>,
    kind: HostNothing,
    /// Services it pretends to run.
    pretended: Mutex<BTreeSet<String>>,
}

impl NothingHost {
    /// Runs nothing of what `inner` is asked to start; answers probes as `kind` says.
    pub fn wrap(inner: Arc<dyn ServiceControl>, kind: HostNothing) -> Arc<dyn ServiceControl> {
        Arc::new(NothingHost {
            inner,
            kind,
            pretended: Mutex::new(BTreeSet::new()),
        })
    }

    fn pretends(&self, id: &str) -> bool {
        self.pretended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }
}

#[async_trait]
impl ServiceControl for NothingHost {
    async fn stage(&self, id: &str, image: Cid) -> Result<StagedService, String> {
        self.inner.stage(id, image).await
    }

    async fn stage_for_contract(
        &self,
        id: &str,
        image: Cid,
        ceiling: ContractCeiling,
    ) -> Result<StagedService, agora_hosting::control::StageError> {
        self.inner.stage_for_contract(id, image, ceiling).await
    }

    async fn devices_of(&self, image: Cid) -> Result<Vec<u32>, String> {
        self.inner.devices_of(image).await
    }

    async fn start(&self, id: &str) -> Result<(), String> {
        self.pretended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string());
        println!("byzantine: host-nothing pretends to start service={id}");
        Ok(())
    }

    async fn stop(&self, id: &str) -> Result<(), String> {
        let was = self
            .pretended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        match self.inner.stop(id).await {
            Err(_) if was => Ok(()),
            other => other,
        }
    }

    fn push_reading(&self, id: &str, frame: Vec<u8>) -> Result<(), String> {
        if self.pretends(id) {
            return Err(format!("service {id} runs nowhere"));
        }
        self.inner.push_reading(id, frame)
    }

    /// What the orchestrator's heartbeats read: "running", so it claims uptime.
    async fn running(&self, id: &str) -> bool {
        self.pretends(id) || self.inner.running(id).await
    }

    async fn probe(&self, id: &str, nonce: i64) -> ProbeWitness {
        if !self.pretends(id) {
            return self.inner.probe(id, nonce).await;
        }
        let running = self.kind == HostNothing::Lie;
        // No instance to ask: the liar makes a value up (the nonce itself).
        let guest = running.then_some(nonce);
        println!("byzantine: probe answered service={id} running={running}");
        ProbeWitness { running, guest }
    }

    async fn probe_image(&self, image: Cid, nonce: i64) -> GuestExpectation {
        self.inner.probe_image(image, nonce).await
    }

    async fn retain_probe_images(&self, keep: &std::collections::BTreeSet<Cid>) -> usize {
        self.inner.retain_probe_images(keep).await
    }
}
