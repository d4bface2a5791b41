//! Staging, activation, stop, restart policy, lifetime, instance limit, health, kv, cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agora_runtime::test_utils::{
    self, ALWAYS_SICK, ECHO, KV_COUNTER, SICK_UNTIL_SECOND_BOOT, TRAP,
};
use agora_runtime::{
    Backoff, Host, HostConfig, ModuleId, RestartPolicy, RuntimeError, ServiceId, ServiceSpec,
    ServiceState, StopReason,
};
use common::{WAIT, harness, tight};

#[tokio::test]
async fn staged_active_stopped_with_metering() {
    let mut h = harness();
    let id = h.stage("svc", ECHO, tight());
    assert_eq!(h.manager.state(&id).unwrap(), ServiceState::Staged);
    h.manager.start(&id).unwrap();
    assert_eq!(h.manager.state(&id).unwrap(), ServiceState::Active);
    for i in 0..5u8 {
        h.manager.push_reading(&id, vec![i; 10]).unwrap();
    }
    for i in 0..5u8 {
        let msg = h.next_published().await;
        assert_eq!(msg.payload, vec![i; 10]);
        assert_eq!(msg.seq, u64::from(i));
        assert_eq!(msg.digest, *blake3::hash(&msg.payload).as_bytes());
    }
    h.manager.stop(&id).unwrap();
    assert_eq!(h.stopped(&id).await, StopReason::Requested);
    let m = h.manager.metering(&id).unwrap();
    assert_eq!(m.readings_processed, 5);
    assert_eq!(m.published, 5);
    assert!(
        m.polls >= 1 && m.fuel_used > 0 && m.peak_memory_bytes == 65536,
        "{m:?}"
    );
    let list = h.manager.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, ServiceState::Stopped(StopReason::Requested));
    h.manager.remove(&id).unwrap();
    assert!(matches!(
        h.manager.state(&id),
        Err(RuntimeError::UnknownService(_))
    ));
}

#[tokio::test]
async fn on_failure_restarts_up_to_the_limit() {
    let h = harness();
    let module = test_utils::compile(&h.host, TRAP);
    let mut spec = ServiceSpec::new("crashy", module, tight());
    spec.restart = RestartPolicy::OnFailure { max_restarts: 2 };
    spec.backoff = Backoff {
        initial_ms: 50,
        max_ms: 80,
    };
    spec.tick_ms = 5;
    h.manager.stage(spec).unwrap();
    let id = "crashy".into();
    let t = Instant::now();
    h.manager.start(&id).unwrap();
    assert!(matches!(h.stopped(&id).await, StopReason::Trap(_)));
    assert_eq!(h.manager.metering(&id).unwrap().restarts, 2);
    // Two waits, 50 ms then 80 ms (the doubling capped): a lower bound sleeps guarantee.
    assert!(
        t.elapsed() >= Duration::from_millis(130),
        "{:?}",
        t.elapsed()
    );
}

/// Exits cleanly (WASI `proc_exit(0)`) on its third poll.
const EXITS_CLEANLY: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (global $polls (mut i32) (i32.const 0))
  (func (export "agora_poll") (result i32)
    (global.set $polls (i32.add (global.get $polls) (i32.const 1)))
    (if (i32.ge_u (global.get $polls) (i32.const 3)) (then (call $exit (i32.const 0))))
    (i32.const 0)))"#;

