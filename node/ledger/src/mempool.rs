//! Pending ledger transactions, ordered per sender by nonce, held against hostile senders.
//!
//! Admission ([`Mempool::admit`]) runs the ledger's pure check ([`Ledger::admissible`]: size,
//! chain, a funded sender account, a nonce inside the window, the signature last) and the
//! per-sender quota ([`AdmissionPolicy::check_sender_quota`]). Free keys therefore get no slot
//! at all, and a funded key at most `max_pending_per_sender`.
//!
//! Bounds and the eviction rule:
//! - at most `capacity` transactions; transactions of other senders may fill at most
//!   `capacity - reserved_own` of them, so this node's own transactions always find room;
//! - when the share a transaction needs is full, it takes the slot of the **highest-nonce
//!   transaction of the sender with the most pending**, but only if that sender would still
//!   hold at least as many as the newcomer's sender afterwards (count > newcomer's + 1; the
//!   node's own transaction always may): a flood of many
//!   transactions per key gives way to senders with few, and evicting a sender's last nonce
//!   never leaves a gap before its others. Otherwise the newcomer is refused (`Full`);
//! - after every block ([`Mempool::after_block`]) what the ledger moved past is dropped, a
//!   sender whose account no longer holds the minimum balance loses its transactions, and a
//!   transaction that cannot execute (a nonce gap before it) expires `unexecutable_ttl_ms`
//!   after it arrived.
//!
//! Every refusal, eviction and drop is counted in [`MempoolStats`] (shown by
//! `agora ledger status --json`); the ledger task logs each at debug level and a summary at
//! info level when a block lands.

use std::collections::{BTreeMap, BTreeSet};

use agora_contracts::{AdmissionError, AdmissionPolicy, Ledger, SignedTransaction};
use agora_market::NodeId;
use serde::{Deserialize, Serialize};

/// Most transactions held.
pub const MEMPOOL_CAP: usize = 10_000;
/// Slots only this node's own transactions may use.
pub const RESERVED_OWN: usize = 500;
/// Most duties ([`Ledger::is_duty`]) of one sender a proposal takes ahead of other senders'
/// transactions; the sender's further duties wait in the common lane, oldest first. An honest
/// provider or arbitrator has one or two due at a time per contract.
pub const DUTIES_PER_SENDER: usize = 4;

/// The lanes of a proposal, in the order they go (see [`Mempool::proposal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Lane {
    /// This node's own transactions.
    Own,
    /// Other senders' duties on live contracts, a few per sender.
    Duty,
    /// Everything else.
    Other,
}

/// Why a transaction was not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MempoolError {
    /// The ledger's admission rules or the per-sender quota refused it.
    #[error(transparent)]
    Refused(#[from] AdmissionError),
    /// No room, and nothing may be evicted for it.
    #[error(
        "mempool is full ({held} transactions held, at most {share} from other nodes); try \
         again after the next block"
    )]
    Full {
        /// Transactions held.
        held: usize,
        /// The share this transaction could use.
        share: usize,
    },
}

/// Counters of the mempool since the node started (every refusal, eviction and drop).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MempoolStats {
    /// Transactions admitted.
    pub admitted: u64,
    /// Copies of transactions already held (not new, not counted as refused).
    pub duplicates: u64,
    /// Refused: the sender has no account or holds less than the minimum balance.
    pub refused_unfunded: u64,
    /// Refused: a nonce already used or too far ahead.
    pub refused_nonce: u64,
    /// Refused: another chain, too large, unencodable or a bad signature.
    pub refused_invalid: u64,
    /// Refused: the sender already had `max_pending_per_sender` pending.
    pub refused_sender_full: u64,
    /// Refused: the pool (or the share of other nodes) was full and nothing could be evicted.
    pub refused_full: u64,
    /// Evicted to make room for a sender with fewer pending (or for this node's own).
    pub evicted: u64,
    /// Expired: could not execute (a nonce gap before them) for `unexecutable_ttl_ms`.
    pub expired: u64,
    /// Dropped after a block: the sender's account no longer holds the minimum balance.
    pub dropped_unfunded: u64,
    /// Dropped because a block refused them.
    pub dropped_refused_by_block: u64,
    /// Left because a block included them (or used their nonce).
    pub included: u64,
}

