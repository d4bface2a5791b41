//! The NAT lab's own selftest (`scripts/netlab.sh selftest`, docs/NETLAB.md "The selftest"),
//! run with the rest of the suite so a change to the lab or to the machine cannot leave the
//! `nat::` and `shared_port::` scenes standing on a lab that no longer behaves: a cone lab and
//! a symmetric lab, each proving that both homes reach the public node and are seen at their
//! router's address, that nothing reaches a home from outside, one mapping per socket behind
//! cone NATs and three behind symmetric ones, a UDP hole punch that works only behind cone
//! NATs, and a relay that works behind both.
//!
//! Needs root, network namespaces and nftables: otherwise the script prints
//! `SKIPPED netlab: <reason>` and exits 0, and this test prints `SKIPPED netlab_selftest:
//! <reason>` (`agora_devnet::skipped`) and returns. About 25 s as root (two labs one after the
//! other, most of it the negative probes' timeouts; 37 s at a load average of 10).
//!
//! Mutation-checked by hand (docs/NETLAB.md): with the symmetric router's rule changed to plain
//! `masquerade`, the symmetric lab's mapping and hole-punch rows fail and so does this test.

use std::path::Path;
use std::process::Command;

/// The selftest's bound: `coreutils timeout` sends SIGTERM to the script's process group, on
/// which the script tears both labs down before exiting (its trap); SIGKILL 30 s later if that
/// hangs too, and then [`Labs`] removes what is left.
const LIMIT_S: &str = "180";
const KILL_AFTER_S: &str = "30";

/// The selftest's two labs, `<prefix>c` and `<prefix>s`: brought down when created (a lab left
/// with this prefix by a crashed run whose pid was reused) and when dropped, panic or not.
/// Without root `down` finds no namespace and removes nothing.
struct Labs<'a> {
    script: &'a Path,
    prefix: String,
}

impl Labs<'_> {
    fn down(&self) {
        for lab in ["c", "s"] {
            let _ = Command::new("bash")
                .arg(self.script)
                .args(["--prefix", &format!("{}{lab}", self.prefix), "down"])
                .output();
        }
    }
}

impl Drop for Labs<'_> {
    fn drop(&mut self) {
        self.down();
    }
}

#[test]
fn netlab_selftest_shows_cone_and_symmetric_nats_behave() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netlab.sh");
    // This test's pid keeps its labs apart from any other lab (the `nat::` scenes' included).
    let labs = Labs {
        script: &script,
        prefix: format!("nst{}", std::process::id() % 10_000_000),
    };
    labs.down();
    let out = Command::new("timeout")
        .args(["-k", KILL_AFTER_S, LIMIT_S, "bash"])
        .arg(&script)
        .args(["--prefix", &labs.prefix, "selftest"])
        .output()
        .expect("run `timeout 180 bash scripts/netlab.sh selftest` (coreutils)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Without root, namespaces or nftables the script says why on a line of its own, exit 0.
    if let Some(reason) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SKIPPED netlab: "))
    {
        assert!(out.status.success(), "{}\n{stdout}{stderr}", out.status);
        agora_devnet::skipped("netlab_selftest", reason);
        return;
    }
    assert!(
        out.status.success(),
        "netlab selftest failed ({}; 124 = still running after {LIMIT_S} s, 137 = killed \
         {KILL_AFTER_S} s later):\n{stdout}{stderr}",
        out.status
    );
    // Both labs ran (an exit 0 that checked nothing is not a pass).
    for lab in ["cone", "symmetric"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(lab) && l.contains("PASS")),
            "no {lab} rows:\n{stdout}"
        );
    }
    let verdict = stdout
        .lines()
        .find(|l| l.starts_with("netlab selftest: "))
        .unwrap_or_default();
    assert!(verdict.contains("PASSED"), "{verdict}\n{stdout}");
    eprintln!("{verdict}");
}
