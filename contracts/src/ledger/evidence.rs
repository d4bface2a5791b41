//! Evidence handlers: arbitrator attestations (and the handover rule), activation reports and
//! heartbeat / metering batches. The committee's per-round reports (probes, storage audits)
//! are in `reports.rs`.

use std::collections::BTreeMap;

use agora_market::{NodeId, Timestamp};
use tracing::info;

use super::{HeartbeatBatch, Ledger, LedgerError, LedgerEvent};
use crate::attestation::{self, Liveness, Observation};
use crate::contract::{ActivationClause, ContractId};
use crate::lifecycle::{ContractStatus, LifecycleEvent};

/// How far an uptime interval may end after the block time (clock skew, block latency); the
/// part after the block time is not counted.
pub const MAX_CLOCK_SKEW_MS: u64 = 2_000;

fn invalid(reason: impl Into<String>, now: Timestamp) -> LedgerError {
    LedgerError::InvalidEvidence {
        reason: reason.into(),
        now,
    }
}

impl Ledger {
    pub(super) fn attest(
        &mut self,
        now: Timestamp,
        attester: NodeId,
        subject: NodeId,
        liveness: Liveness,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        if !self.committee.contains(&attester) {
            return Err(LedgerError::NotCommitteeMember { attester });
        }
        self.require_unslashed(attester)?;
        // Only about a party of a contract this arbitrator judges (still in the state: closed
        // ones are forgotten an hour after they close): an observation of anyone else is read
        // by no rule, and one arbitrator could grow the state without bound with ever-new
        // subjects (THREATS A9). A closed contract's parties stay attestable for that hour:
        // an arbitrator reports a customer back after its contract settled.
        let judged = self.contracts.values().any(|r| {
            r.contract.committee.contains(&attester)
                && (r.contract.customer == subject || r.contract.provider == subject)
        });
        if !judged {
            return Err(invalid(
                format!(
                    "{} is no party of a contract {} judges",
                    subject.short(),
                    attester.short()
                ),
                now,
            ));
        }
        if let Liveness::Unreachable { since } = liveness
            && since > now
        {
            return Err(invalid(
                format!("unreachable since {since} lies in the future"),
                now,
            ));
        }
        self.liveness.entry(subject).or_default().insert(
            attester,
            Observation {
                liveness,
                recorded_at: now,
            },
        );
        let mut events = vec![LedgerEvent::AttestationRecorded {
            attester,
            subject,
            unreachable: matches!(liveness, Liveness::Unreachable { .. }),
        }];
        let waiting: Vec<ContractId> = self
            .contracts
            .iter()
            .filter(|(_, r)| r.contract.customer == subject && Self::awaits_handover(r))
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            events.extend(self.evaluate_handover(now, id));
        }
        Ok(events)
    }

    /// The liveness observations of `subject` recorded at or after `from` (a contract's
    /// registration). An older one speaks of a time before the contract: its committee may
    /// have stopped watching the subject since (its last contract closed) without ever
    /// attesting it back, so a stale `Unreachable` would hand a new standby over at once while
    /// its customer is up (THREATS C18). A subject down when its contract is registered is
    /// attested again by the members that start watching it.
    pub(super) fn observations_since(
        &self,
        subject: NodeId,
        from: Timestamp,
    ) -> BTreeMap<NodeId, Observation> {
        self.liveness
            .get(&subject)
            .map(|obs| {
                obs.iter()
                    .filter(|(_, o)| o.recorded_at >= from)
                    .map(|(m, o)| (*m, *o))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Applies the handover rule to one contract; records and reports a positive decision.
    pub(super) fn evaluate_handover(
        &mut self,
        now: Timestamp,
        id: ContractId,
    ) -> Option<LedgerEvent> {
        let rec = self.contracts.get(&id)?;
        if !Self::awaits_handover(rec) {
            return None;
        }
        let ActivationClause::OnHandover { unreachable_for_ms } = rec.contract.activation else {
            return None;
        };
        // No handover the provider could not start before the coverage window ends (the host
        // refuses a service past its window, and the standby would be settled
        // `NoActivation`): near its end, the window simply runs out (THREATS C11).
        if rec
            .window_end()
            .is_some_and(|end| now.saturating_add(rec.contract.qos.max_activation_delay_ms) >= end)
        {
            return None;
        }
        let observations = self.observations_since(rec.contract.customer, rec.registered_at);
        let decision = attestation::evaluate(
            &rec.contract.committee,
            &observations,
            now,
            self.params.attestation_window_ms,
            unreachable_for_ms,
        )?;
        let rec = self.contracts.get_mut(&id)?;
        rec.trigger_at = Some(now);
        rec.handover = Some(decision.clone());
        info!(contract = %id.short(), customer = %rec.contract.customer.short(), "handover attested");
        Some(LedgerEvent::HandoverAttested {
            contract: id,
            customer: rec.contract.customer,
            provider: rec.contract.provider,
            unreachable_since: decision.unreachable_since,
            at: now,
            agreeing: decision.agreeing,
        })
    }

    pub(super) fn report_activation(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        id: ContractId,
        activated_at: Timestamp,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let rec = self.record(id)?;
        if rec.contract.provider != sender {
            return Err(LedgerError::NotAllowed {
                contract: id,
                sender,
                action: "report activation of",
            });
        }
        self.can_step(id, LifecycleEvent::Activate)?;
        // The block's time may trail the provider's clock by up to the skew (a proposer's
        // clock behind, or one stamping its block early on purpose): a report that far ahead
        // counts as activated at the block's time, not refused (THREATS C10).
        let latest = now.saturating_add(MAX_CLOCK_SKEW_MS);
        let Some(trigger) = rec.trigger_at.filter(|t| *t <= latest) else {
            return Err(LedgerError::NotNow {
                contract: id,
                status: rec.status,
                reason: "the activation trigger has not fired yet".into(),
            });
        };
        if activated_at < trigger || activated_at > latest {
            return Err(invalid(
                format!(
                    "activation at {activated_at} must lie between trigger {trigger} and now \
                     (plus {MAX_CLOCK_SKEW_MS} ms of clock skew)"
                ),
                now,
            ));
        }
        let floor = now.saturating_sub(self.params.activation_report_grace_ms);
        let activated_at = activated_at.min(now).max(floor);
        let delay_ms = activated_at.saturating_sub(trigger);
        let event = self.step(id, LifecycleEvent::Activate, now)?;
        if let Some(rec) = self.contracts.get_mut(&id) {
            rec.activated_at = Some(activated_at);
        }
        Ok(vec![
            event,
            LedgerEvent::Activated {
                contract: id,
                at: activated_at,
                delay_ms,
            },
        ])
    }

    pub(super) fn heartbeats(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        id: ContractId,
        batch: &HeartbeatBatch,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let rec = self.record(id)?;
        if rec.contract.provider != sender {
            return Err(LedgerError::NotAllowed {
                contract: id,
                sender,
                action: "report heartbeats for",
            });
        }
        if rec.status != ContractStatus::Active {
            return Err(LedgerError::NotNow {
                contract: id,
                status: rec.status,
                reason: "heartbeats are accepted only while active".into(),
            });
        }
        // Uptime is the provider's claim, verified only in the sense that it must not contradict
        // the committee: once a quorum reports the provider down since `S`, time after `S` does
        // not count.
        let down_since = attestation::evaluate(
            &rec.contract.committee,
            &self.observations_since(sender, rec.registered_at),
            now,
            self.params.attestation_window_ms,
            0,
        )
        .map(|d| d.unreachable_since);
        let mut cursor = rec.last_uptime_end.or(rec.activated_at).unwrap_or(now);
        let mut previous_from = 0;
        let mut added: u64 = 0;
        for iv in &batch.intervals {
            if iv.from < previous_from
                || iv.to < iv.from
                || iv.to > now.saturating_add(MAX_CLOCK_SKEW_MS)
            {
                return Err(invalid(
                    format!(
                        "interval {}..{} must be ordered and end by now (+{MAX_CLOCK_SKEW_MS} ms)",
                        iv.from, iv.to
                    ),
                    now,
                ));
            }
            previous_from = iv.from;
            // A provider clock slightly ahead of the block time loses only the part after now;
            // a pending settlement counts service only up to its end. Time the ledger already
            // holds counts once: a provider starts each batch where the ledger's cursor stood
            // when it sent it, so batches in flight together overlap, and the cursor may trail
            // the provider's own clock by the block time's skew (THREATS A6). What lies before
            // the cursor is skipped, not refused, so neither leaves a gap counted against it.
            let to = iv.to.min(now).min(rec.closing.unwrap_or(u64::MAX));
            let from = iv.from.max(cursor).min(to);
            let counted_to = down_since.map_or(to, |s| to.min(s.max(from)));
            added = added.saturating_add(counted_to - from);
            cursor = cursor.max(to);
        }
        let rec = self
            .contracts
            .get_mut(&id)
            .ok_or(LedgerError::UnknownContract(id))?;
        rec.uptime_ms = rec.uptime_ms.saturating_add(added);
        if !batch.intervals.is_empty() {
            rec.last_uptime_end = Some(cursor);
        }
        rec.readings_processed = rec
            .readings_processed
            .saturating_add(batch.readings_processed);
        rec.data_proof_count = rec
            .data_proof_count
            .saturating_add(batch.data_proofs.len() as u64);
        if let Some(last) = batch.data_proofs.last() {
            rec.last_data_proof = Some(*last);
        }
        let mut events = vec![LedgerEvent::HeartbeatsRecorded {
            contract: id,
            uptime_ms: rec.uptime_ms,
            readings_processed: rec.readings_processed,
        }];
        events.extend(self.finish_closing_if_ready(now, id)?);
        Ok(events)
    }
}
