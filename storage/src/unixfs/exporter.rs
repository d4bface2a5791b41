//! Reads a UnixFS file back out of a block store by walking its dag-pb DAG depth first.

use std::io::Write;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use cid::Cid;

use super::data::{DataType, UnixFsData};
use crate::dagpb::PbNode;
use crate::hash::{DAG_PB, RAW};
use crate::{BlockStore, Result, StorageError};

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// File bytes written.
    pub bytes: u64,
    /// Blocks read.
    pub blocks: u64,
}

/// Deepest file DAG accepted. Kubo's balanced layout needs 4 levels for 240 TB; trickle DAGs
/// grow a few levels per doubling. Bounds the work a hostile DAG can cause per byte it claims.
pub const MAX_DAG_DEPTH: u32 = 64;

/// Most leaves [`file_leaves`] returns (2^20 Kubo chunks = 256 GiB). The list is held in memory,
/// and a small DAG whose nodes link the same child many times can claim any number of leaves.
pub const MAX_FILE_LEAVES: usize = 1 << 20;

/// A block of a file DAG, decoded.
enum Decoded {
    /// File bytes to emit.
    Bytes(Vec<u8>),
    /// Inline bytes (possibly empty) followed by children.
    Node {
        data: Vec<u8>,
        /// Each child with the file bytes its parent says it holds (`blocksizes`).
        children: Vec<(Cid, u64)>,
        /// File bytes under this node: inline data plus every child's.
        total: u64,
    },
}

impl Decoded {
    /// File bytes under this block.
    fn total(&self) -> u64 {
        match self {
            Decoded::Bytes(bytes) => bytes.len() as u64,
            Decoded::Node { total, .. } => *total,
        }
    }
}

fn malformed(cid: &Cid, reason: impl Into<String>) -> StorageError {
    StorageError::Malformed {
        cid: *cid,
        reason: reason.into(),
    }
}

/// Decodes one block of a file DAG and checks it is self-consistent: one `blocksizes` entry per
/// link, none zero, and `filesize` (when present) equal to the inline data plus the blocksizes.
/// With the parent's claim checked against each child (see [`Pending`]), the bytes a DAG yields
/// are exactly its root's size, however the DAG is shaped.
fn decode(cid: &Cid, block: Vec<u8>) -> Result<Decoded> {
    match cid.codec() {
        RAW => Ok(Decoded::Bytes(block)),
        DAG_PB => {
            let node = PbNode::decode(cid, &block)?;
            let raw = node.data.ok_or_else(|| malformed(cid, "no UnixFS data"))?;
            let fs = UnixFsData::decode(&raw).map_err(|e| malformed(cid, e.to_string()))?;
            if !matches!(fs.kind, DataType::File | DataType::Raw) {
                return Err(malformed(
                    cid,
                    format!(
                        "UnixFS {:?} is not a file; directories are not supported yet",
                        fs.kind
                    ),
                ));
            }
            if fs.blocksizes.len() != node.links.len() {
                return Err(malformed(
                    cid,
                    format!(
                        "{} links but {} blocksizes",
                        node.links.len(),
                        fs.blocksizes.len()
                    ),
                ));
            }
            if fs.blocksizes.contains(&0) {
                return Err(malformed(cid, "a link to an empty block (blocksize 0)"));
            }
            let data = fs.data.unwrap_or_default();
            let total = fs
                .blocksizes
                .iter()
                .try_fold(data.len() as u64, |acc, size| acc.checked_add(*size))
                .ok_or_else(|| malformed(cid, "blocksizes overflow u64"))?;
            if let Some(filesize) = fs.filesize
                && filesize != total
            {
                return Err(malformed(
                    cid,
                    format!(
                        "filesize {filesize} but the node holds {total} bytes (data + blocksizes)"
                    ),
                ));
            }
            Ok(Decoded::Node {
                data,
                children: node
                    .links
                    .into_iter()
                    .map(|l| l.cid)
                    .zip(fs.blocksizes)
                    .collect(),
                total,
            })
        }
        codec => Err(StorageError::UnsupportedCodec { cid: *cid, codec }),
    }
}

