//! Test helpers: a small host, guest modules in WAT (well-behaved and hostile), and a builder
//! for the `examples/lora-gateway` service.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::{CompiledModule, Host, HostConfig, ModuleId};

/// A host with 8 instance slots of 64 MiB caching artifacts in `dir`.
pub fn host(dir: &Path) -> Arc<Host> {
    let mut config = HostConfig::new(dir.join("artifacts"), [42; 32]);
    config.max_instances = 8;
    config.max_memory_bytes = 64 << 20;
    match Host::new(config) {
        Ok(h) => h,
        Err(e) => panic!("test host: {e}"),
    }
}

/// Compiles WAT (or wasm) `source` on `host` under its blake3 CID.
pub fn compile(host: &Host, source: &str) -> CompiledModule {
    let id = ModuleId::for_bytes(source.as_bytes());
    match host.load(&id, source.as_bytes()) {
        Ok(m) => m,
        Err(e) => panic!("test module: {e}"),
    }
}

/// Echo service: publishes every reading back; reports healthy.
pub const ECHO: &str = r#"(module
  (import "agora" "readings" (func $readings (param i32 i32) (result i32)))
  (import "agora" "publish" (func $publish (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "agora_poll") (result i32) (local $n i32)
    (block $done (loop $next
      (local.set $n (call $readings (i32.const 1024) (i32.const 1024)))
      (br_if $done (i32.le_s (local.get $n) (i32.const 0)))
      (drop (call $publish (i32.const 1024) (local.get $n)))
      (br $next)))
    (i32.const 0))
  (func (export "agora_health") (result i32) (i32.const 0)))"#;

/// Key-value service: counts polls in the key "n" and publishes the 8-byte count.
pub const KV_COUNTER: &str = r#"(module
  (import "agora" "kv_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "agora" "kv_put" (func $put (param i32 i32 i32 i32) (result i32)))
  (import "agora" "publish" (func $publish (param i32 i32) (result i32)))
  (import "agora" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "n")
  (data (i32.const 32) "counted")
  (func (export "agora_poll") (result i32)
    (i64.store (i32.const 16) (i64.const 0))
    (drop (call $get (i32.const 0) (i32.const 1) (i32.const 16) (i32.const 8)))
    (i64.store (i32.const 16) (i64.add (i64.load (i32.const 16)) (i64.const 1)))
    (drop (call $put (i32.const 0) (i32.const 1) (i32.const 16) (i32.const 8)))
    (call $log (i32.const 32) (i32.const 7))
    (drop (call $publish (i32.const 16) (i32.const 8)))
    (i32.const 0)))"#;

/// Counts its instances in the key `boots` (`agora_init`) and reports itself unhealthy
/// (`agora_health` returns 1) while it is in its first instance: a guest that a restart cures.
pub const SICK_UNTIL_SECOND_BOOT: &str = r#"(module
  (import "agora" "kv_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "agora" "kv_put" (func $put (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "boots")
  (func (export "agora_init") (result i32)
    (i64.store (i32.const 16) (i64.const 0))
    (drop (call $get (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8)))
    (i64.store (i32.const 16) (i64.add (i64.load (i32.const 16)) (i64.const 1)))
    (drop (call $put (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8)))
    (i32.const 0))
  (func (export "agora_poll") (result i32) (i32.const 0))
  (func (export "agora_health") (result i32)
    (i64.lt_u (i64.load (i32.const 16)) (i64.const 2))))"#;

/// Always reports itself unhealthy (`agora_health` returns 1); polls fine.
pub const ALWAYS_SICK: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "agora_poll") (result i32) (i32.const 0))
  (func (export "agora_health") (result i32) (i32.const 1)))"#;

