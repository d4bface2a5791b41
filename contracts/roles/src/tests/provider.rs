//! Provider rules.

use super::*;
use agora_contracts::contract::Qos;
use agora_contracts::ledger::{HeartbeatBatch, SettleReason, UptimeInterval};

#[test]
fn a_provider_stages_migrates_arms_and_activates_on_the_handover() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let mut roles = Roles::new(me, chain.now - 1, RolesConfig::default(), None);
    let (id, ev) = chain.register(Chain::standby().signed());
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::Stage {
        service: ServiceRef::Contract(id),
        image: Chain::image()
    }));
    let out = roles.handle(
        chain.now,
        Input::Staged {
            service: ServiceRef::Contract(id),
            devices: DEVICES.to_vec(),
        },
    );
    assert_eq!(submitted(&out), vec![TxKind::MarkMigrated(id)]);
    assert!(phases(&out).contains(&"staged".to_string()));
    // Asked once, not again while in flight.
    assert!(submitted(&roles.handle(chain.now + 10, Input::Tick)).is_empty());
    let p = chain.provider.clone();
    chain.now += 100;
    let ev = chain.block(vec![(&p, TxKind::MarkMigrated(id))]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    // Armed only once the host said no rival holds the module's instances (THREATS C5).
    assert!(submitted(&out).is_empty());
    assert!(out.contains(&Effect::InstanceRivals { contract: id }));
    let out = roles.handle(
        chain.now,
        Input::InstanceRivals {
            contract: id,
            max: 1,
            rivals: Vec::new(),
        },
    );
    assert_eq!(submitted(&out), vec![TxKind::MarkArmed(id)]);
    assert!(out.contains(&Effect::Listen {
        devices: DEVICES.to_vec(),
        on: true
    }));
    chain.now += 100;
    let ev = chain.block(vec![(&p, TxKind::MarkArmed(id))]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(!out.iter().any(|e| matches!(e, Effect::Activate { .. })));
    // The committee attests the customer down: activate at once.
    chain.now = 5_000;
    let ev = chain.attest_down(1_000);
    assert!(
        ev.iter()
            .any(|e| matches!(e, LedgerEvent::HandoverAttested { .. }))
    );
    let out = roles.handle(chain.now + 30, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::Activate {
        service: ServiceRef::Contract(id),
        devices: DEVICES.to_vec(),
        reclaim: false
    }));
    let out = roles.handle(
        chain.now + 80,
        Input::ActivationDone {
            service: ServiceRef::Contract(id),
            started_at: chain.now + 40,
            replayed: 3,
        },
    );
    assert_eq!(
        submitted(&out),
        vec![TxKind::ReportActivation {
            contract: id,
            activated_at: chain.now + 40
        }]
    );
    let Some(Effect::Timeline(note)) = out
        .iter()
        .find(|e| matches!(e, Effect::Timeline(n) if n.phase == "activated"))
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        note.latency_ms,
        Some(50),
        "from the handover block's arrival"
    );
}

#[test]
fn activation_waits_until_the_ledger_is_current() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let (mut old, id) = armed_provider(&mut chain, Chain::standby());
    chain.now = 5_000;
    let ev = chain.attest_down(1_000);
    drop(old.handle(chain.now, Input::Tick));
    // The node restarts later with this ledger on disk.
    let started = chain.now + 1_000;
    let mut roles = Roles::new(me, started, RolesConfig::default(), None);
    drop(ev);
    roles.handle(started, chain.facts(&roles, me, Vec::new()));
    let out = roles.handle(
        started + 100,
        Input::Staged {
            service: ServiceRef::Contract(id),
            devices: DEVICES.to_vec(),
        },
    );
    assert!(!out.iter().any(|e| matches!(e, Effect::Activate { .. })));
    let out = roles.handle(
        started + 200,
        Input::CaughtUp {
            height: chain.ledger.height(),
        },
    );
    assert!(out.iter().any(|e| matches!(e, Effect::Activate { .. })));
    assert!(phases(&out).contains(&"synced".to_string()));
}

