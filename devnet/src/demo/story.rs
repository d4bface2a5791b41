//! The handover story as reusable steps against the nodes' control APIs; the demo runs them in
//! order and the end-to-end tests combine them into failure cases.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_contracts::{ContractRecord, ContractStatus};
use anyhow::{Context, bail};
use serde::Deserialize;

use super::report::{Coverage, FailoverSplit, coverage};
use super::sensors::{Region, Sensors};
use super::{publish, publish_with};
use crate::devices::SimDevices;
use crate::files::{CONTRACT_NODES, DevnetManifest, DevnetNode};
use crate::process::{Launcher, UpOptions, down, up_with_options};
use agora_api::client::ApiClient;
use agora_api::edge::{OwnReply, OwnRequest};
use agora_api::ledger::BalanceReply;
use agora_api::market::CreatedReply;
use agora_devices::agent::AgentConfig;
use agora_orchestrator::TimelineEntry;
use agora_radio::RadioStatus;
use agora_wire::now_ms;

mod device_steps;

pub use device_steps::DEMO_FIRMWARE_VERSION;

/// A's sensors.
pub const DEVICES: [u32; 3] = [101, 102, 103];
/// Sensor uplink interval.
const UPLINK: Duration = Duration::from_millis(100);

pub(super) fn api(n: &DevnetNode) -> anyhow::Result<ApiClient> {
    Ok(ApiClient::for_data_dir(&n.data_dir)?)
}

/// Polls `f` every 50 ms until it yields a value, for at most `secs`.
pub async fn wait_for<T>(
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
pub(super) struct ContractRow {
    pub(super) id: String,
    pub(super) customer: String,
}

/// Prints phases relative to the story's start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: u64,
    quiet: bool,
}

impl Clock {
    /// A clock starting now.
    pub fn new(quiet: bool) -> Self {
        Clock {
            start: now_ms(),
            quiet,
        }
    }

    /// When the story started (ms).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Prints one timeline line.
    pub fn line(&self, phase: &str, at: u64, text: impl std::fmt::Display) {
        if !self.quiet {
            let t = at.saturating_sub(self.start) as f64 / 1000.0;
            println!("  t+{t:>7.3}s  {phase:<16} {text}");
        }
    }
}

/// A's sensors: plain uplink senders, or devices with endpoints that firmware jobs can flash
/// (issue #16, [`Story::start_devices`]).
enum Radios {
    Plain(Sensors),
    Endpoints(SimDevices),
}

impl Radios {
    /// Stops them; returns the last sequence number each device sent.
    async fn stop(self) -> BTreeMap<u32, u32> {
        match self {
            Radios::Plain(s) => s.stop().await,
            Radios::Endpoints(d) => d.stop_counting().await,
        }
    }
}

/// A's sensors as devices with endpoints ([`Story::start_devices`]).
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// The devices' timings (reboot, link rate; `reading_ms` is the uplink interval).
    pub agent: AgentConfig,
    /// The last `locked` of A's sensors are locked by their owner.
    pub locked: u32,
}

/// A standby contract, armed (or a hosted one, active: [`Story::hosted`]).
#[derive(Clone, Debug)]
pub struct Armed {
    /// Contract id (hex).
    pub id: String,
    /// Index of the provider node.
    pub b: usize,
    /// The record when it was armed (active).
    pub rec: ContractRecord,
}

/// A running story: the devnet, A's service and sensors.
pub struct Story {
    /// The devnet.
    pub m: DevnetManifest,
    /// Index of edge A (the customer).
    pub a: usize,
    /// A's service image.
    pub image: String,
    /// What A's service needs (from its manifest).
    pub needs: agora_market::Resources,
    /// Prints the timeline.
    pub clock: Clock,
    sensors: Option<Radios>,
    launcher: Arc<dyn Launcher>,
}

impl Story {
    /// Starts a devnet of `nodes` in `dir`, publishes `module` on A (the last node), runs it on
    /// A's sensors and starts the sensors.
    pub async fn start(
        dir: &std::path::Path,
        nodes: usize,
        module: &[u8],
        launcher: Arc<dyn Launcher>,
        quiet: bool,
    ) -> anyhow::Result<Story> {
        Self::start_with(dir, nodes, module, launcher, quiet, UpOptions::default()).await
    }

