//! `agora_probe(nonce) -> i64` (THREATS P1): the live instance's value and a fresh instance's
//! agree for a guest whose export is a pure function of the nonce, and differ for one that
//! reads its own state; a guest without the export answers `None`; a runaway export is cut off
//! by `PROBE_FUEL` on both sides and stops the live service.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agora_runtime::test_utils;
use agora_runtime::{RuntimeError, ServiceState, StopReason};
use common::{WAIT, harness, roomy, tight};

/// `agora_probe(n) = n * 31 + 7`, whatever the instance has done.
const PURE: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "agora_poll") (result i32) (i32.const 0))
  (func (export "agora_probe") (param i64) (result i64)
    (i64.add (i64.mul (local.get 0) (i64.const 31)) (i64.const 7))))"#;

/// `agora_probe(n) = n + polls so far`: depends on the live instance's history.
const STATEFUL: &str = r#"(module
  (memory (export "memory") 1)
  (global $polls (mut i64) (i64.const 0))
  (func (export "agora_poll") (result i32)
    (global.set $polls (i64.add (global.get $polls) (i64.const 1)))
    (i32.const 0))
  (func (export "agora_probe") (param i64) (result i64)
    (i64.add (local.get 0) (global.get $polls))))"#;

/// No probe export.
const PLAIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "agora_poll") (result i32) (i32.const 0)))"#;

/// A probe export that never returns.
const RUNAWAY: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "agora_poll") (result i32) (i32.const 0))
  (func (export "agora_probe") (param i64) (result i64)
    (loop $l (br $l)) (i64.const 0)))"#;

/// Waits until the service has been polled (its instance runs).
async fn polled(h: &common::Harness, id: &agora_runtime::ServiceId) {
    tokio::time::timeout(WAIT, async {
        while h.manager.metering(id).unwrap().polls < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_pure_probe_export_answers_the_same_on_the_live_and_a_fresh_instance() {
    let h = harness();
    let id = h.run("pure", PURE, tight());
    polled(&h, &id).await;
    for nonce in [0_i64, 1, -5, i64::MAX / 64, 123_456_789] {
        let live = h.manager.probe(&id, nonce).await.unwrap();
        let module = test_utils::compile(&h.host, PURE);
        let fresh = h.manager.probe_fresh(module, tight(), nonce).await.unwrap();
        assert_eq!(live, Some(nonce.wrapping_mul(31).wrapping_add(7)));
        assert_eq!(live, fresh, "nonce {nonce}");
    }
    assert_eq!(h.manager.state(&id).unwrap(), ServiceState::Active);
    h.manager.stop(&id).unwrap();
    h.stopped(&id).await;
    assert!(
        matches!(
            h.manager.probe(&id, 1).await,
            Err(RuntimeError::WrongState { .. })
        ),
        "a stopped service answers no probe"
    );
}

#[tokio::test]
async fn a_stateful_probe_export_differs_from_a_fresh_instance() {
    let h = harness();
    let id = h.run("stateful", STATEFUL, tight());
    polled(&h, &id).await;
    let live = h.manager.probe(&id, 10).await.unwrap().unwrap();
    let module = test_utils::compile(&h.host, STATEFUL);
    let fresh = h.manager.probe_fresh(module, tight(), 10).await.unwrap();
    assert_eq!(fresh, Some(10), "a fresh instance was never polled");
    assert!(live > 10, "the live one was: {live}");
    h.manager.stop(&id).unwrap();
    h.stopped(&id).await;
}

#[tokio::test]
async fn without_the_export_a_probe_has_no_value() {
    let h = harness();
    let id = h.run("plain", PLAIN, tight());
    polled(&h, &id).await;
    assert_eq!(h.manager.probe(&id, 3).await.unwrap(), None);
    let module = test_utils::compile(&h.host, PLAIN);
    assert_eq!(
        h.manager.probe_fresh(module, tight(), 3).await.unwrap(),
        None
    );
    h.manager.stop(&id).unwrap();
    h.stopped(&id).await;
}

#[tokio::test]
async fn a_runaway_probe_export_runs_out_of_fuel_on_both_sides() {
    let h = harness();
    let id = h.run("runaway", RUNAWAY, tight());
    polled(&h, &id).await;
    let live = tokio::time::timeout(WAIT, h.manager.probe(&id, 1))
        .await
        .unwrap();
    assert!(matches!(live, Err(RuntimeError::Probe { .. })), "{live:?}");
    assert_eq!(h.stopped(&id).await, StopReason::CpuLimit);
    let module = test_utils::compile(&h.host, RUNAWAY);
    let fresh = tokio::time::timeout(WAIT, h.manager.probe_fresh(module, tight(), 1))
        .await
        .unwrap();
    assert!(
        matches!(fresh, Err(RuntimeError::Probe { .. })),
        "{fresh:?}"
    );
}

/// A start-up that never returns, behind a probe export.
const LOOPING_INIT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "agora_init") (result i32) (loop $l (br $l)) (i32.const 0))
  (func (export "agora_poll") (result i32) (i32.const 0))
  (func (export "agora_probe") (param i64) (result i64) (local.get 0)))"#;

/// THREATS G2: a fresh probe instance gets at most `FRESH_PROBE_FUEL_PER_SECOND` whatever its
/// manifest asks, so a looping start-up runs out of fuel (not into the 2 s lifetime); and at most
/// two run at once, a third refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_probe_runs_under_a_fuel_cap_and_few_run_at_once() {
    let h = harness();
    let module = test_utils::compile(&h.host, LOOPING_INIT);
    let started = std::time::Instant::now();
    let fresh = tokio::time::timeout(WAIT, h.manager.probe_fresh(module.clone(), roomy(), 1))
        .await
        .unwrap();
    let took = started.elapsed();
    let Err(RuntimeError::Probe { reason, .. }) = fresh else {
        panic!("{fresh:?}")
    };
    assert!(
        reason.contains("CpuLimit"),
        "out of fuel, not of time: {reason} after {took:?}"
    );
    // Two at once run; a third is refused while they do.
    let (a, b, c) = tokio::join!(
        h.manager.probe_fresh(module.clone(), roomy(), 1),
        h.manager.probe_fresh(module.clone(), roomy(), 2),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            h.manager.probe_fresh(module.clone(), roomy(), 3).await
        }
    );
    for r in [&a, &b] {
        assert!(
            matches!(r, Err(RuntimeError::Probe { reason, .. }) if reason.contains("CpuLimit")),
            "{r:?}"
        );
    }
    assert!(
        matches!(&c, Err(RuntimeError::Probe { reason, .. }) if reason.contains("busy")),
        "{c:?}"
    );
}
