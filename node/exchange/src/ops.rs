//! The operations behind the storage and proof commands. Paths are read and written by the node
//! itself: the control API is loopback-only and the CLI passes absolute paths, so large files
//! never travel through HTTP bodies.

use std::path::{Path, PathBuf};

use agora_market::{Domain, Signer};
use agora_storage::proof::{self, DataProof};
use agora_storage::{Cid, blockstore::GcStats};
use agora_storage::{CidVersion, StorageError, unixfs};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::embedded::file_err;
use super::holds::{HoldTable, Released};
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LsReply {
    /// Recursively pinned roots.
    pub pins: Vec<String>,
    /// Blocks stored (pinned or not).
    pub blocks: usize,
    /// Who holds each held root (a contract's service, custody, the probe cache, a fleet's
    /// early fetch; [`crate::holds`]): it is unpinned when the last lets go, unless kept.
    #[serde(default)]
    pub held: std::collections::BTreeMap<String, Vec<String>>,
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

    /// Pins `cid`, fetching missing blocks first: the operator's (or a publish's) pin, kept
    /// whoever else holds the root ([`crate::holds`]).
    pub async fn pin(&self, cid: Cid) -> Result<FetchProgress, ExchangeError> {
        let progress = self.backend.pin(cid, self.fetch_config()).await?;
        self.with_holds(|t| t.keep(&cid));
        Ok(progress)
    }

    /// `holder` takes a hold on `cid` ([`crate::holds`]): fetched (at most `max_bytes`, when
    /// given) and pinned until the last holder lets go ([`Self::release`]).
    pub async fn hold(
        &self,
        cid: Cid,
        holder: &str,
        max_bytes: Option<u64>,
    ) -> Result<FetchProgress, ExchangeError> {
        let pinned_now = if self.read_holds(|t| t.is_held(&cid)) {
            false
        } else {
            self.backend.is_pinned(cid).await?
        };
        self.with_holds(|t| t.take(cid, holder, || pinned_now))
            .map_err(|e| ExchangeError::Invalid(e.to_string()))?;
        let cfg = super::FetchConfig {
            max_bytes: max_bytes.or(self.fetch_config().max_bytes),
            ..self.fetch_config()
        };
        match self.backend.pin(cid, cfg).await {
            Ok(p) => Ok(p),
            Err(e) => {
                if let Err(undo) = self.release(cid, holder).await {
                    tracing::debug!(%cid, holder, error = %undo, "failed hold not undone");
                }
                Err(e)
            }
        }
    }

    /// `holder` lets go of `cid`: unpinned when it was the last holder and nobody keeps it
    /// (its blocks go at the next `gc`).
    pub async fn release(&self, cid: Cid, holder: &str) -> Result<Released, ExchangeError> {
        let released = self.with_holds(|t| t.release(&cid, holder));
        if released == Released::Unpin {
            match self.backend.unpin(cid).await {
                Ok(()) | Err(ExchangeError::Store(StorageError::NotFound { .. })) => {}
                Err(e) => return Err(e),
            }
            // A hold taken while this one let go pinned before our unpin: pin it again
            // (its blocks are here, nothing to fetch).
            if self.read_holds(|t| t.is_held(&cid)) {
                self.backend.pin(cid, self.fetch_config()).await?;
            }
            tracing::debug!(%cid, holder, "last hold released; root unpinned");
        }
        Ok(released)
    }

    /// The roots held now and by whom.
    pub fn holders(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        self.read_holds(HoldTable::holders)
    }

    /// Reads the hold table.
    pub(crate) fn read_holds<T>(&self, f: impl FnOnce(&HoldTable) -> T) -> T {
        f(&self.holds.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs `f` on the hold table and writes it back if it changed.
    fn with_holds<T>(&self, f: impl FnOnce(&mut HoldTable) -> T) -> T {
        let mut table = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let before = table.clone();
        let out = f(&mut table);
        if *table != before
            && let Err(e) = table.save(&self.holds_path)
        {
            tracing::warn!(path = %self.holds_path.display(), error = %e, "pin holds not saved");
        }
        out
    }

    /// At start: drops the holds of the previous run and unpins what only they held.
    pub(crate) async fn restarted(self) -> Self {
        let stale = match HoldTable::load(&self.holds_path) {
            Ok(mut table) => table.restart(),
            Err(e) => {
                tracing::warn!(path = %self.holds_path.display(), error = %e,
                    "pin holds unreadable: pins of the previous run stay until unpinned by hand");
                Vec::new()
            }
        };
        for cid in &stale {
            if let Err(e) = self.backend.unpin(*cid).await {
                tracing::debug!(%cid, error = %e, "held root of the previous run not unpinned");
            }
        }
        if !stale.is_empty() {
            tracing::info!(
                roots = stale.len(),
                "unpinned the roots only held by the previous run"
            );
        }
        if let Err(e) = HoldTable::default().save(&self.holds_path) {
            tracing::warn!(path = %self.holds_path.display(), error = %e, "pin holds not saved");
        }
        self
    }

    /// The operator's unpin: the root is no longer kept. Refused while others hold it (it is
    /// unpinned when they let go).
    pub async fn unpin(&self, cid: Cid) -> Result<(), ExchangeError> {
        if let Err(holders) = self.with_holds(|t| t.unkeep(&cid)) {
            return Err(ExchangeError::Invalid(format!(
                "{cid} is held by {}: it stays pinned while they need it and is unpinned when \
                 the last lets go",
                holders.join(", ")
            )));
        }
        self.backend.unpin(cid).await
    }

    /// Pins and block count.
    pub async fn ls(&self) -> Result<LsReply, ExchangeError> {
        let mut reply = self.backend.ls().await?;
        reply.held = self.holders();
        Ok(reply)
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
