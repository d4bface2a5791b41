//! Firmware jobs run by this edge (issue #16, `agora device flash`): the node-side driver of
//! the pure [`FirmwareJob`]. A job is started with the image's bytes (resolved from the
//! blockstore by [`load_image`]), a selector, a version and `max_unavailable`; the radio task
//! feeds it the discovery table, the devices this edge manages, the devices' replies and a
//! tick, and sends the endpoint requests its effects name over the radio's UDP socket.
//!
//! Only devices this edge manages are flashed: the manager is the one `agora device list`
//! shows (the last edge the orchestrator named to the radio for the device, from the ledger
//! and the node's own service). Selected devices managed elsewhere (or by nobody known here)
//! are reported `not_managed` and never sent a command. A device already in a running job on
//! this edge is left out of a new one.
//!
//! Bounded: at most [`MAX_JOBS`] jobs are kept; a new job evicts the oldest finished one
//! (counted, logged) and is refused when all are running. Images are at most
//! [`MAX_FIRMWARE_BYTES`].

use std::collections::{BTreeMap, BTreeSet};

use agora_devices::agent::{Reply, Request};
use agora_devices::handoff::{HandoffStats, JobHandoff, KeptHandoff, Outbox, OwnerDone};
use agora_devices::{
    Command, DeviceId, DeviceMeta, Effect, Firmware, FirmwareJob, Input, JobConfig, JobError,
    JobStatus, Outcome, Selector, SelectorError,
};
use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use agora_devices::JobId;

/// Jobs kept (running and finished) per edge.
pub const MAX_JOBS: usize = 16;
/// Largest firmware image a job takes, bytes.
pub const MAX_FIRMWARE_BYTES: u64 = 4 << 20;

/// `POST /v1/devices/jobs`: flash an image onto the selected devices this edge manages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Selector (`all`, `kind=K,type=T,id=N-M`).
    pub selector: String,
    /// CID of the image in this node's blockstore (or fetchable from a peer).
    pub firmware: String,
    /// Version label the devices report once they run the image.
    pub version: String,
    /// Devices that may be unavailable at once.
    #[serde(default = "one")]
    pub max_unavailable: usize,
    /// Firmware type of the image; `None`: the one type the selected devices share.
    #[serde(default)]
    pub firmware_type: Option<String>,
}

fn one() -> usize {
    1
}

/// `POST /v1/devices/jobs` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStarted {
    /// Job id (`agora device job status ID`).
    pub id: JobId,
    /// Devices in the job.
    pub devices: usize,
}

/// One job as `GET /v1/devices/jobs[/ID]` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The machine's status (summary and per-device progress).
    pub status: JobStatus,
    /// Selector it was started with.
    pub selector: String,
    /// Firmware type of the image.
    pub firmware_type: String,
    /// Image size, bytes.
    pub size: u64,
    /// Whether every device is done.
    pub finished: bool,
    /// When it started, ms.
    pub started_at: Timestamp,
    /// When it finished, ms.
    pub finished_at: Option<Timestamp>,
    /// A job this edge resumed at a handover: the devices' owner and its job id there.
    #[serde(default)]
    pub resumed_from: Option<ResumedFrom>,
    /// Providers of the owner's contracts for the devices that keep this job's hand-off.
    #[serde(default)]
    pub handed_to: Vec<String>,
    /// When this edge reloaded the job from its data dir after a restart (`None`: never
    /// restarted while the job was kept).
    #[serde(default)]
    pub restored_at: Option<Timestamp>,
    /// A restored job waiting to go on: until every device not done is heard again and
    /// managed here, or this time passes, ms.
    #[serde(default)]
    pub waiting_until: Option<Timestamp>,
}

/// Where a resumed job came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumedFrom {
    /// The devices' owner, who started the job (node id).
    pub owner: String,
    /// The job's id on the owner's edge.
    pub job: JobId,
    /// Devices the owner had finished before the handover (left out of the job here).
    #[serde(default)]
    pub done: Vec<(DeviceId, OwnerDone)>,
}

