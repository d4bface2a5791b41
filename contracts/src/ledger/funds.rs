//! Moving tokens: spendable balances, escrow locks and releases, reputation and status changes.
//!
//! Handlers validate first and call these afterwards; given the audited invariants (no balance
//! or escrow exceeds the total supply, which fits in `u64`) the checked operations here cannot
//! fail once validation passed, so a refused transaction never leaves partial changes.

use agora_market::{NodeId, Timestamp};

use super::{Ledger, LedgerError, LedgerEvent};
use crate::contract::{Amount, ContractId};
use crate::ledger::ContractRecord;
use crate::lifecycle::LifecycleEvent;

/// Which escrow bucket to release from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Part {
    Payment,
    CustomerStake,
    ProviderStake,
}

fn overflow(context: &'static str) -> LedgerError {
    LedgerError::Overflow { context }
}

impl Ledger {
    /// Spendable balance of `id` (0 if unknown).
    pub fn spendable(&self, id: &NodeId) -> Amount {
        self.accounts.get(id).map_or(0, |a| a.balance)
    }

    pub(super) fn require_funds(&self, id: NodeId, needed: Amount) -> Result<(), LedgerError> {
        let available = self.spendable(&id);
        if available < needed {
            return Err(LedgerError::InsufficientFunds {
                account: id,
                available,
                needed,
            });
        }
        Ok(())
    }

    pub(super) fn debit(&mut self, id: NodeId, amount: Amount) -> Result<(), LedgerError> {
        self.require_funds(id, amount)?;
        if amount == 0 {
            // No account is made for nothing (a contract's throwaway party locking 0 got one,
            // past the minimum balance a new account needs: THREATS N12).
            return Ok(());
        }
        let acc = self.accounts.entry(id).or_default();
        acc.balance = acc
            .balance
            .checked_sub(amount)
            .ok_or(overflow("debiting"))?;
        Ok(())
    }

    pub(super) fn credit(&mut self, id: NodeId, amount: Amount) -> Result<(), LedgerError> {
        let acc = self.accounts.entry(id).or_default();
        acc.balance = acc
            .balance
            .checked_add(amount)
            .ok_or(overflow("crediting"))?;
        Ok(())
    }

    /// Moves `amount` from `id`'s spendable balance into its locked total.
    pub(super) fn lock(&mut self, id: NodeId, amount: Amount) -> Result<(), LedgerError> {
        self.debit(id, amount)?;
        if amount == 0 {
            return Ok(());
        }
        let acc = self.accounts.entry(id).or_default();
        acc.locked = acc.locked.checked_add(amount).ok_or(overflow("locking"))?;
        Ok(())
    }

    pub(super) fn record(&self, id: ContractId) -> Result<&ContractRecord, LedgerError> {
        self.contracts
            .get(&id)
            .ok_or(LedgerError::UnknownContract(id))
    }

    /// Releases `amount` from one escrow bucket of `contract` to `to`'s spendable balance.
    pub(super) fn release(
        &mut self,
        contract: ContractId,
        part: Part,
        amount: Amount,
        to: NodeId,
    ) -> Result<(), LedgerError> {
        if amount == 0 {
            return Ok(());
        }
        let rec = self
            .contracts
            .get_mut(&contract)
            .ok_or(LedgerError::UnknownContract(contract))?;
        let (bucket, owner) = match part {
            Part::Payment => (&mut rec.escrow.payment, rec.contract.customer),
            Part::CustomerStake => (&mut rec.escrow.customer_stake, rec.contract.customer),
            Part::ProviderStake => (&mut rec.escrow.provider_stake, rec.contract.provider),
        };
        *bucket = bucket
            .checked_sub(amount)
            .ok_or(overflow("releasing escrow"))?;
        if part == Part::Payment && to == rec.contract.provider {
            rec.paid_to_provider = rec
                .paid_to_provider
                .checked_add(amount)
                .ok_or(overflow("counting payments"))?;
        }
        let acc = self.accounts.entry(owner).or_default();
        acc.locked = acc
            .locked
            .checked_sub(amount)
            .ok_or(overflow("unlocking"))?;
        self.credit(to, amount)
    }

    /// Returns everything still in escrow to its owners, emitting `Refunded` events.
    pub(super) fn refund_all(
        &mut self,
        contract: ContractId,
        events: &mut Vec<LedgerEvent>,
    ) -> Result<(), LedgerError> {
        let rec = self.record(contract)?;
        let (customer, provider, e) = (rec.contract.customer, rec.contract.provider, rec.escrow);
        for (part, amount, to) in [
            (Part::Payment, e.payment, customer),
            (Part::CustomerStake, e.customer_stake, customer),
            (Part::ProviderStake, e.provider_stake, provider),
        ] {
            if amount > 0 {
                self.release(contract, part, amount, to)?;
                events.push(LedgerEvent::Refunded {
                    contract,
                    to,
                    amount,
                });
            }
        }
        Ok(())
    }

    /// Applies a lifecycle event to a contract's status.
    pub(super) fn step(
        &mut self,
        contract: ContractId,
        event: LifecycleEvent,
        now: Timestamp,
    ) -> Result<LedgerEvent, LedgerError> {
        let rec = self
            .contracts
            .get_mut(&contract)
            .ok_or(LedgerError::UnknownContract(contract))?;
        let from = rec.status;
        let to = from
            .transition(event)
            .map_err(|source| LedgerError::Lifecycle { contract, source })?;
        rec.status = to;
        if to.is_final() {
            rec.closed_at = Some(now);
            // No report can arrive any more: the open tallies are dead weight in the state.
            rec.probes = Default::default();
            rec.audits = Default::default();
        }
        Ok(LedgerEvent::StatusChanged { contract, from, to })
    }

    /// Adds `delta` to an account's reputation. A node without an account (a contract's
    /// party that locked nothing) gets none for it: a reputation change made an account for a
    /// throwaway provider, past the minimum balance a new account needs (THREATS N12).
    pub(super) fn adjust_reputation(&mut self, id: NodeId, delta: i64) -> LedgerEvent {
        let reputation = match self.accounts.get_mut(&id) {
            Some(acc) => {
                acc.reputation = acc.reputation.saturating_add(delta);
                acc.reputation
            }
            None => 0,
        };
        LedgerEvent::ReputationChanged {
            account: id,
            delta,
            reputation,
        }
    }
}
