//! `agora devnet demo`: the flagship story on real processes, all seven phases.
//!
//! A devnet starts on the embedded defaults; edge A (the last node) publishes its LoRa gateway
//! service and runs it on its own sensors; A opens a standby auction for it; the auction,
//! negotiation, dual signature and escrow happen as on any devnet; the winner B migrates the
//! image and arms the contract. Then A's process is killed for real (SIGKILL): the arbitrators
//! attest the failure, B activates A's service and takes A's sensors over from A's last
//! checkpoint. A is restarted, settles, B is paid, A takes its sensors back. The demo prints a
//! timeline, the failover split, who processed which readings, and the balances.
//!
//! With `--devices` (issue #16) A's sensors are devices with endpoints: A flashes the unlocked
//! ones before its first contract, and the report lists what each says about itself and whom
//! B named its manager during each outage.

mod drone;
pub mod report;
mod sensors;
pub mod story;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

pub use report::{Coverage, DeviceRow, FailoverSplit, OutageView, percentile};
pub use sensors::{Region, Sensors, frame, uplink};
pub use story::{Armed, Story};

use crate::process::Loopback;

/// Options of `devnet demo`.
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// Number of nodes (at least 7: every node is an arbitrator, and a contract needs four that
    /// are neither A nor B).
    #[arg(long, default_value_t = crate::files::CONTRACT_NODES)]
    pub nodes: usize,
    /// Devnet directory (recreated).
    #[arg(long, default_value = ".agora-demo")]
    pub dir: PathBuf,
    /// The Wasm module of A's service (default: build runtime/examples/lora-gateway).
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Failovers to run (each with a fresh contract); more than one prints p50/p99.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Seconds B serves A's sensors before A comes back.
    #[arg(long, default_value_t = 3)]
    pub outage: u64,
    /// Leave the devnet running afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Which story.
    #[arg(long, value_enum, default_value = "standby")]
    pub scenario: Scenario,
    /// WAN emulation on every link (the standby story only).
    #[command(flatten)]
    pub wan: crate::process::WanArgs,
    /// A's sensors as devices with endpoints (the standby story only): A flashes the unlocked
    /// ones before its first contract; the report lists them and their manager during each
    /// outage (B).
    #[arg(long)]
    pub devices: bool,
    /// With --devices: how many of A's 3 devices their owner locked (never flashed).
    #[arg(long, default_value_t = 1, requires = "devices")]
    pub locked: u32,
}

/// Demo stories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Edge A insures its service with a standby contract; A fails; B takes over.
    Standby,
    /// A drone streams to the edges along its route, each pre-contracted for its segment.
    Drone,
}

