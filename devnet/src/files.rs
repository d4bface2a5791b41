//! Files of a devnet: its genesis (every node funded, the committee a bounded prefix of the nodes),
//! the manifest `agora devnet up` writes (which nodes, where, which processes), and the config
//! of each devnet node. Writing a data directory and reading a genesis file are the daemon's
//! (`agora_daemon::data_dir`), since a node outside any devnet needs them too.

use std::path::{Path, PathBuf};

use agora_contracts::{Genesis, GenesisAccount};
use agora_market::NodeId;
use serde::{Deserialize, Serialize};

use agora_daemon::config::NodeConfig;

/// Genesis file name inside a devnet directory.
pub const GENESIS_FILE: &str = "genesis.json";
/// Manifest file name inside a devnet directory.
pub const MANIFEST_FILE: &str = "devnet.json";

/// Starting balance of every devnet account.
pub const DEVNET_BALANCE: u64 = 1_000_000;

/// The smallest devnet in which any two nodes can make a contract: seven nodes are all
/// arbitrators (3f+1 with f = 2), so a contract's committee — every arbitrator but its two
/// parties — has five members, above the ledger's `min_committee` of 4, and the chain still
/// decides blocks with both parties down.
pub const CONTRACT_NODES: usize = 7;

/// Arbitrators of a devnet of at least [`CONTRACT_NODES`] nodes unless `--arbitrators` says
/// otherwise. Arbitrators vote on every block and watch each other with fast heartbeats, so a
/// committee that grew with the devnet made every idle node's cost grow with it (issue #15);
/// seven keeps a contract between two arbitrators at a committee of five (≥ `min_committee`).
pub const DEFAULT_ARBITRATORS: usize = CONTRACT_NODES;

/// Why a devnet cannot have the committee asked for.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitteeError {
    /// Zero arbitrators, or more than there are nodes.
    #[error("--arbitrators {asked} is not possible with {nodes} nodes; pass 1 to {nodes}")]
    OutOfRange {
        /// Asked for.
        asked: usize,
        /// Nodes in the devnet.
        nodes: usize,
    },
}

/// How many of `n` devnet nodes are arbitrators: `asked`, or by default the largest 3f+1 that
/// fits (all nodes when fewer than four), capped at [`DEFAULT_ARBITRATORS`], so the committee
/// stays the same size however large the devnet grows.
pub fn committee_size(n: usize, asked: Option<usize>) -> Result<usize, CommitteeError> {
    match asked {
        Some(k) if k == 0 || k > n => Err(CommitteeError::OutOfRange { asked: k, nodes: n }),
        Some(k) => Ok(k),
        None if n < 4 => Ok(n),
        None => Ok((3 * ((n - 1) / 3) + 1).min(DEFAULT_ARBITRATORS)),
    }
}

/// The arbitrators of a devnet: the first `k` accounts that hold at least the arbitrator bond
/// (the ledger locks it at genesis), in node order, so `node0` … `node{k-1}` when every node
/// is funded, as in a devnet. Fewer than `k` when fewer are funded.
pub fn choose_committee(accounts: &[GenesisAccount], bond: u64, k: usize) -> Vec<NodeId> {
    accounts
        .iter()
        .filter(|a| a.balance >= bond)
        .map(|a| a.id)
        .take(k)
        .collect()
}

/// A devnet genesis (the ledger's own [`Genesis`] type): every node funded with
/// [`DEVNET_BALANCE`], the faucet on, and a committee of [`committee_size`] nodes chosen by
/// [`choose_committee`].
pub fn devnet_genesis(
    nodes: &[(String, NodeId)],
    created_at: u64,
    arbitrators: Option<usize>,
) -> Result<Genesis, CommitteeError> {
    let k = committee_size(nodes.len(), arbitrators)?;
    let accounts: Vec<GenesisAccount> = nodes
        .iter()
        .map(|(_, id)| GenesisAccount {
            id: *id,
            balance: DEVNET_BALANCE,
        })
        .collect();
    let params = agora_contracts::LedgerParams::default();
    Ok(Genesis {
        chain_id: format!("agora-devnet-{created_at}"),
        committee: choose_committee(&accounts, params.arbitrator_bond, k),
        accounts,
        faucet_enabled: true,
        params,
    })
}

/// One node of a devnet, as recorded by `agora devnet up`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DevnetNode {
    /// Label (`node0`, ...).
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Node id (base58).
    pub node_id: String,
    /// Process id while running.
    pub pid: Option<u32>,
    /// Control API address.
    pub api: String,
    /// p2p addresses.
    pub p2p: Vec<String>,
    /// Metrics listener (`/metrics`, `/health`, `/ready`), when started with `--metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// File in the devnet directory with a Prometheus scrape config (`agora devnet up --metrics`).
