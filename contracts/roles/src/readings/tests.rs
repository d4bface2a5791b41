//! One test per rule of the readings machine.

use std::collections::BTreeMap;
use std::sync::Arc;

use agora_market::NodeId;

use super::*;

const A: NodeId = NodeId([1; 32]);
const B: NodeId = NodeId([2; 32]);
const C: NodeId = NodeId([3; 32]);
const D: u32 = 101;

fn frame(device: u32, counter: u32) -> Frame {
    let mut bytes = device.to_le_bytes().to_vec();
    bytes.extend(counter.to_le_bytes());
    Frame {
        device,
        counter,
        bytes,
    }
}

fn heard(r: &mut Readings, now: u64, counter: u32) -> Vec<Effect> {
    r.handle(now, Input::Heard(frame(D, counter)))
}

fn fed(effects: &[Effect]) -> Vec<u32> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Feed { frame, .. } => Some(frame.counter),
            _ => None,
        })
        .collect()
}

fn authority(manager: NodeId, lease_until: Option<u64>, previous: Vec<Previous>) -> Input {
    Input::Authority(BTreeMap::from([(
        D,
        DeviceAuthority {
            manager,
            lease_until,
            previous,
        },
    )]))
}

fn claim(author: NodeId, last: u32, released: bool, at: u64) -> CheckpointClaim {
    CheckpointClaim {
        author,
        ranges: vec![CoveredRange {
            device: D,
            first: last.saturating_sub(3),
            last,
            count: 4,
        }],
        released: if released { vec![D] } else { Vec::new() },
        at,
        envelope: Arc::from(format!("{author:?}/{last}/{released}").into_bytes()),
    }
}

/// Assigns `D` to service `service` and ends the peers' replay at once (nobody answers).
fn assign(r: &mut Readings, now: u64, service: &str) -> Vec<Effect> {
    let mut out = r.handle(
        now,
        Input::Assign {
            devices: vec![D],
            service: service.into(),
            reclaim: false,
        },
    );
    let request = out.iter().find_map(|e| match e {
        Effect::AskReplay { request, .. } => Some(*request),
        _ => None,
    });
    if let Some(request) = request {
        out.extend(r.handle(now, Input::ReplayFinished { request }));
    }
    out
}

/// A machine for `me` that manages `D` and has it assigned to service "s" (no gap: the
/// watermark is known and the buffer continues from it).
fn feeding(me: NodeId) -> Readings {
    let mut r = Readings::new(me, ReadingsConfig::default());
    r.handle(0, authority(me, None, Vec::new()));
    heard(&mut r, 1, 1);
    r.handle(2, Input::Checkpoint(claim(me, 0, false, 2)));
    r.devices.get_mut(&D).unwrap().cover(0);
    let out = assign(&mut r, 3, "s");
    assert_eq!(fed(&out), vec![1]);
    r
}

#[test]
fn frames_are_buffered_until_this_edge_holds_the_authority() {
    let mut r = Readings::new(A, ReadingsConfig::default());
    // Not assigned, no authority: buffered.
    assert!(fed(&heard(&mut r, 10, 1)).is_empty());
    // Assigned but the ledger says B manages it: still buffered (the fill for the gap ends).
    r.handle(11, authority(B, None, Vec::new()));
    let out = r.handle(
        12,
        Input::Assign {
            devices: vec![D],
            service: "s".into(),
            reclaim: false,
        },
    );
    assert!(matches!(out.as_slice(), [Effect::AskReplay { prefer, .. }, ..] if prefer == &vec![B]));
    let out = r.handle(2_000, Input::Tick);
    assert!(fed(&out).is_empty());
    assert!(fed(&heard(&mut r, 2_001, 2)).is_empty());
    // Authority arrives: everything buffered is fed in order, once.
    let out = r.handle(2_002, authority(A, None, Vec::new()));
    assert_eq!(fed(&out), vec![1, 2]);
    assert_eq!(fed(&heard(&mut r, 2_003, 3)), vec![3]);
    let v = &r.devices(2_003)[0];
    assert_eq!((v.processed, v.replayed, v.last_processed), (3, 2, Some(3)));
}

#[test]
fn live_counters_must_advance() {
    let mut r = feeding(A);
    assert_eq!(fed(&heard(&mut r, 10, 5)), vec![5]);
    assert!(fed(&heard(&mut r, 11, 5)).is_empty());
    assert!(fed(&heard(&mut r, 12, 4)).is_empty());
    assert_eq!(r.counters().duplicates, 2);
    assert_eq!(fed(&heard(&mut r, 13, 6)), vec![6]);
}

