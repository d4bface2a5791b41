//! Devnet scenario builder: in-process agora nodes on ephemeral loopback ports, for tests and
//! benchmarks. Each node has its own temp data dir and runs inside a tracing span carrying its
//! short id.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut net = agora_devnet::Devnet::builder().nodes(5).spawn().await?;
//! net.wait_connected(4, std::time::Duration::from_secs(20)).await?;
//! net.stop(2).await;
//! net.restart(2).await?;
//! net.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The crate also holds the devnet of real processes behind `agora devnet …` ([`process`]:
//! launch, status, kill, restart, simulated sensors), its files ([`files`]: genesis, manifest,
//! per-node config), the flagship demo ([`demo`]: `agora devnet demo`) and the table/JSON
//! printing the `agora` commands share ([`output`]). May depend on the
//! daemon and every crate below it (it starts whole nodes), on `anyhow` and `clap`; only the
//! `agora` binary and the tests depend on it.
#![forbid(unsafe_code)]

pub mod demo;
pub mod devices;
pub mod files;
pub mod output;
pub mod process;
pub mod progress;
pub mod sensor_keys;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agora_daemon::config::NodeConfig;
use agora_daemon::data_dir::{init_data_dir, save_genesis};
use agora_daemon::{self as daemon, RunningNode};
use agora_market::NodeId;
use agora_network::NetworkHandle;
use agora_wire::duration_ms;
use anyhow::{Context, bail};

use crate::files::{GENESIS_FILE, devnet_genesis, devnet_node_config};

/// Reports a test (or part of one) that cannot run on this machine, with the reason, where the
/// person running the suite sees it: libtest swallows what a passing test prints with
/// `eprintln!`, so the notice goes to the process's stderr directly; and since a test runner
/// that runs each test in its own process (cargo-nextest, what `scripts/test.sh` uses) captures
/// even that, the line is also appended to the file named by `AGORA_SKIPPED_FILE` when it is
/// set, which `scripts/test.sh` lists and counts in its summary. Return from the test right
/// after calling it.
pub fn skipped(test: &str, reason: &str) {
    use std::io::Write;
    let line = format!("SKIPPED {test}: {reason}\n");
    // On a line of its own, even if libtest has half a line of its own out.
    let _ = write!(std::io::stderr(), "\n{line}");
    if let Some(path) = std::env::var_os("AGORA_SKIPPED_FILE") {
        // One `write` of one short line with O_APPEND: lines of tests running side by side
        // do not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Builder for an in-process devnet.
#[derive(Clone, Debug)]
pub struct DevnetBuilder {
    nodes: usize,
    presence_interval_ms: u64,
    presence_timeout_ms: u64,
    gossip_heartbeat_ms: u64,
    idle_ping_ms: Option<u64>,
    trim_grace_ms: Option<u64>,
    manual: usize,
    target_peers: Option<usize>,
    committee: Option<usize>,
    wan: Option<agora_network::wan::WanProfile>,
    gc_interval_ms: Option<u64>,
    inbound_frame_bytes: Option<usize>,
}

struct Slot {
    name: String,
    data_dir: PathBuf,
    config: NodeConfig,
    node_id: NodeId,
    running: Option<RunningNode>,
}

/// A set of in-process nodes.
pub struct Devnet {
    _dir: tempfile::TempDir,
    slots: Vec<Slot>,
}

impl std::fmt::Debug for Devnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devnet")
            .field("nodes", &self.slots.len())
            .finish()
    }
}

impl Default for DevnetBuilder {
    fn default() -> Self {
        DevnetBuilder {
            nodes: 3,
            presence_interval_ms: 250,
            presence_timeout_ms: 1000,
            gossip_heartbeat_ms: 200,
            idle_ping_ms: None,
            trim_grace_ms: None,
            manual: 0,
            target_peers: None,
            committee: None,
            wan: None,
            gc_interval_ms: None,
            inbound_frame_bytes: None,
        }
    }
}

