//! The swarm loop's NAT driver: AutoNAT's verdict, relay reservations on known relays (the
//! bootstrap peers that serve circuit relay v2), hole-punch (DCUtR) outcomes, the relay server's
//! counters, and which connections are relayed.
//!
//! A node that AutoNAT finds private reserves a slot on up to [`MAX_RELAYS`] bootstrap relays
//! and listens on `<relay>/p2p-circuit`; identify pushes that address to its peers, so others
//! (through Kademlia) dial it through the relay, and DCUtR then tries a direct connection. Once
//! the punch succeeds the relayed connection to that peer is closed, so traffic no longer costs
//! the relay anything.

use std::collections::{HashMap, HashSet};

use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, autonat, dcutr, relay};
use tracing::{debug, info, warn};

use super::EventLoop;

/// Most relays this node holds a reservation on at once.
pub(super) const MAX_RELAYS: usize = 2;

/// NAT state beside the swarm.
#[derive(Debug, Default)]
pub(super) struct NatState {
    /// AutoNAT's latest verdict.
    pub(super) status: Option<autonat::NatStatus>,
    /// Bootstrap peers that told us (identify) they serve relay v2, and the address we reach
    /// them at. Bounded by the bootstrap list.
    relays: HashMap<PeerId, Multiaddr>,
    /// Our reservation listeners, by relay.
    reservations: HashMap<ListenerId, PeerId>,
    /// Relays whose reservation was accepted and is still open.
    held: HashSet<PeerId>,
    /// Every open connection and its remote address (bounded by the connection limits).
    pub(super) conns: HashMap<PeerId, Vec<(ConnectionId, Multiaddr)>>,
}

pub(crate) use crate::relayed_inbound::is_relayed;

/// The address that says how a connection reaches its peer: the remote address, except for a
/// circuit the peer opened to us through our relay reservation, whose remote address is only
/// `/p2p/<peer>` (libp2p's relay client knows no more), so the circuit is told by our local
/// address, `<relay>/p2p-circuit`. Without this, an inbound relayed connection counted as
/// direct.
pub(super) fn path_addr(endpoint: &ConnectedPoint) -> &Multiaddr {
    match endpoint {
        ConnectedPoint::Listener { local_addr, .. } if is_relayed(local_addr) => local_addr,
        other => other.get_remote_address(),
    }
}

impl NatState {
    /// (direct, relayed): whether some connection to `peer` is direct, and some relayed.
    pub(super) fn paths(&self, peer: &PeerId) -> (bool, bool) {
        let conns = self.conns.get(peer).map(Vec::as_slice).unwrap_or_default();
        (
            conns.iter().any(|(_, a)| !is_relayed(a)),
            conns.iter().any(|(_, a)| is_relayed(a)),
        )
    }

    pub(super) fn status_text(&self) -> &'static str {
        match self.status {
            Some(autonat::NatStatus::Public(_)) => "public",
            Some(autonat::NatStatus::Private) => "private",
            _ => "unknown",
        }
    }

    fn is_private(&self) -> bool {
        matches!(self.status, Some(autonat::NatStatus::Private))
    }
}

impl EventLoop {
    /// A connection opened (any, not only the first to its peer).
    /// A direct connection replaces a relayed one as the peer's shown address (`agora peers`).
    pub(super) fn nat_connection_opened(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        addr: &Multiaddr,
    ) {
        if is_relayed(addr) {
            info!(%peer, %addr, "relayed connection opened");
        }
        self.nat
            .conns
            .entry(peer)
            .or_default()
            .push((id, addr.clone()));
        if !is_relayed(addr)
            && let Some(shown) = self.peer_addrs.get_mut(&peer)
            && is_relayed(shown)
        {
            *shown = addr.clone();
        }
    }

    /// A connection closed; if the peer's shown address was that connection's (the relayed one
    /// after a hole punch), it becomes a remaining connection's, direct first.
    pub(super) fn nat_connection_closed(&mut self, peer: PeerId, id: ConnectionId) {
        if let Some(list) = self.nat.conns.get_mut(&peer) {
            list.retain(|(c, _)| *c != id);
            if list.is_empty() {
                self.nat.conns.remove(&peer);
            } else if let Some(shown) = self.peer_addrs.get_mut(&peer)
                && !list.iter().any(|(_, a)| a == shown)
                && let Some((_, a)) = list
                    .iter()
                    .find(|(_, a)| !is_relayed(a))
                    .or_else(|| list.first())
            {
                *shown = a.clone();
            }
        }
        if self.nat.relays.contains_key(&peer) && !self.swarm.is_connected(&peer) {
            self.nat.held.remove(&peer);
        }
    }