impl MempoolStats {
    /// Everything refused, evicted, expired or dropped (not counting inclusion).
    pub fn lost(&self) -> u64 {
        self.refused_unfunded
            + self.refused_nonce
            + self.refused_invalid
            + self.refused_sender_full
            + self.refused_full
            + self.evicted
            + self.expired
            + self.dropped_unfunded
            + self.dropped_refused_by_block
    }
}

#[derive(Debug)]
struct Pending {
    tx: SignedTransaction,
    /// When it arrived here (ms).
    arrived: u64,
}

/// The mempool.
#[derive(Debug)]
pub struct Mempool {
    policy: AdmissionPolicy,
    capacity: usize,
    reserved_own: usize,
    me: NodeId,
    txs: BTreeMap<(NodeId, u64), Pending>,
    /// Pending per sender.
    per_sender: BTreeMap<NodeId, usize>,
    /// (pending, sender) of every other sender, largest last: the eviction candidate.
    by_count: BTreeSet<(usize, NodeId)>,
    stats: MempoolStats,
}

impl Mempool {
    /// An empty mempool of node `me` with the default policy and bounds.
    pub fn new(me: NodeId) -> Self {
        Self::with_limits(me, AdmissionPolicy::default(), MEMPOOL_CAP, RESERVED_OWN)
    }

    /// An empty mempool with explicit bounds (`reserved_own` is clamped to `capacity`).
    pub fn with_limits(
        me: NodeId,
        policy: AdmissionPolicy,
        capacity: usize,
        reserved_own: usize,
    ) -> Self {
        Mempool {
            policy,
            capacity,
            reserved_own: reserved_own.min(capacity),
            me,
            txs: BTreeMap::new(),
            per_sender: BTreeMap::new(),
            by_count: BTreeSet::new(),
            stats: MempoolStats::default(),
        }
    }

    /// The admission policy.
    pub fn policy(&self) -> &AdmissionPolicy {
        &self.policy
    }

    /// The counters.
    pub fn stats(&self) -> &MempoolStats {
        &self.stats
    }

    /// Admits `tx` (arrived at `now`, ms): `Ok(true)` if new, `Ok(false)` if already held.
    pub fn admit(
        &mut self,
        ledger: &Ledger,
        now: u64,
        tx: SignedTransaction,
    ) -> Result<bool, MempoolError> {
        let key = (tx.tx.sender, tx.tx.nonce);
        if self.txs.get(&key).is_some_and(|p| p.tx == tx) {
            self.stats.duplicates += 1;
            return Ok(false);
        }
        if let Err(e) = ledger.admissible(&tx, &self.policy) {
            match &e {
                AdmissionError::UnknownAccount { .. } | AdmissionError::Unfunded { .. } => {
                    self.stats.refused_unfunded += 1
                }
                AdmissionError::StaleNonce { .. } | AdmissionError::TooFarAhead { .. } => {
                    self.stats.refused_nonce += 1
                }
                _ => self.stats.refused_invalid += 1,
            }
            return Err(e.into());
        }
        if self.txs.contains_key(&key) {
            // Another transaction with the same nonce: the first one seen keeps the slot.
            self.stats.duplicates += 1;
            return Ok(false);
        }
        let sender = tx.tx.sender;
        let pending = self.pending_of(&sender);
        if let Err(e) = self.policy.check_sender_quota(sender, pending) {
            self.stats.refused_sender_full += 1;
            return Err(e.into());
        }
        let own = sender == self.me;
        let share = if own {
            self.capacity
        } else {
            self.capacity - self.reserved_own
        };
        let held_in_share = if own {
            self.txs.len()
        } else {
            self.txs.len() - self.pending_of(&self.me)
        };
        if held_in_share >= share || self.txs.len() >= self.capacity {
            let victim = self
                .by_count
                .last()
                .copied()
                .filter(|(count, _)| own || *count > pending + 1);
            let evicted = victim.and_then(|(_, who)| {
                let key = self.txs.range((who, 0)..=(who, u64::MAX)).last()?.0;
                Some(*key)
            });
            match evicted {
                Some(key) => {
                    self.take(&key);
                    self.stats.evicted += 1;
                }
                None => {
                    self.stats.refused_full += 1;
                    return Err(MempoolError::Full {
                        held: self.txs.len(),
                        share,
                    });
                }
            }
        }
        self.txs.insert(key, Pending { tx, arrived: now });
        self.set_count(sender, pending + 1);
        self.stats.admitted += 1;
        Ok(true)
    }

