//! The adversary: hostile peers against a devnet of real `agora` processes (issue #13, "An
//! adversary you can run").
//!
//! [`HostileDevnet`] starts `n` real `agora node run` processes on loopback (ephemeral ports,
//! a temp dir; every process is stopped when it is dropped, even when the test panics) and
//! reads what an attack test asserts afterwards: whether each process is alive, its resident
//! memory, its network counters (`agora status --json`). [`Adversary`] is a hostile peer built
//! on our own crates: a libp2p swarm from `agora-network` with an identity of its own that
//! joins the devnet and can
//! - publish raw bytes on any gossip topic ([`Adversary::publish_raw`]),
//! - send raw request-response bytes to any node ([`Adversary::request_raw`]),
//! - open raw streams on any protocol, heartbeat and bitswap included ([`Adversary::open_stream`]),
//! - answer the market requests that come to it and record them ([`listen`]),
//! - seal envelopes of any kind with its own key ([`Adversary::seal`]), or hand-craft broken
//!   ones with [`envelopes`] (forged signature, replayed, stale, future-dated, oversized, wrong
//!   kind, garbage),
//! - forge radio checkpoints ([`radio`]),
//! - run nothing as a hosted contract's provider ([`host_nothing`], in `agora-byzantine`),
//! - and come in numbers: [`Adversary::many`] joins throwaway identities (keys are free).
//!
//! Attack families live in one file each under `adversary/` and are used by the tests in
//! `tests/tests/e2e/attack_*.rs`. Each attack test asserts what honest nodes still do (a transfer
//! finalises, an auction awards, …) and that no node process died ([`HostileDevnet::assert_alive`]).

pub mod challenge;
pub mod envelopes;
pub mod flood;
pub mod gossip;
pub mod host_nothing;
pub mod never_arm;
pub mod radio;
pub mod slow_start;
pub mod twist;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_api::client::ApiClient;
use agora_api::ledger::{BalanceReply, SubmittedReply, TransferRequest};
use agora_devnet::files::{DevnetManifest, DevnetNode};
use agora_devnet::process::{Launcher, is_our_process, spawn_node, spawn_node_with, up_with};
use agora_market::{KeySigner, MarketMessage, NodeId};
use agora_network::keys::{NodeKey, peer_id_of};
use agora_network::{Interest, NetworkEvent};
use agora_network::{Multiaddr, NetworkConfig, NetworkHandle, NetworkStats, PeerId, Stream};
use agora_network::{NetworkError, StreamProtocol};
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;
use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::{DevnetGuard, agora_bin, alive};

/// How long the helpers wait for a devnet or a peer before giving up.
pub const WAIT: Duration = Duration::from_secs(60);

/// The `byzantine:` lines the `agora-byzantine` node of `data_dir` printed to its log (the
/// devnet writes its stdout to `node.log`).
pub fn byzantine_lines(data_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(data_dir.join("node.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("byzantine: "))
        .map(String::from)
        .collect()
}

/// The value of `key=…` in a `byzantine:` line; panics naming the line when it has none.
pub fn byzantine_field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in `{line}`"))
}

/// The lines of `data_dir`'s `node.log` without their terminal colour codes (`ESC [ … m`), so
/// a tracing field reads `key=value`.
pub fn log_lines(data_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(data_dir.join("node.log"))
        .unwrap_or_default()
        .lines()
        .map(strip_ansi)
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        match (in_code, c) {
            (false, '\u{1b}') => in_code = true,
            (false, c) => out.push(c),
            (true, 'm') => in_code = false,
            (true, _) => {}
        }
    }
    out
}

/// Starts devnet nodes from the `agora` binary of this test run (not the test executable).
pub struct TestLauncher(pub PathBuf);

impl Launcher for TestLauncher {
    fn host(&self, _i: usize) -> String {
        "127.0.0.1".into()
    }
    fn spawn(&self, _i: usize, exe: &Path, data_dir: &Path) -> anyhow::Result<u32> {
        spawn_node(exe, data_dir)
    }
    fn exe(&self) -> anyhow::Result<PathBuf> {
        Ok(self.0.clone())
    }
}

