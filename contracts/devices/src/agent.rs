//! A device's endpoints as a pure state machine: the model the devnet's simulated devices wrap
//! and the firmware job's property tests run against.
//!
//! Two firmware slots (A/B): the device runs from the active one and is flashed into the other,
//! so its previous firmware survives a bad flash. Entering the bootloader from a running
//! firmware remembers that slot as the fallback a rollback returns to. A reboot takes the device
//! offline for [`AgentConfig::reboot_ms`] (requests are lost meanwhile); it then announces its
//! metadata with a higher boot counter, which is how an edge rediscovers it. Writing a chunk
//! takes `len / link_bytes_per_s`, so flashing takes time proportional to the image size. It
//! sends readings only while running, and its frame counter survives reboots.
//!
//! Faults (for tests and `agora devnet devices`): `corrupt_flash` flips a bit of every chunk it
//! writes (the hash check catches it), `fail_boot` makes every boot of a new image fall back to
//! the active slot (the device comes back on its old version).

use agora_market::Timestamp;
use serde::{Deserialize, Serialize};

use super::meta::{DeviceId, DeviceMeta, Mode};

/// Largest image a simulated device accepts (bytes).
pub const MAX_IMAGE: u64 = 4 * 1024 * 1024;

/// Timings of a simulated device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// How long a reboot takes, ms.
    pub reboot_ms: u64,
    /// Flash link rate, bytes per second (at least 1).
    pub link_bytes_per_s: u64,
    /// Interval between readings while running, ms (0: none).
    pub reading_ms: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            reboot_ms: 500,
            // 250 kbit/s, a LoRa-2.4 GHz / BLE-class link.
            link_bytes_per_s: 31_250,
            reading_ms: 1_000,
        }
    }
}

/// Faults a simulated device injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Every written chunk is corrupted.
    pub corrupt_flash: bool,
    /// Every boot of a new image falls back to the active slot.
    pub fail_boot: bool,
}

/// A request from an edge (the endpoint protocol).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Report metadata.
    Metadata,
    /// Reboot into the bootloader.
    RebootToBootloader,
    /// Write `data` at `offset` of the inactive slot (bootloader only).
    FlashChunk {
        /// Chunk index (echoed).
        index: u32,
        /// Offset.
        offset: u64,
        /// Bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Report the hash of the inactive slot (bootloader only).
    Verify,
    /// Boot the inactive slot; it will report `version` (a real bootloader reads it from the
    /// image header; the model takes the label).
    Boot {
        /// Version label.
        version: String,
    },
    /// Return to the fallback slot and reboot into it.
    Rollback,
    /// Move the device's working key to `epoch` (key rotation, threats R1/R2). Taken by the
    /// device's key layer, not the firmware model: only sealed under the device's root key,
    /// only to a higher epoch.
    Rekey {
        /// New epoch.
        epoch: u32,
    },
}

/// A device's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Metadata (also announced unasked after every boot).
    Meta(DeviceMeta),
    /// A chunk was written.
    ChunkAck {
        /// Chunk index.
        index: u32,
    },
    /// BLAKE3 hash of the inactive slot.
    Hash([u8; 32]),
    /// The device's working key is the one of `epoch` now (answer to [`Request::Rekey`], and
    /// to a rekey to the epoch it is at already).
    Rekeyed {
        /// Epoch.
        epoch: u32,
    },
}

/// What happens to a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// An edge's request.
    Request(Request),
    /// Time passed.
    Tick,
}

/// What a device does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `reply` to the edges in range at `at` (not before).
    Reply {
        /// When.
        at: Timestamp,
        /// What.
        reply: Reply,
    },
    /// Send a reading with this frame counter.
    Reading(u32),
    /// Deliver [`Input::Tick`] at or after this time.
    WakeAt(Timestamp),
}

/// One image slot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Image {
    version: String,
}

/// Where the device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Power {
    Up(Mode),
    /// Rebooting until `until`, then in `then`; `boot_new`: a boot of the staged image.
    Rebooting {
        until: Timestamp,
        then: Mode,
        boot_new: bool,
    },
}

