//! A firmware job: flash one image onto the selected devices an edge manages, at most
//! `max_unavailable` at a time, with retry and rollback. Pure: time is passed in.
//!
//! Rules, each with a unit test in `job/tests.rs`:
//! - Locked devices, devices of another firmware type and devices already at the version are
//!   skipped at the start and reported; they are never sent a command. A device's lock, its
//!   version and the edge's authority are checked again when its turn comes (`NotManaged`:
//!   the ledger gives it to another edge; `AlreadyCurrent`: it was updated meanwhile, by the
//!   edge that ran the job before a handover).
//! - At most `max_unavailable` devices are unavailable at once: from the moment one is paused
//!   and told to reboot until it is rediscovered running a final firmware; lost devices stay
//!   unavailable, and once as many are lost as may be unavailable the job starts no more
//!   (`Halted`).
//! - Per device: reboot → rediscovered in the bootloader (boot counter advanced) → chunks in
//!   order, each acknowledged (a lost chunk is sent again) → verify: the reported hash must be
//!   the image's → boot → rediscovered running the target version: updated, resumed.
//! - A failed attempt (timeout, wrong hash, back on the old version or in the bootloader) is
//!   retried from the reboot; after `max_attempts` the device is told to roll back, and is
//!   reported rolled back once it runs its previous version again (lost if it never does).
//! - Replies that match no step (stale announcements with an old boot counter, duplicate or
//!   out-of-order acks, devices outside the job) change nothing and are counted.

mod io;
mod restore;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use agora_market::Timestamp;

pub use io::{
    Command, DeviceProgress, Effect, FailReason, Input, JobConfig, JobError, JobId, JobStatus,
    MAX_CHUNK, Outcome, SkipReason, Step, Summary,
};
pub use restore::{MAX_RESTORED_DEVICES, RestoreError, SlotRecord};

use super::meta::{DeviceId, DeviceMeta, Firmware, Mode, Selector};

/// One device in the job.
#[derive(Clone, Debug)]
struct Slot {
    meta: DeviceMeta,
    previous_version: String,
    step: Step,
    attempt: u32,
    next_chunk: u32,
    resends: u32,
    rollbacks: u32,
    /// Boot counter when the last reboot-like command was sent: a later announcement must
    /// carry a higher one.
    boots_at: u32,
    deadline: Option<Timestamp>,
    last_failure: Option<FailReason>,
    outcome: Option<Outcome>,
    /// Under way when the edge running the job stopped (restored by
    /// [`FirmwareJob::restore`]): found on the target version when its turn comes, it was
    /// updated by this job, not before it.
    interrupted: bool,
}

impl Slot {
    fn unavailable(&self) -> bool {
        matches!(
            self.step,
            Step::Rebooting | Step::Flashing | Step::Verifying | Step::Booting | Step::RollingBack
        ) || matches!(self.outcome, Some(Outcome::Lost { .. }))
    }
}

/// A firmware job run by the edge that manages the devices.
#[derive(Clone, Debug)]
pub struct FirmwareJob {
    id: JobId,
    plan: Plan,
    slots: BTreeMap<DeviceId, Slot>,
    managed: BTreeSet<DeviceId>,
    started: bool,
    finished: bool,
    ignored: u64,
    last_wake: Option<Timestamp>,
}

impl FirmwareJob {
    /// A job flashing `firmware` onto the devices of `table` that `selector` picks, of which
    /// this edge manages `managed`.
    pub fn new(
        id: JobId,
        firmware: Firmware,
        selector: &Selector,
        cfg: JobConfig,
        table: impl IntoIterator<Item = DeviceMeta>,
        managed: BTreeSet<DeviceId>,
    ) -> Result<Self, JobError> {
        if firmware.size == 0 {
            return Err(JobError::EmptyImage { cid: firmware.cid });
        }
        if cfg.max_unavailable == 0 {
            return Err(JobError::ZeroUnavailable);
        }
        if cfg.max_attempts == 0 {
            return Err(JobError::ZeroAttempts);
        }
        if cfg.chunk_size == 0 || cfg.chunk_size > MAX_CHUNK {
            return Err(JobError::ChunkSize(cfg.chunk_size));
        }
        let chunks =
            u32::try_from(firmware.size.div_ceil(u64::from(cfg.chunk_size))).map_err(|_| {
                JobError::TooLarge {
                    cid: firmware.cid.clone(),
                    size: firmware.size,
                }
            })?;
        let slots = table
            .into_iter()
            .filter(|m| selector.matches(m))
            .map(|meta| {
                let slot = Slot {
                    previous_version: meta.version.clone(),
                    boots_at: meta.boots,
                    meta,
                    step: Step::Waiting,
                    attempt: 0,
                    next_chunk: 0,
                    resends: 0,
                    rollbacks: 0,
                    deadline: None,
                    last_failure: None,
                    outcome: None,
                    interrupted: false,
                };
                (slot.meta.id, slot)
            })
            .collect();
        Ok(Self {
            id,
            plan: Plan {
                firmware,
                cfg,
                chunks,
            },
            slots,
            managed,
            started: false,
            finished: false,
            ignored: 0,
            last_wake: None,
        })
    }

