//! Malformed, forged and inconsistent input is rejected with typed errors, never a panic.

use std::sync::Arc;

use agora_market::{KeySigner, NodeId, Signer};
use arc_malachitebft_core_types::{NilOrVal, Round, VoteType};

use super::sim::{Sim, test_config};
use crate::{
    Address, Block, BlockId, CommitCertificate, CommitSig, ConsensusDriver, ConsensusError,
    ConsensusMessage, DecidedBlock, Effect, Height, Input, MAX_MESSAGE_BYTES, PolkaCertificateMsg,
    Proposal, SignedProposalMsg, SignedVoteMsg, ValidatorSet, Vote,
};

struct Fixture {
    signers: Vec<Arc<KeySigner>>,
    validators: ValidatorSet,
    driver: ConsensusDriver,
}

/// Driver for arbitrator 0 of 4, started at height 1.
fn fixture() -> Fixture {
    let signers: Vec<Arc<KeySigner>> = (0..4)
        .map(|i| Arc::new(KeySigner::from_seed(700 + i)))
        .collect();
    let validators = ValidatorSet::new(signers.iter().map(|s| s.node_id())).unwrap();
    let mut driver = ConsensusDriver::new(signers[0].clone(), validators.clone(), test_config());
    let start = Input::StartHeight {
        height: 1,
        parent: BlockId::GENESIS_PARENT,
        wal: Vec::new(),
    };
    driver.handle(0, start);
    Fixture {
        signers,
        validators,
        driver,
    }
}

fn rejections(effects: &[Effect]) -> Vec<&ConsensusError> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Rejected { error, .. } => Some(error),
            _ => None,
        })
        .collect()
}

fn send(f: &mut Fixture, bytes: Vec<u8>) -> Vec<Effect> {
    let from = f.signers[1].node_id();
    f.driver.handle(10, Input::Message { from, bytes })
}

fn prevote(signer: &KeySigner, height: u64, round: u32, value: Option<BlockId>) -> SignedVoteMsg {
    let vote = Vote::new(
        VoteType::Prevote,
        Height(height),
        Round::new(round),
        value.map_or(NilOrVal::Nil, NilOrVal::Val),
        Address(signer.node_id()),
    );
    SignedVoteMsg::sign(vote, &agora_contracts::ChainTag::default(), signer)
}

fn proposer_of(f: &Fixture, height: u64, round: u32) -> Arc<KeySigner> {
    let id = arc_malachitebft_core_types::Validator::public_key(
        f.validators.proposer(height, Round::new(round)),
    );
    f.signers
        .iter()
        .find(|s| s.node_id() == *id)
        .unwrap()
        .clone()
}

fn block_by(signer: &KeySigner, height: u64, parent: BlockId) -> Block {
    Block {
        height,
        parent,
        proposer: signer.node_id(),
        timestamp: 5,
        transactions: vec![b"tx".to_vec()],
    }
}

#[test]
fn garbage_truncated_and_oversized_bytes_are_decode_errors() {
    let mut f = fixture();
    for bytes in [vec![], vec![0xff; 17], b"not cbor at all".to_vec()] {
        let effects = send(&mut f, bytes);
        assert!(matches!(
            rejections(&effects)[..],
            [ConsensusError::Decode(_)]
        ));
    }
    let good = ConsensusMessage::Vote(prevote(&f.signers[1], 1, 0, None)).encode();
    let effects = send(&mut f, good[..good.len() / 2].to_vec());
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::Decode(_)]
    ));
    let effects = send(&mut f, vec![0; MAX_MESSAGE_BYTES + 1]);
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::TooLarge { .. }]
    ));
}

#[test]
fn votes_from_outsiders_or_with_bad_signatures_are_rejected() {
    let mut f = fixture();
    let outsider = KeySigner::from_seed(9_999);
    let effects = send(
        &mut f,
        ConsensusMessage::Vote(prevote(&outsider, 1, 0, None)).encode(),
    );
    assert!(
        matches!(rejections(&effects)[..], [ConsensusError::UnknownValidator(id)] if *id == outsider.node_id())
    );

    // Signed for round 0, replayed as round 1: the signature no longer covers the vote.
    let honest = prevote(&f.signers[1], 1, 0, None);
    let forged = SignedVoteMsg {
        vote: prevote(&f.signers[1], 1, 1, None).vote,
        signature: honest.signature,
    };
    let effects = send(&mut f, ConsensusMessage::Vote(forged).encode());
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BadSignature { height: 1, .. }]
    ));

    // Signed by arbitrator 2 but claiming to be arbitrator 1.
    let stolen = SignedVoteMsg {
        vote: honest.vote.clone(),
        signature: prevote(&f.signers[2], 1, 0, None).signature,
    };
    let effects = send(&mut f, ConsensusMessage::Vote(stolen).encode());
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BadSignature { .. }]
    ));

    // The genuine vote is accepted and logged before anything else happens.
    let effects = send(&mut f, ConsensusMessage::Vote(honest).encode());
    assert!(rejections(&effects).is_empty());
    assert!(matches!(effects.first(), Some(Effect::PersistWal(_))));
}

