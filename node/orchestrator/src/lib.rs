//! The orchestrator: turns ledger facts and presence into actions, for the three roles a node
//! plays in a contract.
//!
//! - Provider: migrate (fetch, verify, precompile the image; `MarkMigrated`), arm (`MarkArmed`,
//!   buffer the customer's sensors), activate on an attested handover (start the staged service,
//!   take the sensors over from the customer's last checkpoint, `ReportActivation`), report
//!   signed uptime heartbeats and data proofs while active, stop when settled.
//! - Arbitrator (one of the contract's arbitrators): watch the customers of standby contracts
//!   and attest what its own liveness checks see (`Attest`), so handover is a quorum's fact, not
//!   a party's claim.
//! - Customer: run its own service on its own sensors, and take the sensors back once a
//!   handover is settled.
//! - Either party: settle when the moment comes (the customer back after a handover, a
//!   deadline passed without activation, the term ended).
//!
//! The arbitrator's decisions, settlement, and whether the ledger is current are the pure role
//! machine's (`agora_roles::Roles`): `roles` turns blocks, presence changes, ticks and the
//! outcomes of probes and challenges into its inputs and performs its effects. The provider's
//! and the customer's decisions still come from `agora_contracts::duties_for` on every applied
//! block, and from the ledger's current state on start, so a restarted node resumes whatever
//! it was doing: the handover of a standby contract is in `handover`, the custody of a storage
//! contract in `custody`, the node's own service in `own`.
//!
//! May depend on every crate below it: `agora-ledger` (facts, submitting transactions),
//! `agora-network` (presence, watching), `agora-hosting` (staging and running services),
//! `agora-radio` (routing sensors), `agora-exchange` (custody, challenges), `agora-wire` and the
//! pure crates; nothing depends on it but the control API and the daemon.
#![forbid(unsafe_code)]

mod custody;
mod handover;
mod own;
mod probe;
mod retire;
mod roles;
mod upgrade;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_contracts::{ContractId, TxKind};
use agora_market::{KeySigner, NodeId, Timestamp};
use agora_roles::{ACTIVATION_RESEND_MS, AuditVerdict, FollowedDevices, Roles, RolesConfig};
use agora_storage::challenge::StorageCommitment;
use cid::Cid;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use agora_exchange::StorageHandle;
use agora_hosting::control::ServiceControl;
use agora_ledger::{AppliedBlock, LedgerHandle};
use agora_network::{Inbox, Interest, NetworkEvent, NetworkHandle};
use agora_radio::RadioHandle;
use agora_wire::now_ms;

pub use agora_roles::ARM_TIMEOUT_MS;
pub use own::OwnService;

/// Entries kept in the timeline.
const KEPT_TIMELINE: usize = 512;
/// Most bytes of one timeline entry's detail.
const MAX_TIMELINE_DETAIL: usize = 1024;

/// One step the orchestrator took, for `agora timeline` and the demo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When (ms, this node's clock).
    pub at: Timestamp,
    /// Phase name: migrated, armed, attested-down, activated, settled, …
    pub phase: String,
    /// Contract concerned, if any.
    pub contract: Option<String>,
    /// Details.
    pub detail: String,
    /// A latency measured by this step (e.g. handover block arrival → service started), ms.
    #[serde(default)]
    pub latency_ms: Option<u64>,
}

/// Called with every entry as it is recorded (metrics count phases and latencies this way).
pub type TimelineObserver = Arc<dyn Fn(&TimelineEntry) + Send + Sync>;

