//! Dependency order on one in-process node (`depends_on` in a manifest) with real WAT guests:
//! a service's dependencies start first, each ready (first poll answered, healthy) before the
//! next; stopping a service stops what depends on it first; a missing name, a cycle, an
//! ambiguous name and a dependency that never gets healthy are refused naming the services.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_devnet::Devnet;
use agora_hosting::{OrderError, ServiceError, ServiceHost, ServiceInfo, ServiceManifest};
use agora_runtime::{ServiceState, StopReason};

/// A guest that logs `NAME up` when it starts and answers `agora_health` with 1 (sick) until
/// it has been polled `healthy_after` times (`u32::MAX`: never healthy). Each name gives
/// different module bytes, so services never share a module's instance limit.
fn guest(name: &str, healthy_after: u32) -> Vec<u8> {
    let line = format!("{name} up");
    format!(
        r#"(module
  (import "agora" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (global $polls (mut i32) (i32.const 0))
  (data (i32.const 0) "{line}")
  (func (export "agora_init") (result i32)
    (call $log (i32.const 0) (i32.const {len}))
    (i32.const 0))
  (func (export "agora_poll") (result i32)
    (global.set $polls (i32.add (global.get $polls) (i32.const 1)))
    (i32.const 0))
  (func (export "agora_health") (result i32)
    (i32.lt_u (global.get $polls) (i32.const {healthy_after}))))"#,
        len = line.len(),
        healthy_after = healthy_after as i32,
    )
    .into_bytes()
}

fn manifest(name: &str, depends_on: &[&str]) -> ServiceManifest {
    let mut m = ServiceManifest::wasm(name, "1");
    m.limits.memory_bytes = 1 << 20;
    m.limits.fuel_per_second = 50_000_000;
    m.tick_ms = 10;
    m.depends_on = depends_on.iter().map(|d| d.to_string()).collect();
    m
}

/// Publishes a guest named `name` (bytes varied by `variant`) and stages it as `id`.
async fn stage(
    host: &ServiceHost,
    id: &str,
    name: &str,
    variant: &str,
    healthy_after: u32,
    depends_on: &[&str],
) -> Result<(), ServiceError> {
    let info = host
        .publish(
            guest(&format!("{name}{variant}"), healthy_after),
            manifest(name, depends_on),
        )
        .await?;
    host.stage(id, info.image.parse().unwrap())
        .await
        .map(|_| ())
}

