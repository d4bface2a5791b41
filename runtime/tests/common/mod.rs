//! Shared harness for the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_runtime::test_utils;
use agora_runtime::{
    Host, HostConfig, KvStore, MemoryKv, Published, ServiceId, ServiceLimits, ServiceManager,
    ServiceSpec, StopReason,
};
use tokio::sync::mpsc;

/// Every wait in these tests ends after this long.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub host: Arc<Host>,
    pub manager: ServiceManager,
    pub outbox: mpsc::Receiver<Published>,
}

pub fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let host = test_utils::host(dir.path());
    let (manager, outbox) = ServiceManager::new(host.clone(), Arc::new(MemoryKv::default()), 64);
    Harness {
        dir,
        host,
        manager,
        outbox,
    }
}

/// A harness whose host config `tweak` adjusts and whose guests use `kv`.
pub fn harness_with(tweak: impl FnOnce(&mut HostConfig), kv: Arc<dyn KvStore>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::new(dir.path().join("artifacts"), [42; 32]);
    config.max_instances = 8;
    config.max_memory_bytes = 64 << 20;
    tweak(&mut config);
    let host = Host::new(config).unwrap();
    let (manager, outbox) = ServiceManager::new(host.clone(), kv, 64);
    Harness {
        dir,
        host,
        manager,
        outbox,
    }
}

/// Limits under which fuel would let one guest call run for minutes (50 G fuel per call, about
/// 200 s of CPU at the default 250 M fuel per CPU second): only epoch interruption and
/// cancellation can end a misbehaving guest within the tests' waits.
pub fn roomy() -> ServiceLimits {
    ServiceLimits {
        memory_bytes: 40 << 20,
        fuel_per_second: 50_000_000_000,
        wall_clock_ms: None,
        max_instances: 16,
        max_output_bytes: 1 << 20,
    }
}

/// Tight limits so hostile modules hit them fast.
pub fn tight() -> ServiceLimits {
    ServiceLimits {
        memory_bytes: 2 << 20,
        fuel_per_second: 20_000_000,
        wall_clock_ms: None,
        max_instances: 4,
        max_output_bytes: 4096,
    }
}

impl Harness {
    pub fn stage(&self, id: &str, wat: &str, limits: ServiceLimits) -> ServiceId {
        let module = test_utils::compile(&self.host, wat);
        let mut spec = ServiceSpec::new(id, module, limits);
        spec.tick_ms = 10;
        self.manager.stage(spec).unwrap();
        ServiceId::from(id)
    }

    pub fn run(&self, id: &str, wat: &str, limits: ServiceLimits) -> ServiceId {
        let id = self.stage(id, wat, limits);
        self.manager.start(&id).unwrap();
        id
    }

    pub async fn stopped(&self, id: &ServiceId) -> StopReason {
        tokio::time::timeout(WAIT, self.manager.wait_stopped(id))
            .await
            .expect("service did not stop in time")
            .unwrap()
    }

    /// Waits until the service's log contains `marker` (e.g. a hostile guest's `ready`).
    pub async fn logged(&self, id: &ServiceId, marker: &str) {
        tokio::time::timeout(WAIT, async {
            while !self.manager.logs(id).unwrap().contains(marker) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{id} never logged {marker:?}"));
    }

    /// Stops the service and returns why it stopped and how long that took (from the stop
    /// request to `Stopped`, i.e. to its instance being dropped).
    pub async fn stop_timed(&self, id: &ServiceId) -> (StopReason, Duration) {
        let t = Instant::now();
        self.manager.stop(id).unwrap();
        let reason = tokio::time::timeout(WAIT, self.manager.wait_stopped(id))
            .await
            .unwrap_or_else(|_| panic!("{id} did not stop within {WAIT:?}"))
            .unwrap();
        (reason, t.elapsed())
    }

    pub async fn next_published(&mut self) -> Published {
        tokio::time::timeout(WAIT, self.outbox.recv())
            .await
            .expect("nothing published in time")
            .expect("outbox closed")
    }

    /// Asserts the echo service `good` still answers a reading.
    pub async fn assert_echo_alive(&mut self, good: &ServiceId) {
        let probe = format!("probe-{}", rand_suffix());
        self.manager
            .push_reading(good, probe.clone().into_bytes())
            .unwrap();
        loop {
            let msg = self.next_published().await;
            if msg.service == good.0 && msg.payload == probe.as_bytes() {
                break;
            }
        }
        assert_eq!(
            self.manager.state(good).unwrap(),
            agora_runtime::ServiceState::Active
        );
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
