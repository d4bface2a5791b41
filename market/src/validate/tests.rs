#![allow(clippy::unwrap_used)]
use super::*;
use crate::resources::{Location, Near};
use crate::test_utils::{AuctionBuilder, BidBuilder, offer, signer};

fn limits() -> Limits {
    Limits::default()
}

#[test]
fn auction_checks() {
    let c = signer(1);
    let ok = AuctionBuilder::new().build(&c, 0);
    assert_eq!(check_auction(&ok, 1, &limits()).unwrap(), ok.id().unwrap());
    // Expired at its expiry; window-closed before that.
    assert!(matches!(
        check_auction(&ok, ok.body.expires_at, &limits()),
        Err(MarketError::Expired { .. })
    ));
    assert!(matches!(
        check_auction(&ok, ok.body.window_closes_at, &limits()),
        Err(MarketError::WindowClosed { .. })
    ));
    let empty = AuctionBuilder::new()
        .resources(Resources::default())
        .build(&c, 0);
    assert!(matches!(
        check_auction(&empty, 1, &limits()),
        Err(MarketError::Absurd {
            field: "resources",
            ..
        })
    ));
    let forever = AuctionBuilder::new()
        .window_ms(30 * 24 * 3_600_000)
        .build(&c, 0);
    assert!(matches!(
        check_auction(&forever, 1, &limits()),
        Err(MarketError::Absurd {
            field: "expires_at",
            ..
        })
    ));
    let zero = AuctionBuilder::new().duration_ms(0).build(&c, 0);
    assert!(matches!(
        check_auction(&zero, 1, &limits()),
        Err(MarketError::Absurd {
            field: "duration_ms",
            ..
        })
    ));
    let bad_near = AuctionBuilder::new()
        .near(Near {
            center: Location { lat: 0.0, lon: 0.0 },
            max_km: -1.0,
        })
        .build(&c, 0);
    assert!(matches!(
        check_auction(&bad_near, 1, &limits()),
        Err(MarketError::Absurd { field: "near", .. })
    ));
    let mut inverted = ok.clone();
    inverted.body.window_closes_at = inverted.body.expires_at + 1;
    let inverted = crate::signed::Signed::sign(inverted.body, &c).unwrap();
    assert!(matches!(
        check_auction(&inverted, 1, &limits()),
        Err(MarketError::Absurd {
            field: "window_closes_at",
            ..
        })
    ));
    let nowhere = AuctionBuilder::new().region("").build(&c, 0);
    assert!(matches!(
        check_auction(&nowhere, 1, &limits()),
        Err(MarketError::UnknownRegion { .. })
    ));
    // Restricted to at most 64 providers; an unrestricted auction encodes as before.
    let named = |n: u64| {
        let mut body = ok.body.clone();
        body.only = (0..n)
            .map(|i| crate::identity::Signer::node_id(&signer(100 + i)))
            .collect();
        crate::signed::Signed::sign(body, &c).unwrap()
    };
    assert!(check_auction(&named(64), 1, &limits()).is_ok());
    assert!(matches!(
        check_auction(&named(65), 1, &limits()),
        Err(MarketError::Absurd { field: "only", .. })
    ));
    // The CBOR key "only" (a text string of 4 bytes: 0x64).
    let has_key = |body: &crate::auction::AuctionBody| {
        let bytes = crate::signed::canonical_bytes(body, "auction").unwrap();
        bytes.windows(5).any(|w| w == b"\x64only")
    };
    assert!(!has_key(&ok.body), "an empty restriction is left out");
    assert!(has_key(&named(1).body));
}

/// A pre-contracted slot starts after bidding closes (one that began before the award would
/// be due before its contract exists, and its provider settled `NoActivation` at once) and
/// not beyond `max_slot_lead_ms` of the receiver's clock.
#[test]
fn a_slot_starts_after_the_window_and_within_the_horizon() {
    let c = signer(1);
    let ok = AuctionBuilder::new().build(&c, 0);
    let slot = |start_at: u64| {
        let mut body = ok.body.clone();
        body.start_at = Some(start_at);
        crate::signed::Signed::sign(body, &c).unwrap()
    };
    let close = ok.body.window_closes_at;
    let lead = limits().max_slot_lead_ms;
    assert!(check_auction(&slot(close), 1, &limits()).is_ok());
    assert!(check_auction(&slot(close + 60_000), 1, &limits()).is_ok());
    assert!(check_auction(&slot(1 + lead), 1, &limits()).is_ok());
    for bad in [0, close - 1, 1 + lead + 1] {
        assert!(
            matches!(
                check_auction(&slot(bad), 1, &limits()),
                Err(MarketError::Absurd {
                    field: "start_at",
                    ..
                })
            ),
            "slot at {bad}"
        );
    }
}