/// Counters of the job table and its driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStats {
    /// Jobs started.
    pub started: u64,
    /// Jobs refused: the table was full of running jobs.
    pub refused_full: u64,
    /// Finished jobs evicted to make room.
    pub evicted: u64,
    /// Endpoint requests sent to devices.
    pub requests_sent: u64,
    /// Requests not sent (device address unknown, encoding or socket error).
    pub requests_failed: u64,
    /// Device replies taken by a job.
    pub replies_taken: u64,
    /// Hand-offs sent to providers (and answers that they kept them).
    pub handoffs_sent: u64,
    /// Hand-offs a provider kept.
    pub handoffs_acked: u64,
    /// Kept hand-offs whose image could not be loaded when their turn came.
    pub resume_failed: u64,
    /// Jobs reloaded from the data dir at start (`radio-jobs.json`).
    pub restored: u64,
    /// Saved jobs refused when reloaded (malformed, out of bounds, beyond the table).
    pub dropped_on_load: u64,
    /// Restored jobs halted because their image could not be loaded again.
    pub restore_failed: u64,
}

/// `GET /v1/devices/jobs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    /// Jobs, oldest first.
    pub jobs: Vec<JobView>,
    /// Counters.
    pub stats: JobStats,
    /// Jobs handed here by the owners of devices this edge is a provider for (resumed if it
    /// takes the devices over).
    #[serde(default)]
    pub handoffs: Vec<KeptHandoff>,
    /// Counters of the hand-offs received.
    #[serde(default)]
    pub handoff_stats: HandoffStats,
}

/// A job that cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The selector does not parse.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// The pure machine refused the job.
    #[error(transparent)]
    Job(#[from] JobError),
    /// Every kept job is still running.
    #[error("{max} firmware jobs are running on this edge; wait for one to finish")]
    TableFull {
        /// [`MAX_JOBS`].
        max: usize,
    },
    /// The selector matches no discovered device.
    #[error(
        "selector {selector:?} matches no device this edge discovered (or they are all in a \
         running job); see `agora device list`"
    )]
    NoDevices {
        /// Selector.
        selector: String,
    },
    /// The selected devices take several firmware types.
    #[error("the selected devices take firmware types {types:?}; pass --type T")]
    AmbiguousType {
        /// Types.
        types: Vec<String>,
    },
    /// The version label is empty or too long.
    #[error("version {0:?} must be 1..=32 bytes")]
    Version(String),
    /// The image could not be read from the blockstore.
    #[error("firmware image {cid} not loaded: {reason}; add it with `agora storage add FILE`")]
    Image {
        /// CID.
        cid: String,
        /// Why.
        reason: String,
    },
    /// The image is larger than [`MAX_FIRMWARE_BYTES`].
    #[error("firmware image {cid} has {size} bytes, more than {MAX_FIRMWARE_BYTES}")]
    TooLarge {
        /// CID.
        cid: String,
        /// Size.
        size: u64,
    },
    /// The node has no radio (or it stopped).
    #[error("this node's radio is not running: set radio.listen in config.toml")]
    NoRadio,
}

