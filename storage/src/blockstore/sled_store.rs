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

impl SledBlockStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_db(sled::open(path)?)
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
