//! Arbitrator rules: watching, attesting, re-attesting, auditing.

use super::*;
use crate::contract::Qos;
use crate::duties::MIN_AUDIT_PERIOD_MS;
use crate::ledger::SettleReason;

fn arbitrator(chain: &Chain) -> (Roles, NodeId) {
    let me = chain.committee[0].node_id();
    (
        Roles::new(me, chain.now - 1, RolesConfig::default(), None),
        me,
    )
}

#[test]
fn the_customer_of_a_standby_is_watched_until_the_contract_closes() {
    let mut chain = Chain::new();
    let (mut roles, me) = arbitrator(&chain);
    let customer = chain.customer.node_id();
    let (id, ev) = chain.register(Chain::standby().signed());
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::Watch(customer)));
    assert!(phases(&out).contains(&"watching".to_string()));
    // A second contract on the same customer: no second network watch.
    let (_, ev) = chain.register(Chain::standby().nonce(1).signed());
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(!out.contains(&Effect::Watch(customer)));
    let c = chain.customer.clone();
    chain.now += 100;
    let ev = chain.block(vec![(&c, TxKind::Cancel(id))]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(
        !out.contains(&Effect::Unwatch(customer)),
        "the other still needs it"
    );
    let other = *chain.ledger.contracts().keys().find(|k| **k != id).unwrap();
    chain.now += 100;
    let ev = chain.block(vec![(&c, TxKind::Cancel(other))]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::Unwatch(customer)));
}

#[test]
fn a_down_customer_is_attested_at_once_and_again_past_the_threshold() {
    let mut chain = Chain::new();
    let (mut roles, me) = arbitrator(&chain);
    let customer = chain.customer.node_id();
    let (_, ev) = chain.register(Chain::standby().signed());
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let last_seen = chain.now + 100;
    let now = last_seen + PRESENCE_TIMEOUT_MS / 2;
    let out = roles.handle(
        now,
        Input::Presence(Presence::Down {
            node: customer,
            last_seen,
        }),
    );
    let down = TxKind::Attest {
        subject: customer,
        liveness: Liveness::Unreachable { since: last_seen },
    };
    assert_eq!(submitted(&out), vec![down.clone()]);
    // The handover rule needs `since + 1 000` at block time, and that block may be stamped up
    // to CLOCK_MARGIN_MS behind this node's clock.
    let due = last_seen + 1_000 + CLOCK_MARGIN_MS;
    assert!(out.contains(&Effect::WakeAt(due)));
    assert!(submitted(&roles.handle(due - 1, Input::Tick)).is_empty());
    assert_eq!(submitted(&roles.handle(due, Input::Tick)), vec![down]);
    assert!(submitted(&roles.handle(due + 5_000, Input::Tick)).is_empty());
    let out = roles.handle(
        due + 6_000,
        Input::Presence(Presence::Up { node: customer }),
    );
    assert_eq!(
        submitted(&out),
        vec![TxKind::Attest {
            subject: customer,
            liveness: Liveness::Reachable
        }]
    );
    // Only watched nodes are attested.
    let stranger = chain.provider.node_id();
    assert!(
        submitted(&roles.handle(
            due + 7_000,
            Input::Presence(Presence::Down {
                node: stranger,
                last_seen: due
            })
        ))
        .is_empty()
    );
}

#[test]
fn the_watch_threshold_is_the_shortest_outage_of_the_open_contracts() {
    let mut chain = Chain::new();
    let (mut roles, me) = arbitrator(&chain);
    let customer = chain.customer.node_id();
    let (short, ev) = chain.register(
        ContractBuilder::new(1, 2)
            .standby(500)
            .duration(600_000)
            .signed(),
    );
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let (_, ev) = chain.register(Chain::standby().nonce(3).signed());
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let seen = chain.now;
    let out = roles.handle(
        seen + 10,
        Input::Presence(Presence::Down {
            node: customer,
            last_seen: seen,
        }),
    );
    assert!(out.contains(&Effect::WakeAt(seen + 500 + CLOCK_MARGIN_MS)));
    roles.handle(seen + 20, Input::Presence(Presence::Up { node: customer }));
    // The short one closes: the threshold is the remaining contract's.
    let c = chain.customer.clone();
    chain.now += 100;
    let ev = chain.block(vec![(&c, TxKind::Cancel(short))]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let seen = chain.now;
    let out = roles.handle(
        seen + 10,
        Input::Presence(Presence::Down {
            node: customer,
            last_seen: seen,
        }),
    );
    assert!(out.contains(&Effect::WakeAt(seen + 1_000 + CLOCK_MARGIN_MS)));
}

#[test]
fn active_storage_contracts_are_challenged_and_verdicts_reported() {
    let mut chain = Chain::new();
    let (mut roles, me) = arbitrator(&chain);
    let signed = ContractBuilder::new(1, 2)
        .storage()
        .qos(Qos {
            max_activation_delay_ms: 5_000,
            min_uptime_permille: 500,
            heartbeat_interval_ms: 100,
        })
        .signed();
    let c = signed.contract.clone();
    let (id, ev) = chain.register(signed);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let p = chain.provider.clone();
    chain.now += 100;
    chain.block(vec![(&p, TxKind::MarkMigrated(id))]);
    chain.block_at_next(&p, TxKind::MarkArmed(id));
    let t = chain.now;
    let ev = chain.block_at_next(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: t,
        },
    );
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(phases(&out).contains(&"auditing".to_string()));
    let every = MIN_AUDIT_PERIOD_MS;
    assert!(
        !roles
            .handle(chain.now + every - 1, Input::Tick)
            .iter()
            .any(|e| matches!(e, Effect::Challenge { .. }))
    );
    let out = roles.handle(chain.now + every, Input::Tick);
    assert!(out.contains(&Effect::Challenge {
        contract: id,
        provider: c.provider,
        file: c.service_image,
        commitment: c.config
    }));
    // One challenge at a time.
    assert!(
        !roles
            .handle(chain.now + 3 * every, Input::Tick)
            .iter()
            .any(|e| matches!(e, Effect::Challenge { .. }))
    );
    let t = chain.now + 3 * every;
    let out = roles.handle(
        t,
        Input::AuditAnswer {
            contract: id,
            verdict: AuditVerdict::Failed("wrong chunk".into()),
        },
    );
    let result = TxKind::StorageProofResult {
        contract: id,
        challenge: c.service_image,
        passed: false,
    };
    assert_eq!(submitted(&out), vec![result.clone()]);
    let out = roles.handle(
        t,
        Input::Submitted {
            tx: result,
            accepted: true,
        },
    );
    assert!(phases(&out).contains(&"storage-challenge".to_string()));
    // Could not judge: nothing reported.
    roles.handle(t + every, Input::Tick);
    let out = roles.handle(
        t + every,
        Input::AuditAnswer {
            contract: id,
            verdict: AuditVerdict::Unjudged("commitment unreachable".into()),
        },
    );
    assert!(submitted(&out).is_empty());
    assert!(phases(&out).contains(&"audit-skipped".to_string()));
    // The contract closes: the audit ends.
    let cust = chain.customer.clone();
    let ev = chain.block_at_next(
        &cust,
        TxKind::Settle {
            contract: id,
            reason: SettleReason::CustomerBack,
        },
    );
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(phases(&out).contains(&"audit-ended".to_string()));
}

impl Chain {
    /// One transaction in a block 100 ms later.
    fn block_at_next(&mut self, s: &KeySigner, kind: TxKind) -> Vec<LedgerEvent> {
        self.now += 100;
        self.block(vec![(s, kind)])
    }
}
