//! Streaming balanced-DAG builder matching Kubo's `balanced.Layout`.
//!
//! Kubo grows the tree at the root: a full node of `max_links` children at depth d becomes the
//! first child of a new depth d+1 root. Building bottom-up with one pending list per level and
//! flushing a level only when a further child must be added gives the same tree while holding at
//! most `max_links` links per level in memory.

use cid::Cid;

use super::data::{DataType, UnixFsData};
use super::{CidVersion, ImportOptions};
use crate::dagpb::{PbLink, PbNode};
use crate::hash::{DAG_PB, RAW, cid_v0, cid_v1_sha256};
use crate::{BlockStore, Result, StorageError};

/// A finished child subtree.
#[derive(Debug, Clone, Copy)]
struct Child {
    cid: Cid,
    /// Cumulative encoded size of the subtree (dag-pb Tsize).
    tsize: u64,
    /// File bytes in the subtree (UnixFS blocksize).
    filesize: u64,
}

/// Builds one UnixFS file from chunks pushed in order; writes blocks to the store as it goes.
pub struct FileBuilder<'s, S: BlockStore + ?Sized> {
    store: &'s S,
    options: ImportOptions,
    /// `levels[0]` holds leaves, `levels[i]` nodes of depth i.
    levels: Vec<Vec<Child>>,
    chunks: u64,
}

impl<'s, S: BlockStore + ?Sized> FileBuilder<'s, S> {
    /// A builder writing into `store`.
    pub fn new(store: &'s S, options: ImportOptions) -> Result<Self> {
        if options.max_links < 2 || options.chunk_size == 0 {
            return Err(StorageError::decode(
                "import options",
                "max_links must be >= 2 and chunk_size > 0",
            ));
        }
        Ok(FileBuilder {
            store,
            options,
            levels: vec![Vec::new()],
            chunks: 0,
        })
    }

    /// Adds the next chunk of file data.
    pub fn push_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        let leaf = self.leaf(chunk)?;
        self.push(0, leaf)?;
        self.chunks += 1;
        Ok(())
    }

    /// Completes the DAG and returns the root CID.
    pub fn finish(mut self) -> Result<Cid> {
        if self.chunks == 0 {
            // Kubo: an empty file is a single empty leaf.
            return Ok(self.leaf(&[])?.cid);
        }
        if self.chunks == 1 {
            return self.levels[0]
                .first()
                .map(|c| c.cid)
                .ok_or_else(|| StorageError::decode("import", "lost leaf"));
        }
        // Close each level bottom-up; `push` may still flush a full parent (growing the tree).
        let mut level = 0;
        while level + 1 < self.levels.len() {
            let children = std::mem::take(&mut self.levels[level]);
            let node = self.internal(&children)?;
            self.push(level + 1, node)?;
            level += 1;
        }
        let children = std::mem::take(&mut self.levels[level]);
        Ok(self.internal(&children)?.cid)
    }

    /// Pushes `child` into `level`, first flushing that level upward if it is full.
    fn push(&mut self, level: usize, child: Child) -> Result<()> {
        if self.levels[level].len() == self.options.max_links {
            let children = std::mem::take(&mut self.levels[level]);
            let node = self.internal(&children)?;
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.push(level + 1, node)?;
        }
        self.levels[level].push(child);
        Ok(())
    }

    fn leaf(&self, chunk: &[u8]) -> Result<Child> {
        let len = chunk.len() as u64;
        match self.options.cid_version {
            CidVersion::V1 => {
                let cid = cid_v1_sha256(RAW, chunk);
                crate::blockstore::check_size(&cid, chunk.len())?;
                self.store.put_unchecked(&cid, chunk)?;
                Ok(Child {
                    cid,
                    tsize: len,
                    filesize: len,
                })
            }
            CidVersion::V0 => {
                let block = encode_leaf(chunk);
                let cid = cid_v0(&block);
                crate::blockstore::check_size(&cid, block.len())?;
                self.store.put_unchecked(&cid, &block)?;
                Ok(Child {
                    cid,
                    tsize: block.len() as u64,
                    filesize: len,
                })
            }
        }
    }

    fn internal(&self, children: &[Child]) -> Result<Child> {
        let filesize: u64 = children.iter().map(|c| c.filesize).sum();
        let data = UnixFsData {
            kind: DataType::File,
            data: None,
            filesize: Some(filesize),
            blocksizes: children.iter().map(|c| c.filesize).collect(),
        };
        let links = children
            .iter()
            .map(|c| PbLink {
                cid: c.cid,
                name: Some(String::new()),
                tsize: Some(c.tsize),
            })
            .collect();
        let block = PbNode {
            links,
            data: Some(data.encode()),
        }
        .encode();
        let cid = match self.options.cid_version {
            CidVersion::V0 => cid_v0(&block),
            CidVersion::V1 => cid_v1_sha256(DAG_PB, &block),
        };
        crate::blockstore::check_size(&cid, block.len())?;
        self.store.put_unchecked(&cid, &block)?;
        let tsize = block.len() as u64 + children.iter().map(|c| c.tsize).sum::<u64>();
        Ok(Child {
            cid,
            tsize,
            filesize,
        })
    }
}

/// The dag-pb UnixFS leaf for `chunk` in one allocation (same bytes as building a `UnixFsData`
/// and a `PbNode`, which copies the chunk three times).
fn encode_leaf(chunk: &[u8]) -> Vec<u8> {
    use crate::protobuf::{put_bytes, put_uint, put_varint, varint_len};
    let len = chunk.len() as u64;
    // Kubo leaves Data unset for the empty file, set otherwise.
    let data_field = if chunk.is_empty() {
        0
    } else {
        1 + varint_len(len) + chunk.len()
    };
    let inner = 2 + data_field + 1 + varint_len(len);
    let mut block = Vec::with_capacity(1 + varint_len(inner as u64) + inner);
    block.push(0x0a);
    put_varint(&mut block, inner as u64);
    put_uint(&mut block, 1, 2);
    if !chunk.is_empty() {
        put_bytes(&mut block, 2, chunk);
    }
    put_uint(&mut block, 3, len);
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_leaf_encoding_matches_generic_encoding() {
        for len in [0usize, 1, 12, 127, 128, 300, 262_144] {
            let chunk: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let data = UnixFsData {
                kind: DataType::File,
                data: (!chunk.is_empty()).then(|| chunk.clone()),
                filesize: Some(len as u64),
                blocksizes: Vec::new(),
            };
            let generic = PbNode {
                links: Vec::new(),
                data: Some(data.encode()),
            }
            .encode();
            assert_eq!(encode_leaf(&chunk), generic, "len {len}");
        }
    }
}
