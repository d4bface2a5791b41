//! Fetching a DAG by root CID from several providers at once.
//!
//! The walk starts at the root; each arrived block's links are queued. Up to `parallelism`
//! blocks are in flight, each asked of the best-ranked provider (connected peers plus Kademlia
//! provider records) that has not refused it, round-robin among equals: peers that delivered
//! blocks before strangers, peers whose wants keep timing out last ([`crate::scores`], THREATS
//! N23). A DONT_HAVE, a disconnect or a per-block timeout moves the want to another provider, so
//! a fetch survives a provider dropping out. Blocks already stored are skipped, so a fetch that
//! failed half way resumes where it stopped.
//!
//! How long a want may wait is measured, not fixed: each provider's block latency is smoothed
//! as TCP smooths round-trip times (RFC 6298: `srtt + 4·rttvar`, samples of re-asked blocks
//! ignored as Karn does), and a want older than that is asked again, between
//! [`MIN_BLOCK_TIMEOUT`] and `block_timeout`. A stock Kubo peer answers every message on a
//! fresh stream, and libp2p-stream drops an inbound stream whenever our accept loop has not
//! taken the previous one yet, so under load some of its blocks never reach us: with a fixed
//! 5 s timeout a 64 MiB fetch from Kubo spent most of its 17–22 s waiting for lost wants.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use agora_network::PeerId;
use agora_storage::{BlockStore, Cid, StorageError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::bitswap::{Bitswap, SessionEvent};
use super::scores::Rank;
use agora_network::{Interest, NetworkEvent, NetworkHandle};

/// Limits of one fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchConfig {
    /// Blocks in flight at once.
    pub parallelism: usize,
    /// A block not delivered within this time is asked again (of another provider if there is
    /// one). The upper bound: once a provider's latency is measured, its wants are asked again
    /// after `srtt + 4·rttvar`, at least [`MIN_BLOCK_TIMEOUT`].
    pub block_timeout: Duration,
    /// The whole fetch fails if no block arrives for this long.
    pub idle_timeout: Duration,
    /// The fetch fails once the DAG grows past this many bytes (a service image or a stored
    /// file larger than agreed must not fill the disk).
    pub max_bytes: Option<u64>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            parallelism: 32,
            block_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_bytes: None,
        }
    }
}

/// The shortest wait before a want is asked again, however fast the provider was so far.
pub const MIN_BLOCK_TIMEOUT: Duration = Duration::from_millis(100);

/// How often in-flight wants are checked against their deadline.
const EXPIRE_TICK: Duration = Duration::from_millis(50);

/// Smoothed block latency of one provider (RFC 6298's estimator).
type Latency = agora_wire::rtt::RttEstimator;

/// Progress of a fetch, published on a watch channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchProgress {
    /// Blocks present locally so far (fetched or already stored).
    pub blocks: u64,
    /// Bytes of those blocks.
    pub bytes: u64,
    /// Blocks fetched from peers.
    pub fetched_blocks: u64,
    /// File size from the root node, when it is a UnixFS file.
    pub total_bytes: Option<u64>,
    /// Providers currently used.
    pub providers: usize,
    /// Whether the whole DAG is local.
    pub done: bool,
}

/// Errors of a fetch.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Nobody delivered a block in time.
    #[error(
        "no provider delivered block {cid} (of {root}) within {secs} s ({providers} providers asked); check the CID, or connect to a node that has it (agora peers)"
    )]
    Timeout {
        /// The DAG root.
        root: Cid,
        /// A block still missing.
        cid: Cid,
        /// Seconds waited without progress.
        secs: u64,
        /// Providers tried.
        providers: usize,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// The node is shutting down.
    #[error("fetch of {0} stopped: the node is shutting down")]
    Stopped(Cid),
    /// The DAG is larger than the fetch allows.
    #[error("{root} is larger than the {max} bytes allowed here; fetch stopped")]
    TooLarge {
        /// The DAG root.
        root: Cid,
        /// The limit.
        max: u64,
    },
}

