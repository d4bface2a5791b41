//! agora-runtime: hosts other parties' services in a wasmtime sandbox with contract-enforced
//! limits, and (optionally) containers through a Docker/Podman CLI.
//!
//! # Flow
//! 1. [`Host::new`] builds one pooling-allocator engine sized for an edge device.
//! 2. [`Host::load`] checks the module bytes against their [`ModuleId`] (a CID), then compiles
//!    them, or reuses an artifact this node compiled earlier (MAC-checked, see [`host`]).
//! 3. The node builds the service's limits with [`ServiceLimits::clamp_to`] (the manifest's
//!    request under the contract's ceiling).
//! 4. [`ServiceManager::stage`] keeps the compiled module idle (`Staged`, the standby-insurance
//!    state); [`ServiceManager::start`] instantiates and runs it (`Active`) as a task on the
//!    host's guest runtime until it stops with a [`StopReason`] (`Stopped`), which is QoS
//!    evidence together with its [`Metering`].
//!
//! # Stopping any guest
//! A stop request or the end of the lifetime ends a guest within about one
//! [`host::EPOCH_TICK`] (10 ms) whatever it does: running code is interrupted by wasmtime's
//! epoch check (loop back-edges, function entries), and every guest call is an async future
//! raced against the stop, so a guest waiting in a host call (a WASI `poll_oneoff` sleep) is
//! cancelled. Guests run on a few shared threads ([`HostConfig::guest_threads`]): a sleeping
//! guest holds none, and a busy one yields at every tick. Its store is dropped (pool slot and
//! memory freed) before it reports `Stopped`.
//!
//! # CPU accounting
//! Each guest call gets one second's fuel ([`ServiceLimits::fuel_per_second`]) and is charged
//! the larger of (instructions + host-call fuel, see [`host_fuel`]) and its CPU time at
//! [`HostConfig::fuel_per_cpu_ms`]; running out is `CpuLimit`. The per-second window throttles
//! sustained use to the budget.
//!
//! # Guest ABI (version 1)
//! Callback model, chosen so activation is "instantiate + one call" on a precompiled module:
//! - Exports `memory` and `agora_poll() -> i32`. The host calls `agora_poll` whenever readings
//!   are queued and at least every `tick_ms`. Return `0` to keep running; any other value stops
//!   the service with `StopReason::Exited(value)`.
//! - Optional exports: `_initialize` (WASI reactor init, called first), `agora_init() -> i32`
//!   (called once per instance after `_initialize`; non-zero stops the service like `agora_poll`),
//!   `agora_health() -> i32` (polled by health checks; `0` means healthy), and
//!   `agora_probe(nonce: i64) -> i64` (uptime probe evidence, THREATS P1: when an arbitrator
//!   probes a contract's service, the provider's host calls it on the live instance with the
//!   probe's nonce, between two polls, with [`PROBE_FUEL`], and signs the value; the arbitrator
//!   calls it on a fresh instance of the same image — after `_initialize` and `agora_init`, no
//!   readings, an empty store — and counts the provider down unless the values match. So it
//!   must be a pure function of the nonce: no state, clock, randomness or host imports. A
//!   failing call stops the service, as a failing `agora_health` does).
//!   Without it, a probe rests on the hosting layer's word that the instance runs.
//! - Imports from module `"agora"` (pointers and lengths are wasm32 `i32`, read as unsigned;
//!   any out-of-bounds range traps the guest, it never panics the host):
//!   - `readings(ptr, cap) -> i32`: copy the next queued sensor reading into `ptr`; returns its
//!     length (1..=[`io::MAX_READING_BYTES`]), `0` when none is queued, or `-len` when `cap`
//!     is smaller than the reading's `len` (it stays queued; retry with a bigger buffer).
//!   - `publish(ptr, len) -> i32`: queue a north-bound message; `0` ok, `-1` outbox full (retry
//!     later), `-2` message larger than [`io::MAX_PUBLISH_BYTES`].
//!   - `kv_get(kptr, klen, vptr, vcap) -> i32`: value length, `-1` missing (or key longer than
//!     [`io::MAX_KV_KEY_BYTES`]), `-2` `vcap` too small.
//!   - `kv_put(kptr, klen, vptr, vlen) -> i32`: `0` ok, `-1` key/value/store bounds exceeded.
//!   - `kv_delete(kptr, klen) -> i32`: `1` deleted, `0` absent, `-1` key too long, `-3` the
//!     node's store does not support it.
//!   - `kv_scan(sptr, slen, bptr, bcap) -> i32`: writes up to [`io::MAX_KV_SCAN_ITEMS`] entries
//!     with keys `>=` the start key into `bptr`, in key order, each as `key_len: u32 LE,
//!     value_len: u32 LE, key, value`; returns how many (`0`: none left), `-needed` (at most
//!     `-8`) when the first entry does not fit in `bcap`, `-1` start key too long, `-3`
//!     unsupported. To continue, scan again from the last key followed by a `0` byte.
//!   - `log(ptr, len)`: append a line to the service log (at most
//!     [`io::MAX_LOG_LINE_BYTES`] kept).
//!   - `now_ms() -> i64`: wall-clock milliseconds since the Unix epoch.
//! - Every import costs fuel (see [`host_fuel`]); a call the budget cannot pay traps
//!   (`CpuLimit`).
//! - WASI preview 1 is linked with nothing granted: no preopened directories, no sockets, no
//!   environment and no arguments unless the [`ServiceSpec`] lists them. stdout and stderr go to a
//!   bounded log buffer; an instance writing more than `max_output_bytes` in total stops with
//!   `StopReason::OutputLimit`. WASI calls are the async ones: `poll_oneoff` sleeps on a timer
//!   without holding a thread, and a stop cancels the sleep. One `random_get` may ask for at
//!   most 64 KiB (more traps).
//!
//! # Known limits (not done yet)
//! - CPU is budgeted in fuel (≈ wasm instructions, floored by CPU time), not millicores. Time a
//!   guest spends asleep in WASI costs nothing but holds its instance slot until it is stopped
//!   or its lifetime ends.
//! - A single synchronous host call is not interruptible; each is bounded instead (sizes,
//!   `kv_scan` items), and a slow [`KvStore`] delays the guest's stop by one call. Likewise one
//!   bulk-memory instruction (`memory.fill`/`memory.copy`, charged a fuel per byte) runs to
//!   its end: a stop can wait for one pass over the guest's whole memory, which
//!   [`HostConfig::max_memory_bytes`] bounds.
//! - [`MemoryKv`] is in-memory only; a persistent store (e.g. sled in `node`) implements
//!   [`KvStore`].
//! - Containers ([`CliExecutor`]) get the limits of [`ContainerSpec`] but no manager, metering
//!   or restart policy yet.
//!
//! # Features
//! `host` (default) is the wasmtime host: [`Host`], [`ServiceManager`], containers, the guest
//! ABI. Without it the crate is only the plain data a manifest or image record names —
//! [`ServiceLimits`], [`ModuleId`], [`RestartPolicy`], [`Backoff`], [`RuntimeError`] — so
//! `agora-image` decodes (and the fuzzer runs) without building wasmtime.
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(feature = "host")]
pub(crate) mod abi;
#[cfg(feature = "host")]
pub mod container;
mod error;
#[cfg(feature = "host")]
mod guard;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "host")]
pub mod io;
mod limits;
#[cfg(feature = "host")]
pub mod manager;
mod module_id;
mod restart;
#[cfg(feature = "host")]
mod state;
#[cfg(feature = "host")]
pub use abi::fuel as host_fuel;
#[cfg(feature = "host")]
pub use container::{CliExecutor, ContainerError, ContainerSpec, Executor};
pub use error::RuntimeError;
#[cfg(feature = "host")]
pub use host::{CompiledModule, Host, HostConfig};
#[cfg(feature = "host")]
pub use io::{KvEntries, KvStore, KvUnsupported, MemoryKv, Published};
pub use limits::{
    LimitsError, LimitsSide, MAX_FUEL_PER_SECOND, MAX_INSTANCES, MAX_MEMORY_BYTES,
    MIN_FUEL_PER_SECOND, MIN_MEMORY_BYTES, Metering, ServiceLimits, StopReason,
};
pub use restart::{Backoff, RestartPolicy};

#[cfg(feature = "host")]
pub use manager::instance::PROBE_FUEL;
#[cfg(feature = "host")]
pub use manager::{Health, ServiceId, ServiceManager, ServiceSpec, ServiceState, ServiceStatus};
pub use module_id::{MAX_MODULE_ID_BYTES, MAX_MODULE_ID_CHARS, ModuleId};

#[cfg(all(feature = "host", any(test, feature = "test-utils")))]
pub mod fuzz;
#[cfg(all(feature = "host", any(test, feature = "test-utils")))]
pub mod test_utils;
