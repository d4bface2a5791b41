//! Service host on in-process nodes: an image published on node0 is fetched over bitswap,
//! verified, compiled and run on node1, whose node key signs what the guest publishes; hostile
//! modules stop with a reason while another service keeps running.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_devnet::Devnet;
use agora_hosting::ceiling::{ContractCeiling, ServiceEnd};
use agora_hosting::{
    ImageRecord, PublishedMsg, ServiceError, ServiceHost, ServiceManifest, image::store_image,
};
use agora_runtime::test_utils::{ECHO, INFINITE_LOOP, MEMORY_BOMB, lora_frame, lora_gateway_wasm};
use agora_runtime::{ModuleId, RuntimeError, ServiceState, StopReason};
use agora_storage::hash::{DAG_CBOR, cid_v1_blake3};
use tokio::sync::broadcast;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

fn lora_manifest() -> ServiceManifest {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../runtime/examples/lora-gateway/service.toml"
    );
    ServiceManifest::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn next_msg(rx: &mut broadcast::Receiver<PublishedMsg>, service: &str) -> PublishedMsg {
    timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Ok(m) if m.service == service => return m,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("published channel closed: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no message from {service} within {WAIT:?}"))
}

fn batch_number(msg: &PublishedMsg) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    v["batch"].as_u64().unwrap()
}

async fn push_frames(host: &ServiceHost, id: &str, first_seq: u32, n: u32) {
    for seq in first_seq..first_seq + n {
        let device = 1 + seq % 3;
        host.push_reading(id, lora_frame(device, seq, 2150, 4800))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_published_on_node0_runs_on_node1_with_signed_batches() {
    let wasm = lora_gateway_wasm().unwrap_or_else(|e| panic!("{e}"));
    let net = Devnet::builder().nodes(2).spawn().await.unwrap();
    net.wait_connected(1, WAIT).await.unwrap();
    let (n0, n1) = (net.node(0).unwrap(), net.node(1).unwrap());

    let info = n0.services.publish(wasm, lora_manifest()).await.unwrap();
    assert_eq!(info.name, "lora-gateway");
    let image = info.image.parse().unwrap();

    // node1 has none of the blocks: staging fetches them from node0 over bitswap.
    let contract = "c0ffee0123456789";
    let staged = timeout(WAIT, n1.services.stage(contract, image))
        .await
        .unwrap()
        .unwrap();
    assert!(!staged.from_cache, "node1 never compiled this module");
    assert_eq!(staged.module_id, info.module_id);
    let listed = n1.services.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, ServiceState::Staged);
    assert_eq!(listed[0].image, info.image);

    let mut rx = n1.services.published();
    n1.services.start(contract).await.unwrap();
    push_frames(&n1.services, contract, 0, 16).await;
    for want in 0..2 {
        let msg = next_msg(&mut rx, contract).await;
        msg.verify().unwrap();
        assert_eq!(msg.node, net.node_id(1), "signed by the hosting node");
        assert_eq!(msg.seq, want);
        assert_eq!(batch_number(&msg), want);
    }
    let m = n1.services.metering(contract).unwrap();
    assert_eq!(m.readings_processed, 16);
    assert_eq!(m.published, 2);
    assert!(
        n1.services
            .logs(contract)
            .await
            .unwrap()
            .contains("lora-gateway started")
    );

    // A restarted service continues from its persistent key-value store.
    assert_eq!(
        n1.services.stop(contract).await.unwrap(),
        StopReason::Requested
    );
    assert!(n1.services.metering(contract).unwrap().fuel_used > 0);
    n1.services.start(contract).await.unwrap();
    push_frames(&n1.services, contract, 16, 8).await;
    let msg = next_msg(&mut rx, contract).await;
    msg.verify().unwrap();
    assert_eq!(batch_number(&msg), 2, "batch counter survived the restart");
    n1.services.stop(contract).await.unwrap();

    // A second staging of the same image reuses node1's compiled artifact.
    let again = n1.services.stage("second", image).await.unwrap();
    assert!(again.from_cache);
    assert!(matches!(
        n1.services.stage("second", image).await,
        Err(ServiceError::AlreadyStaged(_))
    ));

    // A node restart (same process, same data dir) with a service running reopens the guest
    // store; staged services are not remembered across restarts (the orchestrator re-stages).
    n1.services.start("second").await.unwrap();
    let mut net = net;
    net.stop(1).await;
    net.restart(1).await.unwrap();
    let n1 = net.node(1).unwrap();
    assert!(n1.services.list().is_empty());
    let restaged = n1.services.stage(contract, image).await.unwrap();
    assert!(restaged.from_cache, "the artifact cache survives a restart");
    let mut rx = n1.services.published();
    n1.services.start(contract).await.unwrap();
    push_frames(&n1.services, contract, 24, 8).await;
    assert_eq!(batch_number(&next_msg(&mut rx, contract).await), 3);
    net.shutdown().await;
}

/// THREATS C4: an ended contract's service is forgotten with its key-value state and its hold
/// on the image (the publisher keeps its own pin); a restarted node drops the holds of the
/// previous run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_contract_service_leaves_no_state_and_lets_go_of_its_image() {
    let wasm = lora_gateway_wasm().unwrap_or_else(|e| panic!("{e}"));
    let mut net = Devnet::builder().nodes(2).spawn().await.unwrap();
    net.wait_connected(1, WAIT).await.unwrap();
    let info = {
        let n0 = net.node(0).unwrap();
        n0.services.publish(wasm, lora_manifest()).await.unwrap()
    };
    let image = info.image.parse().unwrap();
    let pinned = async |net: &Devnet, i: usize| {
        let ls = net.node(i).unwrap().storage.ls().await.unwrap();
        (ls.pins.contains(&info.image), ls.held)
    };
    let contract = "ended0123456789";
    let n1 = net.node(1).unwrap();
    timeout(WAIT, n1.services.stage(contract, image))
        .await
        .unwrap()
        .unwrap();
    let (on_1, held) = pinned(&net, 1).await;
    assert!(on_1, "staging pins the image");
    assert_eq!(held[&info.image], vec![format!("service:{contract}")]);
    let mut rx = n1.services.published();
    n1.services.start(contract).await.unwrap();
    push_frames(&n1.services, contract, 0, 16).await;
    for want in 0..2 {
        assert_eq!(batch_number(&next_msg(&mut rx, contract).await), want);
    }
    n1.services.stop(contract).await.unwrap();

    n1.services.forget(contract).await.unwrap();
    assert!(n1.services.list().is_empty(), "the service is gone");
    let (on_1, held) = pinned(&net, 1).await;
    assert!(!on_1 && held.is_empty(), "node1 let go of the image");
    assert!(pinned(&net, 0).await.0, "the publisher keeps its own pin");
    // Staged again under the same id, it starts from no state: its batch counter is 0.
    n1.services.stage(contract, image).await.unwrap();
    n1.services.start(contract).await.unwrap();
    push_frames(&n1.services, contract, 16, 8).await;
    assert_eq!(batch_number(&next_msg(&mut rx, contract).await), 0);
    n1.services.stop(contract).await.unwrap();

    // A restart drops the holds of the previous run: nothing staged, nothing held or pinned.
    net.stop(1).await;
    net.restart(1).await.unwrap();
    let (on_1, held) = pinned(&net, 1).await;
    assert!(!on_1 && held.is_empty(), "the previous run's hold is gone");
    net.shutdown().await;
}