/// Walks and fetches the DAG under `root` into the store.
pub async fn fetch_dag(
    bitswap: &Bitswap,
    network: &NetworkHandle,
    root: Cid,
    cfg: FetchConfig,
    progress: &watch::Sender<FetchProgress>,
) -> Result<FetchProgress, FetchError> {
    let mut events = network.inbox(Interest::new("fetch").connections());
    let (session, mut rx) = bitswap.open_session();
    let _guard = SessionGuard(bitswap, session);
    let mut f = Fetch {
        bitswap,
        session,
        root,
        cfg,
        queue: VecDeque::from([root]),
        seen: HashSet::from([root]),
        in_flight: HashMap::new(),
        refused: HashMap::new(),
        latency: HashMap::new(),
        asked_again: HashSet::new(),
        providers: Vec::new(),
        next: 0,
        p: FetchProgress::default(),
    };
    for peer in network.peers().await.unwrap_or_default() {
        if let Ok(p) = peer.peer_id.parse() {
            f.add_provider(p);
        }
    }
    // Provider records are looked up in the background; connected peers are asked meanwhile.
    let (prov_tx, mut prov_rx) = tokio::sync::mpsc::channel(1);
    let lookup_net = network.clone();
    let lookup = tokio::spawn(async move {
        let found = lookup_net
            .get_providers(root.hash().to_bytes())
            .await
            .unwrap_or_default();
        let _ = prov_tx.send(found).await;
    });
    let _lookup_guard = AbortOnDrop(lookup);
    let mut tick = tokio::time::interval(EXPIRE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_progress = Instant::now();
    loop {
        f.fill().await?;
        if let Some(max) = cfg.max_bytes
            && f.p.bytes > max
        {
            return Err(FetchError::TooLarge { root, max });
        }
        f.p.providers = f.providers.len();
        progress.send_replace(f.p);
        if f.queue.is_empty() && f.in_flight.is_empty() {
            f.p.done = true;
            progress.send_replace(f.p);
            return Ok(f.p);
        }
        if last_progress.elapsed() > cfg.idle_timeout {
            let cid = f.in_flight.keys().chain(f.queue.iter()).next().copied();
            return Err(FetchError::Timeout {
                root,
                cid: cid.unwrap_or(root),
                secs: cfg.idle_timeout.as_secs(),
                providers: f.providers.len(),
            });
        }
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(SessionEvent::Block { cid, size, links, from }) => {
                    if let Some((asked, at)) = f.in_flight.remove(&cid) {
                        bitswap.unwant(session, &[cid]);
                        f.sample(cid, asked, from, at.elapsed());
                        f.arrived(cid, size as u64, &links);
                        if cid == root {
                            f.p.total_bytes = unixfs_size(bitswap.store(), cid).await;
                        }
                        f.p.fetched_blocks += 1;
                        last_progress = Instant::now();
                        f.add_provider(from);
                    }
                }
                Some(SessionEvent::DontHave(cid, peer)) => f.refuse(cid, peer),
                Some(SessionEvent::Have(_, peer)) => f.add_provider(peer),
                None => return Err(FetchError::Stopped(root)),
            },
            ev = events.recv() => match ev {
                NetworkEvent::Disconnected(peer) => f.drop_provider(peer),
                NetworkEvent::Connected(peer) => f.add_provider(peer),
                _ => {}
            },
            Some(found) = prov_rx.recv() => {
                for p in found {
                    if p != network.peer_id() {
                        bitswap.claimed(p);
                        f.add_provider(p);
                    }
                }
            }
            _ = tick.tick() => f.expire(),
        }
    }
}

struct SessionGuard<'a>(&'a Bitswap, u64);
impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.0.close_session(self.1);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Fetch<'a> {
    bitswap: &'a Bitswap,
    session: u64,
    root: Cid,
    cfg: FetchConfig,
    /// Blocks to get, not yet asked for.
    queue: VecDeque<Cid>,
    /// Every block ever queued (DAGs may share blocks).
    seen: HashSet<Cid>,
    /// Block -> (provider asked, when).
    in_flight: HashMap<Cid, (PeerId, Instant)>,
    /// Block -> providers that refused or timed out on it.
    refused: HashMap<Cid, HashSet<PeerId>>,
    /// Measured block latency per provider (at most one entry per provider).
    latency: HashMap<PeerId, Latency>,
    /// Blocks asked for more than once: their latency is ambiguous (Karn), not sampled.
    asked_again: HashSet<Cid>,
    providers: Vec<PeerId>,
    next: usize,
    p: FetchProgress,
}

