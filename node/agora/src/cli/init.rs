//! `agora init`: creates the key (0600), API token (0600) and `config.toml`.

use std::path::Path;

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
    let key = init_data_dir(dir, &config)?;
    if json {
        agora_devnet::output::print_json(&serde_json::json!({
            "node_id": key.node_id().to_string(),
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
