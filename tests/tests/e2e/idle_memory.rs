//! `scripts/idle_memory.sh`, the command behind docs/PERFORMANCE.md "Idle memory", works as
//! written: it starts a devnet of real processes, reads each node's memory, prints one line,
//! and leaves neither processes nor files behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agora_tests::{assert_no_process_under, run_script};

#[test]
fn idle_memory_script_measures_a_devnet_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let stdout = run_script(tmp.path(), 300, "idle_memory.sh", &["2", "1"], &[]);
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
    assert_no_process_under(tmp.path());
}
