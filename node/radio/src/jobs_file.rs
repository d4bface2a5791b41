//! This edge's own firmware jobs (issue #16), persisted in `<data-dir>/radio-jobs.json` (mode
//! 0600, through [`agora_network::private_file`]) so an edge restarted mid-job resumes it.
//! Written whole when a job changes in a way a restart must not lose (job created, a device's
//! attempt begun, a device done, the job finished: [`crate::firmware::Jobs::take_dirty`]), not
//! on every tick. Reloaded at start as hostile input: a file readable by others, larger than
//! [`MAX_FILE_BYTES`] or not JSON is refused with a log line (the node starts without it); at
//! most [`MAX_JOBS`](crate::firmware::MAX_JOBS) entries are kept (the newest), and an entry that does not check (selector,
//! version, image size, device records through [`FirmwareJob::restore`], duplicate ids,
//! devices already in another running job) is dropped and counted
//! ([`JobStats::dropped_on_load`]).
//!
//! A restored job that was not finished keeps the outcomes of its finished devices and waits
//! (see [`crate::firmware::Jobs::tick`]) until its other devices are heard again and managed
//! here, then goes on; its image is read again from the node's store (a job whose image cannot
//! be had is halted: its devices not done are reported `halted`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use agora_devices::handoff::OwnerDone;
use agora_devices::{
    DeviceId, Firmware, FirmwareJob, JobConfig, MAX_LABEL_LEN, MAX_RESTORED_DEVICES, Selector,
    SlotRecord,
};
use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::firmware::{JobId, JobStats, Jobs, MAX_FIRMWARE_BYTES, Origin, Running};
use crate::keys::{read_private_json, write_private};

/// Largest job file read back, bytes (16 jobs of 1024 devices, ~300 bytes a device record).
pub(crate) const MAX_FILE_BYTES: u64 = 8 << 20;

/// How long a restored job waits for its devices to be heard again and managed here before it
/// goes on without them (those not managed here then are reported `not_managed`), ms.
pub(crate) const RESUME_GRACE_MS: u64 = 60_000;

/// One job as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedJob {
    pub(crate) id: JobId,
    pub(crate) selector: String,
    pub(crate) firmware: Firmware,
    pub(crate) max_unavailable: usize,
    pub(crate) started_at: Timestamp,
    pub(crate) finished_at: Option<Timestamp>,
    pub(crate) origin: SavedOrigin,
    pub(crate) devices: Vec<SlotRecord>,
    /// Where its devices talked from (a device left in its bootloader is asked there).
    #[serde(default)]
    pub(crate) addrs: Vec<(DeviceId, SocketAddr)>,
}

/// Who asked for a saved job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SavedOrigin {
    /// `agora device flash` here; the devices this node owns (their job is handed over again).
    Local { owned: Vec<DeviceId> },
    /// A hand-off of the devices' owner resumed here.
    Resumed {
        owner: NodeId,
        job: JobId,
        done: Vec<(DeviceId, OwnerDone)>,
    },
}

/// Why a saved job is refused.
fn check(s: &SavedJob) -> Result<(), String> {
    Selector::parse(&s.selector).map_err(|e| e.to_string())?;
    let fw = &s.firmware;
    if fw.version.is_empty() || fw.version.len() > MAX_LABEL_LEN {
        return Err(format!("version of {} bytes", fw.version.len()));
    }
    if fw.firmware_type.len() > MAX_LABEL_LEN || fw.cid.len() > 256 {
        return Err("firmware type or CID too long".into());
    }
    if fw.size > MAX_FIRMWARE_BYTES {
        return Err(format!("image of {} bytes", fw.size));
    }
    if s.selector.len() > 1024 {
        return Err("selector too long".into());
    }
    let devices: BTreeSet<DeviceId> = s.devices.iter().map(|r| r.meta.id).collect();
    let named = match &s.origin {
        SavedOrigin::Local { owned } => owned.len(),
        SavedOrigin::Resumed { done, .. } => done.len(),
    };
    if named > MAX_RESTORED_DEVICES {
        return Err(format!("{named} devices named by its origin"));
    }
    if let SavedOrigin::Local { owned } = &s.origin
        && !owned.iter().all(|d| devices.contains(d))
    {
        return Err("owns a device outside the job".into());
    }
    if !s.addrs.iter().all(|(d, _)| devices.contains(d)) || s.addrs.len() > devices.len() {
        return Err("an address for a device outside the job".into());
    }
    Ok(())
}

impl SavedJob {
    fn of(id: JobId, r: &Running, addr_of: &dyn Fn(DeviceId) -> Option<SocketAddr>) -> Self {
        SavedJob {
            id,
            selector: r.selector.clone(),
            firmware: r.job.firmware().clone(),
            max_unavailable: r.job.max_unavailable(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            origin: match &r.origin {
                Origin::Local { owned, .. } => SavedOrigin::Local {
                    owned: owned.iter().copied().collect(),
                },
                Origin::Resumed { owner, job, done } => SavedOrigin::Resumed {
                    owner: *owner,
                    job: *job,
                    done: done.clone(),
                },
            },
            devices: r.job.records(),
            addrs: r
                .devices
                .iter()
                .filter_map(|d| Some((*d, addr_of(*d).or_else(|| r.addrs.get(d).copied())?)))
                .collect(),
        }
    }
}

impl Jobs {
    /// The jobs as saved, with where discovery last heard their devices (`addr_of`).
    pub(crate) fn saved(&self, addr_of: &dyn Fn(DeviceId) -> Option<SocketAddr>) -> Vec<SavedJob> {
        self.jobs
            .iter()
            .map(|(id, r)| SavedJob::of(*id, r, addr_of))
            .collect()
    }

