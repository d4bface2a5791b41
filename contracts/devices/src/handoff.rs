//! Firmware jobs that survive a handover (issue #16): the devices' owner hands the request of
//! each job it starts to every provider of its open contracts for those devices (standby
//! included); a provider keeps it and, once it takes custody of any of the devices at a
//! handover, resumes it. Pure: the sender's identity (the envelope's signer), who owns each
//! device (from the ledger's contracts) and who has custody are passed in.
//!
//! Rules, each with a unit test below:
//! - A hand-off is kept only when its sender owns every device it names; anything else is
//!   refused and counted (`refused_not_owner`), as is a malformed one (`refused_malformed`).
//! - The table is bounded ([`MAX_HANDOFFS`]): a new hand-off evicts a resumed one first, then
//!   the oldest; every eviction is counted.
//! - The same job (owner, owner's job id) sent again replaces the kept request until it is
//!   resumed; a `finished` hand-off retires it (the owner finished the job itself).
//! - Copies arrive out of order (the owner's resends, the network's retries): a copy never
//!   undoes what a later one said (THREATS R5). The provider remembers each retired job
//!   ([`MAX_RETIRED`], persisted), so a late copy of a finished job is not kept again and
//!   never flashes the old image once more; an older copy of a kept job never shrinks its
//!   `done` list (the union is kept, so no device is redone). A job id the owner uses again
//!   (after its restart) with a later `issued_at` is a new job.
//! - A kept hand-off is due once this edge has custody of any of its devices, and only once;
//!   one not resumed within [`HANDOFF_TTL_MS`] of its arrival expires.
//! - The owner's side ([`Outbox`]): each recipient is sent the hand-off until it answers that it
//!   kept it, at most every [`RESEND_MS`], [`MAX_SENDS`] times; once the job finishes, every
//!   recipient that ever kept it is sent the `finished` version until it acknowledges it (at
//!   most [`MAX_SENDS`] times). When the owner finishes
//!   a device (updated or rolled back) the hand-off changes ([`JobHandoff::done`]): every
//!   recipient is sent it again ([`Outbox::refresh`]), so a provider never redoes it.
//! - A provider persists its kept hand-offs; what it reloads ([`Handoffs::restore`]) passes
//!   the same checks as what it receives (bounds, expiry, the table's size), the rest is
//!   dropped and counted (`dropped_on_load`).

use std::collections::{BTreeMap, BTreeSet};

use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

use super::job::JobId;
use super::meta::{DeviceId, MAX_LABEL_LEN};

/// Hand-offs a provider keeps.
pub const MAX_HANDOFFS: usize = 16;
/// Retired jobs a provider remembers (the oldest retired is forgotten first).
pub const MAX_RETIRED: usize = 256;
/// Retired jobs a provider remembers of one owner (its own oldest go first), so one owner's
/// flood of `finished` hand-offs cannot flush every other owner's records.
pub const MAX_RETIRED_PER_OWNER: usize = 64;
/// Devices one hand-off may name.
pub const MAX_HANDOFF_DEVICES: usize = 1024;
/// Longest selector or firmware CID in a hand-off, bytes.
pub const MAX_HANDOFF_TEXT: usize = 256;
/// A kept hand-off not resumed within this long of its arrival expires (a day).
pub const HANDOFF_TTL_MS: u64 = 24 * 3600 * 1000;
/// Interval between sends of a hand-off a recipient did not (yet) keep.
pub const RESEND_MS: u64 = 2_000;
/// Sends of a hand-off per recipient before the owner gives up (two minutes).
pub const MAX_SENDS: u32 = 60;

/// A firmware job's request as its devices' owner hands it on. Travels inside an envelope
/// signed by the owner's node key; the signer is the owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobHandoff {
    /// The job's id on the owner's edge.
    pub job: JobId,
    /// Selector it was started with.
    pub selector: String,
    /// CID of the image.
    pub firmware: String,
    /// Firmware type of the image.
    pub firmware_type: String,
    /// Version the devices report once they run it.
    pub version: String,
    /// Devices that may be unavailable at once.
    pub max_unavailable: usize,
    /// The owner's devices in the job.
    pub devices: Vec<DeviceId>,
    /// When the owner started it, ms.
    pub issued_at: Timestamp,
    /// The owner finished the job: forget it.
    pub finished: bool,
    /// Devices of the job the owner already finished, and how (at most one entry per device,
    /// each one of `devices`): a provider resuming the job leaves them out.
    #[serde(default)]
    pub done: Vec<(DeviceId, OwnerDone)>,
}