impl Fetch<'_> {
    fn add_provider(&mut self, peer: PeerId) {
        if !self.providers.contains(&peer) {
            self.providers.push(peer);
        }
    }

    fn drop_provider(&mut self, peer: PeerId) {
        self.providers.retain(|p| *p != peer);
        self.latency.remove(&peer);
        let lost: Vec<Cid> = self
            .in_flight
            .iter()
            .filter(|(_, (p, _))| *p == peer)
            .map(|(c, _)| *c)
            .collect();
        for cid in lost {
            self.in_flight.remove(&cid);
            self.queue.push_front(cid);
        }
    }

    fn refuse(&mut self, cid: Cid, peer: PeerId) {
        self.refused.entry(cid).or_default().insert(peer);
        if self.in_flight.get(&cid).is_some_and(|(p, _)| *p == peer) {
            self.in_flight.remove(&cid);
            self.queue.push_front(cid);
        }
    }

    /// Learns the latency of `asked` from a block it delivered `elapsed` after the want.
    fn sample(&mut self, cid: Cid, asked: PeerId, from: PeerId, elapsed: Duration) {
        tracing::trace!(%cid, ms = elapsed.as_secs_f64() * 1e3, in_flight = self.in_flight.len(), "block arrived");
        if self.asked_again.remove(&cid) || asked != from {
            return;
        }
        self.latency
            .entry(from)
            .and_modify(|l| l.update(elapsed))
            .or_insert_with(|| Latency::first(elapsed));
    }

    /// How long a want to `peer` may wait before it is asked again.
    fn deadline(&self, peer: &PeerId) -> Duration {
        let max = self.cfg.block_timeout;
        self.latency
            .get(peer)
            .map_or(max, |l| l.timeout(MIN_BLOCK_TIMEOUT.min(max), max))
    }

    /// Re-queues blocks whose provider is too slow, cancelling them in one message per provider.
    fn expire(&mut self) {
        let late: Vec<(Cid, PeerId)> = self
            .in_flight
            .iter()
            .filter(|(_, (p, at))| at.elapsed() > self.deadline(p))
            .map(|(c, (p, _))| (*c, *p))
            .collect();
        let mut cancels: HashMap<PeerId, Vec<Cid>> = HashMap::new();
        for (cid, peer) in late {
            cancels.entry(peer).or_default().push(cid);
            self.asked_again.insert(cid);
            self.refuse(cid, peer);
        }
        for (peer, cids) in cancels {
            // One strike per peer and pass, however many of its wants expired together: a
            // stall of this node (or of an honest peer) expires every want in flight at once,
            // which is not three silences in a row.
            self.bitswap.timed_out(peer, cids.len());
            self.bitswap.cancel(peer, &cids);
        }
    }

    fn arrived(&mut self, cid: Cid, size: u64, links: &[Cid]) {
        self.p.blocks += 1;
        self.p.bytes += size;
        self.refused.remove(&cid);
        self.asked_again.remove(&cid);
        for l in links {
            if self.seen.insert(*l) {
                self.queue.push_back(*l);
            }
        }
    }

    /// Takes local blocks off the queue and asks providers for the rest, up to `parallelism`.
    async fn fill(&mut self) -> Result<(), FetchError> {
        let mut batches: HashMap<PeerId, Vec<Cid>> = HashMap::new();
        let mut parked = Vec::new();
        let ranks = self.bitswap.ranks(&self.providers);
        while self.in_flight.len() < self.cfg.parallelism {
            let Some(cid) = self.queue.pop_front() else {
                break;
            };
            if let Some((size, links)) = local_block(self.bitswap.store(), cid).await? {
                if cid == self.root {
                    self.p.total_bytes = unixfs_size(self.bitswap.store(), cid).await;
                }
                self.arrived(cid, size, &links);
                continue;
            }
            let refused = self.refused.get(&cid);
            let pick = choose_provider(&self.providers, &ranks, self.next, refused);
            match pick {
                Some(peer) => {
                    self.next = self.next.wrapping_add(1);
                    self.in_flight.insert(cid, (peer, Instant::now()));
                    batches.entry(peer).or_default().push(cid);
                }
                None => {
                    // Everyone refused: forget refusals so a provider that gets the block later
                    // (or a new one) is asked again on the next round.
                    self.refused.remove(&cid);
                    parked.push(cid);
                }
            }
        }
        self.queue.extend(parked);
        for (peer, cids) in batches {
            self.bitswap.want(self.session, peer, &cids);
        }
        Ok(())
    }
}

