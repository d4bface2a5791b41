//! Device frame keys held by this edge (threat R1), with their epochs (key rotation).
//!
//! Two sources: the devices this node owns (`radio.device_keys` in its config: the device's
//! **root** key, the customer's secret, provisioned with the devices), and the working keys an
//! owner handed over to this node as the provider of one of its contracts (`RadioRpc::Keys`,
//! fetched when the contract is staged, over the authenticated, encrypted libp2p connection;
//! `RadioRpc::KeyUpdate` when the owner rotates). Frames and requests use the working key of
//! the device's current epoch (`DeviceKey::for_epoch`); only the owner holds the root, which
//! alone moves a device to a new epoch, so a provider whose contract ended cannot derive the
//! next key. Each device has a current working key and, while a rotation is under way, the
//! next one: a frame verifies under either, and one under the next promotes it.
//!
//! Received keys are kept in `<data-dir>/radio-keys.json`, created with mode 0600, so a
//! restarted provider still verifies the frames of a customer that has died meanwhile. A file
//! readable by others is refused. An owner shares only the working keys of devices it owns,
//! never keys it received.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agora_network::private_file::ReadError;
use agora_wire::radio::{DeviceKey, HandedKey};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// One entry of `radio.device_keys`: a device's root key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceKeyConfig {
    /// Device.
    pub device: u32,
    /// Its 32-byte root key, 64 hex digits.
    pub key: String,
}

/// One entry of the received-keys file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceivedKey {
    device: u32,
    /// The working key, 64 hex digits.
    key: String,
    #[serde(default)]
    epoch: u32,
    /// The next epoch's key, while its owner rotates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<(u32, String)>,
    /// Who handed it (the device's owner then); absent in files written before session 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
}

/// A working key and its epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) epoch: u32,
    pub(crate) key: DeviceKey,
    /// The next epoch's, while a rotation is under way.
    pub(crate) next: Option<(u32, DeviceKey)>,
    /// Who handed it here (`None`: this node's own, or from a file before session 50).
    pub(crate) from: Option<agora_market::NodeId>,
}

/// The keys this edge verifies frames with.
#[derive(Default)]
pub(crate) struct KeyStore {
    /// Working keys, owned and received.
    held: BTreeMap<u32, Held>,
    /// Root keys of the devices this node owns (its config).
    roots: BTreeMap<u32, DeviceKey>,
    /// Where received keys are persisted.
    file: Option<PathBuf>,
}