#[test]
fn a_strangers_checkpoint_does_not_silence_a_device() {
    let mut r = feeding(A);
    r.handle(10, Input::Checkpoint(claim(C, u32::MAX, false, 10)));
    assert_eq!(r.counters().unauthorized_checkpoints, 1);
    assert_eq!(fed(&heard(&mut r, 11, 2)), vec![2]);
    // Nor does one from a node that is not the manager while we only buffer.
    let mut r = Readings::new(A, ReadingsConfig::default());
    r.handle(0, authority(B, None, Vec::new()));
    heard(&mut r, 1, 7);
    r.handle(2, Input::Checkpoint(claim(C, 7, false, 2)));
    assert_eq!(r.devices(2)[0].buffered, 1);
    assert_eq!(r.devices(2)[0].done, None);
}

#[test]
fn the_managers_checkpoint_covers_only_plausible_counters() {
    let mut r = Readings::new(A, ReadingsConfig::default());
    r.handle(0, authority(B, None, Vec::new()));
    for c in 1..=5 {
        heard(&mut r, c.into(), c);
    }
    // Within the gap past what we heard: covers and prunes.
    r.handle(10, Input::Checkpoint(claim(B, 3, false, 10)));
    let v = &r.devices(10)[0];
    assert_eq!((v.done, v.buffered, v.peer_covered), (Some(3), 2, Some(3)));
    // u32::MAX from the manager itself: refused.
    r.handle(11, Input::Checkpoint(claim(B, u32::MAX, false, 11)));
    assert_eq!(r.counters().implausible_checkpoints, 1);
    assert_eq!(r.devices(11)[0].done, Some(3));
    // Just inside the gap is believed (a manager may be a few frames ahead of us).
    r.handle(
        12,
        Input::Checkpoint(claim(B, 5 + MAX_COUNTER_GAP, false, 12)),
    );
    assert_eq!(r.devices(12)[0].done, Some(5 + MAX_COUNTER_GAP));
    assert_eq!(r.devices(12)[0].buffered, 0);
}

#[test]
fn a_claim_before_anything_was_heard_waits_for_the_first_counter() {
    let mut r = Readings::new(A, ReadingsConfig::default());
    r.handle(0, authority(B, None, Vec::new()));
    r.handle(1, Input::Checkpoint(claim(B, 40, false, 1)));
    assert_eq!(r.devices(1)[0].done, None);
    heard(&mut r, 2, 38);
    assert_eq!(r.devices(2)[0].done, Some(40));
    assert_eq!(r.devices(2)[0].buffered, 0);
    // A parked u32::MAX is refused when the first counter shows it implausible.
    let mut r = Readings::new(A, ReadingsConfig::default());
    r.handle(0, authority(B, None, Vec::new()));
    r.handle(1, Input::Checkpoint(claim(B, u32::MAX, false, 1)));
    heard(&mut r, 2, 38);
    assert_eq!(r.counters().implausible_checkpoints, 1);
    assert_eq!(r.devices(2)[0].buffered, 1);
}

#[test]
fn device_table_is_bounded_for_devices_only_heard() {
    let cfg = ReadingsConfig {
        max_heard_devices: 2,
        ..ReadingsConfig::default()
    };
    let mut r = Readings::new(A, cfg);
    for d in 1..=5 {
        r.handle(0, Input::Heard(frame(d, 1)));
    }
    assert_eq!(r.devices(0).len(), 2);
    assert_eq!(r.counters().unknown_dropped, 3);
    // A device the ledger gives us still gets a slot.
    r.handle(1, authority(A, None, Vec::new()));
    r.handle(2, Input::Heard(frame(D, 1)));
    assert_eq!(r.devices(2).len(), 3);
    assert_eq!(r.counters().unknown_dropped, 3);
    // Gossip about untracked devices does not create entries.
    let mut c = claim(B, 9, false, 3);
    c.ranges[0].device = 999;
    r.handle(3, Input::Checkpoint(c));
    assert_eq!(r.devices(3).len(), 3);
}

#[test]
fn buffers_are_bounded_and_evict_the_oldest() {
    let cfg = ReadingsConfig {
        buffer_per_device: 3,
        ..ReadingsConfig::default()
    };
    let mut r = Readings::new(A, cfg);
    for c in 1..=5 {
        heard(&mut r, c.into(), c);
    }
    assert_eq!(r.devices(5)[0].buffered, 3);
    assert_eq!(r.counters().evicted_frames, 2);
    // The evicted ones are gone from replays too.
    let out = r.handle(
        6,
        Input::ReplayRequest {
            from: B,
            request: 1,
            devices: vec![D],
        },
    );
    let Effect::AnswerReplay { devices, .. } = &out[0] else {
        panic!("{out:?}")
    };
    let counters: Vec<u32> = devices[0].frames.iter().map(|f| f.counter).collect();
    assert_eq!(counters, vec![3, 4, 5]);
}

