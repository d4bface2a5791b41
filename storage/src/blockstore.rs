//! Block storage: the [`BlockStore`] trait with verified reads, recursive pins and GC, plus a
//! sled-backed store for nodes and an in-memory store for tests.

mod memory;
#[cfg(feature = "sled")]
mod sled_store;

use std::collections::HashSet;

use cid::Cid;

use crate::dagpb::PbNode;
use crate::hash::{DAG_CBOR, DAG_PB, verify_block};
use crate::{Result, StorageError};

pub use memory::MemoryBlockStore;
#[cfg(feature = "sled")]
pub use sled_store::{SledBlockStore, open_sled};

/// Largest block accepted or served, as in bitswap (2 MiB).
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Blocks deleted.
    pub removed_blocks: usize,
    /// Bytes deleted.
    pub removed_bytes: u64,
}

/// A content-addressed block store.
///
/// Implementors provide the raw primitives; the provided methods add hash verification on every
/// read (corrupted blocks are deleted and reported as [`StorageError::Corrupted`]), size limits,
/// recursive pinning and garbage collection.
pub trait BlockStore: Send + Sync {
    /// Stores `data` under `cid` without verifying it; the caller has just hashed it.
    fn put_unchecked(&self, cid: &Cid, data: &[u8]) -> Result<()>;
    /// Raw bytes stored under `cid`, unverified; `None` if absent.
    fn get_unchecked(&self, cid: &Cid) -> Result<Option<Vec<u8>>>;
    /// Whether a block is stored under `cid` (not verified).
    fn has(&self, cid: &Cid) -> Result<bool>;
    /// Removes the block under `cid`; absent blocks are not an error.
    fn delete(&self, cid: &Cid) -> Result<()>;
    /// Every stored block's CID.
    fn list(&self) -> Result<Vec<Cid>>;
    /// Records `root` as a recursive pin (no DAG check; use [`BlockStore::pin`]).
    fn add_pin(&self, root: &Cid) -> Result<()>;
    /// Removes the pin record for `root`; returns whether it was pinned.
    fn remove_pin(&self, root: &Cid) -> Result<bool>;
    /// Every recursively pinned root.
    fn pins(&self) -> Result<Vec<Cid>>;

    /// Verifies `data` against `cid` and the size limit, then stores it.
    fn put(&self, cid: &Cid, data: &[u8]) -> Result<()> {
        check_size(cid, data.len())?;
        verify_block(cid, data)?;
        self.put_unchecked(cid, data)
    }

    /// The verified block; a corrupted block is deleted and reported as `Corrupted`.
    fn get(&self, cid: &Cid) -> Result<Vec<u8>> {
        let data = self
            .get_unchecked(cid)?
            .ok_or(StorageError::NotFound { cid: *cid })?;
        match verify_block(cid, &data) {
            Ok(()) => Ok(data),
            Err(StorageError::HashMismatch { .. }) => {
                tracing::warn!(%cid, "stored block failed verification; deleting it");
                self.delete(cid)?;
                Err(StorageError::Corrupted { cid: *cid })
            }
            Err(e) => Err(e),
        }
    }

    /// Pins `root` recursively after checking every block of its DAG is present and valid.
    fn pin(&self, root: &Cid) -> Result<()> {
        walk_dag(self, root, &mut HashSet::new(), true)?;
        self.add_pin(root)
    }

    /// Removes a recursive pin; `NotFound` if `root` was not pinned.
    fn unpin(&self, root: &Cid) -> Result<()> {
        if self.remove_pin(root)? {
            Ok(())
        } else {
            Err(StorageError::NotFound { cid: *root })
        }
    }

    /// Deletes every block not reachable from a pin.
    fn gc(&self) -> Result<GcStats> {
        let mut live = HashSet::new();
        for root in self.pins()? {
            walk_dag(self, &root, &mut live, false)?;
        }
        let mut stats = GcStats::default();
        for cid in self.list()? {
            if !live.contains(&cid) {
                if let Some(data) = self.get_unchecked(&cid)? {
                    stats.removed_bytes += data.len() as u64;
                }
                self.delete(&cid)?;
                stats.removed_blocks += 1;
            }
        }
        tracing::debug!(
            removed = stats.removed_blocks,
            bytes = stats.removed_bytes,
            "gc done"
        );
        Ok(stats)
    }
}

/// Errors with `BlockTooLarge` when `size` exceeds [`MAX_BLOCK_SIZE`].
pub(crate) fn check_size(cid: &Cid, size: usize) -> Result<()> {
    if size > MAX_BLOCK_SIZE {
        return Err(StorageError::BlockTooLarge {
            cid: *cid,
            size,
            limit: MAX_BLOCK_SIZE,
        });
    }
    Ok(())
}

/// CIDs linked from a block: dag-pb links and dag-cbor tag-42 links; raw has none.
pub fn block_links(cid: &Cid, data: &[u8]) -> Result<Vec<Cid>> {
    match cid.codec() {
        DAG_PB => Ok(PbNode::decode(cid, data)?
            .links
            .into_iter()
            .map(|l| l.cid)
            .collect()),
        DAG_CBOR => crate::cbor::dag_cbor_links(data).map_err(|e| StorageError::Malformed {
            cid: *cid,
            reason: e.to_string(),
        }),
        _ => Ok(Vec::new()),
    }
}

/// Adds every block reachable from `root` to `seen`. With `strict`, a missing block is an error;
/// otherwise (GC) missing blocks are skipped so partial DAGs stay collectable.
fn walk_dag<S: BlockStore + ?Sized>(
    store: &S,
    root: &Cid,
    seen: &mut HashSet<Cid>,
    strict: bool,
) -> Result<()> {
    let mut stack = vec![*root];
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let data = match store.get(&cid) {
            Ok(data) => data,
            Err(StorageError::NotFound { .. } | StorageError::Corrupted { .. }) if !strict => {
                continue;
            }
            Err(e) => return Err(e),
        };
        stack.extend(block_links(&cid, &data)?);
    }
    Ok(())
}

#[cfg(all(test, feature = "sled"))]
mod tests;
