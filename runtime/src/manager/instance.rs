//! One live instance of a service: its store, exported entry points and fuel accounting. Every
//! guest call is async and guarded (see [`crate::guard`]): a stop, the end of the lifetime or a
//! spent CPU budget ends it within an epoch tick whatever the guest is doing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Engine, Instance, Store, Trap, TypedFunc, WasmParams, WasmResults};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::WasiCtxBuilder;

use crate::StopReason;
use crate::guard::{CallGuard, Interrupted, RunClock, StopSignal};
use crate::host::CompiledModule;
use crate::manager::ServiceSpec;
use crate::state::{LogSink, MemoryLimiter, ServiceIo, StoreState};

/// Largest WASI `random_get` a guest may make in one call (larger traps).
pub(crate) const MAX_RANDOM_BYTES: u64 = 64 << 10;
/// Fuel one `agora_probe` call may use: the same cap on the provider's live instance and on an
/// arbitrator's fresh one, so a call that runs out of fuel runs out on both.
pub const PROBE_FUEL: u64 = 1_000_000;

/// What an instance needs from the host and the manager besides its spec.
pub(crate) struct Launch {
    /// The host's engine (its epoch is ticking).
    pub engine: Engine,
    /// The host's fuel per CPU millisecond (`HostConfig::fuel_per_cpu_ms`).
    pub fuel_per_cpu_ms: u64,
    /// The service's stop signal.
    pub stop: Arc<StopSignal>,
    /// When the service's lifetime ends, if it has one.
    pub deadline: Option<Instant>,
}

/// A running instance; dropped (and its pool slot and memory freed) when the service stops.
pub(crate) struct Running {
    store: Store<StoreState>,
    #[cfg_attr(not(any(test, feature = "test-utils")), allow(dead_code))]
    instance: Instance,
    guard: Arc<CallGuard>,
    poll: TypedFunc<(), i32>,
    health: Option<TypedFunc<(), i32>>,
    probe: Option<TypedFunc<i64, i64>>,
    sink: LogSink,
    fuel_per_call: u64,
    fuel_per_cpu_ms: u64,
    /// Fuel charged to this instance so far (instructions, host calls and CPU time).
    pub fuel_used: u64,
}