/// Starts devnet nodes like [`TestLauncher`], except node `node`, which runs `exe` (the test
/// crate's `agora-byzantine` binary: the same node with misbehaviours) with `args` after
/// `node run --data-dir DIR`. Restarts of that node come back byzantine too.
pub struct ByzantineLauncher {
    /// The honest nodes' launcher.
    pub honest: TestLauncher,
    /// The byzantine binary (`env!("CARGO_BIN_EXE_agora-byzantine")` in a test).
    pub exe: PathBuf,
    /// The byzantine nodes by index, each with its misbehaviours, e.g.
    /// `(3, ["--skew-proposals", "30d"])`.
    pub bad: Vec<(usize, Vec<String>)>,
    /// Changes every node's config before its data dir is written (`None`: the defaults).
    pub tune: Option<fn(usize, &mut agora_daemon::config::NodeConfig)>,
}

impl Launcher for ByzantineLauncher {
    fn host(&self, i: usize) -> String {
        self.honest.host(i)
    }
    fn configure(&self, i: usize, config: &mut agora_daemon::config::NodeConfig) {
        if let Some(tune) = self.tune {
            tune(i, config);
        }
    }
    fn spawn(&self, i: usize, exe: &Path, data_dir: &Path) -> anyhow::Result<u32> {
        if let Some((_, args)) = self.bad.iter().find(|(n, _)| *n == i) {
            spawn_node_with(&self.exe, data_dir, args)
        } else {
            self.honest.spawn(i, exe, data_dir)
        }
    }
    fn exe(&self) -> anyhow::Result<PathBuf> {
        self.honest.exe()
    }
}

/// A devnet of real `agora` processes under attack; stopped (and its temp dir removed) on drop.
pub struct HostileDevnet {
    /// What `devnet up` started (node ids, pids, data dirs, addresses).
    pub manifest: DevnetManifest,
    // Dropped first: stops the processes before the directory goes.
    _guard: DevnetGuard,
    _tmp: tempfile::TempDir,
}

impl std::fmt::Debug for HostileDevnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostileDevnet")
            .field("dir", &self.manifest.dir)
            .finish()
    }
}

impl HostileDevnet {
    /// Starts `nodes` processes and waits until they are connected.
    pub async fn up(nodes: usize) -> anyhow::Result<HostileDevnet> {
        Self::up_with(nodes, &TestLauncher(agora_bin())).await
    }