#[test]
fn a_fixed_time_activation_is_scheduled_and_woken_for() {
    let mut chain = Chain::new();
    let (mut roles, id) = armed_provider(&mut chain, ContractBuilder::new(1, 2).at(9_000));
    let _ = id;
    // Armed: scheduled for 9 s (the driver was told when to wake).
    assert_eq!(
        roles.provider.next_wake(),
        Some(9_000),
        "scheduled activation is the next deadline"
    );
    assert!(
        !roles
            .handle(8_990, Input::Tick)
            .iter()
            .any(|e| matches!(e, Effect::Activate { .. }))
    );
    assert!(
        roles
            .handle(9_000, Input::Tick)
            .iter()
            .any(|e| matches!(e, Effect::Activate { .. }))
    );
}

/// A provider machine that took `b` to armed and, at 5 s, learnt that its service is to
/// start: the customer attested down for a standby (a contract with a trigger is due by then).
fn due_to_start(chain: &mut Chain, b: ContractBuilder) -> (Roles, ContractId) {
    let me = chain.provider.node_id();
    let (mut roles, id) = armed_provider(chain, b);
    chain.now = 5_000;
    let ev = if chain.ledger.contract(&id).unwrap().trigger_at.is_some() {
        Vec::new()
    } else {
        chain.attest_down(1_000)
    };
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    (roles, id)
}

/// A provider with the standby handed over and activated at `started`.
fn active(chain: &mut Chain, b: ContractBuilder) -> (Roles, ContractId, Timestamp) {
    let me = chain.provider.node_id();
    let (mut roles, id) = due_to_start(chain, b);
    let started = chain.now + 10;
    let out = roles.handle(
        started,
        Input::ActivationDone {
            service: ServiceRef::Contract(id),
            started_at: started,
            replayed: 0,
        },
    );
    let p = chain.provider.clone();
    chain.now += 100;
    let ev = chain.block(submitted(&out).into_iter().map(|tx| (&p, tx)).collect());
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    (roles, id, started)
}

/// The heartbeat batch among `out` (the only transaction).
/// A heartbeat tick of `id` at `now` with the service running and nothing new processed:
/// the effects of the meter's answer.
fn beat(roles: &mut Roles, id: ContractId, now: Timestamp) -> Vec<Effect> {
    roles.handle(now, Input::Tick);
    roles.handle(
        now,
        Input::Metered {
            contract: id,
            running: true,
            processed: 0,
            proofs: Vec::new(),
        },
    )
}

fn one_batch(out: &[Effect]) -> HeartbeatBatch {
    match submitted(out).as_slice() {
        [TxKind::Heartbeats { batch, .. }] => batch.clone(),
        other => panic!("expected one heartbeat batch, got {other:?}"),
    }
}

#[test]
fn heartbeats_report_uptime_new_readings_and_new_proofs() {
    let mut chain = Chain::new();
    let (mut roles, id, started) = active(&mut chain, Chain::standby());
    // One heartbeat transaction per evidence round: the contract's 1 s interval, at least 2 s.
    let hb = crate::MIN_HEARTBEAT_MS.max(1_000);
    assert!(
        !roles
            .handle(started + hb - 1, Input::Tick)
            .iter()
            .any(|e| matches!(e, Effect::Meter { .. }))
    );
    let now = started + hb;
    let out = roles.handle(now, Input::Tick);
    assert!(out.contains(&Effect::Meter {
        contract: id,
        service: ServiceRef::Contract(id),
        devices: DEVICES.to_vec()
    }));
    let proofs: Vec<Cid> = (0..20u8).map(|i| test_cid(&[i])).collect();
    let out = roles.handle(
        now,
        Input::Metered {
            contract: id,
            running: true,
            processed: 10,
            proofs: proofs.clone(),
        },
    );
    let batch = HeartbeatBatch {
        intervals: vec![UptimeInterval {
            from: started,
            to: now - CLOCK_MARGIN_MS,
        }],
        readings_processed: 10,
        data_proofs: proofs[..PROOFS_PER_HEARTBEAT].to_vec(),
    };
    let tx = TxKind::Heartbeats {
        contract: id,
        batch,
    };
    assert_eq!(
        submitted(&out),
        vec![tx.clone()],
        "standby: no uptime payment"
    );
    roles.handle(
        now,
        Input::Submitted {
            tx: tx.clone(),
            accepted: true,
        },
    );
    // Applied in a block: the next batch starts at the ledger's cursor.
    let (me, p) = (chain.provider.node_id(), chain.provider.clone());
    chain.now = now;
    let ev = chain.block(vec![(&p, tx)]);
    roles.handle(now, chain.facts(&roles, me, ev));
    let now = now + hb;
    roles.handle(now, Input::Tick);
    let out = roles.handle(
        now,
        Input::Metered {
            contract: id,
            running: true,
            processed: 15,
            proofs: proofs.clone(),
        },
    );
    let batch = one_batch(&out);
    assert_eq!(batch.intervals[0].from, started + hb - CLOCK_MARGIN_MS);
    assert_eq!(batch.readings_processed, 5);
    assert_eq!(batch.data_proofs, proofs[PROOFS_PER_HEARTBEAT..].to_vec());
    // Refused: the next batch starts again from what the ledger holds.
    let tx = TxKind::Heartbeats {
        contract: id,
        batch,
    };
    roles.handle(
        now,
        Input::Submitted {
            tx,
            accepted: false,
        },
    );
    let now = now + hb;
    roles.handle(now, Input::Tick);
    let out = roles.handle(
        now,
        Input::Metered {
            contract: id,
            running: true,
            processed: 15,
            proofs: Vec::new(),
        },
    );
    let batch = one_batch(&out);
    assert_eq!(batch.intervals[0].from, started + hb - CLOCK_MARGIN_MS);
    assert_eq!(batch.readings_processed, 5);
    // A stopped service claims no uptime.
    let now = now + hb;
    roles.handle(now, Input::Tick);
    let out = roles.handle(
        now,
        Input::Metered {
            contract: id,
            running: false,
            processed: 15,
            proofs: Vec::new(),
        },
    );
    let batch = one_batch(&out);
    assert!(batch.intervals.is_empty());
    // Running again: the time it was seen stopped is not claimed.
    let stopped_seen = now - CLOCK_MARGIN_MS;
    let now = now + hb;
    roles.handle(now, Input::Tick);
    let out = roles.handle(
        now,
        Input::Metered {
            contract: id,
            running: true,
            processed: 15,
            proofs: Vec::new(),
        },
    );
    assert_eq!(one_batch(&out).intervals[0].from, stopped_seen);
}

