//! The node's TOML configuration: defaults < file < environment < flags.
//!
//! `agora init` writes the defaults to `<data-dir>/config.toml`. Each section is converted into
//! the owning crate's own config type; library crates never read files or env vars.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agora_network::Multiaddr;
use serde::{Deserialize, Serialize};

use agora_network::{NetworkConfig, RelayProfile};
use agora_wire::duration_ms;

/// File name of the config inside the data directory.
pub const CONFIG_FILE: &str = "config.toml";

/// The whole node configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeConfig {
    /// Node-level settings.
    pub node: NodeSection,
    /// Peer-to-peer networking.
    pub network: NetworkSection,
    /// Local control API.
    pub api: ApiSection,
    /// Market: regions served, decision unit, capacity.
    pub market: MarketSection,
    /// How agreed deals become contracts (stakes, QoS, handover delay).
    pub deals: agora_market_driver::deals::DealConfig,
    /// Content-addressed storage and bitswap.
    pub storage: StorageSection,
    /// The sensor radio (simulated LoRa uplinks over UDP).
    pub radio: agora_radio::RadioConfig,
    /// The service host (wasm runtime).
    pub services: agora_hosting::ServicesSection,
    /// Prometheus metrics and health/readiness probes.
    pub metrics: MetricsSection,
    /// What this node says about itself as a provider (fleet selectors match on it).
    pub provider: ProviderSection,
    /// Fleet deployments: reconcile, pull and store bounds (`docs/FLEETS.md`).
    pub fleet: agora_fleet_core::FleetConfig,
    /// This node's policy as a block proposer.
    pub ledger: agora_ledger::LedgerConfig,
}

/// `[provider]`
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProviderSection {
    /// Labels a fleet selector can match, e.g. `{ site = "factory", role = "gateway" }`
    /// (at most 16; keys up to 32 and values up to 64 characters of `a-z 0-9 - _ .`).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `[metrics]`
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MetricsSection {
    /// Address serving `/metrics` (Prometheus text format), `/health` and `/ready` without a
    /// token, e.g. `127.0.0.1:9100` (port 0 picks a free port, written to `metrics.addr`).
    /// Unset (the default): no metrics listener.
    pub listen: Option<String>,
}

/// `[storage]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StorageSection {
    /// `embedded` (sled under `<data-dir>/blocks`, served over bitswap) or `kubo`.
    pub backend: agora_exchange::Backend,
    /// Kubo RPC API URL, used when `backend = "kubo"`.
    pub api: String,
    /// Blocks requested at once per fetch.
    pub fetch_parallelism: usize,
    /// A block not delivered in this time is asked of another provider, ms.
    pub block_timeout_ms: u64,
    /// A fetch fails after this long without any block arriving, ms.
    pub fetch_idle_timeout_ms: u64,
    /// Embedded store: unpinned blocks are collected this long after a root was unpinned
    /// (a contract's holder let go of it), ms; 0 leaves collection to `agora storage gc`.
    pub gc_interval_ms: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        let f = agora_exchange::FetchConfig::default();
        StorageSection {
            backend: Default::default(),
            api: "http://127.0.0.1:5001".into(),
            fetch_parallelism: f.parallelism,
            block_timeout_ms: duration_ms(f.block_timeout),
            fetch_idle_timeout_ms: duration_ms(f.idle_timeout),
            gc_interval_ms: duration_ms(agora_exchange::DEFAULT_GC_INTERVAL),
        }
    }
}

impl StorageSection {
    /// The storage and exchange config.
    pub fn service_config(&self) -> agora_exchange::StorageConfig {
        agora_exchange::StorageConfig {
            backend: self.backend,
            kubo_api: self.api.clone(),
            fetch: agora_exchange::FetchConfig {
                parallelism: self.fetch_parallelism.clamp(1, 1024),
                block_timeout: Duration::from_millis(self.block_timeout_ms.max(50)),
                idle_timeout: Duration::from_millis(self.fetch_idle_timeout_ms.max(100)),
                max_bytes: None,
            },
            gc_interval: (self.gc_interval_ms > 0)
                .then(|| Duration::from_millis(self.gc_interval_ms.max(100))),
        }
    }
}

