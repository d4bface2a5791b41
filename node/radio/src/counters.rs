//! Frame counters that survive a restart (threat R1).
//!
//! An edge accepts a keyed device's frame only if its counter is above the last one accepted
//! here. Kept in memory only, a restarted edge would accept the first valid frame it hears,
//! an old one replayed included. The last accepted counter per device is therefore kept in
//! `<data-dir>/radio-counters.json`: written through a temporary file created 0600 and renamed
//! into place (never half-written, never readable by others), at most `max` devices (the
//! radio's `max_devices`), and refused on load when group or others can read it or it holds
//! more than that.
//!
//! The file is written when a counter moved, once per checkpoint interval, and when the task
//! stops; and, so that a node killed with SIGKILL can be fooled by few genuine frames
//! whatever the devices' rate, before a frame is delivered whose counter is more than
//! `radio.max_unsaved_frames` (16) past the one saved for its device: counters only rise, so
//! at any moment at most that many accepted frames per device sit above the saved counter,
//! and those are all a restarted edge could accept once more (0 saves every frame first).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::keys::write_private;

/// One device's last accepted frame counter, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    device: u32,
    last: u32,
}

/// Last accepted frame counter per keyed device, persisted.
#[derive(Debug, Default)]
pub(crate) struct CounterStore {
    last: BTreeMap<u32, u32>,
    /// What the file holds (as of the last successful write or the load).
    saved: BTreeMap<u32, u32>,
    file: Option<PathBuf>,
    max: usize,
    /// How far a device's accepted counter may run past its saved one before a save.
    unsaved: u32,
    dirty: bool,
}

impl CounterStore {
    /// The counters saved in `file` (none if it is missing, unreadable, readable by others or
    /// larger than `max` devices; each refusal logged).
    /// `unsaved`: see [`Self::accept`].
    pub(crate) fn load(file: Option<PathBuf>, max: usize, unsaved: u32) -> Self {
        let mut s = CounterStore {
            file,
            max,
            unsaved,
            ..Default::default()
        };
        if let Some(path) = &s.file {
            for e in read(path, max) {
                s.last.insert(e.device, e.last);
            }
        }
        s.saved = s.last.clone();
        s
    }

    /// The last counter accepted for `device`.
    pub(crate) fn get(&self, device: u32) -> Option<u32> {
        self.last.get(&device).copied()
    }

    /// Records `seq` as `device`'s last accepted counter (never lowers it). A new device
    /// when `max` are held evicts the one with the lowest device id among those not `device`
    /// (logged): the bound holds whatever the radio hears.
    ///
    /// Returns whether the counters must be saved ([`Self::flush`]) before the frame is
    /// delivered: its counter runs more than `unsaved` past the saved one (or none is saved).
    #[must_use]
    pub(crate) fn accept(&mut self, device: u32, seq: u32) -> bool {
        self.record(device, seq);
        self.file.is_some()
            && self.last.get(&device).is_some_and(|last| {
                self.saved
                    .get(&device)
                    .is_none_or(|saved| last.saturating_sub(*saved) > self.unsaved)
            })
    }

    fn record(&mut self, device: u32, seq: u32) {
        if let Some(last) = self.last.get_mut(&device) {
            if seq > *last {
                *last = seq;
                self.dirty = true;
            }
            return;
        }
        if self.max == 0 {
            return;
        }
        while self.last.len() >= self.max {
            let Some((&evicted, _)) = self.last.iter().next() else {
                break;
            };
            self.last.remove(&evicted);
            warn!(
                evicted,
                device,
                max = self.max,
                "frame counter forgotten: radio.max_devices counters held"
            );
        }
        self.last.insert(device, seq);
        self.dirty = true;
    }

    /// Writes the counters if one moved since the last write; a failure is logged and retried
    /// at the next flush.
    pub(crate) fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        let Some(path) = &self.file else {
            self.dirty = false;
            return;
        };
        let entries: Vec<Entry> = self
            .last
            .iter()
            .map(|(d, l)| Entry {
                device: *d,
                last: *l,
            })
            .collect();
        match write_private(path, &entries) {
            Ok(()) => {
                self.dirty = false;
                self.saved = self.last.clone();
            }
            Err(e) => warn!(
                path = %path.display(),
                error = %e,
                "frame counters not saved; a restart could accept an old frame once"
            ),
        }
    }
}

