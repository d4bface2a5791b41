//! Edges behind real NAT (issue #17), on real `agora` processes in the netlab
//! (`scripts/netlab.sh`: network namespaces, nftables masquerade routers, one "internet" bridge).
//!
//! - Cone NATs: a public relay node and two edges in separate homes. Each edge's AutoNAT finds
//!   it private, so it reserves a slot on the relay; the second edge connects to the first
//!   through the relay, and DCUtR hole-punches a direct connection (asserted from
//!   `agora peers --json`: `direct`), after which the relayed one is closed.
//! - Symmetric NATs: the same, but the hole punch fails; the edges stay on the relay and still
//!   exchange content (bitswap over the circuit) and presence.
//!
//! Needs root, network namespaces and nftables: otherwise prints `SKIPPED nat: <reason>` and
//! returns. The lab (and every process in it) is torn down by a guard in every path; its prefix
//! carries the test's pid, and a lab left with that prefix by a crashed run (whose pid the
//! system has reused) is removed first.
//!
//! Figures (printed, never asserted: speed targets are benchmarks): the time from the relayed
//! connection to the direct one, taken from edge 2's own log timestamps, and the round trip of
//! each path (`rtt_ms` from libp2p ping, every second here).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use agora_api::client::ApiClient;
use agora_api::ledger::BalanceReply;
use agora_contracts::ContractStatus;
use agora_devnet::demo::Story;
use agora_devnet::files::{CONTRACT_NODES, DevnetNode};
use agora_devnet::process::{UpOptions, up_with_options};
use agora_network::PeerInfo;
use agora_tests::natlab::NatLab;
use agora_tests::{agora_bin, wait_for};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
const RELAY_IP: &str = "203.0.113.2";

fn netlab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netlab.sh")
}

/// A lab brought up for one test; `down` (which also kills every process in it) on drop.
struct Lab {
    prefix: String,
    nodes: Vec<Child>,
}

