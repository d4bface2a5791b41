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

use agora_devnet::files::devnet_location;
use agora_market::book::CUT_TERM_MS;
use agora_runtime::test_utils::ECHO;
use agora_tests::adversary::{ByzantineLauncher, HostileDevnet, TestLauncher, byzantine_lines};
use agora_tests::{
    agora_bin, agora_json, market_events, publish_service, try_agora_json, wait_for,
};
use serde_json::Value;

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
/// The image of C29's contract: a guest that runs (the devnet fleet tests' manifest).
const MANIFEST: &str = "name = \"echo\"\nversion = \"1\"\nkind = \"wasm\"\ntick_ms = 100\n\
    activation = \"immediate\"\ndevices = []\n\n[resources]\ncpu_millis = 250\nmemory_mb = 64\n\
    storage_mb = 1\n\n[limits]\nmemory_bytes = 16777216\nfuel_per_second = 200000000\n\
    instances = 1\nmax_output_bytes = 1048576\n";

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

/// Node `customer` opens a hosted auction of `cpu` and 64 MiB for `term`, with a 2 s window,
/// that only node `provider` may bid on; `extra` flags follow. Returns its id.
fn auction(
    net: &HostileDevnet,
    customer: usize,
    provider: usize,
    cpu: &str,
    term: &str,
    extra: &[&str],
) -> String {
    let at = devnet_location(provider);
    let near = format!("{},{},0.1", at.lat, at.lon);
    let dir = net.data_dir(customer);
    let mut args = vec![
        "auction",
        "create",
        "--data-dir",
        &dir,
        "--cpu",
        cpu,
        "--memory",
        "64MiB",
        "--duration",
        term,
        "--max-price",
        MAX_PRICE,
        "--window",
        "2s",
        "--near",
        &near,
    ];
    args.extend_from_slice(extra);
    agora_json(&args)["id"].as_str().unwrap().to_string()
}

/// Waits for the `data` of a market event of node `i` of `kind` that `f` accepts.
fn event(
    net: &HostileDevnet,
    i: usize,
    kind: &str,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, WAIT, || {
        market_events(&net.data_dir(i))
            .into_iter()
            .find(|e| e["kind"] == kind && f(&e["data"]))
            .map(|e| e["data"].clone())
    })
}

/// Waits for a `byzantine:` line of node `i` starting with `prefix` that `f` accepts.
fn line(net: &HostileDevnet, i: usize, prefix: &str, f: impl Fn(&str) -> bool) -> String {
    wait_for(&format!("node{i}'s `{prefix}`"), WAIT, || {
        byzantine_lines(&net.node(i).data_dir)
            .into_iter()
            .find(|l| l.starts_with(prefix) && f(l))
    })
}

/// The value of `key=…` in a `byzantine:` line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in `{line}`"))
}

/// Whether `error` (a market event's) contains every one of `parts`.
fn says(data: &Value, parts: &[&str]) -> bool {
    data["error"]
        .as_str()
        .is_some_and(|e| parts.iter().all(|p| e.contains(p)))
}

/// Node `i`'s contracts, as `agora contract list` shows them.
fn contracts(net: &HostileDevnet, i: usize) -> Vec<Value> {
    try_agora_json(&["contract", "list", "--data-dir", &net.data_dir(i)])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
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
        line(&net, i, flag, |_| true);
    }
    let wasm = wat::parse_str(ECHO).unwrap();
    let image = publish_service(
        &net.data_dir(REAWARDS),
        &net.manifest.dir.join("echo.wasm"),
        &wasm,
        MANIFEST,
    );
    let stretched = auction(&net, STRETCHES, STRETCHED, "500m", "1m", &[]);
    let cut = auction(&net, CUSTOMER, CUTS_TERM, "500m", "10m", &[]);
    // Its auction stays in both books long after the award: the second award must find it.
    let held = ["--service", image.as_str(), "--award-grace", "5m"];
    let reawarded = auction(&net, REAWARDS, REAWARDED, "3000m", "10m", &held);

    // C27: the award was signed for 1000 times the auction's minute; the provider refuses it.
    let signed = line(&net, STRETCHES, "byzantine: award ", |l| {
        l.contains(&format!(" auction={stretched} "))
    });
    assert_eq!(field(&signed, "auction_term_ms"), "60000", "{signed}");
    assert_eq!(
        field(&signed, "term_ms"),
        (60_000 * STRETCH_BY).to_string(),
        "{signed}"
    );
    event(
        &net,
        STRETCHED,
        "rejected",
        "node1 to refuse the stretched award",
        |d| d["from"] == id(STRETCHES).as_str() && says(d, &["unknown bid", stretched.as_str()]),
    );

    // C28: the provider countered at the maximum price for 1 ms; the customer refuses it.
    let countered = line(&net, CUTS_TERM, "byzantine: award ", |l| {
        l.contains(&format!(" auction={cut} "))
    });
    assert_eq!(
        field(&countered, "term_ms"),
        CUT_TERM_MS.to_string(),
        "{countered}"
    );
    assert_eq!(field(&countered, "price"), MAX_PRICE, "{countered}");
    assert_eq!(field(&countered, "proposed_by"), "me", "{countered}");
    let award = field(&countered, "award");
    event(
        &net,
        CUSTOMER,
        "rejected",
        "node0 to refuse the cut counter-offer",
        |d| says(d, &[award, "counter-offer"]),
    );

    // C29: the contract is registered, then a second award names a throwaway key; the provider
    // refuses it and its contract goes on.
    let second = line(&net, REAWARDS, "byzantine: reaward ", |l| {
        l.contains("contract=")
    });
    assert!(!second.contains(" not sent "), "{second}");
    assert_eq!(field(&second, "first"), id(REAWARDED), "{second}");
    let contract = field(&second, "contract");
    let award = field(&second, "award");
    event(
        &net,
        REAWARDED,
        "rejected",
        "node2 to refuse the second award",
        |d| d["from"] == id(REAWARDS).as_str() && says(d, &["already awarded", award]),
    );
    wait_for(
        "the re-awarded contract to be active on node2",
        WAIT,
        || {
            contracts(&net, REAWARDED)
                .iter()
                .any(|c| c["id"] == contract && c["status"] == "active")
                .then_some(())
        },
    );
    // Its three cores are still held: node2 bids for half a core, not for three more.
    let three = auction(&net, PROBE, REAWARDED, "3000m", "10m", &[]);
    let half = auction(&net, PROBE, REAWARDED, "500m", "10m", &[]);
    let closed = |a: &str| {
        event(
            &net,
            PROBE,
            "auction-closed",
            &format!("auction {a} to close"),
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
        let list = contracts(&net, i);
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
