//! Market commands: `auction create`, `auctions`, `bid submit`, `bids`, `offer create`,
//! `offers`, `market watch`.

use std::path::Path;
use std::time::Duration;

use agora_market::resources::{
    parse_bandwidth, parse_bytes, parse_cpu, parse_duration_ms, parse_interfaces, parse_near,
};
use agora_market::{AuctionKind, AuctionSpec, Location, OfferSpec, Resources};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use agora_api::client::ApiClient;
use agora_api::market::{
    AuctionView, BidRequest, BidView, CreatedReply, NegotiateRequest, TakeOfferRequest,
};
use agora_market_driver::MarketEventRecord;
use agora_wire::now_ms;

use agora_devnet::output::{print_json, print_table};

/// Resource flags shared by auctions and offers.
#[derive(Debug, Args)]
pub struct ResourceArgs {
    /// CPU, e.g. `500m` or `2`.
    #[arg(long, default_value = "0")]
    pub cpu: String,
    /// Memory, e.g. `256MiB`.
    #[arg(long, default_value = "0")]
    pub memory: String,
    /// Storage, e.g. `1GiB`.
    #[arg(long, default_value = "0")]
    pub storage: String,
    /// Bandwidth, e.g. `10Mbps`.
    #[arg(long, default_value = "0")]
    pub bandwidth: String,
    /// Connectivity interfaces, e.g. `lora,ble` or `lora:2`.
    #[arg(long)]
    pub interfaces: Option<String>,
}

impl ResourceArgs {
    pub(crate) fn resources(&self) -> anyhow::Result<Resources> {
        Ok(Resources {
            cpu_millis: parse_cpu(&self.cpu).context("--cpu")?,
            memory_bytes: parse_bytes(&self.memory).context("--memory")?,
            storage_bytes: parse_bytes(&self.storage).context("--storage")?,
            bandwidth_bps: parse_bandwidth(&self.bandwidth).context("--bandwidth")?,
            interfaces: match &self.interfaces {
                Some(s) => parse_interfaces(s).context("--interfaces")?,
                None => Default::default(),
            },
            uptime: None,
            battery: None,
        })
    }
}

/// Service kinds on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    /// Runs now.
    Hosted,
    /// Fault-tolerance insurance: runs only on a handover event.
    Standby,
    /// Keeps content for the duration.
    Storage,
}

impl From<KindArg> for AuctionKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Hosted => AuctionKind::Hosted,
            KindArg::Standby => AuctionKind::Standby,
            KindArg::Storage => AuctionKind::Storage,
        }
    }
}

/// `agora auction …`
#[derive(Debug, Subcommand)]
pub enum AuctionCommand {
    /// Open an auction (as customer) on the region's gossip topic.
    Create(AuctionCreateArgs),
}

/// Options of `auction create`.
#[derive(Debug, Args)]
pub struct AuctionCreateArgs {
    #[command(flatten)]
    resources: ResourceArgs,
    /// How long the service must run, e.g. `2h`.
    #[arg(long)]
    duration: String,
    /// Maximum total price in tokens.
    #[arg(long)]
    max_price: u64,
    /// Service kind.
    #[arg(long, value_enum, default_value = "hosted")]
    kind: KindArg,
    /// Bidding window, e.g. `3s`.
    #[arg(long, default_value = "3s")]
    window: String,
    /// Providers must be within KM of LAT,LON: `LAT,LON,KM`.
    #[arg(long)]
    near: Option<String>,
    /// Regional market.
    #[arg(long, default_value = "default")]
    region: String,
    /// Time after the window closes to award, e.g. `60s`. The losers keep their bids until
    /// then (at most 2 min), so with 60 s the winner has 30 s to agree and the next bid is
    /// awarded if it does not; with less the winner has less (20 s with `30s`; a lapse under
    /// 30 s does not count against it), and under `20s` the winner has 60 s and no next bid is
    /// awarded.
    #[arg(long, default_value = "60s")]
    award_grace: String,
    /// CID of the service image the contract will carry (from `agora service publish`); with
    /// `--kind storage`, the file to keep (from `agora storage add`).
    #[arg(long)]
    service: Option<String>,
    /// Hosted: start the service this long from now (a pre-contracted slot), e.g. `30s`; no
    /// sooner than the bidding window closes, and at most a day less 30 s ahead
    /// (`market.limits.max_slot_lead_ms`, less the clock skew allowed to the nodes that relay
    /// it; providers auto-bid on slots up to an hour ahead).
    #[arg(long)]
    start_in: Option<String>,
}