/// How the owner finished a device of a handed-over job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerDone {
    /// It runs the new version (the owner saw it back on it).
    Updated,
    /// Every attempt failed and it runs its previous firmware again.
    RolledBack,
}

/// Why a hand-off was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandoffRefusal {
    /// The sender is not the owner of a device it names (as this edge's ledger knows it).
    #[error("device {device} is not the sender's (its owner here: {owner:?})")]
    NotOwner {
        /// Device.
        device: DeviceId,
        /// Its owner as this edge knows it.
        owner: Option<NodeId>,
    },
    /// Out of bounds or empty.
    #[error("malformed hand-off: {0}")]
    Malformed(&'static str),
}

/// What became of an accepted hand-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// Kept (new, or replacing the same job's earlier request).
    Kept {
        /// A hand-off evicted to make room.
        evicted: Option<(NodeId, JobId)>,
    },
    /// Already resumed here: nothing changes.
    AlreadyResumed,
    /// A copy older than what this edge already heard of the job (the job retired, or a
    /// later start of the same id kept): nothing changes.
    Stale,
    /// `finished`: forgotten (whether or not it was kept).
    Retired,
}

/// Counters of a provider's hand-off table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffStats {
    /// Hand-offs kept (new or replacing).
    pub kept: u64,
    /// Refused: the sender does not own a device it names.
    pub refused_not_owner: u64,
    /// Refused: malformed.
    pub refused_malformed: u64,
    /// Evicted to make room.
    pub evicted: u64,
    /// Retired by their owner.
    pub retired: u64,
    /// Expired before this edge took custody.
    pub expired: u64,
    /// Resumed here.
    pub resumed: u64,
    /// Entries of the persisted table dropped when it was reloaded (malformed, expired,
    /// duplicated or beyond the table's size).
    #[serde(default)]
    pub dropped_on_load: u64,
    /// Copies ignored as older than what was heard of their job (a late copy of a retired
    /// job, or of an earlier start of the same id).
    #[serde(default)]
    pub stale: u64,
}

/// One kept hand-off as `agora device job list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptHandoff {
    /// The owner (signer).
    pub owner: NodeId,
    /// The request.
    pub handoff: JobHandoff,
    /// When it arrived, ms.
    pub received_at: Timestamp,
    /// Whether this edge resumed it.
    pub resumed: bool,
}

/// A provider's kept hand-offs.
#[derive(Clone, Debug, Default)]
pub struct Handoffs {
    kept: BTreeMap<(NodeId, JobId), KeptHandoff>,
    /// Jobs their owner retired: the `issued_at` of the retired start, and when it retired.
    retired: BTreeMap<(NodeId, JobId), (Timestamp, Timestamp)>,
    max: usize,
    /// Counters.
    pub stats: HandoffStats,
}

impl Handoffs {
    /// An empty table of at most `max` (at least 1) hand-offs.
    pub fn new(max: usize) -> Self {
        Self {
            kept: BTreeMap::new(),
            retired: BTreeMap::new(),
            max: max.max(1),
            stats: HandoffStats::default(),
        }
    }

