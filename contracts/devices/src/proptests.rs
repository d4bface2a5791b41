//! Property tests: a firmware job driving simulated devices ([`super::agent`]) over a network
//! that delays (and, in the second property, drops) every message. Invariants: never more than
//! `max_unavailable` devices down; a locked device is never sent a command; a device that is
//! offline or in its bootloader is always one the job counts as unavailable (so none of its
//! readings count) and no reading is counted twice; every device ends updated, skipped or
//! rolled back — and its real firmware agrees with what the job reports.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::agent::{self, AgentConfig, DeviceAgent, Faults, Reply, Request};
use super::job::{Command, Effect, FailReason, FirmwareJob, Input, JobConfig, Outcome, SkipReason};
use super::meta::{DeviceId, Firmware, Selector};

const STEP_TIMEOUT: u64 = 1_000;
const MAX_DELAY: u64 = 20;

#[derive(Clone, Debug)]
enum Ev {
    ToDevice(DeviceId, Request),
    ToEdge(DeviceId, Reply),
    Reading(DeviceId, u32),
    DeviceTick(DeviceId),
    JobTick,
}

/// One device of a scenario.
#[derive(Clone, Copy, Debug)]
struct Spec {
    locked: bool,
    faults: Faults,
}

struct World {
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    agents: BTreeMap<DeviceId, DeviceAgent>,
    job: FirmwareJob,
    image: Vec<u8>,
    rng: StdRng,
    drop_pct: u32,
    k: usize,
    locked: BTreeSet<DeviceId>,
    sent_to_locked: usize,
    counted: BTreeMap<DeviceId, BTreeSet<u32>>,
    violation: Option<String>,
}

