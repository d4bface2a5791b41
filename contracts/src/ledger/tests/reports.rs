//! The committee's per-round reports (#13.7, #13.10): probes and storage audits count by
//! quorum only.

use agora_market::Signer;

use super::Harness;
use super::lifecycle_flows::{for_contract, settle, uptime};
use crate::contract::ContractId;
use crate::ledger::{BreachReason, LedgerError, LedgerEvent, SettleReason, TxKind};
use crate::lifecycle::ContractStatus;
use crate::test_utils::{ContractBuilder, test_cid};

/// A hosted contract (60 s, heartbeats every 1 s so 2 s probe intervals) active from 1_000.
fn active_hosted(h: &mut Harness) -> ContractId {
    let id = h.armed(ContractBuilder::new(1, 2).signed());
    let p = h.provider();
    h.ok(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 1_000,
        },
    );
    id
}

fn probe(id: ContractId, interval: u64, up: bool) -> TxKind {
    TxKind::ProbeResult {
        contract: id,
        interval,
        up,
    }
}

#[test]
fn a_probe_interval_counts_only_when_a_quorum_agrees() {
    let mut h = Harness::new();
    let id = active_hosted(&mut h);
    h.now = 3_000;
    // One faulty arbitrator says down; two honest say up: nothing decided yet.
    let ev = h.probe(id, 0, false, [3]);
    assert_eq!(
        ev,
        vec![LedgerEvent::ProbeRecorded {
            contract: id,
            interval: 0,
            reporter: h.committee[3].node_id(),
            up: false
        }]
    );
    let ev = h.probe(id, 0, true, [0, 1]);
    assert!(
        !ev.iter()
            .any(|e| matches!(e, LedgerEvent::UptimeConfirmed { .. }))
    );
    let ev = h.probe(id, 0, true, [2]);
    assert!(ev.contains(&LedgerEvent::UptimeConfirmed {
        contract: id,
        interval: 0,
        up: true,
        ms: 2_000,
        confirmed_up_ms: 2_000
    }));
    let rec = h.ledger.contract(&id).unwrap();
    assert_eq!((rec.confirmed_up_ms, rec.confirmed_down_ms), (2_000, 0));
}

#[test]
fn probe_reports_are_checked() {
    let mut h = Harness::new();
    let id = active_hosted(&mut h);
    let (c, p) = (h.customer(), h.provider());
    let arb = h.committee[0].clone();
    h.now = 3_000;
    // Parties cannot report.
    for party in [&c, &p] {
        let err = h.try_apply(party, probe(id, 0, true)).unwrap_err();
        assert!(matches!(err, LedgerError::NotAllowed { .. }), "{err}");
    }
    // An interval that has not begun (beyond clock skew) or lies past the window.
    let err = h.try_apply(&arb, probe(id, 5, true)).unwrap_err();
    assert!(matches!(err, LedgerError::InvalidEvidence { .. }), "{err}");
    let err = h.try_apply(&arb, probe(id, 30, true)).unwrap_err();
    assert!(matches!(err, LedgerError::InvalidEvidence { .. }), "{err}");
    // Once per member per interval, whatever it says the second time.
    h.ok(&arb, probe(id, 0, true));
    let err = h.try_apply(&arb, probe(id, 0, false)).unwrap_err();
    assert!(matches!(err, LedgerError::DuplicateReport { .. }), "{err}");
    // A decided interval takes no more reports.
    h.probe(id, 0, true, [1, 2]);
    let late = h.committee[3].clone();
    let err = h.try_apply(&late, probe(id, 0, false)).unwrap_err();
    assert!(
        matches!(err, LedgerError::RoundDecided { outcome: true, .. }),
        "{err}"
    );
    // Reports close `quorum_report_grace_ms` after the interval ends.
    h.now = 5_000 + 10_000;
    h.ok(&arb, probe(id, 1, true));
    h.now += 1;
    let err = h.try_apply(&late, probe(id, 1, true)).unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }), "{err}");
    // Storage reports do not apply to a hosted contract.
    let err = h
        .try_apply(
            &arb,
            TxKind::StorageProofResult {
                contract: id,
                round: 2,
                challenge: test_cid(b"x"),
                passed: true,
            },
        )
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotNow { .. }), "{err}");
}

#[test]
fn a_hosted_provider_that_runs_nothing_is_paid_nothing() {
    let mut h = Harness::new();
    let id = active_hosted(&mut h);
    let (c, p) = (h.customer(), h.provider());
    // It claims full uptime; the committee's probes find nothing answering.
    h.probed_until(id, 61_000, false);
    h.ok(&p, for_contract(uptime(1_000, 61_000), id));
    assert!(h.try_apply(&p, TxKind::SettleUptime(id)).is_err());
    let ev = h.ok(&c, settle(id, SettleReason::DurationEnded));
    assert!(ev.iter().any(|e| matches!(
        e,
        LedgerEvent::Slashed {
            reason: BreachReason::ConfirmedDowntime { permille: 0 },
            ..
        }
    )));
    assert_eq!(h.balance(&p), 10_000 - 500);
    assert_eq!(h.balance(&c), 10_000 + 500);
}

