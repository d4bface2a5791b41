//! Standby handover flows: the arbitrator quorum, partitions, activation deadlines, pro rata.

use super::Harness;
use super::lifecycle_flows::{for_contract, settle, uptime};
use crate::attestation::Liveness;
use crate::contract::ContractId;
use crate::ledger::{
    ACTIVATION_REPORT_GRACE_MS, BreachReason, LedgerError, LedgerEvent, SettleReason, TxKind,
};
use crate::lifecycle::ContractStatus;
use crate::test_utils::ContractBuilder;
use agora_market::{KeySigner, Signer};

#[test]
fn standby_handover_needs_an_arbitrator_quorum() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).standby(5_000).signed());
    let p = h.provider();
    let customer = h.customer().node_id();
    // The provider alone can never trigger handover.
    let err = h
        .try_apply(
            &p,
            TxKind::Attest {
                subject: customer,
                liveness: Liveness::Unreachable { since: 0 },
            },
        )
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotCommitteeMember { .. }));
    let err = h
        .try_apply(
            &p,
            TxKind::ReportActivation {
                contract: id,
                activated_at: 1_000,
            },
        )
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }));
    h.now = 10_000;
    h.attest(0, Liveness::Unreachable { since: 2_000 });
    let ev = h.attest(1, Liveness::Unreachable { since: 2_000 });
    assert!(
        !ev.iter()
            .any(|e| matches!(e, LedgerEvent::HandoverAttested { .. }))
    );
    let ev = h.attest(2, Liveness::Unreachable { since: 3_000 });
    assert!(ev.iter().any(|e| matches!(
        e,
        LedgerEvent::HandoverAttested { contract, unreachable_since: 3_000, at: 10_000, .. } if *contract == id
    )));
    // A fourth attestation does not attest again.
    let ev = h.attest(3, Liveness::Unreachable { since: 3_000 });
    assert!(
        !ev.iter()
            .any(|e| matches!(e, LedgerEvent::HandoverAttested { .. }))
    );
    h.now = 12_000;
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 11_000,
        },
    );
    assert_eq!(h.status(id), ContractStatus::Active);
}

#[test]
fn only_a_suspected_outage_makes_the_ledger_wait_for_time() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).standby(5_000).signed());
    assert!(
        !h.ledger.awaits_time(),
        "an armed standby alone waits for nothing"
    );
    h.now = 10_000;
    h.attest(0, Liveness::Reachable);
    assert!(
        !h.ledger.awaits_time(),
        "a reachable customer waits for nothing"
    );
    h.attest(1, Liveness::Unreachable { since: 9_000 });
    assert!(
        h.ledger.awaits_time(),
        "one arbitrator suspects an outage: the handover may fire as time passes"
    );
    for a in [0, 2, 3] {
        h.attest(a, Liveness::Unreachable { since: 9_000 });
    }
    h.now = 20_000;
    h.ledger.tick(h.now);
    assert!(h.ledger.contract(&id).unwrap().handover.is_some());
    assert!(h.ledger.awaits_time(), "the activation deadline runs");
    let p = h.provider();
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 20_000,
        },
    );
    assert_eq!(h.status(id), ContractStatus::Active);
    assert!(h.ledger.awaits_time(), "uptime is measured in block time");
}

#[test]
fn a_pending_handover_says_when_a_block_can_decide_it() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).standby(5_000).signed());
    h.now = 10_000;
    h.attest(0, Liveness::Unreachable { since: 9_000 });
    h.attest(1, Liveness::Unreachable { since: 9_100 });
    assert_eq!(h.ledger.handover_due(), None, "2 of 4 decide nothing");
    h.attest(2, Liveness::Unreachable { since: 9_200 });
    assert_eq!(h.ledger.handover_due(), Some(14_200));
    // A block just before is not enough, the one at the due time decides.
    h.now = 14_199;
    h.ledger.tick(h.now);
    assert!(h.ledger.contract(&id).unwrap().handover.is_none());
    h.now = 14_200;
    let ev = h.ledger.tick(h.now);
    assert!(
        ev.iter().any(
            |e| matches!(e, LedgerEvent::HandoverAttested { contract, .. } if *contract == id)
        )
    );
    assert_eq!(h.ledger.handover_due(), None, "decided: nothing pending");
}

