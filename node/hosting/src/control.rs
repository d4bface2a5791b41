//! What the orchestrator and the radio need from the service host: stage an image by CID, start
//! and stop it, feed it readings, ask whether it runs. The node's `ServiceHost` implements it;
//! tests may use a fake.

use agora_contracts::probe::GuestExpectation;
use async_trait::async_trait;
use cid::Cid;

use crate::ceiling::ContractCeiling;

/// Why a contract's image was not staged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct StageError {
    /// What failed.
    pub reason: String,
    /// Staging the same image again will not cure it
    /// ([`crate::ServiceError::is_permanent`]).
    pub permanent: bool,
}

impl From<crate::ServiceError> for StageError {
    fn from(e: crate::ServiceError) -> Self {
        StageError {
            permanent: e.is_permanent(),
            reason: e.to_string(),
        }
    }
}

/// A staged (fetched, verified, compiled, idle) service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StagedService {
    /// Sensor devices the service's manifest takes over.
    pub devices: Vec<u32>,
    /// The manifest's service name (an upgrade's old and new image share it).
    pub name: String,
}

/// Service control as the orchestrator uses it; errors are human-readable reasons.
#[async_trait]
pub trait ServiceControl: Send + Sync + 'static {
    /// Fetches, verifies and compiles `image` as service `id`, idle, under its manifest's
    /// limits (the node's own service).
    async fn stage(&self, id: &str, image: Cid) -> Result<StagedService, String>;
    /// [`Self::stage`] for a contract: the manifest's limits clamped to what the contract
    /// allows ([`crate::ceiling`]).
    async fn stage_for_contract(
        &self,
        id: &str,
        image: Cid,
        ceiling: ContractCeiling,
    ) -> Result<StagedService, StageError>;
    /// The sensor devices `image`'s manifest takes over, if this node holds the image (the
    /// customer of a contract for it: it learns which devices the provider will manage).
    async fn devices_of(&self, image: Cid) -> Result<Vec<u32>, String>;
    /// Starts the staged service `id`.
    async fn start(&self, id: &str) -> Result<(), String>;
    /// Stops service `id`.
    async fn stop(&self, id: &str) -> Result<(), String>;
    /// Forgets the stopped service `id` of an ended contract: its key-value state, the
    /// service and its hold on the image; by default nothing to do.
    async fn forget(&self, id: &str) -> Result<(), String> {
        let _ = id;
        Ok(())
    }
    /// Queues one sensor frame for service `id`.
    fn push_reading(&self, id: &str, frame: Vec<u8>) -> Result<(), String>;
    /// Whether service `id` is running: an instance of it runs now (not while its restart
    /// policy waits to restart a failed one). What a probe is answered with.
    async fn running(&self, id: &str) -> bool;
    /// Whether service `id` is active: started and not stopped for good, a wait to restart a
    /// failed instance included (but not one the host failed to start). What heartbeats claim
    /// uptime by (the runtime's backoff is seconds at most for a contract's guest, and paid
    /// uptime needs the committee's probes, which see the wait); by default
    /// [`Self::running`].
    async fn active(&self, id: &str) -> bool {
        self.running(id).await
    }
    /// The cap on the instances of `id`'s module in its group here and the other services
    /// that count against it (not stopped; [`crate::ServiceHost::instance_rivals`]); by
    /// default no cap.
    async fn instance_rivals(&self, id: &str) -> (u32, Vec<String>) {
        let _ = id;
        (u32::MAX, Vec::new())
    }
    /// Why service `id` could not start for want of a dependency its party has not staged
    /// here ([`crate::ServiceHost::unresolved_dependency`]); by default none.
    async fn unresolved_dependency(&self, id: &str) -> Option<String> {
        let _ = id;
        None
    }
    /// What this node answers an arbitrator's uptime probe of service `id` with `nonce`
    /// (`agora_wire::probe`): whether its hosting layer runs the instance ([`Self::running`])
    /// and, by default, no guest value.
    async fn probe(&self, id: &str, nonce: i64) -> ProbeWitness {
        let _ = nonce;
        ProbeWitness {
            running: self.running(id).await,
            guest: None,
        }
    }
    /// What `image`'s `agora_probe(nonce)` returns on a fresh instance on this node (the
    /// arbitrator's check of a provider's answer); by default unknown.
    async fn probe_image(&self, image: Cid, nonce: i64) -> GuestExpectation {
        let _ = (image, nonce);
        GuestExpectation::Unknown("this node runs no images".into())
    }
    /// Lets go of every image compiled for probes but those in `keep`; how many went.
    async fn retain_probe_images(&self, keep: &std::collections::BTreeSet<Cid>) -> usize {
        let _ = keep;
        0
    }
    /// A consistent copy of service `id`'s key-value state, taken only while it is quiescent
    /// (no reading queued, no guest call running): `Ok(None)` while it is busy or when it has
    /// no such state (a container). Called from the task that feeds it readings, so none
    /// arrives meanwhile.
    fn kv_snapshot(
        &self,
        id: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<agora_runtime::KvEntries>, String> {
        let _ = (id, max_entries, max_bytes);
        Ok(None)
    }
    /// Replaces service `id`'s key-value state (staged, not running).
    async fn kv_replace(&self, id: &str, entries: agora_runtime::KvEntries) -> Result<(), String> {
        let _ = (id, entries);
        Err("this service host keeps no key-value state".into())
    }
    /// Moves service `from`'s key-value state into service `to` (which may run), only while
    /// both are quiescent: `Ok(None)` while either is busy, `Ok(Some(keys))` once moved. Called
    /// from the task that feeds them readings, so none arrives meanwhile.
    fn kv_move(
        &self,
        from: &str,
        to: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<usize>, String> {
        let _ = (from, to, max_entries, max_bytes);
        Err("this service host keeps no key-value state".into())
    }
}

/// The hosting layer's side of an uptime probe's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeWitness {
    /// Whether the service's instance runs.
    pub running: bool,
    /// What the live instance's `agora_probe(nonce)` returned, if it has the export.
    pub guest: Option<i64>,
}