impl DevnetBuilder {
    /// Number of nodes.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// The last `m` nodes do not bid automatically.
    pub fn manual(mut self, m: usize) -> Self {
        self.manual = m;
        self
    }

    /// Gossipsub heartbeat (mesh maintenance and lazy gossip) interval.
    pub fn gossip_heartbeat(mut self, every: Duration) -> Self {
        self.gossip_heartbeat_ms = duration_ms(every);
        self
    }

    /// Ping interval on every connection (default: the node's).
    pub fn idle_ping(mut self, every: Duration) -> Self {
        self.idle_ping_ms = Some(duration_ms(every));
        self
    }

    /// Age after which a spare connection may be closed (default: the node's, 30 s).
    pub fn trim_grace(mut self, after: Duration) -> Self {
        self.trim_grace_ms = Some(duration_ms(after));
        self
    }

    /// Heartbeat interval and timeout for watched peers.
    pub fn presence(mut self, interval: Duration, timeout: Duration) -> Self {
        self.presence_interval_ms = duration_ms(interval);
        self.presence_timeout_ms = duration_ms(timeout);
        self
    }

    /// Each node dials Kademlia-discovered peers only while it has fewer than `n` connections
    /// (default: the node's default, 16); `1` gives a star around node 0.
    pub fn target_peers(mut self, n: usize) -> Self {
        self.target_peers = Some(n);
        self
    }

    /// WAN emulation on every node's TCP links (`agora devnet up --latency …`'s profile).
    pub fn wan(mut self, profile: Option<agora_network::wan::WanProfile>) -> Self {
        self.wan = profile;
        self
    }

    /// Only the first `k` nodes form the arbitrator committee (default: as `agora devnet up`,
    /// [`files::committee_size`]); `k` above the node count means every node.
    pub fn committee(mut self, k: usize) -> Self {
        self.committee = Some(k.max(1));
        self
    }

    /// Collection of unpinned blocks this long after an unpin (`storage.gc_interval_ms`;
    /// default: the node's, 60 s; zero: only by hand).
    pub fn gc_interval(mut self, every: Duration) -> Self {
        self.gc_interval_ms = Some(duration_ms(every));
        self
    }

    /// The budget of frames being read from peers on every node (`network.inbound_frame_bytes`;
    /// default: the node's, 64 MiB).
    pub fn inbound_frame_bytes(mut self, bytes: usize) -> Self {
        self.inbound_frame_bytes = Some(bytes);
        self
    }

    /// Creates data dirs and genesis, then starts every node (node 0 first; the others
    /// bootstrap from it).
    pub async fn spawn(self) -> anyhow::Result<Devnet> {
        if self.nodes == 0 {
            bail!("a devnet needs at least one node");
        }
        let dir = tempfile::Builder::new().prefix("agora-devnet-").tempdir()?;
        let genesis_path = dir.path().join(GENESIS_FILE);
        let mut slots = Vec::new();
        for i in 0..self.nodes {
            let name = format!("node{i}");
            let data_dir = dir.path().join(&name);
            let mut config = devnet_node_config(i, &genesis_path, i + self.manual >= self.nodes);
            config.network.presence_interval_ms = self.presence_interval_ms;
            config.network.presence_timeout_ms = self.presence_timeout_ms;
            config.network.gossip_heartbeat_ms = self.gossip_heartbeat_ms;
            if let Some(ms) = self.idle_ping_ms {
                config.network.idle_ping_interval_ms = ms;
            }
            if let Some(ms) = self.trim_grace_ms {
                config.network.trim_grace_ms = ms;
            }
            if let Some(t) = self.target_peers {
                config.network.target_peers = t;
            }
            config.network.wan = self.wan;
            if let Some(ms) = self.gc_interval_ms {
                config.storage.gc_interval_ms = ms;
            }
            if let Some(bytes) = self.inbound_frame_bytes {
                config.network.inbound_frame_bytes = bytes;
            }
            let key = init_data_dir(&data_dir, &config)?;
            slots.push(Slot {
                name,
                data_dir,
                config,
                node_id: key.node_id(),
                running: None,
            });
        }
        let ids: Vec<_> = slots.iter().map(|s| (s.name.clone(), s.node_id)).collect();
        let committee = self.committee.map(|k| k.min(self.nodes));
        let genesis = devnet_genesis(&ids, agora_wire::now_ms(), committee)?;
        save_genesis(&genesis_path, &genesis)?;
        let mut net = Devnet { _dir: dir, slots };
        for i in 0..net.slots.len() {
            if i > 0 {
                let boot: Vec<String> = net.slots[0]
                    .running
                    .as_ref()
                    .map(|n| n.p2p_addrs.iter().map(|a| a.to_string()).collect())
                    .unwrap_or_default();
                net.slots[i].config.network.bootstrap = boot;
            }
            net.start(i).await?;
        }
        Ok(net)
    }
}

