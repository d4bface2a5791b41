//! Convergence bench (issue #15's end-to-end on a 12-node devnet): push and pull to a
//! selector, a target killed mid-rollout, a target that stops matching, on N real `agora`
//! processes (`AGORA_CONVERGE_NODES`, default 12).
//!
//! Nodes 2–5 get the label `site=factory` one at a time (stopped, config edited, started, then
//! waited for until their `/ready` says ready: a restarted provider bids only once its market
//! holds its contracts again). Node0 then deploys the gateway guest `--to site=factory` in three
//! phases, each with an image of its own, so that one phase's contracts, still settling, never
//! count in the next:
//!
//! 1. push `--all`: as soon as node0's `deploy status` shows node5 `contracting`, `fetching` or
//!    `staged`, node5 is killed (SIGKILL) and started again from its data directory; all four
//!    labelled providers must end healthy. When node5 is first seen already past `staged`, the
//!    deployment is deleted and made once more with a fresh image.
//! 2. pull `--all`: the same four, healthy.
//! 3. pull `--replicas 2`: once both targets are healthy, the first loses its label (stopped,
//!    config edited, started); the deployer must release it (it runs the image no more) and
//!    place a third labelled provider, healthy. The release must be `NoLongerMatches` in
//!    node0's log: the restarted target tracks no replica of the deployment, but its ledger
//!    shows the deployer's live contract, so it sends the deployer its new facts (a
//!    `Candidate`) at once. Released as `Offline` instead (before session 54 it always was,
//!    once silent for `offline_after_ms`, 30 s), the run fails; with no reason logged (the
//!    contract's end was submitted again later) it is noted, not failed.
//!
//! At every poll (every 500 ms, plus the time the calls take) the bench records any node
//! outside 2–5 that runs the phase's image or is listed as its target, and any provider that
//! node0's ledger shows with two live contracts of it. Each phase ends with `deploy delete` and
//! a wait until no node runs its image. At the end the bench waits, bounded and not asserted,
//! for every contract to end, and prints how they ended.
//!
//! It prints one row per phase: the seconds from `deploy create` until the phase's goal held,
//! targets healthy of those expected, non-matching nodes seen running it (must be 0), providers
//! seen with two live contracts (must be 0), and notes. A failed check ends the run: the table
//! so far is printed, then the deployer's status and every node's contracts and services, then
//! the bench panics naming the failure (exit code 101), keeping the devnet directory for its
//! `nodeN/node.log`. The nodes are stopped either way; on success the bench also checks that no
//! process of the devnet is left.
//!
//! A bench and not an end-to-end test because 12 processes for several minutes do not fit in
//! CI's ~30 minutes. `cargo test -p agora-tests --bench fleet_converge` runs it against the
//! debug `agora`, `cargo bench -p agora-tests --bench fleet_converge` against the release one.
//! Knobs: `AGORA_CONVERGE_NODES` (default 12; at least 7, since a contract needs four
//! arbitrators besides its two parties), `AGORA_CONVERGE_TIMEOUT` (seconds each wait may take,
//! default 300), `AGORA_CONVERGE_UP_TIMEOUT` (`devnet up --timeout`, default 300).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use agora_runtime::test_utils::lora_gateway_wasm;
use agora_tests::bench::{env_u64, load1, node_ready, processes_gone};
use agora_tests::fleet::{
    CONTRACT_OVER, deployer_contracts, dump, label, live_contracts, node_ids, publish, reconfigure,
    release_reasons, runs, status, unlabel,
};
use agora_tests::{TestDevnet, agora, agora_bin};

