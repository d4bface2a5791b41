//! Service host operations: publish an image, stage it by CID, start, stop, remove.

use std::time::Duration;

use agora_runtime::{
    Backoff, CompiledModule, RestartPolicy, RuntimeError, ServiceId, ServiceLimits, ServiceSpec,
    ServiceState, StopReason,
};
use agora_storage::Cid;
use agora_wire::now_ms;

use super::ceiling::{ContractCeiling, ServiceEnd};

use super::manifest::{ServiceKind, ServiceManifest};
use super::{
    ImageInfo, ServiceError, ServiceHost, ServiceInfo, Staged, StagedInfo, container, lock,
};
use agora_image::{read_image, read_manifest, store_image};

/// How long `stop` waits for a service to report `Stopped`.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// The name service `id` holds its image under ([`agora_exchange::holds`]).
fn image_holder(id: &str) -> String {
    format!("service:{id}")
}

/// Lets go of a staging's hold on its image if the staging is dropped before it finished and
/// left no staged service behind (found by a read-only audit in session 49: a staging cut at its
/// contract's deadline kept the image pinned until restart).
struct HoldGuard {
    host: ServiceHost,
    id: String,
    image: Cid,
    armed: bool,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        if !self.armed || lock(&self.host.inner.staged).contains_key(&self.id) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (host, id, image) = (self.host.clone(), std::mem::take(&mut self.id), self.image);
        rt.spawn(async move {
            tracing::debug!(service = %id, %image, "staging given up: image hold released");
            host.release_image(&id, image).await;
        });
    }
}

/// The error for a service whose contract ended before `now`.
fn ended(c: &ContractCeiling, now: u64) -> ServiceError {
    let end_ms = match c.end {
        ServiceEnd::At(end) => end,
        ServiceEnd::AfterStart(_) => now,
    };
    ServiceError::ContractEnded {
        contract: c.contract,
        end_ms,
        now_ms: now,
    }
}

/// Longest wait before a contract's guest is restarted, in milliseconds (THREATS P3).
const CONTRACT_MAX_BACKOFF_MS: u64 = 5_000;
/// Longest wait before the first restart of a contract's guest after it ran a while, in
/// milliseconds: the doubling still slows a guest that fails at once.
const CONTRACT_FIRST_BACKOFF_MS: u64 = 100;

/// The restart policy a customer's contract guest runs under, from its manifest's
/// (`(policy, backoff, unhealthy restart)`, [`agora_image::manifest::ManifestRestart::runtime`]):
/// the provider is paid for the service's uptime and slashed for its confirmed downtime, so a
/// guest that stops on its own (a trap, a limit, an exit, a clean one included) is restarted
/// whatever its manifest says ([`RestartPolicy::Always`]: `never`, a few restarts then stop, or
/// an exit, would let a customer's own guest stop itself on the provider for good and have the
/// provider slashed: THREATS P3), first after at most [`CONTRACT_FIRST_BACKOFF_MS`], never
/// after more than [`CONTRACT_MAX_BACKOFF_MS`] (a manifest's hour-long backoff would be the
/// same stop). The backoff doubles per failure in a row up to that cap whatever the manifest
/// asks for, so a guest that fails at once costs the provider one instantiation per 5 s once
/// the doubling reached it. The health restart stays the manifest's.
fn contract_restart(
    (_, backoff, unhealthy): (RestartPolicy, Backoff, Option<u64>),
) -> (RestartPolicy, Backoff, Option<u64>) {
    (
        RestartPolicy::Always,
        Backoff {
            initial_ms: backoff.initial_ms.min(CONTRACT_FIRST_BACKOFF_MS),
            // Always the cap, however short the manifest's: a guest that stops at once is
            // restarted once per 5 s at most, whatever it asked for (each start runs its
            // `agora_init` on a full second's fuel).
            max_ms: CONTRACT_MAX_BACKOFF_MS,
        },
        unhealthy,
    )
}

/// Checks a service id: it names threads, sled namespaces and containers.
fn check_id(id: &str) -> Result<(), ServiceError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if id.is_empty() || id.len() > 128 || id.starts_with('-') || !id.chars().all(ok) {
        return Err(ServiceError::BadId(id.to_string()));
    }
    Ok(())
}

