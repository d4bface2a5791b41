//! Signed data-integrity proofs over batches of sensor readings.
//!
//! A batch's readings are the leaves of a blake3 Merkle tree ([`crate::merkle`]). The edge signs
//! `b"agora/v1/data-proof" || 0x00 || cbor(body)`: the same scheme as
//! `agora_market::Domain::DATA_PROOF`, copied here because storage must not depend on market.
//! A market `Signer` therefore signs [`DataProof::message`] under `Domain::DATA_PROOF`.

use cid::Cid;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hash::{BLAKE3, DAG_CBOR, cid_v1_blake3, verify_block};
use crate::merkle::{Hash, MerkleTree, leaf_hash, verify_path};

/// Signing domain, equal to `agora_market::Domain::DATA_PROOF`.
pub const DATA_PROOF_DOMAIN: &str = "agora/v1/data-proof";

/// Largest proof block decoded (an honest one is about 180 bytes).
pub const MAX_PROOF_BLOCK: usize = 4096;
/// Deepest CBOR nesting decoded from a proof block (an honest one nests 1 level).
const MAX_PROOF_NESTING: usize = 8;

/// Errors creating or checking a data proof.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// A batch needs at least one reading.
    #[error("cannot prove an empty batch of readings; collect at least one reading first")]
    EmptyBatch,
    /// The signature does not verify under the edge key.
    #[error("data proof for root {root} is not validly signed by edge {edge}; discard it")]
    BadSignature {
        /// Edge public key (hex).
        edge: String,
        /// Merkle root (hex).
        root: String,
    },
    /// The readings do not hash to the signed root or count.
    #[error(
        "readings do not match data proof root {root} ({count} readings); the data was altered"
    )]
    Mismatch {
        /// Signed Merkle root (hex).
        root: String,
        /// Signed reading count.
        count: u64,
    },
    /// The inclusion path does not lead to the root.
    #[error("reading {index} is not included under root {root}; the reading or path was altered")]
    NotIncluded {
        /// Claimed index.
        index: u64,
        /// Merkle root (hex).
        root: String,
    },
    /// The proof block could not be decoded.
    #[error("data proof block {cid} is malformed: {reason}")]
    Malformed {
        /// Block CID.
        cid: Cid,
        /// What was wrong.
        reason: String,
    },
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signed part of a proof. Field order is DAG-CBOR canonical (keys by length, then bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataProofBody {
    /// Edge public key (ed25519).
    #[serde(with = "serde_bytes")]
    pub edge: [u8; 32],
    /// Merkle root of the readings.
    #[serde(with = "serde_bytes")]
    pub root: [u8; 32],
    /// Number of readings.
    pub count: u64,
    /// Milliseconds since the epoch, supplied by the caller.
    pub timestamp: u64,
}

/// A signed commitment to a batch of readings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataProof {
    /// Edge public key (ed25519).
    #[serde(with = "serde_bytes")]
    pub edge: [u8; 32],
    /// Merkle root of the readings.
    #[serde(with = "serde_bytes")]
    pub root: [u8; 32],
    /// Number of readings.
    pub count: u64,
    /// ed25519 signature over the domain-separated body.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
    /// Milliseconds since the epoch.
    pub timestamp: u64,
}

/// Proof that one reading is in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// Position of the reading in the batch.
    pub index: u64,
    /// Sibling hashes from the leaf up.
    pub path: Vec<Hash>,
}

impl DataProofBody {
    /// CBOR bytes of the body: the message a `Domain::DATA_PROOF` signer signs.
    pub fn message(&self) -> Vec<u8> {
        // Serializing plain integers and byte strings to a Vec cannot fail.
        serde_cbor::to_vec(self).unwrap_or_default()
    }

    /// `domain || 0x00 || message`: the bytes actually fed to ed25519.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let message = self.message();
        let mut out = Vec::with_capacity(DATA_PROOF_DOMAIN.len() + 1 + message.len());
        out.extend_from_slice(DATA_PROOF_DOMAIN.as_bytes());
        out.push(0);
        out.extend_from_slice(&message);
        out
    }
}

impl DataProof {
    /// Commits to `readings`; `sign` receives [`DataProofBody::message`] and must sign it under
    /// the data-proof domain (e.g. `|m| signer.sign(Domain::DATA_PROOF, m).0`).
    pub fn create<T: AsRef<[u8]>>(
        readings: &[T],
        edge: [u8; 32],
        timestamp: u64,
        sign: impl FnOnce(&[u8]) -> [u8; 64],
    ) -> Result<Self, ProofError> {
        let tree = MerkleTree::from_leaves(readings).ok_or(ProofError::EmptyBatch)?;
        let body = DataProofBody {
            edge,
            root: tree.root(),
            count: tree.len(),
            timestamp,
        };
        let signature = sign(&body.message());
        Ok(DataProof {
            edge,
            root: body.root,
            count: body.count,
            signature,
            timestamp,
        })
    }