fn read(path: &Path, max: usize) -> Vec<Entry> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    if meta.permissions().mode() & 0o077 != 0 {
        warn!(path = %path.display(), "frame counter file readable by others: refused; chmod 600 it");
        return Vec::new();
    }
    // 48 bytes per pretty-printed entry is generous; a larger file is not ours.
    let limit = (max as u64).saturating_mul(64).saturating_add(64);
    if meta.len() > limit {
        warn!(path = %path.display(), len = meta.len(), limit, "frame counter file too large: ignored");
        return Vec::new();
    }
    let entries = match std::fs::read(path).map(|b| serde_json::from_slice::<Vec<Entry>>(&b)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            warn!(path = %path.display(), error = %e, "frame counter file unreadable; ignored");
            return Vec::new();
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "frame counter file unreadable; ignored");
            return Vec::new();
        }
    };
    if entries.len() > max {
        warn!(path = %path.display(), entries = entries.len(), max, "frame counter file holds more devices than radio.max_devices: ignored");
        return Vec::new();
    }
    entries
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_wire::radio::{DeviceKey, FrameRefusal, authenticate, seal_frame};

    #[test]
    fn a_restarted_edge_refuses_an_old_valid_frame() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("radio-counters.json");
        let key = DeviceKey([7; 32]);
        let old = seal_frame(&key, 5, 10, [1; 7]);
        let new = seal_frame(&key, 5, 11, [1; 7]);
        let mut s = CounterStore::load(Some(path.clone()), 16, 16);
        for frame in [&old, &new] {
            let a = authenticate(frame, Some(&key), s.get(5), 16_384).unwrap();
            assert!(a.verified);
            let (_, seq) = crate::parse_frame(frame).unwrap();
            let _ = s.accept(5, seq);
        }
        s.flush();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The restart: a fresh store from the file.
        let again = CounterStore::load(Some(path.clone()), 16, 16);
        assert_eq!(again.get(5), Some(11));
        assert!(matches!(
            authenticate(&old, Some(&key), again.get(5), 16_384),
            Err(FrameRefusal::Replayed { .. })
        ));
        // Without the file (as before), the old frame would have passed.
        assert!(authenticate(&old, Some(&key), None, 16_384).is_ok());
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn counters_never_go_back_and_only_moves_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("radio-counters.json");
        let mut s = CounterStore::load(Some(path.clone()), 16, 16);
        let _ = s.accept(1, 9);
        let _ = s.accept(1, 3);
        assert_eq!(s.get(1), Some(9));
        s.flush();
        std::fs::remove_file(&path).unwrap();
        s.flush();
        assert!(!path.exists(), "nothing moved: nothing written");
        let _ = s.accept(1, 9);
        s.flush();
        assert!(!path.exists(), "the same counter is no move");
        let _ = s.accept(1, 10);
        s.flush();
        assert_eq!(CounterStore::load(Some(path), 16, 16).get(1), Some(10));
    }

    #[test]
    fn the_store_and_the_file_are_bounded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("radio-counters.json");
        let mut s = CounterStore::load(Some(path.clone()), 4, 16);
        for d in 0..10 {
            let _ = s.accept(d, 1);
        }
        assert_eq!(s.last.len(), 4);
        assert_eq!(s.get(9), Some(1), "the newest is kept");
        s.flush();
        assert_eq!(CounterStore::load(Some(path.clone()), 4, 16).last.len(), 4);
        // A file with more devices than the bound (another config, or not ours) is ignored.
        assert!(
            CounterStore::load(Some(path.clone()), 2, 16)
                .last
                .is_empty()
        );
        // So is one readable by others.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            CounterStore::load(Some(path.clone()), 4, 16)
                .last
                .is_empty()
        );
        // And garbage.
        std::fs::write(&path, b"{not json").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(CounterStore::load(Some(path), 4, 16).last.is_empty());
    }

    /// SIGKILL at any moment, with saves only where `accept` asks for them (no checkpoint
    /// tick at all): what the restarted edge accepts again is at most `unsaved` genuine frames
    /// per device, whatever the rate and the jumps of the counter.
    #[test]
    fn a_killed_edge_accepts_again_at_most_the_unsaved_frames() {
        let dir = tempfile::tempdir().unwrap();
        for unsaved in [0u32, 1, 3, 16] {
            let path = dir.path().join(format!("c{unsaved}.json"));
            let mut s = CounterStore::load(Some(path.clone()), 16, unsaved);
            let mut delivered = Vec::new();
            let mut seq = 0u32;
            for step in 0..200u32 {
                // Mostly one by one, sometimes a jump (lost frames).
                seq += if step % 37 == 0 { 1 + step % 50 } else { 1 };
                if s.accept(7, seq) {
                    s.flush();
                }
                delivered.push(seq);
                // The kill, after this delivery: a fresh store from the file.
                let again = CounterStore::load(Some(path.clone()), 16, unsaved);
                let saved = again.get(7).unwrap_or(0);
                let replayable = delivered.iter().filter(|d| **d > saved).count();
                assert!(
                    replayable <= unsaved as usize,
                    "unsaved {unsaved}: {replayable} delivered frames above the saved {saved}"
                );
            }
        }
        // Memory only (tests): nothing to save, never asked.
        let mut m = CounterStore::load(None, 16, 0);
        assert!(!m.accept(1, 5));
    }
}
