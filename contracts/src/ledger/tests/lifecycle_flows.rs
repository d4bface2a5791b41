//! End-to-end contract flows on the ledger: hosted, standby handover, breach, storage, refunds.

use agora_market::Signer;

use super::Harness;
use crate::ledger::{
    BreachReason, HeartbeatBatch, LedgerError, LedgerEvent, SettleReason, TxKind, UptimeInterval,
};
use crate::lifecycle::ContractStatus;
use crate::test_utils::{ContractBuilder, test_cid};

pub(super) fn uptime(from: u64, to: u64) -> TxKind {
    TxKind::Heartbeats {
        contract: crate::contract::ContractId([0; 32]),
        batch: HeartbeatBatch {
            intervals: vec![UptimeInterval { from, to }],
            readings_processed: 10,
            data_proofs: vec![test_cid(&from.to_le_bytes())],
        },
    }
}

pub(super) fn for_contract(kind: TxKind, id: crate::contract::ContractId) -> TxKind {
    match kind {
        TxKind::Heartbeats { batch, .. } => TxKind::Heartbeats {
            contract: id,
            batch,
        },
        other => other,
    }
}

pub(super) fn settle(id: crate::contract::ContractId, reason: SettleReason) -> TxKind {
    TxKind::Settle {
        contract: id,
        reason,
    }
}

#[test]
fn hosted_contract_paid_for_uptime_then_settled_once() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).signed());
    let (c, p) = (h.customer(), h.provider());
    h.now = 2_000;
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 1_500,
        },
    );
    // Without the committee's confirmation the provider's own claim earns nothing.
    h.now = 3_000;
    h.ok(&p, for_contract(uptime(1_500, 3_000), id));
    assert!(h.try_apply(&p, TxKind::SettleUptime(id)).is_err());
    h.probed_until(id, 31_500, true);
    h.ok(&p, for_contract(uptime(3_000, 31_500), id));
    // Half the duration verified: periodic collection pays half.
    let ev = h.ok(&p, TxKind::SettleUptime(id));
    assert!(ev.contains(&LedgerEvent::Paid {
        contract: id,
        to: p.node_id(),
        amount: 500
    }));
    assert!(h.try_apply(&p, TxKind::SettleUptime(id)).is_err());
    h.probed_until(id, 61_500, true);
    h.ok(&p, for_contract(uptime(31_500, 61_500), id));
    let err = h
        .try_apply(&c, settle(id, SettleReason::NoActivation))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }));
    h.ok(&p, settle(id, SettleReason::DurationEnded));
    assert_eq!(h.status(id), ContractStatus::Settled);
    assert_eq!(h.balance(&p), 10_000 + 1_000);
    assert_eq!(h.balance(&c), 10_000 - 1_000);
    assert_eq!(h.ledger.account(&p.node_id()).unwrap().reputation, 10);
    let err = h
        .try_apply(&c, settle(id, SettleReason::DurationEnded))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }));
}

#[test]
fn hosted_contract_with_low_uptime_is_slashed() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).signed());
    let (c, p) = (h.customer(), h.provider());
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 1_000,
        },
    );
    h.now = 61_000;
    // Up for 30 s, then down (no interval reported) until the last second, reported: the
    // provider's own heartbeats admit 29 s of downtime.
    h.ok(&p, for_contract(uptime(1_000, 31_000), id));
    h.ok(&p, for_contract(uptime(60_000, 61_000), id));
    let ev = h.ok(&c, settle(id, SettleReason::DurationEnded));
    // The shortfall could be heartbeats (or probe reports) in flight: judged once the grace
    // period (one probe interval plus the report grace) passes.
    assert!(
        ev.iter()
            .any(|e| matches!(e, LedgerEvent::SettlementPending { until: 73_000, .. }))
    );
    assert_eq!(h.status(id), ContractStatus::Active);
    h.now = 72_999;
    assert!(h.ledger.tick(h.now).is_empty());
    h.now = 73_000;
    let ev = h.ledger.tick(h.now);
    // 31 s reported up over the 60 s its reports speak for.
    assert!(ev.iter().any(|e| matches!(
        e,
        LedgerEvent::Slashed {
            amount: 500,
            reason: BreachReason::InsufficientUptime { permille: 516 },
            ..
        }
    )));
    assert_eq!(h.status(id), ContractStatus::Slashed);
    // Customer gets payment and stake back plus the provider's stake.
    assert_eq!(h.balance(&c), 10_000 + 500);
    assert_eq!(h.balance(&p), 10_000 - 500);
    assert_eq!(h.ledger.account(&p.node_id()).unwrap().reputation, -50);
}

