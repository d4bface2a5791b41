//! Which peers a fetch asks first (THREATS N23). Every connected peer is a bitswap provider and
//! identities are free, so a peer that takes wants and never answers must not cost every fetch a
//! block timeout per want sent its way. Peers that delivered a wanted block are asked first,
//! then peers that only claimed to have one (a HAVE, a DHT provider record: both cost nothing
//! to send), then strangers. A peer takes a strike when wants of its time out in a fetch's
//! expiry pass (one strike however many expired together, and strikes closer than
//! [`STRIKE_GAP`] count once); after [`BENCH_AFTER`] strikes in a row with no block delivered
//! between, it is asked only when every other peer refused the block, for [`BENCH_FOR`] or
//! until it delivers one.
//!
//! Pure: the caller passes the time. Remote peers create entries (by timing out or claiming),
//! so the table is bounded: past [`MAX_SCORED_PEERS`] the entry changed least recently goes,
//! benched ones last (a forgotten benched peer would be a stranger again).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agora_network::PeerId;

/// Peers remembered at most.
pub const MAX_SCORED_PEERS: usize = 1024;
/// Strikes in a row (expiry passes in which some of its wants timed out, no block delivered
/// between) a peer may take before it is benched. More than one: a stock Kubo
/// peer loses a want now and then (see [`crate::fetch`]), and a delivered block resets the run.
pub const BENCH_AFTER: u32 = 3;
/// Strikes closer together than this count once: one stall of a peer expires its wants over
/// several of a fetch's expiry passes (each want has its own deadline), which is one silence,
/// not three (review of session 51).
pub const STRIKE_GAP: Duration = Duration::from_secs(1);
/// How long a benched peer is asked last, unless it delivers a block meanwhile.
pub const BENCH_FOR: Duration = Duration::from_secs(600);

/// How early a fetch asks a peer; lower first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// Delivered a wanted block, and has not taken [`BENCH_AFTER`] strikes in a row since.
    Proven,
    /// Said it has a wanted block (HAVE) or is named a provider in the DHT; delivered none.
    Claimed,
    /// Never heard from, or back from a bench.
    Stranger,
    /// Took [`BENCH_AFTER`] strikes in a row: asked only when every other peer refused.
    Benched,
}

#[derive(Debug, Clone, Copy)]
struct Score {
    delivered: bool,
    claimed: bool,
    /// Strikes in a row (a delivered block resets it).
    timeouts: u32,
    /// When the last strike counted ([`STRIKE_GAP`]).
    last_strike: Option<Instant>,
    benched_until: Option<Instant>,
    /// Last change, for eviction.
    touched: Instant,
}

impl Score {
    fn benched(&self, now: Instant) -> bool {
        self.benched_until.is_some_and(|t| now < t)
    }
}

/// What this node learnt of each peer's bitswap answers, shared by all its fetches.
#[derive(Debug, Default)]
pub struct PeerScores {
    peers: HashMap<PeerId, Score>,
}

impl PeerScores {
    /// How early to ask `peer`.
    pub fn rank(&self, peer: &PeerId, now: Instant) -> Rank {
        match self.peers.get(peer) {
            None => Rank::Stranger,
            Some(s) if s.benched(now) => Rank::Benched,
            // Back from a bench: one more timeout benches it again.
            Some(s) if s.timeouts >= BENCH_AFTER => Rank::Stranger,
            Some(s) if s.delivered => Rank::Proven,
            Some(s) if s.claimed => Rank::Claimed,
            Some(_) => Rank::Stranger,
        }
    }

    /// `peer` delivered a wanted block: its run of timeouts and any bench end.
    pub fn delivered(&mut self, peer: PeerId, now: Instant) {
        let s = self.entry(peer, now);
        s.delivered = true;
        s.timeouts = 0;
        s.benched_until = None;
    }

    /// `peer` said it has a wanted block, or is named a provider of one.
    pub fn claimed(&mut self, peer: PeerId, now: Instant) {
        self.entry(peer, now).claimed = true;
    }

    /// A want sent to `peer` was not answered in time; true when this benches it (a benched
    /// peer's bench is extended, not counted again).
    pub fn timed_out(&mut self, peer: PeerId, now: Instant) -> bool {
        let s = self.entry(peer, now);
        if s.last_strike.is_some_and(|t| now < t + STRIKE_GAP) {
            return false;
        }
        s.last_strike = Some(now);
        s.timeouts = s.timeouts.saturating_add(1);
        if s.timeouts < BENCH_AFTER {
            return false;
        }
        let was = s.benched(now);
        s.benched_until = Some(now + BENCH_FOR);
        !was
    }

