//! Hostile guests hit their limit and stop with the right reason; a neighbour keeps running.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agora_runtime::test_utils::{
    BAD_POINTER, ECHO, INFINITE_LOOP, MEMORY_BOMB, OPEN_FILE, STDOUT_FLOOD, TRAP,
};
use agora_runtime::{ServiceLimits, StopReason};
use common::{harness, tight};

async fn hostile_stops_with(wat: &str, limits: ServiceLimits) -> (StopReason, common::Harness) {
    let mut h = harness();
    let good = h.run("good", ECHO, tight());
    h.assert_echo_alive(&good).await;
    let bad = h.run("bad", wat, limits);
    let reason = h.stopped(&bad).await;
    h.assert_echo_alive(&good).await;
    (reason, h)
}

#[tokio::test]
async fn infinite_loop_hits_cpu_limit() {
    let (reason, h) = hostile_stops_with(INFINITE_LOOP, tight()).await;
    assert_eq!(reason, StopReason::CpuLimit);
    let m = h.manager.metering(&"bad".into()).unwrap();
    assert!(m.fuel_used >= tight().fuel_per_second, "{m:?}");
}

#[tokio::test]
async fn memory_bomb_hits_memory_limit() {
    let (reason, h) = hostile_stops_with(MEMORY_BOMB, tight()).await;
    assert_eq!(reason, StopReason::MemoryLimit);
    let m = h.manager.metering(&"bad".into()).unwrap();
    assert!(m.peak_memory_bytes <= tight().memory_bytes, "{m:?}");
    assert!(m.peak_memory_bytes > 1 << 20, "{m:?}");
}

#[tokio::test]
async fn unreachable_is_a_trap() {
    let (reason, _h) = hostile_stops_with(TRAP, tight()).await;
    match reason {
        StopReason::Trap(msg) => assert!(msg.contains("unreachable"), "{msg}"),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test]
async fn stdout_flood_hits_output_limit_and_logs_are_bounded() {
    let (reason, h) = hostile_stops_with(STDOUT_FLOOD, tight()).await;
    assert_eq!(reason, StopReason::OutputLimit);
    let logs = h.manager.logs(&"bad".into()).unwrap();
    assert!(logs.contains("flood"));
    assert!(logs.len() <= 4096, "{}", logs.len());
}

#[tokio::test]
async fn opening_files_fails_without_preopens() {
    let (reason, _h) = hostile_stops_with(OPEN_FILE, tight()).await;
    // WASI errno 8 is EBADF: fd 3 is not a preopened directory because none is granted.
    assert_eq!(reason, StopReason::Exited(8));
}

#[tokio::test]
async fn out_of_bounds_host_call_pointer_traps() {
    let (reason, _h) = hostile_stops_with(BAD_POINTER, tight()).await;
    match reason {
        StopReason::Trap(msg) => {
            assert!(msg.contains("agora.publish"), "{msg}");
            assert!(msg.contains("outside linear memory"), "{msg}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}
