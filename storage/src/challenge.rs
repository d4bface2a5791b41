//! Proof of storage: a challenger who holds a file's chunk Merkle root asks for randomly chosen
//! chunks; the prover answers with the chunk bytes and their Merkle paths. A provider that
//! dropped any challenged chunk cannot answer. Pure and deterministic given the seed: the caller
//! draws the 32-byte seed from its own rng.

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::merkle::{Hash, MerkleTree, leaf_hash, verify_path};
use crate::proof::hex;
use crate::unixfs::{file_leaves, leaf_bytes};
use crate::{BlockStore, Result, StorageError};

/// What the challenger keeps about a stored file: the Merkle root over its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageCommitment {
    /// The file's UnixFS root.
    pub file: Cid,
    /// Merkle root over the file's chunk bytes (leaf = chunk data), in file order.
    pub root: Hash,
    /// Number of chunks.
    pub chunks: u64,
}

/// A challenge for specific chunk indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The file challenged.
    pub file: Cid,
    /// Distinct chunk indices, ascending.
    pub indices: Vec<u64>,
}

/// One challenged chunk with its Merkle path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkProof {
    /// Chunk index.
    pub index: u64,
    /// Chunk bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Sibling hashes from the chunk up.
    pub path: Vec<Hash>,
}

/// The prover's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// One proof per challenged index, in challenge order.
    pub chunks: Vec<ChunkProof>,
}

/// Why a response was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChallengeError {
    /// The response does not answer the challenged indices.
    #[error("response for file {file} answers the wrong chunks; treat the provider as failing")]
    WrongChunks {
        /// The file's CID (text).
        file: String,
    },
    /// A chunk or path does not match the commitment.
    #[error(
        "chunk {index} of file {file} does not match root {root}; the provider lost or altered it"
    )]
    BadChunk {
        /// The file's CID (text).
        file: String,
        /// The chunk.
        index: u64,
        /// Committed root (hex).
        root: String,
    },
}

impl StorageCommitment {
    /// Computes the commitment from chunk bytes in file order; `None` for an empty list.
    pub fn from_chunks<T: AsRef<[u8]>>(file: Cid, chunks: &[T]) -> Option<Self> {
        let tree = MerkleTree::from_leaves(chunks)?;
        Some(StorageCommitment {
            file,
            root: tree.root(),
            chunks: tree.len(),
        })
    }

    /// Computes the commitment for a file held in `store` (reads every chunk once).
    pub fn for_file<S: BlockStore + ?Sized>(store: &S, file: &Cid) -> Result<Self> {
        let tree = chunk_tree(store, file)?;
        Ok(StorageCommitment {
            file: *file,
            root: tree.root(),
            chunks: tree.len(),
        })
    }
}

fn chunk_tree<S: BlockStore + ?Sized>(store: &S, file: &Cid) -> Result<MerkleTree> {
    chunk_tree_of(store, file, &file_leaves(store, file)?)
}

/// The tree over `leaves` (`file`'s chunks, in order): reads every chunk.
fn chunk_tree_of<S: BlockStore + ?Sized>(
    store: &S,
    file: &Cid,
    leaves: &[Cid],
) -> Result<MerkleTree> {
    let mut hashes = Vec::with_capacity(leaves.len());
    for leaf in leaves {
        hashes.push(leaf_hash(&leaf_bytes(store, leaf)?));
    }
    tree_of(file, hashes)
}

fn tree_of(file: &Cid, hashes: Vec<Hash>) -> Result<MerkleTree> {
    MerkleTree::from_leaf_hashes(hashes).ok_or(StorageError::Malformed {
        cid: *file,
        reason: "file has no chunks".into(),
    })
}

