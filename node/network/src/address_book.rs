//! Where peers listen, as far as we know: the addresses a peer announced (identify, filtered by
//! `discovery::announce_worthy`) and the ones we dialled it at successfully. The book is a
//! behaviour of its own so that it answers every dial the swarm makes for a peer — a request,
//! a bitswap stream, a watched peer's redial — not only ours.
//!
//! Why not libp2p's: identify's own peer cache keeps every listen address a peer announces. A
//! node that listens on `0.0.0.0` announces `127.0.0.1` too, and on another host that address
//! is the dialler itself: the dial connects to ourselves, fails with a wrong peer id and ends
//! the whole dial, so the good address is never tried. Under Shadow (every simulated host
//! listens on the same port) that made ~1 bid in 8 undeliverable once the bidder's connection
//! to the customer had been trimmed and Kademlia's full bucket did not hold the customer. The
//! node turns identify's cache off and keeps this one instead. An address that reaches a
//! different peer than expected is struck out at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, DialError, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

/// Most addresses remembered per peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;
/// Most peers whose addresses are remembered; the owner makes room by forgetting peers that are
/// neither connected nor watched ([`AddressBook::retain`]).
pub const MAX_ADDR_PEERS: usize = 2048;

#[derive(Debug, Default)]
pub struct AddressBook {
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// Dials of an address that reached another peer (each one struck out, if it was here).
    struck: u64,
}

impl AddressBook {
    /// `peer`'s addresses, newest first.
    pub fn get(&self, peer: &PeerId) -> &[Multiaddr] {
        self.addrs.get(peer).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.addrs.contains_key(peer)
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Whether a new peer would find room.
    pub fn is_full(&self) -> bool {
        self.addrs.len() >= MAX_ADDR_PEERS
    }

    /// Puts `addr` first among `peer`'s addresses (it is the newest), keeping at most
    /// [`MAX_ADDRS_PER_PEER`]. A new peer while the book is full is not added: `false`.
    pub fn remember(&mut self, peer: PeerId, addr: Multiaddr) -> bool {
        if !self.addrs.contains_key(&peer) && self.is_full() {
            return false;
        }
        let list = self.addrs.entry(peer).or_default();
        list.retain(|a| a != &addr);
        list.insert(0, addr);
        list.truncate(MAX_ADDRS_PER_PEER);
        true
    }

    /// Forgets every peer `keep` says no to; how many were forgotten.
    pub fn retain(&mut self, mut keep: impl FnMut(&PeerId) -> bool) -> usize {
        let before = self.addrs.len();
        self.addrs.retain(|p, _| keep(p));
        before - self.addrs.len()
    }

    /// Strikes out `addr` for `peer` (a dial there led to somebody else) and counts the dial,
    /// whichever behaviour offered the address (the owner strikes it from the DHT's table).
    pub fn strike(&mut self, peer: &PeerId, addr: &Multiaddr) {
        self.struck += 1;
        let Some(list) = self.addrs.get_mut(peer) else {
            return;
        };
        // A dialled address carries `/p2p/<peer>`; the book's may not.
        let bare = without_p2p(addr);
        list.retain(|a| a != addr && Some(a) != bare.as_ref());
        if list.is_empty() {
            self.addrs.remove(peer);
        }
    }

    /// Dials so far whose address reached another peer than the one dialled.
    pub fn struck(&self) -> u64 {
        self.struck
    }
}

/// `addr` without a trailing `/p2p/<peer>`, if it had one.
pub(crate) fn without_p2p(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut a = addr.clone();
    match a.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(_)) => Some(a),
        _ => None,
    }
}

impl NetworkBehaviour for AddressBook {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        maybe_peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(maybe_peer
            .map(|p| self.get(&p).to_vec())
            .unwrap_or_default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::DialFailure(f) = event
            && let (Some(peer), DialError::WrongPeerId { address, .. }) = (f.peer_id, f.error)
        {
            self.strike(&peer, address);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_newest_address_comes_first_and_a_peer_keeps_a_few() {
        let mut b = AddressBook::default();
        let p = PeerId::random();
        assert!(b.remember(p, a("/ip4/10.0.0.1/tcp/1")));
        assert!(b.remember(p, a("/ip4/10.0.0.2/tcp/1")));
        assert!(b.remember(p, a("/ip4/10.0.0.1/tcp/1")));
        assert_eq!(
            b.get(&p),
            &[a("/ip4/10.0.0.1/tcp/1"), a("/ip4/10.0.0.2/tcp/1")]
        );
        for i in 0..20 {
            b.remember(p, a(&format!("/ip4/10.0.1.{i}/tcp/1")));
        }
        assert_eq!(b.get(&p).len(), MAX_ADDRS_PER_PEER);
        assert_eq!(b.get(&p)[0], a("/ip4/10.0.1.19/tcp/1"));
    }

    #[test]
    fn a_full_book_takes_no_new_peer_until_the_owner_makes_room() {
        let mut b = AddressBook::default();
        let peers: Vec<PeerId> = (0..MAX_ADDR_PEERS).map(|_| PeerId::random()).collect();
        for p in &peers {
            assert!(b.remember(*p, a("/ip4/10.0.0.1/tcp/1")));
        }
        let late = PeerId::random();
        assert!(!b.remember(late, a("/ip4/10.0.0.9/tcp/1")));
        // A known peer still learns addresses.
        assert!(b.remember(peers[0], a("/ip4/10.0.0.2/tcp/1")));
        assert_eq!(b.retain(|p| p == &peers[0]), MAX_ADDR_PEERS - 1);
        assert!(b.remember(late, a("/ip4/10.0.0.9/tcp/1")));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn an_address_that_reached_someone_else_is_struck_out_and_offered_no_more() {
        let mut b = AddressBook::default();
        let p = PeerId::random();
        b.remember(p, a("/ip4/11.0.0.40/tcp/4001"));
        b.remember(p, a("/ip4/127.0.0.1/tcp/4001"));
        // The swarm reports the dialled address with the expected peer appended.
        let dialled = a("/ip4/127.0.0.1/tcp/4001").with_p2p(p).unwrap();
        b.strike(&p, &dialled);
        assert_eq!(b.get(&p), &[a("/ip4/11.0.0.40/tcp/4001")]);
        assert_eq!(b.struck(), 1);
        let offered = b
            .handle_pending_outbound_connection(
                ConnectionId::new_unchecked(1),
                Some(p),
                &[],
                Endpoint::Dialer,
            )
            .unwrap();
        assert_eq!(offered, vec![a("/ip4/11.0.0.40/tcp/4001")]);
        // Striking the last address forgets the peer; an unknown peer is offered nothing.
        b.strike(&p, &a("/ip4/11.0.0.40/tcp/4001"));
        assert!(!b.contains(&p));
        assert!(b.get(&p).is_empty());
        // A wrong-peer dial at an address another behaviour offered (the DHT's) counts too.
        b.strike(&PeerId::random(), &a("/ip4/127.0.0.1/tcp/4001"));
        assert_eq!(b.struck(), 3);
    }
}
