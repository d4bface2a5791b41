//! A job carried across a restart of the edge that runs it (issue #16): [`FirmwareJob::records`]
//! says per device what must survive (its metadata, outcome, attempts), and
//! [`FirmwareJob::restore`] rebuilds the job from them, checked as hostile input (the records
//! come back from a file).
//!
//! The resume rule: a device with an outcome keeps it and is never sent a command again; every
//! other device waits for its turn again. One that was under way (told to reboot, flashed,
//! verified or booting) when the edge stopped starts its steps over — reboot into the
//! bootloader (which clears the staging slot, also when it is already there), rediscover,
//! flash every chunk, verify, boot — unless it already runs the target version when the job
//! starts again or its turn comes: then the interrupted attempt got through its boot, and it
//! is reported updated (not skipped as current: this job updated it).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::super::meta::{DeviceMeta, MAX_LABEL_LEN};
use super::{
    DeviceId, FailReason, Firmware, FirmwareJob, JobConfig, JobError, JobId, Outcome, Selector,
    SkipReason, Slot, Step,
};

/// Most devices a restored job may name.
pub const MAX_RESTORED_DEVICES: usize = 1024;

/// What survives a restart of one device of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// Its metadata as last heard.
    pub meta: DeviceMeta,
    /// The version it ran when the job reached it.
    pub previous_version: String,
    /// Attempts begun (0: its turn had not come).
    pub attempt: u32,
    /// The last failed attempt's reason.
    pub last_failure: Option<FailReason>,
    /// Its outcome, once done.
    pub outcome: Option<Outcome>,
}

/// Records that do not make a job.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The job's own parameters are refused (as a new job's would be).
    #[error(transparent)]
    Job(#[from] JobError),
    /// No device, or more than [`MAX_RESTORED_DEVICES`].
    #[error("a restored job names {0} devices (1..={MAX_RESTORED_DEVICES})")]
    Devices(usize),
    /// The same device twice.
    #[error("device {0} appears twice in a restored job")]
    Duplicate(DeviceId),
    /// A label longer than [`MAX_LABEL_LEN`].
    #[error("device {0}: a label in its record is longer than {MAX_LABEL_LEN} bytes")]
    Label(DeviceId),
    /// More attempts than the job allows.
    #[error("device {0}: {1} attempts recorded, more than the job allows")]
    Attempts(DeviceId, u32),
}

impl FirmwareJob {
    /// Per device, what must survive a restart of the edge.
    pub fn records(&self) -> Vec<SlotRecord> {
        self.slots
            .values()
            .map(|s| SlotRecord {
                meta: s.meta.clone(),
                previous_version: s.previous_version.clone(),
                attempt: s.attempt,
                last_failure: s.last_failure.clone(),
                outcome: s.outcome.clone(),
            })
            .collect()
    }

    /// The job `id` rebuilt from `records` after a restart, not started: the driver gives it
    /// the devices' metadata heard since (`Input::Discovered`), who manages them
    /// (`Input::Managed`), then `Input::Start`. A job whose every device has an outcome is
    /// finished already.
    pub fn restore(
        id: JobId,
        firmware: Firmware,
        cfg: JobConfig,
        records: Vec<SlotRecord>,
    ) -> Result<Self, RestoreError> {
        if records.is_empty() || records.len() > MAX_RESTORED_DEVICES {
            return Err(RestoreError::Devices(records.len()));
        }
        let mut job = FirmwareJob::new(
            id,
            firmware,
            &Selector::default(),
            cfg,
            Vec::new(),
            BTreeSet::new(),
        )?;
        let mut slots = BTreeMap::new();
        for r in records {
            let d = r.meta.id;
            if !labels_fit(&r) {
                return Err(RestoreError::Label(d));
            }
            if r.attempt > job.plan.cfg.max_attempts {
                return Err(RestoreError::Attempts(d, r.attempt));
            }
            let done = r.outcome.is_some();
            let slot = Slot {
                previous_version: r.previous_version,
                boots_at: r.meta.boots,
                meta: r.meta,
                step: if done { Step::Done } else { Step::Waiting },
                attempt: r.attempt,
                next_chunk: 0,
                resends: 0,
                rollbacks: 0,
                deadline: None,
                last_failure: r.last_failure,
                interrupted: !done && r.attempt > 0,
                outcome: r.outcome,
            };
            if slots.insert(d, slot).is_some() {
                return Err(RestoreError::Duplicate(d));
            }
        }
        job.finished = slots.values().all(|s| s.outcome.is_some());
        job.started = job.finished;
        job.slots = slots;
        Ok(job)
    }

    /// Ends the job without starting another device (its image cannot be had after a
    /// restart): every device not done is skipped `halted`.
    pub fn halt(&mut self) -> Vec<super::Effect> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        for slot in self.slots.values_mut().filter(|s| s.outcome.is_none()) {
            super::finish(slot, Outcome::Skipped(SkipReason::Halted), &mut out);
        }
        self.started = true;
        self.finished = true;
        out.push(super::Effect::Finished(self.summary()));
        out
    }
}

fn labels_fit(r: &SlotRecord) -> bool {
    let fits = |s: &str| s.len() <= MAX_LABEL_LEN;
    let m = &r.meta;
    let failure = |f: &Option<FailReason>| match f {
        Some(FailReason::BootedOld { version }) => fits(version),
        _ => true,
    };
    let outcome = match &r.outcome {
        Some(Outcome::Skipped(SkipReason::WrongType { firmware_type })) => fits(firmware_type),
        Some(Outcome::RolledBack { last, .. } | Outcome::Lost { last }) => {
            failure(&Some(last.clone()))
        }
        _ => true,
    };
    [&m.kind, &m.firmware_type, &m.version, &r.previous_version]
        .iter()
        .all(|s| fits(s))
        && failure(&r.last_failure)
        && outcome
}