/// A hosted contract's provider collects its uptime payment after a heartbeat, but only once
/// the ledger shows something to collect (uptime it claimed that a committee quorum
/// confirmed): a collection the ledger would refuse is not submitted at all (it took a block's
/// room on every heartbeat of every contract, found in attack_fleet's node logs).
#[test]
fn hosted_contracts_collect_their_uptime_payment_once_there_is_some() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let p = chain.provider.clone();
    let (mut roles, id, started) = active(&mut chain, ContractBuilder::new(1, 2));
    let now = started + 1_000;
    let txs = submitted(&beat(&mut roles, id, now));
    assert!(
        matches!(txs.as_slice(), [TxKind::Heartbeats { .. }]),
        "nothing confirmed yet, nothing to collect: {txs:?}"
    );
    // The heartbeat lands, and a quorum's probes confirm the service up.
    chain.now = now + 100;
    let mut ev = chain.block(vec![(&p, txs[0].clone())]);
    roles.handle(
        chain.now,
        Input::Submitted {
            tx: txs[0].clone(),
            accepted: true,
        },
    );
    chain.now += 5_000;
    ev.extend(chain.confirm_up(id));
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(chain.ledger.contract(&id).unwrap().collectable() > 0);
    let txs = submitted(&beat(&mut roles, id, chain.now + 10));
    assert!(
        matches!(txs.as_slice(), [TxKind::Heartbeats { .. }, TxKind::SettleUptime(c)] if *c == id),
        "{txs:?}"
    );
}

#[test]
fn closing_stops_the_service_and_hands_the_sensors_back() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let (mut roles, id, _) = active(&mut chain, Chain::lenient());
    let c = chain.customer.clone();
    chain.now += 2_000;
    chain.confirm_up(id);
    let ev = chain.block(vec![(
        &c,
        TxKind::Settle {
            contract: id,
            reason: SettleReason::CustomerBack,
        },
    )]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::YieldDevices {
        devices: DEVICES.to_vec()
    }));
    assert!(out.contains(&Effect::StopService {
        service: ServiceRef::Contract(id)
    }));
    assert!(out.contains(&Effect::Listen {
        devices: DEVICES.to_vec(),
        on: false
    }));
    assert!(phases(&out).contains(&"stopped".to_string()));
    // Once only.
    assert!(
        !roles
            .handle(chain.now + 10, Input::Tick)
            .iter()
            .any(|e| matches!(e, Effect::StopService { .. }))
    );
}

