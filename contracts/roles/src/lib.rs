//! The contract roles as pure state machines: what a node decides as customer, provider and
//! arbitrator ([`Roles`]), and the handover of sensor readings between edges
//! ([`readings::Readings`]). Both have the shape `handle(&mut self, now, Input) -> Vec<Effect>`:
//! no clock, socket, file or task; a driver in the node turns events into inputs and carries
//! the effects out. The wiring plan for the node is at the end of this comment.
//!
//! Pure like `agora-contracts`, beside which it lives: it may depend on `agora-contracts` (the
//! ledger whose facts it reads, the transactions it submits) and `agora-market` only.
//!
//! # One machine, three role handlers
//! A node plays all three roles at once and every role decides from the same facts: the ledger
//! after the latest block, whether that ledger is current, the block's arrival time (activation
//! latency), and who holds which sensor. So [`Roles`] is one machine with one [`Input`] and one
//! [`Effect`] type, whose state is split per role and whose rules live in one file per role
//! (`customer.rs`, `provider.rs`, `arbitrator.rs`; tests in `tests/` per role), plus one for
//! settlement, which either party does (`settle.rs`), and one for the provider's heartbeat
//! bookkeeping ([`Heartbeat`], `heartbeat.rs`: the node's orchestrator uses it too while it
//! still decides the provider's duties itself), and one for the check of a module's instances
//! before arming ([`holding_instances`], `instances.rs`; likewise). Each role
//! handler is level-triggered: on every input it compares the ledger facts and the clock with
//! what it has done and emits what is missing. Restart, recovery after lagging, and a late or
//! repeated block are therefore the code path of a fresh block, which is what makes them
//! property-testable (`proptests.rs` over the simulation in `sim.rs`).
//!
//! # Who feeds a sensor
//! [`authority::device_authority`] derives from the ledger who may feed each device (the
//! image's owner, or the provider of the owner's contract in effect) and which earlier managers
//! may still be feeding; the readings machine feeds only with that authority. Two edges never
//! feed a device at once because nobody holds it on a stale view for long: a provider's
//! authority lapses [`PROVIDER_LEASE_MS`] after its latest block, a customer that cannot see a
//! quorum of its committee stops feeding (`Customer` suspension), and a new manager waits for
//! its predecessors' release checkpoints or for their time to run out.
//!
//! # Named timings (the old orchestrator's magic numbers)
//! - [`CLOCK_MARGIN_MS`] (50): the time of the block that carries our transaction may trail
//!   our clock by this much. Uptime claims end this far behind now, and the arbitrator's
//!   re-attestation of a down customer waits this far past `since + unreachable_for_ms` (the
//!   old `+ 20`), so the block that records it is past the handover threshold.
//! - [`PROOFS_PER_HEARTBEAT`] (16), [`MIN_HEARTBEAT_MS`] (2 s, one evidence round): heartbeat
//!   batching.
//! - [`SETTLE_RETRY_MS`] (2 s): a settlement request is repeated at most this often.
//! - [`STAGE_ATTEMPTS`] × [`STAGE_BACKOFF_MS`]: staging retries (20, 250 ms × attempt), none
//!   after a permanent failure nor past [`prepare_deadline`] (half the report grace past the
//!   activation deadline); then the contract is called off while it may be (THREATS C6,
//!   [`stage_retry_at`]; the orchestrator's staging loop follows the same rule).
//! - [`PROVIDER_LEASE_MS`] (3 s, the old `RECLAIM_WAIT`): a provider feeds its customer's
//!   sensors only while its ledger view is at most this old (blocks come every second while a
//!   contract is active), so a customer taking them back waits at most this long for the
//!   provider's release checkpoint.
//! - [`RolesConfig::owner_suspend_ms`] (presence timeout + tick): how soon a customer cut off
//!   from its committee has stopped feeding its own sensors.
//! - [`ACTIVATION_RETRY_MS`], [`OWN_RETRY_MS`], [`REFUSED_RETRY_MS`], [`RESUBMIT_MS`]: retries.
//! - [`ACTIVATION_RESEND_MS`] (3 s): an activation report the ledger has not applied is sent
//!   again this soon, not after [`RESUBMIT_MS`] (THREATS C10); the node's orchestrator uses the
//!   same constant while it still reports activations itself.
//! - [`instances::ARM_RECHECK_MS`] (500 ms), [`instances::MAX_ARM_WAIT_MS`] (10 min): arming
//!   that waits for ending rivals of the module's instances is checked again this often, and
//!   called off after this long (a slot: at its start); the orchestrator uses them too.
//! - Evidence rounds (the ledger's `ContractRecord::evidence_round`: the heartbeat interval, at
//!   least 2 s, from activation): an arbitrator probes each active hosted or standby contract
//!   of its committees once per interval, and challenges each active storage contract once per
//!   audit round, at a moment of the round's first `length - PROBE_TIMEOUT_MS` drawn from
//!   [`RolesConfig::evidence_seed`], its own id, the contract and the round (each member looks
//!   at its own moment; the provider cannot tell when to be up). [`probe_timeout_ms`] (one
//!   round, 1–4 s; 2 s for the usual rounds): a silent provider is reported down then. [`REPORT_VIEW_MAX_AGE_MS`] (3 s): a probe "down"
//!   or a failed challenge is reported only while this node's latest block is at most this
//!   old, since silence may be its own isolation.
//!
//! # Wiring plan for the node
//! ## The role machine (replaces `node/src/orchestrator*`)
//! One task owns a [`Roles`] (built with [`Roles::new`]`(me, now_ms(), RolesConfig {
//! evidence_seed: rand::random(), ..RolesConfig::with_presence_timeout(cfg.network.
//! presence_timeout_ms) }, own)`, `own` read from `own-service.json`). Its loop turns events
//! into inputs, calls `handle(now_ms(), input)` and performs the effects in order.
//!
//! Ledger queries the driver pre-computes (inside `LedgerHandle::query`):
//! - after every applied block: [`LedgerFacts::from_ledger`]`(me, &v.ledger, block.events,
//!   &roles.images())`, with `behind` set when the replica knows of later blocks it has not
//!   applied (sync in progress) → [`Input::Ledger`];
//! - at start and after `RecvError::Lagged`: the same with no events (a rescan);
//! - on every tick while not [`Roles::synced`]: `v.caught_up` → [`Input::CaughtUp`].
//!
//! Timers: one, re-armed to the latest [`Effect::WakeAt`] (or a plain [`TICK_MS`] interval):
//! it delivers [`Input::Tick`]. Every rule that waits (scheduled activation, re-attestation,
//! heartbeats, probes and their timeouts, audits, settlement retries, staging back-off) is
//! inside the machine.
//!
//! | today | input | effects replacing its I/O |
//! |---|---|---|
//! | `Orchestrator::run` select loop | blocks → `Ledger`, presence → `Presence`, done-channel → the answer inputs below, `SetOwn` request → `SetOwn`, timer → `Tick` | performed in order |
//! | `recover` (start, `Lagged`) | `Ledger` rescan | — (the handlers redo what is missing) |
//! | `on_block` + `duties_for` + timeline loop | `Ledger` with the block's events | `Timeline` per status change, role effects |
//! | `on_tick` caught-up query, `mark_synced` | `CaughtUp { height }` | `Timeline("synced")` |
//! | `on_tick` (scheduled, re-attest, heartbeats, audits; `settle_due` done: `settle.rs`) | `Tick` | `Activate`, `Submit(Attest)`, `Meter`, `Challenge`, `Submit(Settle)` |
//! | `on_presence` | `Presence(Up/Down)` for every presence event (not only watched ones) | `Submit(Attest)`; customer suspension |
//! | `submit` | — | `Submit(tx)` → driver `ledger.submit(tx)` → `Submitted { tx, accepted }` |
//! | `Duty::Migrate`, `prepare`, `stage` (its 20-try loop), `on_stage_failed` (C6) | `Ledger` (provider record V/M/Ar/Ac), `Tick` (the staging deadline) | `Stage { service, image }` → `services.stage_for_contract(id, image, ceiling)` once → `Staged { devices }` / `StageFailed { permanent: e.permanent }` (the machine retries, or gives up: `Timeline(stage-failed)` + `Submit(Cancel)`); the driver must drop an attempt still running past the deadline (the machine ignores its late answer) |
//! | `take_custody` | `Ledger` | `TakeCustody` → `storage.take_custody(file, commitment, max)` → `CustodyTaken` / `CustodyRefused` |
//! | `on_done(Staged)`, `on_custody` | `Staged`, `CustodyTaken`, `CustodyRefused` | `Submit(MarkMigrated/MarkArmed/Cancel)`, `Listen` |
//! | `arming_collides`, `recheck_arming` (C5) | `Ledger` (migrated), `Tick`, `InstanceRivals` | `InstanceRivals { contract }` → `services.instance_rivals(id)`, ids parsed as contracts (the orchestrator's `perform` does this already) → `InstanceRivals { max, rivals }`; then `Submit(MarkArmed)`, a wait, or `Timeline(arm-refused)` + `Submit(Cancel)` (C14's `unresolved_dependency` is not in the machine yet) |
//! | `activate_at`, `activate` | `Ledger`, `Tick` | `Activate { service, devices, reclaim }` → `services.start(id)`; on error `ActivationFailed`; else radio `readings::Input::Assign`, and on its `Assigned` → `ActivationDone { started_at, replayed }` |
//! | `activate_storage` | `Ledger` | `Submit(ReportActivation)` |
//! | `heartbeat` | `Tick` | `Meter` → driver answers `Metered { running: services.running(id), processed: Σ processed of the devices, proofs: own checkpoint proof CIDs of the service }` → `Submit(Heartbeats)`, `Submit(SettleUptime)` |
//! | `stop_hosted`, `release_custody` | `Ledger` (closed) | `YieldDevices` (radio `Release`), `StopService`, `Listen(off)`, `ReleaseCustody` (unpin both) |
//! | `watch`, `Duty::Unwatch` | `Ledger` | `Watch(node)` / `Unwatch(node)` → `network.watch/unwatch` |
//! | `start_audit`, `run_due_audits`, `on_audited` (`Duty::Audit`/`EndAudit`) | `Ledger`, `Tick`, `AuditAnswer` | `Challenge`, once per audit round (driver: the commitment from its cache by CID, else shown by the provider, `audit::challenge`; a commitment the provider does not show → `Failed` (THREATS P4); a timeout → `Failed`), `Submit(StorageProofResult { round })` with the round of the challenge |
//! | — (new, #13.10: `Duty::Probe`/`EndProbe`) | `Ledger` (an active hosted or standby contract whose committee holds this node), `Tick`, `ProbeAnswer` | `Probe { contract, provider, interval, timeout_ms }`, once per probe interval → driver asks `provider` over the network whether the contract's service runs and answers `ProbeAnswer { contract, interval, up }` as soon as it knows (`up: false` for "not running" or a refusal); after `timeout_ms` it gives up without an input (the machine reports the silence as down); then `Submit(ProbeResult { contract, interval, up })` |
//! | — (the provider's side of a probe) | — | no role input: the node answers a probe request for contract `c` only from a member of `c`'s committee (ledger facts), with `services.running(c)`, under a per-peer request quota |
//! | `settle_due` (done, session 47: the orchestrator runs `RoleSet::ARBITRATOR_AND_SETTLEMENT`) | `Tick` | `Submit(Settle)` |
//! | `own::set_own` | driver writes `own-service.json`, then `SetOwn { image }` | `Stage(Own)`; reply to the API on `OwnSet(result)` |
//! | `own::evaluate_own` (incl. the 3 s `released_by_peer` poll) | any input | `Stage(Own)`, `Activate { Own, reclaim }`, `YieldDevices`, `StopService`, `Listen`; the wait for the provider's release is the readings machine's authority rule |
//! | `Timeline::push` | — | `Timeline(Note)`: driver stamps `at = now_ms()` |
//! | — | — | `Authority(map)` → radio `readings::Input::Authority(map)` |
//!
//! ## The readings machine (replaces the bookkeeping of `node/src/radio/task.rs`)
//! The radio task owns a [`readings::Readings`] and keeps only the socket and gossip. Timer:
//! one, re-armed to the latest `readings::Effect::WakeAt` (or the `checkpoint_ms` tick).
//!
//! | today | input | effects |
//! |---|---|---|
//! | `on_frame` | `Heard(Frame)` after `parse_frame` and the MIC check (frame counter = the frame's sequence number) | `Feed` → `services.push_reading(service, bytes)` (on error answer `FeedRefused`) |
//! | `on_command(Assign/Release/Listen)` | `Assign` / `Release` / `Listen` | `AskReplay`, `Assigned` (answers the role machine's `Activate`), `Checkpoint` |
//! | `on_peer_checkpoint` | `Checkpoint(CheckpointClaim)` for every checkpoint envelope whose signature checks, the node's own included (looped back after signing) | — |
//! | `checkpoint` | `Tick` | `Checkpoint { ranges, frames, released }` → `storage.proof_create(frames)`, seal, gossip on `RADIO_TOPIC`, loop back |
//! | `answer_replay` | `ReplayRequest { from, request, devices }` | `AnswerReplay { frames, checkpoints }`: the answer carries the signed checkpoint envelopes (wire change: `RadioRpc::Frames` gains them instead of a bare `covered`) |
//! | `fill_gaps` | `ReplayAnswer` per peer (frames MIC-checked, envelopes signature-checked), then `ReplayFinished` when all asked peers answered or failed | — (the machine also ends the wait itself after `replay_timeout_ms`) |
//! | `RadioHandle::peer_covered`, `released_by_peer` | gone: the machine keeps the watermark and the releases | — |
//! | `GET /v1/radio` | — | `Readings::devices(now)`, `Readings::counters()`, plus the driver's checkpoint history |

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

