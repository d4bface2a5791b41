//! `agora-byzantine`: a real agora node with byzantine arbitrator behaviour switched on from its
//! command line, for the attack tests of issue #13 (`tests/tests/e2e/attack_arbitrators.rs`).
//!
//! `agora-byzantine node run --data-dir DIR [MISBEHAVIOURS]` starts the node exactly as
//! `agora node run --data-dir DIR` does (the same config file, environment overrides, data
//! directory and `agora_daemon::start` assembly), then turns on:
//! - `--skew-proposals 30d`: every block it proposes is stamped this far ahead of its clock
//!   (threat A1; the consensus driver's `test-utils` hook `byzantine_proposal_skew`);
//! - `--lag-proposals 1500ms`: every block it proposes is stamped this far behind its clock,
//!   though never before its parent (THREATS A6: a slow clock, or early stamps on purpose;
//!   the hook `byzantine_proposal_lag`, which logs each such proposal with how far behind it
//!   is stamped: `test hook: proposal stamped behind the clock … behind_ms=…`);
//! - `--flood-proposals`: at the start of every height it sends four distinct signed blocks for
//!   each round it proposes among the first 400 (THREATS A11: a faulty proposer filling the
//!   height's candidate-block slots so that no honest proposal is taken; the hook
//!   `byzantine_flood_proposals`, which logs `test hook: flooded this height with proposals`);
//! - `--double-vote`: every vote it casts goes out with a conflicting twin (A2; the hook
//!   `byzantine_double_vote`);
//! - `--false-attest`: for every armed standby contract whose committee it sits on, it attests
//!   the live customer unreachable since long enough for the handover clause, and again every
//!   few seconds: the `Attest` transactions an honest arbitrator submits for a real failure,
//!   for one that did not happen (A4; signed with its own key like any of its transactions;
//!   each one a decided block applies is printed as `byzantine: attestation recorded`);
//! - `--withhold-votes`: it never sends a prevote or precommit of its own (it still proposes,
//!   follows the others' votes and applies what they decide; issue #13's "withheld votes",
//!   THREATS A5; the hook `byzantine_withhold_votes`);
//! - `--no-bid`: it neither bids nor accepts awards (an arbitrator only, never a contract's
//!   provider, so it sits on every contract's committee);
//! - `--host-nothing[=honest|lie]`: as the provider of a hosted contract it stages the image but
//!   never starts an instance, yet activates the contract and claims uptime in every heartbeat;
//!   `honest` answers the arbitrators' probes "not running", `lie` answers "running" (THREATS
//!   P1; `agora_tests::adversary::host_nothing`, behind `agora_daemon::start_wrapped`);
//! - `--keep-nothing`: as a storage contract's provider it claims custody at once, fetching and
//!   pinning nothing (neither the file nor the customer's commitment block), and reports the
//!   contract active (THREATS P4; the exchange's `test-utils` hook `byzantine_skip_custody`);
//! - `--never-arm`: as a contract's provider it countersigns and bids like an honest node but
//!   its staging of the contract's image never ends, so it never sends `MarkMigrated` or
//!   `MarkArmed` (THREATS C16: the customer's payment and stake stay locked until the
//!   customer calls the contract off; `agora_tests::adversary::never_arm`); each stalled
//!   staging prints `byzantine: never-arm stalls staging service=…`;
//! - `--false-probes[=down|up]`: as an arbitrator of active hosted and standby contracts it
//!   reports every probe interval `down` (or `up`) whatever its probes find, as soon as the
//!   interval starts (before its own probe, from the interval's middle, could report it), in
//!   `ProbeResults` batches that also carry an entry no arbitrator may report (an interval far
//!   outside the contract's window, which every replica skips); each lie a decided block
//!   applies is printed as `byzantine: false probe recorded` (THREATS P1: a minority of the
//!   committee can neither slash nor pay);
//! - `--cancel-armed`: as a customer, it cancels each of its standby contracts once armed, when
//!   its provider stands by (THREATS C9: the refund would leave the provider unpaid); prints
//!   `byzantine: cancel submitted`, then `byzantine: cancel applied` or `byzantine: cancel
//!   refused` once its replica has used up the transaction's nonce;
//! - `--try-cheats`: as a customer, once each of its hosted contracts is active, it submits
//!   every transaction that would move the contract's money its way or end it on its own
//!   word: settle it `NoActivation` or `DurationEnded` before its end, cancel or expire it,
//!   report its activation, uptime or a probe interval down, collect its uptime payment;
//!   each prints `byzantine: cheat NAME submitted contract=… nonce=…` (every honest replica
//!   logs "block refused a transaction" with that nonce);
//! - `--settle-early`: as a customer, it settles each of its active hosted or standby contracts
//!   `CustomerBack` as soon as a block confirms one of the contract's probe intervals down (a
//!   brief outage of its provider), hoping to take the provider's stake (THREATS C12); prints
//!   `byzantine: settle-early submitted`;
//! - `--hold-slots`: as a customer, it holds each countersigned contract for a pre-contracted
//!   slot back (its registration diverted by the ledger hook `byzantine_divert_registrations`)
//!   until a second past the slot's activation deadline, then registers it and at once
//!   settles it `NoActivation` (consecutive nonces, so both may land in one block before the
//!   provider could act: THREATS C8); prints `byzantine: hold-slot registered contract=…
//!   nonce=…` and `byzantine: hold-slot settle contract=… nonce=…`. Its other contracts are
//!   registered at once, unchecked;
//! - `--cancel-hosted-lasting 170s`: as a customer, it cancels each of its hosted contracts of
//!   that duration the moment a block it applies arms it (racing its provider's activation
//!   report, which follows the provider's start of the service: THREATS C13); prints
//!   `byzantine: cancel-hosted submitted contract=… nonce=…`, then `byzantine: cancel-hosted
//!   applied contract=…` or `… refused contract=…` once its replica has used up the nonce.
//! - `--slow-start-lasting 170s --slow-start-by 3s`: an honest but slow provider: it waits that
//!   long before starting the service of each of its contracts of that term (so a customer's
//!   `--cancel-hosted-lasting` wins its race: THREATS C13; `agora_tests::adversary::slow_start`);
//!   prints `byzantine: slow-start delays service=… ms=…` for each.
//! - `--stretch-awards 1000`: as a customer, each award it signs carries 1000 times the
//!   auction's term, for the bid's price (THREATS C27; `agora_market`'s `test-utils` hook
//!   `byzantine_stretch_awards`);
//! - `--cut-term`: as a provider, it answers each award of its bid with a counter-offer at the
//!   auction's maximum price for a 1 ms term instead of accepting it (THREATS C28; the hook
//!   `byzantine_cut_term`). With either, each award its market records prints `byzantine:
//!   award award=… auction=… customer=… provider=… price=… term_ms=… auction_term_ms=…
//!   proposed_by=me|peer`, the terms on the table just after it;
//! - `--counter-above-max`: as a provider, it bids the least its price rules give (a floor of
//!   1 token, where devnet providers ask at least 50), so it wins on score, and answers each
//!   award of its bids with a counter-offer one token above the auction's maximum price, as an
//!   operator may by hand (`agora market negotiate AWARD --counter PRICE`: no market hook; it
//!   accepts no award on its own). The customer must take it for a refusal: walk away, award
//!   the next bid at once and rank it last (THREATS C32, review 7 H1); prints `byzantine:
//!   counter award=… auction=… customer=… price=… max_price=…` for each, or `byzantine: counter
//!   not sent award=…: …`;
//! - `--reaward`: as a customer, once each of its contracts is registered, it signs a second
//!   award of the contract's auction (same bid, price and term) naming a throwaway key, sends
//!   it to the contract's provider and gossips it (THREATS C29; the hook `byzantine_reaward`);
//!   prints `byzantine: reaward contract=… first_award=… award=… first=… to=…`.
//! - `--future-auctions`: as a customer, for the provider of each standing offer its book
//!   holds (once per provider), it opens two auctions only that provider may win, half a core
//!   for ten minutes with a 5 s window: one whose slot starts an hour past its
//!   `market.limits.max_slot_lead_ms`, one signed as created a day ahead of its clock (THREATS
//!   C34; the hook `byzantine_open_auction`, which keeps them in its book like honest ones);
//!   prints `byzantine: future-auction twist=slot|created auction=… provider=… start_at=…|
//!   created_at=…` for each;
//! - `--retake-offers`: as a customer, once each standing offer it took (`agora offer take`) is
//!   agreed, it takes the offer again three ways: with the same terms, as storage, and for a
//!   term a millisecond past `market.limits.max_duration_ms` (THREATS C33; the hook
//!   `byzantine_take_offer`); prints `byzantine: retake how=again|storage|too-long offer=…
//!   first=… award=… provider=… kind=… term_ms=…` for each.
//!
//! This binary lives in the test crate, which is the only crate that turns on the `test-utils`
//! features of `agora-ledger`, `agora-daemon` and `agora-market-driver` outside
//! dev-dependencies: the shipped `agora` binary has no flag, config key or environment variable
//! that reaches these hooks. Each misbehaviour prints one line starting with `byzantine:` to
//! stdout (the devnet writes it to `node.log`).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agora_contracts::attestation::Liveness;
use agora_contracts::ledger::ProbeReport;
use agora_contracts::{
    ActivationClause, ContractId, ContractKind, ContractStatus, LedgerEvent, TxKind,
};
use agora_daemon::config::NodeConfig;
use agora_ledger::LedgerHandle;
use agora_market::negotiation::NegotiationStatus;
use agora_market::{
    AuctionId, AuctionKind, AuctionSpec, AuctionStatus, AwardId, AwardSubject, Effect, Input,
    KeySigner, MarketState, NegotiationInput, NodeId, Resources, Signer as _,
};
use agora_market_driver::MarketHandle;
use agora_tests::adversary::host_nothing::{HostNothing, NothingHost};
use agora_tests::adversary::never_arm::StallingHost;
use agora_tests::adversary::slow_start::SlowStart;
use agora_tests::adversary::twist::Twisted;
use agora_wire::now_ms;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use tracing_subscriber::EnvFilter;

