//! Who holds each pin. A store's pin is one flag per root, but several parts of a node may need
//! the same root at once: a contract's service (`service:<id>`), a storage contract's custody
//! (`custody:<contract>`), the arbitrator's probe cache (`probe`), a fleet's early fetch
//! (`prefetch:<deployment>`). Each takes a hold; the root is unpinned when the last holder lets
//! go, unless it is **kept**: pinned before any holder took it (a publish, an `agora storage
//! add` or `pin`) or pinned by the operator while held. Without this, every contract a node
//! ever provided for or judged left its image (up to 64 MiB) pinned for good: disk a stranger
//! could make a node hold by buying contracts (THREATS C4).
//!
//! Holders live as long as the process: the services, custody, cache and early fetches they
//! stand for are rebuilt after a restart, and take their holds again. The table is written to
//! `<data-dir>/pin-holds.json` so a restarted node knows which pins were only held: at start,
//! every holder is dropped and roots neither kept nor held are unpinned
//! ([`HoldTable::restart`]); the blocks go at the next `agora storage gc`.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use agora_storage::Cid;
use serde::{Deserialize, Serialize};

/// The file the table is kept in, under the data directory.
pub const HOLDS_FILE: &str = "pin-holds.json";
/// Roots the table tracks at most; a hold beyond is refused (the holders are bounded by the
/// node's own services, contracts, cache and fleet limits, far below).
pub const MAX_HELD_ROOTS: usize = 16_384;
/// Holders of one root at most.
pub const MAX_HOLDERS_PER_ROOT: usize = 256;
/// Longest holder name.
pub const MAX_HOLDER_LEN: usize = 160;

/// One root's holders.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    /// Who holds it now.
    pub holders: BTreeSet<String>,
    /// Pinned for its own sake (before any holder, or by the operator): it stays pinned when
    /// the holders let go.
    pub kept: bool,
}

/// What letting go of a root did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Released {
    /// The last holder let go of a root nobody keeps: unpin it.
    Unpin,
    /// Others still hold it.
    StillHeld(Vec<String>),
    /// The last holder let go; the root is kept pinned.
    Kept,
    /// This holder did not hold it.
    NotHeld,
}

/// A refused hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    /// The table is full.
    #[error("this node tracks {MAX_HELD_ROOTS} held roots already; release some first")]
    Full,
    /// The root has too many holders.
    #[error("root {0} has {MAX_HOLDERS_PER_ROOT} holders already")]
    TooManyHolders(Cid),
    /// A holder name that is empty or too long.
    #[error("holder name must be 1..={MAX_HOLDER_LEN} bytes, got {0}")]
    BadHolder(usize),
}

/// The roots held, by CID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HoldTable {
    records: BTreeMap<Cid, HoldRecord>,
}

impl HoldTable {
    /// `holder` takes `root`; `pinned_now` says whether the store pins it already (asked only
    /// when nobody holds it yet: a root pinned before any holder is kept). `Ok(true)` when the
    /// holder is new.
    pub fn take(
        &mut self,
        root: Cid,
        holder: &str,
        pinned_now: impl FnOnce() -> bool,
    ) -> Result<bool, HoldError> {
        if holder.is_empty() || holder.len() > MAX_HOLDER_LEN {
            return Err(HoldError::BadHolder(holder.len()));
        }
        let tracked = self.records.len();
        let rec = match self.records.entry(root) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if tracked >= MAX_HELD_ROOTS => return Err(HoldError::Full),
            Entry::Vacant(e) => e.insert(HoldRecord {
                holders: BTreeSet::new(),
                kept: pinned_now(),
            }),
        };
        if rec.holders.contains(holder) {
            return Ok(false);
        }
        if rec.holders.len() >= MAX_HOLDERS_PER_ROOT {
            return Err(HoldError::TooManyHolders(root));
        }
        rec.holders.insert(holder.to_string());
        Ok(true)
    }

    /// `holder` lets go of `root`.
    pub fn release(&mut self, root: &Cid, holder: &str) -> Released {
        let Some(rec) = self.records.get_mut(root) else {
            return Released::NotHeld;
        };
        if !rec.holders.remove(holder) {
            return Released::NotHeld;
        }
        if !rec.holders.is_empty() {
            return Released::StillHeld(rec.holders.iter().cloned().collect());
        }
        let kept = rec.kept;
        self.records.remove(root);
        if kept {
            Released::Kept
        } else {
            Released::Unpin
        }
    }

    /// The operator pins `root`: if held, it is kept once the holders let go (a root nobody
    /// holds is the store's plain pin, not tracked here).
    pub fn keep(&mut self, root: &Cid) {
        if let Some(rec) = self.records.get_mut(root) {
            rec.kept = true;
        }
    }

    /// The operator unpins `root`: it is no longer kept. `Err(holders)` while others hold it
    /// (it is unpinned when they let go); `Ok(())` when nobody does (unpin it now).
    pub fn unkeep(&mut self, root: &Cid) -> Result<(), Vec<String>> {
        match self.records.get_mut(root) {
            None => Ok(()),
            Some(rec) => {
                rec.kept = false;
                if rec.holders.is_empty() {
                    self.records.remove(root);
                    Ok(())
                } else {
                    Err(rec.holders.iter().cloned().collect())
                }
            }
        }
    }

    /// Whether anyone holds `root`.
    pub fn is_held(&self, root: &Cid) -> bool {
        self.records
            .get(root)
            .is_some_and(|r| !r.holders.is_empty())
    }

    /// Whether a holder whose name starts with `prefix` holds `root`.
    pub fn held_by_a(&self, root: &Cid, prefix: &str) -> bool {
        self.records
            .get(root)
            .is_some_and(|r| r.holders.iter().any(|h| h.starts_with(prefix)))
    }

    /// Holders of each held root.
    pub fn holders(&self) -> BTreeMap<String, Vec<String>> {
        self.records
            .iter()
            .filter(|(_, r)| !r.holders.is_empty())
            .map(|(c, r)| (c.to_string(), r.holders.iter().cloned().collect()))
            .collect()
    }

    /// The process started again: every holder is gone (each takes its hold again as it comes
    /// back). Returns the roots to unpin: those no one keeps. Kept roots leave the table (the
    /// store's plain pin).
    pub fn restart(&mut self) -> Vec<Cid> {
        let unpin = self
            .records
            .iter()
            .filter(|(_, r)| !r.kept)
            .map(|(c, _)| *c)
            .collect();
        self.records.clear();
        unpin
    }

    /// How many roots are tracked.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no root is tracked.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Reads the table from `path` (a missing file is an empty table; an unreadable one is
    /// an error: its pins would be kept for good, so the operator should know).
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e),
        };
        let file: HoldsFile = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
        let mut records = BTreeMap::new();
        for (cid, rec) in file.roots.into_iter().take(MAX_HELD_ROOTS) {
            let cid: Cid = cid.parse().map_err(|e| {
                std::io::Error::other(format!("{}: bad root {cid}: {e}", path.display()))
            })?;
            records.insert(cid, rec);
        }
        Ok(HoldTable { records })
    }

    /// Writes the table to `path` through a renamed temporary file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let file = HoldsFile {
            roots: self
                .records
                .iter()
                .map(|(c, r)| (c.to_string(), r.clone()))
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }
}

