//! Fuzz entry points (behind the `test-utils` feature): every decoder in this crate that reads
//! peer or guest bytes, each as a `pub fn(&[u8])` that must never panic, hang or allocate
//! beyond its bounds. A cargo-fuzz target is one line: `fuzz_target!(|d: &[u8]| f(d));`.
//!
//! - [`module_id_text`]: a module id as text (image records, API requests).
//! - [`module_id_bytes`]: a module id as a binary CID.
//! - [`host_calls`]: a guest driving the `"agora"` imports with arbitrary pointers, lengths and
//!   memory contents (the ABI messages a guest passes through host calls).

use std::sync::{Arc, OnceLock};

use crate::{CompiledModule, Host, HostConfig, MemoryKv, ModuleId, ServiceLimits, ServiceSpec};

/// Parses `data` (if UTF-8) as a textual module id; a parsed id must round-trip.
pub fn module_id_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(id) = text.parse::<ModuleId>()
    {
        assert_eq!(id.to_string().parse::<ModuleId>().ok(), Some(id));
    }
}

/// Parses `data` as a binary module id; a parsed id must round-trip.
pub fn module_id_bytes(data: &[u8]) {
    if let Ok(id) = ModuleId::from_bytes(data) {
        assert_eq!(ModuleId::from_bytes(&id.cid().to_bytes()).ok(), Some(id));
    }
}

