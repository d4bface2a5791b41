//! Arbitrators: bonds locked at genesis, equivocation slashing, and who may sit on new
//! contract committees.
//!
//! Every genesis arbitrator must be a funded genesis account; `params.arbitrator_bond` moves
//! from its balance into `Account::bonded` (tokens are conserved: the bond is still counted in
//! the supply). `ReportEquivocation` with valid evidence burns the whole bond (tracked in
//! `Supply::burned`), records the arbitrator as slashed — once: later evidence against it is
//! refused — and from then on new contracts may not name it and its reports no longer count.
//! Burning rather than paying the reporter means nobody profits from reporting, not even the
//! equivocator reporting itself.

use std::collections::{BTreeMap, BTreeSet};

use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Account, Ledger, LedgerError, LedgerEvent};
use crate::contract::Amount;
use crate::vote::EquivocationEvidence;

/// Why and when an arbitrator was slashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlashedArbitrator {
    /// Height of the conflicting votes.
    pub height: u64,
    /// Round of the conflicting votes.
    pub round: u32,
    /// Ledger time of the slash.
    pub at: Timestamp,
    /// Bond burned.
    pub amount: Amount,
}

/// What the faucet minted in one block (the per-block cap's counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaucetWindow {
    /// The block height the counter belongs to.
    pub height: u64,
    /// Minted in that block.
    pub minted: Amount,
}

/// Locks `bond` from each arbitrator's genesis balance; returns the committee set.
pub(super) fn bond_committee(
    committee: &[NodeId],
    bond: Amount,
    accounts: &mut BTreeMap<NodeId, Account>,
) -> Result<BTreeSet<NodeId>, LedgerError> {
    let mut set = BTreeSet::new();
    for id in committee {
        if !set.insert(*id) {
            return Err(LedgerError::BadGenesis(format!(
                "arbitrator {id} is listed twice in the committee"
            )));
        }
        let Some(account) = accounts.get_mut(id) else {
            return Err(LedgerError::BadGenesis(format!(
                "arbitrator {id} has no genesis account; fund it with at least the bond {bond}"
            )));
        };
        if account.balance < bond {
            return Err(LedgerError::BadGenesis(format!(
                "arbitrator {id} holds {} but must lock a bond of {bond}; raise its balance or \
                 lower params.arbitrator_bond",
                account.balance
            )));
        }
        account.balance -= bond;
        account.bonded = bond;
    }
    Ok(set)
}

impl Ledger {
    /// Arbitrators slashed for equivocation.
    pub fn slashed(&self) -> &BTreeMap<NodeId, SlashedArbitrator> {
        &self.slashed
    }

    /// Whether `id` was slashed for equivocation.
    pub fn is_slashed(&self, id: &NodeId) -> bool {
        self.slashed.contains_key(id)
    }

    /// The arbitrators new contract committees may name: the genesis committee minus the
    /// slashed. A deal's committee is this minus its two parties (see
    /// [`crate::deal::CommitteeView`]).
    pub fn eligible_committee(&self) -> Vec<NodeId> {
        self.committee
            .iter()
            .filter(|a| !self.slashed.contains_key(a))
            .copied()
            .collect()
    }

    /// Refuses reports from arbitrators that were slashed.
    pub(super) fn require_unslashed(&self, arbitrator: NodeId) -> Result<(), LedgerError> {
        if self.slashed.contains_key(&arbitrator) {
            return Err(LedgerError::SlashedArbitrator { arbitrator });
        }
        Ok(())
    }

    pub(super) fn report_equivocation(
        &mut self,
        now: Timestamp,
        reporter: NodeId,
        evidence: &EquivocationEvidence,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let arbitrator = evidence.verify(&crate::vote::ChainTag::of(&self.chain_id))?;
        if !self.committee.contains(&arbitrator) {
            return Err(LedgerError::NotCommitteeMember {
                attester: arbitrator,
            });
        }
        if self.slashed.contains_key(&arbitrator) {
            return Err(LedgerError::AlreadySlashed { arbitrator });
        }
        let burned = self
            .supply
            .burned
            .checked_add(self.accounts.get(&arbitrator).map_or(0, |a| a.bonded))
            .ok_or(LedgerError::Overflow {
                context: "burning a bond",
            })?;
        let account = self.accounts.entry(arbitrator).or_default();
        let amount = std::mem::take(&mut account.bonded);
        self.supply.burned = burned;
        let vote = evidence.first.vote;
        self.slashed.insert(
            arbitrator,
            SlashedArbitrator {
                height: vote.height,
                round: vote.round,
                at: now,
                amount,
            },
        );
        warn!(arbitrator = %arbitrator.short(), reporter = %reporter.short(), height = vote.height, round = vote.round, amount, "arbitrator slashed for equivocation");
        Ok(vec![LedgerEvent::ArbitratorSlashed {
            arbitrator,
            reporter,
            height: vote.height,
            round: vote.round,
            amount,
        }])
    }
}
