//! agora-runtime: hosts other parties' services in a wasmtime sandbox with contract-enforced
//! limits, and (optionally) containers through a Docker/Podman CLI.
//!
//! # Flow
//! 1. [`Host::new`] builds one pooling-allocator engine sized for an edge device.
//! 2. [`Host::load`] checks the module bytes against their [`ModuleId`] (a CID), then compiles
//!    them, or reuses an artifact this node compiled earlier (MAC-checked, see [`host`]).
//! 3. [`ServiceManager::stage`] keeps the compiled module idle (`Staged`, the standby-insurance
//!    state); [`ServiceManager::start`] instantiates and runs it (`Active`) on its own thread
//!    until it stops with a [`StopReason`] (`Stopped`), which is QoS evidence together with
//!    its [`Metering`].
//!
//! # Guest ABI (version 1)
//! Callback model, chosen so activation is "instantiate + one call" on a precompiled module:
//! - Exports `memory` and `agora_poll() -> i32`. The host calls `agora_poll` whenever readings
//!   are queued and at least every `tick_ms`. Return `0` to keep running; any other value stops
//!   the service with `StopReason::Exited(value)`.
//! - Optional exports: `_initialize` (WASI reactor init, called first), `agora_init() -> i32`
//!   (called once per instance after `_initialize`; non-zero stops the service like `agora_poll`),
//!   and `agora_health() -> i32` (polled by health checks; `0` means healthy).
//! - Imports from module `"agora"` (pointers and lengths are wasm32 `i32`, read as unsigned;
//!   any out-of-bounds range traps the guest, it never panics the host):
//!   - `readings(ptr, cap) -> i32`: copy the next queued sensor reading into `ptr`; returns its
//!     length (1..=[`io::MAX_READING_BYTES`]), `0` when none is queued, or `-len` when `cap`
//!     is smaller than the reading's `len` (it stays queued; retry with a bigger buffer).
//!   - `publish(ptr, len) -> i32`: queue a north-bound message; `0` ok, `-1` outbox full (retry
//!     later), `-2` message larger than [`io::MAX_PUBLISH_BYTES`].
//!   - `kv_get(kptr, klen, vptr, vcap) -> i32`: value length, `-1` missing, `-2` `vcap` too small.
//!   - `kv_put(kptr, klen, vptr, vlen) -> i32`: `0` ok, `-1` key/value/store bounds exceeded.
//!   - `log(ptr, len)`: append a line to the service log.
//!   - `now_ms() -> i64`: wall-clock milliseconds since the Unix epoch.
//! - WASI preview 1 is linked with nothing granted: no preopened directories, no sockets, no
//!   environment and no arguments unless the [`ServiceSpec`] lists them. stdout and stderr go to a
//!   bounded log buffer; an instance writing more than `max_output_bytes` in total stops with
//!   `StopReason::OutputLimit`.
//!
//! # Known limits (not done yet)
//! - CPU is budgeted in fuel (≈ wasm instructions), not millicores; time a guest spends blocked
//!   inside a host call (e.g. WASI `poll_oneoff` with a clock timeout) costs no fuel and a stop
//!   request waits for that call to return.
//! - [`MemoryKv`] is in-memory only; a persistent store (e.g. sled in `node`) implements
//!   [`KvStore`].
//! - Containers ([`CliExecutor`]) get the limits of [`ContainerSpec`] but no manager, metering
//!   or restart policy yet.
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod abi;
pub mod container;
mod error;
pub mod host;
pub mod io;
mod limits;
pub mod manager;
mod module_id;
mod state;
pub use container::{CliExecutor, ContainerError, ContainerSpec, Executor};
pub use error::RuntimeError;
pub use host::{CompiledModule, Host, HostConfig};
pub use io::{KvStore, MemoryKv, Published};
pub use limits::{Metering, ServiceLimits, StopReason};

pub use manager::{
    Health, RestartPolicy, ServiceId, ServiceManager, ServiceSpec, ServiceState, ServiceStatus,
};
pub use module_id::ModuleId;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
