//! Contract setup handlers: register (lock funds), migrated, armed, cancel, expire.

use agora_market::{NodeId, Timestamp};
use tracing::info;

use super::{ContractRecord, Ledger, LedgerError, LedgerEvent};
use crate::contract::{ActivationClause, ContractId, ContractKind, SignedContract};
use crate::lifecycle::{ContractStatus, LifecycleEvent};

/// A pre-contracted slot's contract (`ActivationClause::At`) is registered only while its
/// activation deadline is at least this far ahead: the provider countersigned with its own
/// activation time to spare, and a customer holding the signed contract back until the
/// deadline passed would otherwise settle it `NoActivation` in the next block (THREATS C8).
pub const MIN_SLOT_LEAD_MS: u64 = 2_000;

/// How long after its signing (`Contract::created_at`, which both parties signed) a contract
/// may still be registered (THREATS C8): a customer that holds a countersigned contract back
/// cannot bind the provider's stake and capacity at old terms long after the provider agreed
/// to them. The honest flow registers within seconds; ten minutes leaves room for a chain
/// slowed by a backlog.
pub const MAX_REGISTER_AGE_MS: u64 = 600_000;
/// How far after a block's time a contract's `created_at` may lie (the customer's clock ahead).
pub const MAX_CREATED_AHEAD_MS: u64 = 60_000;

fn not_allowed(contract: ContractId, sender: NodeId, action: &'static str) -> LedgerError {
    LedgerError::NotAllowed {
        contract,
        sender,
        action,
    }
}

impl Ledger {
    /// Checks that `event` is allowed for `contract` now, without changing anything.
    pub(super) fn can_step(
        &self,
        contract: ContractId,
        event: LifecycleEvent,
    ) -> Result<ContractStatus, LedgerError> {
        self.record(contract)?
            .status
            .transition(event)
            .map_err(|source| LedgerError::Lifecycle { contract, source })
    }

    pub(super) fn register(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        signed: &SignedContract,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let id = signed.verify()?;
        let c = &signed.contract;
        // Only the customer: the provider holds the customer's signature from its proposal
        // whether or not it answers, and a provider that registered a standby contract it
        // "refused", then armed it in the same block, locked the customer in for the whole
        // payment with no call-off left (found by a read-only audit in session 49).
        if sender != c.customer {
            return Err(not_allowed(id, sender, "register"));
        }
        if self.contracts.contains_key(&id) {
            return Err(LedgerError::DuplicateContract(id));
        }
        // Signed in the future (beyond clock skew): refused, so the register window really
        // closes `MAX_REGISTER_AGE_MS` after `created_at` and a forgotten contract can never be
        // registered again (THREATS N12).
        if c.created_at > now.saturating_add(MAX_CREATED_AHEAD_MS) {
            return Err(LedgerError::NotNow {
                contract: id,
                status: ContractStatus::Signed,
                reason: format!(
                    "signed at {}, more than {MAX_CREATED_AHEAD_MS} ms after this block's time",
                    c.created_at
                ),
            });
        }
        let age = now.saturating_sub(c.created_at);
        if age > MAX_REGISTER_AGE_MS {
            return Err(LedgerError::NotNow {
                contract: id,
                status: ContractStatus::Signed,
                reason: format!(
                    "signed {age} ms ago, more than {MAX_REGISTER_AGE_MS} ms: registered too late"
                ),
            });
        }
        if let ActivationClause::At(start_at) = c.activation {
            let deadline = start_at.saturating_add(c.qos.max_activation_delay_ms);
            if deadline < now.saturating_add(MIN_SLOT_LEAD_MS) {
                return Err(LedgerError::NotNow {
                    contract: id,
                    status: ContractStatus::Signed,
                    reason: format!(
                        "its slot must be active by {deadline}, less than {MIN_SLOT_LEAD_MS} ms \
                         from now ({now}): registered too late"
                    ),
                });
            }
        }
        // `verify` already refused duplicates and parties on the committee.
        let min = self.params.min_committee;
        if c.committee.len() < min {
            return Err(LedgerError::CommitteeTooSmall {
                contract: id,
                size: c.committee.len(),
                min,
            });
        }
        if let Some(a) = c.committee.iter().find(|a| !self.committee.contains(a)) {
            return Err(LedgerError::UnknownArbitrator {
                contract: id,
                arbitrator: *a,
            });
        }
        if let Some(a) = c.committee.iter().find(|a| self.slashed.contains_key(a)) {
            return Err(LedgerError::SlashedInCommittee {
                contract: id,
                arbitrator: *a,
            });
        }
        // One customer's records are bounded (THREATS N12): its closed ones go an hour after
        // they closed.
        let held = self
            .accounts
            .get(&c.customer)
            .map_or(0, |a| a.contracts_held);
        let max = self.params.max_contracts_per_customer;
        if held >= max {
            return Err(LedgerError::NotNow {
                contract: id,
                status: ContractStatus::Signed,
                reason: format!(
                    "its customer already has {held} contracts on the ledger, the most one may \
                     have (open or closed within the hour)"
                ),
            });
        }
        let customer_lock = c.customer_lock().ok_or(LedgerError::Overflow {
            context: "payment plus customer stake",
        })?;
        let record = ContractRecord::new(c.clone(), now).ok_or(LedgerError::Overflow {
            context: "escrow total",
        })?;
        self.require_funds(c.customer, customer_lock)?;
        self.require_funds(c.provider, c.stakes.provider_stake)?;
        let locked = record.escrow.total().unwrap_or(0);
        self.lock(c.customer, customer_lock)?;
        self.lock(c.provider, c.stakes.provider_stake)?;
        // The customer locked its payment (> 0), so its account exists.
        if let Some(a) = self.accounts.get_mut(&c.customer) {
            a.contracts_held = a.contracts_held.saturating_add(1);
        }
        self.contracts.insert(id, record);
        info!(contract = %id.short(), customer = %c.customer.short(), provider = %c.provider.short(), locked, "contract registered");
        Ok(vec![
            LedgerEvent::ContractRegistered {
                contract: id,
                customer: c.customer,
                provider: c.provider,
                locked,
            },
            LedgerEvent::StatusChanged {
                contract: id,
                from: ContractStatus::Signed,
                to: ContractStatus::Validated,
            },
        ])
    }

