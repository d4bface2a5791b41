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
//! That checkpoint is sealed before the snapshot goes and travels inside it.
//!
//! Provider: keeps the newest snapshot per contract from the contract's customer only (as the
//! orchestrator, reading the ledger, named them), one file per contract under
//! [`crate::STATE_DIR`] so a restart keeps it; the orchestrator takes it out at the takeover.
//! It applies the checkpoint that came with a kept snapshot and gossips it on, as the customer
//! signed it ([`relayable`]): a customer killed after the answer and before its own gossip
//! (found under load: two readings per device processed by the customer, reflected in the
//! provider's snapshot, and recorded by no checkpoint) no longer takes the only record of those
//! readings with it. When the customer does gossip it, one of the two copies is a duplicate.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use agora_contracts::ContractId;
use agora_contracts::state::{
    MAX_KEPT_STATES, MAX_STATE_BYTES, MAX_STATE_ENTRIES, StateEntry, StateSnapshot, StateStore,
};
use agora_market::NodeId;
use agora_wire::codec::{Envelope, GOSSIP_MAX_SKEW_MS, Kind, MAX_GOSSIP_BYTES};
use agora_wire::now_ms;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use super::{PreparedCheckpoint, RadioTask, StateAnswer, ask_peer};
use crate::rules::Forward;
use crate::{Checkpoint, KeptState, RADIO_TOPIC, RadioRpc, STATE_MAX_HELD_TICKS};

/// How long a customer waits for its providers to answer a snapshot.
const STATE_TIMEOUT: Duration = Duration::from_secs(2);
/// Standby providers one service's state goes to.
const MAX_STATE_TARGETS: usize = 8;
/// Stateful services on one node.
const MAX_STATEFUL_SERVICES: usize = 64;
/// Tries (20 ms apart) to find a released service quiescent for its state to go back.
const BACK_TRIES: u32 = 10;