    /// A hand-off signed by `from`; `owner_of` says who owns a device as this edge's ledger
    /// knows it.
    pub fn receive(
        &mut self,
        now: Timestamp,
        from: NodeId,
        mut h: JobHandoff,
        owner_of: impl Fn(DeviceId) -> Option<NodeId>,
    ) -> Result<Received, HandoffRefusal> {
        if let Err(e) = check(&h) {
            self.stats.refused_malformed += 1;
            return Err(e);
        }
        normalise(&mut h);
        if let Some(&device) = h.devices.iter().find(|d| owner_of(**d) != Some(from)) {
            self.stats.refused_not_owner += 1;
            return Err(HandoffRefusal::NotOwner {
                device,
                owner: owner_of(device),
            });
        }
        let key = (from, h.job);
        if h.finished {
            // A finished copy of an earlier start of a reused id retires nothing newer.
            if self
                .kept
                .get(&key)
                .is_some_and(|k| k.handoff.issued_at > h.issued_at)
            {
                self.stats.stale += 1;
                return Ok(Received::Stale);
            }
            self.kept.remove(&key);
            self.retire(key, h.issued_at, now);
            self.stats.retired += 1;
            return Ok(Received::Retired);
        }
        // The id again for a job started later is a new job; the record stays, so a late
        // copy of the retired start is still refused if the new one is evicted or expires.
        if let Some(&(issued, _)) = self.retired.get(&key)
            && issued >= h.issued_at
        {
            self.stats.stale += 1;
            return Ok(Received::Stale);
        }
        if let Some(k) = self.kept.get_mut(&key) {
            if h.issued_at < k.handoff.issued_at {
                self.stats.stale += 1;
                return Ok(Received::Stale);
            }
            if h.issued_at == k.handoff.issued_at {
                if k.resumed {
                    return Ok(Received::AlreadyResumed);
                }
                // What the owner finished stays finished, whatever order copies arrive in.
                let mut done = std::mem::take(&mut k.handoff.done);
                done.retain(|(d, _)| h.devices.contains(d));
                done.extend(h.done.iter().copied());
                h.done = done;
                normalise(&mut h);
            } else {
                // A later start of a reused id: a new job, to resume once more.
                k.resumed = false;
            }
            k.handoff = h;
            k.received_at = now;
            self.stats.kept += 1;
            return Ok(Received::Kept { evicted: None });
        }
        let evicted = if self.kept.len() >= self.max {
            // A resumed one first, then the oldest to arrive.
            let victim = self
                .kept
                .iter()
                .min_by_key(|(_, k)| (!k.resumed, k.received_at))
                .map(|(key, _)| *key);
            if let Some(v) = victim {
                self.kept.remove(&v);
                self.stats.evicted += 1;
            }
            victim
        } else {
            None
        };
        self.kept.insert(
            key,
            KeptHandoff {
                owner: from,
                handoff: h,
                received_at: now,
                resumed: false,
            },
        );
        self.stats.kept += 1;
        Ok(Received::Kept { evicted })
    }

