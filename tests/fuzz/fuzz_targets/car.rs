//! CAR files from disk, peers or Kubo: import, and export what was imported.
#![no_main]

use agora_storage::car::{decode_header, encode_header};
use agora_storage::{BlockStore, MemoryBlockStore, export_car, import_car};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(roots) = decode_header(data) {
        assert_eq!(
            decode_header(&encode_header(&roots)).expect("re-decodes"),
            roots
        );
    }
    let store = MemoryBlockStore::new();
    let Ok(imported) = import_car(&store, data) else {
        return;
    };
    let stored = store.list().expect("list");
    assert!(stored.len() as u64 <= imported.blocks);
    for cid in &stored {
        assert!(
            store.get(cid).is_ok(),
            "imported block {cid} does not verify"
        );
    }
    let mut car = Vec::new();
    if export_car(&store, &imported.roots, &mut car).is_ok() {
        let again = import_car(&MemoryBlockStore::new(), car.as_slice()).expect("re-imports");
        assert_eq!(again.roots, imported.roots);
    }
});
