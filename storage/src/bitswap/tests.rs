use super::*;
use crate::hash::{RAW, cid_v0, cid_v1_blake3, cid_v1_sha256};
use crate::{BlockStore, Cid, MemoryBlockStore};
use proptest::prelude::*;

fn sample() -> Message {
    Message {
        wantlist: Some(Wantlist {
            entries: vec![
                WantEntry {
                    cid: cid_v0(b"a"),
                    priority: 5,
                    cancel: false,
                    want_type: WantType::Block,
                    send_dont_have: true,
                },
                WantEntry {
                    cid: cid_v1_sha256(RAW, b"b"),
                    priority: -3,
                    cancel: true,
                    want_type: WantType::Have,
                    send_dont_have: false,
                },
            ],
            full: true,
        }),
        payload: vec![
            Block {
                cid: cid_v1_blake3(RAW, b"c"),
                data: b"c".to_vec(),
            },
            Block {
                cid: cid_v0(b"d"),
                data: b"d".to_vec(),
            },
        ],
        block_presences: vec![
            BlockPresence {
                cid: cid_v0(b"e"),
                kind: PresenceType::Have,
            },
            BlockPresence {
                cid: cid_v0(b"f"),
                kind: PresenceType::DontHave,
            },
        ],
        pending_bytes: 77,
    }
}

#[test]
fn round_trip() {
    let msg = sample();
    assert_eq!(Message::decode(&msg.encode()).unwrap(), msg);
}

#[test]
fn wire_bytes_of_a_single_want_match_protobuf() {
    // Field-by-field expected encoding of {wantlist{entries[{block, priority 1, sendDontHave}]}}.
    let cid = cid_v0(b"a");
    let msg = Message::want_blocks(&[cid]);
    let cid_bytes = cid.to_bytes();
    let mut entry = vec![0x0a, cid_bytes.len() as u8];
    entry.extend_from_slice(&cid_bytes);
    entry.extend_from_slice(&[0x10, 0x01, 0x28, 0x01]);
    let mut wl = vec![0x0a, entry.len() as u8];
    wl.extend_from_slice(&entry);
    let mut expected = vec![0x0a, wl.len() as u8];
    expected.extend_from_slice(&wl);
    assert_eq!(msg.encode(), expected);
}

#[test]
fn oversized_and_bogus_messages_are_rejected() {
    let big = vec![0u8; MAX_MESSAGE_SIZE + 1];
    assert!(matches!(
        Message::decode(&big),
        Err(BitswapError::MessageTooLarge { .. })
    ));
    // Block with an unsupported hash code (sha2-512, 0x13) in its prefix.
    let mut block = Vec::new();
    crate::protobuf::put_bytes(&mut block, 1, &[0x01, 0x55, 0x13, 0x20]);
    crate::protobuf::put_bytes(&mut block, 2, b"x");
    let mut msg = Vec::new();
    crate::protobuf::put_bytes(&mut msg, 3, &block);
    assert!(matches!(
        Message::decode(&msg),
        Err(BitswapError::UnsupportedHash { code: 0x13 })
    ));
    assert!(matches!(
        Message::decode(&[0x0a, 0x05, 0x0a]),
        Err(BitswapError::Malformed(_))
    ));
}

