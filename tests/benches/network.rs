//! Network benchmarks (a bench binary that prints a table; run with
//! `cargo bench -p agora-tests --bench network`):
//! - gossip time-to-all-nodes for 10, 50 and 100 in-process nodes (p50/p99);
//! - idle RSS of one `agora node run` process with 10 peers (an 11-node process devnet).
//!
//! Set `AGORA_BENCH_SIZES=10,50` to choose sizes, `AGORA_BENCH_MESSAGES` for messages per size,
//! `AGORA_BENCH_COMMITTEE` for the arbitrator committee size (default 4; `0` = every node up to
//! `3f+1`, as `agora devnet up` does), `AGORA_BENCH_TARGET_PEERS` for the node's auto-dial target,
//! `AGORA_BENCH_PRESENCE_MS` for the heartbeat interval to watched peers (timeout 4×; default
//! the devnet's 250 ms), `AGORA_BENCH_IDLE_PING_MS` for the ping on every connection (the node's
//! default), `AGORA_BENCH_HEARTBEAT_MS` for the gossipsub heartbeat (default the
//! node's, 500 ms), `AGORA_BENCH_SETTLE_SECS` for the wait after the mesh forms (35: past the 30 s grace after which
//! spare connections are trimmed), `AGORA_BENCH_IDLE_SECS` for the idle window measured before
//! the messages (3), `AGORA_BENCH_VERBOSE` to print every latency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_devnet::Devnet;
use agora_network::{Interest, NetworkEvent};
use agora_wire::codec::Kind;

