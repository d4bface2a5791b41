//! The Kubo backend: every operation goes to a Kubo daemon's RPC API. Files stream between the
//! daemon and the user's path; the node keeps no blocks itself, and content is served to the
//! IPFS network by Kubo (the node's own bitswap is not started with this backend).

use std::path::PathBuf;

use agora_storage::blockstore::GcStats;
use agora_storage::car::CarImport;
use agora_storage::kubo::AddOptions;
use agora_storage::{Cid, CidVersion, KuboClient, unixfs};
use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;

use super::backend::{BackendResult, StoreBackend};
use super::embedded::file_err;
use super::{AddReply, FetchConfig, FetchProgress, LsReply};

/// A Kubo daemon reached over its RPC API.
#[derive(Clone, Debug)]
pub struct KuboBackend {
    client: KuboClient,
    fetch: FetchConfig,
}

/// What `agora storage stats` shows with this backend.
#[derive(Debug, Serialize)]
struct KuboStats {
    backend: &'static str,
    api: String,
    pins: usize,
    repo_size: u64,
    num_objects: u64,
}

impl KuboBackend {
    /// A backend for the daemon at `api` (e.g. `http://127.0.0.1:5001`); fetches fail after
    /// `fetch.idle_timeout` without progress.
    pub fn new(api: &str, fetch: FetchConfig) -> Self {
        KuboBackend {
            client: KuboClient::new(api).with_idle_timeout(fetch.idle_timeout),
            fetch,
        }
    }

    /// The client, with the idle timeout of `cfg` when it differs from the configured one.
    fn client_for(&self, cfg: FetchConfig) -> KuboClient {
        if cfg.idle_timeout == self.fetch.idle_timeout {
            self.client.clone()
        } else {
            self.client.clone().with_idle_timeout(cfg.idle_timeout)
        }
    }

    /// Checks the daemon answers, so a wrong `storage.api` fails at start-up, not on first use.
    pub async fn check(&self) -> BackendResult<()> {
        self.client.repo_stat().await?;
        Ok(())
    }
}

#[async_trait]
impl StoreBackend for KuboBackend {
    async fn add_file(&self, path: PathBuf, version: CidVersion) -> BackendResult<AddReply> {
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| file_err(&path, e))?;
        let bytes = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let options = AddOptions {
            cid_version: version,
            pin: true,
        };
        let cid = self.client.add(file, options).await?;
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
        let file = tokio::fs::File::create(&out)
            .await
            .map_err(|e| file_err(&out, e))?;
        let writer = tokio::io::BufWriter::new(file);
        let written = self
            .client_for(cfg)
            .cat_to_with(&cid, writer, |bytes| {
                progress.send_modify(|p| p.bytes = bytes);
            })
            .await;
        let bytes = match written {
            Ok(bytes) => bytes,
            Err(agora_storage::KuboError::Io(source)) => return Err(file_err(&out, source)),
            Err(e) => {
                // Do not leave a truncated file that looks like a finished download.
                let _ = tokio::fs::remove_file(&out).await;
                return Err(e.into());
            }
        };
        progress.send_modify(|p| p.done = true);
        Ok(unixfs::ExportStats { bytes, blocks: 0 })
    }

    async fn pin(&self, cid: Cid, cfg: FetchConfig) -> BackendResult<FetchProgress> {
        let blocks = self.client_for(cfg).pin_add(&cid).await?;
        Ok(FetchProgress {
            blocks,
            done: true,
            ..FetchProgress::default()
        })
    }

    async fn unpin(&self, cid: Cid) -> BackendResult<()> {
        Ok(self.client.pin_rm(&cid).await?)
    }

    async fn ls(&self) -> BackendResult<LsReply> {
        let mut pins: Vec<String> = self
            .client
            .pin_ls()
            .await?
            .iter()
            .map(Cid::to_string)
            .collect();
        pins.sort();
        let stat = self.client.repo_stat().await?;
        Ok(LsReply {
            pins,
            blocks: usize::try_from(stat.num_objects).unwrap_or(usize::MAX),
            ..LsReply::default()
        })
    }

    async fn gc(&self) -> BackendResult<GcStats> {
        let before = self.client.repo_stat().await?.repo_size;
        let removed = self.client.repo_gc().await?;
        let after = self.client.repo_stat().await?.repo_size;
        Ok(GcStats {
            removed_blocks: usize::try_from(removed).unwrap_or(usize::MAX),
            removed_bytes: before.saturating_sub(after),
        })
    }

    async fn stats(&self) -> BackendResult<serde_json::Value> {
        let stat = self.client.repo_stat().await?;
        let pins = self.client.pin_ls().await?.len();
        let stats = KuboStats {
            backend: "kubo",
            api: self.client.api().to_owned(),
            pins,
            repo_size: stat.repo_size,
            num_objects: stat.num_objects,
        };
        serde_json::to_value(stats).map_err(|e| super::ExchangeError::Task(e.to_string()))
    }

    async fn put_block(&self, cid: Cid, data: Vec<u8>) -> BackendResult<()> {
        agora_storage::hash::verify_block(&cid, &data)?;
        Ok(self.client.block_put_cid(&cid, data, true).await?)
    }

    async fn get_block(&self, cid: Cid, cfg: FetchConfig) -> BackendResult<Vec<u8>> {
        Ok(self.client_for(cfg).block_get(&cid).await?)
    }

    async fn car_export(&self, cid: Cid, out: PathBuf) -> BackendResult<()> {
        let file = tokio::fs::File::create(&out)
            .await
            .map_err(|e| file_err(&out, e))?;
        match self
            .client
            .dag_export_to(&cid, tokio::io::BufWriter::new(file))
            .await
        {
            Ok(_) => Ok(()),
            Err(agora_storage::KuboError::Io(source)) => Err(file_err(&out, source)),
            Err(e) => {
                let _ = tokio::fs::remove_file(&out).await;
                Err(e.into())
            }
        }
    }

    async fn car_import(&self, path: PathBuf) -> BackendResult<CarImport> {
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| file_err(&path, e))?;
        let (roots, blocks) = self.client.dag_import(file).await?;
        Ok(CarImport { roots, blocks })
    }
}
