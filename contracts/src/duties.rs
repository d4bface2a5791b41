//! What this node must do next, derived from ledger events: the bridge from ledger facts to the
//! node's actions (fetch images, arm, start a service, probe a customer). Pure: the node's
//! driver calls [`duties_for`] after each applied block and carries the duties out.

use agora_market::{NodeId, Timestamp};
use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::contract::{ActivationClause, Contract, ContractId, ContractKind};
use crate::ledger::{Ledger, LedgerEvent, MIN_EVIDENCE_PERIOD_MS};
use crate::lifecycle::ContractStatus;

/// One action the local node owes the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Duty {
    /// Provider: fetch the service image and config, then send `MarkMigrated`.
    Migrate {
        /// The contract.
        contract: ContractId,
        /// Service image CID.
        image: Cid,
        /// Config CID.
        config: Cid,
    },
    /// Provider: prepare the service (compile, reserve resources), then send `MarkArmed`.
    Arm {
        /// The contract.
        contract: ContractId,
    },
    /// Provider: start the service at `not_before` (or now if past) and send
    /// `ReportActivation` before `deadline`; then send heartbeats every `heartbeat_interval_ms`.
    Activate {
        /// The contract.
        contract: ContractId,
        /// Service image CID.
        image: Cid,
        /// Config CID.
        config: Cid,
        /// Do not start before this time.
        not_before: Timestamp,
        /// Activation later than this is a breach.
        deadline: Timestamp,
        /// Heartbeat period once running.
        heartbeat_interval_ms: u64,
    },
    /// Provider: the contract closed; stop the service and release its resources.
    Stop {
        /// The contract.
        contract: ContractId,
    },
    /// Arbitrator: probe `subject` and attest its liveness while the contract is open.
    Watch {
        /// The standby contract.
        contract: ContractId,
        /// The customer to probe.
        subject: NodeId,
    },
    /// Arbitrator: stop probing for this contract.
    Unwatch {
        /// The contract.
        contract: ContractId,
        /// The customer no longer to probe for it.
        subject: NodeId,
    },
    /// Arbitrator: challenge the provider of an active storage contract every `every_ms` to
    /// prove it still holds `file` (checked against the customer's `commitment` block), and
    /// record each outcome (`StorageProofResult`).
    Audit {
        /// The storage contract.
        contract: ContractId,
        /// Who must answer.
        provider: NodeId,
        /// The stored content (the contract's `service_image`).
        file: Cid,
        /// The chunk commitment block (the contract's `config`).
        commitment: Cid,
        /// How often to challenge.
        every_ms: u64,
    },
    /// Arbitrator: the storage contract closed; stop challenging.
    EndAudit {
        /// The contract.
        contract: ContractId,
    },
    /// Arbitrator: probe the provider's running service of an active hosted or standby
    /// contract once per probe interval of `every_ms` and report each outcome with
    /// `TxKind::ProbeResult { contract, interval: rec.evidence_round(probe_time), up }`, within
    /// `quorum_report_grace_ms` of the interval's end. Payment follows the intervals a quorum
    /// of the committee confirmed up.
    Probe {
        /// The contract.
        contract: ContractId,
        /// Whose service to probe.
        provider: NodeId,
        /// The probe interval (the contract's heartbeat interval, at least
        /// [`MIN_EVIDENCE_PERIOD_MS`]).
        every_ms: u64,
    },
    /// Arbitrator: the probed contract is no longer active; stop probing.
    EndProbe {
        /// The contract.
        contract: ContractId,
    },
}

/// Shortest period between two challenges of one storage contract by one arbitrator: each
/// outcome is a ledger transaction. Challenge once per audit round and report it with
/// `TxKind::StorageProofResult { round: rec.evidence_round(challenge_time), .. }`.
pub const MIN_AUDIT_PERIOD_MS: u64 = MIN_EVIDENCE_PERIOD_MS;

/// The audit an arbitrator owes an active storage contract `id`.
pub fn audit_duty(id: ContractId, c: &Contract) -> Duty {
    Duty::Audit {
        contract: id,
        provider: c.provider,
        file: c.service_image,
        commitment: c.config,
        every_ms: c.qos.heartbeat_interval_ms.max(MIN_AUDIT_PERIOD_MS),
    }
}

/// The probing an arbitrator owes an active hosted or standby contract `id` (for recovery
/// after a restart: `duties_for` hands it out when the contract becomes active).
pub fn probe_duty(id: ContractId, c: &Contract) -> Option<Duty> {
    matches!(c.kind, ContractKind::Hosted | ContractKind::Standby).then(|| Duty::Probe {
        contract: id,
        provider: c.provider,
        every_ms: c.qos.heartbeat_interval_ms.max(MIN_EVIDENCE_PERIOD_MS),
    })
}

