//! Arbitrator: challenge the provider of every active storage contract this node judges
//! ([`Duty::Audit`]) once per audit round, and report each verdict with the round of its
//! challenge (`StorageProofResult`); a round counts once a quorum of the committee agrees.

use agora_market::{NodeId, Timestamp};
use cid::Cid;

use super::{Arbitrator, drop_inactive, may_blame};
use crate::View;
use crate::io::{AuditVerdict, Effect, Note};
use agora_contracts::contract::{ContractId, ContractKind};
use agora_contracts::duties::{Duty, audit_duty};
use agora_contracts::ledger::TxKind;
use agora_contracts::lifecycle::ContractStatus;

/// A storage contract this node challenges.
#[derive(Clone, Debug)]
pub(super) struct Audit {
    provider: NodeId,
    file: Cid,
    commitment: Cid,
    /// The next challenge: its round and when.
    next: Option<(u64, Timestamp)>,
    /// The challenge out and not answered: the round it observes.
    running: Option<u64>,
    /// The verdict submitted and not yet answered, for the timeline.
    pub(super) reporting: Option<String>,
}

impl Audit {
    /// When the next challenge is due (none while one is out).
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.running.is_none().then_some(self.next?.1)
    }
}

impl Arbitrator {
    /// Starts auditing the active storage contracts of this node's committees; ends the audits
    /// of contracts no longer active.
    pub(super) fn reconcile_audits(&mut self, v: &View, out: &mut Vec<Effect>) {
        let observer = self.observer(v);
        for (id, r) in v.records {
            let c = &r.contract;
            let wanted = c.kind == ContractKind::Storage
                && c.committee.contains(&v.me)
                && r.status == ContractStatus::Active;
            if !wanted || self.audits.contains_key(id) {
                continue;
            }
            let Duty::Audit {
                provider,
                file,
                commitment,
                every_ms,
                ..
            } = audit_duty(*id, c)
            else {
                continue;
            };
            self.audits.insert(
                *id,
                Audit {
                    provider,
                    file,
                    commitment,
                    next: observer.next(id, r, 0, v.now),
                    running: None,
                    reporting: None,
                },
            );
            out.push(Effect::Timeline(Note::new(
                "auditing",
                Some(*id),
                format!(
                    "challenging {} for {file} once every {every_ms} ms round",
                    provider.short()
                ),
            )));
        }
        drop_inactive(&mut self.audits, v, "audit-ended", "contract closed", out);
    }

    /// Challenges the providers whose moment came, from a current ledger view.
    pub(super) fn challenge_due(&mut self, v: &View, out: &mut Vec<Effect>) {
        if !v.synced {
            return;
        }
        for (id, a) in self.audits.iter_mut() {
            let Some((_, at)) = a.next else {
                continue;
            };
            if a.running.is_some() || v.now < at {
                continue;
            }
            a.next = None;
            // The round of the challenge time, whatever was planned (a late tick).
            let Some(round) = v.records.get(id).and_then(|r| r.evidence_round(v.now)) else {
                continue;
            };
            a.running = Some(round);
            out.push(Effect::Challenge {
                contract: *id,
                provider: a.provider,
                file: a.file,
                commitment: a.commitment,
            });
        }
    }

    pub(super) fn on_audit_answer(
        &mut self,
        v: &View,
        contract: ContractId,
        verdict: &AuditVerdict,
        out: &mut Vec<Effect>,
    ) {
        let observer = self.observer(v);
        let Some(a) = self.audits.get_mut(&contract) else {
            return; // ended meanwhile
        };
        let Some(round) = a.running.take() else {
            return; // not asked (a repeated answer)
        };
        a.next = v
            .records
            .get(&contract)
            .and_then(|r| observer.next(&contract, r, round.saturating_add(1), v.now));
        let passed = match verdict {
            AuditVerdict::Unjudged(why) => {
                out.push(Effect::Timeline(Note::new(
                    "audit-skipped",
                    Some(contract),
                    why.clone(),
                )));
                return;
            }
            AuditVerdict::Failed(why) if !may_blame(v) => {
                out.push(Effect::Timeline(Note::new(
                    "audit-skipped",
                    Some(contract),
                    format!(
                        "failed ({why}), but this node's ledger view is stale: it may be the one \
                         cut off"
                    ),
                )));
                return;
            }
            AuditVerdict::Passed => {
                a.reporting = Some(format!("round {round} passed"));
                true
            }
            AuditVerdict::Failed(why) => {
                a.reporting = Some(format!("round {round} failed: {why}"));
                false
            }
        };
        out.push(Effect::Submit(TxKind::StorageProofResult {
            contract,
            round,
            challenge: a.file,
            passed,
        }));
    }
}
