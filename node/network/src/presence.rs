//! Presence: who is reachable, and since when.
//!
//! Liveness comes from direct connections only, so a node's cost is O(its direct peers), not
//! O(network): a peer is reachable from the moment a connection to it is established (the noise
//! handshake authenticates it) for as long as pings on that connection succeed. It is declared
//! down when no ping succeeded for its timeout, or at once when its last connection closed and
//! the redial failed (a killed process refuses connections). A closed connection that is
//! redialled successfully is not a change. Components (the handover orchestrator, arbitrators'
//! liveness checks) subscribe to [`PresenceEvent`]s, query a snapshot, and *watch* the peers
//! they depend on: a watched peer gets fast heartbeats and the short timeout, every other direct
//! peer only the slow idle ping and the long timeout.
//!
//! The short timeout is a floor: a watched peer's timeout follows its measured round-trip time
//! ([`watched_timeout`]), so a peer on a slow link (satellite, cellular, a congested uplink)
//! whose heartbeats take most of a second to come back is not declared down while it answers
//! every one — a false `Down` would make its arbitrators hand its service over. On loopback and
//! LAN links the floor applies, as before.
//!
//! This module is the pure tracker; the swarm loop feeds it connection and ping events.

use std::collections::HashMap;
use std::time::Duration;

use agora_market::{NodeId, Timestamp};
use agora_wire::rtt::RttEstimator;
use serde::{Deserialize, Serialize};

/// A change in a peer's reachability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceEvent {
    /// The peer became reachable (connection established or ping answered after absence).
    Up {
        /// The peer.
        node: NodeId,
        /// When it became reachable (ms, local clock).
        at: Timestamp,
    },
    /// The peer stopped answering (ping timeout, or connection lost and redial failed).
    Down {
        /// The peer.
        node: NodeId,
        /// Last proof of life (ms, local clock).
        last_seen: Timestamp,
        /// When it was declared down.
        at: Timestamp,
    },
}

/// What is known about one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPresence {
    /// The peer.
    pub node: NodeId,
    /// Whether the peer currently answers.
    pub reachable: bool,
    /// Reachable since (if reachable) or unreachable since (if not), ms.
    pub since: Timestamp,
    /// Last proof of life (connection established or ping answered), ms; 0 if never.
    pub last_seen: Timestamp,
    /// Whether this node keeps a connection to the peer on purpose (`NetworkHandle::watch`).
    pub watched: bool,
    /// Its measured round trip, ms: RFC 6298's `srtt + 4·rttvar` over its pings and
    /// heartbeats (`None` before the first sample). The ledger paces consensus with it.
    #[serde(default)]
    pub rtt_ms: Option<u64>,
}

#[derive(Debug)]
struct Entry {
    presence: PeerPresence,
    connected: bool,
    /// Smoothed round-trip time of its pings and heartbeats.
    rtt: Option<RttEstimator>,
}

/// At most this many times the configured watched timeout, however slow the peer's link: a
/// peer that delays its own answers delays its own `Down` by a bounded amount only.
pub const MAX_TIMEOUT_FACTOR: u32 = 10;

/// How long a watched peer may be silent before it is down: the heartbeat interval plus two
/// retransmission timeouts of its measured round trip (`srtt + 4·rttvar`, RFC 6298), so one
/// lost or late heartbeat is not a death; never less than `floor` (the configured timeout),
/// never more than [`MAX_TIMEOUT_FACTOR`] × `floor`. Without a sample yet: `floor`.
pub fn watched_timeout(
    floor: Duration,
    interval: Duration,
    rtt: Option<&RttEstimator>,
) -> Duration {
    let Some(rtt) = rtt else {
        return floor;
    };
    let cap = floor * MAX_TIMEOUT_FACTOR;
    let derived = interval + rtt.timeout(Duration::ZERO, cap) * 2;
    derived.clamp(floor, cap.max(floor))
}

