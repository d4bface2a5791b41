//! THREATS C35: a restarted provider takes no work before the capacity of the contracts it still
//! runs is held, and then bids on what it passed over.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::auction::{AwardBody, AwardSubject};
use crate::identity::KeySigner;
use crate::resources::Interface;
use crate::signed::Signed;
use crate::test_utils::{AuctionBuilder, fresh_nonce, provider_config, signer};

/// A provider with one LoRa radio, restarted: its book waits for its running contracts.
fn restarted_provider() -> MarketState<KeySigner> {
    let mut c = provider_config(
        Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1),
    );
    // Who pays is not the point here (THREATS C31 has its own test below).
    c.dmu.provider.stranger_share_permille = 1000;
    MarketState::awaiting_contracts(signer(2), c)
}

/// A restarted provider of four cores, customers nobody vouched for kept to their default share.
fn restarted_on_four_cores() -> MarketState<KeySigner> {
    let four_cores = Resources {
        cpu_millis: 4000,
        memory_bytes: 1 << 30,
        ..Resources::default()
    };
    MarketState::awaiting_contracts(signer(2), provider_config(four_cores))
}

fn remote(node: &mut MarketState<KeySigner>, now: Timestamp, msg: MarketMessage) -> Vec<Effect> {
    node.handle(
        now,
        Input::Remote {
            from: NodeId([9; 32]),
            msg,
        },
    )
}

/// The auctions bid on in `out`.
fn bids_on(out: &[Effect]) -> Vec<AuctionId> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Send {
                msg: MarketMessage::Bid(b),
                ..
            } => Some(b.body.auction),
            _ => None,
        })
        .collect()
}

fn refused_not_restored(out: &[Effect]) -> bool {
    out.iter().any(|e| {
        matches!(
            e,
            Effect::Rejected {
                error: MarketError::CapacityNotRestored,
                ..
            }
        )
    })
}

/// The contract the provider ran before its restart: the radio and 200 millicores.
fn running_contract() -> ContractHold {
    ContractHold {
        contract: [7; 32],
        resources: Resources {
            cpu_millis: 200,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1),
        until: 1_000_000,
    }
}

#[test]
fn no_bid_is_made_before_the_capacity_of_running_contracts_is_restored() {
    let mut p = restarted_provider();
    assert!(!p.capacity_restored());
    let customer = signer(1);
    // One auction needs the radio the running contract holds, the other only CPU.
    let radio = AuctionBuilder::new()
        .resources(Resources::default().with_interface(Interface::LoRa, 1))
        .build(&customer, 1);
    let cpu = AuctionBuilder::new().build(&customer, 1);
    let (radio_id, cpu_id) = (radio.id().unwrap(), cpu.id().unwrap());
    for req in [radio, cpu] {
        let out = remote(&mut p, 1, MarketMessage::Auction(req));
        assert!(bids_on(&out).is_empty(), "bid before the restore: {out:?}");
    }
    assert!(p.ledger().reservations().is_empty());
    assert_eq!(p.book_stats().counters.auto_bids_deferred, 2);
    // Nor by hand.
    let spec = crate::auction::BidSpec {
        price: 100,
        capacity: p.ledger().available().clone(),
        location: None,
        reputation_permille: 500,
    };
    let out = p.handle(
        1,
        Input::PlaceBid {
            auction: cpu_id,
            spec,
        },
    );
    assert!(refused_not_restored(&out), "{out:?}");
    assert!(p.ledger().reservations().is_empty());

    // The ledger caught up: the running contract holds the radio; a contract already past its
    // end holds nothing.
    let ended = ContractHold {
        contract: [8; 32],
        until: 2,
        ..running_contract()
    };
    let out = p.handle(2, Input::RestoreCapacity(vec![running_contract(), ended]));
    assert!(p.capacity_restored());
    let key = ReservationKey::Contract([7; 32]);
    assert_eq!(
        p.ledger().reservations().get(&key).unwrap().expires_at,
        Some(1_000_000)
    );
    assert!(
        !p.ledger()
            .reservations()
            .contains_key(&ReservationKey::Contract([8; 32]))
    );
    assert!(out.contains(&Effect::ScheduleTimeout { at: 1_000_000 }));
    // The passed-over auctions are decided now, against what is really free.
    assert_eq!(bids_on(&out), vec![cpu_id], "{out:?}");
    assert!(
        !p.ledger()
            .reservations()
            .contains_key(&ReservationKey::Auction(radio_id))
    );
    assert_eq!(p.ledger().available().interface_count(Interface::LoRa), 0);
    assert_eq!(p.ledger().available().cpu_millis, 1000 - 200 - 500);

    // A second restore keeps the hold as it is; the contract's close lets the radio go.
    p.handle(3, Input::RestoreCapacity(vec![running_contract()]));
    assert_eq!(p.ledger().reservations().len(), 2);
    p.handle(4, Input::ReleaseCapacity(key));
    assert_eq!(p.ledger().available().interface_count(Interface::LoRa), 1);
}