    /// How many transactions `sender` has pending.
    pub fn pending_of(&self, sender: &NodeId) -> usize {
        self.per_sender.get(sender).copied().unwrap_or(0)
    }

    fn set_count(&mut self, sender: NodeId, count: usize) {
        let old = if count == 0 {
            self.per_sender.remove(&sender)
        } else {
            self.per_sender.insert(sender, count)
        };
        if sender != self.me {
            if let Some(old) = old {
                self.by_count.remove(&(old, sender));
            }
            if count > 0 {
                self.by_count.insert((count, sender));
            }
        }
    }

    /// Removes one entry, keeping the counts.
    fn take(&mut self, key: &(NodeId, u64)) -> Option<SignedTransaction> {
        let p = self.txs.remove(key)?;
        let count = self.pending_of(&key.0).saturating_sub(1);
        self.set_count(key.0, count);
        Some(p.tx)
    }

    /// Whether exactly `tx` was admitted (so its signature was verified here).
    pub fn holds(&self, tx: &SignedTransaction) -> bool {
        self.txs
            .get(&(tx.tx.sender, tx.tx.nonce))
            .is_some_and(|p| p.tx == *tx)
    }

    /// Next nonce `sender` should use, counting its pending transactions.
    pub fn next_nonce(&self, ledger: &Ledger, sender: &NodeId) -> u64 {
        let mut n = ledger.next_nonce(sender);
        while self.txs.contains_key(&(*sender, n)) {
            n += 1;
        }
        n
    }

    /// Whether some transaction can go into the next block (its sender's next nonce is held).
    pub fn has_ready(&self, ledger: &Ledger) -> bool {
        self.per_sender
            .keys()
            .any(|s| self.txs.contains_key(&(*s, ledger.next_nonce(s))))
    }

