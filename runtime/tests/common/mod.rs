//! Shared harness for the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agora_runtime::test_utils;
use agora_runtime::{
    Host, MemoryKv, Published, ServiceId, ServiceLimits, ServiceManager, ServiceSpec, StopReason,
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
