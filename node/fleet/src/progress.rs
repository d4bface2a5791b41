//! Where a replica is, read from the ledger (the deployer's view of its targets' contracts) and
//! from the service host (the target's view of its own replica). Pure functions: the task feeds
//! them what it queried.

use agora_contracts::ContractStatus;
use agora_market::fleet::TargetPhase;
use agora_runtime::ServiceState;

/// A contract ended (or is being settled): it no longer carries a replica.
pub fn ended(status: ContractStatus) -> bool {
    status.is_final() || matches!(status, ContractStatus::Completed | ContractStatus::Breached)
}

/// The phase a target's contract shows on the ledger, `None` once it ended.
pub fn ledger_phase(status: ContractStatus) -> Option<TargetPhase> {
    match status {
        _ if ended(status) => None,
        ContractStatus::Armed => Some(TargetPhase::Staged),
        ContractStatus::Active => Some(TargetPhase::Running),
        // Proposed, signed, validated, migrated: the provider is fetching the image.
        _ => Some(TargetPhase::Fetching),
    }
}

/// Whether `next` moves a target forward from `current` (ledger facts only ever advance a
/// target; a failure is reported by its own rule, never derived from an ordering).
pub fn advances(current: Option<TargetPhase>, next: TargetPhase) -> bool {
    match current {
        None => true,
        Some(TargetPhase::Failed) => false,
        Some(c) => next != TargetPhase::Failed && next > c,
    }
}

/// The phase of this node's replica: from its contract (if any) and the state of the service
/// the orchestrator staged for it (if any).
pub fn local_phase(
    contract: Option<ContractStatus>,
    service: Option<&ServiceState>,
    fetching: bool,
) -> Option<(TargetPhase, Option<String>)> {
    match (contract, service) {
        (_, Some(ServiceState::Active)) => Some((TargetPhase::Running, None)),
        (Some(c), Some(ServiceState::Stopped(reason))) if !ended(c) => Some((
            TargetPhase::Failed,
            Some(format!("service stopped: {reason:?}")),
        )),
        (Some(c), Some(ServiceState::Staged)) if !ended(c) => Some((TargetPhase::Staged, None)),
        (Some(c), None) if !ended(c) => Some((TargetPhase::Fetching, None)),
        (None, _) if fetching => Some((TargetPhase::Fetching, None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_phases_follow_the_contract_and_stop_when_it_ends() {
        assert_eq!(
            ledger_phase(ContractStatus::Validated),
            Some(TargetPhase::Fetching)
        );
        assert_eq!(
            ledger_phase(ContractStatus::Armed),
            Some(TargetPhase::Staged)
        );
        assert_eq!(
            ledger_phase(ContractStatus::Active),
            Some(TargetPhase::Running)
        );
        for s in [
            ContractStatus::Completed,
            ContractStatus::Settled,
            ContractStatus::Breached,
            ContractStatus::Cancelled,
            ContractStatus::Expired,
            ContractStatus::Slashed,
        ] {
            assert_eq!(ledger_phase(s), None, "{s:?}");
        }
    }

    #[test]
    fn ledger_facts_only_move_a_target_forward() {
        assert!(advances(None, TargetPhase::Fetching));
        assert!(advances(
            Some(TargetPhase::Contracting),
            TargetPhase::Running
        ));
        // A target's own report (healthy) is not undone by the ledger's coarser view.
        assert!(!advances(Some(TargetPhase::Healthy), TargetPhase::Running));
        assert!(!advances(Some(TargetPhase::Failed), TargetPhase::Running));
        assert!(!advances(Some(TargetPhase::Running), TargetPhase::Failed));
    }

    #[test]
    fn the_local_phase_comes_from_the_service_and_its_contract() {
        let active = ContractStatus::Active;
        assert_eq!(
            local_phase(Some(active), Some(&ServiceState::Active), false),
            Some((TargetPhase::Running, None))
        );
        assert_eq!(
            local_phase(
                Some(ContractStatus::Armed),
                Some(&ServiceState::Staged),
                false
            ),
            Some((TargetPhase::Staged, None))
        );
        assert_eq!(
            local_phase(Some(ContractStatus::Validated), None, false),
            Some((TargetPhase::Fetching, None))
        );
        assert_eq!(
            local_phase(None, None, true),
            Some((TargetPhase::Fetching, None))
        );
        assert_eq!(local_phase(None, None, false), None);
        // A settled contract's stopped service is the release, not a failure.
        assert_eq!(
            local_phase(
                Some(ContractStatus::Settled),
                Some(&ServiceState::Stopped(agora_runtime::StopReason::Requested)),
                false
            ),
            None
        );
    }
}