#[test]
fn a_silent_committee_pays_nothing_but_slashes_nobody() {
    let mut h = Harness::new();
    let id = active_hosted(&mut h);
    let (c, p) = (h.customer(), h.provider());
    h.now = 61_000;
    h.ok(&p, for_contract(uptime(1_000, 61_000), id));
    let ev = h.ok(&c, settle(id, SettleReason::DurationEnded));
    assert!(
        ev.iter()
            .any(|e| matches!(e, LedgerEvent::SettlementPending { .. }))
    );
    h.now = 61_000 + 12_000;
    h.ledger.tick(h.now);
    assert_eq!(h.status(id), ContractStatus::Settled);
    assert_eq!((h.balance(&p), h.balance(&c)), (10_000, 10_000));
}

#[test]
fn a_minority_reporting_an_honest_provider_down_changes_nothing() {
    let mut h = Harness::new();
    let id = active_hosted(&mut h);
    let (c, p) = (h.customer(), h.provider());
    // Arbitrator 3 reports every interval down, first; 0..3 report the truth.
    for round in 0..30 {
        let (_, end) = h.ledger.contract(&id).unwrap().round_span(round).unwrap();
        h.now = end;
        h.probe(id, round, false, [3]);
        h.probe(id, round, true, 0..3);
    }
    h.ok(&p, for_contract(uptime(1_000, 61_000), id));
    let rec = h.ledger.contract(&id).unwrap();
    assert_eq!((rec.confirmed_up_ms, rec.confirmed_down_ms), (60_000, 0));
    h.ok(&c, settle(id, SettleReason::DurationEnded));
    assert_eq!(h.status(id), ContractStatus::Settled);
    assert_eq!(h.balance(&p), 10_000 + 1_000);
}

#[test]
fn the_tallies_hold_only_rounds_inside_their_report_window() {
    let mut h = Harness::new();
    let id = active_hosted(&mut h);
    let mut most = 0;
    for round in 0..30 {
        let (_, end) = h.ledger.contract(&id).unwrap().round_span(round).unwrap();
        h.now = end;
        // Only a minority reports: nothing is ever decided, nothing piles up.
        h.probe(id, round, false, [3]);
        most = most.max(h.ledger.contract(&id).unwrap().probes.len());
    }
    // Rounds end every 2 s and stay open for 10 s after: at most 6 are held at once.
    assert!(most <= 6, "{most} rounds held");
    assert_eq!(h.ledger.contract(&id).unwrap().confirmed_down_ms, 0);
}

#[test]
fn minority_storage_failures_never_count() {
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
    let report = |round, passed| TxKind::StorageProofResult {
        contract: id,
        round,
        challenge: test_cid(b"file"),
        passed,
    };
    for round in 0..30u64 {
        h.now = 1_000 + (round + 1) * 2_000;
        let liar = h.committee[3].clone();
        let ev = h.ok(&liar, report(round, false));
        assert!(
            !ev.iter()
                .any(|e| matches!(e, LedgerEvent::StorageProofRecorded { .. }))
        );
        // Only one honest arbitrator reports some rounds: no quorum either way.
        let honest = if round % 2 == 0 { 0..3 } else { 0..1 };
        for a in honest {
            let arb = h.committee[a].clone();
            h.ok(&arb, report(round, true));
        }
    }
    let rec = h.ledger.contract(&id).unwrap();
    assert_eq!((rec.storage_passed, rec.storage_failed), (15, 0));
    assert!(
        !rec.audits.is_empty(),
        "undecided rounds are held while active"
    );
    h.ok(&c, settle(id, SettleReason::DurationEnded));
    assert_eq!(h.status(id), ContractStatus::Settled);
    // A closed contract keeps no tallies.
    assert!(h.ledger.contract(&id).unwrap().audits.is_empty());
}