/// Fetches `cid` (from this node's store, or peers) into memory, at most
/// [`MAX_FIRMWARE_BYTES`], through a temporary file removed afterwards.
pub async fn load_image(
    storage: &agora_exchange::StorageHandle,
    cid: &str,
) -> Result<Vec<u8>, FirmwareError> {
    let err = |reason: String| FirmwareError::Image {
        cid: cid.to_string(),
        reason,
    };
    let root = agora_exchange::parse_cid(cid).map_err(|e| err(e.to_string()))?;
    // A directory of its own (created 0700 under a random name, removed when dropped): a
    // name from the pid and the clock was shared by two loads in the same millisecond, which
    // then wrote and removed each other's file, and another local user could plant a link at
    // it (device audit of session 50).
    let dir = tempfile::Builder::new()
        .prefix("agora-firmware-")
        .tempdir()
        .map_err(|e| err(format!("cannot create a temporary directory: {e}")))?;
    let tmp = dir.path().join("image");
    let (progress, _rx) = tokio::sync::watch::channel(agora_exchange::FetchProgress::default());
    let cfg = agora_exchange::FetchConfig {
        max_bytes: Some(MAX_FIRMWARE_BYTES.saturating_mul(2)),
        ..storage.fetch_config()
    };
    let got = storage.get_file(root, tmp.clone(), &progress, cfg).await;
    // Read one byte past the limit at most, whatever the backend wrote (the embedded one
    // refuses a file declaring more than the fetch's budget before writing it, THREATS R6).
    let bytes = match got {
        Ok(_) => read_at_most(&tmp, MAX_FIRMWARE_BYTES.saturating_add(1))
            .await
            .map_err(|e| err(e.to_string())),
        Err(e) => Err(err(e.to_string())),
    };
    drop(dir);
    let bytes = bytes?;
    if bytes.len() as u64 > MAX_FIRMWARE_BYTES {
        return Err(FirmwareError::TooLarge {
            cid: cid.to_string(),
            size: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// The first `limit` bytes of the file at `path`.
async fn read_at_most(path: &std::path::Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut bytes = Vec::new();
    tokio::fs::File::open(path)
        .await?
        .take(limit)
        .read_to_end(&mut bytes)
        .await?;
    Ok(bytes)
}

pub(crate) struct Running {
    pub(crate) job: FirmwareJob,
    pub(crate) image: Vec<u8>,
    pub(crate) devices: BTreeSet<DeviceId>,
    pub(crate) selector: String,
    pub(crate) started_at: Timestamp,
    pub(crate) finished_at: Option<Timestamp>,
    pub(crate) origin: Origin,
    /// Reloaded after a restart at this time.
    pub(crate) restored_at: Option<Timestamp>,
    /// Restored and not started again yet: starts once its devices are heard and managed
    /// here, or at this time.
    pub(crate) waiting_until: Option<Timestamp>,
    /// Changed in a way a restart must not lose since the last save.
    pub(crate) dirty: bool,
    /// Where its devices talked from, as saved before a restart (asked for their metadata
    /// there until heard again).
    pub(crate) addrs: BTreeMap<DeviceId, std::net::SocketAddr>,
}

/// Who asked for a job.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    /// `agora device flash` here; of its devices, this node owns these (their job is handed to
    /// the providers of this node's contracts for them).
    Local {
        owned: BTreeSet<DeviceId>,
        outbox: Outbox,
        /// Devices finished that the hand-off last sent said so of.
        sent_done: usize,
    },
    /// A hand-off of the devices' owner, resumed here at a handover; `done`: the devices the
    /// owner had finished (left out of the job).
    Resumed {
        owner: NodeId,
        job: JobId,
        done: Vec<(DeviceId, OwnerDone)>,
    },
}

impl Origin {
    /// A job started here over devices of which this node owns `owned`.
    pub(crate) fn local(owned: BTreeSet<DeviceId>) -> Self {
        Origin::Local {
            owned,
            outbox: Outbox::default(),
            sent_done: 0,
        }
    }
}

/// A hand-off to send: the job here, the provider, the request.
pub(crate) type HandoffSend = (JobId, NodeId, JobHandoff);

/// Requests to send: device and request.
pub(crate) type Outgoing = Vec<(DeviceId, Request)>;

/// A device's readings pause: `true` when a job takes it offline, `false` when it runs a final
/// firmware again or its job ended (the radio task applies them, see `pause.rs`).
pub(crate) type Hold = (DeviceId, bool);

/// The edge's firmware jobs.
pub(crate) struct Jobs {
    pub(crate) jobs: BTreeMap<JobId, Running>,
    pub(crate) next_id: JobId,
    pub(crate) max: usize,
    pub(crate) stats: JobStats,
    /// Pauses and resumes the jobs' effects named, in order, until the task takes them.
    holds: Vec<Hold>,
}

impl Jobs {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            jobs: BTreeMap::new(),
            next_id: 1,
            max: max.max(1),
            stats: JobStats::default(),
            holds: Vec::new(),
        }
    }

    /// Starts a job over `table` (the discovered devices with metadata), of which this edge
    /// manages `managed`; returns its id, its size and the first requests.
    pub(crate) fn start(
        &mut self,
        now: Timestamp,
        req: &JobRequest,
        image: Vec<u8>,
        table: Vec<DeviceMeta>,
        managed: BTreeSet<DeviceId>,
        origin: Origin,
    ) -> Result<(JobStarted, Outgoing), FirmwareError> {
        let selector = Selector::parse(&req.selector)?;
        if self.jobs.len() >= self.max && self.jobs.values().all(|r| r.finished_at.is_none()) {
            self.stats.refused_full += 1;
            warn!(
                max = self.max,
                "firmware job refused: every kept job is running"
            );
            return Err(FirmwareError::TableFull { max: self.max });
        }
        if req.version.is_empty() || req.version.len() > agora_devices::MAX_LABEL_LEN {
            return Err(FirmwareError::Version(req.version.clone()));
        }
        let busy: BTreeSet<DeviceId> = self
            .jobs
            .values()
            .filter(|r| r.finished_at.is_none())
            .flat_map(|r| r.devices.iter().copied())
            .collect();
        let table: Vec<DeviceMeta> = table
            .into_iter()
            .filter(|m| selector.matches(m) && !busy.contains(&m.id))
            .collect();
        if table.is_empty() {
            return Err(FirmwareError::NoDevices {
                selector: req.selector.clone(),
            });
        }
        let firmware_type = match &req.firmware_type {
            Some(t) => t.clone(),
            None => {
                let types: BTreeSet<&str> =
                    table.iter().map(|m| m.firmware_type.as_str()).collect();
                match types.iter().next() {
                    Some(t) if types.len() == 1 => (*t).to_string(),
                    _ => {
                        return Err(FirmwareError::AmbiguousType {
                            types: types.into_iter().map(str::to_string).collect(),
                        });
                    }
                }
            }
        };
        self.make_room()?;
        let id = self.next_id;
        let firmware = Firmware {
            cid: req.firmware.clone(),
            hash: *blake3::hash(&image).as_bytes(),
            size: image.len() as u64,
            firmware_type,
            version: req.version.clone(),
        };
        let cfg = JobConfig {
            max_unavailable: req.max_unavailable,
            ..JobConfig::default()
        };
        let devices: BTreeSet<DeviceId> = table.iter().map(|m| m.id).collect();
        let job = FirmwareJob::new(id, firmware, &selector, cfg, table, managed)?;
        self.next_id += 1;
        self.stats.started += 1;
        let mut run = Running {
            job,
            image,
            devices,
            selector: req.selector.clone(),
            started_at: now,
            finished_at: None,
            origin,
            restored_at: None,
            waiting_until: None,
            dirty: true,
            addrs: BTreeMap::new(),
        };
        if let Origin::Local { owned, .. } = &mut run.origin {
            owned.retain(|d| run.devices.contains(d));
        }
        let effects = run.job.handle(now, Input::Start);
        let out = carry_out(&mut run, now, effects, &mut self.holds);
        let started = JobStarted {
            id,
            devices: run.devices.len(),
        };
        info!(
            job = id,
            devices = started.devices,
            version = %req.version,
            firmware = %req.firmware,
            "firmware job started"
        );
        self.jobs.insert(id, run);
        Ok((started, out))
    }

    /// Evicts the oldest finished job when the table is full.
    fn make_room(&mut self) -> Result<(), FirmwareError> {
        if self.jobs.len() < self.max {
            return Ok(());
        }
        let oldest = self
            .jobs
            .iter()
            .find(|(_, r)| r.finished_at.is_some())
            .map(|(id, _)| *id);
        match oldest {
            Some(id) => {
                self.jobs.remove(&id);
                self.stats.evicted += 1;
                info!(
                    job = id,
                    "firmware job table full: oldest finished job evicted"
                );
                Ok(())
            }
            None => Err(FirmwareError::TableFull { max: self.max }),
        }
    }

    /// A reply of `device` that discovery accepted (from the device's address); whether a
    /// running job took it, and the requests to send.
    pub(crate) fn on_reply(
        &mut self,
        now: Timestamp,
        device: DeviceId,
        reply: Reply,
    ) -> (bool, Outgoing) {
        let input = match reply {
            Reply::Meta(m) => Input::Discovered(m),
            Reply::ChunkAck { index } => Input::ChunkAck { device, index },
            Reply::Hash(hash) => Input::Hash { device, hash },
            // The key layer's answer (key rotation): no job's business.
            Reply::Rekeyed { .. } => return (false, Vec::new()),
        };
        let mut out = Vec::new();
        let mut taken = false;
        for run in self.jobs.values_mut() {
            if run.finished_at.is_some() || !run.devices.contains(&device) {
                continue;
            }
            taken = true;
            let effects = run.job.handle(now, input.clone());
            out.extend(carry_out(run, now, effects, &mut self.holds));
        }
        self.stats.replies_taken += u64::from(taken);
        (taken, out)
    }

    /// Time passed; `managed` says which of a job's devices this edge manages now.
    ///
    /// A job restored after a restart starts again once every device it has not finished is
    /// `heard` (its metadata announced since the restart) and managed here, or at its
    /// `waiting_until`; it is given that metadata first. `heard` is asked only for the devices
    /// of such a waiting job.
    pub(crate) fn tick(
        &mut self,
        now: Timestamp,
        managed: impl Fn(&BTreeSet<DeviceId>) -> BTreeSet<DeviceId>,
        heard: impl Fn(DeviceId) -> Option<DeviceMeta>,
    ) -> Outgoing {
        let mut out = Vec::new();
        for run in self.jobs.values_mut() {
            if run.finished_at.is_some() {
                continue;
            }
            let managed = managed(&run.devices);
            let mut effects = run.job.handle(now, Input::Managed(managed.clone()));
            if let Some(until) = run.waiting_until {
                if run.image.is_empty() {
                    // Its image is being read again.
                    continue;
                }
                let pending: Vec<DeviceId> = run
                    .job
                    .status()
                    .devices
                    .iter()
                    .filter(|d| d.outcome.is_none())
                    .map(|d| d.device)
                    .collect();
                let metas: Vec<Option<DeviceMeta>> = pending.iter().map(|d| heard(*d)).collect();
                let ready = pending
                    .iter()
                    .zip(&metas)
                    .all(|(d, m)| m.is_some() && managed.contains(d));
                if !ready && now < until {
                    continue;
                }
                for m in metas.into_iter().flatten() {
                    effects.extend(run.job.handle(now, Input::Discovered(m)));
                }
                run.waiting_until = None;
                info!(
                    job = run.job.id(),
                    devices = pending.len(),
                    ready,
                    "restored firmware job goes on"
                );
                effects.extend(run.job.handle(now, Input::Start));
            }
            effects.extend(run.job.handle(now, Input::Tick));
            out.extend(carry_out(run, now, effects, &mut self.holds));
        }
        out
    }

    /// Hand-offs to send now: for every job started here over devices this node owns, to the
    /// providers `recipients` names for those devices (the job's request while it runs, until
    /// each keeps it; the finished version once it is over, to those that kept it, until acknowledged).
    pub(crate) fn handoffs_due(
        &mut self,
        now: Timestamp,
        recipients: impl Fn(&BTreeSet<DeviceId>) -> BTreeSet<NodeId>,
    ) -> Vec<HandoffSend> {
        let mut out = Vec::new();
        for (id, run) in &mut self.jobs {
            let Origin::Local {
                owned,
                outbox,
                sent_done,
            } = &mut run.origin
            else {
                continue;
            };
            if owned.is_empty() {
                continue;
            }
            let finished = run.finished_at.is_some();
            // What the owner finished travels with the hand-off: a provider that resumes the
            // job does not redo it. Outcomes are final, so the list only grows.
            let done: Vec<(DeviceId, OwnerDone)> = run
                .job
                .status()
                .devices
                .iter()
                .filter(|d| owned.contains(&d.device))
                .filter_map(|d| match d.outcome {
                    Some(Outcome::Updated { .. }) => Some((d.device, OwnerDone::Updated)),
                    Some(Outcome::RolledBack { .. }) => Some((d.device, OwnerDone::RolledBack)),
                    _ => None,
                })
                .collect();
            if !finished && done.len() != *sent_done {
                outbox.refresh();
                *sent_done = done.len();
            }
            let to = if finished {
                BTreeSet::new()
            } else {
                recipients(owned)
            };
            let due = outbox.due(now, &to, finished);
            if due.is_empty() {
                continue;
            }
            let fw = run.job.firmware();
            let handoff = JobHandoff {
                job: *id,
                selector: run.selector.clone(),
                firmware: fw.cid.clone(),
                firmware_type: fw.firmware_type.clone(),
                version: fw.version.clone(),
                max_unavailable: run.job.max_unavailable(),
                devices: owned.iter().copied().collect(),
                issued_at: run.started_at,
                finished,
                done,
            };
            for peer in due {
                self.stats.handoffs_sent += 1;
                out.push((*id, peer, handoff.clone()));
            }
        }
        out
    }

    /// `peer` answered the hand-off of job `id` (sent `finished` or not).
    pub(crate) fn handoff_answered(&mut self, id: JobId, peer: NodeId, kept: bool, finished: bool) {
        self.stats.handoffs_acked += u64::from(kept);
        if let Some(Running {
            origin: Origin::Local { outbox, .. },
            ..
        }) = self.jobs.get_mut(&id)
        {
            outbox.answered(peer, kept, finished);
        }
    }

    /// The pauses and resumes named since the last call, in order.
    pub(crate) fn take_holds(&mut self) -> Vec<Hold> {
        std::mem::take(&mut self.holds)
    }

    /// Whether any job is running (the radio ticks it).
    pub(crate) fn running(&self) -> bool {
        self.jobs.values().any(|r| r.finished_at.is_none())
    }

    /// The devices restored jobs wait for, at the addresses saved with them.
    pub(crate) fn hints(&self) -> Vec<(DeviceId, std::net::SocketAddr)> {
        self.jobs
            .values()
            .filter(|r| r.waiting_until.is_some())
            .flat_map(|r| r.addrs.iter().map(|(d, a)| (*d, *a)))
            .collect()
    }

    /// Whether a job changed in a way a restart must not lose since the last call (job
    /// created, a device paused or done, an attempt begun, the job finished).
    pub(crate) fn take_dirty(&mut self) -> bool {
        let mut dirty = false;
        for run in self.jobs.values_mut() {
            dirty |= std::mem::take(&mut run.dirty);
        }
        dirty
    }

    pub(crate) fn view(&self, id: JobId) -> Option<JobView> {
        self.jobs.get(&id).map(view)
    }

    pub(crate) fn list(&self) -> JobList {
        JobList {
            jobs: self.jobs.values().map(view).collect(),
            stats: self.stats,
            ..JobList::default()
        }
    }
}

fn view(r: &Running) -> JobView {
    JobView {
        status: r.job.status(),
        selector: r.selector.clone(),
        firmware_type: r.job.firmware().firmware_type.clone(),
        size: r.job.firmware().size,
        finished: r.job.finished(),
        started_at: r.started_at,
        finished_at: r.finished_at,
        resumed_from: match &r.origin {
            Origin::Resumed { owner, job, done } => Some(ResumedFrom {
                owner: owner.to_string(),
                job: *job,
                done: done.clone(),
            }),
            Origin::Local { .. } => None,
        },
        handed_to: match &r.origin {
            Origin::Local { outbox, .. } => {
                outbox.kept_by().iter().map(ToString::to_string).collect()
            }
            Origin::Resumed { .. } => Vec::new(),
        },
        restored_at: r.restored_at,
        waiting_until: r.waiting_until,
    }
}

/// Turns the machine's effects into endpoint requests (a chunk's bytes cut from the image).
fn carry_out(
    run: &mut Running,
    now: Timestamp,
    effects: Vec<Effect>,
    holds: &mut Vec<Hold>,
) -> Outgoing {
    let job = run.job.id();
    let mut out = Vec::new();
    for e in effects {
        // What a restart must not lose: an attempt begun, a device done, the job over.
        run.dirty |= matches!(
            e,
            Effect::Send {
                command: Command::RebootToBootloader,
                ..
            } | Effect::Pause(_)
                | Effect::Done { .. }
                | Effect::Finished(_)
        );
        match e {
            Effect::Send { device, command } => {
                let req = match command {
                    Command::RebootToBootloader => Request::RebootToBootloader,
                    Command::Verify => Request::Verify,
                    Command::Boot { version } => Request::Boot { version },
                    Command::Rollback => Request::Rollback,
                    Command::FlashChunk { index, offset, len } => {
                        let data = usize::try_from(offset).ok().and_then(|start| {
                            let end = start.checked_add(usize::try_from(len).ok()?)?;
                            run.image.get(start..end)
                        });
                        let Some(data) = data else {
                            warn!(job, device, index, "chunk outside the image: not sent");
                            continue;
                        };
                        Request::FlashChunk {
                            index,
                            offset,
                            data: data.to_vec(),
                        }
                    }
                };
                out.push((device, req));
            }
            Effect::Done { device, outcome } => {
                info!(job, device, ?outcome, "firmware job: device done");
            }
            Effect::Finished(summary) => {
                run.finished_at = Some(now);
                // A device the job lost (or halted on) gets no `Resume` of its own: its
                // readings count again once the job is over.
                holds.extend(run.devices.iter().map(|d| (*d, false)));
                info!(
                    job,
                    updated = summary.updated,
                    skipped = summary.skipped,
                    rolled_back = summary.rolled_back,
                    lost = summary.lost,
                    "firmware job finished"
                );
            }
            // The device sends nothing while it is away (rebooting, in its bootloader, being
            // flashed): the radio task marks it paused until it runs a final firmware.
            Effect::Pause(device) => holds.push((device, true)),
            Effect::Resume(device) => holds.push((device, false)),
            // The radio ticks running jobs at every checkpoint tick (radio.checkpoint_ms).
            Effect::WakeAt(_) => {}
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