pub const PROMETHEUS_FILE: &str = "prometheus.yml";

/// A Prometheus config scraping every node of the devnet that serves metrics, each labelled
/// with its node name; `interval_ms` is the scrape (and evaluation) interval.
pub fn prometheus_config(nodes: &[DevnetNode], interval_ms: u64) -> String {
    let interval = if interval_ms.is_multiple_of(1000) {
        format!("{}s", interval_ms / 1000)
    } else {
        format!("{interval_ms}ms")
    };
    let mut out = format!(
        "# Written by `agora devnet up --metrics`; run: prometheus --config.file=prometheus.yml\n\
         global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
         scrape_configs:\n  - job_name: agora-devnet\n    metrics_path: /metrics\n    \
         static_configs:\n"
    );
    for n in nodes {
        if let Some(addr) = &n.metrics {
            out.push_str(&format!(
                "      - targets: [\"{addr}\"]\n        labels:\n          node: \"{}\"\n",
                n.name
            ));
        }
    }
    out
}

/// What `agora devnet up` started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DevnetManifest {
    /// The devnet directory.
    pub dir: PathBuf,
    /// The genesis file.
    pub genesis: PathBuf,
    /// The nodes.
    pub nodes: Vec<DevnetNode>,
}

/// Errors with devnet files.
#[derive(Debug, thiserror::Error)]
pub enum DevnetFileError {
    /// Missing or unreadable manifest.
    #[error(
        "no devnet in {0} (missing {MANIFEST_FILE}); create one with `agora devnet up --dir {0}`"
    )]
    NoManifest(PathBuf),
    /// Corrupt file.
    #[error("{0} is not valid: {1}")]
    Invalid(PathBuf, String),
    /// Write failure.
    #[error("cannot write {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl DevnetManifest {
    /// Reads `<dir>/devnet.json`.
    pub fn load(dir: &Path) -> Result<DevnetManifest, DevnetFileError> {
        let path = dir.join(MANIFEST_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|_| DevnetFileError::NoManifest(dir.into()))?;
        serde_json::from_str(&text).map_err(|e| DevnetFileError::Invalid(path, e.to_string()))
    }

    /// Writes `<dir>/devnet.json`.
    pub fn save(&self) -> Result<(), DevnetFileError> {
        let path = self.dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| DevnetFileError::Invalid(path.clone(), e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| DevnetFileError::Io(path, e))
    }

    /// TCP bootstrap addresses of every node (what `--join` dials).
    pub fn bootstrap_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| n.p2p.iter())
            .filter(|a| a.contains("/tcp/"))
            .cloned()
            .collect()
    }
}

/// Centre of the simulated devnet region (Vienna); node `i` sits a few hundred metres away.
pub const DEVNET_CENTER: (f64, f64) = (48.2082, 16.3738);
/// Where devnet node `i` says it is: 0.002° apart from each other from [`DEVNET_CENTER`]
/// (about 280 m).
pub fn devnet_location(i: usize) -> agora_market::Location {
    let offset = i as f64 * 0.002;
    agora_market::Location {
        lat: DEVNET_CENTER.0 + offset,
        lon: DEVNET_CENTER.1 - offset,
    }
}

/// Config of devnet node `i`: loopback with free ports, a provider capacity typical of an edge
/// gateway (4 cores, 4 GiB, one LoRa/BLE/Wi-Fi radio each), a location near
/// [`DEVNET_CENTER`]. A `manual` node neither bids nor accepts awards on its own: its operator
/// does both from the CLI.
pub fn devnet_node_config(i: usize, genesis: &Path, manual: bool) -> NodeConfig {
    use agora_market::{Interface, Resources};
    let mut config = NodeConfig::default();
    config.node.name = format!("node{i}");
    config.node.genesis = Some(genesis.to_path_buf());
    config.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    config.api.listen = "127.0.0.1:0".into();
    config.radio.listen = "127.0.0.1:0".into();
    // Devnet contracts hand over after one second of attested unreachability.
    config.deals.customer.handover_after_ms = 1_000;
    config.deals.customer.heartbeat_interval_ms = 500;
    let engine = &mut config.market.engine;
    engine.capacity = Resources {
        cpu_millis: 4000,
        memory_bytes: 4 << 30,
        storage_bytes: 64 << 30,
        bandwidth_bps: 100_000_000,
        ..Resources::default()
    }
    .with_interface(Interface::LoRa, 1)
    .with_interface(Interface::Ble, 1)
    .with_interface(Interface::Wifi, 1);
    engine.dmu.provider.location = Some(devnet_location(i));
    // Devnet providers ask at least 50 tokens, so short demo contracts pay visible amounts.
    engine.dmu.provider.floor_price = 50;
    engine.dmu.provider.auto_bid = !manual;
    engine.dmu.provider.auto_accept_award = !manual;
    config
}