/// The providers labelled `site=factory`.
const LABELLED: [usize; 4] = [2, 3, 4, 5];
/// The target killed mid-rollout in phase 1.
const KILLED: usize = 5;
/// Every deployment's selector.
const SELECTOR: &str = "site=factory";
/// How long a wait pauses between polls (each poll also takes a dozen `agora` calls).
const POLL: Duration = Duration::from_millis(500);
/// How often phase 1 reads node0's status while it waits to see node5 placed: the kill must
/// land before node5 runs the image.
const CATCH_POLL: Duration = Duration::from_millis(100);
/// Node5's phases in which killing it is "mid-rollout".
const MID_ROLLOUT: [&str; 3] = ["contracting", "fetching", "staged"];
/// How long the deleted deployments' contracts may take to end at the end (not asserted).
const CONTRACTS_END: Duration = Duration::from_secs(180);
/// How long the devnet's processes may take to vanish after it is brought down.
const PROCESSES_GONE: Duration = Duration::from_secs(15);

/// Target phases by node index.
type Phases = BTreeMap<usize, String>;

/// One phase's figures.
#[derive(Default)]
struct Row {
    phase: &'static str,
    /// Targets the phase must end with, all healthy.
    expected: usize,
    /// Seconds from `deploy create` until the phase's goal held (`None`: it did not).
    secs: Option<f64>,
    /// Labelled targets healthy at the last poll.
    healthy: usize,
    /// Nodes outside the labelled ones seen running the image or listed as its targets.
    strays: BTreeSet<usize>,
    /// Providers seen with two live contracts of the image at once.
    doubles: BTreeSet<usize>,
    /// The phase's images, the current one last.
    images: Vec<String>,
    /// The current deployment's id (for the dump on a failure).
    id: String,
    /// How the phase's contracts ended, by status.
    ended: BTreeMap<String, usize>,
    load: f64,
    notes: Vec<String>,
}

impl Row {
    fn new(phase: &'static str, expected: usize) -> Row {
        Row {
            phase,
            expected,
            load: f64::NAN,
            ..Row::default()
        }
    }

    fn image(&self) -> String {
        self.images.last().cloned().unwrap_or_default()
    }
}

/// The devnet and what every phase needs of it. Dropping it brings the devnet down (and keeps
/// its directory when a panic unwinds).
struct Bench {
    net: TestDevnet,
    ids: Vec<String>,
    /// Every node but node0 (the deployer) and the labelled ones: none may run an image.
    others: Vec<usize>,
    wasm: Vec<u8>,
    timeout: Duration,
}

impl Bench {
    fn index(&self, node: &str) -> Option<usize> {
        self.ids.iter().position(|n| n == node)
    }

