//! Awards and counter-offers that change the deal after the bid (THREATS C27, C28, C29), on one
//! 7-node devnet of real processes, the three attacks side by side. Nodes 0–3 run the plain
//! `agora` binary; nodes 4–6 the test crate's `agora-byzantine` (the real node with one
//! misbehaviour of its market each). Every auction names one provider by location (`--near`
//! with a radius of 100 m; devnet nodes are ~270 m apart), so each attack meets the node it is
//! aimed at.
//!
//! - C27: node 6 (`--stretch-awards 1000`) buys a minute of hosting from node 1 and signs its
//!   award for 1000 minutes at the minute's price. Node 1 refuses the award (`unknown bid`):
//!   no contract of node 6 reaches any replica.
//! - C28: node 0 buys ten minutes from node 4 (`--cut-term`), which answers the award with a
//!   counter-offer at the auction's maximum price for a 1 ms term. Node 0 refuses it (the
//!   counter may change the price only): no contract of node 4 reaches any replica.
//! - C29: node 5 (`--reaward`) buys three of node 2's four cores for ten minutes (an image that
//!   runs: the contract goes active), and once the contract is registered sends node 2 (and
//!   gossips) a second award of the same auction naming a throwaway key. Node 2 refuses it
//!   (`already awarded`), and keeps the contract's capacity: of two auctions node 3 then opens
//!   for node 2 alone, node 2 bids on the one for half a core and not on the one for three.
//!
//! Each honest refusal is waited for in the honest node's market log (`agora market watch`); the
//! chain then moves three blocks on before every replica's contract list is read. With any of
//! the three session-51 fixes reverted, the honest node agrees (a contract of the stretched or
//! cut term is registered), or frees the capacity (the three-core auction gets its bid), and
//! the test fails.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora` (cargo builds
//! `agora-byzantine` itself for this test), then
//! `nice cargo test -p agora-tests --test e2e attack_awards::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agora_market::book::CUT_TERM_MS;
use agora_runtime::test_utils::ECHO;
use agora_tests::adversary::byzantine_field as field;
use agora_tests::adversary::{ByzantineLauncher, HostileDevnet, TestLauncher};
use agora_tests::fleet::manifest;
use agora_tests::{
    AuctionCli, agora_bin, agora_json, contracts, error_says, market_event, publish_service,
    try_agora_json, wait_for,
};

/// C28's honest customer.
const CUSTOMER: usize = 0;
/// C27's honest provider.
const STRETCHED: usize = 1;
/// C29's honest provider.
const REAWARDED: usize = 2;
/// The honest customer whose auctions find C29's provider's free capacity.
const PROBE: usize = 3;
/// `--cut-term`: C28's byzantine provider.
const CUTS_TERM: usize = 4;
/// `--reaward`: C29's byzantine customer.
const REAWARDS: usize = 5;
/// `--stretch-awards`: C27's byzantine customer.
const STRETCHES: usize = 6;
/// How many times the auction's term node 6 signs its awards for.
const STRETCH_BY: u64 = 1_000;
/// Every auction's maximum price (a devnet provider asks at least 50).
const MAX_PRICE: &str = "100";
/// Each wait's bound.
const WAIT: Duration = Duration::from_secs(40);

fn launcher() -> ByzantineLauncher {
    let flags = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    ByzantineLauncher {
        honest: TestLauncher(agora_bin()),
        exe: env!("CARGO_BIN_EXE_agora-byzantine").into(),
        bad: vec![
            (CUTS_TERM, flags(&["--cut-term"])),
            (REAWARDS, flags(&["--reaward"])),
            (
                STRETCHES,
                vec!["--stretch-awards".into(), STRETCH_BY.to_string()],
            ),
        ],
        tune: None,
    }
}

/// Node `customer`'s hosted auction of `cpu` and 64 MiB for `term` at most [`MAX_PRICE`], with
/// a 2 s window, that only node `provider` may bid on.
fn auction(
    net: &HostileDevnet,
    customer: usize,
    provider: usize,
    cpu: &str,
    term: &str,
) -> AuctionCli {
    AuctionCli::new(&net.data_dir(customer), cpu)
        .near_node(provider)
        .term(term)
        .max_price(MAX_PRICE)
        .window("2s")
}

