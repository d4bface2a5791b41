//! Hosting of guest services: publishes service images into content-addressed storage, stages
//! them by image CID (fetched over bitswap when not local, module hash verified, compiled once
//! and cached by the runtime), and runs them on the wasmtime [`agora_runtime::ServiceManager`]
//! (or docker/podman for container images). Every message a guest publishes is signed by the
//! node key and broadcast on [`ServiceHost::published`]. A *service* in agora is always such a
//! guest workload.
//!
//! The orchestrator and the radio drive it through [`control::ServiceControl`] (`stage(id,
//! image_cid)`, `start`, `stop`, `push_reading`, `running`), which tests may fake.
//!
//! A contract's service runs under the manifest's limits clamped to what the contract bought
//! ([`ceiling`], `stage_for_contract`); the node operator's own services under the manifest's.
//!
//! May depend on `agora-image` (manifests and image records), `agora-runtime` (the sandbox),
//! `agora-exchange` (fetching and storing images), `agora-contracts` (a contract's terms) and
//! `agora-storage`; never on the network, the ledger or another driver crate.
#![forbid(unsafe_code)]

pub mod ceiling;
mod container;
pub mod control;
pub mod kv;
mod ops;
mod order;
pub mod probe;
pub mod published;
mod query;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use agora_market::{KeySigner, Signer};
use agora_runtime::{
    ContainerError, Host, HostConfig, Metering, RuntimeError, ServiceManager, ServiceState,
};
use agora_storage::Cid;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Service images (manifest and image record) live in `agora-image`, a small crate the fuzz
/// targets can build without the network; re-exported under their old paths.
pub use agora_image::record as image;
pub use agora_image::{
    Activation, ImageError, ImageRecord, ManifestError, OrderError, ServiceKind, ServiceManifest,
};
pub use agora_image::{manifest, record};
pub use container::Engine as ContainerEngine;
pub use kv::SledKv;
pub use order::DEPENDENCY_WAIT;
pub use published::{PublishedError, PublishedMsg, SERVICE_PUBLISH};

use agora_exchange::{ExchangeError, StorageHandle};

/// Sub-directory of the data dir for the runtime (artifact cache, guest key-value store).
pub const RUNTIME_DIR: &str = "runtime";
/// Most bytes fetched for one service image: its module (at most
/// [`agora_image::MAX_MODULE_BYTES`]) and a MiB for the manifest and record.
pub(crate) const IMAGE_MAX_BYTES: u64 = agora_image::MAX_MODULE_BYTES + (1 << 20);

/// Service host settings (built by the daemon; defaults suit an edge device).
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    /// Wasm instances that may exist at once (pool slots).
    pub max_instances: u32,
    /// Per-instance memory ceiling in bytes; manifests and contracts may only ask for less.
    pub max_memory_bytes: u64,
    /// Published messages buffered between the runtime and the signer.
    pub outbox: usize,
    /// Signed messages buffered for each `published()` subscriber.
    pub broadcast: usize,
    /// Most bytes one contract service may write to stdout/stderr per start (this provider's
    /// policy; a manifest may only ask for less).
    pub max_output_bytes: u64,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            max_instances: 16,
            max_memory_bytes: 128 << 20,
            outbox: 256,
            broadcast: 1024,
            max_output_bytes: 1 << 20,
        }
    }
}

/// `[services]` in `config.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesSection {
    /// Wasm instances that may exist at once on this node.
    pub max_instances: u32,
    /// Largest memory limit a service may run with, in MiB.
    pub max_memory_mb: u64,
    /// Most stdout/stderr a contract service may write per start, in KiB.
    pub max_output_kib: u64,
}

impl Default for ServicesSection {
    fn default() -> Self {
        let d = ServicesConfig::default();
        Self {
            max_instances: d.max_instances,
            max_memory_mb: d.max_memory_bytes >> 20,
            max_output_kib: d.max_output_bytes >> 10,
        }
    }
}