impl ServiceHost {
    /// The embedded block store images are read from and written to.
    pub(crate) fn embedded_store(&self) -> Result<&agora_exchange::Embedded, ServiceError> {
        self.inner
            .storage
            .embedded()
            .ok_or(ServiceError::NeedsEmbeddedStore)
    }

    /// Stores `module` and `manifest` as an image (pinned and announced); returns its CIDs.
    pub async fn publish(
        &self,
        module: Vec<u8>,
        manifest: ServiceManifest,
    ) -> Result<ImageInfo, ServiceError> {
        manifest.validate()?;
        if manifest.kind == ServiceKind::Wasm {
            // Refuse what no node could run before it is announced to the network.
            let id = agora_runtime::ModuleId::for_bytes(&module);
            self.load_module(id, module.clone()).await?;
        }
        let module_bytes = module.len() as u64;
        let m = manifest.clone();
        let storage = self.embedded_store()?;
        let (cid, record) = storage
            .blocking(move |s| store_image(s, &module, &m))
            .await?;
        storage.provide(cid).await;
        tracing::info!(image = %cid, name = %manifest.name, "service image published");
        Ok(ImageInfo {
            image: cid.to_string(),
            module: record.module.to_string(),
            manifest: record.manifest.to_string(),
            module_id: record.module_id.to_string(),
            module_bytes,
            name: manifest.name,
            version: manifest.version,
            kind: manifest.kind,
        })
    }

    /// Fetches the image (from peers if not local), verifies and compiles the module, and
    /// stages it as `id` under the manifest's limits (the operator's own service).
    pub async fn stage(&self, id: &str, image: Cid) -> Result<StagedInfo, ServiceError> {
        self.stage_inner(id, image, None).await
    }

    /// The sensor devices `image`'s manifest takes over, read from this node's store only (no
    /// fetch, no module): the customer of a contract holds the image it published.
    pub async fn image_devices(&self, image: Cid) -> Result<Vec<u32>, ServiceError> {
        let (_, manifest) = self
            .embedded_store()?
            .blocking(move |s| Ok(read_manifest(s, &image)))
            .await??;
        Ok(manifest.devices)
    }

    /// [`Self::stage`] for a contract: the manifest's limits clamped to what the contract
    /// allows (see [`crate::ceiling`]). The lifetime is recomputed from the contract's end at
    /// every start.
    pub async fn stage_for_contract(
        &self,
        id: &str,
        image: Cid,
        ceiling: &ContractCeiling,
    ) -> Result<StagedInfo, ServiceError> {
        self.stage_inner(id, image, Some(ceiling)).await
    }

    /// The limits a service of `manifest` runs under: its own, clamped to `ceiling` at `now`.
    fn limits_for(
        &self,
        id: &str,
        manifest: &ServiceManifest,
        ceiling: Option<&ContractCeiling>,
        now: u64,
    ) -> Result<ServiceLimits, ServiceError> {
        let requested = manifest.service_limits();
        let Some(ceiling) = ceiling else {
            return Ok(requested);
        };
        let fuel = self
            .inner
            .manager
            .host()
            .config()
            .fuel_per_second_for(ceiling.cpu_millis);
        let Some(max) = ceiling.limits(fuel, self.inner.config.max_output_bytes, now) else {
            return Err(ended(ceiling, now));
        };
        requested.clamp_to(&max).map_err(|source| {
            ServiceError::Runtime(RuntimeError::BadLimits {
                service: id.to_string(),
                source,
            })
        })
    }

    async fn stage_inner(
        &self,
        id: &str,
        image: Cid,
        ceiling: Option<&ContractCeiling>,
    ) -> Result<StagedInfo, ServiceError> {
        check_id(id)?;
        if lock(&self.inner.staged).contains_key(id) {
            return Err(ServiceError::AlreadyStaged(id.to_string()));
        }
        if let Some(c) = ceiling
            && c.lifetime_at(now_ms()).is_none()
        {
            return Err(ended(c, now_ms()));
        }
        // Fetches every block of the image over bitswap (each verified against its CID) and
        // holds it while the service is staged. The module is capped at MAX_MODULE_BYTES; the
        // manifest and record are small.
        let holder = image_holder(id);
        // A caller that gives up mid-way (a contract's staging deadline drops this future, in
        // the fetch or the compile) must not leave the image held for good (THREATS G4).
        let mut guard = HoldGuard {
            host: self.clone(),
            id: id.to_string(),
            image,
            armed: true,
        };
        self.inner
            .storage
            .hold(image, &holder, Some(crate::IMAGE_MAX_BYTES))
            .await?;
        let staged = self.stage_held(id, image, ceiling).await;
        guard.armed = false;
        if staged.is_err() && !lock(&self.inner.staged).contains_key(id) {
            self.release_image(id, image).await;
        }
        staged
    }

