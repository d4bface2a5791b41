//! Helpers for end-to-end tests that drive real `agora` processes, and the [`adversary`]: hostile
//! peers that attack them.
#![forbid(unsafe_code)]

pub mod adversary;
pub mod bench;
pub mod devices;
pub mod fleet;
pub mod natlab;
pub mod netns;
pub mod sensor;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `bash scripts/SCRIPT ARGS… AGORA` (the `agora` binary of this test run last) from the
/// repository root under `timeout SECS`, with `TMPDIR` set to `tmp` and `env` added, as a
/// measurement script's test does; panics with its output unless it succeeds, and returns its
/// stdout.
pub fn run_script(
    tmp: &Path,
    secs: u32,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("timeout")
        .arg(secs.to_string())
        .arg("bash")
        .arg(format!("scripts/{script}"))
        .args(args)
        .arg(agora_bin())
        .current_dir(&repo)
        .env("TMPDIR", tmp)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Panics when a process whose command line names `dir` still runs (a script's devnet left
/// behind).
pub fn assert_no_process_under(dir: &Path) {
    let running = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run pgrep: {e}"));
    assert!(
        running.stdout.is_empty(),
        "processes still running from {}: {}",
        dir.display(),
        String::from_utf8_lossy(&running.stdout)
    );
}

/// Path of the `agora` binary, building it first if this test run did not.
pub fn agora_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/agora
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bin = profile_dir.join("agora");
    if !bin.exists() {
        // Benches run from target/release: build the binary of the same profile.
        let mut args = vec!["build", "-p", "agora-node", "--bin", "agora"];
        if profile_dir.ends_with("release") {
            args.push("--release");
        }
        let status = Command::new(env!("CARGO")).args(&args).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "could not build the agora binary (cargo build -p agora-node)"
        );
    }
    bin
}

/// Runs `agora ARGS` and returns its output (never panics on a non-zero exit).
pub fn agora(args: &[&str]) -> Output {
    match Command::new(agora_bin()).args(args).output() {
        Ok(o) => o,
        Err(e) => panic_output(&e.to_string()),
    }
}

fn panic_output(reason: &str) -> Output {
    Output {
        status: std::process::ExitStatus::default(),
        stdout: Vec::new(),
        stderr: reason.as_bytes().to_vec(),
    }
}

/// Runs `agora ARGS --json`, asserts success and parses stdout.
pub fn agora_json(args: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let out = agora(&all);
    assert!(
        out.status.success(),
        "agora {:?} failed: {}{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Writes `body` (a Wasm or WAT module) to `module` and `manifest` (TOML) beside it as
/// `module.toml`, publishes them with `agora service publish --manifest` on the node at
/// `data_dir` and returns the image CID.
pub fn publish_service(data_dir: &str, module: &Path, body: &[u8], manifest: &str) -> String {
    let manifest_file = module.with_extension("toml");
    std::fs::write(module, body).unwrap_or_else(|e| panic!("writing {}: {e}", module.display()));
    std::fs::write(&manifest_file, manifest)
        .unwrap_or_else(|e| panic!("writing {}: {e}", manifest_file.display()));
    let published = agora_json(&[
        "service",
        "publish",
        &module.display().to_string(),
        "--manifest",
        &manifest_file.display().to_string(),
        "--data-dir",
        data_dir,
    ]);
    published["image"]
        .as_str()
        .unwrap_or_else(|| panic!("service publish printed no image: {published}"))
        .to_string()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Stops a devnet in `dir` when dropped, so a failing test leaves no processes behind.
#[derive(Debug)]
pub struct DevnetGuard(pub PathBuf);

impl Drop for DevnetGuard {
    fn drop(&mut self) {
        let dir = self.0.display().to_string();
        let _ = Command::new(agora_bin())
            .args(["devnet", "down", "--dir", &dir])
            .output();
    }
}

/// A devnet of real `agora` processes in a fresh temporary directory (`<tmp>/net`), started by
/// `agora devnet up --json` and brought down when dropped (before the directory is removed).
#[derive(Debug)]
pub struct TestDevnet {
    // Fields drop in declaration order: the nodes stop before their directory goes.
    _guard: DevnetGuard,
    /// The devnet directory (`--dir`).
    pub dir: PathBuf,
    /// What `agora devnet up --json` printed.
    pub up: serde_json::Value,
    tmp: tempfile::TempDir,
}

impl TestDevnet {
    /// `agora devnet up --nodes NODES --dir <tmp>/net --timeout TIMEOUT_SECS EXTRA…`; panics
    /// with the command's output when it fails.
    pub fn up(nodes: usize, timeout_secs: u64, extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let dir = tmp.path().join("net");
        let guard = DevnetGuard(dir.clone());
        let (nodes, dir_s, timeout) = (
            nodes.to_string(),
            dir.display().to_string(),
            timeout_secs.to_string(),
        );
        let mut args = vec![
            "devnet",
            "up",
            "--nodes",
            &nodes,
            "--dir",
            &dir_s,
            "--timeout",
            &timeout,
        ];
        args.extend_from_slice(extra);
        let up = agora_json(&args);
        Self {
            _guard: guard,
            dir,
            up,
            tmp,
        }
    }

    /// The devnet directory as a string (for `--dir`).
    pub fn dir_s(&self) -> String {
        self.dir.display().to_string()
    }

    /// Data directory of node `i` as a string (for `--data-dir`).
    pub fn node(&self, i: usize) -> String {
        self.dir.join(format!("node{i}")).display().to_string()
    }

    /// The nodes `agora devnet up` reported (name, pid, node_id, api, p2p, …).
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        self.up["nodes"].as_array().cloned().unwrap_or_default()
    }

    /// The temporary directory that holds the devnet, for a test's other files.
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }
}

impl Drop for TestDevnet {
    /// A failing test (or `AGORA_KEEP_DEVNET=1`) keeps the devnet directory, with every
    /// node's `node.log`, and says where it is; the nodes are still brought down.
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("AGORA_KEEP_DEVNET").is_some() {
            self.tmp.disable_cleanup(true);
            eprintln!(
                "devnet kept for inspection (node logs in nodeN/node.log): {}",
                self.dir.display()
            );
        }
    }
}

