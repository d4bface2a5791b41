#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use agora_market::identity::Signer;
use agora_market::resources::Interface;
use agora_market::test_utils::signer;

fn node(i: u64) -> NodeId {
    signer(1000 + i).node_id()
}

/// Every achievable assignment of `eligible` (brute force; small fleets only).
fn all_assignments(eligible: &[(NodeId, Mask)], k: usize) -> Vec<BTreeMap<NodeId, usize>> {
    let mut out = vec![BTreeMap::new()];
    for (n, mask) in eligible {
        let options: Vec<usize> = (0..k).filter(|v| mask & (1 << v) != 0).collect();
        if options.is_empty() {
            continue;
        }
        out = out
            .into_iter()
            .flat_map(|a| {
                options.iter().map(move |v| {
                    let mut a = a.clone();
                    a.insert(*n, *v);
                    a
                })
            })
            .collect();
    }
    out
}

fn sumsq(c: &[usize]) -> usize {
    c.iter().map(|x| x * x).sum()
}

fn moves(a: &BTreeMap<NodeId, usize>, previous: &BTreeMap<NodeId, usize>) -> usize {
    a.iter()
        .filter(|(n, v)| previous.get(*n).is_some_and(|p| p != *v))
        .count()
}

/// Checks `got` against every assignment: constraints, balance (sum of squares, the largest
/// and the smallest count) and moves, all equal to the best achievable.
fn check_optimal(
    eligible: &BTreeMap<NodeId, Mask>,
    previous: &BTreeMap<NodeId, usize>,
    k: usize,
    got: &BTreeMap<NodeId, usize>,
) {
    let full: Mask = if k >= 8 { Mask::MAX } else { (1 << k) - 1 };
    for (n, m) in eligible {
        match got.get(n) {
            Some(v) => assert!(m & (1 << v) != 0, "variant {v} violates its constraint"),
            None => assert_eq!(m & full, 0, "an eligible target got no variant"),
        }
    }
    assert!(got.keys().all(|n| eligible.contains_key(n)));
    let list: Vec<(NodeId, Mask)> = eligible.iter().map(|(n, m)| (*n, *m)).collect();
    let all = all_assignments(&list, k);
    let best_sq = all.iter().map(|a| sumsq(&counts(a, k))).min().unwrap();
    let best_max = all
        .iter()
        .map(|a| counts(a, k).into_iter().max().unwrap_or(0))
        .min()
        .unwrap();
    let best_min = all
        .iter()
        .map(|a| counts(a, k).into_iter().min().unwrap_or(0))
        .max()
        .unwrap();
    let c = counts(got, k);
    assert_eq!(sumsq(&c), best_sq, "counts {c:?} are not the most balanced");
    assert_eq!(c.iter().copied().max().unwrap_or(0), best_max, "{c:?}");
    assert_eq!(c.iter().copied().min().unwrap_or(0), best_min, "{c:?}");
    let best_moves = all
        .iter()
        .filter(|a| sumsq(&counts(a, k)) == best_sq)
        .map(|a| moves(a, previous))
        .min()
        .unwrap();
    assert_eq!(moves(got, previous), best_moves, "more moves than needed");
}

#[test]
fn parse_takes_name_cid_and_an_optional_selector() {
    let v = Variant::parse("b=bafkreiabc:iface=ble,site=factory").unwrap();
    assert_eq!(v.name, "b");
    assert_eq!(v.image, "bafkreiabc");
    assert_eq!(v.selector.interfaces.get(&Interface::Ble), Some(&1));
    assert_eq!(
        v.selector.labels.get("site").map(String::as_str),
        Some("factory")
    );
    let a = Variant::parse("a=bafkreixyz").unwrap();
    assert_eq!(a.selector, Selector::default());
    for bad in [
        "a",
        "=bafk",
        "a=",
        "a=ba-fk",
        "A B=bafk",
        "a=bafk:iface=radio",
    ] {
        assert!(Variant::parse(bad).is_err(), "{bad}");
    }
    assert!(Variant::parse(&format!("{}=bafk", "n".repeat(33))).is_err());
}