    /// Up to `max` transactions that can apply in order (contiguous nonces per sender), in
    /// three lanes:
    /// 1. this node's own, so a flood of others never pushes them out of a block;
    /// 2. the others' **duties** ([`Ledger::is_duty`]: a provider's activation report and
    ///    heartbeats, a committee member's probe and audit results, an attestation), at most
    ///    [`DUTIES_PER_SENDER`] of one sender per proposal, the rest of its duties waiting in
    ///    lane 3: the ledger judges a duty by the block that carries it (an activation report
    ///    dated at most `activation_report_grace_ms` back, probe reports only while their
    ///    round is open), so behind a backlog of transfers from funded keys an honest provider
    ///    was slashed `LateActivation` and its committee's reports refused (THREATS N9). A
    ///    duty needs a contract (payment and both stakes locked) or a bonded seat, so this
    ///    lane is as small as the contracts are few;
    /// 3. everything else.
    ///
    /// Within a lane, oldest first: each step takes, of every sender's next executable
    /// transaction, the one that arrived here first (ties by sender). Under a backlog every
    /// sender therefore waits about as long as the backlog takes to clear, whatever its id: in
    /// the order of the senders' ids, the senders sorting last waited for every block while
    /// the backlog lasted (a 50-node fleet on 2 cores: providers whose heartbeats stayed
    /// pending for minutes were slashed), and a key ground to sort first went ahead of
    /// everyone. A sender's nonces stay in order: its duty behind its own transfer waits for
    /// that transfer.
    pub fn proposal(&self, ledger: &Ledger, max: usize) -> Vec<SignedTransaction> {
        // Duties taken per sender in this proposal.
        let mut duties: BTreeMap<NodeId, usize> = BTreeMap::new();
        // Each sender's next executable transaction, keyed by the order they go: lane, then
        // arrival, then sender.
        let head = |sender: NodeId, nonce: u64, duties: &BTreeMap<NodeId, usize>| {
            self.txs.get(&(sender, nonce)).map(|p| {
                let lane = if sender == self.me {
                    Lane::Own
                } else if duties.get(&sender).copied().unwrap_or(0) < DUTIES_PER_SENDER
                    && ledger.is_duty(&p.tx.tx)
                {
                    Lane::Duty
                } else {
                    Lane::Other
                };
                (lane, p.arrived, sender, nonce)
            })
        };
        let mut heads: BTreeSet<(Lane, u64, NodeId, u64)> = self
            .per_sender
            .keys()
            .filter_map(|s| head(*s, ledger.next_nonce(s), &duties))
            .collect();
        let mut out = Vec::new();
        while out.len() < max {
            let Some((lane, _, sender, nonce)) = heads.pop_first() else {
                break;
            };
            let Some(p) = self.txs.get(&(sender, nonce)) else {
                continue;
            };
            out.push(p.tx.clone());
            if lane == Lane::Duty {
                *duties.entry(sender).or_default() += 1;
            }
            heads.extend(head(sender, nonce.saturating_add(1), &duties));
        }
        out
    }

    /// Drops exactly `tx` (a block refused it: proposing it again would be refused again).
    pub fn remove(&mut self, tx: &SignedTransaction) {
        let key = (tx.tx.sender, tx.tx.nonce);
        if self.holds(tx) {
            self.take(&key);
            self.stats.dropped_refused_by_block += 1;
        }
    }

    /// After a block was applied at local time `now`: drops what the ledger moved past,
    /// transactions of senders no longer funded, and those that could not execute for
    /// `unexecutable_ttl_ms`. Returns what was dropped other than by inclusion.
    pub fn after_block(&mut self, ledger: &Ledger, now: u64) -> AfterBlock {
        let mut report = AfterBlock::default();
        let senders: Vec<NodeId> = self.per_sender.keys().copied().collect();
        for sender in senders {
            let funded = ledger.is_funded(&sender);
            let next = ledger.next_nonce(&sender);
            let keys: Vec<u64> = self
                .txs
                .range((sender, 0)..=(sender, u64::MAX))
                .map(|((_, n), _)| *n)
                .collect();
            let mut expected = next;
            for nonce in keys {
                let key = (sender, nonce);
                if nonce < next {
                    self.take(&key);
                    self.stats.included += 1;
                    continue;
                }
                if !funded {
                    self.take(&key);
                    self.stats.dropped_unfunded += 1;
                    report.unfunded += 1;
                    continue;
                }
                if nonce == expected {
                    expected += 1;
                    continue;
                }
                // A gap before it: it cannot execute until the missing nonce arrives.
                let expired = self.txs.get(&key).is_some_and(|p| {
                    now.saturating_sub(p.arrived) >= self.policy.unexecutable_ttl_ms
                });
                if expired {
                    self.take(&key);
                    self.stats.expired += 1;
                    report.expired += 1;
                }
            }
        }
        report
    }

    /// Number pending.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }
}

/// What [`Mempool::after_block`] dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AfterBlock {
    /// Senders no longer funded.
    pub unfunded: u64,
    /// Unexecutable past their time to live.
    pub expired: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