/// A block still to visit, with what its parent claimed about it.
#[derive(Debug, Clone, Copy)]
struct Pending {
    cid: Cid,
    /// File bytes the parent's `blocksizes` says this block holds (`None` for the root).
    size: Option<u64>,
    /// Distance from the root.
    depth: u32,
}

impl Pending {
    fn root(cid: Cid) -> Self {
        Pending {
            cid,
            size: None,
            depth: 0,
        }
    }

    /// Decodes the block and checks it against the parent's claim and the depth bound.
    fn decode(&self, block: Vec<u8>) -> Result<Decoded> {
        let decoded = decode(&self.cid, block)?;
        if let Some(size) = self.size
            && size != decoded.total()
        {
            return Err(malformed(
                &self.cid,
                format!(
                    "parent says {size} bytes but the block holds {}",
                    decoded.total()
                ),
            ));
        }
        if matches!(&decoded, Decoded::Node { children, .. } if !children.is_empty())
            && self.depth >= MAX_DAG_DEPTH
        {
            return Err(malformed(
                &self.cid,
                format!("file DAG deeper than {MAX_DAG_DEPTH} levels"),
            ));
        }
        Ok(decoded)
    }

    /// The children of a decoded node, reversed so `pop` yields them in file order.
    fn children(&self, children: Vec<(Cid, u64)>) -> impl Iterator<Item = Pending> {
        let depth = self.depth + 1;
        children.into_iter().rev().map(move |(cid, size)| Pending {
            cid,
            size: Some(size),
            depth,
        })
    }
}

/// Pulls a file's bytes out of a store one block at a time, depth first, verifying each block.
///
/// Memory use is one block plus the pending links of the current path. A missing block returns
/// `NotFound` with its CID so the caller can fetch it and retry. Every block is checked against
/// the size its parent claims for it, so the reader yields exactly the root's declared size
/// (check [`FileReader::declared_size`] against a budget before reading on: a small DAG that
/// links the same blocks many times can declare a huge file).
pub struct FileReader<'s, S: BlockStore + ?Sized> {
    store: &'s S,
    root: Cid,
    /// Blocks still to visit, reversed so `pop` yields the next one.
    stack: Vec<Pending>,
    expected: Option<u64>,
    stats: ExportStats,
}

impl<'s, S: BlockStore + ?Sized> FileReader<'s, S> {
    /// A reader for the file rooted at `root`.
    pub fn new(store: &'s S, root: &Cid) -> Self {
        FileReader {
            store,
            root: *root,
            stack: vec![Pending::root(*root)],
            expected: None,
            stats: ExportStats::default(),
        }
    }

    /// The file size the root declares, known after the first [`FileReader::next_chunk`].
    pub fn declared_size(&self) -> Option<u64> {
        self.expected
    }

