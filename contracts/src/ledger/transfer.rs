//! Transfer and faucet handlers.
//!
//! State grows only with funds behind it: a transfer of 0 is refused, and one that would create
//! an account must bring at least `params.min_account_balance`. The faucet (devnets only) mints
//! only to existing accounts (every transaction's sender must exist), at most
//! `faucet_max_per_tx` per transaction, `faucet_max_per_account` per account over the chain's
//! life and `faucet_max_per_block` per block, so free keys can neither mint nor create accounts.

use agora_market::NodeId;

use super::{FaucetWindow, Ledger, LedgerError, LedgerEvent};
use crate::contract::Amount;

impl Ledger {
    pub(super) fn transfer(
        &mut self,
        from: NodeId,
        to: NodeId,
        amount: Amount,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        if amount == 0 {
            return Err(LedgerError::ZeroAmount { sender: from });
        }
        let min = self.params.min_account_balance;
        if !self.accounts.contains_key(&to) && amount < min {
            return Err(LedgerError::BelowMinimumBalance { to, amount, min });
        }
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
        if amount == 0 {
            return Err(LedgerError::ZeroAmount { sender: to });
        }
        let max = self.params.faucet_max_per_tx;
        if amount > max {
            return Err(LedgerError::FaucetLimit {
                requested: amount,
                max,
            });
        }
        let received = self.accounts.get(&to).map_or(0, |a| a.faucet_received);
        let max = self.params.faucet_max_per_account;
        let after = received.checked_add(amount).filter(|a| *a <= max);
        let Some(received_after) = after else {
            return Err(LedgerError::FaucetAccountCap {
                account: to,
                received,
                requested: amount,
                max,
            });
        };
        // The block being applied is the one after the last applied.
        let block = self.height.saturating_add(1);
        let in_block = if self.faucet_window.height == block {
            self.faucet_window.minted
        } else {
            0
        };
        let max = self.params.faucet_max_per_block;
        let Some(in_block_after) = in_block.checked_add(amount).filter(|m| *m <= max) else {
            return Err(LedgerError::FaucetBlockCap {
                minted: in_block,
                requested: amount,
                max,
            });
        };
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
        self.faucet_window = FaucetWindow {
            height: block,
            minted: in_block_after,
        };
        if let Some(account) = self.accounts.get_mut(&to) {
            account.faucet_received = received_after;
        }
        Ok(vec![LedgerEvent::Minted { to, amount }])
    }
}