#[test]
fn partition_between_customer_and_provider_only_does_not_trigger_handover() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).standby(5_000).signed());
    h.now = 20_000;
    // One arbitrator sees a blip; the others still reach the customer.
    h.attest(0, Liveness::Unreachable { since: 1_000 });
    for a in 1..4 {
        h.attest(a, Liveness::Reachable);
    }
    assert!(h.ledger.contract(&id).unwrap().handover.is_none());
    let p = h.provider();
    let err = h
        .try_apply(
            &p,
            TxKind::ReportActivation {
                contract: id,
                activated_at: 20_000,
            },
        )
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }));
}

/// Arms a standby contract and gets handover attested at t=10_000.
fn handed_over(h: &mut Harness) -> crate::contract::ContractId {
    let id = h.armed(
        ContractBuilder::new(1, 2)
            .standby(5_000)
            .duration(100_000)
            .signed(),
    );
    h.now = 10_000;
    for a in 0..3 {
        h.attest(a, Liveness::Unreachable { since: 2_000 });
    }
    assert!(h.ledger.contract(&id).unwrap().handover.is_some());
    id
}

#[test]
fn customer_back_early_pays_pro_rata() {
    let mut h = Harness::new();
    let id = handed_over(&mut h);
    let (c, p) = (h.customer(), h.provider());
    h.now = 11_000;
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 11_000,
        },
    );
    h.probed_until(id, 41_000, true);
    h.ok(&p, for_contract(uptime(11_000, 41_000), id));
    // The customer cannot cancel its way out once handed over.
    assert!(h.try_apply(&c, TxKind::Cancel(id)).is_err());
    // Registered at 1_000, back at 41_000: 40% of the 100 s coverage window (10 s standing
    // by, 30 s of service the committee confirmed up).
    h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert_eq!(h.status(id), ContractStatus::Settled);
    assert_eq!(h.balance(&p), 10_000 + 400);
    assert_eq!(h.balance(&c), 10_000 - 400);
}

#[test]
fn late_activation_is_a_breach() {
    let mut h = Harness::new();
    let id = handed_over(&mut h);
    let (c, p) = (h.customer(), h.provider());
    h.now = 20_000;
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 19_000,
        },
    );
    h.ok(&p, for_contract(uptime(19_000, 20_000), id));
    let ev = h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert!(ev.iter().any(|e| matches!(
        e,
        LedgerEvent::Slashed {
            reason: BreachReason::LateActivation { delay_ms: 9_000 },
            ..
        }
    )));
}

/// THREATS A10: the trigger's time is its block's, which one proposer may stamp up to the
/// chain's block-time tolerance (2 s) behind the clocks; the honest provider starts when it
/// sees the block. An activation later than the budget (5 s) by less than that lag is not a
/// breach; one later by more still is.
#[test]
fn an_activation_late_by_no_more_than_the_block_time_lag_is_not_a_breach() {
    for (delay, late) in [(6_900, false), (7_000, false), (7_100, true)] {
        let mut h = Harness::new();
        let id = handed_over(&mut h);
        assert_eq!(h.ledger.contract(&id).unwrap().trigger_at, Some(10_000));
        let (c, p) = (h.customer(), h.provider());
        h.now = 10_000 + delay;
        h.ok(
            &p,
            TxKind::ReportActivation {
                contract: id,
                activated_at: h.now,
            },
        );
        h.now += 1_000;
        let from = 10_000 + delay;
        h.ok(&p, for_contract(uptime(from, h.now), id));
        let ev = h.ok(&c, settle(id, SettleReason::CustomerBack));
        let slashed = ev.iter().any(|e| {
            matches!(
                e,
                LedgerEvent::Slashed {
                    reason: BreachReason::LateActivation { .. },
                    ..
                }
            )
        });
        assert_eq!(slashed, late, "delay {delay}: {ev:?}");
        if !late {
            // Judged on the service once the committee's probes are in.
            h.now += 30_000;
            h.ledger.tick(h.now);
            assert_eq!(h.status(id), ContractStatus::Settled, "delay {delay}");
        }
    }
}

