//! Starting and stopping a node: loads the key and config, starts every task in order
//! (network, storage and exchange, the ledger replica, the market driver and deals, hosting, the
//! radio, the orchestrator, the control API) with one cancellation token, and writes the files
//! the CLI and the devnet use to find it (`p2p.addr`, `api.addr`, `api.token` in the data
//! directory). [`config`] is the node's one TOML config, converted here into each crate's own
//! config type; [`data_dir`] creates a data directory and reads a genesis file.
//!
//! The top of the library stack: may depend on every node crate; the `agora` binary
//! (`agora-node`) and the devnet depend on it. No library below it reads files or env vars for
//! its configuration.
#![forbid(unsafe_code)]

pub mod config;
pub mod data_dir;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_market::NodeId;
use agora_network::Multiaddr;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};

use crate::config::{ConfigError, NodeConfig};
use agora_api::ApiState;
use agora_hosting::control::ServiceControl;
use agora_network::keys::{KeyError, NodeKey};
use agora_network::{NetworkError, NetworkHandle};

pub use agora_api::{API_ADDR_FILE, API_TOKEN_FILE, P2P_ADDR_FILE, RADIO_ADDR_FILE};

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// One of the node's tasks panicked; the node stopped.
    #[error("a node task panicked ({0}); the node stopped so that its supervisor can restart it")]
    TaskPanicked(String),
    /// The ledger stopped the node after a failure it must not run on with.
    #[error("the ledger stopped the node ({0}); fix the cause (a full disk?) and restart it")]
    LedgerStopped(String),
    /// Key problem.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Config problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Network problem.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// Storage problem.
    #[error(transparent)]
    Storage(Box<agora_exchange::ExchangeError>),
    /// The service host (wasm runtime) could not start.
    #[error(transparent)]
    Services(Box<agora_hosting::ServiceError>),
    /// The control API could not bind.
    #[error(
        "cannot serve the control API on {addr}: {source}; pass --api-listen 127.0.0.1:0 for a free port"
    )]
    ApiBind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The metrics listener could not bind.
    #[error(
        "cannot serve metrics on {addr}: {source}; set [metrics] listen to a free address \
         (port 0 picks one) or remove it"
    )]
    MetricsBind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A data-dir file could not be written.
    #[error("cannot write {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The API token file can be read by group or others.
    #[error(
        "API token at {0} has mode {1:o}; anyone who reads it controls the node: it must be 0600 (run `chmod 600 {0}`)"
    )]
    TokenPermissions(PathBuf, u32),
    /// Genesis or ledger store problem.
    #[error("cannot start the ledger: {0}")]
    Genesis(String),
    /// Networking never reported a listen address.
    #[error("the node did not start listening within 10 s; check --listen")]
    NoListenAddr,
}

/// A running node (in this process).
#[derive(Debug)]
pub struct RunningNode {
    /// Handle to the swarm task.
    pub network: NetworkHandle,
    /// Where the control API listens.
    pub api_addr: SocketAddr,
    /// p2p addresses including `/p2p/<peer id>`.
    pub p2p_addrs: Vec<Multiaddr>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The market driver.
    pub market: agora_market_driver::MarketHandle,
    /// The ledger replica (when the node has a genesis).
    pub ledger: Option<agora_ledger::LedgerHandle>,
    /// The node's storage (block store + bitswap exchange).
    pub storage: agora_exchange::StorageHandle,
    /// The service host (wasm runtime and container executor).
    pub services: agora_hosting::ServiceHost,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.network.node_id()
    }

    /// A token that stops the node when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits until the node is asked to stop (API `shutdown`, or the token), then stops it.
    ///
    /// A task of the node that panics stops the node too, with an error, so that whatever
    /// supervises the process restarts it: before, the process went on without that task (a
    /// panicked swarm task left a node cut off from the network, silently; found by a read-only
    /// audit in session 49). A task that returns normally is let go. The ledger stops the node
    /// the same way when a consensus WAL write fails (THREATS A14): that is an error too.
    pub async fn wait(mut self) -> Result<(), DaemonError> {
        let cancel = self.cancel.clone();
        let panicked = first_panic(&mut self.tasks, &cancel).await;
        let fatal = self.ledger.as_ref().and_then(|l| l.fatal());
        self.shutdown().await;
        // The ledger's reason first: a task that panicked because the ledger went away would
        // hide it.
        match (panicked, fatal) {
            (_, Some(why)) => Err(DaemonError::LedgerStopped(why)),
            (Some(e), None) => Err(DaemonError::TaskPanicked(e)),
            (None, None) => Ok(()),
        }
    }

    /// Stops every task in order and removes the API address file.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let _ = std::fs::remove_file(self.data_dir.join(API_ADDR_FILE));
        info!("node stopped");
    }
}

