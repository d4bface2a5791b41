//! One live instance of a service: its store, exported entry points and fuel accounting.

use std::sync::Arc;

use wasmtime::{Store, Trap, TypedFunc};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::WasiCtxBuilder;

use crate::StopReason;
use crate::host::{CompiledModule, Host};
use crate::manager::ServiceSpec;
use crate::state::{LogSink, MemoryLimiter, ServiceIo, StoreState};

/// A running instance; dropped (and its pool slot freed) when the service stops.
pub(crate) struct Running {
    store: Store<StoreState>,
    poll: TypedFunc<(), i32>,
    health: Option<TypedFunc<(), i32>>,
    sink: LogSink,
    fuel_per_call: u64,
    /// Fuel consumed by this instance so far.
    pub fuel_used: u64,
}

impl Running {
    /// Instantiates `module` with nothing granted beyond `spec`'s env and args, then runs
    /// `_initialize` and `agora_init` if exported.
    pub(crate) fn start(
        host: &Host,
        module: &CompiledModule,
        spec: &ServiceSpec,
        io: Arc<ServiceIo>,
    ) -> Result<Self, StopReason> {
        let sink = LogSink::new(io.log.clone(), spec.limits.max_output_bytes);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(sink.clone()).stderr(sink.clone());
        wasi.envs(&spec.env).args(&spec.args);
        let state = StoreState {
            wasi: wasi.build_p1(),
            limiter: MemoryLimiter::new(spec.limits.memory_bytes),
            io,
        };
        let mut store = Store::new(host.engine(), state);
        store.limiter(|s| &mut s.limiter);
        let fuel_per_call = spec.limits.fuel_per_second.max(1);
        store
            .set_fuel(fuel_per_call)
            .map_err(|e| StopReason::StartFailed(format!("{e:#}")))?;
        let instance = match module.pre().instantiate(&mut store) {
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
        let initialize = instance
            .get_typed_func::<(), ()>(&mut store, "_initialize")
            .ok();
        let init = instance
            .get_typed_func::<(), i32>(&mut store, "agora_init")
            .ok();
        let mut running = Self {
            store,
            poll,
            health,
            sink,
            fuel_per_call,
            fuel_used: 0,
        };
        if let Some(f) = initialize {
            running.call(|store| f.call(store, ()).map(|()| 0))?;
        }
        if let Some(f) = init {
            match running.call(|store| f.call(store, ()))? {
                0 => {}
                code => return Err(StopReason::Exited(code)),
            }
        }
        Ok(running)
    }

    /// Calls `agora_poll` once; `Ok(code)` is the guest's return value.
    pub(crate) fn poll(&mut self) -> Result<i32, StopReason> {
        let f = self.poll.clone();
        self.call(|store| f.call(store, ()))
    }

    /// Calls `agora_health` if exported; `None` when the guest has no health export.
    pub(crate) fn health(&mut self) -> Option<Result<i32, StopReason>> {
        let f = self.health.clone()?;
        Some(self.call(|store| f.call(store, ())))
    }

    /// Largest linear memory reached, in bytes.
    pub(crate) fn peak_memory(&self) -> u64 {
        self.store.data().limiter.peak
    }

    /// Bytes this instance wrote to stdout/stderr.
    pub(crate) fn output_bytes(&self) -> u64 {
        self.sink.written()
    }

    /// Runs one guest call with a fresh per-call fuel budget and classifies any failure.
    fn call(
        &mut self,
        f: impl FnOnce(&mut Store<StoreState>) -> wasmtime::Result<i32>,
    ) -> Result<i32, StopReason> {
        self.store
            .set_fuel(self.fuel_per_call)
            .map_err(|e| StopReason::StartFailed(format!("{e:#}")))?;
        let result = f(&mut self.store);
        let left = self.store.get_fuel().unwrap_or(0);
        self.fuel_used = self
            .fuel_used
            .saturating_add(self.fuel_per_call.saturating_sub(left));
        result.map_err(|err| classify(&self.store, &self.sink, &err))
    }
}

/// Maps a failed guest call to the reason recorded as evidence.
fn classify(store: &Store<StoreState>, sink: &LogSink, err: &wasmtime::Error) -> StopReason {
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
