//! The swarm loop's presence driver: turns connection, dial and ping events into
//! [`PresenceTracker`] inputs, redials peers whose connection closed, and keeps connections to
//! watched peers (redial with backoff, addresses from identify, Kademlia and our own store).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agora_market::NodeId;
use libp2p::core::ConnectedPoint;
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::EventLoop;
use crate::keys::{node_id_of, peer_id_of};
use crate::{NetworkError, NetworkEvent, PresenceEvent};
use agora_wire::now_ms;

/// Longest wait between two redials of a watched peer.
const MAX_REDIAL_BACKOFF: Duration = Duration::from_secs(2);

/// Redial and heartbeat state of one watched peer.
#[derive(Debug)]
pub(super) struct Watch {
    next_dial: Instant,
    backoff: Duration,
    /// Stops this peer's heartbeat task.
    beats: CancellationToken,
    /// How many callers watch this peer (each `watch` is undone by one `unwatch`).
    watchers: usize,
}

/// Addresses and watches the presence driver keeps beside the pure tracker.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    watched: HashMap<PeerId, Watch>,
    /// When the current connection to each peer was established.
    connected_at: HashMap<PeerId, Instant>,
}

impl EventLoop {
    fn emit_presence(&self, ev: Option<PresenceEvent>) {
        if let Some(ev) = ev {
            info!(?ev, "presence change");
            self.emit(NetworkEvent::Presence(ev));
        }
    }

    /// Listen addresses peers told us (identify) or we dialled successfully go to the address
    /// book (`address_book`). Kademlia forgets an address after one failed dial; the book does
    /// not, so a restarted peer is found again.
    fn remember_addr(&mut self, peer: PeerId, addr: Multiaddr) {
        let book = &self.swarm.behaviour().book;
        if !book.contains(&peer) && book.is_full() {
            let keep: std::collections::HashSet<PeerId> = self
                .liveness
                .watched
                .keys()
                .copied()
                .chain(self.swarm.connected_peers().copied())
                .collect();
            let gone = self.swarm.behaviour_mut().book.retain(|p| keep.contains(p));
            self.stats.peers_evicted += gone as u64;
            if gone > 0 {
                info!(
                    forgotten = gone,
                    "address table full: forgot peers that left"
                );
            }
        }
        if !self.swarm.behaviour_mut().book.remember(peer, addr) {
            debug!(%peer, "address table full of connected or watched peers");
        }
    }

    /// Identify told us where `peer` listens.
    pub(super) fn on_peer_addrs(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        for a in addrs.iter().rev() {
            self.remember_addr(peer, a.clone());
        }
    }

    /// The first connection to `peer` was established.
    pub(super) fn on_peer_connected(&mut self, peer: PeerId, endpoint: &ConnectedPoint) {
        self.liveness.connected_at.insert(peer, Instant::now());
        if let ConnectedPoint::Dialer { address, .. } = endpoint {
            self.remember_addr(peer, address.clone());
        }
        if let Some(w) = self.liveness.watched.get_mut(&peer) {
            w.backoff = self.cfg.presence_interval;
        }
        if let Some(node) = node_id_of(&peer) {
            let ev = self.presence.connected(node, now_ms());
            self.emit_presence(ev);
        }
    }

    /// `peer` answered a ping or a heartbeat, after `rtt` when that was a round trip.
    pub(super) fn on_ping_ok(&mut self, peer: PeerId, rtt: Option<Duration>) {
        if let Some(node) = node_id_of(&peer) {
            let ev = self.presence.alive(node, now_ms());
            if let Some(rtt) = rtt {
                self.presence.rtt_sample(node, rtt);
            }
            self.emit_presence(ev);
        }
    }

    /// The last connection to `peer` closed. A watched peer, or any peer while we have fewer
    /// than `target_peers` connections, is redialled at once and the outcome decides presence
    /// (a killed process refuses: down). Otherwise the peer may just have trimmed its
    /// connections, so it leaves the presence table without a verdict.
    pub(super) fn on_peer_disconnected(&mut self, peer: PeerId) {
        self.liveness.connected_at.remove(&peer);
        let Some(node) = node_id_of(&peer) else {
            return;
        };
        self.presence.disconnected(node);
        let watched = self.liveness.watched.contains_key(&peer);
        let few = self.below_target();
        let was_reachable = self.presence.get(&node).is_some_and(|p| p.reachable);
        if watched || (few && was_reachable) {
            self.dial_peer(peer);
        } else if !few {
            self.presence.forget(&node);
        }
    }

    /// Whether we have fewer than `target_peers` connections (then we dial, redial bootstrap
    /// peers and redial closed ones; at or above it we trim).
    pub(super) fn below_target(&self) -> bool {
        self.swarm.network_info().num_peers() < self.cfg.target_peers
    }