/// How often a false attestation is repeated while the contract stays armed (well inside the
/// ledger's attestation window, so the lie stays fresh).
const REATTEST_MS: u64 = 3_000;
/// How far before the clause's delay the false attestation dates the "failure".
const SINCE_MARGIN_MS: u64 = 5_000;
/// How far past `market.limits.max_slot_lead_ms` the slot of a `--future-auctions` auction
/// starts.
const PAST_LEAD_MS: u64 = 3_600_000;
/// How far ahead of the clock a `--future-auctions` auction says it was created.
const CREATED_AHEAD_MS: u64 = 24 * 3_600_000;
/// Most providers `--future-auctions` aims at (two auctions each).
const MAX_AIMED: usize = 64;
/// Most taken offers `--retake-offers` waits on at once for their agreement.
const MAX_TAKES_WAITING: usize = 64;
/// How often the misbehaviours that poll look at the ledger or the market again.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Parser)]
#[command(
    name = "agora-byzantine",
    about = "A real agora node with byzantine arbitrator behaviour (test binary, never shipped)"
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// The node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Run the node in the foreground, misbehaving as told.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The node's data directory (as `agora node run --data-dir`).
    #[arg(long)]
    data_dir: PathBuf,
    /// Stamp every proposed block this far ahead of the clock (`30d`, `2h`, `90s`, `500ms`).
    #[arg(long, value_parser = parse_duration_ms)]
    skew_proposals: Option<u64>,
    /// Stamp every proposed block this far behind the clock (never before its parent).
    #[arg(long, value_parser = parse_duration_ms)]
    lag_proposals: Option<u64>,
    /// Cast every vote twice, for different values.
    #[arg(long)]
    double_vote: bool,
    /// At every height's start, send four signed blocks for each round it proposes (of 400).
    #[arg(long)]
    flood_proposals: bool,
    /// Attest the live customers of armed standby contracts it arbitrates unreachable.
    #[arg(long)]
    false_attest: bool,
    /// Send none of its own prevotes and precommits.
    #[arg(long)]
    withhold_votes: bool,
    /// Neither bid nor accept awards (stay an arbitrator of every contract).
    #[arg(long)]
    no_bid: bool,
    /// As a hosted contract's provider, run nothing (claiming uptime all the same) and answer
    /// probes "not running" (`honest`, the default) or "running" (`lie`).
    #[arg(long, value_name = "honest|lie", num_args = 0..=1, default_missing_value = "honest",
          value_parser = parse_host_nothing)]
    host_nothing: Option<HostNothing>,
    /// As a storage contract's provider, claim custody and report the contract active without
    /// fetching or keeping anything (neither the file nor the customer's commitment).
    #[arg(long)]
    keep_nothing: bool,
    /// As a contract's provider, never finish staging its image, so never arm it (the
    /// customer's payment and stake stay locked until the customer calls it off).
    #[arg(long, conflicts_with = "host_nothing")]
    never_arm: bool,
    /// As an arbitrator, report every probe interval of the contracts it judges `down` (the
    /// default) or `up`, whatever the probes find.
    #[arg(long, value_name = "down|up", num_args = 0..=1, default_missing_value = "down",
          value_parser = parse_false_probes)]
    false_probes: Option<bool>,
    /// As a customer, cancel each of its standby contracts once armed.
    #[arg(long)]
    cancel_armed: bool,
    /// As a customer, try every money-moving transaction that is not its to send on each of
    /// its hosted contracts once active.
    #[arg(long)]
    try_cheats: bool,
    /// As a customer, settle each active contract `CustomerBack` right after a block confirms
    /// one of its probe intervals down.
    #[arg(long)]
    settle_early: bool,
    /// As a customer, hold each countersigned slot contract back until its activation
    /// deadline has passed, then register it and settle it `NoActivation`.
    #[arg(long)]
    hold_slots: bool,
    /// As a customer, cancel each of its hosted contracts lasting this long as soon as a
    /// block arms it.
    #[arg(long, value_parser = parse_duration_ms)]
    cancel_hosted_lasting: Option<u64>,
    /// As a provider, wait `--slow-start-by` before starting the service of each contract
    /// lasting this long (an honest, slow provider).
    #[arg(long, value_parser = parse_duration_ms, conflicts_with_all = ["host_nothing", "never_arm"],
          requires = "slow_start_by")]
    slow_start_lasting: Option<u64>,
    /// How long `--slow-start-lasting` waits.
    #[arg(long, value_parser = parse_duration_ms, requires = "slow_start_lasting")]
    slow_start_by: Option<u64>,
    /// As a customer, sign each award with N times the auction's term, for the bid's price.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    stretch_awards: Option<u64>,
    /// As a provider, answer each award of its bid with a counter-offer at the auction's
    /// maximum price for a 1 ms term.
    #[arg(long, conflicts_with = "no_bid")]
    cut_term: bool,
    /// As a provider, bid with a floor of 1 token and answer each award of its bids with a
    /// counter-offer one token above the auction's maximum price.
    #[arg(long, conflicts_with_all = ["no_bid", "cut_term"])]
    counter_above_max: bool,
    /// As a customer, once each of its contracts is registered, send its provider (and gossip)
    /// a second award of the same auction naming a throwaway key.
    #[arg(long)]
    reaward: bool,
    /// As a customer, for the provider of each standing offer it sees, open two auctions only
    /// that provider may win: one whose slot starts an hour past the lead limit, one created a
    /// day ahead of the clock.
    #[arg(long)]
    future_auctions: bool,
    /// As a customer, once each standing offer it took is agreed, take it again: with the same
    /// terms, as storage, and for a term past `market.limits.max_duration_ms`.
    #[arg(long)]
    retake_offers: bool,
}

