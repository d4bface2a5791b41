//! A customer's own guest that stops on its honest provider (THREATS P3), on a 7-node devnet
//! of real processes: nodes 1–5 run `agora-byzantine --no-bid` (honest arbitrators that do not
//! bid), so node 0, a plain `agora` process, is the provider of the customer A's (node 6, plain
//! `agora`) two hosted contracts. A's images are guests that, on their first boot, trap on
//! their 40th poll (2 s at `tick_ms = 50`) or exit cleanly (WASI `proc_exit(0)`) on it, and run
//! well once restarted; their manifests have no `[restart]` section (policy `never`). Before
//! session 46 the stop was for good, the provider answered the probes "not running", the rest
//! of the term was confirmed down and the contract ended `Slashed`, the provider's stake paid
//! to A. The second test (THREATS C14) has A buy an image, named like another customer's
//! service on the same provider, that depends on a name nobody has.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora` (cargo builds
//! `agora-byzantine` itself for this test), then
//! `nice cargo test -p agora-tests --test e2e attack_guest::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agora_contracts::ContractStatus;
use agora_devnet::demo::story::wait_for;
use agora_devnet::files::CONTRACT_NODES;
use agora_tests::adversary::{ByzantineLauncher, TestLauncher};
use agora_tests::{agora_bin, alive, try_agora_json};

/// The honest provider: the only node that bids.
const PROVIDER: usize = 0;
/// The customer, A (the story's last node).
const CUSTOMER: usize = CONTRACT_NODES - 1;
/// The devices the images name (ones no radio sends for).
const DEVICES: [u32; 2] = [205, 206];
/// The hosted contract's term: long enough that the rest of it after the trap, confirmed
/// down, would slash the provider (the default `min_uptime_permille` is 900).
const DURATION_MS: u64 = 60_000;

/// Counts its boots in its key `boots` (`agora_init`); on its first boot it does `STOP` on
/// its 40th poll; later boots run on.
const STOPS_ON_FIRST_BOOT: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "agora" "kv_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "agora" "kv_put" (func $put (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "boots")
  (global $polls (mut i32) (i32.const 0))
  (func (export "agora_init") (result i32)
    (i64.store (i32.const 16) (i64.const 0))
    (drop (call $get (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8)))
    (i64.store (i32.const 16) (i64.add (i64.load (i32.const 16)) (i64.const 1)))
    (drop (call $put (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8)))
    (i32.const 0))
  (func (export "agora_poll") (result i32)
    (global.set $polls (i32.add (global.get $polls) (i32.const 1)))
    (if (i32.and
          (i64.eq (i64.load (i32.const 16)) (i64.const 1))
          (i32.ge_u (global.get $polls) (i32.const 40)))
      (then STOP))
    (i32.const 0)))"#;

/// The guest of [`STOPS_ON_FIRST_BOOT`] that stops with `stop`, and its directory name.
fn guest(stop: &str) -> (Vec<u8>, String) {
    let wat = STOPS_ON_FIRST_BOOT.replace("STOP", stop);
    let dir = if stop == "unreachable" {
        "hosted-trap"
    } else {
        "hosted-exit"
    };
    (wat::parse_str(&wat).unwrap(), dir.into())
}

fn launcher() -> ByzantineLauncher {
    ByzantineLauncher {
        honest: TestLauncher(agora_bin()),
        exe: env!("CARGO_BIN_EXE_agora-byzantine").into(),
        bad: (1..CUSTOMER)
            .map(|i| (i, vec!["--no-bid".into()]))
            .collect(),
        tune: None,
    }
}

