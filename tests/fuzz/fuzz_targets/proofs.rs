//! Data-integrity proofs and storage challenges as peers send them (CBOR), checked against
//! each other: decoding, signature and inclusion checks, and challenge verification.
#![no_main]

use agora_storage::challenge::{Challenge, ChallengeResponse, StorageCommitment, verify_response};
use agora_storage::hash::{DAG_CBOR, cid_v1_blake3};
use agora_storage::proof::{DataProof, InclusionProof, verify_inclusion};
use libfuzzer_sys::fuzz_target;

/// Splits `[n] || n bytes || rest` (short inputs give what there is).
fn take_prefixed(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    rest.split_at(rest.len().min(usize::from(n)))
}

fuzz_target!(|data: &[u8]| {
    let cid = cid_v1_blake3(DAG_CBOR, data);
    if let Ok(proof) = DataProof::from_block(&cid, data) {
        let _ = proof.verify_signature();
        let (_, bytes) = proof.to_block();
        let again = DataProof::from_block(&cid_v1_blake3(DAG_CBOR, &bytes), &bytes)
            .expect("our own proof block decodes");
        assert_eq!(again, proof);
        if let Ok(inclusion) = serde_cbor::from_slice::<InclusionProof>(data) {
            let _ = verify_inclusion(&proof, data, &inclusion);
        }
    }
    // A commitment, challenge and response split out of one input: [len(a)] a [len(b)] b c.
    let (a, rest) = take_prefixed(data);
    let (b, c) = take_prefixed(rest);
    let commitment = serde_cbor::from_slice::<StorageCommitment>(a).ok();
    let challenge = serde_cbor::from_slice::<Challenge>(b).ok();
    let response = serde_cbor::from_slice::<ChallengeResponse>(c).ok();
    if let Some(commitment) = &commitment {
        let drawn = Challenge::from_seed([7; 32], commitment, 8);
        assert!(drawn.indices.len() as u64 <= commitment.chunks.min(8));
        assert!(drawn.indices.iter().all(|i| *i < commitment.chunks));
    }
    if let (Some(commitment), Some(challenge), Some(response)) = (commitment, challenge, response) {
        let _ = verify_response(&commitment, &challenge, &response);
    }
});