const TOPIC: &str = "agora/bench/1";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// CPU seconds (user + system) this process used so far (Linux, 100 ticks/s).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based over the whole line).
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// Loopback (bytes, packets) received so far.
fn loopback() -> (u64, u64) {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    dev.lines()
        .find_map(|l| l.trim().strip_prefix("lo:"))
        .map(|rest| {
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            (
                f.first().copied().unwrap_or(0),
                f.get(1).copied().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

/// Cores busy (CPU seconds per wall second) over `window`.
async fn cores_busy(window: Duration) -> f64 {
    let (c0, t0) = (cpu_secs(), Instant::now());
    tokio::time::sleep(window).await;
    (cpu_secs() - c0) / t0.elapsed().as_secs_f64()
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// One size's result.
struct Outcome {
    p50: f64,
    p90: f64,
    p99: f64,
    delivered: f64,
    idle_cores: f64,
    busy_cores: f64,
}

async fn gossip_time_to_all(n: usize, messages: usize) -> Outcome {
    let mut builder = Devnet::builder().nodes(n);
    match env_usize("AGORA_BENCH_COMMITTEE").unwrap_or(4) {
        0 => {}
        k => builder = builder.committee(k),
    }
    if let Some(t) = env_usize("AGORA_BENCH_TARGET_PEERS") {
        builder = builder.target_peers(t);
    }
    if let Some(ms) = env_usize("AGORA_BENCH_PRESENCE_MS") {
        let ms = ms as u64;
        builder = builder.presence(Duration::from_millis(ms), Duration::from_millis(4 * ms));
    }
    if let Some(ms) = env_usize("AGORA_BENCH_IDLE_PING_MS") {
        builder = builder.idle_ping(Duration::from_millis(ms as u64));
    }
    // The node's own gossipsub heartbeat (as `agora node run` uses), not the test devnet's
    // faster one, unless asked.
    let heartbeat = env_usize("AGORA_BENCH_HEARTBEAT_MS")
        .map(|ms| Duration::from_millis(ms as u64))
        .unwrap_or(agora_network::NetworkConfig::default().gossip_heartbeat);
    builder = builder.gossip_heartbeat(heartbeat);
    let net = builder.spawn().await.expect("devnet");
    net.wait_connected(n.min(4) - 1, Duration::from_secs(60))
        .await
        .expect("connected");
    // receipts[msg] = (count, last arrival)
    let receipts: Arc<Mutex<HashMap<u64, (usize, Instant)>>> = Arc::default();
    for i in 0..n {
        let h = net.handle(i).unwrap();
        h.subscribe(TOPIC).await.unwrap();
        let mut rx = h.inbox(Interest::new("bench").topic(TOPIC));
        let receipts = receipts.clone();
        tokio::spawn(async move {
            loop {
                let ev = rx.recv().await;
                if let NetworkEvent::Gossip { envelope, .. } = ev
                    && let Ok(b) = <[u8; 8]>::try_from(envelope.payload.as_slice())
                {
                    let id = u64::from_le_bytes(b);
                    let now = Instant::now();
                    let mut r = receipts.lock().unwrap();
                    let e = r.entry(id).or_insert((0, now));
                    e.0 += 1;
                    e.1 = now;
                }
            }
        });
    }
    // Warm up until the mesh delivers to everyone.
    let mut warm = 1_000_000u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        warm += 1;
        let _ = net
            .handle(0)
            .unwrap()
            .broadcast(TOPIC, Kind::Raw, warm.to_le_bytes().to_vec())
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let done = receipts
            .lock()
            .unwrap()
            .get(&warm)
            .map(|e| e.0)
            .unwrap_or(0);
        if done >= n - 1 || Instant::now() > deadline {
            break;
        }
    }
    // What the idle devnet (pings, gossipsub heartbeats, consensus) costs before any payload.
    let idle_secs = env_usize("AGORA_BENCH_IDLE_SECS").unwrap_or(3) as u64;
    let topics: Arc<Mutex<HashMap<String, (usize, usize)>>> = Arc::default();
    {
        // A copy of every gossip topic node 0 reads (requests go to their one owner only).
        let mut interest = Interest::new("bench tap").topic(TOPIC);
        use agora_wire::topics::{BLOCKS_TOPIC, CONSENSUS_TOPIC, RADIO_TOPIC, TX_TOPIC};
        for t in [TX_TOPIC, CONSENSUS_TOPIC, BLOCKS_TOPIC, RADIO_TOPIC] {
            interest = interest.topic(t);
        }
        let mut rx = net.handle(0).unwrap().inbox(interest);
        let topics = topics.clone();
        tokio::spawn(async move {
            loop {
                let ev = rx.recv().await;
                if let NetworkEvent::Gossip {
                    topic, envelope, ..
                }
                | NetworkEvent::GossipToJudge {
                    topic, envelope, ..
                } = ev
                {
                    let mut t = topics.lock().unwrap();
                    let e = t.entry(topic).or_default();
                    e.0 += 1;
                    e.1 += envelope.payload.len();
                }
            }
        });
    }
    // Let the network settle as a long-running one would: spare connections are trimmed once
    // they are older than the node's grace period (30 s).
    let settle = env_usize("AGORA_BENCH_SETTLE_SECS").unwrap_or(35) as u64;
    tokio::time::sleep(Duration::from_secs(settle)).await;
    println!("  {n} nodes: connected, meshed, settled {settle} s; measuring {idle_secs} s of idle");
    topics.lock().unwrap().clear();
    let ((b0, p0), t0) = (loopback(), Instant::now());
    let idle_cores = cores_busy(Duration::from_secs(idle_secs)).await;
    let ((b1, p1), secs) = (loopback(), t0.elapsed().as_secs_f64());
    let peers = net
        .handle(0)
        .unwrap()
        .peers()
        .await
        .map(|p| p.len())
        .unwrap_or(0);
    println!(
        "  {n} nodes idle: loopback {:.0} packets/s, {:.2} MB/s; node0 has {peers} peers, \
         receives gossip (topic, messages/s, payload bytes/s) {:?}",
        (p1 - p0) as f64 / secs,
        (b1 - b0) as f64 / secs / 1e6,
        topics
            .lock()
            .unwrap()
            .iter()
            .map(|(t, (c, b))| {
                (
                    t.clone(),
                    (*c as f64 / secs).round(),
                    (*b as f64 / secs).round(),
                )
            })
            .collect::<Vec<_>>()
    );
    let (cpu0, wall0) = (cpu_secs(), Instant::now());
    let mut latencies = Vec::new();
    let mut missing = Vec::new();
    for m in 0..messages as u64 {
        let sender = (m as usize * 7) % n;
        let start = Instant::now();
        // A node whose peers' subscriptions have not reached it yet cannot publish; retrying
        // counts against the latency, as it would for a user.
        let h = net.handle(sender).unwrap();
        while h
            .broadcast(TOPIC, Kind::Raw, m.to_le_bytes().to_vec())
            .await
            .is_err()
            && start.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let deadline = start + Duration::from_secs(5);
        loop {
            let got = receipts.lock().unwrap().get(&m).copied();
            if let Some((count, last)) = got
                && count >= n - 1
            {
                latencies.push(last.duration_since(start).as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                latencies.push(f64::INFINITY);
                missing.push(n - 1 - got.map(|g| g.0).unwrap_or(0).min(n - 1));
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy_cores = (cpu_secs() - cpu0) / wall0.elapsed().as_secs_f64();
    if !missing.is_empty() {
        println!("  {n} nodes: receivers missing per undelivered message: {missing:?}");
    }
    net.shutdown().await;
    if std::env::var("AGORA_BENCH_VERBOSE").is_ok() {
        let shown: Vec<String> = latencies.iter().map(|l| format!("{l:.0}")).collect();
        println!(
            "  {n} nodes: latencies in send order (ms): {}",
            shown.join(" ")
        );
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let delivered = latencies.iter().filter(|l| l.is_finite()).count() as f64 / messages as f64;
    Outcome {
        p50: percentile(&latencies, 0.5),
        p90: percentile(&latencies, 0.9),
        p99: percentile(&latencies, 0.99),
        delivered: delivered * 100.0,
        idle_cores,
        busy_cores,
    }
}

fn rss_kib(pid: u64) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn idle_rss_with_10_peers() -> Option<(u64, usize)> {
    let tmp = tempfile::tempdir().ok()?;
    let dir = tmp.path().join("net");
    let dir_s = dir.display().to_string();
    let _guard = agora_tests::DevnetGuard(dir.clone());
    let up = agora_tests::agora_json(&[
        "devnet",
        "up",
        "--nodes",
        "11",
        "--dir",
        &dir_s,
        "--timeout",
        "120",
    ]);
    let pid = up["nodes"][0]["pid"].as_u64()?;
    std::thread::sleep(Duration::from_secs(10));
    let node0 = dir.join("node0").display().to_string();
    let peers = agora_tests::agora_json(&["peers", "--data-dir", &node0]);
    let rss = rss_kib(pid)?;
    Some((rss, peers.as_array().map(|a| a.len()).unwrap_or(0)))
}

fn main() {
    let sizes: Vec<usize> = std::env::var("AGORA_BENCH_SIZES")
        .unwrap_or_else(|_| "10,50,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let messages: usize = std::env::var("AGORA_BENCH_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("gossip time-to-all-nodes ({messages} messages per size, in-process, loopback TCP)");
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11}",
        "nodes", "p50 ms", "p90 ms", "p99 ms", "delivered", "idle cores", "busy cores"
    );
    for n in sizes {
        let o = rt.block_on(gossip_time_to_all(n, messages));
        println!(
            "{n:>6} {:>10.2} {:>10.2} {:>10.2} {:>9.0}% {:>11.2} {:>11.2}",
            o.p50, o.p90, o.p99, o.delivered, o.idle_cores, o.busy_cores
        );
    }
    if std::env::var("AGORA_BENCH_SKIP_RSS").is_err() {
        match idle_rss_with_10_peers() {
            Some((rss, peers)) => println!(
                "idle RSS of one `agora node run` with {peers} peers: {:.1} MiB",
                rss as f64 / 1024.0
            ),
            None => println!("idle RSS: could not measure"),
        }
    }
}