#[test]
fn polka_certificates_are_verified_before_the_engine_sees_them() {
    let mut f = fixture();
    let id = BlockId([3; 32]);
    let signers = f.signers.clone();
    let sig = |i: usize| CommitSig {
        validator: signers[i].node_id(),
        signature: prevote(&signers[i], 1, 0, Some(id)).signature,
    };
    let good = PolkaCertificateMsg {
        height: 1,
        round: 0,
        block_id: id,
        signatures: vec![sig(1), sig(2), sig(3)],
    };
    good.verify(&f.validators).unwrap();

    let mut thin = good.clone();
    thin.signatures.pop();
    let effects = send(&mut f, ConsensusMessage::PolkaCertificate(thin).encode());
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BadLivenessCertificate {
            height: 1,
            round: 0,
            ..
        }]
    ));

    let mut other_round = good.clone();
    other_round.round = 1;
    let effects = send(
        &mut f,
        ConsensusMessage::PolkaCertificate(other_round).encode(),
    );
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BadLivenessCertificate { .. }]
    ));

    let mut flood = good.clone();
    flood.signatures = (0..5).map(|_| sig(1)).collect();
    let effects = send(&mut f, ConsensusMessage::PolkaCertificate(flood).encode());
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::TooMany { max: 4, .. }]
    ));

    let effects = send(&mut f, ConsensusMessage::PolkaCertificate(good).encode());
    assert!(rejections(&effects).is_empty(), "{effects:?}");
}

#[test]
fn proposals_from_the_wrong_proposer_or_with_a_bad_block_are_rejected() {
    let mut f = fixture();
    let right = proposer_of(&f, 1, 0);
    let wrong = f
        .signers
        .iter()
        .find(|s| s.node_id() != right.node_id())
        .unwrap()
        .clone();
    let p = Proposal::new(
        Height(1),
        Round::new(0),
        block_by(&wrong, 1, BlockId::GENESIS_PARENT),
        Round::Nil,
        Address(wrong.node_id()),
    );
    let effects = send(
        &mut f,
        ConsensusMessage::Proposal(SignedProposalMsg::sign(
            p,
            &agora_contracts::ChainTag::default(),
            wrong.as_ref(),
        ))
        .encode(),
    );
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::WrongProposer {
            height: 1,
            round: 0,
            ..
        }]
    ));

    let p = Proposal::new(
        Height(1),
        Round::new(0),
        block_by(&right, 1, BlockId([9; 32])),
        Round::Nil,
        Address(right.node_id()),
    );
    let effects = send(
        &mut f,
        ConsensusMessage::Proposal(SignedProposalMsg::sign(
            p,
            &agora_contracts::ChainTag::default(),
            right.as_ref(),
        ))
        .encode(),
    );
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BlockMismatch { height: 1, .. }]
    ));

    let p = Proposal::new(
        Height(1),
        Round::new(0),
        block_by(&right, 2, BlockId::GENESIS_PARENT),
        Round::Nil,
        Address(right.node_id()),
    );
    let effects = send(
        &mut f,
        ConsensusMessage::Proposal(SignedProposalMsg::sign(
            p,
            &agora_contracts::ChainTag::default(),
            right.as_ref(),
        ))
        .encode(),
    );
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BlockMismatch { .. }]
    ));

    // Signature over another block: swap the block after signing.
    let p = Proposal::new(
        Height(1),
        Round::new(0),
        block_by(&right, 1, BlockId::GENESIS_PARENT),
        Round::Nil,
        Address(right.node_id()),
    );
    let mut signed =
        SignedProposalMsg::sign(p, &agora_contracts::ChainTag::default(), right.as_ref());
    let mut other = block_by(&right, 1, BlockId::GENESIS_PARENT);
    other.transactions.push(b"smuggled".to_vec());
    signed.proposal = Proposal::new(
        Height(1),
        Round::new(0),
        other,
        Round::Nil,
        Address(right.node_id()),
    );
    let effects = send(&mut f, ConsensusMessage::Proposal(signed).encode());
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BadSignature { .. }]
    ));
}

/// A real decided block and certificate from a short simulated run.
fn decided_block() -> (Sim, DecidedBlock) {
    let mut sim = Sim::new(4, 77);
    assert!(sim.run_until(60_000, |s| s.all_reached(&[0, 1, 2, 3], 1)));
    let (_, block, certificate) = sim.nodes[0].decided[0].clone();
    (sim, DecidedBlock { block, certificate })
}

fn fresh_driver(sim: &Sim) -> ConsensusDriver {
    let signer = Arc::new(KeySigner::from_seed(4242));
    let mut d = ConsensusDriver::new(signer, sim.validators.clone(), test_config());
    d.handle(
        0,
        Input::StartHeight {
            height: 1,
            parent: BlockId::GENESIS_PARENT,
            wal: Vec::new(),
        },
    );
    d
}

fn sync(d: &mut ConsensusDriver, from: NodeId, blocks: Vec<DecidedBlock>) -> Vec<Effect> {
    d.handle(1, Input::SyncResponse { from, blocks })
}

