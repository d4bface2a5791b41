//! Behaviour shared by every [`BlockStore`], run against both implementations.

use super::*;
use crate::hash::{RAW, cid_v0, cid_v1_blake3, cid_v1_sha256};
use crate::unixfs::{ImportOptions, file_leaves, import_file};

fn stores() -> Vec<(&'static str, Box<dyn BlockStore>)> {
    vec![
        ("memory", Box::new(MemoryBlockStore::new())),
        ("sled", Box::new(SledBlockStore::temporary().unwrap())),
    ]
}

#[test]
fn put_get_has_delete() {
    for (name, store) in stores() {
        let cid = cid_v1_blake3(RAW, b"reading");
        assert!(!store.has(&cid).unwrap(), "{name}");
        assert!(
            matches!(store.get(&cid), Err(StorageError::NotFound { cid: c }) if c == cid),
            "{name}"
        );
        store.put(&cid, b"reading").unwrap();
        assert!(store.has(&cid).unwrap());
        assert_eq!(store.get(&cid).unwrap(), b"reading");
        assert_eq!(store.list().unwrap(), vec![cid]);
        store.delete(&cid).unwrap();
        assert!(!store.has(&cid).unwrap(), "{name}");
    }
}

#[test]
fn put_rejects_wrong_bytes_and_oversized_blocks() {
    for (name, store) in stores() {
        let cid = cid_v1_sha256(RAW, b"a");
        assert!(
            matches!(
                store.put(&cid, b"b"),
                Err(StorageError::HashMismatch { .. })
            ),
            "{name}"
        );
        let big = vec![0u8; MAX_BLOCK_SIZE + 1];
        let big_cid = cid_v1_sha256(RAW, &big);
        assert!(
            matches!(
                store.put(&big_cid, &big),
                Err(StorageError::BlockTooLarge { .. })
            ),
            "{name}"
        );
        assert!(store.list().unwrap().is_empty(), "{name}");
    }
}

#[test]
fn corrupted_block_is_reported_and_removed() {
    for (name, store) in stores() {
        for cid in [cid_v0(b"x"), cid_v1_blake3(RAW, b"x")] {
            store.put_unchecked(&cid, b"bit rot").unwrap();
            assert!(
                matches!(store.get(&cid), Err(StorageError::Corrupted { cid: c }) if c == cid),
                "{name}"
            );
            assert!(
                !store.has(&cid).unwrap(),
                "{name}: corrupted block must not stay"
            );
            assert!(
                matches!(store.get(&cid), Err(StorageError::NotFound { .. })),
                "{name}"
            );
        }
    }
}

#[test]
fn pin_requires_complete_dag_and_gc_keeps_pinned() {
    for (name, store) in stores() {
        let kept = import_file(&*store, vec![1u8; 1000].as_slice(), small()).unwrap();
        let dropped = import_file(&*store, vec![2u8; 1000].as_slice(), small()).unwrap();
        store.pin(&kept).unwrap();
        assert_eq!(store.pins().unwrap(), vec![kept]);
        let stats = store.gc().unwrap();
        assert!(stats.removed_blocks > 0, "{name}");
        assert!(!store.has(&dropped).unwrap(), "{name}");
        let mut out = Vec::new();
        crate::unixfs::export(&*store, &kept, &mut out).unwrap();
        assert_eq!(out, vec![1u8; 1000], "{name}");

        // A DAG with a missing block cannot be pinned, and the error names the block.
        let partial = import_file(&*store, vec![3u8; 1000].as_slice(), small()).unwrap();
        let leaf = file_leaves(&*store, &partial).unwrap()[2];
        store.delete(&leaf).unwrap();
        assert!(
            matches!(store.pin(&partial), Err(StorageError::NotFound { cid }) if cid == leaf),
            "{name}"
        );

        store.unpin(&kept).unwrap();
        assert!(
            matches!(store.unpin(&kept), Err(StorageError::NotFound { .. })),
            "{name}"
        );
        store.gc().unwrap();
        assert!(store.list().unwrap().is_empty(), "{name}");
    }
}

fn small() -> ImportOptions {
    ImportOptions {
        chunk_size: 100,
        max_links: 4,
        ..ImportOptions::default()
    }
}

#[test]
fn sled_store_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cid = cid_v1_blake3(RAW, b"persist");
    {
        let store = SledBlockStore::open(dir.path()).unwrap();
        store.put(&cid, b"persist").unwrap();
        store.pin(&cid).unwrap();
        store.flush().unwrap();
    }
    let store = SledBlockStore::open(dir.path()).unwrap();
    assert_eq!(store.get(&cid).unwrap(), b"persist");
    assert_eq!(store.pins().unwrap(), vec![cid]);
}

#[test]
fn oversized_chunks_are_refused_at_import() {
    for version in [crate::CidVersion::V0, crate::CidVersion::V1] {
        let options = ImportOptions {
            cid_version: version,
            chunk_size: MAX_BLOCK_SIZE + 1,
            max_links: 174,
        };
        let data = vec![7u8; MAX_BLOCK_SIZE + 1];
        let store = MemoryBlockStore::new();
        assert!(matches!(
            import_file(&store, data.as_slice(), options),
            Err(StorageError::BlockTooLarge { .. })
        ));
    }
}

mod gc_props {
    use proptest::prelude::*;

    use super::*;
    use crate::unixfs::export;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// GC never removes a block reachable from a pin, and removes everything else.
        #[test]
        fn gc_keeps_exactly_the_pinned_dags(
            files in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..600), any::<bool>()), 1..6)
        ) {
            let store = MemoryBlockStore::new();
            let opts = ImportOptions { chunk_size: 50, max_links: 3, ..ImportOptions::default() };
            let mut roots = Vec::new();
            for (data, pinned) in &files {
                let root = import_file(&store, data.as_slice(), opts).unwrap();
                if *pinned {
                    store.pin(&root).unwrap();
                }
                roots.push(root);
            }
            store.gc().unwrap();
            let mut live = HashSet::new();
            for ((data, pinned), root) in files.iter().zip(&roots) {
                if *pinned {
                    let mut out = Vec::new();
                    export(&store, root, &mut out).unwrap();
                    prop_assert_eq!(&out, data);
                    walk_dag(&store, root, &mut live, true).unwrap();
                }
            }
            let stored: HashSet<Cid> = store.list().unwrap().into_iter().collect();
            prop_assert_eq!(stored, live);
        }
    }
}