fn row(host: &ServiceHost, id: &str) -> ServiceInfo {
    host.list().into_iter().find(|s| s.id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_start_first_when_ready_and_dependents_stop_first() {
    let net = Devnet::builder().nodes(1).spawn().await.unwrap();
    let host = &net.node(0).unwrap().services;
    // db reports itself sick at its first health read and healthy at the next (a second
    // later): cache must not start before that.
    stage(host, "db1", "db", "", 3, &[]).await.unwrap();
    stage(host, "cache1", "cache", "", 0, &["db"])
        .await
        .unwrap();
    stage(host, "web1", "web", "", 0, &["cache", "db"])
        .await
        .unwrap();
    stage(host, "other1", "other", "", 0, &[]).await.unwrap();
    host.start("other1").await.unwrap();

    let started = host.start_in_order("web1").await.unwrap();
    assert_eq!(started, ["db1", "cache1", "web1"]);
    let (db, cache, web) = (row(host, "db1"), row(host, "cache1"), row(host, "web1"));
    for s in [&db, &cache, &web] {
        assert_eq!(s.state, ServiceState::Active, "{}", s.id);
    }
    assert_eq!(web.depends_on, ["cache", "db"]);
    let at = |s: &ServiceInfo| s.started_at_ms.unwrap();
    // cache waited for db's healthy answer, a second after db started; web for cache.
    assert!(
        at(&cache) >= at(&db) + 900,
        "db {} cache {}",
        at(&db),
        at(&cache)
    );
    assert!(
        at(&web) >= at(&cache),
        "cache {} web {}",
        at(&cache),
        at(&web)
    );
    let db_health = host.health("db1").unwrap();
    assert_eq!(
        db_health.guest_health,
        Some(0),
        "db was healthy before cache"
    );
    assert!(host.metering("cache1").unwrap().polls >= 1);

    // Stopping db stops web, then cache, then db; the unrelated service keeps running.
    let stopped = host.stop_in_order("db1").await.unwrap();
    let ids: Vec<&str> = stopped.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["web1", "cache1", "db1"]);
    assert!(stopped.iter().all(|(_, r)| *r == StopReason::Requested));
    let (db, cache, web) = (row(host, "db1"), row(host, "cache1"), row(host, "web1"));
    let end = |s: &ServiceInfo| s.stopped_at_ms.unwrap();
    assert!(end(&web) <= end(&cache) && end(&cache) <= end(&db));
    assert_eq!(row(host, "other1").state, ServiceState::Active);
    assert_eq!(row(host, "other1").stopped_at_ms, None);

    // Starting cache starts db again (a restarted db must answer anew), not web.
    let started = host.start_in_order("cache1").await.unwrap();
    assert_eq!(started, ["db1", "cache1"]);
    assert!(at(&row(host, "cache1")) >= at(&row(host, "db1")) + 900);
    assert_eq!(
        row(host, "web1").state,
        ServiceState::Stopped(StopReason::Requested)
    );
    // A dependency already running is not started again.
    assert_eq!(host.start_in_order("web1").await.unwrap(), ["web1"]);

    // A second `db` (an upgrade's new instance) runs: stopping the first stops nothing else.
    stage(host, "db2", "db", "-v2", 0, &[]).await.unwrap();
    host.start("db2").await.unwrap();
    let stopped = host.stop_in_order("db1").await.unwrap();
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(row(host, "web1").state, ServiceState::Active);
    assert_eq!(row(host, "cache1").state, ServiceState::Active);
    // Stopping a service that is not running stops only it (its recorded reason).
    assert_eq!(
        host.stop_in_order("db1").await.unwrap(),
        [("db1".to_string(), StopReason::Requested)]
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_cyclic_ambiguous_and_sick_dependencies_are_refused_naming_them() {
    let net = Devnet::builder().nodes(1).spawn().await.unwrap();
    let host = &net.node(0).unwrap().services;

    // A name nothing staged has: start refuses, naming both, and starts nothing.
    stage(host, "app1", "app", "", 0, &["absent"])
        .await
        .unwrap();
    let err = host.start("app1").await.unwrap_err();
    assert!(
        matches!(&err, ServiceError::Order(OrderError::Missing { service, dependency })
            if service == "app" && dependency == "absent"),
        "{err}"
    );
    assert_eq!(row(host, "app1").state, ServiceState::Staged);

    // A cycle is refused when its second half is staged, with the names.
    stage(host, "a1", "a", "", 0, &["b"]).await.unwrap();
    let err = stage(host, "b1", "b", "", 0, &["a"]).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, ServiceError::Order(OrderError::Cycle { .. })),
        "{text}"
    );
    assert!(text.contains("a -> b -> a"), "{text}");
    assert!(host.list().iter().all(|s| s.id != "b1"), "b1 not staged");

    // Two staged `dup`s, neither running: which one is the operator's choice.
    stage(host, "dup1", "dup", "-1", 0, &[]).await.unwrap();
    stage(host, "dup2", "dup", "-2", 0, &[]).await.unwrap();
    stage(host, "user1", "user", "", 0, &["dup"]).await.unwrap();
    let err = host.start("user1").await.unwrap_err();
    assert!(
        matches!(&err, ServiceError::AmbiguousDependency { ids, .. } if ids == &["dup1", "dup2"]),
        "{err}"
    );
    assert!(
        ["dup1", "dup2", "user1"]
            .iter()
            .all(|id| row(host, id).state == ServiceState::Staged)
    );
    // Once one runs, it is the dependency.
    host.start("dup2").await.unwrap();
    assert_eq!(host.start_in_order("user1").await.unwrap(), ["user1"]);

    // A dependency that never gets healthy: the wait is bounded and the error says why; the
    // dependency is left running for the operator to inspect, the dependent is not started.
    stage(host, "sick1", "sick", "", u32::MAX, &[])
        .await
        .unwrap();
    stage(host, "needy1", "needy", "", 0, &["sick"])
        .await
        .unwrap();
    let err = host
        .start_in_order_within("needy1", Duration::from_millis(1500))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, ServiceError::DependencyNotReady { dependency, .. } if dependency == "sick1"),
        "{text}"
    );
    assert!(text.contains("agora_health answers 1"), "{text}");
    assert_eq!(row(host, "sick1").state, ServiceState::Active);
    assert_eq!(row(host, "needy1").state, ServiceState::Staged);
    net.shutdown().await;
}

