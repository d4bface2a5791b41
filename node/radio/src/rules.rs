//! Which peer checkpoints count (issue #13.4, threat R1): pure functions, no I/O.
//!
//! A checkpoint from another edge says "I processed device `d` up to sequence number `last`";
//! an edge that believes it stops processing (or buffering for a handover) everything up to
//! `last`. So a checkpoint moves a device's coverage only when
//! - its signer is an edge that manages or managed the device, as this node's orchestrator
//!   knows it from the ledger (the customer that owns the device, the provider of one of its
//!   standby contracts) — when this edge knows the device's managers at all; and
//! - its `last` is not beyond the highest sequence number this edge has heard from the device
//!   plus a window (`radio.checkpoint_window`): a checkpoint cannot cover readings that were
//!   never sent, so `last = u32::MAX` is refused whoever signed it.
//!
//! An edge that does not know a device's managers (neither its customer nor a provider of it)
//! can only apply the bound; such checkpoints count as [`Verdict::Unverified`]: they trim its
//! standby buffer and are reported as hearsay in replay answers, never more than the window
//! beyond what was heard.

use std::collections::BTreeSet;

use agora_market::NodeId;
use agora_wire::radio::Checkpoint;

/// Edges known to manage or to have managed a device (customer, providers).
pub const MAX_MANAGERS_PER_DEVICE: usize = 16;

/// What becomes of one range of a peer checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by a manager of the device and within the bound: moves its coverage.
    Counted,
    /// This edge does not know the device's managers; within the bound, so it moves the
    /// coverage of what this edge buffers (hearsay for replay answers).
    Unverified,
    /// Signed by an edge that neither manages nor managed the device: dropped.
    NotManager,
    /// Claims readings beyond what this edge heard plus the window (or the device was never
    /// heard here): dropped.
    BeyondHeard,
}

impl Verdict {
    /// Whether the range moves the device's coverage.
    pub fn counts(self) -> bool {
        matches!(self, Verdict::Counted | Verdict::Unverified)
    }
}

/// The rule for one range: `signer` claims it processed the device up to `last`; `managers`
/// are the device's known managers (empty: unknown here), `heard` the highest sequence number
/// this edge heard from the device, `window` how far a checkpoint may run ahead of it.
pub fn judge(
    signer: &NodeId,
    last: u32,
    managers: &BTreeSet<NodeId>,
    heard: Option<u32>,
    window: u32,
) -> Verdict {
    if !managers.is_empty() && !managers.contains(signer) {
        return Verdict::NotManager;
    }
    if heard.is_none_or(|h| u64::from(last) > u64::from(h) + u64::from(window)) {
        return Verdict::BeyondHeard;
    }
    if managers.is_empty() {
        Verdict::Unverified
    } else {
        Verdict::Counted
    }
}

/// Whether `signer` may give up a device (a checkpoint's `released` list): only a manager, when
/// the managers are known here.
pub fn may_release(signer: &NodeId, managers: &BTreeSet<NodeId>) -> bool {
    managers.is_empty() || managers.contains(signer)
}

/// Longest service name or proof CID a peer checkpoint may carry (an honest one names a
/// contract's service and a CID, well under this).
pub const MAX_CHECKPOINT_TEXT: usize = 512;

/// Why a peer checkpoint is invalid whatever this edge knows (gossip `Reject`, threat N7).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// More ranges or releases than an edge may hold devices (`radio.max_devices`).
    #[error("checkpoint names {got} devices, more than radio.max_devices ({max})")]
    TooManyDevices { got: usize, max: usize },
    /// A service name or proof longer than [`MAX_CHECKPOINT_TEXT`].
    #[error("checkpoint text of {got} bytes, more than {MAX_CHECKPOINT_TEXT}")]
    TextTooLong { got: usize },
    /// A range whose `first` is after its `last`, or whose `count` is 0 or more than the
    /// sequence numbers between them: no edge processes readings that way.
    #[error("device {device}: range {first}..={last} with count {count} is impossible")]
    BadRange {
        device: u32,
        first: u32,
        last: u32,
        count: u32,
    },
    /// Two ranges for one device.
    #[error("device {device} has two ranges")]
    DuplicateDevice { device: u32 },
}

