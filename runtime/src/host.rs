//! The wasmtime engine of a node: pooling allocator, fuel and epoch interruption sized for an
//! edge device, a linker with (async) WASI preview 1 and the `"agora"` imports, the runtime
//! guests run on, and an on-disk cache of compiled artifacts.
//!
//! Cached artifacts are loaded with wasmtime's `unsafe` deserializer, so the cache only accepts
//! files this node wrote: each artifact carries a blake3 keyed MAC over (module CID, engine
//! compatibility hash, artifact bytes) under a node-local secret ([`HostConfig::artifact_key`]),
//! and an artifact is only ever written after its source bytes matched the module's CID.

mod cache;
mod executor;

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig,
};

use crate::state::StoreState;
use crate::{ModuleId, RuntimeError};
use cache::ArtifactCache;
pub use executor::EPOCH_TICK;
use executor::GuestExecutor;

/// Host-wide engine settings; the node builds this from its config file.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Directory for compiled artifacts (created if missing).
    pub cache_dir: PathBuf,
    /// Node-local secret keying the artifact MACs; derive it from the node key, keep it stable.
    pub artifact_key: [u8; 32],
    /// Instances that may exist at once on this host (pool slots).
    pub max_instances: u32,
    /// Hard per-instance memory ceiling in bytes; contracts may only ask for less.
    pub max_memory_bytes: u64,
    /// Maximum guest stack in bytes.
    pub max_wasm_stack: usize,
    /// Threads of the runtime all guests share. Guests yield every [`EPOCH_TICK`] and a
    /// sleeping guest holds no thread, so this bounds the cores guests can use, not how many
    /// can run.
    pub guest_threads: usize,
    /// Fuel this host's CPU burns per millisecond of guest code (measure it with
    /// `cargo bench -p agora-runtime --bench startup`). A guest call is charged the larger of
    /// its fuel and its CPU time at this rate, so host work that wasm fuel does not count
    /// (WASI calls such as `random_get`) is still paid for.
    pub fuel_per_cpu_ms: u64,
}

impl HostConfig {
    /// Edge-device defaults: 16 instances of at most 128 MiB, 512 KiB guest stack, 2 guest
    /// threads, 250 M fuel per CPU second (a slow edge core; faster hosts should raise it).
    pub fn new(cache_dir: impl Into<PathBuf>, artifact_key: [u8; 32]) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            artifact_key,
            max_instances: 16,
            max_memory_bytes: 128 << 20,
            max_wasm_stack: 512 << 10,
            guest_threads: 2,
            fuel_per_cpu_ms: 250_000,
        }
    }
}

impl HostConfig {
    /// The `fuel_per_second` that buys `cpu_millis` millicores of this host's CPU (a contract's
    /// `cpu_millis` as a [`crate::ServiceLimits`] ceiling): `cpu_millis` CPU-milliseconds per
    /// second at [`Self::fuel_per_cpu_ms`].
    pub fn fuel_per_second_for(&self, cpu_millis: u64) -> u64 {
        cpu_millis.saturating_mul(self.fuel_per_cpu_ms)
    }
}

/// A module verified against its id, compiled and pre-linked: instantiating it is one step.
#[derive(Clone)]
pub struct CompiledModule {
    id: ModuleId,
    pre: InstancePre<StoreState>,
    from_cache: bool,
}

impl CompiledModule {
    /// The module's content id.
    pub fn id(&self) -> ModuleId {
        self.id
    }

    /// Whether it was loaded from the artifact cache instead of compiled.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    pub(crate) fn pre(&self) -> &InstancePre<StoreState> {
        &self.pre
    }
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule")
            .field("id", &self.id)
            .field("from_cache", &self.from_cache)
            .finish()
    }
}

/// The node's wasm engine; cheap to share behind an `Arc`. Dropping it stops its epoch ticker
/// and its guest runtime (stop services first: their tasks are dropped with the runtime).
pub struct Host {
    engine: Engine,
    linker: Linker<StoreState>,
    cache: ArtifactCache,
    config: HostConfig,
    executor: GuestExecutor,
    /// Loads of one module compile it once: a load takes its module's stripe, then finds the
    /// artifact the first one cached. Before, a node that was provider of a contract and
    /// arbitrator of six others compiled the same image seven times at once on a 2-core
    /// machine (3.5 min before its own replica was staged; the `fleet_variants` flake).
    compiling: [std::sync::Mutex<()>; COMPILE_STRIPES],
    /// Modules compiled from bytes since start (a cache hit is not counted).
    compiles: std::sync::atomic::AtomicU64,
}

/// Lock stripes serializing loads per module (modules in one stripe wait for each other too:
/// compiles are CPU-bound, so little is lost on an edge device).
const COMPILE_STRIPES: usize = 8;

