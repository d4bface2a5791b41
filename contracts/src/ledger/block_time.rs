//! Whether a proposed block's time is acceptable (BFT time, as Tendermint/CometBFT's
//! proposer-based timestamps): strictly after the parent block's time, and within
//! `params.block_time_tolerance_ms` of the validator's own clock either way.
//!
//! Ledger time drives deadlines, contract ends and slashing, so one faulty proposer must not be
//! able to move it: an honest validator prevotes nil for a fresh proposal that fails
//! [`check_block_time`]; the round fails and the next proposer, with an honest clock, decides.
//! A re-proposal of a value that already has a polka (a proof-of-lock round) was judged timely
//! when it got it, so the consensus driver checks only [`BlockTimeError::NotAfterParent`] for
//! it (its timestamp is legitimately old); checking the clock bound again could stall a chain
//! whose rounds take longer than the tolerance.

use agora_market::Timestamp;
use serde::{Deserialize, Serialize};

use super::Ledger;

/// Why a proposed block time is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum BlockTimeError {
    /// Not after the parent block.
    #[error("proposed block time {proposed} is not after the parent block's {parent}")]
    NotAfterParent {
        /// The parent block's time.
        parent: Timestamp,
        /// The proposed time.
        proposed: Timestamp,
    },
    /// Too far from the validator's clock.
    #[error(
        "proposed block time {proposed} is more than {tolerance_ms} ms from this validator's \
         clock {local_now}; check the proposer's (or this node's) clock"
    )]
    OffClock {
        /// The proposed time.
        proposed: Timestamp,
        /// The validator's clock.
        local_now: Timestamp,
        /// The allowed distance.
        tolerance_ms: u64,
    },
}

/// Checks a proposed block time against its parent's and the validator's own clock.
pub fn check_block_time(
    parent: Timestamp,
    proposed: Timestamp,
    local_now: Timestamp,
    tolerance_ms: u64,
) -> Result<(), BlockTimeError> {
    if proposed <= parent {
        return Err(BlockTimeError::NotAfterParent { parent, proposed });
    }
    if proposed.abs_diff(local_now) > tolerance_ms {
        return Err(BlockTimeError::OffClock {
            proposed,
            local_now,
            tolerance_ms,
        });
    }
    Ok(())
}

impl Ledger {
    /// [`check_block_time`] for the block after this ledger's last (its parent), with the
    /// chain's `block_time_tolerance_ms`.
    pub fn check_block_time(
        &self,
        proposed: Timestamp,
        local_now: Timestamp,
    ) -> Result<(), BlockTimeError> {
        check_block_time(
            self.last_block_time,
            proposed,
            local_now,
            self.params.block_time_tolerance_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_just_after_the_parent_and_near_the_clock_is_accepted() {
        assert_eq!(check_block_time(1_000, 1_001, 1_001, 2_000), Ok(()));
        assert_eq!(check_block_time(1_000, 5_000, 3_000, 2_000), Ok(()));
        assert_eq!(check_block_time(1_000, 5_000, 7_000, 2_000), Ok(()));
    }

    #[test]
    fn a_time_not_after_the_parent_is_refused() {
        for proposed in [999, 1_000] {
            assert_eq!(
                check_block_time(1_000, proposed, 1_000, 2_000),
                Err(BlockTimeError::NotAfterParent {
                    parent: 1_000,
                    proposed
                })
            );
        }
    }

    #[test]
    fn a_time_off_the_clock_either_way_is_refused() {
        const DAY: u64 = 86_400_000;
        // The attack: a proposal 30 days ahead.
        let ahead = check_block_time(1_000, 10_000 + 30 * DAY, 10_000, 2_000);
        assert!(matches!(ahead, Err(BlockTimeError::OffClock { .. })));
        assert!(check_block_time(1_000, 12_001, 10_000, 2_000).is_err());
        assert!(check_block_time(1_000, 7_999, 10_000, 2_000).is_err());
        assert_eq!(check_block_time(1_000, 12_000, 10_000, 2_000), Ok(()));
    }

    #[test]
    fn the_ledger_checks_against_its_last_block_and_genesis_tolerance() {
        let (genesis, _, _) = crate::test_utils::genesis_with(1, 4, 100_000);
        let mut ledger = Ledger::from_genesis(&genesis).unwrap();
        ledger.apply_block(1, 50_000, &[]).unwrap();
        assert!(ledger.check_block_time(50_000, 50_500).is_err());
        assert_eq!(ledger.check_block_time(51_000, 50_500), Ok(()));
        assert!(ledger.check_block_time(60_000, 50_500).is_err());
    }
}