#[test]
fn untriggered_standby_is_paid_when_its_window_ends() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).standby(5_000).signed());
    let p = h.provider();
    h.now = 60_999;
    assert!(
        h.try_apply(&p, settle(id, SettleReason::DurationEnded))
            .is_err()
    );
    h.now = 61_000;
    let ev = h.ok(&p, settle(id, SettleReason::DurationEnded));
    assert!(ev.contains(&LedgerEvent::StatusChanged {
        contract: id,
        from: ContractStatus::Armed,
        to: ContractStatus::Completed
    }));
    assert_eq!(h.balance(&p), 10_000 + 1_000);
}

/// THREATS P5: a standby provider that neither migrates nor arms while the window runs, then
/// arms and settles `DurationEnded` at its end, was paid the whole window. Coverage is paid
/// from arming; arming after the window's end is refused; one armed halfway is paid half.
#[test]
fn a_standby_armed_only_at_its_end_is_not_paid_for_the_window() {
    let mut h = Harness::new();
    let p = h.provider();
    let id = h.register(ContractBuilder::new(1, 2).standby(5_000).signed());
    h.ok(&p, TxKind::MarkMigrated(id));
    h.now = 61_000;
    assert!(matches!(
        h.try_apply(&p, TxKind::MarkArmed(id)),
        Err(LedgerError::NotNow { .. })
    ));
    assert!(
        h.try_apply(&p, settle(id, SettleReason::DurationEnded))
            .is_err()
    );
    assert_eq!(h.status(id), ContractStatus::Migrated);
    assert!(
        h.balance(&p) < 10_000,
        "its stake stays locked, nothing paid"
    );

    // Armed halfway through its 60 s window: paid for the half it stood by.
    let mut h = Harness::new();
    let p = h.provider();
    let id = h.register(ContractBuilder::new(1, 2).standby(5_000).signed());
    h.ok(&p, TxKind::MarkMigrated(id));
    h.now = 31_000;
    h.ok(&p, TxKind::MarkArmed(id));
    h.now = 61_000;
    h.ok(&p, settle(id, SettleReason::DurationEnded));
    assert_eq!(h.status(id), ContractStatus::Settled);
    let payment = h.ledger.contract(&id).unwrap().contract.payment;
    assert_eq!(h.balance(&p), 10_000 + payment / 2);
}

#[test]
fn cancel_and_expire_return_funds() {
    let mut h = Harness::new();
    let (c, p) = (h.customer(), h.provider());
    let id = h.armed(ContractBuilder::new(1, 2).standby(5_000).signed());
    // Neither party calls an armed standby off: the provider committed to stand by, and the
    // customer has been covered since it was armed (THREATS C9).
    for who in [&p, &c] {
        assert!(matches!(
            h.try_apply(who, TxKind::Cancel(id)),
            Err(LedgerError::NotAllowed { .. })
        ));
    }
    // Before it is armed the customer may.
    let id = h.register(ContractBuilder::new(1, 2).standby(5_000).nonce(3).signed());
    h.ok(&c, TxKind::Cancel(id));
    assert_eq!(h.status(id), ContractStatus::Cancelled);

    let id = h.register(ContractBuilder::new(1, 2).nonce(7).signed());
    let err = h.try_apply(&c, TxKind::Expire(id)).unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }));
    h.now = 1_000 + 60_000 + 60_000;
    h.ok(&c, TxKind::Expire(id));
    assert_eq!(h.status(id), ContractStatus::Expired);
    // Everything returned but the armed standby's escrow (payment 1,000 and stake 100 of the
    // customer, stake 500 of the provider), which its window settles.
    assert_eq!((h.balance(&c), h.balance(&p)), (8_900, 9_500));
}

