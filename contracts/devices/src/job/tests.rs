//! One test per rule of the firmware job (see the module doc).

use std::collections::BTreeSet;

use super::*;
use crate::meta::Mode;

const T: u64 = 1_000; // step timeout
const C: u64 = 100; // chunk timeout

fn meta(id: DeviceId, version: &str, mode: Mode, boots: u32) -> DeviceMeta {
    DeviceMeta {
        id,
        kind: "thermo".into(),
        firmware_type: "esp32".into(),
        version: version.into(),
        locked: false,
        mode,
        boots,
    }
}

fn image() -> Vec<u8> {
    vec![7u8; 250]
}

fn fw() -> Firmware {
    Firmware {
        cid: "bafyimage".into(),
        hash: *blake3::hash(&image()).as_bytes(),
        size: 250,
        firmware_type: "esp32".into(),
        version: "2.0".into(),
    }
}

fn cfg(k: usize, attempts: u32) -> JobConfig {
    JobConfig {
        max_unavailable: k,
        max_attempts: attempts,
        chunk_size: 100,
        step_timeout_ms: T,
        chunk_timeout_ms: C,
        max_chunk_resends: 1,
    }
}

fn job(table: Vec<DeviceMeta>, k: usize, attempts: u32) -> FirmwareJob {
    let managed = table.iter().map(|m| m.id).collect();
    FirmwareJob::new(
        1,
        fw(),
        &Selector::default(),
        cfg(k, attempts),
        table,
        managed,
    )
    .unwrap()
}

fn sent(out: &[Effect]) -> Vec<(DeviceId, Command)> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Send { device, command } => Some((*device, command.clone())),
            _ => None,
        })
        .collect()
}

fn done(out: &[Effect]) -> Vec<(DeviceId, Outcome)> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Done { device, outcome } => Some((*device, outcome.clone())),
            _ => None,
        })
        .collect()
}

/// Takes device `id` (told to reboot, boot counter `boots`) through a clean flash up to the
/// boot command; returns the time.
fn flash_to_boot(j: &mut FirmwareJob, mut now: u64, id: DeviceId, boots: u32) -> u64 {
    now += 10;
    let out = j.handle(
        now,
        Input::Discovered(meta(id, "1.0", Mode::Bootloader, boots + 1)),
    );
    assert_eq!(
        sent(&out),
        vec![(
            id,
            Command::FlashChunk {
                index: 0,
                offset: 0,
                len: 100
            }
        )]
    );
    for index in 0..3 {
        now += 10;
        let out = j.handle(now, Input::ChunkAck { device: id, index });
        let want = match index {
            0 => Command::FlashChunk {
                index: 1,
                offset: 100,
                len: 100,
            },
            1 => Command::FlashChunk {
                index: 2,
                offset: 200,
                len: 50,
            },
            _ => Command::Verify,
        };
        assert_eq!(sent(&out), vec![(id, want)]);
    }
    now += 10;
    let out = j.handle(
        now,
        Input::Hash {
            device: id,
            hash: fw().hash,
        },
    );
    assert_eq!(
        sent(&out),
        vec![(
            id,
            Command::Boot {
                version: "2.0".into()
            }
        )]
    );
    now
}

#[test]
fn a_device_goes_reboot_flash_verify_boot_and_is_updated() {
    let mut j = job(vec![meta(1, "1.0", Mode::Running, 4)], 1, 2);
    let out = j.handle(0, Input::Start);
    // Paused before it is told to reboot: its readings stop counting first.
    assert_eq!(out.first(), Some(&Effect::Pause(1)));
    assert_eq!(sent(&out), vec![(1, Command::RebootToBootloader)]);
    assert!(out.contains(&Effect::WakeAt(T)));
    assert!(j.is_unavailable(1));
    let now = flash_to_boot(&mut j, 0, 1, 4);
    let out = j.handle(
        now + 10,
        Input::Discovered(meta(1, "2.0", Mode::Running, 6)),
    );
    assert!(out.contains(&Effect::Resume(1)));
    assert_eq!(done(&out), vec![(1, Outcome::Updated { attempts: 1 })]);
    let summary = Summary {
        total: 1,
        updated: 1,
        ..Summary::default()
    };
    assert!(out.contains(&Effect::Finished(summary)));
    assert!(j.finished() && !j.is_unavailable(1));
}

