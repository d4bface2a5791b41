//! A stranger's radio replay requests on real processes (THREATS R1). An edge answers
//! `RadioRpc::Replay` with the frames it buffered of the devices named, so an edge taking
//! devices over loses nothing. The answer used to clone a device's whole buffer once per time
//! the request named it: one request of 40 KB naming a device 20,000 times cost gigabytes
//! before the answer was refused for its size. Now each device is answered once, at most 1,024
//! of them, with at most half the request-response limit of frames: the answer is small, the
//! request is counted as answered in part, the node's memory stays put and it keeps serving.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora`, then
//! `nice cargo test -p agora-tests --test e2e attack_replay::`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use agora_radio::RadioRpc;
use agora_tests::adversary::radio::{HostileRadio, unsigned_frame};
use agora_tests::adversary::{Adversary, HostileDevnet};
use agora_wire::codec::Kind;

/// The device whose frames node0 buffers (no contract names it: every edge in range keeps
/// what no checkpoint covers).
const DEVICE: u32 = 4242;
/// Frames sent to node0.
const FRAMES: u32 = 500;
/// Times the hostile request names the device.
const REPEATS: usize = 20_000;
/// What node0 may gain answering (a debug build with allocator slack; the unbounded answer
/// cloned the buffer 20,000 times: ~0.5 GiB for these 500 frames, 4.5 GiB for a full one).
const RSS_BUDGET_KIB: u64 = 64 * 1024;

fn radio_addr(net: &HostileDevnet, i: usize) -> std::net::SocketAddr {
    std::fs::read_to_string(net.node(i).data_dir.join(agora_api::RADIO_ADDR_FILE))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn buffered(net: &HostileDevnet, i: usize) -> usize {
    agora_tests::radio_status(net.node(i))
        .await
        .and_then(|s| s.devices.into_iter().find(|d| d.device == DEVICE))
        .map_or(0, |d| d.buffered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_request_naming_a_device_many_times_gets_one_bounded_answer() {
    let net = HostileDevnet::up(3).await.unwrap();
    let mut radio = HostileRadio::bind().await.unwrap();
    let to = [radio_addr(&net, 0)];
    // UDP on loopback drops what outruns the socket's buffer: the frames go again (a frame
    // heard twice is a duplicate) until most are buffered.
    let deadline = Instant::now() + Duration::from_secs(30);
    while buffered(&net, 0).await < FRAMES as usize * 4 / 5 {
        assert!(
            Instant::now() < deadline,
            "node0 buffered {} frames of {FRAMES}",
            buffered(&net, 0).await
        );
        for seq in 1..=FRAMES {
            radio
                .send("unsigned", &unsigned_frame(DEVICE, seq), &to)
                .await
                .unwrap();
            if seq % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held = buffered(&net, 0).await;

    let adv = Adversary::join(&net).await.unwrap();
    let rss_before = net.rss_kib(0).unwrap();
    let ask = |devices: Vec<u32>| {
        let body = serde_cbor::to_vec(&RadioRpc::Replay { devices }).unwrap();
        adv.seal(Kind::Radio, body).to_bytes()
    };
    let req = ask(vec![DEVICE; REPEATS]);
    eprintln!("the request: {} bytes", req.len());
    let answer = adv.request_raw(net.peer_id(0), req).await.unwrap();
    let Ok(RadioRpc::Frames { devices }) = answer.body::<RadioRpc>(Kind::Radio) else {
        panic!("not a Frames answer: {answer:?}");
    };
    eprintln!(
        "the answer: {} bytes, {} device entries, {} frames",
        answer.payload.len(),
        devices.len(),
        devices.iter().map(|d| d.frames.len()).sum::<usize>()
    );
    assert_eq!(devices.len(), 1, "the device is answered once");
    assert_eq!(devices[0].device, DEVICE);
    assert!(
        devices[0].frames.len() >= held,
        "{} < {held}",
        devices[0].frames.len()
    );

    // Many distinct devices: at most 1,024 are looked at; answered, and counted.
    let many = ask((0..5_000).collect());
    let answer = adv.request_raw(net.peer_id(0), many).await.unwrap();
    assert!(matches!(
        answer.body::<RadioRpc>(Kind::Radio),
        Ok(RadioRpc::Frames { .. })
    ));

    let status = agora_tests::radio_status(net.node(0)).await.unwrap();
    assert!(
        status.stats.replay_requests_trimmed >= 2,
        "{:?}",
        status.stats
    );
    let rss_after = net.rss_kib(0).unwrap();
    eprintln!("node0 RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after.saturating_sub(rss_before) < RSS_BUDGET_KIB,
        "node0 grew from {rss_before} KiB to {rss_after} KiB answering"
    );
    net.transfer_finalises(0, 1, 5).await.unwrap();
    net.assert_alive();
}
