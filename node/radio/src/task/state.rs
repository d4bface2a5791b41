//! Stateful services (issue #15, rules in `agora_contracts::state`): a guest's key-value state
//! travels to the standby providers of its contract, coupled with the readings it reflects.
//!
//! Customer: at each checkpoint tick a stateful service's state is copied while it is quiescent
//! (no reading queued, no guest call running; this task is the only one feeding it readings, so
//! none arrives meanwhile) together with the highest sequence number fed per device, sent in an
//! envelope this node signs ([`RadioRpc::State`], request-response, one per provider), and the
//! checkpoint of those readings is gossiped only once the providers answered (or did not within
//! [`STATE_TIMEOUT`]): a provider's newest snapshot covers at least as far as the customer's
//! last checkpoint it heard. While the answer is awaited the next frames wait in `pending`.
//!
//! Provider: keeps the newest snapshot per contract from the contract's customer only (as the
//! orchestrator, reading the ledger, named them), one file per contract under
//! [`crate::STATE_DIR`] so a restart keeps it; the orchestrator takes it out at the takeover.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use agora_contracts::ContractId;
use agora_contracts::state::{
    MAX_KEPT_STATES, MAX_STATE_BYTES, MAX_STATE_ENTRIES, StateEntry, StateSnapshot, StateStore,
};
use agora_market::NodeId;
use agora_wire::codec::Kind;
use agora_wire::now_ms;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use super::{RadioTask, StateAnswer};
use crate::{KeptState, RadioRpc, STATE_MAX_HELD_TICKS};

/// How long a customer waits for its providers to answer a snapshot.
const STATE_TIMEOUT: Duration = Duration::from_secs(2);
/// Standby providers one service's state goes to.
const MAX_STATE_TARGETS: usize = 8;
/// Stateful services on one node.
const MAX_STATEFUL_SERVICES: usize = 64;

/// Frames fed to a service, waiting for their checkpoint.
type Frames = Vec<(u32, u32, Vec<u8>)>;

/// Both sides' state of the radio task.
pub(super) struct StateSide {
    /// Customer: service → its standby providers `(contract, provider)`.
    targets: BTreeMap<String, Vec<(ContractId, NodeId)>>,
    /// Customer: frames whose checkpoint waits for the providers' answer.
    in_flight: BTreeMap<String, Frames>,
    /// Customer: ticks a service's checkpoint has waited for a quiescent moment.
    held: BTreeMap<String, u32>,
    /// Customer: the next snapshot's `seq` (starts at the clock, so it rises across restarts).
    seq: u64,
    answers: mpsc::Sender<StateAnswer>,
    /// Provider: the newest snapshot per contract.
    pub(super) store: StateStore,
    dir: Option<PathBuf>,
}

impl StateSide {
    /// The provider's snapshots kept on disk before a restart (bounded in count and size).
    pub(super) fn load(dir: Option<PathBuf>, answers: mpsc::Sender<StateAnswer>) -> Self {
        let mut store = StateStore::default();
        if let Some(d) = &dir
            && let Ok(entries) = std::fs::read_dir(d)
        {
            for e in entries.flatten().take(MAX_KEPT_STATES * 2) {
                let path = e.path();
                let small = e
                    .metadata()
                    .is_ok_and(|m| m.len() <= (2 * MAX_STATE_BYTES) as u64);
                let snap = small
                    .then(|| std::fs::read(&path).ok())
                    .flatten()
                    .and_then(|b| serde_cbor::from_slice::<StateSnapshot>(&b).ok());
                if !snap.is_some_and(|s| store.restore(s)) {
                    debug!(path = %path.display(), "state snapshot file not restored");
                }
            }
            if !store.is_empty() {
                info!(kept = store.len(), "state snapshots restored from disk");
            }
        }
        StateSide {
            targets: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            held: BTreeMap::new(),
            seq: now_ms(),
            answers,
            store,
            dir,
        }
    }