#[test]
fn locked_other_type_and_current_devices_are_skipped_and_never_sent_anything() {
    let mut locked = meta(1, "1.0", Mode::Running, 1);
    locked.locked = true;
    let mut other = meta(2, "1.0", Mode::Running, 1);
    other.firmware_type = "nrf52".into();
    let current = meta(3, "2.0", Mode::Running, 1);
    let mut j = job(vec![locked, other, current], 1, 2);
    let out = j.handle(0, Input::Start);
    assert!(sent(&out).is_empty());
    assert_eq!(
        done(&out),
        vec![
            (1, Outcome::Skipped(SkipReason::Locked)),
            (
                2,
                Outcome::Skipped(SkipReason::WrongType {
                    firmware_type: "nrf52".into()
                })
            ),
            (3, Outcome::Skipped(SkipReason::AlreadyCurrent)),
        ]
    );
    assert!(j.finished());
    assert_eq!(j.summary().skipped, 3);
}

#[test]
fn a_device_locked_before_its_turn_is_skipped_then() {
    let mut j = job(
        vec![
            meta(1, "1.0", Mode::Running, 1),
            meta(2, "1.0", Mode::Running, 1),
        ],
        1,
        1,
    );
    j.handle(0, Input::Start);
    let mut m = meta(2, "1.0", Mode::Running, 1);
    m.locked = true;
    j.handle(1, Input::Discovered(m));
    let now = flash_to_boot(&mut j, 1, 1, 1);
    let out = j.handle(now, Input::Discovered(meta(1, "2.0", Mode::Running, 3)));
    assert_eq!(
        done(&out).last(),
        Some(&(2, Outcome::Skipped(SkipReason::Locked)))
    );
    assert!(
        sent(&out).is_empty(),
        "the locked device is never sent a command"
    );
}

#[test]
fn at_most_max_unavailable_devices_are_taken_down_at_once() {
    let table = (1..=5).map(|i| meta(i, "1.0", Mode::Running, 1)).collect();
    let mut j = job(table, 2, 1);
    let out = j.handle(0, Input::Start);
    assert_eq!(
        sent(&out),
        vec![
            (1, Command::RebootToBootloader),
            (2, Command::RebootToBootloader)
        ]
    );
    assert_eq!(j.unavailable(), 2);
    let now = flash_to_boot(&mut j, 0, 1, 1);
    // Device 1 back on the new version: device 3 starts, never more than 2 down.
    let out = j.handle(now, Input::Discovered(meta(1, "2.0", Mode::Running, 3)));
    assert_eq!(sent(&out), vec![(3, Command::RebootToBootloader)]);
    assert_eq!(j.unavailable(), 2);
}

#[test]
fn devices_this_edge_does_not_manage_are_skipped() {
    let table = vec![
        meta(1, "1.0", Mode::Running, 1),
        meta(2, "1.0", Mode::Running, 1),
    ];
    let mut j = FirmwareJob::new(
        1,
        fw(),
        &Selector::default(),
        cfg(2, 1),
        table,
        BTreeSet::from([1]),
    )
    .unwrap();
    let out = j.handle(0, Input::Start);
    assert_eq!(sent(&out), vec![(1, Command::RebootToBootloader)]);
    assert_eq!(
        done(&out),
        vec![(2, Outcome::Skipped(SkipReason::NotManaged))]
    );
}