/// A `Hasher` over blake3, so the engine compatibility hash is stable across processes.
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0.finalize().as_bytes()[..8]);
        u64::from_le_bytes(first)
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl Host {
    /// Builds the engine and linker and opens the artifact cache.
    pub fn new(config: HostConfig) -> Result<Arc<Self>, RuntimeError> {
        let mut pool = PoolingAllocationConfig::default();
        let slots = config.max_instances.max(1);
        let max_memory = usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX);
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots.saturating_mul(4))
            .total_stacks(slots)
            .total_component_instances(0)
            .max_memories_per_module(1)
            .max_tables_per_module(4)
            .max_memory_size(max_memory);
        if config.fuel_per_cpu_ms == 0 {
            return Err(RuntimeError::Engine(
                "fuel_per_cpu_ms is 0; set it to the fuel this host runs per millisecond".into(),
            ));
        }
        let mut wasm = Config::new();
        // Host functions run on the guest's fiber stack above its wasm stack: keep 1 MiB.
        let async_stack = config.max_wasm_stack.saturating_add(1 << 20).max(2 << 20);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .consume_fuel(true)
            .epoch_interruption(true)
            .async_stack_size(async_stack)
            .max_wasm_stack(config.max_wasm_stack)
            .parallel_compilation(true);
        let engine = Engine::new(&wasm).map_err(|e| RuntimeError::Engine(e.to_string()))?;

        let mut linker = Linker::new(&engine);
        // The async WASI functions: a guest's sleep (`poll_oneoff`) is a tokio timer that a
        // stop cancels, never a blocked thread.
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut StoreState| &mut s.wasi)
            .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        crate::abi::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(e.to_string()))?;

        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());
        let cache = ArtifactCache::open(config.cache_dir.clone(), config.artifact_key, compat)?;
        let executor = GuestExecutor::start(&engine, config.guest_threads)
            .map_err(|e| RuntimeError::Engine(format!("starting the guest threads: {e}")))?;
        Ok(Arc::new(Self {
            engine,
            linker,
            cache,
            config,
            executor,
            compiling: Default::default(),
            compiles: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// The host configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Verifies `bytes` against `id`, then loads the cached artifact or compiles (and caches) it.
    pub fn load(&self, id: &ModuleId, bytes: &[u8]) -> Result<CompiledModule, RuntimeError> {
        id.verify(bytes)?;
        let stripe =
            usize::from(id.cid().hash().digest().last().copied().unwrap_or(0)) % COMPILE_STRIPES;
        // A poisoned stripe only means another load panicked; the cache check below is still
        // sound.
        let _one_at_a_time = self.compiling[stripe]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(module) = self.load_cached(id)? {
            return Ok(module);
        }
        let module = Module::new(&self.engine, bytes).map_err(|e| RuntimeError::Compile {
            module: id.to_string(),
            reason: format!("{e:#}"),
        })?;
        self.compiles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Checked before it is kept: a module refused here (no `agora_poll`, say) left its
        // artifact on disk for good (THREATS G3).
        let prepared = self.prepare(*id, module.clone(), false)?;
        if let Err(err) = self.cache.store(id, &module) {
            tracing::warn!(module = %id, %err, "artifact not cached; next start recompiles");
        }
        Ok(prepared)
    }

    /// Modules this host compiled from bytes since it started (cache hits not counted).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Loads a module this node compiled earlier, without its bytes (the fastest activation
    /// path); `None` when no valid artifact is cached.
    pub fn load_cached(&self, id: &ModuleId) -> Result<Option<CompiledModule>, RuntimeError> {
        match self.cache.load(&self.engine, id)? {
            Some(module) => self.prepare(*id, module, true).map(Some),
            None => Ok(None),
        }
    }

    fn prepare(
        &self,
        id: ModuleId,
        module: Module,
        from_cache: bool,
    ) -> Result<CompiledModule, RuntimeError> {
        let missing = |export| RuntimeError::MissingExport {
            module: id.to_string(),
            export,
        };
        if module
            .get_export("memory")
            .and_then(|e| e.memory().cloned())
            .is_none()
        {
            return Err(missing("memory"));
        }
        match module
            .get_export("agora_poll")
            .and_then(|e| e.func().cloned())
        {
            Some(f) if f.params().next().is_none() && f.results().len() == 1 => {}
            _ => return Err(missing("agora_poll")),
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| RuntimeError::Compile {
                module: id.to_string(),
                reason: format!("imports do not match the agora/WASI host: {e:#}"),
            })?;
        Ok(CompiledModule {
            id,
            pre,
            from_cache,
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The runtime guest tasks run on.
    pub(crate) fn guests(&self) -> &tokio::runtime::Handle {
        self.executor.handle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// THREATS G3: a module refused by the checks after compiling leaves no artifact behind.
    #[test]
    fn a_refused_module_leaves_no_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(HostConfig::new(dir.path(), [7; 32])).unwrap();
        let wat = r#"(module (memory (export "memory") 1))"#;
        let id = ModuleId::for_bytes(wat.as_bytes());
        let err = host.load(&id, wat.as_bytes()).err().unwrap();
        assert!(matches!(err, RuntimeError::MissingExport { .. }), "{err}");
        let artifacts = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "cwasm")
            })
            .count();
        assert_eq!(artifacts, 0);
    }

    #[test]
    fn millicores_convert_to_fuel_at_the_host_rate() {
        let mut c = HostConfig::new("/nonexistent", [0; 32]);
        c.fuel_per_cpu_ms = 1_000_000;
        assert_eq!(c.fuel_per_second_for(1000), 1_000_000_000, "one core");
        assert_eq!(c.fuel_per_second_for(100), 100_000_000);
        assert_eq!(c.fuel_per_second_for(u64::MAX), u64::MAX);
    }
}