#[test]
fn fixed_time_activation_waits_for_its_time() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).at(5_000).signed());
    let p = h.provider();
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
    h.now = 6_000;
    let err = h
        .try_apply(
            &p,
            TxKind::ReportActivation {
                contract: id,
                activated_at: 4_000,
            },
        )
        .unwrap_err();
    assert!(matches!(err, LedgerError::InvalidEvidence { .. }));
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 5_500,
        },
    );
}

#[test]
fn heartbeats_count_time_once_and_not_from_the_future() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).signed());
    let p = h.provider();
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 1_000,
        },
    );
    h.now = 10_000;
    assert!(
        h.try_apply(&p, for_contract(uptime(1_000, 13_000), id))
            .is_err()
    );
    assert!(
        h.try_apply(&p, for_contract(uptime(6_000, 5_000), id))
            .is_err()
    );
    h.ok(&p, for_contract(uptime(1_000, 5_000), id));
    // Overlapping what the ledger holds: only the new part counts.
    h.ok(&p, for_contract(uptime(4_000, 6_000), id));
    h.ok(&p, for_contract(uptime(2_000, 3_000), id));
    let c = h.customer();
    assert!(
        h.try_apply(&c, for_contract(uptime(6_000, 7_000), id))
            .is_err()
    );
    assert_eq!(h.ledger.contract(&id).unwrap().uptime_ms, 5_000);
    assert_eq!(h.ledger.contract(&id).unwrap().last_uptime_end, Some(6_000));
    // Ending slightly after the block time (clock skew): counted up to the block time only.
    h.ok(&p, for_contract(uptime(6_000, 10_400), id));
    let rec = h.ledger.contract(&id).unwrap();
    assert_eq!(rec.uptime_ms, 9_000);
    assert_eq!(rec.last_uptime_end, Some(10_000));
}

/// THREATS A6: blocks stamped behind the provider's clock clip each batch to the block's
/// time. A provider that starts its next batch where the ledger's cursor stands (not at its
/// own clock's end of the last batch) loses nothing: after 20 batches, each ending 1.9 s after
/// its block's time, its uptime covers the whole span it spoke for, so it is judged fully up.
#[test]
fn a_proposer_stamping_blocks_behind_the_clock_costs_the_provider_no_uptime() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).signed());
    let p = h.provider();
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 1_000,
        },
    );
    for i in 1..=20u64 {
        let provider_clock = 1_000 + i * 5_000;
        h.now = provider_clock - 1_900;
        let from = h
            .ledger
            .contract(&id)
            .unwrap()
            .last_uptime_end
            .unwrap_or(1_000);
        h.ok(&p, for_contract(uptime(from, provider_clock), id));
    }
    let rec = h.ledger.contract(&id).unwrap();
    let end = rec.last_uptime_end.unwrap();
    assert_eq!(rec.uptime_ms, end - 1_000, "no gap between clipped batches");
    assert_eq!(crate::ledger::settle::breach_of(rec, end, 2_000), None);
    // Batches in flight together (both sent from the same cursor) count each moment once.
    let from = end;
    h.now = end + 5_000;
    h.ok(&p, for_contract(uptime(from, end + 3_000), id));
    h.ok(&p, for_contract(uptime(from, end + 5_000), id));
    assert_eq!(
        h.ledger.contract(&id).unwrap().uptime_ms,
        end + 5_000 - 1_000
    );
}

