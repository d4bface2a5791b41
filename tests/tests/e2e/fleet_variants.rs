//! Process test of fleet variants (issue #16, "variants and diversity"), on 8 real `agora`
//! processes: node0 deploys two variants of one job, `a` anywhere and `b` only where
//! `iface=ble`, to every `site=factory` provider. Providers 1-3 have BLE, 4 has not; 6 and 7
//! (no BLE) are labelled but down, 5 is not labelled. Then: b runs only on BLE providers, the
//! counts are the balanced 2/2, no node ever runs both variants, and `deploy status` shows each
//! target's variant. Providers 6 and 7 join: the fleet rebalances to 3/3 — they run a, and the
//! one BLE provider that ran a is moved to b (its a contract released, b placed) while the
//! other two keep b (the fewest moves). Then the live deployment is given other variants in
//! place (`deploy create` of the same name with b on a new image): the three b targets move to
//! it, stop-first, and a's three contracts are not touched. Last, `deploy upgrade --variant
//! b=CID` moves b to a third image start-first, one target at a time, and exits 0: every b
//! target ends on it alone, a's contracts are still not touched, nobody is slashed. The scale (30 targets, 10
//! with BLE, 6 joining) runs in the pure test `agora-market fleet::variant::tests::thirty_targets_ten_with_ble_then_six_join`
//! and, on 37 real processes, in the bench `cargo bench -p agora-tests --bench variants` (too
//! heavy for CI's time budget).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_runtime::test_utils::lora_gateway_wasm;
use agora_tests::fleet::{
    create_ble_variants, deployer_contracts, label, node_ids, publish, reconfigure, running_of,
    status, tagged, wait_for, without_ble,
};
use agora_tests::{TestDevnet, agora};

/// Labelled `site=factory`.
const LABELLED: [usize; 6] = [1, 2, 3, 4, 6, 7];
/// Labelled providers with BLE (the others have it taken out of their config).
const BLE: [usize; 3] = [1, 2, 3];
/// Labelled but down until the first rollout is done: they join later.
const JOIN: [usize; 2] = [6, 7];
const WAIT: Duration = Duration::from_secs(300);