#[test]
fn the_ledger_taking_a_device_away_before_its_turn_skips_it() {
    let table = vec![
        meta(1, "1.0", Mode::Running, 1),
        meta(2, "1.0", Mode::Running, 1),
    ];
    let mut j = job(table, 1, 1);
    j.handle(0, Input::Start);
    j.handle(1, Input::Managed(BTreeSet::from([1])));
    let now = flash_to_boot(&mut j, 1, 1, 1);
    let out = j.handle(now, Input::Discovered(meta(1, "2.0", Mode::Running, 3)));
    assert_eq!(
        done(&out).last(),
        Some(&(2, Outcome::Skipped(SkipReason::NotManaged)))
    );
}

#[test]
fn stale_announcements_and_stray_acks_change_nothing_and_are_counted() {
    let mut j = job(vec![meta(1, "1.0", Mode::Running, 4)], 1, 1);
    j.handle(0, Input::Start);
    // The announcement of the boot before the reboot (same counter): not a rediscovery.
    let out = j.handle(1, Input::Discovered(meta(1, "1.0", Mode::Running, 4)));
    assert!(sent(&out).is_empty());
    // An older boot.
    j.handle(2, Input::Discovered(meta(1, "1.0", Mode::Bootloader, 3)));
    // Acks and hashes nobody asked for, a device outside the job.
    j.handle(
        3,
        Input::ChunkAck {
            device: 1,
            index: 0,
        },
    );
    j.handle(
        4,
        Input::Hash {
            device: 1,
            hash: fw().hash,
        },
    );
    j.handle(5, Input::Discovered(meta(99, "1.0", Mode::Bootloader, 9)));
    assert_eq!(j.status().ignored_replies, 5);
    assert_eq!(j.status().devices[0].step, Step::Rebooting);
    // A duplicate ack during flashing.
    j.handle(6, Input::Discovered(meta(1, "1.0", Mode::Bootloader, 5)));
    j.handle(
        7,
        Input::ChunkAck {
            device: 1,
            index: 0,
        },
    );
    let out = j.handle(
        8,
        Input::ChunkAck {
            device: 1,
            index: 0,
        },
    );
    assert!(sent(&out).is_empty());
    assert_eq!(j.status().devices[0].chunks_done, 1);
    assert_eq!(j.status().ignored_replies, 6);
}

#[test]
fn a_lost_chunk_is_sent_again_then_the_attempt_starts_over() {
    let mut j = job(vec![meta(1, "1.0", Mode::Running, 1)], 1, 2);
    j.handle(0, Input::Start);
    j.handle(10, Input::Discovered(meta(1, "1.0", Mode::Bootloader, 2)));
    let out = j.handle(10 + C, Input::Tick);
    assert_eq!(
        sent(&out),
        vec![(
            1,
            Command::FlashChunk {
                index: 0,
                offset: 0,
                len: 100
            }
        )]
    );
    let out = j.handle(10 + 2 * C, Input::Tick);
    assert_eq!(sent(&out), vec![(1, Command::RebootToBootloader)]);
    let st = j.status();
    assert_eq!(st.devices[0].attempt, 2);
    assert_eq!(
        st.devices[0].last_failure,
        Some(FailReason::Timeout(Step::Flashing))
    );
}

#[test]
fn a_wrong_hash_is_retried_then_rolled_back_and_reported_failed() {
    let mut j = job(vec![meta(1, "1.0", Mode::Running, 1)], 1, 2);
    j.handle(0, Input::Start);
    let mut boots = 1;
    for attempt in 1..=2 {
        boots += 1;
        j.handle(
            10,
            Input::Discovered(meta(1, "1.0", Mode::Bootloader, boots)),
        );
        for index in 0..3 {
            j.handle(20, Input::ChunkAck { device: 1, index });
        }
        let out = j.handle(
            30,
            Input::Hash {
                device: 1,
                hash: [0; 32],
            },
        );
        let want = if attempt == 1 {
            Command::RebootToBootloader
        } else {
            Command::Rollback
        };
        assert_eq!(sent(&out), vec![(1, want)], "attempt {attempt}");
    }
    assert!(j.is_unavailable(1));
    let out = j.handle(
        40,
        Input::Discovered(meta(1, "1.0", Mode::Running, boots + 1)),
    );
    assert!(out.contains(&Effect::Resume(1)));
    assert_eq!(
        done(&out),
        vec![(
            1,
            Outcome::RolledBack {
                last: FailReason::HashMismatch,
                attempts: 2
            }
        )]
    );
    let s = j.summary();
    assert_eq!((s.rolled_back, s.failed()), (1, 1));
}