/// `down` → `false`, `up` → `true`: the outcome every false probe report states.
fn parse_false_probes(text: &str) -> Result<bool, String> {
    match text {
        "down" => Ok(false),
        "up" => Ok(true),
        other => Err(format!(
            "`{other}`: write --false-probes=down or --false-probes=up"
        )),
    }
}

fn parse_host_nothing(text: &str) -> Result<HostNothing, String> {
    match text {
        "honest" => Ok(HostNothing::Honest),
        "lie" => Ok(HostNothing::Lie),
        other => Err(format!(
            "`{other}`: write --host-nothing=honest or --host-nothing=lie"
        )),
    }
}

/// `30d`, `2h`, `15m`, `90s`, `500ms` (or plain milliseconds) as milliseconds.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write e.g. 30d, 2h, 90s or 500ms"))?;
    let scale: u64 = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use ms, s, m, h or d"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let Top::Node {
        command: NodeCommand::Run(args),
    } = cli.command;
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &RunArgs) -> anyhow::Result<()> {
    let dir: &Path = &args.data_dir;
    // As `agora node run --data-dir DIR`: defaults < config file < environment.
    let mut config = NodeConfig::load(dir)?;
    config.apply_env(|k| std::env::var(k).ok());
    if args.no_bid {
        config.market.engine.dmu.provider.auto_bid = false;
        config.market.engine.dmu.provider.auto_accept_award = false;
        println!("byzantine: no-bid (an arbitrator only)");
    }
    if args.counter_above_max {
        // It wins on price, and answers its awards itself (`counter_above_max`).
        let provider = &mut config.market.engine.dmu.provider;
        provider.floor_price = 1;
        provider.auto_accept_award = false;
    }
    let slow_ledger = Arc::new(OnceLock::new());
    let node = match args.host_nothing {
        Some(kind) => {
            let node = agora_daemon::start_wrapped(
                dir,
                &config,
                Box::new(move |host| Twisted::wrap(host, NothingHost::new(kind))),
            )
            .await?;
            let word = match kind {
                HostNothing::Honest => "honest",
                HostNothing::Lie => "lie",
            };
            println!("byzantine: host-nothing={word}");
            node
        }
        None if args.never_arm => {
            let node = agora_daemon::start_wrapped(
                dir,
                &config,
                Box::new(|host| Twisted::wrap(host, StallingHost)),
            )
            .await?;
            println!("byzantine: never-arm");
            node
        }
        None if args.slow_start_lasting.is_some() => {
            let twist = SlowStart {
                lasting_ms: args.slow_start_lasting.unwrap_or_default(),
                by: Duration::from_millis(args.slow_start_by.unwrap_or_default()),
                ledger: slow_ledger.clone(),
            };
            let node = agora_daemon::start_wrapped(
                dir,
                &config,
                Box::new(move |host| Twisted::wrap(host, twist)),
            )
            .await?;
            println!(
                "byzantine: slow-start {} ms for contracts lasting {} ms",
                args.slow_start_by.unwrap_or_default(),
                args.slow_start_lasting.unwrap_or_default()
            );
            node
        }
        None => agora_daemon::start(dir, &config).await?,
    };
    if let Some(ledger) = &node.ledger {
        let _ = slow_ledger.set(ledger.clone());
    }
    if args.keep_nothing {
        node.storage.byzantine_skip_custody();
        println!("byzantine: keep-nothing");
    }
    if let Some(factor) = args.stretch_awards {
        node.market
            .byzantine(move |s, _| (Vec::new(), s.byzantine_stretch_awards(factor)))
            .await
            .context("turning on stretched awards")?;
        println!("byzantine: stretch-awards {factor}");
    }
    if args.cut_term {
        node.market
            .byzantine(|s, _| (Vec::new(), s.byzantine_cut_term()))
            .await
            .context("turning on term-cutting counter-offers")?;
        println!("byzantine: cut-term");
    }
    if args.stretch_awards.is_some() || args.cut_term {
        tokio::spawn(report_awards(node.market.clone(), node.cancel_token()));
    }
    if args.future_auctions {
        tokio::spawn(future_auctions(node.market.clone(), node.cancel_token()));
        println!("byzantine: future-auctions");
    }
    if args.retake_offers {
        tokio::spawn(retake_offers(node.market.clone(), node.cancel_token()));
        println!("byzantine: retake-offers");
    }
    if args.counter_above_max {
        tokio::spawn(counter_above_max(node.market.clone(), node.cancel_token()));
        println!("byzantine: counter-above-max");
    }
    println!("node {} running", node.node_id());
    for a in &node.p2p_addrs {
        println!("p2p: {a}");
    }
    println!("api: {}", node.api_addr);
    let misbehaves = args.skew_proposals.is_some()
        || args.lag_proposals.is_some()
        || args.double_vote
        || args.flood_proposals
        || args.false_attest
        || args.withhold_votes
        || args.false_probes.is_some()
        || args.cancel_armed
        || args.try_cheats
        || args.settle_early
        || args.hold_slots
        || args.cancel_hosted_lasting.is_some()
        || args.reaward;
    let ledger = match (&node.ledger, misbehaves) {
        (Some(l), _) => Some(l.clone()),
        (None, false) => None,
        (None, true) => {
            node.shutdown().await;
            bail!("the misbehaviours need a ledger: set node.genesis in the node's config.toml");
        }
    };
    if let Some(ledger) = &ledger {
        if let Some(ms) = args.skew_proposals {
            ledger
                .byzantine_proposal_skew(ms)
                .await
                .context("turning on the proposal skew")?;
            println!("byzantine: skew-proposals {ms} ms");
        }
        if let Some(ms) = args.lag_proposals {
            ledger
                .byzantine_proposal_lag(ms)
                .await
                .context("turning on the proposal lag")?;
            println!("byzantine: lag-proposals {ms} ms");
        }
        if args.double_vote {
            ledger
                .byzantine_double_vote()
                .await
                .context("turning on double votes")?;
            println!("byzantine: double-vote");
        }
        if args.flood_proposals {
            ledger
                .byzantine_flood_proposals()
                .await
                .context("turning on the proposal flood")?;
            println!("byzantine: flood-proposals");
        }
        if args.withhold_votes {
            ledger
                .byzantine_withhold_votes(true)
                .await
                .context("turning on vote withholding")?;
            println!("byzantine: withhold-votes");
        }
        if args.false_attest {
            println!("byzantine: false-attest");
            tokio::spawn(lies_recorded(
                ledger.clone(),
                node.node_id(),
                node.cancel_token(),
            ));
            tokio::spawn(false_attest(ledger.clone(), node.cancel_token()));
        }
        if let Some(up) = args.false_probes {
            let word = if up { "up" } else { "down" };
            println!("byzantine: false-probes={word}");
            tokio::spawn(false_probes_recorded(
                ledger.clone(),
                node.node_id(),
                node.cancel_token(),
            ));
            tokio::spawn(false_probes(ledger.clone(), up, node.cancel_token()));
        }
        if args.cancel_armed {
            println!("byzantine: cancel-armed");
            tokio::spawn(cancel_armed(ledger.clone(), node.cancel_token()));
        }
        if args.try_cheats {
            println!("byzantine: try-cheats");
            tokio::spawn(try_cheats(ledger.clone(), node.cancel_token()));
        }
        if args.settle_early {
            println!("byzantine: settle-early");
            tokio::spawn(settle_early(ledger.clone(), node.cancel_token()));
        }
        if let Some(ms) = args.cancel_hosted_lasting {
            println!("byzantine: cancel-hosted {ms} ms");
            tokio::spawn(cancel_hosted(ledger.clone(), ms, node.cancel_token()));
        }
        if args.hold_slots {
            let held = ledger
                .byzantine_divert_registrations()
                .await
                .context("diverting contract registrations")?;
            println!("byzantine: hold-slots");
            tokio::spawn(hold_slots(ledger.clone(), held, node.cancel_token()));
        }
        if args.reaward {
            println!("byzantine: reaward");
            tokio::spawn(reaward(
                ledger.clone(),
                node.market.clone(),
                node.cancel_token(),
            ));
        }
    }
    let cancel = node.cancel_token();
    tokio::spawn(async move {
        agora_daemon::wait_for_signal().await;
        cancel.cancel();
    });
    node.wait().await?;
    Ok(())
}

