//! The firmware-job hand-offs a provider kept (issue #16), persisted in
//! `<data-dir>/radio-handoffs.json` (mode 0600, like the received device keys) so a provider
//! restarted before the handover still resumes the owner's job. Written whole after every
//! change (at most [`MAX_HANDOFFS`] entries and `MAX_RETIRED` retired jobs); reloaded at start through
//! [`Handoffs::restore`], which checks every entry as if it came from outside (a file
//! readable by others, too large or not JSON is ignored with a log line). Jobs their owner
//! retired are kept too (at most `MAX_RETIRED`, as `finished` entries), so a late copy of a
//! finished job is not taken again after a restart (THREATS R5).

use std::path::Path;

use agora_devices::handoff::{Handoffs, KeptHandoff, MAX_HANDOFFS};
use agora_market::Timestamp;
use tracing::{info, warn};

use crate::keys::{read_private_json, write_private};

/// Largest hand-off file read back, bytes (16 hand-offs of 1024 devices, each with every
/// device done, and 256 retired jobs take about 1.6 MB at most).
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 20;

/// The table reloaded from `path` (empty if there is none).
pub(crate) fn load(path: Option<&Path>, now: Timestamp) -> Handoffs {
    let mut t = Handoffs::new(MAX_HANDOFFS);
    let Some(path) = path else {
        return t;
    };
    if let Some(entries) = read_private_json::<Vec<KeptHandoff>>(path, MAX_FILE_BYTES) {
        t.restore(now, entries);
        let (kept, retired, dropped) = (t.list().len(), t.retired(), t.stats.dropped_on_load);
        if kept > 0 || retired > 0 || dropped > 0 {
            info!(kept, retired, dropped, path = %path.display(), "kept firmware-job hand-offs reloaded");
        }
    }
    t
}

/// Writes the table to `path` (a failure is logged: a restart would forget the hand-offs).
pub(crate) fn save(path: Option<&Path>, t: &Handoffs) {
    let Some(path) = path else {
        return;
    };
    if let Err(e) = write_private(path, &t.to_file()) {
        warn!(path = %path.display(), error = %e, "firmware-job hand-offs not saved; a restart forgets them");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use agora_devices::handoff::{JobHandoff, OwnerDone};
    use agora_market::NodeId;

    use super::*;

    fn handoff(job: u64, devices: Vec<u32>) -> JobHandoff {
        JobHandoff {
            job,
            selector: "all".into(),
            firmware: "bafkfirmware".into(),
            firmware_type: "agora-sensor".into(),
            version: "2.0.0".into(),
            max_unavailable: 1,
            devices,
            issued_at: 1,
            finished: false,
            done: vec![(1, OwnerDone::RolledBack)],
        }
    }

    fn owner(d: u32) -> Option<NodeId> {
        (d < 100).then_some(NodeId([1; 32]))
    }

    #[test]
    fn kept_hand_offs_persist_0600_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("radio-handoffs.json");
        let mut t = load(Some(path.as_path()), 0);
        assert!(t.list().is_empty(), "no file: empty");
        t.receive(10, NodeId([1; 32]), handoff(7, vec![1, 2]), owner)
            .unwrap();
        save(Some(path.as_path()), &t);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = load(Some(path.as_path()), 20);
        assert_eq!(again.list(), t.list());
        assert_eq!(
            again.list()[0].handoff.done,
            vec![(1, OwnerDone::RolledBack)]
        );
        assert!(
            again.waiting(),
            "still waiting for custody after the restart"
        );
    }

    #[test]
    fn a_hostile_file_is_refused_or_checked_entry_by_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("radio-handoffs.json");
        let write = |body: &[u8], mode: u32| {
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        // Readable by others: refused whole.
        let mut t = Handoffs::new(MAX_HANDOFFS);
        t.receive(10, NodeId([1; 32]), handoff(7, vec![1]), owner)
            .unwrap();
        write(&serde_json::to_vec(&t.list()).unwrap(), 0o644);
        assert!(load(Some(path.as_path()), 20).list().is_empty());
        // Not JSON, or the wrong JSON.
        write(b"\xff{garbage", 0o600);
        assert!(load(Some(path.as_path()), 20).list().is_empty());
        write(b"{\"a\": 1}", 0o600);
        assert!(load(Some(path.as_path()), 20).list().is_empty());
        // Too large: not even read.
        write(" ".repeat(MAX_FILE_BYTES as usize + 1).as_bytes(), 0o600);
        assert!(load(Some(path.as_path()), 20).list().is_empty());
        // More entries than the table holds, some malformed: bounded, the rest counted.
        let mut entries = Vec::new();
        for job in 0..40u64 {
            let mut k = t.list()[0].clone();
            k.handoff.job = job;
            k.received_at = 10 + job;
            if job % 4 == 0 {
                k.handoff.devices.clear();
            }
            entries.push(k);
        }
        write(&serde_json::to_vec(&entries).unwrap(), 0o600);
        let t = load(Some(path.as_path()), 100);
        assert_eq!(t.list().len(), MAX_HANDOFFS);
        assert_eq!(t.stats.dropped_on_load, 40 - MAX_HANDOFFS as u64);
        assert!(t.list().iter().all(|k| !k.handoff.devices.is_empty()));
    }
}
