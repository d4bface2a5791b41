//! Settlement: evaluate the evidence, then pay the provider (honoured) or slash it (breached).
//!
//! Payment rules: hosted contracts pay `payment × verified uptime / duration` (also collectable
//! periodically with `SettleUptime`); standby and storage pay `payment × elapsed / duration` of
//! their service window, so a customer coming back early pays pro rata. Uptime is the provider's
//! signed heartbeat claim, minus any time a committee quorum reports the provider unreachable.

use agora_market::{NodeId, Timestamp};
use tracing::info;

use super::funds::Part;
use super::{BreachReason, ContractRecord, Ledger, LedgerError, LedgerEvent, SettleReason};
use crate::contract::{Amount, ContractId, ContractKind};
use crate::lifecycle::{ContractStatus, LifecycleEvent};

/// `amount × num / den`, rounded down, with `num` capped at `den`.
fn pro_rata(amount: Amount, num: u64, den: u64) -> Amount {
    if den == 0 {
        return amount;
    }
    let v = u128::from(amount) * u128::from(num.min(den)) / u128::from(den);
    Amount::try_from(v).unwrap_or(amount)
}

/// Total payment the provider has earned by `end` for an honoured contract.
fn earned(rec: &ContractRecord, end: Timestamp) -> Amount {
    let c = &rec.contract;
    match c.kind {
        ContractKind::Hosted => pro_rata(c.payment, rec.uptime_ms, c.duration_ms),
        ContractKind::Standby | ContractKind::Storage => {
            let start = rec.window_start().unwrap_or(end);
            pro_rata(c.payment, end.saturating_sub(start), c.duration_ms)
        }
    }
}

/// Judges an active contract's evidence up to `end`.
fn breach_of(rec: &ContractRecord, end: Timestamp) -> Option<BreachReason> {
    let c = &rec.contract;
    let activated = rec.activated_at?;
    let delay_ms = activated.saturating_sub(rec.trigger_at.unwrap_or(activated));
    if delay_ms > c.qos.max_activation_delay_ms {
        return Some(BreachReason::LateActivation { delay_ms });
    }
    let min = u64::from(c.qos.min_uptime_permille);
    if c.kind == ContractKind::Storage {
        let total = rec.storage_passed.saturating_add(rec.storage_failed);
        // No challenges issued means no evidence against the provider.
        let permille = rec
            .storage_passed
            .saturating_mul(1000)
            .checked_div(total)
            .unwrap_or(1000);
        return (permille < min).then_some(BreachReason::FailedStorageProofs { permille });
    }
    let span = end.saturating_sub(activated);
    if span == 0 {
        return None;
    }
    // The provider cannot have reported the interval since its last heartbeat when the other
    // side settles: up to one heartbeat interval of that tail counts in its favour.
    let reported_to = rec.last_uptime_end.unwrap_or(activated);
    let tail = end
        .saturating_sub(reported_to)
        .min(c.qos.heartbeat_interval_ms);
    let judged = rec.uptime_ms.saturating_add(tail).min(span);
    let permille = u64::try_from(u128::from(judged) * 1000 / u128::from(span)).unwrap_or(1000);
    (permille < min).then_some(BreachReason::InsufficientUptime { permille })
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
        let to_pay = earned(rec, 0)
            .saturating_sub(rec.paid_to_provider)
            .min(rec.escrow.payment);
        if rec.status != ContractStatus::Active || to_pay == 0 {
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
                match breach_of(rec, effective_end) {
                    // The shortfall may be heartbeats still in flight: judge when they arrive.
                    Some(BreachReason::InsufficientUptime { .. })
                        if effective_end.saturating_sub(rec.last_uptime_end.unwrap_or(0))
                            > c.qos.heartbeat_interval_ms =>
                    {
                        let until = effective_end.saturating_add(rec.closing_grace_ms());
                        if let Some(r) = self.contracts.get_mut(&id) {
                            r.closing = Some(effective_end);
                        }
                        return Ok(vec![LedgerEvent::SettlementPending {
                            contract: id,
                            end: effective_end,
                            until,
                        }]);
                    }
                    Some(b) => Err(b),
                    None => Ok(effective_end),
                }
            }
            ContractStatus::Validated | ContractStatus::Migrated | ContractStatus::Armed => {
                let missed = rec.activation_deadline().is_some_and(|d| now > d);
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
        match verdict {
            Ok(end) => self.pay_out(now, id, end),
            Err(breach) => self.slash(now, id, breach),
        }
    }

    /// Judges a pending settlement (the provider's heartbeats reached its end, or the grace
    /// period passed).
    pub(super) fn finish_closing(
        &mut self,
        now: Timestamp,
        id: ContractId,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let rec = self.record(id)?;
        let Some(end) = rec.closing else {
            return Ok(Vec::new());
        };
        let verdict = breach_of(rec, end);
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
        events.push(self.step(id, LifecycleEvent::Settle, now)?);
        let reward = self.params.reputation_reward;
        events.push(self.adjust_reputation(provider, reward));
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
