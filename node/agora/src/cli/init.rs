//! `agora init`: creates the key (0600), API token (0600) and `config.toml`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use clap::Args;

use agora_daemon::config::NodeConfig;
use agora_daemon::data_dir::init_data_dir;
use agora_network::keys::KEY_FILE;

/// Options of `agora init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Listen addresses to write into the config (default: all interfaces, port 4001).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Control API address to write into the config.
    #[arg(long)]
    pub api_listen: Option<String>,
    /// The network's genesis file (from `agora genesis create`): this node keeps a ledger
    /// replica of that chain. Its absolute path goes into the config.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
    /// A peer to dial at start, `/ip4/HOST/tcp/4001/p2p/PEER_ID` (repeatable; replaces the
    /// config's list). `agora status` and `<data-dir>/p2p.addr` show a node's addresses.
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// Address at which other machines reach this node, e.g. `/ip4/PUBLIC_IP/tcp/4001`
    /// (repeatable; replaces the config's list). Needed behind a port forward, and to serve
    /// relay.
    #[arg(long)]
    pub external: Vec<String>,
    /// Serve the operator's circuit relay v2 to nodes behind NAT (a publicly reachable node with
    /// `--external`; without this flag an arbitrator with `--external` serves a light one,
    /// `[network] relay_server`).
    #[arg(long)]
    pub relay: bool,
}

/// Runs `agora init`.
pub fn run(dir: &Path, args: &InitArgs, json: bool) -> anyhow::Result<()> {
    let existed = dir.join(KEY_FILE).exists();
    let mut config = NodeConfig::load(dir)?;
    if !args.listen.is_empty() {
        config.network.listen = args.listen.clone();
    }
    if let Some(a) = &args.api_listen {
        config.api.listen = a.clone();
    }
    if let Some(g) = &args.genesis {
        let path =
            std::path::absolute(g).with_context(|| format!("cannot resolve {}", g.display()))?;
        agora_daemon::data_dir::load_genesis(&path).with_context(|| {
            format!(
                "--genesis {}: not a genesis file (write one with `agora genesis create`)",
                g.display()
            )
        })?;
        config.node.genesis = Some(path);
    }
    for a in args.bootstrap.iter().chain(&args.external) {
        a.parse::<agora_network::Multiaddr>().map_err(|e| {
            anyhow::anyhow!(
                "`{a}` is not a multiaddr ({e}); write it like /ip4/203.0.113.7/tcp/4001"
            )
        })?;
    }
    for a in &args.bootstrap {
        if !a.contains("/p2p/") {
            anyhow::bail!(
                "--bootstrap {a} has no /p2p/PEER_ID; append the peer's id, e.g. from its \
                 p2p.addr file or `agora status`"
            );
        }
    }
    if !args.bootstrap.is_empty() {
        config.network.bootstrap = args.bootstrap.clone();
    }
    if !args.external.is_empty() {
        config.network.external = args.external.clone();
    }
    if args.relay {
        config.network.relay_server = Some(true);
    }
    let key = init_data_dir(dir, &config)?;
    if json {
        agora_devnet::output::print_json(&serde_json::json!({
            "node_id": key.node_id().to_string(),
            "peer_id": agora_network::keys::peer_id_of(&key.node_id()).map(|p| p.to_string()),
            "short_id": key.node_id().short(),
            "data_dir": dir.display().to_string(),
            "created": !existed,
        }))?;
    } else {
        let verb = if existed { "kept existing" } else { "created" };
        println!("{verb} node {} ({})", key.node_id().short(), key.node_id());
        println!("data dir: {}", dir.display());
        println!("next: agora node run --data-dir {}", dir.display());
    }
    Ok(())
}