/// A guest whose exports `op0`..`op6` each pass their four `i32` arguments to one import.
const TRAMPOLINE: &str = r#"(module
  (import "agora" "readings" (func $readings (param i32 i32) (result i32)))
  (import "agora" "publish" (func $publish (param i32 i32) (result i32)))
  (import "agora" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "agora" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
  (import "agora" "kv_delete" (func $kv_delete (param i32 i32) (result i32)))
  (import "agora" "kv_scan" (func $kv_scan (param i32 i32 i32 i32) (result i32)))
  (import "agora" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "agora_poll") (result i32) (i32.const 0))
  (func (export "op0") (param i32 i32 i32 i32) (result i32)
    (call $readings (local.get 0) (local.get 1)))
  (func (export "op1") (param i32 i32 i32 i32) (result i32)
    (call $publish (local.get 0) (local.get 1)))
  (func (export "op2") (param i32 i32 i32 i32) (result i32)
    (call $kv_get (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "op3") (param i32 i32 i32 i32) (result i32)
    (call $kv_put (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "op4") (param i32 i32 i32 i32) (result i32)
    (call $kv_delete (local.get 0) (local.get 1)))
  (func (export "op5") (param i32 i32 i32 i32) (result i32)
    (call $kv_scan (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "op6") (param i32 i32 i32 i32) (result i32)
    (call $log (local.get 0) (local.get 1)) (i32.const 0)))"#;

/// Most host calls one input makes.
const MAX_CALLS: usize = 64;
/// Bytes of one call record: op, then four `i32` LE.
const RECORD: usize = 17;

fn fuzz_host() -> Option<&'static (Arc<Host>, CompiledModule)> {
    static HOST: OnceLock<Option<(Arc<Host>, CompiledModule)>> = OnceLock::new();
    HOST.get_or_init(|| {
        // One directory for every fuzzing process: it only ever caches the trampoline's
        // compiled module (the same id each run; the cache writes through renamed temporary
        // files), so runs reuse it instead of leaving a directory per process in /tmp.
        let dir = std::env::temp_dir().join("agora-runtime-fuzz");
        let mut config = HostConfig::new(dir, [9; 32]);
        config.max_instances = 4;
        config.max_memory_bytes = 1 << 20;
        config.guest_threads = 1;
        let host = Host::new(config).ok()?;
        let id = ModuleId::for_bytes(TRAMPOLINE.as_bytes());
        let module = host.load(&id, TRAMPOLINE.as_bytes()).ok()?;
        Some((host, module))
    })
    .as_ref()
}

/// Interprets `data` as `[memory_len: u16 LE][memory bytes][reading_len: u8][reading bytes]`
/// followed by call records (`op: u8`, four `i32` LE; at most 64), seeds a fresh instance's
/// memory and reading queue with them and makes the calls. Traps are fine (each ends the
/// input); a panic, a hang or a host allocation beyond the ABI bounds is a bug.
pub fn host_calls(data: &[u8]) {
    let Some((host, module)) = fuzz_host() else {
        return;
    };
    let (memory, rest) = split_prefixed(data, 2);
    let (reading, mut calls) = split_prefixed(rest, 1);
    let kv: Arc<dyn crate::KvStore> = Arc::new(MemoryKv::new(16));
    let io = crate::test_utils::bare_io(kv);
    if !reading.is_empty() {
        io.readings.push(reading.to_vec());
    }
    let limits = ServiceLimits {
        memory_bytes: 1 << 20,
        fuel_per_second: 50_000_000,
        max_output_bytes: 1 << 16,
        ..ServiceLimits::default()
    };
    let spec = ServiceSpec::new("fuzz", module.clone(), limits);
    host.guests().block_on(async {
        let launch = crate::test_utils::bare_launch(host);
        let Ok(mut inst) =
            crate::manager::instance::Running::start(launch, module, &spec, io).await
        else {
            return;
        };
        if let Some(mem) = inst.memory_mut() {
            let n = memory.len().min(mem.len());
            mem[..n].copy_from_slice(&memory[..n]);
        }
        for _ in 0..MAX_CALLS {
            let Some(record) = calls.get(..RECORD) else {
                break;
            };
            calls = &calls[RECORD..];
            let arg = |i: usize| {
                let at = 1 + 4 * i;
                i32::from_le_bytes([record[at], record[at + 1], record[at + 2], record[at + 3]])
            };
            let name =
                ["op0", "op1", "op2", "op3", "op4", "op5", "op6"][usize::from(record[0] % 7)];
            match inst
                .call_i32x4(name, (arg(0), arg(1), arg(2), arg(3)))
                .await
            {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    });
}

/// Splits off a length-prefixed part (`prefix` bytes of little-endian length), clamped to
/// what is there.
fn split_prefixed(data: &[u8], prefix: usize) -> (&[u8], &[u8]) {
    let Some(len_bytes) = data.get(..prefix) else {
        return (&[], &[]);
    };
    let len = len_bytes
        .iter()
        .rev()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    let body = &data[prefix..];
    body.split_at(len.min(body.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_inputs_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            module_id_text(&data);
            module_id_bytes(&data);
            host_calls(&data);
        }

        #[test]
        fn random_calls_on_seeded_memory_never_panic(
            memory in proptest::collection::vec(any::<u8>(), 0..512),
            calls in proptest::collection::vec((0u8..7, any::<[i32; 4]>()), 0..64),
        ) {
            let mut data = (memory.len() as u16).to_le_bytes().to_vec();
            data.extend(&memory);
            data.push(0);
            for (op, args) in calls {
                data.push(op);
                for a in args {
                    // Mostly small values so calls reach past the bounds checks.
                    data.extend((a % 70_000).to_le_bytes());
                }
            }
            host_calls(&data);
        }
    }

    #[test]
    fn entry_points_survive_hostile_inputs() {
        module_id_text(b"");
        module_id_text("b".repeat(10_000).as_bytes());
        module_id_text(ModuleId::for_bytes(b"m").to_string().as_bytes());
        module_id_bytes(&[]);
        module_id_bytes(&[0x01, 0x55, 0x1e, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        module_id_bytes(&ModuleId::for_bytes(b"m").cid().to_bytes());

        // Memory "k", a reading, then: put k=k, get k, scan from "", delete k, publish past
        // the end of memory (traps), and a call never made.
        let mut data = vec![1, 0, b'k', 3, 1, 2, 3];
        let mut call = |op: u8, args: [i32; 4]| {
            data.push(op);
            for a in args {
                data.extend(a.to_le_bytes());
            }
        };
        call(3, [0, 1, 0, 1]);
        call(2, [0, 1, 100, 16]);
        call(5, [0, 0, 200, 4096]);
        call(4, [0, 1, 0, 0]);
        call(0, [300, 16, 0, 0]);
        call(6, [0, i32::MAX, 0, 0]);
        call(1, [65_000, 10_000, 0, 0]);
        call(1, [0, 1, 0, 0]);
        host_calls(&data);
        host_calls(&[]);
        host_calls(&[0xff; 40]);
    }
}
