//! CBOR readers: the DAG-CBOR link scanner, the CAR header parser, and serde_cbor (which the
//! proof and market decoders, and the node's envelopes, use) on arbitrary values.
#![no_main]

use agora_storage::cbor::dag_cbor_links;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(links) = dag_cbor_links(data) {
        // Each link takes at least 5 bytes (tag, byte-string head, 0x00, a CID of 2+ bytes).
        assert!(links.len() <= data.len() / 5);
    }
    let _ = agora_storage::car::decode_header(data);
    if let Ok(value) = serde_cbor::from_slice::<serde_cbor::Value>(data)
        && let Ok(bytes) = serde_cbor::to_vec(&value)
    {
        let _ = serde_cbor::from_slice::<serde_cbor::Value>(&bytes);
    }
});
