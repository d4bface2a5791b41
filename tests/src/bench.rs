//! Helpers the process benches share (`tests/benches/scale.rs`, `provision.rs`, `upgrade.rs`,
//! `fleet_converge.rs`): knobs from the environment, the machine's load, quantiles, per-target
//! upgrade times, a node's readiness, a devnet's processes gone.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// `name` from the environment as a number, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The 1-min load average (NaN where `/proc/loadavg` cannot be read): wall-clock figures on a
/// shared machine are printed beside it.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The `q` quantile (0..=1, nearest rank) of `v`, NaN when empty.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[(((s.len() - 1) as f64) * q).round() as usize]
}

/// Whether the node in `data_dir` answers `/ready` with ready: connected, its ledger at the
/// tip, its orchestrator synced and its market holding its contracts' capacity again (a
/// restarted provider bids only then, THREATS C35); false while it does not answer.
pub fn node_ready(data_dir: &Path) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        match agora_api::client::ApiClient::for_data_dir(data_dir) {
            Ok(client) => client.readiness().await.is_ok_and(|r| r.ready),
            Err(_) => false,
        }
    })
}

/// Waits until no process's command line names `dir` (a devnet's nodes, after `devnet down`:
/// a killed process may take a moment to go); after `timeout`, an error lists those left.
pub fn processes_gone(dir: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &dir.display().to_string()])
            .output()
            .map_err(|e| format!("cannot run pgrep: {e}"))?;
        if out.stdout.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "processes of {} still run {} s after the devnet was brought down: {}",
                dir.display(),
                timeout.as_secs(),
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What polls of a deployer's `deploy status --json` saw of each target's upgrade step
/// (`upgrade.targets[].step`, which carries no time), in seconds from the upgrade's start: the
/// last poll showing it `waiting`, the first `starting`, the first `upgraded`.
#[derive(Debug, Default)]
pub struct UpgradeSteps {
    waiting: BTreeMap<String, f64>,
    starting: BTreeMap<String, f64>,
    upgraded: BTreeMap<String, f64>,
}

impl UpgradeSteps {
    /// Records one poll's status `st`, read `at` seconds from the start.
    pub fn observe(&mut self, st: &serde_json::Value, at: f64) {
        for t in st["upgrade"]["targets"].as_array().into_iter().flatten() {
            let (Some(node), Some(step)) = (t["node"].as_str(), t["step"].as_str()) else {
                continue;
            };
            let node = node.to_string();
            match step {
                "waiting" => {
                    self.waiting.insert(node, at);
                }
                "starting" => {
                    self.starting.entry(node).or_insert(at);
                }
                "upgraded" => {
                    self.upgraded.entry(node).or_insert(at);
                }
                _ => {}
            }
        }
    }

    /// Per upgraded target, seconds from its first `starting` poll to its first `upgraded`
    /// one; from its last `waiting` poll when no poll saw it starting (it went through within
    /// one poll), from the start when no poll saw it before it was upgraded.
    pub fn switch_times(&self) -> Vec<f64> {
        self.upgraded
            .iter()
            .map(|(node, up)| {
                let from = self
                    .starting
                    .get(node)
                    .or_else(|| self.waiting.get(node))
                    .copied()
                    .unwrap_or(0.0);
                up - from
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::UpgradeSteps;

    fn poll(steps: &[(&str, &str)]) -> serde_json::Value {
        let targets: Vec<serde_json::Value> = steps
            .iter()
            .map(|(node, step)| serde_json::json!({ "node": node, "step": step }))
            .collect();
        serde_json::json!({ "upgrade": { "targets": targets } })
    }

    #[test]
    fn a_switch_runs_from_the_first_starting_poll_to_the_first_upgraded_one() {
        let mut s = UpgradeSteps::default();
        s.observe(&serde_json::Value::Null, 0.0);
        s.observe(&poll(&[("a", "starting"), ("b", "waiting")]), 1.0);
        s.observe(&poll(&[("a", "starting"), ("b", "waiting")]), 2.0);
        s.observe(&poll(&[("a", "upgraded"), ("b", "waiting")]), 3.5);
        s.observe(&poll(&[("a", "upgraded"), ("b", "upgraded")]), 5.0);
        s.observe(&poll(&[("a", "upgraded"), ("b", "upgraded")]), 6.0);
        // a: 1.0 → 3.5; b: never seen starting, so from its last waiting poll (3.5) to 5.0.
        assert_eq!(s.switch_times(), vec![2.5, 1.5]);
    }

    #[test]
    fn a_target_not_yet_upgraded_has_no_switch_time() {
        let mut s = UpgradeSteps::default();
        s.observe(&poll(&[("a", "starting"), ("b", "held")]), 1.0);
        assert!(s.switch_times().is_empty());
    }
}
