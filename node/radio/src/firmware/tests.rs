//! The runner's bookkeeping, driven against the pure device model
//! ([`agora_devices::agent::DeviceAgent`]) in simulated time.

use std::collections::BTreeMap;

use agora_devices::agent::{self, AgentConfig, DeviceAgent, Faults};
use agora_devices::{Outcome, SkipReason};

use super::*;

const TYPE: &str = "agora-sensor";

fn agent(id: DeviceId, locked: bool, faults: Faults) -> DeviceAgent {
    let cfg = AgentConfig {
        reboot_ms: 50,
        link_bytes_per_s: 1_000_000,
        reading_ms: 0,
    };
    DeviceAgent::new((id, "thermo", TYPE, "1.0.0", locked), cfg, faults, 0)
}

fn request(selector: &str, version: &str, k: usize) -> JobRequest {
    JobRequest {
        selector: selector.into(),
        firmware: "bafkfirmware".into(),
        version: version.into(),
        max_unavailable: k,
        firmware_type: None,
    }
}

/// Devices and the replies they have yet to send, in simulated time.
struct Sim {
    agents: BTreeMap<DeviceId, DeviceAgent>,
    replies: Vec<(Timestamp, DeviceId, agent::Reply)>,
    wakes: BTreeMap<DeviceId, Timestamp>,
    /// Every request the edge sent, per device.
    sent: BTreeMap<DeviceId, Vec<Request>>,
    /// Devices the jobs' holds say are paused now.
    paused: BTreeSet<DeviceId>,
    /// Every pause (`true`) and resume the jobs named, per device, in order.
    holds: BTreeMap<DeviceId, Vec<bool>>,
    /// Every reading the devices sent: frame counter, and whether the device was paused.
    readings: BTreeMap<DeviceId, Vec<(u32, bool)>>,
}

impl Sim {
    fn new(agents: Vec<DeviceAgent>) -> Self {
        Sim {
            agents: agents.into_iter().map(|a| (a.meta().id, a)).collect(),
            replies: Vec::new(),
            wakes: BTreeMap::new(),
            sent: BTreeMap::new(),
            paused: BTreeSet::new(),
            holds: BTreeMap::new(),
            readings: BTreeMap::new(),
        }
    }

    fn table(&self) -> Vec<DeviceMeta> {
        self.agents.values().map(DeviceAgent::meta).collect()
    }

    fn effects(&mut self, id: DeviceId, out: Vec<agent::Effect>) {
        for e in out {
            match e {
                agent::Effect::Reply { at, reply } => self.replies.push((at, id, reply)),
                agent::Effect::WakeAt(t) => {
                    self.wakes.insert(id, t);
                }
                agent::Effect::Reading(c) => {
                    let paused = self.paused.contains(&id);
                    self.readings.entry(id).or_default().push((c, paused));
                }
            }
        }
    }

    /// Applies the jobs' pauses and resumes, as the radio task does before sending.
    fn hold(&mut self, jobs: &mut Jobs) {
        for (id, paused) in jobs.take_holds() {
            self.holds.entry(id).or_default().push(paused);
            if paused {
                self.paused.insert(id);
            } else {
                self.paused.remove(&id);
            }
        }
    }

    fn deliver(&mut self, now: Timestamp, out: Outgoing) {
        for (id, req) in out {
            self.sent.entry(id).or_default().push(req.clone());
            if let Some(a) = self.agents.get_mut(&id) {
                let fx = a.handle(now, agent::Input::Request(req));
                self.effects(id, fx);
            }
        }
    }

    /// Runs until every job is finished (or `limit` ms pass), ticking the jobs every 200 ms.
    fn run(
        &mut self,
        jobs: &mut Jobs,
        managed: &BTreeSet<DeviceId>,
        limit: Timestamp,
    ) -> Timestamp {
        self.run_from(0, jobs, managed, limit)
    }

