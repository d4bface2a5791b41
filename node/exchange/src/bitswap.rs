//! Bitswap 1.2.0 over the swarm's raw streams (`libp2p-stream`).
//!
//! As in Kubo, every message travels on a stream its *sender* opened: we read wants and blocks
//! from inbound streams and answer on our own outbound stream to that peer (one writer task per
//! peer, bounded queue). Wants are answered from the block store by the pure
//! `agora_storage::bitswap::respond`; received blocks are hashed during decoding, stored only
//! if a local fetch session wants them, and announced to those sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use agora_network::streams::{AlreadyRegistered, Control, OpenStreamError};
use agora_network::{PeerId, Stream, StreamProtocol, StreamQuota};
use agora_storage::bitswap::{self, Message, PresenceType};
use agora_storage::{BlockStore, Cid};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use super::framing::{MessageError, read_message, write_message};
use super::scores::{PeerScores, Rank};
use agora_storage::wire::{FrameBudget, FrameError};

/// Protocols we accept, newest first; we open streams with the first one the peer supports.
pub const PROTOCOLS: [&str; 4] = [
    bitswap::PROTOCOL,
    "/ipfs/bitswap/1.1.0",
    "/ipfs/bitswap/1.0.0",
    "/ipfs/bitswap",
];
/// Messages queued per peer (each up to 4 MiB). Our own wants are dropped when it is full
/// (the fetcher re-wants on timeout); answers to a peer wait for room, which in turn stops us
/// reading that peer's stream: backpressure instead of unbounded memory.
const PEER_QUEUE: usize = 8;
/// Wants answered per `respond` call, bounding the blocks one inbound stream holds in memory
/// while its answers wait for room (4 × a 2 MiB block at most; 16 held 32 MiB per stream of a
/// peer that never reads, THREATS N15).
const WANTS_PER_BATCH: usize = 4;
/// Inbound streams served at once, all bitswap versions together; more are refused.
pub const MAX_INBOUND_STREAMS: usize = 256;
/// Inbound streams one peer may hold open at once (Kubo keeps one per peer); more are refused
/// and counted in `NetworkStats::bitswap_streams_refused`.
pub const MAX_INBOUND_STREAMS_PER_PEER: usize = 8;
/// An inbound stream with no complete message for this long is closed, so idle or trickling
/// peers cannot hold serving slots forever (Kubo reopens its stream on the next send).
const INBOUND_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// A message to a peer that does not take it within this long (it opened streams and stopped
/// reading ours) ends the peer's writer: its queue and every answer waiting for room there are
/// let go, and the inbound streams whose answers waited are closed.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a fetch session hears about the blocks it registered for.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A verified block arrived (already stored).
    Block {
        /// The block.
        cid: Cid,
        /// Its size in bytes.
        size: usize,
        /// Links it contains (for the DAG walk).
        links: Vec<Cid>,
        /// Who sent it.
        from: PeerId,
    },
    /// The peer has the block.
    Have(Cid, PeerId),
    /// The peer lacks the block.
    DontHave(Cid, PeerId),
}

/// Counters for diagnostics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BitswapStats {
    /// Inbound messages decoded.
    pub messages_in: u64,
    /// Inbound frames rejected (oversized, malformed); the stream was closed.
    pub rejected: u64,
    /// Blocks sent to peers.
    pub blocks_sent: u64,
    /// Wanted blocks received and stored.
    pub blocks_received: u64,
    /// Blocks received that no session wanted (dropped).
    pub unwanted: u64,
    /// Bytes of block data sent to peers.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Bytes of wanted block data received and stored.
    #[serde(default)]
    pub bytes_received: u64,
    /// Peers we hold a writer (an outbound stream and its queue) for now: peers that opened a
    /// stream to us or that we sent something, within the last minute.
    #[serde(default)]
    pub writers: u64,
    /// Writers ended because their peer took nothing for [`WRITE_TIMEOUT`] (it stopped
    /// reading the stream we opened to it).
    #[serde(default)]
    pub writers_stalled: u64,
    /// Wants, blocks and block presences dropped because the same message already named the
    /// block.
    #[serde(default)]
    pub wants_deduplicated: u64,
    /// Inbound streams served now (each holds a slot of the node's bitswap stream quota).
    #[serde(default)]
    pub inbound_streams: u64,
    /// Wants a peer did not answer within the fetch's deadline (asked again elsewhere).
    #[serde(default)]
    pub wants_timed_out: u64,
    /// Times a peer took `scores::BENCH_AFTER` strikes in a row (expiry passes with wants of
    /// its timed out) and was benched: asked only when every other peer refused a block
    /// (THREATS N23).
    #[serde(default)]
    pub peers_benched: u64,
}

