use super::*;
use crate::{BlockStore, MemoryBlockStore};
use ed25519_dalek::Signer;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn readings(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("temp={}.{}C", 20 + i % 7, i).into_bytes())
        .collect()
}

#[test]
fn batch_verifies_and_detects_tampering() {
    let batch = readings(10);
    let proof = DataProof::create_with_key(&batch, &key(1), 1_700_000_000_000).unwrap();
    assert_eq!(proof.count, 10);
    verify_batch(&proof, &batch).unwrap();

    let mut altered = batch.clone();
    altered[3] = b"temp=99C".to_vec();
    assert!(matches!(
        verify_batch(&proof, &altered),
        Err(ProofError::Mismatch { .. })
    ));
    assert!(matches!(
        verify_batch(&proof, &batch[..9]),
        Err(ProofError::Mismatch { .. })
    ));

    let mut forged = proof.clone();
    forged.timestamp += 1;
    assert!(matches!(
        verify_batch(&forged, &batch),
        Err(ProofError::BadSignature { .. })
    ));
    let mut other_edge = proof.clone();
    other_edge.edge = key(2).verifying_key().to_bytes();
    assert!(matches!(
        other_edge.verify_signature(),
        Err(ProofError::BadSignature { .. })
    ));
}

#[test]
fn empty_batch_is_rejected() {
    let none: Vec<Vec<u8>> = Vec::new();
    assert!(matches!(
        DataProof::create_with_key(&none, &key(1), 0),
        Err(ProofError::EmptyBatch)
    ));
}

#[test]
fn signature_uses_domain_separated_bytes() {
    let proof = DataProof::create_with_key(&readings(3), &key(1), 5).unwrap();
    let mut expected = b"agora/v1/data-proof\0".to_vec();
    expected.extend_from_slice(&serde_cbor::to_vec(&proof.body()).unwrap());
    assert_eq!(proof.body().signing_bytes(), expected);
    // A signature over the bare message (no domain) must not verify.
    let mut bare = proof.clone();
    bare.signature = key(1).sign(&proof.body().message()).to_bytes();
    assert!(bare.verify_signature().is_err());
}

#[test]
fn inclusion_for_every_reading_and_rejection_of_others() {
    let batch = readings(13);
    let proof = DataProof::create_with_key(&batch, &key(7), 42).unwrap();
    let proofs = inclusion_proofs(&batch).unwrap();
    for (i, reading) in batch.iter().enumerate() {
        assert_eq!(proofs[i], inclusion_proof(&batch, i as u64).unwrap());
        verify_inclusion(&proof, reading, &proofs[i]).unwrap();
        assert!(matches!(
            verify_inclusion(&proof, b"fake", &proofs[i]),
            Err(ProofError::NotIncluded { .. })
        ));
    }
    let mut wrong_index = proofs[0].clone();
    wrong_index.index = 1;
    assert!(verify_inclusion(&proof, &batch[0], &wrong_index).is_err());
    assert!(inclusion_proof(&batch, 13).is_err());
}

#[test]
fn proof_block_round_trips_through_store_with_blake3_cid() {
    let proof = DataProof::create_with_key(&readings(4), &key(3), 9).unwrap();
    let (cid, bytes) = proof.to_block();
    assert_eq!(cid.codec(), DAG_CBOR);
    assert_eq!(cid.hash().code(), BLAKE3);
    let store = MemoryBlockStore::new();
    store.put(&cid, &bytes).unwrap();
    let back = DataProof::from_block(&cid, &store.get(&cid).unwrap()).unwrap();
    assert_eq!(back, proof);
    // DAG-CBOR canonical key order: edge, root, count, signature, timestamp.
    assert_eq!(bytes[0], 0xa5);
    assert_eq!(&bytes[1..6], b"\x64edge");
    let mut corrupted = bytes.clone();
    corrupted[10] ^= 1;
    assert!(matches!(
        DataProof::from_block(&cid, &corrupted),
        Err(ProofError::Malformed { .. })
    ));
}

/// Deeply nested CBOR never reaches serde_cbor's recursion (it stops at 128 levels, but 127
/// levels needed 512-768 KiB of stack in a debug build): the nesting is checked first,
/// iteratively, so a hostile block is refused on a 128 KiB stack. Oversized blocks are refused
/// before anything is parsed.
#[test]
fn nested_or_oversized_proof_blocks_are_refused() {
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(|| {
            for depth in [9usize, 127, 200, 4000] {
                let mut bytes = vec![0xa1, 0x61, b'x'];
                bytes.extend(std::iter::repeat_n(0x81, depth));
                bytes.push(0x00);
                let cid = cid_v1_blake3(DAG_CBOR, &bytes);
                let err = DataProof::from_block(&cid, &bytes).unwrap_err();
                assert!(err.to_string().contains("nested deeper"), "{err}");
            }
        })
        .unwrap()
        .join()
        .unwrap();
    let big = vec![0x40; MAX_PROOF_BLOCK + 1];
    let cid = cid_v1_blake3(DAG_CBOR, &big);
    assert!(matches!(
        DataProof::from_block(&cid, &big),
        Err(ProofError::Malformed { reason, .. }) if reason.contains("limit")
    ));
}
