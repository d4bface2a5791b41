//! Deal checks: what the customer builds passes the provider's checks; every field a customer
//! could bend is refused with the variant naming it.

use agora_market::{
    AgreedTerms, AuctionId, AuctionKind, AwardId, AwardSubject, BidId, Interface, KeySigner,
    Resources, Signer,
};

use super::*;
use crate::contract::Qos;
use crate::test_utils::{committee_signers, signer, test_cid};

const NOW: Timestamp = 1_700_000_000_000;

fn customer() -> KeySigner {
    signer(1)
}

fn provider() -> KeySigner {
    signer(2)
}

fn terms(kind: AuctionKind) -> AgreedTerms {
    AgreedTerms {
        award: AwardId([9; 32]),
        customer: customer().node_id(),
        provider: provider().node_id(),
        subject: AwardSubject::Bid {
            auction: AuctionId([3; 32]),
            bid: BidId([4; 32]),
        },
        kind,
        resources: Resources {
            cpu_millis: 100,
            memory_bytes: 32 << 20,
            storage_bytes: 2 << 20,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1),
        duration_ms: 600_000,
        price: 1_000,
    }
}

fn committee(n: usize) -> CommitteeView {
    CommitteeView {
        arbitrators: committee_signers(n).iter().map(|s| s.node_id()).collect(),
        min_size: 4,
    }
}

fn auction() -> AuctionFacts {
    AuctionFacts {
        image: Some(test_cid(b"image").to_string()),
        start_at: None,
    }
}

struct Case {
    terms: AgreedTerms,
    committee: CommitteeView,
    auction: AuctionFacts,
}

impl Case {
    fn new(kind: AuctionKind) -> Self {
        Case {
            terms: terms(kind),
            committee: committee(4),
            auction: auction(),
        }
    }

    fn ctx(&self) -> DealContext<'_> {
        DealContext {
            terms: &self.terms,
            committee: &self.committee,
            auction: &self.auction,
            now: NOW,
        }
    }

    fn build(&self, policy: &ProposalPolicy) -> Contract {
        let commitment = (self.terms.kind == AuctionKind::Storage).then(|| test_cid(b"commit"));
        build_contract(&self.ctx(), policy, commitment).unwrap()
    }

    /// The provider's verdict on `contract` signed by the customer.
    fn check(&self, contract: &Contract) -> Result<(), DealRefusal> {
        self.check_with(&DealPolicy::default(), contract)
    }

    fn check_with(&self, policy: &DealPolicy, contract: &Contract) -> Result<(), DealRefusal> {
        // Signed by the real customer's key even when the contract names someone else.
        let sig = customer().sign(
            agora_market::Domain::CONTRACT,
            &contract.canonical_bytes().unwrap(),
        );
        check_proposal(
            &self.ctx(),
            policy,
            provider().node_id(),
            customer().node_id(),
            contract,
            &sig,
        )
    }
}

#[test]
fn what_the_customer_builds_the_provider_accepts_for_every_kind() {
    for kind in [
        AuctionKind::Hosted,
        AuctionKind::Standby,
        AuctionKind::Storage,
    ] {
        let case = Case::new(kind);
        let c = case.build(&ProposalPolicy::default());
        assert_eq!(c.kind, kind_of(kind));
        assert_eq!(c.committee.len(), 4);
        assert_eq!(c.nonce, deal_nonce(&case.terms.award));
        assert_eq!(c.terms.interfaces, vec!["lora:1".to_string()]);
        assert_eq!(case.check(&c), Ok(()), "{kind:?}");
    }
}

#[test]
fn the_devnet_and_default_proposals_pass_the_default_policy() {
    let devnet = ProposalPolicy {
        handover_after_ms: 1_000,
        heartbeat_interval_ms: 500,
        ..ProposalPolicy::default()
    };
    let case = Case::new(AuctionKind::Standby);
    assert_eq!(case.check(&case.build(&devnet)), Ok(()));
    // An auction without an image: the customer's default, which the provider cannot bind.
    let mut case = Case::new(AuctionKind::Hosted);
    case.auction.image = None;
    let c = case.build(&ProposalPolicy::default());
    assert_eq!(c.service_image, EMPTY_IMAGE.parse::<Cid>().unwrap());
    assert_eq!(case.check(&c), Ok(()));
}

