//! Arbitrator rules for the committee's evidence: probing hosted and standby services once per
//! probe interval, challenging storage providers once per audit round, and reporting each
//! outcome with its round, on a real ledger that counts the reports.

use super::arbitrator::arbitrator;
use super::*;
use crate::probe_timeout_ms;
use agora_contracts::contract::Qos;
use agora_contracts::duties::{Duty, duties_for, probe_duty};
use agora_contracts::ledger::SettleReason;

/// Arbitrator 0's machine and an active contract (registered at 1 000, activated at 1 300; the
/// default two-second rounds run from there), with the output of the activation block.
fn active(chain: &mut Chain, b: ContractBuilder) -> (Roles, NodeId, ContractId, Vec<Effect>) {
    let (mut roles, me) = arbitrator(chain);
    let (id, ev) = chain.register(b.signed());
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let p = chain.provider.clone();
    chain.now += 100;
    chain.block(vec![(&p, TxKind::MarkMigrated(id))]);
    chain.now += 100;
    chain.block(vec![(&p, TxKind::MarkArmed(id))]);
    chain.now += 100;
    let at = chain.now;
    let ev = chain.block(vec![(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: at,
        },
    )]);
    assert!(
        duties_for(me, &chain.ledger, &ev)
            .iter()
            .any(|d| matches!(d, Duty::Probe { .. } | Duty::Audit { .. }))
    );
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    (roles, me, id, out)
}

/// Ticks every 10 ms over `[from, to)` until an effect matches; returns its time and the
/// whole output of that tick.
fn tick_until(
    roles: &mut Roles,
    from: Timestamp,
    to: Timestamp,
    want: impl Fn(&Effect) -> bool,
) -> Option<(Timestamp, Vec<Effect>)> {
    (from..to).step_by(10).find_map(|t| {
        let out = roles.handle(t, Input::Tick);
        out.iter().any(&want).then_some((t, out))
    })
}

fn is_probe(e: &Effect) -> bool {
    matches!(e, Effect::Probe { .. })
}

fn is_challenge(e: &Effect) -> bool {
    matches!(e, Effect::Challenge { .. })
}

fn span(chain: &Chain, id: ContractId, round: u64) -> (Timestamp, Timestamp) {
    chain
        .ledger
        .contract(&id)
        .unwrap()
        .round_span(round)
        .unwrap()
}

/// How long the provider of `id` has to answer a probe (one evidence round, 1–4 s).
fn wait(chain: &Chain, id: ContractId) -> Timestamp {
    probe_timeout_ms(chain.ledger.contract(&id).unwrap().evidence_period_ms())
}

fn probe_result(contract: ContractId, interval: u64, up: bool) -> TxKind {
    TxKind::ProbeResult {
        contract,
        interval,
        up,
    }
}

/// Hosted, minimum uptime 0: settling needs neither heartbeats nor a verdict on uptime.
fn lenient_hosted() -> ContractBuilder {
    ContractBuilder::new(1, 2).qos(Qos {
        max_activation_delay_ms: 5_000,
        min_uptime_permille: 0,
        heartbeat_interval_ms: 1_000,
    })
}

#[test]
fn an_active_hosted_contract_is_probed_once_per_interval_and_each_outcome_reported() {
    let mut chain = Chain::new();
    let (mut roles, me, id, out) = active(&mut chain, ContractBuilder::new(1, 2));
    assert!(phases(&out).contains(&"probing".to_string()));
    let rec = chain.ledger.contract(&id).unwrap().clone();
    let Some(Duty::Probe {
        provider, every_ms, ..
    }) = probe_duty(id, &rec.contract)
    else {
        panic!("a hosted contract is probed")
    };
    assert_eq!(every_ms, rec.evidence_period_ms());
    let (s0, e0) = span(&chain, id, 0);
    let (t, out) = tick_until(&mut roles, chain.now, e0, is_probe).expect("a probe in interval 0");
    assert!(out.contains(&Effect::Probe {
        contract: id,
        provider,
        interval: 0,
        timeout_ms: wait(&chain, id)
    }));
    assert!(t >= s0 && t < e0 - PROBE_TIMEOUT_MS, "probed at {t}");
    // The answer is reported for the interval probed, and the ledger counts it from this member.
    let out = roles.handle(
        t + 5,
        Input::ProbeAnswer {
            contract: id,
            interval: 0,
            up: true,
        },
    );
    let report = probe_result(id, 0, true);
    assert_eq!(submitted(&out), vec![report.clone()]);
    chain.now = t + 5;
    let arb = chain.committee[0].clone();
    let ev = chain.block(vec![(&arb, report.clone())]);
    assert!(ev.iter().any(|e| matches!(
        e,
        LedgerEvent::ProbeRecorded { reporter, interval: 0, up: true, .. } if *reporter == me
    )));
    let out = roles.handle(
        chain.now,
        Input::Submitted {
            tx: report,
            accepted: true,
        },
    );
    assert!(phases(&out).contains(&"probed-up".to_string()));
    // A repeated or late answer changes nothing.
    let again = Input::ProbeAnswer {
        contract: id,
        interval: 0,
        up: false,
    };
    assert!(submitted(&roles.handle(t + 10, again)).is_empty());
    // Once per interval: none again in interval 0, one in interval 1.
    assert!(tick_until(&mut roles, t + 10, e0, is_probe).is_none());
    let (_, e1) = span(&chain, id, 1);
    let (_, out) = tick_until(&mut roles, e0, e1, is_probe).expect("a probe in interval 1");
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::Probe { interval: 1, .. }))
    );
}