#[test]
fn synced_blocks_need_a_quorum_of_valid_precommits() {
    let (sim, good) = decided_block();
    let peer = sim.nodes[1].id();
    let quorum = sim.validators.quorum() as usize;

    // Too few signatures.
    let mut thin = good.clone();
    thin.certificate.signatures.truncate(quorum - 1);
    let mut d = fresh_driver(&sim);
    let effects = sync(&mut d, peer, vec![thin]);
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BadCertificate { height: 1, .. }]
    ));
    assert_eq!(d.height(), 1, "nothing decided from a bad certificate");

    // A signature padded by repeating one arbitrator.
    let mut dup = good.clone();
    dup.certificate.signatures.truncate(quorum - 1);
    let first = dup.certificate.signatures[0].clone();
    dup.certificate.signatures.push(first);
    let effects = sync(&mut d, peer, vec![dup]);
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BadCertificate { .. }]
    ));

    // A forged signature.
    let mut forged = good.clone();
    forged.certificate.signatures[0] = CommitSig {
        validator: forged.certificate.signatures[0].validator,
        signature: sim.nodes[0]
            .signer
            .sign(agora_market::Domain::CONSENSUS, b"something else"),
    };
    let effects = sync(&mut d, peer, vec![forged]);
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BadCertificate { .. }]
    ));

    // The block does not match its certificate.
    let mut swapped = good.clone();
    swapped.block.transactions.push(b"extra".to_vec());
    let effects = sync(&mut d, peer, vec![swapped]);
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BadSyncBlock { height: 1, .. }]
    ));

    // Too many blocks at once.
    let flood = vec![good.clone(); test_config().max_sync_blocks + 1];
    let effects = sync(&mut d, peer, flood);
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::TooMany { .. }]
    ));
    assert_eq!(d.height(), 1);

    // The genuine block is decided from sync alone.
    let effects = sync(&mut d, peer, vec![good.clone()]);
    assert!(rejections(&effects).is_empty(), "{effects:?}");
    let decided: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Decided { height, block, .. } => Some((*height, block.id())),
            _ => None,
        })
        .collect();
    assert_eq!(decided, vec![(1, good.block.id())]);
    assert_eq!(d.height(), 2, "moved on to the next height");
}

#[test]
fn certificate_verify_checks_membership_and_quorum() {
    let (sim, good) = decided_block();
    good.certificate.verify(&sim.validators).unwrap();
    let outsider = KeySigner::from_seed(31_337);
    let mut cert: CommitCertificate = good.certificate.clone();
    cert.signatures[0].validator = outsider.node_id();
    assert!(matches!(
        cert.verify(&sim.validators),
        Err(ConsensusError::BadCertificate { .. })
    ));
    let mut other_height = good.certificate.clone();
    other_height.height = 2;
    assert!(
        other_height.verify(&sim.validators).is_err(),
        "signatures bind the height"
    );
}

/// THREATS A8: a block certified on another chain (the same arbitrator keys, another chain
/// id) fails its certificate here: every signature covers its chain's tag.
#[test]
fn a_certified_block_of_another_chain_is_refused() {
    let (sim, good) = decided_block();
    good.certificate.verify(&sim.validators).unwrap();
    let elsewhere = sim
        .validators
        .clone()
        .on_chain(agora_contracts::ChainTag::of("another-chain"));
    assert!(matches!(
        good.certificate.verify(&elsewhere),
        Err(ConsensusError::BadCertificate { .. })
    ));
}

#[test]
fn wire_messages_round_trip() {
    let f = fixture();
    let v = prevote(&f.signers[1], 3, 2, Some(BlockId([4; 32])));
    let msg = ConsensusMessage::Vote(v.clone());
    assert_eq!(ConsensusMessage::decode(&msg.encode()).unwrap(), msg);
    let decoded = match ConsensusMessage::decode(&msg.encode()).unwrap() {
        ConsensusMessage::Vote(d) => d,
        other => panic!("decoded {other:?}"),
    };
    assert_eq!(decoded.vote.block_id(), Some(BlockId([4; 32])));
    decoded.verify(&f.validators).unwrap();
}

#[test]
fn bit_flipped_messages_never_panic_and_are_never_accepted_altered() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut f = fixture();
    let mut rng = StdRng::seed_from_u64(5);
    let proposer = proposer_of(&f, 1, 0);
    let block = block_by(&proposer, 1, BlockId::GENESIS_PARENT);
    let proposal = Proposal::new(
        Height(1),
        Round::new(0),
        block,
        Round::Nil,
        Address(proposer.node_id()),
    );
    let originals = [
        ConsensusMessage::Vote(prevote(&f.signers[1], 1, 0, Some(BlockId([3; 32])))),
        ConsensusMessage::Proposal(SignedProposalMsg::sign(
            proposal,
            &agora_contracts::ChainTag::default(),
            proposer.as_ref(),
        )),
        ConsensusMessage::PolkaCertificate(PolkaCertificateMsg {
            height: 1,
            round: 0,
            block_id: BlockId([3; 32]),
            signatures: (1..4)
                .map(|i| CommitSig {
                    validator: f.signers[i].node_id(),
                    signature: prevote(&f.signers[i], 1, 0, Some(BlockId([3; 32]))).signature,
                })
                .collect(),
        }),
    ];
    let mut rejected = 0;
    for _ in 0..400 {
        let original = &originals[rng.gen_range(0..originals.len())];
        let mut bytes = original.encode();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] ^= 1 << rng.gen_range(0..8);
        }
        let effects = send(&mut f, bytes.clone());
        if rejections(&effects).is_empty() {
            // Accepted: the flip must not have changed the signed content.
            assert_eq!(
                ConsensusMessage::decode(&bytes).as_ref(),
                Ok(original),
                "altered message accepted"
            );
        } else {
            rejected += 1;
        }
    }
    assert!(
        rejected > 300,
        "most random flips must be caught ({rejected}/400)"
    );
}

