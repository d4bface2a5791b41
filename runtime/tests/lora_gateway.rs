//! The example LoRa gateway service, built for wasm32-wasip1 and run under the manager.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agora_runtime::test_utils::{lora_frame, lora_gateway_wasm};
use agora_runtime::{ModuleId, ServiceId, ServiceLimits, ServiceSpec, StopReason};
use common::harness;

#[tokio::test]
async fn gateway_aggregates_publishes_and_resumes_numbering() {
    let wasm = lora_gateway_wasm().unwrap_or_else(|e| panic!("{e}"));
    let mut h = harness();
    let id = ModuleId::for_bytes(&wasm);
    let module = h.host.load(&id, &wasm).unwrap();
    let mut spec = ServiceSpec::new("lora", module, ServiceLimits::default());
    spec.tick_ms = 10;
    h.manager.stage(spec).unwrap();
    let svc = ServiceId::from("lora");
    h.manager.start(&svc).unwrap();

    // Device 1 sends seq 0..8 but seq 3 is lost; device 2 sends 8 frames; two junk frames.
    for seq in (0..9).filter(|s| *s != 3) {
        h.manager
            .push_reading(&svc, lora_frame(1, seq, 2000 + seq as i16, 5000))
            .unwrap();
    }
    h.manager.push_reading(&svc, b"junk".to_vec()).unwrap();
    // Larger than the guest's 64-byte buffer: exercises the `-len` retry path of `readings`.
    h.manager.push_reading(&svc, vec![0xA7; 100]).unwrap();
    for seq in 0..8 {
        h.manager
            .push_reading(&svc, lora_frame(2, seq, -500, 9000))
            .unwrap();
    }

    let b0: serde_json::Value = serde_json::from_slice(&h.next_published().await.payload).unwrap();
    let b1: serde_json::Value = serde_json::from_slice(&h.next_published().await.payload).unwrap();
    assert_eq!(b0["batch"], 0);
    assert_eq!(b1["batch"], 1);
    assert_eq!(b0["readings"], 8);
    assert_eq!(b1["readings"], 8);
    let dev1 = &b0["devices"][0];
    assert_eq!(dev1["id"], 1);
    assert_eq!(dev1["lost"], 1);
    assert_eq!(dev1["temp_min_c"], 20.0);
    assert_eq!(b1["rejected"], 2);
    assert!(b0["raw_digest"].as_str().unwrap().len() == 16);

    let logs = h.manager.logs(&svc).unwrap();
    assert!(
        logs.contains("lora-gateway started; next batch 0"),
        "{logs}"
    );
    assert!(logs.contains("rejected frame"), "{logs}");
    assert_eq!(h.manager.metering(&svc).unwrap().readings_processed, 18);

    // Restart: the batch counter lives in the host kv store.
    h.manager.stop(&svc).unwrap();
    assert_eq!(h.stopped(&svc).await, StopReason::Requested);
    h.manager.start(&svc).unwrap();
    for seq in 0..8 {
        h.manager
            .push_reading(&svc, lora_frame(3, seq, 100, 100))
            .unwrap();
    }
    let b2: serde_json::Value = serde_json::from_slice(&h.next_published().await.payload).unwrap();
    assert_eq!(b2["batch"], 2);
    h.manager.stop(&svc).unwrap();
    h.stopped(&svc).await;
}