mod arbitrator;
pub mod authority;
mod customer;
pub mod facts;
pub mod followed;
pub mod heartbeat;
pub mod instances;
pub mod io;
mod provider;
pub mod readings;
mod settle;
pub mod staging;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use agora_market::{NodeId, Timestamp};
use cid::Cid;
use tracing::debug;

use agora_contracts::contract::ContractId;
use agora_contracts::ledger::{ContractRecord, LedgerEvent};

pub use authority::{Group, KeyHolder, Timing, device_authority, key_holders};
pub use facts::LedgerFacts;
pub use followed::FollowedDevices;
pub use heartbeat::{Heartbeat, uptime_collectable};
pub use instances::{Arming, Holding, arm_give_up, holding_instances};
pub use io::{AuditVerdict, Effect, Input, Note, OWN_SERVICE, Presence, ServiceRef};
pub use provider::custody_refusal_cancels;
pub use readings::{DeviceAuthority, DeviceId, Previous, Readings, ReadingsConfig};
pub use staging::{prepare_deadline, stage_retry_at};

/// How often the driver ticks the machine when it does not follow [`Effect::WakeAt`].
pub const TICK_MS: u64 = 100;
/// The time of the block that carries our transaction may trail our clock by this much.
pub const CLOCK_MARGIN_MS: u64 = 50;
/// Data-proof CIDs per heartbeat transaction.
pub const PROOFS_PER_HEARTBEAT: usize = 16;
/// Shortest period between two heartbeat transactions: one per evidence round at most (every
/// replica verifies each; the node's orchestrator does the same, session 34).
pub const MIN_HEARTBEAT_MS: u64 = agora_contracts::ledger::MIN_EVIDENCE_PERIOD_MS;
/// The default of [`RolesConfig::arm_timeout_ms`]: an honest provider arms as soon as it has
/// staged the image (or taken custody of the file), which takes seconds to a minute or two for
/// a large image over a slow link; one that has not armed five minutes after the registration
/// never will (THREATS C16: a provider that countersigned and then did nothing, or died, locked
/// the customer's payment and stake until the contract expired, its whole term plus the
/// ledger's grace later).
pub const ARM_TIMEOUT_MS: u64 = 300_000;
/// A settlement request is repeated at most this often.
pub const SETTLE_RETRY_MS: u64 = 2_000;
/// Staging attempts before a provider gives up on a contract's image.
pub const STAGE_ATTEMPTS: u32 = 20;
/// Back-off per failed staging attempt.
pub const STAGE_BACKOFF_MS: u64 = 250;
/// Wait before starting a service again after it failed to start.
pub const ACTIVATION_RETRY_MS: u64 = 500;
/// Wait before staging or starting the own service again after a failure.
pub const OWN_RETRY_MS: u64 = 1_000;
/// A transaction admitted but without effect on the ledger for this long is submitted again.
pub const RESUBMIT_MS: u64 = 10_000;
/// A refused transaction is submitted again after this long (not at once: the driver may
/// answer synchronously).
pub const REFUSED_RETRY_MS: u64 = 1_000;
/// An activation report admitted but not applied for this long is sent again, sooner than
/// [`RESUBMIT_MS`]: one refused in its block (a block stamped behind this node's clock) used
/// its nonce and nobody else retries it, and the customer settles a running contract
/// `NoActivation` once the ledger's report grace has passed (THREATS C10). The node's
/// orchestrator resends its own reports on this timing too.
pub const ACTIVATION_RESEND_MS: u64 = 3_000;
/// A provider's authority over its customer's sensors lasts this long past its latest block.
pub const PROVIDER_LEASE_MS: u64 = 3_000;
/// The node's default presence timeout for watched peers (`network.presence_timeout_ms`).
pub const PRESENCE_TIMEOUT_MS: u64 = 1_000;
/// Probes start at least this long before their interval ends, and a probed provider has at
/// least this long to answer ([`probe_timeout_ms`]); silence counts as its service down.
pub const PROBE_TIMEOUT_MS: u64 = 1_000;
/// A probed provider has at most this long to answer ([`probe_timeout_ms`]): the report must
/// still reach a block within the ledger's report window (`quorum_report_grace_ms`, 10 s by
/// default, after the interval's end).
pub const MAX_PROBE_TIMEOUT_MS: u64 = 4_000;

