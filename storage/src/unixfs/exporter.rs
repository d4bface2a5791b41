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

/// A block of a file DAG, decoded.
enum Decoded {
    /// File bytes to emit.
    Bytes(Vec<u8>),
    /// Inline bytes (possibly empty) followed by children.
    Node {
        data: Vec<u8>,
        children: Vec<Cid>,
        filesize: Option<u64>,
    },
}

fn decode(cid: &Cid, block: Vec<u8>) -> Result<Decoded> {
    match cid.codec() {
        RAW => Ok(Decoded::Bytes(block)),
        DAG_PB => {
            let node = PbNode::decode(cid, &block)?;
            let raw = node.data.ok_or_else(|| StorageError::Malformed {
                cid: *cid,
                reason: "no UnixFS data".into(),
            })?;
            let fs = UnixFsData::decode(&raw).map_err(|e| StorageError::Malformed {
                cid: *cid,
                reason: e.to_string(),
            })?;
            if !matches!(fs.kind, DataType::File | DataType::Raw) {
                return Err(StorageError::Malformed {
                    cid: *cid,
                    reason: format!(
                        "UnixFS {:?} is not a file; directories are not supported yet",
                        fs.kind
                    ),
                });
            }
            Ok(Decoded::Node {
                data: fs.data.unwrap_or_default(),
                children: node.links.into_iter().map(|l| l.cid).collect(),
                filesize: fs.filesize,
            })
        }
        codec => Err(StorageError::UnsupportedCodec { cid: *cid, codec }),
    }
}

/// Pulls a file's bytes out of a store one block at a time, depth first, verifying each block.
///
/// Memory use is one block plus the pending links of the current path. A missing block returns
/// `NotFound` with its CID so the caller can fetch it and retry.
pub struct FileReader<'s, S: BlockStore + ?Sized> {
    store: &'s S,
    root: Cid,
    /// Children still to visit, reversed so `pop` yields the next one.
    stack: Vec<Cid>,
    expected: Option<u64>,
    stats: ExportStats,
}

impl<'s, S: BlockStore + ?Sized> FileReader<'s, S> {
    /// A reader for the file rooted at `root`.
    pub fn new(store: &'s S, root: &Cid) -> Self {
        FileReader {
            store,
            root: *root,
            stack: vec![*root],
            expected: None,
            stats: ExportStats::default(),
        }
    }

    /// The next run of file bytes (possibly empty), or `None` when the file is complete.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(cid) = self.stack.pop() else {
            return self.check_size().map(|()| None);
        };
        let block = self.store.get(&cid)?;
        self.stats.blocks += 1;
        let bytes = match decode(&cid, block)? {
            Decoded::Bytes(bytes) => bytes,
            Decoded::Node {
                data,
                children,
                filesize,
            } => {
                if cid == self.root {
                    self.expected = filesize;
                }
                self.stack.extend(children.into_iter().rev());
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
            Some(expected) if expected != self.stats.bytes => Err(StorageError::Malformed {
                cid: self.root,
                reason: format!(
                    "root says {expected} bytes but the DAG holds {}",
                    self.stats.bytes
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// Streams the file rooted at `root` into `writer`, verifying every block.
pub fn export<S: BlockStore + ?Sized, W: Write>(
    store: &S,
    root: &Cid,
    mut writer: W,
) -> Result<ExportStats> {
    let mut reader = FileReader::new(store, root);
    while let Some(bytes) = reader.next_chunk()? {
        writer.write_all(&bytes)?;
    }
    writer.flush()?;
    Ok(reader.stats())
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

/// The CIDs of the file's leaf blocks (its data chunks) in file order.
pub fn file_leaves<S: BlockStore + ?Sized>(store: &S, root: &Cid) -> Result<Vec<Cid>> {
    let mut leaves = Vec::new();
    let mut stack = vec![*root];
    while let Some(cid) = stack.pop() {
        if cid.codec() == RAW {
            leaves.push(cid);
            continue;
        }
        match decode(&cid, store.get(&cid)?)? {
            Decoded::Bytes(_) => leaves.push(cid),
            Decoded::Node { children, .. } if children.is_empty() => leaves.push(cid),
            Decoded::Node { children, .. } => stack.extend(children.into_iter().rev()),
        }
    }
    Ok(leaves)
}

/// The file bytes held in one leaf block (raw, or a dag-pb UnixFS leaf).
pub fn leaf_bytes<S: BlockStore + ?Sized>(store: &S, leaf: &Cid) -> Result<Vec<u8>> {
    match decode(leaf, store.get(leaf)?)? {
        Decoded::Bytes(bytes) => Ok(bytes),
        Decoded::Node { data, children, .. } if children.is_empty() => Ok(data),
        Decoded::Node { .. } => Err(StorageError::Malformed {
            cid: *leaf,
            reason: "expected a leaf block".into(),
        }),
    }
}