    /// [`Story::start`] with the devnet's options (WAN emulation, metrics).
    pub async fn start_with(
        dir: &std::path::Path,
        nodes: usize,
        module: &[u8],
        launcher: Arc<dyn Launcher>,
        quiet: bool,
        opts: UpOptions,
    ) -> anyhow::Result<Story> {
        Self::start_inner(dir, nodes, module, launcher, quiet, opts, None).await
    }

    /// [`Story::start`] with A's sensors as devices with endpoints (keyed like the plain
    /// ones), which `agora device flash` can flash.
    pub async fn start_devices(
        dir: &std::path::Path,
        nodes: usize,
        module: &[u8],
        launcher: Arc<dyn Launcher>,
        quiet: bool,
        devices: DeviceOptions,
    ) -> anyhow::Result<Story> {
        let opts = UpOptions::default();
        Self::start_devices_with(dir, nodes, module, launcher, quiet, opts, devices).await
    }

    /// [`Story::start_devices`] with the devnet's options (`devnet demo --devices` keeps its
    /// WAN emulation).
    pub async fn start_devices_with(
        dir: &std::path::Path,
        nodes: usize,
        module: &[u8],
        launcher: Arc<dyn Launcher>,
        quiet: bool,
        opts: UpOptions,
        devices: DeviceOptions,
    ) -> anyhow::Result<Story> {
        Self::start_inner(dir, nodes, module, launcher, quiet, opts, Some(devices)).await
    }

    async fn start_inner(
        dir: &std::path::Path,
        nodes: usize,
        module: &[u8],
        launcher: Arc<dyn Launcher>,
        quiet: bool,
        opts: UpOptions,
        devices: Option<DeviceOptions>,
    ) -> anyhow::Result<Story> {
        if nodes < CONTRACT_NODES {
            bail!(
                "--nodes must be at least {CONTRACT_NODES}: a contract needs 4 arbitrators that \
                 are neither the customer A nor the provider B"
            );
        }
        if DevnetManifest::load(dir).is_ok() {
            down(dir, true).await.ok();
        }
        let clock = Clock {
            start: now_ms(),
            quiet,
        };
        let m =
            up_with_options(dir, nodes, Duration::from_secs(60), opts, launcher.as_ref()).await?;
        clock.line(
            "devnet",
            now_ms(),
            format!("{} nodes connected", m.nodes.len()),
        );
        let a = m.nodes.len() - 1;
        let region = Region::default();
        region.set(radio_addrs(&m));
        let keys = crate::sensor_keys::load(&m.dir);
        let sensors = match devices {
            None => Radios::Plain(Sensors::start(DEVICES.to_vec(), UPLINK, region, keys).await?),
            Some(o) => {
                let count = u32::try_from(DEVICES.len()).unwrap_or(u32::MAX);
                let mut specs = crate::devices::specs(DEVICES[0], count, o.locked, 0, 0);
                for s in &mut specs {
                    s.key = keys.get(&s.id).cloned();
                }
                Radios::Endpoints(SimDevices::start(specs, o.agent, region).await?)
            }
        };
        let an = m.nodes[a].clone();
        let (image, needs) = publish(
            &api(&an)?,
            &m.dir.join("service"),
            module,
            &DEVICES,
            "standby",
        )
        .await?;
        clock.line(
            "1 estimation",
            now_ms(),
            format!(
                "A's service {} needs {} mCPU, {} MiB",
                short(&image),
                needs.cpu_millis,
                needs.memory_bytes >> 20
            ),
        );
        let own: OwnReply = api(&an)?
            .post(
                "/v1/own",
                &OwnRequest {
                    image: image.clone(),
                },
            )
            .await
            .context("starting A's own service")?;
        clock.line(
            "own service",
            now_ms(),
            format!("A runs it on sensors {:?}", own.devices),
        );
        Ok(Story {
            m,
            a,
            image,
            needs,
            clock,
            sensors: Some(sensors),
            launcher,
        })
    }

