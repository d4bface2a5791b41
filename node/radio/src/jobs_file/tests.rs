//! The job file: round trip 0600, refused files, bounds, and a restored job's rule (devices
//! done are kept, the others go on once heard and managed) against the device model.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use agora_devices::{DeviceMeta, Mode, Outcome};

use super::*;
use crate::firmware::JobRequest;

fn meta(id: DeviceId, version: &str, mode: Mode, boots: u32) -> DeviceMeta {
    DeviceMeta {
        id,
        kind: "thermo".into(),
        firmware_type: "agora-sensor".into(),
        version: version.into(),
        locked: false,
        mode,
        boots,
    }
}

fn image() -> Vec<u8> {
    vec![9u8; 3000]
}

/// A table with one job over devices 1..=3 (k = 1): device 1 being told to reboot.
fn running() -> Jobs {
    let mut jobs = Jobs::new(MAX_JOBS_TEST);
    let req = JobRequest {
        selector: "all".into(),
        firmware: "bafkimage".into(),
        version: "2.0.0".into(),
        max_unavailable: 1,
        firmware_type: None,
    };
    let table: Vec<DeviceMeta> = (1..=3)
        .map(|d| meta(d, "1.0.0", Mode::Running, 1))
        .collect();
    let managed = (1..=3).collect();
    jobs.start(
        10,
        &req,
        image(),
        table,
        managed,
        Origin::local([1, 2].into()),
    )
    .unwrap();
    jobs
}

const MAX_JOBS_TEST: usize = 16;

fn write(path: &Path, body: &[u8], mode: u32) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_job_table_persists_0600_and_reloads_with_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("radio-jobs.json");
    assert!(
        load(Some(path.as_path()), 0, MAX_JOBS_TEST).jobs.is_empty(),
        "no file: empty"
    );
    let mut jobs = running();
    assert!(jobs.take_dirty(), "a new job must be saved");
    assert!(!jobs.take_dirty(), "nothing changed since");
    // A tick that changes nothing a restart needs does not ask for a save.
    jobs.tick(20, |d| d.clone(), |_| None);
    assert!(!jobs.take_dirty());
    let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    save(Some(path.as_path()), &jobs, &|d| (d == 1).then_some(addr));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut again = load(Some(path.as_path()), 100, MAX_JOBS_TEST);
    assert_eq!(again.stats.restored, 1);
    assert_eq!(
        again.saved(&|_| None)[0].devices,
        jobs.saved(&|_| None)[0].devices,
        "same records"
    );
    assert_eq!(
        again.hints(),
        vec![(1, addr)],
        "device 1 is asked where it was"
    );
    let view = again.view(1).unwrap();
    assert_eq!(view.restored_at, Some(100));
    assert_eq!(view.waiting_until, Some(100 + RESUME_GRACE_MS));
    assert!(!view.finished);
    assert_eq!(again.images_needed(), vec![(1, "bafkimage".to_string())]);
    assert_eq!(again.next_id, 2, "new jobs do not reuse the id");
    // Image read again: the job waits for its devices, then goes on with device 1 (the one
    // cut mid-attempt), and device 3 not yet.
    again.image_loaded(100, 1, Ok(image()));
    let heard: BTreeMap<DeviceId, DeviceMeta> = [(1, meta(1, "1.0.0", Mode::Bootloader, 2))].into();
    let out = again.tick(200, |d| d.clone(), |d| heard.get(&d).cloned());
    assert!(
        out.is_empty(),
        "devices 2 and 3 not heard yet: still waiting"
    );
    let heard: BTreeMap<DeviceId, DeviceMeta> = (1..=3)
        .map(|d| {
            (
                d,
                meta(
                    d,
                    "1.0.0",
                    if d == 1 {
                        Mode::Bootloader
                    } else {
                        Mode::Running
                    },
                    2,
                ),
            )
        })
        .collect();
    let out = again.tick(300, |d| d.clone(), |d| heard.get(&d).cloned());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 1, "device 1 starts over: {out:?}");
    assert!(again.view(1).unwrap().waiting_until.is_none());
}

