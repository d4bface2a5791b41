//! Whether a provider may arm a contract whose service shares its module and instance group
//! with other contracts' services staged here (THREATS C5, the customer's own contracts): if
//! they already hold every instance the module's `max_instances` allows, its service could not
//! start when its activation comes, and the customer could have the provider slashed for that.
//! One rule, which the role machine's provider and the node's orchestrator both decide by; the
//! driver only says which services here are rivals (`ServiceHost::instance_rivals`).

use agora_market::Timestamp;

use agora_contracts::contract::ActivationClause;
use agora_contracts::ledger::ContractRecord;
use agora_contracts::lifecycle::ContractStatus;

/// How often a contract whose arming waits for an ending rival is checked again.
pub const ARM_RECHECK_MS: u64 = 500;
/// How long an immediate contract's arming waits for ending rivals to be final before it is
/// called off (a settlement waits for at most one evidence round and its report grace; a slot
/// waits until its start).
pub const MAX_ARM_WAIT_MS: u64 = 10 * 60 * 1_000;

/// What the contracts whose services here share `mine`'s module and instance group
/// ([`holding_instances`]) hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holding {
    /// Instances held, or taken before `mine` could: armed contracts, active ones not ending,
    /// and those not armed yet that were registered first (by time, then id, so of two
    /// contracts checked at once exactly one arms).
    pub held: usize,
    /// Active contracts whose settlement is pending (`closing`): their service runs until the
    /// settlement is final, then stops (a stop-first variant change replaces a contract by
    /// another of the same module). Ended ones hold nothing.
    pub ending: usize,
}

/// What a provider does about arming a contract, given what its rivals hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arming {
    /// An instance is free: arm.
    Arm,
    /// Only ending contracts hold the last instances: wait until they are final (at most until
    /// [`arm_give_up`]), then check again.
    Wait,
    /// Rivals hold every instance: call the contract off while the provider still may.
    Refuse,
}

impl Holding {
    /// What to do with `max` instances allowed.
    pub fn arming(self, max: usize) -> Arming {
        if self.held >= max {
            Arming::Refuse
        } else if self.held.saturating_add(self.ending) < max {
            Arming::Arm
        } else {
            Arming::Wait
        }
    }
}

/// What `others` (the contracts whose services here share `mine`'s module and instance group)
/// hold of the module's instances before `mine` could take one.
pub fn holding_instances(mine: &ContractRecord, others: &[&ContractRecord]) -> Holding {
    let my_key = (mine.registered_at, mine.contract.id().ok());
    let mut h = Holding::default();
    for r in others {
        match r.status {
            ContractStatus::Armed => h.held += 1,
            ContractStatus::Active if r.closing.is_none() => h.held += 1,
            ContractStatus::Active => h.ending += 1,
            ContractStatus::Validated | ContractStatus::Migrated
                if (r.registered_at, r.contract.id().ok()) < my_key =>
            {
                h.held += 1
            }
            _ => {}
        }
    }
    h
}

/// Until when the arming of a contract with `activation` may wait for ending rivals, first
/// asked at `now`: a slot must be armed by its start; an immediate or standby contract has no
/// deadline before it is armed (its customer may let it expire), so it waits at most
/// [`MAX_ARM_WAIT_MS`].
pub fn arm_give_up(activation: ActivationClause, now: Timestamp) -> Timestamp {
    match activation {
        ActivationClause::At(at) => at,
        _ => now.saturating_add(MAX_ARM_WAIT_MS),
    }
}

#[cfg(test)]
mod tests {
    use super::{Arming, Holding, MAX_ARM_WAIT_MS, arm_give_up, holding_instances};
    use agora_contracts::contract::ActivationClause;
    use agora_contracts::ledger::ContractRecord;
    use agora_contracts::lifecycle::ContractStatus;
    use agora_contracts::test_utils::ContractBuilder;

    fn record(nonce: u64, registered_at: u64, status: ContractStatus) -> ContractRecord {
        let c = ContractBuilder::new(1, 2).nonce(nonce).build();
        let mut r = ContractRecord::new(c, registered_at).unwrap();
        r.status = status;
        r
    }

    fn held(mine: &ContractRecord, others: &[&ContractRecord]) -> usize {
        holding_instances(mine, others).held
    }

    /// THREATS C5, the customer's own contracts: a rival holds an instance when armed, active
    /// and not ending, or not armed yet but registered first; an ending one (settlement
    /// pending) is counted apart, its instance still running; an ended one holds nothing, nor
    /// does one registered after. (Moved from the orchestrator's `handover.rs`.)
    #[test]
    fn the_customers_other_contracts_hold_instances_before_this_one_is_armed() {
        let mine = record(0, 2_000, ContractStatus::Migrated);
        let armed = record(1, 3_000, ContractStatus::Armed);
        let active = record(2, 3_000, ContractStatus::Active);
        let mut ending = record(3, 1_000, ContractStatus::Active);
        ending.closing = Some(5_000);
        let settled = record(4, 1_000, ContractStatus::Settled);
        let earlier = record(5, 1_000, ContractStatus::Migrated);
        let later = record(6, 3_000, ContractStatus::Validated);
        assert_eq!(held(&mine, &[&armed]), 1);
        assert_eq!(held(&mine, &[&active]), 1);
        assert_eq!(
            holding_instances(&mine, &[&ending, &settled]),
            Holding { held: 0, ending: 1 }
        );
        assert_eq!(held(&mine, &[&earlier]), 1);
        assert_eq!(held(&mine, &[&later]), 0);
        // Of two registered at once, exactly one holds before the other.
        let twin = record(7, 2_000, ContractStatus::Migrated);
        assert_eq!(held(&mine, &[&twin]) + held(&twin, &[&mine]), 1);
    }

    /// Arm while an instance is free; wait while only ending contracts hold the last ones;
    /// refuse once the rest hold them all. Mutants: `>=` as `>` in the refusal arms a contract
    /// whose rivals hold exactly `max`; dropping `ending` from the sum arms beside an ending
    /// contract whose service still runs.
    #[test]
    fn arming_waits_for_ending_rivals_and_is_refused_when_all_instances_are_held() {
        let h = |held, ending| Holding { held, ending };
        assert_eq!(h(0, 0).arming(1), Arming::Arm);
        assert_eq!(h(1, 0).arming(2), Arming::Arm);
        assert_eq!(h(0, 1).arming(1), Arming::Wait);
        assert_eq!(h(1, 1).arming(2), Arming::Wait);
        assert_eq!(h(1, 0).arming(1), Arming::Refuse);
        assert_eq!(h(2, 5).arming(2), Arming::Refuse);
        // A module that allows no instance here is never armed.
        assert_eq!(h(0, 0).arming(0), Arming::Refuse);
    }

    /// A slot waits until its start, anything else at most `MAX_ARM_WAIT_MS`.
    #[test]
    fn arming_gives_up_at_the_slot_or_after_the_longest_wait() {
        assert_eq!(arm_give_up(ActivationClause::At(9_000), 1_000), 9_000);
        let standby = ActivationClause::OnHandover {
            unreachable_for_ms: 1_000,
        };
        assert_eq!(arm_give_up(standby, 1_000), 1_000 + MAX_ARM_WAIT_MS);
        assert_eq!(
            arm_give_up(ActivationClause::Immediately, 1_000),
            1_000 + MAX_ARM_WAIT_MS
        );
    }
}