/// The slot's lead is measured from the receiver's clock: an auction signed as created at the
/// end of time (so that `created_at + anything` saturates) with a slot a century ahead is
/// refused for its slot, as is one honestly created now with a slot a day and a millisecond
/// ahead (THREATS C34).
#[test]
fn a_slot_far_ahead_is_refused_whatever_created_at_claims() {
    const YEAR: u64 = 365 * 24 * 3_600_000;
    let c = signer(1);
    let now = 1_700_000_000_000;
    let ok = AuctionBuilder::new().build(&c, now);
    let slot = |created_at: u64, start_at: u64| {
        let mut body = ok.body.clone();
        body.created_at = created_at;
        body.start_at = Some(start_at);
        crate::signed::Signed::sign(body, &c).unwrap()
    };
    let lead = limits().max_slot_lead_ms;
    assert!(check_auction(&slot(now, now + lead), now, &limits()).is_ok());
    for (created_at, start_at) in [(u64::MAX - 1, now + 100 * YEAR), (now, now + lead + 1)] {
        assert!(
            matches!(
                check_auction(&slot(created_at, start_at), now, &limits()),
                Err(MarketError::Absurd {
                    field: "start_at",
                    ..
                })
            ),
            "created at {created_at}, slot at {start_at}"
        );
    }
}

/// An auction's `created_at` lies at most the gossip skew ahead of our clock, and no further
/// before its expiry than the longest lifetime; one created long ago and relayed late passes
/// while it lives.
#[test]
fn an_auction_created_in_the_future_or_before_its_lifetime_is_refused() {
    let c = signer(1);
    let now = 1_700_000_000_000;
    let ttl = limits().max_ttl_ms;
    let ahead = AuctionBuilder::new().build(&c, now + MAX_CREATED_AHEAD_MS);
    assert!(check_auction(&ahead, now, &limits()).is_ok());
    let too_far = AuctionBuilder::new().build(&c, now + MAX_CREATED_AHEAD_MS + 1);
    let refused = check_auction(&too_far, now, &limits()).unwrap_err();
    assert!(
        matches!(
            refused,
            MarketError::Absurd {
                field: "created_at",
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("clock"), "{refused}");
    // A week-long auction seen in its last minutes: fine. One claiming a longer life: refused.
    let mut spec = AuctionBuilder::new().spec();
    spec.window_ms = ttl - 60_000;
    spec.award_grace_ms = 60_000;
    let old = spec.create(&c, now - ttl + 120_000, 1).unwrap();
    assert!(check_auction(&old, now, &limits()).is_ok());
    let mut body = old.body.clone();
    body.created_at -= 1;
    let older = crate::signed::Signed::sign(body, &c).unwrap();
    assert!(matches!(
        check_auction(&older, now, &limits()),
        Err(MarketError::Absurd {
            field: "created_at",
            ..
        })
    ));
}

#[test]
fn bid_checks() {
    let c = signer(1);
    let p = signer(2);
    let paris = Location {
        lat: 48.85,
        lon: 2.35,
    };
    let a = AuctionBuilder::new()
        .near(Near {
            center: paris,
            max_km: 20.0,
        })
        .build(&c, 0);
    let aid = a.id().unwrap();
    let near_bid = BidBuilder::new(&a).location(paris).build(&p);
    assert!(check_bid(&near_bid, &a, aid, 1, &limits()).is_ok());
    let far = BidBuilder::new(&a)
        .location(Location {
            lat: 51.5,
            lon: -0.12,
        })
        .build(&p);
    assert!(matches!(
        check_bid(&far, &a, aid, 1, &limits()),
        Err(MarketError::OutOfRange { .. })
    ));
    let nowhere = BidBuilder::new(&a).build(&p);
    assert!(matches!(
        check_bid(&nowhere, &a, aid, 1, &limits()),
        Err(MarketError::OutOfRange { .. })
    ));
    let own = BidBuilder::new(&a).location(paris).build(&c);
    assert!(matches!(
        check_bid(&own, &a, aid, 1, &limits()),
        Err(MarketError::SelfBid { .. })
    ));
    let boast = BidBuilder::new(&a)
        .location(paris)
        .reputation(1001)
        .build(&p);
    assert!(matches!(
        check_bid(&boast, &a, aid, 1, &limits()),
        Err(MarketError::Absurd {
            field: "reputation_permille",
            ..
        })
    ));
    let free = BidBuilder::new(&a).location(paris).price(0).build(&p);
    assert!(matches!(
        check_bid(&free, &a, aid, 1, &limits()),
        Err(MarketError::Absurd { field: "price", .. })
    ));
    let other = AuctionBuilder::new().build(&c, 0);
    let wrong = BidBuilder::new(&other).build(&p);
    assert!(matches!(
        check_bid(&wrong, &a, aid, 1, &limits()),
        Err(MarketError::UnknownAuction { .. })
    ));
    assert!(matches!(
        check_bid(&near_bid, &a, aid, a.body.expires_at, &limits()),
        Err(MarketError::Expired { .. })
    ));
}

#[test]
fn offer_checks_and_known_regions() {
    let p = signer(2);
    let res = Resources {
        cpu_millis: 100,
        ..Resources::default()
    };
    let o = offer(&p, "eu-west", res.clone(), 10, 0);
    assert!(check_offer(&o, 1, &limits()).is_ok());
    let mut only_us = limits();
    only_us.regions.insert("us-east".into());
    assert!(matches!(
        check_offer(&o, 1, &only_us),
        Err(MarketError::UnknownRegion { .. })
    ));
    let gratis = offer(&p, "eu-west", res, 0, 0);
    assert!(matches!(
        check_offer(&gratis, 1, &limits()),
        Err(MarketError::Absurd {
            field: "price_per_hour",
            ..
        })
    ));
    let mut forged = o.clone();
    forged.body.price_per_hour = 1;
    assert!(matches!(
        check_offer(&forged, 1, &limits()),
        Err(MarketError::BadSignature { .. })
    ));
}