#[test]
fn stale_timeouts_and_late_mempool_answers_are_ignored() {
    let mut f = fixture();
    let stale = crate::TimeoutId {
        height: 7,
        round: 0,
        step: crate::TimeoutStep::Propose,
    };
    assert!(f.driver.handle(20, Input::TimeoutElapsed(stale)).is_empty());
    let late = Input::ProposeValue {
        height: 9,
        round: 0,
        transactions: vec![b"x".to_vec()],
    };
    assert!(f.driver.handle(21, late).is_empty());
    assert_eq!(f.driver.height(), 1);
}

#[test]
fn a_gossiped_block_past_a_gap_asks_for_the_missing_ones() {
    let mut sim = Sim::new(4, 78);
    assert!(sim.run_until(60_000, |s| s.all_reached(&[0, 1, 2, 3], 3)));
    let (_, block, certificate) = sim.nodes[0].decided[2].clone();
    assert_eq!(block.height, 3);
    let peer = sim.nodes[1].id();
    let mut d = fresh_driver(&sim);
    // We are at height 1 and hear of height 3: nothing is decided, heights from 1 are asked for.
    let effects = sync(&mut d, peer, vec![DecidedBlock { block, certificate }]);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::SyncRequest { height: 1 })),
        "no sync request in {effects:?}"
    );
    assert_eq!(d.height(), 1);
}

#[test]
fn a_faulty_proposer_cannot_fill_the_next_heights_buffer_with_far_rounds() {
    let mut f = fixture();
    // Validator 2 signs a valid proposal for every round of height 2 it is the proposer of,
    // far ahead: rounds past the first four (one per validator) are not held.
    let faulty = f.signers[2].clone();
    let mut far = 0;
    for round in 4u32..200 {
        if proposer_of(&f, 2, round).node_id() != faulty.node_id() {
            continue;
        }
        let p = Proposal::new(
            Height(2),
            Round::new(round),
            block_by(&faulty, 2, BlockId([1; 32])),
            Round::Nil,
            Address(faulty.node_id()),
        );
        let from = faulty.node_id();
        let bytes = ConsensusMessage::Proposal(SignedProposalMsg::sign(
            p,
            &agora_contracts::ChainTag::default(),
            faulty.as_ref(),
        ))
        .encode();
        f.driver.handle(10, Input::Message { from, bytes });
        far += 1;
    }
    assert!(far >= 16, "the faulty validator proposes {far} far rounds");
    assert!(f.driver.future_proposals_held().is_empty());
    // The honest round-0 proposal for height 2 is still held.
    let honest = proposer_of(&f, 2, 0);
    let p = Proposal::new(
        Height(2),
        Round::new(0),
        block_by(&honest, 2, BlockId([1; 32])),
        Round::Nil,
        Address(honest.node_id()),
    );
    let from = honest.node_id();
    let bytes = ConsensusMessage::Proposal(SignedProposalMsg::sign(
        p,
        &agora_contracts::ChainTag::default(),
        honest.as_ref(),
    ))
    .encode();
    f.driver.handle(11, Input::Message { from, bytes });
    assert_eq!(f.driver.future_proposals_held(), vec![(2, 0)]);
}

