//! An in-memory [`BlockStore`] for tests and ephemeral nodes.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use cid::Cid;

use super::BlockStore;
use crate::Result;

/// A [`BlockStore`] held in a `HashMap`; contents are lost on drop.
#[derive(Debug, Default)]
pub struct MemoryBlockStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    blocks: HashMap<Cid, Vec<u8>>,
    pins: BTreeSet<Cid>,
}

impl MemoryBlockStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Total bytes of block data held.
    pub fn total_bytes(&self) -> u64 {
        self.lock().blocks.values().map(|b| b.len() as u64).sum()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BlockStore for MemoryBlockStore {
    fn put_unchecked(&self, cid: &Cid, data: &[u8]) -> Result<()> {
        self.lock().blocks.insert(*cid, data.to_vec());
        Ok(())
    }

    fn get_unchecked(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().blocks.get(cid).cloned())
    }

    fn has(&self, cid: &Cid) -> Result<bool> {
        Ok(self.lock().blocks.contains_key(cid))
    }

    fn delete(&self, cid: &Cid) -> Result<()> {
        self.lock().blocks.remove(cid);
        Ok(())
    }

    fn list(&self) -> Result<Vec<Cid>> {
        Ok(self.lock().blocks.keys().copied().collect())
    }

    fn add_pin(&self, root: &Cid) -> Result<()> {
        self.lock().pins.insert(*root);
        Ok(())
    }

    fn remove_pin(&self, root: &Cid) -> Result<bool> {
        Ok(self.lock().pins.remove(root))
    }

    fn pins(&self) -> Result<Vec<Cid>> {
        Ok(self.lock().pins.iter().copied().collect())
    }
}
