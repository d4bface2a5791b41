//! The node's block storage and exchange: the operations behind `agora storage …` and
//! `agora proof …` over a [`StoreBackend`] — either the node's own block store (sled under
//! `<data-dir>/blocks`, bitswap over the swarm, provider announcements; [`Embedded`]) or a Kubo
//! daemon's RPC API ([`KuboBackend`]) — plus the custody of storage-contract files and the
//! proof-of-storage challenges over the swarm ([`audit`]).
//!
//! Sled calls are synchronous, so every store operation runs in `spawn_blocking`. The embedded
//! backend's long-lived tasks are the bitswap stream acceptors and per-peer writers
//! ([`bitswap`]); the [`StorageHandle`] is cheap to clone.
//!
//! May depend on `agora-storage` (CIDs, blockstore, proofs, challenges, Kubo client),
//! `agora-network` (swarm handle, raw streams) and `agora-wire`; never on the ledger or a driver
//! crate.
#![forbid(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod bitswap;
pub mod custody;
pub mod embedded;
pub mod fetch;
pub mod framing;
pub mod gc;
pub mod holds;
mod jobs;
pub mod kubo;
mod ops;
pub mod scores;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agora_market::KeySigner;
use agora_storage::{BlockStore, KuboError, SledBlockStore, StorageError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};

pub use backend::StoreBackend;
pub use bitswap::{Bitswap, BitswapStats};
pub use embedded::Embedded;
pub use fetch::{FetchConfig, FetchError, FetchProgress};
pub use jobs::JobStatus;
pub use kubo::KuboBackend;
pub use ops::{AddReply, LsReply, ProofCreated, ProofVerified, parse_cid, read_readings};

use agora_network::NetworkHandle;

/// Sub-directory of the data dir holding the sled block store.
pub const BLOCKS_DIR: &str = "blocks";

/// Where blocks live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The node's own sled store, served over bitswap on our swarm.
    #[default]
    Embedded,
    /// A Kubo daemon's RPC API (`storage.api`); the node's own bitswap is not started.
    Kubo,
}

/// Storage and exchange configuration (from the `[storage]` section).
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Which backend.
    pub backend: Backend,
    /// Kubo RPC API URL (backend = kubo).
    pub kubo_api: String,
    /// Fetch limits.
    pub fetch: FetchConfig,
    /// The embedded store collects unpinned blocks this long after a root was unpinned
    /// ([`gc`]); `None`: only the operator's `agora storage gc` does.
    pub gc_interval: Option<std::time::Duration>,
}

/// The default of [`StorageConfig::gc_interval`].
pub const DEFAULT_GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Errors of the node's storage and exchange.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
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
    /// The Kubo daemon failed or could not be reached.
    #[error(transparent)]
    Kubo(#[from] KuboError),
    /// A blocking task died.
    #[error("storage task failed: {0}")]
    Task(String),
    /// Bad input from the caller.
    #[error("{0}")]
    Invalid(String),
}

impl From<FetchError> for ExchangeError {
    fn from(e: FetchError) -> Self {
        ExchangeError::Fetch(Box::new(e))
    }
}

/// Cloneable handle to the node's storage and exchange.
#[derive(Clone, Debug)]
pub struct StorageHandle {
    backend: Arc<dyn StoreBackend>,
    embedded: Option<Embedded>,
    signer: KeySigner,
    config: StorageConfig,
    jobs: jobs::Jobs,
    provers: custody::Provers,
    gate: audit::gate::ChallengeGate,
    /// Who holds each pin ([`holds`]), and the file it is kept in.
    holds: Arc<Mutex<holds::HoldTable>>,
    holds_path: PathBuf,
    /// Test-only: claim custody without fetching anything (a provider that keeps nothing).
    #[cfg(feature = "test-utils")]
    skip_custody: Arc<std::sync::atomic::AtomicBool>,
}