#[test]
fn awards_and_counters_for_another_term_and_second_awards_are_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let net = rt.block_on(HostileDevnet::up_with(7, &launcher())).unwrap();
    let id = |i: usize| net.node_id(i).to_string();
    for (i, flag) in [
        (CUTS_TERM, "byzantine: cut-term"),
        (REAWARDS, "byzantine: reaward"),
        (STRETCHES, "byzantine: stretch-awards"),
    ] {
        net.byzantine_line(i, flag, &[], WAIT);
    }
    let wasm = wat::parse_str(ECHO).unwrap();
    let image = publish_service(
        &net.data_dir(REAWARDS),
        &net.manifest.dir.join("echo.wasm"),
        &wasm,
        &manifest("echo", "1", &[]),
    );
    let stretched = auction(&net, STRETCHES, STRETCHED, "500m", "1m").create();
    let cut = auction(&net, CUSTOMER, CUTS_TERM, "500m", "10m").create();
    // Its auction stays in both books long after the award: the second award must find it.
    let held = ["--service", image.as_str(), "--award-grace", "5m"];
    let reawarded = auction(&net, REAWARDS, REAWARDED, "3000m", "10m")
        .with(&held)
        .create();

    // C27: the award was signed for 1000 times the auction's minute; the provider refuses it.
    let on = format!(" auction={stretched} ");
    let signed = net.byzantine_line(STRETCHES, "byzantine: award ", &[on.as_str()], WAIT);
    assert_eq!(field(&signed, "auction_term_ms"), "60000", "{signed}");
    assert_eq!(
        field(&signed, "term_ms"),
        (60_000 * STRETCH_BY).to_string(),
        "{signed}"
    );
    market_event(
        &net.data_dir(STRETCHED),
        "rejected",
        "node1 to refuse the stretched award",
        WAIT,
        |d| {
            d["from"] == id(STRETCHES).as_str()
                && error_says(d, &["unknown bid", stretched.as_str()])
        },
    );

    // C28: the provider countered at the maximum price for 1 ms; the customer refuses it.
    let on = format!(" auction={cut} ");
    let countered = net.byzantine_line(CUTS_TERM, "byzantine: award ", &[on.as_str()], WAIT);
    assert_eq!(
        field(&countered, "term_ms"),
        CUT_TERM_MS.to_string(),
        "{countered}"
    );
    assert_eq!(field(&countered, "price"), MAX_PRICE, "{countered}");
    assert_eq!(field(&countered, "proposed_by"), "me", "{countered}");
    let award = field(&countered, "award");
    market_event(
        &net.data_dir(CUSTOMER),
        "rejected",
        "node0 to refuse the cut counter-offer",
        WAIT,
        |d| error_says(d, &[award, "counter-offer"]),
    );

    // C29: the contract is registered, then a second award names a throwaway key; the provider
    // refuses it and its contract goes on.
    let second = net.byzantine_line(REAWARDS, "byzantine: reaward ", &["contract="], WAIT);
    assert!(!second.contains(" not sent "), "{second}");
    assert_eq!(field(&second, "first"), id(REAWARDED), "{second}");
    let contract = field(&second, "contract");
    let award = field(&second, "award");
    market_event(
        &net.data_dir(REAWARDED),
        "rejected",
        "node2 to refuse the second award",
        WAIT,
        |d| d["from"] == id(REAWARDS).as_str() && error_says(d, &["already awarded", award]),
    );
    wait_for(
        "the re-awarded contract to be active on node2",
        WAIT,
        || {
            contracts(&net.data_dir(REAWARDED))
                .iter()
                .any(|c| c["id"] == contract && c["status"] == "active")
                .then_some(())
        },
    );
    // Its three cores are still held: node2 bids for half a core, not for three more.
    let three = auction(&net, PROBE, REAWARDED, "3000m", "10m").create();
    let half = auction(&net, PROBE, REAWARDED, "500m", "10m").create();
    let closed = |a: &str| {
        market_event(
            &net.data_dir(PROBE),
            "auction-closed",
            &format!("auction {a} to close"),
            WAIT,
            |d| d["auction"] == a,
        )
    };
    let (three_closed, half_closed) = (closed(&three), closed(&half));
    assert!(
        half_closed["winner"].is_string(),
        "node2 bids where its capacity allows: {half_closed}"
    );
    assert!(
        three_closed["winner"].is_null(),
        "node2 bid on three cores beside its live contract's three: {three_closed}"
    );
    let bids = agora_json(&["bids", &three, "--data-dir", &net.data_dir(PROBE)]);
    assert_eq!(bids.as_array().map(Vec::len), Some(0), "{bids}");

    // The chain moves on past every refusal: no replica holds a contract of the stretched
    // award or of the cut counter, and every one holds the re-awarded contract, live.
    let height = || {
        try_agora_json(&["ledger", "status", "--data-dir", &net.data_dir(CUSTOMER)])
            .and_then(|s| s["height"].as_u64())
    };
    let h = wait_for("node0's ledger height", WAIT, height);
    wait_for("three more blocks", WAIT, || {
        height().filter(|n| *n >= h + 3)
    });
    for i in 0..net.len() {
        let list = contracts(&net.data_dir(i));
        assert!(
            !list.iter().any(|c| c["customer"] == id(STRETCHES).as_str()),
            "node{i} holds a contract of the stretched award: {list:?}"
        );
        assert!(
            !list.iter().any(|c| c["provider"] == id(CUTS_TERM).as_str()),
            "node{i} holds a contract of the cut counter-offer: {list:?}"
        );
        assert!(
            list.iter()
                .any(|c| c["id"] == contract && c["status"] == "active"),
            "node{i} lost the re-awarded contract: {list:?}"
        );
    }
    eprintln!(
        "C27: {signed}; C28: {countered}; C29: {second} (auction {reawarded}); \
         node3's three-core auction closed without a bid"
    );
    net.assert_alive();
}
