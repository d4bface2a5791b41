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
/// not beyond `max_duration_ms` of the auction.
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
    assert!(check_auction(&slot(close), 1, &limits()).is_ok());
    assert!(check_auction(&slot(close + 60_000), 1, &limits()).is_ok());
    for bad in [
        0,
        close - 1,
        ok.body.created_at + limits().max_duration_ms + 1,
    ] {
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
