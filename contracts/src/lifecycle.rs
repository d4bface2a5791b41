//! The contract lifecycle as a transition table.
//!
//! proposed → signed → validated (funds locked) → migrated (provider holds images) → armed →
//! active → completed → settled; or breached → slashed; or cancelled / expired (funds returned).
//! A standby contract whose coverage window ends without a handover goes armed → completed.

use serde::{Deserialize, Serialize};

/// Where a contract is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ContractStatus {
    /// Terms drafted, not yet signed by both.
    Proposed,
    /// Both parties signed.
    Signed,
    /// Registered on the ledger; payment and stakes locked.
    Validated,
    /// The provider holds the service image and config.
    Migrated,
    /// The provider is ready to activate on the trigger.
    Armed,
    /// The provider runs the service.
    Active,
    /// The service period ended (or was ended) with obligations honoured.
    Completed,
    /// Payments made and stakes returned; final.
    Settled,
    /// The provider broke the QoS obligations.
    Breached,
    /// The provider's stake went to the customer; final.
    Slashed,
    /// Called off before activation; funds returned; final.
    Cancelled,
    /// Never activated before it ran out; funds returned; final.
    Expired,
}

impl ContractStatus {
    /// True for states no event can leave.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Settled | Self::Slashed | Self::Cancelled | Self::Expired
        )
    }

    /// True while payment and stakes are held in escrow.
    pub fn holds_escrow(self) -> bool {
        matches!(
            self,
            Self::Validated
                | Self::Migrated
                | Self::Armed
                | Self::Active
                | Self::Completed
                | Self::Breached
        )
    }

    /// True while the provider may still call the contract off (`Cancel`): before it committed
    /// to stand by, i.e. validated or migrated. The ledger enforces this; a provider's node
    /// asks it before submitting a cancel (`agora_roles::custody_refusal_cancels`).
    pub fn provider_may_cancel(self) -> bool {
        matches!(self, Self::Validated | Self::Migrated)
    }

    /// Applies `event`, or says why it is not allowed here.
    pub fn transition(self, event: LifecycleEvent) -> Result<ContractStatus, IllegalTransition> {
        use ContractStatus as S;
        use LifecycleEvent as E;
        let next = match (self, event) {
            (S::Proposed, E::Sign) => S::Signed,
            (S::Signed, E::Validate) => S::Validated,
            (S::Validated, E::Migrate) => S::Migrated,
            (S::Migrated, E::Arm) => S::Armed,
            (S::Armed, E::Activate) => S::Active,
            // Armed → completed: a standby whose coverage window ended without a handover.
            (S::Active | S::Armed, E::Complete) => S::Completed,
            (S::Completed, E::Settle) => S::Settled,
            (S::Validated | S::Migrated | S::Armed | S::Active, E::Breach) => S::Breached,
            (S::Breached, E::Slash) => S::Slashed,
            (S::Proposed | S::Signed | S::Validated | S::Migrated | S::Armed, E::Cancel) => {
                S::Cancelled
            }
            (S::Validated | S::Migrated | S::Armed, E::Expire) => S::Expired,
            (from, event) => return Err(IllegalTransition { from, event }),
        };
        Ok(next)
    }
}

/// Something that moves a contract along its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LifecycleEvent {
    /// Both parties signed.
    Sign,
    /// Registered and funds locked.
    Validate,
    /// Provider reports it holds the images.
    Migrate,
    /// Provider reports it is ready.
    Arm,
    /// Provider reports it started the service.
    Activate,
    /// Service period over, obligations honoured.
    Complete,
    /// Funds paid out.
    Settle,
    /// Obligations broken.
    Breach,
    /// Stake forfeited.
    Slash,
    /// Called off.
    Cancel,
    /// Ran out unactivated.
    Expire,
}

/// A lifecycle event that is not allowed in the current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("contract in state {from:?} cannot take event {event:?}")]
pub struct IllegalTransition {
    /// The state the contract was in.
    pub from: ContractStatus,
    /// The refused event.
    pub event: LifecycleEvent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContractStatus as S;
    use LifecycleEvent as E;

    const ALL_STATES: [S; 12] = [
        S::Proposed,
        S::Signed,
        S::Validated,
        S::Migrated,
        S::Armed,
        S::Active,
        S::Completed,
        S::Settled,
        S::Breached,
        S::Slashed,
        S::Cancelled,
        S::Expired,
    ];
    const ALL_EVENTS: [E; 11] = [
        E::Sign,
        E::Validate,
        E::Migrate,
        E::Arm,
        E::Activate,
        E::Complete,
        E::Settle,
        E::Breach,
        E::Slash,
        E::Cancel,
        E::Expire,
    ];

    #[test]
    fn happy_path_reaches_settled() {
        let mut s = S::Proposed;
        for e in [
            E::Sign,
            E::Validate,
            E::Migrate,
            E::Arm,
            E::Activate,
            E::Complete,
            E::Settle,
        ] {
            s = s.transition(e).unwrap();
        }
        assert_eq!(s, S::Settled);
    }

    #[test]
    fn breach_then_slash() {
        let s = S::Active.transition(E::Breach).unwrap();
        assert_eq!(s.transition(E::Slash).unwrap(), S::Slashed);
    }

    #[test]
    fn final_states_accept_nothing() {
        for s in ALL_STATES.into_iter().filter(|s| s.is_final()) {
            for e in ALL_EVENTS {
                assert_eq!(
                    s.transition(e),
                    Err(IllegalTransition { from: s, event: e })
                );
            }
        }
    }

    #[test]
    fn active_contract_cannot_be_cancelled_or_expired() {
        assert!(S::Active.transition(E::Cancel).is_err());
        assert!(S::Active.transition(E::Expire).is_err());
        assert!(S::Settled.transition(E::Settle).is_err());
    }

    #[test]
    fn escrow_is_held_exactly_between_validation_and_a_final_state() {
        for s in ALL_STATES {
            let expected = !s.is_final() && !matches!(s, S::Proposed | S::Signed);
            assert_eq!(s.holds_escrow(), expected, "{s:?}");
        }
    }
}
