//! The ledger: a pure, deterministic state machine over signed transactions.
//!
//! Every replica applying the same blocks from the same genesis reaches the same
//! [`Ledger::state_hash`]. A refused transaction changes nothing (handlers check before they
//! mutate). Tokens are conserved: spendable balances plus escrow always equal the genesis supply
//! plus faucet mints (see [`Ledger::audit`]).

use std::collections::{BTreeMap, BTreeSet};

use agora_market::{NodeId, Signer, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::attestation::{self, Liveness, Observation};
use crate::contract::{ActivationClause, Amount, ContractId};
use crate::lifecycle::ContractStatus;

mod admission;
mod arbitrators;
mod block_time;
mod error;
mod event;
mod evidence;
mod funds;
mod genesis;
mod quorum;
mod register;
mod reports;
mod settle;
mod state;
mod transfer;
mod tx;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod tests;

pub use admission::{AdmissionError, AdmissionPolicy};
pub use arbitrators::{FaucetWindow, SlashedArbitrator};
pub use block_time::{BlockTimeError, check_block_time};
pub use error::LedgerError;
pub use event::{BreachReason, LedgerEvent};
pub use evidence::MAX_CLOCK_SKEW_MS;
pub use genesis::{
    ACTIVATION_REPORT_GRACE_MS, Genesis, GenesisAccount, LedgerParams, b58, b58_vec,
};
pub use quorum::RoundTally;
pub use register::{MAX_REGISTER_AGE_MS, MIN_SLOT_LEAD_MS};
pub use state::{Account, ContractRecord, Escrow, MIN_EVIDENCE_PERIOD_MS};
pub use tx::{
    HeartbeatBatch, MAX_PROBE_RESULTS, ProbeReport, SettleReason, SignedTransaction, Transaction,
    TxKind, UptimeInterval,
};

/// Outcome of applying a block: events of accepted transactions and why others were refused.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BlockOutcome {
    /// The block height applied.
    pub height: u64,
    /// Events of the accepted transactions, in order.
    pub events: Vec<LedgerEvent>,
    /// Indices of refused transactions with the reason; they changed nothing.
    pub rejected: Vec<(usize, LedgerError)>,
}

/// Minted and burned token totals, tracked to check conservation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supply {
    /// Tokens created at genesis.
    pub genesis: Amount,
    /// Tokens minted by the faucet since.
    pub minted: Amount,
    /// Tokens destroyed since (bonds of arbitrators slashed for equivocation).
    #[serde(default)]
    pub burned: Amount,
}

impl Supply {
    /// All tokens in existence.
    pub fn total(&self) -> Amount {
        self.genesis
            .saturating_add(self.minted)
            .saturating_sub(self.burned)
    }
}

/// How long a closed contract's record stays in the ledger state after it closed, ms: for
/// operators to look it up and for the nodes to finish with it (a provider retires a service
/// 10 s after its stop); then [`Ledger::tick`] forgets it. At least [`MAX_REGISTER_AGE_MS`], so
/// a forgotten contract can never be registered again.
pub const RETAIN_CLOSED_MS: u64 = 60 * 60 * 1000;
const _: () = assert!(RETAIN_CLOSED_MS >= MAX_REGISTER_AGE_MS + register::MAX_CREATED_AHEAD_MS);

/// The replicated ledger state. Clone + serde so the node can snapshot it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    chain_id: String,
    params: LedgerParams,
    faucet_enabled: bool,
    committee: BTreeSet<NodeId>,
    accounts: BTreeMap<NodeId, Account>,
    contracts: BTreeMap<ContractId, ContractRecord>,
    /// Latest observation per subject, per arbitrator.
    liveness: BTreeMap<NodeId, BTreeMap<NodeId, Observation>>,
    supply: Supply,
    height: u64,
    last_block_time: Timestamp,
    /// Arbitrators proven to equivocate: their bond is burned and new contracts may not name
    /// them.
    #[serde(default)]
    slashed: BTreeMap<NodeId, SlashedArbitrator>,
    /// What the faucet minted in the block being applied.
    #[serde(default)]
    faucet_window: FaucetWindow,
}