/// The provider to ask for a block: the best-ranked one of `providers` (`ranks` in the same
/// order) that has not refused it, taking turns from `next` among equals; `None` when every
/// provider refused it. A benched peer is still asked when it is the only one left.
fn choose_provider(
    providers: &[PeerId],
    ranks: &[Rank],
    next: usize,
    refused: Option<&HashSet<PeerId>>,
) -> Option<PeerId> {
    let n = providers.len();
    (0..n)
        .map(|i| (next + i) % n)
        .filter(|&j| refused.is_none_or(|r| !r.contains(&providers[j])))
        .min_by_key(|&j| ranks.get(j).copied().unwrap_or(Rank::Stranger))
        .map(|j| providers[j])
}

/// Size and links of a locally stored, verified block; `None` if absent or corrupted.
async fn local_block(
    store: &std::sync::Arc<dyn BlockStore>,
    cid: Cid,
) -> Result<Option<(u64, Vec<Cid>)>, FetchError> {
    let store = store.clone();
    let res = tokio::task::spawn_blocking(move || match store.get(&cid) {
        Ok(data) => {
            let links = agora_storage::blockstore::block_links(&cid, &data)?;
            Ok(Some((data.len() as u64, links)))
        }
        Err(StorageError::NotFound { .. } | StorageError::Corrupted { .. }) => Ok(None),
        Err(e) => Err(e),
    })
    .await
    .map_err(|_| FetchError::Stopped(cid))?;
    Ok(res?)
}

/// The file size recorded in a UnixFS root node, if it is one.
async fn unixfs_size(store: &std::sync::Arc<dyn BlockStore>, cid: Cid) -> Option<u64> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let data = store.get(&cid).ok()?;
        if cid.codec() == agora_storage::hash::RAW {
            return Some(data.len() as u64);
        }
        let node = agora_storage::dagpb::PbNode::decode(&cid, &data).ok()?;
        agora_storage::unixfs::UnixFsData::decode(&node.data?)
            .ok()?
            .filesize
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_provider_gets_the_minimum_deadline_and_a_slow_one_the_maximum() {
        let max = Duration::from_secs(5);
        let mut l = Latency::first(Duration::from_millis(5));
        for _ in 0..50 {
            l.update(Duration::from_millis(5));
        }
        assert_eq!(l.timeout(MIN_BLOCK_TIMEOUT, max), MIN_BLOCK_TIMEOUT);
        let slow = Latency::first(Duration::from_secs(3));
        assert_eq!(slow.timeout(MIN_BLOCK_TIMEOUT, max), max);
    }

    #[test]
    fn the_best_ranked_provider_is_asked_and_a_benched_one_only_when_nobody_else_can_be() {
        let [silent, stranger, server] = [PeerId::random(), PeerId::random(), PeerId::random()];
        let providers = [silent, stranger, server];
        let ranks = [Rank::Benched, Rank::Stranger, Rank::Proven];
        for next in 0..3 {
            assert_eq!(
                choose_provider(&providers, &ranks, next, None),
                Some(server)
            );
        }
        let refused = HashSet::from([server]);
        let pick = |r: &HashSet<PeerId>| choose_provider(&providers, &ranks, 0, Some(r));
        assert_eq!(pick(&refused), Some(stranger));
        assert_eq!(pick(&HashSet::from([server, stranger])), Some(silent));
        assert_eq!(pick(&HashSet::from([server, stranger, silent])), None);
        // Equals take turns.
        let ranks = [Rank::Proven, Rank::Stranger, Rank::Proven];
        assert_eq!(choose_provider(&providers, &ranks, 0, None), Some(silent));
        assert_eq!(choose_provider(&providers, &ranks, 1, None), Some(server));
        assert_eq!(choose_provider(&providers, &ranks, 2, None), Some(server));
        assert_eq!(choose_provider(&[], &[], 0, None), None);
    }
}