    /// Verifies `bytes` against module `id`, then compiles them or reuses the artifact, off
    /// the async threads.
    pub(crate) async fn load_module(
        &self,
        id: agora_runtime::ModuleId,
        bytes: Vec<u8>,
    ) -> Result<CompiledModule, ServiceError> {
        let host = self.inner.manager.host().clone();
        Ok(tokio::task::spawn_blocking(move || host.load(&id, &bytes))
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))??)
    }

    /// Lets go of service `id`'s hold on `image` (unpinned if nothing else holds or keeps it).
    pub(crate) async fn release_image(&self, id: &str, image: Cid) {
        if let Err(e) = self.inner.storage.release(image, &image_holder(id)).await {
            tracing::debug!(service = id, %image, error = %e, "image hold not released");
        }
    }

    /// [`Self::stage_inner`] once the image is held here.
    async fn stage_held(
        &self,
        id: &str,
        image: Cid,
        ceiling: Option<&ContractCeiling>,
    ) -> Result<StagedInfo, ServiceError> {
        let (record, manifest, module) = self
            .embedded_store()?
            .blocking(move |s| Ok(read_image(s, &image)))
            .await??;
        // Refuse a cycle with what is staged before compiling anything.
        let party = ceiling.map(|c| c.customer);
        self.check_acyclic_with(&lock(&self.inner.staged), &manifest, party)?;
        let limits = self.limits_for(id, &manifest, ceiling, now_ms())?;
        let max = self.inner.config.max_memory_bytes;
        if limits.memory_bytes > max {
            return Err(ServiceError::OverHostLimit {
                what: "limits.memory_bytes",
                asked: limits.memory_bytes,
                max,
            });
        }
        let module_id = record.module_id;
        let mut from_cache = false;
        let slot = match manifest.kind {
            ServiceKind::Container => Some(container::ContainerSlot::default()),
            ServiceKind::Wasm => {
                let compiled = self.load_module(module_id, module).await?;
                from_cache = compiled.from_cache();
                let mut spec = ServiceSpec::new(id, compiled, limits.clone());
                spec.tick_ms = manifest.tick_ms;
                // A customer's contract services count against the module's `max_instances`
                // among themselves: another customer's instance (or the operator's) never keeps
                // one from starting, which would leave this provider slashed for no
                // activation (THREATS C5), while a customer's own cap still holds (a fleet's
                // variant change on a target waits for the old variant to stop).
                spec.instance_group = ceiling.map(|c| format!("customer:{}", c.customer));
                (spec.restart, spec.backoff, spec.unhealthy_restart_ms) = match ceiling {
                    Some(_) => contract_restart(manifest.restart.runtime()),
                    None => manifest.restart.runtime(),
                };
                spec.env = manifest
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                self.inner.manager.stage(spec)?;
                None
            }
        };
        let mut staged = lock(&self.inner.staged);
        // Checked again under the lock: another stage may have added the other half of a cycle.
        let refused = if staged.contains_key(id) {
            // Lost a race with another stage of the same id.
            Some(ServiceError::AlreadyStaged(id.to_string()))
        } else {
            self.check_acyclic_with(&staged, &manifest, party).err()
        };
        if let Some(e) = refused {
            // Undo ours.
            if slot.is_none() {
                let _ = self.inner.manager.remove(&id.into());
            }
            return Err(e);
        }
        staged.insert(
            id.to_string(),
            Staged {
                image,
                manifest: manifest.clone(),
                limits: limits.clone(),
                ceiling: ceiling.cloned(),
                container: slot,
                started_at_ms: None,
                stopped_at_ms: None,
            },
        );
        tracing::info!(
            service = id,
            %image,
            from_cache,
            contract = ceiling.map(|c| c.contract.short()),
            memory_bytes = limits.memory_bytes,
            fuel_per_second = limits.fuel_per_second,
            lifetime_ms = limits.wall_clock_ms,
            "service staged"
        );
        Ok(StagedInfo {
            id: id.to_string(),
            image: image.to_string(),
            module_id: module_id.to_string(),
            from_cache,
            manifest,
        })
    }

    /// Activates one staged (or stopped) service, without its dependencies. A contract service
    /// gets what is left of its contract as its lifetime, and is refused once the contract
    /// ended.
    pub(crate) async fn start_one(&self, id: &str) -> Result<(), ServiceError> {
        let (limits, ceiling) = {
            let staged = lock(&self.inner.staged);
            let s = staged
                .get(id)
                .ok_or_else(|| ServiceError::Unknown(id.to_string()))?;
            (s.limits.clone(), s.ceiling.clone())
        };
        let container = self.is_container(id)?;
        let mut lifetime = limits.wall_clock_ms;
        if let Some(c) = &ceiling {
            let now = now_ms();
            let left = c.lifetime_at(now).ok_or_else(|| ended(c, now))?;
            lifetime = Some(lifetime.map_or(left, |l| l.min(left)));
            if !container {
                let mut limits = limits;
                limits.wall_clock_ms = lifetime;
                self.inner.manager.set_limits(&id.into(), limits)?;
            }
        }
        if container {
            self.container_start(id, lifetime).await?;
        } else {
            self.inner.manager.start(&id.into())?;
        }
        if let Some(s) = lock(&self.inner.staged).get_mut(id) {
            s.started_at_ms = Some(now_ms());
        }
        Ok(())
    }

    /// Stops one active service, without its dependents, and waits (up to 10 s) for it;
    /// returns why it stopped. A service that already stopped on its own returns its recorded
    /// reason.
    pub(crate) async fn stop_one(&self, id: &str) -> Result<StopReason, ServiceError> {
        let was_active = self.state_of(id)? == ServiceState::Active;
        let reason = self.stop_one_inner(id).await?;
        if was_active && let Some(s) = lock(&self.inner.staged).get_mut(id) {
            s.stopped_at_ms = Some(now_ms());
        }
        Ok(reason)
    }

    async fn stop_one_inner(&self, id: &str) -> Result<StopReason, ServiceError> {
        if self.is_container(id)? {
            return self.container_stop(id).await;
        }
        let sid = ServiceId::from(id);
        match self.inner.manager.state(&sid)? {
            ServiceState::Stopped(reason) => return Ok(reason),
            ServiceState::Staged => {
                return Err(ServiceError::Runtime(
                    agora_runtime::RuntimeError::WrongState {
                        service: id.to_string(),
                        state: "staged".into(),
                        hint: "start it first (it is not running)",
                    },
                ));
            }
            ServiceState::Active => {}
        }
        self.inner.manager.stop(&sid)?;
        self.wait_stopped(id, STOP_WAIT).await
    }

    /// Waits until the service is stopped (by request, a limit or itself) and returns why.
    pub async fn wait_stopped(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<StopReason, ServiceError> {
        if self.is_container(id)? {
            return Err(ServiceError::Runtime(
                agora_runtime::RuntimeError::WrongState {
                    service: id.to_string(),
                    state: "a container".into(),
                    hint: "poll `list` for container state",
                },
            ));
        }
        let sid = ServiceId::from(id);
        tokio::time::timeout(timeout, self.inner.manager.wait_stopped(&sid))
            .await
            .map_err(|_| ServiceError::StopTimeout(id.to_string(), timeout.as_secs()))?
            .map_err(ServiceError::from)
    }

    /// Forgets an ended contract's service for good: deletes its key-value state, then
    /// [`Self::remove`]s it (THREATS C4: each contract's guest may keep up to 16 MiB of state,
    /// which stayed on the provider's disk for good).
    pub async fn forget(&self, id: &str) -> Result<(), ServiceError> {
        if !self.is_container(id)? {
            let me = self.clone();
            let sid = id.to_string();
            tokio::task::spawn_blocking(move || me.kv_replace(&sid, &Vec::new()))
                .await
                .map_err(|e| ServiceError::Task(e.to_string()))??;
        }
        self.remove(id).await
    }

    /// Forgets a service that is not running and lets go of its image (unpinned unless this
    /// node published or pinned it, or something else here holds it; the blocks go at the
    /// next `agora storage gc`).
    pub async fn remove(&self, id: &str) -> Result<(), ServiceError> {
        if !self.is_container(id)? {
            self.inner.manager.remove(&id.into())?;
        } else if self.container_state(id)? == ServiceState::Active {
            return Err(ServiceError::Runtime(
                agora_runtime::RuntimeError::WrongState {
                    service: id.to_string(),
                    state: "active".into(),
                    hint: "stop it before removing it",
                },
            ));
        }
        let removed = lock(&self.inner.staged).remove(id);
        if let Some(s) = removed {
            self.release_image(id, s.image).await;
        }
        Ok(())
    }

    /// Stops every active service (node shutdown), dependents before what they depend on,
    /// waiting up to 2 s in all for the wasm ones so their threads release the guest store
    /// before the node can be started again.
    pub(crate) async fn stop_all(&self) {
        let running: Vec<ServiceInfo> = self
            .list()
            .into_iter()
            .filter(|s| s.state == ServiceState::Active)
            .collect();
        let graph = super::order::graph_of(
            running
                .iter()
                .map(|s| (s.name.as_str(), s.depends_on.as_slice())),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut late = false;
        for name in agora_image::shutdown_order(&graph) {
            for s in running.iter().filter(|s| s.name == name) {
                if s.kind == ServiceKind::Container {
                    let _ = self.container_stop(&s.id).await;
                    continue;
                }
                let sid = ServiceId::from(s.id.as_str());
                if self.inner.manager.stop(&sid).is_ok() {
                    let wait = self.inner.manager.wait_stopped(&sid);
                    late |= tokio::time::timeout_at(deadline, wait).await.is_err();
                }
            }
        }
        if late {
            tracing::warn!("some services were still stopping at shutdown");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{
        CONTRACT_FIRST_BACKOFF_MS, CONTRACT_MAX_BACKOFF_MS, RestartPolicy, check_id,
        contract_restart,
    };
    use agora_image::manifest::{ManifestRestart, RestartOn};

    #[test]
    fn a_contract_guest_is_restarted_whatever_its_manifest_says() {
        // No `[restart]`: never, by the manifest; always, soon, with the default doubling.
        let plain = contract_restart(ManifestRestart::default().runtime());
        assert_eq!(plain.0, RestartPolicy::Always);
        assert_eq!(plain.1.initial_ms, CONTRACT_FIRST_BACKOFF_MS);
        assert_eq!(plain.1.max_ms, CONTRACT_MAX_BACKOFF_MS);
        // A few restarts with an hour's backoff: as many as it takes, 5 s apart at most; the
        // health restart stays the manifest's.
        let stingy = ManifestRestart {
            policy: RestartOn::OnFailure,
            max_restarts: 1,
            backoff_ms: 3_600_000,
            max_backoff_ms: 3_600_000,
            unhealthy_after_ms: 2_000,
        };
        let (policy, backoff, unhealthy) = contract_restart(stingy.runtime());
        assert_eq!(policy, RestartPolicy::Always);
        assert_eq!(
            (backoff.initial_ms, backoff.max_ms),
            (CONTRACT_FIRST_BACKOFF_MS, CONTRACT_MAX_BACKOFF_MS)
        );
        assert_eq!(unhealthy, Some(2_000));
        // A shorter first wait is kept; the doubling still reaches the cap (a manifest's 10 ms
        // cap would restart a guest that stops at once 100 times a second).
        let quick = ManifestRestart {
            policy: RestartOn::OnFailure,
            backoff_ms: 10,
            max_backoff_ms: 10,
            ..ManifestRestart::default()
        };
        let b = contract_restart(quick.runtime()).1;
        assert_eq!((b.initial_ms, b.max_ms), (10, CONTRACT_MAX_BACKOFF_MS));
    }

    #[test]
    fn ids_are_checked() {
        check_id("0a1b2c").unwrap();
        check_id("svc.v1_x-2").unwrap();
        for bad in ["", "-rm", "a b", "a/b", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