/// The CPU time worth `fuel` at `fuel_per_cpu_ms`.
fn cpu_time_for(fuel: u64, fuel_per_cpu_ms: u64) -> Duration {
    let nanos = u128::from(fuel) * 1_000_000 / u128::from(fuel_per_cpu_ms.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The fuel `busy` CPU time is worth at `fuel_per_cpu_ms`.
fn fuel_for(busy: Duration, fuel_per_cpu_ms: u64) -> u64 {
    let fuel = busy.as_nanos().saturating_mul(u128::from(fuel_per_cpu_ms)) / 1_000_000;
    u64::try_from(fuel).unwrap_or(u64::MAX)
}

impl Running {
    /// Instantiates `module` with nothing granted beyond `spec`'s env and args, then runs
    /// `_initialize` and `agora_init` if exported.
    pub(crate) async fn start(
        launch: Launch,
        module: &CompiledModule,
        spec: &ServiceSpec,
        io: Arc<ServiceIo>,
    ) -> Result<Self, StopReason> {
        let sink = LogSink::new(io.log.clone(), spec.limits.max_output_bytes);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(sink.clone()).stderr(sink.clone());
        wasi.envs(&spec.env).args(&spec.args);
        // Never block a runtime thread inside WASI (e.g. sleep on-thread in `poll_oneoff`),
        // and never let one `random_get` make the host allocate more than 64 KiB (the WASI
        // default is 64 MiB per call).
        wasi.allow_blocking_current_thread(false)
            .max_random_size(MAX_RANDOM_BYTES);
        let fuel_per_call = spec.limits.fuel_per_second.max(1);
        let guard = Arc::new(CallGuard {
            stop: launch.stop,
            deadline: launch.deadline,
            clock: RunClock::new(),
            max_busy: cpu_time_for(fuel_per_call, launch.fuel_per_cpu_ms),
        });
        let state = StoreState {
            wasi: wasi.build_p1(),
            limiter: MemoryLimiter::new(spec.limits.memory_bytes),
            io,
            guard: guard.clone(),
        };
        let mut store = Store::new(&launch.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| ctx.data().guard.on_epoch());
        store
            .set_fuel(fuel_per_call)
            .map_err(|e| StopReason::StartFailed(format!("{e:#}")))?;
        store.set_epoch_deadline(1);
        guard.clock.reset();
        let instantiated = guard.race(module.pre().instantiate_async(&mut store)).await;
        let instance = match instantiated {
            Ok(i) => i,
            Err(err) => {
                return Err(match classify(&store, &sink, &err) {
                    StopReason::Trap(msg) => StopReason::StartFailed(msg),
                    other => other,
                });
            }
        };
        let poll = instance
            .get_typed_func::<(), i32>(&mut store, "agora_poll")
            .map_err(|e| StopReason::StartFailed(format!("agora_poll: {e:#}")))?;
        let health = instance
            .get_typed_func::<(), i32>(&mut store, "agora_health")
            .ok();
        let probe = instance
            .get_typed_func::<i64, i64>(&mut store, "agora_probe")
            .ok();
        let initialize = instance
            .get_typed_func::<(), ()>(&mut store, "_initialize")
            .ok();
        let init = instance
            .get_typed_func::<(), i32>(&mut store, "agora_init")
            .ok();
        let mut running = Self {
            store,
            instance,
            guard,
            poll,
            health,
            probe,
            sink,
            fuel_per_call,
            fuel_per_cpu_ms: launch.fuel_per_cpu_ms,
            fuel_used: 0,
        };
        running.charge();
        if let Some(f) = initialize {
            running.call(&f).await?;
        }
        if let Some(f) = init {
            match running.call(&f).await? {
                0 => {}
                code => return Err(StopReason::Exited(code)),
            }
        }
        Ok(running)
    }

    /// Calls `agora_poll` once; `Ok(code)` is the guest's return value.
    pub(crate) async fn poll(&mut self) -> Result<i32, StopReason> {
        let f = self.poll.clone();
        self.call(&f).await
    }

    /// Calls `agora_health` if exported; `None` when the guest has no health export.
    pub(crate) async fn health(&mut self) -> Option<Result<i32, StopReason>> {
        let f = self.health.clone()?;
        Some(self.call(&f).await)
    }

    /// Calls `agora_probe(nonce)` if exported, with [`PROBE_FUEL`] (charged to the instance like
    /// any call); `None` when the guest has no probe export.
    pub(crate) async fn probe(&mut self, nonce: i64) -> Option<Result<i64, StopReason>> {
        let f = self.probe.clone()?;
        Some(self.call_with(&f, nonce, PROBE_FUEL).await)
    }

    /// Calls the export `name` taking four `i32`s and returning one (fuzzing and tests drive
    /// host imports through such trampolines); `None` if there is no such export.
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) async fn call_i32x4(
        &mut self,
        name: &str,
        args: (i32, i32, i32, i32),
    ) -> Option<Result<i32, StopReason>> {
        let f = self
            .instance
            .get_typed_func::<(i32, i32, i32, i32), i32>(&mut self.store, name)
            .ok()?;
        self.store.set_fuel(self.fuel_per_call).ok()?;
        self.store.set_epoch_deadline(1);
        self.guard.clock.reset();
        let guard = self.guard.clone();
        let result = guard.race(f.call_async(&mut self.store, args)).await;
        self.charge();
        Some(result.map_err(|err| classify(&self.store, &self.sink, &err)))
    }

    /// The guest's linear memory, for tests that seed it.
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn memory_mut(&mut self) -> Option<&mut [u8]> {
        let mem = self.instance.get_memory(&mut self.store, "memory")?;
        Some(mem.data_mut(&mut self.store))
    }

    /// Largest linear memory reached, in bytes.
    pub(crate) fn peak_memory(&self) -> u64 {
        self.store.data().limiter.peak
    }

    /// Bytes this instance wrote to stdout/stderr.
    pub(crate) fn output_bytes(&self) -> u64 {
        self.sink.written()
    }

    /// Runs one guest call with a fresh per-call budget, charges it and classifies a failure.
    async fn call<R: WasmResults + Sync>(&mut self, f: &TypedFunc<(), R>) -> Result<R, StopReason> {
        let fuel = self.fuel_per_call;
        self.call_with(f, (), fuel).await
    }

    /// [`Self::call`] with `args` and a budget of `fuel`.
    async fn call_with<P: WasmParams + Sync, R: WasmResults + Sync>(
        &mut self,
        f: &TypedFunc<P, R>,
        args: P,
        fuel: u64,
    ) -> Result<R, StopReason> {
        self.store
            .set_fuel(fuel)
            .map_err(|e| StopReason::StartFailed(format!("{e:#}")))?;
        self.store.set_epoch_deadline(1);
        self.guard.clock.reset();
        let guard = self.guard.clone();
        let result = guard.race(f.call_async(&mut self.store, args)).await;
        self.charge_from(fuel);
        result.map_err(|err| classify(&self.store, &self.sink, &err))
    }

    /// Charges the last call: the larger of the fuel it consumed (instructions and host calls)
    /// and the fuel its CPU time is worth on this host.
    fn charge(&mut self) {
        self.charge_from(self.fuel_per_call);
    }

    /// [`Self::charge`] for a call given `given` fuel.
    fn charge_from(&mut self, given: u64) {
        let left = self.store.get_fuel().unwrap_or(0);
        let counted = given.saturating_sub(left);
        let timed = fuel_for(self.guard.clock.busy(), self.fuel_per_cpu_ms);
        self.fuel_used = self.fuel_used.saturating_add(counted.max(timed));
    }
}

/// Maps a failed guest call to the reason recorded as evidence.
fn classify(store: &Store<StoreState>, sink: &LogSink, err: &wasmtime::Error) -> StopReason {
    if let Some(i) = err.downcast_ref::<Interrupted>() {
        return match i {
            Interrupted::Requested => StopReason::Requested,
            Interrupted::Lifetime => StopReason::Lifetime,
        };
    }
    if store.data().limiter.exceeded {
        return StopReason::MemoryLimit;
    }
    if sink.exceeded.load(std::sync::atomic::Ordering::Relaxed) {
        return StopReason::OutputLimit;
    }
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return StopReason::Exited(exit.0);
    }
    if let Some(Trap::OutOfFuel) = err.downcast_ref::<Trap>() {
        return StopReason::CpuLimit;
    }
    StopReason::Trap(err.root_cause().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_and_fuel_convert_both_ways_without_overflow() {
        assert_eq!(cpu_time_for(250_000, 250_000), Duration::from_millis(1));
        assert_eq!(fuel_for(Duration::from_millis(4), 250_000), 1_000_000);
        assert_eq!(fuel_for(Duration::MAX, u64::MAX), u64::MAX);
        assert!(cpu_time_for(u64::MAX, 0) > Duration::from_secs(1 << 20));
    }
}