/// Waits until `cancel` or until one of `tasks` panics (its message); tasks that return
/// normally are dropped from the list meanwhile.
async fn first_panic(
    tasks: &mut Vec<JoinHandle<()>>,
    cancel: &CancellationToken,
) -> Option<String> {
    loop {
        if tasks.is_empty() {
            cancel.cancelled().await;
            return None;
        }
        let (i, res) = tokio::select! {
            _ = cancel.cancelled() => return None,
            r = std::future::poll_fn(|cx| {
                for (i, t) in tasks.iter_mut().enumerate() {
                    if let std::task::Poll::Ready(r) = std::pin::Pin::new(t).poll(cx) {
                        return std::task::Poll::Ready((i, r));
                    }
                }
                std::task::Poll::Pending
            }) => r,
        };
        tasks.swap_remove(i);
        if let Err(e) = res
            && e.is_panic()
        {
            tracing::error!(error = %e, "a node task panicked: stopping the node");
            return Some(e.to_string());
        }
    }
}

/// Loads or creates the control API token (`api.token` in the data directory).
///
/// A new token is written to a temporary file created with mode 0600 (never wider, whatever
/// the umask) and renamed into place, so there is no moment at which the token can be read by
/// another user. An existing token file that group or others may read is refused, like the
/// node key: whoever read it can drive the node.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join(API_TOKEN_FILE);
    if let Ok(meta) = std::fs::metadata(&path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(DaemonError::TokenPermissions(path, mode));
        }
        let t = std::fs::read_to_string(&path).map_err(|e| DaemonError::Io(path.clone(), e))?;
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let token = hex::encode(bytes);
    agora_network::private_file::write(&path, token.as_bytes())
        .map_err(|e| DaemonError::Io(path.clone(), e))?;
    Ok(token)
}

/// Waits for Ctrl-C or SIGTERM (how `agora node run` and `devnet down` stop a node).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Starts a node from a data directory and a resolved config.
pub async fn start(data_dir: &Path, config: &NodeConfig) -> Result<RunningNode, DaemonError> {
    let key = NodeKey::load(data_dir)?;
    let span = tracing::info_span!("node", id = %key.node_id().short());
    start_with_key(data_dir, config, key, None)
        .instrument(span)
        .await
}

/// Puts something between the service host and the radio and orchestrator that drive it.
pub type ServiceWrap = Box<dyn FnOnce(Arc<dyn ServiceControl>) -> Arc<dyn ServiceControl> + Send>;

/// [`start`], with the radio and the orchestrator driving `wrap(host)` instead of the service
/// host: the test crate's byzantine provider (`agora-byzantine --host-nothing`) runs nothing
/// behind it. Only with the `test-utils` feature, which only the test crate turns on.
#[cfg(feature = "test-utils")]
pub async fn start_wrapped(
    data_dir: &Path,
    config: &NodeConfig,
    wrap: ServiceWrap,
) -> Result<RunningNode, DaemonError> {
    let key = NodeKey::load(data_dir)?;
    let span = tracing::info_span!("node", id = %key.node_id().short());
    start_with_key(data_dir, config, key, Some(wrap))
        .instrument(span)
        .await
}

/// Says at start which relay an arbitrator with an external address serves when the operator
/// did not choose (THREATS N20), and that a `relay_server = false` (which every config file
/// written before session 54 carries) turns its default relay off (review 6 L1).
fn log_relay_choice(config: &NodeConfig, arbitrator: bool) {
    let net = &config.network;
    if net.relay_server.is_none() && net.relay_profile(arbitrator).is_some() {
        info!(
            "serving a light circuit relay v2, an arbitrator's default (16 circuits of at most \
             8 MiB and 10 min, one shared circuit budget); [network] relay_server = true \
             serves the operator's relay (64 circuits of 64 MiB), false none"
        );
    } else if net.relay_declined(arbitrator) {
        info!(
            "not serving circuit relay v2: [network] relay_server = false in config.toml (files \
             written before session 54 say so by default); remove the line to serve an \
             arbitrator's light relay to nodes behind NAT"
        );
    }
}

