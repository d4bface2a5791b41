//! Contracts this deployer is ending (issue #15): the transaction that ends a contract is
//! chosen from its status when the release happens (cancel before activation, settle pro rata
//! after), but a block decides it later. A contract that activated in between refuses the
//! cancel ("contract in state Active cannot take event Cancel"), and the replica would run on
//! under a live contract after its deployment was deleted. So every ended contract is checked
//! again a few seconds later and the right transaction submitted again, until the ledger shows
//! it ended or the attempts run out. Pure: the task feeds it times and statuses.

use std::collections::BTreeMap;

use agora_contracts::{ContractId, ContractStatus};

use crate::progress::ended;

/// How long after a submission the contract's status is checked again (ms): a few blocks.
pub const RECHECK_MS: u64 = 5_000;

/// Submissions per contract at most (the first included); then it is given up and logged.
pub const MAX_ATTEMPTS: u32 = 6;

/// Contracts tracked at most; beyond it the one due last is dropped (and counted).
pub const MAX_ENDING: usize = 1_024;

/// The transaction that ends a contract in `status`, `None` once it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndBy {
    /// Not active yet: call it off, funds returned.
    Cancel,
    /// Active: the customer takes it back, settled pro rata.
    Settle,
}

/// How a contract in `status` is ended, if it still needs to be.
pub fn end_by(status: ContractStatus) -> Option<EndBy> {
    match status {
        _ if ended(status) => None,
        ContractStatus::Active => Some(EndBy::Settle),
        _ => Some(EndBy::Cancel),
    }
}

/// What to do with a contract due for a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recheck {
    /// It ended: forgotten.
    Ended,
    /// Still live: submit this again.
    Submit(EndBy),
    /// Still live after [`MAX_ATTEMPTS`] submissions: forgotten, to be logged.
    GiveUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    due: u64,
    attempts: u32,
}

/// The contracts being ended, each with when it is checked next and how often it was tried.
#[derive(Debug, Default)]
pub struct Ending {
    entries: BTreeMap<ContractId, Entry>,
    /// Contracts dropped because the table was full.
    pub dropped: u64,
    /// Contracts given up after [`MAX_ATTEMPTS`].
    pub given_up: u64,
}

impl Ending {
    /// An end transaction for `contract` was submitted at `now`: check it again later.
    pub fn submitted(&mut self, contract: ContractId, now: u64) {
        let due = now.saturating_add(RECHECK_MS);
        if let Some(e) = self.entries.get_mut(&contract) {
            e.due = due;
            e.attempts = e.attempts.saturating_add(1);
            return;
        }
        if self.entries.len() >= MAX_ENDING
            && let Some(last) = self
                .entries
                .iter()
                .max_by_key(|(_, e)| e.due)
                .map(|(c, _)| *c)
        {
            self.entries.remove(&last);
            self.dropped += 1;
        }
        self.entries.insert(contract, Entry { due, attempts: 1 });
    }

    /// The contracts due for a check at `now`.
    pub fn due(&self, now: u64) -> Vec<ContractId> {
        self.entries
            .iter()
            .filter(|(_, e)| e.due <= now)
            .map(|(c, _)| *c)
            .collect()
    }

    /// The verdict on `contract`, found in `status` (`None`: the ledger does not know it, which
    /// counts as ended). Forgets it unless it must be submitted again.
    pub fn recheck(&mut self, contract: ContractId, status: Option<ContractStatus>) -> Recheck {
        let Some(entry) = self.entries.get(&contract).copied() else {
            return Recheck::Ended;
        };
        match status.and_then(end_by) {
            None => {
                self.entries.remove(&contract);
                Recheck::Ended
            }
            Some(_) if entry.attempts >= MAX_ATTEMPTS => {
                self.entries.remove(&contract);
                self.given_up += 1;
                Recheck::GiveUp
            }
            Some(by) => Recheck::Submit(by),
        }
    }

    /// Contracts being ended.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn c(n: u8) -> ContractId {
        ContractId([n; 32])
    }

    #[test]
    fn the_end_follows_the_status() {
        assert_eq!(end_by(ContractStatus::Validated), Some(EndBy::Cancel));
        assert_eq!(end_by(ContractStatus::Armed), Some(EndBy::Cancel));
        assert_eq!(end_by(ContractStatus::Active), Some(EndBy::Settle));
        for s in [
            ContractStatus::Settled,
            ContractStatus::Slashed,
            ContractStatus::Cancelled,
            ContractStatus::Breached,
            ContractStatus::Completed,
        ] {
            assert_eq!(end_by(s), None, "{s:?}");
        }
    }

    /// The race the provisioning bench found: a cancel submitted while the contract was armed,
    /// refused because it activated before the block; the check a few seconds later settles it.
    #[test]
    fn a_cancel_refused_by_a_contract_that_activated_meanwhile_becomes_a_settlement() {
        let mut e = Ending::default();
        e.submitted(c(1), 1_000);
        assert!(
            e.due(1_000 + RECHECK_MS - 1).is_empty(),
            "not before its recheck"
        );
        assert_eq!(e.due(1_000 + RECHECK_MS), vec![c(1)]);
        assert_eq!(
            e.recheck(c(1), Some(ContractStatus::Active)),
            Recheck::Submit(EndBy::Settle)
        );
        e.submitted(c(1), 1_000 + RECHECK_MS);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e.recheck(c(1), Some(ContractStatus::Settled)),
            Recheck::Ended
        );
        assert!(e.is_empty());
    }

    #[test]
    fn a_contract_that_never_ends_is_given_up_and_the_table_is_bounded() {
        let mut e = Ending::default();
        let mut now = 0;
        e.submitted(c(2), now);
        let mut submissions = 1;
        loop {
            now += RECHECK_MS;
            match e.recheck(c(2), Some(ContractStatus::Armed)) {
                Recheck::Submit(EndBy::Cancel) => {
                    e.submitted(c(2), now);
                    submissions += 1;
                }
                Recheck::GiveUp => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(submissions, MAX_ATTEMPTS);
        assert_eq!((e.given_up, e.len()), (1, 0));
        // An unknown contract counts as ended; a full table drops the one due last.
        assert_eq!(e.recheck(c(3), None), Recheck::Ended);
        for i in 0..=MAX_ENDING {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            e.submitted(ContractId(id), i as u64);
        }
        assert_eq!((e.len(), e.dropped), (MAX_ENDING, 1));
    }
}