    /// What A's sensors say about themselves now (devices with endpoints only).
    pub fn device_metas(&self) -> BTreeMap<u32, agora_devices::DeviceMeta> {
        match &self.sensors {
            Some(Radios::Endpoints(d)) => d.metas(),
            _ => BTreeMap::new(),
        }
    }

    /// The key epoch of each of A's devices with endpoints that was rekeyed (key rotation).
    pub fn device_epochs(&self) -> BTreeMap<u32, u32> {
        match &self.sensors {
            Some(Radios::Endpoints(d)) => d.epochs(),
            _ => BTreeMap::new(),
        }
    }

    /// Requests A's devices with endpoints refused (unsealed, bad MIC, replayed, stale rekey).
    pub fn device_refused(&self) -> u64 {
        match &self.sensors {
            Some(Radios::Endpoints(d)) => d.refused(),
            _ => 0,
        }
    }

    /// A node that is neither A nor `b` (reads the ledger and hears every checkpoint).
    pub fn observer(&self, b: usize) -> &DevnetNode {
        &self.m.nodes[self.observer_index(b)]
    }

    /// The index of [`Self::observer`]`(b)`.
    pub fn observer_index(&self, b: usize) -> usize {
        (0..self.m.nodes.len())
            .find(|i| *i != self.a && *i != b)
            .unwrap_or(0)
    }

    /// Steps 2–6: A's standby auction, negotiation, signatures, escrow, migration, arming (a
    /// one-minute contract).
    pub async fn standby(&self) -> anyhow::Result<Armed> {
        self.standby_lasting(60_000).await
    }

    /// [`Story::standby`] for a contract of `duration_ms`.
    pub async fn standby_lasting(&self, duration_ms: u64) -> anyhow::Result<Armed> {
        let spec = agora_market::AuctionSpec {
            region: "default".into(),
            resources: self.needs.clone(),
            duration_ms,
            max_price: 1_000,
            window_ms: 1_500,
            kind: agora_market::AuctionKind::Standby,
            near: None,
            award_grace_ms: 30_000,
            service: Some(self.image.clone()),
            start_at: None,
        };
        let Armed { id, b, rec } = self
            .buy(
                self.a,
                &spec,
                |auction| format!("standby auction {auction}"),
                ("the contract", "arming", 30),
                |s| s == ContractStatus::Armed,
            )
            .await?;
        let bn = &self.m.nodes[b];
        let c = &self.clock;
        c.line(
            "3 negotiation",
            rec.contract.created_at,
            format!("{} wins at {} tokens", bn.name, rec.contract.payment),
        );
        c.line(
            "4 signature",
            rec.registered_at,
            format!("contract {} signed by A and {}", short(&id), bn.name),
        );
        c.line(
            "5 validation",
            rec.registered_at,
            format!(
                "escrow locks payment {} and stakes {}/{}",
                rec.escrow.payment, rec.escrow.customer_stake, rec.escrow.provider_stake
            ),
        );
        if let Some(e) = timeline(bn)
            .await
            .into_iter()
            .find(|e| e.phase == "staged" && e.contract.as_deref() == Some(id.as_str()))
        {
            c.line("6 migration", e.at, format!("{}: {}", bn.name, e.detail));
        }
        c.line(
            "  armed",
            rec.armed_at.unwrap_or(0),
            format!("{} on standby for A's sensors", bn.name),
        );
        Ok(Armed { id, b, rec })
    }

    /// A hosted contract of A's for a second image that names `devices` (not A's own
    /// service's: the drone's case, R1), starting at once and lasting `duration_ms`; returns
    /// once it is active, with the provider's index.
    pub async fn hosted(&self, devices: &[u32], duration_ms: u64) -> anyhow::Result<Armed> {
        self.hosted_near(devices, duration_ms, None).await
    }

    /// [`Story::hosted`] from the provider at node index `near`, if given: the auction admits
    /// only providers within 100 m of where that node says it is (devnet nodes are ~280 m
    /// apart), so a test picks a provider other than the standby's.
    pub async fn hosted_near(
        &self,
        devices: &[u32],
        duration_ms: u64,
        near: Option<usize>,
    ) -> anyhow::Result<Armed> {
        self.hosted_until(devices, duration_ms, near, ContractStatus::Active)
            .await
    }

