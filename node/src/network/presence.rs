//! Presence: who is reachable, and since when.
//!
//! Every node gossips a signed heartbeat on [`PRESENCE_TOPIC`] at a fixed interval. A peer is
//! reachable from its first heartbeat until no heartbeat arrived for `timeout`. Components (the
//! handover orchestrator, arbitrators' liveness checks) subscribe to [`PresenceEvent`]s or query a
//! snapshot.

use std::collections::HashMap;
use std::time::Duration;

use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

/// Gossip topic carrying presence heartbeats.
pub const PRESENCE_TOPIC: &str = "agora/presence/1";

/// Body of a presence heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's listen addresses (as strings), to help late joiners dial it.
    pub addrs: Vec<String>,
}

/// A change in a peer's reachability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceEvent {
    /// First heartbeat after absence.
    Up {
        /// The peer.
        node: NodeId,
        /// When the first heartbeat arrived (ms, local clock).
        at: Timestamp,
    },
    /// Heartbeats stopped.
    Down {
        /// The peer.
        node: NodeId,
        /// When the last heartbeat arrived (ms, local clock).
        last_seen: Timestamp,
        /// When the timeout fired.
        at: Timestamp,
    },
}

/// What is known about one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPresence {
    /// The peer.
    pub node: NodeId,
    /// Whether heartbeats are currently arriving.
    pub reachable: bool,
    /// Reachable since (if reachable) or unreachable since (if not), ms.
    pub since: Timestamp,
    /// Last heartbeat seen, ms.
    pub last_seen: Timestamp,
    /// Highest heartbeat sequence number seen (older ones are ignored as replays).
    pub last_seq: u64,
}

/// Pure presence tracker; the event loop feeds it heartbeats and ticks.
#[derive(Debug)]
pub struct PresenceTracker {
    timeout: u64,
    peers: HashMap<NodeId, PeerPresence>,
}

impl PresenceTracker {
    /// A tracker that declares a peer down after `timeout` without heartbeats.
    pub fn new(timeout: Duration) -> Self {
        PresenceTracker {
            timeout: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            peers: HashMap::new(),
        }
    }

    /// Records a heartbeat; returns `Up` if the peer was not reachable before.
    pub fn heartbeat(&mut self, node: NodeId, seq: u64, now: Timestamp) -> Option<PresenceEvent> {
        match self.peers.get_mut(&node) {
            Some(p) => {
                if seq <= p.last_seq && p.reachable {
                    return None; // replayed or reordered heartbeat
                }
                p.last_seq = p.last_seq.max(seq);
                p.last_seen = now;
                if !p.reachable {
                    p.reachable = true;
                    p.since = now;
                    return Some(PresenceEvent::Up { node, at: now });
                }
                None
            }
            None => {
                self.peers.insert(
                    node,
                    PeerPresence {
                        node,
                        reachable: true,
                        since: now,
                        last_seen: now,
                        last_seq: seq,
                    },
                );
                Some(PresenceEvent::Up { node, at: now })
            }
        }
    }

    /// Declares peers down whose heartbeats stopped.
    pub fn tick(&mut self, now: Timestamp) -> Vec<PresenceEvent> {
        let mut out = Vec::new();
        for p in self.peers.values_mut() {
            if p.reachable && now.saturating_sub(p.last_seen) > self.timeout {
                p.reachable = false;
                p.since = now;
                out.push(PresenceEvent::Down {
                    node: p.node,
                    last_seen: p.last_seen,
                    at: now,
                });
            }
        }
        out.sort_by_key(|e| match e {
            PresenceEvent::Up { node, .. } | PresenceEvent::Down { node, .. } => *node,
        });
        out
    }

    /// Everything known, sorted by node id.
    pub fn snapshot(&self) -> Vec<PeerPresence> {
        let mut v: Vec<_> = self.peers.values().cloned().collect();
        v.sort_by_key(|p| p.node);
        v
    }

    /// One peer's presence.
    pub fn get(&self, node: &NodeId) -> Option<&PeerPresence> {
        self.peers.get(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_market::{KeySigner, Signer};

    #[test]
    fn up_then_down_then_up() {
        let n = KeySigner::from_seed(1).node_id();
        let mut t = PresenceTracker::new(Duration::from_millis(100));
        assert_eq!(
            t.heartbeat(n, 1, 0),
            Some(PresenceEvent::Up { node: n, at: 0 })
        );
        assert_eq!(t.heartbeat(n, 2, 50), None);
        assert!(t.tick(120).is_empty());
        assert_eq!(
            t.tick(151),
            vec![PresenceEvent::Down {
                node: n,
                last_seen: 50,
                at: 151
            }]
        );
        assert!(t.get(&n).is_some_and(|p| !p.reachable));
        assert_eq!(
            t.heartbeat(n, 3, 200),
            Some(PresenceEvent::Up { node: n, at: 200 })
        );
    }

    #[test]
    fn replayed_heartbeat_does_not_refresh() {
        let n = KeySigner::from_seed(1).node_id();
        let mut t = PresenceTracker::new(Duration::from_millis(100));
        t.heartbeat(n, 5, 0);
        t.heartbeat(n, 5, 90);
        assert!(t.get(&n).is_some_and(|p| p.last_seen == 0));
    }
}