/// Most peers the tracker remembers; above it, unwatched peers without a connection are
/// evicted (unreachable ones first, the longest-unreachable first). Watched and connected
/// peers are never evicted (they are bounded by the watches and the connection limits).
pub const MAX_TRACKED_PEERS: usize = 2048;

/// Pure presence tracker; the event loop feeds it connection events, pings and ticks.
#[derive(Debug)]
pub struct PresenceTracker {
    watched_timeout: Duration,
    interval: Duration,
    idle_timeout: u64,
    max_peers: usize,
    peers: HashMap<NodeId, Entry>,
    evicted: u64,
}

impl PresenceTracker {
    /// A tracker that declares a watched peer down after `watched_timeout` without a successful
    /// ping, and any other peer after `idle_timeout`.
    pub fn new(watched_timeout: Duration, idle_timeout: Duration) -> Self {
        PresenceTracker {
            watched_timeout,
            interval: Duration::ZERO,
            idle_timeout: agora_wire::duration_ms(idle_timeout),
            max_peers: MAX_TRACKED_PEERS,
            peers: HashMap::new(),
            evicted: 0,
        }
    }

    /// The same tracker with watched peers beating every `interval` (part of their
    /// RTT-derived timeout, see [`watched_timeout`]).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The same tracker remembering at most `max_peers` evictable peers.
    pub fn with_max_peers(mut self, max_peers: usize) -> Self {
        self.max_peers = max_peers.max(1);
        self
    }

    /// Peers evicted so far because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Number of peers in the table.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Makes room for one more peer: evicts the unwatched, unconnected peer that is
    /// unreachable the longest (or, failing that, silent the longest).
    fn make_room(&mut self) {
        if self.peers.len() < self.max_peers {
            return;
        }
        let victim = self
            .peers
            .values()
            .filter(|e| !e.presence.watched && !e.connected)
            .min_by_key(|e| (e.presence.reachable, e.presence.since))
            .map(|e| e.presence.node);
        if let Some(v) = victim {
            self.peers.remove(&v);
            self.evicted += 1;
        }
    }

    fn entry(&mut self, node: NodeId, now: Timestamp) -> &mut Entry {
        if !self.peers.contains_key(&node) {
            self.make_room();
        }
        self.peers.entry(node).or_insert_with(|| Entry {
            presence: PeerPresence {
                node,
                reachable: false,
                since: now,
                last_seen: 0,
                watched: false,
                rtt_ms: None,
            },
            connected: false,
            rtt: None,
        })
    }

    /// A measured round trip to `node` (a ping or a heartbeat); ignored for a peer not in the
    /// table (it is added by its connection, not by a sample).
    pub fn rtt_sample(&mut self, node: NodeId, rtt: Duration) {
        if let Some(e) = self.peers.get_mut(&node) {
            let estimate = RttEstimator::sampled(e.rtt, rtt);
            e.rtt = Some(estimate);
            let rto = estimate.timeout(Duration::ZERO, Duration::MAX);
            e.presence.rtt_ms = Some(u64::try_from(rto.as_millis()).unwrap_or(u64::MAX));
        }
    }

    /// How long `node` may be silent before it is down, as things stand (ms); `None` for a
    /// peer not in the table.
    pub fn timeout_ms(&self, node: &NodeId) -> Option<u64> {
        self.peers.get(node).map(|e| self.timeout_of(e))
    }

    fn timeout_of(&self, e: &Entry) -> u64 {
        if e.presence.watched {
            agora_wire::duration_ms(watched_timeout(
                self.watched_timeout,
                self.interval,
                e.rtt.as_ref(),
            ))
        } else {
            self.idle_timeout
        }
    }

    /// A connection to `node` was established; `Up` if it was not reachable before.
    pub fn connected(&mut self, node: NodeId, now: Timestamp) -> Option<PresenceEvent> {
        self.entry(node, now).connected = true;
        self.alive(node, now)
    }

