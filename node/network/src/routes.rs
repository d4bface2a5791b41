//! Routes: each inbound message goes to exactly the task that owns it (issue #14 §2), instead
//! of one broadcast channel that every task reads and that silently drops what a slow reader
//! missed.
//!
//! A task registers what it wants with [`crate::NetworkHandle::inbox`] (an [`Interest`]: gossip
//! topics, request [`Kind`]s, presence changes, connection changes) and reads its [`Inbox`].
//! Each kind of traffic has its own bound and its own policy when that bound is reached:
//!
//! - **Requests** (bounded by [`REQUEST_ROUTE_CAPACITY`] per inbox): never dropped silently. A
//!   request whose route is full is refused at once (its response channel is dropped, so the
//!   requester sees the failure now instead of after its timeout) and counted in
//!   [`crate::NetworkStats::rpc_route_busy`]; a request of a kind no task registered is refused
//!   the same way and counted in [`crate::NetworkStats::rpc_unrouted`].
//! - **Gossip** (bounded by [`GOSSIP_ROUTE_CAPACITY`] per inbox): a slow reader loses gossip,
//!   never another task's traffic. A message its route has no room for is dropped, counted per
//!   topic ([`crate::NetworkStats::gossip_route_dropped`]) and logged (the 1st, 2nd, 4th, 8th…
//!   drop at `warn`). Gossip is re-sent or re-synced by design (blocks by height, auctions by
//!   their next round), so dropping is the right policy for it.
//! - **Presence and connection changes**: never lost. They are kept per peer, coalesced (an
//!   `Up` after an `Up` replaces it; at most the last two changes of a peer are kept, so a
//!   reader that missed a flap still sees a `Down` followed by the `Up`), so the queue holds at
//!   most two entries per peer the network tracks ([`MAX_PEER_KEYS`] peers at most).
//!
//! An inbox reads peer changes first, then requests, then gossip. Dropping the inbox removes
//! its routes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use agora_market::NodeId;
use agora_wire::codec::Kind;
use libp2p::PeerId;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, warn};

use crate::quota::loud;
use crate::{NetworkEvent, NetworkStats, PresenceEvent};

/// Gossip messages one inbox may have waiting; more are dropped (counted per topic).
pub const GOSSIP_ROUTE_CAPACITY: usize = 1024;
/// Requests one inbox may have waiting; more are refused (counted) and the requester told.
pub const REQUEST_ROUTE_CAPACITY: usize = 256;
/// Most peers with presence or connection changes waiting in one inbox. The network tracks far
/// fewer (its presence and connection tables are bounded); past this a change is dropped,
/// counted in [`crate::NetworkStats::peer_events_dropped`] and logged.
pub const MAX_PEER_KEYS: usize = 16 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one task wants to receive; see [`crate::NetworkHandle::inbox`].
#[derive(Clone, Debug, Default)]
pub struct Interest {
    name: &'static str,
    topics: Vec<String>,
    requests: Vec<Kind>,
    presence: bool,
    connections: bool,
}

impl Interest {
    /// Nothing yet; `name` names the task in logs and counters.
    pub fn new(name: &'static str) -> Self {
        Interest {
            name,
            ..Default::default()
        }
    }

    /// Gossip of `topic` (the topic must also be subscribed with `subscribe` or
    /// `subscribe_judged`).
    pub fn topic(mut self, topic: &str) -> Self {
        self.topics.push(topic.to_string());
        self
    }

    /// Inbound requests whose envelope is of `kind`.
    pub fn requests(mut self, kind: Kind) -> Self {
        self.requests.push(kind);
        self
    }

    /// Presence changes ([`NetworkEvent::Presence`]).
    pub fn presence(mut self) -> Self {
        self.presence = true;
        self
    }

    /// Connection changes ([`NetworkEvent::Connected`], [`NetworkEvent::Disconnected`]).
    pub fn connections(mut self) -> Self {
        self.connections = true;
        self
    }
}

/// Whose changes a peer-change queue entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PeerKey {
    Presence(NodeId),
    Connection(PeerId),
}

fn peer_key(ev: &NetworkEvent) -> Option<(PeerKey, bool)> {
    match ev {
        NetworkEvent::Presence(PresenceEvent::Up { node, .. }) => {
            Some((PeerKey::Presence(*node), true))
        }
        NetworkEvent::Presence(PresenceEvent::Down { node, .. }) => {
            Some((PeerKey::Presence(*node), false))
        }
        NetworkEvent::Connected(p) => Some((PeerKey::Connection(*p), true)),
        NetworkEvent::Disconnected(p) => Some((PeerKey::Connection(*p), false)),
        _ => None,
    }
}

/// Presence and connection changes waiting for one inbox, coalesced per peer.
#[derive(Debug, Default)]
struct PeerQueue {
    /// Peers with changes waiting, oldest first (each at most once).
    order: VecDeque<PeerKey>,
    /// The waiting changes of each peer (one or two, alternating up and down).
    pending: HashMap<PeerKey, VecDeque<(bool, NetworkEvent)>>,
}

