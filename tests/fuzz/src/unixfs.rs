//! Builds UnixFS file DAGs from a fuzzer-chosen description, honest or lying, so the exporter's
//! consistency checks can be tested against an independent reference.

use agora_storage::dagpb::{PbLink, PbNode};
use agora_storage::hash::{DAG_PB, RAW, cid_v1_sha256};
use agora_storage::unixfs::{DataType, UnixFsData};
use agora_storage::{BlockStore, Cid, MemoryBlockStore};
use arbitrary::Arbitrary;

/// Most nodes in a described DAG.
pub const MAX_NODES: usize = 8;
/// Most links per node.
pub const MAX_CHILDREN: usize = 4;

/// One node of a described DAG; children name earlier nodes, so the description is acyclic.
#[derive(Arbitrary, Debug, Clone)]
pub struct NodeSpec {
    /// A raw leaf (when it has no children) rather than a dag-pb UnixFS node.
    pub raw: bool,
    /// Inline bytes.
    pub data: Vec<u8>,
    /// (index of an earlier node, blocksize to claim instead of the true one).
    pub children: Vec<(u8, Option<u64>)>,
    /// Filesize to write instead of the true one (`Some(None)`: omit it).
    pub filesize: Option<Option<u64>>,
    /// Write a different UnixFS type (`Some(code)`, taken modulo 6).
    pub kind: Option<u8>,
    /// Leave this block out of the store.
    pub missing: bool,
}

/// A stored DAG and what an honest exporter must make of it.
#[derive(Debug)]
pub struct BuiltDag {
    /// The store holding the blocks.
    pub store: MemoryBlockStore,
    /// The last node.
    pub root: Cid,
    /// The file bytes under the root (every node's data, then its children's, depth first).
    pub content: Vec<u8>,
    /// Whether every claim is true, every block present and every type a file.
    pub honest: bool,
    /// Depth of the deepest node with children, from the root.
    pub depth: u32,
}

struct Built {
    cid: Cid,
    content: Vec<u8>,
    honest: bool,
    depth: u32,
}

/// Stores the DAG described by `specs` (trimmed to the bounds above); `None` if it is empty or
/// its content would exceed `max_content` bytes.
pub fn build(specs: &[NodeSpec], max_content: usize) -> Option<BuiltDag> {
    let store = MemoryBlockStore::new();
    let mut built: Vec<Built> = Vec::new();
    for spec in specs.iter().take(MAX_NODES) {
        let children: Vec<(&Built, Option<u64>)> = spec
            .children
            .iter()
            .take(MAX_CHILDREN)
            .filter_map(|(i, claim)| {
                let i = usize::from(*i);
                (!built.is_empty()).then(|| (&built[i % built.len()], *claim))
            })
            .collect();
        let mut content = spec.data.clone();
        let mut honest = !spec.missing;
        let mut depth = 0;
        for (child, _) in &children {
            content.extend_from_slice(&child.content);
            honest &= child.honest;
            depth = depth.max(child.depth + 1);
            if content.len() > max_content {
                return None;
            }
        }
        let (cid, block) = if spec.raw && children.is_empty() {
            (cid_v1_sha256(RAW, &spec.data), spec.data.clone())
        } else {
            let sizes: Vec<u64> = children
                .iter()
                .map(|(child, claim)| claim.unwrap_or(child.content.len() as u64))
                .collect();
            for ((child, _), size) in children.iter().zip(&sizes) {
                honest &= *size == child.content.len() as u64 && *size > 0;
            }
            let filesize = match spec.filesize {
                None => Some(content.len() as u64),
                Some(claim) => claim,
            };
            honest &= filesize.is_none_or(|f| f == content.len() as u64);
            let kind = match spec.kind.map(|k| k % 6) {
                None | Some(2) => DataType::File,
                Some(0) => DataType::Raw,
                Some(1) => DataType::Directory,
                Some(3) => DataType::Metadata,
                Some(4) => DataType::Symlink,
                Some(_) => DataType::HamtShard,
            };
            honest &= matches!(kind, DataType::File | DataType::Raw);
            let fs = UnixFsData {
                kind,
                data: (!spec.data.is_empty()).then(|| spec.data.clone()),
                filesize,
                blocksizes: sizes.clone(),
            };
            let node = PbNode {
                links: children
                    .iter()
                    .zip(&sizes)
                    .map(|((child, _), size)| PbLink {
                        cid: child.cid,
                        name: Some(String::new()),
                        tsize: Some(*size),
                    })
                    .collect(),
                data: Some(fs.encode()),
            };
            let block = node.encode();
            (cid_v1_sha256(DAG_PB, &block), block)
        };
        honest &= block.len() <= agora_storage::MAX_BLOCK_SIZE;
        if block.len() <= agora_storage::MAX_BLOCK_SIZE && !spec.missing {
            store.put(&cid, &block).ok()?;
        }
        built.push(Built {
            cid,
            content,
            honest,
            depth,
        });
    }
    let root = built.pop()?;
    Some(BuiltDag {
        store,
        root: root.cid,
        content: root.content,
        honest: root.honest,
        depth: root.depth,
    })
}
