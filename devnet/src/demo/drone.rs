//! `agora devnet demo --scenario drone`: a drone streams sensor data to the edges along its
//! route. Its operator pre-contracts one edge per route segment (hosted contracts with a
//! scheduled activation, each auction restricted to edges near the segment's waypoint); the
//! drone's radio reaches only the edge of the current segment; each edge runs the operator's
//! service for its slot, takes the drone over from the previous edge's last checkpoint, and is
//! paid for the uptime it reports.

use std::collections::BTreeMap;
use std::time::Duration;

use agora_contracts::{ContractRecord, ContractStatus};
use agora_market::{AuctionKind, AuctionSpec, Location, Near};
use anyhow::{Context, bail};

use super::report::{coverage, print_coverage};
use super::sensors::{Region, Sensors};
use super::story::{Clock, api, contract, list_contracts, radio_addrs, short, wait_for};
use super::{DemoArgs, publish};
use crate::files::{CONTRACT_NODES, DEVNET_CENTER, DevnetManifest};
use crate::process::{Loopback, down, up_with};
use agora_api::market::CreatedReply;
use agora_radio::RadioStatus;
use agora_wire::now_ms;

/// The drone's radio id.
const DRONE: u32 = 201;
/// Time over each edge.
const SEGMENT_MS: u64 = 4_000;

/// Where devnet node `i` stands (see `devnet_node_config`).
fn location(i: usize) -> Location {
    let offset = i as f64 * 0.002;
    Location {
        lat: DEVNET_CENTER.0 + offset,
        lon: DEVNET_CENTER.1 - offset,
    }
}