    /// [`Story::hosted_near`] that returns once the contract reaches `status` (e.g. one its
    /// provider calls off: `Cancelled`).
    pub async fn hosted_until(
        &self,
        devices: &[u32],
        duration_ms: u64,
        near: Option<usize>,
        status: ContractStatus,
    ) -> anyhow::Result<Armed> {
        self.hosted_by(self.a, devices, duration_ms, near, status)
            .await
    }

    /// [`Story::hosted_until`] bought by node index `customer` instead of A (the same image:
    /// the same module, another customer).
    pub async fn hosted_by(
        &self,
        customer: usize,
        devices: &[u32],
        duration_ms: u64,
        near: Option<usize>,
        status: ContractStatus,
    ) -> anyhow::Result<Armed> {
        self.hosted_tagged(customer, 1, devices, duration_ms, near, |s| s == status)
            .await
    }

    /// [`Story::hosted_by`] for the module tagged `tag` ([`crate::files::tagged`]; the hosted
    /// contracts of [`Story::hosted`] use tag 1): another module, the same guest. Returns
    /// once the contract's status is one `until` takes.
    pub async fn hosted_tagged(
        &self,
        customer: usize,
        tag: u8,
        devices: &[u32],
        duration_ms: u64,
        near: Option<usize>,
        until: impl Fn(ContractStatus) -> bool,
    ) -> anyhow::Result<Armed> {
        let an = &self.m.nodes[customer];
        // Another module than A's own service's (the same guest with a custom section): a
        // provider runs one instance of a module for each customer, so the standby for A's
        // own service and this contract could not both run on one provider (THREATS C5; it
        // would call this one off before arming it).
        let module = std::fs::read(self.m.dir.join("service").join("lora-gateway.wasm"))
            .context("A's published module")?;
        let module = crate::files::tagged(&module, tag);
        let dir = if customer == self.a && tag == 1 {
            "hosted".to_string()
        } else {
            format!("hosted-{}-{tag}", an.name)
        };
        self.hosted_module(
            customer,
            &dir,
            &module,
            "",
            devices,
            duration_ms,
            near,
            until,
        )
        .await
    }

    /// [`Story::hosted_tagged`] of node index `customer`'s own `module` (published from
    /// directory `dir` of the devnet's, naming `devices`, with `extra` top-level manifest
    /// lines, e.g. `depends_on = ["x"]`): a test's guest in place of the demo's.
    #[allow(clippy::too_many_arguments)]
    pub async fn hosted_module(
        &self,
        customer: usize,
        dir: &str,
        module: &[u8],
        extra: &str,
        devices: &[u32],
        duration_ms: u64,
        near: Option<usize>,
        until: impl Fn(ContractStatus) -> bool,
    ) -> anyhow::Result<Armed> {
        let an = &self.m.nodes[customer];
        let (image, needs) = publish_with(
            &api(an)?,
            &self.m.dir.join(dir),
            module,
            devices,
            "immediate",
            extra,
        )
        .await?;
        let spec = agora_market::AuctionSpec {
            region: "default".into(),
            resources: needs,
            duration_ms,
            max_price: 1_000,
            window_ms: 1_500,
            kind: agora_market::AuctionKind::Hosted,
            near: near.map(|i| agora_market::Near {
                center: crate::files::devnet_location(i),
                max_km: 0.1,
            }),
            award_grace_ms: 30_000,
            service: Some(image),
            start_at: None,
        };
        let Armed { id, b, rec } = self
            .buy(
                customer,
                &spec,
                |auction| format!("hosted auction {auction} for devices {devices:?}"),
                (
                    "the hosted contract",
                    "the hosted contract's activation",
                    60,
                ),
                until,
            )
            .await?;
        if let Some(at) = rec.activated_at {
            self.clock.line(
                "  active",
                at,
                format!("{} hosts devices {devices:?}", self.m.nodes[b].name),
            );
        }
        Ok(Armed { id, b, rec })
    }

