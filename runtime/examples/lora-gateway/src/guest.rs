//! The wasm entry points and the `"agora"` imports.

use std::cell::RefCell;

use crate::BATCH_SIZE;
use crate::aggregate::Aggregator;
use crate::reading::Reading;

#[link(wasm_import_module = "agora")]
unsafe extern "C" {
    fn readings(ptr: *mut u8, cap: i32) -> i32;
    fn publish(ptr: *const u8, len: i32) -> i32;
    fn kv_get(kptr: *const u8, klen: i32, vptr: *mut u8, vcap: i32) -> i32;
    fn kv_put(kptr: *const u8, klen: i32, vptr: *const u8, vlen: i32) -> i32;
    fn log(ptr: *const u8, len: i32);
    fn now_ms() -> i64;
}

const BATCH_KEY: &[u8] = b"batch-counter";

struct Gateway {
    agg: Aggregator,
    next_batch: u64,
    pending: Option<String>,
    total_rejected: u64,
    total_accepted: u64,
}

thread_local! {
    static GATEWAY: RefCell<Gateway> = RefCell::new(Gateway {
        agg: Aggregator::new(),
        next_batch: 0,
        pending: None,
        total_rejected: 0,
        total_accepted: 0,
    });
}

fn host_log(msg: &str) {
    // SAFETY: the pointer and length describe `msg`, which lives across the call.
    unsafe { log(msg.as_ptr(), msg.len() as i32) }
}

fn load_counter() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: key and buffer are valid for the given lengths during the call.
    let n = unsafe {
        kv_get(
            BATCH_KEY.as_ptr(),
            BATCH_KEY.len() as i32,
            buf.as_mut_ptr(),
            8,
        )
    };
    if n == 8 { u64::from_le_bytes(buf) } else { 0 }
}

fn store_counter(v: u64) {
    let bytes = v.to_le_bytes();
    // SAFETY: key and value are valid for the given lengths during the call.
    unsafe {
        kv_put(
            BATCH_KEY.as_ptr(),
            BATCH_KEY.len() as i32,
            bytes.as_ptr(),
            8,
        )
    };
}

/// Called once per instance: restores the batch counter.
#[unsafe(no_mangle)]
pub extern "C" fn agora_init() -> i32 {
    let next = load_counter();
    GATEWAY.with(|g| g.borrow_mut().next_batch = next);
    println!("lora-gateway started; next batch {next}");
    0
}

/// Drains readings, aggregates, publishes full batches. Returns 0 to keep running.
#[unsafe(no_mangle)]
pub extern "C" fn agora_poll() -> i32 {
    GATEWAY.with(|g| {
        let mut g = g.borrow_mut();
        if !flush_pending(&mut g) {
            return 0; // outbox full: keep readings queued on the host until it drains
        }
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: `buf` is valid for writes of its length during the call.
            let n = unsafe { readings(buf.as_mut_ptr(), buf.len() as i32) };
            if n == 0 {
                break;
            }
            let big;
            let frame: &[u8] = if n < 0 {
                // Larger than `buf`: fetch it into a buffer of the announced size (it will fail
                // to decode, but must leave the queue).
                let mut v = vec![0u8; n.unsigned_abs() as usize];
                // SAFETY: `v` is valid for writes of its length during the call.
                let m = unsafe { readings(v.as_mut_ptr(), v.len() as i32) };
                v.truncate(m.max(0) as usize);
                big = v;
                &big
            } else {
                &buf[..n as usize]
            };
            match Reading::decode(frame) {
                Ok(r) => {
                    g.total_accepted += 1;
                    g.agg.add(&r, frame);
                }
                Err(e) => {
                    g.total_rejected += 1;
                    g.agg.reject();
                    host_log(&format!("rejected frame: {e:?}"));
                }
            }
            if g.agg.len() >= BATCH_SIZE {
                let batch = g.next_batch;
                // SAFETY: no arguments.
                let now = unsafe { now_ms() };
                g.pending = Some(g.agg.take_batch(batch, now));
                g.next_batch += 1;
                store_counter(g.next_batch);
                if !flush_pending(&mut g) {
                    break;
                }
            }
        }
        0
    })
}

/// Publishes the pending batch; false if the host outbox is full.
fn flush_pending(g: &mut Gateway) -> bool {
    let Some(batch) = g.pending.as_ref() else {
        return true;
    };
    // SAFETY: `batch` is valid for reads of its length during the call.
    match unsafe { publish(batch.as_ptr(), batch.len() as i32) } {
        0 => {
            g.pending = None;
            true
        }
        -1 => false,
        _ => {
            host_log("batch too large; dropped");
            g.pending = None;
            true
        }
    }
}

/// Healthy (0) unless more than half of all frames so far were rejected (1).
#[unsafe(no_mangle)]
pub extern "C" fn agora_health() -> i32 {
    GATEWAY.with(|g| {
        let g = g.borrow();
        if g.total_rejected > g.total_accepted {
            1
        } else {
            0
        }
    })
}

/// Uptime probe evidence (THREATS P1): a pure function of the nonce, so a fresh instance of
/// this image on an arbitrator computes what the live one does (SplitMix64's finaliser over
/// the nonce and this image's constant).
#[unsafe(no_mangle)]
pub extern "C" fn agora_probe(nonce: i64) -> i64 {
    let mut z = u64::from_le_bytes(nonce.to_le_bytes()) ^ 0x6c6f_7261_2d67_7731; // "lora-gw1"
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    i64::from_le_bytes((z ^ (z >> 31)).to_le_bytes())
}