async fn start_with_key(
    data_dir: &Path,
    config: &NodeConfig,
    key: NodeKey,
    wrap: Option<ServiceWrap>,
) -> Result<RunningNode, DaemonError> {
    let cancel = CancellationToken::new();
    // Read before the network starts: an arbitrator serves relay v2 by default.
    let genesis = config
        .node
        .genesis
        .as_deref()
        .map(data_dir::load_genesis)
        .transpose()
        .map_err(|e| DaemonError::Genesis(e.to_string()))?;
    let me = key.node_id();
    let arbitrator = genesis.as_ref().is_some_and(|g| g.committee.contains(&me));
    let mut net_cfg = config.network_config(arbitrator)?;
    // The committee is fixed at genesis: the network exempts it from the strangers' budgets
    // and the light relay's shared one (THREATS N20).
    net_cfg.committee = genesis
        .as_ref()
        .map(|g| {
            g.committee
                .iter()
                .filter_map(agora_network::keys::peer_id_of)
                .collect()
        })
        .unwrap_or_default();
    log_relay_choice(config, arbitrator);
    let listens_everywhere = net_cfg.listen.iter().any(agora_network::is_unspecified);
    let api_addr = config.api_addr()?;
    let metrics_addr = config.metrics_addr()?;
    let metrics = metrics_addr.map(|_| agora_api::metrics::Metrics::new());
    let token = load_or_create_token(data_dir)?;
    // libp2p's own series (`libp2p_…`) go into the same registry as Agora's.
    let p2p_metrics = metrics
        .as_ref()
        .map(|m| m.with_registry(agora_network::p2p_metrics));
    let (network, net_task) =
        agora_network::spawn_with_metrics(&key, net_cfg, cancel.clone(), p2p_metrics).await?;

    let deadline = Instant::now() + Duration::from_secs(10);
    // An unspecified listen address (`0.0.0.0:4001`) is reported one interface at a time:
    // `p2p.addr` waits until the list has stood still for `SETTLED` (at most 1 s more), so it
    // does not name only the first interface (often loopback, useless to other hosts).
    const SETTLED: Duration = Duration::from_millis(100);
    let mut seen: Vec<Multiaddr> = Vec::new();
    let mut still_since = Instant::now();
    let mut first_at: Option<Instant> = None;
    let listen = loop {
        let addrs = network.listen_addrs().await?;
        if addrs != seen {
            seen = addrs;
            still_since = Instant::now();
        }
        if !seen.is_empty() {
            let first = *first_at.get_or_insert_with(Instant::now);
            if !listens_everywhere
                || still_since.elapsed() >= SETTLED
                || first.elapsed() >= Duration::from_secs(1)
            {
                break seen;
            }
        }
        if Instant::now() > deadline {
            cancel.cancel();
            return Err(DaemonError::NoListenAddr);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let peer = network.peer_id();
    let p2p_addrs: Vec<Multiaddr> = listen
        .into_iter()
        .map(|a| agora_network::with_peer(a, peer))
        .collect();
    let p2p_text: String = p2p_addrs.iter().map(|a| format!("{a}\n")).collect();
    write_file(&data_dir.join(P2P_ADDR_FILE), &p2p_text)?;

    // With a ledger, the contracts this node still runs hold capacity the market must know of
    // before it takes work: the deal task's follower restores it (THREATS C35).
    let (market, market_task) = agora_market_driver::spawn(
        key.signer().clone(),
        config.market.engine.clone(),
        config.market.regions.clone(),
        network.clone(),
        config.node.genesis.is_some(),
        cancel.clone(),
    )
    .await;

    let storage = agora_exchange::spawn(
        data_dir,
        config.storage.service_config(),
        network.clone(),
        key.signer().clone(),
        cancel.clone(),
    )
    .await
    .map_err(|e| {
        cancel.cancel();
        DaemonError::Storage(Box::new(e))
    })?;
    let mut tasks = vec![agora_exchange::audit::spawn_responder(
        storage.clone(),
        network.clone(),
        key.signer().clone(),
        cancel.clone(),
    )];
    // Anyone else named in the genesis means the node has a network to reach.
    let mut genesis_names_others = false;
    let ledger = match &genesis {
        Some(genesis) => {
            genesis_names_others = genesis.accounts.iter().any(|a| a.id != me)
                || genesis.committee.iter().any(|c| *c != me);
            let store = agora_ledger::LedgerStore::open(&data_dir.join("ledger"))
                .map_err(|e| DaemonError::Genesis(e.to_string()))?;
            let (handle, task) = agora_ledger::spawn(
                store,
                genesis,
                &config.ledger,
                key.signer().clone(),
                network.clone(),
                cancel.clone(),
            )
            .await
            .map_err(|e| DaemonError::Genesis(e.to_string()))?;
            tasks.push(task);
            tasks.push(agora_market_driver::reputation::spawn(
                market.clone(),
                handle.clone(),
                cancel.clone(),
            ));
            // Who can pay: customers and bidders the market asks about (THREATS C31, C32).
            tasks.push(agora_market_driver::funding::spawn(
                market.clone(),
                handle.clone(),
                cancel.clone(),
            ));
            tasks.push(agora_market_driver::deals::spawn(
                key.signer().clone(),
                config.deals.clone(),
                &market,
                network.clone(),
                handle.clone(),
                storage.clone(),
                cancel.clone(),
            ));
            Some(handle)
        }
        None => None,
    };
    let (services, services_task) = agora_hosting::spawn(
        data_dir,
        config.services.service_config(),
        storage.clone(),
        key.signer().clone(),
        cancel.clone(),
    )
    .map_err(|e| {
        cancel.cancel();
        DaemonError::Services(Box::new(e))
    })?;
    tasks.push(services_task);

    // Early, so a deployer's greeting to a node that just came up finds the fleet inbox.
    let (fleet, fleet_task) = agora_fleet::spawn(
        agora_fleet::FleetParts {
            signer: key.signer().clone(),
            config: config.fleet,
            facts: config.candidate_facts(),
            region: config
                .market
                .regions
                .first()
                .cloned()
                .unwrap_or_else(|| "default".into()),
            network: network.clone(),
            market: market.clone(),
            ledger: ledger.clone(),
            services: services.clone(),
            storage: storage.clone(),
            state_file: Some(data_dir.join(agora_fleet::saved_file::FILE_NAME)),
        },
        cancel.clone(),
    )
    .await;
    tasks.push(fleet_task);

    let (radio, orchestrator) = start_edge(
        data_dir,
        config,
        &network,
        &storage,
        ledger.as_ref(),
        {
            let host: Arc<dyn ServiceControl> = Arc::new(services.clone());
            match wrap {
                Some(wrap) => wrap(host),
                None => host,
            }
        },
        key.signer().clone(),
        metrics.as_ref(),
        &cancel,
        &mut tasks,
    )
    .await?;

    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .map_err(|source| DaemonError::ApiBind {
            addr: api_addr,
            source,
        })?;
    let api_addr = listener
        .local_addr()
        .map_err(|source| DaemonError::ApiBind {
            addr: api_addr,
            source,
        })?;
    let state = ApiState {
        alone: config.network.bootstrap.is_empty() && !genesis_names_others,
        network: network.clone(),
        token,
        started: Instant::now(),
        cancel: cancel.clone(),
        data_dir: data_dir.to_path_buf(),
        name: config.node.name.clone(),
        market: Some(market.clone()),
        ledger: ledger.clone(),
        storage: Some(storage.clone()),
        radio: Some(radio.clone()),
        orchestrator: orchestrator.clone(),
        services: Some(services.clone()),
        fleet: Some(fleet),
        metrics: metrics.clone(),
    };
    let metrics_path = data_dir.join(agora_api::METRICS_ADDR_FILE);
    let _ = std::fs::remove_file(&metrics_path);
    if let (Some(addr), Some(metrics)) = (metrics_addr, metrics) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::MetricsBind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| DaemonError::MetricsBind { addr, source })?;
        tasks.push(tokio::spawn(
            agora_api::metrics::serve(listener, state.clone(), metrics, cancel.clone())
                .in_current_span(),
        ));
        write_file(&metrics_path, &bound.to_string())?;
        info!(metrics = %bound, "serving /metrics, /health and /ready");
    }
    let api_task =
        tokio::spawn(agora_api::serve(listener, state, cancel.clone()).in_current_span());
    write_file(&data_dir.join(API_ADDR_FILE), &api_addr.to_string())?;
    info!(node = %key.node_id(), api = %api_addr, "node started");
    Ok(RunningNode {
        network,
        api_addr,
        p2p_addrs,
        data_dir: data_dir.to_path_buf(),
        cancel,
        market,
        ledger,
        tasks: {
            let mut all = vec![api_task, market_task];
            all.extend(tasks);
            all.push(net_task);
            all
        },
        storage,
        services,
    })
}