/// The pace of a misbehaviour that polls: [`Every::tick`] returns `true` every period, the
/// first at once, and `false` once the node stops.
struct Every {
    interval: tokio::time::Interval,
    cancel: CancellationToken,
}

/// An [`Every`] of `period` until `cancel`: `while pace.tick().await { query; act }`.
fn every(period: Duration, cancel: &CancellationToken) -> Every {
    Every {
        interval: tokio::time::interval(period),
        cancel: cancel.clone(),
    }
}

impl Every {
    /// Waits for the next period: `false` once the node stops (its loop should end).
    async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

/// One armed standby contract this node arbitrates: its customer and handover delay.
type Target = (ContractId, NodeId, u64);

/// Every armed standby contract awaiting handover on whose committee `me` sits (not as a
/// party).
fn targets(ledger: &agora_contracts::Ledger, me: NodeId) -> Vec<Target> {
    ledger
        .contracts()
        .iter()
        .filter(|(_, r)| {
            r.contract.kind == ContractKind::Standby
                && r.status == ContractStatus::Armed
                && r.handover.is_none()
                && r.contract.committee.contains(&me)
                && r.contract.customer != me
                && r.contract.provider != me
        })
        .filter_map(|(id, r)| match r.contract.activation {
            ActivationClause::OnHandover { unreachable_for_ms } => {
                Some((*id, r.contract.customer, unreachable_for_ms))
            }
            _ => None,
        })
        .collect()
}

/// Attests the customer of every armed standby contract this node arbitrates unreachable
/// (dated far enough back for the handover clause), again every [`REATTEST_MS`], until the
/// node stops. Each submission prints
/// `byzantine: false attestation contract=… subject=… since=… nonce=…`.
async fn false_attest(ledger: LedgerHandle, cancel: CancellationToken) {
    let mut last: BTreeMap<ContractId, u64> = BTreeMap::new();
    let mut pace = every(POLL, &cancel);
    while pace.tick().await {
        let Ok(found) = ledger.query(|v| targets(&v.ledger, v.me)).await else {
            return;
        };
        let now = now_ms();
        last.retain(|id, _| found.iter().any(|(c, _, _)| c == id));
        for (id, customer, delay) in found {
            if last
                .get(&id)
                .is_some_and(|t| now < t.saturating_add(REATTEST_MS))
            {
                continue;
            }
            let since = now.saturating_sub(delay.saturating_add(SINCE_MARGIN_MS));
            let kind = TxKind::Attest {
                subject: customer,
                liveness: Liveness::Unreachable { since },
            };
            match ledger.submit(kind).await {
                Ok(tx) => {
                    last.insert(id, now);
                    println!(
                        "byzantine: false attestation contract={id} subject={customer} \
                         since={since} nonce={}",
                        tx.tx.nonce
                    );
                }
                Err(e) => warn!(error = %e, "byzantine: false attestation not admitted"),
            }
        }
    }
}

/// Prints `byzantine: attestation recorded subject=… height=…` for each of this node's
/// unreachable attestations a decided block applied (its replica applies the same blocks as
/// every honest one): the lie is on the chain, not refused.
async fn lies_recorded(ledger: LedgerHandle, me: NodeId, cancel: CancellationToken) {
    each_applied_event(ledger, cancel, |height, e| {
        if let LedgerEvent::AttestationRecorded {
            attester,
            subject,
            unreachable: true,
        } = e
            && *attester == me
        {
            println!("byzantine: attestation recorded subject={subject} height={height}");
        }
    })
    .await;
}

/// Calls `f(height, event)` for every event of every block this node applies (the same
/// blocks every honest replica applies), until the node stops; blocks missed while lagging
/// are logged.
async fn each_applied_event(
    ledger: LedgerHandle,
    cancel: CancellationToken,
    mut f: impl FnMut(u64, &LedgerEvent),
) {
    let mut blocks = ledger.outcomes();
    loop {
        let block = tokio::select! {
            _ = cancel.cancelled() => return,
            b = blocks.recv() => b,
        };
        let block = match block {
            Ok(b) => b,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!(missed = n, "byzantine: missed applied blocks");
                continue;
            }
            Err(_) => return,
        };
        for e in &block.events {
            f(block.height, e);
        }
    }
}

