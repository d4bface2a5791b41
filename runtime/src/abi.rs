//! The `"agora"` host imports (guest ABI v1, documented in the crate root). Every pointer and
//! length from the guest is bounds-checked; a bad range traps the guest with a [`GuestFault`].

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Extern, Linker, Memory};

use crate::io::{
    MAX_KV_KEY_BYTES, MAX_KV_VALUE_BYTES, MAX_LOG_LINE_BYTES, MAX_PUBLISH_BYTES, Published,
};
use crate::state::StoreState;

/// Trap cause for a host call the guest made with invalid arguments.
#[derive(Debug, thiserror::Error)]
#[error("agora.{call}: {what}")]
pub(crate) struct GuestFault {
    call: &'static str,
    what: String,
}

fn fault(call: &'static str, what: impl Into<String>) -> wasmtime::Error {
    wasmtime::Error::new(GuestFault {
        call,
        what: what.into(),
    })
}

fn memory(caller: &mut Caller<'_, StoreState>, call: &'static str) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(fault(call, "module exports no `memory`")),
    }
}

/// The guest range `[ptr, ptr+len)` as host indices, or a fault if it leaves memory.
fn range(
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

fn read(
    caller: &mut Caller<'_, StoreState>,
    call: &'static str,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<Vec<u8>> {
    let mem = memory(caller, call)?;
    let r = range(caller, mem, call, ptr, len)?;
    Ok(mem.data(&*caller)[r].to_vec())
}

fn write(
    caller: &mut Caller<'_, StoreState>,
    call: &'static str,
    ptr: i32,
    cap: i32,
    bytes: &[u8],
) -> wasmtime::Result<()> {
    let mem = memory(caller, call)?;
    let r = range(caller, mem, call, ptr, cap)?;
    let dst = &mut mem.data_mut(&mut *caller)[r];
    let n = bytes.len().min(dst.len());
    dst[..n].copy_from_slice(&bytes[..n]);
    Ok(())
}

/// Length as the i32 the ABI returns; every buffer here is far below `i32::MAX`.
fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Adds the `"agora"` imports to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "agora",
        "readings",
        |mut caller: Caller<'_, StoreState>, ptr: i32, cap: i32| -> wasmtime::Result<i32> {
            // Check the whole destination first so a bad pointer never consumes a reading.
            let mem = memory(&mut caller, "readings")?;
            range(&mut caller, mem, "readings", ptr, cap)?;
            let io = caller.data().io.clone();
            match io.readings.pop_fitting(cap as u32 as usize) {
                Ok(None) => Ok(0),
                Err(needed) => Ok(-len_i32(needed)),
                Ok(Some(reading)) => {
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
            let mem = memory(&mut caller, "publish")?;
            let r = range(&mut caller, mem, "publish", ptr, len)?;
            if r.len() > MAX_PUBLISH_BYTES {
                return Ok(-2);
            }
            let payload = mem.data(&caller)[r].to_vec();
            let io = caller.data().io.clone();
            let permit = match io.outbox.try_reserve() {
                Ok(p) => p,
                Err(_) => return Ok(-1),
            };
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

    linker.func_wrap(
        "agora",
        "kv_get",
        |mut caller: Caller<'_, StoreState>,
         kptr: i32,
         klen: i32,
         vptr: i32,
         vcap: i32|
         -> wasmtime::Result<i32> {
            let key = read(&mut caller, "kv_get", kptr, klen)?;
            let mem = memory(&mut caller, "kv_get")?;
            range(&mut caller, mem, "kv_get", vptr, vcap)?;
            if key.len() > MAX_KV_KEY_BYTES {
                return Ok(-1);
            }
            let io = caller.data().io.clone();
            match io.kv.get(&io.service, &key) {
                None => Ok(-1),
                Some(v) if v.len() > vcap as u32 as usize => Ok(-2),
                Some(v) => {
                    write(&mut caller, "kv_get", vptr, vcap, &v)?;
                    Ok(len_i32(v.len()))
                }
            }
        },
    )?;

    linker.func_wrap(
        "agora",
        "kv_put",
        |mut caller: Caller<'_, StoreState>,
         kptr: i32,
         klen: i32,
         vptr: i32,
         vlen: i32|
         -> wasmtime::Result<i32> {
            let key = read(&mut caller, "kv_put", kptr, klen)?;
            let value = read(&mut caller, "kv_put", vptr, vlen)?;
            if key.len() > MAX_KV_KEY_BYTES || value.len() > MAX_KV_VALUE_BYTES {
                return Ok(-1);
            }
            let io = caller.data().io.clone();
            Ok(if io.kv.put(&io.service, &key, &value) {
                0
            } else {
                -1
            })
        },
    )?;

    linker.func_wrap(
        "agora",
        "log",
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let mut line = read(&mut caller, "log", ptr, len)?;
            line.truncate(MAX_LOG_LINE_BYTES);
            line.push(b'\n');
            caller.data().io.log.append(&line);
            Ok(())
        },
    )?;

    linker.func_wrap("agora", "now_ms", || -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    })?;
    Ok(())
}
