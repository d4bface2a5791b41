//! Contract limits for a service, why it stopped, and what it used (settlement evidence).

use serde::{Deserialize, Serialize};

/// Resource limits taken from the contract; enforced per instance.
///
/// A customer's manifest only *asks* for limits; the contract's limits are the ceiling. Build
/// the limits a service runs under with [`ServiceLimits::clamp_to`], which can only lower each
/// field of the request to the ceiling and rejects unusable values on either side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceLimits {
    /// Linear-memory cap in bytes (all memories of the instance together).
    pub memory_bytes: u64,
    /// CPU budget in wasmtime fuel (roughly wasm instructions) per second. One guest call may
    /// use at most one second's budget (else `CpuLimit`); sustained use beyond it is throttled.
    /// Host calls and guest running time are charged in fuel too (see the crate docs).
    pub fuel_per_second: u64,
    /// Wall-clock lifetime of the service in milliseconds; `None` runs until stopped.
    pub wall_clock_ms: Option<u64>,
    /// How many instances of the same module may be active at once on this host (in one
    /// instance group: [`crate::ServiceSpec::instance_group`]).
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

/// Smallest usable `fuel_per_second`: below this a guest cannot even run its initialiser.
pub const MIN_FUEL_PER_SECOND: u64 = 10_000;
/// Largest accepted `fuel_per_second` (100 G, about a hundred fast cores): anything above is a
/// typo or an attempt to disable CPU accounting.
pub const MAX_FUEL_PER_SECOND: u64 = 100_000_000_000;
/// Smallest usable `memory_bytes`: one wasm page.
pub const MIN_MEMORY_BYTES: u64 = 64 << 10;
/// Largest `memory_bytes` a wasm32 guest can address (4 GiB); hosts cap lower.
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
/// Largest accepted `max_instances`.
pub const MAX_INSTANCES: u32 = 4096;

/// Whose limits were unusable in [`ServiceLimits::clamp_to`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitsSide {
    /// The limits the service asked for (the customer's manifest).
    Requested,
    /// The ceiling (the contract's limits).
    Ceiling,
}

impl std::fmt::Display for LimitsSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitsSide::Requested => "requested (manifest)",
            LimitsSide::Ceiling => "ceiling (contract)",
        })
    }
}

/// A limit value the runtime cannot run a service under.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{side} limit `{field}` = {value} is unusable: {reason}")]
pub struct LimitsError {
    /// Whose limits held the value.
    pub side: LimitsSide,
    /// The field, as named in the manifest's `[limits]` section or [`ServiceLimits`].
    pub field: &'static str,
    /// The rejected value.
    pub value: u64,
    /// What is wrong and what to use instead.
    pub reason: &'static str,
}