    /// Whether `peer` is one of our bootstrap peers.
    fn is_bootstrap(&self, peer: &PeerId) -> bool {
        self.cfg.bootstrap.iter().any(|a| {
            a.iter()
                .any(|p| matches!(p, Protocol::P2p(id) if id == *peer))
        })
    }

    /// Identify told us what `peer` speaks. Bootstrap peers are our AutoNAT servers, and those
    /// that serve relay v2 are our relays.
    pub(super) fn nat_on_identify(&mut self, peer: PeerId, protocols: &[libp2p::StreamProtocol]) {
        if !self.is_bootstrap(&peer) {
            return;
        }
        let Some(addr) = self
            .peer_addrs
            .get(&peer)
            .filter(|a| !is_relayed(a))
            .cloned()
        else {
            return;
        };
        self.swarm
            .behaviour_mut()
            .autonat
            .add_server(peer, Some(addr.clone()));
        if protocols.contains(&relay::HOP_PROTOCOL_NAME) && !self.nat.relays.contains_key(&peer) {
            info!(%peer, %addr, "bootstrap peer serves circuit relay v2");
            self.nat.relays.insert(peer, addr);
            self.reserve_relays();
        }
    }

    /// Keeps up to [`MAX_RELAYS`] reservations while AutoNAT finds us private (called on every
    /// status change, new relay, lost reservation and redial tick).
    pub(super) fn reserve_relays(&mut self) {
        if !self.nat.is_private() {
            return;
        }
        let active: HashSet<PeerId> = self.nat.reservations.values().copied().collect();
        let mut count = active.len();
        let candidates: Vec<(PeerId, Multiaddr)> = self
            .nat
            .relays
            .iter()
            .filter(|(p, _)| !active.contains(p))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (peer, addr) in candidates {
            if count >= MAX_RELAYS {
                break;
            }
            let circuit = without_p2p(addr)
                .with(Protocol::P2p(peer))
                .with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    info!(relay = %peer, addr = %circuit, "reserving a relay slot");
                    self.nat.reservations.insert(id, peer);
                    count += 1;
                }
                Err(e) => warn!(relay = %peer, error = %e, "cannot reserve a relay slot"),
            }
        }
    }

    /// Gives the reservations back (AutoNAT found us public).
    fn release_relays(&mut self) {
        for (id, relay) in std::mem::take(&mut self.nat.reservations) {
            info!(%relay, "releasing relay slot: this node is publicly reachable");
            self.swarm.remove_listener(id);
        }
        self.nat.held.clear();
    }

    /// A listener closed: if it was a reservation, try again (on this or the next relay).
    pub(super) fn nat_listener_closed(&mut self, id: ListenerId) {
        if let Some(relay) = self.nat.reservations.remove(&id) {
            self.nat.held.remove(&relay);
            info!(%relay, "relay reservation closed");
        }
    }

    pub(super) fn on_autonat(&mut self, event: autonat::Event) {
        if let autonat::Event::StatusChanged { old, new } = event {
            info!(?old, ?new, "AutoNAT status changed");
            let public = matches!(new, autonat::NatStatus::Public(_));
            self.nat.status = Some(new);
            if public {
                self.release_relays();
            } else {
                self.reserve_relays();
            }
        }
    }

    pub(super) fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if !renewal {
                    info!(relay = %relay_peer_id, "relay reservation accepted");
                }
                self.nat.held.insert(relay_peer_id);
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                debug!(relay = %relay_peer_id, "outbound relayed circuit established");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                debug!(peer = %src_peer_id, "inbound relayed circuit established");
            }
        }
    }

    pub(super) fn on_relay_server(&mut self, event: relay::Event) {
        let s = &mut self.stats;
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                s.relay_reservations_accepted += 1;
                debug!(peer = %src_peer_id, "relay: reservation accepted");
            }
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                s.relay_reservations_denied += 1;
                if self.refused("relay reservation") {
                    warn!(peer = %src_peer_id, ?status, "relay: reservation refused (limit or rate)");
                }
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                s.relay_circuits_accepted += 1;
                s.relay_circuits_open += 1;
                debug!(src = %src_peer_id, dst = %dst_peer_id, "relay: circuit accepted");
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                s.relay_circuits_denied += 1;
                if self.refused("relay circuit") {
                    warn!(src = %src_peer_id, dst = %dst_peer_id, ?status, "relay: circuit refused (limit, rate or no reservation)");
                }
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                s.relay_circuits_open = s.relay_circuits_open.saturating_sub(1);
                debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "relay: circuit closed");
            }
            _ => {}
        }
    }

    /// A hole punch ended: on success the relayed connections to that peer are closed.
    pub(super) fn on_dcutr(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(direct) => {
                self.stats.hole_punch_succeeded += 1;
                info!(%peer, "hole punch succeeded: direct connection");
                let relayed: Vec<ConnectionId> = self
                    .nat
                    .conns
                    .get(&peer)
                    .map(|l| {
                        l.iter()
                            .filter(|(c, a)| is_relayed(a) && *c != direct)
                            .map(|(c, _)| *c)
                            .collect()
                    })
                    .unwrap_or_default();
                for c in relayed {
                    self.swarm.close_connection(c);
                }
            }
            Err(e) => {
                self.stats.hole_punch_failed += 1;
                info!(%peer, error = %e, "hole punch failed: staying on the relay");
            }
        }
    }

    /// The NAT fields of the stats.
    pub(super) fn nat_fill(&self, stats: &mut crate::NetworkStats) {
        stats.nat_status = self.nat.status_text().to_string();
        stats.relay_reservations_held = self.nat.held.len() as u64;
    }
}