fn limited(name: &str, memory_bytes: u64, fuel_per_second: u64) -> ServiceManifest {
    let mut m = ServiceManifest::wasm(name, "1");
    m.limits.memory_bytes = memory_bytes;
    m.limits.fuel_per_second = fuel_per_second;
    m.tick_ms = 10;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_modules_stop_with_a_reason_while_another_service_runs() {
    let net = Devnet::builder().nodes(1).spawn().await.unwrap();
    let host = &net.node(0).unwrap().services;
    let mut rx = host.published();

    let echo = host
        .publish(
            ECHO.as_bytes().to_vec(),
            limited("echo", 1 << 20, 50_000_000),
        )
        .await
        .unwrap();
    host.stage("echo", echo.image.parse().unwrap())
        .await
        .unwrap();
    host.start("echo").await.unwrap();

    let spin = host
        .publish(
            INFINITE_LOOP.as_bytes().to_vec(),
            limited("spin", 1 << 20, 5_000_000),
        )
        .await
        .unwrap();
    let bomb = host
        .publish(
            MEMORY_BOMB.as_bytes().to_vec(),
            limited("bomb", 2 << 20, 50_000_000),
        )
        .await
        .unwrap();
    for (id, info) in [("spin", &spin), ("bomb", &bomb)] {
        host.stage(id, info.image.parse().unwrap()).await.unwrap();
        host.start(id).await.unwrap();
    }
    assert_eq!(
        host.wait_stopped("spin", WAIT).await.unwrap(),
        StopReason::CpuLimit
    );
    assert_eq!(
        host.wait_stopped("bomb", WAIT).await.unwrap(),
        StopReason::MemoryLimit
    );
    assert!(host.metering("bomb").unwrap().peak_memory_bytes <= 2 << 20);

    // The well-behaved service is untouched and still answers.
    let show = host.list().into_iter().find(|s| s.id == "echo").unwrap();
    assert_eq!(show.state, ServiceState::Active);
    host.push_reading("echo", b"still here".to_vec()).unwrap();
    let msg = next_msg(&mut rx, "echo").await;
    msg.verify().unwrap();
    assert_eq!(msg.payload, b"still here");
    // Health is judged on recent polls; on a loaded machine give it a moment.
    let healthy = timeout(WAIT, async {
        while !host.health("echo").unwrap().healthy {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(healthy.await.is_ok(), "{:?}", host.health("echo"));
    assert_eq!(host.stop("echo").await.unwrap(), StopReason::Requested);
    net.shutdown().await;
}

/// A ceiling for a made-up contract: `memory_bytes`, `cpu_millis`, ending `end_in_ms` from now
/// (negative: already ended).
fn ceiling(memory_bytes: u64, cpu_millis: u64, end_in_ms: i64) -> ContractCeiling {
    let now = agora_wire::now_ms();
    ContractCeiling {
        contract: agora_contracts::ContractId([7; 32]),
        customer: agora_market::NodeId([8; 32]),
        memory_bytes,
        cpu_millis,
        end: ServiceEnd::At(now.saturating_add_signed(end_in_ms)),
    }
}

/// Why contract service `id` first stopped on its own (a contract's guest is then restarted
/// whatever its manifest says, THREATS P3, so it never stays stopped): waits for it, then
/// stops the service.
async fn first_failure(host: &ServiceHost, id: &str) -> StopReason {
    let reason = timeout(WAIT, async {
        loop {
            if let Some(r) = host
                .list()
                .into_iter()
                .find(|s| s.id == id)
                .and_then(|s| s.last_failure)
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the contract's service failed and was restarted");
    host.stop(id).await.unwrap();
    reason
}

/// THREATS G4: a contract's staging dropped while it still fetches its image (its deadline
/// passed) lets go of the image's hold instead of keeping it until restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_given_up_mid_way_releases_its_image() {
    let net = Devnet::builder().nodes(1).spawn().await.unwrap();
    let node = net.node(0).unwrap();
    let host = &node.services;
    // An image no one has: the staging holds it and waits on the fetch.
    let image = cid_v1_blake3(DAG_CBOR, b"an image no one has");
    let holder = "service:cut".to_string();
    let held = || {
        node.storage
            .holders()
            .values()
            .any(|hs| hs.contains(&holder))
    };
    let c = ceiling(2 << 20, 100, 60_000);
    let mut staging = Box::pin(host.stage_for_contract("cut", image, &c));
    // Poll the staging until it holds the image and waits on the fetch (a deadline, not a
    // count of yields: under load the storage task may take a while to record the hold).
    let seen = timeout(WAIT, async {
        while !held() {
            tokio::select! {
                biased;
                r = &mut staging => panic!("the staging finished before it was seen holding: {r:?}"),
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the staging took its hold");
    drop(staging);
    let released = timeout(WAIT, async {
        while held() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        released.is_ok(),
        "the image's hold is released: {:?}",
        node.storage.holders()
    );
    assert!(host.limits("cut").is_err(), "nothing was staged");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_service_runs_under_the_contracts_limits_not_its_manifests() {
    let net = Devnet::builder().nodes(1).spawn().await.unwrap();
    let host = &net.node(0).unwrap().services;
    // Manifests asking for far more than the contracts below bought.
    let greedy = |name: &str| {
        let mut m = limited(name, 64 << 20, 100_000_000_000);
        m.resources.memory_mb = 64;
        m.limits.instances = 8;
        m
    };
    let publish = |wat: &'static str, name: &'static str| {
        let m = greedy(name);
        async move {
            let info = host.publish(wat.as_bytes().to_vec(), m).await.unwrap();
            info.image.parse::<agora_storage::Cid>().unwrap()
        }
    };
    let bomb = publish(MEMORY_BOMB, "bomb").await;
    let spin = publish(INFINITE_LOOP, "spin").await;
    let echo = publish(ECHO, "echo").await;

    // Memory: the contract's 2 MiB, not the manifest's 64 MiB.
    host.stage_for_contract("bomb", bomb, &ceiling(2 << 20, 100, 60_000))
        .await
        .unwrap();
    let limits = host.limits("bomb").unwrap();
    assert_eq!(limits.memory_bytes, 2 << 20);
    assert_eq!(limits.max_instances, 1, "one instance per contract");
    assert!(
        limits.wall_clock_ms.is_some_and(|l| l <= 60_000),
        "{limits:?}"
    );
    host.start("bomb").await.unwrap();
    assert_eq!(first_failure(host, "bomb").await, StopReason::MemoryLimit);
    assert!(host.metering("bomb").unwrap().peak_memory_bytes <= 2 << 20);

    // CPU: 10 millicores at the host's rate, not the manifest's 10^11 fuel a second.
    host.stage_for_contract("spin", spin, &ceiling(2 << 20, 10, 60_000))
        .await
        .unwrap();
    let fuel =
        agora_runtime::HostConfig::new(std::env::temp_dir(), [0; 32]).fuel_per_second_for(10);
    assert_eq!(host.limits("spin").unwrap().fuel_per_second, fuel);
    host.start("spin").await.unwrap();
    assert_eq!(first_failure(host, "spin").await, StopReason::CpuLimit);

    // Lifetime: what is left of the contract, recomputed at start.
    host.stage_for_contract("echo", echo, &ceiling(2 << 20, 100, 1_500))
        .await
        .unwrap();
    host.start("echo").await.unwrap();
    assert_eq!(
        host.wait_stopped("echo", WAIT).await.unwrap(),
        StopReason::Lifetime
    );
    // The contract has ended by now: the service may not start again.
    let err = host.start("echo").await.unwrap_err();
    assert!(matches!(err, ServiceError::ContractEnded { .. }), "{err}");
    assert!(err.to_string().contains("cannot run any more"), "{err}");

    // A contract that ended before staging, and one that bought no memory.
    let late = host
        .stage_for_contract("late", echo, &ceiling(2 << 20, 100, -1))
        .await
        .unwrap_err();
    assert!(matches!(late, ServiceError::ContractEnded { .. }), "{late}");
    let broke = host
        .stage_for_contract("broke", echo, &ceiling(0, 100, 60_000))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &broke,
            ServiceError::Runtime(RuntimeError::BadLimits { source, .. })
                if source.field == "memory_bytes"
                    && source.side == agora_runtime::LimitsSide::Ceiling
        ),
        "{broke}"
    );
    assert!(
        host.list()
            .iter()
            .all(|s| s.id != "late" && s.id != "broke"),
        "nothing staged for an unusable contract"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_images_and_bad_requests_are_refused() {
    let net = Devnet::builder().nodes(1).spawn().await.unwrap();
    let node = net.node(0).unwrap();
    let host = &node.services;

    // An image whose record names the hash of other bytes than its module.
    let manifest = ServiceManifest::wasm("liar", "1");
    let m = manifest.clone();
    let forged = node
        .storage
        .embedded()
        .unwrap()
        .blocking(move |s| {
            let (_, mut record) = store_image(s, ECHO.as_bytes(), &m)?;
            record.module_id = ModuleId::for_bytes(INFINITE_LOOP.as_bytes());
            let bytes = record.encode();
            let cid = cid_v1_blake3(DAG_CBOR, &bytes);
            s.put(&cid, &bytes)?;
            Ok(cid)
        })
        .await
        .unwrap();
    let err = host.stage("liar", forged).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::Runtime(RuntimeError::ModuleHashMismatch { .. })
        ),
        "{err}"
    );
    assert!(host.list().is_empty(), "nothing staged from a forged image");

    // A block that is not an image record.
    let echo = host
        .publish(ECHO.as_bytes().to_vec(), manifest.clone())
        .await
        .unwrap();
    let module_root = echo.module.parse().unwrap();
    assert!(matches!(
        host.stage("raw", module_root).await,
        Err(ServiceError::Image(_))
    ));
    let record_bytes = node
        .storage
        .embedded()
        .unwrap()
        .blocking({
            let cid = echo.image.parse().unwrap();
            move |s| s.get(&cid)
        })
        .await
        .unwrap();
    let record = ImageRecord::decode(&echo.image.parse().unwrap(), &record_bytes).unwrap();
    assert_eq!(record.module_id.to_string(), echo.module_id);

    // Bad ids, unknown ids, and a module that is not wasm at all.
    let image = echo.image.parse().unwrap();
    assert!(matches!(
        host.stage("-x", image).await,
        Err(ServiceError::BadId(_))
    ));
    assert!(matches!(
        host.start("nope").await,
        Err(ServiceError::Unknown(_))
    ));
    assert!(host.publish(b"not wasm".to_vec(), manifest).await.is_err());

    // Containers: without docker/podman, start says what to install.
    let mut c = ServiceManifest::wasm("box", "1");
    c.kind = agora_hosting::ServiceKind::Container;
    c.container = Some(agora_hosting::manifest::ContainerImage {
        image: "docker.io/library/alpine:3.20".into(),
        args: vec!["true".into()],
    });
    let boxed = host.publish(Vec::new(), c).await.unwrap();
    host.stage("box", boxed.image.parse().unwrap())
        .await
        .unwrap();
    match agora_runtime::CliExecutor::detect() {
        Err(_) => {
            let err = host.start("box").await.unwrap_err();
            assert!(
                err.to_string().contains("install docker or podman"),
                "{err}"
            );
            assert_eq!(
                host.list().iter().find(|s| s.id == "box").unwrap().state,
                ServiceState::Staged
            );
        }
        Ok(_) => agora_devnet::skipped(
            "tampered_images_and_bad_requests_are_refused (the no-engine check)",
            "a container engine is running here, and this test does not pull images",
        ),
    }
    net.shutdown().await;
}

/// A container engine that runs nothing: it records what it was asked.
#[derive(Default)]
struct FakeEngine {
    calls: std::sync::Mutex<Vec<String>>,
}

impl agora_runtime::Executor for FakeEngine {
    fn start(
        &self,
        spec: &agora_runtime::ContainerSpec,
    ) -> Result<String, agora_runtime::ContainerError> {
        let mut calls = self.calls.lock().unwrap();
        let id = format!("c{}", calls.len());
        calls.push(format!("start {} as {id}", spec.name));
        Ok(id)
    }
    fn stop(&self, id: &str) -> Result<(), agora_runtime::ContainerError> {
        self.calls.lock().unwrap().push(format!("stop {id}"));
        Ok(())
    }
    fn is_running(&self, _id: &str) -> Result<bool, agora_runtime::ContainerError> {
        Ok(true)
    }
    fn logs(&self, _id: &str) -> Result<String, agora_runtime::ContainerError> {
        Ok(String::new())
    }
}

/// Polls `list` until `id`'s state is `want` (containers have no `wait_stopped`).
async fn container_reaches(host: &ServiceHost, id: &str, want: ServiceState) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = host
            .list()
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.state);
        if state.as_ref() == Some(&want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never reached {want:?}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Threat C3 for containers: a container service gets the lifetime a Wasm service does — what
/// is left of its contract, or its manifest's `max_lifetime_ms` — and is stopped when it ends,
/// unless it was stopped (or started again) meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_is_stopped_when_its_contract_or_its_lifetime_ends() {
    let net = Devnet::builder().nodes(1).spawn().await.unwrap();
    let host = &net.node(0).unwrap().services;
    let engine = std::sync::Arc::new(FakeEngine::default());
    host.set_container_engine(engine.clone());
    let boxed = |name: &str, lifetime: Option<u64>| {
        let mut c = ServiceManifest::wasm(name, "1");
        c.kind = agora_hosting::ServiceKind::Container;
        c.container = Some(agora_hosting::manifest::ContainerImage {
            image: "docker.io/library/alpine:3.20".into(),
            args: vec!["sleep".into(), "3600".into()],
        });
        c.limits.max_lifetime_ms = lifetime;
        c
    };
    // A contract ending in 1.5 s: stopped then, for its lifetime.
    let image = host
        .publish(Vec::new(), boxed("leased", None))
        .await
        .unwrap();
    let image: agora_storage::Cid = image.image.parse().unwrap();
    host.stage_for_contract("leased", image, &ceiling(2 << 20, 100, 1_500))
        .await
        .unwrap();
    host.start("leased").await.unwrap();
    container_reaches(host, "leased", ServiceState::Active).await;
    container_reaches(host, "leased", ServiceState::Stopped(StopReason::Lifetime)).await;
    let err = host.start("leased").await.unwrap_err();
    assert!(matches!(err, ServiceError::ContractEnded { .. }), "{err}");
    // The manifest's own lifetime, without a contract.
    let image = host
        .publish(Vec::new(), boxed("short", Some(300)))
        .await
        .unwrap();
    host.stage("short", image.image.parse().unwrap())
        .await
        .unwrap();
    host.start("short").await.unwrap();
    container_reaches(host, "short", ServiceState::Stopped(StopReason::Lifetime)).await;
    // Stopped and started again before its lifetime ends: the first start's timer stops
    // nothing; the second start's does, a whole lifetime after that start.
    let image = host
        .publish(Vec::new(), boxed("again", Some(1_000)))
        .await
        .unwrap();
    host.stage("again", image.image.parse().unwrap())
        .await
        .unwrap();
    host.start("again").await.unwrap();
    host.stop("again").await.unwrap();
    // (A gap, so that the first timer fires well inside the second run.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = tokio::time::Instant::now();
    host.start("again").await.unwrap();
    container_reaches(host, "again", ServiceState::Stopped(StopReason::Lifetime)).await;
    assert!(
        second.elapsed() >= Duration::from_millis(950),
        "stopped {:?} into its second run: by the first run's timer",
        second.elapsed()
    );
    let calls = engine.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            "start agora-leased as c0",
            "stop c0",
            "start agora-short as c2",
            "stop c2",
            "start agora-again as c4",
            "stop c4",
            "start agora-again as c6",
            "stop c6",
        ],
        "{calls:?}"
    );
    net.shutdown().await;
}

/// THREATS A15: many contracts naming this node as arbitrator each warm their image for
/// probes; loads run [`PROBE_LOADS`] at a time, [`PROBE_LOADS_WAITING`] more wait, the rest
/// are refused and counted, an image already loading is not loaded again (their probes are
/// judged on the hosting layer's word), and a refused image loads on a later probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_image_loads_are_bounded_and_the_refused_load_later() {
    use agora_contracts::probe::GuestExpectation;
    use agora_hosting::probe::PROBE_LOADS;
    const IMAGES: usize = 24;
    let net = Devnet::builder().nodes(2).spawn().await.unwrap();
    net.wait_connected(1, WAIT).await.unwrap();
    let (n0, n1) = (net.node(0).unwrap(), net.node(1).unwrap());
    let mut images = Vec::new();
    for i in 0..IMAGES {
        let m = limited(&format!("echo-{i}"), 1 << 20, 50_000_000);
        let info = n0
            .services
            .publish(ECHO.as_bytes().to_vec(), m)
            .await
            .unwrap();
        images.push(info.image.parse().unwrap());
    }
    // Twice each image at once, as registrations and probe rounds arriving together would.
    let calls: Vec<_> = images
        .iter()
        .chain(images.iter())
        .map(|image| {
            let (host, image) = (n1.services.clone(), *image);
            tokio::spawn(async move { host.probe_image(image, 7).await })
        })
        .collect();
    let mut busy = 0;
    for call in calls {
        let got = timeout(WAIT, call).await.unwrap().unwrap();
        match got {
            GuestExpectation::Unknown(why) => {
                assert!(
                    why.contains("probe images are being loaded")
                        || why.contains("probe image is being loaded already"),
                    "{why}"
                );
                busy += 1;
            }
            GuestExpectation::NoExport | GuestExpectation::Value(_) => {}
        }
    }
    let stats = n1.services.probe_load_stats();
    assert!(stats.peak <= PROBE_LOADS, "{stats:?}");
    assert_eq!((stats.running, stats.waiting), (0, 0), "{stats:?}");
    assert_eq!(stats.refused + stats.coalesced, busy, "{stats:?}");
    // 24 images asked at once, 2 run and 16 wait: some are refused (how many depends on how
    // fast the first ones finish), and an image asked again while it loads is not loaded
    // twice.
    assert!(stats.refused > 0, "{stats:?}");
    assert!(stats.coalesced > 0, "{stats:?}");
    // One at a time, every image loads, the refused ones included.
    for image in &images {
        let got = timeout(WAIT, n1.services.probe_image(*image, 7))
            .await
            .unwrap();
        assert!(!matches!(got, GuestExpectation::Unknown(_)), "{got:?}");
    }
    let after = n1.services.probe_load_stats();
    assert_eq!(after.refused + after.coalesced, busy, "{after:?}");
    net.shutdown().await;
}
