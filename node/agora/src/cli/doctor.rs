//! `agora doctor`: checks a node's setup and says how to fix each failure.
//!
//! Checks, in order: the data directory, the key and token files (present, mode 0600), the
//! control API (answers with this token), the metrics listener (when configured), peers,
//! readiness (ledger at the chain's tip, orchestrator synced), this clock against the last
//! block's time, and free disk space. Exits non-zero when a check fails.

use std::path::Path;

use serde::Serialize;

use agora_api::client::ApiClient;
use agora_devnet::output::{print_json, print_table};
use agora_wire::now_ms;

/// Below this much free space the check fails; below 4× it warns.
const MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;
/// A last block this far ahead of this clock means this clock is behind.
const MAX_AHEAD_MS: u64 = 2_000;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// Broken: see the fix.
    Fail,
    /// Not applicable or not measurable here.
    Skip,
}

/// One check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub check: &'static str,
    /// How it went.
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// What to do (for warnings and failures).
    pub fix: Option<String>,
}

fn check(check: &'static str, outcome: Outcome, detail: String, fix: Option<String>) -> Check {
    Check {
        check,
        outcome,
        detail,
        fix,
    }
}

/// `agora doctor`
pub async fn doctor(dir: &Path, json: bool) -> anyhow::Result<()> {
    let checks = run_checks(dir).await;
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if json {
        print_json(&serde_json::json!({ "ok": failed == 0, "checks": checks }))?;
    } else {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| {
                let outcome = serde_json::to_value(c.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_uppercase))
                    .unwrap_or_default();
                vec![c.check.to_string(), outcome, c.detail.clone()]
            })
            .collect();
        print_table(&["CHECK", "RESULT", "DETAIL"], &rows);
        for c in checks.iter().filter(|c| c.fix.is_some()) {
            println!("fix {}: {}", c.check, c.fix.as_deref().unwrap_or_default());
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed; each has its fix above");
    }
    Ok(())
}

async fn run_checks(dir: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        out.push(check(
            "data dir",
            Outcome::Fail,
            format!("{} does not exist", dir.display()),
            Some(format!(
                "create a node there with `agora init --data-dir {}`, or pass the right --data-dir",
                dir.display()
            )),
        ));
        return out;
    }
    out.push(check(
        "data dir",
        Outcome::Ok,
        dir.display().to_string(),
        None,
    ));
    for (name, file) in [
        ("key file", agora_network::keys::KEY_FILE),
        ("token file", agora_api::API_TOKEN_FILE),
    ] {
        out.push(private_file(name, &dir.join(file), dir));
    }
    let api = api_checks(dir, &mut out).await;
    out.push(metrics_check(dir).await);
    if !api {
        for name in ["peers", "readiness", "clock"] {
            out.push(check(
                name,
                Outcome::Skip,
                "the control API does not answer".into(),
                None,
            ));
        }
    }
    out.push(disk_check(dir));
    out
}

fn private_file(name: &'static str, path: &Path, dir: &Path) -> Check {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return check(
                name,
                Outcome::Fail,
                format!("{}: {e}", path.display()),
                Some(format!(
                    "`agora init --data-dir {}` creates it (an existing key is kept)",
                    dir.display()
                )),
            );
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return check(
                name,
                Outcome::Fail,
                format!("{} is readable by others (mode {mode:o})", path.display()),
                Some(format!("chmod 600 {}", path.display())),
            );
        }
        check(
            name,
            Outcome::Ok,
            format!("{} mode {mode:o}", path.display()),
            None,
        )
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        check(
            name,
            Outcome::Skip,
            "permissions not checked here".into(),
            None,
        )
    }
}

/// The API, peers, readiness and clock checks; false when the API does not answer.
async fn api_checks(dir: &Path, out: &mut Vec<Check>) -> bool {
    let client = match ApiClient::for_data_dir(dir) {
        Ok(c) => c,
        Err(e) => {
            out.push(check(
                "control API",
                Outcome::Fail,
                e.to_string(),
                Some(e.to_string()),
            ));
            return false;
        }
    };
    let status = match client.status().await {
        Ok(s) => s,
        Err(e) => {
            out.push(check(
                "control API",
                Outcome::Fail,
                e.to_string(),
                Some(format!(
                    "start the node (`agora node run --data-dir {}`); if it runs, the token in \
                     api.token must be the one it started with (restart it)",
                    dir.display()
                )),
            ));
            return false;
        }
    };
    let addr = client.addr().map(|a| a.to_string()).unwrap_or_default();
    out.push(check(
        "control API",
        Outcome::Ok,
        format!(
            "{} answers at {addr}, up {} s",
            status.name, status.uptime_s
        ),
        None,
    ));
    let readiness = client.readiness().await;
    let alone = readiness.as_ref().is_ok_and(|r| r.alone);
    out.push(if status.peers > 0 {
        check(
            "peers",
            Outcome::Ok,
            format!("{} connected", status.peers),
            None,
        )
    } else if alone {
        check(
            "peers",
            Outcome::Ok,
            "none needed: a network of one (no bootstrap peers, nobody else in the genesis)".into(),
            None,
        )
    } else {
        check(
            "peers",
            Outcome::Fail,
            "no peer is connected".into(),
            Some(format!(
                "connect one: `agora peers connect MULTIADDR --data-dir {}` (a P2P address \
                 from `agora devnet status` or `agora status` on that node), or set \
                 network.bootstrap in config.toml",
                dir.display()
            )),
        )
    });
    match readiness {
        Ok(r) if r.ready => out.push(check(
            "readiness",
            Outcome::Ok,
            "connected, ledger at the chain's tip, orchestrator synced, market taking work".into(),
            None,
        )),
        Ok(r) => out.push(check(
            "readiness",
            Outcome::Fail,
            format!(
                "ledger at tip: {}, orchestrator synced: {}, market taking work: {}",
                r.ledger_at_tip, r.orchestrator_synced, r.market_restored
            ),
            Some(r.waiting_for.join("; ")),
        )),
        Err(e) => out.push(check("readiness", Outcome::Fail, e.to_string(), None)),
    }
    let ledger: Result<agora_api::ledger::LedgerStatus, _> = client.get("/v1/ledger/status").await;
    out.push(match ledger {
        Ok(l) => clock_check(l.last_block_at, now_ms()),
        Err(e) => check(
            "clock",
            Outcome::Skip,
            format!("no ledger to compare with: {e}"),
            None,
        ),
    });
    true
}

