//! Read-side and input operations of the service host: list, logs, metering, health, readings.

use agora_runtime::{Health, Metering, RuntimeError, ServiceState};

use std::collections::BTreeMap;

use super::{ServiceError, ServiceHost, ServiceInfo, lock};

impl ServiceHost {
    /// Every staged service, ordered by id.
    pub fn list(&self) -> Vec<ServiceInfo> {
        let wasm: BTreeMap<String, agora_runtime::ServiceStatus> = self
            .inner
            .manager
            .list()
            .into_iter()
            .map(|s| (s.id.0.clone(), s))
            .collect();
        lock(&self.inner.staged)
            .iter()
            .map(|(id, s)| {
                let (state, metering, last_failure) = match (&s.container, wasm.get(id)) {
                    (Some(c), _) => (c.state.clone(), Metering::default(), None),
                    (None, Some(w)) => {
                        (w.state.clone(), w.metering.clone(), w.last_failure.clone())
                    }
                    (None, None) => (ServiceState::Staged, Metering::default(), None),
                };
                ServiceInfo {
                    id: id.clone(),
                    image: s.image.to_string(),
                    name: s.manifest.name.clone(),
                    version: s.manifest.version.clone(),
                    kind: s.manifest.kind,
                    state,
                    metering,
                    depends_on: s.manifest.depends_on.clone(),
                    started_at_ms: s.started_at_ms,
                    stopped_at_ms: s.stopped_at_ms,
                    last_failure,
                }
            })
            .collect()
    }

    /// The limits a wasm service runs under: its manifest's, clamped to its contract's when
    /// it was staged for one (the lifetime is recomputed from the contract's end at each start).
    pub fn limits(&self, id: &str) -> Result<agora_runtime::ServiceLimits, ServiceError> {
        match self.inner.manager.limits(&id.into()) {
            Ok(limits) => Ok(limits),
            Err(RuntimeError::UnknownService(_)) => lock(&self.inner.staged)
                .get(id)
                .map(|s| s.limits.clone())
                .ok_or_else(|| ServiceError::Unknown(id.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// The service's kept log tail (stdout, stderr and `log` lines).
    pub async fn logs(&self, id: &str) -> Result<String, ServiceError> {
        if self.is_container(id)? {
            return self.container_logs(id).await;
        }
        Ok(self.inner.manager.logs(&id.into())?)
    }

    /// Usage so far (settlement evidence).
    pub fn metering(&self, id: &str) -> Result<Metering, ServiceError> {
        if self.is_container(id)? {
            return Ok(Metering::default());
        }
        Ok(self.inner.manager.metering(&id.into())?)
    }

    /// The cap on `id`'s module's instances in its group and the other services that count
    /// against it, each with whether it is active ([`agora_runtime::ServiceManager::
    /// instance_rivals`]); none for a container service (no cap).
    pub fn instance_rivals(&self, id: &str) -> Result<(u32, Vec<(String, bool)>), ServiceError> {
        if self.is_container(id)? {
            return Ok((u32::MAX, Vec::new()));
        }
        let (max, rivals) = self.inner.manager.instance_rivals(&id.into())?;
        Ok((max, rivals.into_iter().map(|(s, a)| (s.0, a)).collect()))
    }

    /// Health check of a wasm service.
    pub fn health(&self, id: &str) -> Result<Health, ServiceError> {
        if self.is_container(id)? {
            let state = self.container_state(id)?;
            let healthy = state == ServiceState::Active;
            return Ok(Health {
                state,
                last_poll_ms_ago: None,
                guest_health: None,
                healthy,
                restarting: false,
                start_failed: false,
                quick_failures: 0,
            });
        }
        Ok(self.inner.manager.health(&id.into())?)
    }

    /// Queues a sensor reading for the service.
    pub fn push_reading(&self, id: &str, reading: Vec<u8>) -> Result<(), ServiceError> {
        if self.is_container(id)? {
            return Err(ServiceError::Runtime(RuntimeError::WrongState {
                service: id.to_string(),
                state: "a container".into(),
                hint: "readings are only delivered to wasm services",
            }));
        }
        Ok(self.inner.manager.push_reading(&id.into(), reading)?)
    }

    /// A consistent copy of wasm service `id`'s key-value state, taken only while it is
    /// quiescent (no reading queued, no guest call running): `Ok(None)` while it is busy. More
    /// than `max_entries` keys or `max_bytes` is an error (too large to travel).
    pub fn kv_snapshot(
        &self,
        id: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<agora_runtime::KvEntries>, ServiceError> {
        if self.is_container(id)? {
            return Ok(None);
        }
        Ok(self
            .inner
            .manager
            .kv_snapshot(&id.into(), max_entries, max_bytes)?)
    }

    /// Moves wasm service `from`'s key-value state into wasm service `to` while both are
    /// quiescent (`Ok(None)`: busy); see `ServiceManager::kv_move`.
    pub fn kv_move(
        &self,
        from: &str,
        to: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<usize>, ServiceError> {
        if self.is_container(from)? || self.is_container(to)? {
            return Err(ServiceError::Runtime(RuntimeError::WrongState {
                service: to.to_string(),
                state: "a container".into(),
                hint: "only wasm services keep key-value state",
            }));
        }
        Ok(self
            .inner
            .manager
            .kv_move(&from.into(), &to.into(), max_entries, max_bytes)?)
    }

    /// Replaces wasm service `id`'s key-value state (it must not be running).
    pub fn kv_replace(
        &self,
        id: &str,
        entries: &agora_runtime::KvEntries,
    ) -> Result<(), ServiceError> {
        Ok(self.inner.manager.kv_replace(&id.into(), entries)?)
    }

    /// Whether `id` is staged as a container service (errors if it is not staged at all).
    pub(super) fn is_container(&self, id: &str) -> Result<bool, ServiceError> {
        lock(&self.inner.staged)
            .get(id)
            .map(|s| s.container.is_some())
            .ok_or_else(|| ServiceError::Unknown(id.to_string()))
    }
}