/// THREATS A11: a faulty member sends a flood of proposals for the current height — its far
/// rounds and many distinct blocks in one round — before the honest proposer's: the honest
/// block is still taken (not refused as one too many for the height), so the chain can decide.
#[test]
fn a_faulty_proposer_cannot_crowd_out_the_current_heights_blocks() {
    let mut f = fixture();
    let faulty = (1..4)
        .map(|i| f.signers[i].clone())
        .find(|s| {
            (0..8u32).any(|r| proposer_of(&f, 1, r).node_id() == s.node_id())
                && proposer_of(&f, 1, 0).node_id() != s.node_id()
        })
        .unwrap();
    let propose = |f: &mut Fixture, by: &KeySigner, round: u32, k: usize| {
        let mut block = block_by(by, 1, BlockId::GENESIS_PARENT);
        block.transactions = vec![format!("tx{k}").into_bytes()];
        let p = Proposal::new(
            Height(1),
            Round::new(round),
            block,
            Round::Nil,
            Address(by.node_id()),
        );
        let from = by.node_id();
        let bytes = ConsensusMessage::Proposal(SignedProposalMsg::sign(
            p,
            &agora_contracts::ChainTag::default(),
            by,
        ))
        .encode();
        f.driver.handle(10, Input::Message { from, bytes })
    };
    let mut sent = 0;
    for round in 0u32..400 {
        if proposer_of(&f, 1, round).node_id() != faulty.node_id() {
            continue;
        }
        // Several distinct blocks in each round it owns.
        for k in 0..4 {
            propose(&mut f, &faulty, round, sent * 10 + k);
        }
        sent += 1;
    }
    assert!(
        sent * 4 > 128,
        "the faulty proposer sent {} blocks",
        sent * 4
    );
    // The honest proposers of the first rounds are still heard.
    for round in 0u32..4 {
        let honest = proposer_of(&f, 1, round);
        if honest.node_id() == faulty.node_id() || honest.node_id() == f.signers[0].node_id() {
            continue;
        }
        let effects = propose(&mut f, &honest, round, 9_999);
        assert!(
            !rejections(&effects)
                .iter()
                .any(|e| matches!(e, ConsensusError::TooMany { .. })),
            "round {round}'s honest block refused: {effects:?}"
        );
    }
}

/// THREATS A13: a faulty member floods the next height's votes — copies of one vote, many
/// values, far rounds, far more than Malachite's 500-per-height input buffer — before the
/// honest members' early votes arrive. The driver keeps two per validator, round and type, so
/// the honest ones are still held, and counted once the height starts: their round-1 votes
/// (f + 1 of them) move this replica to round 1 at once.
#[test]
fn a_faulty_member_cannot_crowd_out_the_next_heights_votes() {
    let mut f = fixture();
    let faulty = f.signers[2].clone();
    let from = faulty.node_id();
    let kinds = [VoteType::Prevote, VoteType::Precommit];
    let vote = |signer: &KeySigner, kind: VoteType, round: u32, value: Option<BlockId>| {
        let vote = Vote::new(
            kind,
            Height(2),
            Round::new(round),
            value.map_or(NilOrVal::Nil, NilOrVal::Val),
            Address(signer.node_id()),
        );
        SignedVoteMsg::sign(vote, &agora_contracts::ChainTag::default(), signer)
    };
    let mut sent = 0;
    for k in 0..300u32 {
        // Round 1 is left to the honest members: the faulty one alone is not f + 1.
        let round = [0, 2, 3, 7, 10, 11, 40][k as usize % 7];
        let value = Some(BlockId([(k % 251) as u8; 32]));
        for kind in kinds {
            let bytes = ConsensusMessage::Vote(vote(&faulty, kind, round, value)).encode();
            // Each one twice: a copy of a held vote takes no slot.
            for _ in 0..2 {
                f.driver.handle(
                    10,
                    Input::Message {
                        from,
                        bytes: bytes.clone(),
                    },
                );
                sent += 1;
            }
        }
    }
    assert!(sent > 1_000, "the faulty member sent {sent} votes");
    let held = f.driver.future_votes_held();
    // Rounds 0, 2, 3, 7 and 10 (11 and 40 are too far ahead), two distinct votes per type.
    assert_eq!(held.len(), 5 * 2 * 2, "held: {held:?}");
    let distinct: std::collections::BTreeSet<_> = held.iter().collect();
    assert_eq!(distinct.len(), held.len(), "a copy took a slot: {held:?}");
    // The honest members' early round-1 votes for height 2 are held.
    for i in [1, 3] {
        let honest = f.signers[i].clone();
        let bytes = ConsensusMessage::Vote(vote(&honest, VoteType::Prevote, 1, None)).encode();
        let effects = f.driver.handle(
            11,
            Input::Message {
                from: honest.node_id(),
                bytes,
            },
        );
        assert!(rejections(&effects).is_empty(), "{effects:?}");
    }
    assert_eq!(f.driver.future_votes_held().len(), 22);
    // Height 1 is decided (a certified block synced), height 2 starts with the held votes.
    let block = block_by(&f.signers[1], 1, BlockId::GENESIS_PARENT);
    let decided = certify(&f, block, 0);
    let peer = f.signers[1].node_id();
    let effects = f.driver.handle(
        12,
        Input::SyncResponse {
            from: peer,
            blocks: vec![decided],
        },
    );
    assert!(rejections(&effects).is_empty(), "{effects:?}");
    assert_eq!(f.driver.height(), 2);
    assert!(f.driver.future_votes_held().is_empty());
    assert_eq!(
        f.driver.round(),
        Some(1),
        "the honest round-1 votes were not counted when height 2 started"
    );
}

/// A commit certificate for `block` signed by arbitrators 1–3 in `round`.
fn certify(f: &Fixture, block: Block, round: u32) -> DecidedBlock {
    let signatures = f.signers[1..]
        .iter()
        .map(|s| {
            let vote = Vote::new(
                VoteType::Precommit,
                Height(block.height),
                Round::new(round),
                NilOrVal::Val(block.id()),
                Address(s.node_id()),
            );
            let signed =
                SignedVoteMsg::sign(vote, &agora_contracts::ChainTag::default(), s.as_ref());
            CommitSig {
                validator: s.node_id(),
                signature: signed.signature,
            }
        })
        .collect();
    let certificate = CommitCertificate {
        height: block.height,
        round,
        block_id: block.id(),
        signatures,
    };
    certificate.verify(&f.validators).unwrap();
    DecidedBlock { block, certificate }
}