/// Checks what does not depend on this edge's view: bounds and internal consistency. A
/// checkpoint that fails is invalid for every edge (rejected, its sender penalised).
pub fn well_formed(c: &Checkpoint, max_devices: usize) -> Result<(), Malformed> {
    let got = c.ranges.len().max(c.released.len());
    if got > max_devices {
        return Err(Malformed::TooManyDevices {
            got,
            max: max_devices,
        });
    }
    let got = c.service.len().max(c.proof.len());
    if got > MAX_CHECKPOINT_TEXT {
        return Err(Malformed::TextTooLong { got });
    }
    let mut seen = BTreeSet::new();
    for r in &c.ranges {
        let (device, first, last, count) = (r.device, r.first, r.last, r.count);
        if first > last || count == 0 || u64::from(count) > u64::from(last - first) + 1 {
            return Err(Malformed::BadRange {
                device,
                first,
                last,
                count,
            });
        }
        if !seen.insert(device) {
            return Err(Malformed::DuplicateDevice { device });
        }
    }
    Ok(())
}

/// What the radio tells gossipsub about a peer checkpoint once it has applied it (threat N7):
/// it travels on only if this edge took something new by the rules (a known manager's range,
/// or hearsay within the bound where no manager is known here, that moved coverage; a release
/// by a known manager, or hearsay of a device heard here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// Forward it to the mesh.
    Accept,
    /// Valid, but nothing new taken here (refused by policy, beyond what was heard, or a
    /// replay of what is already covered): not forwarded, the sender not penalised (this
    /// edge's ledger may be behind).
    Ignore,
    /// Invalid for anyone ([`Malformed`], undecodable): not forwarded, the sender penalised.
    Reject,
}

/// The verdict on an applied checkpoint: `moved` ranges the rules accepted that moved a
/// device's coverage, `released` releases accepted (a known manager's, or hearsay of a device
/// heard here).
pub fn forward(moved: usize, released: usize) -> Forward {
    if moved > 0 || released > 0 {
        Forward::Accept
    } else {
        Forward::Ignore
    }
}

/// The highest sequence number a peer's replay answer may say a checkpoint covers: no more
/// than the window beyond what this edge (with the frames the answers brought) has heard.
pub fn clamp_covered(covered: u32, heard: Option<u32>, window: u32) -> Option<u32> {
    let h = heard?;
    Some(covered.min(h.saturating_add(window)))
}