/// The demo's lora-gateway module, or `None` after saying `test` is skipped when this toolchain
/// has no wasm32-wasip1 target (`rustup target add wasm32-wasip1`; `scripts/test.sh` and CI
/// add it). With the target installed the module must build: a failure panics, so a test that
/// needs the module fails instead of skipping where the harness should have built it.
pub fn lora_module(test: &str) -> Option<Vec<u8>> {
    match agora_devnet::demo::module_bytes(None) {
        Ok(m) => Some(m),
        Err(e) if !wasm32_wasip1_installed() => {
            agora_devnet::skipped(
                test,
                &format!("no lora-gateway module ({e:#}); rustup target add wasm32-wasip1"),
            );
            None
        }
        Err(e) => panic!(
            "{test}: the wasm32-wasip1 target is installed but the lora-gateway module did not build: {e:#}"
        ),
    }
}

/// The demo's story on [`agora_devnet::files::CONTRACT_NODES`] real processes that `launcher`
/// starts, in a temp dir (returned: dropping it removes the devnet's files), A's service
/// running; `None` (after saying skipped) when the lora-gateway module cannot be built here.
pub async fn story(
    test: &str,
    launcher: std::sync::Arc<dyn agora_devnet::process::Launcher>,
) -> Option<(tempfile::TempDir, agora_devnet::demo::Story)> {
    let module = lora_module(test)?;
    let tmp = tempfile::tempdir().expect("a temp dir");
    let s = agora_devnet::demo::Story::start(
        &tmp.path().join("net"),
        agora_devnet::files::CONTRACT_NODES,
        &module,
        launcher,
        true,
    )
    .await
    .expect("story starts");
    Some((tmp, s))
}

/// Whether the toolchain that runs the tests has the wasm32-wasip1 standard library.
fn wasm32_wasip1_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            std::path::Path::new(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib/wasm32-wasip1")
                .is_dir()
        })
        .unwrap_or(false)
}

/// Polls `f` every 100 ms until it holds; panics naming `what` once `timeout` has passed.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    wait_for(what, timeout, || f().then_some(()))
}