/// `Always` (a contract's guest) restarts after a clean exit too, which `OnFailure` leaves
/// stopped; failures in a row are counted; only a stop request ends it.
#[tokio::test]
async fn always_restarts_a_clean_exit_and_counts_quick_failures() {
    let h = harness();
    let module = test_utils::compile(&h.host, EXITS_CLEANLY);
    let mut on_failure = ServiceSpec::new("exits-once", module.clone(), tight());
    on_failure.restart = RestartPolicy::OnFailure { max_restarts: 5 };
    on_failure.tick_ms = 5;
    h.manager.stage(on_failure).unwrap();
    let once = "exits-once".into();
    h.manager.start(&once).unwrap();
    assert_eq!(h.stopped(&once).await, StopReason::Exited(0));
    assert_eq!(h.manager.metering(&once).unwrap().restarts, 0);

    let mut always = ServiceSpec::new("exits-always", module, tight());
    always.restart = RestartPolicy::Always;
    always.backoff = Backoff {
        initial_ms: 10,
        max_ms: 20,
    };
    always.tick_ms = 5;
    h.manager.stage(always).unwrap();
    let id = "exits-always".into();
    h.manager.start(&id).unwrap();
    tokio::time::timeout(WAIT, async {
        while h.manager.metering(&id).unwrap().restarts < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("restarted after each clean exit");
    let health = h.manager.health(&id).unwrap();
    assert_eq!(health.state, ServiceState::Active);
    assert!(health.quick_failures >= 3, "{health:?}");
    h.manager.stop(&id).unwrap();
    assert_eq!(h.stopped(&id).await, StopReason::Requested);
}

#[test]
fn backoff_doubles_per_failure_in_a_row_up_to_its_cap() {
    let b = Backoff {
        initial_ms: 1_000,
        max_ms: 30_000,
    };
    let delays: Vec<u64> = (1..=7).map(|n| b.delay(n).as_millis() as u64).collect();
    assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
    assert_eq!(b.delay(u32::MAX), Duration::from_millis(30_000));
    assert_eq!(b.reset_after(), Duration::from_secs(30));
    let huge = Backoff {
        initial_ms: u64::MAX / 2,
        max_ms: u64::MAX,
    };
    assert_eq!(huge.delay(40), Duration::from_millis(u64::MAX));
    // A cap below the first delay is the first delay.
    let odd = Backoff {
        initial_ms: 500,
        max_ms: 10,
    };
    assert_eq!(odd.delay(3), Duration::from_millis(500));
    assert_eq!(odd.reset_after(), Duration::from_secs(10));
}

/// An instance whose health export answers non-zero for `unhealthy_restart_ms` is stopped as
/// `Unhealthy` and, under `OnFailure`, restarted after its backoff; the next instance (which
/// counts its boots in the service's key-value store) is healthy and keeps running.
#[tokio::test]
async fn an_unhealthy_guest_is_restarted_after_its_backoff_and_recovers() {
    let h = harness();
    let module = test_utils::compile(&h.host, SICK_UNTIL_SECOND_BOOT);
    let mut spec = ServiceSpec::new("sick-once", module, tight());
    spec.restart = RestartPolicy::OnFailure { max_restarts: 3 };
    spec.backoff = Backoff {
        initial_ms: 200,
        max_ms: 200,
    };
    spec.unhealthy_restart_ms = Some(0);
    spec.tick_ms = 10;
    h.manager.stage(spec).unwrap();
    let id = "sick-once".into();
    h.manager.start(&id).unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let health = h.manager.health(&id).unwrap();
            if health.healthy && h.manager.metering(&id).unwrap().restarts == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the restarted instance never became healthy");
    assert_eq!(h.manager.state(&id).unwrap(), ServiceState::Active);
    assert_eq!(h.manager.health(&id).unwrap().guest_health, Some(0));
    h.manager.stop(&id).unwrap();
    assert_eq!(h.stopped(&id).await, StopReason::Requested);
    assert_eq!(h.manager.metering(&id).unwrap().restarts, 1);
    // The list says why the replaced instance stopped, and an operator reads it as text.
    let row = h.manager.list().into_iter().find(|s| s.id == id).unwrap();
    assert!(
        matches!(row.last_failure, Some(StopReason::Unhealthy(h)) if h != 0),
        "{:?}",
        row.last_failure
    );
    assert!(
        row.last_failure
            .unwrap()
            .to_string()
            .starts_with("unhealthy")
    );
}

/// A guest that stays sick uses up its restarts and stops as `Unhealthy(1)`; without
/// `unhealthy_restart_ms` the same guest is only reported unhealthy and keeps running.
#[tokio::test]
async fn a_guest_that_stays_sick_stops_unhealthy_after_its_restarts() {
    let h = harness();
    let module = test_utils::compile(&h.host, ALWAYS_SICK);
    let mut spec = ServiceSpec::new("sick", module, tight());
    spec.restart = RestartPolicy::OnFailure { max_restarts: 2 };
    spec.backoff = Backoff {
        initial_ms: 10,
        max_ms: 20,
    };
    spec.unhealthy_restart_ms = Some(0);
    spec.tick_ms = 10;
    h.manager.stage(spec).unwrap();
    let id = "sick".into();
    h.manager.start(&id).unwrap();
    assert_eq!(h.stopped(&id).await, StopReason::Unhealthy(1));
    assert_eq!(h.manager.metering(&id).unwrap().restarts, 2);

    let reported = h.run("sick-reported", ALWAYS_SICK, tight());
    tokio::time::timeout(WAIT, async {
        while h.manager.health(&reported).unwrap().guest_health != Some(1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the guest's health was never read");
    assert_eq!(h.manager.state(&reported).unwrap(), ServiceState::Active);
    assert!(!h.manager.health(&reported).unwrap().healthy);
}

/// A stop requested during a backoff ends the wait at once: the service stops `Requested`.
/// Meanwhile its health says it is restarting (active, but no instance runs).
#[tokio::test]
async fn a_stop_during_the_backoff_ends_it() {
    let h = harness();
    let module = test_utils::compile(&h.host, TRAP);
    let mut spec = ServiceSpec::new("waiting", module, tight());
    spec.restart = RestartPolicy::OnFailure { max_restarts: 5 };
    spec.backoff = Backoff {
        initial_ms: 3_600_000,
        max_ms: 3_600_000,
    };
    h.manager.stage(spec).unwrap();
    let id = "waiting".into();
    h.manager.start(&id).unwrap();
    tokio::time::timeout(WAIT, async {
        while h.manager.metering(&id).unwrap().restarts == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the trap never counted as a restart");
    let health = h.manager.health(&id).unwrap();
    assert!(!health.healthy);
    assert!(health.restarting, "{health:?}");
    assert_eq!(health.state, ServiceState::Active);
    h.manager.stop(&id).unwrap();
    assert_eq!(h.stopped(&id).await, StopReason::Requested);
}

#[tokio::test]
async fn lifetime_ends_the_service() {
    let h = harness();
    let mut limits = tight();
    limits.wall_clock_ms = Some(100);
    let id = h.run("short", ECHO, limits);
    assert_eq!(h.stopped(&id).await, StopReason::Lifetime);
}

#[tokio::test]
async fn limits_can_be_replaced_only_while_not_active() {
    let h = harness();
    let id = h.stage("later", ECHO, tight());
    let mut shorter = tight();
    shorter.wall_clock_ms = Some(100);
    h.manager.set_limits(&id, shorter.clone()).unwrap();
    assert_eq!(h.manager.limits(&id).unwrap(), shorter);
    let mut zero = tight();
    zero.fuel_per_second = 0;
    assert!(matches!(
        h.manager.set_limits(&id, zero),
        Err(RuntimeError::BadLimits { .. })
    ));
    let mut huge = tight();
    huge.memory_bytes = 1 << 30;
    assert!(matches!(
        h.manager.set_limits(&id, huge),
        Err(RuntimeError::OverHostMemory { .. })
    ));
    h.manager.start(&id).unwrap();
    assert!(matches!(
        h.manager.set_limits(&id, tight()),
        Err(RuntimeError::WrongState { .. })
    ));
    // The start used the replaced limits: the 100 ms lifetime ends it.
    assert_eq!(h.stopped(&id).await, StopReason::Lifetime);
    h.manager.set_limits(&id, tight()).unwrap();
}

#[tokio::test]
async fn max_instances_bounds_active_copies_of_a_module() {
    let h = harness();
    let mut limits = tight();
    limits.max_instances = 1;
    let a = h.run("a", ECHO, limits.clone());
    let b = h.stage("b", ECHO, limits);
    assert!(matches!(
        h.manager.start(&b),
        Err(RuntimeError::InstanceLimit { max: 1, .. })
    ));
    h.manager.stop(&a).unwrap();
    h.stopped(&a).await;
    h.manager.start(&b).unwrap();
    assert!(matches!(
        h.manager.start(&b),
        Err(RuntimeError::WrongState { .. })
    ));
}

/// Each contract's service is its own instance group (THREATS C5): the module's cap counts
/// only services of the same group, so one contract's instance never blocks another's start
/// (its provider would be slashed for not activating), while a group still holds its cap.
#[tokio::test]
async fn max_instances_counts_within_an_instance_group_only() {
    let h = harness();
    let mut limits = tight();
    limits.max_instances = 1;
    let module = test_utils::compile(&h.host, ECHO);
    let staged = |id: &str, group: Option<&str>| {
        let mut spec = ServiceSpec::new(id, module.clone(), limits.clone());
        spec.tick_ms = 10;
        spec.instance_group = group.map(str::to_string);
        h.manager.stage(spec).unwrap();
        ServiceId::from(id)
    };
    let local = staged("local", None);
    let one = staged("contract-1", Some("contract-1"));
    let two = staged("contract-2", Some("contract-2"));
    let again = staged("contract-2-again", Some("contract-2"));
    h.manager.start(&local).unwrap();
    h.manager.start(&one).unwrap();
    h.manager.start(&two).unwrap();
    assert!(matches!(
        h.manager.start(&again),
        Err(RuntimeError::InstanceLimit { max: 1, .. })
    ));
    // What a provider sees before it commits to starting a service later: the cap and the
    // others of the module in its group, active or staged (THREATS C5).
    let (max, rivals) = h.manager.instance_rivals(&again).unwrap();
    assert_eq!((max, rivals), (1, vec![(two.clone(), true)]));
    let (_, rivals) = h.manager.instance_rivals(&one).unwrap();
    assert!(rivals.is_empty(), "{rivals:?}");
    h.manager.stop(&two).unwrap();
    h.stopped(&two).await;
    let (_, rivals) = h.manager.instance_rivals(&again).unwrap();
    assert!(rivals.is_empty(), "a stopped one holds nothing: {rivals:?}");
    let (_, rivals) = h.manager.instance_rivals(&two).unwrap();
    assert_eq!(rivals, vec![(again.clone(), false)], "a staged one counts");
}

#[tokio::test]
async fn health_reports_an_active_polled_service() {
    let h = harness();
    let id = h.run("healthy", ECHO, tight());
    let healthy = tokio::time::timeout(WAIT, async {
        loop {
            let health = h.manager.health(&id).unwrap();
            if health.healthy {
                return health;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(healthy.state, ServiceState::Active);
    h.manager.stop(&id).unwrap();
    h.stopped(&id).await;
    assert!(!h.manager.health(&id).unwrap().healthy);
}

/// Answers every poll, but its health export says 1 (unhealthy).
const SICK: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "agora_poll") (result i32) (i32.const 0))
  (func (export "agora_health") (result i32) (i32.const 1)))"#;

#[tokio::test]
async fn a_sick_guest_is_heard_with_its_first_poll_and_never_healthy() {
    let h = harness();
    let id = h.run("sick", SICK, tight());
    // The first completed poll already carries the guest's verdict: there is no moment when
    // the service answers but its export has not been heard (and it would look healthy).
    let first = tokio::time::timeout(WAIT, async {
        loop {
            let health = h.manager.health(&id).unwrap();
            if health.last_poll_ms_ago.is_some() {
                return health;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(first.guest_health, Some(1));
    assert!(!first.healthy);
    assert_eq!(first.state, ServiceState::Active);
    h.manager.stop(&id).unwrap();
    h.stopped(&id).await;
}

#[tokio::test]
async fn kv_persists_across_restarts_and_log_is_captured() {
    let mut h = harness();
    let id = h.run("kv", KV_COUNTER, tight());
    let first = h.next_published().await;
    assert_eq!(first.payload, 1u64.to_le_bytes());
    h.manager.stop(&id).unwrap();
    h.stopped(&id).await;
    while h.outbox.try_recv().is_ok() {}
    let before = h.manager.metering(&id).unwrap().polls;
    h.manager.start(&id).unwrap();
    let next = h.next_published().await;
    let n = u64::from_le_bytes(next.payload.try_into().unwrap());
    assert!(
        n > before,
        "count {n} restarted instead of continuing past {before}"
    );
    assert!(h.manager.logs(&id).unwrap().contains("counted\n"));
}

#[test]
fn artifacts_are_cached_across_hosts_and_bytes_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let first = test_utils::host(dir.path());
    let m = test_utils::compile(&first, ECHO);
    assert!(!m.from_cache());
    drop(first);
    let second = test_utils::host(dir.path());
    let id = ModuleId::for_bytes(ECHO.as_bytes());
    assert!(second.load_cached(&id).unwrap().unwrap().from_cache());
    assert!(test_utils::compile(&second, ECHO).from_cache());

    // A host with another artifact key does not trust this cache.
    let other = Host::new(HostConfig::new(dir.path().join("artifacts"), [7; 32])).unwrap();
    assert!(other.load_cached(&id).unwrap().is_none());

    let wrong = ModuleId::for_bytes(b"something else");
    assert!(matches!(
        second.load(&wrong, ECHO.as_bytes()),
        Err(RuntimeError::ModuleHashMismatch { .. })
    ));
}

#[test]
fn modules_without_the_guest_abi_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let host = test_utils::host(dir.path());
    let wat = "(module (memory (export \"memory\") 1))";
    let err = host
        .load(&ModuleId::for_bytes(wat.as_bytes()), wat.as_bytes())
        .unwrap_err();
    assert!(matches!(
        err,
        RuntimeError::MissingExport {
            export: "agora_poll",
            ..
        }
    ));
    let wat = r#"(module (import "evil" "f" (func)) (memory (export "memory") 1)
        (func (export "agora_poll") (result i32) (i32.const 0)))"#;
    let err = host
        .load(&ModuleId::for_bytes(wat.as_bytes()), wat.as_bytes())
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Compile { .. }), "{err}");
}

#[tokio::test]
async fn exhausted_instance_pool_is_a_start_failure_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::new(dir.path().join("artifacts"), [1; 32]);
    config.max_instances = 1;
    let host = Host::new(config).unwrap();
    let kv = std::sync::Arc::new(agora_runtime::MemoryKv::default());
    let (manager, _outbox) = agora_runtime::ServiceManager::new(host.clone(), kv, 8);
    let first = test_utils::compile(&host, ECHO);
    let second = test_utils::compile(&host, KV_COUNTER);
    manager
        .stage(ServiceSpec::new("one", first, tight()))
        .unwrap();
    manager
        .stage(ServiceSpec::new("two", second, tight()))
        .unwrap();
    manager.start(&"one".into()).unwrap();
    // Let "one" take the only pool slot before "two" asks for it.
    tokio::time::timeout(WAIT, async {
        while manager.metering(&"one".into()).unwrap().polls == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    manager.start(&"two".into()).unwrap();
    let reason = tokio::time::timeout(WAIT, manager.wait_stopped(&"two".into()))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(reason, StopReason::StartFailed(_)), "{reason:?}");
    assert_eq!(manager.state(&"one".into()).unwrap(), ServiceState::Active);
    // Under `Always` (a contract's guest) it waits to start again, and its health says the
    // host failed to start it (not the guest's doing).
    let third = test_utils::compile(&host, SICK_UNTIL_SECOND_BOOT);
    let mut always = ServiceSpec::new("three", third, tight());
    always.restart = RestartPolicy::Always;
    manager.stage(always).unwrap();
    let three = "three".into();
    manager.start(&three).unwrap();
    let health = tokio::time::timeout(WAIT, async {
        loop {
            let h = manager.health(&three).unwrap();
            if h.restarting {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert!(health.start_failed, "{health:?}");
    manager.stop(&three).unwrap();
}

#[test]
fn stage_refuses_unusable_limits() {
    let h = harness();
    let module = test_utils::compile(&h.host, ECHO);
    let mut limits = tight();
    limits.fuel_per_second = 0;
    let err = h
        .manager
        .stage(ServiceSpec::new("zero", module.clone(), limits))
        .unwrap_err();
    match &err {
        RuntimeError::BadLimits { service, source } => {
            assert_eq!(service, "zero");
            assert_eq!(source.field, "fuel_per_second");
        }
        other => panic!("expected BadLimits, got {other:?}"),
    }
    let mut limits = tight();
    limits.memory_bytes = h.host.config().max_memory_bytes + 65536;
    assert!(matches!(
        h.manager.stage(ServiceSpec::new("big", module, limits)),
        Err(RuntimeError::OverHostMemory { .. })
    ));
}

#[test]
fn concurrent_loads_of_one_module_compile_it_once() {
    // An arbitrator of several contracts and provider of another, all with one image, loads it
    // from several tasks at once: the first compiles and caches, the others wait and reuse the
    // artifact (before, each compiled it, and all but one failed to cache it).
    let dir = tempfile::tempdir().unwrap();
    let host = test_utils::host(dir.path());
    let id = ModuleId::for_bytes(ECHO.as_bytes());
    let loads: Vec<_> = (0..6)
        .map(|_| {
            let host = host.clone();
            std::thread::spawn(move || host.load(&id, ECHO.as_bytes()).map(|m| m.from_cache()))
        })
        .collect();
    let cached: Vec<bool> = loads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert_eq!(host.compiles(), 1, "compiled once");
    assert_eq!(cached.iter().filter(|c| !**c).count(), 1, "{cached:?}");
    assert!(host.load_cached(&id).unwrap().unwrap().from_cache());
}
