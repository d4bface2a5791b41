//! Restart policy and backoff of a service: plain data (no wasmtime), so a manifest that names
//! them decodes in a build without the `host` feature.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to do when a service stops on its own: after a failure
/// ([`crate::StopReason::is_failure`]), or with [`RestartPolicy::Always`] after any stop but a
/// requested one or the end of its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Stay stopped.
    Never,
    /// Start a fresh instance, at most `max_restarts` times.
    OnFailure {
        /// Restarts allowed over the service's life.
        max_restarts: u32,
    },
    /// Start a fresh instance after any stop but a requested one or the end of its lifetime
    /// (a clean exit included), without a count limit: a customer's contract service, which
    /// its provider is paid to keep up (`agora_hosting`, THREATS P3).
    Always,
}

/// How long a service waits before a restart: `initial_ms` after its first failure, doubling
/// with each consecutive one, never more than `max_ms`. An instance that ran for at least
/// [`Backoff::reset_after`] before failing starts the doubling again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// Delay before the first restart, in milliseconds.
    pub initial_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_ms: u64,
}

impl Default for Backoff {
    /// 1 s, doubling up to 30 s.
    fn default() -> Self {
        Self {
            initial_ms: 1_000,
            max_ms: 30_000,
        }
    }
}

impl Backoff {
    /// The delay before a restart after `consecutive` failures in a row (1 = the first).
    pub fn delay(&self, consecutive: u32) -> Duration {
        let doublings = consecutive.saturating_sub(1).min(63);
        let ms = self
            .initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_ms.max(self.initial_ms));
        Duration::from_millis(ms)
    }

    /// How long an instance must have run for its failure to count as the first in a row
    /// again: the longest delay, and at least 10 s.
    pub fn reset_after(&self) -> Duration {
        Duration::from_millis(self.max_ms.max(self.initial_ms).max(10_000))
    }
}