/// THREATS A12: a decided block gossiped on the blocks topic is judged on what it is: the next
/// block with a valid certificate and parent is forwarded, so is a certified one a height
/// ahead and, once decided here, the block itself (certified) for replicas behind us; one
/// further ahead goes to the driver unforwarded; an old or unprovable one is ignored (not
/// forwarded, nobody penalised); the next height with a bad certificate or another parent is
/// invalid.
#[test]
fn gossiped_blocks_are_judged_before_they_travel() {
    use crate::GossipedBlock;
    let mut f = fixture();
    let relay = f.signers[3].node_id();
    let block1 = block_by(&f.signers[1], 1, BlockId::GENESIS_PARENT);
    let next = certify(&f, block1.clone(), 0);
    let judge = |f: &mut Fixture, d: &DecidedBlock| f.driver.judge_gossiped_block(relay, d);
    assert!(matches!(judge(&mut f, &next), GossipedBlock::Next));
    // A forged signature, too few signatures, a certificate for another block, an orphan.
    let mut forged = next.clone();
    forged.certificate.signatures[0].signature = forged.certificate.signatures[1].signature;
    let mut few = next.clone();
    few.certificate.signatures.truncate(2);
    let mut other = next.clone();
    other.block.transactions.push(b"smuggled".to_vec());
    let orphan = certify(&f, block_by(&f.signers[1], 1, BlockId([9; 32])), 0);
    for (what, bad) in [
        ("forged", forged),
        ("few", few),
        ("other", other),
        ("orphan", orphan),
    ] {
        assert!(
            matches!(judge(&mut f, &bad), GossipedBlock::Invalid(_)),
            "{what} accepted"
        );
    }
    // A height ahead: valid certificate forwarded, invalid one ignored.
    let block2 = block_by(&f.signers[2], 2, block1.id());
    let ahead = certify(&f, block2, 0);
    assert!(matches!(judge(&mut f, &ahead), GossipedBlock::Ahead));
    let mut bad_ahead = ahead.clone();
    bad_ahead.certificate.signatures.truncate(1);
    assert!(matches!(judge(&mut f, &bad_ahead), GossipedBlock::Old));
    // Two ahead: not forwarded, but the driver hears of it and asks for the gap.
    let far = certify(&f, block_by(&f.signers[2], 3, BlockId([3; 32])), 0);
    assert!(matches!(judge(&mut f, &far), GossipedBlock::Far));
    // Once decided here, the block is still forwarded (certified, ours): replicas behind us
    // need it; with a bad certificate, or another block at that height, it is not.
    let peer = f.signers[1].node_id();
    let sync = |f: &mut Fixture, d: &DecidedBlock| {
        let blocks = vec![d.clone()];
        f.driver
            .handle(12, Input::SyncResponse { from: peer, blocks })
    };
    sync(&mut f, &next);
    assert_eq!(f.driver.height(), 2);
    assert!(matches!(
        judge(&mut f, &next),
        GossipedBlock::JustDecided(id) if id == block1.id()
    ));
    let mut junk_cert = next.clone();
    junk_cert.certificate.signatures.truncate(1);
    assert!(matches!(judge(&mut f, &junk_cert), GossipedBlock::Old));
    let rival = certify(&f, block_by(&f.signers[2], 1, BlockId::GENESIS_PARENT), 0);
    assert!(matches!(judge(&mut f, &rival), GossipedBlock::Old));
    assert!(matches!(judge(&mut f, &ahead), GossipedBlock::Next));
    // Two heights back: old.
    sync(&mut f, &ahead);
    assert_eq!(f.driver.height(), 3);
    assert!(matches!(judge(&mut f, &next), GossipedBlock::Old));
}