impl Lab {
    /// Brings up a lab with two homes behind `nat`, or `Err(reason)` when it cannot run here.
    fn up(tag: &str, nat: &str) -> Result<Lab, String> {
        let prefix = format!("n{tag}{}", std::process::id());
        // A lab with this prefix can only be a crashed run's whose pid has been reused.
        let _ = Command::new("bash")
            .arg(netlab_script())
            .args(["--prefix", &prefix, "down"])
            .output();
        let out = Command::new("bash")
            .arg(netlab_script())
            .args(["--prefix", &prefix, "up", "--homes", "2", "--nat", nat])
            .output()
            .map_err(|e| format!("cannot run netlab.sh: {e}"))?;
        let lab = Lab {
            prefix,
            nodes: Vec::new(),
        };
        if out.status.code() == Some(77) {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        assert!(
            out.status.success(),
            "netlab up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(lab)
    }

    /// `cmd` run inside namespace `ns` (`pub`, `h1`, `h2`).
    fn exec(&self, ns: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(netlab_script())
            .args(["--prefix", &self.prefix, "exec", ns, "--"]);
        c
    }

    /// `agora ARGS --json` inside `ns`, parsed; `None` if it failed.
    fn agora_json(&self, ns: &str, args: &[&str]) -> Option<Value> {
        let out = self.agora(ns, args, true);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn agora(&self, ns: &str, args: &[&str], json: bool) -> Output {
        let mut c = self.exec(ns);
        c.arg(agora_bin()).args(args);
        if json {
            c.arg("--json");
        }
        match c.output() {
            Ok(o) => o,
            Err(e) => panic!("cannot run agora in {ns}: {e}"),
        }
    }

    /// Initialises `dir` for the lab (AutoNAT may probe the lab's reserved addresses, pings
    /// every second so round trips are measured) and starts `agora node run ARGS` in `ns`.
    fn start_node(&mut self, ns: &str, dir: &Path, args: &[String]) {
        let d = dir.display().to_string();
        let out = self.agora(ns, &["init", "--data-dir", &d], true);
        assert!(out.status.success(), "init {d}: {out:?}");
        let cfg_path = dir.join("config.toml");
        let cfg = std::fs::read_to_string(&cfg_path).expect("config.toml");
        let edited = cfg
            .replace(
                "autonat_only_global_ips = true",
                "autonat_only_global_ips = false",
            )
            .replace(
                "idle_ping_interval_ms = 15000",
                "idle_ping_interval_ms = 1000",
            );
        assert!(
            edited.contains("autonat_only_global_ips = false")
                && edited.contains("idle_ping_interval_ms = 1000"),
            "config.toml has another shape:\n{cfg}"
        );
        std::fs::write(&cfg_path, edited).expect("write config.toml");
        let log = std::fs::File::create(dir.with_extension("log")).expect("log file");
        let child = self
            .exec(ns)
            .arg(agora_bin())
            .args([
                "node",
                "run",
                "--data-dir",
                &d,
                "--api-listen",
                "127.0.0.1:7700",
            ])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("NAT_RUST_LOG").unwrap_or_else(|_| "info,libp2p_dcutr=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agora node run");
        self.nodes.push(child);
    }

    fn status(&self, ns: &str, dir: &Path) -> Option<Value> {
        self.agora_json(ns, &["status", "--data-dir", &dir.display().to_string()])
    }

    /// The peer `peer_id` as `agora peers --json` in `ns` reports it.
    fn peer(&self, ns: &str, dir: &Path, peer_id: &str) -> Option<Value> {
        let peers = self.agora_json(ns, &["peers", "--data-dir", &dir.display().to_string()])?;
        peers
            .as_array()?
            .iter()
            .find(|p| p["peer_id"] == peer_id)
            .cloned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("bash")
            .arg(netlab_script())
            .args(["--prefix", &self.prefix, "down"])
            .output();
    }
}

/// A relay on the public node and an edge in each home, both holding a relay slot; the second
/// edge connected to the first through the relay. Returns the lab, the data dirs and edge 1's
/// peer id.
struct Scene {
    lab: Lab,
    tmp: tempfile::TempDir,
    e1: PathBuf,
    e2: PathBuf,
    e1_peer: String,
}

impl Scene {
    /// Edge 2's log, without colour codes.
    fn e2_log(&self) -> String {
        let raw = std::fs::read_to_string(self.e2.with_extension("log")).unwrap_or_default();
        strip_ansi(&raw)
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Milliseconds since midnight (UTC) of the timestamp that starts the first line of `log`
/// containing every one of `needles` (`2026-12-02T07:59:08.354548Z ...`).
fn log_time_ms(log: &str, needles: &[&str]) -> Option<u64> {
    let line = log
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))?;
    let time = line.split_whitespace().next()?.split('T').nth(1)?;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    let secs: f64 = s.parse().ok()?;
    let h: u64 = h.parse().ok()?;
    let m: u64 = m.parse().ok()?;
    Some((h * 3600 + m * 60) * 1000 + (secs * 1000.0) as u64)
}

impl Drop for Scene {
    /// On failure, the nodes' logs say why (the temp dir goes with the scene).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for name in ["relay", "edge1", "edge2"] {
            let log = self.tmp.path().join(format!("{name}.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {name}.log (last 60 lines)");
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
    }
}

fn scene(tag: &str, nat: &str) -> Option<Scene> {
    let mut lab = match Lab::up(tag, nat) {
        Ok(lab) => lab,
        Err(reason) => {
            agora_devnet::skipped("nat", &reason);
            return None;
        }
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (relay, e1, e2) = (
        tmp.path().join("relay"),
        tmp.path().join("edge1"),
        tmp.path().join("edge2"),
    );
    let tcp = format!("/ip4/{RELAY_IP}/tcp/4001");
    let quic = format!("/ip4/{RELAY_IP}/udp/4001/quic-v1");
    lab.start_node(
        "pub",
        &relay,
        &[
            "--relay".into(),
            "--listen".into(),
            tcp.clone(),
            "--listen".into(),
            quic.clone(),
            "--external".into(),
            tcp.clone(),
            "--external".into(),
            quic.clone(),
        ],
    );
    let relay_peer = wait_for("the relay's status", WAIT, || lab.status("pub", &relay))["peer_id"]
        .as_str()
        .expect("peer_id")
        .to_string();
    let edge_args = vec![
        "--listen".to_string(),
        "/ip4/0.0.0.0/tcp/4001".into(),
        "--listen".into(),
        "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
        "--bootstrap".into(),
        format!("{tcp}/p2p/{relay_peer}"),
        "--bootstrap".into(),
        format!("{quic}/p2p/{relay_peer}"),
    ];
    lab.start_node("h1", &e1, &edge_args);
    lab.start_node("h2", &e2, &edge_args);
    for (ns, dir) in [("h1", &e1), ("h2", &e2)] {
        let st = wait_for(&format!("{ns} private with a relay slot"), WAIT, || {
            lab.status(ns, dir).filter(|s| {
                s["stats"]["nat_status"] == "private"
                    && s["stats"]["relay_reservations_held"].as_u64() >= Some(1)
            })
        });
        eprintln!("{ns}: {}", st["stats"]);
    }
    let e1_peer = lab.status("h1", &e1).expect("edge1 status")["peer_id"]
        .as_str()
        .expect("peer_id")
        .to_string();
    // Edge 2 reaches edge 1 the only way it can: through the relay on the public node.
    let circuit = format!("{quic}/p2p/{relay_peer}/p2p-circuit/p2p/{e1_peer}");
    let e2s = e2.display().to_string();
    let connect_started = Instant::now();
    let out = lab.agora(
        "h2",
        &["peers", "connect", &circuit, "--data-dir", &e2s],
        true,
    );
    assert!(
        out.status.success(),
        "connect through the relay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "NAT {nat}: `agora peers connect` through the relay returned after {} ms",
        connect_started.elapsed().as_millis()
    );
    Some(Scene {
        lab,
        tmp,
        e1,
        e2,
        e1_peer,
    })
}

#[test]
fn edges_behind_cone_nats_meet_through_the_relay_and_hole_punch_to_direct() {
    let Some(s) = scene("c", "cone") else { return };
    // The relayed connection is closed once the direct one exists.
    let peer = wait_for(
        "a direct connection from edge 2 to edge 1, the relayed one closed",
        WAIT,
        || {
            s.lab
                .peer("h2", &s.e2, &s.e1_peer)
                .filter(|p| p["direct"] == true && p["relayed"] == false)
        },
    );
    let e1 = s.lab.status("h1", &s.e1).expect("edge1 status");
    let e2 = s.lab.status("h2", &s.e2).expect("edge2 status");
    let punched = e1["stats"]["hole_punch_succeeded"].as_u64().unwrap_or(0)
        + e2["stats"]["hole_punch_succeeded"].as_u64().unwrap_or(0);
    assert!(punched >= 1, "no hole punch counted: {e1} {e2}");
    let addr = peer["addr"].as_str().unwrap_or_default();
    assert!(
        addr.starts_with("/ip4/203.0.113.11/"),
        "edge 2 reaches edge 1 at its router's public address: {peer}"
    );
    // Edge 2's own clock: relayed connection opened -> hole punch succeeded.
    let log = s.e2_log();
    let relayed = log_time_ms(&log, &["relayed connection opened", &s.e1_peer]);
    let direct = log_time_ms(&log, &["hole punch succeeded", &s.e1_peer]);
    let to_direct = match (relayed, direct) {
        (Some(r), Some(d)) => format!("{} ms", d.saturating_sub(r)),
        _ => "? (log lines missing)".into(),
    };
    // Round trips once ping has measured the direct path.
    let rtt = wait_for("a round trip on the direct connection", WAIT, || {
        s.lab.peer("h2", &s.e2, &s.e1_peer)?["rtt_ms"].as_u64()
    });
    eprintln!(
        "NAT cone: relayed -> direct in {to_direct} (edge 2's log); direct path {addr}; \
         direct rtt {rtt} ms"
    );
}

#[test]
fn edges_behind_symmetric_nats_stay_on_the_relay_and_still_exchange_content() {
    let Some(s) = scene("s", "symmetric") else {
        return;
    };
    let peer = wait_for("edge 2 connected to edge 1 through the relay", WAIT, || {
        s.lab
            .peer("h2", &s.e2, &s.e1_peer)
            .filter(|p| p["relayed"] == true)
    });
    // DCUtR tries and fails (endpoint-dependent mapping on both sides).
    wait_for("a failed hole punch", WAIT, || {
        let f = |ns: &str, dir: &Path| {
            s.lab
                .status(ns, dir)
                .and_then(|st| st["stats"]["hole_punch_failed"].as_u64())
        };
        let failed = f("h1", &s.e1).unwrap_or(0) + f("h2", &s.e2).unwrap_or(0);
        (failed >= 1).then_some(())
    });
    let now = s
        .lab
        .peer("h2", &s.e2, &s.e1_peer)
        .expect("still connected");
    assert_eq!(now["direct"], false, "{now}");
    assert_eq!(now["relayed"], true, "{now}");
    // Content over the circuit: edge 1 adds a file, edge 2 fetches it by CID.
    let file = s.e1.with_extension("bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).expect("write");
    let e1s = s.e1.display().to_string();
    let added = s
        .lab
        .agora_json(
            "h1",
            &[
                "storage",
                "add",
                &file.display().to_string(),
                "--data-dir",
                &e1s,
            ],
        )
        .expect("storage add");
    let cid = added["cid"].as_str().expect("cid").to_string();
    let out_file = s.e2.with_extension("out");
    let e2s = s.e2.display().to_string();
    let started = Instant::now();
    let got = s.lab.agora(
        "h2",
        &[
            "storage",
            "get",
            &cid,
            "--output",
            &out_file.display().to_string(),
            "--timeout",
            "60",
            "--data-dir",
            &e2s,
        ],
        true,
    );
    assert!(
        got.status.success(),
        "fetch over the relay: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(std::fs::read(&out_file).expect("fetched file"), data);
    let presence = s
        .lab
        .agora_json("h2", &["presence", "--data-dir", &e2s])
        .expect("presence");
    eprintln!(
        "NAT symmetric: relayed peer {peer}; 200 kB over the relay in {} ms; relayed rtt_ms {}; presence {presence}",
        started.elapsed().as_millis(),
        now["rtt_ms"]
    );
}

// ---------------------------------------------------------------------------------------------
// A contract devnet across two NATs (`agora_tests::natlab`): five public nodes (arbitrators,
// as the edges are too; each public one declares an external address, so it serves a light
// relay v2 by default; node 0, everyone's bootstrap peer, is the edges' relay), edge B
// (node 5) behind NAT 2 and customer edge A (node 6) behind NAT 1, each node's control API and
// radio on a management veth the test reaches from the root namespace.

/// Prints the tail of every node's log when a devnet test fails (the temp dir goes with it).
struct LogsOnPanic(PathBuf, usize);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for i in 0..self.1 {
            let log = self.0.join(format!("node{i}")).join("node.log");
            let text = strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- node{i}/node.log (last 40 lines)");
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

/// The NAT lab for a contract devnet, or `None` (after printing why) when it cannot run here.
fn contract_lab(nat: &str) -> Option<std::sync::Arc<NatLab>> {
    match NatLab::up(CONTRACT_NODES, 2, nat, agora_bin()) {
        Ok(lab) => Some(std::sync::Arc::new(lab)),
        Err(reason) => {
            agora_devnet::skipped("nat", &reason);
            None
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `secs`.
async fn poll<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn client(n: &DevnetNode) -> ApiClient {
    ApiClient::for_data_dir(&n.data_dir).expect("control API address")
}

/// How `from` reaches `to` (`agora peers`), once connected.
async fn path(from: &DevnetNode, to: &DevnetNode) -> Option<PeerInfo> {
    let peers = client(from).peers().await.ok()?;
    peers
        .into_iter()
        .find(|p| p.node_id.as_deref() == Some(to.node_id.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_devnet_across_two_cone_nats_connects_and_finalises_an_edges_transfer() {
    let _serial = SERIAL.lock().await;
    let Some(lab) = contract_lab("cone") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("net");
    let _logs = LogsOnPanic(dir.clone(), CONTRACT_NODES);
    let started = Instant::now();
    // Returns once every node has all six others as peers (the two edges included: they find
    // each other through the public nodes and connect through the relay) and is ready.
    let m = up_with_options(
        &dir,
        CONTRACT_NODES,
        Duration::from_secs(180),
        UpOptions::default(),
        lab.as_ref(),
    )
    .await
    .expect("devnet up in the NAT lab");
    let (a, b) = (&m.nodes[CONTRACT_NODES - 1], &m.nodes[CONTRACT_NODES - 2]);
    eprintln!(
        "NAT lab devnet: {} nodes connected and ready in {} ms",
        m.nodes.len(),
        started.elapsed().as_millis()
    );
    for (edge, home) in [(a, 1), (b, 2)] {
        // AutoNAT's verdict may come after the node is connected and ready (a peer can dial
        // the edge through the other edge's relay slot before the edge has its own).
        let st = poll(
            &format!(
                "{} found private by AutoNAT, holding a relay slot",
                edge.name
            ),
            60,
            async || {
                client(edge).status().await.ok().filter(|s| {
                    s.stats.nat_status == "private" && s.stats.relay_reservations_held >= 1
                })
            },
        )
        .await;
        // Beside its relay reservations (`…/p2p-circuit`, listen addresses too).
        assert!(
            st.p2p_addrs
                .iter()
                .filter(|a| !a.contains("/p2p-circuit"))
                .all(|a| a.contains(&format!("/192.168.{home}.2/"))),
            "an edge listens only on its LAN address: {:?}",
            st.p2p_addrs
        );
    }
    // Node 0 serves (the light) relay v2 only because it is an arbitrator with an external
    // address (the lab leaves `[network] relay_server` unset): both edges' slots are on it.
    let relay = client(&m.nodes[0]).status().await.expect("node0's status");
    assert!(
        relay.stats.relay_reservations_accepted >= 2,
        "node0 accepted both edges' reservations: {} accepted, {} refused",
        relay.stats.relay_reservations_accepted,
        relay.stats.relay_reservations_denied
    );
    // The public nodes see each edge at its router's public address.
    let seen = path(&m.nodes[1], a).await.expect("node1 is connected to A");
    assert!(
        seen.addr.contains(&format!("/{}/", NatLab::router_ip(1))),
        "node1 reaches A through NAT 1: {seen:?}"
    );
    // The edges found each other through the public nodes, met through the relay and
    // hole-punched (cone NATs): a direct connection, the relayed one closed.
    let ab = poll(
        "a direct connection from A to B, none relayed",
        60,
        async || path(a, b).await.filter(|p| p.direct && !p.relayed),
    )
    .await;
    eprintln!("A -> B: {ab:?}");
    // A transfer sent by edge A is final on every replica.
    let before: Vec<u64> = futures_balances(&m.nodes, &b.node_id).await;
    let submitted: serde_json::Value = client(a)
        .post(
            "/v1/ledger/transfer",
            &serde_json::json!({ "to": b.node_id, "amount": 250 }),
        )
        .await
        .expect("A submits a transfer");
    let sent = Instant::now();
    for (n, was) in m.nodes.iter().zip(before) {
        poll(
            &format!("the transfer final on {}", n.name),
            60,
            async || {
                let bal = balance(n, &b.node_id).await?;
                (bal >= was + 250).then_some(())
            },
        )
        .await;
    }
    eprintln!(
        "NAT lab devnet: A's transfer {submitted} final on all {} replicas {} ms after submission",
        m.nodes.len(),
        sent.elapsed().as_millis()
    );
    agora_devnet::process::down(&m.dir, false)
        .await
        .expect("devnet down");
}

async fn balance(n: &DevnetNode, who: &str) -> Option<u64> {
    let r: BalanceReply = client(n)
        .get(&format!("/v1/ledger/accounts/{who}"))
        .await
        .ok()?;
    Some(r.balance)
}

async fn futures_balances(nodes: &[DevnetNode], who: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(
            poll(
                &format!("{}'s balance on {}", who, n.name),
                30,
                async || balance(n, who).await,
            )
            .await,
        );
    }
    out
}

/// One contract devnet at a time: seven nodes each on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The flagship story across NATs (issue #17), both homes behind `nat`: customer A buys a standby contract that edge B wins; B stages A's image by bitswap over
/// the edge-to-edge path (hole-punched behind cone NATs, the relay's circuit behind symmetric
/// ones); A is killed, the public arbitrators attest it, B runs A's service on A's sensors,
/// A comes back, the contract settles and B is paid; no reading is lost or processed twice.
///
/// The simulated sensors run in the test process (root namespace) and reach every node's
/// radio over its management veth, like a LoRa radio both edges hear.
async fn handover_across_nats(nat: &str) {
    let Some(lab) = contract_lab(nat) else {
        return;
    };
    let module = agora_devnet::demo::module_bytes(None)
        .expect("lora-gateway module (rustup target add wasm32-wasip1)");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("net");
    let _logs = LogsOnPanic(dir.clone(), CONTRACT_NODES);
    let started = Instant::now();
    let mut s = Story::start_with(
        &dir,
        CONTRACT_NODES,
        &module,
        lab.clone(),
        true,
        UpOptions::default(),
    )
    .await
    .expect("the story starts in the NAT lab");
    assert_eq!(lab.home(s.a), Some(1), "A is the edge behind NAT 1");
    let up_ms = started.elapsed().as_millis();

    // 2–6: the standby auction, won by the only other bidder, edge B behind NAT 2.
    let armed = s.standby().await.expect("standby contract armed");
    assert_eq!(lab.home(armed.b), Some(2), "B is the edge behind NAT 2");
    let (an, bn) = (s.m.nodes[s.a].clone(), s.m.nodes[armed.b].clone());
    let timeline: Value = client(&bn).get("/v1/timeline").await.expect("B's timeline");
    let staged = timeline
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["phase"] == "staged" && e["contract"] == armed.id.as_str());
    assert!(staged.is_some(), "B staged A's image: {timeline}");
    // B fetched the image from A, the only node holding it, over the edge-to-edge path:
    // hole-punched behind cone NATs, the relay's circuit behind symmetric ones.
    let ba = if nat == "cone" {
        poll("a direct path from B to A, none relayed", 30, async || {
            path(&bn, &an).await.filter(|p| p.direct && !p.relayed)
        })
        .await
    } else {
        let p = path(&bn, &an).await.expect("B is connected to A");
        assert!(
            p.relayed && !p.direct,
            "relay only behind symmetric NATs: {p:?}"
        );
        p
    };
    let (sa, sb) = (
        client(&an).status().await.expect("A status").stats,
        client(&bn).status().await.expect("B status").stats,
    );
    if nat != "cone" {
        assert_eq!(
            sa.hole_punch_succeeded + sb.hole_punch_succeeded,
            0,
            "no punch through symmetric NATs"
        );
    }
    eprintln!(
        "NAT {nat}: devnet up in {up_ms} ms; contract {} armed on B; B -> A direct {} relayed {} \
         (rtt {:?} ms); hole punches ok/failed: A {}/{}, B {}/{}",
        armed.id,
        ba.direct,
        ba.relayed,
        ba.rtt_ms,
        sa.hole_punch_succeeded,
        sa.hole_punch_failed,
        sb.hole_punch_succeeded,
        sb.hole_punch_failed
    );

    // 7: A fails for real; the public arbitrators attest it and B takes over.
    let obs = (0..CONTRACT_NODES)
        .find(|i| !lab.is_edge(*i))
        .expect("a public node");
    let provider = armed.rec.contract.provider.to_string();
    let before = s
        .account(obs, &provider)
        .await
        .expect("B's account")
        .balance;
    let killed = s.kill(s.a).expect("kill A");
    let split = s.failover(&armed, killed).await.expect("B takes over");
    s.wait_contract(obs, &armed.id, "B's first heartbeat", 30, |r| {
        r.uptime_ms > 0
    })
    .await
    .expect("B's service on the record");
    s.restart(s.a).await.expect("A restarts behind its NAT");
    let done = s
        .wait_contract(obs, &armed.id, "settlement", 60, |r| r.status.is_final())
        .await
        .expect("the contract settles");
    assert_eq!(done.status, ContractStatus::Settled, "{done:?}");
    assert!(done.paid_to_provider > 0, "B is paid: {done:?}");
    let after = s
        .account(obs, &provider)
        .await
        .expect("B's account")
        .balance;
    assert!(after > before, "B's balance grows: {before} -> {after}");
    s.a_resumed().await.expect("A takes its sensors back");
    let cov = s.coverage(armed.b).await;
    assert_eq!(cov.missing, 0, "{cov:?}");
    assert_eq!(cov.duplicated, 0, "{cov:?}");
    eprintln!(
        "NAT {nat}: failover {split:?}; B paid {} of {} tokens",
        done.paid_to_provider, done.contract.payment
    );
    s.down(true).await.expect("devnet down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_contract_between_edges_behind_cone_nats_hands_over_and_pays_b() {
    let _serial = SERIAL.lock().await;
    handover_across_nats("cone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_contract_between_edges_behind_symmetric_nats_hands_over_over_the_relay() {
    let _serial = SERIAL.lock().await;
    handover_across_nats("symmetric").await;
}