#[test]
fn a_restarted_provider_resumes_an_active_contract_without_reporting_twice() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let (mut roles, id, started) = active(&mut chain, Chain::standby());
    // One heartbeat reaches the ledger.
    let now = started + 1_000;
    let out = beat(&mut roles, id, now);
    let p = chain.provider.clone();
    chain.now = now + 100;
    chain.block(submitted(&out).into_iter().map(|tx| (&p, tx)).collect());
    let held = chain.ledger.contract(&id).unwrap().last_uptime_end.unwrap();
    // Restart.
    let t = chain.now + 500;
    let mut roles = Roles::new(me, t, RolesConfig::default(), None);
    let out = roles.handle(t, chain.facts(&roles, me, Vec::new()));
    assert!(out.iter().any(|e| matches!(e, Effect::Stage { .. })));
    roles.handle(
        t + 100,
        Input::Staged {
            service: ServiceRef::Contract(id),
            devices: DEVICES.to_vec(),
        },
    );
    let out = roles.handle(t + 200, Input::CaughtUp { height: 9 });
    assert!(out.iter().any(|e| matches!(e, Effect::Activate { .. })));
    let out = roles.handle(
        t + 300,
        Input::ActivationDone {
            service: ServiceRef::Contract(id),
            started_at: t + 250,
            replayed: 0,
        },
    );
    assert!(
        submitted(&out).is_empty(),
        "activation is on the ledger already"
    );
    let now = t + 300 + 1_000;
    let out = beat(&mut roles, id, now);
    let batch = one_batch(&out);
    assert_eq!(batch.intervals[0].from, (t + 250).max(held));
}

#[test]
fn staging_is_retried_with_backoff_then_given_up() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let mut roles = Roles::new(me, chain.now - 1, RolesConfig::default(), None);
    let (id, ev) = chain.register(Chain::standby().signed());
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let mut now = chain.now;
    let fail = Input::StageFailed {
        service: ServiceRef::Contract(id),
        error: "no provider of the block".into(),
        permanent: false,
    };
    for attempt in 1..STAGE_ATTEMPTS {
        let out = roles.handle(now, fail.clone());
        assert!(phases(&out).contains(&"migration-retry".to_string()));
        let due = now + STAGE_BACKOFF_MS * u64::from(attempt);
        assert!(out.contains(&Effect::WakeAt(due)) || roles.last_wake == Some(due));
        assert!(
            !roles
                .handle(due - 1, Input::Tick)
                .iter()
                .any(|e| matches!(e, Effect::Stage { .. }))
        );
        assert!(
            roles
                .handle(due, Input::Tick)
                .iter()
                .any(|e| matches!(e, Effect::Stage { .. }))
        );
        now = due;
    }
    let out = roles.handle(now, fail);
    assert!(phases(&out).contains(&"stage-failed".to_string()));
    // Called off while the provider still may (THREATS C6).
    assert_eq!(submitted(&out), vec![TxKind::Cancel(id)]);
    assert!(
        !roles
            .handle(now + 60_000, Input::Tick)
            .iter()
            .any(|e| matches!(e, Effect::Stage { .. }))
    );
}

#[test]
fn a_refused_transition_is_submitted_again_a_little_later() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let mut roles = Roles::new(me, chain.now - 1, RolesConfig::default(), None);
    let (id, ev) = chain.register(Chain::standby().signed());
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let now = chain.now;
    roles.handle(
        now,
        Input::Staged {
            service: ServiceRef::Contract(id),
            devices: DEVICES.to_vec(),
        },
    );
    let out = roles.handle(
        now,
        Input::Submitted {
            tx: TxKind::MarkMigrated(id),
            accepted: false,
        },
    );
    assert!(
        submitted(&out).is_empty(),
        "not at once: the driver may answer synchronously"
    );
    assert!(submitted(&roles.handle(now + REFUSED_RETRY_MS - 1, Input::Tick)).is_empty());
    assert_eq!(
        submitted(&roles.handle(now + REFUSED_RETRY_MS, Input::Tick)),
        vec![TxKind::MarkMigrated(id)]
    );
    // Admitted but never applied: asked again after RESUBMIT_MS.
    let t = now + REFUSED_RETRY_MS;
    assert!(submitted(&roles.handle(t + RESUBMIT_MS - 1, Input::Tick)).is_empty());
    assert_eq!(
        submitted(&roles.handle(t + RESUBMIT_MS, Input::Tick)),
        vec![TxKind::MarkMigrated(id)]
    );
}

