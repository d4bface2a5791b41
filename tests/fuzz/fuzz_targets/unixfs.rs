//! The UnixFS exporter and leaf walk over fuzzer-built DAGs, honest or lying: an honest DAG
//! exports to exactly its content, and whatever a DAG claims, an export that succeeds yields
//! exactly the content its blocks hold.
#![no_main]

use agora_fuzz::unixfs::{NodeSpec, build};
use agora_storage::unixfs::{FileReader, export, file_leaves, leaf_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|specs: Vec<NodeSpec>| {
    let Some(dag) = build(&specs, 1 << 20) else {
        return;
    };
    let mut out = Vec::new();
    let exported = export(&dag.store, &dag.root, &mut out);
    if dag.honest {
        assert!(exported.is_ok(), "honest DAG refused: {exported:?}");
    }
    if let Ok(stats) = exported {
        assert_eq!(out, dag.content);
        assert_eq!(stats.bytes, dag.content.len() as u64);
        let mut reader = FileReader::new(&dag.store, &dag.root);
        let _ = reader.next_chunk();
        assert_eq!(reader.declared_size(), Some(dag.content.len() as u64));
        // The leaves, read one by one, are the file.
        let leaves = file_leaves(&dag.store, &dag.root).expect("leaves of an exportable file");
        let mut joined = Vec::new();
        for leaf in leaves {
            joined.extend(leaf_bytes(&dag.store, &leaf).expect("leaf bytes"));
        }
        // Inline data of inner nodes is not in any leaf; honest Kubo DAGs have none.
        assert!(joined.len() <= out.len());
    }
});