#[test]
fn a_silent_provider_is_reported_down_when_its_time_to_answer_runs_out() {
    let mut chain = Chain::new();
    let (mut roles, me, id, _) = active(&mut chain, ContractBuilder::new(1, 2));
    let (_, e0) = span(&chain, id, 0);
    let (t, out) = tick_until(&mut roles, chain.now, e0, is_probe).unwrap();
    // The driver need not answer: the machine wakes at the deadline, and asks once more.
    let w = wait(&chain, id);
    assert!(out.contains(&Effect::WakeAt(t + w)));
    assert!(submitted(&roles.handle(t + w - 1, Input::Tick)).is_empty());
    let out = roles.handle(t + w, Input::Tick);
    assert!(submitted(&out).is_empty(), "one silence is not yet down");
    let second = probe_interval(&out).expect("asked once more");
    // Silent again (blocks keep arriving, so this node's view is current): down, for the
    // interval first asked.
    chain.now = t + w;
    let ev = chain.block(vec![]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(submitted(&roles.handle(t + 2 * w - 1, Input::Tick)).is_empty());
    let out = roles.handle(t + 2 * w, Input::Tick);
    assert_eq!(submitted(&out), vec![probe_result(id, 0, false)]);
    // An answer after the deadline is not reported again.
    let late = Input::ProbeAnswer {
        contract: id,
        interval: 0,
        up: true,
    };
    assert!(submitted(&roles.handle(t + 2 * w + 1, late)).is_empty());
    let late = Input::ProbeAnswer {
        contract: id,
        interval: second,
        up: true,
    };
    assert!(submitted(&roles.handle(t + 2 * w + 2, late)).is_empty());
}

/// An overloaded honest provider misses one deadline: the second ask's answer counts (issue
/// #15).
#[test]
fn a_provider_that_answers_the_second_ask_is_reported_up() {
    let mut chain = Chain::new();
    let (mut roles, _, id, _) = active(&mut chain, ContractBuilder::new(1, 2));
    let (_, e0) = span(&chain, id, 0);
    let (t, _) = tick_until(&mut roles, chain.now, e0, is_probe).unwrap();
    let w = wait(&chain, id);
    let again = roles.handle(t + w, Input::Tick);
    assert!(submitted(&again).is_empty());
    // Asked for the interval of that moment (the next one, for rounds as long as the time to
    // answer): the answer counts there, and says nothing of interval 0.
    let second = probe_interval(&again).expect("asked once more");
    assert_eq!(
        Some(second),
        chain.ledger.contract(&id).unwrap().evidence_round(t + w)
    );
    let up = Input::ProbeAnswer {
        contract: id,
        interval: second,
        up: true,
    };
    assert_eq!(
        submitted(&roles.handle(t + w + 300, up)),
        vec![probe_result(id, second, true)]
    );
}

#[test]
fn a_node_that_hears_no_blocks_does_not_blame_the_provider() {
    let mut chain = Chain::new();
    let (mut roles, me, id, _) = active(&mut chain, ContractBuilder::new(1, 2));
    // Interval 0 passes unanswered (both asks) while a block keeps this node's view fresh:
    // reported down.
    let (_, e0) = span(&chain, id, 0);
    let (t0, _) = tick_until(&mut roles, chain.now, e0, is_probe).unwrap();
    chain.now = t0 + wait(&chain, id);
    let ev = chain.block(vec![]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let fresh_at = chain.now;
    assert_eq!(
        submitted(&roles.handle(t0 + 2 * wait(&chain, id), Input::Tick)),
        vec![probe_result(id, 0, false)]
    );
    // No block from here on: once the view is older than REPORT_VIEW_MAX_AGE_MS, silence (on
    // both asks) is not reported.
    let (t, out) = tick_until(
        &mut roles,
        t0 + 2 * wait(&chain, id) + 1,
        e0 + 20_000,
        is_probe,
    )
    .unwrap();
    let asked = probe_interval(&out).unwrap();
    let t = t + wait(&chain, id);
    let again = roles.handle(t, Input::Tick);
    assert!(
        probe_interval(&again).is_some(),
        "asked once more: {again:?}"
    );
    assert!(submitted(&again).is_empty());
    let t = t + wait(&chain, id);
    assert!(t - fresh_at > REPORT_VIEW_MAX_AGE_MS);
    let out = roles.handle(t, Input::Tick);
    assert!(submitted(&out).is_empty(), "interval {asked}: {out:?}");
    assert!(phases(&out).contains(&"probe-skipped".to_string()));
    // An answer that the service runs is reported even so: it is no one's isolation. (The next
    // probe may go out at that same tick when its moment already passed.)
    let (t, out) = match probe_interval(&out) {
        Some(_) => (t, out),
        None => tick_until(&mut roles, t + 1, t + 10_000, is_probe).unwrap(),
    };
    let next = probe_interval(&out).unwrap();
    let up = Input::ProbeAnswer {
        contract: id,
        interval: next,
        up: true,
    };
    assert_eq!(
        submitted(&roles.handle(t, up)),
        vec![probe_result(id, next, true)]
    );
    // A fresh block: "down" is reported again.
    chain.now = t + 10;
    let ev = chain.block(vec![]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let (t, out) = tick_until(&mut roles, chain.now, chain.now + 10_000, is_probe).unwrap();
    let last = probe_interval(&out).unwrap();
    let down = Input::ProbeAnswer {
        contract: id,
        interval: last,
        up: false,
    };
    assert_eq!(
        submitted(&roles.handle(t, down)),
        vec![probe_result(id, last, false)]
    );
}

/// The interval of the probe among `out`, if one went out.
fn probe_interval(out: &[Effect]) -> Option<u64> {
    out.iter().find_map(|e| match e {
        Effect::Probe { interval, .. } => Some(*interval),
        _ => None,
    })
}

#[test]
fn probing_ends_when_the_contract_is_no_longer_active() {
    let mut chain = Chain::new();
    let (mut roles, me, id, _) = active(&mut chain, lenient_hosted());
    let (_, e0) = span(&chain, id, 0);
    let (t, _) = tick_until(&mut roles, chain.now, e0, is_probe).unwrap();
    // Settled while the probe is out: the committee confirmed the service so far.
    chain.now = t;
    chain.confirm_up(id);
    let c = chain.customer.clone();
    let ev = chain.block(vec![(
        &c,
        TxKind::Settle {
            contract: id,
            reason: SettleReason::CustomerBack,
        },
    )]);
    assert!(duties_for(me, &chain.ledger, &ev).contains(&Duty::EndProbe { contract: id }));
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(phases(&out).contains(&"probe-ended".to_string()));
    let answer = Input::ProbeAnswer {
        contract: id,
        interval: 0,
        up: true,
    };
    assert!(submitted(&roles.handle(t + 5, answer)).is_empty());
    assert!(tick_until(&mut roles, t + 5, t + 10_000, is_probe).is_none());
}

#[test]
fn a_restarted_arbitrator_resumes_probing_with_the_current_interval() {
    let mut chain = Chain::new();
    let (_, me, id, _) = active(&mut chain, ContractBuilder::new(1, 2));
    // Restarted in interval 2, from its stored ledger (the activation block, long ago).
    let (s2, e2) = span(&chain, id, 2);
    let started = s2 + 10;
    let mut roles = Roles::new(me, started, RolesConfig::default(), None);
    let out = roles.handle(started, chain.facts(&roles, me, Vec::new()));
    let rec = chain.ledger.contract(&id).unwrap();
    let Some(Duty::Probe { every_ms, .. }) = probe_duty(id, &rec.contract) else {
        unreachable!()
    };
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::Timeline(n) if n.phase == "probing" && n.detail.contains(&format!("{every_ms} ms"))
    )));
    // Not before its ledger is known to be current.
    assert!(tick_until(&mut roles, started, started + 500, is_probe).is_none());
    let height = chain.ledger.height();
    let out = roles.handle(started + 500, Input::CaughtUp { height });
    let out = match out.iter().any(is_probe) {
        true => out,
        false => {
            tick_until(&mut roles, started + 510, e2, is_probe)
                .unwrap()
                .1
        }
    };
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::Probe { interval: 2, .. }))
    );
}