#[test]
fn a_storage_provider_takes_custody_reports_activation_and_releases() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let mut roles = Roles::new(me, chain.now - 1, RolesConfig::default(), None);
    let signed = ContractBuilder::new(1, 2).storage().signed();
    let c = signed.contract.clone();
    let (id, ev) = chain.register(signed);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::TakeCustody {
        contract: id,
        file: c.service_image,
        commitment: c.config,
        max_bytes: c.terms.storage_bytes
    }));
    let out = roles.handle(chain.now, Input::CustodyTaken { contract: id });
    assert_eq!(submitted(&out), vec![TxKind::MarkMigrated(id)]);
    assert!(phases(&out).contains(&"stored".to_string()));
    let p = chain.provider.clone();
    chain.now += 100;
    let ev = chain.block(vec![(&p, TxKind::MarkMigrated(id))]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert_eq!(submitted(&out), vec![TxKind::MarkArmed(id)]);
    assert!(!out.iter().any(|e| matches!(e, Effect::Listen { .. })));
    chain.now += 100;
    let ev = chain.block(vec![(&p, TxKind::MarkArmed(id))]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    let report = TxKind::ReportActivation {
        contract: id,
        activated_at: chain.now,
    };
    assert_eq!(submitted(&out), vec![report.clone()]);
    assert!(!out.iter().any(|e| matches!(e, Effect::Activate { .. })));
    assert!(phases(&out).contains(&"activated".to_string()));
    let out = roles.handle(
        chain.now,
        Input::Submitted {
            tx: report.clone(),
            accepted: true,
        },
    );
    assert!(
        !phases(&out).contains(&"activated".to_string()),
        "once: {out:?}"
    );
    chain.now += 100;
    let ev = chain.block(vec![(&p, report)]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let cust = chain.customer.clone();
    chain.now += 1_000;
    let ev = chain.block(vec![(
        &cust,
        TxKind::Settle {
            contract: id,
            reason: SettleReason::CustomerBack,
        },
    )]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::ReleaseCustody {
        contract: id,
        file: c.service_image,
        commitment: c.config
    }));
}

#[test]
fn refused_custody_calls_the_contract_off() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let mut roles = Roles::new(me, chain.now - 1, RolesConfig::default(), None);
    let (id, ev) = chain.register(ContractBuilder::new(1, 2).storage().signed());
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let out = roles.handle(
        chain.now,
        Input::CustodyRefused {
            contract: id,
            error: "commitment does not describe the file".into(),
        },
    );
    assert_eq!(submitted(&out), vec![TxKind::Cancel(id)]);
    assert!(phases(&out).contains(&"custody-refused".to_string()));
}

/// Once armed, the ledger refuses a provider's cancel: a refused custody (a restart that
/// cannot fetch the file again) is recorded, and no doomed cancel is sent. Mutant caught:
/// `on_custody_refused` back on its own `Validated | Migrated | Armed` copy of the rule.
#[test]
fn refused_custody_of_an_armed_contract_sends_no_cancel() {
    let mut chain = Chain::new();
    let (mut roles, id) = armed_provider(&mut chain, ContractBuilder::new(1, 2).storage());
    assert_eq!(
        chain.ledger.contract(&id).unwrap().status,
        agora_contracts::lifecycle::ContractStatus::Armed
    );
    let out = roles.handle(
        chain.now,
        Input::CustodyRefused {
            contract: id,
            error: "file no longer served".into(),
        },
    );
    assert!(!submitted(&out).contains(&TxKind::Cancel(id)), "{out:?}");
    assert!(phases(&out).contains(&"custody-refused".to_string()));
}

/// The rule both the machine and the node's orchestrator follow when custody is refused: call
/// the contract off only while the ledger lets a provider (THREATS C15: validated or
/// migrated, never once armed). Mutants caught: `Armed` added to
/// `ContractStatus::provider_may_cancel` (the old copies' set), or `Migrated` dropped.
#[test]
fn custody_refusal_cancels_before_arming_only() {
    use crate::custody_refusal_cancels as cancels;
    use agora_contracts::lifecycle::ContractStatus as S;
    assert!(!cancels(S::Proposed));
    assert!(!cancels(S::Signed));
    assert!(cancels(S::Validated));
    assert!(cancels(S::Migrated));
    assert!(
        !cancels(S::Armed),
        "the ledger refuses a provider's cancel once armed"
    );
    assert!(!cancels(S::Active));
    assert!(!cancels(S::Completed));
    assert!(!cancels(S::Settled));
    assert!(!cancels(S::Breached));
    assert!(!cancels(S::Slashed));
    assert!(!cancels(S::Cancelled));
    assert!(!cancels(S::Expired));
}