    /// Lets the devices' own time pass up to `now` (their readings, reboots).
    fn wake(&mut self, now: Timestamp) {
        let due: Vec<DeviceId> = self
            .wakes
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.wakes.remove(&id);
            if let Some(a) = self.agents.get_mut(&id) {
                let fx = a.handle(now, agent::Input::Tick);
                self.effects(id, fx);
            }
        }
    }

    /// [`Self::run`] from `start` ms.
    fn run_from(
        &mut self,
        start: Timestamp,
        jobs: &mut Jobs,
        managed: &BTreeSet<DeviceId>,
        limit: Timestamp,
    ) -> Timestamp {
        let mut now = start;
        while jobs.running() && now < limit {
            now += 10;
            self.wake(now);
            let (ready, later): (Vec<_>, Vec<_>) =
                self.replies.drain(..).partition(|(at, _, _)| *at <= now);
            self.replies = later;
            for (_, id, reply) in ready {
                let (_, out) = jobs.on_reply(now, id, reply);
                self.hold(jobs);
                self.deliver(now, out);
            }
            if now.is_multiple_of(200) {
                let out = jobs.tick(
                    now,
                    |d| d.intersection(managed).copied().collect(),
                    |_| None,
                );
                self.hold(jobs);
                self.deliver(now, out);
            }
        }
        now
    }
}

#[test]
fn a_job_flashes_managed_devices_skips_the_rest_and_rolls_back_a_corrupt_one() {
    let corrupt = Faults {
        corrupt_flash: true,
        fail_boot: false,
    };
    let mut sim = Sim::new(vec![
        agent(1, false, Faults::default()),
        agent(2, false, Faults::default()),
        agent(3, false, corrupt),
        agent(4, true, Faults::default()),
        agent(5, false, Faults::default()),
    ]);
    // 5 is managed by another edge.
    let managed: BTreeSet<DeviceId> = [1, 2, 3, 4].into();
    let image: Vec<u8> = (0..5_000u32).map(|i| (i % 251) as u8).collect();
    let mut jobs = Jobs::new(MAX_JOBS);
    let (started, out) = jobs
        .start(
            0,
            &request("all", "2.0.0", 2),
            image.clone(),
            sim.table(),
            managed.clone(),
            Origin::local(BTreeSet::new()),
        )
        .unwrap();
    assert_eq!((started.id, started.devices), (1, 5));
    sim.deliver(0, out);
    let end = sim.run(&mut jobs, &managed, 600_000);
    assert!(!jobs.running(), "finished within the limit (ran {end} ms)");
    let v = jobs.view(1).unwrap();
    assert!(v.finished && v.finished_at.is_some());
    let s = v.status.summary;
    assert_eq!((s.updated, s.skipped, s.rolled_back, s.lost), (2, 2, 1, 0));
    let outcome = |id| {
        v.status
            .devices
            .iter()
            .find(|d| d.device == id)
            .and_then(|d| d.outcome.clone())
    };
    assert_eq!(outcome(4), Some(Outcome::Skipped(SkipReason::Locked)));
    assert_eq!(outcome(5), Some(Outcome::Skipped(SkipReason::NotManaged)));
    assert!(matches!(outcome(3), Some(Outcome::RolledBack { .. })));
    for id in [1, 2] {
        assert_eq!(sim.agents[&id].version(), "2.0.0");
    }
    assert_eq!(sim.agents[&3].version(), "1.0.0", "rolled back");
    assert!(!sim.sent.contains_key(&4), "locked: never sent a command");
    assert!(
        !sim.sent.contains_key(&5),
        "not managed here: never sent a command"
    );
    // The chunks sent were the image's bytes, at their offsets.
    let mut flashed = vec![0u8; image.len()];
    for r in &sim.sent[&1] {
        if let Request::FlashChunk { offset, data, .. } = r {
            let o = *offset as usize;
            flashed[o..o + data.len()].copy_from_slice(data);
        }
    }
    assert_eq!(flashed, image);
    assert!(jobs.stats.replies_taken > 0);
}