pub(super) async fn run(args: &DemoArgs, module: &[u8], json: bool) -> anyhow::Result<()> {
    if args.nodes < CONTRACT_NODES {
        bail!(
            "--nodes must be at least {CONTRACT_NODES} for the drone scenario: each contract \
             needs 4 arbitrators that are neither the operator nor the edge"
        );
    }
    if DevnetManifest::load(&args.dir).is_ok() {
        down(&args.dir, true).await.ok();
    }
    let clock = Clock::new(json);
    if !json {
        println!(
            "Agora devnet demo (drone): {} nodes in {}",
            args.nodes,
            args.dir.display()
        );
    }
    let m = up_with(&args.dir, args.nodes, 0, Duration::from_secs(60), &Loopback).await?;
    let operator = m.nodes.len() - 1;
    let route: Vec<usize> = (0..operator).take(3).collect();
    let op = m.nodes[operator].clone();
    let (image, needs) = publish(
        &api(&op)?,
        &m.dir.join("service"),
        module,
        &[DRONE],
        "immediate",
    )
    .await?;
    clock.line(
        "1 estimation",
        now_ms(),
        format!(
            "drone service {} needs {} mCPU",
            short(&image),
            needs.cpu_millis
        ),
    );
    let depart = now_ms() + 8_000;
    let mut ids = Vec::new();
    for (seg, &edge) in route.iter().enumerate() {
        let start = depart + seg as u64 * SEGMENT_MS;
        let known: Vec<String> = list_contracts(&op)
            .await
            .into_iter()
            .map(|c| c.id)
            .collect();
        let spec = AuctionSpec {
            region: "default".into(),
            resources: needs.clone(),
            duration_ms: SEGMENT_MS,
            max_price: 1_000,
            window_ms: 1_000,
            kind: AuctionKind::Hosted,
            near: Some(Near {
                center: location(edge),
                max_km: 0.05,
            }),
            award_grace_ms: 30_000,
            service: Some(image.clone()),
            start_at: Some(start),
        };
        let created: CreatedReply = api(&op)?.post("/v1/market/auctions", &spec).await?;
        clock.line(
            "2 auction",
            now_ms(),
            format!(
                "segment {seg}: hosted slot near {} from t+{:.1}s ({})",
                m.nodes[edge].name,
                (start - clock.start()) as f64 / 1000.0,
                short(&created.id)
            ),
        );
        let row = wait_for("the segment's contract", 30, async || {
            list_contracts(&op)
                .await
                .into_iter()
                .find(|c| c.customer == op.node_id && !known.contains(&c.id))
        })
        .await?;
        ids.push(row.id);
    }
    let mut armed: Vec<ContractRecord> = Vec::new();
    for id in &ids {
        let rec = wait_for("arming", 30, async || {
            contract(&op, id)
                .await
                .filter(|r| r.status == ContractStatus::Armed)
        })
        .await?;
        let provider = m
            .nodes
            .iter()
            .find(|n| n.node_id == rec.contract.provider.to_string());
        clock.line(
            "3-6 contracted",
            rec.armed_at.unwrap_or(0),
            format!(
                "{} signed, escrowed, migrated and armed by {}",
                short(id),
                provider.map_or("?", |n| n.name.as_str())
            ),
        );
        armed.push(rec);
    }
    let addrs = radio_addrs(&m);
    let region = Region::default();
    // The drone keeps its timetable: each segment starts when its slot does, even if the
    // contracting above ran past the departure (a late start must not shift every later
    // segment off its slot).
    let until = |at: u64| async move {
        let now = now_ms();
        if at > now {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
    };
    let mut sensors = None;
    for (seg, &edge) in route.iter().enumerate() {
        until(depart + seg as u64 * SEGMENT_MS).await;
        region.set(addrs.get(edge).copied().into_iter().collect());
        if sensors.is_none() {
            sensors = Some(
                Sensors::start(
                    vec![DRONE],
                    Duration::from_millis(100),
                    region.clone(),
                    crate::sensor_keys::load(&m.dir),
                )
                .await?,
            );
        }
        clock.line(
            "7 flight",
            now_ms(),
            format!("drone over {} (segment {seg})", m.nodes[edge].name),
        );
    }
    until(depart + route.len() as u64 * SEGMENT_MS).await;
    region.set(Vec::new());
    let sent = match sensors {
        Some(s) => s.stop().await,
        None => BTreeMap::new(),
    };
    clock.line("  landed", now_ms(), "drone out of range of every edge");
    let mut paid = BTreeMap::new();
    for id in &ids {
        let done = wait_for("settlement", 30, async || {
            contract(&op, id).await.filter(|r| r.status.is_final())
        })
        .await?;
        let name = m
            .nodes
            .iter()
            .find(|n| n.node_id == done.contract.provider.to_string())
            .map_or_else(|| "?".to_string(), |n| n.name.clone());
        clock.line(
            "  settled",
            done.closed_at.unwrap_or(0),
            format!(
                "{}: {:?}, {name} paid {} of {} for {} ms of verified uptime",
                short(id),
                done.status,
                done.paid_to_provider,
                done.contract.payment,
                done.uptime_ms
            ),
        );
        paid.insert(name, (done.status, done.paid_to_provider));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Each edge's own checkpoints, as it signed and gossiped them: the operator is out of the
    // drone's range, hears none of its frames, and so counts no checkpoint that claims them
    // (threat R1: coverage never runs past what an edge heard).
    let mut checkpoints = Vec::new();
    for &edge in &route {
        let st: RadioStatus = api(&m.nodes[edge])?
            .get("/v1/radio")
            .await
            .with_context(|| format!("{}'s radio", m.nodes[edge].name))?;
        checkpoints.extend(st.checkpoints.into_iter().filter(|c| c.mine));
    }
    let names: BTreeMap<String, String> = m
        .nodes
        .iter()
        .map(|n| (n.node_id.clone(), n.name.clone()))
        .collect();
    let cov = coverage(&sent, &checkpoints, |e| {
        names.get(e).cloned().unwrap_or_else(|| short(e))
    });
    let ok = cov.missing == 0
        && cov.duplicated == 0
        && paid
            .values()
            .all(|(s, p)| *s == ContractStatus::Settled && *p > 0);
    if json {
        let out = serde_json::json!({ "coverage": cov, "paid": paid.iter().map(|(k, (s, p))| (k.clone(), format!("{s:?} {p}"))).collect::<BTreeMap<_, _>>(), "ok": ok });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_coverage(&cov, 1);
    }
    if !args.keep {
        down(&args.dir, false).await?;
    }
    if !ok {
        bail!("the drone story did not end as expected (see above)");
    }
    if !json {
        println!(
            "drone demo finished: every reading processed once, by the edge the drone was over; every edge paid"
        );
    }
    Ok(())
}