#[test]
fn kept_statements_are_bounded_and_strangers_go_first() {
    let cfg = ReadingsConfig {
        max_claim_authors: 2,
        ..ReadingsConfig::default()
    };
    let mut r = Readings::new(A, cfg);
    r.handle(0, authority(B, None, Vec::new()));
    heard(&mut r, 1, 1);
    r.handle(2, Input::Checkpoint(claim(C, 1, false, 2)));
    r.handle(3, Input::Checkpoint(claim(NodeId([4; 32]), 1, false, 3)));
    // The manager's statement evicts a stranger's, never the other way round.
    r.handle(4, Input::Checkpoint(claim(B, 1, false, 4)));
    r.handle(5, Input::Checkpoint(claim(NodeId([5; 32]), 1, false, 5)));
    r.handle(6, Input::Checkpoint(claim(NodeId([6; 32]), 1, false, 6)));
    let out = r.handle(
        7,
        Input::ReplayRequest {
            from: C,
            request: 1,
            devices: vec![D],
        },
    );
    let Effect::AnswerReplay { checkpoints, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(checkpoints.len(), 2);
    assert!(
        checkpoints
            .iter()
            .any(|e| e.as_ref() == format!("{B:?}/1/false").as_bytes())
    );
    assert!(r.counters().evicted_claims >= 2);
}

#[test]
fn a_new_manager_waits_for_the_previous_ones_release_or_its_time() {
    let prev = Previous {
        node: B,
        since: 100,
        until: 3_000,
    };
    let mut r = Readings::new(A, ReadingsConfig::default());
    r.handle(0, authority(B, None, Vec::new()));
    heard(&mut r, 50, 1);
    r.handle(60, Input::Checkpoint(claim(B, 1, false, 60)));
    r.handle(200, authority(A, None, vec![prev]));
    r.handle(
        201,
        Input::Assign {
            devices: vec![D],
            service: "own".into(),
            reclaim: false,
        },
    );
    r.handle(1_800, Input::ReplayFinished { request: 1 });
    assert!(fed(&heard(&mut r, 1_801, 2)).is_empty(), "B may still feed");
    // An old release (before the ledger took the device from B) does not count.
    r.handle(1_802, Input::Checkpoint(claim(B, 2, true, 90)));
    assert!(fed(&heard(&mut r, 1_803, 3)).is_empty());
    // B's release after `since`: A resumes after B's last.
    let out = r.handle(1_804, Input::Checkpoint(claim(B, 3, true, 150)));
    assert!(fed(&out).is_empty(), "2 and 3 were B's");
    assert_eq!(fed(&heard(&mut r, 1_805, 4)), vec![4]);
    // Without a release, A waits until `until`.
    let mut r = Readings::new(A, ReadingsConfig::default());
    r.handle(0, authority(A, None, vec![prev]));
    r.handle(1, Input::Checkpoint(claim(A, 0, false, 1)));
    r.devices.get_mut(&D).unwrap().cover(0);
    heard(&mut r, 2, 1);
    r.handle(
        3,
        Input::Assign {
            devices: vec![D],
            service: "own".into(),
            reclaim: false,
        },
    );
    assert!(fed(&heard(&mut r, 2_999, 2)).is_empty());
    assert_eq!(fed(&r.handle(3_000, Input::Tick)), vec![1, 2]);
}

#[test]
fn a_lapsed_lease_stops_feeding_at_once_and_a_renewed_one_resumes() {
    let mut r = Readings::new(B, ReadingsConfig::default());
    r.handle(0, authority(B, Some(1_000), Vec::new()));
    r.devices.get_mut(&D).unwrap().cover(0);
    heard(&mut r, 1, 1);
    assign(&mut r, 2, "s");
    r.handle(300, Input::Tick);
    assert_eq!(fed(&heard(&mut r, 500, 2)), vec![2]);
    // The lease runs out: what was fed is checkpointed immediately (no waiting for the
    // interval), and nothing more is fed.
    let out = r.handle(1_000, Input::Tick);
    assert!(
        out.iter().any(|e| matches!(e,
        Effect::Checkpoint { ranges, released, .. } if ranges[0].last == 2 && released.is_empty()))
    );
    assert!(fed(&heard(&mut r, 1_001, 3)).is_empty());
    let out = r.handle(1_002, authority(B, Some(4_000), Vec::new()));
    assert_eq!(fed(&out), vec![3]);
}

#[test]
fn a_takeover_across_a_gap_merges_peers_frames_and_checkpoints_before_feeding() {
    // B takes over after a restart: its watermark is unknown.
    let mut r = Readings::new(B, ReadingsConfig::default());
    r.handle(0, authority(B, None, Vec::new()));
    let out = r.handle(
        1,
        Input::Assign {
            devices: vec![D],
            service: "s".into(),
            reclaim: false,
        },
    );
    let Some(Effect::AskReplay {
        request, devices, ..
    }) = out.first()
    else {
        panic!("{out:?}")
    };
    assert_eq!(devices, &vec![D]);
    // A live frame during the fill waits.
    assert!(fed(&heard(&mut r, 2, 9)).is_empty());
    // A peer relays B's own checkpoint (covered to 5) and the frames it buffered.
    let frames = (4..=8).map(|c| frame(D, c)).collect();
    r.handle(
        3,
        Input::ReplayAnswer {
            request: *request,
            from: C,
            devices: vec![ReplayedDevice { device: D, frames }],
            checkpoints: vec![claim(B, 5, false, 0)],
        },
    );
    let out = r.handle(4, Input::ReplayFinished { request: *request });
    assert_eq!(fed(&out), vec![6, 7, 8, 9]);
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::Assigned { replayed: 4, .. }))
    );
}