/// What pushing one change did.
#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    Queued,
    Coalesced,
    Dropped,
}

impl PeerQueue {
    fn push(&mut self, ev: NetworkEvent) -> Pushed {
        let Some((key, up)) = peer_key(&ev) else {
            return Pushed::Dropped;
        };
        match self.pending.get_mut(&key) {
            Some(q) => {
                if q.back().is_some_and(|(u, _)| *u == up) {
                    // Same direction as the last change waiting: the newer one replaces it.
                    q.pop_back();
                    q.push_back((up, ev));
                    return Pushed::Coalesced;
                }
                q.push_back((up, ev));
                if q.len() > 2 {
                    // down, up, down -> up, down: the reader still sees both directions.
                    q.pop_front();
                    return Pushed::Coalesced;
                }
                Pushed::Queued
            }
            None if self.order.len() >= MAX_PEER_KEYS => Pushed::Dropped,
            None => {
                self.pending.insert(key, VecDeque::from([(up, ev)]));
                self.order.push_back(key);
                Pushed::Queued
            }
        }
    }

    fn pop(&mut self) -> Option<NetworkEvent> {
        let key = self.order.pop_front()?;
        let q = self.pending.get_mut(&key)?;
        let ev = q.pop_front().map(|(_, ev)| ev);
        if q.is_empty() {
            self.pending.remove(&key);
        } else {
            self.order.push_front(key);
        }
        ev
    }
}

/// The peer-change side of one inbox: the queue and the bell that wakes its reader.
#[derive(Debug, Default)]
struct PeerChanges {
    queue: Mutex<PeerQueue>,
    bell: Notify,
}

#[derive(Debug)]
struct Route {
    name: &'static str,
    gossip: mpsc::Sender<NetworkEvent>,
    requests: mpsc::Sender<NetworkEvent>,
    peers: Arc<PeerChanges>,
    presence: bool,
    connections: bool,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    routes: BTreeMap<u64, Route>,
    topics: HashMap<String, Vec<u64>>,
    kinds: HashMap<Kind, Vec<u64>>,
    counts: RouteCounts,
}

/// The route counters, copied into [`NetworkStats`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct RouteCounts {
    gossip_dropped: BTreeMap<String, u64>,
    gossip_unrouted: u64,
    rpc_busy: u64,
    rpc_unrouted: u64,
    peer_coalesced: u64,
    peer_dropped: u64,
}

/// Why an inbound request was not routed (the event loop refuses it).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RequestRefused {
    /// The owning task's route is full.
    Busy(&'static str),
    /// No task registered this kind.
    Unrouted,
}

/// Every registered route; shared by the handles (registration) and the swarm task (delivery).
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    table: Mutex<Table>,
}

impl RouteTable {
    pub(crate) fn register(self: &Arc<Self>, interest: Interest) -> Inbox {
        let (gossip_tx, gossip_rx) = mpsc::channel(GOSSIP_ROUTE_CAPACITY);
        let (req_tx, req_rx) = mpsc::channel(REQUEST_ROUTE_CAPACITY);
        let peers = Arc::new(PeerChanges::default());
        let mut t = lock(&self.table);
        let id = t.next_id;
        t.next_id += 1;
        t.routes.insert(
            id,
            Route {
                name: interest.name,
                gossip: gossip_tx,
                requests: req_tx,
                peers: peers.clone(),
                presence: interest.presence,
                connections: interest.connections,
            },
        );
        for topic in interest.topics {
            t.topics.entry(topic).or_default().push(id);
        }
        for kind in interest.requests {
            t.kinds.entry(kind).or_default().push(id);
        }
        drop(t);
        Inbox {
            id,
            table: self.clone(),
            gossip: gossip_rx,
            requests: req_rx,
            peers,
        }
    }