impl Ledger {
    /// Builds the initial state from a genesis.
    pub fn from_genesis(genesis: &Genesis) -> Result<Self, LedgerError> {
        if genesis.chain_id.is_empty() {
            return Err(LedgerError::BadGenesis("chain_id is empty".into()));
        }
        if genesis.params.min_committee == 0 {
            return Err(LedgerError::BadGenesis(
                "params.min_committee is 0; set it to at least 4 (3f+1 with f >= 1)".into(),
            ));
        }
        let mut accounts = BTreeMap::new();
        let mut total: Amount = 0;
        for a in &genesis.accounts {
            total = total.checked_add(a.balance).ok_or(LedgerError::Overflow {
                context: "summing genesis balances",
            })?;
            let fresh = Account {
                balance: a.balance,
                ..Account::default()
            };
            if accounts.insert(a.id, fresh).is_some() {
                return Err(LedgerError::BadGenesis(format!(
                    "account {} is listed twice; merge its balances",
                    a.id
                )));
            }
        }
        let committee = arbitrators::bond_committee(
            &genesis.committee,
            genesis.params.arbitrator_bond,
            &mut accounts,
        )?;
        Ok(Ledger {
            chain_id: genesis.chain_id.clone(),
            params: genesis.params.clone(),
            faucet_enabled: genesis.faucet_enabled,
            committee,
            accounts,
            contracts: BTreeMap::new(),
            liveness: BTreeMap::new(),
            supply: Supply {
                genesis: total,
                minted: 0,
                burned: 0,
            },
            height: 0,
            last_block_time: 0,
            slashed: BTreeMap::new(),
            faucet_window: FaucetWindow::default(),
        })
    }

    /// Applies one signed transaction at ledger time `now`. On error nothing changes.
    pub fn apply(
        &mut self,
        now: Timestamp,
        stx: &SignedTransaction,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        self.apply_checked(now, stx, false)
    }

    /// [`Ledger::apply`], skipping the signature check when the caller already verified exactly
    /// this transaction (e.g. at mempool admission). The outcome is the same as with the check.
    fn apply_checked(
        &mut self,
        now: Timestamp,
        stx: &SignedTransaction,
        signature_verified: bool,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let tx = &stx.tx;
        if tx.chain_id != self.chain_id {
            return Err(LedgerError::WrongChain {
                expected: self.chain_id.clone(),
                got: tx.chain_id.clone(),
            });
        }
        let Some(account) = self.accounts.get(&tx.sender) else {
            return Err(LedgerError::UnknownAccount { sender: tx.sender });
        };
        let expected = account.nonce;
        if tx.nonce != expected {
            return Err(LedgerError::BadNonce {
                sender: tx.sender,
                expected,
                got: tx.nonce,
            });
        }
        if !signature_verified {
            stx.verify()?;
        }
        let sender = tx.sender;
        let events = match &tx.kind {
            TxKind::Transfer { to, amount } => self.transfer(sender, *to, *amount)?,
            TxKind::Faucet { amount } => self.faucet(sender, *amount)?,
            TxKind::RegisterContract(sc) => self.register(now, sender, sc)?,
            TxKind::MarkMigrated(id) => self.mark_migrated(sender, *id)?,
            TxKind::MarkArmed(id) => self.mark_armed(now, sender, *id)?,
            TxKind::Cancel(id) => self.cancel(now, sender, *id)?,
            TxKind::Expire(id) => self.expire(now, sender, *id)?,
            TxKind::Attest { subject, liveness } => {
                self.attest(now, sender, *subject, *liveness)?
            }
            TxKind::ReportActivation {
                contract,
                activated_at,
            } => self.report_activation(now, sender, *contract, *activated_at)?,
            TxKind::Heartbeats { contract, batch } => {
                self.heartbeats(now, sender, *contract, batch)?
            }
            TxKind::StorageProofResult {
                contract,
                round,
                passed,
                ..
            } => self.storage_proof(now, sender, *contract, *round, *passed)?,
            TxKind::ProbeResult {
                contract,
                interval,
                up,
            } => self.probe_result(now, sender, *contract, *interval, *up)?,
            TxKind::ProbeResults(reports) => self.probe_results(now, sender, reports)?,
            TxKind::ReportEquivocation(evidence) => {
                self.report_equivocation(now, sender, evidence)?
            }
            TxKind::SettleUptime(id) => self.settle_uptime(sender, *id)?,
            TxKind::Settle { contract, reason } => self.settle(now, sender, *contract, *reason)?,
        };
        // Only now, after success, does the sender's nonce advance.
        self.accounts.entry(sender).or_default().nonce = expected.saturating_add(1);
        debug!(sender = %sender.short(), nonce = expected, events = events.len(), "tx applied");
        Ok(events)
    }

