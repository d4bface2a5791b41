//! Settlement: evaluate the evidence, then pay the provider (honoured) or slash it (breached).
//!
//! Payment rules: hosted contracts pay `payment × paid uptime / duration` (also collectable
//! periodically with `SettleUptime`); standby contracts pay `payment × (time standing by before
//! activation + paid uptime after it) / duration` of their coverage window, so a customer
//! coming back early pays pro rata; storage pays `payment × elapsed / duration`. Paid uptime is
//! the provider's signed heartbeat claim (minus any time a committee quorum reports the
//! provider unreachable) capped by the uptime a quorum of the committee's probes confirmed
//! (`confirmed_up_ms`): a provider that runs nothing is paid nothing, whatever it claims.
//!
//! Breach is judged on evidence anyone can check: a late activation, the provider's own
//! heartbeats showing too little uptime over the time they report (gaps between reports;
//! time after its last report is not evidence by itself: its heartbeats may be stuck behind a
//! backlog), probe intervals a quorum confirmed down, or storage rounds a quorum judged
//! failed. A minority of the committee can neither pay nor slash.

use agora_market::{NodeId, Timestamp};
use tracing::info;

use super::evidence::MAX_CLOCK_SKEW_MS;
use super::funds::Part;
use super::{BreachReason, ContractRecord, Ledger, LedgerError, LedgerEvent, SettleReason};
use crate::contract::{ActivationClause, Amount, ContractId, ContractKind};
use crate::lifecycle::{ContractStatus, LifecycleEvent};

/// `amount × num / den`, rounded down, with `num` capped at `den`.
fn pro_rata(amount: Amount, num: u64, den: u64) -> Amount {
    if den == 0 {
        return amount;
    }
    let v = u128::from(amount) * u128::from(num.min(den)) / u128::from(den);
    Amount::try_from(v).unwrap_or(amount)
}

/// Uptime the provider is paid for when the contract is judged at `end`: its heartbeat claim
/// plus the unreported tail before `end` ([`unreported_tail`]), capped by what the committee's
/// probes confirmed.
fn paid_uptime(rec: &ContractRecord, end: Timestamp) -> u64 {
    rec.uptime_ms
        .saturating_add(unreported_tail(rec, end))
        .min(rec.confirmed_up_ms)
}

/// Where the provider's heartbeat reports of `rec`, activated at `activated`, end: the end of
/// its last batch, never before the activation.
fn reported_to(rec: &ContractRecord, activated: Timestamp) -> Timestamp {
    rec.last_uptime_end.unwrap_or(activated).max(activated)
}

/// Slack on top of one heartbeat interval for the provider's last batch to reach a block (the
/// block's time may trail the provider's clock by the skew).
const TAIL_SLACK_MS: u64 = MAX_CLOCK_SKEW_MS;

/// The service time between the end of the provider's last heartbeat batch and `end` that it
/// cannot have reported yet when the contract is judged: at most one heartbeat interval (plus
/// [`TAIL_SLACK_MS`]). It is paid when the committee confirmed it up (THREATS C17: a customer
/// settling just after a probe round was decided, before the provider's next batch landed,
/// took up to one interval of service unpaid — one it proposes, up to 600 s —, and the service
/// stopped at the window's end never reports its last stretch). It starts after the latest
/// round the committee confirmed down, so a round down inside it (or one reaching past `end`)
/// is never paid through it. 0 before activation and for `end` 0 (what a provider collects
/// mid-term).
fn unreported_tail(rec: &ContractRecord, end: Timestamp) -> u64 {
    let Some(activated) = rec.activated_at else {
        return 0;
    };
    let from = reported_to(rec, activated).max(rec.last_down_end.unwrap_or(0));
    end.saturating_sub(from).min(
        rec.contract
            .qos
            .heartbeat_interval_ms
            .saturating_add(TAIL_SLACK_MS),
    )
}

/// Total payment the provider has earned by `end` for an honoured contract.
fn earned(rec: &ContractRecord, end: Timestamp) -> Amount {
    let c = &rec.contract;
    match c.kind {
        ContractKind::Hosted => pro_rata(c.payment, paid_uptime(rec, end), c.duration_ms),
        ContractKind::Standby => {
            // Coverage begins when the provider stands by (armed), not at registration: one
            // that armed only at the window's end was paid the whole window (THREATS P5).
            let Some(start) = rec.armed_at else {
                return 0;
            };
            let covered = match rec.activated_at {
                None => end.saturating_sub(start),
                Some(activated) => activated
                    .min(end)
                    .saturating_sub(start)
                    .saturating_add(paid_uptime(rec, end).min(end.saturating_sub(activated))),
            };
            pro_rata(c.payment, covered, c.duration_ms)
        }
        ContractKind::Storage => {
            let start = rec.window_start().unwrap_or(end);
            pro_rata(c.payment, end.saturating_sub(start), c.duration_ms)
        }
    }
}