/// Both sides' state of the radio task.
pub(super) struct StateSide {
    /// Customer: service → its standby providers `(contract, provider)`.
    targets: BTreeMap<String, Vec<(ContractId, NodeId)>>,
    /// Customer: the checkpoint (sealed) that waits for the providers' answer, per service.
    in_flight: BTreeMap<String, Option<PreparedCheckpoint>>,
    /// Customer: ticks a service's checkpoint has waited for a quiescent moment.
    held: BTreeMap<String, u32>,
    /// Customer: the next snapshot's `seq` (starts at the clock, so it rises across restarts).
    seq: u64,
    answers: mpsc::Sender<StateAnswer>,
    /// Provider of a standby contract in effect: service → (contract, customer), whose state
    /// goes back to the customer when the service releases the devices ("the way back").
    back: BTreeMap<String, (ContractId, NodeId)>,
    /// Provider: the newest snapshot per contract (customer, on the way back: the newest its
    /// provider sent at the release).
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
            back: BTreeMap::new(),
            store,
            dir,
        }
    }

    /// Whether `service`'s state goes back to a customer when it releases its devices.
    pub(super) fn goes_back(&self, service: &str) -> bool {
        self.back.contains_key(service)
    }

    /// Provider: `service` runs the standby contract `contract` of `customer` with its
    /// devices; its state goes back to `customer` when it releases them.
    pub(super) fn set_back(&mut self, service: String, contract: ContractId, customer: NodeId) {
        if self.back.contains_key(&service) || self.back.len() < MAX_STATEFUL_SERVICES {
            self.back.insert(service, (contract, customer));
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

    /// The checkpoint of `service` waiting for an answer, taken out (it goes now).
    pub(super) fn take_in_flight(&mut self, service: &str) -> Option<PreparedCheckpoint> {
        self.in_flight.remove(service).flatten()
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
        // The checkpoint is sealed now and travels with the snapshot: the provider gossips it
        // too, so it outlives this node dying between the answer and its own gossip.
        let prepared = self.prepare_checkpoint(service, frames, Vec::new()).await;
        let checkpoint = prepared.as_ref().map(|p| p.envelope.to_bytes());
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
            match self.seal(&RadioRpc::State {
                snapshot,
                checkpoint: checkpoint.clone(),
            }) {
                Ok(env) => sends.push((provider, env)),
                Err(e) => warn!(error = %e, "state snapshot not sealed"),
            }
        }
        self.state.in_flight.insert(service.to_string(), prepared);
        let (network, tx, service) = (
            self.network.clone(),
            self.state.answers.clone(),
            service.to_string(),
        );
        tokio::spawn(
            async move {
                let mut all = !sends.is_empty();
                for (peer, env) in sends {
                    let kept =
                        match ask_peer(&network, peer, &env, STATE_TIMEOUT, "a state snapshot")
                            .await
                        {
                            Some(RadioRpc::StateAck { kept: true, .. }) => true,
                            Some(RadioRpc::StateAck { reason, .. }) => {
                                warn!(%peer, %reason, "state snapshot refused by the provider");
                                false
                            }
                            _ => false,
                        };
                    all &= kept;
                }
                let _ = tx.send((service, all)).await;
            }
            .in_current_span(),
        );
    }

    /// Provider, releasing the devices of `service` (the customer of its standby contract is
    /// back): the service's state, with the readings it reflects (`coverage`), goes to the
    /// customer before the release checkpoint does, so that the customer resumes from it ("the
    /// way back"; the customer takes it only from the provider its ledger names,
    /// `RadioHandle::accept_state`). The state is copied at a quiescent moment (the devices no
    /// longer feed the service: at most [`BACK_TRIES`] short waits for the readings queued), and
    /// the answer is awaited at most [`STATE_TIMEOUT`] (this holds the radio task that long
    /// once per contract end). Without an answer the customer resumes from its own older
    /// state, as before the way back existed (counted `state_send_failed`).
    pub(super) async fn state_back(&mut self, service: &str, coverage: Vec<(u32, u32)>) {
        let Some((contract, customer)) = self.state.back.remove(service) else {
            return;
        };
        let mut entries = None;
        for _ in 0..BACK_TRIES {
            match self
                .services
                .kv_snapshot(service, MAX_STATE_ENTRIES, MAX_STATE_BYTES)
            {
                Ok(Some(e)) => {
                    entries = Some(e);
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => {
                    warn!(%service, error = %e, "state not sent back to the customer");
                    break;
                }
            }
        }
        let Some(entries) = entries else {
            self.stats.state_skipped += 1;
            return;
        };
        self.state.seq += 1;
        let snapshot = StateSnapshot {
            contract,
            seq: self.state.seq,
            taken_at: now_ms(),
            coverage,
            entries: entries
                .into_iter()
                .map(|(key, value)| StateEntry { key, value })
                .collect(),
        };
        let keys = snapshot.entries.len();
        let Ok(env) = self.seal(&RadioRpc::State {
            snapshot,
            checkpoint: None,
        }) else {
            return;
        };
        let answer = ask_peer(
            &self.network,
            customer,
            &env,
            STATE_TIMEOUT,
            "a state snapshot on the way back",
        )
        .await;
        if matches!(answer, Some(RadioRpc::StateAck { kept: true, .. })) {
            self.stats.state_sent += 1;
            info!(contract = %contract.short(), %customer, keys, "service state sent back to the customer");
        } else {
            self.stats.state_send_failed += 1;
            warn!(contract = %contract.short(), %customer, ?answer, "the customer did not keep the state sent back: it resumes from its own");
        }
    }

    /// Customer: the providers answered `service`'s snapshot; its checkpoint goes out.
    pub(super) async fn on_state_answer(&mut self, service: &str, kept: bool) {
        if kept {
            self.stats.state_sent += 1;
        } else {
            self.stats.state_send_failed += 1;
        }
        if let Some(p) = self.state.take_in_flight(service) {
            self.publish_checkpoint(p).await;
        }
    }

    /// Provider: a snapshot signed by `sender`; kept per `agora_contracts::state`, answered;
    /// the checkpoint that came with a kept one is applied here and gossiped on
    /// ([`Self::relay_checkpoint`]).
    pub(super) async fn on_state(
        &mut self,
        id: u64,
        sender: NodeId,
        snapshot: StateSnapshot,
        checkpoint: Option<Vec<u8>>,
    ) {
        let contract = snapshot.contract;
        let (seq, keys) = (snapshot.seq, snapshot.entries.len());
        let mut relay = None;
        let answer = match self.state.store.receive(sender, snapshot) {
            Ok(()) => {
                relay = checkpoint;
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
        if let Some(bytes) = relay {
            self.relay_checkpoint(sender, &bytes).await;
        }
    }

    /// Provider: the customer's checkpoint of the readings a kept snapshot reflects. Applied
    /// here as if the customer had gossiped it, and gossiped on when it moved something (the
    /// customer's own gossip of it, if it comes, is a duplicate); refused and counted unless
    /// [`relayable`] (the customer's signature, fresh, a radio checkpoint).
    async fn relay_checkpoint(&mut self, customer: NodeId, bytes: &[u8]) {
        match relayable(&customer, bytes, now_ms()) {
            Ok((envelope, checkpoint)) => {
                if self.on_peer_checkpoint(customer, checkpoint) == Forward::Accept {
                    self.stats.state_checkpoints_relayed += 1;
                    if let Err(e) = self.network.publish(RADIO_TOPIC, &envelope).await {
                        debug!(error = %e, "customer's checkpoint not gossiped on");
                    }
                }
            }
            Err(e) => {
                self.stats.state_checkpoints_refused += 1;
                let n = self.stats.state_checkpoints_refused;
                if n <= 16 || n.is_power_of_two() {
                    warn!(%customer, error = %e, refused = n, "checkpoint with a state snapshot refused");
                }
            }
        }
    }
}

/// Why a checkpoint that came with a state snapshot is not gossiped on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RelayRefusal {
    /// Not an envelope, a bad signature, over [`MAX_GOSSIP_BYTES`], or outside the gossip
    /// freshness window (receivers would drop it as stale).
    #[error("not a fresh signed envelope: {0}")]
    Envelope(String),
    /// Signed by someone else than the snapshot's signer.
    #[error("signed by {0}, not by the snapshot's signer")]
    NotTheSigner(NodeId),
    /// Not a radio checkpoint.
    #[error("not a radio checkpoint: {0}")]
    NotACheckpoint(String),
}

/// The checkpoint in `bytes` if it may be gossiped on for `customer`: a `Kind::Radio`
/// envelope that `customer` signed, within the gossip size limit and freshness window, whose
/// body is a [`Checkpoint`]. Whether its ranges count is the radio rules' business, as for any
/// gossiped checkpoint.
pub(crate) fn relayable(
    customer: &NodeId,
    bytes: &[u8],
    now: u64,
) -> Result<(Envelope, Checkpoint), RelayRefusal> {
    let envelope = Envelope::open(bytes, MAX_GOSSIP_BYTES)
        .and_then(|e| e.check_fresh(now, GOSSIP_MAX_SKEW_MS).map(|()| e))
        .map_err(|e| RelayRefusal::Envelope(e.to_string()))?;
    if envelope.sender != *customer {
        return Err(RelayRefusal::NotTheSigner(envelope.sender));
    }
    let checkpoint = envelope
        .body::<Checkpoint>(Kind::Radio)
        .map_err(|e| RelayRefusal::NotACheckpoint(e.to_string()))?;
    Ok((envelope, checkpoint))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::SeqRange;
    use agora_market::{KeySigner, Signer};

    const NOW: u64 = 1_800_000_000_000;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            service: "own".into(),
            ranges: vec![SeqRange {
                device: 101,
                first: 159,
                last: 160,
                count: 2,
            }],
            proof: String::new(),
            released: Vec::new(),
            at: NOW,
        }
    }

    fn sealed(signer: &KeySigner, kind: Kind, at: u64, body: &impl serde::Serialize) -> Vec<u8> {
        Envelope::seal_body(signer, kind, at, 7, body)
            .unwrap()
            .to_bytes()
    }

    #[test]
    fn the_customers_fresh_checkpoint_is_relayed_as_signed() {
        let customer = KeySigner::from_seed(1);
        let bytes = sealed(&customer, Kind::Radio, NOW - 1_000, &checkpoint());
        let (envelope, c) = relayable(&customer.node_id(), &bytes, NOW).unwrap();
        assert_eq!(c, checkpoint());
        // Gossiped as the very bytes the customer signed: its own copy is a duplicate.
        assert_eq!(envelope.to_bytes(), bytes);
        assert_eq!(envelope.sender, customer.node_id());
    }

    #[test]
    fn anything_but_the_signers_fresh_radio_checkpoint_is_refused() {
        let customer = KeySigner::from_seed(1);
        let other = KeySigner::from_seed(2);
        let me = customer.node_id();
        // Someone else's checkpoint, handed over inside the customer's snapshot.
        let theirs = sealed(&other, Kind::Radio, NOW, &checkpoint());
        assert_eq!(
            relayable(&me, &theirs, NOW).unwrap_err(),
            RelayRefusal::NotTheSigner(other.node_id())
        );
        // Stale: receivers would drop it; a fresh one from the future too.
        for at in [NOW - GOSSIP_MAX_SKEW_MS - 1, NOW + GOSSIP_MAX_SKEW_MS + 1] {
            let old = sealed(&customer, Kind::Radio, at, &checkpoint());
            assert!(matches!(
                relayable(&me, &old, NOW),
                Err(RelayRefusal::Envelope(_))
            ));
        }
        // Another kind of message, or another body.
        let market = sealed(&customer, Kind::Market, NOW, &checkpoint());
        assert!(matches!(
            relayable(&me, &market, NOW),
            Err(RelayRefusal::NotACheckpoint(_))
        ));
        let not = sealed(&customer, Kind::Radio, NOW, &"a string");
        assert!(matches!(
            relayable(&me, &not, NOW),
            Err(RelayRefusal::NotACheckpoint(_))
        ));
        // Tampered, garbage, oversized.
        let mut tampered = sealed(&customer, Kind::Radio, NOW, &checkpoint());
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(relayable(&me, &tampered, NOW).is_err());
        assert!(relayable(&me, b"junk", NOW).is_err());
        let big = vec![0u8; MAX_GOSSIP_BYTES + 1];
        assert!(matches!(
            relayable(&me, &big, NOW),
            Err(RelayRefusal::Envelope(_))
        ));
    }
}
