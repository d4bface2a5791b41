//! The operations behind the storage and proof commands. Paths are read and written by the node
//! itself: the control API is loopback-only and the CLI passes absolute paths, so large files
//! never travel through HTTP bodies.

use std::path::{Path, PathBuf};

use agora_market::{Domain, Signer};
use agora_storage::proof::{self, DataProof};
use agora_storage::{Cid, blockstore::GcStats};
use agora_storage::{CidVersion, unixfs};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::embedded::file_err;
use super::{ExchangeError, FetchProgress, StorageHandle};
use agora_wire::now_ms;

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

/// Parses a CID given by a user.
pub fn parse_cid(s: &str) -> Result<Cid, ExchangeError> {
    s.trim().parse().map_err(|e| {
        ExchangeError::Invalid(format!(
            "'{s}' is not a CID ({e}); pass a CID as printed by `agora storage add`"
        ))
    })
}

/// Readings of a data file: one per line, without the line ending.
pub fn read_readings(path: &Path) -> Result<Vec<Vec<u8>>, ExchangeError> {
    let text = std::fs::read(path).map_err(|e| file_err(path, e))?;
    Ok(text
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .filter(|l| !l.is_empty())
        .collect())
}

impl StorageHandle {
    /// Imports a file as UnixFS (Kubo's defaults) and pins it (embedded: also announces it).
    pub async fn add_file(
        &self,
        path: PathBuf,
        version: CidVersion,
    ) -> Result<AddReply, ExchangeError> {
        self.backend.add_file(path, version).await
    }

    /// Fetches `cid` if needed, then writes the file to `out`.
    pub async fn get_file(
        &self,
        cid: Cid,
        out: PathBuf,
        progress: &watch::Sender<FetchProgress>,
        cfg: super::FetchConfig,
    ) -> Result<unixfs::ExportStats, ExchangeError> {
        self.backend.get_file(cid, out, progress, cfg).await
    }

    /// Pins `cid`, fetching missing blocks first.
    pub async fn pin(&self, cid: Cid) -> Result<FetchProgress, ExchangeError> {
        self.backend.pin(cid, self.fetch_config()).await
    }

    /// [`Self::pin`], failing once the DAG grows past `max_bytes`.
    pub async fn pin_within(
        &self,
        cid: Cid,
        max_bytes: u64,
    ) -> Result<FetchProgress, ExchangeError> {
        let cfg = super::FetchConfig {
            max_bytes: Some(max_bytes),
            ..self.fetch_config()
        };
        self.backend.pin(cid, cfg).await
    }

    /// Removes a pin.
    pub async fn unpin(&self, cid: Cid) -> Result<(), ExchangeError> {
        self.backend.unpin(cid).await
    }

    /// Pins and block count.
    pub async fn ls(&self) -> Result<LsReply, ExchangeError> {
        self.backend.ls().await
    }

    /// Deletes every unpinned block.
    pub async fn gc(&self) -> Result<GcStats, ExchangeError> {
        self.backend.gc().await
    }

    /// Backend counters (bitswap counters for embedded, repo figures for Kubo), with the
    /// proof-of-storage challenge counters under `challenges`.
    pub async fn stats(&self) -> Result<serde_json::Value, ExchangeError> {
        let mut stats = self.backend.stats().await?;
        // Proof-of-storage challenges this node was asked, answered and refused (#13.7).
        let challenges = serde_json::to_value(self.gate.stats())
            .map_err(|e| ExchangeError::Task(e.to_string()))?;
        if let Some(map) = stats.as_object_mut() {
            map.insert("challenges".into(), challenges);
        }
        Ok(stats)
    }

    /// Writes the DAG under `cid` (fetched if needed) as a CAR v1 file.
    pub async fn car_export(&self, cid: Cid, out: PathBuf) -> Result<(), ExchangeError> {
        self.backend.car_export(cid, out).await
    }

    /// Imports a CAR v1 file (every block verified) and pins its roots.
    pub async fn car_import(
        &self,
        path: PathBuf,
    ) -> Result<agora_storage::car::CarImport, ExchangeError> {
        self.backend.car_import(path).await
    }

    /// Commits to `readings` with the node key (`Domain::DATA_PROOF`), stores, pins and
    /// announces the proof block.
    pub async fn proof_create(
        &self,
        readings: Vec<Vec<u8>>,
    ) -> Result<ProofCreated, ExchangeError> {
        let signer = self.signer.clone();
        let edge = signer.node_id();
        let proof = DataProof::create(&readings, edge.0, now_ms(), |m| {
            signer.sign(Domain::DATA_PROOF, m).0
        })?;
        let (cid, block) = proof.to_block();
        self.backend.put_block(cid, block).await?;
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
    ) -> Result<ProofVerified, ExchangeError> {
        let block = self.backend.get_block(cid, self.fetch_config()).await?;
        let proof = DataProof::from_block(&cid, &block)?;
        match reading {
            None => proof::verify_batch(&proof, &readings)?,
            Some(index) => {
                let one = usize::try_from(index)
                    .ok()
                    .and_then(|i| readings.get(i))
                    .ok_or_else(|| {
                        ExchangeError::Invalid(format!(
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