/// The activation reports among `out`: (contract, activation time).
fn reports(out: &[Effect]) -> Vec<(ContractId, Timestamp)> {
    submitted(out)
        .into_iter()
        .filter_map(|tx| match tx {
            TxKind::ReportActivation {
                contract,
                activated_at,
            } => Some((contract, activated_at)),
            _ => None,
        })
        .collect()
}

/// THREATS C10 in the machine, on the orchestrator's timing: a storage contract's activation
/// report the ledger has not applied is sent again after `ACTIVATION_RESEND_MS` (3 s), not
/// `RESUBMIT_MS` (10 s), with the time first reported (as the orchestrator's
/// `resend_storage_activations`), and the timeline says "activated" once. Mutants caught:
/// `Step::resend_ms` giving `RESUBMIT_MS` for `Activation`, or `ACTIVATION_RESEND_MS` set to
/// 10 s; `activate` leaving a storage host's `run` idle (each resend at its own time, and
/// another "activated" note each time).
#[test]
fn a_storage_activation_report_is_sent_again_after_3_s_not_10() {
    let mut chain = Chain::new();
    let (mut roles, id) = armed_provider(&mut chain, ContractBuilder::new(1, 2).storage());
    // Reported on the arming block, at `chain.now`; that report never reaches the ledger.
    // The times are literal: a resend constant set back to 10 s must fail here.
    let sent = chain.now;
    assert!(reports(&roles.handle(sent + 2_999, Input::Tick)).is_empty());
    let out = roles.handle(sent + 3_000, Input::Tick);
    assert_eq!(
        reports(&out),
        vec![(id, sent)],
        "sent again 3 s after the first, with its time"
    );
    assert!(!phases(&out).contains(&"activated".to_string()), "{out:?}");
    assert_eq!(
        reports(&roles.handle(sent + 6_000, Input::Tick)),
        vec![(id, sent)]
    );
}

