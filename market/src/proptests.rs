//! Property tests for the market's invariants.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use crate::auction::{AuctionRequest, Bid};
use crate::book::{AuctionStatus, Effect, Input, MarketConfig, MarketState};
use crate::capacity::{CapacityLedger, ReservationKey};
use crate::dmu::{CustomerRules, DmuConfig};
use crate::identity::Signer;
use crate::ids::{AuctionId, BidId};
use crate::message::MarketMessage;
use crate::resources::{Interface, Location, Near, Resources};
use crate::score::{ScoreWeights, select_winner};
use crate::test_utils::{AuctionBuilder, BidBuilder, signer};
use crate::validate::{ReplayGuard, check_bid_constraints};

const CENTER: Location = Location {
    lat: 48.85,
    lon: 2.35,
};

#[derive(Clone, Debug)]
struct BidParams {
    seed: u64,
    price: u64,
    cpu_cap: u64,
    lora: u32,
    reputation: u16,
    offset: Option<(f64, f64)>,
}

fn bid_params() -> impl Strategy<Value = BidParams> {
    (
        10u64..10_000,
        1u64..1_500,
        0u64..2_000,
        0u32..2,
        0u16..1_001,
        proptest::option::of((-1.0f64..1.0, -1.0f64..1.0)),
    )
        .prop_map(
            |(seed, price, cpu_cap, lora, reputation, offset)| BidParams {
                seed,
                price,
                cpu_cap,
                lora,
                reputation,
                offset,
            },
        )
}

/// Bids from distinct providers: a provider reusing a nonce is a replay (first one wins).
fn distinct(mut params: Vec<BidParams>) -> Vec<BidParams> {
    for (i, p) in params.iter_mut().enumerate() {
        p.seed = 10 + i as u64;
    }
    params
}

fn auction(max_price: u64, with_near: bool, lora: bool) -> AuctionRequest {
    let mut need = Resources {
        cpu_millis: 500,
        ..Resources::default()
    };
    if lora {
        need = need.with_interface(Interface::LoRa, 1);
    }
    let mut b = AuctionBuilder::new()
        .max_price(max_price)
        .resources(need)
        .nonce(1);
    if with_near {
        b = b.near(Near {
            center: CENTER,
            max_km: 50.0,
        });
    }
    b.build(&signer(1), 0)
}

fn make_bid(a: &AuctionRequest, p: &BidParams) -> Bid {
    let cap = Resources {
        cpu_millis: p.cpu_cap,
        ..Resources::default()
    }
    .with_interface(Interface::LoRa, p.lora);
    let mut b = BidBuilder::new(a)
        .price(p.price)
        .capacity(cap)
        .reputation(p.reputation)
        .nonce(p.seed);
    if let Some((dlat, dlon)) = p.offset {
        b = b.location(Location {
            lat: CENTER.lat + dlat,
            lon: CENTER.lon + dlon,
        });
    }
    b.build(&signer(p.seed))
}