#[test]
fn a_customer_demanding_perfect_uptime_and_instant_activation_is_refused() {
    let case = Case::new(AuctionKind::Standby);
    let greedy = ProposalPolicy {
        min_uptime_permille: 1000,
        max_activation_delay_ms: 0,
        ..ProposalPolicy::default()
    };
    let c = case.build(&greedy);
    assert_eq!(
        case.check(&c),
        Err(DealRefusal::UptimeTooStrict {
            max: 950,
            got: 1000
        })
    );
    let instant = ProposalPolicy {
        max_activation_delay_ms: 0,
        ..ProposalPolicy::default()
    };
    let err = case.check(&case.build(&instant)).unwrap_err();
    assert_eq!(
        err,
        DealRefusal::ActivationDelayTooShort { min: 2_000, got: 0 }
    );
    assert!(err.to_string().contains("0 ms"), "{err}");
}

/// Mutates a valid contract and expects a refusal matching `expected`.
fn refused(
    kind: AuctionKind,
    mutate: impl FnOnce(&mut Contract),
    expected: impl Fn(&DealRefusal) -> bool,
) {
    let case = Case::new(kind);
    let mut c = case.build(&ProposalPolicy::default());
    mutate(&mut c);
    let verdict = case.check(&c);
    match &verdict {
        Err(r) if expected(r) => {}
        other => panic!("unexpected verdict {other:?}"),
    }
}

#[test]
fn every_bent_field_is_refused_with_its_own_variant() {
    use AuctionKind::{Hosted, Standby, Storage};
    use DealRefusal as R;
    refused(
        Hosted,
        |c| c.customer = signer(7).node_id(),
        |r| matches!(r, R::SenderNotCustomer { .. }),
    );
    refused(
        Hosted,
        |c| c.provider = signer(7).node_id(),
        |r| matches!(r, R::WrongProvider { .. }),
    );
    refused(
        Hosted,
        |c| c.kind = ContractKind::Storage,
        |r| matches!(r, R::WrongKind { .. }),
    );
    type Bend = fn(&mut Contract);
    let fields: [(TermsField, Bend); 7] = [
        (TermsField::Payment, |c| c.payment += 1),
        (TermsField::Price, |c| c.terms.price += 1),
        (TermsField::Duration, |c| c.duration_ms += 1),
        (TermsField::TermsDuration, |c| c.terms.duration_ms += 1),
        (TermsField::Cpu, |c| c.terms.cpu_millis += 1),
        (TermsField::Memory, |c| c.terms.memory_bytes += 1),
        (TermsField::Storage, |c| c.terms.storage_bytes += 1),
    ];
    for (field, bend) in fields {
        refused(
            Storage,
            bend,
            |r| matches!(r, R::TermsDiffer { field: f, .. } if *f == field),
        );
    }
    refused(
        Hosted,
        |c| c.terms.interfaces.push("ble:1".into()),
        |r| matches!(r, R::InterfacesDiffer { .. }),
    );
    refused(
        Hosted,
        |c| {
            c.service_image = test_cid(b"other");
            c.config = c.service_image;
        },
        |r| matches!(r, R::ImageDiffers { .. }),
    );
    refused(
        Hosted,
        |c| c.config = test_cid(b"other"),
        |r| matches!(r, R::ConfigDiffers { .. }),
    );
    refused(
        Hosted,
        |c| c.activation = ActivationClause::At(NOW + 5),
        |r| matches!(r, R::WrongActivation { .. }),
    );
    refused(
        Standby,
        |c| c.activation = ActivationClause::Immediately,
        |r| matches!(r, R::WrongActivation { .. }),
    );
    refused(
        Standby,
        |c| {
            c.activation = ActivationClause::OnHandover {
                unreachable_for_ms: 0,
            }
        },
        |r| matches!(r, R::HandoverDelayOutOfBounds { got: 0, .. }),
    );
    refused(
        Hosted,
        |c| c.qos.heartbeat_interval_ms = 1,
        |r| matches!(r, R::HeartbeatIntervalOutOfBounds { got: 1, .. }),
    );
    refused(
        Hosted,
        |c| c.stakes.provider_stake = 1_001,
        |r| {
            matches!(
                r,
                R::ProviderStakeTooHigh {
                    max: 1_000,
                    got: 1_001
                }
            )
        },
    );
    refused(
        Hosted,
        |c| c.stakes.customer_stake = 49,
        |r| matches!(r, R::CustomerStakeTooLow { min: 50, got: 49 }),
    );
    refused(
        Hosted,
        |c| c.created_at = NOW - 60_001,
        |r| matches!(r, R::CreatedAtOutOfBounds { .. }),
    );
    refused(
        Hosted,
        |c| c.nonce += 1,
        |r| matches!(r, R::WrongNonce { .. }),
    );
}

