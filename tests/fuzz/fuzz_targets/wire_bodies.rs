//! Raw bytes as the body of every node message kind (the envelope's signature is the only thing
//! in front of these decoders, and any peer can sign): the first byte picks the type, the rest
//! is its CBOR. A decoded body must re-encode stably.
#![no_main]
use agora_fuzz::node::cbor_body;
use agora_wire::{deal::DealMsg, radio, storage::StorageRpc, sync::SyncMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => {
            let _ = cbor_body::<DealMsg>(body);
        }
        1 => {
            let _ = cbor_body::<SyncMsg<agora_consensus::DecidedBlock>>(body);
        }
        2 => {
            let _ = cbor_body::<radio::Checkpoint>(body);
        }
        3 => {
            match cbor_body::<radio::RadioRpc>(body) {
                Some(radio::RadioRpc::Frames { devices }) => {
                    for d in devices {
                        for f in d.frames {
                            let _ = radio::parse_frame(&f);
                        }
                    }
                }
                // A state snapshot's bounds and shape, as a standby provider checks them.
                // And the checkpoint that came with it, as the provider opens it to gossip it on.
                Some(radio::RadioRpc::State {
                    snapshot,
                    checkpoint,
                }) => {
                    let devices: Vec<u32> = snapshot.coverage.iter().map(|(d, _)| *d).collect();
                    let _ = snapshot.check(&devices);
                    let _ = snapshot.check(&[]);
                    if let Some(bytes) = checkpoint
                        && let Ok(env) = agora_wire::codec::Envelope::open(
                            &bytes,
                            agora_wire::codec::MAX_GOSSIP_BYTES,
                        )
                    {
                        let _ = env.body::<radio::Checkpoint>(agora_wire::codec::Kind::Radio);
                    }
                }
                _ => {}
            }
        }
        4 => {
            let _ = cbor_body::<StorageRpc>(body);
        }
        5 => {
            if let Some(txs) = cbor_body::<Vec<agora_contracts::SignedTransaction>>(body) {
                for stx in txs {
                    let _ = stx.verify();
                }
            }
        }
        _ => {
            let _ = cbor_body::<agora_wire::radio::SeqRange>(body);
        }
    }
});