/// THREATS A12 on the consensus topic, by height: undecodable is invalid; two heights behind
/// ours or more is stale; one behind is still forwarded, within the rounds around its
/// decision; the next height is forwarded; beyond it, checked but not forwarded.
#[test]
fn gossiped_consensus_messages_are_judged_by_height() {
    use crate::GossipedMessage;
    let mut f = fixture();
    assert!(matches!(
        f.driver.judge_gossiped_message(b"junk"),
        GossipedMessage::Invalid(ConsensusError::Decode(_))
    ));
    let judge = |f: &Fixture, height: u64, round: u32| {
        let bytes = ConsensusMessage::Vote(prevote(&f.signers[1], height, round, None)).encode();
        f.driver.judge_gossiped_message(&bytes)
    };
    assert!(matches!(judge(&f, 1, 0), GossipedMessage::Forward(_)));
    assert!(
        matches!(judge(&f, 2, 0), GossipedMessage::Forward(_)),
        "the next height: forwarded"
    );
    assert!(
        matches!(judge(&f, 3, 0), GossipedMessage::Far(_)),
        "two ahead: checked, not forwarded"
    );
    // Height 1 decided in round 0, then 2: a vote for 1 is still forwarded at 2 (up to the
    // lookahead past its deciding round), not at 3.
    let block1 = block_by(&f.signers[1], 1, BlockId::GENESIS_PARENT);
    let d1 = certify(&f, block1.clone(), 0);
    let d2 = certify(&f, block_by(&f.signers[2], 2, block1.id()), 0);
    let peer = f.signers[1].node_id();
    f.driver.handle(
        12,
        Input::SyncResponse {
            from: peer,
            blocks: vec![d1],
        },
    );
    assert_eq!(f.driver.height(), 2);
    assert!(matches!(judge(&f, 1, 10), GossipedMessage::Forward(_)));
    assert!(
        matches!(judge(&f, 1, 11), GossipedMessage::Stale),
        "a decided height's far round: not forwarded"
    );
    f.driver.handle(
        13,
        Input::SyncResponse {
            from: peer,
            blocks: vec![d2],
        },
    );
    assert_eq!(f.driver.height(), 3);
    assert!(
        matches!(judge(&f, 1, 0), GossipedMessage::Stale),
        "stale: not forwarded"
    );
    assert!(matches!(judge(&f, 2, 0), GossipedMessage::Forward(_)));
}

/// A proposal for (height, round) by that round's proposer, its block on the genesis parent.
fn proposal(f: &Fixture, height: u64, round: u32) -> SignedProposalMsg {
    let by = proposer_of(f, height, round);
    let p = Proposal::new(
        Height(height),
        Round::new(round),
        block_by(&by, height, BlockId::GENESIS_PARENT),
        Round::Nil,
        Address(by.node_id()),
    );
    SignedProposalMsg::sign(p, &agora_contracts::ChainTag::default(), by.as_ref())
}

