//! The data side of storage contracts: the customer's chunk commitment, the provider taking
//! custody of a file, and answers to proof-of-storage challenges (`agora_storage::challenge`).
//!
//! The commitment travels as its own block (CBOR, raw codec, blake3) named by the contract's
//! `config` CID. The raw codec has no links, so an arbitrator that fetches the commitment never
//! pulls the file itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agora_storage::challenge::{Challenge, ChallengeResponse, Prover, StorageCommitment};
use agora_storage::hash::{RAW, cid_v1_blake3, verify_block};
use agora_storage::{Cid, StorageError};

use super::{Embedded, ExchangeError, StorageHandle};

/// Most chunk indices one challenge may ask for (bounds the work a challenger can demand).
pub const MAX_CHALLENGE_INDICES: usize = 64;

/// Chunk trees kept for answering challenges.
const KEPT_PROVERS: usize = 16;

/// Chunk trees of files this node answers challenges for, so an answer costs the challenged
/// chunks, not a pass over the whole file. Answers still read every challenged chunk from the
/// store, so a dropped chunk fails whatever is cached.
#[derive(Clone, Debug, Default)]
pub struct Provers(Arc<Mutex<HashMap<Cid, Arc<Prover>>>>);

impl Provers {
    fn get(&self, file: &Cid) -> Option<Arc<Prover>> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(file).cloned()
    }

    fn keep(&self, file: Cid, prover: Arc<Prover>) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= KEPT_PROVERS {
            map.clear();
        }
        map.insert(file, prover);
    }
}

fn invalid(msg: String) -> ExchangeError {
    ExchangeError::Invalid(msg)
}

/// Encodes a commitment as its block.
pub fn commitment_block(commitment: &StorageCommitment) -> Result<(Cid, Vec<u8>), String> {
    let bytes = serde_cbor::to_vec(commitment).map_err(|e| e.to_string())?;
    Ok((cid_v1_blake3(RAW, &bytes), bytes))
}

/// Decodes a commitment block after checking it hashes to `cid`.
pub fn decode_commitment(cid: &Cid, bytes: &[u8]) -> Result<StorageCommitment, String> {
    if cid.codec() != RAW {
        return Err(format!("commitment {cid} is not a raw block"));
    }
    verify_block(cid, bytes).map_err(|e| e.to_string())?;
    serde_cbor::from_slice(bytes).map_err(|e| format!("commitment {cid} is malformed: {e}"))
}

impl StorageHandle {
    fn custody_store(&self) -> Result<&Embedded, ExchangeError> {
        self.embedded().ok_or_else(|| {
            invalid(
                "storage contracts need the embedded store (storage.backend = \"embedded\"): \
                 proofs of storage are answered from the node's own blocks"
                    .into(),
            )
        })
    }

    /// Customer: computes the chunk commitment of `file` (held locally), stores and pins its
    /// block, and returns the block's CID with the commitment.
    pub async fn commit_file(&self, file: Cid) -> Result<(Cid, StorageCommitment), ExchangeError> {
        let store = self.custody_store()?;
        let commitment = store
            .blocking(move |s| StorageCommitment::for_file(s, &file))
            .await
            .map_err(|e| {
                invalid(format!(
                    "cannot commit to {file}: {e}; add the file to this node first (`agora storage add`)"
                ))
            })?;
        let (cid, block) = commitment_block(&commitment).map_err(invalid)?;
        store
            .blocking(move |s| {
                s.put(&cid, &block)?;
                s.add_pin(&cid)
            })
            .await?;
        store.provide(cid).await;
        Ok((cid, commitment))
    }

    /// A commitment block, fetched if needed, verified and decoded.
    pub async fn commitment(&self, cid: Cid) -> Result<StorageCommitment, ExchangeError> {
        let block = self.backend.get_block(cid, self.fetch_config()).await?;
        decode_commitment(&cid, &block).map_err(invalid)
    }