#[test]
fn a_deployment_names_at_most_eight_distinct_variants() {
    let v = |name: &str, image: &str| Variant {
        name: name.into(),
        image: image.into(),
        selector: Selector::default(),
    };
    let eight: Vec<Variant> = (0..8)
        .map(|i| v(&format!("v{i}"), &format!("img{i}")))
        .collect();
    assert_eq!(check_variants(&eight, "img0"), Ok(()));
    assert!(
        check_variants(&eight, "img1").is_err(),
        "image is the first variant's"
    );
    let mut nine = eight.clone();
    nine.push(v("v8", "img8"));
    assert!(check_variants(&nine, "img0").is_err());
    assert!(check_variants(&[v("a", "x"), v("a", "y")], "x").is_err());
    assert!(check_variants(&[v("a", "x"), v("b", "x")], "x").is_err());
    assert_eq!(check_variants(&[], "anything"), Ok(()));
}

#[test]
fn b_only_on_ble_and_the_rest_balanced() {
    // 6 targets, 2 with BLE: a anywhere, b only with BLE → b = 2, a = 4.
    let eligible: BTreeMap<NodeId, Mask> = (0..6)
        .map(|i| (node(i), if i < 2 { 0b11 } else { 0b01 }))
        .collect();
    let got = assign(&eligible, &BTreeMap::new(), 2);
    assert_eq!(counts(&got, 2), vec![4, 2]);
    assert!(got.iter().all(|(n, v)| *v == 0 || eligible[n] & 0b10 != 0));
}

#[test]
fn a_balanced_fleet_stays_put_and_a_join_moves_only_what_balance_needs() {
    // 4 targets, BLE on 3: 2/2 (one BLE target runs a).
    let mut eligible: BTreeMap<NodeId, Mask> = (0..4)
        .map(|i| (node(i), if i < 3 { 0b11 } else { 0b01 }))
        .collect();
    let first = assign(&eligible, &BTreeMap::new(), 2);
    assert_eq!(counts(&first, 2), vec![2, 2]);
    assert_eq!(
        assign(&eligible, &first, 2),
        first,
        "stable when nothing changes"
    );
    // Two targets without BLE join: 3/3, so the BLE target that ran a moves to b, and only it.
    eligible.insert(node(4), 0b01);
    eligible.insert(node(5), 0b01);
    let second = assign(&eligible, &first, 2);
    assert_eq!(counts(&second, 2), vec![3, 3]);
    assert_eq!(moves(&second, &first), 1);
    check_optimal(&eligible, &first, 2, &second);
    // One leaves: the rest stay where balance allows.
    eligible.remove(&node(5));
    let third = assign(&eligible, &second, 2);
    check_optimal(&eligible, &second, 2, &third);
}

/// The scale: 30 targets, 10 with BLE; then 6 more join (3 with BLE). Variant b only on
/// BLE targets, the counts the most balanced the constraints allow, and the join moves nobody
/// (the new targets take up the slack). Then a fleet where BLE targets ran `a` too (20 of 30):
/// six targets without BLE join and exactly three BLE targets move to `b`.
#[test]
fn thirty_targets_ten_with_ble_then_six_join() {
    let fleet = |n: u64, ble: u64| -> BTreeMap<NodeId, Mask> {
        (0..n)
            .map(|i| (node(i), if i < ble { 0b11 } else { 0b01 }))
            .collect()
    };
    let mut eligible = fleet(30, 10);
    let before = assign(&eligible, &BTreeMap::new(), 2);
    assert_eq!(
        counts(&before, 2),
        vec![20, 10],
        "b is capped by the 10 BLE targets"
    );
    assert!(before.iter().all(|(n, v)| *v == 0 || eligible[n] == 0b11));
    for i in 30..36 {
        eligible.insert(node(i), if i < 33 { 0b11 } else { 0b01 });
    }
    let after = assign(&eligible, &before, 2);
    assert_eq!(counts(&after, 2), vec![23, 13]);
    assert!(after.iter().all(|(n, v)| *v == 0 || eligible[n] == 0b11));
    assert_eq!(moves(&after, &before), 0);

    let mut eligible = fleet(30, 20);
    let before = assign(&eligible, &BTreeMap::new(), 2);
    assert_eq!(counts(&before, 2), vec![15, 15]);
    for i in 30..36 {
        eligible.insert(node(i), 0b01);
    }
    let after = assign(&eligible, &before, 2);
    assert_eq!(counts(&after, 2), vec![18, 18]);
    assert_eq!(
        moves(&after, &before),
        3,
        "three BLE targets move from a to b"
    );
    assert!(after.iter().all(|(n, v)| *v == 0 || eligible[n] == 0b11));
}