/// `[market]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MarketSection {
    /// Regional markets this node subscribes to.
    pub regions: Vec<String>,
    /// The market engine's own config (limits, decision unit, provider capacity).
    pub engine: agora_market::MarketConfig,
}

impl Default for MarketSection {
    fn default() -> Self {
        MarketSection {
            regions: vec!["default".into()],
            engine: agora_market::MarketConfig::default(),
        }
    }
}

/// `[node]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeSection {
    /// A human label (e.g. `node0` in a devnet).
    pub name: String,
    /// Genesis file of the network this node belongs to (devnets write one).
    pub genesis: Option<PathBuf>,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: "agora".into(),
            genesis: None,
        }
    }
}

/// `[network]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NetworkSection {
    /// Listen multiaddrs: TCP and QUIC (`/udp/PORT/quic-v1`) by default; peers without UDP
    /// still reach the node over TCP.
    pub listen: Vec<String>,
    /// Bootstrap multiaddrs (with `/p2p/<peer id>`).
    pub bootstrap: Vec<String>,
    /// LAN discovery with mDNS.
    pub mdns: bool,
    /// TCP dials from the listening port (default; TCP hole punching needs it). `false`: every
    /// TCP dial takes a fresh port (hosts or simulators whose sockets cannot share a port).
    pub tcp_port_reuse: bool,
    /// Heartbeat interval to each watched peer (contract counterparts), ms.
    pub presence_interval_ms: u64,
    /// Silence after which a watched peer counts as unreachable, ms.
    pub presence_timeout_ms: u64,
    /// Ping interval on every connection, ms; an unwatched peer is unreachable after 4 missed.
    pub idle_ping_interval_ms: u64,
    /// Gossipsub mesh heartbeat, ms.
    pub gossip_heartbeat_ms: u64,
    /// Peers found via Kademlia are dialled only while fewer than this many are connected;
    /// spare connections above it are closed.
    pub target_peers: usize,
    /// Connections younger than this are never closed as spare, ms.
    pub trim_grace_ms: u64,
    /// Addresses at which others reach this node (e.g. `/ip4/PUBLIC/tcp/4001` behind a port
    /// forward). A relay serves only once it has one (configured here, or confirmed by
    /// AutoNAT after a few probes).
    pub external: Vec<String>,
    /// Serve circuit relay v2 to nodes behind NAT, with per-peer limits on reservations and
    /// circuits and one shared budget for strangers (THREATS N20). Unset (the default): an
    /// arbitrator (a member of the genesis committee) that declares an `external` address
    /// serves a light relay (16 circuits of at most 8 MiB and 10 min, one circuit budget for
    /// every peer but `trusted_peers` and the committee), since arbitrators are the public
    /// nodes edges bootstrap from and so the relays they look for; every other node serves
    /// none. `true` (`agora node run --relay`): the operator's relay (64 circuits of 64 MiB and
    /// 30 min) on any node. `false`: none. `agora init` writes no value; files written before
    /// session 54 say `false`, which is kept (remove the line to take the default).
    pub relay_server: Option<bool>,
    /// AutoNAT never dials back private or reserved addresses. Turn off only in a test lab
    /// whose "internet" uses reserved ranges (the netlab).
    pub autonat_only_global_ips: bool,
    /// Peers this operator vouches for, by node id (as `agora status` shows it) or libp2p peer
    /// id: e.g. its own fleet's edges that hold no funded account. They are never strangers,
    /// so a flood from throwaway identities, which share one budget, cannot crowd out their
    /// gossip and requests (THREATS N7).
    pub trusted_peers: Vec<String>,
    /// Bytes that frames still being read from peers (requests, responses, bitswap messages)
    /// may hold together, beyond each frame's first 4 KiB (64 MiB; at least 4 MiB, one frame
    /// of the largest size). A peer that announces large frames and sends them slowly on many
    /// streams cannot make the node hold more; a frame that cannot grow fails its stream and is
    /// counted (`frames_over_budget` in `agora status --json`; THREATS N16). Raise it if that
    /// count grows while no one attacks the node.
    pub inbound_frame_bytes: usize,
    /// WAN emulation for devnets and tests (`agora devnet up --latency 50ms`): inbound TCP
    /// bytes are delayed by `latency_ms ± jitter_ms` and a share `loss_ppm` (per million) of
    /// segments costs a retransmission timeout (`agora_network::wan`). Never for production.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wan: Option<agora_network::wan::WanProfile>,
}

