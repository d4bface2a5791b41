//! Raw bytes to the consensus decoders: gossiped `ConsensusMessage`s (then signature checks
//! against a fixed committee), decided blocks as sync answers and the ledger store hold them
//! (then certificate verification), and the consensus write-ahead log's entries (disk bytes).
#![no_main]
use agora_consensus::{ConsensusMessage, DecidedBlock, ValidatorSet, WalEntry};
use agora_fuzz::node::cbor_body;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn committee() -> &'static ValidatorSet {
    static SET: OnceLock<ValidatorSet> = OnceLock::new();
    SET.get_or_init(|| {
        let ids = (1..=4u64).map(|seed| {
            use agora_market::Signer;
            agora_market::KeySigner::from_seed(seed).node_id()
        });
        ValidatorSet::new(ids).expect("four distinct arbitrators")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(msg) = ConsensusMessage::decode(body) {
                let again = ConsensusMessage::decode(&msg.encode()).expect("own encoding decodes");
                assert_eq!(again, msg);
                if let ConsensusMessage::Vote(v) = &msg {
                    let _ = v.verify(committee());
                }
            }
        }
        1 => {
            if let Some(block) = cbor_body::<DecidedBlock>(body) {
                let _ = block.certificate.verify(committee());
            }
        }
        _ => {
            if let Ok(entry) = WalEntry::decode(body) {
                assert_eq!(WalEntry::decode(&entry.encode()).ok(), Some(entry));
            }
        }
    }
});
