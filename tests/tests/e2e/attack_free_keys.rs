//! Keys are free, balances are not (THREATS C31, C32), on one 7-node devnet of real processes
//! and four throwaway identities with no ledger account (`Adversary`s):
//!
//! - C31: three of them gossip four valid auctions each, half a core for an hour with a 90 s
//!   window, and never award them. One key may keep `max_holds_per_customer` (2) holds on a
//!   provider, so before session 52 every provider bid on two of each key's (three of its four
//!   cores). Now customers not known to pay share `stranger_share_permille` (250) of each
//!   provider's capacity: the test waits until every node's book holds all twelve and every
//!   provider has bid on as many as that quarter holds (two), then node0, a funded devnet
//!   account, asks for the other three quarters of a provider. Its auction is awarded, and no
//!   provider bid on more of the strangers' auctions than the quarter holds.
//! - C32: the fourth key bids 1 token on node1's auction (its id is public: the auction is
//!   gossiped to every node), claiming 64 cores, as a request to node1 like a provider's bid.
//!   The maximum price is set so that this bid outscores every honest one on price alone (the
//!   devnet's providers ask at least 50 tokens). Node1 awards an honest, funded provider, the
//!   contract is registered with it on every replica, and the key never receives an award.
//!
//! With the strangers' share off (`may_hold_for` left out of `auto_bid`) every provider
//! holds three cores for the strangers and node0's auction closes without a bid; with the
//! customer's tiers off (`choose_winner` by score alone) node1 awards the 1-token bid.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora`, then
//! `nice cargo test -p agora-tests --test e2e attack_free_keys::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_devnet::files::{CONTRACT_NODES, devnet_node_config};
use agora_market::auction::{AuctionBody, AuctionKind, BidBody};
use agora_market::signed::Signed;
use agora_market::{AuctionId, MarketMessage, NodeId, Resources, topic_for_region};
use agora_tests::adversary::{Adversary, HostileDevnet, listen};
use agora_tests::{AuctionCli, awarded, contracts, market_event, try_agora_json, wait_for};
use agora_wire::codec::Kind;
use agora_wire::now_ms;

/// Throwaway keys that publish auctions and never award them.
const STRANGERS: usize = 3;
/// Auctions each of them publishes: more than one key may hold on a provider.
const PER_STRANGER: u64 = 4;
/// What each of their auctions asks, millicores.
const HALF_CORE: u64 = 500;
/// Their bidding window: within `max_bid_window_ms` (10 min), and their holds (the window and
/// the 2 min award grace) outlast the test.
const STRANGER_WINDOW_MS: u64 = 90_000;
/// C31's honest customer.
const BUYS_MOST: usize = 0;
/// C32's honest customer.
const LOWBALLED: usize = 1;
/// C32's auction's maximum price: below twice the devnet providers' floor (50), so a 1-token
/// bid outscores each of theirs on price by more than reputation and headroom can make up.
const LOWBALLED_MAX_PRICE: u64 = 60;
/// Each wait's bound.
const WAIT: Duration = Duration::from_secs(40);

/// The market requests the throwaway keys received.
#[derive(Debug, Default)]
struct Received {
    /// Bids on the strangers' auctions: provider → (stranger, auction).
    bids: BTreeMap<NodeId, BTreeSet<(NodeId, AuctionId)>>,
    /// Awards to a throwaway key: (key, customer).
    awards: Vec<(NodeId, NodeId)>,
}

/// What the listeners of all throwaway keys record.
type Shared = Arc<Mutex<Received>>;

/// Records the bids and awards that come to `key` (each acknowledged, as a node does).
fn record(
    rt: &tokio::runtime::Runtime,
    key: &Arc<Adversary>,
    seen: &Shared,
) -> tokio::task::JoinHandle<()> {
    let (me, seen) = (key.node_id(), seen.clone());
    listen(rt, key, move |message| {
        let mut got = seen.lock().unwrap();
        match message {
            MarketMessage::Bid(bid) => {
                let on = (me, bid.body.auction);
                got.bids.entry(bid.body.provider).or_default().insert(on);
            }
            MarketMessage::Award(award) => got.awards.push((me, award.body.customer)),
            _ => {}
        }
    })
}

