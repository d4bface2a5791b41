//! The contract's limits win (#13.6): a contract service runs under the manifest's limits
//! clamped to a ceiling built from the contract ([`ServiceLimits::clamp_to`]), so the customer's
//! manifest can only ask for less than the provider sold, never for more.
//!
//! | limit | ceiling |
//! |---|---|
//! | `memory_bytes` | the contract's `terms.memory_bytes` |
//! | `fuel_per_second` | the contract's `terms.cpu_millis` at this host's rate ([`agora_runtime::HostConfig::fuel_per_second_for`]) |
//! | `wall_clock_ms` | what is left of the contract's window at each start ([`ServiceEnd`]) |
//! | `max_instances` | 1 |
//! | `max_output_bytes` | the provider's policy ([`crate::ServicesConfig::max_output_bytes`]) |

use agora_contracts::{Contract, ContractId, ContractRecord};
use agora_market::Timestamp;
use agora_runtime::{MAX_FUEL_PER_SECOND, MAX_MEMORY_BYTES, ServiceLimits};

/// When a contract service's lifetime ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceEnd {
    /// At this time (ms since the epoch): the end of the contract's paid window.
    At(Timestamp),
    /// This many ms after each start: the window starts at activation (hosted contracts),
    /// which has not happened yet.
    AfterStart(u64),
}

/// What a contract allows the service it pays for, on any host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContractCeiling {
    /// The contract (named in errors and logs).
    pub contract: ContractId,
    /// Its customer: the customer's contract services on this host share one instance group
    /// (`agora_runtime::ServiceSpec::instance_group`).
    pub customer: agora_market::NodeId,
    /// The contract's memory (`terms.memory_bytes`).
    pub memory_bytes: u64,
    /// The contract's CPU share in millicores (`terms.cpu_millis`).
    pub cpu_millis: u64,
    /// When the service must stop.
    pub end: ServiceEnd,
}

impl ContractCeiling {
    /// The ceiling of a registered contract: its window's end when the ledger knows it
    /// (standby: from registration; hosted: once activated), else its duration from start.
    pub fn for_record(id: ContractId, record: &ContractRecord) -> Self {
        let end = match record.window_end() {
            Some(end) => ServiceEnd::At(end),
            None => ServiceEnd::AfterStart(record.contract.duration_ms),
        };
        Self::with_end(id, &record.contract, end)
    }

    /// The ceiling of `contract` when only its body is known: its duration from each start.
    pub fn for_contract(id: ContractId, contract: &Contract) -> Self {
        Self::with_end(id, contract, ServiceEnd::AfterStart(contract.duration_ms))
    }

    fn with_end(id: ContractId, contract: &Contract, end: ServiceEnd) -> Self {
        Self {
            contract: id,
            customer: contract.customer,
            memory_bytes: contract.terms.memory_bytes,
            cpu_millis: contract.terms.cpu_millis,
            end,
        }
    }

    /// The lifetime left at `now`, in ms: `None` when the contract has already ended.
    pub fn lifetime_at(&self, now: Timestamp) -> Option<u64> {
        match self.end {
            ServiceEnd::At(end) => end.checked_sub(now).filter(|left| *left > 0),
            ServiceEnd::AfterStart(ms) => Some(ms).filter(|ms| *ms > 0),
        }
    }

