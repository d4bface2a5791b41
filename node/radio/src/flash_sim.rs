//! A fleet flashed in simulated time (issue #16's benchmark): `edges` edges, each running this
//! crate's job driver (the same `Jobs` the radio task runs: selection, waves, chunks cut from
//! the image, resends, verify, boot, rollback) over its share of `devices` simulated devices
//! ([`DeviceAgent`]: reboot time, flash writes taking size / link rate). No sockets: a request
//! reaches its device at once and a reply reaches its edge at the time the device model says,
//! so the result is the time the protocol and the link rate impose, without network delay or
//! loss; the wall-clock time it takes to compute is the cost of driving the jobs.
//!
//! Behind `test-utils`: `cargo bench -p agora-radio --features test-utils --bench flash`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use agora_devices::agent::{self, AgentConfig, DeviceAgent, Faults, Reply};
use agora_devices::{DeviceId, DeviceMeta};
use agora_market::Timestamp;

use crate::firmware::{JobRequest, Jobs, MAX_JOBS, Origin, Outgoing};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Edges; device `i` belongs to edge `i % edges`.
    pub edges: usize,
    /// Devices.
    pub devices: usize,
    /// Image size, bytes.
    pub image_bytes: usize,
    /// Devices' timings (link rate, reboot time).
    pub agent: AgentConfig,
    /// `--max-unavailable` of each edge's job.
    pub max_unavailable: usize,
    /// The radio's tick (`radio.checkpoint_ms`), ms.
    pub tick_ms: u64,
    /// Simulated time after which the run gives up, ms.
    pub limit_ms: u64,
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetRun {
    /// Simulated time until every edge's job finished (or the limit), ms.
    pub sim_ms: Timestamp,
    /// Devices updated, rolled back, lost, still pending at the end.
    pub updated: usize,
    /// Rolled back.
    pub rolled_back: usize,
    /// Lost.
    pub lost: usize,
    /// Not finished when the limit came.
    pub pending: usize,
    /// Requests the edges sent, replies they took.
    pub requests: u64,
    /// Replies taken.
    pub replies: u64,
}

enum Event {
    /// A device's own time (a reboot ends).
    Wake(DeviceId),
    /// A device's reply reaches its edge.
    Reply(DeviceId, Reply),
    /// An edge's radio tick.
    Tick(usize),
}

/// Events by time, in the order they were scheduled at equal times.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(Timestamp, u64)>>,
    events: BTreeMap<u64, Event>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: Timestamp, e: Event) {
        self.seq += 1;
        self.events.insert(self.seq, e);
        self.heap.push(Reverse((at, self.seq)));
    }

    fn pop(&mut self) -> Option<(Timestamp, Event)> {
        let Reverse((at, id)) = self.heap.pop()?;
        Some((at, self.events.remove(&id)?))
    }

    /// Schedules a device's effects.
    fn device(&mut self, now: Timestamp, device: DeviceId, fx: Vec<agent::Effect>) {
        for f in fx {
            match f {
                agent::Effect::Reply { at, reply } => {
                    self.push(at.max(now), Event::Reply(device, reply));
                }
                agent::Effect::WakeAt(at) if at > now => self.push(at, Event::Wake(device)),
                _ => {}
            }
        }
    }
}

struct Edge {
    jobs: Jobs,
    managed: BTreeSet<DeviceId>,
    job: u64,
}