#[test]
fn an_offer_taken_before_the_restore_is_refused_and_changes_nothing() {
    let mut p = restarted_provider();
    let out = p.handle(
        1,
        Input::PublishOffer(OfferSpec {
            region: "eu-west".into(),
            resources: Resources {
                cpu_millis: 100,
                ..Resources::default()
            },
            price_per_hour: 10,
            location: None,
            ttl_ms: 3_600_000,
        }),
    );
    let offer = out
        .iter()
        .find_map(|e| match e {
            Effect::Broadcast {
                msg: MarketMessage::Offer(o),
                ..
            } => Some(o.clone()),
            _ => None,
        })
        .unwrap();
    let customer = signer(1);
    let body = AwardBody {
        customer: customer.node_id(),
        provider: p.node_id(),
        subject: AwardSubject::Offer {
            offer: offer.id().unwrap(),
        },
        price: 10,
        resources: offer.body.resources.clone(),
        duration_ms: 3_600_000,
        kind: crate::auction::AuctionKind::Hosted,
        nonce: fresh_nonce(),
        expires_at: 100_000,
    };
    let award = Signed::sign(body, &customer).unwrap();
    let out = remote(&mut p, 2, MarketMessage::Award(award.clone()));
    assert!(refused_not_restored(&out), "{out:?}");
    assert!(p.ledger().reservations().is_empty());
    // Once restored, the same award is taken: the refusal recorded nothing.
    p.handle(3, Input::RestoreCapacity(Vec::new()));
    let out = remote(&mut p, 4, MarketMessage::Award(award));
    assert!(
        out.iter().any(|e| matches!(e, Effect::Awarded { .. })),
        "{out:?}"
    );
}

/// The auctions passed over while restoring are decided as on their arrival, the strangers'
/// budgets included (THREATS C31): three keys nobody vouched for, half a core each, get two
/// holds between them on four cores, not three.
#[test]
fn auctions_passed_over_while_restoring_keep_to_the_strangers_share() {
    let mut p = restarted_on_four_cores();
    let half = Resources {
        cpu_millis: 500,
        ..Resources::default()
    };
    for (i, seed) in [11, 12, 13].into_iter().enumerate() {
        let now = i as u64;
        let a = AuctionBuilder::new()
            .resources(half.clone())
            .build(&signer(seed), now);
        assert!(bids_on(&remote(&mut p, now, MarketMessage::Auction(a))).is_empty());
    }
    let out = p.handle(10, Input::RestoreCapacity(Vec::new()));
    assert_eq!(bids_on(&out).len(), 2, "{out:?}");
}

/// The running contracts a restart restored are paid for: they use none of the strangers'
/// share (THREATS C31), so a provider half taken by them still bids for a customer nobody
/// vouched for.
#[test]
fn restored_contracts_are_not_counted_as_strangers_holds() {
    let mut p = restarted_on_four_cores();
    let running = ContractHold {
        contract: [9; 32],
        resources: Resources {
            cpu_millis: 2000,
            ..Resources::default()
        },
        until: 1_000_000,
    };
    p.handle(1, Input::RestoreCapacity(vec![running]));
    let a = AuctionBuilder::new()
        .resources(Resources {
            cpu_millis: 500,
            ..Resources::default()
        })
        .build(&signer(11), 2);
    let out = remote(&mut p, 2, MarketMessage::Auction(a));
    assert_eq!(bids_on(&out).len(), 1, "{out:?}");
}