    /// Remembers that `key`'s start of `issued_at` retired, forgetting the oldest retired job
    /// past [`MAX_RETIRED`].
    fn retire(&mut self, key: (NodeId, JobId), issued_at: Timestamp, now: Timestamp) {
        let issued = self
            .retired
            .get(&key)
            .map_or(issued_at, |(i, _)| (*i).max(issued_at));
        self.retired.insert(key, (issued, now));
        let owner = key.0;
        while self.retired.keys().filter(|(o, _)| *o == owner).count() > MAX_RETIRED_PER_OWNER {
            let oldest = self
                .retired
                .iter()
                .filter(|((o, _), _)| *o == owner)
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => self.retired.remove(&k),
                None => break,
            };
        }
        while self.retired.len() > MAX_RETIRED {
            let oldest = self
                .retired
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => self.retired.remove(&k),
                None => break,
            };
        }
    }

    /// The kept hand-offs to resume now: those of which this edge has custody of any device
    /// (`custody`), each once. Expired ones are dropped first.
    pub fn due(
        &mut self,
        now: Timestamp,
        custody: impl Fn(DeviceId) -> bool,
    ) -> Vec<(NodeId, JobHandoff)> {
        let before = self.kept.len();
        self.kept
            .retain(|_, k| k.resumed || now.saturating_sub(k.received_at) < HANDOFF_TTL_MS);
        self.stats.expired += (before - self.kept.len()) as u64;
        let mut due = Vec::new();
        for k in self.kept.values_mut() {
            if !k.resumed && k.handoff.devices.iter().any(|d| custody(*d)) {
                k.resumed = true;
                self.stats.resumed += 1;
                due.push((k.owner, k.handoff.clone()));
            }
        }
        due
    }

    /// Reloads a persisted table (this edge's own file, but checked as if it came from
    /// outside): each entry must pass the checks a received hand-off passes and not have
    /// expired; the same job twice keeps the later; at most the table's size, newest first.
    /// Everything dropped is counted (`dropped_on_load`). Owners are not re-checked: the
    /// ledger's view is not known yet at start, and each entry was checked when it arrived.
    ///
    /// Retired jobs come back from their `finished` entries ([`Self::to_file`]); a kept entry
    /// that one of them outdates is dropped.
    pub fn restore(&mut self, now: Timestamp, entries: Vec<KeptHandoff>) {
        let total = entries.len();
        let (finished, entries): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|k| k.handoff.finished && check(&k.handoff).is_ok());
        let mut remembered = 0usize;
        for k in finished {
            self.retire((k.owner, k.handoff.job), k.handoff.issued_at, k.received_at);
            remembered += 1;
        }
        remembered = remembered.min(self.retired.len());
        let retired = &self.retired;
        let mut fresh: Vec<KeptHandoff> = entries
            .into_iter()
            .filter(|k| check(&k.handoff).is_ok() && !k.handoff.finished)
            .filter(|k| {
                retired
                    .get(&(k.owner, k.handoff.job))
                    .is_none_or(|(issued, _)| *issued < k.handoff.issued_at)
            })
            .filter(|k| k.resumed || now.saturating_sub(k.received_at) < HANDOFF_TTL_MS)
            .map(|mut k| {
                normalise(&mut k.handoff);
                k
            })
            .collect();
        // Newest first, so the dedup and the bound keep the latest.
        fresh.sort_by_key(|k| std::cmp::Reverse(k.received_at));
        let mut kept = 0usize;
        for k in fresh {
            let key = (k.owner, k.handoff.job);
            if self.kept.len() >= self.max || self.kept.contains_key(&key) {
                continue;
            }
            self.kept.insert(key, k);
            kept += 1;
        }
        self.stats.dropped_on_load += (total - kept - remembered) as u64;
    }

    /// What a provider persists: the kept hand-offs, then each retired job as a `finished`
    /// entry naming one device (enough to pass the checks when reloaded).
    pub fn to_file(&self) -> Vec<KeptHandoff> {
        let mut out = self.list();
        for (&(owner, job), &(issued_at, at)) in &self.retired {
            out.push(KeptHandoff {
                owner,
                handoff: JobHandoff {
                    job,
                    selector: String::new(),
                    firmware: "retired".into(),
                    firmware_type: "retired".into(),
                    version: "retired".into(),
                    max_unavailable: 1,
                    devices: vec![0],
                    issued_at,
                    finished: true,
                    done: Vec::new(),
                },
                received_at: at,
                resumed: false,
            });
        }
        out
    }

    /// Jobs remembered as retired.
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    /// Whether any kept hand-off is waiting for custody.
    pub fn waiting(&self) -> bool {
        self.kept.values().any(|k| !k.resumed)
    }

    /// The kept hand-offs, by owner and job.
    pub fn list(&self) -> Vec<KeptHandoff> {
        self.kept.values().cloned().collect()
    }

    /// Each kept hand-off's (owner, job) and firmware image id, without copying the table.
    pub fn images(&self) -> impl Iterator<Item = ((NodeId, JobId), &str)> + '_ {
        self.kept
            .iter()
            .map(|(k, v)| (*k, v.handoff.firmware.as_str()))
    }
}

/// Devices sorted and unique; `done` sorted by device, one entry each.
fn normalise(h: &mut JobHandoff) {
    h.devices.sort_unstable();
    h.devices.dedup();
    h.done.sort_unstable();
    h.done.dedup_by_key(|(d, _)| *d);
}

fn check(h: &JobHandoff) -> Result<(), HandoffRefusal> {
    let bad = HandoffRefusal::Malformed;
    if h.devices.is_empty() {
        return Err(bad("no devices"));
    }
    if h.devices.len() > MAX_HANDOFF_DEVICES {
        return Err(bad("too many devices"));
    }
    if h.version.is_empty() || h.version.len() > MAX_LABEL_LEN {
        return Err(bad("version not 1..=32 bytes"));
    }
    if h.firmware_type.is_empty() || h.firmware_type.len() > MAX_LABEL_LEN {
        return Err(bad("firmware type not 1..=32 bytes"));
    }
    if h.firmware.is_empty() || h.firmware.len() > MAX_HANDOFF_TEXT {
        return Err(bad("firmware CID empty or too long"));
    }
    if h.selector.len() > MAX_HANDOFF_TEXT {
        return Err(bad("selector too long"));
    }
    if h.max_unavailable == 0 || h.max_unavailable > MAX_HANDOFF_DEVICES {
        return Err(bad("max_unavailable out of range"));
    }
    if h.done.len() > h.devices.len() {
        return Err(bad("more devices done than in the job"));
    }
    if h.done.iter().any(|(d, _)| !h.devices.contains(d)) {
        return Err(bad("a device done that is not in the job"));
    }
    Ok(())
}

