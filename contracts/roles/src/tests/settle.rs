//! Settlement on its own ([`RoleSet::ARBITRATOR_AND_SETTLEMENT`], what the node's orchestrator
//! hands the machine while it still decides the rest of the customer's and the provider's
//! duties itself).

use super::*;
use crate::settle::PROVIDER_EXPIRY_MARGIN_MS;
use agora_contracts::ledger::SettleReason;
use agora_contracts::lifecycle::ContractStatus;

/// A machine for `me` that decides only settlement and the arbitrator's duties.
fn settling_only(chain: &Chain, me: NodeId) -> Roles {
    let cfg = RolesConfig {
        roles: RoleSet::ARBITRATOR_AND_SETTLEMENT,
        ..RolesConfig::default()
    };
    Roles::new(me, chain.now - 1, cfg, None)
}

#[test]
fn either_party_settles_at_the_end_of_the_term_and_nothing_else_is_decided() {
    let mut chain = Chain::new();
    // The ledger side of an armed standby (driven by a full machine for the provider).
    let (_, id) = armed_provider(&mut chain, Chain::lenient());
    let end = chain.ledger.contract(&id).unwrap().window_end().unwrap();
    for me in [chain.provider.node_id(), chain.customer.node_id()] {
        let mut roles = settling_only(&chain, me);
        let out = roles.handle(chain.now, chain.facts(&roles, me, vec![]));
        assert!(
            submitted(&out).is_empty(),
            "nothing due before the end: {out:?}"
        );
        assert!(
            out.iter()
                .all(|e| matches!(e, Effect::WakeAt(_) | Effect::Timeline(_))),
            "no provider or customer duty is decided: {out:?}"
        );
        assert!(
            out.contains(&Effect::WakeAt(end)),
            "wakes at the end of the term: {out:?}"
        );
        let out = roles.handle(end, Input::Tick);
        let settle = TxKind::Settle {
            contract: id,
            reason: SettleReason::DurationEnded,
        };
        assert_eq!(submitted(&out), vec![settle.clone()]);
        // Asked again only after the retry interval while the ledger shows no effect.
        assert!(submitted(&roles.handle(end + 1, Input::Tick)).is_empty());
        assert_eq!(
            submitted(&roles.handle(end + SETTLE_RETRY_MS, Input::Tick)),
            vec![settle.clone()]
        );
        let out = roles.handle(
            end + SETTLE_RETRY_MS,
            Input::Submitted {
                tx: settle,
                accepted: true,
            },
        );
        assert!(phases(&out).contains(&"settle-requested".to_string()));
    }
}

#[test]
fn a_customer_settles_a_provider_that_never_activated_only_past_the_reports_grace() {
    let mut chain = Chain::new();
    let me = chain.customer.node_id();
    // A hosted contract for a slot 5 s ahead, registered and never migrated.
    let slot = chain.now + 5_000;
    let (id, ev) = chain.register(ContractBuilder::new(1, 2).at(slot).signed());
    let mut roles = settling_only(&chain, me);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    settles_no_activation_only_past_the_grace(&chain, &mut roles, id);
    let due = chain
        .ledger
        .contract(&id)
        .unwrap()
        .activation_deadline()
        .unwrap()
        + agora_contracts::ledger::ACTIVATION_REPORT_GRACE_MS;
    // The provider's own machine never settles for that.
    let p = chain.provider.node_id();
    let mut provider = settling_only(&chain, p);
    provider.handle(chain.now, chain.facts(&provider, p, vec![]));
    assert!(submitted(&provider.handle(due + 1, Input::Tick)).is_empty());
}

/// Found by a read-only audit in session 47: a contract the provider never armed has no
/// activation deadline (no slot), so nothing settled it and the customer's payment and stake
/// stayed locked for good. Either party expires it once the ledger allows.
#[test]
fn a_contract_never_armed_is_expired_by_either_party_once_the_ledger_allows() {
    let mut chain = Chain::new();
    // An immediate hosted contract, registered and never migrated.
    let (id, ev) = chain.register(ContractBuilder::new(1, 2).signed());
    let rec = chain.ledger.contract(&id).unwrap().clone();
    let expiry =
        rec.registered_at + rec.contract.duration_ms + chain.ledger.params().expiry_grace_ms;
    for me in [chain.customer.node_id(), chain.provider.node_id()] {
        let mut roles = settling_only(&chain, me);
        let out = roles.handle(chain.now, chain.facts(&roles, me, ev.clone()));
        assert!(submitted(&out).is_empty());
        assert!(
            out.contains(&Effect::WakeAt(expiry)),
            "wakes at the expiry: {out:?}"
        );
        assert!(submitted(&roles.handle(expiry - 1, Input::Tick)).is_empty());
        assert_eq!(
            submitted(&roles.handle(expiry, Input::Tick)),
            vec![TxKind::Expire(id)]
        );
        let out = roles.handle(
            expiry,
            Input::Submitted {
                tx: TxKind::Expire(id),
                accepted: true,
            },
        );
        assert!(phases(&out).contains(&"expire-requested".to_string()));
    }
    // The ledger takes it then: every locked token goes back.
    chain.now = expiry;
    let c = chain.customer.clone();
    let ev = chain.block(vec![(&c, TxKind::Expire(id))]);
    assert!(!ev.is_empty());
    assert!(chain.ledger.contract(&id).unwrap().status.is_final());
}