#[test]
fn the_committee_must_be_the_ledgers_arbitrators_minus_the_parties() {
    use DealRefusal as R;
    // One member missing: too small for the ledger.
    refused(
        AuctionKind::Hosted,
        |c| {
            c.committee.pop();
        },
        |r| matches!(r, R::CommitteeTooSmall { min: 4, got: 3 }),
    );
    // An outsider instead of a member.
    refused(
        AuctionKind::Hosted,
        |c| c.committee[0] = signer(555).node_id(),
        |r| matches!(r, R::CommitteeDiffers { .. }),
    );
    // A member twice.
    refused(
        AuctionKind::Hosted,
        |c| c.committee[0] = c.committee[1],
        |r| matches!(r, R::CommitteeDiffers { .. }),
    );
    // An eligible arbitrator left out (the ledger has five; the contract names four).
    let mut case = Case::new(AuctionKind::Hosted);
    let c = case.build(&ProposalPolicy::default());
    case.committee = committee(5);
    assert!(matches!(case.check(&c), Err(R::CommitteeDiffers { .. })));
}

#[test]
fn an_arbitrator_that_is_a_party_is_left_out() {
    let mut case = Case::new(AuctionKind::Hosted);
    let mut arbitrators = committee(5).arbitrators;
    arbitrators.push(case.terms.customer);
    case.committee.arbitrators = arbitrators;
    let c = case.build(&ProposalPolicy::default());
    assert_eq!(c.committee.len(), 5);
    assert!(!c.committee.contains(&case.terms.customer));
    assert_eq!(case.check(&c), Ok(()));
}

#[test]
fn a_forged_signature_or_sender_is_refused() {
    let case = Case::new(AuctionKind::Hosted);
    let c = case.build(&ProposalPolicy::default());
    let (_, sig) = c.sign_as(&provider()).unwrap();
    let me = provider().node_id();
    let verdict = check_proposal(
        &case.ctx(),
        &DealPolicy::default(),
        me,
        customer().node_id(),
        &c,
        &sig,
    );
    assert_eq!(verdict, Err(DealRefusal::BadCustomerSignature));
    let (_, sig) = c.sign_as(&customer()).unwrap();
    let verdict = check_proposal(
        &case.ctx(),
        &DealPolicy::default(),
        me,
        signer(7).node_id(),
        &c,
        &sig,
    );
    assert!(matches!(
        verdict,
        Err(DealRefusal::SenderNotCustomer { .. })
    ));
}

#[test]
fn a_scheduled_hosted_slot_activates_at_the_auctions_start() {
    let mut case = Case::new(AuctionKind::Hosted);
    case.auction.start_at = Some(NOW + 60_000);
    let c = case.build(&ProposalPolicy::default());
    assert_eq!(c.activation, ActivationClause::At(NOW + 60_000));
    assert_eq!(case.check(&c), Ok(()));
    let mut immediate = c.clone();
    immediate.activation = ActivationClause::Immediately;
    assert!(matches!(
        case.check(&immediate),
        Err(DealRefusal::WrongActivation { .. })
    ));
}