#[derive(Default)]
struct Counters {
    messages_in: AtomicU64,
    rejected: AtomicU64,
    blocks_sent: AtomicU64,
    blocks_received: AtomicU64,
    unwanted: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    writers_stalled: AtomicU64,
    wants_deduplicated: AtomicU64,
    inbound_streams: AtomicU64,
    wants_timed_out: AtomicU64,
    peers_benched: AtomicU64,
}

type Sessions = HashMap<u64, (mpsc::UnboundedSender<SessionEvent>, Vec<Cid>)>;

/// Cloneable handle to the bitswap engine.
#[derive(Clone)]
pub struct Bitswap {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn BlockStore>,
    control: Control,
    peers: Mutex<HashMap<PeerId, mpsc::Sender<Message>>>,
    sessions: Mutex<Sessions>,
    next_session: AtomicU64,
    /// Who answered and who let wants time out, for every fetch of this node.
    scores: Mutex<PeerScores>,
    counters: Counters,
    /// The node's one budget for frames being read (shared with request-response): every
    /// inbound message is read within it (THREATS N16).
    frames: Arc<FrameBudget>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Bitswap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bitswap")
    }
}

/// One inbound stream served, counted in [`BitswapStats::inbound_streams`] until dropped
/// (however its task ends).
struct Serving(Arc<Inner>);

impl Serving {
    fn new(inner: &Arc<Inner>) -> Serving {
        inner
            .counters
            .inbound_streams
            .fetch_add(1, Ordering::Relaxed);
        Serving(inner.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0
            .counters
            .inbound_streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bitswap {
    /// Registers the bitswap protocols on `control` and serves inbound streams until `cancel`,
    /// at most as many at once as `quota` admits (per peer and in all; see
    /// `NetworkHandle::bitswap_quota`), reading their messages within `frames`
    /// (`NetworkHandle::frame_budget`). Each accept loop only takes the next stream and
    /// spawns its server: libp2p-stream hands streams over a one-slot channel and drops what
    /// arrives while the loop is busy.
    pub fn start(
        store: Arc<dyn BlockStore>,
        mut control: Control,
        quota: StreamQuota,
        frames: Arc<FrameBudget>,
        cancel: CancellationToken,
    ) -> Result<Bitswap, AlreadyRegistered> {
        let mut incoming = Vec::new();
        for p in PROTOCOLS {
            incoming.push(control.accept(StreamProtocol::new(p))?);
        }
        let bitswap = Bitswap {
            inner: Arc::new(Inner {
                store,
                control,
                peers: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(0),
                scores: Mutex::default(),
                counters: Counters::default(),
                frames,
                cancel,
            }),
        };
        for mut streams in incoming {
            let me = bitswap.clone();
            let quota = quota.clone();
            tokio::spawn(
                async move {
                    let cancel = me.inner.cancel.clone();
                    loop {
                        let (peer, stream) = tokio::select! {
                            _ = cancel.cancelled() => break,
                            next = streams.next() => match next {
                                Some(s) => s,
                                None => break,
                            },
                        };
                        // Refused (counted and logged by the quota): dropping closes it.
                        let Some(permit) = quota.try_acquire(peer) else {
                            continue;
                        };
                        // Our stream back starts opening now (see `spawn_writer`).
                        me.writer(peer);
                        let me = me.clone();
                        let cancel = cancel.clone();
                        // The peer's last connection closed: end the stream's task and free
                        // its slot at once (THREATS N14: yamux does not wake a stream whose
                        // connection this node closed cleanly).
                        let gone = permit.peer_gone();
                        let serving = Serving::new(&me.inner);
                        tokio::spawn(
                            async move {
                                tokio::select! {
                                    _ = cancel.cancelled() => {}
                                    _ = gone.cancelled() => {}
                                    _ = me.serve_stream(peer, stream) => {}
                                }
                                drop(permit);
                                drop(serving);
                            }
                            .in_current_span(),
                        );
                    }
                }
                .in_current_span(),
            );
        }
        Ok(bitswap)
    }

    /// The block store bitswap serves from and stores into.
    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.inner.store
    }

    /// Current counters.
    pub fn stats(&self) -> BitswapStats {
        let c = &self.inner.counters;
        BitswapStats {
            messages_in: c.messages_in.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            blocks_sent: c.blocks_sent.load(Ordering::Relaxed),
            blocks_received: c.blocks_received.load(Ordering::Relaxed),
            unwanted: c.unwanted.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            writers: lock(&self.inner.peers).len() as u64,
            writers_stalled: c.writers_stalled.load(Ordering::Relaxed),
            wants_deduplicated: c.wants_deduplicated.load(Ordering::Relaxed),
            inbound_streams: c.inbound_streams.load(Ordering::Relaxed),
            wants_timed_out: c.wants_timed_out.load(Ordering::Relaxed),
            peers_benched: c.peers_benched.load(Ordering::Relaxed),
        }
    }

    /// How early each of `peers` should be asked for a block, in the same order.
    pub fn ranks(&self, peers: &[PeerId]) -> Vec<Rank> {
        let now = Instant::now();
        let scores = lock(&self.inner.scores);
        peers.iter().map(|p| scores.rank(p, now)).collect()
    }

    /// `wants` sent to `peer` were not answered in time (counted): one strike against it; a
    /// few in a row bench it.
    pub fn timed_out(&self, peer: PeerId, wants: usize) {
        let c = &self.inner.counters;
        c.wants_timed_out.fetch_add(wants as u64, Ordering::Relaxed);
        if lock(&self.inner.scores).timed_out(peer, Instant::now()) {
            c.peers_benched.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "bitswap peer benched: its wants time out");
        }
    }

    /// `peer` is named a provider of a block a fetch wants (a DHT provider record).
    pub fn claimed(&self, peer: PeerId) {
        lock(&self.inner.scores).claimed(peer, Instant::now());
    }

    /// Registers a fetch session; it hears about blocks listed with [`Bitswap::want`].
    pub fn open_session(&self) -> (u64, mpsc::UnboundedReceiver<SessionEvent>) {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.sessions).insert(id, (tx, Vec::new()));
        (id, rx)
    }