    /// Applies one input at `now`.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Start => {
                if !self.started {
                    self.started = true;
                    self.skip_at_start(&mut out);
                }
            }
            Input::Discovered(meta) => self.on_discovered(now, meta, &mut out),
            Input::ChunkAck { device, index } => self.on_chunk_ack(now, device, index, &mut out),
            Input::Hash { device, hash } => self.on_hash(now, device, hash, &mut out),
            Input::Managed(set) => self.managed = set,
            Input::Tick => {}
        }
        if self.started {
            self.on_time(now, &mut out);
            self.pump(now, &mut out);
            if !self.finished && self.slots.values().all(|s| s.outcome.is_some()) {
                self.finished = true;
                out.push(Effect::Finished(self.summary()));
            }
        }
        if let Some(at) = self.slots.values().filter_map(|s| s.deadline).min()
            && self.last_wake != Some(at)
        {
            self.last_wake = Some(at);
            out.push(Effect::WakeAt(at));
        }
        out
    }

    /// Whether every device is done.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Whether `device` is unavailable now (its readings must not count).
    pub fn is_unavailable(&self, device: DeviceId) -> bool {
        self.slots.get(&device).is_some_and(Slot::unavailable)
    }

    /// Devices unavailable now.
    pub fn unavailable(&self) -> usize {
        self.slots.values().filter(|s| s.unavailable()).count()
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Devices that may be unavailable at once.
    pub fn max_unavailable(&self) -> usize {
        self.plan.cfg.max_unavailable
    }

    /// The image.
    pub fn firmware(&self) -> &Firmware {
        &self.plan.firmware
    }

    /// Offset and length of chunk `index` (`None` past the end).
    pub fn chunk(&self, index: u32) -> Option<(u64, u32)> {
        self.plan.chunk(index)
    }

    /// Outcome counts.
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            total: self.slots.len(),
            ..Summary::default()
        };
        for slot in self.slots.values() {
            match &slot.outcome {
                None => s.pending += 1,
                Some(Outcome::Updated { .. }) => s.updated += 1,
                Some(Outcome::Skipped(_)) => s.skipped += 1,
                Some(Outcome::RolledBack { .. }) => s.rolled_back += 1,
                Some(Outcome::Lost { .. }) => s.lost += 1,
            }
        }
        s
    }

    /// The job as `agora device job status` shows it.
    pub fn status(&self) -> JobStatus {
        JobStatus {
            id: self.id,
            firmware: self.plan.firmware.cid.clone(),
            version: self.plan.firmware.version.clone(),
            chunks: self.plan.chunks,
            unavailable: self.unavailable(),
            summary: self.summary(),
            devices: self
                .slots
                .values()
                .map(|s| DeviceProgress {
                    device: s.meta.id,
                    step: s.step,
                    attempt: s.attempt,
                    chunks_done: s.next_chunk,
                    previous_version: s.previous_version.clone(),
                    version: s.meta.version.clone(),
                    last_failure: s.last_failure.clone(),
                    outcome: s.outcome.clone(),
                })
                .collect(),
            ignored_replies: self.ignored,
        }
    }

    fn skip_at_start(&mut self, out: &mut Vec<Effect>) {
        let fw = &self.plan.firmware;
        for slot in self.slots.values_mut() {
            // Finished before a restart: never touched again.
            if slot.outcome.is_some() {
                continue;
            }
            if slot.interrupted && current(slot, fw) {
                let attempts = slot.attempt;
                finish(slot, Outcome::Updated { attempts }, out);
                continue;
            }
            let reason = if slot.meta.locked {
                SkipReason::Locked
            } else if slot.meta.firmware_type != fw.firmware_type {
                SkipReason::WrongType {
                    firmware_type: slot.meta.firmware_type.clone(),
                }
            } else if slot.meta.version == fw.version {
                SkipReason::AlreadyCurrent
            } else {
                continue;
            };
            finish(slot, Outcome::Skipped(reason), out);
        }
    }

    /// Starts waiting devices while fewer than `max_unavailable` are unavailable.
    fn pump(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let lost = self
            .slots
            .values()
            .filter(|s| matches!(s.outcome, Some(Outcome::Lost { .. })))
            .count();
        let cfg = &self.plan.cfg;
        let halted = lost >= cfg.max_unavailable;
        let mut busy = self.unavailable();
        for slot in self.slots.values_mut() {
            if slot.step != Step::Waiting || slot.outcome.is_some() {
                continue;
            }
            if halted {
                finish(slot, Outcome::Skipped(SkipReason::Halted), out);
                continue;
            }
            if busy >= cfg.max_unavailable {
                break;
            }
            if slot.meta.locked {
                finish(slot, Outcome::Skipped(SkipReason::Locked), out);
                continue;
            }
            // Updated meanwhile (by the edge that ran this job before a handover), or by this
            // job's attempt that a restart of this edge interrupted after the boot command.
            if current(slot, &self.plan.firmware) {
                let outcome = if slot.interrupted {
                    Outcome::Updated {
                        attempts: slot.attempt,
                    }
                } else {
                    Outcome::Skipped(SkipReason::AlreadyCurrent)
                };
                finish(slot, outcome, out);
                continue;
            }
            if !self.managed.contains(&slot.meta.id) {
                finish(slot, Outcome::Skipped(SkipReason::NotManaged), out);
                continue;
            }
            busy += 1;
            out.push(Effect::Pause(slot.meta.id));
            if slot.interrupted {
                // The attempt the restart cut short starts over under its own number (the
                // edge stopped, not the device), and the version to roll back to stays the one
                // it ran when the job first reached it (it may be in its bootloader now).
                slot.attempt = slot.attempt.max(1);
            } else {
                slot.previous_version = slot.meta.version.clone();
                slot.attempt = 1;
            }
            reboot(slot, now, cfg, out);
        }
    }

    fn on_discovered(&mut self, now: Timestamp, meta: DeviceMeta, out: &mut Vec<Effect>) {
        let plan = &self.plan;
        let Some(slot) = self.slots.get_mut(&meta.id) else {
            self.ignored += 1;
            return;
        };
        // Only a boot at least as late as the last one seen says anything new.
        if meta.boots < slot.meta.boots {
            self.ignored += 1;
            return;
        }
        let fresh = meta.boots > slot.boots_at;
        slot.meta = meta;
        if !fresh {
            if slot.step != Step::Waiting && slot.step != Step::Done {
                self.ignored += 1;
            }
            return;
        }
        let running = slot.meta.mode == Mode::Running;
        match slot.step {
            Step::Rebooting if running => plan.fail(slot, now, FailReason::NoBootloader, out),
            Step::Rebooting => {
                slot.step = Step::Flashing;
                slot.next_chunk = 0;
                slot.resends = 0;
                plan.send_chunk(slot, now, out);
            }
            Step::Booting if running && slot.meta.version == plan.firmware.version => {
                let attempts = slot.attempt;
                out.push(Effect::Resume(slot.meta.id));
                finish(slot, Outcome::Updated { attempts }, out);
            }
            Step::Booting if running => {
                let version = slot.meta.version.clone();
                plan.fail(slot, now, FailReason::BootedOld { version }, out);
            }
            Step::Booting => plan.fail(slot, now, FailReason::StuckInBootloader, out),
            Step::RollingBack if running && slot.meta.version == slot.previous_version => {
                let attempts = slot.attempt;
                let last = slot
                    .last_failure
                    .clone()
                    .unwrap_or(FailReason::Timeout(Step::RollingBack));
                out.push(Effect::Resume(slot.meta.id));
                finish(slot, Outcome::RolledBack { last, attempts }, out);
            }
            // Back on something else, or still in the bootloader: ask again.
            Step::RollingBack => plan.roll_back(slot, now, out),
            Step::Flashing | Step::Verifying => {
                // It rebooted under us: start the attempt over.
                plan.fail(slot, now, FailReason::Timeout(slot.step), out);
            }
            Step::Waiting | Step::Done => {}
        }
    }

    fn on_chunk_ack(
        &mut self,
        now: Timestamp,
        device: DeviceId,
        index: u32,
        out: &mut Vec<Effect>,
    ) {
        let plan = &self.plan;
        let Some(slot) = self.slots.get_mut(&device) else {
            self.ignored += 1;
            return;
        };
        if slot.step != Step::Flashing || index != slot.next_chunk {
            self.ignored += 1;
            return;
        }
        slot.next_chunk += 1;
        slot.resends = 0;
        if slot.next_chunk >= plan.chunks {
            slot.step = Step::Verifying;
            slot.deadline = Some(now.saturating_add(plan.cfg.step_timeout_ms));
            out.push(Effect::Send {
                device,
                command: Command::Verify,
            });
        } else {
            plan.send_chunk(slot, now, out);
        }
    }

    fn on_hash(&mut self, now: Timestamp, device: DeviceId, hash: [u8; 32], out: &mut Vec<Effect>) {
        let plan = &self.plan;
        let Some(slot) = self.slots.get_mut(&device) else {
            self.ignored += 1;
            return;
        };
        if slot.step != Step::Verifying {
            self.ignored += 1;
            return;
        }
        if hash != plan.firmware.hash {
            plan.fail(slot, now, FailReason::HashMismatch, out);
            return;
        }
        slot.step = Step::Booting;
        slot.boots_at = slot.meta.boots;
        slot.deadline = Some(now.saturating_add(plan.cfg.step_timeout_ms));
        out.push(Effect::Send {
            device,
            command: Command::Boot {
                version: plan.firmware.version.clone(),
            },
        });
    }

    /// Steps whose deadline passed.
    fn on_time(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let plan = &self.plan;
        for slot in self.slots.values_mut() {
            if slot.deadline.is_none_or(|d| now < d) {
                continue;
            }
            match slot.step {
                Step::Flashing if slot.resends < plan.cfg.max_chunk_resends => {
                    slot.resends += 1;
                    plan.send_chunk(slot, now, out);
                }
                Step::RollingBack => plan.roll_back(slot, now, out),
                Step::Waiting | Step::Done => slot.deadline = None,
                step => plan.fail(slot, now, FailReason::Timeout(step), out),
            }
        }
    }
}