/// Readings counter: adds 1 to the 8-byte little-endian key "count" for every reading it takes
/// (read from and written to its key-value store each time, so its count is its state), then
/// logs `count=N` once per poll that took readings.
pub const READINGS_COUNTER: &str = r#"(module
  (import "agora" "readings" (func $readings (param i32 i32) (result i32)))
  (import "agora" "kv_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "agora" "kv_put" (func $put (param i32 i32 i32 i32) (result i32)))
  (import "agora" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "count")
  (data (i32.const 64) "count=")
  (func (export "agora_poll") (result i32)
    (local $n i32) (local $got i32) (local $p i32) (local $v i64)
    (block $done (loop $next
      (local.set $n (call $readings (i32.const 1024) (i32.const 1024)))
      (br_if $done (i32.le_s (local.get $n) (i32.const 0)))
      (i64.store (i32.const 16) (i64.const 0))
      (drop (call $get (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8)))
      (i64.store (i32.const 16) (i64.add (i64.load (i32.const 16)) (i64.const 1)))
      (drop (call $put (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8)))
      (local.set $got (i32.const 1))
      (br $next)))
    (if (local.get $got) (then
      (local.set $v (i64.load (i32.const 16)))
      (local.set $p (i32.const 120))
      (loop $digit
        (local.set $p (i32.sub (local.get $p) (i32.const 1)))
        (i32.store8 (local.get $p)
          (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
        (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
        (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
      (local.set $p (i32.sub (local.get $p) (i32.const 6)))
      (memory.copy (local.get $p) (i32.const 64) (i32.const 6))
      (call $log (local.get $p) (i32.sub (i32.const 120) (local.get $p)))))
    (i32.const 0)))"#;

/// The last `count=N` a [`READINGS_COUNTER`] logged.
pub fn last_count(logs: &str) -> Option<u64> {
    logs.lines()
        .rev()
        .find_map(|l| l.strip_prefix("count=")?.trim().parse().ok())
}

/// Spins forever inside one call.
pub const INFINITE_LOOP: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "agora_poll") (result i32) (loop $l (br $l)) (i32.const 0)))"#;

/// Grows memory by 1 MiB until stopped.
pub const MEMORY_BOMB: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "agora_poll") (result i32)
    (loop $l (drop (memory.grow (i32.const 16))) (br $l)) (i32.const 0)))"#;

/// Executes `unreachable`.
pub const TRAP: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "agora_poll") (result i32) unreachable))"#;

/// Writes 64-byte lines to stdout forever.
pub const STDOUT_FLOOD: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "flood flood flood flood flood flood flood flood flood flood flood\n")
  (func (export "agora_poll") (result i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 64))
    (loop $l (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l))
    (i32.const 0)))"#;

/// Tries `path_open` on fd 3 (the first preopen, if any); exits with the WASI errno, or 999 if
/// the open succeeded.
pub const OPEN_FILE: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "etc/passwd")
  (func (export "agora_poll") (result i32) (local $r i32)
    (local.set $r (call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 10)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 128)))
    (if (result i32) (i32.eqz (local.get $r)) (then (i32.const 999)) (else (local.get $r)))))"#;

/// Calls `publish` with a range past the end of its memory.
pub const BAD_POINTER: &str = r#"(module
  (import "agora" "publish" (func $publish (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "agora_poll") (result i32)
    (call $publish (i32.const 65500) (i32.const 100))))"#;

/// Prefix of the guests below that log `ready` before misbehaving, so a test can wait for it.
macro_rules! logs_ready_then {
    ($imports:literal, $body:literal) => {
        concat!(
            r#"(module
  (import "agora" "log" (func $log (param i32 i32)))
"#,
            $imports,
            r#"
  (memory (export "memory") 1)
  (data (i32.const 0) "ready")
  (table $t 1 funcref)
  (func (export "agora_poll") (result i32)
    (call $log (i32.const 0) (i32.const 5))
"#,
            $body,
            r#"
    (i32.const 0)))"#
        )
    };
}

/// Logs `ready`, then spins in a tight loop inside one call.
pub const BUSY_FOREVER: &str = logs_ready_then!("", "(loop $l (br $l))");

/// Logs `ready`, then calls the host (`kv_get` of a missing key, `now_ms`) in a loop forever.
pub const HOST_CALLS_FOREVER: &str = logs_ready_then!(
    r#"(import "agora" "kv_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "agora" "now_ms" (func $now (result i64)))"#,
    r#"(loop $l
      (drop (call $get (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 64)))
      (drop (call $now))
      (br $l))"#
);