/// Runs a customer node over `bids` (in the given order) and returns its outcome.
fn run_customer(
    a_spec: &AuctionBuilder,
    bids: &[BidParams],
) -> (Vec<Effect>, MarketState<crate::identity::KeySigner>) {
    let cfg = MarketConfig {
        dmu: DmuConfig {
            customer: CustomerRules {
                auto_award: true,
                weights: ScoreWeights::default(),
                ..CustomerRules::default()
            },
            ..DmuConfig::default()
        },
        ..MarketConfig::default()
    };
    let mut node = MarketState::new(signer(1), cfg);
    node.handle(0, Input::CreateAuction(a_spec.spec()));
    let req = node.auctions().values().next().unwrap().request.clone();
    for p in bids {
        let bid = make_bid(&req, p);
        node.handle(
            1,
            Input::Remote {
                from: bid.body.provider,
                msg: MarketMessage::Bid(bid),
            },
        );
    }
    (node.handle(10_000, Input::Tick), node)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn winner_is_unique_valid_and_best(
        max_price in 1u64..1_000,
        with_near in any::<bool>(),
        lora in any::<bool>(),
        params in proptest::collection::vec(bid_params(), 0..12).prop_map(distinct),
    ) {
        let a = auction(max_price, with_near, lora);
        let aid: AuctionId = a.id().unwrap();
        let bids: Vec<(BidId, Bid)> = params.iter().map(|p| { let b = make_bid(&a, p); (b.id().unwrap(), b) }).collect();
        let w = ScoreWeights::default();
        let winner = select_winner(&a, aid, bids.iter().map(|(i, b)| (i, b)), &w);
        let valid: Vec<&(BidId, Bid)> = bids.iter().filter(|(i, b)| check_bid_constraints(&a, aid, b, *i).is_ok()).collect();
        match winner {
            None => prop_assert!(valid.is_empty()),
            Some(win) => {
                let (_, wb) = bids.iter().find(|(i, _)| *i == win.bid).unwrap();
                prop_assert!(check_bid_constraints(&a, aid, wb, win.bid).is_ok());
                prop_assert!(wb.body.price <= max_price);
                prop_assert!(a.body.resources.fits_in(&wb.body.capacity));
                if let (Some(near), Some(loc)) = (&a.body.near, &wb.body.location) {
                    prop_assert!(near.admits(loc).is_some());
                }
                for (i, b) in &valid {
                    let s = crate::score::score_bid(&a, *i, b, &w);
                    prop_assert!(s.rank(&win) != std::cmp::Ordering::Greater);
                }
            }
        }
    }

    #[test]
    fn same_bids_in_any_order_give_the_same_single_award(
        params in proptest::collection::vec(bid_params(), 1..8).prop_map(distinct),
        seed in any::<u64>(),
    ) {
        let spec = AuctionBuilder::new().max_price(800);
        let mut shuffled = params.clone();
        // Deterministic Fisher-Yates driven by `seed`.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let (out1, node1) = run_customer(&spec, &params);
        let (out2, _) = run_customer(&spec, &shuffled);
        let closed = |out: &[Effect]| out.iter().filter_map(|e| match e { Effect::AuctionClosed { winner, .. } => Some(*winner), _ => None }).collect::<Vec<_>>();
        let awards = |out: &[Effect]| out.iter().filter_map(|e| match e { Effect::Awarded { provider, price, .. } => Some((*provider, *price)), _ => None }).collect::<Vec<_>>();
        prop_assert_eq!(closed(&out1), closed(&out2));
        prop_assert_eq!(awards(&out1), awards(&out2));
        prop_assert!(awards(&out1).len() <= 1);
        let entry = node1.auctions().values().next().unwrap();
        if let AuctionStatus::Awarded { provider, .. } = entry.status {
            let win = entry.bids.values().find(|b| b.body.provider == provider).unwrap();
            prop_assert!(win.body.price <= entry.request.body.max_price);
        }
    }

    #[test]
    fn capacity_is_never_over_committed(
        ops in proptest::collection::vec((any::<bool>(), 0u8..6, 0u64..1_500, 0u32..3), 1..60),
    ) {
        let cap = Resources { cpu_millis: 2_000, memory_bytes: 4_000, ..Resources::default() }
            .with_interface(Interface::LoRa, 2)
            .with_interface(Interface::Ble, 1);
        let mut ledger = CapacityLedger::new(cap.clone());
        for (reserve, k, cpu, radios) in ops {
            let key = ReservationKey::Auction(AuctionId([k; 32]));
            if reserve {
                let need = Resources { cpu_millis: cpu, memory_bytes: cpu, ..Resources::default() }
                    .with_interface(Interface::LoRa, radios);
                let _ = ledger.reserve(key, need, None);
            } else {
                ledger.release(&key);
            }
            let total = ledger.reserved_total().unwrap();
            prop_assert!(total.fits_in(&cap));
            prop_assert_eq!(total.checked_add(ledger.available()).unwrap(), cap.clone());
        }
    }

    #[test]
    fn auto_bidding_provider_never_over_commits(
        needs in proptest::collection::vec((1u64..1_500, 0u32..2, any::<bool>()), 1..12),
    ) {
        let cap = Resources { cpu_millis: 2_000, ..Resources::default() }.with_interface(Interface::LoRa, 1);
        let mut cfg = MarketConfig { capacity: cap.clone(), ..MarketConfig::default() };
        cfg.dmu.provider.auto_bid = true;
        // Every customer may hold all of it (not only the share of customers nobody vouched
        // for, THREATS C31), so capacity is what bounds the bids.
        cfg.dmu.provider.stranger_share_permille = 1000;
        let mut provider = MarketState::new(signer(2), cfg);
        let mut bids = 0;
        let mut now = 0;
        for (i, (cpu, lora, tick)) in needs.into_iter().enumerate() {
            let need = Resources { cpu_millis: cpu, ..Resources::default() }.with_interface(Interface::LoRa, lora);
            now += 1_000;
            let req = AuctionBuilder::new().resources(need).build(&signer(50 + i as u64), now);
            let out = provider.handle(now, Input::Remote { from: req.body.customer, msg: MarketMessage::Auction(req) });
            bids += out.iter().filter(|e| matches!(e, Effect::Send { msg: MarketMessage::Bid(_), .. })).count();
            if tick {
                now += 100_000; // past every earlier auction's expiry: holds are pruned
                provider.handle(now, Input::Tick);
            }
            let total = provider.ledger().reserved_total().unwrap();
            prop_assert!(total.fits_in(&cap), "reserved {:?} exceeds {:?}", total, cap);
            prop_assert!(provider.ledger().reservations().len() <= bids);
        }
    }

    #[test]
    fn an_accepted_nonce_is_never_accepted_again(
        nonces in proptest::collection::vec(0u64..40, 1..200),
        window in 1usize..16,
    ) {
        let author = signer(3).node_id();
        let mut guard = ReplayGuard::new(window);
        let mut accepted = std::collections::BTreeSet::new();
        for n in nonces {
            if guard.check_and_record("bid", author, n, u64::MAX).is_ok() {
                prop_assert!(accepted.insert(n), "nonce {} accepted twice", n);
            }
        }
    }
}
