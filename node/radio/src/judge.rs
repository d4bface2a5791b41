//! Judging a peer's checkpoint before gossipsub forwards it (threat N7): the radio topic is
//! subscribed judged, so a checkpoint travels on only once [`apply`] has decided, from this
//! edge's table, that it brought something new from a signer the rules accept
//! ([`rules::Forward`]). No I/O: the task logs, records and reports the verdict.
//!
//! - Undecodable or [`rules::Malformed`] (too many devices, over-long text, impossible ranges,
//!   a device twice): `Reject`, nothing applied.
//! - Otherwise each range and release is applied by the rules of threat R1
//!   ([`rules::judge`], [`rules::may_release`]); the checkpoint is forwarded (`Accept`) only if
//!   a range the rules accept moved a device's coverage (a known manager's, or — where this
//!   edge knows no manager of the device — one within what was heard plus the window, so an
//!   honest checkpoint still reaches edges that are not directly connected to its author) or a
//!   known manager released a device. Non-managers' ranges, ranges beyond what was heard and
//!   replays of what is already covered are `Ignore`d: not forwarded, the sender not penalised
//!   (this edge's ledger may be behind an honest peer's).

use std::collections::VecDeque;

use agora_market::NodeId;
use agora_wire::radio::Checkpoint;

use crate::rules::{self, Forward, Verdict};
use crate::table::{Device, DeviceTable};
use crate::{CheckpointRecord, RadioStats};

/// What applying one peer checkpoint did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Applied {
    /// What gossipsub is told.
    pub(crate) forward: Forward,
    /// Why it was rejected, when it was malformed.
    pub(crate) malformed: Option<rules::Malformed>,
    /// Ranges refused: device, claimed `last`, why.
    pub(crate) refused: Vec<(u32, u32, Verdict)>,
    /// Releases refused (signer not a manager).
    pub(crate) releases_refused: u64,
    /// Every kept range and release was checked against known managers.
    pub(crate) verified: bool,
    /// Whether the (trimmed) checkpoint is worth keeping in the history.
    pub(crate) keep: bool,
}

/// Applies `c` (trimmed to what counts) from `edge` to `table`, counting in `stats`.
pub(crate) fn apply(
    table: &mut DeviceTable,
    stats: &mut RadioStats,
    edge: &NodeId,
    c: &mut Checkpoint,
    window: u32,
    max_devices: usize,
) -> Applied {
    if let Err(e) = rules::well_formed(c, max_devices) {
        stats.checkpoints_rejected += 1;
        c.ranges.clear();
        c.released.clear();
        return Applied {
            forward: Forward::Reject,
            malformed: Some(e),
            refused: Vec::new(),
            releases_refused: 0,
            verified: false,
            keep: false,
        };
    }
    let mut verified = true;
    let mut moved = 0usize;
    let mut refused: Vec<(u32, u32, Verdict)> = Vec::new();
    c.ranges.retain(|r| {
        let Some(d) = table.get_mut(&r.device) else {
            // Never heard here: nothing to cover (and no entry a remote could grow).
            refused.push((r.device, r.last, Verdict::BeyondHeard));
            return false;
        };
        let verdict = rules::judge(edge, r.last, &d.managers(), d.status.heard, window);
        match verdict {
            Verdict::Counted => {
                stats.ranges_counted += 1;
                moved += usize::from(d.covered.is_none_or(|c| r.last > c));
            }
            Verdict::Unverified => {
                stats.ranges_unverified += 1;
                verified = false;
                moved += usize::from(d.covered.is_none_or(|c| r.last > c));
            }
            Verdict::NotManager | Verdict::BeyondHeard => {
                refused.push((r.device, r.last, verdict));
                return false;
            }
        }
        d.status.peer_covered = Some(d.status.peer_covered.map_or(r.last, |p| p.max(r.last)));
        d.covered = Some(d.covered.map_or(r.last, |p| p.max(r.last)));
        // Buffered frames the peer already processed are no longer needed.
        d.buffer.retain(|(seq, _)| *seq > r.last);
        d.status.buffered = d.buffer.len();
        true
    });
    let mut releases_refused = 0u64;
    let mut released = 0usize;
    c.released.retain(|device| {
        let managers = table.get(device).map(Device::managers).unwrap_or_default();
        if rules::may_release(edge, &managers) {
            verified &= !managers.is_empty();
            // News worth relaying: a known manager's release, or (hearsay, where no manager is
            // known here) one of a device this edge hears, so the device's owner learns it
            // even when it is not directly connected to the releasing edge.
            released += usize::from(!managers.is_empty() || table.get(device).is_some());
            true
        } else {
            releases_refused += 1;
            false
        }
    });
    stats.releases_refused += releases_refused;
    for (_, _, v) in &refused {
        match v {
            Verdict::NotManager => stats.ranges_refused_not_manager += 1,
            _ => stats.ranges_refused_beyond_heard += 1,
        }
    }
    let forward = rules::forward(moved, released);
    match forward {
        Forward::Accept => stats.checkpoints_forwarded += 1,
        Forward::Ignore => stats.checkpoints_ignored += 1,
        Forward::Reject => stats.checkpoints_rejected += 1,
    }
    // Kept in the history only with something left in it: an empty one (sent empty, or
    // emptied by the refusals) tells nothing, and a stranger's stream of them would push this
    // edge's own records out of the bounded history (THREATS R7).
    let keep = !(c.ranges.is_empty() && c.released.is_empty());
    Applied {
        forward,
        malformed: None,
        refused,
        releases_refused,
        verified,
        keep,
    }
}

