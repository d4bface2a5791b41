//! `agora genesis create`: the genesis file of a network that spans several machines.
//!
//! A devnet writes its own genesis (`agora devnet up`); a network whose arbitrators run on
//! different hosts needs one file that names them all, which every node then points at
//! (`agora init --genesis FILE`). The file is the ledger's own [`Genesis`] as JSON, checked by
//! the ledger (`Ledger::from_genesis`) before it is written.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use agora_contracts::ledger::{Genesis, GenesisAccount, Ledger, LedgerParams};
use agora_daemon::data_dir::save_genesis;
use agora_devnet::output::print_json;
use agora_market::NodeId;

/// Balance each arbitrator gets when `--account` does not name it (as a devnet's nodes get).
pub const DEFAULT_ARBITRATOR_BALANCE: u64 = 1_000_000;

/// `agora genesis …`
#[derive(Debug, Subcommand)]
pub enum GenesisCommand {
    /// Write the genesis file of a network: its chain id, arbitrators and funded accounts.
    Create(CreateArgs),
}

/// Options of `agora genesis create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Where to write the file (JSON); copy it to every machine of the network.
    #[arg(long)]
    pub out: PathBuf,
    /// An arbitrator's node id (repeatable; `agora init --json` prints it as `node_id`).
    /// Contracts need at least four arbitrators that are not their parties.
    #[arg(long = "arbitrator", required = true)]
    pub arbitrators: Vec<String>,
    /// A funded account, `NODE_ID=AMOUNT` (repeatable); overrides an arbitrator's default.
    #[arg(long = "account")]
    pub accounts: Vec<String>,
    /// Balance of each arbitrator not named by `--account`.
    #[arg(long, default_value_t = DEFAULT_ARBITRATOR_BALANCE)]
    pub arbitrator_balance: u64,
    /// Chain id; transactions name it, so they cannot be replayed on another network.
    /// Default: `agora-<unix ms>`.
    #[arg(long)]
    pub chain_id: Option<String>,
    /// Let `agora faucet` mint tokens (test networks only).
    #[arg(long)]
    pub faucet: bool,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// Runs `agora genesis …`.
pub fn genesis(cmd: &GenesisCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        GenesisCommand::Create(args) => create(args, json),
    }
}

fn node_id(text: &str, what: &str) -> anyhow::Result<NodeId> {
    text.trim().parse().map_err(|e| {
        anyhow::anyhow!(
            "{what} `{text}` is not a node id ({e}); `agora init --json` or `agora status` prints \
             a node's id (base58)"
        )
    })
}

/// The genesis `args` describe, checked by the ledger.
pub fn build(args: &CreateArgs, now_ms: u64) -> anyhow::Result<Genesis> {
    let mut committee = Vec::new();
    for a in &args.arbitrators {
        let id = node_id(a, "--arbitrator")?;
        if committee.contains(&id) {
            bail!("--arbitrator {a} is listed twice");
        }
        committee.push(id);
    }
    let mut accounts: Vec<GenesisAccount> = Vec::new();
    for spec in &args.accounts {
        let Some((id, amount)) = spec.split_once('=') else {
            bail!("--account `{spec}` must be NODE_ID=AMOUNT, e.g. --account 8Xf…3k=50000");
        };
        let id = node_id(id, "--account")?;
        let balance: u64 = amount
            .trim()
            .parse()
            .with_context(|| format!("--account {spec}: `{amount}` is not a whole amount"))?;
        if accounts.iter().any(|a| a.id == id) {
            bail!("--account names {id} twice");
        }
        accounts.push(GenesisAccount { id, balance });
    }
    for id in &committee {
        if !accounts.iter().any(|a| a.id == *id) {
            accounts.push(GenesisAccount {
                id: *id,
                balance: args.arbitrator_balance,
            });
        }
    }
    let genesis = Genesis {
        chain_id: args
            .chain_id
            .clone()
            .unwrap_or_else(|| format!("agora-{now_ms}")),
        accounts,
        committee,
        faucet_enabled: args.faucet,
        params: LedgerParams::default(),
    };
    Ledger::from_genesis(&genesis).map_err(|e| {
        anyhow::anyhow!(
            "the ledger refuses this genesis: {e}; every arbitrator needs at least {} tokens \
             (its bond)",
            genesis.params.arbitrator_bond
        )
    })?;
    Ok(genesis)
}

