//! The `agora` command line: one module per subcommand.

pub mod deploy;
pub mod doctor;
pub mod edge;
pub mod genesis;
pub mod init;
pub mod ledger;
pub mod market;
pub mod run;
pub mod service;
pub mod status;
pub mod storage;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// agora — a peer-to-peer marketplace where edge devices rent spare resources to each other.
#[derive(Debug, Parser)]
#[command(name = "agora", version, about)]
pub struct Cli {
    /// Data directory of the node (key, config, API token).
    #[arg(long, global = true, env = "AGORA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a node identity, config and API token in the data directory.
    Init(init::InitArgs),
    /// Run and manage the node daemon.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show the running node's status.
    Status,
    /// List the running node's connected peers; `connect` / `disconnect` one.
    Peers {
        /// Connect or disconnect (without: list).
        #[command(subcommand)]
        action: Option<status::PeersCommand>,
    },
    /// Show which peers are reachable (pings to direct and watched peers), and since when.
    Presence,
    /// Open auctions (as customer).
    #[command(subcommand)]
    Auction(market::AuctionCommand),
    /// List auctions known to the node.
    Auctions,
    /// Bid on auctions (as provider).
    #[command(subcommand)]
    Bid(market::BidCommand),
    /// List the bids of an auction.
    Bids {
        /// Auction id.
        auction: String,
    },
    /// Publish standing offers (as provider).
    #[command(subcommand)]
    Offer(market::OfferCommand),
    /// List standing offers known to the node.
    Offers,
    /// Market events.
    #[command(subcommand)]
    Market(market::MarketCommand),
    /// Balance, locked funds and reputation of an account (default: this node).
    Balance {
        /// Account node id.
        account: Option<String>,
    },
    /// Send tokens to another account.
    Transfer {
        /// Recipient node id.
        to: String,
        /// Amount.
        amount: u64,
    },
    /// Mint tokens to this node (devnets only).
    Faucet {
        /// Amount.
        #[arg(long, default_value_t = 10_000)]
        amount: u64,
    },
    /// Ledger state.
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Contracts on the ledger.
    #[command(subcommand)]
    Contract(ledger::ContractCommand),
    /// What this node earned as a provider, per contract.
    Earnings,
    /// Content-addressed storage: add, get, pin, CAR files.
    #[command(subcommand)]
    Storage(storage::StorageCommand),
    /// Signed data-integrity proofs over sensor readings.
    #[command(subcommand)]
    Proof(storage::ProofCommand),
    /// Services: publish images, stage, start, stop, logs.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Fleet deployments: one image on every provider a selector matches (push or pull).
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
    /// Manage a local devnet of several nodes.
    #[command(subcommand)]
    Devnet(agora_devnet::process::DevnetCommand),
    /// Sensors this edge hears and manages, and the checkpoints of processed readings.
    Radio,
    /// Devices this edge discovered, with their metadata (`agora device list`).
    #[command(subcommand)]
    Device(edge::DeviceCommand),
    /// Run a published service image on this node's own sensors (the service a standby
    /// contract insures).
    Own {
        /// Image CID from `agora service publish`.
        image: String,
    },
    /// What the orchestrator did: migrations, attestations, activations, settlements.
    Timeline,
    /// Check this node's setup: key and token permissions, API and metrics ports, peers,
    /// ledger sync, clock against the chain, disk space — with a fix for each failure.
    Doctor,
    /// The genesis file of a network across machines (its arbitrators and funded accounts).
    Genesis {
        /// What to do.
        #[command(subcommand)]
        cmd: genesis::GenesisCommand,
    },
    /// Print a shell completion script, e.g. `agora completions bash > ~/.agora.bash` and
    /// `source ~/.agora.bash` (zsh: into a directory on $fpath as `_agora`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `agora node …`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run the node in the foreground.
    Run(run::RunArgs),
    /// Ask the running node to stop.
    Stop,
}

impl Cli {
    /// The data dir: flag, `AGORA_DATA_DIR`, or `~/.agora`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

/// `$HOME/.agora`, or `./.agora` without a home.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".agora"))
        .unwrap_or_else(|| PathBuf::from(".agora"))
}

/// Runs a parsed command line.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.data_dir();
    match &cli.command {
        Command::Init(args) => init::run(&dir, args, cli.json),
        Command::Node(NodeCommand::Run(args)) => run::run(&dir, args).await,
        Command::Node(NodeCommand::Stop) => status::stop(&dir, cli.json).await,
        Command::Status => status::status(&dir, cli.json).await,
        Command::Peers { action: None } => status::peers(&dir, cli.json).await,
        Command::Peers {
            action: Some(action),
        } => status::peers_change(&dir, action, cli.json).await,
        Command::Presence => status::presence(&dir, cli.json).await,
        Command::Auction(cmd) => market::auction(&dir, cmd, cli.json).await,
        Command::Auctions => market::auctions(&dir, cli.json).await,
        Command::Bid(cmd) => market::bid(&dir, cmd, cli.json).await,
        Command::Bids { auction } => market::bids(&dir, auction, cli.json).await,
        Command::Offer(cmd) => market::offer(&dir, cmd, cli.json).await,
        Command::Offers => market::offers(&dir, cli.json).await,
        Command::Market(cmd) => market::market(&dir, cmd, cli.json).await,
        Command::Balance { account } => ledger::balance(&dir, account.as_deref(), cli.json).await,
        Command::Transfer { to, amount } => ledger::transfer(&dir, to, *amount, cli.json).await,
        Command::Faucet { amount } => ledger::faucet(&dir, *amount, cli.json).await,
        Command::Ledger(cmd) => ledger::ledger(&dir, cmd, cli.json).await,
        Command::Contract(cmd) => ledger::contract(&dir, cmd, cli.json).await,
        Command::Earnings => ledger::earnings(&dir, cli.json).await,
        Command::Deploy(cmd) => deploy::deploy(&dir, cmd, cli.json).await,
        Command::Devnet(cmd) => agora_devnet::process::run(cmd, cli.json).await,
        Command::Storage(cmd) => storage::storage(&dir, cmd, cli.json).await,
        Command::Proof(cmd) => storage::proof(&dir, cmd, cli.json).await,
        Command::Radio => edge::radio(&dir, cli.json).await,
        Command::Device(cmd) => edge::device(&dir, cmd, cli.json).await,
        Command::Own { image } => edge::own(&dir, image, cli.json).await,
        Command::Timeline => edge::timeline(&dir, cli.json).await,
        Command::Service(cmd) => service::service(&dir, cmd, cli.json).await,
        Command::Doctor => doctor::doctor(&dir, cli.json).await,
        Command::Genesis { cmd } => genesis::genesis(cmd, cli.json),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "agora", &mut std::io::stdout());
            Ok(())
        }
    }
}