    fn require_provider(
        &self,
        id: ContractId,
        sender: NodeId,
        action: &'static str,
    ) -> Result<(), LedgerError> {
        if self.record(id)?.contract.provider != sender {
            return Err(not_allowed(id, sender, action));
        }
        Ok(())
    }

    pub(super) fn mark_migrated(
        &mut self,
        sender: NodeId,
        id: ContractId,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        self.require_provider(id, sender, "mark migrated")?;
        Ok(vec![self.step(id, LifecycleEvent::Migrate, 0)?])
    }

    pub(super) fn mark_armed(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        id: ContractId,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        self.require_provider(id, sender, "arm")?;
        // A standby armed when its coverage window has ended covers nothing (THREATS P5: one
        // armed at the window's end was settled `DurationEnded` and paid the whole window).
        if let Some(rec) = self.contracts.get(&id) {
            let ended = rec.window_end().is_some_and(|e| now >= e);
            if rec.contract.kind == ContractKind::Standby && ended {
                return Err(LedgerError::NotNow {
                    contract: id,
                    status: rec.status,
                    reason: "its coverage window has ended: a standby armed now covers nothing"
                        .into(),
                });
            }
        }
        let mut events = vec![self.step(id, LifecycleEvent::Arm, now)?];
        if let Some(rec) = self.contracts.get_mut(&id) {
            rec.armed_at = Some(now);
            if rec.contract.activation == ActivationClause::Immediately {
                rec.trigger_at = Some(now);
            }
        }
        // The customer may already be down: evaluate the handover rule right away.
        events.extend(self.evaluate_handover(now, id));
        Ok(events)
    }

    pub(super) fn cancel(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        id: ContractId,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let rec = self.record(id)?;
        let status = rec.status;
        let allowed = if sender == rec.contract.customer {
            // Once handover is attested the customer cannot walk away from the takeover, and
            // an armed standby's coverage is paid for: its customer ends it at the window's
            // end, not by a refund after being covered (THREATS C9).
            rec.handover.is_none()
                && !(rec.contract.kind == ContractKind::Standby && status == ContractStatus::Armed)
        } else if sender == rec.contract.provider {
            // A provider may back out only before it committed to stand by.
            status.provider_may_cancel()
        } else {
            false
        };
        if !allowed {
            return Err(not_allowed(id, sender, "cancel"));
        }
        self.can_step(id, LifecycleEvent::Cancel)?;
        let mut events = Vec::new();
        self.refund_all(id, &mut events)?;
        events.push(self.step(id, LifecycleEvent::Cancel, now)?);
        Ok(events)
    }

    pub(super) fn expire(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        id: ContractId,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let rec = self.record(id)?;
        if sender != rec.contract.customer && sender != rec.contract.provider {
            return Err(not_allowed(id, sender, "expire"));
        }
        if !matches!(
            rec.status,
            ContractStatus::Validated | ContractStatus::Migrated
        ) {
            return Err(LedgerError::NotNow {
                contract: id,
                status: rec.status,
                reason: "only contracts that were never armed can expire; settle armed ones".into(),
            });
        }
        let deadline = rec
            .registered_at
            .saturating_add(rec.contract.duration_ms)
            .saturating_add(self.params.expiry_grace_ms);
        if now < deadline {
            return Err(LedgerError::NotNow {
                contract: id,
                status: rec.status,
                reason: format!("expires at {deadline}, not before"),
            });
        }
        let mut events = Vec::new();
        self.refund_all(id, &mut events)?;
        events.push(self.step(id, LifecycleEvent::Expire, now)?);
        Ok(events)
    }

    /// True for standby contracts waiting for a handover of `customer`.
    pub(super) fn awaits_handover(rec: &ContractRecord) -> bool {
        rec.contract.kind == ContractKind::Standby
            && rec.status == ContractStatus::Armed
            && rec.handover.is_none()
    }
}