    /// `node` answered a ping (or otherwise proved it is alive); `Up` if it was not reachable.
    pub fn alive(&mut self, node: NodeId, now: Timestamp) -> Option<PresenceEvent> {
        let e = self.entry(node, now);
        let p = &mut e.presence;
        p.last_seen = p.last_seen.max(now);
        if p.reachable {
            return None;
        }
        p.reachable = true;
        p.since = now;
        Some(PresenceEvent::Up { node, at: now })
    }

    /// The last connection to `node` closed. Not a change by itself: the caller redials and
    /// reports the outcome with [`Self::connected`] or [`Self::dial_failed`].
    pub fn disconnected(&mut self, node: NodeId) {
        if let Some(e) = self.peers.get_mut(&node) {
            e.connected = false;
        }
    }

    /// Stops tracking `node` (its connection was closed on purpose or by a peer trimming its
    /// connections, and it is not watched): no event, it simply leaves the table.
    pub fn forget(&mut self, node: &NodeId) {
        if self.peers.get(node).is_some_and(|e| !e.presence.watched) {
            self.peers.remove(node);
        }
    }

    /// A dial to `node` failed; `Down` if it has no connection left and was reachable.
    pub fn dial_failed(&mut self, node: NodeId, now: Timestamp) -> Option<PresenceEvent> {
        let e = self.peers.get_mut(&node)?;
        if e.connected || !e.presence.reachable {
            return None;
        }
        Some(Self::mark_down(&mut e.presence, now))
    }

    /// Declares peers down whose pings stopped for longer than their timeout.
    pub fn tick(&mut self, now: Timestamp) -> Vec<PresenceEvent> {
        let late: Vec<NodeId> = self
            .peers
            .values()
            .filter(|e| {
                e.presence.reachable
                    && now.saturating_sub(e.presence.last_seen) > self.timeout_of(e)
            })
            .map(|e| e.presence.node)
            .collect();
        let mut out = Vec::with_capacity(late.len());
        for n in &late {
            if let Some(e) = self.peers.get_mut(n) {
                out.push(Self::mark_down(&mut e.presence, now));
            }
        }
        out.sort_by_key(|e| match e {
            PresenceEvent::Up { node, .. } | PresenceEvent::Down { node, .. } => *node,
        });
        out
    }

    fn mark_down(p: &mut PeerPresence, now: Timestamp) -> PresenceEvent {
        p.reachable = false;
        p.since = now;
        PresenceEvent::Down {
            node: p.node,
            last_seen: p.last_seen,
            at: now,
        }
    }

    /// Marks `node` as watched (or not); a watched peer is listed even before it is reached.
    pub fn set_watched(&mut self, node: NodeId, watched: bool, now: Timestamp) {
        if watched {
            self.entry(node, now).presence.watched = true;
        } else if let Some(e) = self.peers.get_mut(&node) {
            e.presence.watched = false;
        }
    }

    /// Everything known, sorted by node id.
    pub fn snapshot(&self) -> Vec<PeerPresence> {
        let mut v: Vec<_> = self.peers.values().map(|e| e.presence.clone()).collect();
        v.sort_by_key(|p| p.node);
        v
    }

