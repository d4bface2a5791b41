//! Dependency order on one node (`depends_on` in a manifest): `start` starts what a service
//! depends on first, each ready before the next; `stop` stops what depends on a service first.
//! The order itself is the pure [`agora_image::deps`]; this file resolves names to service ids
//! and performs the starts, waits and stops.
//!
//! Names resolve only among one party's services: a contract's customer's, or the operator's
//! own (no contract). Another customer's manifest naming the same service, or depending on
//! a name nobody has, never changes what a customer's service depends on, and a start never
//! starts another party's service (THREATS C14: a hostile customer's staged image made an
//! honest customer's service unstartable, or started its standby early, and got that
//! customer's honest provider slashed `NoActivation`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agora_image::{DepGraph, check_acyclic, start_order, stop_order};
use agora_runtime::{ServiceState, StopReason};

use super::{ServiceError, ServiceHost, ServiceInfo, ServiceManifest, Staged};

/// How long `start` waits for each dependency to be ready (its first poll answered and, if it
/// exports `agora_health`, healthy) before it reports [`ServiceError::DependencyNotReady`].
pub const DEPENDENCY_WAIT: Duration = Duration::from_secs(10);

/// How often a starting dependency's health is read while waiting for it.
const READY_POLL: Duration = Duration::from_millis(10);

/// The name graph of `services` (a name several share has the union of their dependencies).
pub(crate) fn graph_of<'a>(
    services: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> DepGraph {
    let mut graph = DepGraph::new();
    for (name, deps) in services {
        graph
            .entry(name.to_string())
            .or_default()
            .extend(deps.iter().cloned());
    }
    graph
}

/// Whose services a staged service's dependencies resolve among: its contract's customer, or
/// the operator's own (`None`).
pub(crate) type Party = Option<agora_market::NodeId>;

fn party(s: &Staged) -> Party {
    s.ceiling.as_ref().map(|c| c.customer)
}

impl ServiceHost {
    /// Refuses `manifest` (staged for `party`) if it closes a dependency cycle with that
    /// party's services in `staged`.
    pub(crate) fn check_acyclic_with(
        &self,
        staged: &BTreeMap<String, Staged>,
        manifest: &ServiceManifest,
        of: Party,
    ) -> Result<(), ServiceError> {
        if manifest.depends_on.is_empty() {
            // A service that depends on nothing closes no cycle.
            return Ok(());
        }
        let graph = graph_of(
            staged
                .values()
                .filter(|s| party(s) == of)
                .map(|s| &s.manifest)
                .chain([manifest])
                .map(|m| (m.name.as_str(), m.depends_on.as_slice())),
        );
        Ok(check_acyclic(&graph)?)
    }

    /// The staged services of `id`'s party (see the module doc), `id` among them.
    fn list_party_of(&self, id: &str) -> Result<Vec<ServiceInfo>, ServiceError> {
        let parties: BTreeMap<String, Party> = super::lock(&self.inner.staged)
            .iter()
            .map(|(id, s)| (id.clone(), party(s)))
            .collect();
        let of = *parties
            .get(id)
            .ok_or_else(|| ServiceError::Unknown(id.to_string()))?;
        Ok(self
            .list()
            .into_iter()
            .filter(|s| parties.get(&s.id) == Some(&of))
            .collect())
    }

    /// Why staged service `id` could not start now for want of a dependency (a name its
    /// party's staged services do not have, or a cycle), without starting anything; `None`
    /// when every name resolves. A provider asks before it commits to starting a contract's
    /// service later (THREATS C14).
    pub fn unresolved_dependency(&self, id: &str) -> Result<Option<String>, ServiceError> {
        let services = self.list_party_of(id)?;
        let Some(me) = services.iter().find(|s| s.id == id) else {
            return Err(ServiceError::Unknown(id.to_string()));
        };
        if me.depends_on.is_empty() {
            return Ok(None);
        }
        let graph = graph_of(
            services
                .iter()
                .map(|s| (s.name.as_str(), s.depends_on.as_slice())),
        );
        Ok(start_order(&graph, &[me.name.as_str()])
            .err()
            .map(|e| e.to_string()))
    }

    /// The state of staged service `id` (wasm or container).
    pub(crate) fn state_of(&self, id: &str) -> Result<ServiceState, ServiceError> {
        if self.is_container(id)? {
            return self.container_state(id);
        }
        Ok(self.inner.manager.state(&id.into())?)
    }

    /// Starts staged (or stopped) service `id` after what it depends on: see
    /// [`Self::start_in_order`]; the ids it started are not returned.
    pub async fn start(&self, id: &str) -> Result<(), ServiceError> {
        self.start_in_order(id).await.map(|_| ())
    }

    /// Starts service `id` and, first, every service its manifest's `depends_on` names
    /// (transitively), each after all it depends on; a dependency that does not run yet is
    /// started and waited for until ready (first poll answered, healthy if it exports
    /// `agora_health`) for at most [`DEPENDENCY_WAIT`]. Returns the ids it started, in order,
    /// `id` last. A name no staged service has, or a cycle, is an error naming the services,
    /// and nothing is started.
    pub async fn start_in_order(&self, id: &str) -> Result<Vec<String>, ServiceError> {
        self.start_in_order_within(id, DEPENDENCY_WAIT).await
    }