/// Logs `ready`, then sleeps "forever" in WASI `poll_oneoff` (one relative monotonic clock
/// subscription with a timeout of `u64::MAX` ns), over and over.
pub const SLEEP_FOREVER: &str = logs_ready_then!(
    r#"(import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))"#,
    r#"(i32.store (i32.const 256) (i32.const 1))
    (i64.store (i32.const 264) (i64.const -1))
    (loop $l
      (drop (call $poll_oneoff (i32.const 240) (i32.const 512) (i32.const 1) (i32.const 600)))
      (br $l))"#
);

/// Logs `ready`, asks to grow its table by a million entries, then by ten thousand in a loop
/// forever (wasmtime charges table growth a fuel per element, so this loop lasts).
pub const TABLE_GROW_FOREVER: &str = logs_ready_then!(
    "",
    r#"(drop (table.grow $t (ref.null func) (i32.const 1000000)))
    (loop $l (drop (table.grow $t (ref.null func) (i32.const 10000))) (br $l))"#
);

/// Logs `ready`, then fills its 64 KiB memory with WASI `random_get` in a loop forever: host
/// work that costs the guest only a few fuel per call.
pub const RANDOM_FOREVER: &str = logs_ready_then!(
    r#"(import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))"#,
    r#"(loop $l (drop (call $random (i32.const 0) (i32.const 65536))) (br $l))"#
);

/// Logs `ready`, then asks for 4 GiB of memory in one `memory.grow`.
pub const MEMORY_GROW_HUGE: &str = logs_ready_then!("", "(drop (memory.grow (i32.const 65535)))");

/// Logs `ready`, then `kv_put`s the key `ready` in a loop forever.
pub const KV_PUT_FOREVER: &str = logs_ready_then!(
    r#"(import "agora" "kv_put" (func $put (param i32 i32 i32 i32) (result i32)))"#,
    r#"(loop $l (drop (call $put (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 8))) (br $l))"#
);

/// Grows memory by `extra_pages` 64 KiB pages (trapping if refused), logs `ready`, then fills
/// all of it with `memory.fill` in a loop forever: each fill is one instruction that the epoch
/// check cannot split (wasmtime charges it a fuel per byte).
pub fn memory_fill_forever(extra_pages: u32) -> String {
    let bytes = (u64::from(extra_pages) + 1) * 65536;
    format!(
        r#"(module
  (import "agora" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "ready")
  (func (export "agora_poll") (result i32)
    (if (i32.lt_s (memory.grow (i32.const {extra_pages})) (i32.const 0)) (then unreachable))
    (call $log (i32.const 0) (i32.const 5))
    (loop $l (memory.fill (i32.const 0) (i32.const 171) (i32.const {bytes})) (br $l))
    (i32.const 0)))"#
    )
}

/// Deletes the key `00 00 00 05`, scans from the empty key into a 64 KiB buffer, publishes
/// 4096 bytes `[delete result: i32 LE][scan result: i32 LE][page...]` and exits with 1.
pub const KV_DELETE_AND_SCAN: &str = r#"(module
  (import "agora" "kv_scan" (func $scan (param i32 i32 i32 i32) (result i32)))
  (import "agora" "kv_delete" (func $del (param i32 i32) (result i32)))
  (import "agora" "publish" (func $publish (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "\00\00\00\05")
  (func (export "agora_poll") (result i32)
    (i32.store (i32.const 16) (call $del (i32.const 0) (i32.const 4)))
    (i32.store (i32.const 20) (call $scan (i32.const 0) (i32.const 0) (i32.const 24) (i32.const 65536)))
    (drop (call $publish (i32.const 16) (i32.const 4096)))
    (i32.const 1)))"#;

/// Decodes a `kv_scan` page of `count` entries (see the guest ABI); `None` if malformed.
pub fn decode_scan_page(mut page: &[u8], count: usize) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for _ in 0..count {
        let klen = u32::from_le_bytes(page.get(..4)?.try_into().ok()?) as usize;
        let vlen = u32::from_le_bytes(page.get(4..8)?.try_into().ok()?) as usize;
        let key = page.get(8..8 + klen)?.to_vec();
        let value = page.get(8 + klen..8 + klen + vlen)?.to_vec();
        page = &page[8 + klen + vlen..];
        out.push((key, value));
    }
    Some(out)
}

