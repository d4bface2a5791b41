//! `scripts/contract_cost.sh`, the command behind docs/PERFORMANCE.md "What a running contract
//! costs", works as written: it starts a devnet of real processes, measures them idle, deploys
//! a replica to every node but node0, measures them again once all are healthy, and leaves
//! neither processes nor files behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agora_tests::{assert_no_process_under, run_script};

#[test]
fn contract_cost_script_measures_a_devnet_running_replicas_and_cleans_up() {
    if agora_tests::lora_module("contract_cost").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let stdout = run_script(
        tmp.path(),
        600,
        "contract_cost.sh",
        &["8"],
        &[("WINDOW", "1"), ("SETTLE", "1")],
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("idle: arbitrators p50 ")),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("7 of 7 healthy after ")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("running: arbitrators p50 ")),
        "{stdout}"
    );
    // Nothing left: no process of this run, no devnet directory.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("agora-contract-cost.")
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_no_process_under(tmp.path());
}