    /// The next run of file bytes (possibly empty), or `None` when the file is complete.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(pending) = self.stack.pop() else {
            return self.check_size().map(|()| None);
        };
        let block = self.store.get(&pending.cid)?;
        self.stats.blocks += 1;
        let decoded = pending.decode(block)?;
        if pending.depth == 0 {
            self.expected = Some(decoded.total());
        }
        let bytes = match decoded {
            Decoded::Bytes(bytes) => bytes,
            Decoded::Node { data, children, .. } => {
                self.stack.extend(pending.children(children));
                data
            }
        };
        self.stats.bytes += bytes.len() as u64;
        Ok(Some(bytes))
    }

    /// Bytes and blocks read so far.
    pub fn stats(&self) -> ExportStats {
        self.stats
    }

    fn check_size(&self) -> Result<()> {
        match self.expected {
            Some(expected) if expected != self.stats.bytes => Err(malformed(
                &self.root,
                format!(
                    "root says {expected} bytes but the DAG holds {}",
                    self.stats.bytes
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Streams the file rooted at `root` into `writer`, verifying every block.
pub fn export<S: BlockStore + ?Sized, W: Write>(
    store: &S,
    root: &Cid,
    writer: W,
) -> Result<ExportStats> {
    export_within(store, root, writer, None)
}

/// [`export`] of a file whose root declares at most `limit` bytes: one declaring more is
/// refused ([`StorageError::FileTooLarge`]) before anything is written. A fetch bounded by
/// bytes received does not bound the export: a DAG of a few MiB whose links repeat one block
/// declares any size (THREATS R6).
pub fn export_within<S: BlockStore + ?Sized, W: Write>(
    store: &S,
    root: &Cid,
    mut writer: W,
    limit: Option<u64>,
) -> Result<ExportStats> {
    let mut reader = FileReader::new(store, root);
    let mut first = true;
    while let Some(bytes) = reader.next_chunk()? {
        if first {
            first = false;
            within(root, reader.declared_size(), limit)?;
        }
        writer.write_all(&bytes)?;
    }
    writer.flush()?;
    Ok(reader.stats())
}

/// The size the file rooted at `root` declares, read from its root block alone.
pub fn declared_size<S: BlockStore + ?Sized>(store: &S, root: &Cid) -> Result<u64> {
    let mut reader = FileReader::new(store, root);
    reader.next_chunk()?;
    Ok(reader.declared_size().unwrap_or(0))
}

fn within(root: &Cid, declared: Option<u64>, limit: Option<u64>) -> Result<()> {
    match (declared, limit) {
        (Some(declared), Some(limit)) if declared > limit => Err(StorageError::FileTooLarge {
            cid: *root,
            declared,
            limit,
        }),
        _ => Ok(()),
    }
}

/// Like [`export`] for an async writer (block reads stay synchronous).
pub async fn export_async<S: BlockStore + ?Sized, W: AsyncWrite + Unpin>(
    store: &S,
    root: &Cid,
    mut writer: W,
) -> Result<ExportStats> {
    let mut reader = FileReader::new(store, root);
    while let Some(bytes) = reader.next_chunk()? {
        writer.write_all(&bytes).await?;
    }
    writer.flush().await?;
    Ok(reader.stats())
}

/// The CIDs of the file's leaf blocks (its data chunks) in file order; at most
/// [`MAX_FILE_LEAVES`], every block checked as [`FileReader`] checks it.
pub fn file_leaves<S: BlockStore + ?Sized>(store: &S, root: &Cid) -> Result<Vec<Cid>> {
    file_leaves_within(store, root, MAX_FILE_LEAVES)
}

/// [`file_leaves`] with at most `max_leaves` leaves.
pub fn file_leaves_within<S: BlockStore + ?Sized>(
    store: &S,
    root: &Cid,
    max_leaves: usize,
) -> Result<Vec<Cid>> {
    let mut leaves = Vec::new();
    let mut stack = vec![Pending::root(*root)];
    while let Some(pending) = stack.pop() {
        let leaf = if pending.cid.codec() == RAW && pending.depth > 0 {
            // A raw leaf's size is its length: check it without reading the block here.
            true
        } else {
            match pending.decode(store.get(&pending.cid)?)? {
                Decoded::Bytes(_) => true,
                Decoded::Node { children, .. } if children.is_empty() => true,
                Decoded::Node { children, .. } => {
                    stack.extend(pending.children(children));
                    false
                }
            }
        };
        if leaf {
            if leaves.len() >= max_leaves {
                return Err(malformed(
                    root,
                    format!("file has over {max_leaves} chunks; it is too large to prove"),
                ));
            }
            leaves.push(pending.cid);
        }
    }
    Ok(leaves)
}

/// The file bytes held in one leaf block (raw, or a dag-pb UnixFS leaf).
pub fn leaf_bytes<S: BlockStore + ?Sized>(store: &S, leaf: &Cid) -> Result<Vec<u8>> {
    match decode(leaf, store.get(leaf)?)? {
        Decoded::Bytes(bytes) => Ok(bytes),
        Decoded::Node { data, children, .. } if children.is_empty() => Ok(data),
        Decoded::Node { .. } => Err(malformed(leaf, "expected a leaf block")),
    }
}
