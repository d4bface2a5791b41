//! The embedded backend: blocks in the node's own sled store, fetched from and served to peers
//! over bitswap on our swarm, with Kademlia provider records for pinned roots.

use std::path::{Path, PathBuf};

use agora_storage::blockstore::GcStats;
use agora_storage::car::CarImport;
use agora_storage::{BlockStore, Cid, CidVersion, ImportOptions, StorageError, unixfs};
use async_trait::async_trait;
use tokio::sync::watch;
use tracing::debug;

use super::backend::{BackendResult, StoreBackend};
use super::gc::{self, Collection, GcGate, WritePass};
use super::{AddReply, Bitswap, ExchangeError, FetchConfig, FetchProgress, LsReply};
use agora_network::NetworkHandle;

/// The sled store plus bitswap.
#[derive(Clone, Debug)]
pub struct Embedded {
    bitswap: Bitswap,
    network: NetworkHandle,
    fetch: FetchConfig,
    /// Writes in flight against collections ([`gc`]).
    gate: GcGate,
}

/// Maps an I/O failure on a user's file to an error naming the path.
pub(super) fn file_err(path: &Path, source: std::io::Error) -> ExchangeError {
    ExchangeError::File {
        path: path.display().to_string(),
        source,
    }
}

impl Embedded {
    /// Wraps a running bitswap engine.
    pub fn new(bitswap: Bitswap, network: NetworkHandle, fetch: FetchConfig) -> Self {
        Embedded {
            bitswap,
            network,
            fetch,
            gate: GcGate::default(),
        }
    }

    /// The lock between block writes and collections.
    pub fn gc_gate(&self) -> &GcGate {
        &self.gate
    }

    /// The bitswap engine (and through it the block store).
    pub fn bitswap(&self) -> &Bitswap {
        &self.bitswap
    }

    /// Runs a store operation off the async workers, holding a [`gc`] pass: what it writes
    /// and pins in one go is never collected half-way.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn BlockStore) -> Result<T, StorageError> + Send + 'static,
    ) -> BackendResult<T> {
        let _pass = self.gate.enter().await;
        self.run_blocking(f).await
    }

    /// [`Embedded::blocking`] for an operation that already holds a pass (one pass an
    /// operation: a second one would wait out a drain of the collector, see [`gc`]).
    async fn blocking_under<T: Send + 'static>(
        &self,
        _pass: &WritePass,
        f: impl FnOnce(&dyn BlockStore) -> Result<T, StorageError> + Send + 'static,
    ) -> BackendResult<T> {
        self.run_blocking(f).await
    }

    /// Runs a store operation off the async workers (no pass: reads, unpins, collections).
    async fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn BlockStore) -> Result<T, StorageError> + Send + 'static,
    ) -> BackendResult<T> {
        let store = self.bitswap.store().clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| ExchangeError::Task(e.to_string()))?
            .map_err(ExchangeError::from)
    }

    /// Announces `root` in Kademlia (best effort: a lone node has nobody to tell).
    pub async fn provide(&self, root: Cid) {
        if let Err(e) = self.network.start_providing(root.hash().to_bytes()).await {
            debug!(%root, error = %e, "provider record not published");
        }
    }

    /// Fetches the DAG under `root` (from the store or the network), reporting progress. The
    /// fetched blocks are not pinned: a caller that pins them holds a [`gc`] pass throughout.
    pub async fn fetch(
        &self,
        root: Cid,
        cfg: FetchConfig,
        progress: &watch::Sender<FetchProgress>,
    ) -> BackendResult<FetchProgress> {
        let pass = self.gate.enter().await;
        self.fetch_under(&pass, root, cfg, progress).await
    }

    /// [`Embedded::fetch`] for an operation that already holds a pass.
    async fn fetch_under(
        &self,
        _pass: &WritePass,
        root: Cid,
        cfg: FetchConfig,
        progress: &watch::Sender<FetchProgress>,
    ) -> BackendResult<FetchProgress> {
        // What a failed fetch stored — or one given up on, its future dropped mid-way (a
        // staging or custody deadline) — is pinned by nobody: the next automatic collection
        // must run for it, or a peer serving all but the last block of a large DAG (or one
        // just over a contract's bytes) would leave it on the disk for good.
        struct MarkUnlessDone<'a>(&'a super::gc::GcGate, bool);
        impl Drop for MarkUnlessDone<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.note_unpinned();
                }
            }
        }
        let mut mark = MarkUnlessDone(&self.gate, false);
        let fetched = super::fetch::fetch_dag(&self.bitswap, &self.network, root, cfg, progress)
            .await
            .map_err(Into::into);
        mark.1 = fetched.is_ok();
        fetched
    }

    async fn fetch_quiet_under(
        &self,
        pass: &WritePass,
        root: Cid,
        cfg: FetchConfig,
    ) -> BackendResult<FetchProgress> {
        let (tx, _rx) = watch::channel(FetchProgress::default());
        self.fetch_under(pass, root, cfg, &tx).await
    }

    /// Deletes every unpinned block under `collection` and counts it.
    pub async fn collect(&self, collection: Collection) -> BackendResult<GcStats> {
        let out = self.run_blocking(|s| s.gc()).await;
        drop(collection);
        match &out {
            Ok(stats) => self.gate.record(Ok(stats)),
            Err(e) => self.gate.record(Err(&e.to_string())),
        }
        out
    }
}