/// A valid auction of `key` for half a core over an hour, never to be awarded.
fn strangers_auction(key: &Adversary, nonce: u64) -> Vec<u8> {
    let now = now_ms();
    let body = AuctionBody {
        customer: key.node_id(),
        region: "default".into(),
        resources: Resources {
            cpu_millis: HALF_CORE,
            ..Resources::default()
        },
        duration_ms: 3_600_000,
        max_price: 1_000_000,
        window_closes_at: now + STRANGER_WINDOW_MS,
        kind: AuctionKind::Hosted,
        near: None,
        nonce,
        created_at: now,
        expires_at: now + STRANGER_WINDOW_MS + 3_600_000,
        service: None,
        start_at: None,
        only: Vec::new(),
    };
    let signed = Signed::sign(body, key.signer()).unwrap();
    MarketMessage::Auction(signed).encode().unwrap()
}

/// `key`'s bid of 1 token on `auction`, claiming far more room than any devnet provider has.
fn lowball(key: &Adversary, auction: AuctionId) -> Vec<u8> {
    let body = BidBody {
        auction,
        provider: key.node_id(),
        price: 1,
        capacity: Resources {
            cpu_millis: 64_000,
            memory_bytes: 256 << 30,
            storage_bytes: 4 << 40,
            bandwidth_bps: 10_000_000_000,
            ..Resources::default()
        },
        location: None,
        reputation_permille: 1_000,
        nonce: 1,
        expires_at: now_ms() + 600_000,
    };
    MarketMessage::Bid(Signed::sign(body, key.signer()).unwrap())
        .encode()
        .unwrap()
}

/// Node `customer`'s standby auction of `cpu` and 64 MiB for ten minutes.
fn standby(net: &HostileDevnet, customer: usize, cpu: &str) -> AuctionCli {
    AuctionCli::new(&net.data_dir(customer), cpu).with(&["--kind", "standby"])
}

/// How many auctions of `customers` node `i`'s book holds.
fn in_book(net: &HostileDevnet, i: usize, customers: &BTreeSet<String>) -> usize {
    try_agora_json(&["auctions", "--data-dir", &net.data_dir(i)])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|a| {
            a["customer"]
                .as_str()
                .is_some_and(|c| customers.contains(c))
        })
        .count()
}