#[test]
fn the_table_is_bounded_evicts_the_oldest_finished_and_refuses_when_all_run() {
    let sim = Sim::new(vec![
        agent(1, false, Faults::default()),
        agent(2, false, Faults::default()),
    ]);
    let managed: BTreeSet<DeviceId> = [1, 2].into();
    let mut jobs = Jobs::new(2);
    jobs.start(
        0,
        &request("id=1", "2.0.0", 1),
        vec![1; 10],
        sim.table(),
        managed.clone(),
        Origin::local(BTreeSet::new()),
    )
    .unwrap();
    jobs.start(
        0,
        &request("id=2", "2.0.0", 1),
        vec![1; 10],
        sim.table(),
        managed.clone(),
        Origin::local(BTreeSet::new()),
    )
    .unwrap();
    // Both running: a third is refused, and counted.
    let err = jobs
        .start(
            0,
            &request("all", "3.0.0", 1),
            vec![1; 10],
            sim.table(),
            managed.clone(),
            Origin::local(BTreeSet::new()),
        )
        .unwrap_err();
    assert!(matches!(err, FirmwareError::TableFull { max: 2 }), "{err}");
    assert_eq!(jobs.stats.refused_full, 1);
    // Job 1 finishes (its device never answers: it is lost after the timeouts).
    for t in 1..=200 {
        jobs.tick(t * 1_000, |d| d.clone(), |_| None);
    }
    assert!(jobs.view(1).unwrap().finished && jobs.view(2).unwrap().finished);
    let (started, _) = jobs
        .start(
            300_000,
            &request("all", "3.0.0", 1),
            vec![1; 10],
            sim.table(),
            managed,
            Origin::local(BTreeSet::new()),
        )
        .unwrap();
    assert_eq!(started.id, 3);
    assert!(jobs.view(1).is_none(), "oldest finished evicted");
    assert!(jobs.view(2).is_some());
    assert_eq!(jobs.stats.evicted, 1);
    assert_eq!(jobs.list().jobs.len(), 2);
}

#[test]
fn a_device_in_a_running_job_is_left_out_of_a_new_one() {
    let sim = Sim::new(vec![
        agent(1, false, Faults::default()),
        agent(2, false, Faults::default()),
    ]);
    let managed: BTreeSet<DeviceId> = [1, 2].into();
    let mut jobs = Jobs::new(4);
    jobs.start(
        0,
        &request("id=1", "2.0.0", 1),
        vec![1; 10],
        sim.table(),
        managed.clone(),
        Origin::local(BTreeSet::new()),
    )
    .unwrap();
    let (second, _) = jobs
        .start(
            0,
            &request("all", "2.0.0", 1),
            vec![1; 10],
            sim.table(),
            managed.clone(),
            Origin::local(BTreeSet::new()),
        )
        .unwrap();
    assert_eq!(second.devices, 1);
    let err = jobs
        .start(
            0,
            &request("id=1", "2.0.0", 1),
            vec![1; 10],
            sim.table(),
            managed,
            Origin::local(BTreeSet::new()),
        )
        .unwrap_err();
    assert!(matches!(err, FirmwareError::NoDevices { .. }), "{err}");
}

#[test]
fn bad_requests_say_what_to_pass() {
    let mut metas = Sim::new(vec![agent(1, false, Faults::default())]).table();
    let mut other = metas[0].clone();
    other.id = 2;
    other.firmware_type = "nrf52".into();
    metas.push(other);
    let managed: BTreeSet<DeviceId> = [1, 2].into();
    let mut jobs = Jobs::new(4);
    let start = |jobs: &mut Jobs, r: JobRequest, image: Vec<u8>| {
        jobs.start(
            0,
            &r,
            image,
            metas.clone(),
            managed.clone(),
            Origin::local(BTreeSet::new()),
        )
    };
    assert!(matches!(
        start(&mut jobs, request("all", "2.0.0", 1), vec![1]),
        Err(FirmwareError::AmbiguousType { .. })
    ));
    assert!(matches!(
        start(&mut jobs, request("colour=red", "2.0.0", 1), vec![1]),
        Err(FirmwareError::Selector(_))
    ));
    assert!(matches!(
        start(&mut jobs, request("id=1", "", 1), vec![1]),
        Err(FirmwareError::Version(_))
    ));
    assert!(matches!(
        start(&mut jobs, request("id=1", "2.0.0", 0), vec![1]),
        Err(FirmwareError::Job(JobError::ZeroUnavailable))
    ));
    assert!(matches!(
        start(&mut jobs, request("id=1", "2.0.0", 1), vec![]),
        Err(FirmwareError::Job(JobError::EmptyImage { .. }))
    ));
    let mut typed = request("all", "2.0.0", 1);
    typed.firmware_type = Some("nrf52".into());
    let (ok, _) = start(&mut jobs, typed, vec![1]).unwrap();
    assert_eq!(ok.devices, 2, "device 1 is reported wrong-type, 2 flashed");
    assert_eq!(jobs.stats.started, 1);
}