#[test]
fn a_restored_job_whose_image_is_gone_or_changed_is_halted() {
    let jobs = running();
    for image in [Err("gone".to_string()), Ok(vec![1u8; 3000])] {
        let mut again = Jobs::new(MAX_JOBS_TEST);
        again.restore(5, jobs.saved(&|_| None));
        again.image_loaded(6, 1, image);
        let v = again.view(1).unwrap();
        assert!(v.finished && v.finished_at == Some(6));
        assert_eq!(v.status.summary.skipped, 3, "halted");
        assert_eq!(again.stats.restore_failed, 1);
    }
}

#[test]
fn a_hostile_job_file_is_refused_or_checked_entry_by_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("radio-jobs.json");
    let good = running().saved(&|_| None);
    let body = serde_json::to_vec(&good).unwrap();
    // Readable by others: refused whole.
    write(&path, &body, 0o644);
    assert!(load(Some(path.as_path()), 1, MAX_JOBS_TEST).jobs.is_empty());
    // Not JSON, or the wrong JSON.
    write(&path, b"\xff{garbage", 0o600);
    assert!(load(Some(path.as_path()), 1, MAX_JOBS_TEST).jobs.is_empty());
    write(&path, b"{\"a\": 1}", 0o600);
    assert!(load(Some(path.as_path()), 1, MAX_JOBS_TEST).jobs.is_empty());
    // Too large: not even read.
    write(
        &path,
        " ".repeat(MAX_FILE_BYTES as usize + 1).as_bytes(),
        0o600,
    );
    assert!(load(Some(path.as_path()), 1, MAX_JOBS_TEST).jobs.is_empty());
    // The good file loads.
    write(&path, &body, 0o600);
    assert_eq!(load(Some(path.as_path()), 1, MAX_JOBS_TEST).jobs.len(), 1);

    // Bad entries dropped and counted, the good one kept.
    let mut entries = Vec::new();
    let bad = |f: &dyn Fn(&mut SavedJob)| {
        let mut s = good[0].clone();
        f(&mut s);
        s
    };
    entries.push(bad(&|s| s.id = 2)); // good, another id
    entries.push(bad(&|s| s.id = 3)); // its devices are in job 2, running: refused
    entries.push(bad(&|s| {
        s.id = 4;
        s.selector = "bogus=1".into();
    }));
    entries.push(bad(&|s| {
        s.id = 5;
        s.firmware.size = MAX_FIRMWARE_BYTES + 1;
    }));
    entries.push(bad(&|s| {
        s.id = 6;
        s.devices.clear();
    }));
    entries.push(bad(&|s| {
        s.id = 7;
        s.devices.push(s.devices[0].clone());
    }));
    entries.push(bad(&|s| {
        s.id = 8;
        s.origin = SavedOrigin::Local { owned: vec![99] };
    }));
    entries.push(bad(&|s| {
        s.id = 9;
        s.firmware.version = "v".repeat(MAX_LABEL_LEN + 1);
    }));
    entries.push(bad(&|s| {
        s.id = 10;
        s.devices[0].attempt = 1000;
    }));
    entries.push(bad(&|s| s.id = 2)); // the same id twice
    write(&path, &serde_json::to_vec(&entries).unwrap(), 0o600);
    let t = load(Some(path.as_path()), 1, MAX_JOBS_TEST);
    assert_eq!(t.jobs.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(t.stats.restored, 1);
    assert_eq!(t.stats.dropped_on_load, 9);

    // More entries than the table holds: the newest kept, the rest counted.
    let many: Vec<SavedJob> = (1..=40u64)
        .map(|id| {
            let mut s = good[0].clone();
            s.id = id;
            s.started_at = id;
            // Finished, so they may share devices.
            for r in &mut s.devices {
                r.outcome = Some(Outcome::Updated { attempts: 1 });
            }
            s
        })
        .collect();
    write(&path, &serde_json::to_vec(&many).unwrap(), 0o600);
    let t = load(Some(path.as_path()), 1, MAX_JOBS_TEST);
    assert_eq!(t.jobs.len(), MAX_JOBS_TEST);
    assert_eq!(t.jobs.keys().next(), Some(&25));
    assert_eq!(t.stats.dropped_on_load, 40 - MAX_JOBS_TEST as u64);
    assert!(t.jobs.values().all(|r| r.finished_at.is_some()));
    assert!(t.images_needed().is_empty(), "finished jobs need no image");
}