/// This clock against the last block's time (set by the proposer's clock): a block from the
/// future means this clock is behind. Peers do not report their clocks otherwise.
fn clock_check(last_block_at: Option<u64>, now: u64) -> Check {
    match last_block_at {
        None => check(
            "clock",
            Outcome::Skip,
            "no block yet to compare with".into(),
            None,
        ),
        Some(at) if at > now.saturating_add(MAX_AHEAD_MS) => check(
            "clock",
            Outcome::Warn,
            format!("the last block is {} ms ahead of this clock", at - now),
            Some(
                "this clock is behind the committee's: enable time sync (e.g. `timedatectl \
                 set-ntp true`); liveness checks and deadlines use local time"
                    .into(),
            ),
        ),
        Some(at) => check(
            "clock",
            Outcome::Ok,
            format!(
                "the last block is {} ms old by this clock",
                now.saturating_sub(at)
            ),
            None,
        ),
    }
}

async fn metrics_check(dir: &Path) -> Check {
    let Ok(addr) = std::fs::read_to_string(dir.join(agora_api::METRICS_ADDR_FILE)) else {
        return check(
            "metrics",
            Outcome::Skip,
            "off ([metrics] listen is not set in config.toml)".into(),
            None,
        );
    };
    let addr = addr.trim().to_string();
    let connect = tokio::net::TcpStream::connect(&addr);
    match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => check("metrics", Outcome::Ok, format!("listening at {addr}"), None),
        _ => check(
            "metrics",
            Outcome::Fail,
            format!("nothing answers at {addr} (metrics.addr)"),
            Some(
                "the node is stopped or its metrics port changed: restart it; a fixed port is \
                 set with [metrics] listen in config.toml"
                    .into(),
            ),
        ),
    }
}

/// Free space under `dir`, from POSIX `df -Pk` (no statvfs in std).
fn disk_check(dir: &Path) -> Check {
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .output();
    let free = out.ok().and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let line = text.lines().nth(1)?.to_string();
        let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
        Some(kib.saturating_mul(1024))
    });
    let Some(free) = free else {
        return check(
            "disk",
            Outcome::Skip,
            "free space unknown (`df -Pk` gave no answer)".into(),
            None,
        );
    };
    let mib = free / (1024 * 1024);
    let fix = Some(format!(
        "free space on the filesystem of {} (`agora storage gc` drops unpinned blocks)",
        dir.display()
    ));
    if free < MIN_FREE_BYTES {
        check("disk", Outcome::Fail, format!("{mib} MiB free"), fix)
    } else if free < 4 * MIN_FREE_BYTES {
        check("disk", Outcome::Warn, format!("{mib} MiB free"), fix)
    } else {
        check("disk", Outcome::Ok, format!("{mib} MiB free"), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_from_the_future_means_this_clock_is_behind() {
        assert_eq!(clock_check(Some(10_000), 5_000).outcome, Outcome::Warn);
        assert_eq!(clock_check(Some(5_000), 10_000).outcome, Outcome::Ok);
        assert_eq!(clock_check(Some(6_000), 5_000).outcome, Outcome::Ok);
        assert_eq!(clock_check(None, 5_000).outcome, Outcome::Skip);
    }

    #[cfg(unix)]
    #[test]
    fn a_token_readable_by_others_fails_with_chmod() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = tmp.path().join("api.token");
        std::fs::write(&f, "t").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let c = private_file("token file", &f, tmp.path());
        assert_eq!(c.outcome, Outcome::Fail);
        assert_eq!(c.fix, Some(format!("chmod 600 {}", f.display())));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            private_file("token file", &f, tmp.path()).outcome,
            Outcome::Ok
        );
    }
}