#[async_trait]
impl StoreBackend for Embedded {
    async fn add_file(&self, path: PathBuf, version: CidVersion) -> BackendResult<AddReply> {
        let file = std::fs::File::open(&path).map_err(|e| file_err(&path, e))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let options = ImportOptions {
            cid_version: version,
            ..ImportOptions::default()
        };
        let cid = self
            .blocking(move |s| {
                let cid = unixfs::import_file(s, std::io::BufReader::new(file), options)?;
                s.add_pin(&cid)?;
                Ok(cid)
            })
            .await?;
        self.provide(cid).await;
        Ok(AddReply {
            cid: cid.to_string(),
            bytes,
        })
    }

    async fn get_file(
        &self,
        cid: Cid,
        out: PathBuf,
        progress: &watch::Sender<FetchProgress>,
        cfg: FetchConfig,
    ) -> BackendResult<unixfs::ExportStats> {
        let pass = self.gate.enter().await;
        // The fetch's byte budget bounds the export too: what a DAG declares is not what it
        // took to fetch (THREATS R6).
        let limit = cfg.max_bytes;
        self.fetch_under(&pass, cid, cfg, progress).await?;
        let target = out.clone();
        let file = std::fs::File::create(&out).map_err(|e| file_err(&out, e))?;
        self.blocking_under(&pass, move |s| {
            let mut w = std::io::BufWriter::new(file);
            let stats = unixfs::export_within(s, &cid, &mut w, limit)?;
            std::io::Write::flush(&mut w)?;
            Ok(stats)
        })
        .await
        .map_err(|e| match e {
            ExchangeError::Store(StorageError::Io(source)) => file_err(&target, source),
            e => e,
        })
    }

    async fn pin(&self, cid: Cid, cfg: FetchConfig) -> BackendResult<FetchProgress> {
        let pass = self.gate.enter().await;
        let progress = self.fetch_quiet_under(&pass, cid, cfg).await?;
        self.blocking_under(&pass, move |s| s.pin(&cid)).await?;
        self.provide(cid).await;
        Ok(progress)
    }

    async fn unpin(&self, cid: Cid) -> BackendResult<()> {
        self.run_blocking(move |s| s.unpin(&cid)).await?;
        self.gate.note_unpinned();
        let _ = self.network.stop_providing(cid.hash().to_bytes()).await;
        Ok(())
    }

    async fn ls(&self) -> BackendResult<LsReply> {
        self.run_blocking(|s| {
            let mut pins: Vec<String> = s.pins()?.iter().map(Cid::to_string).collect();
            pins.sort();
            Ok(LsReply {
                pins,
                blocks: s.list()?.len(),
                ..LsReply::default()
            })
        })
        .await
    }

    async fn is_pinned(&self, cid: Cid) -> BackendResult<bool> {
        self.run_blocking(move |s| Ok(s.pins()?.contains(&cid)))
            .await
    }

    async fn gc(&self) -> BackendResult<GcStats> {
        let Some(collection) = self.gate.collect_within(gc::MANUAL_GC_WAIT).await else {
            return Err(ExchangeError::Invalid(format!(
                "{} fetches, imports or publishes are writing blocks and did not finish within \
                 {} s; run `agora storage gc` again when they are done",
                self.gate.writers(),
                gc::MANUAL_GC_WAIT.as_secs()
            )));
        };
        self.collect(collection).await
    }

    async fn stats(&self) -> BackendResult<serde_json::Value> {
        let mut stats = serde_json::to_value(self.bitswap.stats())
            .map_err(|e| ExchangeError::Task(e.to_string()))?;
        let gc = serde_json::to_value(self.gate.counters())
            .map_err(|e| ExchangeError::Task(e.to_string()))?;
        if let Some(map) = stats.as_object_mut() {
            map.insert("gc".into(), gc);
        }
        Ok(stats)
    }

    async fn put_block(&self, cid: Cid, data: Vec<u8>) -> BackendResult<()> {
        self.blocking(move |s| {
            s.put(&cid, &data)?;
            s.add_pin(&cid)
        })
        .await?;
        self.provide(cid).await;
        Ok(())
    }

    async fn get_block(&self, cid: Cid, cfg: FetchConfig) -> BackendResult<Vec<u8>> {
        let pass = self.gate.enter().await;
        self.fetch_quiet_under(&pass, cid, cfg).await?;
        self.blocking_under(&pass, move |s| s.get(&cid)).await
    }

    async fn car_export(&self, cid: Cid, out: PathBuf) -> BackendResult<()> {
        let pass = self.gate.enter().await;
        self.fetch_quiet_under(&pass, cid, self.fetch).await?;
        let file = std::fs::File::create(&out).map_err(|e| file_err(&out, e))?;
        self.blocking_under(&pass, move |s| {
            let mut w = std::io::BufWriter::new(file);
            agora_storage::export_car(s, &[cid], &mut w)?;
            std::io::Write::flush(&mut w)?;
            Ok(())
        })
        .await
    }

    async fn car_import(&self, path: PathBuf) -> BackendResult<CarImport> {
        let file = std::fs::File::open(&path).map_err(|e| file_err(&path, e))?;
        let import = self
            .blocking(move |s| {
                let import = agora_storage::import_car(s, std::io::BufReader::new(file))?;
                for root in &import.roots {
                    s.pin(root)?;
                }
                Ok(import)
            })
            .await?;
        for root in &import.roots {
            self.provide(*root).await;
        }
        Ok(import)
    }
}