    /// Node `customer` (A, usually) buys with `spec` (its auction logged as `what(short
    /// id)`): waits up to 30 s for the new contract (`waits.0` names it) and up to `waits.2` s
    /// for its status to be one `until` takes (`waits.1`); returns it with its provider's
    /// index.
    async fn buy(
        &self,
        customer: usize,
        spec: &agora_market::AuctionSpec,
        what: impl Fn(&str) -> String,
        waits: (&str, &str, u64),
        until: impl Fn(ContractStatus) -> bool,
    ) -> anyhow::Result<Armed> {
        let an = &self.m.nodes[customer];
        let known: Vec<String> = list_contracts(an).await.into_iter().map(|c| c.id).collect();
        let created: CreatedReply = api(an)?.post("/v1/market/auctions", spec).await?;
        self.clock
            .line("2 auction", now_ms(), what(&short(&created.id)));
        let row = wait_for(waits.0, 30, async || {
            list_contracts(an)
                .await
                .into_iter()
                .find(|c| c.customer == an.node_id && !known.contains(&c.id))
        })
        .await?;
        let id = row.id;
        let rec = wait_for(waits.1, waits.2, async || {
            contract(an, &id).await.filter(|r| until(r.status))
        })
        .await?;
        let provider = rec.contract.provider.to_string();
        let b = self
            .m
            .nodes
            .iter()
            .position(|n| n.node_id == provider)
            .context("the provider is not a devnet node")?;
        Ok(Armed { id, b, rec })
    }