/// The customer takes a hosted contract back at 12 000, mid-round; its settlement waits for the
/// committee's reports of that round. Rounds the committee decides while it waits, past the
/// service it judges, count only their part before 12 000 (issue #15: in the provisioning
/// bench, rounds after a deleted deployment's settlement end were reported "silent" on a loaded
/// machine and slashed honest providers).
#[test]
fn rounds_decided_while_a_settlement_waits_count_only_up_to_its_end() {
    let mut h = Harness::new();
    let id = active_hosted(&mut h);
    let (c, p) = (h.customer(), h.provider());
    h.probed_until(id, 11_000, true);
    h.now = 12_000;
    h.ok(&p, for_contract(uptime(1_000, 12_000), id));
    let ev = h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert!(
        ev.iter()
            .any(|e| matches!(e, LedgerEvent::SettlementPending { end: 12_000, .. })),
        "{ev:?}"
    );
    // Round 6 (13 000..15 000) lies wholly after the end: a quorum calling it down changes
    // nothing (without the rule: 2 s down of 11 s judged, 818 ‰ < 900 ‰, slashed).
    h.now = 15_000;
    h.probe(id, 6, false, 0..3);
    assert_eq!(h.ledger.contract(&id).unwrap().confirmed_down_ms, 0);
    // Round 5 (11 000..13 000), the one the end falls in, was up: 1 s of it counts.
    let ev = h.probe(id, 5, true, 0..3);
    assert!(ev.iter().any(|e| matches!(
        e,
        LedgerEvent::UptimeConfirmed {
            interval: 5,
            ms: 1_000,
            ..
        }
    )));
    assert_eq!(h.status(id), ContractStatus::Settled);
}

/// A round decided down before the customer settles mid-round counts only its part before the
/// end: 1 s of 11 s judged (909 ‰ ≥ 900 ‰) instead of its whole 2 s (818 ‰, slashed).
#[test]
fn a_round_decided_before_the_settlement_counts_only_up_to_its_end() {
    let mut h = Harness::new();
    let id = active_hosted(&mut h);
    let (c, p) = (h.customer(), h.provider());
    h.probed_until(id, 11_000, true);
    h.now = 11_500;
    h.probe(id, 5, false, 0..3);
    assert_eq!(h.ledger.contract(&id).unwrap().confirmed_down_ms, 2_000);
    h.now = 12_000;
    h.ok(&p, for_contract(uptime(1_000, 12_000), id));
    h.ok(&c, settle(id, SettleReason::CustomerBack));
    assert_eq!(h.ledger.contract(&id).unwrap().confirmed_down_ms, 1_000);
    assert_eq!(h.status(id), ContractStatus::Settled);
}

fn batch(entries: &[(ContractId, u64, bool)]) -> TxKind {
    TxKind::ProbeResults(
        entries
            .iter()
            .map(|&(contract, interval, up)| crate::ledger::ProbeReport {
                contract,
                interval,
                up,
            })
            .collect(),
    )
}

#[test]
fn a_batch_of_probe_results_counts_each_entry_as_alone_and_skips_the_refused_ones() {
    let mut h = Harness::new();
    let id = active_hosted(&mut h);
    h.now = 5_000;
    let arbs: Vec<_> = h.committee.clone();
    // Interval 0 decided up by three members' single reports.
    h.probe(id, 0, true, [0, 1, 2]);
    // Member 3's batch: interval 0 (decided: skipped), interval 1 (counts).
    let ev = h.ok(&arbs[3], batch(&[(id, 0, false), (id, 1, true)]));
    assert_eq!(
        ev,
        vec![LedgerEvent::ProbeRecorded {
            contract: id,
            interval: 1,
            reporter: arbs[3].node_id(),
            up: true
        }]
    );
    // Batches of two more members decide interval 1 like single reports would.
    h.ok(&arbs[0], batch(&[(id, 1, true)]));
    let ev = h.ok(&arbs[1], batch(&[(id, 1, true)]));
    assert!(ev.contains(&LedgerEvent::UptimeConfirmed {
        contract: id,
        interval: 1,
        up: true,
        ms: 2_000,
        confirmed_up_ms: 4_000
    }));
    let rec = h.ledger.contract(&id).unwrap();
    assert_eq!((rec.confirmed_up_ms, rec.confirmed_down_ms), (4_000, 0));
    // Refused whole: every entry refused (nothing changes), empty, too long, an interval twice,
    // a party's batch.
    let before = h.ledger.state_hash().unwrap();
    let err = h
        .try_apply(&arbs[3], batch(&[(id, 0, true), (id, 1, true)]))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::RoundDecided { .. }),
        "the first refusal: {err}"
    );
    let err = h.try_apply(&arbs[3], batch(&[])).unwrap_err();
    assert!(matches!(err, LedgerError::InvalidEvidence { .. }), "{err}");
    let long: Vec<(ContractId, u64, bool)> = (0..=crate::ledger::MAX_PROBE_RESULTS as u64)
        .map(|i| (id, i, true))
        .collect();
    let err = h.try_apply(&arbs[3], batch(&long)).unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
    let err = h
        .try_apply(&arbs[3], batch(&[(id, 2, true), (id, 2, false)]))
        .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    let p = h.provider();
    let err = h.try_apply(&p, batch(&[(id, 2, true)])).unwrap_err();
    assert!(matches!(err, LedgerError::NotAllowed { .. }), "{err}");
    assert_eq!(
        h.ledger.state_hash().unwrap(),
        before,
        "refused batches change nothing"
    );
}