/// Starts the configured backend. Embedded: opens the block store, starts bitswap on the swarm
/// and re-announces pinned roots. Kubo: checks the daemon answers at `storage.api`.
pub async fn spawn(
    data_dir: &Path,
    config: StorageConfig,
    network: NetworkHandle,
    signer: KeySigner,
    cancel: CancellationToken,
) -> Result<StorageHandle, ExchangeError> {
    if config.backend == Backend::Kubo {
        let kubo = KuboBackend::new(&config.kubo_api, config.fetch);
        kubo.check().await?;
        info!(api = %config.kubo_api, "storage backend: kubo");
        return Ok(StorageHandle::start(Arc::new(kubo), None, signer, config, data_dir).await);
    }
    let path = data_dir.join(BLOCKS_DIR);
    let store = tokio::task::spawn_blocking(move || SledBlockStore::open(path))
        .await
        .map_err(|e| ExchangeError::Task(e.to_string()))??;
    let store: Arc<dyn BlockStore> = Arc::new(store);
    let quota = network.bitswap_quota(
        bitswap::MAX_INBOUND_STREAMS_PER_PEER,
        bitswap::MAX_INBOUND_STREAMS,
    );
    let bitswap = Bitswap::start(
        store,
        network.stream_control(),
        quota,
        network.frame_budget(),
        cancel.clone(),
    )
    .map_err(|_| ExchangeError::AlreadyRunning)?;
    let embedded = Embedded::new(bitswap, network, config.fetch);
    if let Some(interval) = config.gc_interval {
        let e = embedded.clone();
        tokio::spawn(
            gc::collector(embedded.gc_gate().clone(), interval, cancel, move |c| {
                let e = e.clone();
                async move {
                    let _ = e.collect(c).await;
                }
            })
            .in_current_span(),
        );
    }
    let handle = StorageHandle::start(
        Arc::new(embedded.clone()),
        Some(embedded.clone()),
        signer,
        config,
        data_dir,
    )
    .await;
    tokio::spawn(
        async move {
            for root in embedded.blocking(|s| s.pins()).await.unwrap_or_default() {
                embedded.provide(root).await;
            }
        }
        .in_current_span(),
    );
    Ok(handle)
}

impl StorageHandle {
    /// A handle on `backend`, with the holds of a previous run in `data_dir` dropped.
    async fn start(
        backend: Arc<dyn StoreBackend>,
        embedded: Option<Embedded>,
        signer: KeySigner,
        config: StorageConfig,
        data_dir: &Path,
    ) -> Self {
        let provers = if embedded.is_some() {
            custody::Provers::kept_in(data_dir.join(custody::TREES_DIR))
        } else {
            custody::Provers::default()
        };
        StorageHandle {
            backend,
            embedded,
            signer,
            config,
            jobs: jobs::Jobs::default(),
            provers,
            gate: audit::gate::ChallengeGate::default(),
            holds: Arc::default(),
            holds_path: data_dir.join(holds::HOLDS_FILE),
            #[cfg(feature = "test-utils")]
            skip_custody: Arc::default(),
        }
        .restarted()
        .await
    }

    /// The embedded backend (block store and bitswap), if this node uses it.
    pub fn embedded(&self) -> Option<&Embedded> {
        self.embedded.as_ref()
    }

    /// The bitswap engine, if the embedded backend runs.
    pub fn bitswap(&self) -> Option<&Bitswap> {
        self.embedded.as_ref().map(Embedded::bitswap)
    }

    /// Who this node answers storage challenges from: the orchestrator writes the committees
    /// of the storage contracts it keeps files for; the challenge responder reads them.
    pub fn challenge_gate(&self) -> &audit::gate::ChallengeGate {
        &self.gate
    }

    /// Test-only misbehaviour: from now on custody is claimed taken without fetching or
    /// pinning anything (neither the file nor its commitment), as a provider that keeps
    /// nothing and still reports its storage contracts active would (THREATS P4).
    #[cfg(feature = "test-utils")]
    pub fn byzantine_skip_custody(&self) {
        self.skip_custody
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The configured backend.
    pub fn backend(&self) -> Backend {
        self.config.backend
    }

    /// Default fetch limits from the config.
    pub fn fetch_config(&self) -> FetchConfig {
        self.config.fetch
    }
}

impl StorageConfig {
    /// Defaults for the embedded backend.
    pub fn embedded() -> Self {
        StorageConfig {
            backend: Backend::Embedded,
            kubo_api: String::new(),
            fetch: FetchConfig::default(),
            gc_interval: Some(DEFAULT_GC_INTERVAL),
        }
    }
}