    /// Deployment `id`'s targets and their phases as node0 reports them (empty while its
    /// status cannot be read).
    fn phases(&self, id: &str) -> Phases {
        let st = status(&self.net, id);
        st["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let node = self.index(t["node"].as_str()?)?;
                Some((node, t["phase"].as_str()?.to_string()))
            })
            .collect()
    }

    /// Records in `row` what must never happen: a node outside the labelled ones among the
    /// targets or running the image, a provider with two live contracts of the image; and the
    /// labelled targets healthy now.
    fn check(&self, row: &mut Row, phases: &Phases) {
        let image = row.image();
        row.strays
            .extend(phases.keys().copied().filter(|i| !LABELLED.contains(i)));
        for &i in &self.others {
            if runs(&self.net, i, &image) {
                row.strays.insert(i);
            }
        }
        row.doubles.extend(
            live_contracts(&self.net, &image)
                .iter()
                .filter(|(_, n)| **n > 1)
                .filter_map(|(p, _)| self.index(p)),
        );
        row.healthy = phases
            .iter()
            .filter(|(i, p)| LABELLED.contains(*i) && p.as_str() == "healthy")
            .count();
    }

    /// Polls node0's view of deployment `id` until `done` holds of its targets' phases,
    /// checking every poll ([`Bench::check`]); returns the phases that satisfied it, or an error
    /// naming `what` once the timeout has passed.
    fn wait(
        &self,
        row: &mut Row,
        id: &str,
        what: &str,
        mut done: impl FnMut(&Phases) -> bool,
    ) -> Result<Phases, String> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        loop {
            let phases = self.phases(id);
            self.check(row, &phases);
            if done(&phases) {
                eprintln!(
                    "{}: {what} after {:.1} s",
                    row.phase,
                    started.elapsed().as_secs_f64()
                );
                return Ok(phases);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: timed out after {} s waiting for {what}; targets: {}",
                    row.phase,
                    self.timeout.as_secs(),
                    describe(&phases)
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// `agora deploy create IMAGE --to site=factory --name NAME ARGS…` on node0 with the fleet
    /// tests' replica size; returns the deployment id.
    fn create(&self, row: &mut Row, name: &str, args: &[&str]) -> Result<String, String> {
        let (image, n0) = (row.image(), self.net.node(0));
        let mut all = vec![
            "deploy",
            "create",
            image.as_str(),
            "--to",
            SELECTOR,
            "--name",
            name,
        ];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--cpu",
            "250m",
            "--memory",
            "64MiB",
            "--data-dir",
            n0.as_str(),
        ]);
        all.push("--json");
        let out = agora(&all);
        if !out.status.success() {
            return Err(format!(
                "{}: deploy create {name} failed: {}",
                row.phase,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let created: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{}: deploy create {name}: {e}", row.phase))?;
        let id = created["id"]
            .as_str()
            .ok_or_else(|| format!("{}: deploy create printed no id: {created}", row.phase))?;
        row.id = id.to_string();
        Ok(row.id.clone())
    }

    /// Publishes a fresh image of the gateway on node0 (`name` and `version` make its
    /// manifest, so its CID, differ from every other phase's) as the row's current one.
    fn publish(&self, row: &mut Row, name: &str, version: &str) {
        row.images
            .push(publish(&self.net, name, version, &self.wasm));
    }

    /// `agora deploy delete ID`, then waits until no node runs the row's image.
    fn delete(&self, row: &Row, id: &str) -> Result<(), String> {
        let out = agora(&[
            "deploy",
            "delete",
            id,
            "--data-dir",
            &self.net.node(0),
            "--json",
        ]);
        if !out.status.success() {
            return Err(format!(
                "{}: deploy delete failed: {}",
                row.phase,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let (image, n) = (row.image(), self.net.nodes().len());
        let deadline = Instant::now() + self.timeout;
        loop {
            let left: Vec<usize> = (1..n).filter(|&i| runs(&self.net, i, &image)).collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: {} still run the image {} s after deploy delete",
                    row.phase,
                    names(left),
                    self.timeout.as_secs()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// `agora devnet VERB nodeI` (kill or start).
    fn devnet(&self, verb: &str, i: usize) -> Result<(), String> {
        let out = agora(&[
            "devnet",
            verb,
            &format!("node{i}"),
            "--dir",
            &self.net.dir_s(),
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "agora devnet {verb} node{i} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Labels the providers one at a time, each ready again before the next is stopped (the
    /// committee keeps its quorum, and a provider bids only once ready).
    fn label_providers(&self) -> Result<(), String> {
        for i in LABELLED {
            reconfigure(&self.net, i, true, label);
            let deadline = Instant::now() + self.timeout;
            while !node_ready(&self.net.dir.join(format!("node{i}"))) {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "node{i} not ready {} s after it was labelled and started",
                        self.timeout.as_secs()
                    ));
                }
                std::thread::sleep(POLL);
            }
            eprintln!("node{i} labelled {SELECTOR} and ready");
        }
        Ok(())
    }

    /// Polls node0's status every [`CATCH_POLL`] until it lists node5; its phase then.
    fn first_phase_of_killed(&self, row: &Row, id: &str) -> Result<String, String> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(phase) = self.phases(id).remove(&KILLED) {
                return Ok(phase);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: node0 did not place a replica on node{KILLED} within {} s",
                    row.phase,
                    self.timeout.as_secs()
                ));
            }
            std::thread::sleep(CATCH_POLL);
        }
    }

    /// Phase 1: push `--all`; node5 is killed while its placement is under way and started
    /// again; every labelled provider ends healthy.
    fn push_with_a_kill(&self, row: &mut Row) -> Result<(), String> {
        for attempt in 1..=2 {
            self.publish(row, "converge-push", &format!("0.1.{attempt}"));
            let t0 = Instant::now();
            let name = format!("converge-push-{attempt}");
            let id = self.create(row, &name, &["--all", "--strategy", "push"])?;
            let seen = self.first_phase_of_killed(row, &id)?;
            if !MID_ROLLOUT.contains(&seen.as_str()) {
                row.notes.push(format!(
                    "attempt {attempt}: node{KILLED} first seen {seen}, too late to kill"
                ));
                self.delete(row, &id)?;
                continue;
            }
            self.devnet("kill", KILLED)?;
            self.devnet("start", KILLED)?;
            let back = Instant::now();
            row.notes.push(format!("node{KILLED} killed while {seen}"));
            let mut again = None;
            self.wait(row, &id, "every labelled provider healthy", |p| {
                if again.is_none() && is(p, KILLED, "healthy") {
                    again = Some(back.elapsed().as_secs_f64());
                }
                all_healthy(p, &LABELLED)
            })?;
            row.secs = Some(t0.elapsed().as_secs_f64());
            if let Some(s) = again {
                row.notes
                    .push(format!("healthy {s:.1} s after its restart"));
            }
            return self.delete(row, &id);
        }
        Err(format!(
            "{}: node{KILLED} was past staged when first seen, twice: no kill mid-rollout",
            row.phase
        ))
    }

    /// Phase 2: pull `--all`; every labelled provider ends healthy.
    fn pull_all(&self, row: &mut Row) -> Result<(), String> {
        self.publish(row, "converge-pull", "0.1.0");
        let t0 = Instant::now();
        let id = self.create(row, "converge-pull", &["--all", "--strategy", "pull"])?;
        self.wait(row, &id, "every labelled provider healthy", |p| {
            all_healthy(p, &LABELLED)
        })?;
        row.secs = Some(t0.elapsed().as_secs_f64());
        self.delete(row, &id)
    }

    /// Phase 3: pull `--replicas 2`; one target loses its label, is released and replaced by
    /// a third labelled provider.
    fn replace_unmatched(&self, row: &mut Row) -> Result<(), String> {
        self.publish(row, "converge-replace", "0.1.0");
        let t0 = Instant::now();
        let id = self.create(
            row,
            "converge-replace",
            &["--replicas", "2", "--strategy", "pull"],
        )?;
        let before = self.wait(row, &id, "two targets healthy", |p| {
            p.len() == 2 && p.values().all(|s| s == "healthy")
        })?;
        let Some(&dropped) = before.keys().next() else {
            return Err(format!("{}: no target to unlabel", row.phase));
        };
        reconfigure(&self.net, dropped, true, unlabel);
        let unlabelled = Instant::now();
        let image = row.image();
        let mut released = None;
        let after = self.wait(
            row,
            &id,
            &format!("node{dropped} released and another labelled provider healthy"),
            |p| {
                if released.is_none() && !p.contains_key(&dropped) {
                    released = Some(unlabelled.elapsed().as_secs_f64());
                }
                p.len() == 2
                    && !p.contains_key(&dropped)
                    && p.values().all(|s| s == "healthy")
                    && !runs(&self.net, dropped, &image)
            },
        )?;
        row.secs = Some(t0.elapsed().as_secs_f64());
        let reasons = release_reasons(&self.net, &id, &self.ids[dropped]);
        // A target that stops matching tells its deployer its new facts (issue #15, session
        // 54): released for that, not for its silence.
        if reasons
            .first()
            .is_some_and(|r| r.as_str() != "NoLongerMatches")
        {
            return Err(format!(
                "{}: node{dropped} released as {} ({} s after its unlabelling), not \
                 NoLongerMatches: did it not send its new facts, or did its restart take longer \
                 than offline_after_ms (30 s)?",
                row.phase,
                reasons.join(", "),
                released.map_or_else(|| "?".to_string(), |s| format!("{s:.1}")),
            ));
        }
        let reasons = if reasons.is_empty() {
            "reason not in node0's log".to_string()
        } else {
            reasons.join(", ")
        };
        let newcomers: Vec<usize> = after
            .keys()
            .copied()
            .filter(|i| !before.contains_key(i))
            .collect();
        row.notes.push(format!(
            "node{dropped} unlabelled: off the targets after {} s ({reasons}); {} healthy \
             {:.1} s after the unlabelling",
            released.map_or_else(|| "?".to_string(), |s| format!("{s:.1}")),
            names(newcomers),
            unlabelled.elapsed().as_secs_f64()
        ));
        self.delete(row, &id)
    }

    /// Waits (at most [`CONTRACTS_END`]; not asserted) until every contract of the rows'
    /// images has ended, then records how each row's ended.
    fn contract_outcomes(&self, rows: &mut [Row]) {
        let images: Vec<String> = rows.iter().flat_map(|r| r.images.clone()).collect();
        let deadline = Instant::now() + CONTRACTS_END;
        while Instant::now() < deadline
            && images.iter().any(|img| {
                deployer_contracts(&self.net, img)
                    .iter()
                    .any(|(_, _, s)| !CONTRACT_OVER.contains(&s.as_str()))
            })
        {
            std::thread::sleep(Duration::from_secs(2));
        }
        for row in rows.iter_mut() {
            for img in &row.images {
                for (_, _, s) in deployer_contracts(&self.net, img) {
                    *row.ended.entry(s).or_default() += 1;
                }
            }
        }
    }
}

/// Whether node `i`'s target is in `phase`.
fn is(phases: &Phases, i: usize, phase: &str) -> bool {
    phases.get(&i).is_some_and(|p| p == phase)
}

/// Whether exactly `nodes` are targets, each of them healthy.
fn all_healthy(phases: &Phases, nodes: &[usize]) -> bool {
    phases.len() == nodes.len() && nodes.iter().all(|i| is(phases, *i, "healthy"))
}

fn describe(phases: &Phases) -> String {
    if phases.is_empty() {
        return "none".into();
    }
    phases
        .iter()
        .map(|(i, p)| format!("node{i} {p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn names(nodes: impl IntoIterator<Item = usize>) -> String {
    let names: Vec<String> = nodes.into_iter().map(|i| format!("node{i}")).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" ")
    }
}

/// The phase's own checks once its goal held: no stray, no double contract, every expected
/// target healthy.
fn verdict(row: &Row) -> Result<(), String> {
    if !row.strays.is_empty() {
        return Err(format!(
            "{}: nodes outside {SELECTOR} ran the image or were its targets: {}",
            row.phase,
            names(row.strays.iter().copied())
        ));
    }
    if !row.doubles.is_empty() {
        return Err(format!(
            "{}: node0's ledger showed two live contracts of the image on {}",
            row.phase,
            names(row.doubles.iter().copied())
        ));
    }
    if row.healthy != row.expected {
        return Err(format!(
            "{}: {} of {} targets healthy",
            row.phase, row.healthy, row.expected
        ));
    }
    Ok(())
}

/// One phase of the bench, filling its row of the table.
type Phase = fn(&Bench, &mut Row) -> Result<(), String>;

/// The three phases in order; the first failure ends the run.
fn run(bench: &Bench, rows: &mut [Row]) -> Result<(), String> {
    bench.label_providers()?;
    let phases: [Phase; 3] = [
        Bench::push_with_a_kill,
        Bench::pull_all,
        Bench::replace_unmatched,
    ];
    for (row, phase) in rows.iter_mut().zip(phases) {
        eprintln!("{}: starting", row.phase);
        let outcome = phase(bench, row);
        row.load = load1();
        outcome?;
        verdict(row)?;
    }
    Ok(())
}

fn print_table(n: usize, rows: &[Row], failure: Option<&str>) {
    println!(
        "fleet convergence on {n} processes ({}); nodes {LABELLED:?} labelled {SELECTOR}",
        agora_bin().display()
    );
    println!(
        "{:<20} | {:>7} | {:>7} | {:>12} | {:>6} | {:>5} | notes",
        "phase", "s", "healthy", "non-matching", "double", "load"
    );
    for r in rows.iter().filter(|r| !r.images.is_empty()) {
        let mut notes = r.notes.clone();
        if !r.ended.is_empty() {
            notes.push(format!("contracts after the delete {:?}", r.ended));
        }
        println!(
            "{:<20} | {:>7} | {:>3}/{:<3} | {:>12} | {:>6} | {:>5.1} | {}",
            r.phase,
            r.secs
                .map_or_else(|| "—".to_string(), |s| format!("{s:.1}")),
            r.healthy,
            r.expected,
            r.strays.len(),
            r.doubles.len(),
            r.load,
            notes.join("; ")
        );
    }
    println!(
        "s: from `deploy create` until the phase's goal held; healthy: labelled targets healthy \
         at the last poll, of those the phase needs; non-matching: nodes outside {SELECTOR} \
         seen running the image or listed as its targets (must be 0); double: providers node0's \
         ledger showed with two live contracts of the image at once (must be 0); load: 1-min \
         load average at the phase's end"
    );
    match failure {
        Some(f) => println!("FAILED: {f}"),
        None => println!("all three phases passed"),
    }
}

fn main() {
    let n = usize::try_from(env_u64("AGORA_CONVERGE_NODES", 12)).unwrap_or(usize::MAX);
    if n < 7 {
        eprintln!(
            "fleet_converge: AGORA_CONVERGE_NODES={n}: a devnet of fewer than 7 nodes cannot \
             sign contracts; give 7 or more"
        );
        std::process::exit(2);
    }
    let wasm = match lora_gateway_wasm() {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "fleet_converge: no lora-gateway module ({e}); rustup target add wasm32-wasip1"
            );
            std::process::exit(2);
        }
    };
    let timeout = Duration::from_secs(env_u64("AGORA_CONVERGE_TIMEOUT", 300));
    let up_timeout = env_u64("AGORA_CONVERGE_UP_TIMEOUT", 300);
    let started = Instant::now();
    let net = TestDevnet::up(n, up_timeout, &[]);
    eprintln!(
        "{n} processes up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let ids = node_ids(&net);
    let bench = Bench {
        ids,
        others: (1..n).filter(|i| !LABELLED.contains(i)).collect(),
        net,
        wasm,
        timeout,
    };
    let mut rows = [
        Row::new("1 push --all, kill", LABELLED.len()),
        Row::new("2 pull --all", LABELLED.len()),
        Row::new("3 pull 2, unlabel", 2),
    ];
    let failure = run(&bench, &mut rows).err();
    if failure.is_none() {
        bench.contract_outcomes(&mut rows);
    }
    print_table(n, &rows, failure.as_deref());
    if let Some(failure) = failure {
        let id = rows
            .iter()
            .rev()
            .find(|r| !r.id.is_empty())
            .map(|r| r.id.clone())
            .unwrap_or_default();
        let everyone: Vec<usize> = (1..n).collect();
        dump(&bench.net, &id, &everyone);
        // Unwinding drops the bench: the nodes are stopped, their directory kept.
        panic!("fleet_converge failed: {failure}");
    }
    let dir = bench.net.dir.clone();
    drop(bench);
    if let Err(e) = processes_gone(&dir, PROCESSES_GONE) {
        panic!("fleet_converge: {e}");
    }
    println!(
        "{:.0} s in all; the devnet is down and none of its processes is left",
        started.elapsed().as_secs_f64()
    );
}