    /// Rebuilds the table from `saved` at `now` (checked entry by entry; see the module doc).
    /// Jobs not finished have no image yet: [`Self::image_loaded`] gives it.
    pub(crate) fn restore(&mut self, now: Timestamp, mut saved: Vec<SavedJob>) {
        if saved.len() > self.max {
            // The newest are kept.
            saved.sort_by_key(|s| (s.started_at, s.id));
            let extra = saved.len() - self.max;
            saved.drain(..extra);
            self.stats.dropped_on_load += extra as u64;
        }
        for s in saved {
            let id = s.id;
            match self.restore_one(now, s) {
                Ok(()) => self.stats.restored += 1,
                Err(reason) => {
                    self.stats.dropped_on_load += 1;
                    warn!(job = id, %reason, "saved firmware job refused");
                }
            }
        }
        self.next_id = self.jobs.keys().max().map_or(1, |m| m.saturating_add(1));
    }

    fn restore_one(&mut self, now: Timestamp, s: SavedJob) -> Result<(), String> {
        check(&s)?;
        if self.jobs.contains_key(&s.id) {
            return Err("id appears twice".into());
        }
        let cfg = JobConfig {
            max_unavailable: s.max_unavailable,
            ..JobConfig::default()
        };
        let job =
            FirmwareJob::restore(s.id, s.firmware, cfg, s.devices).map_err(|e| e.to_string())?;
        let devices: BTreeSet<DeviceId> = job.status().devices.iter().map(|d| d.device).collect();
        let finished = job.finished();
        if !finished {
            let busy = self
                .jobs
                .values()
                .filter(|r| r.finished_at.is_none())
                .any(|r| !r.devices.is_disjoint(&devices));
            if busy {
                return Err("a device is in another running job".into());
            }
        }
        let origin = match s.origin {
            // Its hand-offs go out again: the providers answer that they keep it still.
            SavedOrigin::Local { owned } => Origin::local(owned.into_iter().collect()),
            SavedOrigin::Resumed { owner, job, done } => Origin::Resumed { owner, job, done },
        };
        self.jobs.insert(
            s.id,
            Running {
                job,
                image: Vec::new(),
                devices,
                selector: s.selector,
                started_at: s.started_at,
                finished_at: if finished {
                    Some(s.finished_at.unwrap_or(now))
                } else {
                    None
                },
                origin,
                restored_at: Some(now),
                waiting_until: (!finished).then_some(now.saturating_add(RESUME_GRACE_MS)),
                dirty: false,
                addrs: s.addrs.into_iter().collect(),
            },
        );
        Ok(())
    }

    /// Restored jobs waiting for their image: id and CID.
    pub(crate) fn images_needed(&self) -> Vec<(JobId, String)> {
        self.jobs
            .iter()
            .filter(|(_, r)| r.finished_at.is_none() && r.image.is_empty())
            .map(|(id, r)| (*id, r.job.firmware().cid.clone()))
            .collect()
    }

    /// The image of restored job `id`, or why it could not be had: then the job is halted.
    pub(crate) fn image_loaded(
        &mut self,
        now: Timestamp,
        id: JobId,
        image: Result<Vec<u8>, String>,
    ) {
        let Some(run) = self.jobs.get_mut(&id) else {
            return;
        };
        let fw = run.job.firmware();
        let image = image.and_then(|i| {
            if i.len() as u64 == fw.size && *blake3::hash(&i).as_bytes() == fw.hash {
                Ok(i)
            } else {
                Err("the stored image is not the job's (size or hash differ)".into())
            }
        });
        match image {
            Ok(i) => run.image = i,
            Err(e) => {
                self.stats.restore_failed += 1;
                warn!(job = id, error = %e, "restored firmware job halted: image not loaded");
                // Nothing to send: its devices not done are only reported halted.
                let _ = run.job.halt();
                run.finished_at = Some(now);
                run.waiting_until = None;
                run.dirty = true;
            }
        }
    }
}

/// The job table reloaded from `path` at `now` (empty if there is none or it is refused).
pub(crate) fn load(path: Option<&Path>, now: Timestamp, max: usize) -> Jobs {
    let mut jobs = Jobs::new(max);
    let Some(path) = path else {
        return jobs;
    };
    if let Some(saved) = read_private_json::<Vec<SavedJob>>(path, MAX_FILE_BYTES) {
        jobs.restore(now, saved);
        let JobStats {
            restored,
            dropped_on_load,
            ..
        } = jobs.stats;
        if restored > 0 || dropped_on_load > 0 {
            info!(restored, dropped = dropped_on_load, path = %path.display(), "firmware jobs reloaded");
        }
    }
    jobs
}

/// Writes the table to `path` (a failure is logged: a restart would lose the jobs' progress).
pub(crate) fn save(
    path: Option<&Path>,
    jobs: &Jobs,
    addr_of: &dyn Fn(DeviceId) -> Option<SocketAddr>,
) {
    let Some(path) = path else {
        return;
    };
    if let Err(e) = write_private(path, &jobs.saved(addr_of)) {
        warn!(path = %path.display(), error = %e, "firmware jobs not saved; a restart forgets them");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
