//! Customer rules: settlement, the own service, and the suspension when cut off.

use super::*;
use agora_contracts::ledger::SettleReason;

/// A customer machine with its own service running on the test devices, and a standby
/// contract registered, migrated and armed.
fn customer_with_armed_standby(chain: &mut Chain) -> (Roles, ContractId) {
    let me = chain.customer.node_id();
    let mut roles = Roles::new(
        me,
        chain.now - 1,
        RolesConfig::default(),
        Some(Chain::image()),
    );
    let out = roles.handle(chain.now, chain.facts(&roles, me, Vec::new()));
    assert!(out.contains(&Effect::Stage {
        service: ServiceRef::Own,
        image: Chain::image()
    }));
    roles.handle(
        chain.now,
        Input::Staged {
            service: ServiceRef::Own,
            devices: DEVICES.to_vec(),
        },
    );
    let (id, ev) = chain.register(Chain::standby().signed());
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::Activate {
        service: ServiceRef::Own,
        devices: DEVICES.to_vec(),
        reclaim: false
    }));
    let out = roles.handle(
        chain.now,
        Input::ActivationDone {
            service: ServiceRef::Own,
            started_at: chain.now,
            replayed: 0,
        },
    );
    assert!(phases(&out).contains(&"own-service-running".to_string()));
    let p = chain.provider.clone();
    chain.now += 100;
    let ev = chain.block(vec![(&p, TxKind::MarkMigrated(id))]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    chain.now += 100;
    let ev = chain.block(vec![(&p, TxKind::MarkArmed(id))]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    (roles, id)
}

#[test]
fn the_own_service_yields_during_a_handover_and_is_reclaimed_after_settling() {
    let mut chain = Chain::new();
    let me = chain.customer.node_id();
    let (mut roles, id) = customer_with_armed_standby(&mut chain);
    // Handover attested while this node is in fact up (it was cut off from the committee).
    chain.now = 5_000;
    let ev = chain.attest_down(1_000);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::YieldDevices {
        devices: DEVICES.to_vec()
    }));
    assert!(out.contains(&Effect::StopService {
        service: ServiceRef::Own
    }));
    assert!(out.contains(&Effect::Listen {
        devices: DEVICES.to_vec(),
        on: true
    }));
    assert!(phases(&out).contains(&"handover-attested-while-up".to_string()));
    // The image is staged again while it waits.
    let out = roles.handle(chain.now, Input::Tick);
    assert!(out.contains(&Effect::Stage {
        service: ServiceRef::Own,
        image: Chain::image()
    }));
    roles.handle(
        chain.now,
        Input::Staged {
            service: ServiceRef::Own,
            devices: DEVICES.to_vec(),
        },
    );
    // The provider activates; the customer, being up, settles at once.
    let p = chain.provider.clone();
    chain.now += 100;
    let ev = chain.block(vec![(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 5_000,
        },
    )]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    let settle = TxKind::Settle {
        contract: id,
        reason: SettleReason::CustomerBack,
    };
    assert_eq!(submitted(&out), vec![settle.clone()]);
    let out = roles.handle(
        chain.now,
        Input::Submitted {
            tx: settle.clone(),
            accepted: true,
        },
    );
    assert!(phases(&out).contains(&"settle-requested".to_string()));
    assert!(!out.iter().any(|e| matches!(e, Effect::Activate { .. })));
    let c = chain.customer.clone();
    chain.now += 100;
    // The committee confirmed the provider's service up to now: the settlement is judged at
    // once.
    chain.confirm_up(id);
    let ev = chain.block(vec![(&c, settle)]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::Activate {
        service: ServiceRef::Own,
        devices: DEVICES.to_vec(),
        reclaim: true
    }));
    // Its sensors are its own again, once the provider released them (or its lease ran out).
    let a = &roles.authority()[&101];
    assert_eq!(a.manager, me);
    assert_eq!(a.previous.len(), 1);
    assert_eq!(a.previous[0].node, chain.provider.node_id());
    assert_eq!(
        a.previous[0].until,
        chain.now + PROVIDER_LEASE_MS + CLOCK_MARGIN_MS
    );
}

#[test]
fn settlement_is_asked_again_no_sooner_than_the_retry_interval_and_not_while_pending() {
    let mut chain = Chain::new();
    let me = chain.customer.node_id();
    let (mut roles, id) = customer_with_armed_standby(&mut chain);
    chain.now = 5_000;
    let ev = chain.attest_down(1_000);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let p = chain.provider.clone();
    chain.now += 100;
    let ev = chain.block(vec![(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 5_000,
        },
    )]);
    let t = chain.now;
    assert_eq!(
        submitted(&roles.handle(t, chain.facts(&roles, me, ev))).len(),
        1
    );
    assert!(submitted(&roles.handle(t + SETTLE_RETRY_MS - 1, Input::Tick)).is_empty());
    assert_eq!(
        submitted(&roles.handle(t + SETTLE_RETRY_MS, Input::Tick)).len(),
        1
    );
    // The ledger holds the settlement until the provider's heartbeats cover its end.
    chain.now = 20_000;
    let c = chain.customer.clone();
    let ev = chain.block(vec![(
        &c,
        TxKind::Settle {
            contract: id,
            reason: SettleReason::CustomerBack,
        },
    )]);
    assert!(
        ev.iter()
            .any(|e| matches!(e, LedgerEvent::SettlementPending { .. }))
    );
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(submitted(&roles.handle(chain.now + 3 * SETTLE_RETRY_MS, Input::Tick)).is_empty());
}