/// Judges an active contract's evidence up to `end`.
///
/// A contract ended before its window's end (the customer is back, or says so) is judged
/// against its whole term: the time after `end` it will never serve counts as served, so the
/// provider is slashed only when what it did so far already breaches the whole term's bar
/// (THREATS C12: otherwise a customer picks its moment, right after one brief outage or one
/// failed storage round, and takes the stake of a provider that would have passed). A
/// customer whose provider keeps failing waits until the breach is certain, or for the term's
/// end; time not served is not paid either way.
///
/// `trigger_lag_ms` is how far behind the validators' clocks a proposer may stamp a block
/// (`LedgerParams::block_time_tolerance_ms`): the trigger's time is its block's, and the
/// honest provider starts only when it sees that block, so the delay measured may exceed the
/// real one by that much. An activation is late only past the budget plus that lag (THREATS
/// A10: else one proposer stamping the trigger block late used up a tight budget, and the
/// provider's stake went to the customer).
pub(super) fn breach_of(
    rec: &ContractRecord,
    end: Timestamp,
    trigger_lag_ms: u64,
) -> Option<BreachReason> {
    let c = &rec.contract;
    let activated = rec.activated_at?;
    let delay_ms = activated.saturating_sub(rec.trigger_at.unwrap_or(activated));
    // A slot's trigger is the time the contract names, not a block's: no lag to allow for.
    let lag = match c.activation {
        ActivationClause::At(_) => 0,
        _ => trigger_lag_ms,
    };
    if delay_ms > c.qos.max_activation_delay_ms.saturating_add(lag) {
        return Some(BreachReason::LateActivation { delay_ms });
    }
    let min = u64::from(c.qos.min_uptime_permille);
    // The part of the term after `end`: never served, never judged against the provider.
    let rest = rec
        .window_end()
        .map_or(0, |e| e.saturating_sub(end.max(activated)));
    if c.kind == ContractKind::Storage {
        // Judged against every audit round of the term: only rounds a quorum of the committee
        // confirmed failed count against the provider. A round no quorum decided — the one
        // under way at `end`, the rest of the term after it, one the committee could not
        // judge, or one a member withheld its report from — counts as not failed, as time no
        // quorum confirmed down does for hosted contracts (THREATS C12, A7: counting only
        // decided rounds let a customer settle one moment into a round, and one withholding
        // member drop passed rounds from the count, and slash a provider that passes the term).
        let term_rounds = c.duration_ms.div_ceil(rec.evidence_period_ms());
        let total = term_rounds.max(rec.storage_passed.saturating_add(rec.storage_failed));
        let permille = total
            .saturating_sub(rec.storage_failed)
            .saturating_mul(1000)
            .checked_div(total)
            .unwrap_or(1000);
        return (permille < min).then_some(BreachReason::FailedStorageProofs { permille });
    }
    let span = end.saturating_sub(activated);
    if span == 0 {
        return None;
    }
    // The provider's heartbeats judge the time they speak for: from activation to the end of
    // its last report, plus up to one heartbeat interval of tail it cannot have reported yet
    // when the other side settles. Time it reported nothing for is no evidence either way
    // (its heartbeats may be stuck behind a backlog of transactions, which anyone who floods
    // the chain can cause): it is not paid (paid uptime needs the committee's confirmation),
    // and it is a breach only when a quorum of the committee confirmed the service down
    // (below). Gaps between its reports are its own admission and count against it.
    let reported_to = reported_to(rec, activated).min(end);
    let tail = end
        .saturating_sub(reported_to)
        .min(c.qos.heartbeat_interval_ms);
    let spoken_for = reported_to.saturating_add(tail).saturating_sub(activated);
    if spoken_for > 0 {
        let judged = rec.uptime_ms.saturating_add(tail).min(spoken_for);
        let permille = permille_of(judged.saturating_add(rest), spoken_for.saturating_add(rest));
        if permille < min {
            return Some(BreachReason::InsufficientUptime { permille });
        }
    }
    // Time a quorum of the committee confirmed the service down.
    let not_down = span - rec.confirmed_down_ms.min(span);
    let permille = permille_of(not_down.saturating_add(rest), span.saturating_add(rest));
    (permille < min).then_some(BreachReason::ConfirmedDowntime { permille })
}