/// How long a provider has to answer a probe of a contract whose evidence rounds last
/// `period_ms`: one round, within [`PROBE_TIMEOUT_MS`]..=[`MAX_PROBE_TIMEOUT_MS`] (2 s for the
/// usual rounds). A fixed second was too short for an honest provider on a loaded edge or a
/// slow link: in the provisioning bench (20 processes on 2 cores) every deleted deployment's
/// provider was slashed for rounds a quorum saw "silent" while the service ran (issue #15). An
/// answer that lands after the round's end still counts for the round of the probe's moment.
pub fn probe_timeout_ms(period_ms: u64) -> u64 {
    period_ms.clamp(PROBE_TIMEOUT_MS, MAX_PROBE_TIMEOUT_MS)
}

/// Where a provider's next heartbeat batch starts (THREATS A6): at the ledger's uptime cursor
/// (`last_uptime_end`), never before `floor` (when its service started here, or was last seen
/// stopped). Before the first batch is on the ledger there is no cursor; then a service that
/// started at `since` by this node's clock, whose activation the ledger dated earlier (its
/// report landed in a block stamped behind this clock, by at most the ledger's
/// `MAX_CLOCK_SKEW_MS`), starts at the ledger's `activated_at`: starting at its own start
/// would leave the difference as a gap counted against it (found by
/// `tests/tests/e2e/attack_block_time.rs`).
pub fn first_uptime_from(
    floor: Timestamp,
    since: Option<Timestamp>,
    cursor: Option<Timestamp>,
    activated_at: Option<Timestamp>,
) -> Timestamp {
    let floor = match (cursor, activated_at, since) {
        (None, Some(a), Some(s))
            if floor == s && a < s && s - a <= agora_contracts::ledger::MAX_CLOCK_SKEW_MS =>
        {
            a
        }
        _ => floor,
    };
    floor.max(cursor.unwrap_or(0))
}

