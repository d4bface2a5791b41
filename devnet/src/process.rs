//! `agora devnet up|status|down`: a local devnet of real `agora node run` processes on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::files::{
    DevnetManifest, DevnetNode, GENESIS_FILE, PROMETHEUS_FILE, devnet_genesis, devnet_node_config,
    prometheus_config,
};
use agora_api::client::ApiClient;
use agora_api::{API_ADDR_FILE, P2P_ADDR_FILE};
use agora_daemon::config::NodeConfig;
use agora_daemon::data_dir::{init_data_dir, save_genesis, write_config};
use agora_wire::now_ms;

use crate::output::{print_json, print_table};

/// Default devnet directory.
pub const DEFAULT_DEVNET_DIR: &str = ".agora-devnet";

/// `agora devnet …`
#[derive(Debug, Subcommand)]
pub enum DevnetCommand {
    /// Create keys, genesis and config, start N nodes and wait until they are connected and ready.
    Up(UpArgs),
    /// Show the devnet's nodes and whether they run.
    Status(DirArgs),
    /// Stop exactly the processes `up` started (data is kept unless --clean).
    Down(DownArgs),
    /// Run the flagship story on real processes: standby contract, failure, handover, payment.
    Demo(crate::demo::DemoArgs),
    /// Kill one node's process with SIGKILL (a real failure; data stays).
    Kill(NodeArgs),
    /// Start one stopped node again from its data dir.
    Start(NodeArgs),
    /// Simulated LoRa sensors broadcasting to every node's radio until Ctrl-C (or --for).
    Sensors(SensorArgs),
    /// Simulated devices with endpoints (metadata, reboot, flash, verify, boot, rollback)
    /// talking to every node's radio until Ctrl-C (or --for).
    Devices(DeviceArgs),
}

/// Options of `devnet devices`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Number of devices.
    #[arg(long, default_value_t = 10)]
    pub count: u32,
    /// Of those, the last M are locked by their owner.
    #[arg(long, default_value_t = 0)]
    pub locked: u32,
    /// Of those, the first C corrupt every flash (fault injection).
    #[arg(long, default_value_t = 0)]
    pub corrupt: u32,
    /// The next F fail to boot a new image (fault injection).
    #[arg(long, default_value_t = 0)]
    pub fail_boot: u32,
    /// Id of the first device.
    #[arg(long, default_value_t = 1000)]
    pub first_id: u32,
    /// Flash link rate in bytes per second (a chunk of N bytes takes N / rate).
    #[arg(long, default_value_t = 31_250)]
    pub link_rate: u64,
    /// Reading interval in ms.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Reboot time in ms.
    #[arg(long, default_value_t = 500)]
    pub reboot_ms: u64,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long = "for")]
    pub for_s: Option<u64>,
    /// Devnet directory.
    #[arg(long, default_value = DEFAULT_DEVNET_DIR)]
    pub dir: PathBuf,
}

/// Options naming one devnet node.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Node name, e.g. `node3`.
    pub node: String,
    /// Devnet directory.
    #[arg(long, default_value = DEFAULT_DEVNET_DIR)]
    pub dir: PathBuf,
}

/// Options of `devnet sensors`.
#[derive(Debug, Args)]
pub struct SensorArgs {
    /// Device ids, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "101,102,103")]
    pub devices: Vec<u32>,
    /// Uplink interval in ms.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long = "for")]
    pub for_s: Option<u64>,
    /// Devnet directory.
    #[arg(long, default_value = DEFAULT_DEVNET_DIR)]
    pub dir: PathBuf,
}