/// A slot whose activation deadline leaves the provider less than its own activation time
/// (it began before the award) is refused: its contract would be settled `NoActivation` as
/// soon as it is registered.
#[test]
fn a_slot_already_due_is_refused() {
    let policy = DealPolicy::default();
    let mut case = Case::new(AuctionKind::Hosted);
    let delay = ProposalPolicy::default().max_activation_delay_ms;
    // Due exactly the provider's minimum from now: still accepted.
    case.auction.start_at = Some(NOW + policy.min_activation_delay_ms - delay);
    let c = case.build(&ProposalPolicy::default());
    assert_eq!(case.check(&c), Ok(()));
    // One millisecond less, or a slot that began a minute ago: refused, saying why.
    for start in [
        NOW + policy.min_activation_delay_ms - delay - 1,
        NOW - 60_000,
    ] {
        case.auction.start_at = Some(start);
        let c = case.build(&ProposalPolicy::default());
        let refused = case.check(&c).unwrap_err();
        assert!(
            matches!(refused, DealRefusal::SlotAlreadyDue { start_at, .. } if start_at == start),
            "{refused}"
        );
        assert!(refused.to_string().contains("began before"), "{refused}");
    }
}

/// A slot starting further ahead than the provider's `max_slot_lead_ms` is refused, however
/// the customer got it past the market (THREATS C34): its capacity and stake would be held
/// until the slot ends.
#[test]
fn a_slot_too_far_ahead_is_refused() {
    let policy = DealPolicy::default();
    let mut case = Case::new(AuctionKind::Hosted);
    case.auction.start_at = Some(NOW + policy.max_slot_lead_ms);
    let c = case.build(&ProposalPolicy::default());
    assert_eq!(case.check(&c), Ok(()));
    for start in [NOW + policy.max_slot_lead_ms + 1, u64::MAX - 1] {
        case.auction.start_at = Some(start);
        let c = case.build(&ProposalPolicy::default());
        let refused = case.check(&c).unwrap_err();
        assert!(
            matches!(refused, DealRefusal::SlotTooFarAhead { start_at, .. } if start_at == start),
            "{refused}"
        );
    }
    // A provider with a shorter bound refuses sooner.
    let strict = DealPolicy {
        max_slot_lead_ms: 60_000,
        ..DealPolicy::default()
    };
    case.auction.start_at = Some(NOW + 60_001);
    let c = case.build(&ProposalPolicy::default());
    assert!(matches!(
        case.check_with(&strict, &c),
        Err(DealRefusal::SlotTooFarAhead { .. })
    ));
}

#[test]
fn the_customer_cannot_build_what_the_ledger_would_refuse() {
    let mut case = Case::new(AuctionKind::Hosted);
    case.committee = committee(3);
    assert_eq!(
        build_contract(&case.ctx(), &ProposalPolicy::default(), None),
        Err(DealError::CommitteeTooSmall { min: 4, got: 3 })
    );
    let case = Case::new(AuctionKind::Storage);
    assert!(matches!(
        build_contract(&case.ctx(), &ProposalPolicy::default(), None),
        Err(DealError::MissingCommitment { .. })
    ));
    let mut case = Case::new(AuctionKind::Hosted);
    case.auction.image = Some("not a cid".into());
    assert!(matches!(
        build_contract(&case.ctx(), &ProposalPolicy::default(), None),
        Err(DealError::BadImage { .. })
    ));
    // The provider refuses a contract for an auction whose image is not a CID.
    let good = Case::new(AuctionKind::Hosted).build(&ProposalPolicy::default());
    assert!(matches!(
        case.check(&good),
        Err(DealRefusal::AuctionImageInvalid { .. })
    ));
}