/// The data proofs a heartbeat reports: up to `limit` of those the radio `offered` (its
/// bounded checkpoint history, oldest first) not yet in `reported`. `reported` first forgets
/// what the radio no longer offers, so it never holds more than that history however long
/// the contract lasts (THREATS C26: a set never pruned grew by up to 16 ids a heartbeat for
/// the contract's life). The caller adds the returned proofs to `reported` once the batch
/// carrying them was accepted.
pub fn fresh_proofs<T: Ord + Clone>(
    reported: &mut BTreeSet<T>,
    offered: &[T],
    limit: usize,
) -> Vec<T> {
    if offered.is_empty() {
        // Nothing offered (or the radio did not answer): keep what was reported rather than
        // report it again once the radio answers with its history.
        return Vec::new();
    }
    let offered_set: BTreeSet<&T> = offered.iter().collect();
    reported.retain(|p| offered_set.contains(p));
    offered
        .iter()
        .filter(|p| !reported.contains(*p))
        .take(limit)
        .cloned()
        .collect()
}

/// An arbitrator reports a probe "down" or a failed storage challenge only while its latest
/// block arrived at most this long ago: one that hears no blocks may be the one cut off, and
/// must not blame the provider for its own isolation (blocks come every second while a
/// contract is active).
pub const REPORT_VIEW_MAX_AGE_MS: u64 = 3_000;

