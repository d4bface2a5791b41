use super::*;
use crate::MemoryBlockStore;
use crate::hash::cid_v0;
use crate::unixfs::{ImportOptions, export, import_file};

#[test]
fn header_is_dag_cbor_with_tag42_roots() {
    let root = cid_v0(b"x");
    let header = encode_header(&[root]);
    let mut expected = vec![0xa2, 0x65];
    expected.extend_from_slice(b"roots");
    expected.extend_from_slice(&[0x81, 0xd8, 0x2a, 0x58, 35, 0x00]);
    expected.extend_from_slice(&root.to_bytes());
    expected.push(0x67);
    expected.extend_from_slice(b"version");
    expected.push(0x01);
    assert_eq!(header, expected);
    assert_eq!(decode_header(&header).unwrap(), vec![root]);
}

#[test]
fn export_import_round_trip_verifies_blocks() {
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    let options = ImportOptions {
        chunk_size: 300,
        max_links: 4,
        ..ImportOptions::default()
    };
    let src = MemoryBlockStore::new();
    let root = import_file(&src, data.as_slice(), options).unwrap();
    let mut car = Vec::new();
    let blocks = export_car(&src, &[root], &mut car).unwrap();
    assert_eq!(blocks as usize, src.list().unwrap().len());

    let dst = MemoryBlockStore::new();
    let imported = import_car(&dst, car.as_slice()).unwrap();
    assert_eq!(
        imported,
        CarImport {
            roots: vec![root],
            blocks
        }
    );
    let mut out = Vec::new();
    export(&dst, &root, &mut out).unwrap();
    assert_eq!(out, data);

    // Flip a byte in the last block: import must refuse it.
    let last = car.len() - 1;
    car[last] ^= 0xff;
    assert!(matches!(
        import_car(&MemoryBlockStore::new(), car.as_slice()),
        Err(StorageError::HashMismatch { .. })
    ));
}

#[test]
fn truncated_or_bogus_input_is_an_error() {
    let root = crate::hash::cid_v1_sha256(crate::hash::RAW, b"z");
    let store = MemoryBlockStore::new();
    store.put(&root, b"z").unwrap();
    let mut car = Vec::new();
    export_car(&store, &[root], &mut car).unwrap();
    let header_end = 1 + encode_header(&[root]).len();
    for cut in (1..car.len()).filter(|c| *c != header_end) {
        assert!(
            import_car(&MemoryBlockStore::new(), &car[..cut]).is_err(),
            "cut {cut}"
        );
    }
    assert!(
        import_car(
            &MemoryBlockStore::new(),
            &[0x05, 0xa1, 0x00, 0x00, 0x00, 0x00][..]
        )
        .is_err()
    );
    assert!(import_car(&MemoryBlockStore::new(), &[][..]).is_err());
}