/// Builds `examples/lora-gateway` for wasm32-wasip1 and returns the module bytes.
pub fn lora_gateway_wasm() -> Result<Vec<u8>, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lora-gateway/Cargo.toml");
    let target_dir: PathBuf = std::env::temp_dir().join("agora-lora-gateway-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .output()
        .map_err(|e| format!("running cargo to build lora-gateway: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("wasm32-wasip1") && stderr.contains("target may not be installed") {
            return Err(
                "the wasm32-wasip1 target is missing: run rustup target add wasm32-wasip1".into(),
            );
        }
        return Err(format!("building lora-gateway failed:\n{stderr}"));
    }
    let wasm = target_dir.join("wasm32-wasip1/release/lora_gateway.wasm");
    std::fs::read(&wasm).map_err(|e| format!("reading {}: {e}", wasm.display()))
}

/// Encodes a lora-gateway reading frame (see `examples/lora-gateway/src/reading.rs`).
pub fn lora_frame(device: u32, seq: u32, temp_centi: i16, hum_centi: u16) -> Vec<u8> {
    let mut b = vec![0xA7];
    b.extend(device.to_le_bytes());
    b.extend(seq.to_le_bytes());
    b.extend(temp_centi.to_le_bytes());
    b.extend(hum_centi.to_le_bytes());
    b.extend(3300u16.to_le_bytes());
    b.push((-90i8) as u8);
    b
}

/// Host I/O for a service instance driven without a manager (benches, fuzzing).
pub(crate) fn bare_io(kv: Arc<dyn crate::KvStore>) -> Arc<crate::state::ServiceIo> {
    use std::sync::atomic::AtomicU64;

    use crate::io::{LogBuffer, ReadingQueue};
    let (outbox, _rx) = tokio::sync::mpsc::channel(1);
    Arc::new(crate::state::ServiceIo {
        service: "bench".into(),
        readings: ReadingQueue::new(4),
        log: LogBuffer::new(1024),
        kv,
        outbox,
        readings_processed: AtomicU64::new(0),
        readings_dropped: AtomicU64::new(0),
        published: AtomicU64::new(0),
        calls: tokio::sync::Mutex::new(()),
    })
}

/// Launch parameters for an instance of `host` with no stop request and no lifetime.
pub(crate) fn bare_launch(host: &Host) -> crate::manager::instance::Launch {
    crate::manager::instance::Launch {
        engine: host.engine().clone(),
        fuel_per_cpu_ms: host.config().fuel_per_cpu_ms,
        stop: Arc::new(crate::guard::StopSignal::default()),
        deadline: None,
    }
}

/// Instantiates `module` as a fresh service instance and makes its first `agora_poll` call,
/// the activation path of a staged service without the manager's task (used by benches).
/// Blocks on the host's guest runtime: call it from a thread outside any tokio runtime.
pub fn activate_once(host: &Host, module: &CompiledModule) -> Result<i32, crate::StopReason> {
    let io = bare_io(Arc::new(crate::MemoryKv::new(1)));
    let spec = crate::ServiceSpec::new("bench", module.clone(), crate::ServiceLimits::default());
    host.guests().block_on(async {
        let mut running =
            crate::manager::instance::Running::start(bare_launch(host), module, &spec, io).await?;
        running.poll().await
    })
}

/// CPU time this thread has used so far (wall time where the OS has no per-thread clock); the
/// clock the runtime charges guest calls by.
pub fn thread_cpu_time() -> std::time::Duration {
    std::time::Duration::from_nanos(crate::guard::thread_cpu_nanos(std::time::Instant::now()))
}