/// Settings of the role machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolesConfig {
    /// See [`PROVIDER_LEASE_MS`].
    pub provider_lease_ms: u64,
    /// How soon a customer cut off from its committee has stopped feeding its own sensors:
    /// the presence timeout plus a tick.
    pub owner_suspend_ms: u64,
    /// Seed of the moments this node, as arbitrator, probes and challenges within each
    /// evidence round. The driver passes a random value at start, so a provider cannot tell
    /// when to be up.
    pub evidence_seed: u64,
    /// The roles this machine decides for ([`RoleSet::ALL`] unless a driver still decides some
    /// itself).
    pub roles: RoleSet,
    /// How long after its registration a contract of ours (as customer) that its provider has
    /// not armed, and that names no slot, is called off (`Cancel`: every locked token back);
    /// counted from when the last of our contracts with that provider on the same image closed
    /// if later, and not while one of them is armed or active (the provider waits for it to
    /// let go of its instance). 0 never calls off. See [`ARM_TIMEOUT_MS`].
    pub arm_timeout_ms: u64,
}

impl Default for RolesConfig {
    fn default() -> Self {
        Self {
            provider_lease_ms: PROVIDER_LEASE_MS,
            owner_suspend_ms: PRESENCE_TIMEOUT_MS + TICK_MS,
            evidence_seed: 0,
            roles: RoleSet::ALL,
            arm_timeout_ms: ARM_TIMEOUT_MS,
        }
    }
}

