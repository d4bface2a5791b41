//! Service lifecycle: `Staged` (compiled, idle: standby insurance) → `Active` (a task on the
//! host's guest runtime) → `Stopped(reason)`, with restart policy, health, logs and metering
//! per service.

pub(crate) mod instance;
mod run;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::guard::StopSignal;
use crate::host::{CompiledModule, Host};
use crate::io::{KvStore, Published};
pub use crate::restart::{Backoff, RestartPolicy};
use crate::state::ServiceIo;
use crate::{Metering, ServiceLimits, StopReason};

/// A service's id on this host (the node uses the contract id).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceId(pub String);

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ServiceId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

/// Lifecycle state of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceState {
    /// Compiled and idle; activation is instantiate + call.
    Staged,
    /// Running (a task on the host's guest runtime).
    Active,
    /// Stopped, with the reason recorded as evidence.
    Stopped(StopReason),
}

/// Everything needed to run one service.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Service id (unique on this host).
    pub id: ServiceId,
    /// The compiled module.
    pub module: CompiledModule,
    /// The limits it runs under: the manifest's request clamped to the contract's
    /// ([`ServiceLimits::clamp_to`]); checked again when staged.
    pub limits: ServiceLimits,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Wait before each restart ([`RestartPolicy::OnFailure`] and [`RestartPolicy::Always`]).
    pub backoff: Backoff,
    /// Stop an instance whose `agora_health` export has answered non-zero for this long
    /// (milliseconds) as [`StopReason::Unhealthy`], a failure the restart policy acts on.
    /// `None`: an unhealthy guest is reported, never stopped for it.
    pub unhealthy_restart_ms: Option<u64>,
    /// Environment variables granted to the guest (none by default).
    pub env: Vec<(String, String)>,
    /// Arguments granted to the guest (none by default).
    pub args: Vec<String>,
    /// `agora_poll` is called at least this often, in milliseconds.
    pub tick_ms: u64,
    /// Readings queued before the oldest is dropped.
    pub reading_queue: usize,
    /// Bytes of log tail kept for `logs`.
    pub log_bytes: usize,
    /// Which active services count together against `limits.max_instances`: those of the
    /// same module in the same group. `None` (the operator's own services) groups every such
    /// service of the module; the node gives each customer's contract services their own
    /// group, so another customer's instance never keeps a contract's from starting (its
    /// provider would be slashed for an activation it could not make; THREATS C5).
    pub instance_group: Option<String>,
}

impl ServiceSpec {
    /// A spec with no grants, no restarts (a 1 s backoff if a policy is set, unhealthy guests
    /// reported but not stopped), a 100 ms tick, 256 queued readings, 64 KiB of logs.
    pub fn new(id: impl Into<ServiceId>, module: CompiledModule, limits: ServiceLimits) -> Self {
        Self {
            id: id.into(),
            module,
            limits,
            restart: RestartPolicy::Never,
            backoff: Backoff::default(),
            unhealthy_restart_ms: None,
            env: Vec::new(),
            args: Vec::new(),
            tick_ms: 100,
            reading_queue: 256,
            log_bytes: 64 << 10,
            instance_group: None,
        }
    }
}

/// A row of `list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service id.
    pub id: ServiceId,
    /// Module CID.
    pub module: String,
    /// Lifecycle state.
    pub state: ServiceState,
    /// Usage so far.
    pub metering: Metering,
    /// Why the instance the restart policy last replaced stopped (`None` before any restart).
    #[serde(default)]
    pub last_failure: Option<StopReason>,
}

/// An instance that stops on its own sooner than this after its start failed quickly
/// ([`Health::quick_failures`]).
pub const QUICK_FAILURE: std::time::Duration = std::time::Duration::from_secs(1);

/// Result of a health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Lifecycle state.
    pub state: ServiceState,
    /// Milliseconds since `agora_poll` last returned, if it ever did.
    pub last_poll_ms_ago: Option<u64>,
    /// Last `agora_health` result, if the guest exports it.
    pub guest_health: Option<i32>,
    /// Active, polled within three ticks, and guest health (if any) is 0.
    pub healthy: bool,
    /// Between a failed instance and its restart (the restart policy's backoff): `Active` as a
    /// service, but no instance runs.
    #[serde(default)]
    pub restarting: bool,
    /// Restarting after the host could not start the instance (`StopReason::StartFailed`:
    /// the pool exhausted, a missing import), which is not the guest's doing.
    #[serde(default)]
    pub start_failed: bool,
    /// Instances in a row that stopped on their own within [`QUICK_FAILURE`] of their start (a
    /// crash loop; a clean exit counts too), as its restart policy restarts them; 0 before
    /// any, and again after an instance that ran longer.
    #[serde(default)]
    pub quick_failures: u32,
}

/// Mutable per-service status written by the service thread.
pub(crate) struct Live {
    state: ServiceState,
    metering: Metering,
    last_poll: Option<Instant>,
    guest_health: Option<i32>,
    active_since: Option<Instant>,
    banked_uptime_ms: u64,
    /// See [`ServiceStatus::last_failure`].
    last_failure: Option<StopReason>,
    /// See [`Health::quick_failures`].
    quick_failures: u32,
}

/// One `agora_probe` call asked of a live instance: the nonce, and where its outcome goes
/// (`Ok(None)`: the guest has no probe export).
pub(crate) type ProbeAsk = (i64, oneshot::Sender<Result<Option<i64>, StopReason>>);

/// Probe calls waiting for a service's task at most (more are refused as busy).
pub(crate) const PROBES_QUEUED: usize = 4;

/// State shared between the manager and a service's thread.
pub(crate) struct Shared {
    io: Arc<ServiceIo>,
    stop: Arc<StopSignal>,
    live: Mutex<Live>,
    state_tx: watch::Sender<ServiceState>,
    /// Probe calls for the live instance ([`ServiceManager::probe`]).
    probe_tx: mpsc::Sender<ProbeAsk>,
    /// Held by the service's task while an instance runs.
    probe_rx: tokio::sync::Mutex<mpsc::Receiver<ProbeAsk>>,
}

struct Entry {
    spec: ServiceSpec,
    shared: Arc<Shared>,
}

/// Runs services by id; each active service is a task on the host's guest runtime.
pub struct ServiceManager {
    host: Arc<Host>,
    kv: Arc<dyn KvStore>,
    outbox: mpsc::Sender<Published>,
    services: Mutex<BTreeMap<ServiceId, Entry>>,
    /// Fresh probe instances running ([`api::FRESH_PROBES_AT_ONCE`] at most).
    fresh_probes: Arc<tokio::sync::Semaphore>,
}

mod api;
mod kv_state;
