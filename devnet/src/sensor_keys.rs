//! Frame keys of the devnet's simulated sensors (threat R1): `agora devnet up` draws a random
//! key per sensor, writes them to `<dir>/sensor-keys.json` (mode 0600; the sensors read it) and
//! into the config of the node that owns the sensors — by devnet convention the last node that
//! is not manual (the demo's A, the drone's operator, node5 of `up --nodes 7 --manual 1`). The
//! owner hands the keys to the provider of a contract for them; every other node hears the
//! sensors as hearsay.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use agora_radio::{DeviceKey, DeviceKeyConfig};
use anyhow::Context;

/// File in the devnet dir with the sensors' keys.
pub const SENSOR_KEYS_FILE: &str = "sensor-keys.json";
/// Sensors the devnet keys: the demo's (and `agora devnet sensors`' default) 101-103, the
/// drone 201.
pub const KEYED_SENSORS: [u32; 4] = [101, 102, 103, 201];

/// Index of the node that owns the devnet's sensors among `n` nodes, the last `manual` of them
/// manual.
pub fn sensor_owner(n: usize, manual: usize) -> usize {
    n.saturating_sub(manual).saturating_sub(1)
}

/// Draws a fresh key per sensor of [`KEYED_SENSORS`] and writes them to `dir`.
pub fn create(dir: &Path) -> anyhow::Result<Vec<DeviceKeyConfig>> {
    let mut random = std::fs::File::open("/dev/urandom").context("cannot open /dev/urandom")?;
    let mut keys = Vec::new();
    for device in KEYED_SENSORS {
        let mut k = [0u8; 32];
        random.read_exact(&mut k).context("reading /dev/urandom")?;
        keys.push(DeviceKeyConfig {
            device,
            key: DeviceKey(k).to_hex(),
        });
    }
    let path = dir.join(SENSOR_KEYS_FILE);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(&serde_json::to_vec_pretty(&keys)?)?;
    Ok(keys)
}

/// The sensors' keys of the devnet in `dir` (empty if it has none: the sensors send unsigned
/// v1 frames then).
pub fn load(dir: &Path) -> BTreeMap<u32, DeviceKey> {
    std::fs::read(dir.join(SENSOR_KEYS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<DeviceKeyConfig>>(&b).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.device, DeviceKey::from_hex(&e.key)?)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = create(dir.path()).unwrap();
        let loaded = load(dir.path());
        assert_eq!(loaded.len(), KEYED_SENSORS.len());
        for k in &keys {
            assert_eq!(
                loaded.get(&k.device).map(DeviceKey::to_hex),
                Some(k.key.clone())
            );
        }
        let mode = std::fs::metadata(dir.path().join(SENSOR_KEYS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(sensor_owner(7, 1), 5);
        assert_eq!(sensor_owner(7, 0), 6);
    }
}