/// `agora bid …`
#[derive(Debug, Subcommand)]
pub enum BidCommand {
    /// Bid (as provider) on an open auction; capacity and location come from the node config.
    Submit {
        /// Auction id (from `agora auctions`).
        auction: String,
        /// Total price in tokens.
        #[arg(long)]
        price: u64,
    },
}

/// `agora offer …`
#[derive(Debug, Subcommand)]
pub enum OfferCommand {
    /// Publish a standing offer (as provider).
    Create(OfferCreateArgs),
    /// Take a standing offer directly (as customer), e.g. `--duration 2h`.
    Take {
        /// Offer id (from `agora offers`).
        offer: String,
        /// Rental duration.
        #[arg(long)]
        duration: String,
    },
}

/// Options of `offer create`.
#[derive(Debug, Args)]
pub struct OfferCreateArgs {
    #[command(flatten)]
    resources: ResourceArgs,
    /// Price in tokens per hour.
    #[arg(long)]
    price_per_hour: u64,
    /// How long the offer stands, e.g. `1h`.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Provider location `LAT,LON`.
    #[arg(long)]
    at: Option<String>,
    /// Regional market.
    #[arg(long, default_value = "default")]
    region: String,
}

/// `agora market …`
#[derive(Debug, Subcommand)]
pub enum MarketCommand {
    /// Answer a negotiation after an award: counter with a price, accept, or walk away.
    Negotiate {
        /// Award id (from `agora market watch`).
        award: String,
        /// Propose this total price instead.
        #[arg(long, conflicts_with_all = ["accept", "walk_away"])]
        counter: Option<u64>,
        /// Accept the counterparty's latest proposal.
        #[arg(long, conflicts_with = "walk_away")]
        accept: bool,
        /// End the negotiation without a deal.
        #[arg(long)]
        walk_away: bool,
    },
    /// Stream market events as they happen (Ctrl-C to stop).
    Watch {
        /// Print what happened so far and exit.
        #[arg(long)]
        once: bool,
    },
}

fn client(dir: &Path) -> anyhow::Result<ApiClient> {
    Ok(ApiClient::for_data_dir(dir)?)
}

fn print_created(what: &str, reply: &CreatedReply, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(reply)
    } else {
        println!("{what} {}", reply.id);
        Ok(())
    }
}

/// `agora auction create`
pub async fn auction(dir: &Path, cmd: &AuctionCommand, json: bool) -> anyhow::Result<()> {
    let AuctionCommand::Create(a) = cmd;
    let spec = AuctionSpec {
        region: a.region.clone(),
        resources: a.resources.resources()?,
        duration_ms: parse_duration_ms(&a.duration).context("--duration")?,
        max_price: a.max_price,
        window_ms: parse_duration_ms(&a.window).context("--window")?,
        kind: a.kind.into(),
        near: a
            .near
            .as_deref()
            .map(parse_near)
            .transpose()
            .context("--near")?,
        award_grace_ms: parse_duration_ms(&a.award_grace).context("--award-grace")?,
        service: a.service.clone(),
        start_at: a
            .start_in
            .as_deref()
            .map(parse_duration_ms)
            .transpose()
            .context("--start-in")?
            .map(|d| agora_wire::now_ms() + d),
    };
    let reply: CreatedReply = client(dir)?.post("/v1/market/auctions", &spec).await?;
    print_created("auction", &reply, json)
}

/// `agora auctions`
pub async fn auctions(dir: &Path, json: bool) -> anyhow::Result<()> {
    let list: Vec<AuctionView> = client(dir)?.get("/v1/market/auctions").await?;
    if json {
        return print_json(&list);
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let closes = if a.window_closes_at > now {
                format!("in {:.1} s", (a.window_closes_at - now) as f64 / 1000.0)
            } else {
                "closed".into()
            };
            vec![
                a.id.clone(),
                a.customer.chars().take(8).collect(),
                format!("{:?}", a.kind).to_lowercase(),
                a.region.clone(),
                a.max_price.to_string(),
                a.bids.to_string(),
                closes,
                a.status.clone(),
                a.provider
                    .as_deref()
                    .map(|p| p.chars().take(8).collect())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "AUCTION", "CUSTOMER", "KIND", "REGION", "MAX", "BIDS", "WINDOW", "STATUS", "WINNER",
        ],
        &rows,
    );
    Ok(())
}