    /// Ends a session.
    pub fn close_session(&self, id: u64) {
        lock(&self.inner.sessions).remove(&id);
    }

    /// Marks `cids` as wanted by `session` and sends a want-block message to `peer`.
    pub fn want(&self, session: u64, peer: PeerId, cids: &[Cid]) {
        if let Some((_, wanted)) = lock(&self.inner.sessions).get_mut(&session) {
            for cid in cids {
                if !wanted.contains(cid) {
                    wanted.push(*cid);
                }
            }
        }
        self.send(peer, Message::want_blocks(cids));
    }

    /// Sends cancels for `cids` to `peer` (best effort).
    pub fn cancel(&self, peer: PeerId, cids: &[Cid]) {
        let mut msg = Message::want_blocks(cids);
        if let Some(w) = msg.wantlist.as_mut() {
            for e in &mut w.entries {
                e.cancel = true;
                e.send_dont_have = false;
            }
        }
        self.send(peer, msg);
    }

    /// Queues a message to `peer`, starting its writer task if needed. Drops it if the queue is
    /// full (the peer is slow; wants are retried by the fetcher).
    pub fn send(&self, peer: PeerId, message: Message) {
        if let Err(e) = self.writer(peer).try_send(message) {
            debug!(%peer, error = %e, "bitswap message dropped");
        }
    }