impl Challenge {
    /// Picks `samples` distinct chunk indices (fewer if the file is smaller) from `seed`.
    pub fn from_seed(seed: [u8; 32], commitment: &StorageCommitment, samples: usize) -> Self {
        let want = (samples as u64).min(commitment.chunks) as usize;
        let mut xof = blake3::Hasher::new_keyed(&seed);
        xof.update(b"agora/v1/storage-challenge");
        xof.update(&commitment.file.to_bytes());
        let mut reader = xof.finalize_xof();
        let mut indices = std::collections::BTreeSet::new();
        while indices.len() < want {
            let mut word = [0u8; 8];
            reader.fill(&mut word);
            // Modulo bias is below 2^-40 for any realistic chunk count.
            indices.insert(u64::from_le_bytes(word) % commitment.chunks);
        }
        Challenge {
            file: commitment.file,
            indices: indices.into_iter().collect(),
        }
    }
}

/// Answers challenges for one stored file; builds the chunk tree once.
#[derive(Debug)]
pub struct Prover {
    file: Cid,
    leaves: Vec<Cid>,
    tree: MerkleTree,
}

impl Prover {
    /// Prepares to answer for `file` (reads every chunk once to build the tree).
    pub fn new<S: BlockStore + ?Sized>(store: &S, file: &Cid) -> Result<Self> {
        let leaves = file_leaves(store, file)?;
        let tree = chunk_tree_of(store, file, &leaves)?;
        Ok(Prover {
            file: *file,
            leaves,
            tree,
        })
    }

    /// Prepares to answer for `file` from its chunks (`leaves`, in order) and their hashes as
    /// an earlier prover gave them ([`Prover::leaves`], [`Prover::leaf_hashes`]): reads
    /// nothing, so a restarted provider has a large file's tree at once. Fails when their
    /// numbers differ; whether they are right shows in [`Prover::commitment`]'s root.
    pub fn from_parts(file: &Cid, leaves: Vec<Cid>, hashes: Vec<Hash>) -> Result<Self> {
        if leaves.len() != hashes.len() {
            return Err(StorageError::Malformed {
                cid: *file,
                reason: format!(
                    "{} leaf hashes kept for a file of {} chunks",
                    hashes.len(),
                    leaves.len()
                ),
            });
        }
        Ok(Prover {
            file: *file,
            leaves,
            tree: tree_of(file, hashes)?,
        })
    }

    /// The hash of each chunk, in order (what [`Prover::from_parts`] takes back).
    pub fn leaf_hashes(&self) -> &[Hash] {
        self.tree.leaf_hashes()
    }

    /// Each chunk's block, in order (what [`Prover::from_parts`] takes back).
    pub fn leaves(&self) -> &[Cid] {
        &self.leaves
    }

    /// The commitment this prover answers for (what [`StorageCommitment::for_file`] computes,
    /// without reading the file again).
    pub fn commitment(&self) -> StorageCommitment {
        StorageCommitment {
            file: self.file,
            root: self.tree.root(),
            chunks: self.tree.len(),
        }
    }

    /// How many chunks the file has (what the prover keeps in memory grows with it).
    pub fn chunks(&self) -> usize {
        self.leaves.len()
    }

    /// Answers `challenge` from the chunks currently in `store`; a dropped chunk gives `NotFound`.
    pub fn respond<S: BlockStore + ?Sized>(
        &self,
        store: &S,
        challenge: &Challenge,
    ) -> Result<ChallengeResponse> {
        let mut chunks = Vec::with_capacity(challenge.indices.len());
        for &index in &challenge.indices {
            let out_of_range = || StorageError::Malformed {
                cid: self.file,
                reason: format!("challenge asks for chunk {index} of {}", self.leaves.len()),
            };
            let leaf = usize::try_from(index)
                .ok()
                .and_then(|i| self.leaves.get(i))
                .ok_or_else(out_of_range)?;
            let path = self.tree.path(index).ok_or_else(out_of_range)?;
            chunks.push(ChunkProof {
                index,
                data: leaf_bytes(store, leaf)?,
                path,
            });
        }
        Ok(ChallengeResponse { chunks })
    }
}