impl Default for NetworkSection {
    fn default() -> Self {
        let d = NetworkConfig::default();
        NetworkSection {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".into(),
                "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            mdns: false,
            tcp_port_reuse: d.tcp_port_reuse,
            presence_interval_ms: duration_ms(d.presence_interval),
            presence_timeout_ms: duration_ms(d.presence_timeout),
            idle_ping_interval_ms: duration_ms(d.idle_ping_interval),
            gossip_heartbeat_ms: duration_ms(d.gossip_heartbeat),
            target_peers: d.target_peers,
            trim_grace_ms: duration_ms(d.trim_grace),
            external: Vec::new(),
            relay_server: None,
            autonat_only_global_ips: d.autonat_only_global_ips,
            trusted_peers: Vec::new(),
            inbound_frame_bytes: d.inbound_frame_bytes,
            wan: d.wan,
        }
    }
}

impl NetworkSection {
    /// The relay this node serves: the operator's when `relay_server = true`, none when
    /// `false`; unset, a light one for an arbitrator with a configured `external` address only
    /// (a relay serves only once it has an external address anyway, and a node without one is
    /// not meant to be reached from outside). An arbitrator's default must not let funded keys
    /// take its consensus link (THREATS N20), so it is the light profile, not the operator's.
    pub fn relay_profile(&self, arbitrator: bool) -> Option<RelayProfile> {
        match self.relay_server {
            Some(true) => Some(RelayProfile::Operator),
            Some(false) => None,
            None => (arbitrator && !self.external.is_empty()).then_some(RelayProfile::Light),
        }
    }

    /// Whether `relay_server = false` turns off the relay this node would serve by default (an
    /// arbitrator with an `external` address): the line every config file written before
    /// session 54 carries, so the node says so at start rather than stay silent.
    pub fn relay_declined(&self, arbitrator: bool) -> bool {
        self.relay_server == Some(false) && arbitrator && !self.external.is_empty()
    }
}

/// `[api]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ApiSection {
    /// Control API listen address (loopback only); port 0 picks a free port.
    pub listen: String,
    /// Allow a non-loopback `listen` (still token-protected). Only for test labs that put
    /// nodes in their own network namespaces; never expose the control API on a real network.
    pub allow_non_loopback: bool,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: "127.0.0.1:7700".into(),
            allow_non_loopback: false,
        }
    }
}

/// Errors reading or applying configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML for this schema.
    #[error("config {0} is invalid: {1}")]
    Parse(PathBuf, String),
    /// A multiaddr did not parse.
    #[error("'{value}' in {field} is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/4001)")]
    BadAddr {
        /// Which setting.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// The metrics address did not parse.
    #[error("metrics.listen = '{0}' is not a socket address such as 127.0.0.1:9100")]
    BadMetricsAddr(String),
    /// `[provider] labels` out of bounds.
    #[error("provider.labels in {0} is invalid: {1}; e.g. labels = {{ site = \"factory\" }}")]
    BadLabels(PathBuf, &'static str),
    /// A trusted peer is neither a node id nor a peer id.
    #[error(
        "'{0}' in network.trusted_peers is neither a node id nor a peer id (`agora status` shows a node's id)"
    )]
    BadPeer(String),
    /// The API must stay on loopback.
    #[error("api.listen = '{0}' must be a loopback socket address such as 127.0.0.1:7700")]
    ApiNotLoopback(String),
    /// The file holds device root keys and others may read it.
    #[error(
        "config {0} holds radio device keys ([[radio.device_keys]]) and group or others may read it (mode {1:o}): run chmod 600 {0}"
    )]
    KeysReadable(PathBuf, u32),
}

