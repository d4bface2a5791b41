//! Device frame keys held by this edge (threat R1).
//!
//! Two sources: the devices this node owns (`radio.device_keys` in its config: the customer's
//! secret, provisioned with the devices), and the keys an owner handed over to this node as the
//! provider of one of its contracts (`RadioRpc::Keys`, fetched when the contract is staged, over
//! the authenticated, encrypted libp2p connection). Received keys are kept in
//! `<data-dir>/radio-keys.json`, created with mode 0600, so a restarted provider still verifies
//! the frames of a customer that has died meanwhile. A file readable by others is refused.
//!
//! An owner shares only the keys it owns, never keys it received.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use agora_network::private_file::ReadError;
use agora_wire::radio::DeviceKey;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// One entry of `radio.device_keys` (and of the received-keys file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceKeyConfig {
    /// Device.
    pub device: u32,
    /// Its 32-byte frame key, 64 hex digits.
    pub key: String,
}

/// The keys this edge verifies frames with.
#[derive(Default)]
pub(crate) struct KeyStore {
    keys: BTreeMap<u32, DeviceKey>,
    /// Devices whose key came from this node's own config.
    owned: BTreeSet<u32>,
    /// Where received keys are persisted.
    file: Option<PathBuf>,
}

impl KeyStore {
    /// Owned keys from the config, then received keys from `file`. Malformed entries are
    /// skipped with a log line.
    pub(crate) fn load(owned: &[DeviceKeyConfig], file: Option<PathBuf>) -> Self {
        let mut s = KeyStore {
            file,
            ..Default::default()
        };
        if let Some(path) = &s.file {
            for e in read_private(path) {
                match DeviceKey::from_hex(&e.key) {
                    Some(k) => {
                        s.keys.insert(e.device, k);
                    }
                    None => {
                        warn!(device = e.device, path = %path.display(), "malformed received device key skipped")
                    }
                }
            }
        }
        for e in owned {
            match DeviceKey::from_hex(&e.key) {
                Some(k) => {
                    s.keys.insert(e.device, k);
                    s.owned.insert(e.device);
                }
                None => warn!(
                    device = e.device,
                    "radio.device_keys: key is not 64 hex digits; frames of this device are not \
                     verified until it is fixed"
                ),
            }
        }
        s
    }

    pub(crate) fn get(&self, device: u32) -> Option<&DeviceKey> {
        self.keys.get(&device)
    }

    pub(crate) fn has(&self, device: u32) -> bool {
        self.keys.contains_key(&device)
    }

    /// The key of `device` if this node owns it (only those are ever shared).
    pub(crate) fn owned(&self, device: u32) -> Option<&DeviceKey> {
        self.owned
            .contains(&device)
            .then(|| self.keys.get(&device))
            .flatten()
    }

    /// Stores keys received from a device owner (never replacing an owned key) and persists
    /// them; returns the devices whose key is new or changed.
    pub(crate) fn receive(&mut self, keys: Vec<(u32, DeviceKey)>, max: usize) -> Vec<u32> {
        let mut changed = Vec::new();
        for (device, key) in keys {
            if self.owned.contains(&device) || self.keys.get(&device) == Some(&key) {
                continue;
            }
            if !self.keys.contains_key(&device) && self.keys.len() >= max {
                warn!(
                    device,
                    max, "device key not kept: radio.max_devices keys held already"
                );
                continue;
            }
            self.keys.insert(device, key);
            changed.push(device);
        }
        if !changed.is_empty()
            && let Some(path) = &self.file
        {
            let received: Vec<DeviceKeyConfig> = self
                .keys
                .iter()
                .filter(|(d, _)| !self.owned.contains(d))
                .map(|(d, k)| DeviceKeyConfig {
                    device: *d,
                    key: k.to_hex(),
                })
                .collect();
            if let Err(e) = write_private(path, &received) {
                warn!(path = %path.display(), error = %e, "received device keys not saved; a restart loses them");
            }
        }
        changed
    }
}

fn read_private(path: &Path) -> Vec<DeviceKeyConfig> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    if meta.permissions().mode() & 0o077 != 0 {
        warn!(
            path = %path.display(),
            "device key file readable by others: refused; chmod 600 it (and consider the keys leaked)"
        );
        return Vec::new();
    }
    match std::fs::read(path).map(|b| serde_json::from_slice::<Vec<DeviceKeyConfig>>(&b)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            warn!(path = %path.display(), error = %e, "device key file unreadable; ignored");
            Vec::new()
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "device key file unreadable; ignored");
            Vec::new()
        }
    }
}

/// Reads one of the radio's private JSON files: `None` (with a log line naming what to do) when
/// it is missing, readable by others, larger than `max_bytes` or not the expected JSON.
pub(crate) fn read_private_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    max_bytes: u64,
) -> Option<T> {
    let body = match agora_network::private_file::read(path, max_bytes) {
        Ok(body) => body?,
        Err(e @ ReadError::Permissions { .. }) => {
            warn!(path = %path.display(), error = %e, "radio file readable by others: refused; chmod 600 it");
            return None;
        }
        Err(ReadError::TooLarge { bytes, .. }) => {
            warn!(path = %path.display(), bytes, max_bytes, "radio file too large: ignored");
            return None;
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "radio file unreadable; ignored");
            return None;
        }
    };
    match serde_json::from_slice(&body) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "radio file not the expected JSON; ignored");
            None
        }
    }
}

/// Writes `value` as JSON through a temporary file created 0600 and renamed into place (the
/// radio's private files: device keys and frame counters).
pub(crate) fn write_private<T: serde::Serialize + ?Sized>(
    path: &Path,
    value: &T,
) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    agora_network::private_file::write(path, &body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(device: u32, b: u8) -> DeviceKeyConfig {
        DeviceKeyConfig {
            device,
            key: DeviceKey([b; 32]).to_hex(),
        }
    }

    #[test]
    fn received_keys_persist_0600_and_owned_keys_win() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("radio-keys.json");
        let mut s = KeyStore::load(&[entry(1, 1)], Some(path.clone()));
        assert!(s.owned(1).is_some());
        let changed = s.receive(vec![(1, DeviceKey([9; 32])), (2, DeviceKey([2; 32]))], 10);
        assert_eq!(changed, vec![2], "an owned key is never replaced");
        assert_eq!(s.get(1), Some(&DeviceKey([1; 32])));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = KeyStore::load(&[], Some(path.clone()));
        assert_eq!(again.get(2), Some(&DeviceKey([2; 32])));
        assert!(
            again.get(1).is_none(),
            "owned keys are not written to the file"
        );
        assert!(
            again.owned(2).is_none(),
            "received keys are never shared on"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            KeyStore::load(&[], Some(path)).get(2).is_none(),
            "a readable file is refused"
        );
    }

    #[test]
    fn the_store_is_bounded() {
        let mut s = KeyStore::load(&[], None);
        let keys = (0..10).map(|d| (d, DeviceKey([1; 32]))).collect();
        assert_eq!(s.receive(keys, 4).len(), 4);
    }
}