/// Checks a response against the challenger's commitment.
pub fn verify_response(
    commitment: &StorageCommitment,
    challenge: &Challenge,
    response: &ChallengeResponse,
) -> std::result::Result<(), ChallengeError> {
    let file = commitment.file.to_string();
    if challenge.file != commitment.file
        || response.chunks.len() != challenge.indices.len()
        || response
            .chunks
            .iter()
            .zip(&challenge.indices)
            .any(|(c, i)| c.index != *i)
    {
        return Err(ChallengeError::WrongChunks { file });
    }
    for chunk in &response.chunks {
        if !verify_path(
            &commitment.root,
            &leaf_hash(&chunk.data),
            chunk.index,
            commitment.chunks,
            &chunk.path,
        ) {
            return Err(ChallengeError::BadChunk {
                file,
                index: chunk.index,
                root: hex(&commitment.root),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBlockStore;
    use crate::unixfs::{ImportOptions, import_file};

    fn setup(len: usize, options: ImportOptions) -> (MemoryBlockStore, StorageCommitment, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let store = MemoryBlockStore::new();
        let file = import_file(&store, data.as_slice(), options).unwrap();
        let commitment = StorageCommitment::for_file(&store, &file).unwrap();
        (store, commitment, data)
    }

    fn small() -> ImportOptions {
        ImportOptions {
            chunk_size: 64,
            max_links: 5,
            ..ImportOptions::default()
        }
    }

    #[test]
    fn honest_prover_passes_and_commitment_matches_chunks() {
        for options in [
            small(),
            ImportOptions {
                cid_version: crate::CidVersion::V1,
                ..small()
            },
        ] {
            let (store, commitment, data) = setup(64 * 40 + 3, options);
            let chunks: Vec<&[u8]> = data.chunks(64).collect();
            assert_eq!(
                StorageCommitment::from_chunks(commitment.file, &chunks),
                Some(commitment)
            );
            let prover = Prover::new(&store, &commitment.file).unwrap();
            for seed in 0..20u8 {
                let challenge = Challenge::from_seed([seed; 32], &commitment, 5);
                assert_eq!(challenge.indices.len(), 5);
                let response = prover.respond(&store, &challenge).unwrap();
                verify_response(&commitment, &challenge, &response).unwrap();
            }
        }
    }

    #[test]
    fn challenge_is_deterministic_and_bounded() {
        let (_, commitment, _) = setup(64 * 3, small());
        let a = Challenge::from_seed([9; 32], &commitment, 10);
        assert_eq!(a, Challenge::from_seed([9; 32], &commitment, 10));
        assert_eq!(a.indices, vec![0, 1, 2]);
        let (_, big, _) = setup(64 * 100, small());
        assert_ne!(
            Challenge::from_seed([1; 32], &big, 4),
            Challenge::from_seed([2; 32], &big, 4)
        );
    }

    #[test]
    fn dropped_or_altered_chunk_fails() {
        let (store, commitment, _) = setup(64 * 30, small());
        let prover = Prover::new(&store, &commitment.file).unwrap();
        let challenge = Challenge::from_seed([3; 32], &commitment, 3);
        let target = file_leaves(&store, &commitment.file).unwrap()[challenge.indices[1] as usize];
        store.delete(&target).unwrap();
        assert!(
            matches!(prover.respond(&store, &challenge), Err(StorageError::NotFound { cid }) if cid == target)
        );

        // A provider that substitutes bytes for the lost chunk is caught.
        let (store, commitment, _) = setup(64 * 30, small());
        let prover = Prover::new(&store, &commitment.file).unwrap();
        let mut response = prover.respond(&store, &challenge).unwrap();
        response.chunks[1].data = vec![0; 64];
        assert!(matches!(
            verify_response(&commitment, &challenge, &response),
            Err(ChallengeError::BadChunk { index, .. }) if index == challenge.indices[1]
        ));
        response.chunks.pop();
        assert!(matches!(
            verify_response(&commitment, &challenge, &response),
            Err(ChallengeError::WrongChunks { .. })
        ));
    }
}