#[test]
fn variants_respect_constraints_balance_and_rebalance_after_a_join() {
    let wasm = lora_gateway_wasm().unwrap_or_else(|e| panic!("{e}"));
    let net = TestDevnet::up(8, 180, &[]);
    let dir = net.dir_s();
    let ids = node_ids(&net);

    // Label the providers one at a time (the committee, nodes 0-6, keeps its quorum); take
    // BLE out of the ones without it; the joiners stay down.
    for i in LABELLED {
        reconfigure(&net, i, !JOIN.contains(&i), |net, i| {
            label(net, i);
            if !BLE.contains(&i) {
                without_ble(net, i);
            }
        });
    }

    let a = publish(&net, "variant-a", "0.1.0", &wasm);
    let b = publish(&net, "variant-b", "0.1.0", &wasm);
    // b's next image, given to the live deployment at the end.
    let b2 = publish(&net, "variant-b", "0.2.0", &wasm);
    assert!(a != b && b != b2 && a != b2);
    let images = [a.as_str(), b.as_str(), b2.as_str()];

    // Clear errors: a bad variant, an image and variants together.
    let bad = agora(&[
        "deploy",
        "create",
        "--variant",
        "a=bafk:iface=radio",
        "--to",
        "site=factory",
        "--all",
        "--data-dir",
        &net.node(0),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("iface=lora"),
        "{bad:?}"
    );
    let both = agora(&[
        "deploy",
        "create",
        &a,
        "--variant",
        &format!("a={a}"),
        "--to",
        "site=factory",
        "--all",
        "--data-dir",
        &net.node(0),
    ]);
    assert!(!both.status.success(), "{both:?}");

    let created = create_ble_variants(&net, &a, &b, "diverse");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["variants"].as_array().map(Vec::len), Some(2));

    // What each node runs; never two variants on one node, never b without BLE, and nothing
    // on the deployer or the unlabelled node.
    let fleet = |net: &TestDevnet| -> Vec<(usize, Vec<String>)> {
        let runs: Vec<(usize, Vec<String>)> =
            (0..8).map(|i| (i, running_of(net, i, &images))).collect();
        for (i, r) in &runs {
            assert!(r.len() <= 1, "node{i} runs two variants: {r:?}");
            if r.first().is_some_and(|img| *img == b || *img == b2) {
                assert!(BLE.contains(i), "node{i} runs b without BLE");
            }
            if !LABELLED.contains(i) {
                assert!(r.is_empty(), "node{i} is not a target but runs {r:?}");
            }
        }
        runs
    };
    let on = |runs: &[(usize, Vec<String>)], img: &str| -> Vec<usize> {
        runs.iter()
            .filter(|(_, r)| r.first().map(String::as_str) == Some(img))
            .map(|(i, _)| *i)
            .collect()
    };
    // The deployer shows every target healthy with the variant it runs.
    let shown = |targets: &[usize], runs: &[(usize, Vec<String>)]| -> bool {
        let st = status(&net, &id);
        targets.iter().all(|i| {
            let Some(t) = st["targets"]
                .as_array()
                .and_then(|ts| ts.iter().find(|t| t["node"] == ids[*i].as_str()))
            else {
                return false;
            };
            let on_b = on(runs, &b).contains(i) || on(runs, &b2).contains(i);
            let want = if on_b { "b" } else { "a" };
            t["phase"] == "healthy" && t["variant"] == want && !runs[*i].1.is_empty()
        })
    };

    let first: Vec<usize> = LABELLED
        .iter()
        .copied()
        .filter(|i| !JOIN.contains(i))
        .collect();
    wait_for(
        &net,
        &id,
        &LABELLED,
        "2 targets on a and 2 on b, shown healthy",
        WAIT,
        || {
            let runs = fleet(&net);
            on(&runs, &a).len() == 2 && on(&runs, &b).len() == 2 && shown(&first, &runs)
        },
    );
    let runs = fleet(&net);
    let a_before = on(&runs, &a);
    let b_before = on(&runs, &b);
    assert!(a_before.contains(&4), "node4 has no BLE: a");
    let moved: Vec<usize> = a_before
        .iter()
        .copied()
        .filter(|i| BLE.contains(i))
        .collect();
    assert_eq!(moved.len(), 1, "one BLE provider runs a: {a_before:?}");
    let st = status(&net, &id);
    assert_eq!(st["variant_counts"]["a"], 2, "{st}");
    assert_eq!(st["variant_counts"]["b"], 2, "{st}");
    let table = agora(&["deploy", "status", &id, "--data-dir", &net.node(0)]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success() && text.contains("VARIANT"),
        "{table:?}"
    );
    assert!(text.contains("variant b image"), "{text}");

    // Two providers without BLE join: they can run only a, so balance (3/3) moves the BLE
    // provider that ran a to b, and nobody else.
    for i in JOIN {
        let out = agora(&["devnet", "start", &format!("node{i}"), "--dir", &dir]);
        assert!(out.status.success(), "{out:?}");
    }
    wait_for(
        &net,
        &id,
        &LABELLED,
        "3 targets on a and 3 on b after the join",
        WAIT,
        || {
            let runs = fleet(&net);
            on(&runs, &a).len() == 3 && on(&runs, &b).len() == 3 && shown(&LABELLED, &runs)
        },
    );
    let runs = fleet(&net);
    let mut a_after = on(&runs, &a);
    a_after.sort();
    assert_eq!(a_after, vec![4, 6, 7], "the joiners and node4 run a");
    let mut b_after = on(&runs, &b);
    b_after.sort();
    assert_eq!(b_after, BLE.to_vec(), "every BLE provider runs b");
    assert!(
        b_before.iter().all(|i| b_after.contains(i)),
        "the targets already on b stayed there"
    );
    let st = status(&net, &id);
    assert_eq!(st["variant_counts"]["a"], 3, "{st}");
    assert_eq!(st["variant_counts"]["b"], 3, "{st}");

    // The live deployment is given other variants: b on its next image. b's three targets
    // move to it (their old contracts end), a's three contracts stay as they were.
    let active = |image: &str| -> Vec<String> {
        let mut c: Vec<String> = deployer_contracts(&net, image)
            .into_iter()
            .filter(|(_, _, s)| s == "active")
            .map(|(id, _, _)| id)
            .collect();
        c.sort();
        c
    };
    let a_contracts = active(&a);
    assert_eq!(a_contracts.len(), 3, "a's three contracts are active");
    let changed = create_ble_variants(&net, &a, &b2, "diverse");
    assert_eq!(changed["id"].as_str(), Some(id.as_str()), "{changed}");
    wait_for(
        &net,
        &id,
        &LABELLED,
        "b's three targets on its new image, a's unchanged",
        WAIT,
        || {
            let runs = fleet(&net);
            let mut on_b2 = on(&runs, &b2);
            on_b2.sort();
            on_b2 == BLE.to_vec()
                && on(&runs, &b).is_empty()
                && on(&runs, &a).len() == 3
                && shown(&LABELLED, &runs)
                && active(&b).is_empty()
        },
    );
    assert_eq!(active(&a), a_contracts, "a's contracts were not touched");
    // No provider paid for the switch: the new image's service starts once the old contract's
    // instance of the same module stops (a start refused meanwhile is tried again), so none is
    // slashed for an activation it could not make (it was, NoActivation, until session 39).
    for image in [&a, &b, &b2] {
        let slashed: Vec<_> = deployer_contracts(&net, image)
            .into_iter()
            .filter(|(_, _, s)| s == "slashed")
            .collect();
        assert!(
            slashed.is_empty(),
            "providers slashed for {image}: {slashed:?}"
        );
    }
    let st = status(&net, &id);
    assert_eq!(st["variant_counts"]["a"], 3, "{st}");
    assert_eq!(st["variant_counts"]["b"], 3, "{st}");

    // `deploy upgrade` moves b to a third image, start-first: each b target runs it beside b2
    // until it is healthy, then b2's contract there is released. The command waits for the
    // end and exits 0; a's contracts stay as they were.
    let b3 = publish(&net, "variant-b", "0.3.0", &tagged(&wasm, 3));
    let upgrade = agora(&[
        "deploy",
        "upgrade",
        &id,
        "--variant",
        &format!("b={b3}"),
        "--max-unavailable",
        "1",
        "--health-timeout",
        "2m",
        "--wait",
        "5m",
        "--data-dir",
        &net.node(0),
    ]);
    let text = String::from_utf8_lossy(&upgrade.stdout);
    eprintln!("{text}");
    assert!(upgrade.status.success(), "{upgrade:?}");
    assert!(
        text.contains(&format!("every target runs b={b3}")),
        "{text}"
    );
    let all = [a.as_str(), b.as_str(), b2.as_str(), b3.as_str()];
    wait_for(
        &net,
        &id,
        &LABELLED,
        "b's three targets on b3 alone, a's unchanged",
        WAIT,
        || {
            let runs: Vec<Vec<String>> = (0..8).map(|i| running_of(&net, i, &all)).collect();
            BLE.iter().all(|i| runs[*i] == vec![b3.clone()])
                && [4, 6, 7].iter().all(|i| runs[*i] == vec![a.clone()])
                && active(&b2).is_empty()
                && active(&b3).len() == 3
        },
    );
    assert_eq!(
        active(&a),
        a_contracts,
        "a's contracts were not touched by the upgrade"
    );
    let slashed: Vec<_> = deployer_contracts(&net, &b3)
        .into_iter()
        .filter(|(_, _, s)| s == "slashed")
        .collect();
    assert!(slashed.is_empty(), "providers slashed for b3: {slashed:?}");
    let st = status(&net, &id);
    assert_eq!(st["variant_counts"]["b"], 3, "{st}");
    assert_eq!(st["upgrade"]["state"], "succeeded", "{st}");
    eprintln!(
        "fleet variants: before the join a on {a_before:?}, b on {b_before:?}; after, a on \
         {a_after:?}, b on {b_after:?} (node{} moved from a to b); b then moved to its new \
         image on {:?}, a's contracts unchanged",
        moved[0], BLE
    );
}