    fn entry(&mut self, peer: PeerId, now: Instant) -> &mut Score {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_SCORED_PEERS {
            let victim = self
                .peers
                .iter()
                .min_by_key(|(_, s)| (s.benched(now), s.touched))
                .map(|(p, _)| *p);
            if let Some(v) = victim {
                self.peers.remove(&v);
            }
        }
        let s = self.peers.entry(peer).or_insert(Score {
            delivered: false,
            claimed: false,
            timeouts: 0,
            last_strike: None,
            benched_until: None,
            touched: now,
        });
        s.touched = now;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_that_delivered_come_first_then_claimers_then_strangers() {
        let now = Instant::now();
        let mut s = PeerScores::default();
        let [proven, claimer, stranger] = [PeerId::random(), PeerId::random(), PeerId::random()];
        s.delivered(proven, now);
        s.claimed(claimer, now);
        s.claimed(proven, now);
        assert_eq!(s.rank(&proven, now), Rank::Proven);
        assert_eq!(s.rank(&claimer, now), Rank::Claimed);
        assert_eq!(s.rank(&stranger, now), Rank::Stranger);
        assert!(Rank::Proven < Rank::Claimed);
        assert!(Rank::Claimed < Rank::Stranger);
        assert!(Rank::Stranger < Rank::Benched);
    }

    #[test]
    fn timeouts_in_a_row_bench_a_peer_until_it_delivers_or_the_bench_ends() {
        let t0 = Instant::now();
        // Strikes a STRIKE_GAP apart, one clock for the whole test.
        let mut k = 0u32;
        let mut next = || {
            k += 1;
            t0 + STRIKE_GAP * k
        };
        let mut s = PeerScores::default();
        let p = PeerId::random();
        s.delivered(p, t0);
        // Lost wants between delivered blocks are forgiven.
        for _ in 0..3 {
            for _ in 1..BENCH_AFTER {
                assert!(!s.timed_out(p, next()));
            }
            s.delivered(p, next());
        }
        for _ in 1..BENCH_AFTER {
            assert!(!s.timed_out(p, next()));
        }
        let t = next();
        assert_eq!(s.rank(&p, t), Rank::Proven);
        assert!(
            s.timed_out(p, t),
            "the BENCH_AFTER-th timeout in a row benches"
        );
        assert_eq!(s.rank(&p, t), Rank::Benched);
        let t = next();
        assert!(!s.timed_out(p, t), "benched once, counted once");
        // The bench ends: a stranger again, and its next timeout benches it at once.
        let later = t + BENCH_FOR + Duration::from_secs(1);
        assert_eq!(s.rank(&p, later), Rank::Stranger);
        assert!(s.timed_out(p, later));
        assert_eq!(s.rank(&p, later), Rank::Benched);
        // A delivered block ends the bench and the run.
        s.delivered(p, later);
        assert_eq!(s.rank(&p, later), Rank::Proven);
        assert!(!s.timed_out(p, later + STRIKE_GAP));
    }

    /// One stall expires a peer's wants over several passes: strikes closer than STRIKE_GAP
    /// count once, so an honest peer pausing for a moment is not benched.
    #[test]
    fn strikes_closer_than_the_gap_count_once() {
        let t0 = Instant::now();
        let mut s = PeerScores::default();
        let p = PeerId::random();
        s.delivered(p, t0);
        for i in 0..20u32 {
            assert!(!s.timed_out(p, t0 + Duration::from_millis(50) * i));
        }
        assert_eq!(s.rank(&p, t0 + Duration::from_secs(1)), Rank::Proven);
        // Spread out, they bench it.
        let mut benched = false;
        for i in 1..=BENCH_AFTER {
            benched |= s.timed_out(p, t0 + STRIKE_GAP * (i + 1));
        }
        assert!(benched);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_benched_peers_last() {
        let t0 = Instant::now();
        let mut s = PeerScores::default();
        let silent = PeerId::random();
        for i in 0..BENCH_AFTER {
            s.timed_out(silent, t0 + STRIKE_GAP * i);
        }
        // Twice the bound in fresh identities, each newer than the benched peer's entry.
        for i in 0..2 * MAX_SCORED_PEERS as u64 {
            s.claimed(PeerId::random(), t0 + Duration::from_millis(i + 1));
        }
        assert_eq!(s.peers.len(), MAX_SCORED_PEERS);
        assert_eq!(s.rank(&silent, t0 + Duration::from_secs(3)), Rank::Benched);
    }
}
