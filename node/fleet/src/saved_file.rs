//! The deployer's own deployments, persisted in `<data-dir>/fleet-deployments.json` (mode 0600,
//! written whole through a temporary file renamed into place, like the radio's hand-off file)
//! whenever they change, and reloaded at start, so a deployer that restarts keeps its
//! deployments (issue #15).
//!
//! The file is read as hostile input: one readable by others, larger than [`MAX_FILE_BYTES`]
//! or not the expected JSON is refused whole (with a log line; it is moved aside to
//! `fleet-deployments.json.refused` so the next save does not destroy what the operator may
//! want back) and the node starts without it; the entries of a file that parses are checked
//! one by one by `FleetState::restore` (signature, deployer = this node, bounds).

use std::path::{Path, PathBuf};

use agora_fleet_core::SavedFleet;
use agora_network::private_file::{self, ReadError};
use tracing::warn;

/// Name of the file in the data dir.
pub const FILE_NAME: &str = "fleet-deployments.json";

/// Largest file read back, bytes (64 deployments of 1,024 targets each fit).
pub const MAX_FILE_BYTES: u64 = 32 << 20;

/// Why a file was not read back.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Refused as a private file: readable by others, too large or unreadable.
    #[error(transparent)]
    File(#[from] ReadError),
    /// Not the expected JSON.
    #[error("{path} is not the expected JSON: {error}; refused")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        error: serde_json::Error,
    },
}

/// Reads the saved deployments at `path`: `Ok(None)` when there is no file.
pub fn read(path: &Path) -> Result<Option<SavedFleet>, LoadError> {
    let Some(body) = private_file::read(path, MAX_FILE_BYTES)? else {
        return Ok(None);
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|error| LoadError::Json {
            path: path.into(),
            error,
        })
}

/// Reads the file at start: a refused file is logged and moved aside (the node starts without
/// it).
pub fn load(path: &Path) -> SavedFleet {
    match read(path) {
        Ok(saved) => saved.unwrap_or_default(),
        Err(e) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".refused");
            let moved = std::fs::rename(path, &aside).is_ok();
            warn!(error = %e, moved_to = %Path::new(&aside).display(), moved,
                "saved fleet deployments refused; this node starts without them");
            SavedFleet::default()
        }
    }
}

/// Encodes what is saved (the task compares it with the last write, and writes on change).
pub fn encode(saved: &SavedFleet) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec_pretty(saved)
}

/// Writes `body` to `path` through a temporary file created 0600 and renamed into place.
pub fn write(path: &Path, body: &[u8]) -> std::io::Result<()> {
    private_file::write(path, body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use agora_fleet_core::{
        DeploymentSpec, FleetConfig, FleetState, Input, LiveContract, Replicas, Selector, Strategy,
        TargetPhase,
    };
    use agora_market::{KeySigner, Resources, Signer};

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const T0: u64 = 1_700_000_000_000;
    const IMAGE: &str = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";

    fn key(seed: u64) -> KeySigner {
        KeySigner::from_seed(seed)
    }

    fn spec(name: &str) -> DeploymentSpec {
        DeploymentSpec {
            name: name.into(),
            image: IMAGE.into(),
            selector: Selector::parse("site=a").unwrap(),
            variants: Vec::new(),
            needs: Resources {
                cpu_millis: 100,
                ..Resources::default()
            },
            replicas: Replicas::All,
            strategy: Strategy::Push,
            max_price_per_replica: 50,
            duration_ms: 3_600_000,
            valid_for_ms: 600_000,
            after: Vec::new(),
        }
    }

    /// A deployer with `names` deployed, as saved.
    fn saved_by(seed: u64, names: &[&str]) -> SavedFleet {
        let mut m = FleetState::new(key(seed), FleetConfig::default());
        for name in names {
            m.handle(T0, Input::Create(spec(name))).unwrap();
        }
        m.saved()
    }

    fn restore(seed: u64, saved: SavedFleet) -> FleetState<KeySigner> {
        let mut m = FleetState::new(key(seed), FleetConfig::default());
        let live: Vec<LiveContract> = Vec::new();
        let _ = m.restore(T0 + 1_000, saved, &live);
        m
    }

    fn write_mode(path: &Path, body: &[u8], mode: u32) {
        std::fs::write(path, body).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn deployments_round_trip_through_a_0600_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert_eq!(load(&path), SavedFleet::default(), "no file: nothing");
        let saved = saved_by(1, &["gw", "cam"]);
        write(&path, &encode(&saved).unwrap()).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = load(&path);
        assert_eq!(back, saved);
        let m = restore(1, back);
        let names: Vec<String> = m.list().into_iter().map(|v| v.name).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"gw".to_string()) && names.contains(&"cam".to_string()));
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn a_file_readable_by_others_is_refused_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        write_mode(&path, &encode(&saved_by(1, &["gw"])).unwrap(), 0o644);
        assert!(matches!(
            read(&path),
            Err(LoadError::File(ReadError::Permissions { .. }))
        ));
        assert_eq!(load(&path), SavedFleet::default());
        assert!(!path.exists(), "moved aside");
        assert!(dir.path().join(format!("{FILE_NAME}.refused")).exists());
    }

    #[test]
    fn a_file_too_large_or_not_json_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        write_mode(
            &path,
            " ".repeat(MAX_FILE_BYTES as usize + 1).as_bytes(),
            0o600,
        );
        assert!(matches!(
            read(&path),
            Err(LoadError::File(ReadError::TooLarge { .. }))
        ));
        write_mode(&path, b"\xff{garbage", 0o600);
        assert!(matches!(read(&path), Err(LoadError::Json { .. })));
        write_mode(&path, b"{\"deployments\": 7}", 0o600);
        assert!(matches!(read(&path), Err(LoadError::Json { .. })));
        assert_eq!(load(&path), SavedFleet::default());
    }

    #[test]
    fn bad_entries_are_dropped_and_counted() {
        let mut saved = saved_by(1, &["gw", "cam", "ok"]);
        // Another deployer's record, validly signed by it.
        saved
            .deployments
            .push(saved_by(2, &["theirs"]).deployments.remove(0));
        let named = |saved: &mut SavedFleet, name: &str| {
            saved
                .deployments
                .iter()
                .position(|d| d.record.body.name == name)
                .unwrap()
        };
        // A tampered record: the signature no longer covers it.
        let gw = named(&mut saved, "gw");
        saved.deployments[gw].record.body.replicas = Replicas::Count(7);
        // Out of bounds, re-signed by this node: the check of a received record refuses it.
        let cam = named(&mut saved, "cam");
        let mut body = saved.deployments[cam].record.body.clone();
        body.name = "NOT A TOKEN".into();
        saved.deployments[cam].record = agora_market::signed::Signed::sign(body, &key(1)).unwrap();
        // A target with an over-long reason, in the good one.
        let ok = named(&mut saved, "ok");
        saved.deployments[ok].targets.push((
            key(9).node_id(),
            agora_fleet_core::TargetStatus {
                phase: TargetPhase::Contracting,
                reason: Some("x".repeat(10_000)),
            },
        ));
        let mut m = FleetState::new(key(1), FleetConfig::default());
        let (report, effects) = m.restore(T0 + 1_000, saved, &[]);
        assert_eq!(report.kept, 1);
        assert_eq!(report.dropped, 3);
        assert_eq!(report.bad_entries, 1);
        let names: Vec<String> = m.list().into_iter().map(|v| v.name).collect();
        assert_eq!(names, vec!["ok".to_string()]);
        assert!(m.list()[0].targets.is_empty());
        assert_eq!(effects.len(), 1, "the kept record is announced again");
    }
}