impl KeyStore {
    /// Owned root keys from the config (each at its epoch in `epochs`, 0 if absent), then
    /// received keys from `file`. Malformed entries are skipped with a log line.
    pub(crate) fn load(
        owned: &[DeviceKeyConfig],
        file: Option<PathBuf>,
        epochs: &BTreeMap<u32, u32>,
    ) -> Self {
        let mut s = KeyStore {
            file,
            ..Default::default()
        };
        if let Some(path) = &s.file {
            for e in read_private(path) {
                let next = e
                    .next
                    .and_then(|(n, k)| Some((n, DeviceKey::from_hex(&k)?)))
                    .filter(|(n, _)| *n > e.epoch);
                match DeviceKey::from_hex(&e.key) {
                    Some(key) => {
                        let from = e.from.as_deref().and_then(|f| f.parse().ok());
                        s.held.insert(
                            e.device,
                            Held {
                                epoch: e.epoch,
                                key,
                                next,
                                from,
                            },
                        );
                    }
                    None => {
                        warn!(device = e.device, path = %path.display(), "malformed received device key skipped")
                    }
                }
            }
        }
        for e in owned {
            match DeviceKey::from_hex(&e.key) {
                Some(root) => {
                    let epoch = epochs.get(&e.device).copied().unwrap_or(0);
                    s.held.insert(
                        e.device,
                        Held {
                            epoch,
                            key: root.for_epoch(epoch),
                            next: None,
                            from: None,
                        },
                    );
                    s.roots.insert(e.device, root);
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

    /// The current working key of `device`.
    pub(crate) fn get(&self, device: u32) -> Option<&DeviceKey> {
        self.held.get(&device).map(|h| &h.key)
    }

    /// The current working key and, while a rotation is under way, the next one.
    pub(crate) fn candidates(&self, device: u32) -> Vec<DeviceKey> {
        self.held
            .get(&device)
            .map(|h| {
                std::iter::once(h.key.clone())
                    .chain(h.next.as_ref().map(|n| n.1.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The next working key of `device`, while a rotation is under way.
    pub(crate) fn next(&self, device: u32) -> Option<&DeviceKey> {
        self.held.get(&device)?.next.as_ref().map(|n| &n.1)
    }

    pub(crate) fn has(&self, device: u32) -> bool {
        self.held.contains_key(&device)
    }

    /// The epoch of `device`'s current working key.
    pub(crate) fn epoch(&self, device: u32) -> Option<u32> {
        self.held.get(&device).map(|h| h.epoch)
    }

    /// The root key of `device` if this node owns it.
    pub(crate) fn root(&self, device: u32) -> Option<&DeviceKey> {
        self.roots.get(&device)
    }

    /// The working keys of `device` to hand a provider if this node owns it (only those are
    /// ever shared): the current one and, while a rotation is under way, the next.
    pub(crate) fn owned(&self, device: u32) -> Vec<HandedKey> {
        if !self.roots.contains_key(&device) {
            return Vec::new();
        }
        let Some(h) = self.held.get(&device) else {
            return Vec::new();
        };
        std::iter::once((h.epoch, &h.key))
            .chain(h.next.as_ref().map(|(e, k)| (*e, k)))
            .map(|(epoch, k)| HandedKey {
                device,
                epoch,
                key: k.0,
            })
            .collect()
    }

    /// Owner: starts moving `device` to `epoch` (above its current one): its key becomes the
    /// next one. Returns it, `None` for a device this node does not own or a stale epoch.
    pub(crate) fn begin_rotation(&mut self, device: u32, epoch: u32) -> Option<DeviceKey> {
        let root = self.roots.get(&device)?;
        let h = self.held.get_mut(&device)?;
        if epoch <= h.epoch {
            return None;
        }
        let k = root.for_epoch(epoch);
        h.next = Some((epoch, k.clone()));
        Some(k)
    }

    /// The device showed it is at its next epoch (a frame under the next key, or its rekey
    /// answer): the next key becomes the current one (persisted for a received key). Returns
    /// the new epoch.
    pub(crate) fn promote(&mut self, device: u32) -> Option<u32> {
        let h = self.held.get_mut(&device)?;
        let (epoch, key) = h.next.take()?;
        h.epoch = epoch;
        h.key = key;
        info!(device, epoch, "device key moved to its next epoch");
        if !self.roots.contains_key(&device) {
            self.save();
        }
        Some(epoch)
    }

    /// Stores working keys received from a device's owner (never replacing an owned key, never
    /// going back to an older epoch) and persists them; returns the devices whose key is new or
    /// changed. A key of a later epoch than the current one is kept as the next (a rotation
    /// under way); one for a device without a key here becomes its current key.
    pub(crate) fn receive(
        &mut self,
        keys: Vec<HandedKey>,
        from: agora_market::NodeId,
        max: usize,
    ) -> Vec<u32> {
        let mut changed = Vec::new();
        for HandedKey { device, epoch, key } in keys {
            let key = DeviceKey(key);
            if self.roots.contains_key(&device) {
                continue;
            }
            match self.held.get_mut(&device) {
                Some(h) if epoch > h.epoch => {
                    if h.next
                        .as_ref()
                        .is_some_and(|(e, k)| *e > epoch || (*e == epoch && *k == key))
                    {
                        continue;
                    }
                    h.next = Some((epoch, key));
                    h.from.get_or_insert(from);
                }
                Some(h) if epoch == h.epoch && h.key != key => {
                    // The same epoch under another key: the owner changed the device's root
                    // (re-provisioned). Its word wins.
                    h.key = key;
                    h.next = None;
                    h.from = Some(from);
                }
                Some(h) => {
                    // The same key again, from its owner: a key loaded without provenance
                    // (a file from before session 50) learns it.
                    if h.from.is_none() {
                        h.from = Some(from);
                        self.save();
                    }
                    continue;
                }
                None => {
                    if self.held.len() >= max {
                        warn!(
                            device,
                            max, "device key not kept: radio.max_devices keys held already"
                        );
                        continue;
                    }
                    self.held.insert(
                        device,
                        Held {
                            epoch,
                            key,
                            next: None,
                            from: Some(from),
                        },
                    );
                }
            }
            if !changed.contains(&device) {
                changed.push(device);
            }
        }
        if !changed.is_empty() {
            self.save();
        }
        changed
    }

    /// Drops the received working keys of `devices` (never a root key of this node's own)
    /// and persists the change.
    pub(crate) fn forget_received(&mut self, devices: &[u32]) {
        let before = self.held.len();
        for d in devices {
            if !self.roots.contains_key(d) {
                self.held.remove(d);
            }
        }
        if self.held.len() != before {
            self.save();
        }
    }

    /// Drops the received keys of `devices` that someone other than `owner` handed here (a
    /// device claimed by a new owner must not be acted for with the previous owner's key:
    /// device audit of session 50); returns those dropped.
    pub(crate) fn forget_unless_from(
        &mut self,
        devices: &[u32],
        owner: agora_market::NodeId,
    ) -> Vec<u32> {
        let stale: Vec<u32> = devices
            .iter()
            .copied()
            .filter(|d| !self.roots.contains_key(d))
            .filter(|d| {
                self.held
                    .get(d)
                    .is_some_and(|h| h.from.is_some_and(|f| f != owner))
            })
            .collect();
        if !stale.is_empty() {
            self.forget_received(&stale);
        }
        stale
    }

    fn save(&self) {
        let Some(path) = &self.file else {
            return;
        };
        let received: Vec<ReceivedKey> = self
            .held
            .iter()
            .filter(|(d, _)| !self.roots.contains_key(d))
            .map(|(d, h)| ReceivedKey {
                device: *d,
                key: h.key.to_hex(),
                epoch: h.epoch,
                next: h.next.as_ref().map(|(e, k)| (*e, k.to_hex())),
                from: h.from.map(|f| f.to_string()),
            })
            .collect();
        if let Err(e) = write_private(path, &received) {
            warn!(path = %path.display(), error = %e, "received device keys not saved; a restart loses them");
        }
    }
}

fn read_private(path: &Path) -> Vec<ReceivedKey> {
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
    match std::fs::read(path).map(|b| serde_json::from_slice::<Vec<ReceivedKey>>(&b)) {
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

    fn handed(device: u32, epoch: u32, b: u8) -> HandedKey {
        HandedKey {
            device,
            epoch,
            key: [b; 32],
        }
    }

    /// Device audit of session 50: a device claimed by a new owner is not acted for with a key
    /// another party handed; the provenance survives a restart.
    #[test]
    fn keys_another_owner_handed_are_dropped_when_the_device_is_claimed_anew() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("radio-keys.json");
        let (a, x) = (agora_market::NodeId([1; 32]), agora_market::NodeId([2; 32]));
        let mut s = KeyStore::load(&[], Some(file.clone()), &BTreeMap::new());
        s.receive(vec![handed(101, 0, 9), handed(102, 0, 8)], a, 10);
        let mut s = KeyStore::load(&[], Some(file), &BTreeMap::new());
        assert!(
            s.forget_unless_from(&[101, 102], a).is_empty(),
            "A's own keys stay"
        );
        assert_eq!(s.forget_unless_from(&[101], x), vec![101]);
        assert!(!s.has(101));
        assert!(s.has(102));
    }

    #[test]
    fn received_keys_persist_0600_and_owned_keys_win() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("radio-keys.json");
        let none = BTreeMap::new();
        let mut s = KeyStore::load(&[entry(1, 1)], Some(path.clone()), &none);
        assert_eq!(s.owned(1).len(), 1);
        let changed = s.receive(
            vec![handed(1, 0, 9), handed(2, 0, 2)],
            agora_market::NodeId([1; 32]),
            10,
        );
        assert_eq!(changed, vec![2], "an owned key is never replaced");
        assert_eq!(
            s.get(1),
            Some(&DeviceKey([1; 32]).for_epoch(0)),
            "an owned device works under its root's epoch key, never the root"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = KeyStore::load(&[], Some(path.clone()), &none);
        assert_eq!(again.get(2), Some(&DeviceKey([2; 32])));
        assert!(
            again.get(1).is_none(),
            "owned keys are not written to the file"
        );
        assert!(
            again.owned(2).is_empty(),
            "received keys are never shared on"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            KeyStore::load(&[], Some(path), &none).get(2).is_none(),
            "a readable file is refused"
        );
    }

    #[test]
    fn the_store_is_bounded() {
        let mut s = KeyStore::load(&[], None, &BTreeMap::new());
        let keys = (0..10).map(|d| handed(d, 0, 1)).collect();
        assert_eq!(s.receive(keys, agora_market::NodeId([1; 32]), 4).len(), 4);
    }

    /// Key rotation: the owner hands the current and the next working key, never the root; a
    /// provider keeps a later epoch's key as the next, never goes back to an older epoch, and
    /// promotes the next key once the device is at it (persisted).
    #[test]
    fn epochs_move_forward_only_and_the_next_key_is_promoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("radio-keys.json");
        let root = DeviceKey([1; 32]);
        let mut owner = KeyStore::load(&[entry(7, 1)], None, &BTreeMap::from([(7, 3)]));
        assert_eq!(owner.epoch(7), Some(3));
        assert_eq!(owner.root(7), Some(&root));
        assert!(owner.begin_rotation(7, 3).is_none(), "not above the epoch");
        assert_eq!(owner.begin_rotation(7, 4), Some(root.for_epoch(4)));
        let keys = owner.owned(7);
        assert_eq!(
            keys.iter()
                .map(|k| (k.epoch, DeviceKey(k.key)))
                .collect::<Vec<_>>(),
            vec![(3, root.for_epoch(3)), (4, root.for_epoch(4))]
        );
        assert!(
            keys.iter().all(|k| k.key != root.0),
            "the root never leaves"
        );

        let mut p = KeyStore::load(&[], Some(path.clone()), &BTreeMap::new());
        assert_eq!(p.receive(keys, agora_market::NodeId([1; 32]), 10), vec![7]);
        assert_eq!(p.get(7), Some(&root.for_epoch(3)));
        assert_eq!(p.next(7), Some(&root.for_epoch(4)));
        assert_eq!(p.candidates(7).len(), 2);
        assert!(
            p.receive(vec![handed(7, 2, 9)], agora_market::NodeId([1; 32]), 10)
                .is_empty(),
            "an older epoch is ignored"
        );
        let same = HandedKey {
            device: 7,
            epoch: 4,
            key: root.for_epoch(4).0,
        };
        assert!(
            p.receive(vec![same], agora_market::NodeId([1; 32]), 10)
                .is_empty(),
            "the same next key again changes nothing"
        );
        assert_eq!(p.promote(7), Some(4));
        assert_eq!(p.promote(7), None, "nothing further to promote");
        assert_eq!(owner.promote(7), Some(4));
        assert_eq!(owner.get(7), p.get(7));
        let again = KeyStore::load(&[], Some(path), &BTreeMap::new());
        assert_eq!(
            (again.epoch(7), again.get(7)),
            (Some(4), Some(&root.for_epoch(4)))
        );
    }
}