/// Which of the three roles (and settlement, either party's) a [`Roles`] machine decides for.
/// A disabled role's handler never
/// runs: it emits no effects and no timeline entries (its status changes included), and keeps
/// no state. The node's orchestrator moves over one role at a time; the ledger facts, the sync
/// rule and the wake-ups stay the machine's whatever the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleSet {
    /// Own service, taking the sensors back.
    pub customer: bool,
    /// Migrate, arm, activate, heartbeat, custody, stop.
    pub provider: bool,
    /// Watch, attest, probe, challenge.
    pub arbitrator: bool,
    /// Settling this node's contracts, as customer or provider (`settle.rs`).
    pub settlement: bool,
}

impl RoleSet {
    /// All three roles and settlement.
    pub const ALL: RoleSet = RoleSet {
        customer: true,
        provider: true,
        arbitrator: true,
        settlement: true,
    };
    /// Only the arbitrator's duties.
    pub const ARBITRATOR: RoleSet = RoleSet {
        customer: false,
        provider: false,
        arbitrator: true,
        settlement: false,
    };
    /// What the node's orchestrator hands the machine today: the arbitrator's duties and
    /// settlement; it still decides the rest of the customer's and the provider's itself.
    pub const ARBITRATOR_AND_SETTLEMENT: RoleSet = RoleSet {
        settlement: true,
        ..RoleSet::ARBITRATOR
    };
}

impl RolesConfig {
    /// The settings for a node whose presence timeout is `presence_timeout_ms`.
    pub fn with_presence_timeout(presence_timeout_ms: u64) -> Self {
        Self {
            owner_suspend_ms: presence_timeout_ms.saturating_add(TICK_MS),
            ..Self::default()
        }
    }