/// The current probe interval of every active hosted or standby contract on whose committee
/// `me` sits (not as a party).
fn probed_rounds(
    ledger: &agora_contracts::Ledger,
    me: NodeId,
    now: u64,
) -> BTreeSet<(ContractId, u64)> {
    ledger
        .contracts()
        .iter()
        .filter(|(_, r)| {
            r.is_probed()
                && r.status == ContractStatus::Active
                && r.contract.committee.contains(&me)
                && r.contract.customer != me
                && r.contract.provider != me
        })
        .filter_map(|(id, r)| Some((*id, r.evidence_round(now)?)))
        .collect()
}

/// Reports the current probe interval of every contract this node judges as `up` says, once
/// per interval, as soon as the interval starts, until the node stops. Each batch also carries
/// an entry for an interval far outside the contract's window, which every replica refuses and
/// skips while it applies the rest. Each admitted batch prints
/// `byzantine: false probe results up=… entries=… nonce=…`.
async fn false_probes(ledger: LedgerHandle, up: bool, cancel: CancellationToken) {
    let mut lied: BTreeSet<(ContractId, u64)> = BTreeSet::new();
    let mut pace = every(POLL, &cancel);
    while pace.tick().await {
        let now = now_ms();
        let Ok(rounds) = ledger
            .query(move |v| probed_rounds(&v.ledger, v.me, now))
            .await
        else {
            return;
        };
        // Bounded: only the contracts' current intervals are remembered.
        lied.retain(|k| rounds.contains(k));
        let fresh: Vec<ProbeReport> = rounds
            .difference(&lied)
            .map(|(contract, interval)| ProbeReport {
                contract: *contract,
                interval: *interval,
                up,
            })
            .collect();
        let Some(first) = fresh.first() else {
            continue;
        };
        let mut batch = fresh.clone();
        batch.push(ProbeReport {
            contract: first.contract,
            interval: u64::MAX / 2,
            up,
        });
        match ledger.submit(TxKind::ProbeResults(batch)).await {
            Ok(tx) => {
                lied.extend(fresh.iter().map(|r| (r.contract, r.interval)));
                println!(
                    "byzantine: false probe results up={up} entries={} nonce={}",
                    fresh.len() + 1,
                    tx.tx.nonce
                );
            }
            Err(e) => warn!(error = %e, "byzantine: false probe results not admitted"),
        }
    }
}

/// Prints `byzantine: false probe recorded contract=… interval=… up=… height=…` for each
/// probe outcome of this node a decided block applied (the same blocks every honest replica
/// applies): the lie is on the chain, counted as one member's report.
async fn false_probes_recorded(ledger: LedgerHandle, me: NodeId, cancel: CancellationToken) {
    each_applied_event(ledger, cancel, |height, e| {
        if let LedgerEvent::ProbeRecorded {
            contract,
            interval,
            reporter,
            up,
        } = e
            && *reporter == me
        {
            println!(
                "byzantine: false probe recorded contract={contract} interval={interval} \
                 up={up} height={height}"
            );
        }
    })
    .await;
}

/// Cancels each standby contract this node is the customer of once it is armed (one attempt
/// per contract), then reports what its replica made of the transaction once the nonce is
/// used up: `byzantine: cancel applied|refused contract=… status=…`.
async fn cancel_armed(ledger: LedgerHandle, cancel: CancellationToken) {
    let mut tried: BTreeSet<ContractId> = BTreeSet::new();
    let mut pace = every(POLL, &cancel);
    while pace.tick().await {
        let Ok(armed) = ledger
            .query(|v| {
                v.ledger
                    .contracts()
                    .iter()
                    .filter(|(_, r)| {
                        r.contract.customer == v.me
                            && r.contract.kind == ContractKind::Standby
                            && r.status == ContractStatus::Armed
                            && r.handover.is_none()
                    })
                    .map(|(id, _)| *id)
                    .collect::<Vec<ContractId>>()
            })
            .await
        else {
            return;
        };
        for id in armed {
            if tried.insert(id) {
                submit_cancel(&ledger, id, "cancel", &cancel).await;
            }
        }
    }
}

/// Submits `Cancel(id)` without the node's own check of its content and prints `byzantine:
/// LABEL submitted contract=… nonce=…` (or `not admitted`); then, once this replica has used
/// up the nonce, `byzantine: LABEL applied|refused contract=… status=…`.
async fn submit_cancel(
    ledger: &LedgerHandle,
    id: ContractId,
    label: &'static str,
    cancel: &CancellationToken,
) {
    let nonce = match ledger.byzantine_submit_unchecked(TxKind::Cancel(id)).await {
        Ok(tx) => {
            println!(
                "byzantine: {label} submitted contract={id} nonce={}",
                tx.tx.nonce
            );
            tx.tx.nonce
        }
        Err(e) => {
            println!("byzantine: {label} not admitted contract={id}: {e}");
            return;
        }
    };
    let ledger = ledger.clone();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let Ok((used, status)) = ledger
                .query(move |v| {
                    (
                        v.ledger.next_nonce(&v.me) > nonce,
                        v.ledger.contract(&id).map(|r| r.status),
                    )
                })
                .await
            else {
                return;
            };
            if used {
                let word = if status == Some(ContractStatus::Cancelled) {
                    "applied"
                } else {
                    "refused"
                };
                println!("byzantine: {label} {word} contract={id} status={status:?}");
                return;
            }
        }
    });
}

/// The cheats [`try_cheats`] submits for active hosted contract `id` at
/// `now`: each a transaction only another party may send, or one the contract's state does not
/// allow. (Attesting the provider unreachable is not among them: every devnet node is an
/// arbitrator, whose lone attestation is allowed and decides nothing without a quorum.)
fn cheats(id: ContractId, now: u64) -> Vec<(&'static str, TxKind)> {
    use agora_contracts::SettleReason;
    use agora_contracts::ledger::{HeartbeatBatch, UptimeInterval};
    let settle = |reason| TxKind::Settle {
        contract: id,
        reason,
    };
    vec![
        ("settle-no-activation", settle(SettleReason::NoActivation)),
        ("settle-duration-ended", settle(SettleReason::DurationEnded)),
        ("cancel", TxKind::Cancel(id)),
        ("expire", TxKind::Expire(id)),
        (
            "report-activation",
            TxKind::ReportActivation {
                contract: id,
                activated_at: now,
            },
        ),
        (
            "heartbeats",
            TxKind::Heartbeats {
                contract: id,
                batch: HeartbeatBatch {
                    intervals: vec![UptimeInterval {
                        from: now.saturating_sub(1_000),
                        to: now,
                    }],
                    readings_processed: 1,
                    data_proofs: Vec::new(),
                },
            },
        ),
        (
            "probe-down",
            TxKind::ProbeResults(vec![ProbeReport {
                contract: id,
                interval: 0,
                up: false,
            }]),
        ),
        ("settle-uptime", TxKind::SettleUptime(id)),
    ]
}

