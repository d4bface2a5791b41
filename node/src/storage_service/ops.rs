//! The operations behind the storage and proof commands. Paths are read and written by the node
//! itself: the control API is loopback-only and the CLI passes absolute paths, so large files
//! never travel through HTTP bodies.

use std::path::{Path, PathBuf};

use agora_market::{Domain, Signer};
use agora_storage::proof::{self, DataProof};
use agora_storage::{Cid, blockstore::GcStats};
use agora_storage::{CidVersion, ImportOptions, StorageError, unixfs};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{FetchProgress, StorageHandle, StorageServiceError};
use crate::now_ms;

/// Result of adding a file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddReply {
    /// Root CID (the same `ipfs add` prints with the same CID version).
    pub cid: String,
    /// File size in bytes.
    pub bytes: u64,
}

/// Result of listing the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LsReply {
    /// Recursively pinned roots.
    pub pins: Vec<String>,
    /// Blocks stored (pinned or not).
    pub blocks: usize,
}

/// A created data proof.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProofCreated {
    /// CID of the proof block.
    pub cid: String,
    /// Readings committed to.
    pub count: u64,
    /// Merkle root (hex).
    pub root: String,
    /// Signing edge (node id).
    pub edge: String,
}

/// Outcome of a verification (errors are returned as errors).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProofVerified {
    /// Proof block CID.
    pub cid: String,
    /// Signing edge (node id).
    pub edge: String,
    /// Readings in the batch.
    pub count: u64,
    /// The single reading checked, if any.
    pub reading: Option<u64>,
    /// Always true in a success reply.
    pub valid: bool,
}

fn file_err(path: &Path, source: std::io::Error) -> StorageServiceError {
    StorageServiceError::File {
        path: path.display().to_string(),
        source,
    }
}

/// Parses a CID given by a user.
pub fn parse_cid(s: &str) -> Result<Cid, StorageServiceError> {
    s.trim().parse().map_err(|e| {
        StorageServiceError::Invalid(format!(
            "'{s}' is not a CID ({e}); pass a CID as printed by `agora storage add`"
        ))
    })
}

/// Readings of a data file: one per line, without the line ending.
pub fn read_readings(path: &Path) -> Result<Vec<Vec<u8>>, StorageServiceError> {
    let text = std::fs::read(path).map_err(|e| file_err(path, e))?;
    Ok(text
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .filter(|l| !l.is_empty())
        .collect())
}