#[test]
fn storage_contract_judged_by_quorum_challenge_rounds() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).storage().signed());
    let (c, p) = (h.customer(), h.provider());
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 1_000,
        },
    );
    let report = |round: u64, passed: bool| TxKind::StorageProofResult {
        contract: id,
        round,
        challenge: test_cid(b"block"),
        passed,
    };
    let outsider = h.accounts[2].clone();
    let err = h.try_apply(&outsider, report(0, true)).unwrap_err();
    assert!(matches!(err, LedgerError::NotAllowed { .. }));
    // The customer would profit from false failures, so it cannot report them.
    let err = h.try_apply(&c, report(0, false)).unwrap_err();
    assert!(matches!(err, LedgerError::NotAllowed { .. }));
    // Round 0 (1_000..3_000): three of four arbitrators agree it passed.
    h.now = 3_000;
    for a in 0..3 {
        let arb = h.committee[a].clone();
        h.ok(&arb, report(0, true));
    }
    // Round 1 (3_000..5_000): three agree it failed; the fourth's dissent changes nothing.
    h.now = 5_000;
    let arb = h.committee[3].clone();
    h.ok(&arb, report(1, true));
    let mut events = Vec::new();
    for a in 0..3 {
        let arb = h.committee[a].clone();
        events.extend(h.ok(&arb, report(1, false)));
    }
    assert!(events.contains(&LedgerEvent::StorageProofRecorded {
        contract: id,
        round: 1,
        passed: false
    }));
    let rec = h.ledger.contract(&id).unwrap();
    assert_eq!((rec.storage_passed, rec.storage_failed), (1, 1));
    // Rounds 2 to 4 fail too: four of the term's 30 rounds, more than its 10 % allowance.
    for round in 2..=4 {
        h.now = 3_000 + round * 2_000;
        for a in 0..3 {
            let arb = h.committee[a].clone();
            h.ok(&arb, report(round, false));
        }
    }
    h.now = 61_000;
    let ev = h.ok(&c, settle(id, SettleReason::DurationEnded));
    assert!(ev.iter().any(|e| matches!(
        e,
        LedgerEvent::Slashed {
            reason: BreachReason::FailedStorageProofs { permille: 866 },
            ..
        }
    )));
}

/// THREATS C12 and A7: a storage contract is judged against every round of its term, and a
/// round no quorum decided counts as not failed. Three failed rounds (the term's whole 10 %
/// allowance of 30): the customer settling one moment into the next round, or one member
/// withholding every "passed" while another misses some rounds, does not get the provider
/// slashed; a fourth confirmed failure does.
#[test]
fn storage_rounds_no_quorum_decided_count_as_not_failed() {
    // (failed rounds, settle at, reason, slashed)
    let cases = [
        (3u64, 7_001, SettleReason::CustomerBack, false),
        (3, 61_000, SettleReason::DurationEnded, false),
        (4, 61_000, SettleReason::DurationEnded, true),
    ];
    for (failing, at, reason, slashed) in cases {
        let mut h = Harness::new();
        let id = h.armed(ContractBuilder::new(1, 2).storage().signed());
        let (c, p) = (h.customer(), h.provider());
        h.ok(
            &p,
            TxKind::ReportActivation {
                contract: id,
                activated_at: 1_000,
            },
        );
        let rounds = if at > 60_000 { 30 } else { failing };
        for round in 0..rounds {
            h.now = 3_000 + round * 2_000;
            let failed = round < failing;
            // Member 3 withholds every "passed" (and a failed round is decided without it);
            // member 2 misses every third round, which no quorum then decides.
            for a in 0..3 {
                if a == 2 && round % 3 == 0 && !failed {
                    continue;
                }
                let arb = h.committee[a].clone();
                h.ok(
                    &arb,
                    TxKind::StorageProofResult {
                        contract: id,
                        round,
                        challenge: test_cid(b"block"),
                        passed: !failed,
                    },
                );
            }
        }
        h.now = at;
        let ev = h.ok(&c, settle(id, reason));
        let was_slashed = ev.iter().any(|e| matches!(e, LedgerEvent::Slashed { .. }));
        assert_eq!(
            was_slashed, slashed,
            "{failing} failed, settled at {at}: {ev:?}"
        );
        let rec = h.ledger.contract(&id).unwrap();
        assert_eq!(rec.storage_failed, failing);
    }
}