    fn timing(&self) -> Timing {
        Timing {
            provider_lease_ms: self.provider_lease_ms,
            owner_suspend_ms: self.owner_suspend_ms,
            clock_margin_ms: CLOCK_MARGIN_MS,
        }
    }
}

/// What every role handler sees.
struct View<'a> {
    me: NodeId,
    now: Timestamp,
    /// The ledger is current: a block decided after the machine started was applied, or the
    /// arbitrators said there is nothing newer.
    synced: bool,
    records: &'a BTreeMap<ContractId, ContractRecord>,
    /// Time of the latest block applied (ledger time).
    block_time: Timestamp,
    /// When that block arrived here.
    block_seen_at: Timestamp,
    /// The chain's genesis parameters (from the latest facts).
    params: &'a agora_contracts::ledger::LedgerParams,
}

/// The node's decisions as customer, provider and arbitrator.
#[derive(Clone, Debug)]
pub struct Roles {
    me: NodeId,
    cfg: RolesConfig,
    started_at: Timestamp,
    synced: bool,
    height: Option<u64>,
    block_time: Timestamp,
    block_seen_at: Timestamp,
    records: BTreeMap<ContractId, ContractRecord>,
    /// The chain's genesis parameters (from the latest facts; the defaults before).
    params: agora_contracts::ledger::LedgerParams,
    customer: customer::Customer,
    provider: provider::Provider,
    arbitrator: arbitrator::Arbitrator,
    settler: settle::Settler,
    authority: BTreeMap<DeviceId, DeviceAuthority>,
    last_wake: Option<Timestamp>,
    stale_blocks: u64,
}

impl Roles {
    /// A machine for node `me` started at `now`, with the own-service image it persisted.
    pub fn new(me: NodeId, now: Timestamp, cfg: RolesConfig, own: Option<Cid>) -> Self {
        Roles {
            me,
            cfg,
            started_at: now,
            synced: false,
            height: None,
            block_time: 0,
            block_seen_at: now,
            records: BTreeMap::new(),
            params: agora_contracts::ledger::LedgerParams::default(),
            customer: customer::Customer::new(own),
            provider: provider::Provider::default(),
            arbitrator: arbitrator::Arbitrator::new(cfg.evidence_seed),
            settler: settle::Settler::new(cfg.arm_timeout_ms),
            authority: BTreeMap::new(),
            last_wake: None,
            stale_blocks: 0,
        }
    }