/// Starts the sensor radio and (with a ledger) the orchestrator.
#[allow(clippy::too_many_arguments)]
async fn start_edge(
    data_dir: &Path,
    config: &NodeConfig,
    network: &NetworkHandle,
    storage: &agora_exchange::StorageHandle,
    ledger: Option<&agora_ledger::LedgerHandle>,
    services: std::sync::Arc<dyn agora_hosting::control::ServiceControl>,
    signer: agora_market::KeySigner,
    metrics: Option<&agora_api::metrics::Metrics>,
    cancel: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<
    (
        agora_radio::RadioHandle,
        Option<agora_orchestrator::OrchestratorHandle>,
    ),
    DaemonError,
> {
    let radio_path = data_dir.join(RADIO_ADDR_FILE);
    let _ = std::fs::remove_file(&radio_path);
    let (radio, task) = agora_radio::spawn(
        signer.clone(),
        config.radio.clone(),
        network.clone(),
        storage.clone(),
        services.clone(),
        agora_radio::RadioFiles::in_dir(data_dir),
        cancel.clone(),
    )
    .await
    .map_err(|e| DaemonError::Io(radio_path.clone(), e))?;
    tasks.push(task);
    if let Some(addr) = radio.addr() {
        write_file(&radio_path, addr)?;
    }
    let orchestrator = ledger.map(|ledger| {
        let parts = agora_orchestrator::OrchestratorParts {
            ledger: ledger.clone(),
            network: network.clone(),
            services,
            radio: radio.clone(),
            storage: storage.clone(),
            signer,
            presence_timeout_ms: config.network.presence_timeout_ms.max(20),
            arm_timeout_ms: config.deals.customer.arm_timeout_ms,
        };
        let (handle, task) = agora_orchestrator::spawn(
            parts,
            data_dir.to_path_buf(),
            metrics
                .map(|m| agora_orchestrator::Timeline::observed(m.timeline_observer()))
                .unwrap_or_default(),
            cancel.clone(),
        );
        tasks.push(task);
        handle
    });
    Ok((radio, orchestrator))
}

fn write_file(path: &Path, text: &str) -> Result<(), DaemonError> {
    // Write then rename so readers never see a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| DaemonError::Io(tmp.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| DaemonError::Io(path.to_path_buf(), e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A task that panics ends the wait with its message; one that returns is let go.
    #[tokio::test]
    async fn a_panicking_task_stops_the_node_and_a_returning_one_does_not() {
        let cancel = CancellationToken::new();
        let mut tasks = vec![
            tokio::spawn(async {}),
            tokio::spawn(std::future::pending::<()>()),
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                panic!("agent cut inside a character");
            }),
        ];
        let got = tokio::time::timeout(Duration::from_secs(10), first_panic(&mut tasks, &cancel))
            .await
            .expect("the panic ends the wait");
        assert!(got.is_some_and(|m| m.contains("panicked")));
        assert_eq!(
            tasks.len(),
            1,
            "the returned and the panicked task are gone"
        );
        // Cancelled: the wait ends without a panic.
        cancel.cancel();
        assert_eq!(first_panic(&mut tasks, &cancel).await, None);
    }

    #[test]
    fn token_is_created_0600_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let token = load_or_create_token(dir.path()).unwrap();
        let path = dir.path().join(API_TOKEN_FILE);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(token.len(), 48);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), token);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn token_readable_by_group_or_others_is_refused_naming_chmod() {
        for bad in [0o644, 0o640, 0o604, 0o660] {
            let dir = tempfile::tempdir().unwrap();
            let token = load_or_create_token(dir.path()).unwrap();
            let path = dir.path().join(API_TOKEN_FILE);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let err = load_or_create_token(dir.path()).unwrap_err();
            assert!(matches!(err, DaemonError::TokenPermissions(_, m) if m == bad));
            let msg = err.to_string();
            assert!(msg.contains("chmod 600"), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            // The token was not replaced: fixing the mode brings the same one back.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(load_or_create_token(dir.path()).unwrap(), token);
        }
    }

    #[test]
    fn empty_token_file_is_replaced_by_a_private_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join(API_TOKEN_FILE);
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let token = load_or_create_token(dir.path()).unwrap();
        assert!(!token.is_empty());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
    }
}
