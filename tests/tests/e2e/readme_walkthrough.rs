//! The README's walkthrough as a test (#18): every command line of the ```sh blocks of "Using a
//! devnet by hand", "Run a fleet" and "The handover story by hand" is read from README.md and
//! run, in order, by `bash` in a temp dir (so the README's relative `.agora-devnet` paths are
//! the devnet this test starts), with the debug `agora` first on `PATH`. Placeholders
//! (AUCTION_ID, IMAGE, DEPLOY_ID, …) are filled from earlier commands' `--json` answers.
//! [`ROWS`] is the one table that says how each command is run (or why it is not); a README
//! command it does not know fails the test, naming the line, so the README cannot drift from
//! the binary.
//!
//! Every command's output is piped, and none may carry a progress line or terminal escapes.
//!
//! `/tmp/` in a command is the test's temp dir, `~` is a home dir inside it; the LoRa gateway
//! module the README builds with cargo is the one the other tests build
//! (`lora_gateway_wasm`), placed where the README's build would put it.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agora_runtime::test_utils::lora_gateway_wasm;
use agora_tests::{DevnetGuard, agora_bin};

/// How a README command is run.
#[derive(Debug, Clone, Copy)]
enum How {
    /// As written; must exit 0.
    Run,
    /// As written with `--json` appended; must exit 0; the answer fills placeholders.
    Json(Capture),
    /// As written, then once more with `--json` to fill placeholders (read-only commands).
    RunThenJson(Capture),
    /// As written; must fail with a message containing this.
    Refused(&'static str),
    /// A command that runs until stopped (`&`, `node run`): started, stopped at the block's end.
    Background,
    /// A stream (`market watch`): read until a line contains this, then stopped like Ctrl-C.
    StreamUntil(&'static str),
    /// `VAR=value …`: sets shell variables for the following commands.
    Assign,
    /// Not run, for the stated reason.
    NotRun(&'static str),
}

/// Which placeholders a `--json` answer fills.
#[derive(Debug, Clone, Copy)]
enum Capture {
    /// `devnet status --json`: every node's P2P address (for MULTIADDR).
    DevnetAddrs,
    /// `peers --json`: PEER_ID (the first peer) and MULTIADDR (its address from `devnet status`).
    PeerId,
    /// `status --json`: NODE_ID.
    NodeId,
    /// `init --json`: YOUR_NODE_ID.
    YourNodeId,
    /// `auction create --json`: AUCTION_ID.
    AuctionId,
    /// `offer create --json`: OFFER_ID.
    OfferId,
    /// `market watch --once --json`: AWARD_ID (the latest `awarded` event).
    AwardId,
    /// `storage add --json`: CID.
    Cid,
    /// `proof create --json`: PROOF_CID.
    ProofCid,
    /// `contract list --json`: CONTRACT_ID (the storage contract).
    StorageContract,
    /// `service publish --json`: IMAGE_CID and IMAGE.
    Image,
    /// `deploy create --json`: DEPLOY_ID.
    DeployId,
}

/// What must hold before a command runs (the README's reader waits for it by eye).
#[derive(Debug, Clone, Copy)]
enum Wait {
    None,
    /// The joined node (`~/my-edge`) is connected to a devnet node.
    JoinedPeers,
    /// The node in this data dir (after `$VAR` expansion) lists AUCTION_ID.
    AuctionSeen(&'static str),
    /// node0 holds a bid from node1's decision unit on AUCTION_ID.
    Node1Bid,
    /// node0 knows OFFER_ID.
    OfferSeen,
    /// The provider in this data dir has an award in its market events (the window closed).
    Award(&'static str),
    /// node0's ledger holds a storage contract.
    StorageContract,
    /// The contract of this data dir's node has this status.
    ContractStatus(&'static str, &'static str),
    /// The deployment DEPLOY_ID of the node in this data dir has at least this many targets,
    /// every one healthy (what `deploy status --watch` waits for).
    DeployHealthy(&'static str, usize),
}

struct Row {
    cmd: &'static str,
    before: Wait,
    how: How,
}

const fn row(cmd: &'static str, how: How) -> Row {
    Row {
        cmd,
        before: Wait::None,
        how,
    }
}

const fn after(before: Wait, cmd: &'static str, how: How) -> Row {
    Row { cmd, before, how }
}

const N0: &str = ".agora-devnet/node0";
/// How long one README command run to its end may take (none takes a minute today).
const COMMAND_LIMIT_S: u64 = 600;
const N6: &str = ".agora-devnet/node6";

/// Every command of the two README blocks, as written there (continuations joined, comments
/// stripped, spaces collapsed), in order. A command that appears twice has two rows, used in
/// order.
const ROWS: &[Row] = &[
    // Using a devnet by hand.
    row(
        "cargo build --release -p agora-node && export PATH=$PWD/target/release:$PATH",
        How::NotRun("the test puts the debug build's target/debug/agora first on PATH"),
    ),
    row("agora devnet up --nodes 7 --manual 1 --metrics", How::Run),
    row(
        "agora devnet status",
        How::RunThenJson(Capture::DevnetAddrs),
    ),
    row(
        "agora peers --data-dir .agora-devnet/node0",
        How::RunThenJson(Capture::PeerId),
    ),
    row(
        "agora peers disconnect PEER_ID --data-dir .agora-devnet/node0",
        How::Run,
    ),
    row(
        "agora peers connect MULTIADDR --data-dir .agora-devnet/node0",
        How::Run,
    ),
    row(
        "agora status --data-dir .agora-devnet/node0 --json",
        How::Json(Capture::NodeId),
    ),
    row("agora presence --data-dir .agora-devnet/node2", How::Run),
    row("agora doctor --data-dir .agora-devnet/node0", How::Run),
    row(
        "agora init --data-dir ~/my-edge",
        How::Json(Capture::YourNodeId),
    ),
    row(
        "agora node run --data-dir ~/my-edge --join .agora-devnet",
        How::Background,
    ),
    after(
        Wait::JoinedPeers,
        "agora transfer YOUR_NODE_ID 1000 --data-dir .agora-devnet/node0",
        How::Run,
    ),
    row(
        "agora auction create --data-dir .agora-devnet/node0 --cpu 500m --memory 256MiB \
         --interfaces lora --duration 2h --max-price 100 --kind standby --window 30s",
        How::Json(Capture::AuctionId),
    ),
    after(
        Wait::AuctionSeen(N6),
        "agora auctions --data-dir .agora-devnet/node6",
        How::Run,
    ),
    row(
        "agora bid submit AUCTION_ID --price 40 --data-dir .agora-devnet/node6",
        How::Run,
    ),
    after(
        Wait::Node1Bid,
        "agora bid submit AUCTION_ID --price 80 --data-dir .agora-devnet/node1",
        How::Refused("already bid"),
    ),
    row(
        "agora bids AUCTION_ID --data-dir .agora-devnet/node0",
        How::Run,
    ),
    row(
        "agora market watch --data-dir .agora-devnet/node0",
        How::StreamUntil("awarded"),
    ),
    row(
        "agora offer create --cpu 1 --memory 512MiB --price-per-hour 12 --data-dir .agora-devnet/node1",
        How::Json(Capture::OfferId),
    ),
    after(
        Wait::OfferSeen,
        "agora offer take OFFER_ID --duration 2h --data-dir .agora-devnet/node0",
        How::Run,
    ),
    after(
        Wait::Award(N6),
        "agora market watch --once --json --data-dir .agora-devnet/node6",
        How::RunThenJson(Capture::AwardId),
    ),
    row(
        "agora market negotiate AWARD_ID --counter 60 --data-dir .agora-devnet/node6",
        How::Run,
    ),
    row(
        "agora contract list --data-dir .agora-devnet/node2",
        How::Run,
    ),
    row("agora balance --data-dir .agora-devnet/node0", How::Run),
    row(
        "agora ledger status --data-dir .agora-devnet/node3",
        How::Run,
    ),
    row(
        "agora faucet --amount 500 --data-dir .agora-devnet/node1",
        How::Run,
    ),
    row(
        "agora transfer NODE_ID 100 --data-dir .agora-devnet/node1",
        How::Run,
    ),
    row("agora earnings --data-dir .agora-devnet/node1", How::Run),
    row("head -c 1000000 /dev/urandom > data.bin", How::Run),
    row(
        "agora storage add data.bin --data-dir .agora-devnet/node0",
        How::Json(Capture::Cid),
    ),
    row(
        "agora storage get CID -o /tmp/copy.bin --data-dir .agora-devnet/node3",
        How::Run,
    ),
    row("seq 1 1000 > readings.txt", How::Run),
    row(
        "agora proof create --data readings.txt --data-dir .agora-devnet/node0",
        How::Json(Capture::ProofCid),
    ),
    row(
        "agora proof verify --data readings.txt --proof PROOF_CID --data-dir .agora-devnet/node2",
        How::Run,
    ),
    row(
        "agora auction create --kind storage --service CID --storage 2MiB --duration 10m \
         --max-price 100 --window 2s --data-dir .agora-devnet/node0",
        How::Run,
    ),
    after(
        Wait::StorageContract,
        "agora contract list --data-dir .agora-devnet/node0",
        How::RunThenJson(Capture::StorageContract),
    ),
    row(
        "agora contract show CONTRACT_ID --data-dir .agora-devnet/node0",
        How::Run,
    ),
    row(
        "rustup target add wasm32-wasip1",
        How::NotRun("scripts/test.sh adds the target before the suite runs"),
    ),
    row(
        "cargo build --release --target wasm32-wasip1 --manifest-path \
         runtime/examples/lora-gateway/Cargo.toml --target-dir /tmp/lora",
        How::NotRun(
            "the test reuses the module the other tests build (lora_gateway_wasm) and puts it \
             at /tmp/lora/wasm32-wasip1/release/lora_gateway.wasm",
        ),
    ),
    row(
        "agora service publish /tmp/lora/wasm32-wasip1/release/lora_gateway.wasm --manifest \
         runtime/examples/lora-gateway/service.toml --data-dir .agora-devnet/node0",
        How::Json(Capture::Image),
    ),
    row(
        "agora service publish /tmp/lora/wasm32-wasip1/release/lora_gateway.wasm \
         --data-dir .agora-devnet/node0",
        How::Run,
    ),
    row(
        "agora service stage IMAGE_CID --id gw1 --data-dir .agora-devnet/node1",
        How::Run,
    ),
    row(
        "agora service start gw1 --data-dir .agora-devnet/node1",
        How::Run,
    ),
    row(
        "agora service push gw1 a701000000000000006608c012e40ca6 --data-dir .agora-devnet/node1",
        How::Run,
    ),
    row(
        "agora service show gw1 --data-dir .agora-devnet/node1",
        How::Run,
    ),
    row(
        "agora service logs gw1 --data-dir .agora-devnet/node1",
        How::Run,
    ),
    row(
        "agora service list --data-dir .agora-devnet/node1",
        How::Run,
    ),
    row(
        "agora service stop gw1 --data-dir .agora-devnet/node1",
        How::Run,
    ),
    row(
        "curl -s http://$(cat .agora-devnet/node0/metrics.addr)/metrics | grep '^agora_peers'",
        How::Run,
    ),
    row(
        "curl -s http://$(cat .agora-devnet/node0/metrics.addr)/ready",
        How::Run,
    ),
    row(
        "prometheus --config.file=.agora-devnet/prometheus.yml --storage.tsdb.path=/tmp/agora-prom &",
        How::NotRun("a real Prometheus scrapes a devnet in tests/tests/e2e/metrics.rs"),
    ),
    row("agora devnet status | grep '^dashboard'", How::Run),
    row(
        "echo \"http://$(cat .agora-devnet/node0/api.addr)/#token=$(cat .agora-devnet/node0/api.token)\"",
        How::Run,
    ),
    row(
        "agora completions bash > /tmp/agora.bash && source /tmp/agora.bash",
        How::Run,
    ),
    row("agora devnet down", How::Run),
    row("agora devnet down --clean", How::Run),
    // Run a fleet.
    row("agora devnet up --nodes 7", How::Run),
    row(
        "agora service publish /tmp/lora/wasm32-wasip1/release/lora_gateway.wasm \
         --data-dir .agora-devnet/node0",
        How::Json(Capture::Image),
    ),
    row(
        "agora deploy create IMAGE_CID --to \"\" --replicas 2 --cpu 250m --memory 64MiB \
         --data-dir .agora-devnet/node0 --json",
        How::Json(Capture::DeployId),
    ),
    after(
        Wait::DeployHealthy(N0, 2),
        "agora deploy status DEPLOY_ID --watch --data-dir .agora-devnet/node0",
        How::Run,
    ),
    row("agora deploy list --data-dir .agora-devnet/node0", How::Run),
    row(
        "agora deploy delete DEPLOY_ID --data-dir .agora-devnet/node0",
        How::Run,
    ),
    row("agora devnet down --clean", How::Run),
    // The handover story by hand.
    row("agora devnet up --nodes 7 --manual 1", How::Run),
    row("agora devnet sensors &", How::Background),
    row("A=.agora-devnet/node5 B=.agora-devnet/node6", How::Assign),
    row(
        "agora service publish /tmp/lora/wasm32-wasip1/release/lora_gateway.wasm --manifest \
         runtime/examples/lora-gateway/service.toml --data-dir $A",
        How::Json(Capture::Image),
    ),
    row("agora own IMAGE --data-dir $A", How::Run),
    row("agora radio --data-dir $A", How::Run),
    row(
        "agora auction create --kind standby --service IMAGE --cpu 100m --memory 32MiB \
         --duration 10m --max-price 100 --window 5s --data-dir $A",
        How::Json(Capture::AuctionId),
    ),
    after(
        Wait::AuctionSeen("$B"),
        "agora bid submit AUCTION_ID --price 30 --data-dir $B",
        How::Run,
    ),
    after(
        Wait::Award("$B"),
        "agora market watch --once --data-dir $B",
        How::RunThenJson(Capture::AwardId),
    ),
    row(
        "agora market negotiate AWARD_ID --accept --data-dir $B",
        How::Run,
    ),
    after(
        Wait::ContractStatus("$B", "armed"),
        "agora contract list --data-dir $B",
        How::Run,
    ),
    row("agora timeline --data-dir $B", How::Run),
    row("agora devnet kill node5", How::Run),
    after(
        Wait::ContractStatus("$B", "active"),
        "agora contract list --data-dir $B",
        How::Run,
    ),
    row("agora timeline --data-dir .agora-devnet/node0", How::Run),
    row("agora radio --data-dir $B", How::Run),
    row("agora devnet start node5", How::Run),
    after(
        Wait::ContractStatus("$B", "settled"),
        "agora earnings --data-dir $B",
        How::Run,
    ),
    row("agora balance --data-dir $B", How::Run),
];

/// The command lines of the first ```sh block after the heading `heading`: `\` continuations
/// joined, `# comments` stripped, runs of spaces collapsed. Each with its README line number.
fn commands_under(readme: &str, heading: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == heading)
        .unwrap_or_else(|| panic!("README.md has no heading {heading:?}"));
    let open = (start..lines.len())
        .find(|&i| lines[i].trim() == "```sh")
        .unwrap_or_else(|| panic!("no ```sh block after {heading:?}"));
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in lines.iter().enumerate().skip(open + 1) {
        if line.trim() == "```" {
            break;
        }
        let code = strip_comment(line);
        let (text, continues) = match code.trim_end().strip_suffix('\\') {
            Some(t) => (t.to_string(), true),
            None => (code.to_string(), false),
        };
        let (at, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        joined.push(' ');
        joined.push_str(&text);
        if continues {
            pending = Some((at, joined));
            continue;
        }
        let cmd = joined.split_whitespace().collect::<Vec<_>>().join(" ");
        if !cmd.is_empty() {
            out.push((at, cmd));
        }
    }
    out
}

/// `line` without its `# comment` (a `#` at the start or after a space, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// One run of a README block: the temp dir it runs in, the placeholders filled so far.
struct Walk {
    cwd: PathBuf,
    path: String,
    vars: HashMap<String, String>,
    filled: HashMap<&'static str, String>,
    addrs: Vec<String>,
    background: Vec<Child>,
    used: Vec<bool>,
}

const PLACEHOLDERS: &[&str] = &[
    "AUCTION_ID",
    "AWARD_ID",
    "OFFER_ID",
    "CONTRACT_ID",
    "CID",
    "IMAGE_CID",
    "IMAGE",
    "PROOF_CID",
    "PEER_ID",
    "MULTIADDR",
    "NODE_ID",
    "YOUR_NODE_ID",
    "DEPLOY_ID",
];

impl Walk {
    fn new(cwd: &Path) -> Walk {
        let bin_dir = agora_bin().parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Walk {
            cwd: cwd.to_path_buf(),
            path,
            vars: HashMap::new(),
            filled: HashMap::new(),
            addrs: Vec::new(),
            background: Vec::new(),
            used: vec![false; ROWS.len()],
        }
    }

    /// The table's row for `cmd` (the first one not used yet).
    fn row_for(&mut self, at: usize, cmd: &str) -> &'static Row {
        let i = ROWS
            .iter()
            .enumerate()
            .position(|(i, r)| !self.used[i] && r.cmd == cmd)
            .unwrap_or_else(|| {
                panic!(
                    "README.md line {at}: the walkthrough test does not know this command \
                     (add it to ROWS in tests/tests/e2e/readme_walkthrough.rs with how to run it, \
                     or fix the README):\n  {cmd}"
                )
            });
        self.used[i] = true;
        &ROWS[i]
    }

    /// `cmd` with placeholders filled and `/tmp/` moved into the test's temp dir.
    fn fill(&self, at: usize, cmd: &str) -> String {
        let tmp = format!("{}/tmp/", self.cwd.display());
        cmd.split(' ')
            .map(|word| {
                if PLACEHOLDERS.contains(&word) {
                    self.filled.get(word).cloned().unwrap_or_else(|| {
                        panic!("README.md line {at}: no earlier command filled {word}: {cmd}")
                    })
                } else {
                    word.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
            .replace("/tmp/", &tmp)
    }

    fn bash(&self, cmd: &str) -> Command {
        self.shell(Command::new("bash"), cmd)
    }

    /// `bash -c cmd` run by `c` (bash itself, or `timeout … bash`) in the walkthrough's
    /// directory and environment.
    fn shell(&self, mut c: Command, cmd: &str) -> Command {
        c.arg("-c")
            .arg(cmd)
            .current_dir(&self.cwd)
            .env("PATH", &self.path)
            .env("HOME", self.cwd.join("home"))
            .envs(&self.vars)
            .stdin(Stdio::null());
        c
    }

    /// Runs `cmd`, killed after [`COMMAND_LIMIT_S`] (a README command that hangs, such as
    /// `deploy status --watch` whose target left `healthy`, fails the test and never hangs
    /// the suite; the README's text is unchanged); returns (success, stdout, stderr).
    fn sh(&self, cmd: &str) -> (bool, String, String) {
        let mut limited = Command::new("timeout");
        limited.args(["-k", "10", &COMMAND_LIMIT_S.to_string(), "bash"]);
        let out = self
            .shell(limited, cmd)
            .output()
            .unwrap_or_else(|e| panic!("cannot run bash: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn must(&self, at: usize, cmd: &str) -> String {
        let (ok, out, err) = self.sh(cmd);
        assert!(
            ok,
            "README.md line {at} failed: {cmd}\n--- stdout\n{out}\n--- stderr\n{err}"
        );
        // Piped output never carries a progress line or terminal escapes (#18).
        for (name, text) in [("stdout", &out), ("stderr", &err)] {
            assert!(
                !text.contains('\x1b') && !text.contains('\r'),
                "README.md line {at}: piped {name} has a progress line or escapes: {text:?}"
            );
        }
        out
    }

    fn json(&self, at: usize, cmd: &str) -> serde_json::Value {
        let out = self.must(at, &format!("{cmd} --json"));
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("README.md line {at}: {cmd} --json: {e}\n{out}"))
    }

    /// The `--json` answer of an agora command, or `None` while it fails (for waits).
    fn probe(&self, cmd: &str) -> Option<serde_json::Value> {
        let (ok, out, _) = self.sh(&format!("{cmd} --json"));
        if !ok {
            return None;
        }
        serde_json::from_str(&out).ok()
    }

    fn var(&self, dir: &str) -> String {
        dir.strip_prefix('$')
            .map(|v| self.vars.get(v).cloned().unwrap_or_default())
            .unwrap_or_else(|| dir.to_string())
    }

    fn run_block(&mut self, readme: &str, heading: &str) {
        for (at, cmd) in commands_under(readme, heading) {
            let row = self.row_for(at, &cmd);
            self.wait(at, row.before);
            let filled = self.fill(at, &cmd);
            eprintln!("README.md line {at}: {filled}   [{:?}]", row.how);
            match row.how {
                How::NotRun(reason) => eprintln!("  not run: {reason}"),
                How::Run => {
                    let out = self.must(at, &filled);
                    eprint!("{out}");
                }
                How::Json(capture) => {
                    let v = if filled.ends_with(" --json") {
                        let out = self.must(at, &filled);
                        serde_json::from_str(&out)
                            .unwrap_or_else(|e| panic!("README.md line {at}: {filled}: {e}\n{out}"))
                    } else {
                        self.json(at, &filled)
                    };
                    self.capture(at, capture, &v);
                }
                How::RunThenJson(capture) => {
                    let out = self.must(at, &filled);
                    eprint!("{out}");
                    if capture_from_lines(capture) {
                        let lines: Vec<serde_json::Value> = self
                            .must(at, &json_of(&filled))
                            .lines()
                            .filter_map(|l| serde_json::from_str(l).ok())
                            .collect();
                        self.capture(at, capture, &serde_json::Value::Array(lines));
                    } else {
                        let v = self.json(at, filled.trim_end_matches(" --json"));
                        self.capture(at, capture, &v);
                    }
                }
                How::Refused(needle) => {
                    let (ok, out, err) = self.sh(&filled);
                    assert!(
                        !ok,
                        "README.md line {at} is documented to fail but succeeded: {filled}\n{out}"
                    );
                    assert!(
                        err.contains(needle),
                        "README.md line {at}: the error should say {needle:?}: {err}"
                    );
                    eprintln!("  refused as documented: {}", err.trim());
                }
                How::Background => {
                    let cmd = format!("exec {}", filled.trim_end_matches('&').trim_end());
                    let child = self
                        .bash(&cmd)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap_or_else(|e| panic!("README.md line {at}: {e}"));
                    self.background.push(child);
                }
                How::StreamUntil(needle) => self.stream_until(at, &filled, needle),
                How::Assign => {
                    for pair in filled.split(' ') {
                        let (k, v) = pair.split_once('=').unwrap_or_else(|| {
                            panic!("README.md line {at}: not an assignment: {pair}")
                        });
                        self.vars.insert(k.to_string(), v.to_string());
                    }
                }
            }
        }
        self.stop_background();
    }

    /// Reads the stream's stdout until a line contains `needle`, then stops it.
    fn stream_until(&mut self, at: usize, cmd: &str, needle: &str) {
        let mut child = self
            .bash(&format!("exec {cmd}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("README.md line {at}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut seen = String::new();
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("  | {line}");
                    let hit = line.contains(needle);
                    seen.push_str(&line);
                    seen.push('\n');
                    if hit {
                        break true;
                    }
                }
                Err(_) => break false,
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found,
            "README.md line {at}: {cmd} did not show {needle:?} within 90 s:\n{seen}"
        );
    }

    fn capture(&mut self, at: usize, capture: Capture, v: &serde_json::Value) {
        let text = |v: &serde_json::Value| -> String {
            v.as_str()
                .unwrap_or_else(|| panic!("README.md line {at}: expected a string: {v}"))
                .to_string()
        };
        match capture {
            Capture::DevnetAddrs => {
                self.addrs = v["nodes"]
                    .as_array()
                    .unwrap_or_else(|| panic!("devnet status --json has no nodes: {v}"))
                    .iter()
                    .flat_map(|n| match &n["p2p"] {
                        serde_json::Value::Array(a) => a.clone(),
                        one => vec![one.clone()],
                    })
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect();
                assert!(!self.addrs.is_empty(), "no P2P addresses in {v}");
            }
            Capture::PeerId => {
                let peer = text(&v[0]["peer_id"]);
                let addr = self
                    .addrs
                    .iter()
                    .find(|a| a.ends_with(&format!("/p2p/{peer}")))
                    .unwrap_or_else(|| panic!("`devnet status` has no address of {peer}"))
                    .clone();
                self.filled.insert("PEER_ID", peer);
                self.filled.insert("MULTIADDR", addr);
            }
            Capture::NodeId => {
                self.filled.insert("NODE_ID", text(&v["node_id"]));
            }
            Capture::YourNodeId => {
                self.filled.insert("YOUR_NODE_ID", text(&v["node_id"]));
            }
            Capture::AuctionId => {
                self.filled.insert("AUCTION_ID", text(&v["id"]));
            }
            Capture::OfferId => {
                self.filled.insert("OFFER_ID", text(&v["id"]));
            }
            Capture::AwardId => {
                let award = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["kind"] == "awarded")
                    .filter_map(|e| e["data"]["award"].as_str())
                    .next_back()
                    .unwrap_or_else(|| panic!("README.md line {at}: no award in {v}"));
                self.filled.insert("AWARD_ID", award.to_string());
            }
            Capture::Cid => {
                self.filled.insert("CID", text(&v["cid"]));
            }
            Capture::ProofCid => {
                self.filled.insert("PROOF_CID", text(&v["cid"]));
            }
            Capture::StorageContract => {
                let id = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["kind"] == "storage")
                    .map(|c| text(&c["id"]))
                    .unwrap_or_else(|| panic!("README.md line {at}: no storage contract: {v}"));
                self.filled.insert("CONTRACT_ID", id);
            }
            Capture::Image => {
                let image = text(&v["image"]);
                self.filled.insert("IMAGE_CID", image.clone());
                self.filled.insert("IMAGE", image);
            }
            Capture::DeployId => {
                self.filled.insert("DEPLOY_ID", text(&v["id"]));
            }
        }
    }

    fn wait(&self, at: usize, wait: Wait) {
        let what = format!("README.md line {at}: {wait:?}");
        let long = Duration::from_secs(120);
        match wait {
            Wait::None => {}
            Wait::JoinedPeers => agora_tests::wait_until(&what, long, || {
                self.probe("agora peers --data-dir ~/my-edge")
                    .and_then(|v| v.as_array().map(|a| !a.is_empty()))
                    == Some(true)
            }),
            Wait::AuctionSeen(dir) => {
                let (dir, auction) = (self.var(dir), &self.filled["AUCTION_ID"]);
                agora_tests::wait_until(&what, long, || {
                    self.probe(&format!("agora auctions --data-dir {dir}"))
                        .is_some_and(|v| {
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .any(|a| a["id"] == auction.as_str())
                        })
                });
            }
            Wait::Node1Bid => {
                let auction = &self.filled["AUCTION_ID"];
                let node1 = self
                    .probe("agora status --data-dir .agora-devnet/node1")
                    .map(|v| v["node_id"].clone())
                    .unwrap_or_default();
                agora_tests::wait_until(&what, long, || {
                    self.probe(&format!("agora bids {auction} --data-dir {N0}"))
                        .is_some_and(|v| {
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .any(|b| b["provider"] == node1)
                        })
                });
            }
            Wait::OfferSeen => {
                let offer = &self.filled["OFFER_ID"];
                agora_tests::wait_until(&what, long, || {
                    self.probe(&format!("agora offers --data-dir {N0}"))
                        .is_some_and(|v| {
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .any(|o| o["id"] == offer.as_str())
                        })
                });
            }
            Wait::Award(dir) => {
                let dir = self.var(dir);
                agora_tests::wait_until(&what, long, || {
                    let (_, out, _) = self.sh(&format!(
                        "agora market watch --once --json --data-dir {dir}"
                    ));
                    out.lines().any(|l| l.contains("\"awarded\""))
                });
            }
            Wait::StorageContract => agora_tests::wait_until(&what, long, || {
                self.probe(&format!("agora contract list --data-dir {N0}"))
                    .is_some_and(|v| {
                        v.as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["kind"] == "storage")
                    })
            }),
            Wait::ContractStatus(dir, status) => {
                let dir = self.var(dir);
                agora_tests::wait_until(&what, long, || {
                    self.probe(&format!("agora contract list --data-dir {dir}"))
                        .is_some_and(|v| {
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .any(|c| c["status"] == status)
                        })
                });
            }
            Wait::DeployHealthy(dir, replicas) => {
                let (dir, id) = (self.var(dir), &self.filled["DEPLOY_ID"]);
                // Each target needs its auction, contract, image and a first health poll; the
                // fleet process tests allow 300 s on a loaded machine.
                agora_tests::wait_until(&what, Duration::from_secs(300), || {
                    self.probe(&format!("agora deploy status {id} --data-dir {dir}"))
                        .is_some_and(|v| {
                            let targets = v["targets"].as_array().cloned().unwrap_or_default();
                            targets.len() >= replicas
                                && targets.iter().all(|t| t["phase"] == "healthy")
                        })
                });
            }
        }
    }

    fn stop_background(&mut self) {
        for mut child in self.background.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Walk {
    fn drop(&mut self) {
        self.stop_background();
    }
}

/// Whether `capture` reads a stream of JSON lines (`market watch --json`).
fn capture_from_lines(capture: Capture) -> bool {
    matches!(capture, Capture::AwardId)
}

/// `cmd` with `--json`, once.
fn json_of(cmd: &str) -> String {
    if cmd.split(' ').any(|w| w == "--json") {
        cmd.to_string()
    } else {
        format!("{cmd} --json")
    }
}

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

#[test]
fn the_table_knows_every_readme_command_and_no_other() {
    let readme = readme();
    let mut known: Vec<&str> = ROWS.iter().map(|r| r.cmd).collect();
    for heading in [
        "## Using a devnet by hand",
        "### Run a fleet",
        "### The handover story by hand",
    ] {
        for (at, cmd) in commands_under(&readme, heading) {
            let i = known.iter().position(|k| *k == cmd).unwrap_or_else(|| {
                panic!("README.md line {at}: not in ROWS of readme_walkthrough.rs: {cmd}")
            });
            known.remove(i);
        }
    }
    assert!(
        known.is_empty(),
        "ROWS lists commands the README no longer shows: {known:#?}"
    );
    assert_eq!(strip_comment("echo \"a/#b\"  # c"), "echo \"a/#b\"  ");
}

#[test]
fn readme_walkthrough_runs_against_a_devnet() {
    let wasm = lora_gateway_wasm().unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let _guard = DevnetGuard(cwd.join(".agora-devnet"));
    // What the README's cargo build leaves in /tmp/lora, and its relative manifest path.
    let release = cwd.join("tmp/lora/wasm32-wasip1/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::create_dir_all(cwd.join("home")).unwrap();
    std::fs::write(release.join("lora_gateway.wasm"), wasm).unwrap();
    let example = cwd.join("runtime/examples/lora-gateway");
    std::fs::create_dir_all(&example).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../runtime/examples/lora-gateway/service.toml"
        ),
        example.join("service.toml"),
    )
    .unwrap();

    let readme = readme();
    let mut walk = Walk::new(cwd);
    let started = Instant::now();
    walk.run_block(&readme, "## Using a devnet by hand");
    assert!(
        !cwd.join(".agora-devnet").exists(),
        "`devnet down --clean` removed the devnet"
    );
    walk.filled.clear();
    let fleet = Instant::now();
    walk.run_block(&readme, "### Run a fleet");
    assert!(
        !cwd.join(".agora-devnet").exists(),
        "`devnet down --clean` removed the fleet's devnet"
    );
    eprintln!(
        "README walkthrough: the fleet block in {:.0} s",
        fleet.elapsed().as_secs_f64()
    );
    walk.filled.clear();
    walk.run_block(&readme, "### The handover story by hand");
    eprintln!(
        "README walkthrough: all three blocks in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let unused: Vec<&str> = ROWS
        .iter()
        .zip(&walk.used)
        .filter(|(_, used)| !**used)
        .map(|(r, _)| r.cmd)
        .collect();
    assert!(
        unused.is_empty(),
        "rows the README did not reach: {unused:#?}"
    );
}