/// `agora bid submit`
pub async fn bid(dir: &Path, cmd: &BidCommand, json: bool) -> anyhow::Result<()> {
    let BidCommand::Submit { auction, price } = cmd;
    let reply: CreatedReply = client(dir)?
        .post(
            &format!("/v1/market/auctions/{auction}/bids"),
            &BidRequest { price: *price },
        )
        .await?;
    print_created("bid", &reply, json)
}

/// `agora bids AUCTION`
pub async fn bids(dir: &Path, auction: &str, json: bool) -> anyhow::Result<()> {
    let list: Vec<BidView> = client(dir)?
        .get(&format!("/v1/market/auctions/{auction}/bids"))
        .await?;
    if json {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.provider.chars().take(8).collect(),
                b.price.to_string(),
                b.reputation_permille.to_string(),
            ]
        })
        .collect();
    print_table(&["BID", "PROVIDER", "PRICE", "REPUTATION"], &rows);
    Ok(())
}

/// `agora offer create`
pub async fn offer(dir: &Path, cmd: &OfferCommand, json: bool) -> anyhow::Result<()> {
    let a = match cmd {
        OfferCommand::Create(a) => a,
        OfferCommand::Take { offer, duration } => {
            let req = TakeOfferRequest {
                duration_ms: parse_duration_ms(duration).context("--duration")?,
            };
            let outcome: Vec<String> = client(dir)?
                .post(&format!("/v1/market/offers/{offer}/take"), &req)
                .await?;
            if json {
                return print_json(&outcome);
            }
            for line in outcome {
                println!("{line}");
            }
            return Ok(());
        }
    };
    let location = match &a.at {
        Some(s) => {
            let near = parse_near(&format!("{s},1")).context("--at (expected LAT,LON)")?;
            Some(Location {
                lat: near.center.lat,
                lon: near.center.lon,
            })
        }
        None => None,
    };
    let spec = OfferSpec {
        region: a.region.clone(),
        resources: a.resources.resources()?,
        price_per_hour: a.price_per_hour,
        location,
        ttl_ms: parse_duration_ms(&a.ttl).context("--ttl")?,
    };
    let reply: CreatedReply = client(dir)?.post("/v1/market/offers", &spec).await?;
    print_created("offer", &reply, json)
}

/// `agora offers`
pub async fn offers(dir: &Path, json: bool) -> anyhow::Result<()> {
    let list: Vec<serde_json::Value> = client(dir)?.get("/v1/market/offers").await?;
    if json {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|o| {
            vec![
                o["id"].as_str().unwrap_or_default().to_string(),
                o["provider"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(8)
                    .collect(),
                o["region"].as_str().unwrap_or_default().to_string(),
                o["price_per_hour"].to_string(),
            ]
        })
        .collect();
    print_table(&["OFFER", "PROVIDER", "REGION", "PER HOUR"], &rows);
    Ok(())
}

/// `agora market …`
pub async fn market(dir: &Path, cmd: &MarketCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        MarketCommand::Watch { once } => watch(dir, *once, json).await,
        MarketCommand::Negotiate {
            award,
            counter,
            accept,
            walk_away,
        } => {
            let req = match (counter, accept, walk_away) {
                (Some(price), _, _) => NegotiateRequest::Counter { price: *price },
                (None, true, _) => NegotiateRequest::Accept,
                (None, false, true) => NegotiateRequest::WalkAway,
                _ => anyhow::bail!("say what to do: --counter PRICE, --accept or --walk-away"),
            };
            let outcome: Vec<String> = client(dir)?
                .post(&format!("/v1/market/awards/{award}/negotiate"), &req)
                .await?;
            if json {
                print_json(&outcome)
            } else {
                for line in outcome {
                    println!("{line}");
                }
                Ok(())
            }
        }
    }
}

async fn watch(dir: &Path, once: bool, json: bool) -> anyhow::Result<()> {
    let c = client(dir)?;
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/v1/market/events?after={a}"),
            None => "/v1/market/events".to_string(),
        };
        let events: Vec<MarketEventRecord> = c.get(&path).await?;
        for e in &events {
            if json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                // A rejection's detail may quote a peer's message (a region it named).
                println!(
                    "{} {:<18} {}",
                    e.at,
                    e.kind,
                    agora_wire::printable(&e.detail)
                );
            }
            after = Some(e.seq);
        }
        if once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
