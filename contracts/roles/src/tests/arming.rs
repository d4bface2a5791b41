//! The provider's check of the module's instances before arming (THREATS C5, `instances.rs`).

use super::*;
use crate::instances::{ARM_RECHECK_MS, MAX_ARM_WAIT_MS};
use agora_contracts::lifecycle::ContractStatus;

/// A provider machine with its standby contract staged and migrated, and a `rival` of the same
/// customer on the same image registered just before it; the machine has asked for its rivals.
fn migrated_with_rival(chain: &mut Chain) -> (Roles, ContractId, ContractId) {
    let me = chain.provider.node_id();
    let mut roles = Roles::new(me, chain.now - 1, RolesConfig::default(), None);
    let (rival, _) = chain.register(Chain::standby().nonce(1).signed());
    chain.now += 100;
    let (id, ev) = chain.register(Chain::standby().signed());
    roles.handle(chain.now, chain.facts(&roles, me, ev));
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
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::InstanceRivals { contract: id }));
    assert!(submitted(&out).is_empty(), "not armed before the answer");
    (roles, id, rival)
}

/// The host's answer for `id`: `rival` shares its module, which allows `max` instances.
fn rivals(id: ContractId, rival: ContractId, max: u32) -> Input {
    Input::InstanceRivals {
        contract: id,
        max,
        rivals: vec![rival],
    }
}

/// The ledger as it stands, but with `rival` active and its settlement pending: ending, its
/// service still running here.
fn rival_ending(chain: &Chain, roles: &Roles, rival: ContractId) -> Input {
    let me = chain.provider.node_id();
    let Input::Ledger(mut facts) = chain.facts(roles, me, Vec::new()) else {
        unreachable!()
    };
    let r = facts.records.get_mut(&rival).unwrap();
    r.status = ContractStatus::Active;
    r.closing = Some(chain.now);
    Input::Ledger(facts)
}

/// THREATS C5 in the machine: a migrated contract whose module's only instance an armed
/// contract of the same customer holds is called off (`arm-refused`, `Cancel`, sent again
/// while the ledger has not applied it), never armed; with a second instance allowed it is
/// armed. Mutants: `submit_once(MarkArmed)` in the Migrated arm without `may_arm` arms it; the
/// refusal's `>=` as `>` in `Holding::arming` waits instead of cancelling; `Refused` without
/// its `submit_once(Cancel)` never sends the cancel again.
#[test]
fn a_contract_is_called_off_not_armed_while_its_rivals_hold_every_instance() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let (mut roles, id, rival) = migrated_with_rival(&mut chain);
    let p = chain.provider.clone();
    chain.now += 100;
    let ev = chain.block(vec![
        (&p, TxKind::MarkMigrated(rival)),
        (&p, TxKind::MarkArmed(rival)),
    ]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let t = chain.now;
    let out = roles.handle(t, rivals(id, rival, 1));
    assert_eq!(submitted(&out), vec![TxKind::Cancel(id)]);
    assert!(phases(&out).contains(&"arm-refused".to_string()));
    assert!(submitted(&roles.handle(t + RESUBMIT_MS - 1, Input::Tick)).is_empty());
    assert_eq!(
        submitted(&roles.handle(t + RESUBMIT_MS, Input::Tick)),
        vec![TxKind::Cancel(id)],
        "sent again while the ledger shows it migrated"
    );
    // With room for both, the same answer arms it.
    let mut chain = Chain::new();
    let (mut roles, id, rival) = migrated_with_rival(&mut chain);
    let out = roles.handle(chain.now, rivals(id, rival, 2));
    assert_eq!(submitted(&out), vec![TxKind::MarkArmed(id)]);
    assert!(out.contains(&Effect::Listen {
        devices: DEVICES.to_vec(),
        on: true
    }));
}

/// A rival that is ending (its settlement pending) still runs its service: arming waits, asks
/// again every `ARM_RECHECK_MS` (woken for), and arms once the rival is final. Mutants:
/// dropping `ending` from the sum in `Holding::arming` arms at the first answer; leaving the
/// recheck out of `Provider::next_wake` leaves the driver nothing to wake for.
#[test]
fn arming_waits_for_an_ending_rival_and_arms_once_it_is_final() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let (mut roles, id, rival) = migrated_with_rival(&mut chain);
    let t = chain.now;
    roles.handle(t, rival_ending(&chain, &roles, rival));
    let out = roles.handle(t, rivals(id, rival, 1));
    assert!(submitted(&out).is_empty(), "{out:?}");
    assert!(phases(&out).contains(&"arm-waiting".to_string()));
    assert_eq!(roles.provider.next_wake(), Some(t + ARM_RECHECK_MS));
    let ask = Effect::InstanceRivals { contract: id };
    assert!(
        !roles
            .handle(t + ARM_RECHECK_MS - 1, Input::Tick)
            .contains(&ask)
    );
    assert!(roles.handle(t + ARM_RECHECK_MS, Input::Tick).contains(&ask));
    // The rival's contract ends: the next answer arms this one, without a second wait note.
    chain.now = t + ARM_RECHECK_MS + 100;
    let c = chain.customer.clone();
    let ev = chain.block(vec![(&c, TxKind::Cancel(rival))]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let out = roles.handle(chain.now, rivals(id, rival, 1));
    assert_eq!(submitted(&out), vec![TxKind::MarkArmed(id)]);
    assert!(!phases(&out).contains(&"arm-waiting".to_string()));
}

/// An ending rival that does not end: arming is called off once `MAX_ARM_WAIT_MS` has passed
/// since the wait began. Mutant: a re-ask that forgets the wait's `give_up` (`ask(h, id, None,
/// out)` for `Waiting`) starts the wait again at every answer and never gives up.
#[test]
fn arming_gives_up_when_an_ending_rival_outlasts_the_longest_wait() {
    let mut chain = Chain::new();
    let (mut roles, id, rival) = migrated_with_rival(&mut chain);
    let t = chain.now;
    roles.handle(t, rival_ending(&chain, &roles, rival));
    assert!(submitted(&roles.handle(t, rivals(id, rival, 1))).is_empty());
    let mut now = t;
    while now < t + MAX_ARM_WAIT_MS {
        now += ARM_RECHECK_MS;
        assert!(
            roles
                .handle(now, Input::Tick)
                .contains(&Effect::InstanceRivals { contract: id })
        );
        let out = roles.handle(now, rivals(id, rival, 1));
        if now < t + MAX_ARM_WAIT_MS {
            assert!(submitted(&out).is_empty(), "still waiting at {now}");
        } else {
            assert_eq!(submitted(&out), vec![TxKind::Cancel(id)]);
            assert!(phases(&out).contains(&"arm-refused".to_string()));
        }
    }
}