/// A slot's trigger is the time its contract names, not a block's time: its budget gets no
/// block-time allowance (THREATS A10's allowance is for triggers a proposer stamps).
#[test]
fn a_slot_activation_past_its_budget_is_a_breach_without_the_block_time_allowance() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).at(5_000).signed());
    let (c, p) = (h.customer(), h.provider());
    // 5 s budget, activated 6 s after the slot (within the 2 s a block trigger would get).
    h.now = 11_000;
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 11_000,
        },
    );
    h.now = 12_000;
    h.ok(&p, for_contract(uptime(11_000, 12_000), id));
    let ev = h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert!(
        ev.iter().any(|e| matches!(
            e,
            LedgerEvent::Slashed {
                reason: BreachReason::LateActivation { delay_ms: 6_000 },
                ..
            }
        )),
        "{ev:?}"
    );
}

/// An honest provider started the service just before the deadline; its report lands after
/// it, when the customer has already asked to settle for `NoActivation`: the report wins
/// while it is within the ledger's grace, and the activation counts as in time (issue #15: in
/// the provisioning bench, customer settlements and activation reports landed seconds apart).
#[test]
fn an_activation_reported_late_is_not_beaten_by_a_no_activation_settlement() {
    let mut h = Harness::new();
    let id = handed_over(&mut h);
    let (c, p) = (h.customer(), h.provider());
    h.now = 17_000;
    let err = h
        .try_apply(&c, settle(id, SettleReason::NoActivation))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }), "{err:?}");
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 14_900,
        },
    );
    assert_eq!(h.status(id), ContractStatus::Active);
    assert_eq!(
        h.ledger.contract(&id).unwrap().activated_at,
        Some(14_900),
        "started before the deadline (15 000): in time"
    );
}

#[test]
fn no_activation_after_deadline_is_slashed() {
    let mut h = Harness::new();
    let id = handed_over(&mut h);
    let c = h.customer();
    h.now = 14_000;
    let err = h
        .try_apply(&c, settle(id, SettleReason::NoActivation))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }));
    // Past the deadline (15 000) but within the grace for the provider's report in flight.
    h.now = 15_001 + ACTIVATION_REPORT_GRACE_MS - 1;
    let err = h
        .try_apply(&c, settle(id, SettleReason::NoActivation))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }));
    h.now = 15_001 + ACTIVATION_REPORT_GRACE_MS;
    h.ok(&c, settle(id, SettleReason::NoActivation));
    assert_eq!(h.status(id), ContractStatus::Slashed);
    assert_eq!(h.balance(&c), 10_000 + 500);
}

#[test]
fn handover_fires_at_block_time_once_the_outage_is_long_enough() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).standby(5_000).signed());
    h.now = 3_000;
    for a in 0..3 {
        h.attest(a, Liveness::Unreachable { since: 2_000 });
    }
    assert!(h.ledger.contract(&id).unwrap().handover.is_none());
    let height = h.ledger.height() + 1;
    let out = h.ledger.apply_block(height, 6_999, &[]).unwrap();
    assert!(out.events.is_empty());
    let out = h.ledger.apply_block(height + 1, 7_000, &[]).unwrap();
    assert!(matches!(
        out.events.as_slice(),
        [LedgerEvent::HandoverAttested { contract, at: 7_000, .. }] if *contract == id
    ));
    let out = h.ledger.apply_block(height + 2, 8_000, &[]).unwrap();
    assert!(out.events.is_empty());
}

/// THREATS C18: attestations recorded before a contract's registration speak of a time before
/// it (its committee may have stopped watching the customer since, without attesting it back):
/// they do not hand the new standby over, even within the attestation window; ones recorded
/// after its registration do.
#[test]
fn attestations_older_than_a_standby_do_not_hand_it_over() {
    let mut h = Harness::new();
    let first = h.armed(
        ContractBuilder::new(1, 2)
            .standby(60_000)
            .duration(100_000)
            .signed(),
    );
    // The committee sees the customer down at 5 s; its first standby's threshold is long.
    h.now = 5_000;
    for a in 0..3 {
        h.attest(a, Liveness::Unreachable { since: 4_000 });
    }
    // A second standby registered and armed at 10 s with a 1 s threshold: the old quorum would
    // decide at once.
    h.now = 10_000;
    let second = h.armed(
        ContractBuilder::new(1, 2)
            .standby(1_000)
            .duration(100_000)
            .nonce(2)
            .signed(),
    );
    assert_ne!(first, second);
    h.now = 12_000;
    let ev = h.ledger.tick(h.now);
    assert!(
        !ev.iter()
            .any(|e| matches!(e, LedgerEvent::HandoverAttested { .. })),
        "{ev:?}"
    );
    assert!(h.ledger.contract(&second).unwrap().handover.is_none());
    // Only the first contract's handover is due (its 60 s threshold), not the second's.
    assert_eq!(h.ledger.handover_due(), Some(64_000));
    // Attested again after its registration: handed over.
    let mut attested = false;
    for a in 0..3 {
        attested |= h
            .attest(a, Liveness::Unreachable { since: 4_000 })
            .iter()
            .any(|e| matches!(e, LedgerEvent::HandoverAttested { contract, .. } if *contract == second));
    }
    assert!(attested);
}