    /// Keeps the connection count near `target_peers`: Kademlia lookups dial every peer they
    /// query and gossipsub keeps each of those connections open, so without trimming every node
    /// ends up connected to most of the network (54 connections per node at 100 nodes), each
    /// paying pings and lazy gossip. Closes the oldest connections above the target that carry
    /// no gossipsub mesh, no watch and are older than `trim_grace` (`discovery::to_trim`).
    pub(super) fn trim_connections(&mut self) {
        let connected = self.swarm.network_info().num_peers();
        if connected <= self.cfg.target_peers {
            return;
        }
        let mesh: std::collections::HashSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_mesh_peers()
            .copied()
            .collect();
        let now = Instant::now();
        let conns: Vec<super::discovery::Conn<PeerId>> = self
            .liveness
            .connected_at
            .iter()
            .map(|(p, at)| super::discovery::Conn {
                peer: *p,
                age: now.saturating_duration_since(*at),
                protected: mesh.contains(p) || self.liveness.watched.contains_key(p),
            })
            .collect();
        for peer in super::discovery::to_trim(&conns, self.cfg.target_peers, self.cfg.trim_grace) {
            debug!(%peer, "trimming a spare connection");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// A dial to `peer` failed (refused, timed out, or no address known).
    pub(super) fn on_dial_failed(&mut self, peer: PeerId, error: &DialError) {
        if self.swarm.is_connected(&peer) {
            return; // another connection is up; a stale address failed
        }
        debug!(%peer, %error, "dial failed");
        if let Some(node) = node_id_of(&peer) {
            let ev = self.presence.dial_failed(node, now_ms());
            self.emit_presence(ev);
        }
        if matches!(error, DialError::NoAddresses) && self.liveness.watched.contains_key(&peer) {
            // Ask the DHT where the watched peer is; the answer lands in Kademlia's table.
            self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        }
    }

    /// Dials `peer` with every address the behaviours know (the address book, then Kademlia).
    fn dial_peer(&mut self, peer: PeerId) {
        // No addresses of our own: the swarm asks every behaviour, the address book first.
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => self.on_dial_failed(peer, &e),
        }
    }

    /// Presence timer: ping timeouts, then redials of watched peers that are due.
    pub(super) fn on_presence_tick(&mut self) {
        let now = now_ms();
        for ev in self.presence.tick(now) {
            self.emit_presence(Some(ev));
        }
        let instant = Instant::now();
        let due: Vec<PeerId> = self
            .liveness
            .watched
            .iter()
            .filter(|(p, w)| w.next_dial <= instant && !self.swarm.is_connected(p))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if let Some(w) = self.liveness.watched.get_mut(&peer) {
                w.next_dial = instant + w.backoff;
                w.backoff = (w.backoff * 2).min(MAX_REDIAL_BACKOFF);
            }
            self.dial_peer(peer);
        }
    }

    /// Starts keeping a connection to `node` with fast heartbeats (presence events follow as for
    /// any direct peer). Watches are counted: components watch and unwatch independently.
    pub(super) fn watch(&mut self, node: NodeId) -> Result<(), NetworkError> {
        let peer = peer_id_of(&node).ok_or(NetworkError::BadNodeId(node))?;
        if peer == *self.swarm.local_peer_id() {
            return Err(NetworkError::BadNodeId(node));
        }
        self.presence.set_watched(node, true, now_ms());
        let backoff = self.cfg.presence_interval;
        if let Some(w) = self.liveness.watched.get_mut(&peer) {
            w.watchers += 1;
        } else {
            let beats = self.cancel.child_token();
            crate::heartbeat::beat(
                self.streams.clone(),
                peer,
                self.cfg.presence_interval,
                self.cfg.presence_timeout,
                self.rtts.get(&peer).copied(),
                self.alive_tx.clone(),
                beats.clone(),
            );
            self.liveness.watched.insert(
                peer,
                Watch {
                    next_dial: Instant::now() + backoff,
                    backoff,
                    beats,
                    watchers: 1,
                },
            );
        }
        if !self.swarm.is_connected(&peer) {
            self.dial_peer(peer);
        }
        Ok(())
    }

    /// Undoes one `watch`; after the last, stops heartbeats and redials (an open connection
    /// stays until idle).
    pub(super) fn unwatch(&mut self, node: NodeId) {
        let Some(peer) = peer_id_of(&node) else {
            return;
        };
        let Some(w) = self.liveness.watched.get_mut(&peer) else {
            return;
        };
        w.watchers = w.watchers.saturating_sub(1);
        if w.watchers == 0 {
            w.beats.cancel();
            self.liveness.watched.remove(&peer);
            self.presence.set_watched(node, false, now_ms());
        }
    }
}
