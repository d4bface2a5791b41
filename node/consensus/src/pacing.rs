//! Round timeouts that follow the committee's measured round trip (issue #17).
//!
//! The chain's timeouts ([`ConsensusTimeouts::CHAIN`]) are floors chosen for loopback and LAN
//! links. Over slow links a round needs more: the round starts on each member when it sees the
//! last decision, up to one way later than on the proposer; the proposer of an empty block
//! answers at up to three quarters of its propose timeout (`agora-ledger`'s `ChainTimers`);
//! its proposal then travels one way. With fixed timeouts, links slow enough that the slack
//! left after the proposer's answer no longer holds those two one-way delays lose round 0,
//! and each such height costs a whole extra round (measured in docs/PERFORMANCE.md).
//!
//! [`ConsensusTimeouts::for_round_trip`] scales each timeout with the round trip, never below
//! the floors; [`quorum_round_trip`] picks which round trip: the smallest that covers this node
//! and enough other members for a quorum. A faulty member can make only its own answers slow
//! (it cannot answer a ping before it arrives), and the order statistic leaves the `f` slowest
//! out, so `f` faulty members cannot stretch the honest members' timeouts; and no round can go
//! faster than its quorum anyway.

use std::time::Duration;

use agora_market::NodeId;

use crate::{ConsensusTimeouts, ValidatorSet};

/// The largest round trip the timeouts follow: beyond it a committee is unusable anyway, and
/// the timeouts stay bounded (a propose timeout of at most 4 × this).
pub const MAX_ROUND_TRIP: Duration = Duration::from_secs(5);

impl ConsensusTimeouts {
    /// The chain's timeouts on fast links (and the floors of [`Self::for_round_trip`]).
    pub const CHAIN: ConsensusTimeouts = ConsensusTimeouts {
        propose: Duration::from_millis(1_500),
        prevote: Duration::from_millis(500),
        precommit: Duration::from_millis(500),
        rebroadcast: Duration::from_millis(3_000),
        delta: Duration::from_millis(250),
        max: Duration::from_secs(30),
    };

    /// These timeouts stretched for a committee whose quorum round trip is `rtt` (at most
    /// [`MAX_ROUND_TRIP`]); each is at least what `self` says.
    ///
    /// - propose: 4 × rtt. Round starts differ by up to one way (½ rtt), the proposal travels
    ///   one way, and an empty block's proposer answers at ¾ of its own timeout: the last
    ///   quarter must hold two one-way delays, so the timeout must be at least 8 × ½ rtt.
    /// - prevote, precommit: 2 × rtt, to collect the votes still on their way once 2f+1
    ///   arrived (each is one way, sent up to one way apart).
    /// - delta (added per round): ½ rtt. Rebroadcast: twice the propose timeout. Max: at least
    ///   twice the propose timeout, so round 0 is never cut.
    pub fn for_round_trip(&self, rtt: Duration) -> ConsensusTimeouts {
        let rtt = rtt.min(MAX_ROUND_TRIP);
        let propose = self.propose.max(rtt * 4);
        ConsensusTimeouts {
            propose,
            prevote: self.prevote.max(rtt * 2),
            precommit: self.precommit.max(rtt * 2),
            rebroadcast: self.rebroadcast.max(propose * 2),
            delta: self.delta.max(rtt / 2),
            max: self.max.max(propose * 2),
        }
    }
}