/// THREATS C12: a storage contract the customer ends early is judged against its whole term
/// (30 rounds of 2 s in a 60 s window): one failed round among the first two does not let the
/// customer take the stake; four failed rounds (more than the term's 10 % allowance) do, early
/// or not.
#[test]
fn an_early_end_judges_storage_rounds_against_the_whole_term() {
    for (failing_rounds, slashed) in [(1u64, false), (4, true)] {
        let mut h = Harness::new();
        let id = h.armed(ContractBuilder::new(1, 2).storage().signed());
        let (c, p) = (h.customer(), h.provider());
        h.ok(
            &p,
            TxKind::ReportActivation {
                contract: id,
                activated_at: 1_000,
            },
        );
        for round in 0..=failing_rounds {
            h.now = 3_000 + round * 2_000;
            for a in 0..3 {
                let arb = h.committee[a].clone();
                h.ok(
                    &arb,
                    TxKind::StorageProofResult {
                        contract: id,
                        round,
                        challenge: test_cid(b"block"),
                        passed: round == 0,
                    },
                );
            }
        }
        let ev = h.ok(&c, settle(id, SettleReason::CustomerBack));
        let was_slashed = ev.iter().any(|e| matches!(e, LedgerEvent::Slashed { .. }));
        assert_eq!(was_slashed, slashed, "{failing_rounds} failed: {ev:?}");
        let expected = if slashed {
            ContractStatus::Slashed
        } else {
            ContractStatus::Settled
        };
        assert_eq!(h.status(id), expected);
    }
}

#[test]
fn uptime_contradicted_by_an_arbitrator_quorum_does_not_count() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).signed());
    let p = h.provider();
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 1_000,
        },
    );
    h.now = 20_000;
    for a in 0..3 {
        let arb = h.committee[a].clone();
        let liveness = crate::attestation::Liveness::Unreachable { since: 10_000 };
        h.ok(
            &arb,
            TxKind::Attest {
                subject: p.node_id(),
                liveness,
            },
        );
    }
    h.ok(&p, for_contract(uptime(1_000, 20_000), id));
    assert_eq!(h.ledger.contract(&id).unwrap().uptime_ms, 9_000);
    // Arbitrators see it back: later uptime counts again.
    for a in 0..3 {
        let arb = h.committee[a].clone();
        let liveness = crate::attestation::Liveness::Reachable;
        h.ok(
            &arb,
            TxKind::Attest {
                subject: p.node_id(),
                liveness,
            },
        );
    }
    h.now = 25_000;
    h.ok(&p, for_contract(uptime(20_000, 25_000), id));
    assert_eq!(h.ledger.contract(&id).unwrap().uptime_ms, 14_000);
}

#[test]
fn backdated_activation_reports_are_clamped() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).signed());
    let (c, p) = (h.customer(), h.provider());
    // Triggered at 1_000 (armed); reported at 30_000 claiming 2_000: clamped to 20_000.
    h.now = 30_000;
    let ev = h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 2_000,
        },
    );
    assert!(ev.contains(&LedgerEvent::Activated {
        contract: id,
        at: 20_000,
        delay_ms: 19_000
    }));
    let ev = h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert!(ev.iter().any(|e| matches!(
        e,
        LedgerEvent::Slashed {
            reason: BreachReason::LateActivation { .. },
            ..
        }
    )));
}

