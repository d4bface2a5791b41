//! Writes the seed corpora in `tests/fuzz/seeds/TARGET/`: one valid input of each kind, so the
//! fuzzer starts past the first checks. Regenerate with
//! `cargo +nightly run --manifest-path tests/fuzz/Cargo.toml --example seeds` (from the repo root).

use std::path::Path;

use agora_market::test_utils::{AuctionBuilder, BidBuilder, award, offer, signer};
use agora_market::{MarketMessage, Resources, Signer};
use agora_storage::bitswap::{Block, BlockPresence, Message, PresenceType};
use agora_storage::car::encode_header;
use agora_storage::challenge::{Challenge, Prover, StorageCommitment};
use agora_storage::proof::DataProof;
use agora_storage::unixfs::{ImportOptions, import_file};
use agora_storage::{BlockStore, MemoryBlockStore, export_car};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("tests/fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn prefixed(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in &parts[..parts.len() - 1] {
        out.push(u8::try_from(part.len()).expect("seed part under 256 bytes"));
        out.extend_from_slice(part);
    }
    out.extend_from_slice(parts[parts.len() - 1]);
    out
}

fn main() {
    // A three-chunk file, CIDv0 and CIDv1, and its blocks.
    let data: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
    let small = ImportOptions {
        chunk_size: 256,
        ..ImportOptions::default()
    };
    let store = MemoryBlockStore::new();
    let root = import_file(&store, data.as_slice(), small).expect("import");
    let root1 = import_file(
        &store,
        data.as_slice(),
        ImportOptions {
            chunk_size: 256,
            ..ImportOptions::v1()
        },
    )
    .expect("import v1");
    for (i, cid) in store.list().expect("list").iter().enumerate() {
        let block = store.get(cid).expect("block");
        if cid.codec() == agora_storage::hash::DAG_PB {
            write("dagpb", &format!("block-{i}"), &block);
        }
    }
    let mut car = Vec::new();
    export_car(&store, &[root, root1], &mut car).expect("export");
    write("car", "two-roots", &car);
    write("cbor", "car-header", &encode_header(&[root, root1]));

    // Bitswap: wants, blocks and presences.
    let wants = Message::want_blocks(&[root, root1]);
    write("bitswap", "wants", &wants.encode());
    write("protobuf", "wants", &wants.encode());
    let answer = Message {
        payload: vec![Block {
            cid: root,
            data: store.get(&root).expect("root"),
        }],
        block_presences: vec![BlockPresence {
            cid: root1,
            kind: PresenceType::DontHave,
        }],
        ..Message::default()
    };
    write("bitswap", "answer", &answer.encode());

    // Proofs: a data-proof block; a commitment, a challenge and its answer.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let proof = DataProof::create_with_key(&[b"r1".as_slice(), b"r2"], &key, 1).expect("proof");
    write("proofs", "data-proof", &proof.to_block().1);
    write("cbor", "data-proof", &proof.to_block().1);
    let commitment = StorageCommitment::for_file(&store, &root).expect("commitment");
    let challenge = Challenge::from_seed([1; 32], &commitment, 2);
    let prover = Prover::new(&store, &root).expect("prover");
    let response = prover.respond(&store, &challenge).expect("response");
    let c = serde_cbor::to_vec(&commitment).expect("cbor");
    let ch = serde_cbor::to_vec(&challenge).expect("cbor");
    let r = serde_cbor::to_vec(&response).expect("cbor");
    write("proofs", "challenge", &prefixed(&[&c, &ch, &r]));

    // Market messages of each kind.
    let a = AuctionBuilder::new().build(&signer(1), 0);
    let b = BidBuilder::new(&a).build(&signer(2));
    let o = offer(
        &signer(3),
        "eu-west",
        Resources {
            cpu_millis: 100,
            ..Resources::default()
        },
        5,
        0,
    );
    let w = award(&signer(1), signer(2).node_id(), 100, 60_000);
    let messages = [
        ("auction", MarketMessage::Auction(a.clone())),
        ("bid", MarketMessage::Bid(b)),
        ("offer", MarketMessage::Offer(o.clone())),
        ("award", MarketMessage::Award(w)),
        (
            "snapshot",
            MarketMessage::SnapshotResponse {
                region: "eu-west".into(),
                auctions: vec![a],
                offers: vec![o],
            },
        ),
    ];
    for (name, msg) in &messages {
        write("market_decode", name, &msg.encode().expect("encode"));
    }

    // Signed envelopes of the node's kinds (`wire_envelope`) and their bodies alone
    // (`wire_bodies`: the first byte picks the type, as the target reads it).
    use agora_wire::radio::{Checkpoint, RadioRpc, SeqRange};
    use agora_wire::storage::StorageRpc;
    use agora_wire::{Envelope, Kind};
    let checkpoint = Checkpoint {
        service: "gw1".into(),
        ranges: vec![SeqRange {
            device: 101,
            first: 1,
            last: 9,
            count: 9,
        }],
        proof: String::new(),
        released: vec![102],
        at: 1_000,
    };
    let replay = RadioRpc::Replay {
        devices: vec![101, 102],
    };
    let cbor = |v: &dyn erased::Cbor| v.cbor();
    let bodies: [(&str, u8, Kind, Vec<u8>); 4] = [
        ("checkpoint", 2, Kind::Radio, cbor(&checkpoint)),
        ("replay", 3, Kind::Radio, cbor(&replay)),
        ("storage-busy", 4, Kind::Storage, cbor(&StorageRpc::Busy)),
        (
            "transactions",
            5,
            Kind::Transaction,
            cbor(&Vec::<agora_contracts::SignedTransaction>::new()),
        ),
    ];
    for (i, (name, which, kind, body)) in bodies.into_iter().enumerate() {
        let env = Envelope::seal(&signer(4), kind, 1_000, i as u64, body.clone());
        write("wire_envelope", name, &env.to_bytes());
        let mut prefixed = vec![which];
        prefixed.extend_from_slice(&body);
        write("wire_bodies", name, &prefixed);
    }
    for (i, (name, msg)) in messages.iter().enumerate() {
        let env = Envelope::seal(
            &signer(5),
            Kind::Market,
            2_000,
            i as u64,
            msg.encode().expect("encode"),
        );
        write("wire_envelope", &format!("market-{name}"), &env.to_bytes());
    }
    println!("seeds written under tests/fuzz/seeds/");
}

/// CBOR of any serialisable body (a trait object, so one array can hold different types).
mod erased {
    pub trait Cbor {
        fn cbor(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Cbor for T {
        fn cbor(&self) -> Vec<u8> {
            serde_cbor::to_vec(self).expect("a body encodes")
        }
    }
}