    /// One peer's presence.
    pub fn get(&self, node: &NodeId) -> Option<&PeerPresence> {
        self.peers.get(node).map(|e| &e.presence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_market::{KeySigner, Signer};

    fn node() -> NodeId {
        KeySigner::from_seed(1).node_id()
    }

    #[test]
    fn up_on_connect_down_on_ping_silence_up_again() {
        let n = node();
        let mut t = PresenceTracker::new(Duration::from_millis(10), Duration::from_millis(100));
        assert_eq!(
            t.connected(n, 0),
            Some(PresenceEvent::Up { node: n, at: 0 })
        );
        assert_eq!(t.alive(n, 50), None);
        assert!(t.tick(120).is_empty());
        assert_eq!(
            t.tick(151),
            vec![PresenceEvent::Down {
                node: n,
                last_seen: 50,
                at: 151
            }]
        );
        assert!(t.tick(400).is_empty(), "down is reported once");
        assert!(t.get(&n).is_some_and(|p| !p.reachable && p.since == 151));
        assert_eq!(
            t.alive(n, 500),
            Some(PresenceEvent::Up { node: n, at: 500 })
        );
    }

    #[test]
    fn forgotten_peers_leave_the_table_unless_watched() {
        let (a, b) = (node(), KeySigner::from_seed(2).node_id());
        let mut t = PresenceTracker::new(Duration::from_secs(1), Duration::from_secs(1));
        t.connected(a, 0);
        t.connected(b, 0);
        t.set_watched(b, true, 0);
        t.forget(&a);
        t.forget(&b);
        assert!(t.get(&a).is_none());
        assert!(t.get(&b).is_some(), "a watched peer stays");
        assert!(
            t.tick(10_000)
                .iter()
                .all(|e| !matches!(e, PresenceEvent::Down { node, .. } if *node == a))
        );
    }

    #[test]
    fn watched_peer_has_the_short_timeout() {
        let (a, b) = (node(), KeySigner::from_seed(2).node_id());
        let mut t = PresenceTracker::new(Duration::from_millis(100), Duration::from_secs(5));
        t.set_watched(a, true, 0);
        t.connected(a, 0);
        t.connected(b, 0);
        // Silent for 1 s: the watched peer is down, the other is within its idle timeout.
        let down = t.tick(1_000);
        assert_eq!(down.len(), 1);
        assert!(matches!(down[0], PresenceEvent::Down { node, .. } if node == a));
        assert!(t.get(&b).is_some_and(|p| p.reachable));
        assert_eq!(t.tick(5_001).len(), 1, "the idle peer times out later");
        assert!(t.get(&b).is_some_and(|p| !p.reachable));
    }

    #[test]
    fn a_watched_peer_on_a_slow_link_is_down_only_after_its_rtt_derived_timeout() {
        let (slow, fast) = (node(), KeySigner::from_seed(2).node_id());
        let mut t = PresenceTracker::new(Duration::from_secs(1), Duration::from_secs(60))
            .with_interval(Duration::from_millis(250));
        for n in [slow, fast] {
            t.set_watched(n, true, 0);
            t.connected(n, 0);
        }
        // Heartbeats answered after 800 ms (a 400 ms link each way), steadily; the other peer
        // is on loopback.
        for _ in 0..20 {
            t.rtt_sample(slow, Duration::from_millis(800));
            t.rtt_sample(fast, Duration::from_millis(1));
        }
        // 250 + 2 × (800 + 4·rttvar): about 1.9 s, against the 1 s floor.
        let slow_timeout = t.timeout_ms(&slow).unwrap_or(0);
        assert!((1_850..2_100).contains(&slow_timeout), "{slow_timeout}");
        assert_eq!(t.timeout_ms(&fast), Some(1_000), "loopback keeps the floor");
        // The round trip the snapshot reports (the ledger paces consensus with it).
        let rtt_of = |n: &NodeId| t.get(n).and_then(|p| p.rtt_ms);
        assert!(
            rtt_of(&slow).is_some_and(|r| (800..900).contains(&r)),
            "{:?}",
            rtt_of(&slow)
        );
        assert!(rtt_of(&fast).is_some_and(|r| r <= 2), "{:?}", rtt_of(&fast));
        // Its answers come every ~800 ms, so silences of up to that much are normal: 1.2 s of
        // silence (one late answer) is no death for it, and is for the fast peer.
        let down = t.tick(1_200);
        assert_eq!(
            down.iter()
                .map(|e| match e {
                    PresenceEvent::Down { node, .. } | PresenceEvent::Up { node, .. } => *node,
                })
                .collect::<Vec<_>>(),
            vec![fast]
        );
        assert!(t.get(&slow).is_some_and(|p| p.reachable));
        // Past its own timeout it is down too.
        assert_eq!(t.tick(slow_timeout + 1).len(), 1);
        assert!(t.get(&slow).is_some_and(|p| !p.reachable));
    }

    #[test]
    fn the_derived_timeout_has_a_floor_a_cap_and_ignores_unknown_peers() {
        let floor = Duration::from_secs(1);
        let beat = Duration::from_millis(250);
        assert_eq!(watched_timeout(floor, beat, None), floor);
        let lan = RttEstimator::first(Duration::from_millis(2));
        assert_eq!(watched_timeout(floor, beat, Some(&lan)), floor);
        // A peer that answers after a minute gets at most ten times the floor.
        let stalling = RttEstimator::first(Duration::from_secs(60));
        assert_eq!(
            watched_timeout(floor, beat, Some(&stalling)),
            floor * MAX_TIMEOUT_FACTOR
        );
        // An unwatched peer keeps the idle timeout whatever its RTT.
        let n = node();
        let mut t = PresenceTracker::new(floor, Duration::from_secs(30)).with_interval(beat);
        t.rtt_sample(n, Duration::from_secs(5));
        assert_eq!(t.timeout_ms(&n), None, "a sample adds no peer to the table");
        t.connected(n, 0);
        t.rtt_sample(n, Duration::from_secs(5));
        assert_eq!(t.timeout_ms(&n), Some(30_000));
    }

    #[test]
    fn closed_connection_is_down_only_when_redial_fails() {
        let n = node();
        let mut t = PresenceTracker::new(Duration::from_secs(10), Duration::from_secs(10));
        t.connected(n, 0);
        // Closed, then redialled successfully: no change.
        t.disconnected(n);
        assert_eq!(t.connected(n, 10), None);
        // A failed dial while another connection is open (stale address): no change.
        assert_eq!(t.dial_failed(n, 20), None);
        // Closed and the redial is refused: down at once, well before the ping timeout.
        t.disconnected(n);
        assert_eq!(
            t.dial_failed(n, 30),
            Some(PresenceEvent::Down {
                node: n,
                last_seen: 10,
                at: 30
            })
        );
        assert_eq!(t.dial_failed(n, 40), None, "down is reported once");
        assert_eq!(
            t.connected(n, 50),
            Some(PresenceEvent::Up { node: n, at: 50 })
        );
    }

    #[test]
    fn table_is_bounded_and_evicts_unreachable_unwatched_peers_first() {
        let mut t =
            PresenceTracker::new(Duration::from_secs(1), Duration::from_secs(1)).with_max_peers(3);
        let ids: Vec<NodeId> = (10..20)
            .map(|s| KeySigner::from_seed(s).node_id())
            .collect();
        // A watched peer and a connected one are never evicted.
        t.set_watched(ids[0], true, 0);
        t.connected(ids[1], 0);
        // A peer that came and went (down), then many throwaway identities passing through.
        t.connected(ids[2], 0);
        t.disconnected(ids[2]);
        t.dial_failed(ids[2], 1);
        for (i, id) in ids.iter().enumerate().skip(3) {
            t.connected(*id, i as u64);
            t.disconnected(*id);
        }
        assert!(t.len() <= 3, "table grew to {}", t.len());
        assert!(t.get(&ids[0]).is_some() && t.get(&ids[1]).is_some());
        assert!(t.get(&ids[2]).is_none(), "the down peer went first");
        assert_eq!(t.evicted(), 7);
    }

    #[test]
    fn watched_peer_is_listed_before_it_is_reached() {
        let n = node();
        let mut t = PresenceTracker::new(Duration::from_secs(1), Duration::from_secs(1));
        t.set_watched(n, true, 5);
        let snap = t.snapshot();
        assert_eq!(snap.len(), 1);
        assert!(snap[0].watched && !snap[0].reachable && snap[0].last_seen == 0);
        assert_eq!(t.dial_failed(n, 6), None, "never up, so never down");
        assert!(t.tick(10_000).is_empty());
        t.set_watched(n, false, 7);
        assert!(t.get(&n).is_some_and(|p| !p.watched));
    }
}