/// Options of `devnet up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Devnet directory.
    #[arg(long, default_value = DEFAULT_DEVNET_DIR)]
    pub dir: PathBuf,
    /// Seconds to wait for the nodes to connect and become ready.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// The last M nodes neither bid nor accept awards automatically (their operator does).
    #[arg(long, default_value_t = 0)]
    pub manual: usize,
    /// Serve Prometheus metrics on every node (a free loopback port each) and write a
    /// scrape config for the devnet to `<dir>/prometheus.yml`.
    #[arg(long)]
    pub metrics: bool,
    /// Number of arbitrators (the ledger's committee; contracts' committees are drawn from it):
    /// the first K nodes. Default: the largest 3f+1 up to 7 (every node of a devnet of 1-4 or
    /// 7 nodes), whatever the devnet's size; a contract between two arbitrators needs K ≥ 6.
    #[arg(long, value_name = "K")]
    pub arbitrators: Option<usize>,
    /// WAN emulation on every link.
    #[command(flatten)]
    pub wan: WanArgs,
}

/// WAN emulation options of `devnet up` and `devnet demo` (devnets only; see
/// `agora_network::wan` for how faithful it is).
#[derive(Clone, Debug, Default, Args)]
pub struct WanArgs {
    /// One-way delay added to each direction of every link, e.g. `50ms` (the round trip grows
    /// by twice that).
    #[arg(long, value_parser = agora_network::wan::parse_duration)]
    pub latency: Option<Duration>,
    /// With --latency: each delay is drawn from latency ± jitter, e.g. `10ms` (order is kept).
    #[arg(long, value_parser = agora_network::wan::parse_duration, requires = "latency")]
    pub jitter: Option<Duration>,
    /// With --latency: share of TCP segments lost, e.g. `1%`; a loss costs a retransmission
    /// timeout, never bytes.
    #[arg(long, value_parser = agora_network::wan::parse_loss, requires = "latency")]
    pub loss: Option<u32>,
}

impl WanArgs {
    /// The profile every node's config gets, if any.
    pub fn profile(&self) -> Option<agora_network::wan::WanProfile> {
        self.latency.map(|latency| agora_network::wan::WanProfile {
            latency,
            jitter: self.jitter.unwrap_or_default(),
            loss_ppm: self.loss.unwrap_or_default(),
        })
    }
}

/// Scrape interval written into the devnet's Prometheus config, ms.
pub const DEVNET_SCRAPE_INTERVAL_MS: u64 = 1_000;

/// Options naming the devnet directory.
#[derive(Debug, Args)]
pub struct DirArgs {
    /// Devnet directory.
    #[arg(long, default_value = DEFAULT_DEVNET_DIR)]
    pub dir: PathBuf,
}

/// Options of `devnet down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// Devnet directory.
    #[arg(long, default_value = DEFAULT_DEVNET_DIR)]
    pub dir: PathBuf,
    /// Also remove the devnet directory.
    #[arg(long)]
    pub clean: bool,
}