/// `wasm` with a custom section carrying `tag`: another module (its own id, so a node may run
/// it beside the original: a start-first upgrade, two services of one customer), the same
/// behaviour.
pub fn tagged(wasm: &[u8], tag: u8) -> Vec<u8> {
    let name = b"agora-test-tag";
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + 1) as u8); // its size: name length, name, tag
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(tag);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_market::{KeySigner, Signer};

    fn ids(n: usize) -> Vec<(String, NodeId)> {
        (0..n)
            .map(|i| (format!("n{i}"), KeySigner::from_seed(i as u64).node_id()))
            .collect()
    }

    #[test]
    fn default_committee_is_3f_plus_1_up_to_seven() {
        let nodes = ids(200);
        for (n, want) in [
            (1, 1),
            (3, 3),
            (4, 4),
            (5, 4),
            (7, 7),
            (9, 7),
            (10, 7),
            (50, 7),
            (200, 7),
        ] {
            let g = devnet_genesis(&nodes[..n], 0, None).expect("genesis");
            assert_eq!(g.committee.len(), want, "n={n}");
            // The prefix: node0 … node{k-1}, so the 7-node devnet every test uses is unchanged.
            let prefix: Vec<NodeId> = nodes[..want].iter().map(|(_, id)| *id).collect();
            assert_eq!(g.committee, prefix, "n={n}");
            assert_eq!(g.accounts.len(), n, "every node is funded");
        }
    }

    #[test]
    fn asked_committee_is_bounded_by_the_nodes() {
        let nodes = ids(50);
        assert_eq!(
            devnet_genesis(&nodes, 0, Some(10))
                .expect("k=10")
                .committee
                .len(),
            10
        );
        assert_eq!(
            devnet_genesis(&nodes, 0, Some(50))
                .expect("k=n")
                .committee
                .len(),
            50
        );
        assert_eq!(
            devnet_genesis(&nodes, 0, Some(51)).err(),
            Some(CommitteeError::OutOfRange {
                asked: 51,
                nodes: 50
            })
        );
        assert!(devnet_genesis(&nodes, 0, Some(0)).is_err());
    }

    #[test]
    fn a_contract_between_two_default_arbitrators_has_a_committee() {
        // Every arbitrator but the two parties: above the ledger's minimum at any devnet size
        // of at least CONTRACT_NODES.
        let nodes = ids(200);
        let g = devnet_genesis(&nodes, 0, None).expect("genesis");
        let view = agora_contracts::deal::CommitteeView {
            arbitrators: g.committee.clone(),
            min_size: g.params.min_committee,
        };
        let both = view.for_parties(g.committee[0], g.committee[1]);
        assert!(both.len() >= g.params.min_committee, "{}", both.len());
        let neither = view.for_parties(nodes[100].1, nodes[199].1);
        assert_eq!(neither.len(), DEFAULT_ARBITRATORS);
    }

    #[test]
    fn only_funded_accounts_become_arbitrators() {
        let accounts: Vec<GenesisAccount> = ids(5)
            .into_iter()
            .enumerate()
            .map(|(i, (_, id))| GenesisAccount {
                id,
                balance: if i == 1 { 10 } else { 1_000 },
            })
            .collect();
        let chosen = choose_committee(&accounts, 100, 3);
        assert_eq!(chosen, vec![accounts[0].id, accounts[2].id, accounts[3].id]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod config_tests {
    use super::*;

    #[test]
    fn prometheus_config_lists_nodes_with_metrics() {
        let node = |i: usize, metrics: Option<&str>| DevnetNode {
            name: format!("node{i}"),
            data_dir: PathBuf::from(format!("/tmp/node{i}")),
            node_id: String::new(),
            pid: None,
            api: String::new(),
            p2p: Vec::new(),
            metrics: metrics.map(String::from),
        };
        let text = prometheus_config(
            &[
                node(0, Some("127.0.0.1:9100")),
                node(1, None),
                node(2, Some("127.0.0.1:9102")),
            ],
            1000,
        );
        assert!(text.contains("scrape_interval: 1s"));
        assert!(prometheus_config(&[], 250).contains("scrape_interval: 250ms"));
        assert!(text.contains("targets: [\"127.0.0.1:9100\"]"));
        assert!(text.contains("node: \"node2\""));
        assert!(!text.contains("node1"));
    }

    #[test]
    fn devnet_config_survives_toml() {
        let c = devnet_node_config(2, Path::new("/tmp/genesis.json"), false);
        let back: NodeConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        assert!(back.market.engine.dmu.provider.auto_bid);
        assert_eq!(back.market.engine.capacity.cpu_millis, 4000);
    }
}
