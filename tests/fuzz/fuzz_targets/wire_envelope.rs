//! Raw bytes to `Envelope::open` (size, CBOR, version, signature) at both wire limits, then the
//! freshness check and the body decoder of the envelope's kind. Seeds hold validly signed
//! envelopes of every kind, so mutations reach past the signature check.
#![no_main]
use agora_wire::{Envelope, Kind, MAX_GOSSIP_BYTES, MAX_RPC_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let gossip = Envelope::open(data, MAX_GOSSIP_BYTES);
    let Ok(env) = Envelope::open(data, MAX_RPC_BYTES) else {
        assert!(gossip.is_err(), "accepted as gossip but not as rpc");
        return;
    };
    // An opened envelope re-encodes to bytes that open to the same envelope.
    let again = Envelope::open(&env.to_bytes(), MAX_RPC_BYTES).expect("own encoding opens");
    assert_eq!(again, env);
    let _ = env
        .check_fresh(env.sent_at, 0)
        .expect("fresh at its own time");
    let _ = env.check_fresh(u64::MAX, agora_wire::GOSSIP_MAX_SKEW_MS);
    // Every kind's body decoder, as the node's drivers call it.
    let _ = env.body::<agora_wire::deal::DealMsg>(Kind::Deal);
    let _ = env.body::<agora_wire::sync::SyncMsg<agora_consensus::DecidedBlock>>(Kind::Consensus);
    let _ = env.body::<agora_wire::radio::Checkpoint>(Kind::Radio);
    let _ = env.body::<agora_wire::radio::RadioRpc>(Kind::Radio);
    let _ = env.body::<agora_wire::storage::StorageRpc>(Kind::Storage);
    let _ = env.body::<agora_wire::probe::ProbeMsg>(Kind::Probe);
    let _ = env.body::<Vec<agora_contracts::SignedTransaction>>(Kind::Transaction);
    if env.kind == Kind::Consensus {
        let _ = agora_consensus::ConsensusMessage::decode(&env.payload);
    }
    if env.kind == Kind::Market {
        let _ = agora_market::MarketMessage::decode(&env.payload);
    }
});
