//! Bitswap messages from peers: decode, re-encode, and answer or ingest them.
#![no_main]

use agora_storage::bitswap::{Message, ingest, respond};
use agora_storage::hash::{RAW, cid_v1_sha256};
use agora_storage::{BlockStore, MemoryBlockStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::decode(data) else {
        return;
    };
    let again = Message::decode(&msg.encode()).expect("our own encoding decodes");
    assert_eq!(again, msg);
    for block in &msg.payload {
        assert!(agora_storage::hash::verify_block(&block.cid, &block.data).is_ok());
    }
    let store = MemoryBlockStore::new();
    let held = cid_v1_sha256(RAW, b"held");
    store.put(&held, b"held").expect("stores a block");
    if let Ok(answers) = respond(&store, &msg) {
        for answer in answers {
            assert!(answer.encode().len() <= agora_storage::bitswap::MAX_MESSAGE_SIZE);
        }
    }
    if let Ok(received) = ingest(&store, &msg) {
        for cid in received.stored {
            assert!(store.get(&cid).is_ok());
        }
    }
});