    fn add_topic(&self, id: u64, topic: &str) {
        let mut t = lock(&self.table);
        if !t.routes.contains_key(&id) {
            return;
        }
        let ids = t.topics.entry(topic.to_string()).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    fn remove(&self, id: u64) {
        let mut t = lock(&self.table);
        t.routes.remove(&id);
        t.topics.retain(|_, ids| {
            ids.retain(|i| *i != id);
            !ids.is_empty()
        });
        t.kinds.retain(|_, ids| {
            ids.retain(|i| *i != id);
            !ids.is_empty()
        });
    }

    /// Delivers a gossip message to every inbox that wants its topic; `true` if at least one
    /// took it. A full inbox loses it (counted per topic, logged quietly).
    pub(crate) fn gossip(&self, topic: &str, ev: NetworkEvent) -> bool {
        let mut t = lock(&self.table);
        let t = &mut *t;
        let Some(ids) = t.topics.get(topic) else {
            t.counts.gossip_unrouted += 1;
            return false;
        };
        let mut taken = false;
        for id in ids {
            let Some(route) = t.routes.get(id) else {
                continue;
            };
            match route.gossip.try_send(ev.clone()) {
                Ok(()) => taken = true,
                Err(_) => {
                    let n = t
                        .counts
                        .gossip_dropped
                        .entry(topic.to_string())
                        .or_insert(0);
                    *n += 1;
                    if loud(*n) {
                        warn!(%topic, task = route.name, dropped = *n, "gossip dropped: the task that reads this topic is behind");
                    } else {
                        debug!(%topic, task = route.name, "gossip dropped: route full");
                    }
                }
            }
        }
        taken
    }

    /// Hands an inbound request to the task that registered its kind (the first of them with
    /// room, so a second registration of a kind shares its load).
    pub(crate) fn request(&self, kind: Kind, ev: NetworkEvent) -> Result<(), RequestRefused> {
        let mut t = lock(&self.table);
        let t = &mut *t;
        let Some(ids) = t.kinds.get(&kind).filter(|ids| !ids.is_empty()) else {
            t.counts.rpc_unrouted += 1;
            return Err(RequestRefused::Unrouted);
        };
        let mut ev = ev;
        let mut name = "";
        for id in ids {
            let Some(route) = t.routes.get(id) else {
                continue;
            };
            name = route.name;
            match route.requests.try_send(ev) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(back))
                | Err(mpsc::error::TrySendError::Closed(back)) => ev = back,
            }
        }
        t.counts.rpc_busy += 1;
        Err(RequestRefused::Busy(name))
    }

    /// Queues a presence or connection change for every inbox that wants it; never lost while
    /// fewer than [`MAX_PEER_KEYS`] peers have changes waiting.
    pub(crate) fn peer_change(&self, ev: NetworkEvent) {
        let presence = matches!(ev, NetworkEvent::Presence(_));
        let mut t = lock(&self.table);
        let t = &mut *t;
        for route in t.routes.values() {
            if !(if presence {
                route.presence
            } else {
                route.connections
            }) {
                continue;
            }
            let pushed = lock(&route.peers.queue).push(ev.clone());
            match pushed {
                Pushed::Queued => {}
                Pushed::Coalesced => t.counts.peer_coalesced += 1,
                Pushed::Dropped => {
                    t.counts.peer_dropped += 1;
                    if loud(t.counts.peer_dropped) {
                        warn!(
                            task = route.name,
                            dropped = t.counts.peer_dropped,
                            ?ev,
                            "peer change dropped: too many peers waiting"
                        );
                    }
                }
            }
            route.peers.bell.notify_one();
        }
    }

    pub(crate) fn fill(&self, stats: &mut NetworkStats) {
        let t = lock(&self.table);
        let c = &t.counts;
        stats.gossip_route_dropped = c.gossip_dropped.values().sum();
        stats.gossip_route_dropped_by_topic = c.gossip_dropped.clone();
        stats.gossip_unrouted = c.gossip_unrouted;
        stats.rpc_route_busy = c.rpc_busy;
        stats.rpc_unrouted = c.rpc_unrouted;
        stats.peer_events_coalesced = c.peer_coalesced;
        stats.peer_events_dropped = c.peer_dropped;
    }
}

/// One task's inbound traffic; see the module doc for the policy of each kind. Dropping it
/// removes its routes.
#[derive(Debug)]
pub struct Inbox {
    id: u64,
    table: Arc<RouteTable>,
    gossip: mpsc::Receiver<NetworkEvent>,
    requests: mpsc::Receiver<NetworkEvent>,
    peers: Arc<PeerChanges>,
}

impl Inbox {
    /// The next event: peer changes first, then requests, then gossip. Cancel-safe (nothing is
    /// lost if the future is dropped before it completes).
    pub async fn recv(&mut self) -> NetworkEvent {
        loop {
            if let Some(ev) = lock(&self.peers.queue).pop() {
                return ev;
            }
            tokio::select! {
                biased;
                _ = self.peers.bell.notified() => continue,
                Some(ev) = self.requests.recv() => return ev,
                Some(ev) = self.gossip.recv() => return ev,
            }
        }
    }

    /// The next event already waiting, in the same order as [`Self::recv`], without waiting.
    pub fn try_recv(&mut self) -> Option<NetworkEvent> {
        if let Some(ev) = lock(&self.peers.queue).pop() {
            return Some(ev);
        }
        self.requests
            .try_recv()
            .or_else(|_| self.gossip.try_recv())
            .ok()
    }

    /// Routes gossip of one more topic here (for topics chosen after start-up, such as the
    /// market's regions).
    pub fn add_topic(&self, topic: &str) {
        self.table.add_topic(self.id, topic);
    }

    /// A handle that adds topics to this inbox from elsewhere in its task.
    pub fn topics(&self) -> TopicRoutes {
        TopicRoutes {
            id: self.id,
            table: self.table.clone(),
        }
    }
}

/// Adds gossip topics to one inbox (see [`Inbox::topics`]); does nothing once the inbox is
/// dropped.
#[derive(Clone, Debug)]
pub struct TopicRoutes {
    id: u64,
    table: Arc<RouteTable>,
}

impl TopicRoutes {
    /// Routes gossip of `topic` to the inbox.
    pub fn add(&self, topic: &str) {
        self.table.add_topic(self.id, topic);
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
