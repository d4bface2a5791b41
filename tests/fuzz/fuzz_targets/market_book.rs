//! The market book under fuzzer-chosen, validly signed traffic: auctions, bids, offers and
//! awards from a handful of parties, our own auctions, and time. After every step the books stay
//! within their bounds, capacity is never over-committed, no hold outlives its bound (a bid's
//! the award grace, an awarded one `AGREED_HOLD_MS` after its award: THREATS C20), and the
//! counts of lost bids agree with our bids without the tick's repair (THREATS C32). Half the
//! parties are fed funded balances (again at every wait), so lost bids are kept, and the rest
//! as 0.
#![no_main]

use agora_fuzz::market::{Op, auction, award, bid, offer, party};
use agora_market::resources::{Interface, Resources};
use std::collections::BTreeMap;

use agora_market::{
    AGREED_HOLD_MS, AuctionId, AuctionKind, AuctionRequest, AuctionSpec, Bid, Effect, Input,
    KeySigner, MarketConfig, MarketMessage, MarketState, NodeId, Signer,
};
use libfuzzer_sys::fuzz_target;

fn config() -> MarketConfig {
    let mut c = MarketConfig {
        capacity: Resources {
            cpu_millis: 4_000,
            memory_bytes: 4 << 30,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 2),
        ..MarketConfig::default()
    };
    c.dmu.provider.auto_bid = true;
    c.limits.max_auctions_per_customer = 4;
    c.limits.max_auctions = 10;
    c.limits.max_offers_per_provider = 2;
    c.limits.max_offers = 6;
    c.limits.max_bids_per_auction = 3;
    c.limits.max_bids = 5;
    c.limits.max_replay_nonces = 32;
    c
}

