//! The storage backend seam: the CLI and control API call [`StorageHandle`] methods, which
//! dispatch to the configured [`StoreBackend`] — the node's own sled store served over bitswap
//! ([`super::embedded::Embedded`]) or a Kubo daemon's RPC API ([`super::kubo::KuboBackend`]).
//!
//! [`StorageHandle`]: super::StorageHandle

use std::path::PathBuf;

use agora_storage::blockstore::GcStats;
use agora_storage::car::CarImport;
use agora_storage::{Cid, CidVersion, unixfs};
use async_trait::async_trait;
use tokio::sync::watch;

use super::{AddReply, ExchangeError, FetchConfig, FetchProgress, LsReply};

/// Result alias of backend operations.
pub type BackendResult<T> = Result<T, ExchangeError>;

/// Where a node's content-addressed data is stored and fetched from.
#[async_trait]
pub trait StoreBackend: Send + Sync + std::fmt::Debug {
    /// Imports the file at `path` as UnixFS (Kubo's defaults) and pins it.
    async fn add_file(&self, path: PathBuf, version: CidVersion) -> BackendResult<AddReply>;

    /// Fetches `cid` if needed and writes the file to `out`.
    async fn get_file(
        &self,
        cid: Cid,
        out: PathBuf,
        progress: &watch::Sender<FetchProgress>,
        cfg: FetchConfig,
    ) -> BackendResult<unixfs::ExportStats>;

    /// Fetches (if needed) and pins the DAG under `cid`.
    async fn pin(&self, cid: Cid, cfg: FetchConfig) -> BackendResult<FetchProgress>;

    /// Removes the pin on `cid`.
    async fn unpin(&self, cid: Cid) -> BackendResult<()>;

    /// Pinned roots and the number of stored blocks.
    async fn ls(&self) -> BackendResult<LsReply>;

    /// Whether `cid` is pinned (recursively) now.
    async fn is_pinned(&self, cid: Cid) -> BackendResult<bool> {
        let cid = cid.to_string();
        Ok(self.ls().await?.pins.contains(&cid))
    }

    /// Deletes unpinned blocks.
    async fn gc(&self) -> BackendResult<GcStats>;

    /// Backend counters, printed as a flat table by `agora storage stats`.
    async fn stats(&self) -> BackendResult<serde_json::Value>;

    /// Stores one block (verified against `cid`) and pins it.
    async fn put_block(&self, cid: Cid, data: Vec<u8>) -> BackendResult<()>;

    /// One verified block, fetched if needed.
    async fn get_block(&self, cid: Cid, cfg: FetchConfig) -> BackendResult<Vec<u8>>;

    /// Writes the DAG under `cid` (fetched if needed) as a CAR v1 file.
    async fn car_export(&self, cid: Cid, out: PathBuf) -> BackendResult<()>;

    /// Imports a CAR v1 file and pins its roots.
    async fn car_import(&self, path: PathBuf) -> BackendResult<CarImport>;
}
