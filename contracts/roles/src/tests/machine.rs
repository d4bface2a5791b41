//! Rules of the machine as a whole: ledger facts, sync, timeline, authority, wake-ups.

use super::*;

#[test]
fn late_and_repeated_blocks_are_ignored() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let mut roles = Roles::new(me, chain.now - 1, RolesConfig::default(), None);
    let (id, ev) = chain.register(Chain::standby().signed());
    let first = chain.facts(&roles, me, ev);
    roles.handle(chain.now, first.clone());
    roles.handle(
        chain.now,
        Input::Staged {
            service: ServiceRef::Contract(id),
            devices: DEVICES.to_vec(),
        },
    );
    let p = chain.provider.clone();
    chain.now += 100;
    let ev = chain.block(vec![(&p, TxKind::MarkMigrated(id))]);
    let second = chain.facts(&roles, me, ev);
    roles.handle(chain.now, second.clone());
    // The same block again, then the older one: nothing happens, nothing regresses.
    assert!(submitted(&roles.handle(chain.now + 10, second)).is_empty());
    assert!(submitted(&roles.handle(chain.now + 20, first)).is_empty());
    assert_eq!(roles.stale_blocks(), 2);
    assert_eq!(
        roles.records[&id].status,
        agora_contracts::lifecycle::ContractStatus::Migrated
    );
}

#[test]
fn the_ledger_is_current_after_a_fresh_block_or_the_arbitrators_say_so() {
    let mut chain = Chain::new();
    let me = chain.customer.node_id();
    chain.block(vec![]);
    let started = chain.now + 1_000;
    let mut roles = Roles::new(me, started, RolesConfig::default(), None);
    roles.handle(started, chain.facts(&roles, me, Vec::new()));
    assert!(!roles.synced());
    // A block decided before the start does not count.
    chain.block(vec![]);
    roles.handle(started + 10, chain.facts(&roles, me, Vec::new()));
    assert!(!roles.synced());
    chain.now = started;
    chain.block(vec![]);
    let out = roles.handle(started + 20, chain.facts(&roles, me, Vec::new()));
    assert!(roles.synced());
    assert!(phases(&out).contains(&"synced".to_string()));
    // Learning that it is behind makes it not current again.
    chain.now += 100;
    chain.block(vec![]);
    let Input::Ledger(mut facts) = chain.facts(&roles, me, Vec::new()) else {
        unreachable!()
    };
    facts.behind = true;
    let out = roles.handle(chain.now, Input::Ledger(facts));
    assert!(!roles.synced());
    assert!(phases(&out).contains(&"catching-up".to_string()));
    roles.handle(chain.now, Input::CaughtUp { height: 4 });
    assert!(roles.synced());
}

#[test]
fn status_changes_are_timeline_entries_named_by_role() {
    let mut chain = Chain::new();
    let a = chain.committee[0].node_id();
    let mut roles = Roles::new(a, chain.now - 1, RolesConfig::default(), None);
    let (_, ev) = chain.register(Chain::standby().signed());
    let out = roles.handle(chain.now, chain.facts(&roles, a, ev));
    assert!(out.iter().any(|e| matches!(e, Effect::Timeline(n)
        if n.phase == "validated" && n.detail == "arbitrator")));
    // A stranger's contract is not on this node's timeline.
    let me = signer(9).node_id();
    let mut other = Roles::new(me, chain.now - 1, RolesConfig::default(), None);
    let (_, ev) = chain.register(Chain::standby().nonce(5).signed());
    let out = other.handle(chain.now, chain.facts(&other, me, ev));
    assert!(!phases(&out).contains(&"validated".to_string()));
}

#[test]
fn authority_is_emitted_when_it_changes_only() {
    let chain = Chain::new();
    let me = chain.customer.node_id();
    let mut roles = Roles::new(
        me,
        chain.now - 1,
        RolesConfig::default(),
        Some(Chain::image()),
    );
    roles.handle(chain.now, chain.facts(&roles, me, Vec::new()));
    let out = roles.handle(
        chain.now,
        Input::Staged {
            service: ServiceRef::Own,
            devices: DEVICES.to_vec(),
        },
    );
    let Some(Effect::Authority(map)) = out.iter().find(|e| matches!(e, Effect::Authority(_)))
    else {
        panic!("{out:?}")
    };
    assert_eq!(map.len(), 3);
    assert!(map.values().all(|a| a.manager == me));
    assert!(
        !roles
            .handle(chain.now + 10, Input::Tick)
            .iter()
            .any(|e| matches!(e, Effect::Authority(_)))
    );
}

#[test]
fn images_name_the_own_service_and_the_provided_ones() {
    let mut chain = Chain::new();
    let (roles, _) = armed_provider(&mut chain, Chain::standby());
    assert_eq!(roles.images(), [Chain::image()].into());
    let roles = Roles::new(signer(9).node_id(), 0, RolesConfig::default(), None);
    assert!(roles.images().is_empty());
}

#[test]
fn a_machine_for_the_arbitrator_only_leaves_the_other_roles_alone() {
    let mut chain = Chain::new();
    let only = RolesConfig {
        roles: RoleSet::ARBITRATOR,
        ..RolesConfig::default()
    };
    let p = chain.provider.node_id();
    let a = chain.committee[0].node_id();
    let customer = chain.customer.node_id();
    let mut provider_all = Roles::new(p, chain.now - 1, RolesConfig::default(), None);
    let mut provider = Roles::new(p, chain.now - 1, only, None);
    let mut arbitrator = Roles::new(a, chain.now - 1, only, None);
    let (id, ev) = chain.register(Chain::standby().signed());
    let stages = |out: &[Effect]| {
        out.iter()
            .filter(|e| matches!(e, Effect::Stage { .. }))
            .count()
    };
    let out = provider_all.handle(chain.now, chain.facts(&provider_all, p, ev.clone()));
    assert_eq!(stages(&out), 1, "the full machine stages the image");
    let out = provider.handle(chain.now, chain.facts(&provider, p, ev.clone()));
    assert_eq!(stages(&out), 0);
    // The sync rule stays the machine's; nothing of the provider's.
    assert_eq!(phases(&out), vec!["synced".to_string()]);
    assert!(!out.iter().any(|e| matches!(e, Effect::Authority(_))));
    assert!(provider.images().is_empty());
    let out = arbitrator.handle(chain.now, chain.facts(&arbitrator, a, ev));
    assert!(out.contains(&Effect::Watch(customer)));
    assert!(out.contains(&Effect::Timeline(Note::new(
        "validated",
        Some(id),
        "arbitrator"
    ))));
    let out = arbitrator.handle(
        chain.now + 10,
        Input::Presence(Presence::Down {
            node: customer,
            last_seen: chain.now,
        }),
    );
    assert_eq!(
        submitted(&out),
        vec![TxKind::Attest {
            subject: customer,
            liveness: Liveness::Unreachable { since: chain.now },
        }]
    );
}