    /// The ceiling as runtime limits at `now` on a host that burns `fuel_per_cpu_ms` fuel per
    /// CPU millisecond, with the provider's output allowance; `None` once the contract ended.
    /// Memory and fuel above what the runtime can run under are capped at its maxima (a
    /// contract that bought more than any guest can use); values below its minima are left
    /// for [`ServiceLimits::clamp_to`] to reject with the field named (a contract that bought
    /// no memory or no CPU).
    pub fn limits(
        &self,
        fuel_per_second: u64,
        max_output_bytes: u64,
        now: Timestamp,
    ) -> Option<ServiceLimits> {
        Some(ServiceLimits {
            memory_bytes: self.memory_bytes.min(MAX_MEMORY_BYTES),
            fuel_per_second: fuel_per_second.min(MAX_FUEL_PER_SECOND),
            wall_clock_ms: Some(self.lifetime_at(now)?),
            max_instances: 1,
            max_output_bytes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_contracts::ContractKind;

    fn record(kind: ContractKind) -> ContractRecord {
        let mut c = agora_contracts::test_utils::ContractBuilder::new(1, 2).build();
        c.kind = kind;
        c.terms.memory_bytes = 8 << 20;
        c.terms.cpu_millis = 200;
        c.duration_ms = 60_000;
        ContractRecord::new(c, 1_000).unwrap()
    }

    #[test]
    fn standby_ends_with_its_window_and_hosted_after_its_duration() {
        let id = ContractId([1; 32]);
        let standby = ContractCeiling::for_record(id, &record(ContractKind::Standby));
        assert_eq!(standby.end, ServiceEnd::At(61_000));
        assert_eq!(standby.lifetime_at(11_000), Some(50_000));
        assert_eq!(standby.lifetime_at(61_000), None, "ended");
        assert_eq!(standby.lifetime_at(70_000), None);

        let mut hosted = record(ContractKind::Hosted);
        let before = ContractCeiling::for_record(id, &hosted);
        assert_eq!(before.end, ServiceEnd::AfterStart(60_000));
        hosted.activated_at = Some(5_000);
        let after = ContractCeiling::for_record(id, &hosted);
        assert_eq!(after.end, ServiceEnd::At(65_000));
        assert_eq!(after.memory_bytes, 8 << 20);
        assert_eq!(after.cpu_millis, 200);
    }

    #[test]
    fn the_ceiling_wins_over_a_greedy_manifest() {
        let id = ContractId([1; 32]);
        let ceiling = ContractCeiling::for_record(id, &record(ContractKind::Standby));
        let limits = ceiling.limits(50_000_000, 4096, 31_000).unwrap();
        let greedy = ServiceLimits {
            memory_bytes: 4 << 30,
            fuel_per_second: 100_000_000_000,
            wall_clock_ms: None,
            max_instances: 64,
            max_output_bytes: u64::MAX,
        };
        let got = greedy.clamp_to(&limits).unwrap();
        assert_eq!(
            got,
            ServiceLimits {
                memory_bytes: 8 << 20,
                fuel_per_second: 50_000_000,
                wall_clock_ms: Some(30_000),
                max_instances: 1,
                max_output_bytes: 4096,
            }
        );
        // A modest manifest keeps its own, lower values.
        let modest = ServiceLimits {
            memory_bytes: 1 << 20,
            fuel_per_second: 1_000_000,
            wall_clock_ms: Some(10),
            max_instances: 1,
            max_output_bytes: 16,
        };
        assert_eq!(modest.clamp_to(&limits).unwrap(), modest);
    }

    #[test]
    fn a_contract_buying_more_than_a_guest_can_use_is_capped_not_refused() {
        let id = ContractId([1; 32]);
        let mut rec = record(ContractKind::Standby);
        rec.contract.terms.memory_bytes = u64::MAX;
        let limits = ContractCeiling::for_record(id, &rec)
            .limits(u64::MAX, 4096, 2_000)
            .unwrap();
        assert_eq!(limits.memory_bytes, MAX_MEMORY_BYTES);
        assert_eq!(limits.fuel_per_second, MAX_FUEL_PER_SECOND);
        assert_eq!(
            ServiceLimits::default().clamp_to(&limits).unwrap(),
            ServiceLimits {
                wall_clock_ms: Some(59_000),
                max_output_bytes: ServiceLimits::default().max_output_bytes.min(4096),
                max_instances: 1,
                ..ServiceLimits::default()
            }
        );
    }

    #[test]
    fn a_contract_without_memory_or_cpu_is_an_unusable_ceiling() {
        let id = ContractId([1; 32]);
        let mut rec = record(ContractKind::Standby);
        rec.contract.terms.memory_bytes = 0;
        let limits = ContractCeiling::for_record(id, &rec)
            .limits(50_000_000, 4096, 2_000)
            .unwrap();
        let err = ServiceLimits::default().clamp_to(&limits).unwrap_err();
        assert_eq!(err.field, "memory_bytes");
        assert_eq!(err.side, agora_runtime::LimitsSide::Ceiling);
    }
}