fn create(args: &CreateArgs, json: bool) -> anyhow::Result<()> {
    if args.out.exists() && !args.force {
        bail!(
            "{} exists; pass --force to overwrite it (every node of a network must use the same \
             file)",
            args.out.display()
        );
    }
    let genesis = build(args, agora_wire::now_ms())?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    save_genesis(&args.out, &genesis)?;
    let min = genesis.params.min_committee;
    let note = (genesis.committee.len() < min + 2).then(|| {
        format!(
            "{} arbitrators: a contract's committee is every arbitrator but its two parties and \
             needs at least {min}, so contracts between arbitrators need {}",
            genesis.committee.len(),
            min + 2
        )
    });
    if json {
        print_json(&serde_json::json!({
            "out": absolute(&args.out).display().to_string(),
            "chain_id": genesis.chain_id,
            "arbitrators": genesis.committee.len(),
            "accounts": genesis.accounts.len(),
            "faucet": genesis.faucet_enabled,
            "note": note,
        }))?;
    } else {
        println!(
            "wrote {} (chain {}, {} arbitrators, {} accounts{})",
            args.out.display(),
            genesis.chain_id,
            genesis.committee.len(),
            genesis.accounts.len(),
            if genesis.faucet_enabled {
                ", faucet on"
            } else {
                ""
            }
        );
        if let Some(note) = note {
            println!("note: {note}");
        }
        println!(
            "next, on every machine: agora init --genesis {} --bootstrap /ip4/HOST/tcp/4001/p2p/PEER_ID",
            args.out.display()
        );
    }
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_network::keys::NodeKey;

    fn args(arbitrators: Vec<String>, accounts: Vec<String>) -> CreateArgs {
        CreateArgs {
            out: PathBuf::from("unused.json"),
            arbitrators,
            accounts,
            arbitrator_balance: DEFAULT_ARBITRATOR_BALANCE,
            chain_id: Some("test-chain".into()),
            faucet: false,
            force: false,
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|_| NodeKey::generate().node_id().to_string())
            .collect()
    }

    #[test]
    fn arbitrators_are_funded_and_accounts_override_them() {
        let a = ids(4);
        let extra = ids(1).remove(0);
        let g = build(
            &args(
                a.clone(),
                vec![format!("{}=50000", a[0]), format!("{extra}=7")],
            ),
            1,
        )
        .unwrap();
        assert_eq!(g.committee.len(), 4);
        assert_eq!(g.accounts.len(), 5);
        let balance = |id: &str| {
            g.accounts
                .iter()
                .find(|x| x.id.to_string() == id)
                .unwrap()
                .balance
        };
        assert_eq!(balance(&a[0]), 50_000);
        assert_eq!(balance(&a[1]), DEFAULT_ARBITRATOR_BALANCE);
        assert_eq!(balance(&extra), 7);
        assert_eq!(g.chain_id, "test-chain");
        assert!(!g.faucet_enabled);
    }

    #[test]
    fn bad_input_is_refused_with_what_to_do() {
        let a = ids(2);
        let e = build(&args(vec!["not-an-id".into()], vec![]), 1).unwrap_err();
        assert!(e.to_string().contains("agora init --json"), "{e}");
        let e = build(&args(vec![a[0].clone(), a[0].clone()], vec![]), 1).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = build(&args(a.clone(), vec![a[1].clone()]), 1).unwrap_err();
        assert!(e.to_string().contains("NODE_ID=AMOUNT"), "{e}");
        // An arbitrator that cannot lock its bond: the ledger's own check refuses it.
        let e = build(&args(a.clone(), vec![format!("{}=5", a[1])]), 1).unwrap_err();
        assert!(e.to_string().contains("ledger refuses"), "{e}");
    }
}