impl ServicesSection {
    /// The service host config (values clamped to 1..=1024 instances, 1..=4096 MiB and
    /// 1..=1048576 KiB of output).
    pub fn service_config(&self) -> ServicesConfig {
        ServicesConfig {
            max_instances: self.max_instances.clamp(1, 1024),
            max_memory_bytes: self.max_memory_mb.clamp(1, 4096) << 20,
            max_output_bytes: self.max_output_kib.clamp(1, 1 << 20) << 10,
            ..ServicesConfig::default()
        }
    }
}

/// Errors of the service host; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Storage failed (fetching or storing the image).
    #[error(transparent)]
    Storage(Box<ExchangeError>),
    /// The image is malformed (boxed: it carries CIDs).
    #[error(transparent)]
    Image(Box<ImageError>),
    /// The wasm runtime refused (hash mismatch, compile error, limits, unknown id...).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The container engine failed or is missing.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// Service images live in the embedded block store only.
    #[error(
        "service images need the embedded block store; this node uses storage.backend = \"kubo\" \
         (set it to \"embedded\" to publish or stage services)"
    )]
    NeedsEmbeddedStore,
    /// No service with that id is staged.
    #[error("service {0} is not staged on this node; `agora service list` shows the ids")]
    Unknown(String),
    /// The id is already in use.
    #[error("service id {0} is already staged; pick another --id or remove it first")]
    AlreadyStaged(String),
    /// The service id cannot be used.
    #[error(
        "service id `{0}` must be 1..=128 characters of A-Z, a-z, 0-9, '.', '_', '-' and not start with '-'"
    )]
    BadId(String),
    /// The requested limits exceed what this host offers.
    #[error("{what} of {asked} exceeds this host's maximum of {max}; lower it in the manifest")]
    OverHostLimit {
        /// Which limit.
        what: &'static str,
        /// Requested value.
        asked: u64,
        /// Host maximum.
        max: u64,
    },
    /// The contract a service was staged or started for has already ended.
    #[error(
        "contract {contract} ended at {end_ms} ms (now {now_ms} ms); its service cannot run any more"
    )]
    ContractEnded {
        /// The contract.
        contract: agora_contracts::ContractId,
        /// When its window ended.
        end_ms: u64,
        /// This node's clock.
        now_ms: u64,
    },
    /// The service did not stop in time.
    #[error(
        "service {0} did not stop within {1} s (a host call may be blocking); it will stop after that call"
    )]
    StopTimeout(String, u64),
    /// A file or the data dir could not be used.
    #[error("cannot use {path}: {reason}; check the data directory is writable")]
    Io {
        /// The path.
        path: String,
        /// Cause.
        reason: String,
    },
    /// A blocking task died.
    #[error("service host task failed: {0}")]
    Task(String),
    /// No dependency order exists (a `depends_on` name nothing staged has, or a cycle).
    #[error(transparent)]
    Order(#[from] OrderError),
    /// Several staged services have a dependency's name and none runs: which to start is
    /// the operator's choice.
    #[error(
        "service {service} depends on `{dependency}`, which several staged services are named \
         ({}) and none runs; start the one you want first",
        .ids.join(", ")
    )]
    AmbiguousDependency {
        /// The service being started.
        service: String,
        /// The dependency's name.
        dependency: String,
        /// The staged services with that name.
        ids: Vec<String>,
    },
    /// A dependency could not be started.
    #[error("cannot start {service}: its dependency {dependency} did not start: {source}")]
    DependencyFailed {
        /// The service being started.
        service: String,
        /// The dependency's service id.
        dependency: String,
        /// Why it did not start.
        source: Box<ServiceError>,
    },
    /// Too many probe images are being fetched and compiled here already (THREATS A15).
    #[error(
        "{} probe images are being loaded here and {} more wait; this one is not loaded now \
         (its probe is judged on the hosting layer's word)",
        probe::PROBE_LOADS,
        probe::PROBE_LOADS_WAITING
    )]
    ProbeLoadsBusy,
    /// The same probe image is being loaded already (THREATS A15).
    #[error(
        "this probe image is being loaded already (its probe is judged on the hosting layer's word)"
    )]
    ProbeImageLoading,
    /// A probe image's fetch took too long (THREATS A15).
    #[error(
        "the probe image was not fetched within {0} s while other probe images waited; asked \
         again at a later probe"
    )]
    ProbeFetchTimeout(u64),
    /// A dependency started but did not become ready (first poll answered, healthy) in time.
    #[error(
        "cannot start {service}: its dependency {dependency} was not ready within {waited_ms} ms \
         ({detail}); it is left running, see `agora service show {dependency}` and its logs"
    )]
    DependencyNotReady {
        /// The service being started.
        service: String,
        /// The dependency's service id.
        dependency: String,
        /// How long it was waited for.
        waited_ms: u64,
        /// What it was doing.
        detail: String,
    },
}