#[test]
fn responder_serves_blocks_and_presences() {
    let store = MemoryBlockStore::new();
    let have = cid_v1_sha256(RAW, b"have");
    store.put(&have, b"have").unwrap();
    let missing = cid_v1_sha256(RAW, b"missing");
    let corrupt = cid_v1_sha256(RAW, b"corrupt");
    store.put_unchecked(&corrupt, b"rotten").unwrap();
    let mut request = Message::want_blocks(&[have, missing, corrupt]);
    let wl = request.wantlist.as_mut().unwrap();
    wl.entries.push(WantEntry {
        cid: have,
        priority: 1,
        cancel: false,
        want_type: WantType::Have,
        send_dont_have: false,
    });
    wl.entries.push(WantEntry {
        cid: missing,
        priority: 1,
        cancel: false,
        want_type: WantType::Have,
        send_dont_have: false,
    });
    wl.entries.push(WantEntry {
        cid: have,
        priority: 1,
        cancel: true,
        want_type: WantType::Block,
        send_dont_have: true,
    });

    let out = respond(&store, &Message::decode(&request.encode()).unwrap()).unwrap();
    assert_eq!(out.len(), 1);
    let reply = Message::decode(&out[0].encode()).unwrap();
    assert_eq!(
        reply.payload,
        vec![Block {
            cid: have,
            data: b"have".to_vec()
        }]
    );
    assert_eq!(
        reply.block_presences,
        vec![
            BlockPresence {
                cid: missing,
                kind: PresenceType::DontHave
            },
            BlockPresence {
                cid: corrupt,
                kind: PresenceType::DontHave
            },
            BlockPresence {
                cid: have,
                kind: PresenceType::Have
            },
        ]
    );
    assert!(
        !store.has(&corrupt).unwrap(),
        "corrupted block is dropped, not served"
    );

    let client = MemoryBlockStore::new();
    let got = ingest(&client, &reply).unwrap();
    assert_eq!(got.stored, vec![have]);
    assert_eq!(got.dont_have, vec![missing, corrupt]);
    assert_eq!(client.get(&have).unwrap(), b"have");
}

#[test]
fn large_responses_are_split_under_the_limit() {
    let store = MemoryBlockStore::new();
    let cids: Vec<Cid> = (0..6u8)
        .map(|i| {
            let data = vec![i; 1024 * 1024];
            let cid = cid_v1_sha256(RAW, &data);
            store.put(&cid, &data).unwrap();
            cid
        })
        .collect();
    let out = respond(&store, &Message::want_blocks(&cids)).unwrap();
    assert!(out.len() >= 2);
    let mut served = Vec::new();
    for m in &out {
        let bytes = m.encode();
        assert!(bytes.len() <= MAX_MESSAGE_SIZE);
        served.extend(
            Message::decode(&bytes)
                .unwrap()
                .payload
                .into_iter()
                .map(|b| b.cid),
        );
    }
    assert_eq!(served, cids);
}

/// Issue #17: a UnixFS-sized block travels in a message of its own (the receiver stores it,
/// and asks for the next, as soon as it arrived); small blocks are still batched.
#[test]
fn chunk_sized_blocks_travel_alone_and_small_ones_together() {
    let store = MemoryBlockStore::new();
    let put = |data: Vec<u8>| {
        let cid = cid_v1_sha256(RAW, &data);
        store.put(&cid, &data).unwrap();
        cid
    };
    let chunks: Vec<Cid> = (0..5u8).map(|i| put(vec![i; 256 * 1024])).collect();
    let out = respond(&store, &Message::want_blocks(&chunks)).unwrap();
    assert_eq!(out.len(), 5);
    assert!(out.iter().all(|m| m.payload.len() == 1));
    let small: Vec<Cid> = (0..100u8).map(|i| put(vec![i; 1024])).collect();
    let out = respond(&store, &Message::want_blocks(&small)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload.len(), 100);
    let many: Vec<Cid> = (0..600u16)
        .map(|i| put(i.to_be_bytes().repeat(512)))
        .collect();
    let out = respond(&store, &Message::want_blocks(&many)).unwrap();
    assert!(out.len() >= 2);
    assert!(
        out.iter()
            .all(|m| m.encode().len() <= TARGET_MESSAGE_SIZE + 1024)
    );
    assert_eq!(out.iter().map(|m| m.payload.len()).sum::<usize>(), 600);
}

