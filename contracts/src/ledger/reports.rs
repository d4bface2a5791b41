//! The committee's per-round reports: probes of hosted / active standby services and storage
//! audits. Neither counts on one member's word.
//!
//! Rounds are counted from activation in steps of [`ContractRecord::evidence_period_ms`]
//! (the heartbeat interval, at least 2 s) and end with the service window
//! ([`ContractRecord::evidence_round`], [`ContractRecord::round_span`]). Each member of the
//! contract's committee reports each round at most once; reports are accepted from the round's
//! start until `params.quorum_report_grace_ms` after its end. A round is decided when a quorum
//! (2f+1) agree ([`RoundTally`](super::RoundTally)):
//! - probes: "up" adds the interval to `confirmed_up_ms` (the most hosted / standby active
//!   payment can follow), "down" to `confirmed_down_ms` (judged at settlement);
//! - audits: a decided round adds one to `storage_passed` or `storage_failed`.

use agora_market::{NodeId, Timestamp};
use tracing::debug;

use super::evidence::MAX_CLOCK_SKEW_MS;
use super::quorum::TallyRefusal;
use super::{BreachReason, ContractRecord, Ledger, LedgerError, LedgerEvent};
use crate::attestation::quorum;
use crate::contract::{ContractId, ContractKind};
use crate::lifecycle::ContractStatus;

/// Which tally of a record a report goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tally {
    Probes,
    Audits,
}

impl Ledger {
    /// Whether reports for `round` of `rec` can no longer arrive at ledger time `now`.
    fn round_closed(&self, rec: &ContractRecord, round: u64, now: Timestamp) -> bool {
        rec.round_span(round)
            .is_none_or(|(_, end)| end.saturating_add(self.params.quorum_report_grace_ms) < now)
    }

