//! The crate's error type: every variant names the module or service involved and what to do.

use std::path::PathBuf;

/// Errors from loading, compiling, caching and managing services.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The module id string could not be parsed as a CID.
    #[error("module id `{id}` is not a valid CID ({reason}); pass the CID the contract names")]
    BadModuleId {
        /// The rejected id text.
        id: String,
        /// Parser message.
        reason: String,
    },
    /// The CID uses a hash this runtime cannot verify.
    #[error(
        "module {module} uses multihash code {code:#x}; only sha2-256 and blake3 CIDs can be verified"
    )]
    UnsupportedHash {
        /// The module CID.
        module: String,
        /// The multihash code found.
        code: u64,
    },
    /// The bytes do not hash to the expected module id.
    #[error("module bytes do not match {module}; refetch the module from storage")]
    ModuleHashMismatch {
        /// The expected module CID.
        module: String,
    },
    /// Compilation failed (invalid wasm or unsupported feature).
    #[error("compiling module {module} failed: {reason}; check it is a wasm32-wasip1 module")]
    Compile {
        /// The module CID.
        module: String,
        /// Compiler message.
        reason: String,
    },
    /// The artifact cache directory could not be used.
    #[error("artifact cache {path}: {source}; check the cache directory exists and is writable")]
    CacheIo {
        /// The file or directory involved.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The wasmtime engine rejected the host configuration.
    #[error("wasmtime engine rejected the host config: {0}; lower pool sizes in HostConfig")]
    Engine(String),
    /// Creating the service's instance failed.
    #[error("instantiating service {service} failed: {reason}")]
    Instantiate {
        /// The service id.
        service: String,
        /// Failure message.
        reason: String,
    },
    /// The module does not follow the guest ABI.
    #[error(
        "module {module} does not export `{export}` with the right signature; see the guest ABI in agora-runtime docs"
    )]
    MissingExport {
        /// The module CID.
        module: String,
        /// The missing export.
        export: &'static str,
    },
    /// No service with that id is known.
    #[error("service {0} is unknown; list services to see the ids")]
    UnknownService(String),
    /// A service with that id is already staged.
    #[error("service {0} is already staged; stop and remove it first")]
    DuplicateService(String),
    /// The service is not in a state that allows the operation.
    #[error("service {service} is {state}; {hint}")]
    WrongState {
        /// The service id.
        service: String,
        /// Its current state.
        state: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// Too many instances of one module are active.
    #[error(
        "module {module} already has {max} active instances (contract max_instances); stop one first"
    )]
    InstanceLimit {
        /// The module CID.
        module: String,
        /// The contract's limit.
        max: u32,
    },
    /// A reading is empty or larger than `io::MAX_READING_BYTES`.
    #[error("reading for service {service} has {len} bytes; readings must be 1..=65536 bytes")]
    BadReading {
        /// The service id.
        service: String,
        /// The rejected length.
        len: usize,
    },
    /// An `agora_probe` call was not answered: the service is busy with probes, stopped
    /// meanwhile, or the call failed (a failing probe call stops the service, like
    /// `agora_health`).
    #[error("probing service {service} failed: {reason}")]
    Probe {
        /// The service id.
        service: String,
        /// Why.
        reason: String,
    },
    /// The service's key-value store could not be copied or replaced.
    #[error("key-value state of service {service}: {reason}")]
    KvState {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// The reading queue of a service is full.
    #[error("service {0} has a full reading queue; the oldest reading was dropped")]
    ReadingsFull(String),
    /// The service's limits are unusable (zero or absurd values).
    #[error("service {service}: {source}")]
    BadLimits {
        /// The service id.
        service: String,
        /// Which limit and why.
        source: crate::LimitsError,
    },
    /// The service asks for more memory than this host allows any instance.
    #[error(
        "service {service} asks for {asked} bytes of memory but this host allows {max}; clamp its limits to the host's max_memory_bytes"
    )]
    OverHostMemory {
        /// The service id.
        service: String,
        /// The requested `memory_bytes`.
        asked: u64,
        /// `HostConfig::max_memory_bytes`.
        max: u64,
    },
}