/// `part × 1000 / whole`, 1000 for an empty whole.
fn permille_of(part: u64, whole: u64) -> u64 {
    (u128::from(part) * 1000)
        .checked_div(u128::from(whole))
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(1000)
}

impl ContractRecord {
    /// What the provider of an active hosted contract could collect now with `SettleUptime`:
    /// payment for paid uptime not paid yet. Zero otherwise, so a provider submits the
    /// transaction only when it would be accepted (a refused one still costs a block's room).
    pub fn collectable(&self) -> Amount {
        if self.status != ContractStatus::Active || self.contract.kind != ContractKind::Hosted {
            return 0;
        }
        earned(self, 0)
            .saturating_sub(self.paid_to_provider)
            .min(self.escrow.payment)
    }
}

impl Ledger {
    pub(super) fn settle_uptime(
        &mut self,
        sender: NodeId,
        id: ContractId,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let rec = self.record(id)?;
        if rec.contract.provider != sender || rec.contract.kind != ContractKind::Hosted {
            return Err(LedgerError::NotAllowed {
                contract: id,
                sender,
                action: "collect uptime payment for (hosted contracts, provider only)",
            });
        }
        let to_pay = rec.collectable();
        if to_pay == 0 {
            return Err(LedgerError::NotNow {
                contract: id,
                status: rec.status,
                reason: "nothing to collect: report more verified uptime first".into(),
            });
        }
        let provider = rec.contract.provider;
        self.release(id, Part::Payment, to_pay, provider)?;
        Ok(vec![LedgerEvent::Paid {
            contract: id,
            to: provider,
            amount: to_pay,
        }])
    }

    pub(super) fn settle(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        id: ContractId,
        reason: SettleReason,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let rec = self.record(id)?;
        let c = &rec.contract;
        if sender != c.customer && sender != c.provider {
            return Err(LedgerError::NotAllowed {
                contract: id,
                sender,
                action: "settle",
            });
        }
        let not_now = |why: String| LedgerError::NotNow {
            contract: id,
            status: rec.status,
            reason: why,
        };
        let window_end = rec.window_end();
        let mut trimmed = None;
        let verdict: Result<Timestamp, BreachReason> = match rec.status {
            ContractStatus::Active => {
                let end = window_end.unwrap_or(now);
                let effective_end = match reason {
                    SettleReason::CustomerBack if sender == c.customer => now.min(end),
                    SettleReason::DurationEnded if now >= end => end,
                    SettleReason::DurationEnded => {
                        return Err(not_now(format!("duration ends at {end}")));
                    }
                    _ => {
                        return Err(not_now(format!(
                            "{reason:?} does not apply to an active contract for {sender}"
                        )));
                    }
                };
                if let Some(end) = rec.closing {
                    return Err(not_now(format!(
                        "settlement already pending for the service up to {end}"
                    )));
                }
                // Judged up to `effective_end` only: probe rounds already decided past it (the
                // current one, decided early) count their part before it, no more.
                let Some(r) = self.contracts.get_mut(&id) else {
                    return Err(LedgerError::UnknownContract(id));
                };
                trimmed = Ledger::trim_probe_evidence(id, r, effective_end);
                let rec = self.record(id)?;
                let verdict = breach_of(rec, effective_end, self.params.block_time_tolerance_ms);
                // Heartbeats or probe reports for the service judged may still be in flight:
                // judge when they arrive, or when the grace period ends.
                if self.awaits_evidence(rec, effective_end, now, verdict) {
                    let until = effective_end.saturating_add(self.closing_grace_ms(rec));
                    if let Some(r) = self.contracts.get_mut(&id) {
                        r.closing = Some(effective_end);
                    }
                    let mut events: Vec<LedgerEvent> = trimmed.into_iter().collect();
                    events.push(LedgerEvent::SettlementPending {
                        contract: id,
                        end: effective_end,
                        until,
                    });
                    return Ok(events);
                }
                match verdict {
                    Some(b) => Err(b),
                    None => Ok(effective_end),
                }
            }
            ContractStatus::Validated | ContractStatus::Migrated | ContractStatus::Armed => {
                // A provider that started in time may report it up to
                // `activation_report_grace_ms` later (`report_activation` accepts claims that
                // old): its report must not lose a race with the customer's settlement.
                let missed = rec.activation_deadline().is_some_and(|d| {
                    now > d.saturating_add(self.params.activation_report_grace_ms)
                });
                let standby_done = rec.status == ContractStatus::Armed
                    && c.kind == ContractKind::Standby
                    && rec.handover.is_none()
                    && window_end.is_some_and(|e| now >= e);
                if missed {
                    Err(BreachReason::NoActivation)
                } else if standby_done && reason == SettleReason::DurationEnded {
                    Ok(window_end.unwrap_or(now))
                } else {
                    return Err(not_now(
                        "not active: settle after the coverage window ends or the activation deadline passes".into(),
                    ));
                }
            }
            status => return Err(not_now(format!("cannot settle a contract in {status:?}"))),
        };
        let mut events: Vec<LedgerEvent> = trimmed.into_iter().collect();
        events.extend(match verdict {
            Ok(end) => self.pay_out(now, id, end)?,
            Err(breach) => self.slash(now, id, breach)?,
        });
        Ok(events)
    }