/// `addr` without a trailing `/p2p/<id>`.
fn without_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_addresses_are_recognised() {
        let relay: Multiaddr =
            "/ip4/203.0.113.2/tcp/4001/p2p/12D3KooWGzJ8bmpwYcqVqyYCyKxxW8o3Dpx3hQd8rSxsN3wNMCFR/p2p-circuit"
                .parse()
                .expect("multiaddr");
        assert!(is_relayed(&relay));
        let direct: Multiaddr = "/ip4/203.0.113.2/udp/4001/quic-v1"
            .parse()
            .expect("multiaddr");
        assert!(!is_relayed(&direct));
    }

    #[test]
    fn an_inbound_circuit_is_relayed_although_its_remote_address_is_only_a_peer_id() {
        let peer: PeerId = "12D3KooWGzJ8bmpwYcqVqyYCyKxxW8o3Dpx3hQd8rSxsN3wNMCFR"
            .parse()
            .expect("peer id");
        let circuit: Multiaddr =
            "/ip4/203.0.113.2/tcp/4001/p2p/12D3KooWGzJ8bmpwYcqVqyYCyKxxW8o3Dpx3hQd8rSxsN3wNMCFR/p2p-circuit"
                .parse()
                .expect("multiaddr");
        let inbound = ConnectedPoint::Listener {
            local_addr: circuit.clone(),
            send_back_addr: Multiaddr::empty().with(Protocol::P2p(peer)),
        };
        assert!(is_relayed(path_addr(&inbound)));
        let direct: Multiaddr = "/ip4/203.0.113.11/tcp/4001".parse().expect("multiaddr");
        let inbound_direct = ConnectedPoint::Listener {
            local_addr: "/ip4/192.168.1.2/tcp/4001".parse().expect("multiaddr"),
            send_back_addr: direct.clone(),
        };
        assert_eq!(path_addr(&inbound_direct), &direct);
        let outbound = ConnectedPoint::Dialer {
            address: circuit.with(Protocol::P2p(peer)),
            role_override: libp2p::core::Endpoint::Dialer,
            port_use: libp2p::core::transport::PortUse::Reuse,
        };
        assert!(is_relayed(path_addr(&outbound)));
    }

    #[test]
    fn trailing_peer_id_is_removed_once() {
        let a: Multiaddr =
            "/ip4/203.0.113.2/tcp/4001/p2p/12D3KooWGzJ8bmpwYcqVqyYCyKxxW8o3Dpx3hQd8rSxsN3wNMCFR"
                .parse()
                .expect("multiaddr");
        assert_eq!(
            without_p2p(a).to_string(),
            "/ip4/203.0.113.2/tcp/4001".to_string()
        );
    }
}