#[test]
fn refusals_travel_as_cbor_and_json_and_say_what_differs() {
    let refusals = [
        DealRefusal::TermsDiffer {
            field: TermsField::Payment,
            expected: 1_000,
            got: 10,
        },
        DealRefusal::CommitteeDiffers {
            expected: vec![signer(100).node_id()],
            got: vec![signer(5).node_id()],
        },
        DealRefusal::ImageDiffers {
            expected: Box::new(test_cid(b"a")),
            got: Box::new(test_cid(b"b")),
        },
        DealRefusal::WrongActivation {
            kind: ContractKind::Hosted,
            start_at: Some(5),
            got: ActivationClause::Immediately,
        },
        DealRefusal::SlotTooFarAhead {
            start_at: u64::MAX - 1,
            now: NOW,
            max_lead_ms: 86_400_000,
        },
    ];
    for r in refusals {
        let cbor = serde_cbor::to_vec(&r).unwrap();
        assert_eq!(serde_cbor::from_slice::<DealRefusal>(&cbor).unwrap(), r);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<DealRefusal>(&json).unwrap(), r);
    }
    let msg = DealRefusal::TermsDiffer {
        field: TermsField::Payment,
        expected: 1_000,
        got: 10,
    }
    .to_string();
    assert!(
        msg.contains("Payment") && msg.contains("1000") && msg.contains("10"),
        "{msg}"
    );
}

#[test]
fn the_committee_view_leaves_out_slashed_arbitrators() {
    use crate::ledger::tests::Harness;
    let mut h = Harness::new();
    let view = CommitteeView::of(&h.ledger);
    assert_eq!(view.arbitrators.len(), 4);
    assert_eq!(view.min_size, 4);
    h.slash_arbitrator(0);
    let view = CommitteeView::of(&h.ledger);
    assert_eq!(view.arbitrators.len(), 3);
    assert!(!view.arbitrators.contains(&h.committee[0].node_id()));
}

#[test]
fn qos_at_the_policy_bounds_is_accepted() {
    let case = Case::new(AuctionKind::Hosted);
    let policy = DealPolicy::default();
    let edge = ProposalPolicy {
        min_uptime_permille: policy.max_min_uptime_permille,
        max_activation_delay_ms: policy.min_activation_delay_ms,
        heartbeat_interval_ms: policy.min_heartbeat_interval_ms,
        ..ProposalPolicy::default()
    };
    let c = case.build(&edge);
    assert_eq!(
        c.qos,
        Qos {
            max_activation_delay_ms: 2_000,
            min_uptime_permille: 950,
            heartbeat_interval_ms: 250,
        }
    );
    assert_eq!(case.check_with(&policy, &c), Ok(()));
}

/// THREATS C35: a restarted provider holds what its running contracts' terms say they use.
#[test]
fn a_contract_s_terms_give_back_the_resources_it_holds() {
    let agreed = Resources {
        cpu_millis: 500,
        memory_bytes: 64 << 20,
        storage_bytes: 1 << 30,
        bandwidth_bps: 1_000_000,
        ..Resources::default()
    }
    .with_interface(Interface::LoRa, 1)
    .with_interface(Interface::Ble, 2);
    let mut terms = Terms {
        cpu_millis: agreed.cpu_millis,
        memory_bytes: agreed.memory_bytes,
        storage_bytes: agreed.storage_bytes,
        interfaces: interfaces_of(&agreed),
        price: 10,
        duration_ms: 60_000,
    };
    // Everything but the bandwidth, which the terms do not carry.
    let back = resources_of(&terms);
    assert_eq!(
        back,
        Resources {
            bandwidth_bps: 0,
            ..agreed
        }
    );
    // Names it does not know are left out; counts saturate rather than overflow.
    terms.interfaces = vec![
        "temp0".into(),
        "lora:x".into(),
        "ble:0".into(),
        "lora:4294967295".into(),
        "LoRa:1".into(),
    ];
    let odd = resources_of(&terms);
    assert_eq!(odd.interface_count(Interface::LoRa), u32::MAX);
    assert_eq!(odd.interfaces.len(), 1);
}
