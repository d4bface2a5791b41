//! Contract limits for a service, why it stopped, and what it used (settlement evidence).

use serde::{Deserialize, Serialize};

/// Resource limits taken from the contract; enforced per instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceLimits {
    /// Linear-memory cap in bytes (all memories of the instance together).
    pub memory_bytes: u64,
    /// CPU budget in wasmtime fuel (roughly wasm instructions) per second. One guest call may
    /// use at most one second's budget (else `CpuLimit`); sustained use beyond it is throttled.
    pub fuel_per_second: u64,
    /// Wall-clock lifetime of the service in milliseconds; `None` runs until stopped.
    pub wall_clock_ms: Option<u64>,
    /// How many instances of the same module may be active at once on this host.
    pub max_instances: u32,
    /// Total bytes one instance may write to stdout and stderr (a restart gets a fresh allowance).
    pub max_output_bytes: u64,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 32 << 20,
            fuel_per_second: 200_000_000,
            wall_clock_ms: None,
            max_instances: 1,
            max_output_bytes: 1 << 20,
        }
    }
}

/// Why a service instance stopped; recorded as QoS evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// It tried to grow memory beyond `memory_bytes`.
    MemoryLimit,
    /// A single call used more than one second's fuel budget.
    CpuLimit,
    /// Its wall-clock lifetime ended.
    Lifetime,
    /// It trapped (unreachable, out-of-bounds access, bad host-call pointer...).
    Trap(String),
    /// It wrote more than `max_output_bytes` to stdout/stderr.
    OutputLimit,
    /// It exited (WASI `proc_exit` or a non-zero `agora_poll`/`agora_init` result).
    Exited(i32),
    /// The host asked it to stop.
    Requested,
    /// The host could not start it (pool exhausted, missing import...): not the guest's fault.
    StartFailed(String),
}

impl StopReason {
    /// Whether this counts as a failure for restart policies (everything but a clean or
    /// requested stop and the end of its lifetime).
    pub fn is_failure(&self) -> bool {
        !matches!(
            self,
            StopReason::Requested | StopReason::Lifetime | StopReason::Exited(0)
        )
    }
}

/// What a service used, accumulated over all its (re)starts; settlement evidence.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metering {
    /// Fuel consumed by guest code.
    pub fuel_used: u64,
    /// Largest linear memory size reached, in bytes.
    pub peak_memory_bytes: u64,
    /// Milliseconds spent active.
    pub uptime_ms: u64,
    /// Readings handed to the guest through `readings`.
    pub readings_processed: u64,
    /// Readings dropped because the queue was full.
    pub readings_dropped: u64,
    /// Messages accepted from `publish`.
    pub published: u64,
    /// Bytes written to stdout/stderr.
    pub output_bytes: u64,
    /// Completed `agora_poll` calls.
    pub polls: u64,
    /// Restarts made by the restart policy.
    pub restarts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_for_restart() {
        assert!(StopReason::CpuLimit.is_failure());
        assert!(StopReason::Exited(3).is_failure());
        assert!(StopReason::Trap("x".into()).is_failure());
        assert!(!StopReason::Exited(0).is_failure());
        assert!(!StopReason::Requested.is_failure());
        assert!(!StopReason::Lifetime.is_failure());
    }
}