#[test]
fn coming_back_on_the_old_version_after_boot_is_a_failed_attempt() {
    let mut j = job(vec![meta(1, "1.0", Mode::Running, 1)], 1, 2);
    j.handle(0, Input::Start);
    let now = flash_to_boot(&mut j, 0, 1, 1);
    let out = j.handle(now, Input::Discovered(meta(1, "1.0", Mode::Running, 3)));
    assert_eq!(sent(&out), vec![(1, Command::RebootToBootloader)]);
    assert_eq!(
        j.status().devices[0].last_failure,
        Some(FailReason::BootedOld {
            version: "1.0".into()
        })
    );
    // Stuck in the bootloader after boot: also a failure.
    let now = flash_to_boot(&mut j, now, 1, 3);
    let out = j.handle(now, Input::Discovered(meta(1, "1.0", Mode::Bootloader, 5)));
    assert_eq!(sent(&out), vec![(1, Command::Rollback)]);
    assert_eq!(
        j.status().devices[0].last_failure,
        Some(FailReason::StuckInBootloader)
    );
}

#[test]
fn a_device_that_never_returns_is_lost_and_the_job_halts_at_max_unavailable() {
    let table = (1..=3).map(|i| meta(i, "1.0", Mode::Running, 1)).collect();
    let mut j = job(table, 1, 1);
    j.handle(0, Input::Start);
    // No reboot announcement: attempt fails, rollback is sent, then sent again, then lost.
    assert_eq!(
        sent(&j.handle(T, Input::Tick)),
        vec![(1, Command::Rollback)]
    );
    let out = j.handle(2 * T, Input::Tick);
    assert_eq!(
        done(&out),
        vec![
            (
                1,
                Outcome::Lost {
                    last: FailReason::Timeout(Step::Rebooting)
                }
            ),
            (2, Outcome::Skipped(SkipReason::Halted)),
            (3, Outcome::Skipped(SkipReason::Halted)),
        ]
    );
    assert!(sent(&out).is_empty());
    assert!(j.is_unavailable(1), "a lost device stays unavailable");
    assert!(j.finished());
    assert_eq!(j.summary().lost, 1);
}

#[test]
fn jobs_that_cannot_run_are_refused_with_the_reason() {
    let make = |f: Firmware, c: JobConfig| {
        FirmwareJob::new(1, f, &Selector::default(), c, vec![], BTreeSet::new()).err()
    };
    let empty = Firmware { size: 0, ..fw() };
    assert_eq!(
        make(empty, cfg(1, 1)),
        Some(JobError::EmptyImage {
            cid: "bafyimage".into()
        })
    );
    assert_eq!(make(fw(), cfg(0, 1)), Some(JobError::ZeroUnavailable));
    assert_eq!(make(fw(), cfg(1, 0)), Some(JobError::ZeroAttempts));
    let big = JobConfig {
        chunk_size: MAX_CHUNK + 1,
        ..cfg(1, 1)
    };
    assert_eq!(make(fw(), big), Some(JobError::ChunkSize(MAX_CHUNK + 1)));
    let huge = Firmware {
        size: u64::MAX,
        ..fw()
    };
    assert!(matches!(
        make(huge, cfg(1, 1)),
        Some(JobError::TooLarge { .. })
    ));
}

#[test]
fn the_selector_picks_the_job_s_devices() {
    let table = (1..=6).map(|i| meta(i, "1.0", Mode::Running, 1));
    let sel = Selector::parse("id=2-3,id=5").unwrap();
    let j = FirmwareJob::new(1, fw(), &sel, cfg(1, 1), table, BTreeSet::new()).unwrap();
    let ids: Vec<_> = j.status().devices.iter().map(|d| d.device).collect();
    assert_eq!(ids, vec![2, 3, 5]);
}