    /// Checks whether `stx` would apply now, without changing this ledger (mempool admission).
    pub fn check(&self, now: Timestamp, stx: &SignedTransaction) -> Result<(), LedgerError> {
        self.clone().apply(now, stx).map(|_| ())
    }

    /// Applies a decided block. Refused transactions are skipped (deterministically).
    pub fn apply_block(
        &mut self,
        height: u64,
        now: Timestamp,
        txs: &[SignedTransaction],
    ) -> Result<BlockOutcome, LedgerError> {
        self.apply_block_with(height, now, txs, |_| false)
    }

    /// [`Ledger::apply_block`] where `verified(tx)` says the caller already checked exactly this
    /// transaction's signature (a replica's mempool did at admission), so it is not checked twice.
    pub fn apply_block_with(
        &mut self,
        height: u64,
        now: Timestamp,
        txs: &[SignedTransaction],
        verified: impl Fn(&SignedTransaction) -> bool,
    ) -> Result<BlockOutcome, LedgerError> {
        if height != self.height.saturating_add(1) {
            return Err(LedgerError::BadHeight {
                current: self.height,
                got: height,
            });
        }
        if now < self.last_block_time {
            return Err(LedgerError::TimeWentBackwards {
                previous: self.last_block_time,
                got: now,
            });
        }
        let mut outcome = BlockOutcome {
            height,
            ..BlockOutcome::default()
        };
        for (i, stx) in txs.iter().enumerate() {
            match self.apply_checked(now, stx, verified(stx)) {
                Ok(events) => outcome.events.extend(events),
                Err(e) => {
                    self.use_up_refused_nonce(stx, &e);
                    outcome.rejected.push((i, e));
                }
            }
        }
        // Outages keep growing between attestations: re-check pending handovers at block time.
        outcome.events.extend(self.tick(now));
        self.height = height;
        self.last_block_time = now;
        Ok(outcome)
    }

    /// In a block, an authenticated transaction (right chain, its sender's next nonce, valid
    /// signature) that is refused for its content still uses up its nonce: the block recorded
    /// it, and the sender's later transactions, which wait for nonces in order, must not stall
    /// behind it. A stranger without an account is left without a trace.
    fn use_up_refused_nonce(&mut self, stx: &SignedTransaction, refusal: &LedgerError) {
        let unauthenticated = matches!(
            refusal,
            LedgerError::WrongChain { .. }
                | LedgerError::BadNonce { .. }
                | LedgerError::BadSignature { .. }
                | LedgerError::Encoding(_)
        );
        if unauthenticated {
            return;
        }
        if let Some(account) = self.accounts.get_mut(&stx.tx.sender) {
            account.nonce = stx.tx.nonce.saturating_add(1);
        }
    }

    /// Whether something now waits for the clock, so blocks (which carry the time) are needed
    /// even without transactions: a running contract (its uptime and coverage window are
    /// measured in block time, and a restarted provider resumes once it has seen a fresh
    /// block), an activation deadline, a standby handover that an arbitrator already suspects,
    /// or a settlement in its grace period. Without any of these an empty block changes
    /// nothing but the height and the clock.
    pub fn awaits_time(&self) -> bool {
        self.contracts.values().any(|r| {
            r.closing.is_some()
                || r.status == ContractStatus::Active
                || (r.status == ContractStatus::Armed && r.trigger_at.is_some())
                || (Self::awaits_handover(r)
                    && self
                        .observations_since(r.contract.customer, r.registered_at)
                        .values()
                        .any(|o| matches!(o.liveness, Liveness::Unreachable { .. })))
        })
    }

    /// The earliest ledger time after the last block at which a pending standby handover
    /// becomes decidable with the attestations already recorded (`attestation::decidable_at`).
    /// While the ledger [`awaits_time`](Self::awaits_time) a proposer makes an empty block
    /// every `empty_block_interval`; timing one at this instant instead saves up to one
    /// interval of outage. `None` when nothing is due later than the last block (only new
    /// attestations, which are transactions, can change that).
    pub fn handover_due(&self) -> Option<Timestamp> {
        self.contracts
            .values()
            .filter(|r| Self::awaits_handover(r))
            .filter_map(|r| {
                let ActivationClause::OnHandover { unreachable_for_ms } = r.contract.activation
                else {
                    return None;
                };
                attestation::decidable_at(
                    &r.contract.committee,
                    &self.observations_since(r.contract.customer, r.registered_at),
                    self.params.attestation_window_ms,
                    unreachable_for_ms,
                )
            })
            .filter(|due| *due > self.last_block_time)
            .min()
    }