impl NodeConfig {
    /// Reads `<data_dir>/config.toml`, or the defaults if it does not exist.
    pub fn load(data_dir: &Path) -> Result<NodeConfig, ConfigError> {
        let path = data_dir.join(CONFIG_FILE);
        if !path.exists() {
            return Ok(NodeConfig::default());
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| ConfigError::Read(path.clone(), e))?;
        let config: NodeConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(path.clone(), e.to_string()))?;
        // Device root keys are refused in a file others may read, like the node key and the
        // token (THREATS L5).
        if !config.radio.device_keys.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(|e| ConfigError::Read(path.clone(), e))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(ConfigError::KeysReadable(path, mode));
            }
        }
        config
            .candidate_facts()
            .check()
            .map_err(|hint| ConfigError::BadLabels(path, hint))?;
        Ok(config)
    }

    /// What this node tells a fleet deployer about itself: its first market region, its
    /// `[provider] labels` and its advertised capacity (free = capacity; the node subtracts
    /// its reservations before sending).
    pub fn candidate_facts(&self) -> agora_fleet_core::CandidateFacts {
        let capacity = self.market.engine.capacity.clone();
        agora_fleet_core::CandidateFacts {
            region: self.market.regions.first().map(|r| r.to_ascii_lowercase()),
            labels: self.provider.labels.clone(),
            free: capacity.clone(),
            capacity,
        }
    }

    /// The TOML text of this config.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Applies `AGORA_LISTEN`, `AGORA_BOOTSTRAP` (comma separated), `AGORA_API_LISTEN` and
    /// `AGORA_METRICS_LISTEN`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("AGORA_LISTEN") {
            self.network.listen = split_list(&v);
        }
        if let Some(v) = get("AGORA_BOOTSTRAP") {
            self.network.bootstrap = split_list(&v);
        }
        if let Some(v) = get("AGORA_API_LISTEN") {
            self.api.listen = v;
        }
        if let Some(v) = get("AGORA_METRICS_LISTEN") {
            self.metrics.listen = Some(v).filter(|v| !v.trim().is_empty());
        }
    }

    /// The networking config, with addresses parsed; `arbitrator`: whether this node is in the
    /// genesis committee, which decides relay serving when `[network] relay_server` is unset.
    pub fn network_config(&self, arbitrator: bool) -> Result<NetworkConfig, ConfigError> {
        Ok(NetworkConfig {
            listen: parse_addrs("network.listen", &self.network.listen)?,
            bootstrap: parse_addrs("network.bootstrap", &self.network.bootstrap)?,
            mdns: self.network.mdns,
            presence_interval: Duration::from_millis(self.network.presence_interval_ms.max(10)),
            presence_timeout: Duration::from_millis(self.network.presence_timeout_ms.max(20)),
            idle_ping_interval: Duration::from_millis(self.network.idle_ping_interval_ms.max(10)),
            gossip_heartbeat: Duration::from_millis(self.network.gossip_heartbeat_ms.max(10)),
            target_peers: self.network.target_peers.max(1),
            trim_grace: Duration::from_millis(self.network.trim_grace_ms),
            external: parse_addrs("network.external", &self.network.external)?,
            relay_server: self.network.relay_profile(arbitrator),
            autonat_only_global_ips: self.network.autonat_only_global_ips,
            wan: self.network.wan,
            tcp_port_reuse: self.network.tcp_port_reuse,
            trusted_peers: self
                .network
                .trusted_peers
                .iter()
                .map(|v| parse_peer(v).ok_or_else(|| ConfigError::BadPeer(v.clone())))
                .collect::<Result<_, _>>()?,
            // Not in the config file: the daemon fills it from the genesis.
            committee: Vec::new(),
            inbound_frame_bytes: self.network.inbound_frame_bytes,
        })
    }

    /// The metrics listener's address, if metrics are on.
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        self.metrics
            .listen
            .as_ref()
            .map(|l| {
                l.trim()
                    .parse()
                    .map_err(|_| ConfigError::BadMetricsAddr(l.clone()))
            })
            .transpose()
    }

    /// The control API socket address, checked to be loopback.
    pub fn api_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        let addr: std::net::SocketAddr = self
            .api
            .listen
            .parse()
            .map_err(|_| ConfigError::ApiNotLoopback(self.api.listen.clone()))?;
        if !addr.ip().is_loopback() && !self.api.allow_non_loopback {
            return Err(ConfigError::ApiNotLoopback(self.api.listen.clone()));
        }
        Ok(addr)
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A node id (base58 of its 32-byte ed25519 key) or a libp2p peer id.
fn parse_peer(v: &str) -> Option<agora_network::PeerId> {
    let v = v.trim();
    match v.parse::<agora_market::NodeId>() {
        Ok(node) => agora_network::keys::peer_id_of(&node),
        Err(_) => v.parse().ok(),
    }
}

