//! Committees (#13.2) and equivocation slashing (#13.13).

use agora_market::{KeySigner, Signer};

use super::{Harness, equivocation};
use crate::attestation::Liveness;
use crate::ledger::{LedgerError, LedgerEvent, TxKind};
use crate::test_utils::{ContractBuilder, signer};
use crate::vote::{BlockHash, ConsensusVote, EquivocationEvidence, SignedVote, VoteKind};

#[test]
fn a_committee_below_the_minimum_is_refused() {
    let mut h = Harness::new();
    let c = h.customer();
    let members: Vec<_> = h.committee.iter().map(|s| s.node_id()).collect();
    for size in [1, 3] {
        let small = ContractBuilder::new(1, 2)
            .committee(members[..size].to_vec())
            .nonce(size as u64)
            .signed();
        let err = h
            .try_apply(&c, TxKind::RegisterContract(Box::new(small)))
            .unwrap_err();
        assert!(
            matches!(err, LedgerError::CommitteeTooSmall { size: s, min: 4, .. } if s == size),
            "{err}"
        );
    }
    h.register(ContractBuilder::new(1, 2).committee(members).signed());
}

#[test]
fn a_committee_with_a_party_a_duplicate_or_a_stranger_is_refused() {
    let mut h = Harness::new();
    let c = h.customer();
    let mut members: Vec<_> = h.committee.iter().map(|s| s.node_id()).collect();
    let cases = [
        {
            let mut m = members.clone();
            m.push(c.node_id());
            m
        },
        {
            let mut m = members.clone();
            m.push(m[0]);
            m
        },
    ];
    for (i, committee) in cases.into_iter().enumerate() {
        let bad = ContractBuilder::new(1, 2)
            .committee(committee)
            .nonce(i as u64)
            .signed();
        let err = h
            .try_apply(&c, TxKind::RegisterContract(Box::new(bad)))
            .unwrap_err();
        assert!(matches!(err, LedgerError::Contract(_)), "{err}");
    }
    members[0] = KeySigner::from_seed(31_337).node_id();
    let bad = ContractBuilder::new(1, 2)
        .committee(members)
        .nonce(9)
        .signed();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(bad)))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::UnknownArbitrator { .. }),
        "{err}"
    );
}

#[test]
fn equivocation_burns_the_bond_once_and_is_recorded() {
    let mut h = Harness::new();
    let bad = h.committee[1].node_id();
    let bond = h.ledger.params().arbitrator_bond;
    let supply = h.ledger.supply().total();
    let events = h.slash_arbitrator(1);
    assert_eq!(
        events,
        vec![LedgerEvent::ArbitratorSlashed {
            arbitrator: bad,
            reporter: h.accounts[2].node_id(),
            height: 5,
            round: 0,
            amount: bond,
        }]
    );
    assert_eq!(h.ledger.account(&bad).unwrap().bonded, 0);
    assert_eq!(h.ledger.supply().burned, bond);
    assert_eq!(h.ledger.supply().total(), supply - bond);
    assert!(h.ledger.is_slashed(&bad));
    assert_eq!(h.ledger.slashed()[&bad].amount, bond);
    h.ledger.audit().unwrap();
    // The same evidence again, or other evidence against the same arbitrator: refused.
    let reporter = h.accounts[3].clone();
    let again = equivocation(&h.committee[1], 5, 0);
    let err = h
        .try_apply(&reporter, TxKind::ReportEquivocation(Box::new(again)))
        .unwrap_err();
    assert_eq!(err, LedgerError::AlreadySlashed { arbitrator: bad });
    let other = equivocation(&h.committee[1], 9, 3);
    let err = h
        .try_apply(&reporter, TxKind::ReportEquivocation(Box::new(other)))
        .unwrap_err();
    assert_eq!(err, LedgerError::AlreadySlashed { arbitrator: bad });
    assert_eq!(h.ledger.supply().burned, bond);
}

