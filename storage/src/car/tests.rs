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

/// Hostile CARs: lengths far past the limits are refused before anything is allocated.
#[test]
fn huge_length_prefixes_are_refused_before_allocating() {
    let store = MemoryBlockStore::new();
    let mut ten_gb = Vec::new();
    put_varint(&mut ten_gb, 10_000_000_000);
    assert!(matches!(
        import_car(&store, ten_gb.as_slice()),
        Err(StorageError::Decode { .. })
    ));

    let header = encode_header(&[cid_v0(b"r")]);
    let mut car = Vec::new();
    put_varint(&mut car, header.len() as u64);
    car.extend_from_slice(&header);
    for len in [
        10_000_000_000u64,
        u64::MAX,
        (crate::MAX_BLOCK_SIZE + 129) as u64,
    ] {
        let mut hostile = car.clone();
        put_varint(&mut hostile, len);
        hostile.extend_from_slice(&[0u8; 64]);
        assert!(
            matches!(
                import_car(&store, hostile.as_slice()),
                Err(StorageError::Decode { .. })
            ),
            "section length {len}"
        );
    }
    // A zero-length section, a truncated section length and an 11-byte varint.
    for tail in [&[0x00][..], &[0x80][..], &[0xff; 11][..]] {
        let mut hostile = car.clone();
        hostile.extend_from_slice(tail);
        assert!(import_car(&store, hostile.as_slice()).is_err(), "{tail:?}");
    }
    assert_eq!(store.list().unwrap().len(), 0);

    // A header whose roots array claims 2^64-1 entries, and one whose map does.
    for claim in [
        &[0xa1, 0x65, b'r', b'o', b'o', b't', b's', 0x9b][..],
        &[0xbb][..],
    ] {
        let mut h = claim.to_vec();
        h.extend_from_slice(&[0xff; 8]);
        assert!(decode_header(&h).is_err());
    }
}

/// A CAR written by go-car (the library behind `ipfs dag export`), from the js `@ipld/car`
/// test fixtures (`goCarBytes`): two dag-cbor roots and a mix of raw, dag-pb and dag-cbor blocks.
const GO_CAR_HEX: &str = concat!(
    "63a265726f6f747382d82a58250001711220f88bc853804cf294fe417e4fa83028689fcdb1b1592c5102e1474dbc200fab8b",
    "d82a5825000171122069ea0740f9807a28f4d932c62e7c1c83be055e55072c90266ab3e79df63a365b6776657273696f6e01",
    "5b01711220f88bc853804cf294fe417e4fa83028689fcdb1b1592c5102e1474dbc200fab8ba2646c696e6bd82a5823001220",
    "02acecc5de2438ea4126a3010ecb1f8a599c8eff22fff1a1dcffe999b27fd3de646e616d6564626c69708301122002acecc5",
    "de2438ea4126a3010ecb1f8a599c8eff22fff1a1dcffe999b27fd3de122e0a2401551220b6fbd675f98e2abd22d4ed29fdc8",
    "3150fedc48597e92dd1a7a24381d44a274511204626561721804122f0a22122079a982de3c9907953d4d323cee1d0fb1ed8f",
    "45f8ef02870c0cb9e09246bd530a12067365636f6e641895012801551220b6fbd675f98e2abd22d4ed29fdc83150fedc4859",
    "7e92dd1a7a24381d44a27451636363638001122079a982de3c9907953d4d323cee1d0fb1ed8f45f8ef02870c0cb9e09246bd",
    "530a122d0a240155122081cc5b17018674b401b42f35ba07bb79e211239c23bffe658da1577e3e6468771203646f67180412",
    "2d0a221220e7dc486e97e6ebe5cdabab3e392bdad128b6e09acc94bb4e2aa2af7b986d24d012056669727374183328015512",
    "2081cc5b17018674b401b42f35ba07bb79e211239c23bffe658da1577e3e64687762626262511220e7dc486e97e6ebe5cdab",
    "ab3e392bdad128b6e09acc94bb4e2aa2af7b986d24d0122d0a240155122061be55a8e2f6b4e172338bddf184d6dbee29c988",
    "53e0a0485ecee7f27b9af0b412036361741804280155122061be55a8e2f6b4e172338bddf184d6dbee29c98853e0a0485ece",
    "e7f27b9af0b461616161360171122069ea0740f9807a28f4d932c62e7c1c83be055e55072c90266ab3e79df63a365ba2646c",
    "696e6bf6646e616d65656c696d626f",
);

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn imports_go_car_fixture_and_reproduces_its_header() {
    let car = unhex(GO_CAR_HEX);
    let store = MemoryBlockStore::new();
    let imported = import_car(&store, car.as_slice()).unwrap();
    let roots: Vec<String> = imported.roots.iter().map(Cid::to_string).collect();
    assert_eq!(
        roots,
        [
            "bafyreihyrpefhacm6kkp4ql6j6udakdit7g3dmkzfriqfykhjw6cad5lrm",
            "bafyreidj5idub6mapiupjwjsyyxhyhedxycv4vihfsicm2vt46o7morwlm"
        ]
    );
    assert_eq!(imported.blocks, 8);
    for cid in [
        "QmNX6Tffavsya4xgBi2VJQnSuqy9GsxongxZZ9uZBqp16d",
        "bafkreifw7plhl6mofk6sfvhnfh64qmkq73oeqwl6sloru6rehaoujituke",
        "QmdwjhxpxzcMsR3qUuj7vUL8pbA7MgR3GAxWi2GLHjsKCT",
    ] {
        store.get(&cid.parse().unwrap()).unwrap();
    }
    // Our header encoding is byte-identical to go-car's.
    let header = encode_header(&imported.roots);
    assert_eq!(car[0] as usize, header.len());
    assert_eq!(&car[1..1 + header.len()], header.as_slice());
}

#[test]
fn export_of_go_car_fixture_is_byte_identical() {
    // go-car walks each root depth first (following dag-cbor and dag-pb links), as we do.
    let car = unhex(GO_CAR_HEX);
    let store = MemoryBlockStore::new();
    let imported = import_car(&store, car.as_slice()).unwrap();
    let mut out = Vec::new();
    assert_eq!(export_car(&store, &imported.roots, &mut out).unwrap(), 8);
    assert!(out == car, "exported CAR differs from go-car's");
}

#[test]
fn pins_follow_dag_cbor_links() {
    let store = MemoryBlockStore::new();
    let imported = import_car(&store, unhex(GO_CAR_HEX).as_slice()).unwrap();
    store.pin(&imported.roots[0]).unwrap();
    let stats = store.gc().unwrap();
    // Only the second root (a dag-cbor block with a null link) is unreachable from the first.
    assert_eq!(stats.removed_blocks, 1);
    assert!(!store.has(&imported.roots[1]).unwrap());
    assert_eq!(store.list().unwrap().len(), 7);
}