    /// Checks `sender` may report `round` of contract `id` now, into `tally`.
    fn check_report(
        &self,
        now: Timestamp,
        sender: NodeId,
        id: ContractId,
        round: u64,
        tally: Tally,
    ) -> Result<(), LedgerError> {
        let rec = self.record(id)?;
        let (kind_ok, action) = match tally {
            Tally::Probes => (rec.is_probed(), "report probe results for"),
            Tally::Audits => (
                rec.contract.kind == ContractKind::Storage,
                "report storage challenges for",
            ),
        };
        // Only the contract's arbitrators judge: a party would profit from false reports.
        if !rec.contract.committee.contains(&sender) {
            return Err(LedgerError::NotAllowed {
                contract: id,
                sender,
                action,
            });
        }
        self.require_unslashed(sender)?;
        if !kind_ok || rec.status != ContractStatus::Active {
            return Err(LedgerError::NotNow {
                contract: id,
                status: rec.status,
                reason: match tally {
                    Tally::Probes => "probe results apply only to active hosted or standby \
                                      contracts"
                        .into(),
                    Tally::Audits => {
                        "storage results apply only to active storage contracts".into()
                    }
                },
            });
        }
        let Some((start, end)) = rec.round_span(round) else {
            return Err(LedgerError::InvalidEvidence {
                reason: format!("round {round} of contract {id} lies outside its service window"),
                now,
            });
        };
        if start > now.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(LedgerError::InvalidEvidence {
                reason: format!("round {round} of contract {id} starts at {start}, in the future"),
                now,
            });
        }
        if self.round_closed(rec, round, now) {
            return Err(LedgerError::NotNow {
                contract: id,
                status: rec.status,
                reason: format!(
                    "reports for round {round} closed at {}; report the current round",
                    end.saturating_add(self.params.quorum_report_grace_ms)
                ),
            });
        }
        let held = match tally {
            Tally::Probes => &rec.probes,
            Tally::Audits => &rec.audits,
        };
        held.can_record(round, &sender).map_err(|r| match r {
            TallyRefusal::AlreadyReported => LedgerError::DuplicateReport {
                contract: id,
                round,
                reporter: sender,
            },
            TallyRefusal::AlreadyDecided(outcome) => LedgerError::RoundDecided {
                contract: id,
                round,
                outcome,
            },
        })
    }

    /// Records a checked report; returns the decided outcome and the round's length.
    fn record_report(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        id: ContractId,
        round: u64,
        outcome: bool,
        tally: Tally,
    ) -> Result<Option<(bool, u64)>, LedgerError> {
        let rec = self.record(id)?;
        let needed = quorum(rec.contract.committee.len());
        let span = rec.round_span(round).map_or(0, |(s, e)| e - s);
        let held = match tally {
            Tally::Probes => &rec.probes,
            Tally::Audits => &rec.audits,
        };
        let expired: Vec<u64> = held
            .open
            .keys()
            .chain(held.decided.keys())
            .copied()
            .filter(|r| self.round_closed(rec, *r, now))
            .collect();
        let rec = self
            .contracts
            .get_mut(&id)
            .ok_or(LedgerError::UnknownContract(id))?;
        let held = match tally {
            Tally::Probes => &mut rec.probes,
            Tally::Audits => &mut rec.audits,
        };
        held.prune(|r| expired.contains(&r));
        let decided = held.record(round, sender, outcome, needed).map_err(|_| {
            LedgerError::DuplicateReport {
                contract: id,
                round,
                reporter: sender,
            }
        })?;
        Ok(decided.map(|o| (o, span)))
    }

    pub(super) fn probe_result(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        id: ContractId,
        interval: u64,
        up: bool,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        self.check_report(now, sender, id, interval, Tally::Probes)?;
        let decided = self.record_report(now, sender, id, interval, up, Tally::Probes)?;
        let mut events = vec![LedgerEvent::ProbeRecorded {
            contract: id,
            interval,
            reporter: sender,
            up,
        }];
        if let Some((up, full_ms)) = decided
            && let Some(rec) = self.contracts.get_mut(&id)
        {
            // Once a settlement is pending for the service up to `end`, only the part of a
            // round before `end` counts: rounds decided while it waits for its evidence must
            // not count against (or for) the service it judges.
            let ms = rec
                .closing
                .map_or(full_ms, |end| counted_ms(rec, interval, end));
            if up {
                rec.confirmed_up_ms = rec.confirmed_up_ms.saturating_add(ms);
            } else {
                rec.confirmed_down_ms = rec.confirmed_down_ms.saturating_add(ms);
                if let Some((_, stop)) = rec.round_span(interval) {
                    rec.last_down_end = Some(rec.last_down_end.map_or(stop, |t| t.max(stop)));
                }
            }
            debug!(contract = %id.short(), interval, up, ms, "probe interval decided");
            events.push(LedgerEvent::UptimeConfirmed {
                contract: id,
                interval,
                up,
                ms,
                confirmed_up_ms: rec.confirmed_up_ms,
            });
        }
        events.extend(self.finish_closing_if_ready(now, id)?);
        Ok(events)
    }

    /// A batch of probe outcomes ([`TxKind::ProbeResults`]): malformed batches are refused
    /// whole; of a well-formed one, the entries that [`Self::probe_result`] would refuse are
    /// skipped and the others are applied in order. Refused when no entry may be applied (the
    /// first refusal).
    ///
    /// [`TxKind::ProbeResults`]: super::TxKind::ProbeResults
    pub(super) fn probe_results(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        reports: &[super::tx::ProbeReport],
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let malformed = |reason: String| LedgerError::InvalidEvidence { reason, now };
        if reports.is_empty() {
            return Err(malformed("an empty batch of probe results".into()));
        }
        if reports.len() > super::tx::MAX_PROBE_RESULTS {
            return Err(malformed(format!(
                "{} probe results in one batch; at most {}",
                reports.len(),
                super::tx::MAX_PROBE_RESULTS
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = reports
            .iter()
            .find(|r| !seen.insert((r.contract, r.interval)))
        {
            return Err(malformed(format!(
                "interval {} of contract {} twice in one batch",
                twice.interval, twice.contract
            )));
        }
        // Each entry is checked just before it is applied (an entry applied before may have
        // ended its contract's settlement, which closes the contract) and skipped when
        // refused; the check changes nothing, so a batch whose every entry is refused changes
        // nothing.
        let mut first_refusal = None;
        let mut events = Vec::new();
        for r in reports {
            if let Err(e) = self.check_report(now, sender, r.contract, r.interval, Tally::Probes) {
                debug!(contract = %r.contract.short(), interval = r.interval, error = %e,
                    "probe result of a batch skipped");
                first_refusal.get_or_insert(e);
                continue;
            }
            // Never empty once applied: every applied entry records a `ProbeRecorded`.
            events.extend(self.probe_result(now, sender, r.contract, r.interval, r.up)?);
        }
        match first_refusal {
            Some(e) if events.is_empty() => Err(e),
            _ => Ok(events),
        }
    }

    /// Takes out of `rec`'s confirmed up and down time what its decided probe rounds count
    /// past `end` (a round decided before it ended, or a round starting within the clock skew
    /// ahead): a settlement judges the service up to `end` only. The event says what changed.
    pub(super) fn trim_probe_evidence(
        id: ContractId,
        rec: &mut ContractRecord,
        end: Timestamp,
    ) -> Option<LedgerEvent> {
        let (mut up_ms, mut down_ms) = (0u64, 0u64);
        for (round, up) in &rec.probes.decided {
            let Some((start, stop)) = rec.round_span(*round) else {
                continue;
            };
            let over = (stop - start).saturating_sub(counted_ms(rec, *round, end));
            if *up {
                up_ms = up_ms.saturating_add(over);
            } else {
                down_ms = down_ms.saturating_add(over);
            }
        }
        if up_ms == 0 && down_ms == 0 {
            return None;
        }
        rec.confirmed_up_ms = rec.confirmed_up_ms.saturating_sub(up_ms);
        rec.confirmed_down_ms = rec.confirmed_down_ms.saturating_sub(down_ms);
        Some(LedgerEvent::EvidenceTrimmed {
            contract: id,
            end,
            up_ms,
            down_ms,
            confirmed_up_ms: rec.confirmed_up_ms,
        })
    }

    pub(super) fn storage_proof(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        id: ContractId,
        round: u64,
        passed: bool,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        self.check_report(now, sender, id, round, Tally::Audits)?;
        let decided = self.record_report(now, sender, id, round, passed, Tally::Audits)?;
        let mut events = vec![LedgerEvent::AuditReportRecorded {
            contract: id,
            round,
            reporter: sender,
            passed,
        }];
        if let Some((passed, _)) = decided
            && let Some(rec) = self.contracts.get_mut(&id)
        {
            if passed {
                rec.storage_passed = rec.storage_passed.saturating_add(1);
            } else {
                rec.storage_failed = rec.storage_failed.saturating_add(1);
            }
            events.push(LedgerEvent::StorageProofRecorded {
                contract: id,
                round,
                passed,
            });
        }
        Ok(events)
    }

    /// Whether every probe interval of `rec` before `end` is decided or can no longer be
    /// (its report window passed). Contracts that are not probed, or never activated, have
    /// nothing to wait for.
    pub(super) fn probes_complete(
        &self,
        rec: &ContractRecord,
        end: Timestamp,
        now: Timestamp,
    ) -> bool {
        if !rec.is_probed() {
            return true;
        }
        let Some(last) = end.checked_sub(1).and_then(|t| rec.evidence_round(t)) else {
            return true;
        };
        // Rounds are checked newest first; once one is closed, all earlier ones are.
        let mut round = last;
        loop {
            if self.round_closed(rec, round, now) {
                return true;
            }
            if !rec.probes.is_decided(round) {
                return false;
            }
            let Some(previous) = round.checked_sub(1) else {
                return true;
            };
            round = previous;
        }
    }

    /// Whether a settlement of `rec` judged at `end` should wait: the provider's in-flight
    /// heartbeats may still cure an uptime shortfall, or the committee's probe reports for the
    /// service up to `end` may still arrive. A late activation is judged at once.
    pub(super) fn awaits_evidence(
        &self,
        rec: &ContractRecord,
        end: Timestamp,
        now: Timestamp,
        verdict: Option<BreachReason>,
    ) -> bool {
        let heartbeats_in_flight = matches!(verdict, Some(BreachReason::InsufficientUptime { .. }))
            && end.saturating_sub(rec.last_uptime_end.unwrap_or(0))
                > rec.contract.qos.heartbeat_interval_ms;
        let judged_now = matches!(
            verdict,
            Some(BreachReason::LateActivation { .. } | BreachReason::FailedStorageProofs { .. })
        );
        heartbeats_in_flight || (!judged_now && !self.probes_complete(rec, end, now))
    }
}

/// How much of probe round `round` of `rec` lies before `end` (ms): the round's span clipped
/// to `end`, 0 for a round starting at or after it.
fn counted_ms(rec: &ContractRecord, round: u64, end: Timestamp) -> u64 {
    rec.round_span(round)
        .map_or(0, |(start, stop)| stop.min(end).saturating_sub(start))
}