/// A's guests stop on the provider a couple of seconds into their contracts, one with a trap,
/// one with a clean exit: the provider restarts each (whatever the manifest says: a contract's
/// guest is restarted after any stop but a requested one, 5 s apart at most), its second boot
/// runs the term out, and on every honest replica both contracts settle (not slashed) with the
/// provider paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_guest_that_stops_once_does_not_get_its_provider_slashed() {
    let test = "attack_guest::a_customers_guest_that_stops_once_does_not_get_its_provider_slashed";
    let Some((_tmp, s)) = agora_tests::story(test, Arc::new(launcher())).await else {
        return;
    };
    let mut hosted = Vec::new();
    for (stop, device) in ["unreachable", "(call $exit (i32.const 0))"]
        .into_iter()
        .zip(DEVICES)
    {
        let (module, dir) = guest(stop);
        let h = s
            .hosted_module(
                CUSTOMER,
                &dir,
                &module,
                "",
                &[device],
                DURATION_MS,
                None,
                |st| st == ContractStatus::Active,
            )
            .await
            .unwrap();
        assert_eq!(h.b, PROVIDER, "the only bidder won");
        hosted.push(h);
    }
    let provider_dir = s.m.nodes[PROVIDER].data_dir.display().to_string();
    // Until the terms are over, watch the provider's instances: each stops and is restarted.
    let mut restarted: Vec<Option<serde_json::Value>> = vec![None; hosted.len()];
    wait_for(
        "the end of the terms",
        DURATION_MS / 1000 + 90,
        async || {
            for (h, seen) in hosted.iter().zip(restarted.iter_mut()) {
                if seen.is_none() {
                    *seen =
                        try_agora_json(&["service", "show", &h.id, "--data-dir", &provider_dir])
                            .filter(|v| v["service"]["metering"]["restarts"].as_u64() >= Some(1));
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            for h in &hosted {
                s.contract(1, &h.id).await.filter(|r| r.status.is_final())?;
            }
            Some(())
        },
    )
    .await
    .unwrap();
    for h in &hosted {
        for i in 1..CUSTOMER {
            let r = s
                .wait_contract(i, &h.id, "settlement", 60, |r| r.status.is_final())
                .await
                .unwrap();
            assert_eq!(
                r.status,
                ContractStatus::Settled,
                "node{i}: the provider is not slashed for its customer's guest: {r:?}"
            );
            assert!(
                r.paid_to_provider > 0,
                "node{i}: the provider is paid: {r:?}"
            );
        }
    }
    let why: Vec<String> = restarted
        .into_iter()
        .map(|v| {
            let v = v.expect("the provider restarted each guest during its term");
            v["service"]["last_failure"].to_string()
        })
        .collect();
    assert!(why[0].contains("Trap"), "restarted after its trap: {why:?}");
    assert!(
        why[1].contains("Exited"),
        "restarted after its exit: {why:?}"
    );
    for (i, n) in s.m.nodes.iter().enumerate() {
        assert!(alive(u64::from(n.pid.unwrap())), "node{i} still runs");
    }
    eprintln!(
        "the guests stopped and were restarted ({why:?}); both contracts settled on every \
         honest replica"
    );
    s.down(true).await.unwrap();
}

/// Another customer, H (node 3, an honest arbitrator that does not bid), buys the demo's image
/// from node 0.
const HONEST: usize = 3;

/// H's term: its service only has to run beside A's refused namesake and settle paid (a
/// shorter term than [`DURATION_MS`] keeps the test short).
const HONEST_DURATION_MS: u64 = 20_000;

/// THREATS C14 on processes: H's hosted contract runs on the provider; then A buys one for an
/// image of the **same service name** whose manifest depends on a name nobody has. The
/// provider calls A's contract off before arming it (`arm-refused`: its service could not
/// start, and A could have had it slashed `NoActivation` for that), and H's service, its
/// namesake, runs its term out: every honest replica settles H's contract with the provider
/// paid, and A's is `Cancelled`, the provider's stake untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_depending_on_a_name_nobody_has_is_called_off_and_its_namesake_runs() {
    let test =
        "attack_guest::an_image_depending_on_a_name_nobody_has_is_called_off_and_its_namesake_runs";
    let Some((_tmp, s)) = agora_tests::story(test, Arc::new(launcher())).await else {
        return;
    };
    // Only node 0 may win it (A, a plain node, bids too: the auction admits providers near
    // node 0 only).
    let honest = s
        .hosted_by(
            HONEST,
            &[207],
            HONEST_DURATION_MS,
            Some(PROVIDER),
            ContractStatus::Active,
        )
        .await
        .unwrap();
    assert_eq!(honest.b, PROVIDER, "the only bidder won");
    // The demo's guest (another module: tagged), named like H's service, depending on `nope`.
    let demo = std::fs::read(s.m.dir.join("service").join("lora-gateway.wasm")).unwrap();
    let module = agora_devnet::files::tagged(&demo, 9);
    let hostile = s
        .hosted_module(
            CUSTOMER,
            "hosted-nope",
            &module,
            r#"depends_on = ["nope"]"#,
            &[208],
            DURATION_MS,
            None,
            ContractStatus::is_final,
        )
        .await
        .unwrap();
    assert_eq!(hostile.b, PROVIDER);
    assert_eq!(
        hostile.rec.status,
        ContractStatus::Cancelled,
        "called off before it was armed: {:?}",
        hostile.rec
    );
    let timeline = try_agora_json(&[
        "timeline",
        "--data-dir",
        &s.m.nodes[PROVIDER].data_dir.display().to_string(),
    ])
    .unwrap();
    assert!(
        timeline
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["phase"] == "arm-refused"
                && e["contract"] == hostile.id.as_str()
                && e["detail"].as_str().unwrap_or("").contains("nope")),
        "the provider says why: {timeline}"
    );
    for i in 1..CUSTOMER {
        let r = s
            .wait_contract(
                i,
                &honest.id,
                "H's settlement",
                HONEST_DURATION_MS / 1000 + 90,
                |r| r.status.is_final(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, ContractStatus::Settled, "node{i}: {r:?}");
        assert!(r.paid_to_provider > 0, "node{i}: {r:?}");
        let a = s.contract(i, &hostile.id).await.unwrap();
        assert_eq!(a.status, ContractStatus::Cancelled, "node{i}: {a:?}");
    }
    for (i, n) in s.m.nodes.iter().enumerate() {
        assert!(alive(u64::from(n.pid.unwrap())), "node{i} still runs");
    }
    s.down(true).await.unwrap();
}
