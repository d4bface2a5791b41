//! How the simulation carries out the machines' effects.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{DEVICES, NODES, STAGE_MS, Sim, Work};
use crate::readings::{self, CheckpointClaim};
use crate::{AuditVerdict, Effect, Input};
use agora_contracts::ledger::TxKind;
use agora_contracts::test_utils::test_cid;

impl Sim {
    /// Runs `work` on node `i` and everything it causes.
    pub(super) fn run(&mut self, i: usize, work: Work) {
        let mut queue: VecDeque<(usize, Work)> = VecDeque::from([(i, work)]);
        let mut budget = 20_000;
        while let Some((i, w)) = queue.pop_front() {
            budget -= 1;
            if budget < 20 {
                let what = match &w {
                    Work::Roles(x) => format!("{x:?}"),
                    Work::Readings(x) => format!("{x:?}"),
                };
                eprintln!("node {i} at {}: {}", self.now, &what[..what.len().min(300)]);
            }
            assert!(budget > 0, "effects do not settle");
            if !self.nodes[i].up {
                continue;
            }
            let now = self.now;
            match w {
                Work::Roles(input) => {
                    for e in self.nodes[i].roles.handle(now, input) {
                        self.roles_effect(i, e, &mut queue);
                    }
                }
                Work::Readings(input) => {
                    for e in self.nodes[i].readings.handle(now, input) {
                        self.readings_effect(i, e, &mut queue);
                    }
                }
            }
        }
    }

    pub(super) fn roles_effect(&mut self, i: usize, e: Effect, q: &mut VecDeque<(usize, Work)>) {
        let now = self.now;
        match e {
            Effect::Submit(tx) => {
                let accepted = self.nodes[i].connected() && {
                    let signer = self.nodes[i].signer.clone();
                    self.chain.admit(now, &signer, tx.clone())
                };
                if accepted && let TxKind::Settle { contract, .. } = &tx {
                    *self.record.settle_requests.entry(*contract).or_default() += 1;
                    self.record.settle_log.push((now, i, *contract));
                }
                q.push_back((i, Work::Roles(Input::Submitted { tx, accepted })));
            }
            Effect::Stage { service, .. } => {
                self.nodes[i].answers.push((
                    now + STAGE_MS,
                    Input::Staged {
                        service,
                        devices: DEVICES.to_vec(),
                    },
                ));
            }
            Effect::Activate {
                service,
                devices,
                reclaim,
            } => {
                let name = service.to_string();
                let n = &mut self.nodes[i];
                n.running.insert(name.clone());
                n.activating.insert(name.clone(), (service, now));
                q.push_back((
                    i,
                    Work::Readings(readings::Input::Assign {
                        devices,
                        service: name,
                        reclaim,
                    }),
                ));
            }
            Effect::StopService { service } => {
                self.nodes[i].running.remove(&service.to_string());
            }
            Effect::YieldDevices { devices } => {
                q.push_back((i, Work::Readings(readings::Input::Release { devices })));
            }
            Effect::Listen { devices, on } => {
                q.push_back((i, Work::Readings(readings::Input::Listen { devices, on })));
            }
            Effect::Watch(n) => *self.nodes[i].watching.entry(n).or_default() += 1,
            Effect::Unwatch(n) => {
                let w = &mut self.nodes[i].watching;
                if let Some(c) = w.get_mut(&n) {
                    *c -= 1;
                    if *c == 0 {
                        w.remove(&n);
                        self.nodes[i].presence.remove(&n);
                    }
                }
            }
            Effect::Meter {
                contract, service, ..
            } => {
                let name = service.to_string();
                let n = &self.nodes[i];
                let processed = n
                    .readings
                    .devices(now)
                    .iter()
                    .filter(|d| DEVICES.contains(&d.device))
                    .map(|d| d.processed)
                    .sum();
                let input = Input::Metered {
                    contract,
                    running: n.running.contains(&name),
                    processed,
                    proofs: n.proofs.get(&name).cloned().unwrap_or_default(),
                };
                q.push_back((i, Work::Roles(input)));
            }
            Effect::Authority(map) => {
                q.push_back((i, Work::Readings(readings::Input::Authority(map))));
            }
            Effect::InstanceRivals { contract } => {
                // The simulated host limits no module's instances (one contract is open at a
                // time): nothing stands in the way of arming.
                let input = Input::InstanceRivals {
                    contract,
                    max: u32::MAX,
                    rivals: Vec::new(),
                };
                q.push_back((i, Work::Roles(input)));
            }
            Effect::TakeCustody { contract, .. } => {
                q.push_back((i, Work::Roles(Input::CustodyTaken { contract })));
            }
            Effect::Challenge { contract, .. } => {
                let verdict = AuditVerdict::Passed;
                q.push_back((i, Work::Roles(Input::AuditAnswer { contract, verdict })));
            }
            Effect::Probe {
                contract,
                provider,
                interval,
                ..
            } => {
                let sees = self.probe_sees(i, provider, contract);
                let answer = if self.liar == Some(i) {
                    Some(!sees.unwrap_or(false))
                } else {
                    sees
                };
                // An unreachable provider does not answer: the machine times the probe out.
                if let Some(up) = answer {
                    let input = Input::ProbeAnswer {
                        contract,
                        interval,
                        up,
                    };
                    q.push_back((i, Work::Roles(input)));
                }
            }
            Effect::Timeline(n) => self.record.notes.push((now, i, n.phase, n.detail)),
            Effect::ReleaseCustody { .. } | Effect::OwnSet(_) | Effect::WakeAt(_) => {}
        }
    }