#[test]
fn storage_is_challenged_once_per_audit_round_and_each_verdict_carries_its_round() {
    let mut chain = Chain::new();
    let signed = ContractBuilder::new(1, 2)
        .storage()
        .qos(Qos {
            max_activation_delay_ms: 5_000,
            min_uptime_permille: 500,
            heartbeat_interval_ms: 100,
        })
        .signed();
    let c = signed.contract.clone();
    let (mut roles, me) = arbitrator(&chain);
    let (id, ev) = chain.register(signed);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let p = chain.provider.clone();
    chain.now += 100;
    chain.block(vec![(&p, TxKind::MarkMigrated(id))]);
    chain.now += 100;
    chain.block(vec![(&p, TxKind::MarkArmed(id))]);
    chain.now += 100;
    let at = chain.now;
    let ev = chain.block(vec![(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: at,
        },
    )]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(phases(&out).contains(&"auditing".to_string()));
    // Storage contracts are audited, not probed.
    assert!(!phases(&out).contains(&"probing".to_string()));
    let (s0, e0) = span(&chain, id, 0);
    let (t, out) = tick_until(&mut roles, chain.now, e0, is_challenge).unwrap();
    assert!(t >= s0 && t < e0 - PROBE_TIMEOUT_MS);
    assert!(out.contains(&Effect::Challenge {
        contract: id,
        provider: c.provider,
        file: c.service_image,
        commitment: c.config
    }));
    // One challenge at a time, even across rounds.
    let (_, e1) = span(&chain, id, 1);
    assert!(tick_until(&mut roles, t + 10, e1, is_challenge).is_none());
    // The verdict comes late, in round 2: it is reported for the challenge's round.
    let (s2, e2) = span(&chain, id, 2);
    chain.now = s2 - 100;
    let ev = chain.block(vec![]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let verdict = |v| Input::AuditAnswer {
        contract: id,
        verdict: v,
    };
    let out = roles.handle(s2, verdict(AuditVerdict::Failed("wrong chunk".into())));
    let result = TxKind::StorageProofResult {
        contract: id,
        round: 0,
        challenge: c.service_image,
        passed: false,
    };
    assert_eq!(submitted(&out), vec![result.clone()]);
    chain.now = s2;
    let arb = chain.committee[0].clone();
    let ev = chain.block(vec![(&arb, result.clone())]);
    assert!(ev.iter().any(|e| matches!(
        e,
        LedgerEvent::AuditReportRecorded {
            round: 0,
            passed: false,
            ..
        }
    )));
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let out = roles.handle(
        chain.now,
        Input::Submitted {
            tx: result,
            accepted: true,
        },
    );
    assert!(phases(&out).contains(&"storage-challenge".to_string()));
    // The next challenge is in the current round.
    let (t, _) = tick_until(&mut roles, s2, e2, is_challenge).unwrap();
    assert!(t >= s2);
    // Could not judge: nothing reported.
    let out = roles.handle(
        t + 10,
        verdict(AuditVerdict::Unjudged("commitment unreachable".into())),
    );
    assert!(submitted(&out).is_empty());
    assert!(phases(&out).contains(&"audit-skipped".to_string()));
    // Failed, but this node has heard no block for too long: not reported either.
    let (s4, e4) = span(&chain, id, 4);
    let (t, _) = tick_until(&mut roles, t + 10, e4, is_challenge).unwrap();
    assert!(t >= span(&chain, id, 3).0);
    let late = s4.max(t) + 10;
    assert!(late - chain.now > REPORT_VIEW_MAX_AGE_MS);
    let out = roles.handle(late, verdict(AuditVerdict::Failed("no answer".into())));
    assert!(submitted(&out).is_empty());
    assert!(phases(&out).contains(&"audit-skipped".to_string()));
    // The contract closes: the audit ends.
    let cust = chain.customer.clone();
    chain.now = late;
    let ev = chain.block(vec![(
        &cust,
        TxKind::Settle {
            contract: id,
            reason: SettleReason::CustomerBack,
        },
    )]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(phases(&out).contains(&"audit-ended".to_string()));
}

#[test]
fn a_provider_has_one_round_to_answer_a_probe_within_bounds() {
    use crate::{MAX_PROBE_TIMEOUT_MS, PROBE_TIMEOUT_MS};
    // The usual rounds (heartbeats of 1 s, rounds of at least 2 s): 2 s to answer.
    assert_eq!(probe_timeout_ms(2_000), 2_000);
    assert_eq!(probe_timeout_ms(500), PROBE_TIMEOUT_MS);
    // Long rounds: the report must still reach a block inside the ledger's report window.
    assert_eq!(probe_timeout_ms(30_000), MAX_PROBE_TIMEOUT_MS);
    assert!(
        MAX_PROBE_TIMEOUT_MS + 2_000
            <= agora_contracts::ledger::LedgerParams::default().quorum_report_grace_ms
    );
}