/// A slot booked further ahead than its duration plus the expiry grace is not expired before
/// it could start: the customer settles it `NoActivation` past the deadline instead (found by
/// the review of the expiry).
#[test]
fn a_slot_booked_far_ahead_is_not_expired_before_it_starts() {
    let mut chain = Chain::new();
    let slot = chain.now + 10 * 60_000;
    let (id, ev) = chain.register(
        ContractBuilder::new(1, 2)
            .at(slot)
            .duration(60_000)
            .signed(),
    );
    let rec = chain.ledger.contract(&id).unwrap().clone();
    let ledger_expiry =
        rec.registered_at + rec.contract.duration_ms + chain.ledger.params().expiry_grace_ms;
    assert!(
        ledger_expiry < slot,
        "the ledger alone would allow it before the slot"
    );
    let deadline = rec.activation_deadline().unwrap();
    let due = deadline + chain.ledger.params().activation_report_grace_ms;
    let c = chain.customer.node_id();
    let mut customer = settling_only(&chain, c);
    customer.handle(chain.now, chain.facts(&customer, c, ev.clone()));
    assert!(submitted(&customer.handle(ledger_expiry, Input::Tick)).is_empty());
    assert!(submitted(&customer.handle(slot, Input::Tick)).is_empty());
    assert_eq!(
        submitted(&customer.handle(due + 1, Input::Tick)),
        vec![TxKind::Settle {
            contract: id,
            reason: agora_contracts::ledger::SettleReason::NoActivation
        }]
    );
    // The provider does not expire it before then either, and leaves the customer's
    // `NoActivation` time to land first.
    let p = chain.provider.node_id();
    let mut provider = settling_only(&chain, p);
    provider.handle(chain.now, chain.facts(&provider, p, ev));
    assert!(submitted(&provider.handle(slot, Input::Tick)).is_empty());
    assert!(submitted(&provider.handle(due + 1, Input::Tick)).is_empty());
    assert_eq!(
        submitted(&provider.handle(due + 1 + PROVIDER_EXPIRY_MARGIN_MS, Input::Tick)),
        vec![TxKind::Expire(id)]
    );
}

/// THREATS C16: a long contract its provider leaves unarmed would lock its customer's payment
/// and stake for its whole term plus the expiry grace; the customer calls it off
/// [`ARM_TIMEOUT_MS`] after the registration (`Cancel`: every locked token back). The
/// provider does not; an armed contract is not called off.
#[test]
fn a_customer_calls_off_a_contract_left_unarmed_past_the_arm_timeout() {
    let mut chain = Chain::new();
    let (id, ev) = chain.register(ContractBuilder::new(1, 2).duration(3_600_000).signed());
    let registered = chain.ledger.contract(&id).unwrap().registered_at;
    let due = registered + ARM_TIMEOUT_MS;
    let c = chain.customer.node_id();
    let mut customer = settling_only(&chain, c);
    let out = customer.handle(chain.now, chain.facts(&customer, c, ev.clone()));
    assert!(submitted(&out).is_empty());
    assert!(out.contains(&Effect::WakeAt(due)), "{out:?}");
    assert!(submitted(&customer.handle(due - 1, Input::Tick)).is_empty());
    assert_eq!(
        submitted(&customer.handle(due, Input::Tick)),
        vec![TxKind::Cancel(id)]
    );
    let out = customer.handle(
        due,
        Input::Submitted {
            tx: TxKind::Cancel(id),
            accepted: true,
        },
    );
    assert!(phases(&out).contains(&"cancel-requested".to_string()));
    // The provider leaves it to the customer (or to the expiry, much later).
    let p = chain.provider.node_id();
    let mut provider = settling_only(&chain, p);
    provider.handle(chain.now, chain.facts(&provider, p, ev));
    assert!(submitted(&provider.handle(due + 1, Input::Tick)).is_empty());
    // The ledger takes it: every locked token goes back.
    chain.now = due;
    let cs = chain.customer.clone();
    chain.block(vec![(&cs, TxKind::Cancel(id))]);
    assert_eq!(
        chain.ledger.contract(&id).unwrap().status,
        ContractStatus::Cancelled
    );
    assert_eq!(chain.ledger.account(&c).unwrap().locked, 0);
    // A contract its provider armed in time is not called off.
    let mut chain = Chain::new();
    let (id, _) = chain.register(ContractBuilder::new(1, 2).duration(3_600_000).signed());
    let pr = chain.provider.clone();
    let ev = chain.block(vec![
        (&pr, TxKind::MarkMigrated(id)),
        (&pr, TxKind::MarkArmed(id)),
    ]);
    let mut customer = settling_only(&chain, c);
    customer.handle(chain.now, chain.facts(&customer, c, ev));
    let later = chain.ledger.contract(&id).unwrap().registered_at + ARM_TIMEOUT_MS + 1;
    assert!(
        !submitted(&customer.handle(later, Input::Tick)).contains(&TxKind::Cancel(id)),
        "armed: not called off"
    );
}