#[derive(Serialize, Deserialize)]
struct HoldsFile {
    roots: BTreeMap<String, HoldRecord>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cid(n: u8) -> Cid {
        agora_storage::hash::cid_v1_sha256(agora_storage::hash::RAW, &[n])
    }

    #[test]
    fn the_last_holder_unpins_a_root_nobody_keeps() {
        let mut t = HoldTable::default();
        assert_eq!(t.take(cid(1), "service:a", || false), Ok(true));
        assert_eq!(t.take(cid(1), "probe", || unreachable!()), Ok(true));
        assert_eq!(t.take(cid(1), "probe", || unreachable!()), Ok(false));
        assert_eq!(
            t.release(&cid(1), "service:a"),
            Released::StillHeld(vec!["probe".into()])
        );
        assert_eq!(t.release(&cid(1), "service:a"), Released::NotHeld);
        assert_eq!(t.release(&cid(1), "probe"), Released::Unpin);
        assert!(t.is_empty());
        assert_eq!(t.release(&cid(1), "probe"), Released::NotHeld);
    }

    #[test]
    fn a_root_pinned_before_any_holder_or_by_the_operator_is_kept() {
        let mut t = HoldTable::default();
        // Published here first, then a contract's service held it.
        t.take(cid(1), "service:a", || true).unwrap();
        assert_eq!(t.release(&cid(1), "service:a"), Released::Kept);
        // Held first, then the operator pinned it.
        t.take(cid(2), "service:b", || false).unwrap();
        t.keep(&cid(2));
        assert_eq!(t.release(&cid(2), "service:b"), Released::Kept);
        // The operator unpins a held root: it goes when the holder lets go.
        t.take(cid(3), "service:c", || true).unwrap();
        assert_eq!(t.unkeep(&cid(3)), Err(vec!["service:c".to_string()]));
        assert_eq!(t.release(&cid(3), "service:c"), Released::Unpin);
        assert_eq!(t.unkeep(&cid(4)), Ok(()));
    }

    #[test]
    fn a_restart_drops_every_holder_and_unpins_what_was_only_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HOLDS_FILE);
        let mut t = HoldTable::default();
        t.take(cid(1), "service:a", || false).unwrap();
        t.take(cid(2), "custody:c", || true).unwrap();
        t.take(cid(3), "probe", || false).unwrap();
        t.keep(&cid(3));
        t.save(&path).unwrap();
        let mut back = HoldTable::load(&path).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.restart(), vec![cid(1)]);
        assert!(back.is_empty());
        assert!(
            HoldTable::load(&dir.path().join("none.json"))
                .unwrap()
                .is_empty()
        );
        std::fs::write(&path, b"{not json").unwrap();
        assert!(HoldTable::load(&path).is_err());
    }

    #[test]
    fn the_table_and_each_root_are_bounded() {
        let mut t = HoldTable::default();
        assert_eq!(t.take(cid(1), "", || false), Err(HoldError::BadHolder(0)));
        let long = "x".repeat(MAX_HOLDER_LEN + 1);
        assert!(matches!(
            t.take(cid(1), &long, || false),
            Err(HoldError::BadHolder(_))
        ));
        for i in 0..MAX_HOLDERS_PER_ROOT {
            t.take(cid(1), &format!("service:{i}"), || false).unwrap();
        }
        assert_eq!(
            t.take(cid(1), "one-more", || false),
            Err(HoldError::TooManyHolders(cid(1)))
        );
        let mut t = HoldTable::default();
        for i in 0..MAX_HELD_ROOTS {
            let root =
                agora_storage::hash::cid_v1_sha256(agora_storage::hash::RAW, &i.to_le_bytes());
            t.take(root, "probe", || false).unwrap();
        }
        assert_eq!(t.take(cid(1), "probe", || false), Err(HoldError::Full));
        assert_eq!(t.len(), MAX_HELD_ROOTS);
    }
}