#[test]
fn a_full_fill_deadline_ends_the_wait_without_answers() {
    let mut r = Readings::new(B, ReadingsConfig::default());
    r.handle(0, authority(B, None, Vec::new()));
    r.handle(
        1,
        Input::Assign {
            devices: vec![D],
            service: "s".into(),
            reclaim: true,
        },
    );
    heard(&mut r, 2, 1);
    assert!(fed(&r.handle(1_000, Input::Tick)).is_empty());
    let out = r.handle(1_501, Input::Tick);
    assert_eq!(fed(&out), vec![1]);
    // A late answer is counted and its frames ignored.
    r.handle(
        1_600,
        Input::ReplayAnswer {
            request: 1,
            from: C,
            devices: vec![ReplayedDevice {
                device: D,
                frames: vec![frame(D, 0)],
            }],
            checkpoints: Vec::new(),
        },
    );
    assert_eq!(r.counters().late_answers, 1);
}

#[test]
fn checkpoints_cover_what_was_fed_at_the_interval_and_on_release() {
    let mut r = feeding(A);
    heard(&mut r, 10, 2);
    heard(&mut r, 20, 4);
    let out = r.handle(150, Input::Tick);
    assert!(out.iter().all(|e| !matches!(e, Effect::Checkpoint { .. })));
    let out = r.handle(203, Input::Tick);
    let Some(Effect::Checkpoint {
        service,
        ranges,
        frames,
        released,
    }) = out.iter().find(|e| matches!(e, Effect::Checkpoint { .. }))
    else {
        panic!("{out:?}")
    };
    assert_eq!(service, "s");
    assert_eq!(
        ranges,
        &vec![CoveredRange {
            device: D,
            first: 1,
            last: 4,
            count: 3
        }]
    );
    assert_eq!(frames.len(), 3);
    assert!(released.is_empty());
    let out = r.handle(300, Input::Release { devices: vec![D] });
    assert!(out.iter().any(|e| matches!(e,
        Effect::Checkpoint { ranges, released, .. } if ranges.is_empty() && released == &vec![D])));
    assert!(fed(&heard(&mut r, 301, 5)).is_empty());
}

#[test]
fn a_refused_reading_is_not_claimed_as_processed() {
    let mut r = feeding(A);
    heard(&mut r, 10, 2);
    r.handle(
        11,
        Input::FeedRefused {
            service: "s".into(),
            device: D,
            counter: 2,
        },
    );
    let out = r.handle(250, Input::Tick);
    let Some(Effect::Checkpoint { ranges, .. }) =
        out.iter().find(|e| matches!(e, Effect::Checkpoint { .. }))
    else {
        panic!("{out:?}")
    };
    assert_eq!(ranges[0].last, 1);
    assert_eq!(r.counters().feed_refused, 1);
}

#[test]
fn wake_ups_name_the_next_deadline() {
    let mut r = feeding(A);
    let out = heard(&mut r, 10, 2);
    // The checkpoint interval started with the first feed at 3.
    assert!(
        out.iter().any(|e| matches!(e, Effect::WakeAt(203))) || r.last_wake == Some(203),
        "{out:?}"
    );
}

#[test]
fn the_ledger_moving_a_device_away_releases_it_at_once() {
    let mut r = feeding(A);
    heard(&mut r, 10, 2);
    let out = r.handle(20, authority(B, Some(5_000), Vec::new()));
    assert!(out.iter().any(|e| matches!(e,
        Effect::Checkpoint { ranges, released, .. } if ranges[0].last == 2 && released == &vec![D])));
    assert!(fed(&heard(&mut r, 30, 3)).is_empty());
    // A lease running out is not a release: the device may come back.
    let mut r = Readings::new(B, ReadingsConfig::default());
    r.handle(0, authority(B, Some(1_000), Vec::new()));
    assign(&mut r, 1, "s");
    heard(&mut r, 2, 1);
    let out = r.handle(1_000, Input::Tick);
    assert!(out.iter().any(|e| matches!(e,
        Effect::Checkpoint { released, .. } if released.is_empty())));
}