fuzz_target!(|ops: Vec<Op>| {
    let cfg = config();
    let limits = cfg.limits.clone();
    let capacity = cfg.capacity.clone();
    let mut node = MarketState::new(KeySigner::from_seed(100), cfg);
    let mut now = 1_000u64;
    // Auctions seen (with their signer's party number) and the bids our node sent.
    let mut known: Vec<(u8, AuctionRequest)> = Vec::new();
    let mut our_bids: Vec<Bid> = Vec::new();
    // Auctions awarded to our node, and when (an awarded hold lasts `AGREED_HOLD_MS` from then).
    let mut awarded: BTreeMap<AuctionId, u64> = BTreeMap::new();
    let peer = NodeId([9; 32]);
    let balances: Vec<(NodeId, u64)> = (0..6u8)
        .map(|n| (party(n).node_id(), if n % 2 == 0 { 1_000_000 } else { 0 }))
        .collect();
    node.handle(now, Input::Balances(balances.clone()));
    for op in ops.into_iter().take(64) {
        now += 1;
        let out = match op {
            Op::Auction {
                customer,
                res,
                window,
                grace,
                max_price,
                near,
                standby,
                nonce,
            } => {
                let Some(req) = auction(
                    customer, &res, window, grace, max_price, near, standby, nonce, now,
                ) else {
                    continue;
                };
                known.push((customer, req.clone()));
                node.handle(
                    now,
                    Input::Remote {
                        from: peer,
                        msg: MarketMessage::Auction(req),
                    },
                )
            }
            Op::Bid {
                provider,
                auction: i,
                price,
                capacity,
                location,
                nonce,
            } => {
                let Some((_, req)) = known.get(usize::from(i) % known.len().max(1)) else {
                    continue;
                };
                let Some(b) = bid(provider, req, price, &capacity, location, nonce) else {
                    continue;
                };
                node.handle(
                    now,
                    Input::Remote {
                        from: peer,
                        msg: MarketMessage::Bid(b),
                    },
                )
            }
            Op::Offer {
                provider,
                res,
                price,
                ttl,
                nonce,
            } => {
                let Some(o) = offer(provider, &res, price, ttl, nonce, now) else {
                    continue;
                };
                node.handle(
                    now,
                    Input::Remote {
                        from: peer,
                        msg: MarketMessage::Offer(o),
                    },
                )
            }
            Op::Award {
                auction: i,
                ours,
                provider,
                price,
                expires_in,
                nonce,
            } => {
                let Some((customer, req)) = known.get(usize::from(i) % known.len().max(1)) else {
                    continue;
                };
                let aid = req.id().ok();
                let mine = our_bids
                    .iter()
                    .find(|b| Some(b.body.auction) == aid)
                    .cloned();
                let chosen = match mine {
                    Some(b) if ours => Some(b),
                    _ => bid(provider, req, price, &Default::default(), None, nonce),
                };
                let Some(chosen) = chosen else { continue };
                let price = if ours {
                    chosen.body.price
                } else {
                    u64::from(price)
                };
                let expires = now.saturating_add(u64::from(expires_in));
                let Some(msg) = award(&party(*customer), req, &chosen, price, expires, nonce)
                else {
                    continue;
                };
                node.handle(now, Input::Remote { from: peer, msg })
            }
            Op::Create { res, window } => {
                let spec = AuctionSpec {
                    region: "eu-west".into(),
                    resources: res.resources(),
                    duration_ms: 3_600_000,
                    max_price: 1_000,
                    window_ms: u64::from(window),
                    kind: AuctionKind::Hosted,
                    near: None,
                    award_grace_ms: 30_000,
                    service: None,
                    start_at: None,
                };
                node.handle(now, Input::CreateAuction(spec))
            }
            Op::Wait(ms) => {
                now = now.saturating_add(u64::from(ms));
                let mut out = node.handle(now, Input::Tick);
                out.extend(node.handle(now, Input::Balances(balances.clone())));
                out
            }
            Op::Bytes(bytes) => match MarketMessage::decode(&bytes) {
                Ok(msg) => node.handle(now, Input::Remote { from: peer, msg }),
                Err(_) => continue,
            },
        };
        for e in &out {
            match e {
                Effect::Send {
                    msg: MarketMessage::Bid(b),
                    ..
                } => our_bids.push(b.clone()),
                Effect::Awarded {
                    auction: Some(a),
                    provider,
                    ..
                } if *provider == node.node_id() => {
                    awarded.insert(*a, now);
                }
                _ => {}
            }
        }
        known.retain(|(_, r)| r.body.expires_at > now);
        our_bids.retain(|b| b.body.expires_at > now);

        let stats = node.book_stats();
        assert!(node.lost_in_step(), "the counts of lost bids drifted");
        assert_eq!(
            stats.counters.lost_counts_resynced, 0,
            "the tick repaired a drift"
        );
        assert!(stats.auctions <= limits.max_auctions + 64, "{stats:?}");
        let remote_auctions = node
            .auctions()
            .values()
            .filter(|e| e.request.body.customer != node.node_id())
            .count();
        assert!(remote_auctions <= limits.max_auctions, "{stats:?}");
        assert!(stats.offers <= limits.max_offers, "{stats:?}");
        assert!(stats.bids <= limits.max_bids, "{stats:?}");
        assert!(stats.replay_nonces <= limits.max_replay_nonces, "{stats:?}");
        for e in node.auctions().values() {
            assert!(e.bids.len() <= limits.max_bids_per_auction);
        }
        let total = node.ledger().reserved_total().expect("sums");
        assert!(total.fits_in(&capacity), "over-committed: {total:?}");
        let grace = node.config().dmu.provider.hold_grace_ms;
        for (key, r) in node.ledger().reservations() {
            if let (Some(t), agora_market::ReservationKey::Auction(id)) = (r.expires_at, key)
                && let Some(e) = node.auctions().get(id)
            {
                // A bid's hold ends by the award grace; an awarded one (C20) lasts
                // `AGREED_HOLD_MS` from its award unless the deal task extends it, which this
                // target never does.
                let close = e.request.body.window_closes_at;
                let bound = match awarded.get(id) {
                    Some(at) => at.saturating_add(AGREED_HOLD_MS),
                    None => close.saturating_add(grace),
                };
                assert!(t <= bound, "hold past its bound");
            }
        }
    }
});