#[test]
fn evidence_that_proves_nothing_is_refused() {
    let mut h = Harness::new();
    let reporter = h.accounts[2].clone();
    let s = h.committee[0].clone();
    let chain = crate::vote::ChainTag::of(h.ledger.chain_id());
    let vote = |b: u8, voter| ConsensusVote {
        kind: VoteKind::Precommit,
        height: 3,
        round: 1,
        block: Some(BlockHash([b; 32])),
        voter,
    };
    // The same vote twice.
    let same = EquivocationEvidence {
        first: SignedVote::new(vote(1, s.node_id()), &chain, &s),
        second: SignedVote::new(vote(1, s.node_id()), &chain, &s),
    };
    // A vote forged in the arbitrator's name.
    let forged = EquivocationEvidence {
        first: SignedVote::new(vote(1, s.node_id()), &chain, &s),
        second: SignedVote::new(vote(2, s.node_id()), &chain, &reporter),
    };
    for ev in [same, forged] {
        let err = h
            .try_apply(&reporter, TxKind::ReportEquivocation(Box::new(ev)))
            .unwrap_err();
        assert!(matches!(err, LedgerError::InvalidEquivocation(_)), "{err}");
    }
    // Conflicting votes of someone who is no arbitrator prove nothing about the committee.
    let outsider = signer(4);
    let ev = equivocation(&outsider, 3, 1);
    let err = h
        .try_apply(&reporter, TxKind::ReportEquivocation(Box::new(ev)))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::NotCommitteeMember { .. }),
        "{err}"
    );
    assert!(h.ledger.slashed().is_empty());
}

#[test]
fn a_slashed_arbitrator_sits_on_no_new_committee_and_its_reports_do_not_count() {
    let mut h = Harness::new();
    // A contract registered before the slash keeps its committee.
    let id = h.armed(ContractBuilder::new(1, 2).signed());
    h.slash_arbitrator(0);
    let c = h.customer();
    let later = ContractBuilder::new(1, 2).nonce(5).signed();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(later)))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::SlashedInCommittee { .. }),
        "{err}"
    );
    assert!(
        !h.ledger
            .eligible_committee()
            .contains(&h.committee[0].node_id())
    );
    let arb = h.committee[0].clone();
    let err = h
        .try_apply(
            &arb,
            TxKind::Attest {
                subject: c.node_id(),
                liveness: Liveness::Reachable,
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::SlashedArbitrator { .. }),
        "{err}"
    );
    let p = h.provider();
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 1_000,
        },
    );
    h.now = 3_000;
    let err = h
        .try_apply(
            &arb,
            TxKind::ProbeResult {
                contract: id,
                interval: 0,
                up: false,
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::SlashedArbitrator { .. }),
        "{err}"
    );
}

/// THREATS A8: an arbitrator's votes at the same height and round on another chain (its key
/// serves two chains) are no equivocation here: its bond stays.
#[test]
fn votes_of_another_chain_are_no_evidence() {
    let mut h = Harness::new();
    let reporter = h.accounts[0].clone();
    let s = h.committee[1].clone();
    let here = crate::vote::ChainTag::of(h.ledger.chain_id());
    let there = crate::vote::ChainTag::of("an-older-devnet");
    let vote = |b: u8| ConsensusVote {
        kind: VoteKind::Precommit,
        height: 5,
        round: 0,
        block: Some(BlockHash([b; 32])),
        voter: s.node_id(),
    };
    let mixed = EquivocationEvidence {
        first: SignedVote::new(vote(1), &here, &s),
        second: SignedVote::new(vote(2), &there, &s),
    };
    let elsewhere = EquivocationEvidence {
        first: SignedVote::new(vote(1), &there, &s),
        second: SignedVote::new(vote(2), &there, &s),
    };
    for ev in [mixed, elsewhere] {
        let err = h
            .try_apply(&reporter, TxKind::ReportEquivocation(Box::new(ev)))
            .unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }
    assert!(h.ledger.slashed().is_empty(), "no bond burnt");
}
