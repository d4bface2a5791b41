//! Arbitrator: probe the provider's service of every active hosted or standby contract this
//! node judges ([`Duty::Probe`]) once per probe interval, and report each outcome
//! (`ProbeResult`). Payment follows the intervals a quorum of the committee confirmed up, so
//! each report is this node's own observation: up when the provider answered that the service
//! runs, down when it answered that it does not or stayed silent for [`probe_timeout_ms`] (one
//! round, 1–4 s) on each of [`ASKS_ON_SILENCE`] asks — and "down" only from a fresh ledger
//! view, since silence may be this node's own isolation.
//!
//! Level-triggered like the other handlers: after a restart the first ledger facts list the
//! active contracts again ([`probe_duty`]) and probing resumes with the current interval.

use agora_market::{NodeId, Timestamp};

use super::{Arbitrator, drop_inactive, may_blame};
use crate::io::{Effect, Note};
use crate::{REPORT_VIEW_MAX_AGE_MS, View, probe_timeout_ms};
use agora_contracts::contract::ContractId;
use agora_contracts::duties::{Duty, probe_duty};
use agora_contracts::ledger::TxKind;
use agora_contracts::lifecycle::ContractStatus;

/// An active hosted or standby contract this node probes.
#[derive(Clone, Debug)]
pub(super) struct Probing {
    provider: NodeId,
    /// The next probe: its interval and when.
    next: Option<(u64, Timestamp)>,
    /// The probe out and not answered: the interval it observes and when the provider's time
    /// to answer runs out.
    asking: Option<(u64, Timestamp)>,
    /// The outcome last reported to the timeline (only changes are noted).
    noted: Option<bool>,
    /// Asks of the open probe that went unanswered so far ([`ASKS_ON_SILENCE`] at most).
    silent: u32,
    /// The interval whose probe went unanswered when the provider is asked once more: a
    /// second silence (or "not running") is reported down for it, while an answer that the
    /// service runs counts for the interval of the second ask (it says nothing of the first).
    silent_interval: Option<u64>,
}

/// How often a silent provider is asked before it is reported down for the interval first
/// asked: once more, at once, when its time to answer ran out. An overloaded honest provider
/// (or a loaded network) misses one deadline far more often than two in a row, while a
/// provider that is down stays down: in the provisioning bench (20 processes on 2 cores) single silent probes of running
/// services decided whole intervals down (issue #15). An answer that the service does not run,
/// or a refusal, is reported at once.
pub const ASKS_ON_SILENCE: u32 = 2;

impl Probing {
    /// When something is due: the open probe's timeout, else the next probe.
    pub fn next_wake(&self) -> Option<Timestamp> {
        match self.asking {
            Some((_, deadline)) => Some(deadline),
            None => self.next.map(|(_, at)| at),
        }
    }
}

impl Arbitrator {
    /// Starts probing the active hosted and standby contracts of this node's committees; stops
    /// probing contracts no longer active ([`Duty::EndProbe`]).
    pub(super) fn reconcile_probes(&mut self, v: &View, out: &mut Vec<Effect>) {
        let observer = self.observer(v);
        for (id, r) in v.records {
            if r.status != ContractStatus::Active
                || !r.contract.committee.contains(&v.me)
                || self.probes.contains_key(id)
            {
                continue;
            }
            let Some(Duty::Probe {
                provider, every_ms, ..
            }) = probe_duty(*id, &r.contract)
            else {
                continue;
            };
            self.probes.insert(
                *id,
                Probing {
                    provider,
                    next: observer.next(id, r, 0, v.now),
                    asking: None,
                    noted: None,
                    silent: 0,
                    silent_interval: None,
                },
            );
            out.push(Effect::Timeline(Note::new(
                "probing",
                Some(*id),
                format!(
                    "probing {}'s service once every {every_ms} ms interval",
                    provider.short()
                ),
            )));
        }
        drop_inactive(
            &mut self.probes,
            v,
            "probe-ended",
            "contract no longer active",
            out,
        );
    }