/// Submits [`cheats`] once for each hosted contract this node is the customer of, as soon as
/// it is active.
async fn try_cheats(ledger: LedgerHandle, cancel: CancellationToken) {
    let mut tried: BTreeSet<ContractId> = BTreeSet::new();
    let mut pace = every(POLL, &cancel);
    while pace.tick().await {
        let Ok(active) = ledger
            .query(|v| {
                v.ledger
                    .contracts()
                    .iter()
                    .filter(|(_, r)| {
                        r.contract.customer == v.me
                            && r.contract.kind == ContractKind::Hosted
                            && r.status == ContractStatus::Active
                    })
                    .map(|(id, _)| *id)
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        for id in active {
            if !tried.insert(id) {
                continue;
            }
            for (name, kind) in cheats(id, now_ms()) {
                match ledger.byzantine_submit_unchecked(kind).await {
                    Ok(tx) => println!(
                        "byzantine: cheat {name} submitted contract={id} nonce={}",
                        tx.tx.nonce
                    ),
                    Err(e) => println!("byzantine: cheat {name} not admitted contract={id}: {e}"),
                }
            }
        }
    }
}

/// Cancels each hosted contract this node is the customer of that lasts `duration_ms`, as soon
/// as an applied block arms it, and reports whether the cancel applied (`--cancel-hosted-lasting`).
async fn cancel_hosted(ledger: LedgerHandle, duration_ms: u64, cancel: CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ContractId>(64);
    tokio::spawn(each_applied_event(
        ledger.clone(),
        cancel.clone(),
        move |_, e| {
            if let LedgerEvent::StatusChanged {
                contract,
                to: ContractStatus::Armed,
                ..
            } = e
            {
                let _ = tx.try_send(*contract);
            }
        },
    ));
    let mut tried: BTreeSet<ContractId> = BTreeSet::new();
    loop {
        let id = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let Ok(mine) = ledger
            .query(move |v| {
                v.ledger.contract(&id).is_some_and(|r| {
                    r.contract.customer == v.me
                        && r.contract.kind == ContractKind::Hosted
                        && r.contract.duration_ms == duration_ms
                })
            })
            .await
        else {
            return;
        };
        if !mine || !tried.insert(id) {
            continue;
        }
        submit_cancel(&ledger, id, "cancel-hosted", &cancel).await;
    }
}

/// Registers the contracts whose registration the ledger hook diverted: a pre-contracted
/// slot's a second past its activation deadline, followed at once by its settlement
/// `NoActivation`; any other at once (`--hold-slots`).
async fn hold_slots(
    ledger: LedgerHandle,
    mut held: tokio::sync::mpsc::Receiver<TxKind>,
    cancel: CancellationToken,
) {
    loop {
        let kind = tokio::select! {
            _ = cancel.cancelled() => return,
            k = held.recv() => match k {
                Some(k) => k,
                None => return,
            },
        };
        let TxKind::RegisterContract(signed) = &kind else {
            continue;
        };
        let Ok(id) = signed.contract.id() else {
            continue;
        };
        let ActivationClause::At(start_at) = signed.contract.activation else {
            if let Err(e) = ledger.byzantine_submit_unchecked(kind).await {
                println!("byzantine: hold-slot passing contract={id} not admitted: {e}");
            }
            continue;
        };
        let deadline = start_at.saturating_add(signed.contract.qos.max_activation_delay_ms);
        println!("byzantine: hold-slot holding contract={id} deadline={deadline}");
        let ledger = ledger.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let wait = deadline.saturating_sub(now_ms()).saturating_add(1_000);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
            let settle = TxKind::Settle {
                contract: id,
                reason: agora_contracts::SettleReason::NoActivation,
            };
            for (what, kind) in [("registered", kind), ("settle", settle)] {
                match ledger.byzantine_submit_unchecked(kind).await {
                    Ok(tx) => println!(
                        "byzantine: hold-slot {what} contract={id} nonce={}",
                        tx.tx.nonce
                    ),
                    Err(e) => {
                        println!("byzantine: hold-slot {what} not admitted contract={id}: {e}")
                    }
                }
            }
        });
    }
}

/// Settles each active contract this node is the customer of `CustomerBack` as soon as a block
/// it applies confirms one of the contract's probe intervals down (once per contract):
/// `byzantine: settle-early submitted contract=… interval=… nonce=…`.
async fn settle_early(ledger: LedgerHandle, cancel: CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(ContractId, u64)>(64);
    tokio::spawn(each_applied_event(
        ledger.clone(),
        cancel.clone(),
        move |_, e| {
            if let LedgerEvent::UptimeConfirmed {
                contract,
                interval,
                up: false,
                ..
            } = e
            {
                let _ = tx.try_send((*contract, *interval));
            }
        },
    ));
    let mut settled: BTreeSet<ContractId> = BTreeSet::new();
    loop {
        let (id, interval) = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let Ok(mine) = ledger
            .query(move |v| {
                v.ledger.contract(&id).is_some_and(|r| {
                    r.contract.customer == v.me && r.status == ContractStatus::Active
                })
            })
            .await
        else {
            return;
        };
        if !mine || !settled.insert(id) {
            continue;
        }
        let kind = TxKind::Settle {
            contract: id,
            reason: agora_contracts::SettleReason::CustomerBack,
        };
        match ledger.byzantine_submit_unchecked(kind).await {
            Ok(tx) => println!(
                "byzantine: settle-early submitted contract={id} interval={interval} nonce={}",
                tx.tx.nonce
            ),
            Err(e) => println!("byzantine: settle-early not admitted contract={id}: {e}"),
        }
    }
}

/// Prints `byzantine: award …` (see the module docs) once for each award this node's market
/// records: the terms on the table just after it, so a test sees the stretched term its award
/// signed (`--stretch-awards`) or the counter-offer it made (`--cut-term`).
async fn report_awards(market: MarketHandle, cancel: CancellationToken) {
    let mut after: Option<u64> = None;
    let mut pace = every(POLL, &cancel);
    while pace.tick().await {
        for record in market.events_after(after) {
            after = Some(record.seq);
            let award = record.data["award"]
                .as_str()
                .and_then(|a| a.parse::<AwardId>().ok());
            let Some(award) = award.filter(|_| record.kind == "awarded") else {
                continue;
            };
            if let Ok(Some(line)) = market.query(move |s| award_line(s, &award)).await {
                println!("byzantine: award {line}");
            }
        }
    }
}

/// The terms on the table of `award` in this node's market, for [`report_awards`].
fn award_line(s: &MarketState<KeySigner>, award: &AwardId) -> Option<String> {
    let n = s.negotiation(award)?;
    let t = n.current_terms();
    let auction = match t.subject {
        AwardSubject::Bid { auction, .. } => Some(auction),
        AwardSubject::Offer { .. } => None,
    };
    let auction_term = auction
        .and_then(|a| s.auction(&a))
        .map(|e| e.request.body.duration_ms.to_string());
    let by = if n.proposed_by() == s.node_id() {
        "me"
    } else {
        "peer"
    };
    Some(format!(
        "award={award} auction={} customer={} provider={} price={} term_ms={} \
         auction_term_ms={} proposed_by={by}",
        auction.map(|a| a.to_string()).unwrap_or_default(),
        t.customer,
        t.provider,
        t.price,
        t.duration_ms,
        auction_term.unwrap_or_default(),
    ))
}

