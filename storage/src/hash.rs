//! Multihash helpers: hashing blocks into CIDs and verifying blocks against CIDs.

use cid::Cid;
use multihash_codetable::{Code, MultihashDigest};

use crate::{Result, StorageError};

/// Multicodec code for dag-pb.
pub const DAG_PB: u64 = 0x70;
/// Multicodec code for raw bytes.
pub const RAW: u64 = 0x55;
/// Multicodec code for dag-cbor.
pub const DAG_CBOR: u64 = 0x71;
/// Multihash code for sha2-256.
pub const SHA2_256: u64 = 0x12;
/// Multihash code for blake3 (32-byte digest).
pub const BLAKE3: u64 = 0x1e;

/// CIDv0 (dag-pb, sha2-256) of `data`.
pub fn cid_v0(data: &[u8]) -> Cid {
    let mh = Code::Sha2_256.digest(data);
    // A sha2-256 multihash is always a valid CIDv0 hash; fall back to v1 only to stay panic-free.
    Cid::new_v0(mh).unwrap_or_else(|_| Cid::new_v1(DAG_PB, mh))
}

/// CIDv1 with `codec` and a sha2-256 multihash of `data`.
pub fn cid_v1_sha256(codec: u64, data: &[u8]) -> Cid {
    Cid::new_v1(codec, Code::Sha2_256.digest(data))
}

/// CIDv1 with `codec` and a blake3 multihash of `data`.
pub fn cid_v1_blake3(codec: u64, data: &[u8]) -> Cid {
    Cid::new_v1(codec, Code::Blake3_256.digest(data))
}

/// Checks that `data` hashes to `cid`'s multihash.
pub fn verify_block(cid: &Cid, data: &[u8]) -> Result<()> {
    let code = cid.hash().code();
    let digest = match code {
        SHA2_256 => Code::Sha2_256.digest(data),
        BLAKE3 => Code::Blake3_256.digest(data),
        _ => return Err(StorageError::UnsupportedHash { cid: *cid, code }),
    };
    if digest.digest() == cid.hash().digest() {
        Ok(())
    } else {
        Err(StorageError::HashMismatch { cid: *cid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_matching_and_rejects_other_bytes() {
        for cid in [
            cid_v0(b"abc"),
            cid_v1_sha256(RAW, b"abc"),
            cid_v1_blake3(RAW, b"abc"),
        ] {
            assert!(verify_block(&cid, b"abc").is_ok());
            assert!(matches!(
                verify_block(&cid, b"abd"),
                Err(StorageError::HashMismatch { .. })
            ));
        }
    }

    #[test]
    fn unknown_hash_is_rejected() {
        let mh = Code::Sha2_512.digest(b"x");
        let cid = Cid::new_v1(RAW, mh);
        assert!(matches!(
            verify_block(&cid, b"x"),
            Err(StorageError::UnsupportedHash { code: 0x13, .. })
        ));
    }
}