    /// Whether `service`'s checkpoints wait for its state to reach its providers.
    pub(super) fn stateful(&self, service: &str) -> bool {
        self.targets.contains_key(service)
    }

    pub(super) fn set_targets(&mut self, service: String, mut targets: Vec<(ContractId, NodeId)>) {
        targets.truncate(MAX_STATE_TARGETS);
        if targets.is_empty() {
            self.targets.remove(&service);
            self.held.remove(&service);
        } else if self.targets.contains_key(&service) || self.targets.len() < MAX_STATEFUL_SERVICES
        {
            self.targets.insert(service, targets);
        }
    }

    /// Frames of `service` waiting for an answer, taken out (their checkpoint goes now).
    pub(super) fn take_in_flight(&mut self, service: &str) -> Frames {
        self.in_flight.remove(service).unwrap_or_default()
    }

    pub(super) fn accept(&mut self, contract: ContractId, customer: NodeId, devices: Vec<u32>) {
        if !self.store.allow(contract, customer, devices) {
            warn!(contract = %contract.short(), "state snapshots refused: kept for {MAX_KEPT_STATES} contracts already");
        }
    }

    pub(super) fn forget(&mut self, contract: &ContractId) {
        self.store.forget(contract);
        self.remove_file(contract);
    }

    pub(super) fn take(&mut self, contract: &ContractId) -> Option<StateSnapshot> {
        let s = self.store.take(contract);
        if s.is_some() {
            self.remove_file(contract);
        }
        s
    }

    pub(super) fn kept(&self) -> Vec<KeptState> {
        self.store
            .snapshots()
            .map(|s| KeptState {
                contract: s.contract.to_string(),
                seq: s.seq,
                coverage: s.coverage.clone(),
                entries: s.entries.len(),
                bytes: s.size_bytes(),
            })
            .collect()
    }

    fn file(&self, contract: &ContractId) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{contract}.cbor")))
    }

    fn remove_file(&self, contract: &ContractId) {
        if let Some(f) = self.file(contract) {
            let _ = std::fs::remove_file(f);
        }
    }

    /// Writes the kept snapshot of `contract` (a temporary file renamed over the old one).
    fn save(&self, contract: &ContractId) {
        let (Some(path), Some(s)) = (self.file(contract), self.store.get(contract)) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            let body = serde_cbor::to_vec(s).map_err(std::io::Error::other)?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, body)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            warn!(contract = %contract.short(), error = %e, "state snapshot not saved: a restart loses it");
        }
    }
}

