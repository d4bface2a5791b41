//! Replays between edges: answering a peer that takes devices over, and merging the answers
//! when this edge takes devices over after a gap.

use std::collections::BTreeSet;
use std::sync::Arc;

use agora_market::{NodeId, Timestamp};

use super::{CheckpointClaim, Effect, Frame, Readings, ReplayedDevice};

impl Readings {
    /// What this edge heard of `devices` above its watermark (oldest first, bounded), and the
    /// signed checkpoints it keeps about them, so the asker can check who covered what.
    pub(super) fn answer_replay(&self, to: NodeId, request: u64, devices: &[u32]) -> Effect {
        let mut envelopes: BTreeSet<Arc<[u8]>> = BTreeSet::new();
        let mut answered = Vec::new();
        let mut asked: Vec<u32> = devices.to_vec();
        asked.sort();
        asked.dedup();
        for device in asked.into_iter().take(self.cfg.max_replay_devices) {
            let Some(d) = self.devices.get(&device) else {
                continue;
            };
            for k in d.claims() {
                envelopes.extend(k.envelopes().cloned());
            }
            let frames = d
                .buffer_iter()
                .take(self.cfg.max_replay_frames)
                .map(|(counter, bytes)| Frame {
                    device,
                    counter: *counter,
                    bytes: bytes.clone(),
                })
                .collect();
            answered.push(ReplayedDevice { device, frames });
        }
        Effect::AnswerReplay {
            to,
            request,
            devices: answered,
            checkpoints: envelopes.into_iter().collect(),
        }
    }

    /// Merges a peer's answer: its checkpoints under the usual trust rules, and its frames
    /// into the buffers of the devices being taken over.
    pub(super) fn on_replay_answer(
        &mut self,
        request: u64,
        devices: Vec<ReplayedDevice>,
        checkpoints: Vec<CheckpointClaim>,
    ) {
        for c in checkpoints {
            self.on_checkpoint(c);
        }
        let Some(fill) = self.fills.get(&request) else {
            self.counters.late_answers += 1;
            return;
        };
        let wanted = fill.devices.clone();
        let (cap, gap, max_frames) = (
            self.cfg.buffer_per_device,
            self.cfg.max_counter_gap,
            self.cfg.max_replay_frames,
        );
        for rd in devices {
            if !wanted.contains(&rd.device) {
                continue;
            }
            let Some(d) = self.devices.get_mut(&rd.device) else {
                continue;
            };
            for f in rd.frames.into_iter().take(max_frames) {
                if f.device != rd.device || d.covered(f.counter) || d.buffered(f.counter) {
                    continue;
                }
                d.heard_max = Some(d.heard_max.map_or(f.counter, |h| h.max(f.counter)));
                if d.buffer_insert(f.counter, f.bytes, cap) {
                    self.counters.evicted_frames += 1;
                }
            }
            if d.resolve_parked(gap) {
                self.counters.implausible_checkpoints += 1;
            }
        }
    }

    /// Ends a takeover's wait for replays: feeds what may be fed and reports the assignment.
    pub(super) fn finish_fill(&mut self, now: Timestamp, request: u64, out: &mut Vec<Effect>) {
        let Some(fill) = self.fills.remove(&request) else {
            return;
        };
        for d in &fill.devices {
            if let Some(dev) = self.devices.get_mut(d)
                && dev.filling == Some(request)
            {
                dev.filling = None;
            }
        }
        let mut replayed = 0;
        for d in &fill.devices {
            replayed += self.drain(*d, now, None, out);
        }
        out.push(Effect::Assigned {
            service: fill.service,
            devices: fill.devices,
            replayed,
        });
    }
}