    /// Time-driven checks (pending handovers, overdue pending settlements); `apply_block` calls
    /// this after the transactions.
    pub fn tick(&mut self, now: Timestamp) -> Vec<LedgerEvent> {
        let waiting: Vec<ContractId> = self
            .contracts
            .iter()
            .filter(|(_, r)| Self::awaits_handover(r))
            .map(|(id, _)| *id)
            .collect();
        let mut events: Vec<LedgerEvent> = waiting
            .into_iter()
            .filter_map(|id| self.evaluate_handover(now, id))
            .collect();
        let overdue: Vec<ContractId> = self
            .contracts
            .iter()
            .filter(|(_, r)| {
                r.closing
                    .is_some_and(|end| now >= end.saturating_add(self.closing_grace_ms(r)))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            match self.finish_closing(now, id) {
                Ok(ev) => events.extend(ev),
                Err(e) => {
                    tracing::warn!(contract = %id.short(), error = %e, "pending settlement not judged")
                }
            }
        }
        self.prune(now);
        events
    }

    /// Forgets what no rule reads any more, so the replicated state stays bounded by what is
    /// live (THREATS N12, A9): a closed contract's record [`RETAIN_CLOSED_MS`] after it
    /// closed (it can no longer be registered again: registration is refused
    /// [`MAX_REGISTER_AGE_MS`] after signing), and liveness observations older than the
    /// attestation window (no rule counts them).
    fn prune(&mut self, now: Timestamp) {
        let accounts = &mut self.accounts;
        self.contracts.retain(|_, r| {
            let forget = r.status.is_final()
                && r.closed_at
                    .is_some_and(|c| now >= c.saturating_add(RETAIN_CLOSED_MS));
            if forget && let Some(a) = accounts.get_mut(&r.contract.customer) {
                a.contracts_held = a.contracts_held.saturating_sub(1);
            }
            !forget
        });
        let window = self.params.attestation_window_ms;
        self.liveness.retain(|_, obs| {
            obs.retain(|_, o| o.recorded_at.saturating_add(window) >= now);
            !obs.is_empty()
        });
    }

    /// How long a pending settlement of `rec` waits for the provider's heartbeats and the
    /// committee's probe reports after its end before it is judged on what arrived.
    pub fn closing_grace_ms(&self, rec: &ContractRecord) -> u64 {
        let heartbeats = rec.closing_grace_ms();
        if !rec.is_probed() {
            return heartbeats;
        }
        heartbeats.max(
            rec.evidence_period_ms()
                .saturating_add(self.params.quorum_report_grace_ms),
        )
    }

    /// blake3 over the canonical (CBOR) encoding of the whole state.
    pub fn state_hash(&self) -> Result<[u8; 32], LedgerError> {
        let bytes = serde_cbor::to_vec(self).map_err(|e| LedgerError::Encoding(e.to_string()))?;
        Ok(*blake3::hash(&bytes).as_bytes())
    }

    /// A binary snapshot (CBOR) for the node's store. JSON cannot hold the byte-keyed maps.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, LedgerError> {
        serde_cbor::to_vec(self).map_err(|e| LedgerError::Encoding(e.to_string()))
    }

    /// Restores a snapshot written by [`Ledger::to_snapshot`].
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, LedgerError> {
        serde_cbor::from_slice(bytes).map_err(|e| LedgerError::Snapshot(e.to_string()))
    }

    /// The chain id transactions must carry.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// Height of the last applied block (0 before the first).
    pub fn height(&self) -> u64 {
        self.height
    }

    /// An account, if it exists.
    pub fn account(&self, id: &NodeId) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// All accounts.
    pub fn accounts(&self) -> &BTreeMap<NodeId, Account> {
        &self.accounts
    }