/// THREATS A12: what a member gossips on the consensus topic is checked before it travels. A
/// bad signature, a signer outside the committee, the wrong proposer, a block swapped after
/// signing or a certificate with too many or too few signatures is invalid (not forwarded,
/// sender penalised); a vote or proposal for a round the driver would not take is stale (not
/// forwarded, and not worth a signature check); a certificate is checked at our height only.
/// Honest traffic still travels: votes of our height's next rounds, early votes for the next
/// height, the next round's proposal, the next height's, a valid certificate; and what passes
/// reaches the driver checked.
#[test]
fn gossiped_consensus_messages_are_checked_before_they_travel() {
    use crate::GossipedMessage;
    let mut f = fixture();
    assert_eq!(f.driver.round(), Some(0));
    let judge = |f: &Fixture, msg: ConsensusMessage| f.driver.judge_gossiped_message(&msg.encode());
    let vote = |f: &Fixture, height: u64, round: u32| {
        ConsensusMessage::Vote(prevote(&f.signers[1], height, round, None))
    };
    // Signed by arbitrator 2, claiming to be arbitrator 1.
    let forged = |f: &Fixture, height: u64, round: u32| {
        let mut v = prevote(&f.signers[1], height, round, None);
        v.signature = prevote(&f.signers[2], height, round, None).signature;
        ConsensusMessage::Vote(v)
    };
    for (h, r) in [(1, 0), (1, 1), (1, 10), (2, 0), (2, 10)] {
        assert!(
            matches!(judge(&f, vote(&f, h, r)), GossipedMessage::Forward(_)),
            "honest vote h{h} r{r} not forwarded"
        );
    }
    for h in [1, 2, 5] {
        assert!(
            matches!(
                judge(&f, forged(&f, h, 0)),
                GossipedMessage::Invalid(ConsensusError::BadSignature { .. })
            ),
            "forged vote at height {h} not refused"
        );
    }
    let outsider = KeySigner::from_seed(9_999);
    let stranger = ConsensusMessage::Vote(prevote(&outsider, 1, 0, None));
    assert!(matches!(
        judge(&f, stranger),
        GossipedMessage::Invalid(ConsensusError::UnknownValidator(_))
    ));
    for (h, r) in [(1, 11), (1, 400), (2, 11)] {
        assert!(
            matches!(judge(&f, vote(&f, h, r)), GossipedMessage::Stale),
            "vote h{h} r{r} beyond the lookahead forwarded"
        );
        assert!(
            matches!(judge(&f, forged(&f, h, r)), GossipedMessage::Stale),
            "vote h{h} r{r} beyond the lookahead cost a signature check"
        );
    }

    // Proposals: the next round's and the next height's travel, a far round's does not.
    for (h, r) in [(1, 1), (2, 0)] {
        assert!(
            matches!(
                judge(&f, ConsensusMessage::Proposal(proposal(&f, h, r))),
                GossipedMessage::Forward(_)
            ),
            "honest proposal h{h} r{r} not forwarded"
        );
    }
    assert!(matches!(
        judge(&f, ConsensusMessage::Proposal(proposal(&f, 1, 11))),
        GossipedMessage::Stale
    ));
    let mut swapped = proposal(&f, 1, 1);
    let mut other = swapped.proposal.block().clone();
    other.transactions.push(b"smuggled".to_vec());
    swapped.proposal = Proposal::new(
        Height(1),
        Round::new(1),
        other,
        Round::Nil,
        Address(swapped.proposal.proposer()),
    );
    assert!(matches!(
        judge(&f, ConsensusMessage::Proposal(swapped)),
        GossipedMessage::Invalid(ConsensusError::BadSignature { .. })
    ));
    let right = proposer_of(&f, 1, 1);
    let wrong = f
        .signers
        .iter()
        .find(|s| s.node_id() != right.node_id())
        .unwrap()
        .clone();
    let p = Proposal::new(
        Height(1),
        Round::new(1),
        block_by(&wrong, 1, BlockId::GENESIS_PARENT),
        Round::Nil,
        Address(wrong.node_id()),
    );
    let usurper = SignedProposalMsg::sign(p, &agora_contracts::ChainTag::default(), wrong.as_ref());
    assert!(matches!(
        judge(&f, ConsensusMessage::Proposal(usurper)),
        GossipedMessage::Invalid(ConsensusError::WrongProposer { .. })
    ));
    // The right proposer, a block on another parent than ours: refused before it travels.
    let p = Proposal::new(
        Height(1),
        Round::new(1),
        block_by(&right, 1, BlockId([9; 32])),
        Round::Nil,
        Address(right.node_id()),
    );
    let orphan = SignedProposalMsg::sign(p, &agora_contracts::ChainTag::default(), right.as_ref());
    assert!(matches!(
        judge(&f, ConsensusMessage::Proposal(orphan)),
        GossipedMessage::Invalid(ConsensusError::BlockMismatch { .. })
    ));

    // Certificates: checked at our height; at another, the driver uses none.
    let id = BlockId([3; 32]);
    let polka = |f: &Fixture, height: u64, by: &[usize]| {
        ConsensusMessage::PolkaCertificate(PolkaCertificateMsg {
            height,
            round: 0,
            block_id: id,
            signatures: by
                .iter()
                .map(|&i| CommitSig {
                    validator: f.signers[i].node_id(),
                    signature: prevote(&f.signers[i], height, 0, Some(id)).signature,
                })
                .collect(),
        })
    };
    assert!(matches!(
        judge(&f, polka(&f, 1, &[1, 2, 3])),
        GossipedMessage::Forward(_)
    ));
    assert!(matches!(
        judge(&f, polka(&f, 1, &[1, 2])),
        GossipedMessage::Invalid(ConsensusError::BadLivenessCertificate { .. })
    ));
    assert!(matches!(
        judge(&f, polka(&f, 1, &[1, 1, 1, 1, 1])),
        GossipedMessage::Invalid(ConsensusError::TooMany { max: 4, .. })
    ));
    // At the next height (we may be the slower one) checked and relayed; beyond, ignored
    // unchecked.
    assert!(matches!(
        judge(&f, polka(&f, 2, &[1, 2, 3])),
        GossipedMessage::Forward(_)
    ));
    assert!(
        matches!(
            judge(&f, polka(&f, 2, &[1, 2])),
            GossipedMessage::Invalid(ConsensusError::BadLivenessCertificate { .. })
        ),
        "a certificate for the next height relayed unchecked"
    );
    assert!(
        matches!(judge(&f, polka(&f, 3, &[1, 2])), GossipedMessage::Stale),
        "a certificate beyond the next height forwarded or checked"
    );

    // What passes reaches the driver checked: an early vote for the next height is held.
    let GossipedMessage::Forward(msg) = judge(&f, vote(&f, 2, 0)) else {
        panic!("an early vote for the next height was not forwarded");
    };
    let from = f.signers[1].node_id();
    let effects = f.driver.handle(11, Input::Verified { from, msg });
    assert!(rejections(&effects).is_empty(), "{effects:?}");
    assert_eq!(f.driver.future_votes_held().len(), 1);
}

/// THREATS A12: a message the judge checked reaches the driver as `Input::Verified` and is not
/// checked there again (one signature check per message, in the judge). Shown with a forged
/// vote wrapped by hand, as only this crate can: the driver holds it, while the same bytes as
/// `Input::Message` are refused.
#[test]
fn judged_messages_are_not_checked_again() {
    let mut f = fixture();
    let mut forged = prevote(&f.signers[1], 2, 0, None);
    forged.signature = prevote(&f.signers[2], 2, 0, None).signature;
    let msg = ConsensusMessage::Vote(forged);
    let effects = send(&mut f, msg.encode());
    assert!(matches!(
        rejections(&effects)[..],
        [ConsensusError::BadSignature { .. }]
    ));
    assert!(f.driver.future_votes_held().is_empty());
    let from = f.signers[1].node_id();
    let msg = crate::VerifiedMessage(msg);
    let effects = f.driver.handle(11, Input::Verified { from, msg });
    assert!(rejections(&effects).is_empty(), "{effects:?}");
    assert_eq!(
        f.driver.future_votes_held().len(),
        1,
        "a judged message was checked again"
    );
}