impl Devnet {
    /// A builder with defaults (3 nodes).
    pub fn builder() -> DevnetBuilder {
        DevnetBuilder::default()
    }

    /// Number of nodes (running or stopped).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the devnet has no nodes.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Node `i`'s id.
    pub fn node_id(&self, i: usize) -> NodeId {
        self.slots[i].node_id
    }

    /// Node `i`, if running.
    pub fn node(&self, i: usize) -> Option<&RunningNode> {
        self.slots.get(i).and_then(|s| s.running.as_ref())
    }

    /// Node `i`'s network handle; errors if it is stopped.
    pub fn handle(&self, i: usize) -> anyhow::Result<NetworkHandle> {
        self.node(i)
            .map(|n| n.network.clone())
            .with_context(|| format!("node{i} is not running"))
    }

    /// Node `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.slots[i].data_dir.clone()
    }

    async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let slot = &mut self.slots[i];
        let node = daemon::start(&slot.data_dir, &slot.config)
            .await
            .with_context(|| format!("starting {}", slot.name))?;
        // Pin the ports this node got so a restart comes back on the same address.
        slot.config.network.listen = node
            .p2p_addrs
            .iter()
            .map(|a| {
                a.to_string()
                    .split("/p2p/")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        slot.running = Some(node);
        Ok(())
    }

    /// Stops node `i` (a crash from the others' point of view).
    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.slots.get_mut(i).and_then(|s| s.running.take()) {
            node.shutdown().await;
        }
    }

    /// Restarts a stopped node `i` on its previous ports, bootstrapping from every running node.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let all: Vec<usize> = (0..self.slots.len()).collect();
        self.restart_from(i, &all).await
    }

    /// Restarts a stopped node `i` on its previous ports, bootstrapping only from those of
    /// `from` that are running (so the others learn of the restart only by dialing it).
    pub async fn restart_from(&mut self, i: usize, from: &[usize]) -> anyhow::Result<()> {
        if self.node(i).is_some() {
            bail!("node{i} is already running");
        }
        let boot: Vec<String> = from
            .iter()
            .filter_map(|j| self.node(*j))
            .flat_map(|n| n.p2p_addrs.iter().map(|a| a.to_string()))
            .collect();
        self.slots[i].config.network.bootstrap = boot;
        self.start(i).await
    }

    /// Waits until every running node has at least `min_peers` connections.
    pub async fn wait_connected(&self, min_peers: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ok = true;
            for s in &self.slots {
                if let Some(n) = &s.running
                    && n.network.peers().await?.len() < min_peers
                {
                    ok = false;
                    break;
                }
            }
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nodes did not reach {min_peers} peers within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the market of every running node takes work: it holds the capacity of the
    /// contracts the node runs, which it reads once its ledger is current (THREATS C35). Until
    /// then an auction gets no bid from it unless its window is still open by then.
    pub async fn wait_markets_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for s in &self.slots {
            let Some(n) = &s.running else { continue };
            while !n.market.query(|m| m.capacity_restored()).await? {
                if Instant::now() > deadline {
                    bail!("{}'s market took no work within {timeout:?}", s.name);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.slots.len() {
            self.stop(i).await;
        }
    }
}