impl ServiceError {
    /// True for a staging failure that staging the same image again will not cure: the image,
    /// its manifest or its module is unusable here, or the contract no longer allows it (a
    /// fetch that failed, a task or file error may pass).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ServiceError::Manifest(_)
                | ServiceError::Image(_)
                | ServiceError::Runtime(_)
                | ServiceError::OverHostLimit { .. }
                | ServiceError::ContractEnded { .. }
                | ServiceError::BadId(_)
        )
    }
}

impl From<ImageError> for ServiceError {
    fn from(e: ImageError) -> Self {
        ServiceError::Image(Box::new(e))
    }
}

impl From<ExchangeError> for ServiceError {
    fn from(e: ExchangeError) -> Self {
        ServiceError::Storage(Box::new(e))
    }
}

/// Result of `publish`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The image CID (pass it to `stage`).
    pub image: String,
    /// Root CID of the module's UnixFS DAG.
    pub module: String,
    /// The manifest block CID.
    pub manifest: String,
    /// blake3 CID of the module bytes (the runtime's module id).
    pub module_id: String,
    /// Module size in bytes.
    pub module_bytes: u64,
    /// Service name.
    pub name: String,
    /// Service version.
    pub version: String,
    /// `wasm` or `container`.
    pub kind: ServiceKind,
}

/// Result of `stage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedInfo {
    /// The service id.
    pub id: String,
    /// The image CID.
    pub image: String,
    /// The runtime's module id.
    pub module_id: String,
    /// Whether the compiled artifact came from this node's cache.
    pub from_cache: bool,
    /// The manifest.
    pub manifest: ServiceManifest,
}

/// A row of `list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// The service id.
    pub id: String,
    /// The image CID.
    pub image: String,
    /// Service name from the manifest.
    pub name: String,
    /// Service version from the manifest.
    pub version: String,
    /// `wasm` or `container`.
    pub kind: ServiceKind,
    /// Lifecycle state.
    pub state: ServiceState,
    /// Usage so far (zero for containers: not metered yet).
    pub metering: Metering,
    /// Names of the services it depends on (its manifest's `depends_on`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// When this node last started it on request (`start`, or as a dependency), Unix ms.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// When this node last stopped it on request (`stop`, or as a dependent), Unix ms.
    #[serde(default)]
    pub stopped_at_ms: Option<u64>,
    /// Why the instance its restart policy last replaced stopped (wasm services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<agora_runtime::StopReason>,
}

/// One staged service as the host remembers it.
struct Staged {
    image: Cid,
    manifest: ServiceManifest,
    /// The limits it runs under (the manifest's, clamped to its contract's when it has one).
    limits: agora_runtime::ServiceLimits,
    /// The contract it was staged for, if any: its lifetime is recomputed at every start.
    ceiling: Option<ceiling::ContractCeiling>,
    container: Option<container::ContainerSlot>,
    /// When it was last started on request, Unix ms.
    started_at_ms: Option<u64>,
    /// When it was last stopped on request, Unix ms.
    stopped_at_ms: Option<u64>,
}