#[test]
fn non_committee_attestations_are_rejected() {
    let mut h = Harness::new();
    let outsider = h.accounts[2].clone();
    let subject = h.customer().node_id();
    let err = h
        .try_apply(
            &outsider,
            TxKind::Attest {
                subject,
                liveness: Liveness::Reachable,
            },
        )
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotCommitteeMember { .. }));
}

#[test]
fn customer_back_between_heartbeats_is_not_a_breach() {
    let (mut h, id) = standby_activated_at_5s();
    let (c, p) = (h.customer(), h.provider());
    h.probed_until(id, 8_000, true);
    h.ok(&p, for_contract(uptime(5_000, 8_000), id));
    // Back 0.9 s after the last heartbeat (interval 1 s): the unreported tail is not held
    // against the provider. The probe interval 7_000..9_000 is still open: the settlement
    // waits for it.
    h.now = 8_900;
    let ev = h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert!(
        ev.iter()
            .any(|e| matches!(e, LedgerEvent::SettlementPending { end: 8_900, .. }))
    );
    h.now = 9_000;
    let ev = h.probe(id, 1, true, 0..3);
    assert!(ev.iter().any(|e| matches!(e, LedgerEvent::Paid { .. })));
    assert_eq!(h.status(id), ContractStatus::Settled);
    // The tail the committee confirmed up is paid too (THREATS C17): standing by 1–5 s,
    // serving 5–8.9 s, of the 60 s window.
    let rec = h.ledger.contract(&id).unwrap();
    assert_eq!(rec.paid_to_provider, rec.contract.payment * 7_900 / 60_000);
}

/// THREATS C17: a customer settling just after a probe round was decided, before its
/// provider's next heartbeat batch lands, pays for the service since the last batch that the
/// committee confirmed up (up to one heartbeat interval and the clock skew); a tail longer
/// than that, or one after which the committee confirmed a round down, is not paid.
#[test]
fn a_customer_back_between_batches_pays_the_confirmed_tail() {
    for (last_batch_end, confirmed_up, paid_ms) in [
        // Last batch 5–7 s, back at 9 s, rounds 0–1 (5–9 s) up: 2 s reported + 2 s of tail.
        (7_000, true, 4_000 + 4_000),
        // Last batch 5–6 s: 1 s reported, the tail capped at 1 s + 2 s of skew.
        (6_000, true, 4_000 + 4_000),
        // Round 1 (7–9 s) confirmed down: only the confirmed round 0 (2 s) is paid.
        (7_000, false, 4_000 + 2_000),
    ] {
        let (mut h, id) = standby_activated_at_5s();
        let (c, p) = (h.customer(), h.provider());
        h.now = last_batch_end;
        h.ok(&p, for_contract(uptime(5_000, last_batch_end), id));
        h.now = 7_000;
        h.probe(id, 0, true, 0..3);
        h.now = 9_000;
        h.probe(id, 1, confirmed_up, 0..3);
        let ev = h.ok(&c, settle(id, SettleReason::CustomerBack));
        assert!(
            ev.iter().any(|e| matches!(e, LedgerEvent::Paid { .. })),
            "judged at once, the rounds are in: {ev:?}"
        );
        let rec = h.ledger.contract(&id).unwrap();
        assert_eq!(
            rec.paid_to_provider,
            rec.contract.payment * paid_ms / 60_000,
            "last batch to {last_batch_end}, round 1 up {confirmed_up}"
        );
    }
    // A gap the provider admitted (6–6.5 s) inside round 0, which the committee confirmed up,
    // makes no room for a tail in round 1, confirmed down: 1.5 s of service paid, not 2 s.
    let (mut h, id) = standby_activated_at_5s();
    let (c, p) = (h.customer(), h.provider());
    h.now = 6_000;
    h.ok(&p, for_contract(uptime(5_000, 6_000), id));
    h.now = 7_000;
    h.ok(&p, for_contract(uptime(6_500, 7_000), id));
    h.probe(id, 0, true, 0..3);
    h.now = 9_000;
    h.probe(id, 1, false, 0..3);
    h.ok(&c, settle(id, SettleReason::CustomerBack));
    let rec = h.ledger.contract(&id).unwrap();
    assert_eq!(rec.status, ContractStatus::Settled);
    assert_eq!(rec.last_down_end, Some(9_000));
    assert_eq!(rec.paid_to_provider, rec.contract.payment * 5_500 / 60_000);
}

