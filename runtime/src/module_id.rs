//! Module identity: the CID of the module bytes, verified before anything is compiled.

use std::fmt;
use std::str::FromStr;

use agora_storage::StorageError;
use agora_storage::hash::{RAW, cid_v1_blake3, verify_block};
use cid::Cid;

use crate::RuntimeError;

/// Longest binary CID accepted (version, codec, hash code and length varints + a 64-byte
/// digest fit well within this); checked before parsing.
pub const MAX_MODULE_ID_BYTES: usize = 128;
/// Longest textual CID accepted (a base32 CIDv1 of [`MAX_MODULE_ID_BYTES`] is ~210 chars).
pub const MAX_MODULE_ID_CHARS: usize = 256;

/// The content id of a service image (a Wasm module): any CIDv0/v1 over sha2-256 or blake3.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(Cid);

impl ModuleId {
    /// Wraps a CID as a module id.
    pub fn from_cid(cid: Cid) -> Self {
        Self(cid)
    }

    /// The id of `bytes` as a CIDv1 (raw codec, blake3), as storage would mint it.
    pub fn for_bytes(bytes: &[u8]) -> Self {
        Self(cid_v1_blake3(RAW, bytes))
    }

    /// Parses a binary CID (as stored in image records or sent by peers). The length is
    /// checked before parsing; the parser reads varints and a bounded digest, never recursing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RuntimeError> {
        let bad = |reason: String| RuntimeError::BadModuleId {
            id: format!("{} bytes", bytes.len()),
            reason,
        };
        if bytes.len() > MAX_MODULE_ID_BYTES {
            return Err(bad(format!("longer than {MAX_MODULE_ID_BYTES} bytes")));
        }
        Cid::try_from(bytes)
            .map(Self)
            .map_err(|e| bad(e.to_string()))
    }

    /// The wrapped CID.
    pub fn cid(&self) -> &Cid {
        &self.0
    }

    /// Checks that `bytes` hash to this id; call before compiling untrusted bytes.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), RuntimeError> {
        verify_block(&self.0, bytes).map_err(|e| match e {
            StorageError::UnsupportedHash { code, .. } => RuntimeError::UnsupportedHash {
                module: self.to_string(),
                code,
            },
            _ => RuntimeError::ModuleHashMismatch {
                module: self.to_string(),
            },
        })
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleId({})", self.0)
    }
}

impl FromStr for ModuleId {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_MODULE_ID_CHARS {
            return Err(RuntimeError::BadModuleId {
                id: s.chars().take(32).collect::<String>() + "…",
                reason: format!("longer than {MAX_MODULE_ID_CHARS} characters"),
            });
        }
        Cid::from_str(s)
            .map(Self)
            .map_err(|e| RuntimeError::BadModuleId {
                id: s.to_string(),
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multihash_codetable::{Code, MultihashDigest};

    #[test]
    fn minted_id_verifies_its_bytes_only() {
        let id = ModuleId::for_bytes(b"module one");
        id.verify(b"module one").unwrap();
        assert!(matches!(
            id.verify(b"module two"),
            Err(RuntimeError::ModuleHashMismatch { .. })
        ));
    }

    #[test]
    fn sha256_cids_verify_too() {
        let cid = Cid::new_v1(RAW, Code::Sha2_256.digest(b"abc"));
        let id = ModuleId::from_cid(cid);
        id.verify(b"abc").unwrap();
        assert!(id.verify(b"abd").is_err());
    }

    #[test]
    fn unsupported_hash_is_rejected() {
        let cid = Cid::new_v1(RAW, Code::Sha2_512.digest(b"abc"));
        let err = ModuleId::from_cid(cid).verify(b"abc").unwrap_err();
        assert!(matches!(
            err,
            RuntimeError::UnsupportedHash { code: 0x13, .. }
        ));
    }

    #[test]
    fn binary_ids_round_trip_and_oversized_input_is_refused_before_parsing() {
        let id = ModuleId::for_bytes(b"x");
        assert_eq!(ModuleId::from_bytes(&id.cid().to_bytes()).unwrap(), id);
        assert!(ModuleId::from_bytes(&[]).is_err());
        assert!(ModuleId::from_bytes(&[0xff; 16]).is_err());
        let err = ModuleId::from_bytes(&[1; MAX_MODULE_ID_BYTES + 1]).unwrap_err();
        assert!(err.to_string().contains("longer than 128 bytes"), "{err}");
        let long = "b".repeat(MAX_MODULE_ID_CHARS + 1);
        let err = long.parse::<ModuleId>().unwrap_err();
        assert!(err.to_string().contains("longer than 256"), "{err}");
    }

    #[test]
    fn display_round_trips() {
        let id = ModuleId::for_bytes(b"x");
        let parsed: ModuleId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        assert!("not a cid".parse::<ModuleId>().is_err());
    }
}