#[test]
fn a_job_over_owned_devices_is_handed_to_their_providers_until_kept_then_retired() {
    let mut sim = Sim::new(vec![
        agent(1, false, Faults::default()),
        agent(2, false, Faults::default()),
        agent(3, false, Faults::default()),
    ]);
    let managed: BTreeSet<DeviceId> = [1, 2, 3].into();
    let (b, c) = (NodeId([2; 32]), NodeId([3; 32]));
    let mut jobs = Jobs::new(4);
    let (started, out) = jobs
        .start(
            7,
            &request("all", "2.0.0", 1),
            vec![4; 3_000],
            sim.table(),
            managed.clone(),
            Origin::local([1, 2, 9].into()),
        )
        .unwrap();
    // B provides for device 1, C for device 3 (not this node's: not handed over).
    let providers = |d: &BTreeSet<DeviceId>| -> BTreeSet<NodeId> {
        d.iter()
            .filter_map(|d| match d {
                1 => Some(b),
                3 => Some(c),
                _ => None,
            })
            .collect()
    };
    let due = jobs.handoffs_due(10, providers);
    assert_eq!(due.len(), 1);
    let (job, peer, h) = &due[0];
    assert_eq!((*job, *peer), (started.id, b));
    assert_eq!(
        h.devices,
        vec![1, 2],
        "only devices both in the job and owned here"
    );
    assert_eq!(
        (h.version.as_str(), h.firmware_type.as_str()),
        ("2.0.0", TYPE)
    );
    assert_eq!((h.issued_at, h.max_unavailable, h.finished), (7, 1, false));
    jobs.handoff_answered(started.id, b, true, false);
    assert!(jobs.handoffs_due(100_000, providers).is_empty(), "kept");
    assert_eq!(
        jobs.view(started.id).unwrap().handed_to,
        vec![b.to_string()]
    );
    sim.deliver(7, out);
    sim.run(&mut jobs, &managed, 60_000);
    assert!(jobs.view(started.id).unwrap().finished);
    let due = jobs.handoffs_due(200_000, providers);
    assert_eq!(due.len(), 1);
    assert!(due[0].2.finished, "the provider is told the job is over");
    jobs.handoff_answered(started.id, b, true, true);
    assert!(jobs.handoffs_due(300_000, providers).is_empty());
}

#[test]
fn a_resumed_job_says_whose_it_was_and_is_never_handed_on() {
    let sim = Sim::new(vec![agent(1, false, Faults::default())]);
    let owner = NodeId([1; 32]);
    let mut jobs = Jobs::new(4);
    let (started, _) = jobs
        .start(
            0,
            &request("all", "2.0.0", 1),
            vec![4; 10],
            sim.table(),
            [1].into(),
            Origin::Resumed {
                owner,
                job: 42,
                done: vec![(9, OwnerDone::RolledBack)],
            },
        )
        .unwrap();
    let v = jobs.view(started.id).unwrap();
    assert_eq!(
        v.resumed_from,
        Some(ResumedFrom {
            owner: owner.to_string(),
            job: 42,
            done: vec![(9, OwnerDone::RolledBack)],
        })
    );
    let everyone = |_: &BTreeSet<DeviceId>| -> BTreeSet<NodeId> { [NodeId([2; 32])].into() };
    assert!(jobs.handoffs_due(0, everyone).is_empty());
}