    /// [`Self::up`] with the processes started by `launcher` (e.g. a [`ByzantineLauncher`]).
    pub async fn up_with(nodes: usize, launcher: &dyn Launcher) -> anyhow::Result<HostileDevnet> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("net");
        let guard = DevnetGuard(dir.clone());
        let manifest = up_with(&dir, nodes, 0, WAIT, launcher).await?;
        Ok(HostileDevnet {
            manifest,
            _guard: guard,
            _tmp: tmp,
        })
    }

    /// Stops node `i` (asking it to shut down, then SIGKILL) and starts it again from its data
    /// directory with `launcher` (an honest node becoming byzantine or back again); returns
    /// once its control API answers. The manifest keeps the new pid, so the devnet's cleanup
    /// stops it.
    pub async fn restart_with(&mut self, i: usize, launcher: &dyn Launcher) -> anyhow::Result<()> {
        let node = self.manifest.nodes[i].clone();
        if let Some(pid) = node.pid {
            if let Ok(c) = ApiClient::for_data_dir(&node.data_dir) {
                let _ = c.shutdown().await;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while is_our_process(pid, &node.data_dir) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if is_our_process(pid, &node.data_dir) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let api_file = node.data_dir.join(agora_api::API_ADDR_FILE);
        let _ = std::fs::remove_file(&api_file);
        let exe = launcher.exe()?;
        let pid = launcher.spawn(i, &exe, &node.data_dir)?;
        self.manifest.nodes[i].pid = Some(pid);
        self.manifest.save()?;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(c) = ApiClient::for_data_dir(&node.data_dir)
                && c.status().await.is_ok()
            {
                return Ok(());
            }
            if !alive(u64::from(pid)) {
                bail!(
                    "{} exited on restart; see {}/node.log",
                    node.name,
                    node.data_dir.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer within {WAIT:?} of its restart",
                    node.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Node `i` of the manifest.
    pub fn node(&self, i: usize) -> &DevnetNode {
        &self.manifest.nodes[i]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.manifest.nodes.len()
    }

    /// Whether the devnet has no nodes (never, once `up` succeeded).
    pub fn is_empty(&self) -> bool {
        self.manifest.nodes.is_empty()
    }

    /// Node `i`'s ledger / market identity.
    pub fn node_id(&self, i: usize) -> NodeId {
        self.node(i).node_id.parse().unwrap_or(NodeId([0; 32]))
    }

    /// Node `i`'s libp2p identity.
    pub fn peer_id(&self, i: usize) -> PeerId {
        peer_id_of(&self.node_id(i)).unwrap_or(PeerId::random())
    }

    /// Node `i`'s data directory (for `agora … --data-dir`).
    pub fn data_dir(&self, i: usize) -> String {
        self.node(i).data_dir.display().to_string()
    }

    /// Waits for a `byzantine:` line of node `i` (an `agora-byzantine` process) starting with
    /// `prefix` that contains every one of `parts`, and returns it; panics once `timeout` has
    /// passed.
    pub fn byzantine_line(
        &self,
        i: usize,
        prefix: &str,
        parts: &[&str],
        timeout: Duration,
    ) -> String {
        let dir = &self.node(i).data_dir;
        crate::wait_for(&format!("node{i}'s `{prefix}` {parts:?}"), timeout, || {
            byzantine_lines(dir)
                .into_iter()
                .find(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
        })
    }

    /// A control-API client for node `i`.
    pub fn client(&self, i: usize) -> anyhow::Result<ApiClient> {
        Ok(ApiClient::for_data_dir(&self.node(i).data_dir)?)
    }

    /// The process id of node `i`.
    pub fn pid(&self, i: usize) -> u32 {
        self.node(i).pid.unwrap_or(0)
    }

    /// Every node's p2p addresses (to bootstrap from).
    pub fn p2p_addrs(&self) -> Vec<Multiaddr> {
        let all = self.manifest.nodes.iter().flat_map(|n| n.p2p.iter());
        all.filter_map(|a| a.parse().ok()).collect()
    }

    /// Panics naming every node whose process is gone.
    pub fn assert_alive(&self) {
        let dead: Vec<&str> = self
            .manifest
            .nodes
            .iter()
            .filter(|n| !n.pid.is_some_and(|p| alive(u64::from(p))))
            .map(|n| n.name.as_str())
            .collect();
        assert!(
            dead.is_empty(),
            "node process(es) died under attack: {dead:?}"
        );
    }

    /// Resident memory of node `i`'s process in KiB (`VmRSS`), if it runs.
    pub fn rss_kib(&self, i: usize) -> Option<u64> {
        rss_kib(self.pid(i))
    }

    /// Node `i`'s network counters, as `agora status --json` shows them.
    pub async fn stats(&self, i: usize) -> anyhow::Result<NetworkStats> {
        Ok(self.client(i)?.status().await?.stats)
    }

    /// Every node's network counters, in node order.
    pub async fn all_stats(&self) -> anyhow::Result<Vec<NetworkStats>> {
        let mut all = Vec::with_capacity(self.len());
        for i in 0..self.len() {
            all.push(self.stats(i).await?);
        }
        Ok(all)
    }

    /// Node `to`'s balance as node `at`'s ledger replica sees it.
    pub async fn balance(&self, at: usize, to: usize) -> anyhow::Result<u64> {
        let path = format!("/v1/ledger/accounts/{}", self.node_id(to));
        let reply: BalanceReply = self.client(at)?.get(&path).await?;
        Ok(reply.balance)
    }

    /// The balance of any account (`id`) as node `at`'s ledger replica sees it.
    pub async fn balance_of(&self, at: usize, id: &NodeId) -> anyhow::Result<u64> {
        let path = format!("/v1/ledger/accounts/{id}");
        let reply: BalanceReply = self.client(at)?.get(&path).await?;
        Ok(reply.balance)
    }

    /// Node `from` submits a transfer of `amount` to any account `to` (not waiting for it).
    pub async fn submit_transfer(
        &self,
        from: usize,
        to: &NodeId,
        amount: u64,
    ) -> anyhow::Result<()> {
        let req = TransferRequest {
            to: to.to_string(),
            amount,
        };
        let _: SubmittedReply = self
            .client(from)?
            .post("/v1/ledger/transfer", &req)
            .await
            .with_context(|| format!("node {from} submitting a transfer to {to}"))?;
        Ok(())
    }

    /// The chain id of the devnet's genesis.
    pub fn chain_id(&self) -> anyhow::Result<String> {
        let genesis: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&self.manifest.genesis)?)?;
        genesis["chain_id"]
            .as_str()
            .map(str::to_string)
            .context("genesis without a chain_id")
    }

    /// Honest trading still works: node `from` transfers `amount` to node `to`, and the
    /// transfer is final on every node's replica within [`WAIT`].
    pub async fn transfer_finalises(
        &self,
        from: usize,
        to: usize,
        amount: u64,
    ) -> anyhow::Result<()> {
        let all: Vec<usize> = (0..self.len()).collect();
        self.transfer_finalises_on(from, to, amount, &all).await
    }

    /// [`Self::transfer_finalises`], checked on the replicas of `nodes` only (the others
    /// may be dead).
    pub async fn transfer_finalises_on(
        &self,
        from: usize,
        to: usize,
        amount: u64,
        nodes: &[usize],
    ) -> anyhow::Result<()> {
        let mut before = Vec::with_capacity(nodes.len());
        for &i in nodes {
            before.push((i, self.balance(i, to).await?));
        }
        let req = TransferRequest {
            to: self.node_id(to).to_string(),
            amount,
        };
        let _: SubmittedReply = self
            .client(from)?
            .post("/v1/ledger/transfer", &req)
            .await
            .context("submitting the honest transfer")?;
        let deadline = Instant::now() + WAIT;
        for (i, was) in before {
            loop {
                let now = self.balance(i, to).await.unwrap_or(was);
                if now >= was + amount {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "transfer {from} -> {to} of {amount} not final on node {i} (balance {now}, was {was})"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// Resident memory of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A hostile peer with an identity of its own, connected to a devnet; stopped when dropped.
pub struct Adversary {
    key: NodeKey,
    net: NetworkHandle,
    seq: std::sync::atomic::AtomicU64,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Adversary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adversary")
            .field("node", &self.key.node_id().short())
            .finish()
    }
}

impl Drop for Adversary {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Adversary {
    /// A fresh identity that dials every devnet node and waits until connected to all.
    pub async fn join(net: &HostileDevnet) -> anyhow::Result<Adversary> {
        let adv = Self::start(NodeKey::generate(), net.p2p_addrs()).await?;
        let peers: Vec<PeerId> = (0..net.len()).map(|i| net.peer_id(i)).collect();
        adv.wait_connected(&peers).await?;
        Ok(adv)
    }

    /// A fresh identity that dials every node of a devnet started some other way (a demo
    /// story) and waits until connected to all.
    pub async fn join_manifest(m: &DevnetManifest) -> anyhow::Result<Adversary> {
        let addrs = m.nodes.iter().flat_map(|n| n.p2p.iter());
        let adv = Self::start(
            NodeKey::generate(),
            addrs.filter_map(|a| a.parse().ok()).collect(),
        )
        .await?;
        let peers: Vec<PeerId> = m
            .nodes
            .iter()
            .filter_map(|n| peer_id_of(&n.node_id.parse().ok()?))
            .collect();
        adv.wait_connected(&peers).await?;
        Ok(adv)
    }

    /// `n` throwaway identities, each joined like [`Self::join`].
    pub async fn many(net: &HostileDevnet, n: usize) -> anyhow::Result<Vec<Adversary>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(Self::join(net).await?);
        }
        Ok(out)
    }

    /// A hostile peer with `key`, listening on a free loopback port and dialling `bootstrap`.
    pub async fn start(key: NodeKey, bootstrap: Vec<Multiaddr>) -> anyhow::Result<Adversary> {
        let cfg = NetworkConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            bootstrap,
            // Never trim: the adversary wants every connection it can get.
            target_peers: 1_000,
            ..NetworkConfig::default()
        };
        let cancel = CancellationToken::new();
        let (net, _task) = agora_network::spawn(&key, cfg, cancel.clone()).await?;
        Ok(Adversary {
            key,
            net,
            seq: std::sync::atomic::AtomicU64::new(1),
            cancel,
        })
    }

    /// Waits until connected to every peer in `peers`.
    pub async fn wait_connected(&self, peers: &[PeerId]) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let connected: Vec<String> = self
                .net
                .peers()
                .await?
                .into_iter()
                .map(|p| p.peer_id)
                .collect();
            if peers.iter().all(|p| connected.contains(&p.to_string())) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("adversary connected to {connected:?}, not to all of {peers:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The adversary's signer (to seal envelopes or sign transactions as itself).
    pub fn signer(&self) -> &KeySigner {
        self.key.signer()
    }

    /// The adversary's node id.
    pub fn node_id(&self) -> NodeId {
        self.key.node_id()
    }

    /// The adversary's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.net.peer_id()
    }

    /// The adversary's swarm (subscribe, watch, route traffic to itself, …).
    pub fn network(&self) -> &NetworkHandle {
        &self.net
    }

    /// A correctly signed, fresh envelope of `kind` from the adversary (next sequence number).
    pub fn seal(&self, kind: Kind, payload: Vec<u8>) -> Envelope {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Envelope::seal(self.signer(), kind, now_ms(), seq, payload)
    }

    /// Publishes raw bytes on `topic`, retrying while gossipsub knows no peer subscribed to it
    /// yet (subscriptions spread a moment after connecting). A duplicate of an earlier
    /// message is refused by gossipsub itself: that is returned as an error.
    pub async fn publish_raw(&self, topic: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.until_subscribed(topic, || self.net.publish_bytes(topic, bytes.clone()))
            .await
    }

    /// Publishes `payload` on `topic` in an envelope of `kind` signed by the adversary (the
    /// network's own sealing, as a node does), retrying like [`Self::publish_raw`].
    pub async fn broadcast(&self, topic: &str, kind: Kind, payload: Vec<u8>) -> anyhow::Result<()> {
        self.until_subscribed(topic, || self.net.broadcast(topic, kind, payload.clone()))
            .await
    }

    async fn until_subscribed<F, Fut>(&self, topic: &str, publish: F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), NetworkError>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            match publish().await {
                Ok(()) => return Ok(()),
                Err(NetworkError::Publish { reason, .. })
                    if reason.contains("NoPeersSubscribedToTopic") =>
                {
                    if Instant::now() > deadline {
                        bail!("no devnet peer subscribed to {topic}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e).context(format!("publishing on {topic}")),
            }
        }
    }

    /// Sends raw request bytes to `peer`; the node's validated answer, or why there was none
    /// (refused, closed, timed out).
    pub async fn request_raw(
        &self,
        peer: PeerId,
        bytes: Vec<u8>,
    ) -> Result<Envelope, NetworkError> {
        self.net.request_bytes(peer, bytes).await
    }

    /// Opens a raw stream to `peer` on `protocol` (e.g. `/agora/heartbeat/1.0.0`,
    /// `/ipfs/bitswap/1.2.0`).
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: &'static str,
    ) -> anyhow::Result<Stream> {
        let mut control = self.net.stream_control();
        control
            .open_stream(peer, StreamProtocol::new(protocol))
            .await
            .with_context(|| format!("opening {protocol} to {peer}"))
    }
}

/// Acknowledges every market request `key` receives, as a node does, and hands each decoded
/// one to `seen` (a throwaway customer recording the bids and awards that come to it); runs on
/// `rt` until the returned task is aborted.
pub fn listen(
    rt: &tokio::runtime::Runtime,
    key: &Arc<Adversary>,
    mut seen: impl FnMut(&MarketMessage) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut inbox = key
        .network()
        .inbox(Interest::new("throwaway-key").requests(Kind::Market));
    let key = key.clone();
    rt.spawn(async move {
        loop {
            let NetworkEvent::Request { id, envelope, .. } = inbox.recv().await else {
                continue;
            };
            let ack = key.seal(Kind::Market, Vec::new());
            let _ = key.network().respond(id, &ack).await;
            if let Ok(message) = MarketMessage::decode(&envelope.payload) {
                seen(&message);
            }
        }
    })
}