/// The committee's quorum round trip as this node sees it: the smallest `r` such that a quorum
/// of `validators` answers within `r`, counting this node (`me`, at 0 when it is a member) and
/// each other member's round trip from `rtt` (`None`: not measured, or not reachable). `None`
/// while fewer than a quorum have one.
pub fn quorum_round_trip(
    validators: &ValidatorSet,
    me: &NodeId,
    rtt: impl Fn(&NodeId) -> Option<Duration>,
) -> Option<Duration> {
    let mut known: Vec<Duration> = validators
        .node_ids()
        .filter_map(|v| {
            if v == *me {
                Some(Duration::ZERO)
            } else {
                rtt(&v)
            }
        })
        .collect();
    known.sort_unstable();
    let quorum = usize::try_from(validators.quorum()).unwrap_or(usize::MAX);
    known
        .get(quorum.checked_sub(1)?)
        .map(|r| (*r).min(MAX_ROUND_TRIP))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use agora_market::{KeySigner, Signer};

    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn committee(n: u64) -> (ValidatorSet, Vec<NodeId>) {
        let ids: Vec<NodeId> = (0..n)
            .map(|i| KeySigner::from_seed(900 + i).node_id())
            .collect();
        (ValidatorSet::new(ids.iter().copied()).unwrap(), ids)
    }

    #[test]
    fn fast_links_keep_the_chain_timeouts() {
        let t = ConsensusTimeouts::CHAIN;
        assert_eq!(t.for_round_trip(Duration::ZERO), t);
        // 50 ms one way: a 100 ms round trip (its RFC 6298 timeout a bit more) changes nothing.
        assert_eq!(t.for_round_trip(ms(150)), t);
    }

    #[test]
    fn slow_links_stretch_every_timeout_and_the_stretch_is_bounded() {
        let t = ConsensusTimeouts::CHAIN.for_round_trip(ms(1_000));
        assert_eq!(t.propose, ms(4_000));
        assert_eq!((t.prevote, t.precommit), (ms(2_000), ms(2_000)));
        assert_eq!(t.delta, ms(500));
        assert_eq!(t.rebroadcast, ms(8_000));
        assert_eq!(t.max, ms(30_000));
        let worst = ConsensusTimeouts::CHAIN.for_round_trip(Duration::from_secs(3_600));
        assert_eq!(worst.propose, MAX_ROUND_TRIP * 4);
        assert_eq!(worst.max, MAX_ROUND_TRIP * 8);
    }

    #[test]
    fn the_quorum_round_trip_leaves_the_f_slowest_out() {
        let (set, ids) = committee(4);
        let me = ids[0];
        // Quorum 3 of 4: me (0) and the two fastest others.
        let rtts: HashMap<NodeId, Duration> =
            [(ids[1], ms(80)), (ids[2], ms(120)), (ids[3], ms(9_000))].into();
        assert_eq!(
            quorum_round_trip(&set, &me, |n| rtts.get(n).copied()),
            Some(ms(120)),
            "one member answering slowly (faulty or far) does not stretch the others"
        );
        // Two slow members of four: a quorum needs one of them.
        let rtts: HashMap<NodeId, Duration> =
            [(ids[1], ms(80)), (ids[2], ms(700)), (ids[3], ms(9_000))].into();
        assert_eq!(
            quorum_round_trip(&set, &me, |n| rtts.get(n).copied()),
            Some(ms(700))
        );
        // Capped.
        let rtts: HashMap<NodeId, Duration> = [
            (ids[1], ms(8_000)),
            (ids[2], ms(9_000)),
            (ids[3], ms(9_000)),
        ]
        .into();
        assert_eq!(
            quorum_round_trip(&set, &me, |n| rtts.get(n).copied()),
            Some(MAX_ROUND_TRIP)
        );
    }

    #[test]
    fn no_quorum_round_trip_until_a_quorum_was_measured() {
        let (set, ids) = committee(7);
        // Quorum 5 of 7: me and three measured others are not enough.
        let mut rtts: HashMap<NodeId, Duration> = ids[1..4].iter().map(|n| (*n, ms(50))).collect();
        assert_eq!(
            quorum_round_trip(&set, &ids[0], |n| rtts.get(n).copied()),
            None
        );
        rtts.insert(ids[6], ms(400));
        assert_eq!(
            quorum_round_trip(&set, &ids[0], |n| rtts.get(n).copied()),
            Some(ms(400))
        );
        // A node outside the committee needs a quorum of the members themselves.
        let outsider = KeySigner::from_seed(1).node_id();
        assert_eq!(
            quorum_round_trip(&set, &outsider, |n| rtts.get(n).copied()),
            None
        );
        let all: HashMap<NodeId, Duration> = ids.iter().map(|n| (*n, ms(30))).collect();
        assert_eq!(
            quorum_round_trip(&set, &outsider, |n| all.get(n).copied()),
            Some(ms(30))
        );
    }
}