/// Issue #13.5: the 4 MiB message of 5-byte fixed32 fields that overflowed a debug build's stack
/// (one recursive call per field). Decoded here on a 128 KiB stack.
#[test]
fn four_mib_of_fixed_fields_decodes_on_a_small_stack() {
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(|| {
            let msg = [0x2d, 1, 2, 3, 4].repeat(MAX_MESSAGE_SIZE / 5); // field 5, fixed32
            assert!(msg.len() > MAX_MESSAGE_SIZE - 5);
            assert_eq!(Message::decode(&msg).unwrap(), Message::default());
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn too_many_presences_or_blocks_are_refused() {
    let cid = cid_v0(b"p");
    let mut presence = Vec::new();
    crate::protobuf::put_bytes(&mut presence, 1, &cid.to_bytes());
    let mut msg = Vec::new();
    for _ in 0..=MAX_ITEMS {
        crate::protobuf::put_bytes(&mut msg, 4, &presence);
    }
    assert!(matches!(
        Message::decode(&msg),
        Err(BitswapError::TooManyEntries {
            what: "block presences",
            limit: MAX_ITEMS
        })
    ));
    let mut msg = Vec::new();
    for _ in 0..=MAX_ITEMS {
        crate::protobuf::put_bytes(&mut msg, 2, b"");
    }
    assert!(matches!(
        Message::decode(&msg),
        Err(BitswapError::TooManyEntries {
            what: "blocks",
            limit: MAX_ITEMS
        })
    ));
    let many = Message::want_blocks(&vec![cid; MAX_ENTRIES + 1]).encode();
    assert!(matches!(
        Message::decode(&many),
        Err(BitswapError::TooManyEntries {
            what: "wantlist entries",
            ..
        })
    ));
    let exactly = Message::want_blocks(&vec![cid; MAX_ENTRIES]).encode();
    assert_eq!(
        Message::decode(&exactly)
            .unwrap()
            .wantlist
            .unwrap()
            .entries
            .len(),
        MAX_ENTRIES
    );
}

#[test]
fn hostile_lengths_and_truncations_are_errors() {
    // A block field claiming 10 GB, a want entry whose CID length is u64::MAX, truncations.
    let mut ten_gb = Vec::new();
    crate::protobuf::put_key(&mut ten_gb, 3, crate::protobuf::WIRE_LEN);
    crate::protobuf::put_varint(&mut ten_gb, 10_000_000_000);
    ten_gb.extend_from_slice(&[0; 32]);
    assert!(matches!(
        Message::decode(&ten_gb),
        Err(BitswapError::Malformed(_))
    ));
    let mut entry = vec![0x0a];
    crate::protobuf::put_varint(&mut entry, u64::MAX);
    let mut wl = Vec::new();
    crate::protobuf::put_bytes(&mut wl, 1, &entry);
    let mut msg = Vec::new();
    crate::protobuf::put_bytes(&mut msg, 1, &wl);
    assert!(matches!(
        Message::decode(&msg),
        Err(BitswapError::Malformed(_))
    ));
    let good = sample().encode();
    for cut in 1..good.len() {
        let _ = Message::decode(&good[..cut]);
    }
    // A block prefix of truncated or overflowing varints.
    for prefix in [
        &[0x01, 0x55][..],
        &[0x01, 0x55, 0x12, 0xff][..],
        &[0xff; 11][..],
    ] {
        let mut block = Vec::new();
        crate::protobuf::put_bytes(&mut block, 1, prefix);
        let mut msg = Vec::new();
        crate::protobuf::put_bytes(&mut msg, 3, &block);
        assert!(
            matches!(Message::decode(&msg), Err(BitswapError::Malformed(_))),
            "{prefix:?}"
        );
    }
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Message::decode(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// The responder serves exactly the wanted blocks it holds, and answers every other
    /// non-cancelled want-with-send-dont-have with DONT_HAVE.
    #[test]
    fn responder_serves_exactly_held_wants(held in proptest::collection::vec(any::<bool>(), 1..20)) {
        let store = MemoryBlockStore::new();
        let cids: Vec<Cid> = held
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let data = vec![i as u8; 10 + i];
                let cid = cid_v1_sha256(RAW, &data);
                if *h {
                    store.put(&cid, &data).unwrap();
                }
                cid
            })
            .collect();
        let out = respond(&store, &Message::want_blocks(&cids)).unwrap();
        let (mut served, mut dont) = (Vec::new(), Vec::new());
        for m in out {
            served.extend(m.payload.iter().map(|b| b.cid));
            dont.extend(m.block_presences.iter().filter(|p| p.kind == PresenceType::DontHave).map(|p| p.cid));
        }
        let want_served: Vec<Cid> = cids.iter().zip(&held).filter(|(_, h)| **h).map(|(c, _)| *c).collect();
        let want_dont: Vec<Cid> = cids.iter().zip(&held).filter(|(_, h)| !**h).map(|(c, _)| *c).collect();
        prop_assert_eq!(served, want_served);
        prop_assert_eq!(dont, want_dont);
    }
}