/// A simulated device.
#[derive(Clone, Debug)]
pub struct DeviceAgent {
    id: DeviceId,
    kind: String,
    firmware_type: String,
    locked: bool,
    cfg: AgentConfig,
    faults: Faults,
    slots: [Option<Image>; 2],
    active: usize,
    fallback: usize,
    staging: Vec<u8>,
    staged_version: Option<String>,
    power: Power,
    boots: u32,
    counter: u32,
    next_reading: Option<Timestamp>,
    busy_until: Timestamp,
    /// Requests lost while rebooting or refused in the wrong mode.
    pub dropped_requests: u64,
}

impl DeviceAgent {
    /// A device running `version` of `firmware_type` since `now`.
    pub fn new(
        meta: (DeviceId, &str, &str, &str, bool),
        cfg: AgentConfig,
        faults: Faults,
        now: Timestamp,
    ) -> Self {
        let (id, kind, firmware_type, version, locked) = meta;
        let next_reading = (cfg.reading_ms > 0).then(|| now.saturating_add(cfg.reading_ms));
        Self {
            id,
            kind: kind.into(),
            firmware_type: firmware_type.into(),
            locked,
            cfg,
            faults,
            slots: [
                Some(Image {
                    version: version.into(),
                }),
                None,
            ],
            active: 0,
            fallback: 0,
            staging: Vec::new(),
            staged_version: None,
            power: Power::Up(Mode::Running),
            boots: 1,
            counter: 0,
            next_reading,
            busy_until: now,
            dropped_requests: 0,
        }
    }

    /// What the device says about itself.
    pub fn meta(&self) -> DeviceMeta {
        DeviceMeta {
            id: self.id,
            kind: self.kind.clone(),
            firmware_type: self.firmware_type.clone(),
            version: self.version(),
            locked: self.locked,
            mode: match self.power {
                Power::Up(m) => m,
                Power::Rebooting { .. } => Mode::Bootloader,
            },
            boots: self.boots,
        }
    }

    /// Version of the active slot.
    pub fn version(&self) -> String {
        self.slots
            .get(self.active)
            .and_then(|s| s.as_ref())
            .map(|i| i.version.clone())
            .unwrap_or_default()
    }

    /// Whether it runs a firmware (and so sends readings).
    pub fn running(&self) -> bool {
        self.power == Power::Up(Mode::Running)
    }