impl ServiceLimits {
    /// Checks that every field is usable; `side` only labels the error.
    pub fn validate(&self, side: LimitsSide) -> Result<(), LimitsError> {
        let bad = |field, value, reason| {
            Err(LimitsError {
                side,
                field,
                value,
                reason,
            })
        };
        if self.fuel_per_second < MIN_FUEL_PER_SECOND {
            return bad(
                "fuel_per_second",
                self.fuel_per_second,
                "must be at least 10000 (a guest needs fuel to run at all)",
            );
        }
        if self.fuel_per_second > MAX_FUEL_PER_SECOND {
            return bad(
                "fuel_per_second",
                self.fuel_per_second,
                "must be at most 100000000000; 200000000 is a typical service",
            );
        }
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return bad(
                "memory_bytes",
                self.memory_bytes,
                "must be at least 65536 (one wasm page)",
            );
        }
        if self.memory_bytes > MAX_MEMORY_BYTES {
            return bad(
                "memory_bytes",
                self.memory_bytes,
                "must be at most 4294967296 (a wasm32 guest cannot address more)",
            );
        }
        if self.wall_clock_ms == Some(0) {
            return bad(
                "wall_clock_ms",
                0,
                "must be greater than 0; leave it unset to run until stopped",
            );
        }
        if self.max_instances == 0 || self.max_instances > MAX_INSTANCES {
            return bad(
                "max_instances",
                u64::from(self.max_instances),
                "must be between 1 and 4096",
            );
        }
        Ok(())
    }

    /// The limits to run under when `self` is what the service asks for and `ceiling` is what
    /// the contract allows: each field is the lower of the two (an unset lifetime counts as
    /// unlimited), so a request can lower any limit but never raise it past the ceiling.
    /// Both sides must pass [`Self::validate`].
    pub fn clamp_to(&self, ceiling: &ServiceLimits) -> Result<ServiceLimits, LimitsError> {
        ceiling.validate(LimitsSide::Ceiling)?;
        self.validate(LimitsSide::Requested)?;
        let wall_clock_ms = match (self.wall_clock_ms, ceiling.wall_clock_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (one, None) | (None, one) => one,
        };
        Ok(ServiceLimits {
            memory_bytes: self.memory_bytes.min(ceiling.memory_bytes),
            fuel_per_second: self.fuel_per_second.min(ceiling.fuel_per_second),
            wall_clock_ms,
            max_instances: self.max_instances.min(ceiling.max_instances),
            max_output_bytes: self.max_output_bytes.min(ceiling.max_output_bytes),
        })
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
    /// Its `agora_health` export answered this non-zero value for longer than the service's
    /// `unhealthy_restart_ms` ([`crate::ServiceSpec`]).
    Unhealthy(i32),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::MemoryLimit => f.write_str("memory limit"),
            StopReason::CpuLimit => f.write_str("cpu limit"),
            StopReason::Lifetime => f.write_str("lifetime ended"),
            StopReason::Trap(t) => write!(f, "trap: {t}"),
            StopReason::OutputLimit => f.write_str("output limit"),
            StopReason::Exited(code) => write!(f, "exited with {code}"),
            StopReason::Requested => f.write_str("stop requested"),
            StopReason::StartFailed(e) => write!(f, "start failed: {e}"),
            StopReason::Unhealthy(h) => write!(f, "unhealthy (agora_health {h})"),
        }
    }
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
    use proptest::prelude::*;

    #[test]
    fn failures_are_classified_for_restart() {
        assert!(StopReason::CpuLimit.is_failure());
        assert!(StopReason::Exited(3).is_failure());
        assert!(StopReason::Unhealthy(1).is_failure());
        assert!(StopReason::Trap("x".into()).is_failure());
        assert!(!StopReason::Exited(0).is_failure());
        assert!(!StopReason::Requested.is_failure());
        assert!(!StopReason::Lifetime.is_failure());
    }

    fn contract() -> ServiceLimits {
        ServiceLimits {
            memory_bytes: 16 << 20,
            fuel_per_second: 100_000_000,
            wall_clock_ms: Some(60_000),
            max_instances: 2,
            max_output_bytes: 4096,
        }
    }

    #[test]
    fn a_manifest_cannot_raise_any_limit_past_the_contract() {
        let greedy = ServiceLimits {
            memory_bytes: 1 << 30,
            fuel_per_second: MAX_FUEL_PER_SECOND,
            wall_clock_ms: None,
            max_instances: 64,
            max_output_bytes: u64::MAX,
        };
        assert_eq!(greedy.clamp_to(&contract()).unwrap(), contract());
    }

    #[test]
    fn a_manifest_may_lower_every_limit() {
        let modest = ServiceLimits {
            memory_bytes: 1 << 20,
            fuel_per_second: 1_000_000,
            wall_clock_ms: Some(10),
            max_instances: 1,
            max_output_bytes: 0,
        };
        assert_eq!(modest.clamp_to(&contract()).unwrap(), modest);
        // An unlimited ceiling lifetime keeps the request's; an unlimited request gets the
        // ceiling's.
        let mut open = contract();
        open.wall_clock_ms = None;
        assert_eq!(modest.clamp_to(&open).unwrap().wall_clock_ms, Some(10));
        assert_eq!(
            open.clamp_to(&contract()).unwrap().wall_clock_ms,
            Some(60_000)
        );
        assert_eq!(open.clamp_to(&open).unwrap().wall_clock_ms, None);
    }

    #[test]
    fn zero_or_absurd_values_are_rejected_naming_the_side_and_field() {
        type Spoil = fn(&mut ServiceLimits);
        let cases: [(Spoil, &str); 7] = [
            (|l| l.fuel_per_second = 0, "fuel_per_second"),
            (
                |l| l.fuel_per_second = MIN_FUEL_PER_SECOND - 1,
                "fuel_per_second",
            ),
            (
                |l| l.fuel_per_second = MAX_FUEL_PER_SECOND + 1,
                "fuel_per_second",
            ),
            (|l| l.memory_bytes = 1024, "memory_bytes"),
            (|l| l.memory_bytes = u64::MAX, "memory_bytes"),
            (|l| l.wall_clock_ms = Some(0), "wall_clock_ms"),
            (|l| l.max_instances = 0, "max_instances"),
        ];
        for (spoil, field) in cases {
            let mut bad = contract();
            spoil(&mut bad);
            let err = bad.clamp_to(&contract()).unwrap_err();
            assert_eq!((err.side, err.field), (LimitsSide::Requested, field));
            let err = contract().clamp_to(&bad).unwrap_err();
            assert_eq!((err.side, err.field), (LimitsSide::Ceiling, field));
            assert!(err.to_string().contains("ceiling (contract)"), "{err}");
        }
        let err = ServiceLimits {
            fuel_per_second: 0,
            ..contract()
        }
        .validate(LimitsSide::Requested)
        .unwrap_err();
        assert!(err.to_string().contains("must be at least 10000"), "{err}");
    }

    fn any_valid() -> impl Strategy<Value = ServiceLimits> {
        (
            MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES,
            MIN_FUEL_PER_SECOND..=MAX_FUEL_PER_SECOND,
            proptest::option::of(1u64..=u64::MAX),
            1u32..=MAX_INSTANCES,
            any::<u64>(),
        )
            .prop_map(|(m, f, w, i, o)| ServiceLimits {
                memory_bytes: m,
                fuel_per_second: f,
                wall_clock_ms: w,
                max_instances: i,
                max_output_bytes: o,
            })
    }

    proptest! {
        #[test]
        fn clamped_limits_are_valid_and_below_both_sides(
            req in any_valid(),
            ceil in any_valid(),
        ) {
            let got = req.clamp_to(&ceil).unwrap();
            prop_assert!(got.validate(LimitsSide::Requested).is_ok());
            for (g, r, c) in [
                (got.memory_bytes, req.memory_bytes, ceil.memory_bytes),
                (got.fuel_per_second, req.fuel_per_second, ceil.fuel_per_second),
                (got.max_output_bytes, req.max_output_bytes, ceil.max_output_bytes),
                (
                    u64::from(got.max_instances),
                    u64::from(req.max_instances),
                    u64::from(ceil.max_instances),
                ),
                (
                    got.wall_clock_ms.unwrap_or(u64::MAX),
                    req.wall_clock_ms.unwrap_or(u64::MAX),
                    ceil.wall_clock_ms.unwrap_or(u64::MAX),
                ),
            ] {
                prop_assert_eq!(g, r.min(c));
            }
            // Clamping is idempotent: the result is its own ceiling.
            prop_assert_eq!(got.clamp_to(&got).unwrap(), got.clone());
        }
    }
}