impl RadioTask {
    /// Customer: copies `service`'s state while it is quiescent and sends it to its providers;
    /// the checkpoint of the frames fed so far goes out when they answer
    /// ([`Self::on_state_answer`]). A service that stays busy, or whose state cannot travel,
    /// is checkpointed without a snapshot (counted).
    pub(super) async fn checkpoint_with_state(&mut self, service: &str) {
        if self.state.in_flight.contains_key(service) {
            return;
        }
        let copy = self
            .services
            .kv_snapshot(service, MAX_STATE_ENTRIES, MAX_STATE_BYTES);
        let entries = match copy {
            Ok(Some(entries)) => entries,
            Ok(None) => {
                let held = self.state.held.entry(service.to_string()).or_insert(0);
                *held += 1;
                if *held >= STATE_MAX_HELD_TICKS {
                    *held = 0;
                    self.stats.state_skipped += 1;
                    warn!(%service, "service busy at every checkpoint tick: checkpoint without a state snapshot");
                    self.checkpoint(service, Vec::new()).await;
                }
                return;
            }
            Err(e) => {
                self.stats.state_skipped += 1;
                if self.stats.state_skipped <= 16 || self.stats.state_skipped.is_power_of_two() {
                    warn!(%service, error = %e, "state snapshot not taken: checkpoint without it");
                }
                return self.checkpoint(service, Vec::new()).await;
            }
        };
        self.state.held.remove(service);
        let frames = self.pending.remove(service).unwrap_or_default();
        let coverage: Vec<(u32, u32)> = self
            .table
            .values()
            .filter(|d| d.status.service.as_deref() == Some(service))
            .filter_map(|d| Some((d.status.device, d.status.last_processed?)))
            .collect();
        let entries: Vec<StateEntry> = entries
            .into_iter()
            .map(|(key, value)| StateEntry { key, value })
            .collect();
        self.state.seq += 1;
        let targets = self.state.targets.get(service).cloned().unwrap_or_default();
        let mut sends = Vec::new();
        for (contract, provider) in targets {
            let snapshot = StateSnapshot {
                contract,
                seq: self.state.seq,
                taken_at: now_ms(),
                coverage: coverage.clone(),
                entries: entries.clone(),
            };
            match self.seal(&RadioRpc::State { snapshot }) {
                Ok(env) => sends.push((provider, env)),
                Err(e) => warn!(error = %e, "state snapshot not sealed"),
            }
        }
        self.state.in_flight.insert(service.to_string(), frames);
        let (network, tx, service) = (
            self.network.clone(),
            self.state.answers.clone(),
            service.to_string(),
        );
        tokio::spawn(
            async move {
                let mut all = !sends.is_empty();
                for (peer, env) in sends {
                    let kept = match agora_network::keys::peer_id_of(&peer) {
                        Some(pid) => {
                            match tokio::time::timeout(STATE_TIMEOUT, network.request(pid, &env))
                                .await
                            {
                                Ok(Ok(a)) if a.sender == peer => {
                                    match a.body::<RadioRpc>(Kind::Radio) {
                                        Ok(RadioRpc::StateAck { kept: true, .. }) => true,
                                        Ok(RadioRpc::StateAck { reason, .. }) => {
                                            warn!(%peer, %reason, "state snapshot refused by the provider");
                                            false
                                        }
                                        _ => false,
                                    }
                                }
                                Ok(Ok(_)) => false,
                                Ok(Err(e)) => {
                                    debug!(%peer, error = %e, "provider not reached with a state snapshot");
                                    false
                                }
                                Err(_) => {
                                    debug!(%peer, "provider did not answer a state snapshot");
                                    false
                                }
                            }
                        }
                        None => false,
                    };
                    all &= kept;
                }
                let _ = tx.send((service, all)).await;
            }
            .in_current_span(),
        );
    }

    /// Customer: the providers answered `service`'s snapshot; its checkpoint goes out.
    pub(super) async fn on_state_answer(&mut self, service: &str, kept: bool) {
        if kept {
            self.stats.state_sent += 1;
        } else {
            self.stats.state_send_failed += 1;
        }
        if let Some(frames) = self.state.in_flight.remove(service) {
            self.checkpoint_frames(service, frames, Vec::new()).await;
        }
    }

    /// Provider: a snapshot signed by `sender`; kept per `agora_contracts::state`, answered.
    pub(super) async fn on_state(&mut self, id: u64, sender: NodeId, snapshot: StateSnapshot) {
        let contract = snapshot.contract;
        let (seq, keys) = (snapshot.seq, snapshot.entries.len());
        let answer = match self.state.store.receive(sender, snapshot) {
            Ok(()) => {
                debug!(contract = %contract.short(), seq, keys, "state snapshot kept");
                self.state.save(&contract);
                RadioRpc::StateAck {
                    kept: true,
                    reason: String::new(),
                }
            }
            Err(e) => {
                let st = self.state.store.stats;
                let refused = st.refused_unknown
                    + st.refused_not_customer
                    + st.refused_malformed
                    + st.refused_older
                    + st.refused_full;
                if refused <= 16 || refused.is_power_of_two() {
                    warn!(%sender, contract = %contract.short(), error = %e, refused, "state snapshot refused");
                }
                RadioRpc::StateAck {
                    kept: false,
                    reason: e.to_string(),
                }
            }
        };
        if let Ok(env) = self.seal(&answer) {
            let _ = self.network.respond(id, &env).await;
        }
    }
}
