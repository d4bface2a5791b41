//! The demo's script, step by step against the nodes' control APIs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agora_contracts::{ContractRecord, ContractStatus};
use anyhow::{Context, bail};
use serde::Deserialize;

use super::report::{Coverage, FailoverSplit, coverage, percentile};
use super::sensors::{Region, Sensors};
use super::{DemoArgs, publish};
use crate::api::client::ApiClient;
use crate::api::edge::{OwnReply, OwnRequest};
use crate::api::ledger::BalanceReply;
use crate::api::market::CreatedReply;
use crate::cli::devnet::{down, spawn_node, up};
use crate::devnet_files::{DevnetManifest, DevnetNode};
use crate::now_ms;
use crate::orchestrator::TimelineEntry;
use crate::radio::RadioStatus;

/// A's sensors.
const DEVICES: [u32; 3] = [101, 102, 103];
/// Sensor uplink interval.
const UPLINK: Duration = Duration::from_millis(100);

fn api(n: &DevnetNode) -> anyhow::Result<ApiClient> {
    Ok(ApiClient::for_data_dir(&n.data_dir)?)
}

/// Polls `f` every 50 ms until it yields a value, for at most `secs`.
async fn wait_for<T>(
    what: &str,
    secs: u64,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {secs} s waiting for {what}; see the node.log files");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Deserialize)]
struct ContractRow {
    id: String,
    customer: String,
}

async fn contract(n: &DevnetNode, id: &str) -> Option<ContractRecord> {
    let c = api(n).ok()?;
    c.get::<ContractRecord>(&format!("/v1/ledger/contracts/{id}"))
        .await
        .ok()
}

async fn balance(n: &DevnetNode, who: &str) -> u64 {
    match api(n) {
        Ok(c) => c
            .get::<BalanceReply>(&format!("/v1/ledger/accounts/{who}"))
            .await
            .map(|b| b.balance)
            .unwrap_or(0),
        Err(_) => 0,
    }
}

async fn timeline(n: &DevnetNode) -> Vec<TimelineEntry> {
    match api(n) {
        Ok(c) => c.get("/v1/timeline").await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

struct Clock(u64);

impl Clock {
    fn line(&self, phase: &str, at: u64, text: impl std::fmt::Display) {
        let t = at.saturating_sub(self.0);
        println!("  t+{:>6.3}s  {phase:<22} {text}", t as f64 / 1000.0);
    }
}

/// Everything measured in one failover.
struct RunResult {
    split: FailoverSplit,
    paid: u64,
    status: ContractStatus,
}

pub(super) async fn run(args: &DemoArgs, json: bool) -> anyhow::Result<()> {
    if args.nodes < 3 {
        bail!("--nodes must be at least 3 (arbitrators, a provider and the customer)");
    }
    if DevnetManifest::load(&args.dir).is_ok() {
        down(&args.dir, true).await.ok();
    }
    let module = super::module_bytes(args.module.as_deref())?;
    let clock = Clock(now_ms());
    println!("Agora devnet demo: {} nodes in {}", args.nodes, args.dir.display());
    let mut m = up(&args.dir, args.nodes, 0, Duration::from_secs(60)).await?;
    clock.line("devnet", now_ms(), format!("{} nodes connected", m.nodes.len()));
    let a_idx = m.nodes.len() - 1;
    let region = Region::default();
    region.set(radio_addrs(&m));
    let sensors = Sensors::start(DEVICES.to_vec(), UPLINK, region.clone()).await?;

    let a = m.nodes[a_idx].clone();
    let (image, needs) = publish(&api(&a)?, &module, &DEVICES).await?;
    clock.line("1 estimation", now_ms(), format!("A's service {image} needs {needs}"));
    let own: OwnReply = api(&a)?
        .post("/v1/own", &OwnRequest { image: image.clone() })
        .await
        .context("starting A's own service")?;
    clock.line("own service", now_ms(), format!("A runs it on sensors {:?}", own.devices));

    let mut results = Vec::new();
    for run in 0..args.runs {
        if args.runs > 1 {
            println!("\n-- failover {}/{} --", run + 1, args.runs);
        }
        let r = failover(args, &mut m, a_idx, &image, &clock, &region).await?;
        results.push(r);
    }

    let sent = sensors.stop().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let cov = account(&m, a_idx, &sent).await;
    print_coverage(&cov);
    let splits: Vec<FailoverSplit> = results.iter().map(|r| r.split).collect();
    print_splits(&splits);
    let ok = results
        .iter()
        .all(|r| r.status == ContractStatus::Settled && r.paid > 0)
        && cov.missing == 0
        && cov.duplicated == 0;
    if json {
        let out = serde_json::json!({
            "failovers": splits,
            "coverage": cov,
            "ok": ok,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    if !args.keep {
        down(&args.dir, false).await.ok();
        println!("devnet stopped (data kept in {})", args.dir.display());
    }
    if !ok {
        bail!("the story did not end as expected (see above)");
    }
    println!("demo finished: every reading processed exactly once, provider paid");
    Ok(())
}

fn radio_addrs(m: &DevnetManifest) -> Vec<SocketAddr> {
    m.nodes
        .iter()
        .filter_map(|n| std::fs::read_to_string(n.data_dir.join("radio.addr")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// One standby contract, one kill, one handover, one return and settlement.
async fn failover(
    args: &DemoArgs,
    m: &mut DevnetManifest,
    a_idx: usize,
    image: &str,
    clock: &Clock,
    _region: &Region,
) -> anyhow::Result<RunResult> {
    let a = m.nodes[a_idx].clone();
    let observer = m.nodes[0].clone();
    let spec = serde_json::json!({
        "region": "default",
        "resources": { "cpu_millis": 250, "memory_bytes": 64u64 << 20, "storage_bytes": 0,
                       "bandwidth_bps": 0, "interfaces": {} },
        "duration_ms": 120_000,
        "max_price": 1_000,
        "window_ms": 1_500,
        "kind": "standby",
        "near": null,
        "award_grace_ms": 30_000,
        "service": image,
    });
    let created: CreatedReply = api(&a)?.post("/v1/market/auctions", &spec).await?;
    clock.line("2 auction", now_ms(), format!("standby auction {}", short(&created.id)));
    let known: Vec<String> = list_contracts(&a)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    let row = wait_for("the contract", 30, async || {
        list_contracts(&a)
            .await
            .into_iter()
            .find(|c| c.customer == a.node_id && !known.contains(&c.id))
    })
    .await?;
    let id = row.id.clone();
    let rec = wait_for("arming", 30, async || {
        contract(&a, &id).await.filter(|r| r.status == ContractStatus::Armed)
    })
    .await?;
    let provider = rec.contract.provider.to_string();
    let b_idx = m
        .nodes
        .iter()
        .position(|n| n.node_id == provider)
        .context("provider is not a devnet node")?;
    let b = m.nodes[b_idx].clone();
    clock.line(
        "3 negotiation",
        rec.contract.created_at,
        format!("{} wins at {} tokens", b.name, rec.contract.payment),
    );
    clock.line(
        "4 signature",
        rec.registered_at,
        format!("contract {} signed by A and {}", short(&id), b.name),
    );
    clock.line(
        "5 validation",
        rec.registered_at,
        format!(
            "escrow: payment {} + stakes {}/{}",
            rec.escrow.payment, rec.escrow.customer_stake, rec.escrow.provider_stake
        ),
    );
    let staged = timeline(&b)
        .await
        .into_iter()
        .find(|e| e.phase == "staged" && e.contract.as_deref() == Some(id.as_str()));
    if let Some(e) = staged {
        clock.line("6 migration", e.at, format!("{}: {}", b.name, e.detail));
    }
    clock.line("  armed", rec.armed_at.unwrap_or(0), "standby, buffering A's sensors");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = balance(&observer, &provider).await;

    let pid = m.nodes[a_idx].pid.context("A is not running")?;
    let killed = now_ms();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("kill")?;
    m.nodes[a_idx].pid = None;
    clock.line("7 failure", killed, format!("A ({}) killed with SIGKILL", a.name));

    let active = wait_for("activation", 30, async || {
        contract(&observer, &id)
            .await
            .filter(|r| r.activated_at.is_some())
    })
    .await?;
    let first = wait_for("B's first reading", 10, async || {
        let st: RadioStatus = api(&b).ok()?.get("/v1/radio").await.ok()?;
        st.devices
            .iter()
            .filter(|d| DEVICES.contains(&d.device) && d.service.is_some())
            .filter_map(|d| d.first_processed_at)
            .filter(|t| *t >= killed)
            .min()
    })
    .await?;
    let mut detected = u64::MAX;
    for n in &m.nodes {
        for e in timeline(n).await {
            if e.phase == "attested-down" && e.at >= killed {
                detected = detected.min(e.at);
            }
        }
    }
    let trigger = active.trigger_at.unwrap_or(killed);
    let activated = active.activated_at.unwrap_or(trigger);
    let detected = if detected == u64::MAX { trigger } else { detected };
    clock.line("  detected", detected, "arbitrators' liveness checks: A unreachable");
    clock.line("  attested", trigger, "handover attested by a 2f+1 quorum on the ledger");
    clock.line("  activated", activated, format!("{} started A's service", b.name));
    clock.line("  first reading", first, format!("{} processed A's sensors", b.name));
    let split = FailoverSplit {
        detection_ms: detected.saturating_sub(killed),
        attestation_ms: trigger.saturating_sub(detected),
        activation_ms: activated.saturating_sub(trigger),
        end_to_end_ms: first.saturating_sub(killed),
    };

    tokio::time::sleep(Duration::from_secs(args.outage)).await;
    let exe = std::env::current_exe().context("cannot find the agora binary")?;
    let _ = std::fs::remove_file(a.data_dir.join(crate::daemon::API_ADDR_FILE));
    let pid = spawn_node(&exe, &a.data_dir)?;
    m.nodes[a_idx].pid = Some(pid);
    m.save()?;
    clock.line("  A back", now_ms(), "A restarted from its data dir");
    let done = wait_for("settlement", 30, async || {
        contract(&observer, &id).await.filter(|r| r.status.is_final())
    })
    .await?;
    let after = balance(&observer, &provider).await;
    clock.line(
        "  settled",
        done.closed_at.unwrap_or(0),
        format!(
            "{:?}: {} paid {} tokens, balance {before} → {after}",
            done.status, b.name, done.paid_to_provider
        ),
    );
    wait_for("A to take its sensors back", 15, async || {
        let st: RadioStatus = api(&a).ok()?.get("/v1/radio").await.ok()?;
        st.devices
            .iter()
            .filter(|d| DEVICES.contains(&d.device))
            .all(|d| d.service.is_some())
            .then_some(())
    })
    .await?;
    clock.line("  A resumed", now_ms(), "A processes its sensors again");
    Ok(RunResult {
        split,
        paid: done.paid_to_provider,
        status: done.status,
    })
}

async fn list_contracts(n: &DevnetNode) -> Vec<ContractRow> {
    match api(n) {
        Ok(c) => c.get("/v1/ledger/contracts").await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

/// Collects every edge's checkpoints as an uninvolved node heard them.
async fn account(m: &DevnetManifest, a_idx: usize, sent: &BTreeMap<u32, u32>) -> Coverage {
    let observer = &m.nodes[0];
    let names: BTreeMap<String, String> = m
        .nodes
        .iter()
        .map(|n| (n.node_id.clone(), n.name.clone()))
        .collect();
    let st: RadioStatus = match api(observer) {
        Ok(c) => c.get("/v1/radio").await.unwrap_or_default(),
        Err(_) => RadioStatus::default(),
    };
    let a_id = &m.nodes[a_idx].node_id;
    coverage(sent, &st.checkpoints, |edge| {
        let name = names.get(edge).cloned().unwrap_or_else(|| short(edge));
        if edge == a_id { format!("{name} (A)") } else { name }
    })
}

fn print_coverage(c: &Coverage) {
    println!("\nreadings: {} sent by {} sensors", c.sent, DEVICES.len());
    for (edge, n) in &c.by_edge {
        println!("  processed by {edge:<12} {n}");
    }
    println!(
        "  missing {}  duplicated {}  (signed data-integrity proofs: {})",
        c.missing, c.duplicated, c.proofs
    );
}

fn print_splits(s: &[FailoverSplit]) {
    let col = |f: fn(&FailoverSplit) -> u64| -> Vec<u64> { s.iter().map(f).collect() };
    let rows = [
        ("detection", col(|x| x.detection_ms)),
        ("attestation", col(|x| x.attestation_ms)),
        ("activation", col(|x| x.activation_ms)),
        ("end to end", col(|x| x.end_to_end_ms)),
    ];
    println!("\nfailover (ms from the kill), {} run(s):", s.len());
    println!("  {:<12} {:>8} {:>8}", "phase", "p50", "p99");
    for (name, v) in rows {
        println!(
            "  {name:<12} {:>8} {:>8}",
            percentile(&v, 50),
            percentile(&v, 99)
        );
    }
}