/// Answers each award of this node's bids with a counter-offer one token above the auction's
/// maximum price (`--counter-above-max`, see the module docs), with the input `agora market
/// negotiate --counter` feeds. Reads the market's event log from where it left off, so it
/// keeps nothing per award.
async fn counter_above_max(market: MarketHandle, cancel: CancellationToken) {
    let Ok(me) = market.query(|s| s.node_id().to_string()).await else {
        return;
    };
    let mut after: Option<u64> = None;
    let mut pace = every(POLL, &cancel);
    while pace.tick().await {
        for record in market.events_after(after) {
            after = Some(record.seq);
            let Some((award, auction)) = bid_award_to(&record.kind, &record.data, &me) else {
                continue;
            };
            let customer = record.data["customer"].as_str().unwrap_or_default();
            let Ok(max) = market
                .query(move |s| s.auction(&auction).map(|e| e.request.body.max_price))
                .await
            else {
                return;
            };
            let Some(max) = max else {
                println!(
                    "byzantine: counter not sent award={award}: auction {auction} left the book"
                );
                continue;
            };
            let price = max.saturating_add(1);
            let input = Input::Negotiate {
                award,
                input: NegotiationInput::Counter { price },
            };
            let Ok(effects) = market.input(input).await else {
                return;
            };
            let refused = effects.iter().find_map(|e| match e {
                Effect::Rejected { error, .. } => Some(error.to_string()),
                _ => None,
            });
            match refused {
                Some(e) => println!("byzantine: counter not sent award={award}: {e}"),
                None => println!(
                    "byzantine: counter award={award} auction={auction} customer={customer} \
                     price={price} max_price={max}"
                ),
            }
        }
    }
}

/// The award and auction of a market event of `kind` with `data` that records an award of a
/// bid of provider `me` (base58), as [`counter_above_max`] answers it.
fn bid_award_to(kind: &str, data: &serde_json::Value, me: &str) -> Option<(AwardId, AuctionId)> {
    if kind != "awarded" || data["provider"] != me {
        return None;
    }
    let award = data["award"].as_str()?.parse().ok()?;
    let auction = data["auction"].as_str()?.parse().ok()?;
    Some((award, auction))
}