impl World {
    fn new(specs: &[Spec], k: usize, attempts: u32, size: usize, seed: u64, drop_pct: u32) -> Self {
        let image: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let firmware = Firmware {
            cid: "bafyfw".into(),
            hash: *blake3::hash(&image).as_bytes(),
            size: size as u64,
            firmware_type: "esp32".into(),
            version: "2.0".into(),
        };
        let acfg = AgentConfig {
            reboot_ms: 100,
            link_bytes_per_s: 10_000,
            reading_ms: 50,
        };
        let agents: BTreeMap<DeviceId, DeviceAgent> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let id = i as DeviceId + 1;
                let a = DeviceAgent::new(
                    (id, "thermo", "esp32", "1.0", s.locked),
                    acfg.clone(),
                    s.faults,
                    0,
                );
                (id, a)
            })
            .collect();
        let cfg = JobConfig {
            max_unavailable: k,
            max_attempts: attempts,
            chunk_size: 256,
            step_timeout_ms: STEP_TIMEOUT,
            chunk_timeout_ms: 200,
            max_chunk_resends: 3,
        };
        let table: Vec<_> = agents.values().map(DeviceAgent::meta).collect();
        let managed = agents.keys().copied().collect();
        let job = FirmwareJob::new(7, firmware, &Selector::default(), cfg, table, managed)
            .expect("valid job");
        let locked = agents
            .iter()
            .filter(|(_, a)| a.meta().locked)
            .map(|(id, _)| *id)
            .collect();
        let mut w = World {
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            agents,
            job,
            image,
            rng: StdRng::seed_from_u64(seed),
            drop_pct,
            k,
            locked,
            sent_to_locked: 0,
            counted: BTreeMap::new(),
            violation: None,
        };
        for id in w.agents.keys().copied().collect::<Vec<_>>() {
            w.at(0, Ev::DeviceTick(id));
        }
        let out = w.job.handle(0, Input::Start);
        w.job_effects(out);
        w
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    /// Over the network: delayed, maybe dropped.
    fn send(&mut self, t: u64, ev: Ev) {
        if self.rng.gen_range(0..100) < self.drop_pct {
            return;
        }
        let d = self.rng.gen_range(0..=MAX_DELAY);
        self.at(t + d, ev);
    }

    fn job_effects(&mut self, out: Vec<Effect>) {
        for e in out {
            match e {
                Effect::Send { device, command } => {
                    if self.locked.contains(&device) {
                        self.sent_to_locked += 1;
                    }
                    let req = match command {
                        Command::RebootToBootloader => Request::RebootToBootloader,
                        Command::FlashChunk { index, offset, len } => {
                            let s = offset as usize;
                            let data = self.image[s..s + len as usize].to_vec();
                            Request::FlashChunk {
                                index,
                                offset,
                                data,
                            }
                        }
                        Command::Verify => Request::Verify,
                        Command::Boot { version } => Request::Boot { version },
                        Command::Rollback => Request::Rollback,
                    };
                    self.send(self.now, Ev::ToDevice(device, req));
                }
                Effect::WakeAt(t) => self.at(t.max(self.now), Ev::JobTick),
                Effect::Pause(_)
                | Effect::Resume(_)
                | Effect::Done { .. }
                | Effect::Finished(_) => {}
            }
        }
    }

    fn agent_effects(&mut self, id: DeviceId, out: Vec<agent::Effect>) {
        for e in out {
            match e {
                agent::Effect::Reply { at, reply } => self.send(at, Ev::ToEdge(id, reply)),
                agent::Effect::Reading(c) => self.send(self.now, Ev::Reading(id, c)),
                agent::Effect::WakeAt(t) => self.at(t, Ev::DeviceTick(id)),
            }
        }
    }

    fn step(&mut self) -> bool {
        let Some(((t, _), ev)) = self.queue.pop_first() else {
            return false;
        };
        self.now = t;
        match ev {
            Ev::ToDevice(id, req) => {
                let out = match self.agents.get_mut(&id) {
                    Some(a) => a.handle(t, agent::Input::Request(req)),
                    None => vec![],
                };
                self.agent_effects(id, out);
            }
            Ev::DeviceTick(id) => {
                let out = match self.agents.get_mut(&id) {
                    Some(a) => a.handle(t, agent::Input::Tick),
                    None => vec![],
                };
                self.agent_effects(id, out);
            }
            Ev::ToEdge(id, reply) => {
                let input = match reply {
                    Reply::Meta(m) => Input::Discovered(m),
                    Reply::ChunkAck { index } => Input::ChunkAck { device: id, index },
                    Reply::Hash(hash) => Input::Hash { device: id, hash },
                    Reply::Rekeyed { .. } => return true,
                };
                let out = self.job.handle(t, input);
                self.job_effects(out);
            }
            Ev::JobTick => {
                let out = self.job.handle(t, Input::Tick);
                self.job_effects(out);
            }
            Ev::Reading(id, c) => {
                // The edge counts a reading only from a device the job has not taken down.
                if !self.job.is_unavailable(id) && !self.counted.entry(id).or_default().insert(c) {
                    self.fail(format!("reading {c} of device {id} counted twice"));
                }
            }
        }
        self.check();
        true
    }

    fn fail(&mut self, v: String) {
        if self.violation.is_none() {
            self.violation = Some(format!("at {}: {v}", self.now));
        }
    }

    fn check(&mut self) {
        if self.job.unavailable() > self.k {
            let n = self.job.unavailable();
            self.fail(format!("{n} devices unavailable, max {}", self.k));
        }
        let down: Vec<DeviceId> = self
            .agents
            .iter()
            .filter(|(id, a)| !a.running() && !self.job.is_unavailable(**id))
            .map(|(id, _)| *id)
            .collect();
        if let Some(id) = down.first() {
            self.fail(format!(
                "device {id} is down but the job counts it available"
            ));
        }
        if self.sent_to_locked > 0 {
            self.fail("a locked device was sent a command".into());
        }
    }

    /// Runs until the job is finished and a step timeout more passed (or a long horizon).
    fn run(&mut self) {
        let horizon = 10 * 60 * 1_000;
        let mut finished_at = None;
        while self.now < horizon && self.step() {
            if finished_at.is_none() && self.job.finished() {
                finished_at = Some(self.now);
            }
            if finished_at.is_some_and(|f| self.now > f + STEP_TIMEOUT) {
                break;
            }
        }
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    (0u8..10, any::<bool>()).prop_map(|(roll, locked)| Spec {
        locked: locked && roll < 3,
        faults: Faults {
            corrupt_flash: roll == 8,
            fail_boot: roll == 9,
        },
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A reliable but reordering network: every outcome is determined by the device.
    #[test]
    fn every_device_ends_updated_skipped_or_rolled_back(
        specs in proptest::collection::vec(spec(), 1..12),
        k in 1usize..4,
        attempts in 1u32..3,
        size in 1usize..2_000,
        seed in any::<u64>(),
    ) {
        let mut w = World::new(&specs, k, attempts, size, seed, 0);
        w.run();
        prop_assert_eq!(w.violation.take(), None);
        prop_assert!(w.job.finished(), "job did not finish: {:?}", w.job.summary());
        let status = w.job.status();
        for (p, s) in status.devices.iter().zip(&specs) {
            let a = &w.agents[&p.device];
            let outcome = p.outcome.clone();
            let want = if s.locked {
                Outcome::Skipped(SkipReason::Locked)
            } else if s.faults.corrupt_flash {
                Outcome::RolledBack { last: FailReason::HashMismatch, attempts }
            } else if s.faults.fail_boot {
                Outcome::RolledBack {
                    last: FailReason::BootedOld { version: "1.0".into() },
                    attempts,
                }
            } else {
                Outcome::Updated { attempts: 1 }
            };
            prop_assert_eq!(outcome, Some(want.clone()), "device {}", p.device);
            let version = if matches!(want, Outcome::Updated { .. }) { "2.0" } else { "1.0" };
            prop_assert!(a.running(), "device {} left down", p.device);
            prop_assert_eq!(a.version(), version, "device {}", p.device);
        }
        // Every unlocked device kept sending readings once done, and none was counted twice
        // (checked as they arrived).
        let s = status.summary;
        prop_assert_eq!(s.updated + s.skipped + s.rolled_back, specs.len());
    }

    /// A lossy network: devices may be lost, but the job still finishes, keeps its bounds,
    /// and reports what the devices really run.
    #[test]
    fn on_a_lossy_network_the_job_keeps_its_bounds_and_reports_the_truth(
        specs in proptest::collection::vec(spec(), 1..10),
        k in 1usize..4,
        attempts in 1u32..4,
        size in 1usize..2_000,
        seed in any::<u64>(),
        drop_pct in 1u32..15,
    ) {
        let mut w = World::new(&specs, k, attempts, size, seed, drop_pct);
        w.run();
        prop_assert_eq!(w.violation.take(), None);
        prop_assert!(w.job.finished(), "job did not finish: {:?}", w.job.summary());
        for p in w.job.status().devices {
            let a = &w.agents[&p.device];
            match p.outcome {
                Some(Outcome::Updated { .. }) => {
                    prop_assert!(a.running() && a.version() == "2.0", "device {}", p.device)
                }
                Some(Outcome::RolledBack { .. }) => {
                    prop_assert!(a.running() && a.version() == "1.0", "device {}", p.device)
                }
                Some(Outcome::Skipped(_)) => {
                    prop_assert!(a.running() && a.version() == "1.0", "device {}", p.device)
                }
                Some(Outcome::Lost { .. }) => {}
                None => prop_assert!(false, "device {} not done", p.device),
            }
        }
    }
}

/// Simulated time of a job with a 256 KiB image (10 kB/s link, 256-byte chunks, 0–20 ms
/// per message each way) as the number of devices grows at `max_unavailable` 2: waves of 2,
/// so it grows linearly with the number of devices. Prints the figures (simulated, not wall
/// time).
#[test]
fn a_256k_job_takes_waves_of_max_unavailable() {
    let spec = Spec {
        locked: false,
        faults: Faults::default(),
    };
    let mut times = Vec::new();
    for n in [2usize, 4, 8] {
        let mut w = World::new(&vec![spec; n], 2, 1, 256 * 1024, 1, 0);
        let mut done_at = None;
        while w.step() {
            if w.job.finished() {
                done_at = Some(w.now);
                break;
            }
        }
        assert_eq!(w.violation.take(), None);
        assert_eq!(w.job.summary().updated, n);
        let t = done_at.expect("finished");
        eprintln!(
            "256 KiB job, {n} devices, max-unavailable 2: {:.1} s simulated",
            t as f64 / 1000.0
        );
        times.push(t);
    }
    // At least the pure write time per wave (26.2 s at 10 kB/s), and one wave per 2 devices.
    assert!(times[0] >= 26_214);
    assert!(
        times[1] > times[0] * 3 / 2 && times[2] > times[1] * 3 / 2,
        "{times:?}"
    );
}