#[test]
fn a_device_updated_before_its_turn_is_skipped_as_current() {
    // A job resumed after a handover: device 2 was updated meanwhile (by the edge that ran the
    // job before), after this job's table was built.
    let mut j = job(
        vec![
            meta(1, "1.0", Mode::Running, 1),
            meta(2, "1.0", Mode::Running, 1),
        ],
        1,
        1,
    );
    j.handle(0, Input::Start);
    j.handle(1, Input::Discovered(meta(2, "2.0", Mode::Running, 3)));
    let now = flash_to_boot(&mut j, 1, 1, 1);
    let out = j.handle(now, Input::Discovered(meta(1, "2.0", Mode::Running, 3)));
    assert_eq!(
        done(&out).last(),
        Some(&(2, Outcome::Skipped(SkipReason::AlreadyCurrent)))
    );
    assert!(sent(&out).is_empty(), "device 2 is not flashed again");
    assert_eq!(j.summary().updated, 1);
    assert!(j.finished());
}

#[test]
fn a_device_caught_in_its_bootloader_is_flashed_again_from_the_start() {
    // The edge that ran the job before a handover died mid-flash: the device sits in its
    // bootloader with part of the image. A job resumed on the new manager reboots it (which
    // clears the staging slot) and flashes it whole.
    let mut j = job(vec![meta(1, "1.0", Mode::Bootloader, 4)], 1, 2);
    let out = j.handle(0, Input::Start);
    assert_eq!(sent(&out), vec![(1, Command::RebootToBootloader)]);
    let now = flash_to_boot(&mut j, 0, 1, 4);
    let out = j.handle(now, Input::Discovered(meta(1, "2.0", Mode::Running, 6)));
    assert_eq!(
        done(&out),
        vec![(1, Outcome::Updated { attempts: 1 })],
        "one attempt on this edge"
    );
}

/// Job over devices 1, 2, 3 (k = 1): device 1 updated, device 2 flashed up to chunk 1 when
/// the edge stops; device 3 not reached. Returns the records that survive.
fn records_cut_mid_flash() -> Vec<SlotRecord> {
    let table = (1..=3).map(|d| meta(d, "1.0", Mode::Running, 4)).collect();
    let mut j = job(table, 1, 2);
    j.handle(0, Input::Start);
    let now = flash_to_boot(&mut j, 0, 1, 4);
    let out = j.handle(
        now + 10,
        Input::Discovered(meta(1, "2.0", Mode::Running, 6)),
    );
    assert_eq!(sent(&out), vec![(2, Command::RebootToBootloader)]);
    j.handle(
        now + 20,
        Input::Discovered(meta(2, "1.0", Mode::Bootloader, 5)),
    );
    j.handle(
        now + 30,
        Input::ChunkAck {
            device: 2,
            index: 0,
        },
    );
    j.records()
}

fn restored(records: Vec<SlotRecord>) -> FirmwareJob {
    let mut j = FirmwareJob::restore(1, fw(), cfg(1, 2), records).unwrap();
    j.handle(0, Input::Managed((1..=3).collect()));
    j
}