/// Runs one fleet to the end (or `limit_ms`).
pub fn flash_fleet(cfg: &FleetConfig) -> FleetRun {
    let edges = cfg.edges.max(1);
    let mut agents: BTreeMap<DeviceId, DeviceAgent> = (0..cfg.devices)
        .map(|i| {
            let id = 1 + i as DeviceId;
            let meta = (id, "thermo", "agora-sensor", "1.0.0", false);
            (
                id,
                DeviceAgent::new(meta, cfg.agent.clone(), Faults::default(), 0),
            )
        })
        .collect();
    let edge_of = |d: DeviceId| (d as usize - 1) % edges;
    let image: Vec<u8> = (0..cfg.image_bytes).map(|i| (i % 251) as u8).collect();
    let mut q = Queue::default();
    let mut run = FleetRun::default();
    let mut fleet: Vec<Edge> = Vec::new();
    let mut outgoing: Vec<(usize, Outgoing)> = Vec::new();
    for e in 0..edges {
        let table: Vec<DeviceMeta> = agents
            .values()
            .map(DeviceAgent::meta)
            .filter(|m| edge_of(m.id) == e)
            .collect();
        let managed: BTreeSet<DeviceId> = table.iter().map(|m| m.id).collect();
        let mut jobs = Jobs::new(MAX_JOBS);
        let req = JobRequest {
            selector: "all".into(),
            firmware: "bafkbench".into(),
            version: "2.0.0".into(),
            max_unavailable: cfg.max_unavailable,
            firmware_type: None,
        };
        let job = match jobs.start(
            0,
            &req,
            image.clone(),
            table,
            managed.clone(),
            Origin::local(BTreeSet::new()),
        ) {
            Ok((started, out)) => {
                outgoing.push((e, out));
                started.id
            }
            Err(_) => 0,
        };
        q.push(cfg.tick_ms, Event::Tick(e));
        fleet.push(Edge { jobs, managed, job });
    }
    let mut now: Timestamp = 0;
    loop {
        // Requests reach their devices at once; their effects are scheduled.
        for (_, out) in outgoing.drain(..) {
            for (device, req) in out {
                run.requests += 1;
                if let Some(a) = agents.get_mut(&device) {
                    q.device(now, device, a.handle(now, agent::Input::Request(req)));
                }
            }
        }
        if fleet.iter().all(|e| !e.jobs.running()) || now >= cfg.limit_ms {
            break;
        }
        let Some((at, ev)) = q.pop() else {
            break;
        };
        now = at;
        match ev {
            Event::Wake(device) => {
                if let Some(a) = agents.get_mut(&device) {
                    q.device(now, device, a.handle(now, agent::Input::Tick));
                }
            }
            Event::Reply(device, reply) => {
                let e = edge_of(device);
                let (taken, out) = fleet[e].jobs.on_reply(now, device, reply);
                run.replies += u64::from(taken);
                outgoing.push((e, out));
            }
            Event::Tick(e) => {
                let edge = &mut fleet[e];
                if edge.jobs.running() {
                    let managed = edge.managed.clone();
                    let out = edge.jobs.tick(
                        now,
                        |d| d.intersection(&managed).copied().collect(),
                        |_| None,
                    );
                    outgoing.push((e, out));
                    q.push(now + cfg.tick_ms.max(1), Event::Tick(e));
                }
            }
        }
    }
    run.sim_ms = now;
    for edge in &fleet {
        if let Some(v) = edge.jobs.view(edge.job) {
            let s = v.status.summary;
            run.updated += s.updated;
            run.rolled_back += s.rolled_back;
            run.lost += s.lost;
            run.pending += s.pending;
        }
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_fleet_is_flashed_in_the_time_the_link_rate_says() {
        let cfg = FleetConfig {
            edges: 2,
            devices: 6,
            image_bytes: 10_000,
            agent: AgentConfig {
                reboot_ms: 100,
                link_bytes_per_s: 10_000,
                reading_ms: 0,
            },
            max_unavailable: 1,
            tick_ms: 200,
            limit_ms: 600_000,
        };
        let run = flash_fleet(&cfg);
        assert_eq!((run.updated, run.pending, run.lost), (6, 0, 0), "{run:?}");
        // 3 devices per edge, one at a time: each at least 1 s of writes and two reboots.
        assert!(run.sim_ms >= 3 * 1_200, "{run:?}");
        assert!(run.sim_ms < 3 * 1_200 * 2, "{run:?}");
        // Twice as many at once per edge: about half the time.
        let twice = flash_fleet(&FleetConfig {
            max_unavailable: 3,
            ..cfg
        });
        assert_eq!(twice.updated, 6);
        assert!(
            twice.sim_ms * 2 < run.sim_ms + 1_000,
            "{twice:?} vs {run:?}"
        );
    }
}