    /// Applies one input at `now`.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        let input = match input {
            Input::Ledger(facts) => {
                self.on_facts(now, facts, &mut out);
                Input::Tick
            }
            Input::CaughtUp { height } => {
                if !self.synced {
                    self.mark_synced(
                        format!(
                            "ledger at the chain's tip at height {height} (the arbitrators have \
                             nothing newer)"
                        ),
                        &mut out,
                    );
                }
                Input::Tick
            }
            other => other,
        };
        let view = View {
            me: self.me,
            now,
            synced: self.synced,
            records: &self.records,
            block_time: self.block_time,
            block_seen_at: self.block_seen_at,
            params: &self.params,
        };
        let roles = self.cfg.roles;
        if roles.provider {
            self.provider.handle(&view, &input, &mut out);
        }
        if roles.arbitrator {
            self.arbitrator.handle(&view, &input, &mut out);
        }
        if roles.customer {
            self.customer.handle(&view, &input, &mut out);
        }
        if roles.settlement {
            self.settler.handle(&view, &input, &mut out);
        }
        if roles.customer || roles.provider {
            self.emit_authority(&mut out);
        }
        self.emit_wake(now, &mut out);
        out
    }

    /// Service images whose contracts the ledger facts must include (see
    /// [`LedgerFacts::from_ledger`]).
    pub fn images(&self) -> BTreeSet<Cid> {
        let roles = self.cfg.roles;
        let own = self.customer.image().filter(|_| roles.customer);
        let provided = roles
            .provider
            .then(|| self.provider.images(&self.records))
            .into_iter()
            .flatten();
        own.into_iter().chain(provided).collect()
    }

    /// Whether the ledger is known to be current.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The device authority last emitted.
    pub fn authority(&self) -> &BTreeMap<DeviceId, DeviceAuthority> {
        &self.authority
    }

    /// Ledger facts refused as older than (or a repeat of) what was applied.
    pub fn stale_blocks(&self) -> u64 {
        self.stale_blocks
    }

    fn mark_synced(&mut self, how: String, out: &mut Vec<Effect>) {
        self.synced = true;
        out.push(Effect::Timeline(Note::new("synced", None, how)));
    }

    /// Takes in the ledger after a block (or a rescan); a block older than, or the same as,
    /// the latest applied is ignored (a late or repeated delivery).
    fn on_facts(&mut self, now: Timestamp, f: LedgerFacts, out: &mut Vec<Effect>) {
        let is_block = !f.events.is_empty() || self.height.is_some_and(|h| f.height > h);
        if let Some(h) = self.height
            && (f.height < h || (f.height == h && !f.events.is_empty()))
        {
            self.stale_blocks += 1;
            debug!(height = f.height, applied = h, "stale ledger facts ignored");
            return;
        }
        self.height = Some(f.height);
        self.block_time = self.block_time.max(f.time);
        self.records = f.records;
        self.params = f.params;
        if f.behind {
            // Catching up: an old view must not move sensors or start services (a node cut
            // off for a while would otherwise act on every stale block of its backlog).
            if self.synced {
                self.synced = false;
                out.push(Effect::Timeline(Note::new(
                    "catching-up",
                    None,
                    format!("ledger behind the chain at height {}", f.height),
                )));
            }
        } else if is_block {
            self.block_seen_at = now;
            if !self.synced && f.time >= self.started_at {
                self.mark_synced(format!("ledger caught up at height {}", f.height), out);
            }
        }
        for ev in &f.events {
            match ev {
                LedgerEvent::HandoverAttested {
                    contract, customer, ..
                } if *customer == self.me && self.cfg.roles.customer => {
                    out.push(Effect::Timeline(Note::new(
                        "handover-attested-while-up",
                        Some(*contract),
                        "yielding sensors",
                    )))
                }
                LedgerEvent::StatusChanged { contract, to, .. } => {
                    let Some(r) = self.records.get(contract) else {
                        continue;
                    };
                    let c = &r.contract;
                    let roles = self.cfg.roles;
                    let role = if c.provider == self.me {
                        roles.provider.then_some("provider")
                    } else if c.customer == self.me {
                        roles.customer.then_some("customer")
                    } else if c.committee.contains(&self.me) {
                        roles.arbitrator.then_some("arbitrator")
                    } else {
                        None
                    };
                    let Some(role) = role else {
                        continue;
                    };
                    out.push(Effect::Timeline(Note::new(
                        &format!("{to:?}").to_lowercase(),
                        Some(*contract),
                        role,
                    )));
                }
                _ => {}
            }
        }
    }

    /// Emits who may feed which device, when it changed.
    fn emit_authority(&mut self, out: &mut Vec<Effect>) {
        let mut groups: Vec<Group> = self
            .customer
            .group()
            .map(|(image, devices)| Group {
                image,
                devices,
                owner: self.me,
            })
            .into_iter()
            .collect();
        for (image, devices, owner) in self.provider.groups(&self.records) {
            if !groups.iter().any(|g| g.image == image) {
                groups.push(Group {
                    image,
                    devices,
                    owner,
                });
            }
        }
        let mut map = device_authority(self.block_time, &self.records, &groups, self.cfg.timing());
        if let (Some(since), Some((_, devices))) =
            (self.customer.lapsed_since(), self.customer.group())
        {
            for d in devices {
                if let Some(a) = map.get_mut(&d)
                    && a.manager == self.me
                    && a.lease_until.is_none()
                {
                    a.lease_until = Some(since);
                }
            }
        }
        if map != self.authority {
            self.authority = map.clone();
            out.push(Effect::Authority(map));
        }
    }

    fn emit_wake(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let next = [
            self.provider.next_wake(),
            self.customer.next_wake(),
            self.arbitrator.next_wake(),
            self.settler.next_wake(),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min();
        if let Some(at) = next
            && self.last_wake != Some(at)
        {
            self.last_wake = Some(at);
            out.push(Effect::WakeAt(at));
        }
    }
}