/// What every device of the job shares.
#[derive(Clone, Debug)]
struct Plan {
    firmware: Firmware,
    cfg: JobConfig,
    chunks: u32,
}

impl Plan {
    /// Offset and length of chunk `index` (`None` past the end).
    fn chunk(&self, index: u32) -> Option<(u64, u32)> {
        if index >= self.chunks {
            return None;
        }
        let offset = u64::from(index) * u64::from(self.cfg.chunk_size);
        let len = self
            .firmware
            .size
            .saturating_sub(offset)
            .min(u64::from(self.cfg.chunk_size));
        Some((offset, u32::try_from(len).unwrap_or(self.cfg.chunk_size)))
    }

    fn send_chunk(&self, slot: &mut Slot, now: Timestamp, out: &mut Vec<Effect>) {
        let Some((offset, len)) = self.chunk(slot.next_chunk) else {
            return;
        };
        slot.deadline = Some(now.saturating_add(self.cfg.chunk_timeout_ms));
        out.push(Effect::Send {
            device: slot.meta.id,
            command: Command::FlashChunk {
                index: slot.next_chunk,
                offset,
                len,
            },
        });
    }

    /// One attempt failed: retry from the reboot, or roll back after the last.
    fn fail(&self, slot: &mut Slot, now: Timestamp, reason: FailReason, out: &mut Vec<Effect>) {
        slot.last_failure = Some(reason);
        if slot.attempt < self.cfg.max_attempts {
            slot.attempt += 1;
            reboot(slot, now, &self.cfg, out);
        } else {
            slot.rollbacks = 0;
            self.roll_back(slot, now, out);
        }
    }