    /// Reports the probes whose provider stayed silent too long, and sends the probes whose
    /// moment came (from a current ledger view).
    pub(super) fn probe_due(&mut self, v: &View, out: &mut Vec<Effect>) {
        let timed_out: Vec<(ContractId, u64)> = self
            .probes
            .iter()
            .filter_map(|(id, p)| {
                let (interval, deadline) = p.asking?;
                (v.now >= deadline).then_some((*id, interval))
            })
            .collect();
        for (id, interval) in timed_out {
            // Asked once more, for the interval of this moment; down only when that ask stays
            // silent too.
            let again = self.probes.get_mut(&id).and_then(|p| {
                let rec = v.records.get(&id)?;
                p.silent += 1;
                if p.silent >= ASKS_ON_SILENCE {
                    return None;
                }
                let now_interval = rec.evidence_round(v.now)?;
                let timeout_ms = probe_timeout_ms(rec.evidence_period_ms());
                p.silent_interval.get_or_insert(interval);
                p.asking = Some((now_interval, v.now.saturating_add(timeout_ms)));
                Some(Effect::Probe {
                    contract: id,
                    provider: p.provider,
                    interval: now_interval,
                    timeout_ms,
                })
            });
            match again {
                Some(ask) => out.push(ask),
                None => self.on_probe_answer(v, id, interval, false, out),
            }
        }
        if !v.synced {
            return;
        }
        for (id, p) in self.probes.iter_mut() {
            let Some((_, at)) = p.next else {
                continue;
            };
            if p.asking.is_some() || v.now < at {
                continue;
            }
            p.next = None;
            let Some(rec) = v.records.get(id) else {
                continue;
            };
            // The interval of the probe time, whatever was planned (a late tick).
            let Some(interval) = rec.evidence_round(v.now) else {
                continue;
            };
            let timeout_ms = probe_timeout_ms(rec.evidence_period_ms());
            p.asking = Some((interval, v.now.saturating_add(timeout_ms)));
            p.silent = 0;
            p.silent_interval = None;
            out.push(Effect::Probe {
                contract: *id,
                provider: p.provider,
                interval,
                timeout_ms,
            });
        }
    }

    /// The provider answered the probe of `interval` (or its time ran out: `up` false), and
    /// the outcome is reported; the next interval's probe is planned.
    pub(super) fn on_probe_answer(
        &mut self,
        v: &View,
        contract: ContractId,
        interval: u64,
        up: bool,
        out: &mut Vec<Effect>,
    ) {
        let observer = self.observer(v);
        let Some(p) = self.probes.get_mut(&contract) else {
            return; // ended meanwhile
        };
        if p.asking.is_none_or(|(asked, _)| asked != interval) {
            return; // not asked, or answered already (a late or repeated answer)
        }
        p.asking = None;
        p.next = v
            .records
            .get(&contract)
            .and_then(|r| observer.next(&contract, r, interval.saturating_add(1), v.now));
        // After a silence, "down" is about the interval first asked.
        let first = p.silent_interval.take();
        let interval = if up {
            interval
        } else {
            first.unwrap_or(interval)
        };
        if !up && !may_blame(v) {
            out.push(Effect::Timeline(Note::new(
                "probe-skipped",
                Some(contract),
                format!(
                    "interval {interval}: {}'s service did not answer, but this node's \
                     ledger view is older than {REPORT_VIEW_MAX_AGE_MS} ms: it may be the one \
                     cut off",
                    p.provider.short()
                ),
            )));
            return;
        }
        out.push(Effect::Submit(TxKind::ProbeResult {
            contract,
            interval,
            up,
        }));
    }

    /// A probe report was admitted: the timeline notes when the outcome changes.
    pub(super) fn on_probe_reported(
        &mut self,
        contract: ContractId,
        interval: u64,
        up: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some(p) = self.probes.get_mut(&contract) else {
            return;
        };
        if p.noted == Some(up) {
            return;
        }
        p.noted = Some(up);
        let (phase, what) = if up {
            ("probed-up", "answers")
        } else {
            ("probed-down", "does not answer")
        };
        out.push(Effect::Timeline(Note::new(
            phase,
            Some(contract),
            format!(
                "{}'s service {what} (interval {interval})",
                p.provider.short()
            ),
        )));
    }
}
