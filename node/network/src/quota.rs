//! Per-peer limits on inbound traffic (issue #13.9): concurrent raw streams per protocol
//! ([`StreamQuota`]) and request rates ([`RateLimiter`]). A remote can hold at most its own
//! share; a refusal is counted (in [`crate::NetworkStats`]) and logged with the peer.
//!
//! Both maps are keyed by `PeerId` and hold an entry only while it matters: a stream quota
//! only while the peer holds a permit (so never more than `total` entries), a rate limiter
//! until the peer disconnects ([`RateLimiter::forget`]); and at most `max_peers` entries.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use libp2p::PeerId;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Whether a refusal should be logged at `warn` (the 1st, 2nd, 4th, 8th… of a counter), so a
/// flood cannot turn the log into a second flood; every other refusal is logged at `debug`.
pub(crate) fn loud(count: u64) -> bool {
    count.is_power_of_two()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
struct QuotaInner {
    name: &'static str,
    per_peer: usize,
    total: usize,
    /// Who is a stranger, and the most streams strangers may hold together.
    strangers: Option<(Strangers, usize)>,
    held: Mutex<Held>,
    refused: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Held {
    by_peer: HashMap<PeerId, PeerHold>,
    all: usize,
    strangers: usize,
}

/// What one peer holds of a quota: its streams, and the token its permits hand their
/// stream's task, cancelled when the peer's last connection closes.
#[derive(Debug, Default)]
struct PeerHold {
    streams: usize,
    gone: CancellationToken,
}

/// Limits the inbound streams of one protocol held open at once: `per_peer` for each remote,
/// `total` for all of them and, with [`StreamQuota::with_strangers`], a share of the total for
/// all strangers together (THREATS N7: identities are free, so per-peer shares alone let
/// enough of them fill the total and lock out funded peers). Cloneable (one quota shared by
/// every accept loop of a protocol family, e.g. the four bitswap versions).
#[derive(Clone, Debug)]
pub struct StreamQuota {
    inner: Arc<QuotaInner>,
}

/// One admitted stream; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamPermit {
    inner: Arc<QuotaInner>,
    peer: PeerId,
    stranger: bool,
    gone: CancellationToken,
}

impl StreamPermit {
    /// Cancelled when the peer's last connection closes (THREATS N14): the stream's task
    /// ends then and frees the slot. Without it a stream on a connection this node closed
    /// cleanly (a trim past `target_peers`, an operator's `disconnect`) is never woken by
    /// yamux 0.14 (rust-yamux #216) and holds its slot until the protocol's idle timeout.
    pub fn peer_gone(&self) -> CancellationToken {
        self.gone.clone()
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut held = lock(&self.inner.held);
        if let Some(h) = held.by_peer.get_mut(&self.peer) {
            h.streams = h.streams.saturating_sub(1);
            if h.streams == 0 {
                held.by_peer.remove(&self.peer);
            }
            held.all = held.all.saturating_sub(1);
            if self.stranger {
                held.strangers = held.strangers.saturating_sub(1);
            }
        }
    }
}

impl StreamQuota {
    /// A quota named `name` (for logs) counting refusals in `refused`.
    pub(crate) fn new(
        name: &'static str,
        per_peer: usize,
        total: usize,
        refused: Arc<AtomicU64>,
    ) -> StreamQuota {
        StreamQuota {
            inner: Arc::new(QuotaInner {
                name,
                per_peer: per_peer.max(1),
                total: total.max(1),
                strangers: None,
                held: Mutex::new(Held::default()),
                refused,
            }),
        }
    }

    /// The same quota, where strangers (as `strangers` says, at each admission) together hold
    /// at most `share` streams. Set before the first admission (a quota already cloned keeps
    /// its settings).
    pub(crate) fn with_strangers(mut self, strangers: Strangers, share: usize) -> StreamQuota {
        let settable = Arc::get_mut(&mut self.inner).map(|q| {
            q.strangers = Some((strangers, share.max(1)));
        });
        debug_assert!(
            settable.is_some(),
            "with_strangers on a quota already cloned or registered: its share would be lost"
        );
        self
    }

    /// Admits one more stream from `peer`, or refuses it (counted and logged) when the peer
    /// already holds `per_peer`, everyone together `total`, or, for a stranger, all strangers
    /// together their share.
    pub fn try_acquire(&self, peer: PeerId) -> Option<StreamPermit> {
        let q = &self.inner;
        let stranger = q
            .strangers
            .as_ref()
            .is_some_and(|(s, _)| s.is_stranger(&peer));
        let mut held = lock(&q.held);
        let mine = held.by_peer.get(&peer).map_or(0, |h| h.streams);
        let strangers_full = stranger
            && q.strangers
                .as_ref()
                .is_some_and(|(_, share)| held.strangers >= *share);
        if mine >= q.per_peer || held.all >= q.total || strangers_full {
            drop(held);
            let n = q.refused.fetch_add(1, Ordering::Relaxed) + 1;
            let why = if mine >= q.per_peer {
                "per-peer"
            } else if strangers_full {
                "strangers"
            } else {
                "total"
            };
            if loud(n) {
                warn!(%peer, protocol = q.name, limit = why, refused = n, "inbound stream refused: quota full");
            } else {
                debug!(%peer, protocol = q.name, limit = why, "inbound stream refused: quota full");
            }
            return None;
        }
        let hold = held.by_peer.entry(peer).or_default();
        hold.streams += 1;
        let gone = hold.gone.clone();
        held.all += 1;
        if stranger {
            held.strangers += 1;
        }
        Some(StreamPermit {
            inner: self.inner.clone(),
            peer,
            stranger,
            gone,
        })
    }

    /// `peer`'s last connection closed: every permit it holds hears it
    /// ([`StreamPermit::peer_gone`]); permits it takes later get a fresh token.
    fn left(inner: &QuotaInner, peer: &PeerId) {
        if let Some(h) = lock(&inner.held).by_peer.get_mut(peer) {
            std::mem::take(&mut h.gone).cancel();
        }
    }

    /// Streams `peer` holds now.
    pub fn held_by(&self, peer: &PeerId) -> usize {
        lock(&self.inner.held)
            .by_peer
            .get(peer)
            .map_or(0, |h| h.streams)
    }

    /// Peers holding at least one stream (the map's size).
    pub fn peers(&self) -> usize {
        lock(&self.inner.held).by_peer.len()
    }
}

/// Every stream quota of one node, so the swarm's loop can tell them all when a peer's last
/// connection closed (each quota's permits hear it: [`StreamPermit::peer_gone`]). Holds them weakly: a quota nobody uses any
/// more is pruned at the next registration.
#[derive(Clone, Debug, Default)]
pub(crate) struct Quotas(Arc<Mutex<Vec<Weak<QuotaInner>>>>);

impl Quotas {
    /// Tells `quota` when peers leave from now on; returns it.
    pub(crate) fn register(&self, quota: StreamQuota) -> StreamQuota {
        let mut all = lock(&self.0);
        all.retain(|q| q.strong_count() > 0);
        all.push(Arc::downgrade(&quota.inner));
        quota
    }

    /// `peer`'s last connection closed.
    pub(crate) fn peer_left(&self, peer: &PeerId) {
        let live: Vec<_> = lock(&self.0).iter().filter_map(Weak::upgrade).collect();
        for q in live {
            StreamQuota::left(&q, peer);
        }
    }
}

/// One token bucket: `burst` at once, refilled at `per_second`.
#[derive(Debug)]
pub(crate) struct Bucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn new(per_second: u32, burst: u32) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket {
            per_second: f64::from(per_second),
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// `burst` at once, refilled over `interval` (rates below one a second: the relay's).
    pub(crate) fn over(burst: u32, interval: std::time::Duration) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket {
            per_second: burst / interval.as_secs_f64().max(1.0),
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// The tokens the bucket would hold at `now`, before the burst caps them.
    fn level(&self, now: Instant) -> f64 {
        let elapsed = self
            .last
            .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        self.tokens + elapsed * self.per_second
    }

    /// Whether the bucket is full again at `now`.
    fn refilled(&self, now: Instant) -> bool {
        self.level(now) >= self.burst
    }

    /// Takes `cost` (at least 1, at most the burst, so a full bucket always admits); `false`
    /// and nothing taken when the bucket holds less.
    pub(crate) fn take(&mut self, cost: usize, now: Instant) -> bool {
        self.tokens = self.level(now).min(self.burst);
        self.last = Some(now);
        let cost = (cost as f64).clamp(1.0, self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// A token bucket per peer: `burst` requests at once, refilled at `per_second`.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: u32,
    burst: u32,
    max_peers: usize,
    buckets: HashMap<PeerId, Bucket>,
}

impl RateLimiter {
    pub(crate) fn new(per_second: u32, burst: u32, max_peers: usize) -> RateLimiter {
        RateLimiter {
            per_second,
            burst,
            max_peers: max_peers.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `peer`'s bucket; `false` when it is empty.
    pub(crate) fn allow(&mut self, peer: PeerId, now: Instant) -> bool {
        self.take(peer, 1, now)
    }

    /// Takes `cost` tokens from `peer`'s bucket; `false` (and nothing taken) when it holds
    /// fewer. A cost above the burst is charged as the burst, so a full bucket always admits.
    pub(crate) fn take(&mut self, peer: PeerId, cost: usize, now: Instant) -> bool {
        if !self.buckets.contains_key(&peer) && self.buckets.len() >= self.max_peers {
            // Full of peers: drop the fullest bucket (the peer that asked least recently is
            // the one that loses least from a reset).
            let victim = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(p, _)| *p);
            if let Some(v) = victim {
                self.buckets.remove(&v);
            }
        }
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets
            .entry(peer)
            .or_insert_with(|| Bucket::new(per_second, burst))
            .take(cost, now)
    }

    /// The peer left: its bucket goes once it has refilled. One it emptied stays (within the
    /// table's bound), so a peer that disconnects and reconnects gets no fresh burst: a funded
    /// peer reconnecting ten times a second took 4 MiB of gossip and 200 requests each time
    /// (found by a read-only audit in session 49).
    pub(crate) fn forget(&mut self, peer: &PeerId, now: Instant) {
        if self.buckets.get(peer).is_some_and(|b| b.refilled(now)) {
            self.buckets.remove(peer);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// Most identities the application may vouch for; beyond that the rest stay strangers.
pub(crate) const MAX_VOUCHED: usize = 65_536;

/// One budget for all that strangers send (THREATS N7, N4): a byte rate for the gossip they
/// deliver and a request rate for what they ask. A stranger is a peer the application has not
/// vouched for — on a node with a ledger, one whose identity holds no funded account.
/// Identities are free: with rates per peer only, a thousand of them get a thousand times the
/// rate, and each message and request costs a signature check before anyone can judge it.
/// Accounts are not free, so vouched peers keep their own rates each while all strangers
/// together get what one peer gets. Off (no one is a stranger) until the application vouches
/// for someone: a node without a ledger treats every peer alike. Peers the operator trusts
/// (its config) and the genesis committee are never strangers, whoever the application vouches
/// for.
#[derive(Debug)]
pub(crate) struct StrangerBudget {
    classes: Strangers,
    gossip: Bucket,
    requests: Bucket,
}

/// Who is a stranger: shared between the swarm's loop (which the ledger tells whom to vouch
/// for) and the stream quotas that serve outside it. Written only when the vouched set
/// changes (after a block that changed the funded accounts).
#[derive(Clone, Debug, Default)]
pub(crate) struct Strangers(Arc<RwLock<Classes>>);

#[derive(Debug, Default)]
struct Classes {
    vouched: Option<HashSet<PeerId>>,
    trusted: HashSet<PeerId>,
    /// The genesis committee (the arbitrators): fixed at genesis, so no one can join it for
    /// free, and its members watch every contract's parties, so they must not share the
    /// strangers' budgets (review 9 M1).
    committee: HashSet<PeerId>,
}

impl Classes {
    fn is_exempt(&self, peer: &PeerId) -> bool {
        self.trusted.contains(peer) || self.committee.contains(peer)
    }
}

impl Strangers {
    /// Whether `peer` is a stranger (never, until someone was vouched for; never when the
    /// operator trusts it or it is in the genesis committee).
    pub(crate) fn is_stranger(&self, peer: &PeerId) -> bool {
        let c = self.read();
        c.vouched
            .as_ref()
            .is_some_and(|v| !v.contains(peer) && !c.is_exempt(peer))
    }

    /// Whether the operator trusts `peer` (`[network] trusted_peers`) or it is in the genesis
    /// committee: the light relay's shared circuit budget does not charge it.
    pub(crate) fn is_exempt(&self, peer: &PeerId) -> bool {
        self.read().is_exempt(peer)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Classes> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Classes> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl StrangerBudget {
    /// All strangers together: `gossip` bytes per second (and `gossip_burst` at once), and
    /// `requests` per second (and `request_burst` at once).
    pub(crate) fn new(
        gossip: u32,
        gossip_burst: u32,
        requests: u32,
        request_burst: u32,
    ) -> StrangerBudget {
        StrangerBudget {
            classes: Strangers::default(),
            gossip: Bucket::new(gossip, gossip_burst),
            requests: Bucket::new(requests, request_burst),
        }
    }

    /// Replaces who is vouched for (at most [`MAX_VOUCHED`] of them; the rest stay strangers).
    pub(crate) fn vouch(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        let set = peers.into_iter().take(MAX_VOUCHED).collect();
        self.classes.write().vouched = Some(set);
    }

    /// The peers the operator trusts (at most [`MAX_VOUCHED`]), kept across every
    /// [`Self::vouch`].
    pub(crate) fn trust(self, peers: impl IntoIterator<Item = PeerId>) -> StrangerBudget {
        self.classes.write().trusted = peers.into_iter().take(MAX_VOUCHED).collect();
        self
    }

    /// The genesis committee's peers (at most [`MAX_VOUCHED`]), kept across every
    /// [`Self::vouch`] like the trusted ones.
    pub(crate) fn committee(self, peers: impl IntoIterator<Item = PeerId>) -> StrangerBudget {
        self.classes.write().committee = peers.into_iter().take(MAX_VOUCHED).collect();
        self
    }

    /// How many peers the operator trusts.
    pub(crate) fn trusted(&self) -> usize {
        self.classes.read().trusted.len()
    }

    /// How many peers are vouched for.
    pub(crate) fn vouched(&self) -> usize {
        self.classes.read().vouched.as_ref().map_or(0, HashSet::len)
    }

    /// Whether `peer` is a stranger (never, until someone was vouched for; never when the
    /// operator trusts it).
    pub(crate) fn is_stranger(&self, peer: &PeerId) -> bool {
        self.classes.is_stranger(peer)
    }

    /// Who is a stranger, for the stream quotas.
    pub(crate) fn classes(&self) -> Strangers {
        self.classes.clone()
    }

    /// Charges a stranger's gossip message of `bytes`; `false` (nothing taken) when the
    /// strangers' byte budget holds less. A message above the burst is charged as the burst.
    pub(crate) fn take_gossip(&mut self, bytes: usize, now: Instant) -> bool {
        self.gossip.take(bytes, now)
    }

    /// Charges a stranger's request; `false` when the strangers' request budget is spent.
    pub(crate) fn take_request(&mut self, now: Instant) -> bool {
        self.requests.take(1, now)
    }
}

/// Answers the swarm has been handed but not yet written to their requester (THREATS N13):
/// libp2p keeps each until it is sent or its request times out (30 s), so a peer that asks
/// for large answers and never reads them pinned them all. Each answer is charged to its peer
/// and to the whole node until libp2p reports it sent or failed; one beyond its peer's budget
/// is withheld (its request fails at once) and counted. Past the total, an answer still goes
/// to a peer within its fair share of the total (the total over the peers with answers
/// waiting, itself included), so a few peers that never read cannot starve everyone else's
/// answers (probes, storage proofs, sync) by filling the total.
#[derive(Debug)]
pub struct ResponseBudget<P, I> {
    per_peer: usize,
    total: usize,
    sending: HashMap<I, (P, usize)>,
    by_peer: HashMap<P, usize>,
    in_flight: usize,
}

impl<P: std::hash::Hash + Eq + Copy, I: std::hash::Hash + Eq + Copy> ResponseBudget<P, I> {
    /// At most `per_peer` bytes of answers waiting for one peer, `total` for all.
    pub fn new(per_peer: usize, total: usize) -> Self {
        ResponseBudget {
            per_peer,
            total,
            sending: HashMap::new(),
            by_peer: HashMap::new(),
            in_flight: 0,
        }
    }

    /// Charges answer `id` of `len` bytes to `peer`; `false` when it would exceed a budget
    /// (nothing charged). An answer alone larger than the per-peer budget is never sent.
    pub fn take(&mut self, peer: P, id: I, len: usize) -> bool {
        let mine = self.by_peer.get(&peer).copied().unwrap_or(0);
        let after = mine.saturating_add(len);
        if after > self.per_peer {
            return false;
        }
        if self.in_flight.saturating_add(len) > self.total {
            let peers = self.by_peer.len() + usize::from(mine == 0);
            let fair = self.total / peers.max(1);
            if after > fair {
                return false;
            }
        }
        if let Some((p, l)) = self.sending.insert(id, (peer, len)) {
            self.give_back(p, l);
        }
        *self.by_peer.entry(peer).or_insert(0) += len;
        self.in_flight += len;
        true
    }

    /// Answer `id` was written, or failed: its bytes are free again.
    pub fn release(&mut self, id: &I) {
        if let Some((p, l)) = self.sending.remove(id) {
            self.give_back(p, l);
        }
    }

    fn give_back(&mut self, peer: P, len: usize) {
        self.in_flight = self.in_flight.saturating_sub(len);
        if let Some(n) = self.by_peer.get_mut(&peer) {
            *n = n.saturating_sub(len);
            if *n == 0 {
                self.by_peer.remove(&peer);
            }
        }
    }

    /// Bytes of answers waiting to be written, all peers together.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stream_quota_is_per_peer_and_total_and_frees_on_drop() {
        let refused = Arc::new(AtomicU64::new(0));
        let q = StreamQuota::new("test", 2, 3, refused.clone());
        let (a, b) = (PeerId::random(), PeerId::random());
        let a1 = q.try_acquire(a).unwrap();
        let _a2 = q.try_acquire(a).unwrap();
        assert!(q.try_acquire(a).is_none(), "per-peer limit");
        let b1 = q.try_acquire(b).unwrap();
        assert!(q.try_acquire(b).is_none(), "total limit");
        assert_eq!(refused.load(Ordering::Relaxed), 2);
        drop(a1);
        assert!(q.try_acquire(b).is_some(), "a freed slot is reusable");
        drop(b1);
        assert_eq!(q.held_by(&a), 1);
    }

    #[test]
    fn permits_hear_when_their_peer_leaves_and_later_ones_do_not() {
        let quotas = Quotas::default();
        let q = quotas.register(StreamQuota::new("test", 2, 10, Arc::new(AtomicU64::new(0))));
        let other = quotas.register(StreamQuota::new(
            "other",
            2,
            10,
            Arc::new(AtomicU64::new(0)),
        ));
        let (a, b) = (PeerId::random(), PeerId::random());
        let (a1, a2, b1) = (
            q.try_acquire(a).unwrap(),
            q.try_acquire(a).unwrap(),
            q.try_acquire(b).unwrap(),
        );
        let a3 = other.try_acquire(a).unwrap();
        quotas.peer_left(&a);
        assert!(a1.peer_gone().is_cancelled() && a2.peer_gone().is_cancelled());
        assert!(
            a3.peer_gone().is_cancelled(),
            "every registered quota hears it"
        );
        assert!(
            !b1.peer_gone().is_cancelled(),
            "another peer's permits do not"
        );
        // The slots stay taken until the permits go (their tasks end on the token).
        assert_eq!(q.held_by(&a), 2);
        drop(a1);
        // Back on a new connection: a new permit is not cancelled by the old departure.
        let a4 = q.try_acquire(a).unwrap();
        assert!(!a4.peer_gone().is_cancelled());
        drop((a2, a4, a3));
        assert_eq!(q.held_by(&a), 0);
        // A quota nobody holds is pruned at the next registration.
        drop(other);
        let _third = quotas.register(StreamQuota::new("third", 1, 1, Arc::new(AtomicU64::new(0))));
        assert_eq!(lock(&quotas.0).len(), 2);
        quotas.peer_left(&b);
        assert!(b1.peer_gone().is_cancelled());
    }

    #[test]
    fn stream_quota_map_shrinks_when_permits_go() {
        let q = StreamQuota::new("test", 1, 1000, Arc::new(AtomicU64::new(0)));
        let permits: Vec<_> = (0..100)
            .map(|_| q.try_acquire(PeerId::random()).unwrap())
            .collect();
        assert_eq!(q.peers(), 100);
        drop(permits);
        assert_eq!(q.peers(), 0);
    }

    #[test]
    fn byte_costs_are_charged_and_a_message_above_the_burst_costs_the_burst() {
        let mut r = RateLimiter::new(1_000, 4_000, 100);
        let p = PeerId::random();
        let t0 = Instant::now();
        assert!(r.take(p, 3_000, t0));
        assert!(!r.take(p, 2_000, t0), "only 1,000 left");
        assert!(r.take(p, 1_000, t0));
        // Two seconds refill 2,000: a 10,000-byte message (above the burst) still waits for a
        // full bucket, then passes.
        assert!(!r.take(p, 10_000, t0 + Duration::from_secs(2)));
        assert!(r.take(p, 10_000, t0 + Duration::from_secs(6)));
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_the_refill_rate() {
        let mut r = RateLimiter::new(10, 5, 100);
        let p = PeerId::random();
        let t0 = Instant::now();
        assert!((0..5).all(|_| r.allow(p, t0)));
        assert!(!r.allow(p, t0), "burst spent");
        assert!(
            r.allow(p, t0 + Duration::from_millis(110)),
            "one token after 100 ms"
        );
        assert!(!r.allow(p, t0 + Duration::from_millis(110)));
        // Another peer has its own bucket.
        assert!(r.allow(PeerId::random(), t0));
    }

    #[test]
    fn rate_limiter_is_bounded_and_forgets_peers() {
        let mut r = RateLimiter::new(1, 1, 10);
        let t0 = Instant::now();
        let peers: Vec<_> = (0..50).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            r.allow(*p, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(r.len(), 10);
        // Its bucket is empty: kept while it refills (one token a second).
        r.forget(&peers[49], t0 + Duration::from_millis(100));
        assert_eq!(r.len(), 10);
        r.forget(&peers[49], t0 + Duration::from_secs(2));
        assert_eq!(r.len(), 9);
    }

    /// A peer that empties its bucket, disconnects and reconnects finds it still empty.
    #[test]
    fn reconnecting_gives_no_fresh_burst() {
        let mut r = RateLimiter::new(50, 200, 16);
        let p = PeerId::random();
        let t0 = Instant::now();
        for _ in 0..200 {
            assert!(r.allow(p, t0));
        }
        assert!(!r.allow(p, t0));
        r.forget(&p, t0);
        assert!(!r.allow(p, t0), "the emptied bucket was kept");
        // Refilled at its rate: one second gives 50.
        let t1 = t0 + Duration::from_secs(1);
        assert!((0..50).all(|_| r.allow(p, t1)));
        assert!(!r.allow(p, t1));
    }

    #[test]
    fn strangers_share_one_budget_and_vouched_peers_are_not_charged() {
        let mut b = StrangerBudget::new(1_000, 4_000, 2, 3);
        let (a, c) = (PeerId::random(), PeerId::random());
        // Nobody vouched for yet: nobody is a stranger (a node without a ledger).
        assert!(!b.is_stranger(&a));
        b.vouch([a]);
        assert_eq!(b.vouched(), 1);
        assert!(!b.is_stranger(&a));
        assert!(b.is_stranger(&c));
        let t0 = Instant::now();
        // The burst, shared: what one stranger took, no other stranger gets.
        assert!(b.take_gossip(3_000, t0));
        assert!(
            !b.take_gossip(2_000, t0),
            "another stranger finds the budget spent"
        );
        assert!(b.take_gossip(1_000, t0));
        assert!(!b.take_gossip(1, t0));
        // Refilled at the rate, never past the burst.
        assert!(b.take_gossip(500, t0 + Duration::from_millis(500)));
        assert!(!b.take_gossip(1, t0 + Duration::from_millis(500)));
        assert!(b.take_gossip(4_000, t0 + Duration::from_secs(60)));
        // A message larger than the burst still goes through a full budget.
        assert!(b.take_gossip(1 << 20, t0 + Duration::from_secs(120)));
        // Requests have a budget of their own: 3 at once, then 2 a second.
        for _ in 0..3 {
            assert!(b.take_request(t0));
        }
        assert!(!b.take_request(t0), "the strangers' request burst is spent");
        assert!(b.take_request(t0 + Duration::from_millis(500)));
        assert!(!b.take_request(t0 + Duration::from_millis(500)));
        // The set is bounded.
        b.vouch((0..MAX_VOUCHED + 10).map(|_| PeerId::random()));
        assert_eq!(b.vouched(), MAX_VOUCHED);
        assert!(
            b.is_stranger(&a),
            "a replaced set forgets who it no longer names"
        );
    }

    #[test]
    fn strangers_together_hold_at_most_their_share_of_streams() {
        let refused = Arc::new(AtomicU64::new(0));
        let mut budget = StrangerBudget::new(1, 1, 1, 1);
        let q = StreamQuota::new("test", 2, 5, refused.clone()).with_strangers(budget.classes(), 2);
        let (funded, s1, s2, s3) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        // Nobody vouched for yet: nobody is a stranger, so no share applies.
        let early: Vec<_> = [s1, s2, s3]
            .iter()
            .map(|p| q.try_acquire(*p).unwrap())
            .collect();
        drop(early);
        budget.vouch([funded]);
        let a = q.try_acquire(s1).unwrap();
        let _b = q.try_acquire(s2).unwrap();
        assert!(
            q.try_acquire(s3).is_none(),
            "a third stranger finds the strangers' share full"
        );
        assert!(
            q.try_acquire(s2).is_none(),
            "so does one below its own per-peer share"
        );
        // The funded peer still gets its per-peer share out of the rest of the total.
        let _f1 = q.try_acquire(funded).unwrap();
        let _f2 = q.try_acquire(funded).unwrap();
        assert!(q.try_acquire(funded).is_none(), "per-peer share");
        assert_eq!(refused.load(Ordering::Relaxed), 3);
        // A stranger's freed stream goes back to the strangers' share.
        drop(a);
        let _c = q.try_acquire(s3).unwrap();
        // Once vouched for, a peer's new streams are no longer the strangers'.
        budget.vouch([funded, s1]);
        let _d = q.try_acquire(s1).unwrap();
        assert_eq!(q.peers(), 4);
    }

    #[test]
    fn peers_the_operator_trusts_are_never_strangers() {
        let (t, s) = (PeerId::random(), PeerId::random());
        let mut b = StrangerBudget::new(1_000, 4_000, 2, 3).trust([t]);
        assert_eq!(b.trusted(), 1);
        // No ledger has vouched yet: nobody is a stranger.
        assert!(!b.is_stranger(&t) && !b.is_stranger(&s));
        // The ledger's set names neither: only the untrusted peer becomes a stranger, and
        // every later set replaces the ledger's word, never the operator's.
        b.vouch([PeerId::random()]);
        assert!(!b.is_stranger(&t));
        assert!(b.is_stranger(&s));
        b.vouch([s]);
        assert!(!b.is_stranger(&t) && !b.is_stranger(&s));
        b.vouch([]);
        assert!(!b.is_stranger(&t));
        assert!(b.is_stranger(&s));
        // Bounded like the ledger's set.
        let b =
            StrangerBudget::new(1, 1, 1, 1).trust((0..MAX_VOUCHED + 10).map(|_| PeerId::random()));
        assert_eq!(b.trusted(), MAX_VOUCHED);
    }

    /// Review 9 M1: the genesis committee is never a stranger, whoever the ledger vouches for,
    /// and is exempt like a trusted peer; nobody else is.
    #[test]
    fn the_genesis_committee_is_never_a_stranger() {
        let (member, s) = (PeerId::random(), PeerId::random());
        let mut b = StrangerBudget::new(1_000, 4_000, 2, 3).committee([member]);
        b.vouch([PeerId::random()]);
        assert!(!b.is_stranger(&member));
        assert!(b.is_stranger(&s));
        assert!(b.classes().is_exempt(&member));
        assert!(!b.classes().is_exempt(&s));
        b.vouch([s]);
        assert!(!b.is_stranger(&member) && !b.classes().is_exempt(&s));
    }

    #[test]
    fn answers_waiting_to_be_written_are_bounded_per_peer_and_in_all() {
        let mut b: ResponseBudget<u8, u32> = ResponseBudget::new(10, 25);
        assert!(b.take(1, 1, 6));
        assert!(!b.take(1, 2, 5), "over the peer's budget");
        assert!(b.take(1, 3, 4));
        assert!(b.take(2, 4, 10));
        assert!(b.take(3, 6, 5));
        assert_eq!(b.in_flight(), 25);
        // Past the total, only within a fair share (25 over 4 peers: 6 bytes each).
        assert!(!b.take(4, 5, 7), "over the total and the fair share");
        assert!(
            b.take(4, 9, 6),
            "a newcomer within its share still gets an answer"
        );
        assert!(!b.take(3, 10, 2), "a peer going above its share does not");
        // Written or failed: free again; a release of an unknown id changes nothing.
        b.release(&1);
        b.release(&99);
        assert_eq!(b.in_flight(), 25);
        assert!(!b.take(4, 8, 11), "larger than a peer may ever wait for");
        for id in [3, 4, 6, 9] {
            b.release(&id);
        }
        assert_eq!(b.in_flight(), 0);
        assert!(b.by_peer.is_empty() && b.sending.is_empty());
    }
}
