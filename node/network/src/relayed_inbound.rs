//! Who may reach this node through a relay (THREATS N20, review 9 H1). libp2p's relay server
//! counts every circuit a peer is part of, at either end, against that peer's own circuit
//! limit, so the relayed connections a node behind NAT accepts decide whether the relay still
//! lets it open circuits of its own. Left open, anyone could fill a chosen edge's count by
//! opening circuits to it. This behaviour accepts no relayed connection from a stranger
//! (identities are free; a funded account, a trusted peer or the genesis committee is not). A
//! refused connection is dropped at once, so the relay frees its circuit; the swarm reports it
//! as an `IncomingConnectionError` and the loop counts it (`relayed_inbound_refused`). Others'
//! relayed connections, like direct ones, are left to the connection limits (4 per peer): a
//! limit of one relayed connection per peer locked out a peer whose old circuit outlived its
//! silent death (power cut, NAT rebinding) until the relay dropped it, up to 30 min (review 10
//! M1), and funded keys are bounded by their cost.

use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

use crate::quota::Strangers;

/// Whether an address goes through a circuit relay.
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Why a relayed inbound connection was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// The remote peer is a stranger.
    #[error("relayed connection from a stranger (no funded account, not trusted)")]
    Stranger,
}

/// The gate: stateless, it asks the stranger classes at each relayed connection.
#[derive(Debug)]
pub(crate) struct RelayedInbound {
    strangers: Strangers,
}

impl RelayedInbound {
    /// A gate that asks `strangers` who is one (the classes the ledger and config fill).
    pub(crate) fn new(strangers: Strangers) -> RelayedInbound {
        RelayedInbound { strangers }
    }

    /// Whether `peer` may open a relayed connection to us.
    fn admit(&self, peer: &PeerId) -> Result<(), Refused> {
        if self.strangers.is_stranger(peer) {
            Err(Refused::Stranger)
        } else {
            Ok(())
        }
    }
}

impl NetworkBehaviour for RelayedInbound {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if is_relayed(local_addr)
            && let Err(why) = self.admit(&peer)
        {
            return Err(ConnectionDenied::new(why));
        }
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

    fn on_swarm_event(&mut self, _: FromSwarm) {}

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

    /// Our address on a relay: `<relay>/p2p-circuit`.
    fn circuit() -> Multiaddr {
        let relay = PeerId::random();
        format!("/ip4/203.0.113.2/tcp/4001/p2p/{relay}/p2p-circuit")
            .parse()
            .unwrap()
    }

    fn direct() -> Multiaddr {
        "/ip4/10.0.0.1/tcp/4001".parse().unwrap()
    }

    /// Whether the gate accepts an inbound connection `id` from `peer` at our `local` address.
    fn inbound(gate: &mut RelayedInbound, id: usize, peer: PeerId, local: Multiaddr) -> bool {
        let send_back: Multiaddr = format!("/p2p/{peer}").parse().unwrap();
        let id = ConnectionId::new_unchecked(id);
        gate.handle_established_inbound_connection(id, peer, &local, &send_back)
            .is_ok()
    }

    /// Review 9 H1: a stranger's relayed connection is refused (so its circuits to us do not
    /// count against our own at the relay), a direct one is not; a funded peer or a member of
    /// the genesis committee gets relayed connections, more than one (review 10 M1: a peer
    /// whose old circuit outlived its silent death must reach us again at once). Mutants —
    /// the gate admits everything: the stranger's circuit passes; strangers judged on direct
    /// connections too: the stranger's direct one is refused.
    #[test]
    fn strangers_reach_us_through_no_relay_and_others_do() {
        let (funded, member, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut budget = crate::quota::StrangerBudget::new(1, 1, 1, 1).committee([member]);
        let mut gate = RelayedInbound::new(budget.classes());
        // Nobody vouched for yet (no ledger): nobody is a stranger.
        assert!(inbound(&mut gate, 1, stranger, circuit()));
        budget.vouch([funded]);
        assert!(!inbound(&mut gate, 2, stranger, circuit()));
        assert!(inbound(&mut gate, 3, stranger, direct()));
        for peer in [funded, member] {
            assert!(inbound(&mut gate, 4, peer, circuit()));
            assert!(
                inbound(&mut gate, 5, peer, circuit()),
                "a second circuit too"
            );
            assert!(inbound(&mut gate, 6, peer, direct()));
        }
    }
}