    /// [`DataProof::create`] with an in-memory ed25519 key.
    pub fn create_with_key<T: AsRef<[u8]>>(
        readings: &[T],
        key: &SigningKey,
        timestamp: u64,
    ) -> Result<Self, ProofError> {
        let edge = key.verifying_key().to_bytes();
        Self::create(readings, edge, timestamp, |message| {
            let mut bytes = DATA_PROOF_DOMAIN.as_bytes().to_vec();
            bytes.push(0);
            bytes.extend_from_slice(message);
            key.sign(&bytes).to_bytes()
        })
    }

    /// The signed body.
    pub fn body(&self) -> DataProofBody {
        DataProofBody {
            edge: self.edge,
            root: self.root,
            count: self.count,
            timestamp: self.timestamp,
        }
    }

    /// Checks the signature against the edge key in the proof.
    pub fn verify_signature(&self) -> Result<(), ProofError> {
        let bad = || ProofError::BadSignature {
            edge: hex(&self.edge),
            root: hex(&self.root),
        };
        let key = VerifyingKey::from_bytes(&self.edge).map_err(|_| bad())?;
        key.verify(
            &self.body().signing_bytes(),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| bad())
    }

    /// The proof as a dag-cbor block under a blake3 CIDv1.
    pub fn to_block(&self) -> (Cid, Vec<u8>) {
        let bytes = serde_cbor::to_vec(self).unwrap_or_default();
        (cid_v1_blake3(DAG_CBOR, &bytes), bytes)
    }

    /// Decodes a proof block after checking it hashes to `cid`.
    pub fn from_block(cid: &Cid, bytes: &[u8]) -> Result<Self, ProofError> {
        let malformed = |reason: String| ProofError::Malformed { cid: *cid, reason };
        if cid.codec() != DAG_CBOR || cid.hash().code() != BLAKE3 {
            return Err(malformed("expected a dag-cbor blake3 CIDv1".into()));
        }
        if bytes.len() > MAX_PROOF_BLOCK {
            return Err(malformed(format!(
                "{} bytes, over the {MAX_PROOF_BLOCK}-byte proof limit",
                bytes.len()
            )));
        }
        verify_block(cid, bytes).map_err(|e| malformed(e.to_string()))?;
        // serde_cbor recurses per level (up to 128): bound the nesting first, iteratively.
        crate::cbor::check_nesting(bytes, MAX_PROOF_NESTING, "data proof")
            .map_err(|e| malformed(e.to_string()))?;
        serde_cbor::from_slice(bytes).map_err(|e| malformed(e.to_string()))
    }
}

/// Checks that `readings` are exactly the batch `proof` signed.
pub fn verify_batch<T: AsRef<[u8]>>(proof: &DataProof, readings: &[T]) -> Result<(), ProofError> {
    proof.verify_signature()?;
    let tree = MerkleTree::from_leaves(readings).ok_or(ProofError::EmptyBatch)?;
    if tree.root() != proof.root || tree.len() != proof.count {
        return Err(ProofError::Mismatch {
            root: hex(&proof.root),
            count: proof.count,
        });
    }
    Ok(())
}

/// Inclusion proofs for every reading of a batch (build once, hand out per reading).
pub fn inclusion_proofs<T: AsRef<[u8]>>(readings: &[T]) -> Result<Vec<InclusionProof>, ProofError> {
    let tree = MerkleTree::from_leaves(readings).ok_or(ProofError::EmptyBatch)?;
    Ok((0..tree.len())
        .map(|index| InclusionProof {
            index,
            path: tree.path(index).unwrap_or_default(),
        })
        .collect())
}

/// Inclusion proof for the reading at `index`.
pub fn inclusion_proof<T: AsRef<[u8]>>(
    readings: &[T],
    index: u64,
) -> Result<InclusionProof, ProofError> {
    let tree = MerkleTree::from_leaves(readings).ok_or(ProofError::EmptyBatch)?;
    let path = tree.path(index).ok_or(ProofError::NotIncluded {
        index,
        root: hex(&tree.root()),
    })?;
    Ok(InclusionProof { index, path })
}

/// Checks, from public data only, that `reading` is in the batch `proof` signed.
pub fn verify_inclusion(
    proof: &DataProof,
    reading: &[u8],
    inclusion: &InclusionProof,
) -> Result<(), ProofError> {
    proof.verify_signature()?;
    if verify_path(
        &proof.root,
        &leaf_hash(reading),
        inclusion.index,
        proof.count,
        &inclusion.path,
    ) {
        Ok(())
    } else {
        Err(ProofError::NotIncluded {
            index: inclusion.index,
            root: hex(&proof.root),
        })
    }
}

#[cfg(test)]
mod tests;
