//! Quorum tallies of the committee's per-round reports (probe intervals, storage audit rounds).
//!
//! A round's outcome becomes a ledger fact only when a BFT quorum (`⌊2n/3⌋ + 1`, i.e. 2f+1 of
//! a committee of 3f+1) of the contract's committee report the same outcome for it. Each member
//! reports once per round; since two quorums of the same committee always share an honest
//! member, at most one outcome can ever be decided, and f faulty members can decide nothing on
//! their own. Only rounds still inside their report window are kept, so a tally holds at most
//! a few rounds of at most one report per member.

use std::collections::BTreeMap;

use agora_market::NodeId;
use serde::{Deserialize, Serialize};

/// Why a report was not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TallyRefusal {
    /// The member already reported this round.
    AlreadyReported,
    /// The round was already decided.
    AlreadyDecided(bool),
}

/// Reports per round, by committee member, and the rounds already decided.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundTally {
    /// Reports on rounds not yet decided: outcome per member.
    pub open: BTreeMap<u64, BTreeMap<NodeId, bool>>,
    /// Decided rounds still inside their report window, with the outcome.
    pub decided: BTreeMap<u64, bool>,
}

impl RoundTally {
    /// Whether `member` could report `round` now (not reported yet, round not decided).
    pub(super) fn can_record(&self, round: u64, member: &NodeId) -> Result<(), TallyRefusal> {
        if let Some(outcome) = self.decided.get(&round) {
            return Err(TallyRefusal::AlreadyDecided(*outcome));
        }
        if self
            .open
            .get(&round)
            .is_some_and(|votes| votes.contains_key(member))
        {
            return Err(TallyRefusal::AlreadyReported);
        }
        Ok(())
    }

    /// Records `member`'s report; returns the outcome once `needed` members agree on it.
    pub(super) fn record(
        &mut self,
        round: u64,
        member: NodeId,
        outcome: bool,
        needed: usize,
    ) -> Result<Option<bool>, TallyRefusal> {
        self.can_record(round, &member)?;
        let votes = self.open.entry(round).or_default();
        votes.insert(member, outcome);
        let agreeing = votes.values().filter(|o| **o == outcome).count();
        if agreeing < needed {
            return Ok(None);
        }
        self.open.remove(&round);
        self.decided.insert(round, outcome);
        Ok(Some(outcome))
    }

    /// Forgets every round for which `expired(round)` holds (its report window has passed).
    pub(super) fn prune(&mut self, expired: impl Fn(u64) -> bool) {
        self.open.retain(|r, _| !expired(*r));
        self.decided.retain(|r, _| !expired(*r));
    }

    /// Whether `round` is decided (and still remembered).
    pub fn is_decided(&self, round: u64) -> bool {
        self.decided.contains_key(&round)
    }

    /// Rounds and reports currently held (for bounds checks).
    pub fn len(&self) -> usize {
        self.decided.len() + self.open.values().map(BTreeMap::len).sum::<usize>()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestation::quorum;
    use crate::test_utils::node;

    #[test]
    fn three_of_four_agreeing_decide_two_do_not() {
        let mut t = RoundTally::default();
        let need = quorum(4);
        assert_eq!(t.record(0, node(100), false, need), Ok(None));
        assert_eq!(t.record(0, node(101), true, need), Ok(None));
        assert_eq!(t.record(0, node(102), true, need), Ok(None));
        assert_eq!(t.record(0, node(103), true, need), Ok(Some(true)));
        assert!(t.is_decided(0));
        assert_eq!(
            t.record(0, node(100), false, need),
            Err(TallyRefusal::AlreadyDecided(true))
        );
    }

    #[test]
    fn a_member_reports_once_per_round() {
        let mut t = RoundTally::default();
        assert_eq!(t.record(3, node(100), false, 3), Ok(None));
        assert_eq!(
            t.record(3, node(100), true, 3),
            Err(TallyRefusal::AlreadyReported)
        );
        // Another round is independent.
        assert_eq!(t.record(4, node(100), true, 3), Ok(None));
    }

    #[test]
    fn prune_forgets_expired_rounds() {
        let mut t = RoundTally::default();
        for r in 0..5 {
            t.record(r, node(100), true, 1).unwrap();
            t.record(r + 10, node(100), true, 2).unwrap();
        }
        t.prune(|r| r < 3 || (10..13).contains(&r));
        assert_eq!(t.decided.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(t.open.keys().copied().collect::<Vec<_>>(), vec![13, 14]);
    }
}
