//! Finding peers beyond the bootstrap list (issue #17). Without mDNS — nodes on several hosts,
//! or the Shadow simulator — a node knows only its bootstrap addresses; everything else comes
//! from Kademlia. libp2p bootstraps once when the routing table gains a peer while it holds
//! fewer than 20, and then every 5 minutes: a node that joins while the network is still
//! forming (the routing tables it asks are near empty) kept only its bootstrap connections,
//! and the bootstrap nodes, above `target_peers`, trimmed those too.
//!
//! The policy here: while below `target_peers`, walk the DHT (a lookup of a random key, which
//! connects to the peers it asks) a few seconds after start and then with a doubling interval up
//! to [`MAX_WALK_BELOW_TARGET`]; at or above the target, once per [`REFRESH`]; back to the short
//! interval as soon as the count drops below target again. One walk at a time, and each walk
//! dials at most as many peers as the target lacks. The decisions are the pure functions below;
//! the swarm loop only carries them out.

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use super::EventLoop;

/// The first walk, this long after start (identify and the bootstrap dials settle first).
pub(super) const FIRST_WALK: Duration = Duration::from_secs(2);
/// Longest interval between walks while below `target_peers`.
pub(super) const MAX_WALK_BELOW_TARGET: Duration = Duration::from_secs(30);
/// Interval between walks at or above `target_peers` (Kademlia's own refresh period).
pub(super) const REFRESH: Duration = Duration::from_secs(300);
/// Most addresses of one peer taken from its identify message into the routing table.
pub(super) const MAX_IDENTIFY_ADDRS: usize = 8;

/// How long to wait after a walk before the next: doubling from [`FIRST_WALK`] with each walk
/// made below target (`streak`), capped at [`MAX_WALK_BELOW_TARGET`]; [`REFRESH`] at target.
pub(super) fn walk_interval(streak: u32, below_target: bool) -> Duration {
    if !below_target {
        return REFRESH;
    }
    let doubled = FIRST_WALK.saturating_mul(1u32.checked_shl(streak).unwrap_or(u32::MAX));
    doubled.min(MAX_WALK_BELOW_TARGET)
}

/// When to walk the DHT next.
#[derive(Debug)]
pub(super) struct Pacer {
    started: Instant,
    last: Option<Instant>,
    /// Walks made in a row while below target (reset whenever the target is reached).
    streak: u32,
}

impl Pacer {
    pub(super) fn new(now: Instant) -> Self {
        Pacer {
            started: now,
            last: None,
            streak: 0,
        }
    }

    /// Whether to start a walk now, with `connected` peers of `target` and `walking` if one is
    /// still in flight; records the walk when it answers yes. Nobody to ask (no connection)
    /// means no walk: the bootstrap redial comes first.
    pub(super) fn poll(
        &mut self,
        now: Instant,
        connected: usize,
        target: usize,
        walking: bool,
    ) -> bool {
        let below = connected < target;
        if !below {
            self.streak = 0;
        }
        if walking || connected == 0 {
            return false;
        }
        let due = match self.last {
            None => now.saturating_duration_since(self.started) >= FIRST_WALK,
            Some(last) => now.saturating_duration_since(last) >= walk_interval(self.streak, below),
        };
        if due {
            self.last = Some(now);
            if below {
                self.streak = self.streak.saturating_add(1);
            }
        }
        due
    }
}

/// How many peers one walk may ask for and dial: what the target lacks, at least one (a walk
/// at target refreshes the routing table), at most Kademlia's k (20).
pub(super) fn walk_width(connected: usize, target: usize) -> usize {
    target.saturating_sub(connected).clamp(1, 20)
}

/// Whether an address a peer announced (identify) is worth keeping in the routing table, which
/// hands it on to everyone who asks: never an unspecified address (`0.0.0.0`), and a loopback
/// address only when we reach that peer over loopback ourselves (a peer on another host that
/// announces `127.0.0.1` points everyone who dials it at themselves).
pub(super) fn announce_worthy(addr: &Multiaddr, via_loopback: bool) -> bool {
    addr.iter().next().is_some()
        && !crate::is_unspecified(addr)
        && (via_loopback || !is_loopback(addr))
}

/// Whether `addr` (a connection's remote address) is on loopback.
pub(super) fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// One connection, as the trimming decision sees it.
#[derive(Debug, Clone)]
pub(super) struct Conn<P> {
    pub peer: P,
    /// How long it has been open.
    pub age: Duration,
    /// Carries a gossipsub mesh or a watch: never trimmed.
    pub protected: bool,
}

/// Beyond [`storm_ceiling`] connections the excess is closed after this much instead of
/// `trim_grace`. A node's Kademlia bootstrap (at join, and libp2p's own every 5 minutes) looks
/// up one key per routing-table bucket and connects to every peer it asks: in a network of a few
/// hundred nodes that is most of them, each held until the trimmer closes it, and every
/// connection costs ~70 KiB (measured: 40 nodes on loopback, 12.2 MiB PSS a node while each held
/// ~50 sockets, 10.3 MiB at ~21). A lookup is done with a peer within a round trip or two of
/// the connection (a Kademlia request), so the short grace keeps the queries working while the
/// storm never piles up; the trimmer runs every second ([`super::DISCOVERY_TICK`]).
pub(super) const STORM_GRACE: Duration = Duration::from_secs(3);