#[test]
fn a_restored_job_keeps_finished_devices_and_restarts_the_interrupted_one() {
    let records = records_cut_mid_flash();
    assert_eq!(records[0].outcome, Some(Outcome::Updated { attempts: 1 }));
    assert_eq!((records[1].attempt, records[1].outcome.clone()), (1, None));
    assert_eq!((records[2].attempt, records[2].outcome.clone()), (0, None));
    let mut j = restored(records);
    assert!(!j.finished());
    assert_eq!(j.summary().updated, 1, "history kept");
    // Device 2 sits in its bootloader with part of the image: its steps start over, under the
    // same attempt number; device 1 is never sent anything again.
    j.handle(1, Input::Discovered(meta(2, "1.0", Mode::Bootloader, 5)));
    let out = j.handle(2, Input::Start);
    assert_eq!(out.first(), Some(&Effect::Pause(2)));
    assert_eq!(sent(&out), vec![(2, Command::RebootToBootloader)]);
    let now = flash_to_boot(&mut j, 2, 2, 5);
    let out = j.handle(
        now + 10,
        Input::Discovered(meta(2, "2.0", Mode::Running, 7)),
    );
    assert_eq!(done(&out), vec![(2, Outcome::Updated { attempts: 1 })]);
    assert_eq!(sent(&out), vec![(3, Command::RebootToBootloader)]);
    let status = j.status();
    assert_eq!(
        status.devices[1].previous_version, "1.0",
        "rollback target kept"
    );
    let now = flash_to_boot(&mut j, now + 10, 3, 4);
    let out = j.handle(
        now + 10,
        Input::Discovered(meta(3, "2.0", Mode::Running, 6)),
    );
    assert_eq!(done(&out), vec![(3, Outcome::Updated { attempts: 1 })]);
    assert!(j.finished());
    assert_eq!(j.summary().updated, 3);
}

#[test]
fn a_device_that_booted_the_image_while_the_edge_was_down_is_updated_not_skipped() {
    let mut j = restored(records_cut_mid_flash());
    j.handle(1, Input::Discovered(meta(2, "2.0", Mode::Running, 7)));
    let out = j.handle(2, Input::Start);
    assert_eq!(done(&out), vec![(2, Outcome::Updated { attempts: 1 })]);
    // Device 3 (never reached) on the version already is current, not updated by this job.
    j.handle(3, Input::Discovered(meta(3, "2.0", Mode::Running, 5)));
    let mut j2 = restored(records_cut_mid_flash());
    j2.handle(1, Input::Discovered(meta(3, "2.0", Mode::Running, 5)));
    let out = j2.handle(2, Input::Start);
    assert_eq!(
        done(&out),
        vec![(3, Outcome::Skipped(SkipReason::AlreadyCurrent))]
    );
}

#[test]
fn a_restored_job_whose_devices_are_all_done_is_finished_and_sends_nothing() {
    let mut records = records_cut_mid_flash();
    records[1].outcome = Some(Outcome::Skipped(SkipReason::Locked));
    records[2].outcome = Some(Outcome::Skipped(SkipReason::Halted));
    let mut j = restored(records);
    assert!(j.finished());
    let out = j.handle(5, Input::Start);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(j.summary().pending, 0);
}

#[test]
fn restored_records_are_checked_like_outside_input() {
    let good = records_cut_mid_flash();
    let restore = |r: Vec<SlotRecord>| FirmwareJob::restore(1, fw(), cfg(1, 2), r).err();
    assert_eq!(restore(Vec::new()), Some(RestoreError::Devices(0)));
    let many: Vec<SlotRecord> = (0..=restore::MAX_RESTORED_DEVICES as u32)
        .map(|d| SlotRecord {
            meta: meta(d, "1.0", Mode::Running, 1),
            ..good[2].clone()
        })
        .collect();
    assert_eq!(
        restore(many),
        Some(RestoreError::Devices(restore::MAX_RESTORED_DEVICES + 1))
    );
    let mut dup = good.clone();
    dup.push(good[0].clone());
    assert_eq!(restore(dup), Some(RestoreError::Duplicate(1)));
    let mut attempts = good.clone();
    attempts[1].attempt = 3;
    assert_eq!(restore(attempts), Some(RestoreError::Attempts(2, 3)));
    let mut label = good.clone();
    label[2].previous_version = "x".repeat(crate::MAX_LABEL_LEN + 1);
    assert_eq!(restore(label), Some(RestoreError::Label(3)));
    let bad_job = FirmwareJob::restore(1, fw(), cfg(0, 2), good.clone()).err();
    assert_eq!(bad_job, Some(RestoreError::Job(JobError::ZeroUnavailable)));
    assert!(restore(good).is_none());
}
