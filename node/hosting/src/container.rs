//! Container services (`kind = "container"`): run by docker or podman through the runtime's
//! [`CliExecutor`]. Without an engine, `start` fails with a message saying what to install.
//! Containers are not metered and get no readings yet.

use agora_runtime::{CliExecutor, ContainerSpec, Executor, ServiceState, StopReason};

use super::{ServiceError, ServiceHost, lock};

/// The container side of a staged service.
#[derive(Clone, Debug)]
pub(super) struct ContainerSlot {
    /// Lifecycle state as last observed.
    pub state: ServiceState,
    /// The engine and container id while it runs.
    running: Option<(CliExecutor, String)>,
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

    pub(super) async fn container_start(&self, id: &str) -> Result<(), ServiceError> {
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
        let (exec, cid) = blocking(move || {
            let exec = CliExecutor::detect()?;
            let cid = exec.start(&spec)?;
            Ok((exec, cid))
        })
        .await?;
        tracing::info!(service = id, container = %cid, "container service started");
        self.set_slot(
            id,
            ContainerSlot {
                state: ServiceState::Active,
                running: Some((exec, cid)),
            },
        );
        Ok(())
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