/// The node's wasm/container host as the orchestrator drives it.
#[async_trait]
impl ServiceControl for crate::ServiceHost {
    async fn stage(&self, id: &str, image: Cid) -> Result<StagedService, String> {
        // A re-stage (after a stop, or on recovery) replaces the previous instance.
        let _ = self.remove(id).await;
        let info = crate::ServiceHost::stage(self, id, image)
            .await
            .map_err(|e| e.to_string())?;
        Ok(StagedService {
            devices: info.manifest.devices,
            name: info.manifest.name,
        })
    }

    async fn stage_for_contract(
        &self,
        id: &str,
        image: Cid,
        ceiling: ContractCeiling,
    ) -> Result<StagedService, StageError> {
        let _ = self.remove(id).await;
        let info = crate::ServiceHost::stage_for_contract(self, id, image, &ceiling).await?;
        Ok(StagedService {
            devices: info.manifest.devices,
            name: info.manifest.name,
        })
    }

    async fn devices_of(&self, image: Cid) -> Result<Vec<u32>, String> {
        self.image_devices(image).await.map_err(|e| e.to_string())
    }

    async fn start(&self, id: &str) -> Result<(), String> {
        crate::ServiceHost::start(self, id)
            .await
            .map_err(|e| e.to_string())
    }

    async fn stop(&self, id: &str) -> Result<(), String> {
        crate::ServiceHost::stop(self, id)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn forget(&self, id: &str) -> Result<(), String> {
        crate::ServiceHost::forget(self, id)
            .await
            .map_err(|e| e.to_string())
    }

    fn push_reading(&self, id: &str, frame: Vec<u8>) -> Result<(), String> {
        crate::ServiceHost::push_reading(self, id, frame).map_err(|e| e.to_string())
    }

    fn kv_snapshot(
        &self,
        id: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<agora_runtime::KvEntries>, String> {
        crate::ServiceHost::kv_snapshot(self, id, max_entries, max_bytes).map_err(|e| e.to_string())
    }

    fn kv_move(
        &self,
        from: &str,
        to: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<usize>, String> {
        crate::ServiceHost::kv_move(self, from, to, max_entries, max_bytes)
            .map_err(|e| e.to_string())
    }

    async fn kv_replace(&self, id: &str, entries: agora_runtime::KvEntries) -> Result<(), String> {
        let me = self.clone();
        let id = id.to_string();
        // Deleting and writing up to a thousand sled keys: off the async threads.
        tokio::task::spawn_blocking(move || {
            crate::ServiceHost::kv_replace(&me, &id, &entries).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn running(&self, id: &str) -> bool {
        // Not while its restart policy waits to restart a failed instance: no instance runs.
        self.health(id)
            .is_ok_and(|h| h.state == agora_runtime::ServiceState::Active && !h.restarting)
    }

    async fn active(&self, id: &str) -> bool {
        // A wait after this host failed to start the instance is its own outage, not the
        // guest's: not claimed.
        self.health(id).is_ok_and(|h| {
            h.state == agora_runtime::ServiceState::Active && !(h.restarting && h.start_failed)
        })
    }

    async fn instance_rivals(&self, id: &str) -> (u32, Vec<String>) {
        match crate::ServiceHost::instance_rivals(self, id) {
            Ok((max, rivals)) => (max, rivals.into_iter().map(|(s, _)| s).collect()),
            Err(_) => (u32::MAX, Vec::new()),
        }
    }

    async fn unresolved_dependency(&self, id: &str) -> Option<String> {
        crate::ServiceHost::unresolved_dependency(self, id)
            .ok()
            .flatten()
    }

    async fn probe(&self, id: &str, nonce: i64) -> ProbeWitness {
        let running = self.running(id).await;
        let guest = if running {
            self.probe_live(id, nonce).await
        } else {
            None
        };
        ProbeWitness { running, guest }
    }

    async fn probe_image(&self, image: Cid, nonce: i64) -> GuestExpectation {
        crate::ServiceHost::probe_image(self, image, nonce).await
    }

    async fn retain_probe_images(&self, keep: &std::collections::BTreeSet<Cid>) -> usize {
        crate::ServiceHost::retain_probe_images(self, keep).await
    }
}
