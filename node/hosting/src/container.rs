//! Container services (`kind = "container"`): run by docker or podman through the runtime's
//! [`CliExecutor`] (or the engine given with [`ServiceHost::set_container_engine`]). Without an
//! engine, `start` fails with a message saying what to install. A container gets the same
//! lifetime a Wasm service does — the manifest's, cut to what is left of its contract — and is
//! stopped when it ends (`StopReason::Lifetime`). Containers are not metered and get no
//! readings yet.

use std::sync::Arc;
use std::time::Duration;

use agora_runtime::{CliExecutor, ContainerSpec, Executor, ServiceState, StopReason};
use tracing::{info, warn};

use super::{ServiceError, ServiceHost, lock};

/// A container engine.
pub type Engine = Arc<dyn Executor>;

/// The container side of a staged service.
#[derive(Clone)]
pub(super) struct ContainerSlot {
    /// Lifecycle state as last observed.
    pub state: ServiceState,
    /// The engine and container id while it runs.
    running: Option<(Engine, String)>,
}

impl std::fmt::Debug for ContainerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerSlot")
            .field("state", &self.state)
            .field("container", &self.running.as_ref().map(|(_, id)| id))
            .finish()
    }
}

impl Default for ContainerSlot {
    fn default() -> Self {
        Self {
            state: ServiceState::Staged,
            running: None,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, agora_runtime::ContainerError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?
        .map_err(ServiceError::from)
}

impl ServiceHost {
    /// Runs container services with `engine` instead of the docker or podman found at each
    /// start (an embedder's engine, or a test's).
    pub fn set_container_engine(&self, engine: Engine) {
        *lock(&self.inner.container_engine) = Some(engine);
    }

    fn slot(&self, id: &str) -> Result<(ContainerSlot, ContainerSpec), ServiceError> {
        let staged = lock(&self.inner.staged);
        let s = staged
            .get(id)
            .ok_or_else(|| ServiceError::Unknown(id.to_string()))?;
        let slot = s
            .container
            .clone()
            .ok_or_else(|| ServiceError::Unknown(id.to_string()))?;
        let image = s.manifest.container.clone().unwrap_or_default();
        let spec = ContainerSpec {
            name: format!("agora-{id}"),
            image: image.image,
            // The manifest's, clamped to the contract's when it has one.
            memory_bytes: Some(s.limits.memory_bytes),
            cpus: Some(
                s.ceiling
                    .as_ref()
                    .map_or(s.manifest.resources.cpu_millis, |c| {
                        c.cpu_millis.min(s.manifest.resources.cpu_millis)
                    }) as f64
                    / 1000.0,
            ),
            env: s
                .manifest
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            args: image.args,
            network: false,
        };
        Ok((slot, spec))
    }

    fn set_slot(&self, id: &str, slot: ContainerSlot) {
        if let Some(s) = lock(&self.inner.staged).get_mut(id) {
            s.container = Some(slot);
        }
    }

    /// The container's state, as last started or stopped by this host.
    pub(super) fn container_state(&self, id: &str) -> Result<ServiceState, ServiceError> {
        Ok(self.slot(id)?.0.state)
    }

    /// The engine to run containers with: the one set, else docker or podman found now.
    fn engine(&self) -> Result<Engine, agora_runtime::ContainerError> {
        if let Some(e) = lock(&self.inner.container_engine).clone() {
            return Ok(e);
        }
        Ok(Arc::new(CliExecutor::detect()?))
    }

    /// Starts the container of `id`; with `lifetime_ms`, stops it that long after (unless it
    /// was stopped or started again meanwhile).
    pub(super) async fn container_start(
        &self,
        id: &str,
        lifetime_ms: Option<u64>,
    ) -> Result<(), ServiceError> {
        let (slot, spec) = self.slot(id)?;
        if slot.state == ServiceState::Active {
            return Err(ServiceError::Runtime(
                agora_runtime::RuntimeError::WrongState {
                    service: id.to_string(),
                    state: "active".into(),
                    hint: "stop it before starting it again",
                },
            ));
        }
        let host = self.clone();
        let (exec, cid) = blocking(move || {
            let exec = host.engine()?;
            let cid = exec.start(&spec)?;
            Ok((exec, cid))
        })
        .await?;
        info!(service = id, container = %cid, lifetime_ms, "container service started");
        self.set_slot(
            id,
            ContainerSlot {
                state: ServiceState::Active,
                running: Some((exec, cid.clone())),
            },
        );
        if let Some(ms) = lifetime_ms {
            let (host, id) = (self.clone(), id.to_string());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                host.container_lifetime_over(&id, &cid).await;
            });
        }
        Ok(())
    }

    /// The lifetime of container `cid` of service `id` ended: stopped, if it still runs.
    async fn container_lifetime_over(&self, id: &str, cid: &str) {
        let Ok((slot, _)) = self.slot(id) else {
            return;
        };
        let Some((exec, running)) = slot.running else {
            return;
        };
        if running != cid {
            return;
        }
        let stop = running.clone();
        if let Err(e) = blocking(move || exec.stop(&stop)).await {
            warn!(service = id, container = %cid, error = %e, "container lifetime over, but stopping it failed; retried at the next stop");
            return;
        }
        info!(service = id, container = %cid, "container service stopped: its lifetime ended");
        // Only if nothing replaced it while it was being stopped.
        let mut staged = lock(&self.inner.staged);
        if let Some(s) = staged.get_mut(id)
            && let Some(c) = &mut s.container
            && c.running.as_ref().is_some_and(|(_, r)| r == cid)
        {
            c.state = ServiceState::Stopped(StopReason::Lifetime);
            c.running = None;
            s.stopped_at_ms = Some(agora_wire::now_ms());
        }
    }

    pub(super) async fn container_stop(&self, id: &str) -> Result<StopReason, ServiceError> {
        let (slot, _) = self.slot(id)?;
        let Some((exec, cid)) = slot.running else {
            return match slot.state {
                ServiceState::Stopped(r) => Ok(r),
                _ => Err(ServiceError::Runtime(
                    agora_runtime::RuntimeError::WrongState {
                        service: id.to_string(),
                        state: "staged".into(),
                        hint: "start it first (it is not running)",
                    },
                )),
            };
        };
        blocking(move || exec.stop(&cid)).await?;
        self.set_slot(
            id,
            ContainerSlot {
                state: ServiceState::Stopped(StopReason::Requested),
                running: None,
            },
        );
        Ok(StopReason::Requested)
    }

    pub(super) async fn container_logs(&self, id: &str) -> Result<String, ServiceError> {
        let (slot, _) = self.slot(id)?;
        match slot.running {
            Some((exec, cid)) => blocking(move || exec.logs(&cid)).await,
            None => Ok(String::new()),
        }
    }
}