    /// Judges a pending settlement of `id` early, once nothing it waits for can change it any
    /// more (see [`Ledger::awaits_evidence`]).
    pub(super) fn finish_closing_if_ready(
        &mut self,
        now: Timestamp,
        id: ContractId,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let rec = self.record(id)?;
        let Some(end) = rec.closing else {
            return Ok(Vec::new());
        };
        let verdict = breach_of(rec, end, self.params.block_time_tolerance_ms);
        if self.awaits_evidence(rec, end, now, verdict) {
            return Ok(Vec::new());
        }
        self.finish_closing(now, id)
    }

    /// Judges a pending settlement (the evidence it waited for arrived, or the grace period
    /// passed).
    pub(super) fn finish_closing(
        &mut self,
        now: Timestamp,
        id: ContractId,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let rec = self.record(id)?;
        let Some(end) = rec.closing else {
            return Ok(Vec::new());
        };
        let verdict = breach_of(rec, end, self.params.block_time_tolerance_ms);
        if let Some(r) = self.contracts.get_mut(&id) {
            r.closing = None;
        }
        match verdict {
            None => self.pay_out(now, id, end),
            Some(b) => self.slash(now, id, b),
        }
    }

    fn pay_out(
        &mut self,
        now: Timestamp,
        id: ContractId,
        end: Timestamp,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let target = self.can_step(id, LifecycleEvent::Complete)?;
        target
            .transition(LifecycleEvent::Settle)
            .map_err(|source| LedgerError::Lifecycle {
                contract: id,
                source,
            })?;
        let rec = self.record(id)?;
        let provider = rec.contract.provider;
        let to_pay = earned(rec, end)
            .saturating_sub(rec.paid_to_provider)
            .min(rec.escrow.payment);
        let mut events = vec![self.step(id, LifecycleEvent::Complete, now)?];
        if to_pay > 0 {
            self.release(id, Part::Payment, to_pay, provider)?;
            events.push(LedgerEvent::Paid {
                contract: id,
                to: provider,
                amount: to_pay,
            });
        }
        self.refund_all(id, &mut events)?;
        // Reputation is earned only by service the customer paid for: a contract settled
        // before any (a span of zero, no breach) earned a reward, so a key dealing with itself
        // farmed reputation for free (found by a read-only audit in session 49).
        let paid = self.record(id)?.paid_to_provider;
        events.push(self.step(id, LifecycleEvent::Settle, now)?);
        if paid > 0 {
            let reward = self.params.reputation_reward;
            events.push(self.adjust_reputation(provider, reward));
        }
        info!(contract = %id.short(), paid = to_pay, "contract settled");
        Ok(events)
    }

    fn slash(
        &mut self,
        now: Timestamp,
        id: ContractId,
        reason: BreachReason,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let target = self.can_step(id, LifecycleEvent::Breach)?;
        target
            .transition(LifecycleEvent::Slash)
            .map_err(|source| LedgerError::Lifecycle {
                contract: id,
                source,
            })?;
        let rec = self.record(id)?;
        let (customer, provider, stake) = (
            rec.contract.customer,
            rec.contract.provider,
            rec.escrow.provider_stake,
        );
        let mut events = vec![self.step(id, LifecycleEvent::Breach, now)?];
        self.release(id, Part::ProviderStake, stake, customer)?;
        events.push(LedgerEvent::Slashed {
            contract: id,
            provider,
            customer,
            amount: stake,
            reason,
        });
        self.refund_all(id, &mut events)?;
        events.push(self.step(id, LifecycleEvent::Slash, now)?);
        let penalty = self.params.reputation_penalty;
        events.push(self.adjust_reputation(provider, penalty.saturating_neg()));
        info!(contract = %id.short(), ?reason, stake, "provider slashed");
        Ok(events)
    }
}