/// THREATS C8: a pre-contracted slot's contract held back by its customer until the slot's
/// activation deadline passed is refused at registration (it would be settled `NoActivation`
/// in the next block); one that leaves the provider `MIN_SLOT_LEAD_MS` is registered.
#[test]
fn a_slot_contract_registered_too_late_is_refused() {
    let mut h = Harness::new();
    h.now = 10_000;
    let c = h.customer();
    // Slot at 5 s, activation within 5 s: due at 10 s, now.
    let late = ContractBuilder::new(1, 2).at(5_000).signed();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(late)))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }), "{err}");
    assert!(err.to_string().contains("registered too late"), "{err}");
    let just = ContractBuilder::new(1, 2)
        .at(10_000 + crate::ledger::MIN_SLOT_LEAD_MS - 5_000)
        .nonce(1)
        .signed();
    let id = h.register(just);
    assert_eq!(h.status(id), ContractStatus::Validated);
}

/// THREATS C8, any contract: one registered more than `MAX_REGISTER_AGE_MS` after its signing
/// is refused, so a customer cannot hold a countersigned contract back and bind the provider's
/// stake at old terms long after.
#[test]
fn a_contract_held_back_long_after_its_signing_is_refused() {
    let mut h = Harness::new();
    let max = crate::ledger::MAX_REGISTER_AGE_MS;
    h.now = 5 * max;
    let c = h.customer();
    let stale = ContractBuilder::new(1, 2).created(h.now - max - 1).signed();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(stale)))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }), "{err}");
    assert!(err.to_string().contains("registered too late"), "{err}");
    let fresh = ContractBuilder::new(1, 2)
        .created(h.now - max)
        .nonce(1)
        .signed();
    let id = h.register(fresh);
    assert_eq!(h.status(id), ContractStatus::Validated);
}

/// THREATS C10: the block's time may trail the provider's clock; an activation report up to
/// `MAX_CLOCK_SKEW_MS` ahead of it counts at the block's time, one further ahead is refused.
#[test]
fn an_activation_report_a_little_ahead_of_the_block_counts_at_the_blocks_time() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).signed());
    let p = h.provider();
    h.now = 2_000;
    let skew = crate::ledger::MAX_CLOCK_SKEW_MS;
    let err = h
        .try_apply(
            &p,
            TxKind::ReportActivation {
                contract: id,
                activated_at: h.now + skew + 1,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("clock skew"), "{err}");
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: h.now + skew,
        },
    );
    assert_eq!(h.status(id), ContractStatus::Active);
    assert_eq!(h.ledger.contract(&id).unwrap().activated_at, Some(2_000));
}

/// THREATS C22: the provider holds the customer's signed proposal; registering it itself (then
/// arming a standby in the same block) would lock the customer in with no call-off.
#[test]
fn only_the_customer_registers_its_contract() {
    let mut h = Harness::new();
    let signed = ContractBuilder::new(1, 2).standby(5_000).signed();
    let (c, p) = (h.customer(), h.provider());
    let err = h
        .try_apply(&p, TxKind::RegisterContract(Box::new(signed.clone())))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotAllowed { .. }), "{err}");
    assert_eq!(h.balance(&c), 10_000, "nothing locked");
    let id = h.register(signed);
    assert_eq!(h.status(id), ContractStatus::Validated);
}

/// THREATS P6: a contract settled before any service (activated and settled at once, a span of
/// zero) pays nothing and earns its provider no reputation, so self-dealing farms none.
#[test]
fn a_contract_settled_before_any_service_earns_no_reputation() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).signed());
    let (c, p) = (h.customer(), h.provider());
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: h.now,
        },
    );
    h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert_eq!(h.status(id), ContractStatus::Settled);
    assert_eq!(h.balance(&p), 10_000, "paid nothing");
    assert_eq!(h.ledger.account(&p.node_id()).unwrap().reputation, 0);
}