    /// Provider: fetches and holds `file` (at most `max_bytes`, the storage the contract buys)
    /// and its commitment for `holder` (the contract; [`crate::holds`]), and checks that the
    /// commitment really describes the file (a wrong one would make every honest answer
    /// fail). Refused custody holds nothing.
    pub async fn take_custody(
        &self,
        file: Cid,
        commitment: Cid,
        max_bytes: u64,
        holder: &str,
    ) -> Result<StorageCommitment, ExchangeError> {
        #[cfg(feature = "test-utils")]
        if self.skip_custody.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(%file, %commitment, "byzantine: custody claimed, nothing fetched");
            return Ok(StorageCommitment {
                file,
                root: Default::default(),
                chunks: 0,
            });
        }
        let taken = self.hold_custody(file, commitment, max_bytes, holder).await;
        if taken.is_err() {
            self.release_custody(file, commitment, holder).await;
        }
        taken
    }

    /// Provider: the contract closed; `holder` lets go of its file and commitment (unpinned
    /// unless something else here holds or keeps them).
    pub async fn release_custody(&self, file: Cid, commitment: Cid, holder: &str) {
        for cid in [file, commitment] {
            if let Err(e) = self.release(cid, holder).await {
                tracing::debug!(%cid, holder, error = %e, "custody hold not released");
            }
        }
    }

    async fn hold_custody(
        &self,
        file: Cid,
        commitment: Cid,
        max_bytes: u64,
        holder: &str,
    ) -> Result<StorageCommitment, ExchangeError> {
        let store = self.custody_store()?;
        let claimed = self.commitment(commitment).await?;
        if claimed.file != file {
            return Err(invalid(format!(
                "commitment {commitment} is for {}, not for the contract's file {file}",
                claimed.file
            )));
        }
        self.hold(file, holder, Some(max_bytes)).await?;
        self.hold(commitment, holder, None).await?;
        // What the file declares, not what it took to fetch: a DAG of a few MiB whose links
        // repeat one block declares terabytes, which building the commitment (and later each
        // challenge's prover) would read and hash (THREATS C19).
        let declared = store
            .blocking(move |s| agora_storage::unixfs::declared_size(s, &file))
            .await?;
        if declared > max_bytes {
            return Err(invalid(format!(
                "file {file} declares {declared} bytes, more than the contract's {max_bytes}"
            )));
        }
        let actual = store
            .blocking(move |s| StorageCommitment::for_file(s, &file))
            .await?;
        if actual != claimed {
            return Err(invalid(format!(
                "commitment {commitment} does not match the chunks of {file}"
            )));
        }
        Ok(actual)
    }

    /// Provider: the commitment block `cid` of the contract keeping `file`, as taken into
    /// custody, for a committee member that does not hold it (THREATS P4). Read from this
    /// node's own store only (never fetched on demand: a provider that did not keep it cannot
    /// show it), and only a pinned raw block that decodes as a commitment to `file`.
    pub async fn show_commitment(&self, file: Cid, cid: Cid) -> Result<Vec<u8>, ExchangeError> {
        let store = self.custody_store()?;
        let block = store
            .blocking(move |s| {
                if !s.pins()?.contains(&cid) {
                    return Err(StorageError::NotFound { cid });
                }
                s.get(&cid)
            })
            .await?;
        if block.len() > agora_wire::storage::MAX_COMMITMENT_BLOCK {
            return Err(invalid(format!(
                "block {cid} is {} bytes, too large for a commitment",
                block.len()
            )));
        }
        let shown = decode_commitment(&cid, &block).map_err(invalid)?;
        if shown.file != file {
            return Err(invalid(format!(
                "commitment {cid} is for {}, not for {file}",
                shown.file
            )));
        }
        Ok(block)
    }

    /// Provider: answers `challenge` from the blocks held now. Refuses files this node has not
    /// pinned and oversized challenges.
    pub async fn prove(&self, challenge: Challenge) -> Result<ChallengeResponse, ExchangeError> {
        if challenge.indices.len() > MAX_CHALLENGE_INDICES {
            return Err(invalid(format!(
                "challenge asks for {} chunks; at most {MAX_CHALLENGE_INDICES}",
                challenge.indices.len()
            )));
        }
        let store = self.custody_store()?;
        let file = challenge.file;
        let cached = self.provers.get(&file);
        let (answer, prover) = store
            .blocking(move |s| {
                if !s.pins()?.contains(&file) {
                    return Err(StorageError::NotFound { cid: file });
                }
                let prover = match cached {
                    Some(p) => p,
                    None => Arc::new(Prover::new(s, &file)?),
                };
                Ok((prover.respond(s, &challenge)?, prover))
            })
            .await?;
        self.provers.keep(file, prover);
        Ok(answer)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use agora_storage::challenge::StorageCommitment;
    use agora_storage::hash::cid_v1_blake3;

    use super::*;

    #[test]
    fn commitment_blocks_round_trip_and_reject_tampering() {
        let file = cid_v1_blake3(RAW, b"file");
        let c = StorageCommitment::from_chunks(file, &[b"a".to_vec(), b"b".to_vec()]).unwrap();
        let (cid, block) = commitment_block(&c).unwrap();
        assert_eq!(decode_commitment(&cid, &block).unwrap(), c);
        let mut bad = block.clone();
        bad[3] ^= 1;
        assert!(decode_commitment(&cid, &bad).is_err());
        let not_raw = cid_v1_blake3(agora_storage::hash::DAG_CBOR, &block);
        assert!(decode_commitment(&not_raw, &block).is_err());
    }
}
