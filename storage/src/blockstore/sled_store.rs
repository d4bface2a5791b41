//! A [`BlockStore`] on sled: one tree for blocks (key = CID bytes), one for recursive pins.

use std::path::Path;

use cid::Cid;

use super::BlockStore;
use crate::{Result, StorageError};

/// A persistent [`BlockStore`] backed by a sled database.
#[derive(Debug, Clone)]
pub struct SledBlockStore {
    db: sled::Db,
    blocks: sled::Tree,
    pins: sled::Tree,
}

/// How long [`open_sled`] waits for a database that was just closed to release its lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `sled::open`, waiting up to two seconds while another handle's file lock is still held.
/// Dropping the last handle of a sled database does not release its lock at once (sled's
/// background writer threads still hold it for a moment), so reopening a store right after
/// closing it in the same process (a restarted in-process node, a reopen in a test) could fail
/// with "could not acquire lock". Any other error, or a lock still held after the wait, is
/// returned as before.
pub fn open_sled(path: impl AsRef<Path>) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::open(path.as_ref()) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl SledBlockStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_db(open_sled(path)?)
    }

    /// A store on a temporary sled database that is deleted on drop.
    pub fn temporary() -> Result<Self> {
        Self::from_db(sled::Config::new().temporary(true).open()?)
    }

    /// Uses an already-open sled database (trees `blocks` and `pins`).
    pub fn from_db(db: sled::Db) -> Result<Self> {
        let blocks = db.open_tree("blocks")?;
        let pins = db.open_tree("pins")?;
        Ok(SledBlockStore { db, blocks, pins })
    }

    /// Flushes dirty pages to disk; returns bytes flushed.
    pub fn flush(&self) -> Result<usize> {
        Ok(self.db.flush()?)
    }
}

fn parse_key(key: &[u8]) -> Result<Cid> {
    Cid::try_from(key).map_err(|e| StorageError::decode("blockstore key", e.to_string()))
}

impl BlockStore for SledBlockStore {
    fn put_unchecked(&self, cid: &Cid, data: &[u8]) -> Result<()> {
        self.blocks.insert(cid.to_bytes(), data)?;
        Ok(())
    }

    fn get_unchecked(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        Ok(self.blocks.get(cid.to_bytes())?.map(|v| v.to_vec()))
    }

    fn has(&self, cid: &Cid) -> Result<bool> {
        Ok(self.blocks.contains_key(cid.to_bytes())?)
    }

    fn delete(&self, cid: &Cid) -> Result<()> {
        self.blocks.remove(cid.to_bytes())?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<Cid>> {
        self.blocks.iter().keys().map(|k| parse_key(&k?)).collect()
    }

    fn add_pin(&self, root: &Cid) -> Result<()> {
        self.pins.insert(root.to_bytes(), &[])?;
        Ok(())
    }

    fn remove_pin(&self, root: &Cid) -> Result<bool> {
        Ok(self.pins.remove(root.to_bytes())?.is_some())
    }

    fn pins(&self) -> Result<Vec<Cid>> {
        self.pins.iter().keys().map(|k| parse_key(&k?)).collect()
    }
}