/// Polls `f` every 100 ms until it returns something and returns that; panics naming `what`
/// once `timeout` has passed. For waits whose answer the test goes on to use (an event's data,
/// a peer's record), so that it is not fetched a second time after the wait.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The market events node `dir` has seen so far (`agora market watch --once --json`, one JSON
/// object a line), oldest first.
pub fn market_events(dir: &str) -> Vec<serde_json::Value> {
    let out = agora(&["market", "watch", "--once", "--json", "--data-dir", dir]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Whether node `dir` has seen `auction` (hex id) awarded.
pub fn awarded(dir: &str, auction: &str) -> bool {
    market_events(dir)
        .iter()
        .any(|v| v["kind"] == "awarded" && v["data"]["auction"] == auction)
}

/// Waits for the `data` of the first market event of node `dir` of `kind` that `f` accepts and
/// returns it; panics naming `what` once `timeout` has passed.
pub fn market_event(
    dir: &str,
    kind: &str,
    what: &str,
    timeout: std::time::Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(what, timeout, || {
        market_events(dir)
            .into_iter()
            .find(|e| e["kind"] == kind && f(&e["data"]))
            .map(|e| e["data"].clone())
    })
}

/// Whether the `error` of a market event's `data` contains every one of `parts`.
pub fn error_says(data: &serde_json::Value, parts: &[&str]) -> bool {
    data["error"]
        .as_str()
        .is_some_and(|e| parts.iter().all(|p| e.contains(p)))
}

/// Node `dir`'s contracts, as `agora contract list` shows them (none while it does not answer).
pub fn contracts(dir: &str) -> Vec<serde_json::Value> {
    try_agora_json(&["contract", "list", "--data-dir", dir])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// `agora auction create` on the node of a data dir, as the market's process tests open
/// auctions: hosted, 64 MiB, for ten minutes at most 100 tokens, its window closing in 2 s,
/// unless told otherwise.
#[derive(Debug, Clone)]
pub struct AuctionCli {
    dir: String,
    cpu: String,
    term: String,
    max_price: String,
    window: String,
    near: Option<String>,
    extra: Vec<String>,
}

impl AuctionCli {
    /// Node `dir` asks for `cpu` (`--cpu`: `500m`, `3000m`).
    pub fn new(dir: &str, cpu: &str) -> Self {
        AuctionCli {
            dir: dir.to_string(),
            cpu: cpu.to_string(),
            term: "10m".into(),
            max_price: "100".into(),
            window: "2s".into(),
            near: None,
            extra: Vec::new(),
        }
    }

    /// For `term` (`--duration`: `1m`, `10m`).
    pub fn term(mut self, term: &str) -> Self {
        self.term = term.to_string();
        self
    }

    /// At most `price` tokens (`--max-price`).
    pub fn max_price(mut self, price: impl std::fmt::Display) -> Self {
        self.max_price = price.to_string();
        self
    }

    /// Its bidding window closing in `window` (`--window`: `3s`).
    pub fn window(mut self, window: &str) -> Self {
        self.window = window.to_string();
        self
    }

    /// Open to providers within 100 m of devnet node `i` only: that node alone, since devnet
    /// nodes are ~270 m apart (the CLI has no `only`).
    pub fn near_node(mut self, i: usize) -> Self {
        let at = agora_devnet::files::devnet_location(i);
        self.near = Some(format!("{},{},0.1", at.lat, at.lon));
        self
    }

    /// Open to providers within 150 m of the point halfway between devnet nodes `i` and
    /// `i + 1`: those two alone (each ~134 m from it, the next ones ~400 m).
    pub fn near_pair(mut self, i: usize) -> Self {
        let (a, b) = (
            agora_devnet::files::devnet_location(i),
            agora_devnet::files::devnet_location(i + 1),
        );
        let (lat, lon) = ((a.lat + b.lat) / 2.0, (a.lon + b.lon) / 2.0);
        self.near = Some(format!("{lat},{lon},0.15"));
        self
    }

    /// More flags, after the others (`--service CID`, `--kind standby`).
    pub fn with(mut self, extra: &[&str]) -> Self {
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// Creates the auction; panics unless the command succeeds. Its id.
    pub fn create(&self) -> String {
        let created = agora_json(&self.args());
        created["id"]
            .as_str()
            .unwrap_or_else(|| panic!("auction create printed no id: {created}"))
            .to_string()
    }

    /// The command line after `agora` (without `--json`).
    fn args(&self) -> Vec<&str> {
        let mut args = vec![
            "auction",
            "create",
            "--data-dir",
            &self.dir,
            "--cpu",
            &self.cpu,
            "--memory",
            "64MiB",
            "--duration",
            &self.term,
            "--max-price",
            &self.max_price,
            "--window",
            &self.window,
        ];
        if let Some(near) = &self.near {
            args.extend(["--near", near.as_str()]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        args
    }
}

/// The body of a `Transfer-Encoding: chunked` HTTP answer, its chunks joined (up to the last
/// chunk, or the first malformed one).
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Runs `agora ARGS --json` and parses stdout, or `None` when the command fails (for polling a
/// node that may still be starting).
pub fn try_agora_json(args: &[&str]) -> Option<serde_json::Value> {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let out = agora(&all);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// A user's own node: `agora init` then `agora node run --join DEVNET`; killed when dropped.
#[derive(Debug)]
pub struct JoinedNode {
    child: std::process::Child,
    /// Its data directory.
    pub data_dir: String,
}

impl JoinedNode {
    /// Initialises `data_dir` and starts a node there that joins the devnet in `devnet`.
    pub fn start(data_dir: &Path, devnet: &Path) -> JoinedNode {
        let data_dir = data_dir.display().to_string();
        agora_json(&["init", "--data-dir", &data_dir]);
        Self::run(&data_dir, &["--join", &devnet.display().to_string()])
    }

    /// Starts `agora node run --data-dir DATA_DIR EXTRA…` for an initialised data dir.
    pub fn run(data_dir: &str, extra: &[&str]) -> JoinedNode {
        let child = Command::new(agora_bin())
            .args(["node", "run", "--data-dir", data_dir])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(child) => JoinedNode {
                child,
                data_dir: data_dir.to_string(),
            },
            Err(e) => panic!("cannot start the node in {data_dir}: {e}"),
        }
    }
}

impl Drop for JoinedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The WAN the benches run over, from `AGORA_BENCH_LATENCY` (one way, e.g. `50ms`),
/// `AGORA_BENCH_JITTER` and `AGORA_BENCH_LOSS` (e.g. `1%`): the profile for in-process devnets
/// and the same as `agora devnet up|demo` flags. `(None, [])` without `AGORA_BENCH_LATENCY`.
pub fn bench_wan() -> (Option<agora_network::wan::WanProfile>, Vec<String>) {
    use agora_network::wan::{WanProfile, parse_duration, parse_loss};
    let Ok(latency) = std::env::var("AGORA_BENCH_LATENCY") else {
        return (None, Vec::new());
    };
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let bad = |k: &str, e: String| -> ! { panic!("{k}: {e}") };
    let mut flags = vec!["--latency".to_string(), latency.clone()];
    let mut profile = WanProfile {
        latency: parse_duration(&latency).unwrap_or_else(|e| bad("AGORA_BENCH_LATENCY", e)),
        ..WanProfile::default()
    };
    if let Some(j) = var("AGORA_BENCH_JITTER") {
        profile.jitter = parse_duration(&j).unwrap_or_else(|e| bad("AGORA_BENCH_JITTER", e));
        flags.extend(["--jitter".to_string(), j]);
    }
    if let Some(l) = var("AGORA_BENCH_LOSS") {
        profile.loss_ppm = parse_loss(&l).unwrap_or_else(|e| bad("AGORA_BENCH_LOSS", e));
        flags.extend(["--loss".to_string(), l]);
    }
    (Some(profile), flags)
}

/// The radio status of devnet node `n` (`GET /v1/radio`), `None` while it does not answer.
pub async fn radio_status(n: &agora_devnet::files::DevnetNode) -> Option<agora_radio::RadioStatus> {
    agora_api::client::ApiClient::for_data_dir(&n.data_dir)
        .ok()?
        .get("/v1/radio")
        .await
        .ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn wait_for_returns_the_first_answer_it_gets() {
        let mut polls = 0;
        let got = super::wait_for("the third poll", Duration::from_secs(5), || {
            polls += 1;
            (polls == 3).then_some(polls)
        });
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "timed out waiting for nothing")]
    fn wait_for_panics_naming_what_once_the_timeout_has_passed() {
        super::wait_for("nothing", Duration::from_millis(150), || None::<()>);
    }

    /// The builder writes the command lines the market's process tests wrote out by hand:
    /// hosted, 64 MiB, ten minutes at most 100 tokens with a 2 s window unless told otherwise,
    /// `--near` 100 m around a devnet node, extra flags last.
    #[test]
    fn auction_cli_writes_the_command_line_of_the_market_tests() {
        let plain = super::AuctionCli::new("d", "500m");
        assert_eq!(
            plain.args(),
            [
                "auction",
                "create",
                "--data-dir",
                "d",
                "--cpu",
                "500m",
                "--memory",
                "64MiB",
                "--duration",
                "10m",
                "--max-price",
                "100",
                "--window",
                "2s"
            ]
        );
        let at = agora_devnet::files::devnet_location(2);
        let near = format!("{},{},0.1", at.lat, at.lon);
        let aimed = super::AuctionCli::new("d", "3000m")
            .near_node(2)
            .term("1m")
            .max_price(60_u64)
            .window("10s")
            .with(&["--service", "cid"]);
        assert_eq!(
            aimed.args(),
            [
                "auction",
                "create",
                "--data-dir",
                "d",
                "--cpu",
                "3000m",
                "--memory",
                "64MiB",
                "--duration",
                "1m",
                "--max-price",
                "60",
                "--window",
                "10s",
                "--near",
                near.as_str(),
                "--service",
                "cid"
            ]
        );
    }

    #[test]
    fn dechunk_joins_the_chunks_up_to_the_last() {
        let body = "4\r\nWiki\r\n6\r\npedia \r\n0\r\n\r\n";
        assert_eq!(super::dechunk(body), "Wikipedia ");
        assert_eq!(super::dechunk("zz\r\nabc"), "", "a malformed size ends it");
    }

    #[test]
    fn error_says_needs_every_part() {
        let data = serde_json::json!({"error": "already awarded: award 12ab"});
        assert!(super::error_says(&data, &["already awarded", "12ab"]));
        assert!(!super::error_says(&data, &["already awarded", "34cd"]));
        assert!(!super::error_says(&serde_json::json!({}), &[]));
    }
}