#[test]
fn free_keys_share_a_quarter_of_each_provider_and_a_free_lowball_never_wins() {
    // The devnet providers' own config: their capacity and their rules for strangers.
    let market = devnet_node_config(1, Path::new("genesis.json"), false)
        .market
        .engine;
    let rules = &market.dmu.provider;
    let capacity = market.capacity.cpu_millis;
    let quarter = capacity * u64::from(rules.stranger_share_permille) / 1000;
    let share_holds = usize::try_from(quarter / HALF_CORE).unwrap();
    let most = capacity - quarter;
    let per_key = rules.max_holds_per_customer;
    // The attack is real: each key alone may hold more than the share allows all of them, and
    // with a cap per key only, the strangers would leave no provider room for `most`.
    assert!(
        share_holds >= 1 && PER_STRANGER as usize > per_key,
        "{rules:?}"
    );
    assert!(
        STRANGERS * per_key * HALF_CORE as usize + most as usize > capacity as usize,
        "the strangers would not crowd the honest auction out even without the share"
    );
    // And the 1-token bid outscores every honest one by price alone.
    let w = market.dmu.customer.weights;
    let part = |price: u64| LOWBALLED_MAX_PRICE.saturating_sub(price) * 1000 / LOWBALLED_MAX_PRICE;
    assert!(
        u64::from(w.price) * (part(1) - part(rules.floor_price))
            > u64::from(w.reputation + w.capability) * 1000,
        "the lowball would not win on score: {w:?}, floor {}",
        rules.floor_price
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let net = rt.block_on(HostileDevnet::up(CONTRACT_NODES)).unwrap();
    let keys: Vec<Arc<Adversary>> = rt
        .block_on(Adversary::many(&net, STRANGERS + 1))
        .unwrap()
        .into_iter()
        .map(Arc::new)
        .collect();
    let seen: Shared = Arc::default();
    let listeners: Vec<_> = keys.iter().map(|k| record(&rt, k, &seen)).collect();
    let (strangers, lowballer) = (&keys[..STRANGERS], &keys[STRANGERS]);
    let providers: Vec<NodeId> = (0..net.len()).map(|i| net.node_id(i)).collect();

    // C31: the strangers publish; every node's book takes all their auctions, and every
    // provider bids on as many as the strangers' share holds.
    let topic = topic_for_region("default");
    rt.block_on(async {
        for (k, key) in strangers.iter().enumerate() {
            for n in 1..=PER_STRANGER {
                key.broadcast(&topic, Kind::Market, strangers_auction(key, n))
                    .await
                    .unwrap_or_else(|e| panic!("stranger {k} publishing auction {n}: {e}"));
            }
        }
    });
    let stranger_ids: BTreeSet<String> =
        strangers.iter().map(|k| k.node_id().to_string()).collect();
    let published = STRANGERS * PER_STRANGER as usize;
    for i in 0..net.len() {
        wait_for(
            &format!("node{i}'s book to hold the strangers' auctions"),
            WAIT,
            || (in_book(&net, i, &stranger_ids) >= published).then_some(()),
        );
    }
    wait_for(
        "every provider to bid on as many strangers' auctions as their share holds",
        WAIT,
        || {
            let seen = seen.lock().unwrap();
            let full = |p: &NodeId| seen.bids.get(p).is_some_and(|b| b.len() >= share_holds);
            providers.iter().all(full).then_some(())
        },
    );
    // A funded customer asks for the rest of a provider.
    let most_cpu = format!("{most}m");
    let c31 = standby(&net, BUYS_MOST, &most_cpu)
        .max_price(100)
        .window("3s")
        .create();
    wait_for(
        "node0's auction for the rest of a provider to be awarded",
        WAIT,
        || awarded(&net.data_dir(BUYS_MOST), &c31).then_some(()),
    );
    {
        let seen = seen.lock().unwrap();
        let per_provider: BTreeMap<String, usize> = seen
            .bids
            .iter()
            .map(|(p, b)| (p.short(), b.len()))
            .collect();
        eprintln!(
            "C31: {published} auctions from {STRANGERS} keys; bids on them per provider: \
             {per_provider:?} (their share: {quarter} of {capacity} millicores)"
        );
        for (provider, bids) in &seen.bids {
            let held = bids.len() as u64 * HALF_CORE;
            assert!(
                held <= quarter,
                "provider {provider} holds {held} millicores for keys not known to pay (share \
                 {quarter}): {bids:?}"
            );
        }
    }

    // C32: a throwaway key bids 1 token on node1's open auction.
    let c32 = standby(&net, LOWBALLED, "500m")
        .max_price(LOWBALLED_MAX_PRICE)
        .window("5s")
        .create();
    let bid = lowballer.seal(Kind::Market, lowball(lowballer, c32.parse().unwrap()));
    rt.block_on(lowballer.network().request(net.peer_id(LOWBALLED), &bid))
        .unwrap_or_else(|e| panic!("sending the lowball bid to node1: {e}"));
    let lowballer_id = lowballer.node_id().to_string();
    market_event(
        &net.data_dir(LOWBALLED),
        "bid-received",
        "node1 to take the lowball bid",
        WAIT,
        |d| {
            d["auction"] == c32.as_str()
                && d["provider"] == lowballer_id.as_str()
                && d["price"] == 1
        },
    );
    let award = market_event(
        &net.data_dir(LOWBALLED),
        "awarded",
        "node1's auction to be awarded",
        WAIT,
        |d| d["auction"] == c32.as_str(),
    );
    let winner = award["provider"].as_str().unwrap().to_string();
    assert_ne!(
        winner, lowballer_id,
        "the 1-token bid of a key with no account won: {award}"
    );
    assert!(providers.iter().any(|p| p.to_string() == winner), "{award}");
    let customer = net.node_id(LOWBALLED).to_string();
    for i in 0..net.len() {
        wait_for(
            &format!("node1's contract with the winner on node{i}'s replica"),
            WAIT,
            || {
                contracts(&net.data_dir(i))
                    .iter()
                    .any(|c| c["customer"] == customer.as_str() && c["provider"] == winner.as_str())
                    .then_some(())
            },
        );
        let list = contracts(&net.data_dir(i));
        assert!(
            !list.iter().any(|c| c["provider"] == lowballer_id.as_str()),
            "node{i} holds a contract of the key with no account: {list:?}"
        );
    }
    for l in &listeners {
        l.abort();
    }
    let awards = seen.lock().unwrap().awards.clone();
    assert!(awards.is_empty(), "a throwaway key was awarded: {awards:?}");
    eprintln!("C32: node1's auction {c32} went to {winner}, not to the 1-token bid");
    net.assert_alive();
}
