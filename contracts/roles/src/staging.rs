//! How long a provider keeps trying to stage a contract's image, and when it gives up (THREATS
//! C6): one rule, which the role machine's provider and the node's orchestrator both follow.
//! A provider that gives up while the ledger still lets it back out calls the contract off, so
//! a customer naming an image nobody can run (one it withholds, or a broken one) no longer
//! gets the provider slashed for not activating.

use agora_market::Timestamp;

use super::{STAGE_ATTEMPTS, STAGE_BACKOFF_MS};
use agora_contracts::ledger::ContractRecord;

/// When a provider stops preparing `rec` (staging its image, or taking custody of its file):
/// half the report grace (`grace_ms`, the ledger's `activation_report_grace_ms`) past the
/// activation deadline, so a cancel submitted then lands before the customer may settle the
/// contract as not activated. Only while the provider may still call the contract off
/// ([`agora_contracts::lifecycle::ContractStatus::provider_may_cancel`]); once armed or
/// active (a restart) preparing is retried without a deadline, and so is a contract with no
/// deadline yet (a standby before its handover, an immediate one before it is armed).
pub fn prepare_deadline(rec: &ContractRecord, grace_ms: u64) -> Option<Timestamp> {
    rec.activation_deadline()
        .filter(|_| rec.status.provider_may_cancel())
        .map(|d| d.saturating_add(grace_ms / 2))
}

/// When to stage again after `failures` failed attempts, the last at `now`: after
/// [`STAGE_BACKOFF_MS`] per failure so far; never after a `permanent` failure (the image does
/// not decode, verify or compile, or asks for more than the host allows: trying again cannot
/// cure it), after [`STAGE_ATTEMPTS`] failures, or when the next attempt would start at or
/// past the `deadline` ([`prepare_deadline`]). `None`: give up.
pub fn stage_retry_at(
    failures: u32,
    permanent: bool,
    now: Timestamp,
    deadline: Option<Timestamp>,
) -> Option<Timestamp> {
    if permanent || failures >= STAGE_ATTEMPTS {
        return None;
    }
    let at = now.saturating_add(STAGE_BACKOFF_MS.saturating_mul(u64::from(failures)));
    deadline.is_none_or(|d| at < d).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::{prepare_deadline, stage_retry_at};
    use crate::{STAGE_ATTEMPTS, STAGE_BACKOFF_MS};
    use agora_contracts::ledger::ContractRecord;
    use agora_contracts::lifecycle::ContractStatus;
    use agora_contracts::test_utils::ContractBuilder;

    /// A slot's preparation ends half the grace past its activation deadline, only while the
    /// provider may still back out; a contract without a deadline has none. Mutant: without
    /// the status filter an armed slot would be given up (and could not be called off).
    #[test]
    fn preparing_ends_half_the_grace_past_the_activation_deadline_while_cancellable() {
        let c = ContractBuilder::new(1, 2).at(9_000).build();
        let mut slot = ContractRecord::new(c, 0).unwrap();
        let deadline = slot.activation_deadline().unwrap();
        assert_eq!(prepare_deadline(&slot, 10_000), Some(deadline + 5_000));
        slot.status = ContractStatus::Migrated;
        assert_eq!(prepare_deadline(&slot, 10_000), Some(deadline + 5_000));
        slot.status = ContractStatus::Armed;
        assert_eq!(prepare_deadline(&slot, 10_000), None);
        let c = ContractBuilder::new(1, 2).standby(1_000).build();
        let standby = ContractRecord::new(c, 0).unwrap();
        assert_eq!(prepare_deadline(&standby, 10_000), None);
    }

    /// Back-off grows per failure; a permanent failure, the last attempt, or a retry that would
    /// start at the deadline gives up. Mutants: ignoring `permanent` retries a broken image;
    /// `at < d` as `at <= d` retries exactly at the deadline; `>=` as `>` on the attempts
    /// tries a 21st time.
    #[test]
    fn staging_is_retried_with_backoff_until_permanent_exhausted_or_late() {
        assert_eq!(
            stage_retry_at(1, false, 1_000, None),
            Some(1_000 + STAGE_BACKOFF_MS)
        );
        assert_eq!(
            stage_retry_at(3, false, 1_000, None),
            Some(1_000 + 3 * STAGE_BACKOFF_MS)
        );
        assert_eq!(stage_retry_at(1, true, 1_000, None), None);
        assert!(stage_retry_at(STAGE_ATTEMPTS - 1, false, 0, None).is_some());
        assert_eq!(stage_retry_at(STAGE_ATTEMPTS, false, 0, None), None);
        let d = 1_000 + STAGE_BACKOFF_MS;
        assert_eq!(stage_retry_at(1, false, 1_000, Some(d)), None);
        assert_eq!(stage_retry_at(1, false, 1_000, Some(d + 1)), Some(d));
    }
}