    /// [`Self::start_in_order`] waiting at most `wait` for each dependency to be ready.
    pub async fn start_in_order_within(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<Vec<String>, ServiceError> {
        let services = self.list_party_of(id)?;
        let me = services
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| ServiceError::Unknown(id.to_string()))?;
        let graph = graph_of(
            services
                .iter()
                .map(|s| (s.name.as_str(), s.depends_on.as_slice())),
        );
        let names = start_order(&graph, &[me.name.as_str()])?;
        // Resolve every name before starting anything: an ambiguous one starts nothing.
        let deps = names
            .iter()
            .filter(|n| **n != me.name)
            .map(|n| resolve(&services, n, id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut started = Vec::new();
        for dep in deps {
            if dep.state != ServiceState::Active {
                self.start_one(&dep.id)
                    .await
                    .map_err(|source| ServiceError::DependencyFailed {
                        service: id.to_string(),
                        dependency: dep.id.clone(),
                        source: Box::new(source),
                    })?;
                tracing::info!(service = id, dependency = %dep.id, "dependency started");
                started.push(dep.id.clone());
            }
            self.wait_ready(id, &dep.id, wait).await?;
        }
        self.start_one(id).await?;
        started.push(id.to_string());
        Ok(started)
    }

    /// Waits until dependency `dep` of `service` is ready, at most `wait`.
    async fn wait_ready(
        &self,
        service: &str,
        dep: &str,
        wait: Duration,
    ) -> Result<(), ServiceError> {
        let began = Instant::now();
        loop {
            let health = self.health(dep)?;
            if health.healthy {
                return Ok(());
            }
            let detail = match (&health.state, health.last_poll_ms_ago, health.guest_health) {
                (ServiceState::Stopped(reason), _, _) => Some(format!("it stopped: {reason:?}")),
                (ServiceState::Staged, _, _) => Some("it is not running".to_string()),
                _ if began.elapsed() < wait => None,
                (_, None, _) => Some("no poll answered yet".to_string()),
                (_, Some(_), Some(h)) if h != 0 => Some(format!("its agora_health answers {h}")),
                (_, Some(ms), _) => Some(format!("last poll answered {ms} ms ago")),
            };
            if let Some(detail) = detail {
                return Err(ServiceError::DependencyNotReady {
                    service: service.to_string(),
                    dependency: dep.to_string(),
                    waited_ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
                    detail,
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Stops service `id` after what depends on it: see [`Self::stop_in_order`]; returns why
    /// `id` stopped.
    pub async fn stop(&self, id: &str) -> Result<StopReason, ServiceError> {
        let mut stopped = self.stop_in_order(id).await?;
        stopped
            .pop()
            .map(|(_, reason)| reason)
            .ok_or_else(|| ServiceError::Unknown(id.to_string()))
    }

    /// Stops service `id` and, first, every running service that depends on its name
    /// (transitively), dependents before what they depend on, each waited for (up to 10 s).
    /// When another running service has `id`'s name (an upgrade's second instance), the
    /// dependents keep it and only `id` stops. Returns each stopped id and why, `id` last.
    pub async fn stop_in_order(&self, id: &str) -> Result<Vec<(String, StopReason)>, ServiceError> {
        let services = self.list_party_of(id)?;
        let me = services
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| ServiceError::Unknown(id.to_string()))?;
        let running: Vec<&ServiceInfo> = services
            .iter()
            .filter(|s| s.state == ServiceState::Active)
            .collect();
        let replaced = running.iter().any(|s| s.name == me.name && s.id != id);
        let mut stopped = Vec::new();
        if me.state == ServiceState::Active && !replaced {
            let graph = graph_of(
                running
                    .iter()
                    .map(|s| (s.name.as_str(), s.depends_on.as_slice())),
            );
            let names = stop_order(&graph, &me.name)?;
            for name in names.iter().filter(|n| **n != me.name) {
                for dependent in running.iter().filter(|s| s.name == *name) {
                    let reason = self.stop_one(&dependent.id).await?;
                    tracing::info!(service = id, dependent = %dependent.id, "dependent stopped");
                    stopped.push((dependent.id.clone(), reason));
                }
            }
        }
        stopped.push((id.to_string(), self.stop_one(id).await?));
        Ok(stopped)
    }
}

/// The staged service that satisfies dependency `name` of service `id`: one that runs, else
/// the only one with that name.
fn resolve<'a>(
    services: &'a [ServiceInfo],
    name: &str,
    id: &str,
) -> Result<&'a ServiceInfo, ServiceError> {
    let named: Vec<&ServiceInfo> = services
        .iter()
        .filter(|s| s.name == name && s.id != id)
        .collect();
    if let Some(running) = named.iter().find(|s| s.state == ServiceState::Active) {
        return Ok(running);
    }
    match named.as_slice() {
        [only] => Ok(only),
        [] => Err(ServiceError::Order(agora_image::OrderError::Missing {
            service: id.to_string(),
            dependency: name.to_string(),
        })),
        _ => Err(ServiceError::AmbiguousDependency {
            service: id.to_string(),
            dependency: name.to_string(),
            ids: named.iter().map(|s| s.id.clone()).collect(),
        }),
    }
}