/// The module bytes: `--module`, else the lora-gateway example built for wasm32-wasip1.
pub fn module_bytes(path: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    if let Some(p) = path {
        return std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runtime/examples/lora-gateway/Cargo.toml");
    if !src.exists() {
        anyhow::bail!(
            "no --module given and the lora-gateway sources are not at {}; pass --module FILE.wasm",
            src.display()
        );
    }
    let target = std::env::temp_dir().join("agora-lora-gateway-target");
    eprintln!("building the lora-gateway service for wasm32-wasip1 ...");
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(&src)
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .output()
        .context("running cargo (needed to build the demo service; or pass --module)")?;
    if !out.status.success() {
        anyhow::bail!(
            "building lora-gateway failed (is the target installed? `rustup target add wasm32-wasip1`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wasm = target.join("wasm32-wasip1/release/lora_gateway.wasm");
    std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))
}

/// Publishes `module` on A with a manifest taking `devices`; returns the image CID and the
/// resources the manifest asks for (phase 1, estimation).
async fn publish(
    client: &agora_api::client::ApiClient,
    dir: &std::path::Path,
    module: &[u8],
    devices: &[u32],
    activation: &str,
) -> anyhow::Result<(String, agora_market::Resources)> {
    publish_with(client, dir, module, devices, activation, "").await
}

/// [`publish`] with `extra` top-level manifest lines (e.g. `depends_on = ["x"]`).
async fn publish_with(
    client: &agora_api::client::ApiClient,
    dir: &std::path::Path,
    module: &[u8],
    devices: &[u32],
    activation: &str,
    extra: &str,
) -> anyhow::Result<(String, agora_market::Resources)> {
    use anyhow::Context;
    let manifest = format!(
        r#"name = "lora-gateway"
version = "0.1.0"
kind = "wasm"
tick_ms = 50
activation = "{activation}"
devices = {devices:?}
{extra}

[resources]
cpu_millis = 250
memory_mb = 64
storage_mb = 1

[limits]
memory_bytes = 16777216
fuel_per_second = 200000000
instances = 1
max_output_bytes = 1048576
"#
    );
    let parsed = agora_hosting::ServiceManifest::from_toml(&manifest)
        .map_err(|e| anyhow::anyhow!("demo manifest: {e}"))?;
    std::fs::create_dir_all(dir)?;
    let module_path = dir.join("lora-gateway.wasm");
    let manifest_path = dir.join("lora-gateway.toml");
    std::fs::write(&module_path, module).context("writing the demo module")?;
    std::fs::write(&manifest_path, &manifest).context("writing the demo manifest")?;
    let info: agora_hosting::ImageInfo = client
        .post(
            "/v1/services/publish",
            &agora_api::services::PublishRequest {
                module: module_path.canonicalize()?,
                manifest: Some(manifest_path.canonicalize()?),
            },
        )
        .await
        .context("publishing A's service")?;
    Ok((info.image, parsed.resources()))
}

/// Refuses `--devices` where it cannot apply, before anything is built or started.
fn check_devices(args: &DemoArgs) -> anyhow::Result<()> {
    if !args.devices {
        return Ok(());
    }
    if args.scenario != Scenario::Standby {
        anyhow::bail!("--devices applies to the standby story only; drop --scenario");
    }
    let count = u32::try_from(story::DEVICES.len()).unwrap_or(u32::MAX);
    if args.locked > count {
        anyhow::bail!(
            "--locked {} is more than A's {count} devices; pass --locked 0 to {count}",
            args.locked
        );
    }
    Ok(())
}

/// A's devices for `--devices`: a reading every 100 ms as the plain sensors send, the
/// default link rate and reboot time.
fn device_options(locked: u32) -> story::DeviceOptions {
    story::DeviceOptions {
        agent: agora_devices::agent::AgentConfig {
            reading_ms: 100,
            ..Default::default()
        },
        locked,
    }
}

/// Runs the demo.
pub async fn run(args: &DemoArgs, json: bool) -> anyhow::Result<()> {
    check_devices(args)?;
    let module = module_bytes(args.module.as_deref())?;
    if args.scenario == Scenario::Drone {
        return drone::run(args, &module, json).await;
    }
    if !json {
        println!(
            "Agora devnet demo: {} nodes in {}",
            args.nodes,
            args.dir.display()
        );
    }
    let opts = crate::process::UpOptions {
        wan: args.wan.profile(),
        ..Default::default()
    };
    let mut story = if args.devices {
        let devices = device_options(args.locked);
        let (dir, nodes, launcher) = (&args.dir, args.nodes, Arc::new(Loopback));
        let s =
            Story::start_devices_with(dir, nodes, &module, launcher, json, opts, devices).await?;
        s.flash_devices(60).await?;
        s
    } else {
        Story::start_with(
            &args.dir,
            args.nodes,
            &module,
            Arc::new(Loopback),
            json,
            opts,
        )
        .await?
    };
    let mut outages = Vec::new();
    let mut splits = Vec::new();
    let mut settled_ok = true;
    let mut last_b = 0;
    let mut earlier_bs = Vec::new();
    for run in 0..args.runs {
        if args.runs > 1 && !json {
            println!("\n-- failover {}/{} --", run + 1, args.runs);
        }
        let armed = story.standby().await?;
        if run > 0 && !earlier_bs.contains(&last_b) {
            earlier_bs.push(last_b);
        }
        last_b = armed.b;
        let provider = armed.rec.contract.provider.to_string();
        let observer = story.observer_index(armed.b);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let before = story
            .account(observer, &provider)
            .await
            .map_or(0, |b| b.balance);
        let killed = story.kill(story.a)?;
        story
            .clock
            .line("7 failure", killed, "A killed with SIGKILL");
        splits.push(story.failover(&armed, killed).await?);
        if args.devices {
            outages.push(OutageView {
                provider: story.m.nodes[armed.b].name.clone(),
                managers: story.managers_seen_by(armed.b, 10).await,
            });
        }
        tokio::time::sleep(Duration::from_secs(args.outage)).await;
        story.restart(story.a).await?;
        story.clock.line(
            "  A back",
            agora_wire::now_ms(),
            "A restarted from its data dir",
        );
        let done = story
            .wait_contract(observer, &armed.id, "settlement", 30, |r| {
                r.status.is_final()
            })
            .await?;
        let after = story
            .account(observer, &provider)
            .await
            .map_or(0, |b| b.balance);
        story.clock.line(
            "  settled",
            done.closed_at.unwrap_or(0),
            format!(
                "{:?}: provider paid {} of {} tokens (pro rata), balance {before} -> {after}",
                done.status, done.paid_to_provider, done.contract.payment
            ),
        );
        settled_ok &=
            done.status == agora_contracts::ContractStatus::Settled && done.paid_to_provider > 0;
        story.a_resumed().await?;
    }
    // The hardest observer is an earlier provider: it must count the later providers'
    // checkpoints for A's sensors too, not only its own.
    let observer = earlier_bs
        .iter()
        .copied()
        .find(|b| *b != last_b && *b != story.a)
        .unwrap_or_else(|| story.observer_index(last_b));
    // Before the coverage: it stops the devices, and with them what they say about themselves.
    let rows = report::device_rows(&story::DEVICES, &story.device_metas(), &outages);
    let cov = story.coverage_seen_by(observer, |_| true).await;
    if !json {
        println!(
            "\nreadings as {} accounts them{}",
            story.m.nodes[observer].name,
            if earlier_bs.contains(&observer) {
                " (an earlier provider)"
            } else {
                ""
            }
        );
    }
    let devices_ok = !args.devices || rows.iter().all(DeviceRow::managed_by_providers);
    let ok = settled_ok && cov.missing == 0 && cov.duplicated == 0 && devices_ok;
    if json {
        let mut out = serde_json::json!({
            "failovers": splits,
            "coverage": cov,
            "observer": story.m.nodes[observer].name,
            "observer_was_provider": earlier_bs.contains(&observer),
            "ok": ok,
        });
        if args.devices
            && let Some(o) = out.as_object_mut()
        {
            o.insert("devices".into(), serde_json::to_value(&rows)?);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        report::print_coverage(&cov, story::DEVICES.len());
        report::print_splits(&splits);
        if args.devices {
            report::print_devices(&rows);
        }
    }
    let dir = story.m.dir.clone();
    if !args.keep {
        story.down(false).await?;
        if !json {
            println!("devnet stopped (data kept in {})", dir.display());
        }
    }
    if !ok {
        anyhow::bail!("the story did not end as expected (see above)");
    }
    if !json {
        let devices = if args.devices {
            "; B managed A's devices during each outage"
        } else {
            ""
        };
        println!("demo finished: every reading processed exactly once, provider paid{devices}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    fn parse(args: &[&str]) -> Result<DemoArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied())).map(|c| c.demo)
    }

    #[test]
    fn the_device_flags_are_refused_where_they_cannot_apply_before_anything_starts() {
        let plain = parse(&[]).unwrap();
        assert!(!plain.devices, "the default demo keeps the plain sensors");
        assert!(check_devices(&plain).is_ok());
        assert!(
            parse(&["--locked", "2"]).is_err(),
            "--locked needs --devices"
        );
        let all_locked = parse(&["--devices", "--locked", "3"]).unwrap();
        assert!(check_devices(&all_locked).is_ok());
        let too_many = parse(&["--devices", "--locked", "4"]).unwrap();
        let e = check_devices(&too_many).unwrap_err().to_string();
        assert!(e.contains("pass --locked 0 to 3"), "{e}");
        let drone = parse(&["--devices", "--scenario", "drone"]).unwrap();
        assert!(
            check_devices(&drone).is_err(),
            "the drone story has no devices"
        );
    }
}
