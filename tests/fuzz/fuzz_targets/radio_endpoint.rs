//! Raw bytes as a device endpoint message (issue #16): anyone on the radio's network can send
//! an edge a "reply" or a device a "request". Decoding never panics, and whatever decodes
//! encodes back to exactly the bytes it came from. A sealed request (threat R2) opens only
//! under its key, and then seals back to the same bytes; with key rotation, a rekey only under
//! the root and to a higher epoch.
#![no_main]
use agora_devices::agent::Request;
use agora_wire::radio::DeviceKey;
use agora_wire::radio::endpoint::{
    MAX_CHUNK_DATA, decode_reply, decode_request, encode_reply, encode_request, open_keyed_request,
    open_request, seal_request,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((device, req)) = decode_request(data) {
        if let Request::FlashChunk { data: chunk, .. } = &req {
            assert!(chunk.len() <= MAX_CHUNK_DATA);
        }
        assert_eq!(encode_request(device, &req).expect("re-encodes"), data);
    }
    let key = DeviceKey([3; 32]);
    if let Ok((device, req, Some(counter))) = open_request(data, Some(&key), None) {
        assert_eq!(
            seal_request(&key, device, counter, &req).expect("re-seals"),
            data
        );
    }
    // Key rotation: at epoch 1, a rekey opens only under the root and to a higher epoch,
    // anything else only under the epoch's working key; both seal back to the same bytes.
    if let Ok((device, req, Some(counter))) = open_keyed_request(data, &key, 1, None) {
        let sealer = match req {
            Request::Rekey { epoch } => {
                assert!(epoch > 1);
                key.clone()
            }
            _ => key.for_epoch(1),
        };
        assert_eq!(
            seal_request(&sealer, device, counter, &req).expect("re-seals"),
            data
        );
    }
    if let Ok((device, reply)) = decode_reply(data) {
        assert_eq!(encode_reply(device, &reply).expect("re-encodes"), data);
    }
});