    /// Sends (again) the rollback command; after `max_attempts` of them the device is lost.
    fn roll_back(&self, slot: &mut Slot, now: Timestamp, out: &mut Vec<Effect>) {
        if slot.rollbacks >= self.cfg.max_attempts {
            let last = slot
                .last_failure
                .clone()
                .unwrap_or(FailReason::Timeout(Step::RollingBack));
            finish(slot, Outcome::Lost { last }, out);
            return;
        }
        slot.rollbacks += 1;
        slot.step = Step::RollingBack;
        slot.boots_at = slot.meta.boots;
        slot.deadline = Some(now.saturating_add(self.cfg.step_timeout_ms));
        out.push(Effect::Send {
            device: slot.meta.id,
            command: Command::Rollback,
        });
    }
}

/// Whether the device runs the job's version.
fn current(slot: &Slot, fw: &Firmware) -> bool {
    slot.meta.mode == Mode::Running && slot.meta.version == fw.version
}

fn finish(slot: &mut Slot, outcome: Outcome, out: &mut Vec<Effect>) {
    slot.step = Step::Done;
    slot.deadline = None;
    slot.outcome = Some(outcome.clone());
    out.push(Effect::Done {
        device: slot.meta.id,
        outcome,
    });
}

fn reboot(slot: &mut Slot, now: Timestamp, cfg: &JobConfig, out: &mut Vec<Effect>) {
    slot.step = Step::Rebooting;
    slot.boots_at = slot.meta.boots;
    slot.next_chunk = 0;
    slot.resends = 0;
    slot.deadline = Some(now.saturating_add(cfg.step_timeout_ms));
    out.push(Effect::Send {
        device: slot.meta.id,
        command: Command::RebootToBootloader,
    });
}