/// How many connections a node holds before the excess is trimmed after [`STORM_GRACE`]:
/// twice the target (room for the newcomers the target's `trim_grace` protects).
pub(super) fn storm_ceiling(target: usize) -> usize {
    target.saturating_mul(2)
}

/// Which connections to close to come back down to `target`: the oldest unprotected ones that
/// are at least `grace` old, and, while more than [`storm_ceiling`] would remain, the oldest
/// unprotected ones at least [`STORM_GRACE`] old. A newcomer is never trimmed within `grace`
/// unless the node is over its ceiling, and its own walks run at 2, 4, 8, 16 s after it starts,
/// so by then it has been handed the addresses of others (through us, its first contact) and
/// dialled them; the oldest peers have had longest to find theirs, so they are the ones that
/// lose least.
pub(super) fn to_trim<P: Clone>(conns: &[Conn<P>], target: usize, grace: Duration) -> Vec<P> {
    let excess = conns.len().saturating_sub(target);
    if excess == 0 {
        return Vec::new();
    }
    let mut spare: Vec<&Conn<P>> = conns.iter().filter(|c| !c.protected).collect();
    spare.sort_by_key(|c| std::cmp::Reverse(c.age));
    let (settled, young): (Vec<&Conn<P>>, Vec<&Conn<P>>) =
        spare.into_iter().partition(|c| c.age >= grace);
    let mut out: Vec<P> = settled
        .into_iter()
        .take(excess)
        .map(|c| c.peer.clone())
        .collect();
    let over_ceiling = conns
        .len()
        .saturating_sub(out.len())
        .saturating_sub(storm_ceiling(target));
    out.extend(
        young
            .into_iter()
            .filter(|c| c.age >= STORM_GRACE)
            .take(over_ceiling)
            .map(|c| c.peer.clone()),
    );
    out
}

impl EventLoop {
    /// Discovery timer: starts a walk when one is due (see [`Pacer`]).
    pub(super) fn discover(&mut self) {
        let connected = self.swarm.network_info().num_peers();
        let target = self.cfg.target_peers;
        if !self
            .pacer
            .poll(Instant::now(), connected, target, self.walk.is_some())
        {
            return;
        }
        let width = walk_width(connected, target);
        let key = libp2p::PeerId::random();
        let Some(n) = std::num::NonZeroUsize::new(width) else {
            return;
        };
        let id = self.swarm.behaviour_mut().kad.get_n_closest_peers(key, n);
        tracing::debug!(connected, target, width, "walking the DHT for peers");
        self.stats.discovery_walks += 1;
        self.walk = Some(id);
    }