#[test]
fn a_full_fleet_of_1024_targets_and_8_variants_is_assigned() {
    let eligible: BTreeMap<NodeId, Mask> = (0..1024u64)
        .map(|i| (node(i), (1u8 << (i % 8)) | 1))
        .collect();
    let got = assign(&eligible, &BTreeMap::new(), 8);
    assert_eq!(counts(&got, 8), vec![128; 8]);
}

#[test]
fn eligibility_follows_each_variants_selector() {
    let cap = Resources {
        cpu_millis: 1000,
        ..Resources::default()
    };
    let p = |ble: bool| ProviderFacts {
        node: node(0),
        region: None,
        labels: BTreeMap::new(),
        capacity: if ble {
            cap.clone().with_interface(Interface::Ble, 1)
        } else {
            cap.clone()
        },
        free: cap.clone(),
        last_seen: 0,
    };
    let variants = [
        Variant::parse("a=bafka").unwrap(),
        Variant::parse("b=bafkb:iface=ble").unwrap(),
    ];
    assert_eq!(
        eligibility(&variants, &p(true), &Resources::default()),
        0b11
    );
    assert_eq!(
        eligibility(&variants, &p(false), &Resources::default()),
        0b01
    );
}

fn fleet_strategy() -> impl Strategy<Value = (usize, Vec<Mask>, Vec<Option<usize>>, Vec<Mask>)> {
    (1usize..=3).prop_flat_map(|k| {
        let mask = 0..(1u8 << k);
        (
            Just(k),
            proptest::collection::vec(mask.clone(), 1..=6),
            proptest::collection::vec(proptest::option::of(0..k), 6),
            proptest::collection::vec(mask, 0..=2),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random fleets and constraints, with random previous variants: every target's variant
    /// satisfies its constraint, one variant per target, the counts are the most balanced the
    /// constraints allow (sum of squares, largest and smallest count all equal to the best of
    /// every assignment), and no assignment that balanced moves fewer targets.
    #[test]
    fn assignment_is_valid_balanced_and_moves_least(
        (k, masks, prev, _) in fleet_strategy()
    ) {
        let eligible: BTreeMap<NodeId, Mask> =
            masks.iter().enumerate().map(|(i, m)| (node(i as u64), *m)).collect();
        let previous: BTreeMap<NodeId, usize> = prev
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|p| (node(i as u64), p)))
            .filter(|(n, _)| eligible.contains_key(n))
            .collect();
        let got = assign(&eligible, &previous, k);
        check_optimal(&eligible, &previous, k, &got);
    }

    /// A join: assign a fleet, then add up to two targets; the new assignment is the most
    /// balanced and moves the fewest of the targets already placed, and assigning again without
    /// a change moves nobody.
    #[test]
    fn a_join_rebalances_with_the_fewest_moves((k, masks, _, joins) in fleet_strategy()) {
        let mut eligible: BTreeMap<NodeId, Mask> =
            masks.iter().enumerate().map(|(i, m)| (node(i as u64), *m)).collect();
        let before = assign(&eligible, &BTreeMap::new(), k);
        prop_assert_eq!(&assign(&eligible, &before, k), &before);
        for (j, m) in joins.iter().enumerate() {
            eligible.insert(node(100 + j as u64), *m);
        }
        let after = assign(&eligible, &before, k);
        check_optimal(&eligible, &before, k, &after);
    }

    /// A leave (a failed contract, a target offline too long): assign a fleet, then take up to
    /// two targets out; the deployer keeps the variants of those that stay, and the new
    /// assignment is the most balanced the remaining constraints allow, moves the fewest of
    /// them, and assigning again without a change moves nobody.
    #[test]
    fn a_leave_rebalances_with_the_fewest_moves(
        (k, masks, _, _) in fleet_strategy(),
        leaves in proptest::collection::vec(0usize..6, 0..=2),
    ) {
        let mut eligible: BTreeMap<NodeId, Mask> =
            masks.iter().enumerate().map(|(i, m)| (node(i as u64), *m)).collect();
        let before = assign(&eligible, &BTreeMap::new(), k);
        for i in &leaves {
            eligible.remove(&node(*i as u64));
        }
        let previous: BTreeMap<NodeId, usize> = before
            .iter()
            .filter(|(n, _)| eligible.contains_key(*n))
            .map(|(n, v)| (*n, *v))
            .collect();
        let after = assign(&eligible, &previous, k);
        check_optimal(&eligible, &previous, k, &after);
        prop_assert_eq!(&assign(&eligible, &after, k), &after);
    }
}

/// With a replica count: one target without BLE kept, one more wanted among three candidates,
/// two without BLE first in preference and one with BLE last: the choice takes the BLE one, so
/// the variants can be 1/1 rather than 2/0 (b needs BLE).
#[test]
fn choose_prefers_candidates_that_let_the_variants_balance() {
    let kept: BTreeMap<NodeId, Mask> = BTreeMap::from([(node(0), 0b01)]);
    let cands = vec![(node(1), 0b01), (node(2), 0b01), (node(3), 0b11)];
    let chosen = choose(&kept, &cands, 1, 2);
    assert_eq!(chosen, vec![node(3)], "the BLE candidate lets b run");
    let chosen = choose(&kept, &cands, 3, 2);
    assert_eq!(chosen.len(), 3);
    // Without variants' constraints at stake, preference order decides.
    let any = vec![(node(1), 0b11), (node(2), 0b11), (node(3), 0b11)];
    assert_eq!(choose(&kept, &any, 2, 2), vec![node(1), node(2)]);
    assert!(choose(&kept, &cands, 0, 2).is_empty());
}

fn best_sumsq(eligible: &[(NodeId, Mask)], k: usize) -> usize {
    all_assignments(eligible, k)
        .iter()
        .map(|a| sumsq(&counts(a, k)))
        .min()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random kept targets and candidates: `choose` takes as many as wanted (or all), and the
    /// variants over the kept targets plus its choice are as balanced as over any choice of
    /// that many candidates (brute force over every subset).
    #[test]
    fn choose_picks_the_most_balanceable_candidates(
        k in 1usize..=3,
        kept in proptest::collection::vec(1u8..8, 0..=3),
        cands in proptest::collection::vec(1u8..8, 0..=5),
        want in 0usize..=3,
    ) {
        let full = (1u8 << k) - 1;
        let kept: BTreeMap<NodeId, Mask> = kept
            .iter()
            .enumerate()
            .map(|(i, m)| (node(i as u64), m & full))
            .filter(|(_, m)| *m != 0)
            .collect();
        let cands: Vec<(NodeId, Mask)> = cands
            .iter()
            .enumerate()
            .map(|(i, m)| (node(50 + i as u64), m & full))
            .filter(|(_, m)| *m != 0)
            .collect();
        let chosen = choose(&kept, &cands, want, k);
        let take = want.min(cands.len());
        prop_assert_eq!(chosen.len(), take);
        let with = |pick: &[NodeId]| -> Vec<(NodeId, Mask)> {
            let mut all: Vec<(NodeId, Mask)> = kept.iter().map(|(n, m)| (*n, *m)).collect();
            all.extend(cands.iter().filter(|(n, _)| pick.contains(n)).copied());
            all
        };
        let got = best_sumsq(&with(&chosen), k);
        let mut best = usize::MAX;
        for bits in 0u32..(1 << cands.len()) {
            if bits.count_ones() as usize != take {
                continue;
            }
            let pick: Vec<NodeId> = cands
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(_, (n, _))| *n)
                .collect();
            best = best.min(best_sumsq(&with(&pick), k));
        }
        prop_assert_eq!(got, best);
    }
}
