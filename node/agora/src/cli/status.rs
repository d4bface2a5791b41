//! `agora status`, `agora peers`, `agora presence`, `agora node stop`.

use std::path::Path;

use agora_api::client::ApiClient;
use agora_wire::now_ms;

use agora_devnet::output::{print_json, print_table};

/// `agora status`
pub async fn status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let s = ApiClient::for_data_dir(dir)?.status().await?;
    if json {
        return print_json(&s);
    }
    println!("node      {} ({})", s.short_id, s.name);
    println!("id        {}", s.node_id);
    println!("peer id   {}", s.peer_id);
    for a in &s.p2p_addrs {
        println!("p2p       {a}");
    }
    println!("peers     {}", s.peers);
    println!("uptime    {} s", s.uptime_s);
    println!("version   {}", s.version);
    println!(
        "gossip    {} accepted, {} ignored, {} rejected, {} published",
        s.stats.gossip_accepted,
        s.stats.gossip_ignored,
        s.stats.gossip_rejected,
        s.stats.gossip_published
    );
    println!(
        "nat       {} (relay slots held: {}; hole punches {} ok, {} failed)",
        s.stats.nat_status,
        s.stats.relay_reservations_held,
        s.stats.hole_punch_succeeded,
        s.stats.hole_punch_failed
    );
    Ok(())
}

/// `agora peers`
pub async fn peers(dir: &Path, json: bool) -> anyhow::Result<()> {
    let peers = ApiClient::for_data_dir(dir)?.peers().await?;
    if json {
        return print_json(&peers);
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                p.node_id
                    .as_deref()
                    .map(|n| n.chars().take(8).collect())
                    .unwrap_or_else(|| "-".into()),
                p.addr.clone(),
                match (p.direct, p.relayed) {
                    (true, true) => "direct+relay",
                    (true, false) => "direct",
                    (false, true) => "relay",
                    (false, false) => "-",
                }
                .into(),
                p.rtt_ms
                    .map(|r| format!("{r} ms"))
                    .unwrap_or_else(|| "-".into()),
                p.agent.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["NODE", "ADDRESS", "PATH", "RTT", "AGENT"], &rows);
    println!("{} peers", peers.len());
    Ok(())
}

/// `agora peers connect|disconnect`
#[derive(Debug, clap::Subcommand)]
pub enum PeersCommand {
    /// Connect to a peer now (like `ipfs swarm connect`) and wait until connected.
    Connect {
        /// Multiaddr ending in /p2p/<peer id>, e.g. from `agora devnet status` or `agora status`;
        /// or a peer id alone (12D3KooW...), dialled at the addresses this node knows for it.
        multiaddr: String,
    },
    /// Close the connections to a peer (it may be dialled again later, e.g. if watched).
    Disconnect {
        /// Peer id (12D3KooW...) or a multiaddr ending in /p2p/<peer id>.
        peer: String,
    },
}

/// `agora peers connect|disconnect`
pub async fn peers_change(dir: &Path, action: &PeersCommand, json: bool) -> anyhow::Result<()> {
    let client = ApiClient::for_data_dir(dir)?;
    let reply = match action {
        PeersCommand::Connect { multiaddr } => {
            let progress =
                agora_devnet::progress::Progress::start(format!("connecting to {multiaddr}"), json);
            let reply = client.connect(multiaddr).await?;
            progress.finish();
            reply
        }
        PeersCommand::Disconnect { peer } => client.disconnect(peer).await?,
    };
    if json {
        return print_json(&reply);
    }
    let who = reply
        .node_id
        .as_deref()
        .map(|n| n.chars().take(8).collect::<String>())
        .unwrap_or_else(|| reply.peer_id.clone());
    if reply.connected {
        println!("connected to {who} ({})", reply.peer_id);
    } else {
        println!("disconnected from {who} ({})", reply.peer_id);
    }
    Ok(())
}

/// `agora presence`
pub async fn presence(dir: &Path, json: bool) -> anyhow::Result<()> {
    let table = ApiClient::for_data_dir(dir)?.presence().await?;
    if json {
        return print_json(&table);
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = table
        .iter()
        .map(|p| {
            vec![
                p.node.short(),
                if p.reachable {
                    "reachable"
                } else {
                    "UNREACHABLE"
                }
                .into(),
                format!("{:.1} s ago", now.saturating_sub(p.since) as f64 / 1000.0),
                format!(
                    "{:.1} s ago",
                    now.saturating_sub(p.last_seen) as f64 / 1000.0
                ),
            ]
        })
        .collect();
    print_table(&["NODE", "STATE", "SINCE", "LAST SEEN"], &rows);
    Ok(())
}

/// `agora node stop`
pub async fn stop(dir: &Path, json: bool) -> anyhow::Result<()> {
    ApiClient::for_data_dir(dir)?.shutdown().await?;
    if json {
        print_json(&serde_json::json!({ "stopping": true }))
    } else {
        println!("node is stopping");
        Ok(())
    }
}