struct Inner {
    storage: StorageHandle,
    manager: ServiceManager,
    signer: KeySigner,
    config: ServicesConfig,
    staged: Mutex<BTreeMap<String, Staged>>,
    published: broadcast::Sender<PublishedMsg>,
    /// Images compiled for arbitrators' probes (bounded, `probe`).
    probe_modules: Mutex<BTreeMap<Cid, probe::ProbeModule>>,
    /// Bounds the probe images fetched and compiled at once (`probe`, THREATS A15).
    probe_loads: probe::ProbeLoads,
    /// The container engine set by [`ServiceHost::set_container_engine`].
    container_engine: Mutex<Option<container::Engine>>,
}

/// Cloneable handle to the node's service host.
#[derive(Clone)]
pub struct ServiceHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServiceHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHost")
            .field("services", &lock(&self.inner.staged).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The artifact-cache MAC key, derived from the node key so only this node's artifacts load.
pub fn artifact_key(signer: &KeySigner) -> [u8; 32] {
    blake3::derive_key("agora/v1/runtime-artifact-key", &signer.secret_bytes())
}

/// Builds the wasm host (artifacts under `<data-dir>/runtime/cache`, guest store under
/// `<data-dir>/runtime/kv`) and starts the task that signs published messages.
pub fn spawn(
    data_dir: &Path,
    config: ServicesConfig,
    storage: StorageHandle,
    signer: KeySigner,
    cancel: CancellationToken,
) -> Result<(ServiceHost, JoinHandle<()>), ServiceError> {
    let dir = data_dir.join(RUNTIME_DIR);
    let mut host_config = HostConfig::new(dir.join("cache"), artifact_key(&signer));
    host_config.max_instances = config.max_instances;
    host_config.max_memory_bytes = config.max_memory_bytes;
    let host = Host::new(host_config)?;
    let kv_dir = dir.join("kv");
    let kv = SledKv::open(&kv_dir).map_err(|e| ServiceError::Io {
        path: kv_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let (manager, mut outbox) = ServiceManager::new(host, Arc::new(kv), config.outbox);
    let (published, _) = broadcast::channel(config.broadcast.max(1));
    let inner = Arc::new(Inner {
        storage,
        manager,
        signer,
        config,
        staged: Mutex::new(BTreeMap::new()),
        published,
        probe_modules: Mutex::new(BTreeMap::new()),
        probe_loads: probe::ProbeLoads::default(),
        container_engine: Mutex::new(None),
    });
    let host = ServiceHost {
        inner: inner.clone(),
    };
    let me = host.clone();
    let task = tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    msg = outbox.recv() => match msg {
                        Some(p) => {
                            let signed = PublishedMsg::sign(p, &me.inner.signer, agora_wire::now_ms());
                            // No subscriber is fine: the message is counted in metering anyway.
                            let _ = me.inner.published.send(signed);
                        }
                        None => break,
                    },
                }
            }
            me.stop_all().await;
        }
        .in_current_span(),
    );
    Ok((host, task))
}

impl ServiceHost {
    /// Subscribes to signed messages published by every service on this node. A subscriber
    /// that falls more than the broadcast capacity behind gets `Lagged` and misses messages.
    pub fn published(&self) -> broadcast::Receiver<PublishedMsg> {
        self.inner.published.subscribe()
    }

    /// The node that signs published messages.
    pub fn node_id(&self) -> agora_market::NodeId {
        self.inner.signer.node_id()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::ServicesSection;

    #[test]
    fn services_section_parses_and_clamps() {
        let c: ServicesSection = toml::from_str("max_instances = 0\nmax_memory_mb = 64\n").unwrap();
        let s = c.service_config();
        assert_eq!(s.max_instances, 1);
        assert_eq!(s.max_memory_bytes, 64 << 20);
        assert_eq!(s.max_output_bytes, 1 << 20, "default output policy");
        assert!(toml::from_str::<ServicesSection>("max_cpus = 1\n").is_err());
    }
}