    pub(super) fn readings_effect(
        &mut self,
        i: usize,
        e: readings::Effect,
        q: &mut VecDeque<(usize, Work)>,
    ) {
        let now = self.now;
        match e {
            readings::Effect::Feed { .. } | readings::Effect::WakeAt(_) => {}
            readings::Effect::Checkpoint {
                service,
                ranges,
                frames,
                released,
            } => {
                self.next_envelope += 1;
                let envelope: Arc<[u8]> =
                    Arc::from(format!("ckpt-{}-{}", i, self.next_envelope).into_bytes());
                let claim = CheckpointClaim {
                    author: self.nodes[i].id,
                    ranges: ranges.clone(),
                    released,
                    at: now,
                    envelope: envelope.clone(),
                };
                self.envelopes.insert(envelope.clone(), claim.clone());
                let published = self.nodes[i].connected();
                for r in &ranges {
                    self.record
                        .published
                        .push((now, i, r.device, r.first, r.last, published));
                }
                for f in &frames {
                    let (Some(d), Some(c)) = (word(f, 0), word(f, 4)) else {
                        continue;
                    };
                    self.record
                        .processed
                        .entry((d, c))
                        .or_default()
                        .push((i, published));
                }
                if !frames.is_empty() {
                    let proof = test_cid(&envelope);
                    self.nodes[i].proofs.entry(service).or_default().push(proof);
                }
                for j in 0..NODES {
                    if j == i || (published && self.nodes[j].connected()) {
                        q.push_back((
                            j,
                            Work::Readings(readings::Input::Checkpoint(claim.clone())),
                        ));
                    }
                }
            }
            readings::Effect::AskReplay {
                request, devices, ..
            } => {
                if self.nodes[i].connected() {
                    let me = self.nodes[i].id;
                    for j in 0..NODES {
                        if j == i || !self.nodes[j].connected() {
                            continue;
                        }
                        let ask = readings::Input::ReplayRequest {
                            from: me,
                            request,
                            devices: devices.clone(),
                        };
                        for a in self.nodes[j].readings.handle(now, ask) {
                            if let readings::Effect::AnswerReplay {
                                devices,
                                checkpoints,
                                ..
                            } = a
                            {
                                let checkpoints = checkpoints
                                    .iter()
                                    .filter_map(|e| self.envelopes.get(e).cloned())
                                    .collect();
                                q.push_back((
                                    i,
                                    Work::Readings(readings::Input::ReplayAnswer {
                                        request,
                                        from: self.nodes[j].id,
                                        devices,
                                        checkpoints,
                                    }),
                                ));
                            }
                        }
                    }
                }
                q.push_back((
                    i,
                    Work::Readings(readings::Input::ReplayFinished { request }),
                ));
            }
            readings::Effect::AnswerReplay { .. } => {}
            readings::Effect::Assigned {
                service, replayed, ..
            } => {
                if let Some((service, started_at)) = self.nodes[i].activating.remove(&service) {
                    q.push_back((
                        i,
                        Work::Roles(Input::ActivationDone {
                            service,
                            started_at,
                            replayed,
                        }),
                    ));
                }
            }
        }
    }
}

fn word(b: &[u8], at: usize) -> Option<u32> {
    let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(w))
}