impl StorageHandle {
    /// Imports a file as UnixFS (Kubo's defaults), pins and announces it.
    pub async fn add_file(
        &self,
        path: PathBuf,
        version: CidVersion,
    ) -> Result<AddReply, StorageServiceError> {
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

    /// Fetches `cid` if needed, then writes the file to `out`.
    pub async fn get_file(
        &self,
        cid: Cid,
        out: PathBuf,
        progress: &watch::Sender<FetchProgress>,
        cfg: super::FetchConfig,
    ) -> Result<unixfs::ExportStats, StorageServiceError> {
        self.fetch(cid, cfg, progress).await?;
        let target = out.clone();
        let file = std::fs::File::create(&out).map_err(|e| file_err(&out, e))?;
        self.blocking(move |s| {
            let mut w = std::io::BufWriter::new(file);
            let stats = unixfs::export(s, &cid, &mut w)?;
            std::io::Write::flush(&mut w)?;
            Ok(stats)
        })
        .await
        .map_err(|e| match e {
            StorageServiceError::Store(StorageError::Io(source)) => file_err(&target, source),
            e => e,
        })
    }

    /// Pins `cid`, fetching missing blocks first, and announces it.
    pub async fn pin(&self, cid: Cid) -> Result<FetchProgress, StorageServiceError> {
        let (tx, _rx) = watch::channel(FetchProgress::default());
        let progress = self.fetch(cid, self.fetch_config(), &tx).await?;
        self.blocking(move |s| s.pin(&cid)).await?;
        self.provide(cid).await;
        Ok(progress)
    }

    /// Removes a pin and stops announcing the root.
    pub async fn unpin(&self, cid: Cid) -> Result<(), StorageServiceError> {
        self.blocking(move |s| s.unpin(&cid)).await?;
        let _ = self.network.stop_providing(cid.hash().to_bytes()).await;
        Ok(())
    }

    /// Pins and block count.
    pub async fn ls(&self) -> Result<LsReply, StorageServiceError> {
        self.blocking(|s| {
            let mut pins: Vec<String> = s.pins()?.iter().map(Cid::to_string).collect();
            pins.sort();
            Ok(LsReply {
                pins,
                blocks: s.list()?.len(),
            })
        })
        .await
    }

    /// Deletes every unpinned block.
    pub async fn gc(&self) -> Result<GcStats, StorageServiceError> {
        self.blocking(|s| s.gc()).await
    }

    /// Writes the DAG under `cid` (fetched if needed) as a CAR v1 file.
    pub async fn car_export(&self, cid: Cid, out: PathBuf) -> Result<(), StorageServiceError> {
        let (tx, _rx) = watch::channel(FetchProgress::default());
        self.fetch(cid, self.fetch_config(), &tx).await?;
        let file = std::fs::File::create(&out).map_err(|e| file_err(&out, e))?;
        self.blocking(move |s| {
            let mut w = std::io::BufWriter::new(file);
            agora_storage::export_car(s, &[cid], &mut w)?;
            std::io::Write::flush(&mut w)?;
            Ok(())
        })
        .await
    }

    /// Imports a CAR v1 file (every block verified), pins and announces its roots.
    pub async fn car_import(
        &self,
        path: PathBuf,
    ) -> Result<agora_storage::car::CarImport, StorageServiceError> {
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

    /// Commits to `readings` with the node key (`Domain::DATA_PROOF`), stores, pins and
    /// announces the proof block.
    pub async fn proof_create(
        &self,
        readings: Vec<Vec<u8>>,
    ) -> Result<ProofCreated, StorageServiceError> {
        let signer = self.signer.clone();
        let edge = signer.node_id();
        let proof = DataProof::create(&readings, edge.0, now_ms(), |m| {
            signer.sign(Domain::DATA_PROOF, m).0
        })?;
        let (cid, block) = proof.to_block();
        self.blocking(move |s| {
            s.put(&cid, &block)?;
            s.add_pin(&cid)
        })
        .await?;
        self.provide(cid).await;
        Ok(ProofCreated {
            cid: cid.to_string(),
            count: proof.count,
            root: hex::encode(proof.root),
            edge: edge.to_string(),
        })
    }

    /// Verifies `readings` (or the one at `reading`) against the proof block `cid`, fetched from
    /// the network if needed. Uses only public data: the block carries the edge key.
    pub async fn proof_verify(
        &self,
        cid: Cid,
        readings: Vec<Vec<u8>>,
        reading: Option<u64>,
    ) -> Result<ProofVerified, StorageServiceError> {
        let (tx, _rx) = watch::channel(FetchProgress::default());
        self.fetch(cid, self.fetch_config(), &tx).await?;
        let block = self.blocking(move |s| s.get(&cid)).await?;
        let proof = DataProof::from_block(&cid, &block)?;
        match reading {
            None => proof::verify_batch(&proof, &readings)?,
            Some(index) => {
                let one = usize::try_from(index)
                    .ok()
                    .and_then(|i| readings.get(i))
                    .ok_or_else(|| {
                        StorageServiceError::Invalid(format!(
                            "--reading {index} is past the end of the data file ({} readings)",
                            readings.len()
                        ))
                    })?;
                let inclusion = proof::inclusion_proof(&readings, index)?;
                proof::verify_inclusion(&proof, one, &inclusion)?;
            }
        }
        Ok(ProofVerified {
            cid: cid.to_string(),
            edge: agora_market::NodeId(proof.edge).to_string(),
            count: proof.count,
            reading,
            valid: true,
        })
    }
}