    /// Last frame counter sent.
    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// Applies one input at `now`.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        self.on_time(now, &mut out);
        if let Input::Request(r) = input {
            self.on_request(now, r, &mut out);
        }
        if let Some(at) = self.next_wake() {
            out.push(Effect::WakeAt(at));
        }
        out
    }

    fn next_wake(&self) -> Option<Timestamp> {
        match self.power {
            Power::Rebooting { until, .. } => Some(until),
            Power::Up(Mode::Running) => self.next_reading,
            Power::Up(Mode::Bootloader) => None,
        }
    }

    fn on_time(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        if let Power::Rebooting {
            until,
            then,
            boot_new,
        } = self.power
            && now >= until
        {
            if boot_new && !self.faults.fail_boot {
                let target = 1 - self.active;
                if let Some(version) = self.staged_version.take()
                    && let Some(slot) = self.slots.get_mut(target)
                {
                    *slot = Some(Image { version });
                    self.active = target;
                }
            }
            self.staging.clear();
            self.staged_version = None;
            self.power = Power::Up(then);
            self.boots = self.boots.saturating_add(1);
            self.busy_until = now;
            if then == Mode::Running && self.cfg.reading_ms > 0 {
                self.next_reading = Some(now.saturating_add(self.cfg.reading_ms));
            }
            out.push(Effect::Reply {
                at: now,
                reply: Reply::Meta(self.meta()),
            });
        }
        if self.running()
            && let Some(at) = self.next_reading
            && now >= at
        {
            self.counter = self.counter.saturating_add(1);
            out.push(Effect::Reading(self.counter));
            self.next_reading = Some(now.saturating_add(self.cfg.reading_ms.max(1)));
        }
    }

    fn reboot(&mut self, now: Timestamp, then: Mode, boot_new: bool) {
        self.power = Power::Rebooting {
            until: now.saturating_add(self.cfg.reboot_ms),
            then,
            boot_new,
        };
    }

    fn on_request(&mut self, now: Timestamp, r: Request, out: &mut Vec<Effect>) {
        let Power::Up(mode) = self.power else {
            self.dropped_requests += 1;
            return;
        };
        match (r, mode) {
            (Request::Metadata, _) => out.push(Effect::Reply {
                at: now,
                reply: Reply::Meta(self.meta()),
            }),
            (Request::RebootToBootloader, _) => {
                if mode == Mode::Running {
                    self.fallback = self.active;
                }
                self.reboot(now, Mode::Bootloader, false);
            }
            (Request::Rollback, _) => {
                self.active = self.fallback;
                self.reboot(now, Mode::Running, false);
            }
            (
                Request::FlashChunk {
                    index,
                    offset,
                    mut data,
                },
                Mode::Bootloader,
            ) => {
                let end = offset.saturating_add(data.len() as u64);
                let (Ok(start), Ok(end_us)) = (usize::try_from(offset), usize::try_from(end))
                else {
                    self.dropped_requests += 1;
                    return;
                };
                if end > MAX_IMAGE {
                    self.dropped_requests += 1;
                    return;
                }
                if self.faults.corrupt_flash
                    && let Some(b) = data.first_mut()
                {
                    *b ^= 0x01;
                }
                if self.staging.len() < end_us {
                    self.staging.resize(end_us, 0);
                }
                if let Some(dst) = self.staging.get_mut(start..end_us) {
                    dst.copy_from_slice(&data);
                }
                let rate = self.cfg.link_bytes_per_s.max(1);
                let write_ms = (data.len() as u64).saturating_mul(1000).div_ceil(rate);
                self.busy_until = self.busy_until.max(now).saturating_add(write_ms);
                out.push(Effect::Reply {
                    at: self.busy_until,
                    reply: Reply::ChunkAck { index },
                });
            }
            (Request::Verify, Mode::Bootloader) => out.push(Effect::Reply {
                at: self.busy_until.max(now),
                reply: Reply::Hash(*blake3::hash(&self.staging).as_bytes()),
            }),
            (Request::Boot { version }, Mode::Bootloader) => {
                let new = !self.staging.is_empty();
                if new {
                    self.staged_version = Some(version);
                }
                self.reboot(now, Mode::Running, new);
            }
            _ => self.dropped_requests += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(faults: Faults) -> DeviceAgent {
        let cfg = AgentConfig {
            reboot_ms: 100,
            link_bytes_per_s: 1_000,
            reading_ms: 50,
        };
        DeviceAgent::new((7, "thermo", "esp32", "1.0", false), cfg, faults, 0)
    }

    fn meta_of(out: &[Effect]) -> Option<DeviceMeta> {
        out.iter().find_map(|e| match e {
            Effect::Reply {
                reply: Reply::Meta(m),
                ..
            } => Some(m.clone()),
            _ => None,
        })
    }

    /// Reboot, flash `image`, verify, boot; returns the hash reported and the final meta.
    fn flash(a: &mut DeviceAgent, image: &[u8]) -> ([u8; 32], DeviceMeta, Timestamp) {
        let mut now = 10;
        a.handle(now, Input::Request(Request::RebootToBootloader));
        assert!(!a.running());
        now += 100;
        let m = meta_of(&a.handle(now, Input::Tick)).unwrap();
        assert_eq!((m.mode, m.boots), (Mode::Bootloader, 2));
        let mut acked_at = now;
        for (i, c) in image.chunks(100).enumerate() {
            let out = a.handle(
                now,
                Input::Request(Request::FlashChunk {
                    index: i as u32,
                    offset: (i * 100) as u64,
                    data: c.to_vec(),
                }),
            );
            match out.first() {
                Some(Effect::Reply {
                    at,
                    reply: Reply::ChunkAck { index },
                }) => {
                    assert_eq!(*index, i as u32);
                    acked_at = *at;
                }
                other => panic!("no ack: {other:?}"),
            }
        }
        // 1000 B/s: 100 ms per 100-byte chunk, back to back.
        assert_eq!(acked_at, now + image.len() as u64);
        let hash = match a.handle(acked_at, Input::Request(Request::Verify)).first() {
            Some(Effect::Reply {
                reply: Reply::Hash(h),
                ..
            }) => *h,
            other => panic!("no hash: {other:?}"),
        };
        now = acked_at;
        a.handle(
            now,
            Input::Request(Request::Boot {
                version: "2.0".into(),
            }),
        );
        now += 100;
        let m = meta_of(&a.handle(now, Input::Tick)).unwrap();
        (hash, m, now)
    }

    #[test]
    fn a_good_flash_boots_the_new_version_and_takes_time_by_size() {
        let mut a = agent(Faults::default());
        let image = vec![5u8; 350];
        let (hash, m, _) = flash(&mut a, &image);
        assert_eq!(hash, *blake3::hash(&image).as_bytes());
        assert_eq!(
            (m.mode, m.version.as_str(), m.boots),
            (Mode::Running, "2.0", 3)
        );
    }

    #[test]
    fn a_corrupt_flash_reports_another_hash_and_rollback_restores_the_old_slot() {
        let mut a = agent(Faults {
            corrupt_flash: true,
            ..Faults::default()
        });
        let image = vec![5u8; 200];
        let (hash, m, now) = flash(&mut a, &image);
        assert_ne!(hash, *blake3::hash(&image).as_bytes());
        // The model boots what it was told to; the job never does after a bad hash.
        assert_eq!(m.version, "2.0");
        a.handle(now, Input::Request(Request::Rollback));
        let m = meta_of(&a.handle(now + 100, Input::Tick)).unwrap();
        assert_eq!((m.mode, m.version.as_str()), (Mode::Running, "1.0"));
    }

    #[test]
    fn a_failing_boot_comes_back_on_the_old_version() {
        let mut a = agent(Faults {
            fail_boot: true,
            ..Faults::default()
        });
        let (_, m, _) = flash(&mut a, &[1u8; 100]);
        assert_eq!((m.mode, m.version.as_str()), (Mode::Running, "1.0"));
    }

    #[test]
    fn requests_are_lost_while_rebooting_and_chunks_refused_while_running() {
        let mut a = agent(Faults::default());
        let chunk = Request::FlashChunk {
            index: 0,
            offset: 0,
            data: vec![1],
        };
        assert!(
            a.handle(1, Input::Request(chunk.clone()))
                .iter()
                .all(|e| matches!(e, Effect::WakeAt(_)))
        );
        a.handle(2, Input::Request(Request::RebootToBootloader));
        a.handle(3, Input::Request(Request::Metadata));
        assert_eq!(a.dropped_requests, 2);
        // Beyond the largest image: refused, nothing allocated.
        a.handle(200, Input::Tick);
        a.handle(
            201,
            Input::Request(Request::FlashChunk {
                index: 0,
                offset: MAX_IMAGE,
                data: vec![1],
            }),
        );
        assert_eq!(a.dropped_requests, 3);
        assert!(a.staging.is_empty());
    }

    #[test]
    fn readings_stop_while_offline_and_the_counter_survives_reboots() {
        let mut a = agent(Faults::default());
        let readings = |out: Vec<Effect>| {
            out.into_iter()
                .filter_map(|e| match e {
                    Effect::Reading(c) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(readings(a.handle(50, Input::Tick)), vec![1]);
        a.handle(60, Input::Request(Request::RebootToBootloader));
        assert!(readings(a.handle(100, Input::Tick)).is_empty());
        assert!(
            readings(a.handle(500, Input::Tick)).is_empty(),
            "bootloader sends none"
        );
        a.handle(501, Input::Request(Request::Rollback));
        a.handle(601, Input::Tick);
        assert_eq!(readings(a.handle(651, Input::Tick)), vec![2]);
    }
}
