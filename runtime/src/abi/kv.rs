//! The key-value imports: `kv_get`, `kv_put`, `kv_delete`, `kv_scan`. Lengths are checked
//! against the ABI bounds before any guest bytes are copied; scans return at most
//! [`MAX_KV_SCAN_ITEMS`] entries per call; every call is charged fuel.

use wasmtime::{Caller, Linker};

use super::{charge, copy_out, fuel, len_i32, memory, range, write};
use crate::io::{MAX_KV_KEY_BYTES, MAX_KV_SCAN_ITEMS, MAX_KV_VALUE_BYTES};
use crate::state::StoreState;

/// Returned when the node's store does not implement the operation.
const UNSUPPORTED: i32 = -3;

/// Reads a key of at most [`MAX_KV_KEY_BYTES`] (`None`: too long); traps on a bad range.
fn read_key(
    caller: &mut Caller<'_, StoreState>,
    call: &'static str,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<Option<Vec<u8>>> {
    let mem = memory(caller, call)?;
    let r = range(caller, mem, call, ptr, len)?;
    if r.len() > MAX_KV_KEY_BYTES {
        return Ok(None);
    }
    charge(caller, fuel::with_bytes(0, r.len()))?;
    Ok(Some(copy_out(caller, mem, r)))
}

/// The bytes of a `kv_scan` page: per entry `key_len: u32 LE, value_len: u32 LE, key, value`.
pub(crate) fn encode_entry(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend((key.len() as u32).to_le_bytes());
    out.extend((value.len() as u32).to_le_bytes());
    out.extend(key);
    out.extend(value);
}

/// Adds the key-value imports to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "agora",
        "kv_get",
        |mut caller: Caller<'_, StoreState>,
         kptr: i32,
         klen: i32,
         vptr: i32,
         vcap: i32|
         -> wasmtime::Result<i32> {
            charge(&mut caller, fuel::CALL)?;
            let mem = memory(&mut caller, "kv_get")?;
            range(&mut caller, mem, "kv_get", vptr, vcap)?;
            let Some(key) = read_key(&mut caller, "kv_get", kptr, klen)? else {
                return Ok(-1);
            };
            let io = caller.data().io.clone();
            let value = io.kv.get(&io.service, &key);
            let read = value.as_ref().map_or(0, Vec::len);
            charge(&mut caller, fuel::with_bytes(fuel::KV_READ, read))?;
            match value {
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
            charge(&mut caller, fuel::CALL)?;
            let mem = memory(&mut caller, "kv_put")?;
            let kr = range(&mut caller, mem, "kv_put", kptr, klen)?;
            let vr = range(&mut caller, mem, "kv_put", vptr, vlen)?;
            if kr.len() > MAX_KV_KEY_BYTES || vr.len() > MAX_KV_VALUE_BYTES {
                return Ok(-1);
            }
            charge(
                &mut caller,
                fuel::with_bytes(fuel::KV_WRITE, kr.len() + vr.len()),
            )?;
            let key = copy_out(&caller, mem, kr);
            let value = copy_out(&caller, mem, vr);
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
        "kv_delete",
        |mut caller: Caller<'_, StoreState>, kptr: i32, klen: i32| -> wasmtime::Result<i32> {
            charge(&mut caller, fuel::CALL)?;
            let Some(key) = read_key(&mut caller, "kv_delete", kptr, klen)? else {
                return Ok(-1);
            };
            charge(&mut caller, fuel::KV_WRITE)?;
            let io = caller.data().io.clone();
            Ok(match io.kv.delete(&io.service, &key) {
                Ok(true) => 1,
                Ok(false) => 0,
                Err(_) => UNSUPPORTED,
            })
        },
    )?;

    linker.func_wrap(
        "agora",
        "kv_scan",
        |mut caller: Caller<'_, StoreState>,
         sptr: i32,
         slen: i32,
         bptr: i32,
         bcap: i32|
         -> wasmtime::Result<i32> {
            charge(&mut caller, fuel::CALL.saturating_add(fuel::KV_SCAN))?;
            let mem = memory(&mut caller, "kv_scan")?;
            let out = range(&mut caller, mem, "kv_scan", bptr, bcap)?;
            let Some(start) = read_key(&mut caller, "kv_scan", sptr, slen)? else {
                return Ok(-1);
            };
            let io = caller.data().io.clone();
            let entries = match io.kv.scan(&io.service, &start, MAX_KV_SCAN_ITEMS) {
                Ok(e) => e,
                Err(_) => return Ok(UNSUPPORTED),
            };
            // Whatever the store returned, at most MAX_KV_SCAN_ITEMS entries are handed on and
            // every entry the host read is paid for.
            let entries = &entries[..entries.len().min(MAX_KV_SCAN_ITEMS)];
            let read: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
            let items = entries.len() as u64;
            charge(
                &mut caller,
                fuel::with_bytes(fuel::KV_READ.saturating_mul(items), read),
            )?;
            let mut page = Vec::new();
            let mut count = 0i32;
            for (k, v) in entries {
                let size = 8 + k.len() + v.len();
                if page.len() + size > out.len() {
                    if count == 0 {
                        return Ok(-len_i32(size));
                    }
                    break;
                }
                encode_entry(&mut page, k, v);
                count += 1;
            }
            write(&mut caller, "kv_scan", bptr, bcap, &page)?;
            Ok(count)
        },
    )?;
    Ok(())
}
