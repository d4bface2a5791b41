//! The ledger's persistent store in sled: a snapshot of the ledger state at the last applied
//! height, every decided block, and the consensus write-ahead log.

use std::path::{Path, PathBuf};

/// Errors of the ledger store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error(
        "ledger store at {path}: {source}; if another agora process uses this data dir, stop it"
    )]
    Sled {
        /// Store path.
        path: PathBuf,
        /// Cause.
        source: sled::Error,
    },
    /// Stored bytes are not what we wrote.
    #[error("ledger store at {0} is corrupt: {1}")]
    Corrupt(PathBuf, String),
}

/// sled trees of the ledger.
#[derive(Clone, Debug)]
pub struct LedgerStore {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    blocks: sled::Tree,
    wal: sled::Tree,
}

const SNAPSHOT_KEY: &[u8] = b"snapshot";
const HEIGHT_KEY: &[u8] = b"height";

impl LedgerStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<LedgerStore, StoreError> {
        let path = dir.to_path_buf();
        let err = |source| StoreError::Sled {
            path: path.clone(),
            source,
        };
        let db = agora_storage::blockstore::open_sled(dir).map_err(err)?;
        Ok(LedgerStore {
            meta: db.open_tree("meta").map_err(err)?,
            blocks: db.open_tree("blocks").map_err(err)?,
            wal: db.open_tree("consensus-wal").map_err(err)?,
            db,
            path,
        })
    }

    fn sled_err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// The last saved snapshot and its height.
    pub fn snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let snap = self.meta.get(SNAPSHOT_KEY).map_err(|e| self.sled_err(e))?;
        let height = self.meta.get(HEIGHT_KEY).map_err(|e| self.sled_err(e))?;
        match (snap, height) {
            (Some(s), Some(h)) => {
                let h: [u8; 8] = h.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt(self.path.clone(), "height is not 8 bytes".into())
                })?;
                Ok(Some((u64::from_be_bytes(h), s.to_vec())))
            }
            _ => Ok(None),
        }
    }

    /// Stores block `height` and, when given, the ledger snapshot after it, then flushes. The
    /// blocks after the last snapshot are replayed on restart.
    pub fn commit(
        &self,
        height: u64,
        block: &[u8],
        snapshot: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        if let Some(snapshot) = snapshot {
            let mut batch = sled::Batch::default();
            batch.insert(SNAPSHOT_KEY, snapshot);
            batch.insert(HEIGHT_KEY, &height.to_be_bytes());
            self.meta.apply_batch(batch).map_err(|e| self.sled_err(e))?;
        }
        self.blocks
            .insert(height.to_be_bytes(), block)
            .map_err(|e| self.sled_err(e))?;
        self.db.flush().map_err(|e| self.sled_err(e))?;
        Ok(())
    }

    /// Up to `max` stored blocks from `from` on, ascending.
    pub fn blocks_from(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.blocks.range(from.to_be_bytes()..).take(max) {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            let k: [u8; 8] = k.as_ref().try_into().map_err(|_| {
                StoreError::Corrupt(self.path.clone(), "block key is not 8 bytes".into())
            })?;
            out.push((u64::from_be_bytes(k), v.to_vec()));
        }
        Ok(out)
    }

    /// Appends a WAL entry for `height` and flushes (must be on disk before acting on it).
    pub fn wal_append(&self, height: u64, entry: &[u8]) -> Result<(), StoreError> {
        let seq = self.db.generate_id().map_err(|e| self.sled_err(e))?;
        let mut key = height.to_be_bytes().to_vec();
        key.extend_from_slice(&seq.to_be_bytes());
        self.wal.insert(key, entry).map_err(|e| self.sled_err(e))?;
        self.wal.flush().map_err(|e| self.sled_err(e))?;
        Ok(())
    }

    /// WAL entries of `height`, in order.
    pub fn wal_entries(&self, height: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.wal
            .scan_prefix(height.to_be_bytes())
            .map(|r| r.map(|(_, v)| v.to_vec()).map_err(|e| self.sled_err(e)))
            .collect()
    }

    /// Drops the WAL of every height up to `height`.
    pub fn wal_clear_through(&self, height: u64) -> Result<(), StoreError> {
        let end = (height.saturating_add(1)).to_be_bytes();
        let keys: Vec<_> = self
            .wal
            .range(..end.to_vec())
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| self.sled_err(e))?;
        for k in keys {
            self.wal.remove(k).map_err(|e| self.sled_err(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commit_survives_reopen_and_wal_is_per_height() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = LedgerStore::open(dir.path()).unwrap();
            assert!(s.snapshot().unwrap().is_none());
            s.commit(1, b"block1", Some(b"snap1")).unwrap();
            s.commit(2, b"block2", Some(b"snap2")).unwrap();
            s.commit(3, b"block3", None).unwrap();
            s.wal_append(3, b"a").unwrap();
            s.wal_append(3, b"b").unwrap();
            s.wal_append(4, b"c").unwrap();
        }
        let s = LedgerStore::open(dir.path()).unwrap();
        assert_eq!(s.snapshot().unwrap(), Some((2, b"snap2".to_vec())));
        let blocks = s.blocks_from(2, 10).unwrap();
        assert_eq!(
            blocks,
            vec![(2, b"block2".to_vec()), (3, b"block3".to_vec())],
            "a block without a snapshot is stored for replay"
        );
        assert_eq!(
            s.wal_entries(3).unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        s.wal_clear_through(3).unwrap();
        assert!(s.wal_entries(3).unwrap().is_empty());
        assert_eq!(s.wal_entries(4).unwrap(), vec![b"c".to_vec()]);
    }
}
