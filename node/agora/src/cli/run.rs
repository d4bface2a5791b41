//! `agora node run`: the daemon in the foreground.

use std::path::{Path, PathBuf};

use clap::Args;
use tracing::info;

use agora_daemon as daemon;
use agora_daemon::config::NodeConfig;
use agora_devnet::files::DevnetManifest;

/// Options of `agora node run` (they override the config file and the environment).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Listen multiaddr (repeatable), e.g. /ip4/127.0.0.1/tcp/0.
    #[arg(long)]
    pub listen: Vec<String>,
    /// Bootstrap peer multiaddr with /p2p/<peer id> (repeatable).
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// Join the local devnet in this directory (dials its nodes, uses its genesis).
    #[arg(long)]
    pub join: Option<PathBuf>,
    /// Control API address (loopback), e.g. 127.0.0.1:0 for a free port.
    #[arg(long)]
    pub api_listen: Option<String>,
    /// Discover peers on the LAN with mDNS.
    #[arg(long)]
    pub mdns: bool,
    /// Serve the operator's circuit relay v2 to nodes behind NAT (bounded per peer; see
    /// `[network] relay_server`). Give the node a reachable `[network] external` address too.
    /// Without this flag an arbitrator with an external address serves a light one.
    #[arg(long)]
    pub relay: bool,
    /// Address at which others reach this node (repeatable), e.g. /ip4/PUBLIC_IP/tcp/4001.
    #[arg(long)]
    pub external: Vec<String>,
}

/// Builds the effective config: defaults < file < env < flags.
pub fn resolve_config(dir: &Path, args: &RunArgs) -> anyhow::Result<NodeConfig> {
    let mut config = NodeConfig::load(dir)?;
    config.apply_env(|k| std::env::var(k).ok());
    if let Some(join) = &args.join {
        let manifest = DevnetManifest::load(join)?;
        config.network.bootstrap.extend(manifest.bootstrap_addrs());
        config.node.genesis = Some(manifest.genesis.clone());
        // Joining a local devnet: stay on loopback with free ports unless told otherwise.
        if args.listen.is_empty() {
            config.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        }
        if args.api_listen.is_none() {
            config.api.listen = "127.0.0.1:0".into();
        }
    }
    if !args.listen.is_empty() {
        config.network.listen = args.listen.clone();
    }
    config
        .network
        .bootstrap
        .extend(args.bootstrap.iter().cloned());
    if let Some(a) = &args.api_listen {
        config.api.listen = a.clone();
    }
    if args.mdns {
        config.network.mdns = true;
    }
    if args.relay {
        config.network.relay_server = Some(true);
    }
    if !args.external.is_empty() {
        config.network.external = args.external.clone();
    }
    Ok(config)
}

/// Runs the node until Ctrl-C, SIGTERM or `agora node stop`.
pub async fn run(dir: &Path, args: &RunArgs) -> anyhow::Result<()> {
    let config = resolve_config(dir, args)?;
    let node = daemon::start(dir, &config).await?;
    println!("node {} running", node.node_id());
    for a in &node.p2p_addrs {
        println!("p2p: {a}");
    }
    println!("api: {}", node.api_addr);
    let cancel = node.cancel_token();
    // The allocator is the process's, not the node's (an in-process devnet starts many nodes
    // in one process), so the process entry point hands glibc's freed memory back every
    // `RELEASE_EVERY`: without it an idle node stayed resident at the high-water mark of its
    // last burst of traffic, which grew with the network's size (docs/PERFORMANCE.md).
    let stopped = cancel.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(agora_alloc::RELEASE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped.cancelled() => return,
                _ = every.tick() => {
                    let released = agora_alloc::release_freed();
                    tracing::trace!(released, "released freed memory");
                }
            }
        }
    });
    tokio::spawn(async move {
        daemon::wait_for_signal().await;
        info!("signal received, stopping");
        cancel.cancel();
    });
    node.wait().await?;
    Ok(())
}