/// Stages a guest named `name` (bytes varied by `variant`) as `id` for a contract of
/// `customer` (a byte of its id).
async fn stage_for(
    host: &ServiceHost,
    id: &str,
    name: &str,
    variant: &str,
    depends_on: &[&str],
    customer: u8,
) -> Result<(), ServiceError> {
    let info = host
        .publish(
            guest(&format!("{name}{variant}"), 0),
            manifest(name, depends_on),
        )
        .await?;
    let ceiling = agora_hosting::ceiling::ContractCeiling {
        contract: agora_contracts::ContractId([customer; 32]),
        customer: agora_market::NodeId([customer; 32]),
        memory_bytes: 1 << 20,
        cpu_millis: 1_000,
        end: agora_hosting::ceiling::ServiceEnd::At(agora_wire::now_ms() + 60_000),
    };
    host.stage_for_contract(id, info.image.parse().unwrap(), &ceiling)
        .await
        .map(|_| ())
}

/// THREATS C14: names resolve among one party's services only (a contract's customer's, or the
/// operator's own). Another customer's service of the same name that depends on a name nobody
/// has does not make an honest customer's service unstartable, one that depends on the honest
/// customer's service's name does not start it, and a cycle across customers is no cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_resolve_among_one_customers_services_only() {
    let net = Devnet::builder().nodes(1).spawn().await.unwrap();
    let host = &net.node(0).unwrap().services;
    // Customer 1 (honest): a gateway. Customer 2 (hostile): the same name depending on a name
    // nobody has, and another service depending on "gw".
    stage_for(host, "honest", "gw", "", &[], 1).await.unwrap();
    stage_for(host, "shadow", "gw", "x", &["nope"], 2)
        .await
        .unwrap();
    stage_for(host, "leech", "leech", "", &["gw"], 2)
        .await
        .unwrap();
    // What a provider asks before arming a contract (the hostile ones are called off).
    assert_eq!(host.unresolved_dependency("honest").unwrap(), None);
    for hostile in ["shadow", "leech"] {
        let why = host.unresolved_dependency(hostile).unwrap();
        assert!(
            why.as_deref().is_some_and(|w| w.contains("nope")),
            "{hostile}: {why:?}"
        );
    }
    assert_eq!(host.start_in_order("honest").await.unwrap(), ["honest"]);
    assert_eq!(row(host, "honest").state, ServiceState::Active);
    // The hostile customer's own services see only its own names.
    assert!(matches!(
        host.start_in_order("shadow").await,
        Err(ServiceError::Order(OrderError::Missing { .. }))
    ));
    assert_eq!(row(host, "shadow").state, ServiceState::Staged);
    host.stop("honest").await.unwrap();
    // "leech" depends on "gw": its own customer's is "shadow", which cannot start; the honest
    // customer's stopped "gw" is neither started nor used.
    assert!(host.start_in_order("leech").await.is_err());
    assert_eq!(
        row(host, "honest").state,
        ServiceState::Stopped(StopReason::Requested)
    );
    // Two customers' services depending on each other's names close no cycle.
    stage_for(host, "a", "ping", "", &["pong"], 3)
        .await
        .unwrap();
    stage_for(host, "b", "pong", "", &["ping"], 4)
        .await
        .unwrap();
}
