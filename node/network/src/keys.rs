//! The node's ed25519 key: created by `agora init`, stored with mode 0600, shared by the ledger
//! identity (`NodeId`) and the libp2p identity (`PeerId`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agora_market::{KeySigner, NodeId, Signer};
use rand::RngCore;

/// File name of the secret key inside the data directory.
pub const KEY_FILE: &str = "node.key";

/// Errors loading or creating the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key yet.
    #[error("no node key at {0}; run `agora init --data-dir {1}` first")]
    Missing(PathBuf, PathBuf),
    /// The key file is unreadable or has the wrong size.
    #[error("node key at {path} is unusable: {reason}")]
    Bad {
        /// Path of the key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file is readable by others.
    #[error("node key at {0} has mode {1:o}; it must be 0600 (run `chmod 600 {0}`)")]
    Permissions(PathBuf, u32),
    /// I/O failure.
    #[error("cannot write node key at {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The node's identity keys.
#[derive(Clone, Debug)]
pub struct NodeKey {
    signer: KeySigner,
}

impl NodeKey {
    /// A fresh random key.
    pub fn generate() -> NodeKey {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        NodeKey {
            signer: KeySigner::from_secret(secret),
        }
    }

    /// The key with this secret (tests and tools that need an identity known in advance).
    pub fn from_secret(secret: [u8; 32]) -> NodeKey {
        NodeKey {
            signer: KeySigner::from_secret(secret),
        }
    }

    /// Loads the key from `data_dir`, refusing world- or group-readable files.
    pub fn load(data_dir: &Path) -> Result<NodeKey, KeyError> {
        let path = data_dir.join(KEY_FILE);
        let meta = fs::metadata(&path)
            .map_err(|_| KeyError::Missing(path.clone(), data_dir.to_path_buf()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions(path, mode));
        }
        let bytes = fs::read(&path).map_err(|e| KeyError::Bad {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let raw = hex::decode(text.trim()).map_err(|e| KeyError::Bad {
            path: path.clone(),
            reason: format!("not hex: {e}"),
        })?;
        let secret: [u8; 32] = raw.try_into().map_err(|_| KeyError::Bad {
            path: path.clone(),
            reason: "expected 32 bytes".into(),
        })?;
        Ok(NodeKey {
            signer: KeySigner::from_secret(secret),
        })
    }

    /// Writes the key to `data_dir` with mode 0600 (never overwrites an existing key).
    pub fn save(&self, data_dir: &Path) -> Result<PathBuf, KeyError> {
        let path = data_dir.join(KEY_FILE);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| KeyError::Io(path.clone(), e))?;
        file.write_all(hex::encode(self.signer.secret_bytes()).as_bytes())
            .map_err(|e| KeyError::Io(path.clone(), e))?;
        Ok(path)
    }

    /// Loads the key, or creates and saves a new one.
    pub fn load_or_create(data_dir: &Path) -> Result<NodeKey, KeyError> {
        if data_dir.join(KEY_FILE).exists() {
            return Self::load(data_dir);
        }
        let key = Self::generate();
        key.save(data_dir)?;
        Ok(key)
    }

    /// Our identity.
    pub fn node_id(&self) -> NodeId {
        self.signer.node_id()
    }

    /// The signer for the pure crates.
    pub fn signer(&self) -> &KeySigner {
        &self.signer
    }

    /// The libp2p keypair derived from the same ed25519 secret.
    pub fn libp2p_keypair(&self) -> libp2p::identity::Keypair {
        let mut secret = self.signer.secret_bytes();
        // Only fails for a wrong length, which [u8; 32] rules out.
        libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
            .unwrap_or_else(|_| libp2p::identity::Keypair::generate_ed25519())
    }
}

/// The libp2p `PeerId` of a node id.
pub fn peer_id_of(id: &NodeId) -> Option<libp2p::PeerId> {
    libp2p::identity::ed25519::PublicKey::try_from_bytes(&id.0)
        .ok()
        .map(|pk| libp2p::PeerId::from_public_key(&libp2p::identity::PublicKey::from(pk)))
}

/// The node id behind a `PeerId`, if it is an ed25519 identity.
pub fn node_id_of(peer: &libp2p::PeerId) -> Option<NodeId> {
    let mh = peer.as_ref();
    // Identity multihash of a protobuf-encoded public key: 4-byte header then 32 key bytes.
    let digest = mh.digest();
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(digest).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    Some(NodeId(ed.to_bytes()))
}

/// Tightens a file that holds a secret to 0600.
pub fn restrict(path: &Path) -> std::io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_peer_id_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = NodeKey::load(dir.path()).unwrap();
        assert_eq!(key.node_id(), again.node_id());
        let peer = key.libp2p_keypair().public().to_peer_id();
        assert_eq!(peer_id_of(&key.node_id()), Some(peer));
        assert_eq!(node_id_of(&peer), Some(key.node_id()));
    }

    #[test]
    fn loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        NodeKey::load_or_create(dir.path()).unwrap();
        fs::set_permissions(dir.path().join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            NodeKey::load(dir.path()),
            Err(KeyError::Permissions(..))
        ));
    }
}