    /// A walk finished: dials the peers it found that we are not connected to, as many as the
    /// target still lacks.
    pub(super) fn on_walk_done(&mut self, peers: Vec<libp2p::kad::PeerInfo>) {
        self.walk = None;
        let mut room = self
            .cfg
            .target_peers
            .saturating_sub(self.swarm.network_info().num_peers());
        let me = *self.swarm.local_peer_id();
        for p in peers {
            if room == 0 {
                break;
            }
            if p.peer_id == me || self.swarm.is_connected(&p.peer_id) {
                continue;
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(p.peer_id)
                .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                .addresses(p.addrs.into_iter().take(MAX_IDENTIFY_ADDRS).collect())
                .extend_addresses_through_behaviour()
                .build();
            if self.swarm.dial(opts).is_ok() {
                self.stats.discovery_dials += 1;
                room -= 1;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const GRACE: Duration = Duration::from_secs(30);

    /// A connection to `peer`, `age` seconds old.
    fn c(peer: u8, age: u64, protected: bool) -> Conn<u8> {
        Conn {
            peer,
            age: Duration::from_secs(age),
            protected,
        }
    }

    #[test]
    fn the_interval_doubles_below_target_up_to_its_cap_and_is_the_refresh_at_target() {
        assert_eq!(walk_interval(0, true), FIRST_WALK);
        assert_eq!(walk_interval(1, true), 2 * FIRST_WALK);
        assert_eq!(walk_interval(3, true), 8 * FIRST_WALK);
        assert_eq!(walk_interval(5, true), MAX_WALK_BELOW_TARGET);
        assert_eq!(walk_interval(u32::MAX, true), MAX_WALK_BELOW_TARGET);
        assert_eq!(walk_interval(0, false), REFRESH);
        assert_eq!(walk_interval(7, false), REFRESH);
    }

    #[test]
    fn a_node_below_target_walks_soon_and_then_less_often() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        assert!(!p.poll(t0 + S, 1, 4, false), "not before the first delay");
        assert!(!p.poll(t0 + 3 * S, 0, 4, false), "nobody to ask");
        assert!(p.poll(t0 + 3 * S, 1, 4, false));
        // Next after 4 s (2 s doubled once), then 8 s.
        assert!(!p.poll(t0 + 6 * S, 1, 4, false));
        assert!(p.poll(t0 + 7 * S, 1, 4, false));
        assert!(!p.poll(t0 + 14 * S, 2, 4, false));
        assert!(p.poll(t0 + 15 * S, 2, 4, false));
        // One walk at a time.
        assert!(!p.poll(t0 + 100 * S, 2, 4, true));
    }

    #[test]
    fn at_target_it_refreshes_rarely_and_walks_soon_again_once_below() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        assert!(p.poll(t0 + 2 * S, 1, 4, false));
        assert!(p.poll(t0 + 6 * S, 2, 4, false));
        assert!(p.poll(t0 + 14 * S, 3, 4, false));
        // At target: nothing until the refresh.
        assert!(!p.poll(t0 + 40 * S, 4, 4, false));
        assert!(!p.poll(t0 + 300 * S, 5, 4, false));
        // A peer leaves: the short interval again (2 s after the last walk has long passed).
        assert!(p.poll(t0 + 301 * S, 3, 4, false));
        assert!(!p.poll(t0 + 302 * S, 3, 4, false));
        assert!(p.poll(t0 + 305 * S, 3, 4, false));
        // The refresh at target.
        assert!(!p.poll(t0 + 500 * S, 4, 4, false));
        assert!(p.poll(t0 + 605 * S, 4, 4, false));
    }

    #[test]
    fn a_walk_asks_for_what_the_target_lacks_within_one_and_k() {
        assert_eq!(walk_width(1, 4), 3);
        assert_eq!(walk_width(4, 4), 1);
        assert_eq!(walk_width(9, 4), 1);
        assert_eq!(walk_width(0, 100), 20);
    }

    #[test]
    fn identify_addresses_that_point_nowhere_useful_are_not_announced() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        assert!(announce_worthy(&a("/ip4/11.0.0.2/tcp/4001"), false));
        assert!(announce_worthy(&a("/ip4/192.168.1.2/tcp/4001"), false));
        assert!(!announce_worthy(&a("/ip4/127.0.0.1/tcp/4001"), false));
        assert!(announce_worthy(&a("/ip4/127.0.0.1/tcp/4001"), true));
        assert!(!announce_worthy(&a("/ip4/0.0.0.0/tcp/4001"), true));
        assert!(!announce_worthy(&a("/ip6/::/tcp/4001"), true));
        assert!(!announce_worthy(&a("/ip6/::1/tcp/4001"), false));
        assert!(announce_worthy(&a("/dns4/example.org/tcp/4001"), false));
        assert!(!announce_worthy(&Multiaddr::empty(), true));
        assert!(is_loopback(&a("/ip4/127.0.0.1/tcp/1")));
        assert!(!is_loopback(&a("/ip4/11.0.0.1/tcp/1")));
    }

    #[test]
    fn trimming_closes_the_oldest_unprotected_connections_and_spares_newcomers() {
        // At or below target: nothing.
        assert!(to_trim(&[c(1, 100, false), c(2, 100, false)], 2, GRACE).is_empty());
        // Two over target: the two oldest unprotected, never a newcomer or a mesh peer.
        let conns = [
            c(1, 100, true),
            c(2, 90, false),
            c(3, 5, false),
            c(4, 200, false),
            c(5, 40, false),
        ];
        assert_eq!(to_trim(&conns, 3, GRACE), vec![4, 2]);
        // More over target than spare: only the spare ones (newcomers keep their grace).
        // (Target 1: the ceiling of 2 is not exceeded once the spare ones are gone.)
        assert_eq!(to_trim(&conns, 1, GRACE), vec![4, 2, 5]);
    }

    #[test]
    fn a_storm_of_connections_is_trimmed_to_the_ceiling_after_the_short_grace() {
        // Target 2, ceiling 4: eight young connections (a bootstrap's), one of them a mesh peer.
        let conns = [
            c(1, 10, false),
            c(2, 12, true),
            c(3, 6, false),
            c(4, 3, false),
            c(5, 8, false),
            c(6, 40, false),
            c(7, 2, false),
            c(8, 20, false),
        ];
        // The settled spare one (6) to the target's rule, then down to the ceiling: the oldest
        // young spare ones past the short grace (8, 1, 5), never the mesh peer or one under 3 s.
        assert_eq!(to_trim(&conns, 2, GRACE), vec![6, 8, 1, 5]);
        // At or under the ceiling, young connections keep their grace.
        assert_eq!(to_trim(&conns[..4], 2, GRACE), Vec::<u8>::new());
        // Not enough old enough ones: fewer, never a connection under the short grace.
        let young = [
            c(1, 2, false),
            c(2, 1, false),
            c(3, 6, false),
            c(4, 1, false),
            c(5, 2, false),
        ];
        assert_eq!(to_trim(&young, 1, GRACE), vec![3]);
        let young = [
            c(1, 4, false),
            c(2, 3, false),
            c(3, 6, false),
            c(4, 1, false),
            c(5, 2, false),
        ];
        assert_eq!(to_trim(&young, 1, GRACE), vec![3, 1, 2]);
        assert_eq!(storm_ceiling(16), 32);
    }
}
