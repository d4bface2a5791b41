//! Raw bytes as an image record block (DAG-CBOR, fetched over bitswap under its CID): a decoded
//! record re-encodes canonically and decodes to itself.
#![no_main]
use agora_image::ImageRecord;
use agora_storage::hash::{DAG_CBOR, RAW, cid_v1_blake3};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cid = cid_v1_blake3(DAG_CBOR, data);
    assert!(
        ImageRecord::decode(&cid_v1_blake3(RAW, data), data).is_err(),
        "raw codec refused"
    );
    let Ok(record) = ImageRecord::decode(&cid, data) else {
        return;
    };
    let bytes = record.encode();
    let again = ImageRecord::decode(&cid_v1_blake3(DAG_CBOR, &bytes), &bytes)
        .expect("own encoding decodes");
    assert_eq!(again, record);
    assert_eq!(again.encode(), bytes, "encoding is canonical");
});