#[test]
fn a_provider_that_never_activates_is_settled_for_it() {
    let mut chain = Chain::new();
    let me = chain.customer.node_id();
    let (mut roles, id) = customer_with_armed_standby(&mut chain);
    chain.now = 5_000;
    let ev = chain.attest_down(1_000);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    // The provider's report may land up to the ledger's grace after the deadline.
    settles_no_activation_only_past_the_grace(&chain, &mut roles, id);
}

#[test]
fn the_own_service_waits_for_a_current_ledger() {
    let mut chain = Chain::new();
    let me = chain.customer.node_id();
    chain.block(vec![]);
    let started = chain.now + 5_000;
    let mut roles = Roles::new(me, started, RolesConfig::default(), Some(Chain::image()));
    roles.handle(started, chain.facts(&roles, me, Vec::new()));
    let out = roles.handle(
        started,
        Input::Staged {
            service: ServiceRef::Own,
            devices: DEVICES.to_vec(),
        },
    );
    assert!(!out.iter().any(|e| matches!(e, Effect::Activate { .. })));
    // The stored ledger again (a rescan): not a fresh block.
    let out = roles.handle(started + 50, chain.facts(&roles, me, Vec::new()));
    assert!(!out.iter().any(|e| matches!(e, Effect::Activate { .. })));
    // A block decided after the start, but the replica knows it is still behind.
    chain.now = started + 100;
    chain.block(vec![]);
    let Input::Ledger(mut facts) = chain.facts(&roles, me, Vec::new()) else {
        unreachable!()
    };
    facts.behind = true;
    assert!(
        !roles
            .handle(chain.now, Input::Ledger(facts))
            .iter()
            .any(|e| matches!(e, Effect::Activate { .. }))
    );
    chain.now += 100;
    chain.block(vec![]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, Vec::new()));
    assert!(out.iter().any(|e| matches!(e, Effect::Activate { .. })));
}

#[test]
fn setting_the_own_service_answers_once_it_is_staged() {
    let chain = Chain::new();
    let me = chain.customer.node_id();
    let mut roles = Roles::new(me, chain.now, RolesConfig::default(), None);
    let image = test_cid(b"other");
    let out = roles.handle(chain.now, Input::SetOwn { image });
    assert!(out.contains(&Effect::Stage {
        service: ServiceRef::Own,
        image
    }));
    let out = roles.handle(
        chain.now,
        Input::StageFailed {
            service: ServiceRef::Own,
            error: "not found".into(),
            permanent: false,
        },
    );
    assert!(
        matches!(out.iter().find(|e| matches!(e, Effect::OwnSet(_))), Some(Effect::OwnSet(Err(e))) if e.contains("not found"))
    );
    let out = roles.handle(chain.now + 10, Input::SetOwn { image });
    assert!(out.iter().any(|e| matches!(e, Effect::Stage { .. })));
    let out = roles.handle(
        chain.now + 20,
        Input::Staged {
            service: ServiceRef::Own,
            devices: vec![7],
        },
    );
    assert!(out.contains(&Effect::OwnSet(Ok(vec![7]))));
    assert_eq!(roles.images(), [image].into());
}

#[test]
fn a_customer_cut_off_from_its_committee_stops_feeding_until_a_fresh_block() {
    let mut chain = Chain::new();
    let me = chain.customer.node_id();
    let (mut roles, _) = customer_with_armed_standby(&mut chain);
    assert_eq!(roles.authority()[&101].lease_until, None);
    // It watches its committee while a handover is possible.
    let members: Vec<NodeId> = chain.committee.iter().map(|s| s.node_id()).collect();
    let t = chain.now + 10;
    let down = |roles: &mut Roles, i: usize, at: Timestamp| {
        roles.handle(
            at,
            Input::Presence(Presence::Down {
                node: members[i],
                last_seen: at - 1_000,
            }),
        )
    };
    down(&mut roles, 0, t);
    down(&mut roles, 1, t);
    assert_eq!(
        roles.authority()[&101].lease_until,
        None,
        "two of four cannot hand over"
    );
    let out = down(&mut roles, 2, t + 5);
    assert!(phases(&out).contains(&"own-suspended".to_string()));
    assert_eq!(roles.authority()[&101].lease_until, Some(t + 5));
    // Back in reach: still lapsed until a block decided after that.
    let out = roles.handle(t + 500, Input::Presence(Presence::Up { node: members[2] }));
    assert!(phases(&out).contains(&"own-rechecking".to_string()));
    assert!(roles.authority()[&101].lease_until.is_some());
    chain.now = t + 600;
    chain.block(vec![]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, Vec::new()));
    assert!(phases(&out).contains(&"own-resumed".to_string()));
    assert_eq!(roles.authority()[&101].lease_until, None);
}

#[test]
fn the_customer_watches_its_committee_only_while_a_handover_is_possible() {
    let mut chain = Chain::new();
    let me = chain.customer.node_id();
    let mut roles = Roles::new(me, chain.now - 1, RolesConfig::default(), None);
    let (id, ev) = chain.register(Chain::standby().signed());
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    let watched: Vec<NodeId> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Watch(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(watched.len(), 4);
    let c = chain.customer.clone();
    chain.now += 100;
    let ev = chain.block(vec![(&c, TxKind::Cancel(id))]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert_eq!(
        out.iter()
            .filter(|e| matches!(e, Effect::Unwatch(_)))
            .count(),
        4
    );
}
