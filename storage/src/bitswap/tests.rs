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