    fn spawn_writer(&self, peer: PeerId) -> mpsc::Sender<Message> {
        let (tx, mut rx) = mpsc::channel::<Message>(PEER_QUEUE);
        let me = self.clone();
        tokio::spawn(
            async move {
                let mut control = me.inner.control.clone();
                // Opened at once, not on the first message: a writer also starts when a peer
                // opens a stream to us (`start`), so our stream back is negotiated while that
                // peer's wants are on their way, which saves a round trip on its first block.
                // A peer we cannot reach gets no writer (its messages are dropped; the next
                // one starts a new writer).
                let mut stream = tokio::select! {
                    _ = me.inner.cancel.cancelled() => None,
                    opened = open(&mut control, peer) => opened
                        .map_err(|e| debug!(%peer, error = %e, "cannot open bitswap stream"))
                        .ok(),
                };
                while stream.is_some() {
                    // An idle writer ends (the peer closes our idle stream after the same
                    // time), so writers are kept only for peers active lately, however many
                    // identities have opened a stream to us.
                    let msg = tokio::select! {
                        _ = me.inner.cancel.cancelled() => break,
                        m = tokio::time::timeout(INBOUND_IDLE, rx.recv()) => match m {
                            Ok(Some(m)) => m,
                            Ok(None) | Err(_) => break,
                        },
                    };
                    // One reconnect attempt per message: a stream reset by the peer is reopened.
                    let mut sent = false;
                    for _ in 0..2 {
                        if stream.is_none() {
                            match open(&mut control, peer).await {
                                Ok(s) => stream = Some(s),
                                Err(e) => {
                                    debug!(%peer, error = %e, "cannot open bitswap stream");
                                    break;
                                }
                            }
                        }
                        if let Some(s) = stream.as_mut() {
                            match tokio::time::timeout(WRITE_TIMEOUT, write_message(s, &msg)).await
                            {
                                Ok(Ok(())) => {
                                    sent = true;
                                    break;
                                }
                                Ok(Err(e)) => {
                                    debug!(%peer, error = %e, "bitswap stream failed");
                                    stream = None;
                                }
                                Err(_) => {
                                    // Not a reset: the peer stopped reading. No second try.
                                    debug!(%peer, "bitswap peer took nothing for 30 s; writer ends");
                                    me.inner
                                        .counters
                                        .writers_stalled
                                        .fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                            }
                        }
                    }
                    tracing::trace!(%peer, sent, wants = msg.wantlist.as_ref().map_or(0, |w| w.entries.len()), blocks = msg.payload.len(), "bitswap message out");
                    if !sent {
                        // Peer unreachable: forget the writer so a later send starts afresh.
                        break;
                    }
                    me.inner
                        .counters
                        .blocks_sent
                        .fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
                    let bytes: usize = msg.payload.iter().map(|b| b.data.len()).sum();
                    me.inner
                        .counters
                        .bytes_sent
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                }
                lock(&me.inner.peers).remove(&peer);
            }
            .in_current_span(),
        );
        tx
    }

    async fn serve_stream(self, peer: PeerId, mut stream: Stream) {
        loop {
            let next = read_message(&mut stream, &self.inner.frames);
            let read = tokio::time::timeout(INBOUND_IDLE, next).await;
            let Ok(read) = read else {
                debug!(%peer, "idle bitswap stream closed");
                return;
            };
            let msg = match read {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(MessageError::Frame(FrameError::Io(e))) => {
                    debug!(%peer, error = %e, "bitswap stream closed");
                    return;
                }
                // Counted and logged by the budget; not `rejected`: others may have filled it.
                Err(MessageError::Frame(e @ FrameError::OverBudget { .. })) => {
                    debug!(%peer, error = %e, "bitswap stream closed");
                    return;
                }
                Err(e) => {
                    warn!(%peer, error = %e, "rejected bitswap message");
                    self.inner.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            self.inner
                .counters
                .messages_in
                .fetch_add(1, Ordering::Relaxed);
            tracing::trace!(%peer, blocks = msg.payload.len(), presences = msg.block_presences.len(), wants = msg.wantlist.as_ref().map_or(0, |w| w.entries.len()), "bitswap message in");
            if !self.on_message(peer, msg).await {
                // Its answers found no room for the write timeout: the peer does not read
                // them. Close its stream rather than read its next wantlist and hold more
                // blocks for another timeout (THREATS N15).
                debug!(%peer, "bitswap stream closed: the peer takes none of its answers");
                return;
            }
        }
    }

    /// Ingests `msg` and answers its wants; false when an answer found no room in the peer's
    /// queue for [`WRITE_TIMEOUT`] (the stream is then closed).
    async fn on_message(&self, peer: PeerId, mut msg: Message) -> bool {
        let wants = msg.wantlist.take();
        if !msg.payload.is_empty() || !msg.block_presences.is_empty() {
            let me = self.clone();
            // Sled calls block: run them off the async workers.
            if let Err(e) = tokio::task::spawn_blocking(move || me.ingest(peer, &msg)).await {
                warn!(%peer, error = %e, "bitswap ingest task failed");
            }
        }
        let Some(mut wants) = wants else {
            return true;
        };
        // Each block once per message: a wantlist naming one large block a thousand times
        // would otherwise be answered with a thousand copies.
        let mut seen = std::collections::HashSet::new();
        let listed = wants.entries.len();
        wants.entries.retain(|e| seen.insert((e.cid, e.cancel)));
        if wants.entries.len() < listed {
            self.inner
                .counters
                .wants_deduplicated
                .fetch_add((listed - wants.entries.len()) as u64, Ordering::Relaxed);
        }
        for chunk in wants.entries.chunks(WANTS_PER_BATCH) {
            let request = Message {
                wantlist: Some(bitswap::Wantlist {
                    entries: chunk.to_vec(),
                    full: false,
                }),
                ..Message::default()
            };
            let store = self.inner.store.clone();
            let replies =
                tokio::task::spawn_blocking(move || bitswap::respond(store.as_ref(), &request))
                    .await;
            match replies {
                Ok(Ok(replies)) => {
                    for reply in replies {
                        if !self.send_wait(peer, reply).await {
                            return false;
                        }
                    }
                }
                Ok(Err(e)) => warn!(%peer, error = %e, "cannot answer bitswap wants"),
                Err(e) => warn!(%peer, error = %e, "bitswap responder task failed"),
            }
        }
        true
    }

    /// Queues a message to `peer`, waiting for room (at most [`WRITE_TIMEOUT`]); false if the
    /// peer's writer is gone or took nothing meanwhile.
    async fn send_wait(&self, peer: PeerId, message: Message) -> bool {
        let writer = self.writer(peer);
        matches!(
            tokio::time::timeout(WRITE_TIMEOUT, writer.send(message)).await,
            Ok(Ok(()))
        )
    }

    /// The queue of `peer`'s writer, started if there is none.
    fn writer(&self, peer: PeerId) -> mpsc::Sender<Message> {
        lock(&self.inner.peers)
            .entry(peer)
            .or_insert_with(|| self.spawn_writer(peer))
            .clone()
    }

    /// Stores wanted blocks and tells the sessions that want them (blocking: sled).
    fn ingest(&self, peer: PeerId, msg: &Message) {
        let c = &self.inner.counters;
        let (mut delivered, mut claimed) = (false, false);
        // Each block once per message, like presences below: a message repeating one small
        // wanted block thousands of times would store it and queue an event per copy.
        let mut blocks_seen = std::collections::HashSet::new();
        for block in &msg.payload {
            if !blocks_seen.insert(block.cid) {
                c.wants_deduplicated.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let targets = self.sessions_wanting(&block.cid);
            if targets.is_empty() {
                c.unwanted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // `put` re-verifies the hash and the size limit.
            if let Err(e) = self.inner.store.put(&block.cid, &block.data) {
                warn!(%peer, cid = %block.cid, error = %e, "received block not stored");
                continue;
            }
            let links =
                agora_storage::blockstore::block_links(&block.cid, &block.data).unwrap_or_default();
            c.blocks_received.fetch_add(1, Ordering::Relaxed);
            c.bytes_received
                .fetch_add(block.data.len() as u64, Ordering::Relaxed);
            delivered = true;
            for tx in targets {
                let _ = tx.send(SessionEvent::Block {
                    cid: block.cid,
                    size: block.data.len(),
                    links: links.clone(),
                    from: peer,
                });
            }
        }
        // Each presence once per message: 8,192 copies of one wanted block's HAVE would queue
        // 8,192 events for its fetch (the bitswap audit of session 51).
        let mut seen = std::collections::HashSet::new();
        for p in &msg.block_presences {
            if !seen.insert((p.cid, p.kind == PresenceType::Have)) {
                c.wants_deduplicated.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let targets = self.sessions_wanting(&p.cid);
            claimed |= p.kind == PresenceType::Have && !targets.is_empty();
            for tx in targets {
                let ev = match p.kind {
                    PresenceType::Have => SessionEvent::Have(p.cid, peer),
                    PresenceType::DontHave => SessionEvent::DontHave(p.cid, peer),
                };
                let _ = tx.send(ev);
            }
        }
        // Only wanted blocks and presences count: unsolicited ones earn no rank.
        if delivered {
            lock(&self.inner.scores).delivered(peer, Instant::now());
        } else if claimed {
            lock(&self.inner.scores).claimed(peer, Instant::now());
        }
    }

    fn sessions_wanting(&self, cid: &Cid) -> Vec<mpsc::UnboundedSender<SessionEvent>> {
        lock(&self.inner.sessions)
            .values()
            .filter(|(_, wanted)| wanted.contains(cid))
            .map(|(tx, _)| tx.clone())
            .collect()
    }

    /// Forgets `cids` for `session` (they arrived or were abandoned).
    pub fn unwant(&self, session: u64, cids: &[Cid]) {
        if let Some((_, wanted)) = lock(&self.inner.sessions).get_mut(&session) {
            wanted.retain(|c| !cids.contains(c));
        }
    }
}

/// Opens a bitswap stream, falling back to older protocol versions.
async fn open(control: &mut Control, peer: PeerId) -> Result<Stream, OpenStreamError> {
    let mut last = None;
    for p in PROTOCOLS {
        match control.open_stream(peer, StreamProtocol::new(p)).await {
            Ok(s) => return Ok(s),
            Err(OpenStreamError::UnsupportedProtocol(proto)) => {
                last = Some(OpenStreamError::UnsupportedProtocol(proto));
            }
            Err(e) => return Err(e),
        }
    }
    Err(
        last.unwrap_or(OpenStreamError::UnsupportedProtocol(StreamProtocol::new(
            bitswap::PROTOCOL,
        ))),
    )
}