    /// Whether `id`'s account holds (spendable, locked and bonded) at least the minimum balance:
    /// what admission asks of a sender ([`Ledger::admissible`]).
    pub fn is_funded(&self, id: &NodeId) -> bool {
        self.accounts
            .get(id)
            .is_some_and(|a| a.holdings() >= self.params.min_account_balance)
    }

    /// The accounts [`Ledger::is_funded`] holds true for, in id order.
    pub fn funded(&self) -> impl Iterator<Item = &NodeId> {
        let min = self.params.min_account_balance;
        self.accounts
            .iter()
            .filter(move |(_, a)| a.holdings() >= min)
            .map(|(id, _)| id)
    }

    /// The next nonce `id` must use.
    pub fn next_nonce(&self, id: &NodeId) -> u64 {
        self.accounts.get(id).map_or(0, |a| a.nonce)
    }

    /// Signs `kind` from `signer` with its next nonce here. A node with transactions still in
    /// its mempool must track later nonces itself and build `Transaction` directly.
    pub fn sign_next(
        &self,
        signer: &dyn Signer,
        kind: TxKind,
    ) -> Result<SignedTransaction, LedgerError> {
        let sender = signer.node_id();
        Transaction {
            chain_id: self.chain_id.clone(),
            sender,
            nonce: self.next_nonce(&sender),
            kind,
        }
        .sign(signer)
    }

    /// Time of the last applied block (ms); the next block must not be earlier.
    pub fn last_block_time(&self) -> Timestamp {
        self.last_block_time
    }

    /// A contract record, if registered.
    pub fn contract(&self, id: &ContractId) -> Option<&ContractRecord> {
        self.contracts.get(id)
    }

    /// All contract records.
    pub fn contracts(&self) -> &BTreeMap<ContractId, ContractRecord> {
        &self.contracts
    }

    /// The genesis arbitrator committee.
    pub fn committee(&self) -> &BTreeSet<NodeId> {
        &self.committee
    }

    /// Ledger tunables.
    pub fn params(&self) -> &LedgerParams {
        &self.params
    }

    /// Supply totals.
    pub fn supply(&self) -> Supply {
        self.supply
    }

    /// Checks the accounting invariants; returns a description of the first violation.
    pub fn audit(&self) -> Result<(), String> {
        let mut held: u128 = 0;
        let mut locked_by: BTreeMap<NodeId, u128> = BTreeMap::new();
        let mut records_of: BTreeMap<NodeId, u32> = BTreeMap::new();
        for (id, r) in &self.contracts {
            *records_of.entry(r.contract.customer).or_default() += 1;
            let e = r.escrow;
            let total =
                u128::from(e.payment) + u128::from(e.customer_stake) + u128::from(e.provider_stake);
            if total > 0 && !r.status.holds_escrow() {
                return Err(format!(
                    "contract {id} in {:?} still holds {total}",
                    r.status
                ));
            }
            held += total;
            let c = &r.contract;
            *locked_by.entry(c.customer).or_default() +=
                u128::from(e.payment) + u128::from(e.customer_stake);
            *locked_by.entry(c.provider).or_default() += u128::from(e.provider_stake);
        }
        let balances: u128 = self.accounts.values().map(|a| u128::from(a.balance)).sum();
        let bonds: u128 = self.accounts.values().map(|a| u128::from(a.bonded)).sum();
        let supply = u128::from(self.supply.genesis) + u128::from(self.supply.minted);
        let burned = u128::from(self.supply.burned);
        if balances + held + bonds + burned != supply {
            return Err(format!(
                "balances {balances} + escrow {held} + bonds {bonds} + burned {burned} != \
                 supply {supply}"
            ));
        }
        for (id, a) in &self.accounts {
            if a.bonded > 0 && !self.committee.contains(id) {
                return Err(format!("account {id} holds a bond but is no arbitrator"));
            }
        }
        for (id, a) in &self.accounts {
            let records = records_of.get(id).copied().unwrap_or(0);
            if a.contracts_held != records {
                return Err(format!(
                    "account {id} counts {} contracts held but the ledger holds {records}",
                    a.contracts_held
                ));
            }
        }
        for (id, a) in &self.accounts {
            let expected = locked_by.get(id).copied().unwrap_or(0);
            if u128::from(a.locked) != expected {
                return Err(format!(
                    "account {id} locked {} but escrow holds {expected}",
                    a.locked
                ));
            }
        }
        Ok(())
    }
}