    /// Kills node `i` with SIGKILL; returns when.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<u64> {
        let pid = self.m.nodes[i]
            .pid
            .with_context(|| format!("{} is not running", self.m.nodes[i].name))?;
        let at = now_ms();
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .context("kill")?;
        self.m.nodes[i].pid = None;
        self.m.save()?;
        Ok(at)
    }

    /// Restarts node `i` from its data dir and waits for its control API.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.m.nodes[i].clone();
        let exe = self.launcher.exe()?;
        let api_file = node.data_dir.join(agora_api::API_ADDR_FILE);
        let _ = std::fs::remove_file(&api_file);
        let pid = self.launcher.spawn(i, &exe, &node.data_dir)?;
        self.m.nodes[i].pid = Some(pid);
        self.m.save()?;
        wait_for(&format!("{} to restart", node.name), 30, async || {
            api(&node).ok()?.status().await.ok()
        })
        .await?;
        Ok(())
    }

    /// The contract as `node` sees it, once `pred` holds.
    pub async fn wait_contract(
        &self,
        node: usize,
        id: &str,
        what: &str,
        secs: u64,
        pred: impl Fn(&ContractRecord) -> bool,
    ) -> anyhow::Result<ContractRecord> {
        let n = &self.m.nodes[node];
        wait_for(what, secs, async || {
            contract(n, id).await.filter(|r| pred(r))
        })
        .await
    }

    /// The contract as `node` sees it now.
    pub async fn contract(&self, node: usize, id: &str) -> Option<ContractRecord> {
        contract(&self.m.nodes[node], id).await
    }

    /// Waits for B's activation after A was killed at `killed`, and splits the failover time.
    pub async fn failover(&self, armed: &Armed, killed: u64) -> anyhow::Result<FailoverSplit> {
        let bn = &self.m.nodes[armed.b];
        let observer = self.observer(armed.b).clone();
        let active = wait_for("activation", 30, async || {
            contract(&observer, &armed.id)
                .await
                .filter(|r| r.activated_at.is_some())
        })
        .await?;
        let first = wait_for("B's first reading of A's sensors", 10, async || {
            let st: RadioStatus = api(bn).ok()?.get("/v1/radio").await.ok()?;
            st.devices
                .iter()
                .filter(|d| DEVICES.contains(&d.device) && d.service.is_some())
                .filter_map(|d| d.first_processed_at)
                .filter(|t| *t >= killed)
                .min()
        })
        .await?;
        let mut detected = u64::MAX;
        for (i, n) in self.m.nodes.iter().enumerate() {
            if i == self.a {
                continue;
            }
            for e in timeline(n).await {
                if e.phase == "attested-down" && e.at >= killed {
                    detected = detected.min(e.at);
                }
            }
        }
        let trigger = active.trigger_at.unwrap_or(killed);
        let detected = if detected == u64::MAX {
            trigger
        } else {
            detected
        };
        let act = timeline(bn)
            .await
            .into_iter()
            .rfind(|e| e.phase == "activated" && e.contract.as_deref() == Some(armed.id.as_str()));
        let (activated, latency) = match act {
            Some(e) => (e.at, e.latency_ms.unwrap_or(0)),
            None => (active.activated_at.unwrap_or(trigger), 0),
        };
        let arrived = activated.saturating_sub(latency);
        let c = &self.clock;
        c.line(
            "  detected",
            detected,
            "arbitrators' liveness checks: A unreachable",
        );
        c.line(
            "  attested",
            trigger,
            "handover attested by a 2f+1 quorum on the ledger",
        );
        c.line(
            "  activated",
            activated,
            format!(
                "{} started A's service {latency} ms after the block arrived",
                bn.name
            ),
        );
        c.line(
            "  first reading",
            first,
            format!("{} processed A's sensors", bn.name),
        );
        Ok(FailoverSplit {
            detection_ms: detected.saturating_sub(killed),
            attestation_ms: trigger.saturating_sub(detected),
            commit_ms: arrived.saturating_sub(trigger),
            activation_ms: latency,
            end_to_end_ms: first.saturating_sub(killed),
        })
    }

    /// Waits until A manages all its sensors again.
    pub async fn a_resumed(&self) -> anyhow::Result<()> {
        let an = &self.m.nodes[self.a];
        wait_for("A to take its sensors back", 20, async || {
            let st: RadioStatus = api(an).ok()?.get("/v1/radio").await.ok()?;
            let mine = st.devices.iter().filter(|d| DEVICES.contains(&d.device));
            (mine.clone().count() == DEVICES.len() && mine.clone().all(|d| d.service.is_some()))
                .then_some(())
        })
        .await?;
        self.clock
            .line("  A resumed", now_ms(), "A processes its sensors again");
        Ok(())
    }

    /// Balance and reputation of `who` (node id) as `node` sees them.
    pub async fn account(&self, node: usize, who: &str) -> Option<BalanceReply> {
        api(&self.m.nodes[node])
            .ok()?
            .get(&format!("/v1/ledger/accounts/{who}"))
            .await
            .ok()
    }

    /// Stops the sensors, lets the last checkpoints arrive and accounts every reading, as a node
    /// that is neither A nor `b` heard the checkpoints.
    pub async fn coverage(&mut self, b: usize) -> Coverage {
        self.coverage_of(b, |_| true).await
    }

    /// [`Self::coverage`] counting only the checkpoints `keep` accepts (an attack test leaves
    /// out a hostile peer's, which an observer that manages nothing cannot tell apart).
    pub async fn coverage_of(
        &mut self,
        b: usize,
        keep: impl Fn(&agora_radio::CheckpointRecord) -> bool,
    ) -> Coverage {
        let observer = self.observer_index(b);
        self.coverage_seen_by(observer, keep).await
    }

    /// [`Self::coverage_of`] as node `observer` heard the checkpoints (the demo asks an earlier
    /// provider when there is one: it must count every later provider's checkpoints too).
    pub async fn coverage_seen_by(
        &mut self,
        observer: usize,
        keep: impl Fn(&agora_radio::CheckpointRecord) -> bool,
    ) -> Coverage {
        let sent = match self.sensors.take() {
            Some(s) => s.stop().await,
            None => BTreeMap::new(),
        };
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let names: BTreeMap<String, String> = self
            .m
            .nodes
            .iter()
            .map(|n| (n.node_id.clone(), n.name.clone()))
            .collect();
        let st: RadioStatus = match api(&self.m.nodes[observer]) {
            Ok(c) => c.get("/v1/radio").await.unwrap_or_default(),
            Err(_) => RadioStatus::default(),
        };
        let a_id = &self.m.nodes[self.a].node_id;
        let stats = st.stats.clone();
        let kept: Vec<_> = st.checkpoints.into_iter().filter(|c| keep(c)).collect();
        let c = coverage(&sent, &kept, |edge| {
            let name = names.get(edge).cloned().unwrap_or_else(|| short(edge));
            if edge == a_id {
                format!("{name} (A)")
            } else {
                name
            }
        });
        if c.missing > 0 {
            eprintln!(
                "readings missing as {} heard the checkpoints: gaps {:?}; its radio stats {stats:?}",
                self.m.nodes[observer].name, c.gaps
            );
            self.explain(&c.gaps).await;
        }
        if c.duplicated > 0 {
            eprintln!(
                "readings covered twice as {} heard the checkpoints: {:?}; its radio stats {stats:?}",
                self.m.nodes[observer].name, c.doubled
            );
            for rec in &kept {
                for r in &rec.checkpoint.ranges {
                    let touches = c.doubled.get(&r.device).is_some_and(|near| {
                        near.iter().any(|(lo, hi)| r.first <= *hi && r.last >= *lo)
                    });
                    if touches {
                        eprintln!(
                            "  {} kept {}'s checkpoint of device {} {}..={} (count {}) at {}",
                            self.m.nodes[observer].name,
                            names
                                .get(&rec.edge)
                                .cloned()
                                .unwrap_or_else(|| short(&rec.edge)),
                            r.device,
                            r.first,
                            r.last,
                            r.count,
                            rec.checkpoint.at
                        );
                    }
                }
            }
            self.explain(&c.doubled).await;
        }
        c
    }

    /// Says, on stderr, who processed the readings around `ranges` (missing or covered twice,
    /// per device): every node's own checkpoints that touch one (a checkpoint the observer never
    /// kept, or no checkpoint at all), with their time, and its view of those devices.
    async fn explain(&self, ranges: &BTreeMap<u32, Vec<(u32, u32)>>) {
        for n in &self.m.nodes {
            let Ok(client) = api(n) else { continue };
            let Ok(st) = client.get::<RadioStatus>("/v1/radio").await else {
                eprintln!("  {}: radio status unavailable", n.name);
                continue;
            };
            for rec in st.checkpoints.iter().filter(|r| r.mine) {
                for r in &rec.checkpoint.ranges {
                    let touches = ranges.get(&r.device).is_some_and(|near| {
                        near.iter().any(|(lo, hi)| {
                            r.first <= hi.saturating_add(2) && r.last.saturating_add(2) >= *lo
                        })
                    });
                    if touches {
                        eprintln!(
                            "  {} checkpointed device {} {}..={} (count {}) at {} released {:?}",
                            n.name,
                            r.device,
                            r.first,
                            r.last,
                            r.count,
                            rec.checkpoint.at,
                            rec.checkpoint.released
                        );
                    }
                }
            }
            for d in st.devices.iter().filter(|d| ranges.contains_key(&d.device)) {
                eprintln!("  {} device {:?}", n.name, d);
            }
        }
    }

    /// Stops the devnet (data kept unless `clean`).
    pub async fn down(mut self, clean: bool) -> anyhow::Result<()> {
        if let Some(s) = self.sensors.take() {
            s.stop().await;
        }
        down(&self.m.dir, clean).await?;
        for n in &mut self.m.nodes {
            n.pid = None;
        }
        Ok(())
    }
}

impl Drop for Story {
    /// Kills whatever is still running (a failed test never leaves nodes behind).
    fn drop(&mut self) {
        for n in &self.m.nodes {
            if let Some(pid) = n.pid
                && crate::process::is_our_process(pid, &n.data_dir)
            {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// The devnet nodes' radio addresses.
pub(super) fn radio_addrs(m: &DevnetManifest) -> Vec<SocketAddr> {
    m.nodes
        .iter()
        .filter_map(|n| std::fs::read_to_string(n.data_dir.join("radio.addr")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

pub(super) async fn contract(n: &DevnetNode, id: &str) -> Option<ContractRecord> {
    api(n)
        .ok()?
        .get::<ContractRecord>(&format!("/v1/ledger/contracts/{id}"))
        .await
        .ok()
}

pub(super) async fn list_contracts(n: &DevnetNode) -> Vec<ContractRow> {
    match api(n) {
        Ok(c) => c.get("/v1/ledger/contracts").await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

pub(super) async fn timeline(n: &DevnetNode) -> Vec<TimelineEntry> {
    match api(n) {
        Ok(c) => c.get("/v1/timeline").await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// First 8 characters of an id.
pub fn short(id: &str) -> String {
    id.chars().take(8).collect()
}
