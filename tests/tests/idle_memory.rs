//! `scripts/idle_memory.sh`, the command behind docs/PERFORMANCE.md "Idle memory", works as
//! written: it starts a devnet of real processes, reads each node's memory, prints one line,
//! and leaves neither processes nor files behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use agora_tests::agora_bin;

#[test]
fn idle_memory_script_measures_a_devnet_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = agora_bin();
    let out = Command::new("timeout")
        .args(["300", "bash", "scripts/idle_memory.sh", "2", "1"])
        .arg(&bin)
        .current_dir(&repo)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "idle_memory.sh failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "2 of 2 nodes after 1 s idle: PSS mean 10.8 MiB (max 11.3), anonymous mean ..."
    assert!(
        stdout.starts_with("2 of 2 nodes after 1 s idle: PSS mean "),
        "{stdout}"
    );
    let mean: f64 = stdout
        .split("PSS mean ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no PSS figure in {stdout}"));
    assert!(mean > 0.0, "{stdout}");
    // Its devnet is gone: no directory left, no node process running from it.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let running = Command::new("pgrep")
        .args(["-f", &tmp.path().display().to_string()])
        .output()
        .unwrap();
    assert!(
        running.stdout.is_empty(),
        "node processes still running: {}",
        String::from_utf8_lossy(&running.stdout)
    );
}