/// Sequence numbers a frame `seq` skips over, as this edge sees it: those after the highest one
/// it processed or a peer's checkpoint covered, and before `seq` (`0` for the first frame of a
/// device, with nothing processed or covered yet, and for a frame that is not ahead). These
/// readings were processed by no one this edge knows of — the node-local "readings missing"
/// (`agora_readings_total{outcome="missing"}`); a frame of them arriving later is stale and
/// dropped as a duplicate.
pub fn skipped(last_processed: Option<u32>, peer_covered: Option<u32>, seq: u32) -> u64 {
    match last_processed.max(peer_covered) {
        Some(floor) if seq > floor => u64::from(seq - floor - 1),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn set(ids: &[u8]) -> BTreeSet<NodeId> {
        ids.iter().map(|b| id(*b)).collect()
    }

    #[test]
    fn a_manager_within_the_window_counts() {
        assert_eq!(
            judge(&id(1), 120, &set(&[1, 2]), Some(100), 64),
            Verdict::Counted
        );
        assert_eq!(
            judge(&id(2), 164, &set(&[1, 2]), Some(100), 64),
            Verdict::Counted
        );
    }

    #[test]
    fn u32_max_is_refused_even_from_a_manager() {
        assert_eq!(
            judge(&id(1), u32::MAX, &set(&[1]), Some(100), 1024),
            Verdict::BeyondHeard
        );
        // Nor does the window wrap near the top of the range.
        assert_eq!(
            judge(&id(1), 5, &set(&[1]), Some(u32::MAX - 1), u32::MAX),
            Verdict::Counted
        );
    }

    #[test]
    fn a_non_manager_is_refused_however_well_formed() {
        assert_eq!(
            judge(&id(9), 50, &set(&[1, 2]), Some(100), 64),
            Verdict::NotManager
        );
        assert!(!may_release(&id(9), &set(&[1, 2])));
        assert!(may_release(&id(2), &set(&[1, 2])));
    }

    #[test]
    fn a_device_never_heard_here_is_refused() {
        assert_eq!(judge(&id(1), 0, &set(&[1]), None, 64), Verdict::BeyondHeard);
        assert_eq!(judge(&id(1), 0, &set(&[]), None, 64), Verdict::BeyondHeard);
    }

    #[test]
    fn unknown_managers_leave_only_the_bound() {
        assert_eq!(
            judge(&id(7), 100, &set(&[]), Some(100), 0),
            Verdict::Unverified
        );
        assert_eq!(
            judge(&id(7), 101, &set(&[]), Some(100), 0),
            Verdict::BeyondHeard
        );
        assert!(may_release(&id(7), &set(&[])));
    }

    #[test]
    fn replay_covered_is_clamped_to_the_window() {
        assert_eq!(clamp_covered(u32::MAX, Some(10), 5), Some(15));
        assert_eq!(clamp_covered(7, Some(10), 5), Some(7));
        assert_eq!(clamp_covered(7, None, 5), None);
        assert_eq!(
            clamp_covered(u32::MAX, Some(u32::MAX - 1), 5),
            Some(u32::MAX)
        );
    }

    proptest! {
        /// The rule, both ways: a range counts exactly when (managers unknown or the signer is
        /// one) and `last` is at most `heard + window`; nothing unheard ever counts.
        #[test]
        fn counts_iff_manager_and_within_bound(
            signer in 0u8..6,
            managers in proptest::collection::btree_set(0u8..6, 0..4),
            heard in proptest::option::of(any::<u32>()),
            last in any::<u32>(),
            window in 0u32..100_000,
        ) {
            let managers: BTreeSet<NodeId> = managers.into_iter().map(id).collect();
            let v = judge(&id(signer), last, &managers, heard, window);
            let manager_ok = managers.is_empty() || managers.contains(&id(signer));
            let bound_ok =
                heard.is_some_and(|h| u64::from(last) <= u64::from(h) + u64::from(window));
            prop_assert_eq!(v.counts(), manager_ok && bound_ok);
            prop_assert_eq!(v == Verdict::Counted, v.counts() && !managers.is_empty());
        }

        /// Folding any schedule of peer checkpoints (honest and forged) into a device's
        /// coverage never puts it beyond the highest sequence number heard plus the window, and
        /// checkpoints from non-managers never move it.
        #[test]
        fn coverage_never_runs_past_what_was_heard(
            events in proptest::collection::vec((0u8..4, any::<u32>(), any::<bool>()), 0..64),
            window in 0u32..2_000,
        ) {
            let managers = set(&[0, 1]);
            let mut heard: Option<u32> = None;
            let mut covered: Option<u32> = None;
            let mut by_managers: Option<u32> = None;
            for (who, n, is_frame) in events {
                if is_frame {
                    // A frame heard: the sequence numbers of a real device grow slowly.
                    let next = heard.map_or(n % 1_000, |h| h.saturating_add(n % 50));
                    heard = Some(heard.map_or(next, |h| h.max(next)));
                    continue;
                }
                if judge(&id(who), n, &managers, heard, window).counts() {
                    covered = Some(covered.map_or(n, |c| c.max(n)));
                    if who <= 1 {
                        by_managers = Some(by_managers.map_or(n, |c| c.max(n)));
                    }
                }
                if let (Some(c), Some(h)) = (covered, heard) {
                    prop_assert!(u64::from(c) <= u64::from(h) + u64::from(window));
                }
                prop_assert_eq!(covered, by_managers);
            }
        }
    }

    fn checkpoint(ranges: &[(u32, u32, u32, u32)], released: &[u32]) -> Checkpoint {
        Checkpoint {
            service: "svc".into(),
            ranges: ranges
                .iter()
                .map(
                    |&(device, first, last, count)| agora_wire::radio::SeqRange {
                        device,
                        first,
                        last,
                        count,
                    },
                )
                .collect(),
            proof: String::new(),
            released: released.to_vec(),
            at: 0,
        }
    }

    #[test]
    fn honest_checkpoints_are_well_formed() {
        assert_eq!(well_formed(&checkpoint(&[], &[]), 4), Ok(()));
        let c = checkpoint(
            &[(1, 10, 19, 10), (2, 5, 5, 1), (3, 0, u32::MAX, 7)],
            &[1, 2],
        );
        assert_eq!(well_formed(&c, 4), Ok(()));
    }

    #[test]
    fn impossible_ranges_and_oversized_checkpoints_are_malformed() {
        let bad = |r: (u32, u32, u32, u32)| well_formed(&checkpoint(&[r], &[]), 4);
        assert!(matches!(
            bad((1, 20, 10, 1)),
            Err(Malformed::BadRange { .. })
        ));
        assert!(matches!(
            bad((1, 10, 20, 0)),
            Err(Malformed::BadRange { .. })
        ));
        assert!(matches!(
            bad((1, 10, 20, 12)),
            Err(Malformed::BadRange { .. })
        ));
        assert_eq!(bad((1, 10, 20, 11)), Ok(()));
        assert_eq!(
            well_formed(&checkpoint(&[(1, 0, 0, 1), (1, 1, 1, 1)], &[]), 4),
            Err(Malformed::DuplicateDevice { device: 1 })
        );
        let five: Vec<_> = (0..5).map(|d| (d, 0, 0, 1)).collect();
        assert_eq!(
            well_formed(&checkpoint(&five, &[]), 4),
            Err(Malformed::TooManyDevices { got: 5, max: 4 })
        );
        assert_eq!(
            well_formed(&checkpoint(&[], &[1, 2, 3, 4, 5]), 4),
            Err(Malformed::TooManyDevices { got: 5, max: 4 })
        );
        let mut long = checkpoint(&[], &[]);
        long.service = "s".repeat(MAX_CHECKPOINT_TEXT + 1);
        assert!(matches!(
            well_formed(&long, 4),
            Err(Malformed::TextTooLong { .. })
        ));
        let mut long = checkpoint(&[], &[]);
        long.proof = "b".repeat(MAX_CHECKPOINT_TEXT + 1);
        assert!(matches!(
            well_formed(&long, 4),
            Err(Malformed::TextTooLong { .. })
        ));
    }

    #[test]
    fn only_news_travels_on() {
        assert_eq!(forward(1, 0), Forward::Accept);
        assert_eq!(forward(0, 1), Forward::Accept);
        assert_eq!(forward(0, 0), Forward::Ignore);
    }

    #[test]
    fn skipped_counts_the_numbers_between_coverage_and_the_frame() {
        assert_eq!(skipped(None, None, 57), 0, "first frame of a device");
        assert_eq!(skipped(Some(9), None, 10), 0, "in order");
        assert_eq!(
            skipped(Some(9), None, 13),
            3,
            "10, 11 and 12 never processed"
        );
        assert_eq!(skipped(Some(9), Some(12), 13), 0, "a peer covered 10 to 12");
        assert_eq!(skipped(None, Some(20), 25), 4, "after a takeover at 20");
        assert_eq!(skipped(Some(9), None, 9), 0, "a duplicate skips nothing");
        assert_eq!(skipped(Some(9), None, 3), 0, "a stale frame skips nothing");
        assert_eq!(skipped(Some(0), None, u32::MAX), u64::from(u32::MAX) - 1);
    }
}
