//! Where a replica is, read from the ledger (the deployer's view of its targets' contracts) and
//! from the service host (the target's view of its own replica). Pure functions: the task feeds
//! them what it queried.

use agora_contracts::ContractStatus;
use agora_fleet_core::TargetPhase;
use agora_runtime::{Health, ServiceState};

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

/// Quick failures in a row (`Health::quick_failures`, restarted by the runtime) that make a
/// replica failed.
pub const FAILED_AFTER_IN_A_ROW: u32 = 3;

/// The verdict on a running replica from its health check: the node-side probes (started,
/// answering: polled within three ticks) and the guest's `agora_health` export (0 = healthy).
/// The reasons are fixed texts so that a target reports a change once, not every tick.
pub fn health_phase(health: Option<&Health>) -> (TargetPhase, Option<String>) {
    let Some(h) = health else {
        // Started, but its health cannot be read (yet): running, no verdict.
        return (TargetPhase::Running, None);
    };
    if h.healthy {
        return (TargetPhase::Healthy, None);
    }
    if h.restarting {
        // Its instance failed and the restart policy waits to start the next (a contract's
        // guest is always restarted: `agora_hosting` ops). A crash loop (instances in a row
        // that each stopped within a second of their start) makes the replica failed, as a
        // failure that stopped it did before: the plan releases it and places it elsewhere,
        // and an upgrade to an image that fails at once rolls back. A failure now and then, or
        // after the instance ran a while, is no verdict.
        if h.quick_failures >= FAILED_AFTER_IN_A_ROW {
            return (
                TargetPhase::Failed,
                Some("its instance keeps failing (restarted after each failure)".into()),
            );
        }
        return (TargetPhase::Running, None);
    }
    match (h.guest_health, h.last_poll_ms_ago) {
        (Some(code), _) if code != 0 => (
            TargetPhase::Unhealthy,
            Some(format!("the guest's health export returned {code}")),
        ),
        // Started, not answered its first poll yet.
        (_, None) => (TargetPhase::Running, None),
        _ => (
            TargetPhase::Unhealthy,
            Some("not answering: no poll completed within three ticks".into()),
        ),
    }
}

/// The phase of this node's replica: from its contract (if any), the state of the service the
/// orchestrator staged for it (if any) and, once it runs, its health check.
pub fn local_phase(
    contract: Option<ContractStatus>,
    service: Option<&ServiceState>,
    health: Option<&Health>,
    fetching: bool,
) -> Option<(TargetPhase, Option<String>)> {
    match (contract, service) {
        (_, Some(ServiceState::Active)) => Some(health_phase(health)),
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
            local_phase(Some(active), Some(&ServiceState::Active), None, false),
            Some((TargetPhase::Running, None))
        );
        assert_eq!(
            local_phase(
                Some(active),
                Some(&ServiceState::Active),
                Some(&health(true, Some(0), Some(50))),
                false
            ),
            Some((TargetPhase::Healthy, None))
        );
        assert_eq!(
            local_phase(
                Some(ContractStatus::Armed),
                Some(&ServiceState::Staged),
                None,
                false
            ),
            Some((TargetPhase::Staged, None))
        );
        assert_eq!(
            local_phase(Some(ContractStatus::Validated), None, None, false),
            Some((TargetPhase::Fetching, None))
        );
        assert_eq!(
            local_phase(None, None, None, true),
            Some((TargetPhase::Fetching, None))
        );
        assert_eq!(local_phase(None, None, None, false), None);
        // A settled contract's stopped service is the release, not a failure.
        assert_eq!(
            local_phase(
                Some(ContractStatus::Settled),
                Some(&ServiceState::Stopped(agora_runtime::StopReason::Requested)),
                None,
                false
            ),
            None
        );
    }

    fn health(healthy: bool, guest: Option<i32>, polled: Option<u64>) -> Health {
        Health {
            state: ServiceState::Active,
            last_poll_ms_ago: polled,
            guest_health: guest,
            healthy,
            restarting: false,
            start_failed: false,
            quick_failures: 0,
        }
    }

    #[test]
    fn a_replica_that_keeps_failing_is_failed_and_one_failure_is_no_verdict() {
        let mut h = health(false, None, Some(10));
        h.restarting = true;
        h.quick_failures = 1;
        assert_eq!(health_phase(Some(&h)), (TargetPhase::Running, None));
        h.quick_failures = FAILED_AFTER_IN_A_ROW;
        assert_eq!(
            health_phase(Some(&h)).0,
            TargetPhase::Failed,
            "released and placed elsewhere, as when a failure stopped it"
        );
        // Running again after the wait: judged by its polls.
        h.restarting = false;
        h.healthy = true;
        assert_eq!(health_phase(Some(&h)), (TargetPhase::Healthy, None));
    }

    #[test]
    fn health_comes_from_the_guest_export_and_the_node_probes() {
        // Healthy: answering, the guest says 0 (or has no export).
        assert_eq!(
            health_phase(Some(&health(true, None, Some(10)))),
            (TargetPhase::Healthy, None)
        );
        // The guest's export reports a failure: unhealthy with the code.
        let (phase, reason) = health_phase(Some(&health(false, Some(3), Some(10))));
        assert_eq!(phase, TargetPhase::Unhealthy);
        assert!(reason.is_some_and(|r| r.contains("returned 3")));
        // Answering stopped (last poll long ago): unhealthy, a fixed reason (reported once).
        let stale = health_phase(Some(&health(false, Some(0), Some(9_000))));
        assert_eq!(stale.0, TargetPhase::Unhealthy);
        assert_eq!(
            stale,
            health_phase(Some(&health(false, None, Some(60_000))))
        );
        assert!(stale.1.is_some_and(|r| r.contains("not answering")));
        // Started, no poll yet, or no health readable: running, no verdict.
        assert_eq!(
            health_phase(Some(&health(false, None, None))),
            (TargetPhase::Running, None)
        );
        assert_eq!(health_phase(None), (TargetPhase::Running, None));
    }
}