/// Once each contract this node is the customer of is registered (as its replica sees it),
/// signs a second award of the contract's auction naming a throwaway key, sends it to the
/// contract's provider and gossips it (one attempt per contract): prints `byzantine: reaward
/// contract=… first_award=… award=… first=… to=…`, or `byzantine: reaward not sent …`.
async fn reaward(ledger: LedgerHandle, market: MarketHandle, cancel: CancellationToken) {
    let mut tried: BTreeSet<ContractId> = BTreeSet::new();
    let mut pace = every(POLL, &cancel);
    while pace.tick().await {
        let Ok(open) = ledger
            .query(|v| {
                v.ledger
                    .contracts()
                    .iter()
                    .filter(|(_, r)| r.contract.customer == v.me && !r.status.is_final())
                    .map(|(id, r)| (*id, r.contract.nonce, r.contract.provider))
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        for (id, nonce, provider) in open {
            if !tried.insert(id) {
                continue;
            }
            let to = KeySigner::from_seed(now_ms()).node_id();
            let sent = market
                .byzantine(move |s, now| match awarded_with_nonce(s, provider, nonce) {
                    Some(first) => match s.byzantine_reaward(now, &first, to) {
                        Ok((award, effects)) => (effects, Ok((first, award))),
                        Err(e) => (Vec::new(), Err(e.to_string())),
                    },
                    None => (
                        Vec::new(),
                        Err("its award is not in this node's book".into()),
                    ),
                })
                .await;
            match sent {
                Ok(Ok((first, award))) => println!(
                    "byzantine: reaward contract={id} first_award={first} award={award} \
                     first={provider} to={to}"
                ),
                Ok(Err(e)) => println!("byzantine: reaward not sent contract={id}: {e}"),
                Err(_) => return,
            }
        }
    }
}

/// Our award, to `provider`, whose contract carries `nonce` (`agora_contracts::deal::deal_nonce`
/// of the award).
fn awarded_with_nonce(s: &MarketState<KeySigner>, provider: NodeId, nonce: u64) -> Option<AwardId> {
    let me = s.node_id();
    s.auctions().values().find_map(|e| match e.status {
        AuctionStatus::Awarded { award, provider: p }
            if e.request.body.customer == me
                && p == provider
                && agora_contracts::deal::deal_nonce(&award) == nonce =>
        {
            Some(award)
        }
        _ => None,
    })
}

/// For the provider of each standing offer in this node's book (once each, at most
/// [`MAX_AIMED`]), opens the two auctions of `--future-auctions` (see the module docs).
async fn future_auctions(market: MarketHandle, cancel: CancellationToken) {
    let mut aimed: BTreeSet<NodeId> = BTreeSet::new();
    let mut pace = every(POLL, &cancel);
    while pace.tick().await {
        let Ok(offered) = market
            .query(|s| {
                let me = s.node_id();
                s.offers()
                    .values()
                    .filter(|o| o.body.provider != me)
                    .map(|o| (o.body.provider, o.body.region.clone()))
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        for (provider, region) in offered {
            if aimed.len() >= MAX_AIMED || !aimed.insert(provider) {
                continue;
            }
            let opened = market
                .byzantine(move |s, now| open_future_auctions(s, now, provider, region))
                .await;
            let Ok(lines) = opened else { return };
            for line in lines {
                println!("byzantine: future-auction {line}");
            }
        }
    }
}

/// The two auctions of `--future-auctions` for `provider` in `region`: one whose slot starts
/// [`PAST_LEAD_MS`] past this node's `market.limits.max_slot_lead_ms`, one created
/// [`CREATED_AHEAD_MS`] ahead of its clock; a line for each.
fn open_future_auctions(
    s: &mut MarketState<KeySigner>,
    now: u64,
    provider: NodeId,
    region: String,
) -> (Vec<Effect>, Vec<String>) {
    let spec = AuctionSpec {
        region,
        resources: Resources {
            cpu_millis: 500,
            memory_bytes: 64 << 20,
            ..Resources::default()
        },
        duration_ms: 600_000,
        max_price: 100,
        window_ms: 5_000,
        kind: AuctionKind::Hosted,
        near: None,
        award_grace_ms: 30_000,
        service: None,
        start_at: None,
    };
    let slot = now
        .saturating_add(s.config().limits.max_slot_lead_ms)
        .saturating_add(PAST_LEAD_MS);
    let created = now.saturating_add(CREATED_AHEAD_MS);
    let only: BTreeSet<NodeId> = BTreeSet::from([provider]);
    let opened = [
        (
            "slot",
            format!("start_at={slot}"),
            s.byzantine_open_auction(now, spec.clone(), only.clone(), |b| b.start_at = Some(slot)),
        ),
        (
            "created",
            format!("created_at={created}"),
            s.byzantine_open_auction(now, spec, only, |b| b.created_at = created),
        ),
    ];
    let (mut effects, mut lines) = (Vec::new(), Vec::new());
    for (twist, field, result) in opened {
        match result {
            Ok((id, e)) => {
                effects.extend(e);
                lines.push(format!(
                    "twist={twist} auction={id} provider={provider} {field}"
                ));
            }
            Err(e) => lines.push(format!("twist={twist} not opened provider={provider}: {e}")),
        }
    }
    (effects, lines)
}

/// Once each standing offer this node took is agreed, takes it again three ways
/// (`--retake-offers`, see the module docs). A take is this node's `awarded` market event
/// with no auction; at most [`MAX_TAKES_WAITING`] wait for their agreement at once.
async fn retake_offers(market: MarketHandle, cancel: CancellationToken) {
    let Ok(me) = market.query(|s| s.node_id().to_string()).await else {
        return;
    };
    let mut after: Option<u64> = None;
    let mut waiting: BTreeSet<AwardId> = BTreeSet::new();
    let mut pace = every(POLL, &cancel);
    while pace.tick().await {
        for record in market.events_after(after) {
            after = Some(record.seq);
            let taken = record.kind == "awarded"
                && record.data["auction"].is_null()
                && record.data["customer"] == me.as_str();
            let award = record.data["award"]
                .as_str()
                .and_then(|a| a.parse::<AwardId>().ok());
            if let Some(award) = award.filter(|_| taken && waiting.len() < MAX_TAKES_WAITING) {
                waiting.insert(award);
            }
        }
        for first in waiting.clone() {
            match market.byzantine(move |s, now| retake(s, now, first)).await {
                Ok(None) => {}
                Ok(Some(lines)) => {
                    waiting.remove(&first);
                    for line in lines {
                        println!("byzantine: retake {line}");
                    }
                }
                Err(_) => return,
            }
        }
    }
}

/// Takes again the offer our take `first` was agreed on, three ways (a line for each);
/// `None` while its negotiation is open, no line once it failed or is gone.
fn retake(
    s: &mut MarketState<KeySigner>,
    now: u64,
    first: AwardId,
) -> (Vec<Effect>, Option<Vec<String>>) {
    let terms = match s.negotiation(&first).map(|n| n.status()) {
        Some(NegotiationStatus::Open) => return (Vec::new(), None),
        Some(NegotiationStatus::Agreed(t)) => t.clone(),
        _ => return (Vec::new(), Some(Vec::new())),
    };
    let AwardSubject::Offer { offer } = terms.subject else {
        return (Vec::new(), Some(Vec::new()));
    };
    let too_long = s.config().limits.max_duration_ms.saturating_add(1);
    let (mut effects, mut lines) = (Vec::new(), Vec::new());
    for (how, kind, term) in [
        ("again", AuctionKind::Hosted, terms.duration_ms),
        ("storage", AuctionKind::Storage, terms.duration_ms),
        ("too-long", AuctionKind::Hosted, too_long),
    ] {
        match s.byzantine_take_offer(now, offer, term, kind) {
            Ok((award, e)) => {
                effects.extend(e);
                lines.push(format!(
                    "how={how} offer={offer} first={first} award={award} provider={} \
                     kind={kind:?} term_ms={term}",
                    terms.provider
                ));
            }
            Err(e) => lines.push(format!("how={how} not sent offer={offer}: {e}")),
        }
    }
    (effects, Some(lines))
}

#[cfg(test)]
mod tests {
    use super::{HostNothing, parse_duration_ms, parse_false_probes, parse_host_nothing};

    #[test]
    fn false_probes_take_down_or_up_only() {
        assert_eq!(parse_false_probes("down"), Ok(false));
        assert_eq!(parse_false_probes("up"), Ok(true));
        assert!(parse_false_probes("").is_err());
        assert!(parse_false_probes("true").is_err());
    }

    #[test]
    fn host_nothing_takes_honest_or_lie_only() {
        assert_eq!(parse_host_nothing("honest"), Ok(HostNothing::Honest));
        assert_eq!(parse_host_nothing("lie"), Ok(HostNothing::Lie));
        assert!(parse_host_nothing("").is_err());
        assert!(parse_host_nothing("true").is_err());
    }

    /// A factor of 1 would sign the auction's own term, and a provider that accepts no award
    /// has none to counter: both are refused rather than run as a misbehaviour that does
    /// nothing.
    #[test]
    fn market_misbehaviours_refuse_what_would_do_nothing() {
        use clap::Parser as _;
        let run = |extra: &[&str]| {
            let mut argv = vec!["agora-byzantine", "node", "run", "--data-dir", "d"];
            argv.extend_from_slice(extra);
            super::Cli::try_parse_from(argv)
        };
        assert!(run(&["--stretch-awards", "1000", "--reaward"]).is_ok());
        assert!(run(&["--cut-term"]).is_ok());
        assert!(run(&["--future-auctions", "--retake-offers"]).is_ok());
        assert!(run(&["--stretch-awards", "1"]).is_err());
        assert!(run(&["--cut-term", "--no-bid"]).is_err());
        // A provider that accepts no award has none to counter; and one award, one answer.
        assert!(run(&["--counter-above-max", "--stretch-awards", "1000"]).is_ok());
        assert!(run(&["--counter-above-max", "--no-bid"]).is_err());
        assert!(run(&["--counter-above-max", "--cut-term"]).is_err());
    }

    /// `--counter-above-max` answers the awards of its own bids only: not another provider's
    /// (the award is gossiped), not a taken offer's (no auction, no maximum price), not
    /// another event. Mutant caught: the provider left unchecked (it counters in others' deals,
    /// refused as an unknown award, and the log fills with `not sent` lines).
    #[test]
    fn counters_answer_the_awards_of_its_own_bids_only() {
        let (award, auction) = ("a".repeat(64), "b".repeat(64));
        let data = |provider: &str, auction: Option<&str>| {
            serde_json::json!({"award": award, "auction": auction, "customer": "c",
                "provider": provider, "price": 1})
        };
        let mine = super::bid_award_to("awarded", &data("me", Some(&auction)), "me");
        let (a, b) = mine.expect("an award of our bid");
        assert_eq!(
            (a.to_string(), b.to_string()),
            (award.clone(), auction.clone())
        );
        let others = super::bid_award_to("awarded", &data("other", Some(&auction)), "me");
        assert!(others.is_none());
        assert!(super::bid_award_to("awarded", &data("me", None), "me").is_none());
        assert!(super::bid_award_to("agreed", &data("me", Some(&auction)), "me").is_none());
    }

    /// The polling loops' pace: the first period at once, then none once the node stops.
    /// Mutant caught: `tick` answering `true` when cancelled (a loop that never ends).
    #[tokio::test]
    async fn every_ticks_at_once_and_ends_once_the_node_stops() {
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut pace = super::every(std::time::Duration::from_secs(3_600), &cancel);
        assert!(pace.tick().await, "the first period starts at once");
        cancel.cancel();
        assert!(!pace.tick().await, "a stopped node's loop ends");
    }

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration_ms("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("15m"), Ok(900_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("42"), Ok(42));
        for bad in ["", "d", "3w", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
