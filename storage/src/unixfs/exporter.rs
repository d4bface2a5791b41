//! Reads a UnixFS file back out of a block store by walking its dag-pb DAG depth first.

use std::io::Write;

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

/// Streams the file rooted at `root` into `writer`, verifying every block.
///
/// Memory use is one block plus the pending links of the current path. A missing block returns
/// `NotFound` with its CID so the caller can fetch it and retry.
pub fn export<S: BlockStore + ?Sized, W: Write>(
    store: &S,
    root: &Cid,
    mut writer: W,
) -> Result<ExportStats> {
    let mut stats = ExportStats::default();
    let mut expected = None;
    // Stack of children still to visit, in reverse order so `pop` yields the next one.
    let mut stack = vec![*root];
    while let Some(cid) = stack.pop() {
        let block = store.get(&cid)?;
        stats.blocks += 1;
        match decode(&cid, block)? {
            Decoded::Bytes(bytes) => {
                writer.write_all(&bytes)?;
                stats.bytes += bytes.len() as u64;
            }
            Decoded::Node {
                data,
                children,
                filesize,
            } => {
                if cid == *root {
                    expected = filesize;
                }
                writer.write_all(&data)?;
                stats.bytes += data.len() as u64;
                stack.extend(children.into_iter().rev());
            }
        }
    }
    writer.flush()?;
    if let Some(expected) = expected
        && expected != stats.bytes
    {
        return Err(StorageError::Malformed {
            cid: *root,
            reason: format!(
                "root says {expected} bytes but the DAG holds {}",
                stats.bytes
            ),
        });
    }
    Ok(stats)
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