/// Runs a devnet subcommand.
pub async fn run(cmd: &DevnetCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        DevnetCommand::Up(a) => {
            let opts = UpOptions {
                manual: a.manual,
                metrics: a.metrics,
                wan: a.wan.profile(),
                arbitrators: a.arbitrators,
            };
            let timeout = Duration::from_secs(a.timeout);
            let progress = crate::progress::Progress::start(
                format!(
                    "starting {} nodes, waiting until they are connected and ready",
                    a.nodes
                ),
                json,
            );
            let m = up_with_options(&a.dir, a.nodes, timeout, opts, &Loopback).await;
            progress.finish();
            print_manifest(&m?, json).await
        }
        DevnetCommand::Demo(a) => crate::demo::run(a, json).await,
        DevnetCommand::Status(a) => {
            let m = DevnetManifest::load(&a.dir)?;
            print_manifest(&m, json).await
        }
        DevnetCommand::Kill(a) => {
            let mut m = DevnetManifest::load(&a.dir)?;
            let n = node_index(&m, &a.node)?;
            let node = &m.nodes[n];
            match node.pid.filter(|p| is_our_process(*p, &node.data_dir)) {
                Some(pid) => {
                    std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()
                        .context("running kill")?;
                }
                None => bail!("{} is not running", a.node),
            }
            m.nodes[n].pid = None;
            m.save()?;
            println!(
                "killed {} (SIGKILL); `agora devnet start {}` brings it back",
                a.node, a.node
            );
            Ok(())
        }
        DevnetCommand::Start(a) => {
            let mut m = DevnetManifest::load(&a.dir)?;
            let n = node_index(&m, &a.node)?;
            let node = m.nodes[n].clone();
            if node.pid.is_some_and(|p| is_our_process(p, &node.data_dir)) {
                bail!("{} is already running", a.node);
            }
            let exe = std::env::current_exe().context("cannot find the agora binary")?;
            let _ = std::fs::remove_file(node.data_dir.join(API_ADDR_FILE));
            let pid = spawn_node(&exe, &node.data_dir)?;
            m.nodes[n].pid = Some(pid);
            m.save()?;
            wait_for_file(
                &node.data_dir.join(API_ADDR_FILE),
                Instant::now() + Duration::from_secs(30),
            )
            .await?;
            println!("started {} (pid {pid})", a.node);
            Ok(())
        }
        DevnetCommand::Devices(a) => run_devices(a, json).await,
        DevnetCommand::Sensors(a) => {
            let region = crate::demo::Region::default();
            let addrs = radio_addrs(&a.dir)?;
            println!(
                "sensors {:?} sending every {} ms to {} edges; Ctrl-C stops",
                a.devices,
                a.interval_ms,
                addrs.len()
            );
            region.set(addrs);
            let sensors = crate::demo::Sensors::start(
                a.devices.clone(),
                Duration::from_millis(a.interval_ms.max(1)),
                region,
                crate::sensor_keys::load(&a.dir),
            )
            .await?;
            match a.for_s {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            let sent = sensors.stop().await;
            println!("sent: {sent:?}");
            Ok(())
        }
        DevnetCommand::Down(a) => {
            let stopped = down(&a.dir, a.clean).await?;
            if json {
                print_json(&serde_json::json!({ "stopped": stopped, "cleaned": a.clean }))
            } else {
                println!(
                    "stopped {stopped} node(s){}",
                    if a.clean { ", removed data" } else { "" }
                );
                Ok(())
            }
        }
    }
}

fn node_index(m: &DevnetManifest, name: &str) -> anyhow::Result<usize> {
    m.nodes
        .iter()
        .position(|n| n.name == name)
        .with_context(|| {
            let names: Vec<&str> = m.nodes.iter().map(|n| n.name.as_str()).collect();
            format!("no node {name} in this devnet; nodes: {}", names.join(", "))
        })
}

/// Whether process `pid` is alive and is the `agora node run` for `data_dir`.
pub fn is_our_process(pid: u32, data_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited already.
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            return false;
        }
    }
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let dir = data_dir.display().to_string();
    args.iter().any(|a| a == "run") && args.contains(&dir)
}

