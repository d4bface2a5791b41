//! The `"agora"` host imports (guest ABI v1, documented in the crate root). Every pointer and
//! length from the guest is bounds-checked before anything is copied or allocated (a bad range
//! traps the guest with a [`GuestFault`]), and every call is charged fuel for the work it makes
//! the host do ([`fuel`]), so a guest looping on host calls hits `CpuLimit`.

mod kv;

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Extern, Linker, Memory, Trap};

use crate::io::{MAX_LOG_LINE_BYTES, MAX_PUBLISH_BYTES, Published};
use crate::state::StoreState;

/// What host calls cost, in fuel (≈ wasm instructions), charged before the work where the
/// size is known up front and right after it otherwise. A call the remaining budget cannot pay
/// for traps with `CpuLimit`.
pub mod fuel {
    /// Every host call, whatever it does.
    pub const CALL: u64 = 1_000;
    /// Each byte copied between guest memory and the host, either way.
    pub const PER_BYTE: u64 = 2;
    /// A `kv_get`, and each entry a `kv_scan` returns.
    pub const KV_READ: u64 = 5_000;
    /// A `kv_put` or `kv_delete` (a write to the node's persistent store).
    pub const KV_WRITE: u64 = 50_000;
    /// A `kv_scan` call, on top of its entries.
    pub const KV_SCAN: u64 = 10_000;
    /// A `publish` (hashed now, signed and forwarded by the node later).
    pub const PUBLISH: u64 = 50_000;

    /// `base` plus `bytes` at [`PER_BYTE`].
    pub(crate) fn with_bytes(base: u64, bytes: usize) -> u64 {
        base.saturating_add(PER_BYTE.saturating_mul(bytes as u64))
    }
}

/// Takes `amount` fuel from the running call, or traps with `OutOfFuel` (`CpuLimit`).
pub(crate) fn charge(caller: &mut Caller<'_, StoreState>, amount: u64) -> wasmtime::Result<()> {
    let left = caller.get_fuel()?;
    match left.checked_sub(amount) {
        Some(rest) => caller.set_fuel(rest),
        None => {
            caller.set_fuel(0)?;
            Err(Trap::OutOfFuel.into())
        }
    }
}

/// Trap cause for a host call the guest made with invalid arguments.
#[derive(Debug, thiserror::Error)]
#[error("agora.{call}: {what}")]
pub(crate) struct GuestFault {
    call: &'static str,
    what: String,
}

pub(crate) fn fault(call: &'static str, what: impl Into<String>) -> wasmtime::Error {
    wasmtime::Error::new(GuestFault {
        call,
        what: what.into(),
    })
}

pub(crate) fn memory(
    caller: &mut Caller<'_, StoreState>,
    call: &'static str,
) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(fault(call, "module exports no `memory`")),
    }
}

/// The guest range `[ptr, ptr+len)` as host indices, or a fault if it leaves memory.
pub(crate) fn range(
    caller: &mut Caller<'_, StoreState>,
    mem: Memory,
    call: &'static str,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<std::ops::Range<usize>> {
    // wasm32 pointers are unsigned; reinterpret the i32 bits.
    let start = ptr as u32 as usize;
    let len = len as u32 as usize;
    let end = start
        .checked_add(len)
        .filter(|end| *end <= mem.data_size(&*caller))
        .ok_or_else(|| {
            fault(
                call,
                format!("guest range {start:#x}+{len} is outside linear memory"),
            )
        })?;
    Ok(start..end)
}

/// Copies a guest range the caller has already checked with [`range`] and found small enough.
pub(crate) fn copy_out(
    caller: &Caller<'_, StoreState>,
    mem: Memory,
    r: std::ops::Range<usize>,
) -> Vec<u8> {
    mem.data(caller)
        .get(r)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

pub(crate) fn write(
    caller: &mut Caller<'_, StoreState>,
    call: &'static str,
    ptr: i32,
    cap: i32,
    bytes: &[u8],
) -> wasmtime::Result<()> {
    let mem = memory(caller, call)?;
    let r = range(caller, mem, call, ptr, cap)?;
    let dst = mem
        .data_mut(&mut *caller)
        .get_mut(r)
        .ok_or_else(|| fault(call, "guest range moved"))?;
    let n = bytes.len().min(dst.len());
    dst[..n].copy_from_slice(&bytes[..n]);
    Ok(())
}

/// Length as the i32 the ABI returns; every buffer here is far below `i32::MAX`.
pub(crate) fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Adds the `"agora"` imports to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "agora",
        "readings",
        |mut caller: Caller<'_, StoreState>, ptr: i32, cap: i32| -> wasmtime::Result<i32> {
            charge(&mut caller, fuel::CALL)?;
            // Check the whole destination first so a bad pointer never consumes a reading.
            let mem = memory(&mut caller, "readings")?;
            range(&mut caller, mem, "readings", ptr, cap)?;
            let io = caller.data().io.clone();
            match io.readings.pop_fitting(cap as u32 as usize) {
                Ok(None) => Ok(0),
                Err(needed) => Ok(-len_i32(needed)),
                Ok(Some(reading)) => {
                    charge(&mut caller, fuel::with_bytes(0, reading.len()))?;
                    write(&mut caller, "readings", ptr, cap, &reading)?;
                    io.readings_processed.fetch_add(1, Ordering::Relaxed);
                    Ok(len_i32(reading.len()))
                }
            }
        },
    )?;

    linker.func_wrap(
        "agora",
        "publish",
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            charge(&mut caller, fuel::CALL)?;
            let mem = memory(&mut caller, "publish")?;
            let r = range(&mut caller, mem, "publish", ptr, len)?;
            if r.len() > MAX_PUBLISH_BYTES {
                return Ok(-2);
            }
            let io = caller.data().io.clone();
            let permit = match io.outbox.try_reserve() {
                Ok(p) => p,
                Err(_) => return Ok(-1),
            };
            charge(&mut caller, fuel::with_bytes(fuel::PUBLISH, r.len()))?;
            let payload = copy_out(&caller, mem, r);
            let seq = io.published.fetch_add(1, Ordering::Relaxed);
            let digest = *blake3::hash(&payload).as_bytes();
            permit.send(Published {
                service: io.service.clone(),
                seq,
                payload,
                digest,
            });
            Ok(0)
        },
    )?;

    kv::add_to_linker(linker)?;

    linker.func_wrap(
        "agora",
        "log",
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            charge(&mut caller, fuel::CALL)?;
            let mem = memory(&mut caller, "log")?;
            let r = range(&mut caller, mem, "log", ptr, len)?;
            // Only the kept part of the line is copied.
            let kept = r.start..r.end.min(r.start.saturating_add(MAX_LOG_LINE_BYTES));
            charge(&mut caller, fuel::with_bytes(0, kept.len()))?;
            let mut line = copy_out(&caller, mem, kept);
            line.push(b'\n');
            caller.data().io.log.append(&line);
            Ok(())
        },
    )?;

    linker.func_wrap(
        "agora",
        "now_ms",
        |mut caller: Caller<'_, StoreState>| -> wasmtime::Result<i64> {
            charge(&mut caller, fuel::CALL)?;
            Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0))
        },
    )?;
    Ok(())
}