/// A standby contract handed over (a quorum attested its customer unreachable since 1 s) and
/// activated by its provider at 5 s.
fn standby_activated_at_5s() -> (Harness, ContractId) {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).standby(1_000).signed());
    let p = h.provider();
    h.now = 5_000;
    for a in 0..3 {
        h.attest(a, Liveness::Unreachable { since: 1_000 });
    }
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 5_000,
        },
    );
    (h, id)
}

/// [`standby_activated_at_5s`], whose provider then reported 5–6 s of uptime (at 6 s).
/// Returns the harness, the contract and the customer.
fn standby_reported_5_to_6s() -> (Harness, ContractId, KeySigner) {
    let (mut h, id) = standby_activated_at_5s();
    let p = h.provider();
    h.now = 6_000;
    h.ok(&p, for_contract(uptime(5_000, 6_000), id));
    let c = h.customer();
    (h, id, c)
}

#[test]
fn a_provider_silent_since_its_last_heartbeat_is_not_paid_for_the_silence_nor_slashed_without_the_committee()
 {
    let (mut h, id, c) = standby_reported_5_to_6s();
    let p = h.provider();
    let before = h.balance(&p);
    // Its heartbeats may be stuck behind a backlog: the silence is no evidence by itself.
    h.now = 11_000;
    let ev = h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert!(
        ev.iter()
            .any(|e| matches!(e, LedgerEvent::SettlementPending { end: 11_000, .. }))
    );
    assert!(
        h.try_apply(&c, settle(id, SettleReason::CustomerBack))
            .is_err(),
        "one pending settlement at a time"
    );
    // No probe report arrives: judged when the grace period ends, on what was confirmed.
    h.now = 40_000;
    let ev = h.ledger.tick(h.now);
    assert!(
        !ev.iter().any(|e| matches!(e, LedgerEvent::Slashed { .. })),
        "{ev:?}"
    );
    assert_eq!(h.status(id), ContractStatus::Settled);
    // Paid for standing by (1–5 s of the 60 s window); nothing for the service after
    // activation, which no quorum confirmed up.
    let rec = h.ledger.contract(&id).unwrap();
    assert_eq!(rec.confirmed_up_ms, 0);
    assert_eq!(rec.paid_to_provider, rec.contract.payment * 4_000 / 60_000);
    // Its stake comes back with the payment.
    assert_eq!(
        h.balance(&p),
        before + rec.contract.stakes.provider_stake + rec.paid_to_provider
    );
    assert_eq!(h.ledger.account(&p.node_id()).unwrap().locked, 0);
}

#[test]
fn a_silent_provider_the_committee_confirms_down_is_slashed() {
    let (mut h, id, c) = standby_reported_5_to_6s();
    // A quorum confirms round 0 (5–7 s) up and rounds 1–3 (7–13 s) down.
    h.now = 7_000;
    h.probe(id, 0, true, 0..3);
    h.now = 9_000;
    h.probe(id, 1, false, 0..3);
    h.now = 11_000;
    h.probe(id, 2, false, 0..3);
    h.now = 13_000;
    let ev = h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert!(
        ev.iter()
            .any(|e| matches!(e, LedgerEvent::SettlementPending { end: 13_000, .. }))
    );
    h.now = 13_500;
    let ev = h.probe(id, 3, false, 0..3);
    // 6 s confirmed down: more than the 10 % the whole term from activation (5–61 s) allows,
    // so the breach is certain however the rest of the term would have gone (THREATS C12):
    // (2 s up + 48 s not served) of 56 s.
    assert!(
        ev.iter().any(|e| matches!(
            e,
            LedgerEvent::Slashed {
                reason: BreachReason::ConfirmedDowntime { permille: 892 },
                ..
            }
        )),
        "{ev:?}"
    );
    assert_eq!(h.status(id), ContractStatus::Slashed);
}

