//! The storage service: the node's block store (sled under `<data-dir>/blocks`), bitswap over
//! the swarm, provider announcements, and the operations behind `agora storage …` and
//! `agora proof …`.
//!
//! Sled calls are synchronous, so every store operation runs in `spawn_blocking`. The service's
//! long-lived tasks are the bitswap stream acceptors and per-peer writers ([`bitswap`]); the
//! [`StorageHandle`] is cheap to clone.

pub mod bitswap;
pub mod fetch;
pub mod framing;
mod jobs;
mod ops;

use std::path::Path;
use std::sync::Arc;

use agora_market::KeySigner;
use agora_storage::{BlockStore, Cid, SledBlockStore, StorageError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

pub use bitswap::{Bitswap, BitswapStats};
pub use fetch::{FetchConfig, FetchError, FetchProgress};
pub use jobs::JobStatus;
pub use ops::{AddReply, LsReply, ProofCreated, ProofVerified, parse_cid, read_readings};

use crate::network::NetworkHandle;

/// Sub-directory of the data dir holding the sled block store.
pub const BLOCKS_DIR: &str = "blocks";

/// Where blocks live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The node's own sled store, served over bitswap on our swarm.
    #[default]
    Embedded,
    /// A Kubo daemon's RPC API (not wired yet: the node refuses to start with it).
    Kubo,
}

/// Storage service configuration (from the `[storage]` section).
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Which backend.
    pub backend: Backend,
    /// Kubo RPC API URL (backend = kubo).
    pub kubo_api: String,
    /// Fetch limits.
    pub fetch: FetchConfig,
}

/// Errors of the storage service.
#[derive(Debug, thiserror::Error)]
pub enum StorageServiceError {
    /// The block store failed.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// Fetching from the network failed (boxed: it carries two CIDs).
    #[error(transparent)]
    Fetch(Box<FetchError>),
    /// A data proof failed to create or verify.
    #[error(transparent)]
    Proof(#[from] agora_storage::proof::ProofError),
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}; check the path exists and is readable/writable")]
    File {
        /// The path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Bitswap protocols were already registered on this swarm.
    #[error("bitswap is already running on this swarm")]
    AlreadyRunning,
    /// The configured backend is not available.
    #[error(
        "storage backend 'kubo' (api {0}) is not supported by this node yet; set backend = \"embedded\" in [storage]"
    )]
    KuboUnsupported(String),
    /// A blocking task died.
    #[error("storage task failed: {0}")]
    Task(String),
    /// Bad input from the caller.
    #[error("{0}")]
    Invalid(String),
}

impl From<FetchError> for StorageServiceError {
    fn from(e: FetchError) -> Self {
        StorageServiceError::Fetch(Box::new(e))
    }
}

/// Cloneable handle to the storage service.
#[derive(Clone, Debug)]
pub struct StorageHandle {
    bitswap: Bitswap,
    network: NetworkHandle,
    signer: KeySigner,
    config: StorageConfig,
    jobs: jobs::Jobs,
}

/// Opens the block store, starts bitswap on the swarm and re-announces pinned roots.
pub async fn spawn(
    data_dir: &Path,
    config: StorageConfig,
    network: NetworkHandle,
    signer: KeySigner,
    cancel: CancellationToken,
) -> Result<StorageHandle, StorageServiceError> {
    if config.backend == Backend::Kubo {
        return Err(StorageServiceError::KuboUnsupported(config.kubo_api));
    }
    let path = data_dir.join(BLOCKS_DIR);
    let store = tokio::task::spawn_blocking(move || SledBlockStore::open(path))
        .await
        .map_err(|e| StorageServiceError::Task(e.to_string()))??;
    let store: Arc<dyn BlockStore> = Arc::new(store);
    let bitswap = Bitswap::start(store, network.stream_control(), cancel)
        .map_err(|_| StorageServiceError::AlreadyRunning)?;
    let handle = StorageHandle {
        bitswap,
        network,
        signer,
        config,
        jobs: jobs::Jobs::default(),
    };
    let me = handle.clone();
    tokio::spawn(
        async move {
            for root in me.blocking(|s| s.pins()).await.unwrap_or_default() {
                me.provide(root).await;
            }
        }
        .in_current_span(),
    );
    Ok(handle)
}

impl StorageHandle {
    /// The block store.
    pub fn store(&self) -> &Arc<dyn BlockStore> {
        self.bitswap.store()
    }

    /// The bitswap engine.
    pub fn bitswap(&self) -> &Bitswap {
        &self.bitswap
    }

    /// Default fetch limits from the config.
    pub fn fetch_config(&self) -> FetchConfig {
        self.config.fetch
    }

    /// Runs a store operation off the async workers.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn BlockStore) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageServiceError> {
        let store = self.store().clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StorageServiceError::Task(e.to_string()))?
            .map_err(StorageServiceError::from)
    }

    /// Announces `root` in Kademlia (best effort: a lone node has nobody to tell).
    pub async fn provide(&self, root: Cid) {
        if let Err(e) = self.network.start_providing(root.hash().to_bytes()).await {
            debug!(%root, error = %e, "provider record not published");
        }
    }

    /// Fetches the DAG under `root` (from the store or the network), reporting progress.
    pub async fn fetch(
        &self,
        root: Cid,
        cfg: FetchConfig,
        progress: &tokio::sync::watch::Sender<FetchProgress>,
    ) -> Result<FetchProgress, StorageServiceError> {
        Ok(fetch::fetch_dag(&self.bitswap, &self.network, root, cfg, progress).await?)
    }
}

impl StorageConfig {
    /// Defaults for the embedded backend.
    pub fn embedded() -> Self {
        StorageConfig {
            backend: Backend::Embedded,
            kubo_api: String::new(),
            fetch: FetchConfig::default(),
        }
    }
}