/// Per recipient: sends so far, when the next is due, and whether it kept the hand-off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Recipient {
    sends: u32,
    next_at: Timestamp,
    in_flight: bool,
    kept: bool,
    /// Kept some version of the hand-off (so it is told when the job finishes).
    ever_kept: bool,
    /// Sends of the finished version so far (until one is acknowledged, at most
    /// [`MAX_SENDS`]).
    finish_sends: u32,
    /// The hand-off changed while a send was in flight: its answer does not count as kept.
    stale: bool,
    retired: bool,
}

/// The owner's side of one job's hand-off: whom to send it (again) to.
#[derive(Clone, Debug, Default)]
pub struct Outbox {
    to: BTreeMap<NodeId, Recipient>,
}

impl Outbox {
    /// Recipients due a send now: `recipients` are the providers of the owner's contracts for
    /// the job's devices (as the ledger says now), `finished` whether the job is over. Each is
    /// marked in flight until [`Self::answered`]. While the job runs, a recipient that has not
    /// kept it is sent it every [`RESEND_MS`], at most [`MAX_SENDS`] times; once it is over,
    /// every recipient that kept it is sent the finished version until it acknowledges it
    /// (every [`RESEND_MS`], at most [`MAX_SENDS`] times), and nobody new. A
    /// provider the ledger no longer names (its contract ended) is sent nothing more while the
    /// job runs, and forgotten if it never kept it.
    pub fn due(
        &mut self,
        now: Timestamp,
        recipients: &BTreeSet<NodeId>,
        finished: bool,
    ) -> Vec<NodeId> {
        if !finished {
            self.to
                .retain(|p, r| recipients.contains(p) || r.ever_kept || r.in_flight);
            for r in recipients {
                self.to.entry(*r).or_default();
            }
        }
        let mut due = Vec::new();
        for (peer, r) in &mut self.to {
            if r.in_flight || r.retired {
                continue;
            }
            let send = if finished {
                // The first at once, the rest every `RESEND_MS`.
                r.ever_kept
                    && r.finish_sends < MAX_SENDS
                    && (r.finish_sends == 0 || now >= r.next_at)
            } else {
                !r.kept && r.sends < MAX_SENDS && now >= r.next_at && recipients.contains(peer)
            };
            if send {
                r.in_flight = true;
                if finished {
                    r.finish_sends = r.finish_sends.saturating_add(1);
                } else {
                    r.sends = r.sends.saturating_add(1);
                }
                r.next_at = now.saturating_add(RESEND_MS);
                due.push(*peer);
            }
        }
        due
    }

    /// `peer` answered (`kept`: it keeps, or retired, the hand-off) or did not (`false`).
    pub fn answered(&mut self, peer: NodeId, kept: bool, finished: bool) {
        if let Some(r) = self.to.get_mut(&peer) {
            r.in_flight = false;
            if finished {
                // Sent until acknowledged (a provider that misses it would resume the job at a
                // handover within a day), at most `MAX_SENDS` times.
                r.retired = kept || r.finish_sends >= MAX_SENDS;
            } else {
                // It keeps some version either way; an outdated one is sent again.
                r.ever_kept |= kept;
                r.kept |= kept && !r.stale;
                r.stale = false;
            }
        }
    }

    /// The hand-off changed (the owner finished a device): every recipient not retired is sent
    /// it again, with a fresh budget of [`MAX_SENDS`].
    pub fn refresh(&mut self) {
        for r in self.to.values_mut().filter(|r| !r.retired) {
            r.stale = r.in_flight;
            r.kept = false;
            r.sends = 0;
            r.next_at = 0;
        }
    }

    /// Recipients that kept the hand-off.
    pub fn kept_by(&self) -> Vec<NodeId> {
        self.to
            .iter()
            .filter(|(_, r)| r.kept)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether nothing is left to send once the job is over.
    pub fn done(&self) -> bool {
        self.to.values().all(|r| !r.ever_kept || r.retired)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