/// The readings pause: a device is paused from before its reboot until it runs a final
/// firmware (updated or rolled back), it sends no reading meanwhile, and its readings go on
/// from the next counter after boot: every counter once, before and after the flash.
#[test]
fn devices_are_paused_while_flashed_and_their_readings_go_on_after_boot() {
    let cfg = AgentConfig {
        reboot_ms: 50,
        link_bytes_per_s: 100_000,
        reading_ms: 40,
    };
    let corrupt = Faults {
        corrupt_flash: true,
        fail_boot: false,
    };
    let make = |id, locked, faults| {
        DeviceAgent::new(
            (id, "thermo", TYPE, "1.0.0", locked),
            cfg.clone(),
            faults,
            0,
        )
    };
    let mut sim = Sim::new(vec![
        make(1, false, Faults::default()),
        make(2, false, corrupt),
        make(3, true, Faults::default()),
    ]);
    for id in [1, 2, 3] {
        sim.wakes.insert(id, cfg.reading_ms);
    }
    // A second of readings before the job.
    for now in (10..=1_000).step_by(10) {
        sim.wake(now);
    }
    let before: BTreeMap<DeviceId, usize> =
        sim.readings.iter().map(|(d, r)| (*d, r.len())).collect();
    assert!(before.values().all(|n| *n >= 20), "{before:?}");
    let managed: BTreeSet<DeviceId> = [1, 2, 3].into();
    let mut jobs = Jobs::new(MAX_JOBS);
    let (_, out) = jobs
        .start(
            1_000,
            &request("all", "2.0.0", 1),
            vec![0x42u8; 8_000],
            sim.table(),
            managed.clone(),
            Origin::local(BTreeSet::new()),
        )
        .unwrap();
    sim.hold(&mut jobs);
    assert!(sim.paused.contains(&1), "paused before its reboot is sent");
    sim.deliver(1_000, out);
    let end = sim.run_from(1_000, &mut jobs, &managed, 600_000);
    assert!(!jobs.running());
    let s = jobs.view(1).unwrap().status.summary;
    assert_eq!((s.updated, s.skipped, s.rolled_back), (1, 1, 1));
    // Readings after the job too.
    for now in (end..end + 1_000).step_by(10) {
        sim.wake(now);
    }
    // Each flashed device paused once, then only resumes (its own, then the job's end).
    for id in [1, 2] {
        let h = &sim.holds[&id];
        assert_eq!(h.first(), Some(&true), "device {id}: {h:?}");
        assert_eq!(h.iter().filter(|p| **p).count(), 1, "device {id}: {h:?}");
        assert!(h.len() >= 2, "device {id} resumed: {h:?}");
    }
    assert!(
        sim.holds.get(&3).is_none_or(|h| h.iter().all(|p| !p)),
        "locked: never paused"
    );
    assert!(sim.paused.is_empty(), "nobody is left paused");
    for id in [1, 2, 3] {
        let r = &sim.readings[&id];
        assert!(
            r.iter().all(|(_, paused)| !paused),
            "device {id} sent while paused: {r:?}"
        );
        let counters: Vec<u32> = r.iter().map(|(c, _)| *c).collect();
        let want: Vec<u32> = (1..=counters.len() as u32).collect();
        assert_eq!(counters, want, "device {id}: every counter once, in order");
        assert!(
            r.len() > before[&id] + 20,
            "device {id}: readings after the job"
        );
    }
}

/// What the owner finished travels with its hand-off: each device's outcome, as it happens,
/// sent again to a provider that already kept an older version, and in the finished version.
#[test]
fn the_owner_s_finished_devices_travel_with_the_hand_off() {
    let corrupt = Faults {
        corrupt_flash: true,
        fail_boot: false,
    };
    let mut sim = Sim::new(vec![
        agent(1, false, Faults::default()),
        agent(2, false, corrupt),
    ]);
    let managed: BTreeSet<DeviceId> = [1, 2].into();
    let b = NodeId([2; 32]);
    let providers = |_: &BTreeSet<DeviceId>| -> BTreeSet<NodeId> { [b].into() };
    let mut jobs = Jobs::new(4);
    let (started, out) = jobs
        .start(
            0,
            &request("all", "2.0.0", 1),
            vec![4; 3_000],
            sim.table(),
            managed.clone(),
            Origin::local([1, 2].into()),
        )
        .unwrap();
    sim.deliver(0, out);
    let mut sent: Vec<(bool, Vec<(DeviceId, OwnerDone)>)> = Vec::new();
    let mut now = 0;
    while jobs.running() && now < 600_000 {
        for (job, peer, h) in jobs.handoffs_due(now, providers) {
            sent.push((h.finished, h.done.clone()));
            jobs.handoff_answered(job, peer, true, h.finished);
        }
        now = sim.run_from(now, &mut jobs, &managed, now + 100);
    }
    for (job, peer, h) in jobs.handoffs_due(now, providers) {
        sent.push((h.finished, h.done.clone()));
        jobs.handoff_answered(job, peer, true, h.finished);
    }
    assert_eq!(jobs.view(started.id).unwrap().status.summary.rolled_back, 1);
    assert_eq!(
        sent,
        vec![
            (false, vec![]),
            (false, vec![(1, OwnerDone::Updated)]),
            (
                true,
                vec![(1, OwnerDone::Updated), (2, OwnerDone::RolledBack)]
            ),
        ],
        "first the request, then again once device 1 was updated, then the finished version"
    );
}