/// Whether `kept` already holds `c` from `edge`, whole: the same signed checkpoint reached this
/// edge a second time. That happens to an honest provider: the customer's checkpoint comes with
/// its state snapshot (and is relayed from here), and the customer gossips it again once it has
/// the answer; when that gossip arrives before the relay is published, gossipsub's duplicate
/// cache has not seen it yet. Kept twice, one reading would be accounted twice. Newest first:
/// a second copy arrives soon after the first.
pub(crate) fn already_kept(kept: &VecDeque<CheckpointRecord>, edge: &str, c: &Checkpoint) -> bool {
    kept.iter()
        .rev()
        .any(|r| !r.mine && r.edge == edge && r.checkpoint == *c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_wire::radio::SeqRange;

    const WINDOW: u32 = 1024;
    const MAX: usize = 64;

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn checkpoint(ranges: &[(u32, u32, u32)], released: &[u32]) -> Checkpoint {
        Checkpoint {
            service: "svc".into(),
            ranges: ranges
                .iter()
                .map(|&(device, first, last)| SeqRange {
                    device,
                    first,
                    last,
                    count: (last - first).saturating_add(1),
                })
                .collect(),
            proof: String::new(),
            released: released.to_vec(),
            at: 0,
        }
    }

    /// Device 7 heard up to 100 here, managed by 1 and 2; device 8 heard up to 50, managers
    /// unknown here.
    fn table() -> DeviceTable {
        let mut t = DeviceTable::default();
        let d = t.local_entry(7);
        d.hear(100);
        d.managers = vec![id(1), id(2)];
        let d = t.local_entry(8);
        d.hear(50);
        t
    }

    fn run(t: &mut DeviceTable, edge: u8, mut c: Checkpoint) -> (Applied, RadioStats) {
        let mut stats = RadioStats::default();
        let a = apply(t, &mut stats, &id(edge), &mut c, WINDOW, MAX);
        (a, stats)
    }

    #[test]
    fn a_managers_new_range_is_applied_and_forwarded() {
        let mut t = table();
        let (a, s) = run(&mut t, 1, checkpoint(&[(7, 90, 99)], &[]));
        assert_eq!(a.forward, Forward::Accept);
        assert!(a.verified && a.keep);
        assert_eq!((s.ranges_counted, s.checkpoints_forwarded), (1, 1));
        assert_eq!(t.get(&7).unwrap().covered, Some(99));
    }

    #[test]
    fn an_empty_checkpoint_is_not_kept() {
        let mut t = table();
        let (a, s) = run(&mut t, 9, checkpoint(&[], &[]));
        assert_eq!(a.forward, Forward::Ignore);
        assert!(!a.keep, "nothing in it to remember");
        assert_eq!(s.checkpoints_ignored, 1);
    }

    #[test]
    fn a_replay_of_what_is_covered_is_ignored() {
        let mut t = table();
        run(&mut t, 1, checkpoint(&[(7, 90, 99)], &[]));
        let (a, s) = run(&mut t, 2, checkpoint(&[(7, 80, 95)], &[]));
        assert_eq!(a.forward, Forward::Ignore, "nothing new: not forwarded");
        assert_eq!(s.checkpoints_ignored, 1);
        assert_eq!(t.get(&7).unwrap().covered, Some(99));
    }

    #[test]
    fn a_strangers_checkpoint_is_refused_and_not_forwarded() {
        let mut t = table();
        let (a, s) = run(&mut t, 9, checkpoint(&[(7, 101, 120)], &[7]));
        assert_eq!(a.forward, Forward::Ignore);
        assert!(!a.keep);
        assert_eq!(a.refused, vec![(7, 120, Verdict::NotManager)]);
        assert_eq!(
            (
                s.ranges_refused_not_manager,
                s.releases_refused,
                s.checkpoints_ignored
            ),
            (1, 1, 1)
        );
        assert_eq!(t.get(&7).unwrap().covered, None);
    }

    #[test]
    fn silencing_and_unheard_devices_are_refused_and_not_forwarded() {
        let mut t = table();
        let (a, s) = run(&mut t, 1, checkpoint(&[(7, 0, u32::MAX), (99, 0, 5)], &[]));
        assert_eq!(a.forward, Forward::Ignore);
        assert_eq!(s.ranges_refused_beyond_heard, 2);
        assert_eq!(t.get(&7).unwrap().covered, None);
        assert!(t.get(&99).is_none(), "no entry a remote could grow");
    }

    #[test]
    fn hearsay_within_the_bound_travels_on_once() {
        let mut t = table();
        let (a, s) = run(&mut t, 9, checkpoint(&[(8, 40, 60)], &[]));
        assert_eq!(a.forward, Forward::Accept, "an uninvolved edge relays news");
        assert!(!a.verified && a.keep);
        assert_eq!((s.ranges_unverified, s.checkpoints_forwarded), (1, 1));
        assert_eq!(t.get(&8).unwrap().covered, Some(60));
        let (a, _) = run(&mut t, 9, checkpoint(&[(8, 41, 59)], &[]));
        assert_eq!(a.forward, Forward::Ignore, "nothing new");
    }

    #[test]
    fn a_release_of_a_device_heard_here_is_forwarded_one_of_an_unknown_device_is_not() {
        let mut t = table();
        let (a, _) = run(&mut t, 9, checkpoint(&[], &[8]));
        assert_eq!(
            a.forward,
            Forward::Accept,
            "hearsay release of a device heard here"
        );
        assert!(!a.verified);
        let (a, _) = run(&mut t, 9, checkpoint(&[], &[99]));
        assert_eq!(a.forward, Forward::Ignore, "a device never heard here");
    }

    #[test]
    fn a_managers_release_is_forwarded() {
        let mut t = table();
        let (a, s) = run(&mut t, 2, checkpoint(&[], &[7]));
        assert_eq!(a.forward, Forward::Accept);
        assert_eq!(s.checkpoints_forwarded, 1);
    }

    #[test]
    fn a_malformed_checkpoint_is_rejected_and_applies_nothing() {
        let mut t = table();
        // A manager's, even: an impossible range is invalid whoever signed it.
        let mut c = checkpoint(&[(7, 90, 99)], &[]);
        c.ranges.push(SeqRange {
            device: 8,
            first: 60,
            last: 40,
            count: 1,
        });
        let (a, s) = run(&mut t, 1, c);
        assert_eq!(a.forward, Forward::Reject);
        assert!(matches!(
            a.malformed,
            Some(rules::Malformed::BadRange { .. })
        ));
        assert_eq!((s.checkpoints_rejected, s.ranges_counted), (1, 0));
        assert_eq!(t.get(&7).unwrap().covered, None);
        let many: Vec<(u32, u32, u32)> = (0..=MAX as u32).map(|d| (d, 0, 0)).collect();
        let (a, _) = run(&mut t, 1, checkpoint(&many, &[]));
        assert!(matches!(
            a.malformed,
            Some(rules::Malformed::TooManyDevices { .. })
        ));
    }

    #[test]
    fn a_checkpoint_kept_whole_from_the_same_edge_is_already_kept() {
        let c = checkpoint(&[(7, 1, 10)], &[]);
        let rec = |edge: &str, mine: bool, c: &Checkpoint| CheckpointRecord {
            edge: edge.into(),
            mine,
            checkpoint: c.clone(),
            verified: true,
        };
        let mut kept = VecDeque::new();
        assert!(!already_kept(&kept, "a", &c));
        kept.push_back(rec("a", false, &c));
        assert!(already_kept(&kept, "a", &c));
        // Another signer, another checkpoint of the same signer, or one trimmed here (only
        // part of it counted the first time) is not the same.
        assert!(!already_kept(&kept, "b", &c));
        let mut later = c.clone();
        later.at = 1;
        assert!(!already_kept(&kept, "a", &later));
        let wider = checkpoint(&[(7, 1, 10), (8, 1, 5)], &[]);
        assert!(!already_kept(&kept, "a", &wider));
        // This edge's own checkpoints are never a peer's duplicate.
        let mut own = VecDeque::from([rec("a", true, &c)]);
        assert!(!already_kept(&own, "a", &c));
        own.push_back(rec("a", false, &c));
        assert!(already_kept(&own, "a", &c));
    }
}