fn parse_addrs(field: &'static str, values: &[String]) -> Result<Vec<Multiaddr>, ConfigError> {
    values
        .iter()
        .map(|v| {
            v.parse().map_err(|_| ConfigError::BadAddr {
                field,
                value: v.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_arm_timeout_defaults_to_the_role_machines_and_is_read() {
        assert_eq!(
            NodeConfig::default().deals.customer.arm_timeout_ms,
            agora_orchestrator::ARM_TIMEOUT_MS
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[deals.customer]\narm_timeout_ms = 20000\n",
        )
        .unwrap();
        let c = NodeConfig::load(dir.path()).unwrap();
        assert_eq!(c.deals.customer.arm_timeout_ms, 20_000);
    }

    /// THREATS L5: a config holding device root keys is refused while group or others may read
    /// it, naming `chmod 600`; once private it loads.
    #[test]
    fn device_keys_in_a_config_others_may_read_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        let key = "ab".repeat(32);
        std::fs::write(
            &path,
            format!("[[radio.device_keys]]\ndevice = 7\nkey = \"{key}\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeConfig::load(dir.path()).unwrap_err();
        assert!(matches!(err, ConfigError::KeysReadable(_, 0o644)), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = NodeConfig::load(dir.path()).unwrap();
        assert_eq!(c.radio.device_keys.len(), 1);
        // Without keys, the mode is the operator's business.
        std::fs::write(&path, "[provider]\nlabels = { site = \"x\" }\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(NodeConfig::load(dir.path()).is_ok());
    }

    #[test]
    fn provider_labels_are_read_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "[provider]\nlabels = { site = \"factory\" }\n").unwrap();
        let c = NodeConfig::load(dir.path()).unwrap();
        let facts = c.candidate_facts();
        assert_eq!(
            facts.labels.get("site").map(String::as_str),
            Some("factory")
        );
        assert_eq!(facts.region.as_deref(), Some("default"));
        let sel = agora_fleet_core::Selector::parse("site=factory").unwrap();
        let me = facts.about(agora_market::NodeId([7; 32]), 0);
        assert!(sel.admits(&me, &agora_market::Resources::default()));
        std::fs::write(&path, "[provider]\nlabels = { Site = \"Fac tory\" }\n").unwrap();
        let err = NodeConfig::load(dir.path()).unwrap_err();
        assert!(matches!(err, ConfigError::BadLabels(..)), "{err}");
        assert!(err.to_string().contains("provider.labels"));
    }

    /// Issue #17, review 6 M4: unset, an arbitrator with an external address serves the light
    /// relay and any other node none; `true` serves the operator's relay on any node; `false`
    /// none.
    #[test]
    fn relay_serving_defaults_to_a_light_relay_on_arbitrators_with_an_external_address() {
        let external = "[network]\nexternal = [\"/ip4/203.0.113.2/tcp/4001\"]\n";
        let profile = |text: &str, arbitrator: bool| {
            let c: NodeConfig = toml::from_str(text).unwrap();
            c.network_config(arbitrator).unwrap().relay_server
        };
        // Unset.
        let c: NodeConfig = toml::from_str(external).unwrap();
        assert_eq!(c.network.relay_server, None);
        assert_eq!(profile(external, true), Some(RelayProfile::Light));
        assert_eq!(profile(external, false), None, "not an arbitrator");
        assert_eq!(
            profile("", true),
            None,
            "an arbitrator without an external address"
        );
        // `true`: the operator's relay, arbitrator or not.
        let on = format!("{external}relay_server = true\n");
        assert_eq!(profile(&on, true), Some(RelayProfile::Operator));
        assert_eq!(profile(&on, false), Some(RelayProfile::Operator));
        assert_eq!(
            profile("[network]\nrelay_server = true\n", false),
            Some(RelayProfile::Operator)
        );
        // `false`: none, arbitrator or not.
        let off = format!("{external}relay_server = false\n");
        assert_eq!(profile(&off, true), None);
        assert_eq!(profile(&off, false), None);
        // `agora init` writes no value, so a node's role keeps deciding after init.
        assert!(!NodeConfig::default().to_toml().contains("relay_server"));
    }

    /// Review 6 L1: a config file written before session 54 says `relay_server = false` (the
    /// old default, written out by `agora init`). It keeps meaning off: `agora init` on that
    /// data dir writes it back, and the node says at start that the line turns its default
    /// relay off (`relay_declined`), only when there is a default relay to turn off.
    #[test]
    fn an_old_config_s_explicit_false_stays_off_and_is_reported() {
        let external = "[network]\nexternal = [\"/ip4/203.0.113.2/tcp/4001\"]\n";
        let c: NodeConfig = toml::from_str(&format!("{external}relay_server = false\n")).unwrap();
        assert_eq!(c.network.relay_server, Some(false));
        assert!(c.to_toml().contains("relay_server = false"), "kept by init");
        assert_eq!(c.network_config(true).unwrap().relay_server, None);
        assert!(c.network.relay_declined(true));
        assert!(
            !c.network.relay_declined(false),
            "not an arbitrator: nothing turned off"
        );
        let mut bare = c.clone();
        bare.network.external.clear();
        assert!(
            !bare.network.relay_declined(true),
            "no external address: nothing turned off"
        );
        let unset: NodeConfig = toml::from_str(external).unwrap();
        assert!(!unset.network.relay_declined(true));
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let c = NodeConfig::default();
        let back: NodeConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn the_frame_budget_defaults_to_the_network_s_and_is_read() {
        let c = NodeConfig::default();
        assert_eq!(
            c.network_config(false).unwrap().inbound_frame_bytes,
            agora_network::DEFAULT_INBOUND_FRAME_BYTES
        );
        let set: NodeConfig =
            toml::from_str("[network]\ninbound_frame_bytes = 16777216\n").unwrap();
        assert_eq!(
            set.network_config(false).unwrap().inbound_frame_bytes,
            16 << 20
        );
    }

    #[test]
    fn tcp_port_reuse_is_on_by_default_and_can_be_turned_off() {
        let c = NodeConfig::default();
        assert!(c.network.tcp_port_reuse);
        assert!(c.network_config(false).unwrap().tcp_port_reuse);
        let off: NodeConfig = toml::from_str("[network]\ntcp_port_reuse = false\n").unwrap();
        assert!(!off.network_config(false).unwrap().tcp_port_reuse);
    }

    #[test]
    fn partial_file_keeps_defaults_and_env_overrides_file() {
        let mut c: NodeConfig = toml::from_str("[network]\nmdns = true\n").unwrap();
        assert!(c.network.mdns);
        assert_eq!(c.api, ApiSection::default());
        c.apply_env(|k| {
            (k == "AGORA_BOOTSTRAP").then(|| "/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2".into())
        });
        assert_eq!(c.network.bootstrap.len(), 2);
        assert!(c.network_config(false).is_ok());
    }

    #[test]
    fn trusted_peers_are_node_or_peer_ids() {
        use agora_market::Signer as _;
        let key = agora_market::KeySigner::from_seed(7);
        let peer = agora_network::keys::peer_id_of(&key.node_id()).unwrap();
        let other = agora_market::KeySigner::from_seed(8);
        let text = format!(
            "[network]\ntrusted_peers = [\"{}\", \"{}\"]\n",
            key.node_id(),
            agora_network::keys::peer_id_of(&other.node_id()).unwrap()
        );
        let c: NodeConfig = toml::from_str(&text).unwrap();
        let trusted = c.network_config(false).unwrap().trusted_peers;
        assert_eq!(trusted.len(), 2);
        assert_eq!(trusted[0], peer);
        assert_eq!(
            Some(trusted[1]),
            agora_network::keys::peer_id_of(&other.node_id())
        );
        let bad: NodeConfig = toml::from_str("[network]\ntrusted_peers = [\"nobody\"]\n").unwrap();
        let err = bad.network_config(false).unwrap_err();
        assert!(
            matches!(err, ConfigError::BadPeer(ref v) if v == "nobody"),
            "{err}"
        );
    }

    #[test]
    fn storage_section_parses_backend_and_clamps_limits() {
        let c: NodeConfig = toml::from_str(
            "[storage]\nbackend = \"kubo\"\napi = \"http://127.0.0.1:5002\"\nfetch_parallelism = 0\n",
        )
        .unwrap();
        let s = c.storage.service_config();
        assert_eq!(s.backend, agora_exchange::Backend::Kubo);
        assert_eq!(s.kubo_api, "http://127.0.0.1:5002");
        assert_eq!(s.fetch.parallelism, 1);
        assert!(toml::from_str::<NodeConfig>("[storage]\nbackend = \"ipfs\"\n").is_err());
        assert!(NodeConfig::default().to_toml().contains("[storage]"));
    }

    #[test]
    fn bad_values_give_clear_errors() {
        let mut c = NodeConfig::default();
        c.network.listen = vec!["nonsense".into()];
        assert!(matches!(
            c.network_config(false),
            Err(ConfigError::BadAddr { .. })
        ));
        c.api.listen = "0.0.0.0:7700".into();
        assert!(matches!(c.api_addr(), Err(ConfigError::ApiNotLoopback(_))));
    }

    #[test]
    fn metrics_are_off_by_default_and_parsed_when_set() {
        let c = NodeConfig::default();
        assert_eq!(c.metrics_addr().unwrap(), None);
        let back: NodeConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.metrics.listen, None);
        let mut c: NodeConfig = toml::from_str("[metrics]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(
            c.metrics_addr().unwrap(),
            Some("127.0.0.1:0".parse().unwrap())
        );
        c.metrics.listen = Some("nonsense".into());
        assert!(matches!(
            c.metrics_addr(),
            Err(ConfigError::BadMetricsAddr(_))
        ));
        c.apply_env(|k| (k == "AGORA_METRICS_LISTEN").then(|| "127.0.0.1:9100".into()));
        assert_eq!(c.metrics.listen.as_deref(), Some("127.0.0.1:9100"));
    }

    #[test]
    fn services_section_is_read_and_written() {
        let c: NodeConfig =
            toml::from_str("[services]\nmax_instances = 0\nmax_memory_mb = 64\n").unwrap();
        assert_eq!(c.services.service_config().max_instances, 1);
        assert!(toml::from_str::<NodeConfig>("[services]\nmax_cpus = 1\n").is_err());
        assert!(NodeConfig::default().to_toml().contains("[services]"));
    }
}