/// Shared, readable timeline.
#[derive(Clone, Default)]
pub struct Timeline {
    entries: Arc<Mutex<VecDeque<TimelineEntry>>>,
    observer: Option<TimelineObserver>,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Timeline {
    /// A timeline that also hands every entry to `observer` (e.g. the node's metrics).
    pub fn observed(observer: TimelineObserver) -> Self {
        Timeline {
            entries: Arc::default(),
            observer: Some(observer),
        }
    }

    /// Records an entry.
    pub fn push(&self, phase: &str, contract: Option<&ContractId>, detail: impl Into<String>) {
        self.push_latency(phase, contract, detail, None);
    }

    /// Records an entry with a measured latency.
    pub fn push_latency(
        &self,
        phase: &str,
        contract: Option<&ContractId>,
        detail: impl Into<String>,
        latency_ms: Option<u64>,
    ) {
        let mut detail = detail.into();
        if detail.len() > MAX_TIMELINE_DETAIL {
            // Whatever the caller passed (some details quote peers): the timeline holds 512
            // entries and each is logged, so each is bounded too.
            detail = agora_wire::clip(&detail, MAX_TIMELINE_DETAIL).into_owned();
        }
        // Logged and printed: no control character of a peer's text gets through.
        if let std::borrow::Cow::Owned(escaped) = agora_wire::printable(&detail) {
            detail = escaped;
        }
        let entry = TimelineEntry {
            at: now_ms(),
            phase: phase.to_string(),
            contract: contract.map(ToString::to_string),
            detail,
            latency_ms,
        };
        info!(phase, contract = ?entry.contract, detail = %entry.detail, "orchestrator");
        if let Some(observe) = &self.observer {
            observe(&entry);
        }
        let mut t = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.push_back(entry);
        while t.len() > KEPT_TIMELINE {
            t.pop_front();
        }
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> Vec<TimelineEntry> {
        let t = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.iter().cloned().collect()
    }
}

/// A contract this node hosts as provider.
#[derive(Clone, Debug)]
struct Hosted {
    devices: Vec<u32>,
    /// The manifest's service name: with the customer, its line (an upgrade's old and new
    /// contract share it; `agora_contracts::state::lineage`).
    name: String,
    customer: NodeId,
    active_since: Option<Timestamp>,
    /// When the next heartbeat is due and what it claims (the rule is `agora_roles`'; this
    /// crate only measures and submits).
    beat: agora_roles::Heartbeat,
    /// When this node last submitted the contract's activation report (0: none waiting for
    /// the ledger): sent again every [`ACTIVATION_RESEND_MS`] until the ledger shows the
    /// activation (THREATS C10: a report refused by one block is not the end of it).
    activation_sent: Timestamp,
}

/// How often the orchestrator fell behind the ledger's block channel
/// (`broadcast::error::RecvError::Lagged`): each time it missed blocks and rescanned the
/// ledger instead. Counted, so that a node too slow for its blocks shows in its timeline and
/// metrics rather than only in a debug log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Lagged {
    /// Times it fell behind.
    times: u64,
    /// Blocks it missed in all.
    blocks: u64,
}

impl Lagged {
    /// Counts one fall behind of `missed` blocks; whether to log it at `warn` (the 1st, 2nd,
    /// 4th, 8th… time, as the network's routes do, so a node that keeps falling behind does
    /// not flood its log).
    fn count(&mut self, missed: u64) -> bool {
        self.times = self.times.saturating_add(1);
        self.blocks = self.blocks.saturating_add(missed);
        self.times.is_power_of_two()
    }
}

/// Requests from the control API.
enum Request {
    SetOwn(Cid, oneshot::Sender<Result<Vec<u32>, String>>),
}

/// Handle for the control API.
#[derive(Clone, Debug)]
pub struct OrchestratorHandle {
    tx: mpsc::Sender<Request>,
    /// What the orchestrator did.
    pub timeline: Timeline,
}

impl OrchestratorHandle {
    /// Makes `image` this node's own service on its own sensors; returns the sensors.
    pub async fn set_own(&self, image: Cid) -> Result<Vec<u32>, String> {
        let (tx, rx) = oneshot::channel();
        let stopped = || "orchestrator stopped; is the node shutting down?".to_string();
        self.tx
            .send(Request::SetOwn(image, tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Results of background work, back to the loop.
enum Done {
    Staged {
        contract: ContractId,
        customer: NodeId,
        devices: Vec<u32>,
        name: String,
        heartbeat_ms: u64,
        then_start: bool,
    },
    /// Provider: the contract's image could not be staged (`reason`): unusable here, or not
    /// fetched while the contract left time to activate.
    StageFailed {
        contract: ContractId,
        reason: String,
    },
    /// Provider of a storage contract: custody of the file taken (or refused, with why).
    Custody {
        contract: ContractId,
        file: Cid,
        commitment: Cid,
        result: Result<(), String>,
    },
    /// Arbitrator: one challenge done, with the commitment it decoded (kept for the next).
    Audited {
        contract: ContractId,
        verdict: AuditVerdict,
        commitment: Option<(Cid, StorageCommitment)>,
    },
    /// Arbitrator: one probe answered; `Err` says why it counts as down.
    Probed {
        contract: ContractId,
        interval: u64,
        outcome: Result<(), String>,
    },
}

/// Everything the orchestrator task owns.
pub struct Orchestrator {
    me: NodeId,
    ledger: LedgerHandle,
    network: NetworkHandle,
    services: Arc<dyn ServiceControl>,
    radio: RadioHandle,
    storage: StorageHandle,
    signer: KeySigner,
    timeline: Timeline,
    hosted: BTreeMap<ContractId, Hosted>,
    /// Storage contracts whose file this node keeps as provider: (file, commitment).
    stored: BTreeMap<ContractId, (Cid, Cid)>,
    /// Storage contracts whose activation this node reported and the ledger has not shown
    /// yet: (the activation time reported, when it was last sent). Sent again every
    /// [`ACTIVATION_RESEND_MS`] like a hosted contract's (THREATS C10).
    storage_activation: BTreeMap<ContractId, (Timestamp, Timestamp)>,
    /// Storage contracts whose custody is being taken.
    taking_custody: BTreeSet<ContractId>,
    /// The role machine: decides the arbitrator's duties and whether the ledger is current.
    roles: Roles,
    /// Arbitrator: probe outcomes waiting to be submitted together (`roles::PROBE_BATCH_MS`;
    /// bounded: flushed every tick once the oldest has waited, or when a batch is full).
    probe_batch: Vec<agora_contracts::ledger::ProbeReport>,
    /// When the oldest of `probe_batch` was added.
    probe_batch_since: Timestamp,
    /// Arbitrator: storage commitments decoded for challenges, by CID (bounded).
    commitments: BTreeMap<Cid, StorageCommitment>,
    /// Provider: the contracts whose service runs here, for the probe responder.
    serving: probe::Serving,
    /// Sequence number of this task's envelopes (probes and their answers).
    seq: u64,
    staging: BTreeSet<ContractId>,
    /// Activations scheduled for a fixed time (`ActivationClause::At`).
    scheduled: BTreeMap<ContractId, Timestamp>,
    /// Provider: services of ended contracts and when they are removed (`retire`).
    retiring: BTreeMap<ContractId, Timestamp>,
    /// Provider: contracts whose arming waits for the same customer's ending contracts of the
    /// module, and when each is checked again (`handover::recheck_arming`).
    arm_waiting: BTreeMap<ContractId, Timestamp>,
    /// Provider: when each of those stops waiting and is called off.
    arm_give_up: BTreeMap<ContractId, Timestamp>,
    /// When hosted contracts were last checked for an end they never ran to (`retire`).
    last_retire_sweep: Timestamp,
    own: own::Own,
    /// Customer: open contracts whose provider the radio was told manages their devices (so
    /// it may be handed their frame keys, threat R1).
    keys_named: BTreeSet<ContractId>,
    /// Customer: the devices each of those contracts names and its provider (the holders of
    /// the devices' keys, threat R1 key rotation).
    key_devices: BTreeMap<ContractId, (NodeId, Vec<u32>)>,
    /// When the block being handled arrived (for the activation latency).
    block_seen_at: Timestamp,
    /// Provider: the devices of each customer this node has staged a contract for (bounded;
    /// `agora_roles::followed`). The radio knows their managers from this node's own
    /// contracts; each later contract of that customer adds its provider, so a checkpoint from
    /// the edge that manages them now still counts here after this node's own turn is over.
    device_owners: FollowedDevices,
    /// Provider: which hosted contract of a service line holds its devices and state (a
    /// start-first upgrade runs two side by side; docs/FLEETS.md "Upgrade").
    lines: agora_contracts::state::lineage::Lines,
    /// Times this task fell behind the ledger's blocks, and the blocks it missed.
    outcomes_lagged: Lagged,
    done_tx: mpsc::Sender<Done>,
}

/// The node components the orchestrator drives.
#[derive(Clone)]
pub struct OrchestratorParts {
    /// Ledger replica.
    pub ledger: LedgerHandle,
    /// Swarm.
    pub network: NetworkHandle,
    /// Service host.
    pub services: Arc<dyn ServiceControl>,
    /// Sensor radio.
    pub radio: RadioHandle,
    /// Content storage (custody and audits of storage contracts).
    pub storage: StorageHandle,
    /// This node's key (signs storage challenges).
    pub signer: KeySigner,
    /// The network's presence timeout for watched peers (`network.presence_timeout_ms`).
    pub presence_timeout_ms: u64,
    /// How long a contract of ours may stay unarmed after its registration before we call it
    /// off (`deals.customer.arm_timeout_ms`; `agora_roles::RolesConfig::arm_timeout_ms`).
    pub arm_timeout_ms: u64,
}

/// Starts the orchestrator; `data_dir` holds its own-service record.
pub fn spawn(
    parts: OrchestratorParts,
    data_dir: PathBuf,
    timeline: Timeline,
    cancel: CancellationToken,
) -> (OrchestratorHandle, JoinHandle<()>) {
    let OrchestratorParts {
        ledger,
        network,
        services,
        radio,
        storage,
        signer,
        presence_timeout_ms,
        arm_timeout_ms,
    } = parts;
    let (done_tx, done_rx) = mpsc::channel(64);
    let (req_tx, req_rx) = mpsc::channel(16);
    let outcomes = ledger.outcomes();
    let events = network.inbox(Interest::new("orchestrator").presence());
    let serving = probe::Serving::default();
    probe::spawn_responder(
        network.clone(),
        services.clone(),
        signer.clone(),
        serving.clone(),
        cancel.clone(),
    );
    let me = network.node_id();
    let o = Orchestrator {
        me,
        ledger,
        network,
        services,
        radio,
        storage,
        signer,
        timeline: timeline.clone(),
        hosted: BTreeMap::new(),
        stored: BTreeMap::new(),
        storage_activation: BTreeMap::new(),
        taking_custody: BTreeSet::new(),
        roles: Roles::new(
            me,
            now_ms(),
            RolesConfig {
                evidence_seed: rand::random(),
                roles: roles::RoleSet::ARBITRATOR_AND_SETTLEMENT,
                arm_timeout_ms,
                ..RolesConfig::with_presence_timeout(presence_timeout_ms)
            },
            None,
        ),
        probe_batch: Vec::new(),
        probe_batch_since: 0,
        commitments: BTreeMap::new(),
        serving: serving.clone(),
        seq: now_ms(),
        staging: BTreeSet::new(),
        scheduled: BTreeMap::new(),
        retiring: BTreeMap::new(),
        arm_waiting: BTreeMap::new(),
        arm_give_up: BTreeMap::new(),
        last_retire_sweep: 0,
        own: own::Own::load(data_dir),
        keys_named: BTreeSet::new(),
        key_devices: BTreeMap::new(),
        block_seen_at: 0,
        device_owners: FollowedDevices::default(),
        lines: Default::default(),
        outcomes_lagged: Lagged::default(),
        done_tx,
    };
    let handle = OrchestratorHandle {
        tx: req_tx,
        timeline,
    };
    let task = tokio::spawn(
        o.run(outcomes, events, done_rx, req_rx, cancel)
            .in_current_span(),
    );
    (handle, task)
}

/// Removes from `map` the contracts whose time came by `now`, and returns them.
fn take_due(map: &mut BTreeMap<ContractId, Timestamp>, now: Timestamp) -> Vec<ContractId> {
    let due: Vec<ContractId> = map
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(c, _)| *c)
        .collect();
    for c in &due {
        map.remove(c);
    }
    due
}

impl Orchestrator {
    async fn run(
        mut self,
        mut outcomes: broadcast::Receiver<Arc<AppliedBlock>>,
        mut events: Inbox,
        mut done_rx: mpsc::Receiver<Done>,
        mut req_rx: mpsc::Receiver<Request>,
        cancel: CancellationToken,
    ) {
        self.recover().await;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                b = outcomes.recv() => match b {
                    Ok(block) => self.on_block(&block).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.on_lagged(n);
                        self.recover().await;
                    }
                    Err(_) => break,
                },
                // Presence changes are never lost (see `agora_network::routes`).
                ev = events.recv() => if let NetworkEvent::Presence(p) = ev {
                    self.on_presence(p).await;
                },
                Some(done) = done_rx.recv() => self.on_done(done).await,
                Some(Request::SetOwn(image, reply)) = req_rx.recv() => {
                    let _ = reply.send(self.set_own(image).await);
                }
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    /// The block channel dropped `missed` blocks this task was too slow for (the ledger is
    /// rescanned next): counted on the timeline, phase `blocks-lagged`, so in the node's
    /// `orchestrator_phases_total{phase="blocks-lagged"}`, and logged at `warn` the 1st, 2nd,
    /// 4th… time.
    fn on_lagged(&mut self, missed: u64) {
        let loud = self.outcomes_lagged.count(missed);
        let Lagged { times, blocks } = self.outcomes_lagged;
        if loud {
            warn!(
                missed,
                times, blocks, "orchestrator behind the ledger's blocks; rescanning"
            );
        }
        self.timeline.push(
            "blocks-lagged",
            None,
            format!(
                "missed {missed} blocks ({times} times, {blocks} blocks so far); rescanning \
                 the ledger"
            ),
        );
    }

    /// Submits `kind`, logging a refusal (the ledger re-checks everything anyway).
    async fn submit(&self, kind: TxKind, what: &str) -> bool {
        match self.ledger.submit(kind).await {
            Ok(_) => true,
            Err(e) => {
                debug!(what, error = %e, "transaction not submitted");
                false
            }
        }
    }

    /// The next sequence number for an envelope this task signs.
    fn next_seq(&mut self) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Service id of a hosted contract: the contract id.
    fn service_id(contract: &ContractId) -> String {
        contract.to_string()
    }

    /// Stages `image` for `contract` in the background, retrying (20 attempts at most) until
    /// `give_up_at` (Unix ms; `None`: no deadline yet); a failure that retrying cannot cure
    /// ([`agora_hosting::ServiceError::is_permanent`]) ends it at once. Either way the task
    /// reports `Done::StageFailed`, so the provider calls the contract off before the customer
    /// can have it slashed for an activation the image made impossible.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &mut self,
        contract: ContractId,
        customer: NodeId,
        image: Cid,
        hb: u64,
        start: bool,
        ceiling: agora_hosting::ceiling::ContractCeiling,
        give_up_at: Option<u64>,
    ) {
        if !self.staging.insert(contract) {
            return;
        }
        self.retiring.remove(&contract);
        let services = self.services.clone();
        let done = self.done_tx.clone();
        let timeline = self.timeline.clone();
        tokio::spawn(
            async move {
                let id = Self::service_id(&contract);
                let mut reason = String::from("not staged");
                for attempt in 0..agora_roles::STAGE_ATTEMPTS {
                    // One attempt (a fetch of a CID nobody serves may wait long) is cut at the
                    // deadline too.
                    let attempt_ends = give_up_at.map(|t| {
                        tokio::time::Instant::now()
                            + Duration::from_millis(t.saturating_sub(now_ms()))
                    });
                    let staging = services.stage_for_contract(&id, image, ceiling.clone());
                    let outcome = match attempt_ends {
                        Some(at) => match tokio::time::timeout_at(at, staging).await {
                            Ok(r) => r.map_err(|e| (e.permanent, e.reason)),
                            Err(_) => Err((true, "not staged by the deadline".to_string())),
                        },
                        None => staging.await.map_err(|e| (e.permanent, e.reason)),
                    };
                    match outcome {
                        Ok(staged) => {
                            let _ = done
                                .send(Done::Staged {
                                    contract,
                                    customer,
                                    devices: staged.devices,
                                    name: staged.name,
                                    heartbeat_ms: hb,
                                    then_start: start,
                                })
                                .await;
                            return;
                        }
                        Err((permanent, e)) => {
                            timeline.push("migration-retry", Some(&contract), &e);
                            reason = e;
                            // The role machine's rule (THREATS C6): none after a permanent
                            // failure, the last attempt, or past the deadline.
                            let now = now_ms();
                            let failures = attempt.saturating_add(1);
                            let Some(at) =
                                agora_roles::stage_retry_at(failures, permanent, now, give_up_at)
                            else {
                                break;
                            };
                            tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
                        }
                    }
                }
                let _ = done.send(Done::StageFailed { contract, reason }).await;
            }
            .in_current_span(),
        );
    }
}

#[cfg(test)]
mod timeline_tests {
    use super::*;

    /// Falling behind the ledger's blocks is counted every time (times and blocks missed) and
    /// logged loudly only the 1st, 2nd, 4th, 8th… time. Mutants caught: `count` loud every
    /// time (or never), or the times or blocks not added up.
    #[test]
    fn lagging_behind_blocks_is_counted_and_logged_loudly_at_powers_of_two() {
        let mut lagged = Lagged::default();
        let loud: Vec<bool> = (1..=9).map(|n| lagged.count(n)).collect();
        assert_eq!(
            loud,
            [true, true, false, true, false, false, false, true, false]
        );
        assert_eq!(
            lagged,
            Lagged {
                times: 9,
                blocks: 45
            }
        );
    }

    #[test]
    fn a_peers_long_reason_is_clipped_in_the_timeline() {
        let t = Timeline::default();
        t.push("probe-refused", None, "x".repeat(4 << 20));
        t.push("armed", None, "short");
        let e = t.entries();
        assert!(e[0].detail.len() <= MAX_TIMELINE_DETAIL + '…'.len_utf8());
        assert_eq!(e[1].detail, "short");
    }

    /// A peer's reason with escape sequences and newlines is kept escaped (it is logged and
    /// printed to the operator's terminal).
    #[test]
    fn a_peers_control_characters_are_escaped_in_the_timeline() {
        let t = Timeline::default();
        t.push("probe-refused", None, "no\u{1b}[2J\nfake line");
        let e = t.entries();
        assert!(
            !e[0].detail.chars().any(char::is_control),
            "{:?}",
            e[0].detail
        );
        assert!(e[0].detail.contains("\\u{1b}[2J"));
    }
}
