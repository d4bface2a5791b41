//! Transfer and faucet handlers.

use agora_market::NodeId;

use super::{Ledger, LedgerError, LedgerEvent};
use crate::contract::Amount;

impl Ledger {
    pub(super) fn transfer(
        &mut self,
        from: NodeId,
        to: NodeId,
        amount: Amount,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        self.require_funds(from, amount)?;
        self.debit(from, amount)?;
        self.credit(to, amount)?;
        Ok(vec![LedgerEvent::Transferred { from, to, amount }])
    }

    pub(super) fn faucet(
        &mut self,
        to: NodeId,
        amount: Amount,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        if !self.faucet_enabled {
            return Err(LedgerError::FaucetDisabled);
        }
        let max = self.params.faucet_max_per_tx;
        if amount > max {
            return Err(LedgerError::FaucetLimit {
                requested: amount,
                max,
            });
        }
        // Keep the whole supply representable so no later credit can overflow.
        let minted = self
            .supply
            .minted
            .checked_add(amount)
            .filter(|m| self.supply.genesis.checked_add(*m).is_some())
            .ok_or(LedgerError::Overflow {
                context: "minting beyond the representable supply",
            })?;
        self.credit(to, amount)?;
        self.supply.minted = minted;
        Ok(vec![LedgerEvent::Minted { to, amount }])
    }
}