async fn wait_for_file(path: &Path, deadline: Instant) -> anyhow::Result<String> {
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for {}; see the node's log next to it",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `agora node run` for `data_dir` in the background (own process group, log in
/// `node.log`); returns its pid.
pub fn spawn_node(exe: &Path, data_dir: &Path) -> anyhow::Result<u32> {
    spawn_node_with(exe, data_dir, &[])
}

/// [`spawn_node`] with `extra` arguments after `node run --data-dir DIR` (a test binary's
/// own options).
pub fn spawn_node_with(exe: &Path, data_dir: &Path, extra: &[String]) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let log_path = data_dir.join("node.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let log2 = log.try_clone()?;
    let child = std::process::Command::new(exe)
        .arg("node")
        .arg("run")
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        // Own process group: a Ctrl-C in the terminal that ran `up` does not stop the devnet.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    Ok(child.id())
}

/// Where devnet nodes live and how they are started: plain loopback processes by default;
/// tests put each node in its own network namespace to cut links for real, or behind a NAT
/// in the netlab.
pub trait Launcher: Send + Sync {
    /// The IP address node `i` listens on: its control API and radio always, and its p2p
    /// transport unless [`Launcher::configure`] moves it (a node behind a NAT keeps its API
    /// on a management address the test can reach and its p2p on its LAN address).
    fn host(&self, i: usize) -> String;
    /// Last word on node `i`'s config before its data dir is written (p2p listen and
    /// external addresses, relay service, AutoNAT, whether it bids). Node 0's p2p addresses
    /// are still every later node's bootstrap list. Default: nothing changes.
    fn configure(&self, _i: usize, _config: &mut NodeConfig) {}
    /// Starts `agora node run` for node `i`; returns its pid.
    fn spawn(&self, i: usize, exe: &Path, data_dir: &Path) -> anyhow::Result<u32>;
    /// The `agora` binary to run (default: this one).
    fn exe(&self) -> anyhow::Result<PathBuf> {
        std::env::current_exe().context("cannot find the agora binary")
    }
}

/// Loopback processes in their own process groups.
#[derive(Clone, Copy, Debug, Default)]
pub struct Loopback;

impl Launcher for Loopback {
    fn host(&self, _i: usize) -> String {
        "127.0.0.1".into()
    }
    fn spawn(&self, _i: usize, exe: &Path, data_dir: &Path) -> anyhow::Result<u32> {
        spawn_node(exe, data_dir)
    }
}

/// Starts `n` nodes in `dir` and waits until each is connected to all others (or to the target) and ready.
pub async fn up(
    dir: &Path,
    n: usize,
    manual: usize,
    timeout: Duration,
) -> anyhow::Result<DevnetManifest> {
    up_with(dir, n, manual, timeout, &Loopback).await
}

/// [`up`] with nodes placed and started by `launcher`.
pub async fn up_with(
    dir: &Path,
    n: usize,
    manual: usize,
    timeout: Duration,
    launcher: &dyn Launcher,
) -> anyhow::Result<DevnetManifest> {
    let opts = UpOptions {
        manual,
        ..UpOptions::default()
    };
    up_with_options(dir, n, timeout, opts, launcher).await
}

/// Options of [`up_with_options`].
#[derive(Clone, Copy, Debug, Default)]
pub struct UpOptions {
    /// The last `manual` nodes neither bid nor accept awards on their own.
    pub manual: usize,
    /// Every node serves Prometheus metrics; `prometheus.yml` is written to the devnet dir.
    pub metrics: bool,
    /// WAN emulation on every node's TCP links.
    pub wan: Option<agora_network::wan::WanProfile>,
    /// Committee size (`--arbitrators`); `None`: [`crate::files::committee_size`]'s default.
    pub arbitrators: Option<usize>,
}

/// [`up_with`] with every option.
pub async fn up_with_options(
    dir: &Path,
    n: usize,
    timeout: Duration,
    opts: UpOptions,
    launcher: &dyn Launcher,
) -> anyhow::Result<DevnetManifest> {
    let manual = opts.manual;
    if n == 0 {
        bail!("--nodes must be at least 1");
    }
    crate::files::committee_size(n, opts.arbitrators)?;
    if let Ok(m) = DevnetManifest::load(dir)
        && m.nodes
            .iter()
            .any(|node| node.pid.is_some_and(|p| is_our_process(p, &node.data_dir)))
    {
        bail!(
            "a devnet is already running in {}; run `agora devnet down --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let exe = launcher.exe()?;
    let genesis_path = dir.join(GENESIS_FILE);

    let mut ids = Vec::new();
    let mut configs = Vec::new();
    let sensor_keys = crate::sensor_keys::create(&dir)?;
    let owner = crate::sensor_keys::sensor_owner(n, manual);
    for i in 0..n {
        let name = format!("node{i}");
        let data_dir = dir.join(&name);
        let mut config = devnet_node_config(i, &genesis_path, i + manual >= n);
        let host = launcher.host(i);
        if host != "127.0.0.1" {
            config.network.listen = vec![format!("/ip4/{host}/tcp/0")];
            config.api.listen = format!("{host}:0");
            config.api.allow_non_loopback = true;
            config.radio.listen = format!("{host}:0");
        }
        if opts.metrics {
            config.metrics.listen = Some(format!("{host}:0"));
        }
        config.network.wan = opts.wan;
        launcher.configure(i, &mut config);
        if i == owner {
            config.radio.device_keys = sensor_keys.clone();
        }
        let key = init_data_dir(&data_dir, &config)?;
        ids.push((name, key.node_id()));
        configs.push((data_dir, config));
    }
    save_genesis(
        &genesis_path,
        &devnet_genesis(&ids, now_ms(), opts.arbitrators)?,
    )?;

    let deadline = Instant::now() + timeout;
    let mut nodes = Vec::new();
    let mut bootstrap: Vec<String> = Vec::new();
    // Node 0 first (its addresses are everyone's bootstrap), then all the others at once,
    // rather than each waiting for the one before it to write its addresses (issue #15).
    let mut started = Vec::new();
    for (i, (data_dir, mut config)) in configs.into_iter().enumerate() {
        config.network.bootstrap = bootstrap.clone();
        write_config(&data_dir, &config)?;
        for f in [
            P2P_ADDR_FILE,
            API_ADDR_FILE,
            agora_api::RADIO_ADDR_FILE,
            agora_api::METRICS_ADDR_FILE,
        ] {
            let _ = std::fs::remove_file(data_dir.join(f));
        }
        let pid = launcher.spawn(i, &exe, &data_dir)?;
        if i == 0 {
            let node = node_started(&ids[i], data_dir, config, pid, deadline).await?;
            bootstrap = node.p2p.clone();
            nodes.push(node);
        } else {
            started.push((i, data_dir, config, pid));
        }
    }
    let pids: Vec<u32> = started.iter().map(|s| s.3).collect();
    for (i, data_dir, config, pid) in started {
        match node_started(&ids[i], data_dir, config, pid, deadline).await {
            Ok(node) => nodes.push(node),
            Err(e) => {
                // No manifest names them yet: stop what this call started.
                for pid in nodes.iter().filter_map(|n| n.pid).chain(pids) {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                return Err(e);
            }
        }
    }
    if opts.metrics {
        let path = dir.join(PROMETHEUS_FILE);
        std::fs::write(&path, prometheus_config(&nodes, DEVNET_SCRAPE_INTERVAL_MS))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let manifest = DevnetManifest {
        dir: dir.clone(),
        genesis: genesis_path,
        nodes,
    };
    manifest.save()?;
    wait_ready(&manifest, deadline).await?;
    Ok(manifest)
}

/// Waits for a node `up` spawned to write its addresses, then pins the ports it got in its
/// config, so a restart from that config comes back on the same ones.
async fn node_started(
    (name, id): &(String, agora_market::NodeId),
    data_dir: PathBuf,
    mut config: NodeConfig,
    pid: u32,
    deadline: Instant,
) -> anyhow::Result<DevnetNode> {
    let p2p_text = wait_for_file(&data_dir.join(P2P_ADDR_FILE), deadline).await?;
    let api = wait_for_file(&data_dir.join(API_ADDR_FILE), deadline).await?;
    let p2p: Vec<String> = p2p_text.lines().map(String::from).collect();
    config.network.listen = p2p
        .iter()
        .map(|a| a.split("/p2p/").next().unwrap_or(a).to_string())
        .collect();
    config.api.listen = api.trim().to_string();
    if !config.radio.listen.is_empty() {
        let radio = wait_for_file(&data_dir.join(agora_api::RADIO_ADDR_FILE), deadline).await?;
        config.radio.listen = radio.trim().to_string();
    }
    let metrics = if config.metrics.listen.is_some() {
        let path = data_dir.join(agora_api::METRICS_ADDR_FILE);
        let addr = wait_for_file(&path, deadline).await?.trim().to_string();
        config.metrics.listen = Some(addr.clone());
        Some(addr)
    } else {
        None
    };
    write_config(&data_dir, &config)?;
    Ok(DevnetNode {
        name: name.clone(),
        data_dir,
        node_id: id.to_string(),
        pid: Some(pid),
        api: api.trim().to_string(),
        p2p,
        metrics,
    })
}

/// Waits until every node is connected to its peers (up to the dial target) and answers
/// `/ready` (ledger at the chain's tip, orchestrator synced), so that the first command a user
/// types after `agora devnet up` (or `agora doctor`) finds a ready devnet.
async fn wait_ready(m: &DevnetManifest, deadline: Instant) -> anyhow::Result<()> {
    // Nodes dial discovered peers only up to the target, so large devnets are not a full mesh.
    let want = (m.nodes.len() - 1).min(agora_network::NetworkConfig::default().target_peers);
    loop {
        let mut waiting: Option<String> = None;
        for node in &m.nodes {
            let client = match ApiClient::for_data_dir(&node.data_dir) {
                Ok(c) => c,
                Err(e) => {
                    waiting = Some(format!("{}: {e}", node.name));
                    break;
                }
            };
            let peers = client.peers().await.map(|p| p.len()).unwrap_or(0);
            if peers < want {
                waiting = Some(format!("{}: {peers} of {want} peers connected", node.name));
                break;
            }
            match client.readiness().await {
                Ok(r) if r.ready => {}
                Ok(r) => {
                    waiting = Some(format!("{}: {}", node.name, r.waiting_for.join("; ")));
                    break;
                }
                Err(e) => {
                    waiting = Some(format!("{}: {e}", node.name));
                    break;
                }
            }
        }
        let Some(what) = waiting else {
            return Ok(());
        };
        if Instant::now() > deadline {
            bail!(
                "devnet nodes did not all become ready in time ({what}); check the node.log \
                 files under {} (or pass --timeout)",
                m.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the devnet's processes; returns how many were running.
pub async fn down(dir: &Path, clean: bool) -> anyhow::Result<usize> {
    let mut m = DevnetManifest::load(dir)?;
    let mut stopped = 0;
    for node in &mut m.nodes {
        let Some(pid) = node.pid else { continue };
        if is_our_process(pid, &node.data_dir) {
            if let Ok(c) = ApiClient::for_data_dir(&node.data_dir) {
                let _ = c.shutdown().await;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_our_process(pid, &node.data_dir) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if is_our_process(pid, &node.data_dir) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            stopped += 1;
        }
        node.pid = None;
    }
    if clean {
        std::fs::remove_dir_all(&m.dir)
            .with_context(|| format!("cannot remove {}", m.dir.display()))?;
    } else {
        m.save()?;
    }
    Ok(stopped)
}

/// The dashboard's address on a node's control API; with `token`, the token rides in the
/// fragment, which the browser keeps to itself (never sent in a request).
pub fn dashboard_url(api: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("http://{api}/#token={t}"),
        None => format!("http://{api}/"),
    }
}

fn read_token(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(agora_api::API_TOKEN_FILE))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Prints where each running node's dashboard is. The token goes into the address only when
/// stdout is a terminal (output redirected to a log file that others may read gets the bare
/// address and where the token is).
fn print_dashboards(dashboards: &[(&DevnetNode, Option<String>)]) {
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    for (node, token) in dashboards {
        match token.as_deref().filter(|_| terminal) {
            Some(t) => println!(
                "dashboard {}: {}",
                node.name,
                dashboard_url(&node.api, Some(t))
            ),
            None => println!(
                "dashboard {}: {} (token: {})",
                node.name,
                dashboard_url(&node.api, None),
                node.data_dir.join(agora_api::API_TOKEN_FILE).display()
            ),
        }
    }
}

async fn print_manifest(m: &DevnetManifest, json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut out = Vec::new();
    let mut dashboards = Vec::new();
    for node in &m.nodes {
        let running = node.pid.is_some_and(|p| is_our_process(p, &node.data_dir));
        let peers = if running {
            match ApiClient::for_data_dir(&node.data_dir) {
                Ok(c) => c.peers().await.ok().map(|p| p.len()),
                Err(_) => None,
            }
        } else {
            None
        };
        let p2p = node
            .p2p
            .iter()
            .find(|a| a.contains("/tcp/"))
            .cloned()
            .unwrap_or_default();
        rows.push(vec![
            node.name.clone(),
            node.node_id.chars().take(8).collect(),
            if running { "running" } else { "stopped" }.to_string(),
            peers.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            node.api.clone(),
            p2p,
        ]);
        let token = if running {
            read_token(&node.data_dir)
        } else {
            None
        };
        out.push(serde_json::json!({
            "name": node.name, "node_id": node.node_id, "running": running,
            "pid": node.pid, "peers": peers, "api": node.api, "p2p": node.p2p,
            "data_dir": node.data_dir, "metrics": node.metrics,
            "dashboard": token.as_deref().map(|t| dashboard_url(&node.api, Some(t))),
        }));
        if running {
            dashboards.push((node, token));
        }
    }
    if json {
        return print_json(
            &serde_json::json!({ "dir": m.dir, "genesis": m.genesis, "nodes": out }),
        );
    }
    print_table(&["NODE", "ID", "STATE", "PEERS", "CONTROL", "P2P"], &rows);
    println!("devnet dir: {}", m.dir.display());
    print_dashboards(&dashboards);
    let metrics: Vec<String> = m
        .nodes
        .iter()
        .filter_map(|n| {
            n.metrics
                .as_ref()
                .map(|a| format!("{} http://{a}/metrics", n.name))
        })
        .collect();
    if !metrics.is_empty() {
        println!("metrics: {}", metrics.join(", "));
        println!(
            "scrape them: prometheus --config.file={}",
            m.dir.join(PROMETHEUS_FILE).display()
        );
    }
    println!(
        "try: agora peers --data-dir {}",
        m.nodes
            .first()
            .map(|n| n.data_dir.display().to_string())
            .unwrap_or_default()
    );
    Ok(())
}

/// The radio UDP addresses of the devnet's running nodes.
fn radio_addrs(dir: &Path) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    let m = DevnetManifest::load(dir)?;
    Ok(m.nodes
        .iter()
        .filter_map(|n| std::fs::read_to_string(n.data_dir.join(agora_api::RADIO_ADDR_FILE)).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect())
}

/// `agora devnet devices`.
async fn run_devices(a: &DeviceArgs, json: bool) -> anyhow::Result<()> {
    let addrs = radio_addrs(&a.dir)?;
    if addrs.is_empty() {
        bail!(
            "no running node of the devnet in {} has a radio address; run `agora devnet up` first",
            a.dir.display()
        );
    }
    let mut specs = crate::devices::specs(a.first_id, a.count, a.locked, a.corrupt, a.fail_boot);
    // A device the devnet keyed (`sensor-keys.json`: 101-103, 201) seals its uplinks and takes
    // only requests sealed under its key (threat R2).
    let keys = crate::sensor_keys::load(&a.dir);
    for s in &mut specs {
        s.key = keys.get(&s.id).cloned();
    }
    let keyed = specs.iter().filter(|s| s.key.is_some()).count();
    let cfg = agora_devices::agent::AgentConfig {
        reboot_ms: a.reboot_ms,
        link_bytes_per_s: a.link_rate.max(1),
        reading_ms: a.interval_ms,
    };
    let region = crate::demo::Region::default();
    region.set(addrs.clone());
    let devices = crate::devices::SimDevices::start(specs, cfg, region).await?;
    let last = a.first_id.saturating_add(a.count).saturating_sub(1);
    if json {
        print_json(&serde_json::json!({
            "devices": a.count, "first_id": a.first_id, "last_id": last, "locked": a.locked,
            "corrupt": a.corrupt, "fail_boot": a.fail_boot, "link_rate": a.link_rate,
            "edges": addrs.len(), "keyed": keyed,
        }))?;
    } else {
        println!(
            "devices {}..={} ({} locked, {} keyed, {} corrupting, {} failing boot) talking to {} edges at {} B/s; Ctrl-C stops",
            a.first_id,
            last,
            a.locked,
            keyed,
            a.corrupt,
            a.fail_boot,
            addrs.len(),
            a.link_rate
        );
    }
    match a.for_s {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    let metas = devices.stop().await;
    if !json {
        for m in metas.values() {
            println!(
                "{} {} {} locked={} {:?}",
                m.id, m.firmware_type, m.version, m.locked, m.mode
            );
        }
    }
    Ok(())
}