/// The duties `me` gets from `events`, looking contract details up in `ledger` (the state after
/// those events were applied).
pub fn duties_for(me: NodeId, ledger: &Ledger, events: &[LedgerEvent]) -> Vec<Duty> {
    let mut out = Vec::new();
    for event in events {
        let contract = match event {
            LedgerEvent::StatusChanged { contract, .. }
            | LedgerEvent::HandoverAttested { contract, .. } => *contract,
            _ => continue,
        };
        let Some(rec) = ledger.contract(&contract) else {
            continue;
        };
        let c = &rec.contract;
        let provider = c.provider == me;
        let arbitrator = c.committee.contains(&me);
        let standby = c.kind == ContractKind::Standby;
        let storage = c.kind == ContractKind::Storage;
        let activate = |not_before: Timestamp| Duty::Activate {
            contract,
            image: c.service_image,
            config: c.config,
            not_before,
            deadline: not_before.saturating_add(c.qos.max_activation_delay_ms),
            heartbeat_interval_ms: c.qos.heartbeat_interval_ms,
        };
        match event {
            LedgerEvent::HandoverAttested { at, .. } if provider => out.push(activate(*at)),
            LedgerEvent::StatusChanged { from, to, .. } => match to {
                ContractStatus::Validated if provider => out.push(Duty::Migrate {
                    contract,
                    image: c.service_image,
                    config: c.config,
                }),
                ContractStatus::Validated if arbitrator && standby => out.push(Duty::Watch {
                    contract,
                    subject: c.customer,
                }),
                ContractStatus::Migrated if provider => out.push(Duty::Arm { contract }),
                ContractStatus::Active if arbitrator && storage => {
                    out.push(audit_duty(contract, c))
                }
                ContractStatus::Active if arbitrator => out.extend(probe_duty(contract, c)),
                ContractStatus::Armed if provider => match (c.activation, rec.trigger_at) {
                    (ActivationClause::Immediately, Some(t))
                    | (ActivationClause::At(_), Some(t)) => out.push(activate(t)),
                    _ => {}
                },
                s if s.is_final()
                    || *s == ContractStatus::Completed
                    || *s == ContractStatus::Breached =>
                {
                    if provider && matches!(from, ContractStatus::Active) {
                        out.push(Duty::Stop { contract });
                    }
                    if arbitrator && standby && s.is_final() {
                        out.push(Duty::Unwatch {
                            contract,
                            subject: c.customer,
                        });
                    }
                    if arbitrator && storage && matches!(from, ContractStatus::Active) {
                        out.push(Duty::EndAudit { contract });
                    }
                    if arbitrator && !storage && matches!(from, ContractStatus::Active) {
                        out.push(Duty::EndProbe { contract });
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use agora_market::Signer;

    use super::*;
    use crate::attestation::Liveness;
    use crate::ledger::tests::Harness;
    use crate::ledger::{SettleReason, TxKind};
    use crate::test_utils::ContractBuilder;

    #[test]
    fn standby_flow_yields_provider_and_arbitrator_duties() {
        let mut h = Harness::new();
        let (c, p) = (h.customer(), h.provider());
        let arb = h.committee[0].node_id();
        let signed = ContractBuilder::new(1, 2).standby(1_000).signed();
        let ev = h.ok(&c, TxKind::RegisterContract(Box::new(signed.clone())));
        let id = signed.contract.id().unwrap();
        assert!(matches!(
            duties_for(p.node_id(), &h.ledger, &ev).as_slice(),
            [Duty::Migrate { .. }]
        ));
        assert_eq!(
            duties_for(arb, &h.ledger, &ev),
            vec![Duty::Watch {
                contract: id,
                subject: c.node_id()
            }]
        );
        assert!(duties_for(c.node_id(), &h.ledger, &ev).is_empty());
        let ev = h.ok(&p, TxKind::MarkMigrated(id));
        assert_eq!(
            duties_for(p.node_id(), &h.ledger, &ev),
            vec![Duty::Arm { contract: id }]
        );
        let ev = h.ok(&p, TxKind::MarkArmed(id));
        assert!(duties_for(p.node_id(), &h.ledger, &ev).is_empty());
        h.now = 5_000;
        let mut ev = Vec::new();
        for a in 0..3 {
            ev.extend(h.attest(a, Liveness::Unreachable { since: 1_000 }));
        }
        let duties = duties_for(p.node_id(), &h.ledger, &ev);
        assert!(matches!(
            duties.as_slice(),
            [Duty::Activate {
                not_before: 5_000,
                deadline: 10_000,
                ..
            }]
        ));
        h.ok(
            &p,
            TxKind::ReportActivation {
                contract: id,
                activated_at: 5_000,
            },
        );
        h.now = 6_000;
        h.ok(
            &c,
            TxKind::Settle {
                contract: id,
                reason: SettleReason::CustomerBack,
            },
        );
        // Settled once the committee's probes of the service up to 6_000 are in.
        h.now = 7_000;
        let ev = h.probe(id, 0, true, 0..3);
        assert!(duties_for(p.node_id(), &h.ledger, &ev).contains(&Duty::Stop { contract: id }));
        assert!(duties_for(arb, &h.ledger, &ev).contains(&Duty::Unwatch {
            contract: id,
            subject: c.node_id()
        }));
    }

    #[test]
    fn storage_contract_is_audited_by_arbitrators_while_active() {
        let mut h = Harness::new();
        let (c, p) = (h.customer(), h.provider());
        let arb = h.committee[0].node_id();
        let signed = ContractBuilder::new(1, 2).storage().signed();
        let id = h.register(signed.clone());
        h.ok(&p, TxKind::MarkMigrated(id));
        h.ok(&p, TxKind::MarkArmed(id));
        let ev = h.ok(
            &p,
            TxKind::ReportActivation {
                contract: id,
                activated_at: 1_000,
            },
        );
        let duties = duties_for(arb, &h.ledger, &ev);
        assert_eq!(
            duties,
            vec![Duty::Audit {
                contract: id,
                provider: p.node_id(),
                file: signed.contract.service_image,
                commitment: signed.contract.config,
                every_ms: signed
                    .contract
                    .qos
                    .heartbeat_interval_ms
                    .max(MIN_AUDIT_PERIOD_MS),
            }]
        );
        // Parties do not audit.
        assert!(duties_for(c.node_id(), &h.ledger, &ev).is_empty());
        h.now = 2_000;
        let ev = h.ok(
            &c,
            TxKind::Settle {
                contract: id,
                reason: SettleReason::CustomerBack,
            },
        );
        assert!(duties_for(arb, &h.ledger, &ev).contains(&Duty::EndAudit { contract: id }));
        assert!(duties_for(p.node_id(), &h.ledger, &ev).contains(&Duty::Stop { contract: id }));
    }

    #[test]
    fn arbitrators_probe_hosted_and_standby_services_while_active() {
        let mut h = Harness::new();
        let p = h.provider();
        let arb = h.committee[0].node_id();
        let c = h.customer();
        for (nonce, builder) in [
            (0, ContractBuilder::new(1, 2)),
            (1, ContractBuilder::new(1, 2).standby(1_000)),
        ] {
            let signed = builder.nonce(nonce).signed();
            let id = h.armed(signed.clone());
            if signed.contract.kind == ContractKind::Standby {
                h.now += 2_000;
                for a in 0..3 {
                    h.attest(a, Liveness::Unreachable { since: 1_000 });
                }
            }
            let at = h.now;
            let ev = h.ok(
                &p,
                TxKind::ReportActivation {
                    contract: id,
                    activated_at: at,
                },
            );
            let expected = Duty::Probe {
                contract: id,
                provider: p.node_id(),
                every_ms: MIN_EVIDENCE_PERIOD_MS,
            };
            assert_eq!(duties_for(arb, &h.ledger, &ev), vec![expected.clone()]);
            let rec = h.ledger.contract(&id).unwrap();
            assert_eq!(probe_duty(id, &rec.contract), Some(expected));
            // Neither party probes.
            assert!(
                !duties_for(c.node_id(), &h.ledger, &ev)
                    .iter()
                    .any(|d| matches!(d, Duty::Probe { .. }))
            );
            h.probed_until(id, at + 2_000, true);
            let batch = crate::ledger::HeartbeatBatch {
                intervals: vec![crate::ledger::UptimeInterval {
                    from: at,
                    to: at + 2_000,
                }],
                readings_processed: 0,
                data_proofs: Vec::new(),
            };
            h.ok(
                &p,
                TxKind::Heartbeats {
                    contract: id,
                    batch,
                },
            );
            let ev = h.ok(
                &c,
                TxKind::Settle {
                    contract: id,
                    reason: SettleReason::CustomerBack,
                },
            );
            assert!(
                duties_for(arb, &h.ledger, &ev).contains(&Duty::EndProbe { contract: id }),
                "{ev:?}"
            );
        }
        // Storage contracts are audited, not probed.
        let storage = ContractBuilder::new(1, 2).storage().nonce(9).build();
        assert_eq!(probe_duty(storage.id().unwrap(), &storage), None);
    }

    #[test]
    fn immediate_contract_is_activated_on_arming() {
        let mut h = Harness::new();
        let p = h.provider();
        let id = h.register(ContractBuilder::new(1, 2).signed());
        h.ok(&p, TxKind::MarkMigrated(id));
        let ev = h.ok(&p, TxKind::MarkArmed(id));
        assert!(matches!(
            duties_for(p.node_id(), &h.ledger, &ev).as_slice(),
            [Duty::Activate {
                not_before: 1_000,
                deadline: 6_000,
                ..
            }]
        ));
    }
}