/// THREATS C12: a customer comes back right after one brief outage of its standby provider
/// (one 2 s round confirmed down, half of the service so far): judged against the whole term
/// from activation, the provider would still pass, so it is not slashed; the round down is
/// not paid.
#[test]
fn a_customer_back_right_after_one_outage_does_not_get_its_provider_slashed() {
    let (mut h, id, c) = standby_reported_5_to_6s();
    let p = h.provider();
    let before = h.balance(&p);
    h.now = 7_000;
    h.probe(id, 0, true, 0..3);
    h.ok(&p, for_contract(uptime(6_000, 7_000), id));
    h.now = 9_000;
    h.probe(id, 1, false, 0..3);
    let ev = h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert!(
        !ev.iter().any(|e| matches!(e, LedgerEvent::Slashed { .. })),
        "{ev:?}"
    );
    assert_eq!(h.status(id), ContractStatus::Settled);
    let rec = h.ledger.contract(&id).unwrap();
    assert_eq!(rec.confirmed_up_ms, 2_000);
    // Standing by 1–5 s and the 2 s confirmed up, of the 60 s window.
    assert_eq!(rec.paid_to_provider, rec.contract.payment * 6_000 / 60_000);
    assert_eq!(
        h.balance(&p),
        before + rec.contract.stakes.provider_stake + rec.paid_to_provider
    );
}

#[test]
fn pending_settlement_is_judged_when_the_in_flight_heartbeat_arrives() {
    let (mut h, id, c) = standby_reported_5_to_6s();
    let p = h.provider();
    // The customer is back at 9 s; blocks were slow and the provider's heartbeat for 6–9.5 s
    // lands only afterwards. It counts up to the settlement's end and settles the contract.
    h.now = 9_000;
    h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert_eq!(h.status(id), ContractStatus::Active);
    assert!(
        h.ledger.awaits_time(),
        "a settlement in its grace period is judged by time at the latest"
    );
    h.now = 9_600;
    let ev = h.ok(&p, for_contract(uptime(6_000, 9_500), id));
    // Still waiting for the committee's probe reports on the service up to 9 s.
    assert!(!ev.iter().any(|e| matches!(e, LedgerEvent::Paid { .. })));
    h.now = 9_700;
    h.probe(id, 0, true, 0..3);
    let ev = h.probe(id, 1, true, 0..3);
    assert!(ev.iter().any(|e| matches!(e, LedgerEvent::Paid { .. })));
    assert_eq!(h.status(id), ContractStatus::Settled);
    let rec = h.ledger.contract(&id).unwrap();
    assert_eq!(rec.uptime_ms, 4_000);
    assert_eq!(rec.closing, None);
    assert!(!h.ledger.awaits_time());
}

/// THREATS C11: no handover is attested when the provider could not start the service before
/// the coverage window ends (the host refuses it and the standby would be settled
/// `NoActivation`); the window runs out and is paid as usual.
#[test]
fn no_handover_is_attested_too_close_to_the_end_of_the_window() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).standby(5_000).signed());
    // Registered at 1 s for 60 s: the window ends at 61 s; activation takes up to 5 s.
    h.now = 56_000;
    for a in 0..4 {
        let ev = h.attest(a, Liveness::Unreachable { since: 40_000 });
        assert!(
            !ev.iter()
                .any(|e| matches!(e, LedgerEvent::HandoverAttested { .. })),
            "attested at {}",
            h.now
        );
    }
    h.now = 61_000;
    let p = h.provider();
    h.ok(&p, settle(id, SettleReason::DurationEnded));
    assert!(matches!(
        h.status(id),
        ContractStatus::Completed | ContractStatus::Settled
    ));
    // A little earlier the same attestations hand over.
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).standby(5_000).signed());
    h.now = 55_000;
    let mut attested = false;
    for a in 0..4 {
        let ev = h.attest(a, Liveness::Unreachable { since: 40_000 });
        attested |= ev.iter().any(
            |e| matches!(e, LedgerEvent::HandoverAttested { contract, .. } if *contract == id),
        );
    }
    assert!(attested);
}