/// THREATS C10 in the machine for a hosted (standby) contract, as the orchestrator's
/// `resend_activation_reports` does: the report is sent again every 3 s with the time first
/// reported, a little later when refused, and no more once the ledger shows the activation.
/// Mutants caught: the `report_activation_again` call in `advance` removed (the model sent a
/// hosted report once only), or its `since` replaced by `now`.
#[test]
fn a_hosted_activation_report_is_sent_again_with_its_first_time_until_applied() {
    let mut chain = Chain::new();
    let me = chain.provider.node_id();
    let (mut roles, id) = due_to_start(&mut chain, Chain::standby());
    let started = chain.now + 10;
    let out = roles.handle(
        started,
        Input::ActivationDone {
            service: ServiceRef::Contract(id),
            started_at: started,
            replayed: 0,
        },
    );
    assert_eq!(reports(&out), vec![(id, started)]);
    // Admitted, then refused in its block (stamped behind this clock): not on the ledger.
    let again = started + 3_000;
    assert!(reports(&roles.handle(again - 1, Input::Tick)).is_empty());
    assert_eq!(
        reports(&roles.handle(again, Input::Tick)),
        vec![(id, started)],
        "sent again 3 s later, with the time first reported"
    );
    // Refused by the mempool: a little later again.
    let report = TxKind::ReportActivation {
        contract: id,
        activated_at: started,
    };
    let out = roles.handle(
        again,
        Input::Submitted {
            tx: report.clone(),
            accepted: false,
        },
    );
    assert!(reports(&out).is_empty(), "not at once");
    assert_eq!(
        reports(&roles.handle(again + REFUSED_RETRY_MS, Input::Tick)),
        vec![(id, started)]
    );
    // On the ledger: never again.
    let p = chain.provider.clone();
    chain.now = again + REFUSED_RETRY_MS + 100;
    let ev = chain.block(vec![(&p, report)]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(reports(&roles.handle(chain.now + 60_000, Input::Tick)).is_empty());
}

#[test]
fn a_failed_start_is_retried_only_while_it_still_counts() {
    let mut chain = Chain::new();
    let (mut roles, id) = due_to_start(&mut chain, Chain::standby());
    let fail = Input::ActivationFailed {
        service: ServiceRef::Contract(id),
        error: "out of memory".into(),
    };
    let out = roles.handle(chain.now, fail.clone());
    assert!(phases(&out).contains(&"activation-failed".to_string()));
    let retry = chain.now + ACTIVATION_RETRY_MS;
    assert!(
        !roles
            .handle(retry - 1, Input::Tick)
            .iter()
            .any(|e| matches!(e, Effect::Activate { .. }))
    );
    assert!(
        roles
            .handle(retry, Input::Tick)
            .iter()
            .any(|e| matches!(e, Effect::Activate { .. }))
    );
    // Past the deadline (5 s after the trigger) a retry is pointless.
    let late = chain.now + 4_800;
    roles.handle(late, fail);
    assert!(
        !roles
            .handle(late + 10_000, Input::Tick)
            .iter()
            .any(|e| matches!(e, Effect::Activate { .. }))
    );
}

#[test]
fn the_provider_settles_when_the_term_ends() {
    let mut chain = Chain::new();
    let b = ContractBuilder::new(1, 2).duration(10_000).qos(Qos {
        max_activation_delay_ms: 5_000,
        min_uptime_permille: 0,
        heartbeat_interval_ms: 1_000,
    });
    let (mut roles, id, _) = active(&mut chain, b);
    let end = chain.ledger.contract(&id).unwrap().window_end().unwrap();
    assert!(
        !submitted(&roles.handle(end - 1, Input::Tick))
            .iter()
            .any(|t| matches!(t, TxKind::Settle { .. }))
    );
    let settle = TxKind::Settle {
        contract: id,
        reason: SettleReason::DurationEnded,
    };
    assert!(submitted(&roles.handle(end, Input::Tick)).contains(&settle));
    // Not again before SETTLE_RETRY_MS.
    assert!(!submitted(&roles.handle(end + SETTLE_RETRY_MS - 1, Input::Tick)).contains(&settle));
    assert!(submitted(&roles.handle(end + SETTLE_RETRY_MS, Input::Tick)).contains(&settle));
}

/// THREATS A6 at the start (found by `tests/tests/e2e/attack_block_time.rs`): a service that
/// started at 5.5 s by the provider's clock, whose activation the ledger dated 5 s (the report
/// landed in a block stamped behind that clock), reports its first batch from 5 s; not when
/// the difference is more than the ledger's skew, once a batch is on the ledger, or when the
/// floor is a later stop.
#[test]
fn the_first_batch_starts_at_the_activation_the_ledger_recorded() {
    use crate::first_uptime_from;
    assert_eq!(
        first_uptime_from(5_500, Some(5_500), None, Some(5_000)),
        5_000
    );
    assert_eq!(
        first_uptime_from(5_500, Some(5_500), None, Some(5_500)),
        5_500
    );
    assert_eq!(
        first_uptime_from(9_000, Some(9_000), None, Some(5_000)),
        9_000,
        "a restart long after the activation claims nothing before it"
    );
    assert_eq!(
        first_uptime_from(5_500, Some(5_500), Some(7_000), Some(5_000)),
        7_000
    );
    assert_eq!(
        first_uptime_from(6_000, Some(5_500), None, Some(5_000)),
        6_000,
        "seen stopped at 6 s"
    );
    assert_eq!(first_uptime_from(5_500, None, None, None), 5_500);
}

/// THREATS C26: the set of reported proofs follows the radio's bounded history instead of
/// growing for the contract's life, and still reports every proof once.
#[test]
fn reported_proofs_never_outgrow_what_the_radio_offers() {
    const HISTORY: u64 = 64;
    let mut reported = std::collections::BTreeSet::new();
    let mut sent = Vec::new();
    for beat in 0..1_000u64 {
        // Each heartbeat the radio made 16 new proofs and keeps its last 64.
        let newest = (beat + 1) * 16;
        let offered: Vec<u64> = (newest.saturating_sub(HISTORY)..newest).collect();
        let fresh = crate::fresh_proofs(&mut reported, &offered, PROOFS_PER_HEARTBEAT);
        reported.extend(fresh.iter().copied());
        sent.extend(fresh);
        assert!(
            reported.len() as u64 <= HISTORY,
            "{} at beat {beat}",
            reported.len()
        );
    }
    assert_eq!(
        sent,
        (0..16_000).collect::<Vec<u64>>(),
        "each proof once, in order"
    );
}