/// The provider arms a new contract of ours on an image only once our contract ending on it
/// lets go of its instance (the node's arm wait): while that one is armed or active the new
/// one is not called off, and the arm timeout counts from its close (found by the review of
/// the call-off).
#[test]
fn a_call_off_waits_while_another_contract_holds_the_providers_instance() {
    let mut chain = Chain::new();
    let c = chain.customer.node_id();
    let (first, _) = chain.register(ContractBuilder::new(1, 2).duration(3_600_000).signed());
    let pr = chain.provider.clone();
    chain.block(vec![
        (&pr, TxKind::MarkMigrated(first)),
        (&pr, TxKind::MarkArmed(first)),
    ]);
    let (second, ev) = chain.register(
        ContractBuilder::new(1, 2)
            .duration(3_600_000)
            .nonce(2)
            .signed(),
    );
    let registered = chain.ledger.contract(&second).unwrap().registered_at;
    let mut customer = settling_only(&chain, c);
    customer.handle(chain.now, chain.facts(&customer, c, ev));
    customer.handle(chain.now, Input::CaughtUp { height: 1 });
    let late = registered + ARM_TIMEOUT_MS + 1;
    assert!(
        !submitted(&customer.handle(late, Input::Tick)).contains(&TxKind::Cancel(second)),
        "the first still holds the instance"
    );
    // The first ends: the timeout counts from its close.
    chain.now = late;
    let cs = chain.customer.clone();
    let ev = chain.block(vec![(&cs, TxKind::Cancel(first))]);
    let closed = chain.ledger.contract(&first).unwrap().closed_at.unwrap();
    let out = customer.handle(chain.now, chain.facts(&customer, c, ev));
    assert!(!submitted(&out).contains(&TxKind::Cancel(second)));
    assert!(
        out.contains(&Effect::WakeAt(closed + ARM_TIMEOUT_MS)),
        "{out:?}"
    );
    assert_eq!(
        submitted(&customer.handle(closed + ARM_TIMEOUT_MS, Input::Tick)),
        vec![TxKind::Cancel(second)]
    );
}

/// An armed standby of ours waiting for its handover runs nothing on the provider: it does not
/// hold off calling off a hosted contract on the same image that the provider left unarmed
/// (found by the review of the call-off).
#[test]
fn an_armed_standby_does_not_hold_off_a_call_off() {
    let mut chain = Chain::new();
    let c = chain.customer.node_id();
    let (standby, _) = chain.register(Chain::standby().duration(3_600_000).signed());
    let pr = chain.provider.clone();
    chain.block(vec![
        (&pr, TxKind::MarkMigrated(standby)),
        (&pr, TxKind::MarkArmed(standby)),
    ]);
    assert_eq!(
        chain.ledger.contract(&standby).unwrap().status,
        ContractStatus::Armed
    );
    let (hosted, ev) = chain.register(
        ContractBuilder::new(1, 2)
            .duration(3_600_000)
            .nonce(7)
            .signed(),
    );
    let registered = chain.ledger.contract(&hosted).unwrap().registered_at;
    let mut customer = settling_only(&chain, c);
    customer.handle(chain.now, chain.facts(&customer, c, ev));
    customer.handle(chain.now, Input::CaughtUp { height: 1 });
    assert!(
        submitted(&customer.handle(registered + ARM_TIMEOUT_MS, Input::Tick))
            .contains(&TxKind::Cancel(hosted))
    );
}
