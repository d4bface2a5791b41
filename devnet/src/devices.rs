//! Simulated devices with endpoints (issue #16, `agora devnet devices`): each wraps the pure
//! [`DeviceAgent`] in a UDP socket of its own (its source address is how an edge answers it),
//! sends readings to every edge in range while running, answers the endpoint protocol
//! (`agora_wire::radio::endpoint`) and announces its metadata after every boot — to every edge
//! in range, as a radio would. A device with a key takes only requests sealed under it with a
//! rising counter (threat R2; `Metadata` excepted) and counts the ones it refuses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_devices::agent::{self, AgentConfig, DeviceAgent, Faults};
use agora_devices::{DeviceId, DeviceMeta};
use agora_radio::DeviceKey;
use agora_wire::radio::endpoint::{MAX_SEALED_LEN, encode_reply, open_keyed_request, open_request};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::demo::Region;

/// Firmware type the devnet's devices take.
pub const FIRMWARE_TYPE: &str = "agora-sensor";
/// Firmware version they start with.
pub const START_VERSION: &str = "1.0.0";

/// One simulated device.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    /// Id.
    pub id: DeviceId,
    /// Kind.
    pub kind: String,
    /// Locked by its owner.
    pub locked: bool,
    /// Faults it injects.
    pub faults: Faults,
    /// Root key, if any: its uplinks are v2 frames and its requests sealed under the working
    /// key of its epoch (which starts at 0), rekeys under the root itself.
    pub key: Option<DeviceKey>,
}

/// `count` devices from `first`, the last `locked` of them locked, the first `corrupt`
/// unlocked ones corrupting their flash and the next `fail_boot` failing to boot.
pub fn specs(
    first: DeviceId,
    count: u32,
    locked: u32,
    corrupt: u32,
    fail_boot: u32,
) -> Vec<DeviceSpec> {
    (0..count)
        .map(|i| DeviceSpec {
            id: first.saturating_add(i),
            kind: "thermo".into(),
            locked: i >= count.saturating_sub(locked),
            faults: Faults {
                corrupt_flash: i < corrupt,
                fail_boot: i >= corrupt && i < corrupt.saturating_add(fail_boot),
            },
            key: None,
        })
        .collect()
}

/// Running simulated devices.
pub struct SimDevices {
    state: Arc<Mutex<BTreeMap<DeviceId, DeviceMeta>>>,
    sent: Arc<Mutex<BTreeMap<DeviceId, u32>>>,
    refused: Arc<AtomicU64>,
    epochs: Arc<Mutex<BTreeMap<DeviceId, u32>>>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl SimDevices {
    /// Starts `specs`, each on its own loopback UDP socket, talking to the edges of `region`.
    pub async fn start(
        specs: Vec<DeviceSpec>,
        cfg: AgentConfig,
        region: Region,
    ) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(BTreeMap::new()));
        let sent = Arc::new(Mutex::new(BTreeMap::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let epochs = Arc::new(Mutex::new(BTreeMap::new()));
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let t0 = Instant0::new();
        for spec in specs {
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            let a = DeviceAgent::new(
                (
                    spec.id,
                    &spec.kind,
                    FIRMWARE_TYPE,
                    START_VERSION,
                    spec.locked,
                ),
                cfg.clone(),
                spec.faults,
                t0.now(),
            );
            let run = DeviceTask {
                agent: a,
                key: spec.key,
                socket,
                region: region.clone(),
                state: state.clone(),
                sent: sent.clone(),
                refused: refused.clone(),
                epochs: epochs.clone(),
                epoch: 0,
                last_request: None,
                t0,
                pending: BTreeMap::new(),
                seq: 0,
            };
            tasks.spawn(run.run(cancel.clone()));
        }
        Ok(Self {
            state,
            sent,
            refused,
            epochs,
            cancel,
            tasks,
        })
    }

    /// What each device says about itself now.
    pub fn metas(&self) -> BTreeMap<DeviceId, DeviceMeta> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The frame counter of each device's last reading (readings are numbered from 1).
    pub fn sent(&self) -> BTreeMap<DeviceId, u32> {
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Requests the devices refused (unsealed, bad MIC, replayed: threat R2).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The key epoch of each keyed device that was rekeyed at least once.
    pub fn epochs(&self) -> BTreeMap<DeviceId, u32> {
        self.epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops every device; returns the frame counter of each one's last reading sent.
    pub async fn stop_counting(mut self) -> BTreeMap<DeviceId, u32> {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.sent()
    }

    /// Stops every device.
    pub async fn stop(mut self) -> BTreeMap<DeviceId, DeviceMeta> {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.metas()
    }
}

/// Milliseconds since the devices started (the agents' clock).
#[derive(Clone, Copy)]
struct Instant0(std::time::Instant);

impl Instant0 {
    fn new() -> Self {
        Self(std::time::Instant::now())
    }
    fn now(&self) -> u64 {
        agora_wire::duration_ms(self.0.elapsed())
    }
    fn at(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.0) + Duration::from_millis(ms)
    }
}

struct DeviceTask {
    agent: DeviceAgent,
    key: Option<DeviceKey>,
    socket: UdpSocket,
    region: Region,
    state: Arc<Mutex<BTreeMap<DeviceId, DeviceMeta>>>,
    sent: Arc<Mutex<BTreeMap<DeviceId, u32>>>,
    refused: Arc<AtomicU64>,
    epochs: Arc<Mutex<BTreeMap<DeviceId, u32>>>,
    /// Key epoch: requests and uplinks use `key.for_epoch(epoch)`.
    epoch: u32,
    /// Counter of the last sealed request taken.
    last_request: Option<u64>,
    t0: Instant0,
    /// Replies and readings (with their frame counter) due at a time (flash writes take
    /// time), in order.
    pending: BTreeMap<(u64, u64), (Vec<u8>, Option<u32>)>,
    seq: u64,
}

impl DeviceTask {
    async fn run(mut self, cancel: CancellationToken) {
        let id = self.agent.meta().id;
        let mut buf = vec![0u8; MAX_SEALED_LEN + 1];
        let mut wake = Some(0u64);
        // Announce at start, like after a boot: edges in range discover it.
        self.queue(self.t0.now(), agent::Reply::Meta(self.agent.meta()));
        loop {
            self.publish();
            let next = [wake, self.pending.keys().next().map(|(t, _)| *t)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(u64::MAX / 2);
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, _from)) = r else { continue };
                    let Some(bytes) = buf.get(..n) else { continue };
                    let opened = match &self.key {
                        Some(root) => open_keyed_request(bytes, root, self.epoch, self.last_request),
                        None => open_request(bytes, None, None),
                    };
                    match opened {
                        Ok((to, req, counter)) if to == id => {
                            if self.key.is_some() && counter.is_some() {
                                self.last_request = counter;
                            }
                            if let agent::Request::Rekey { epoch } = req {
                                // Only a keyed device gets here with a rekey (under its root).
                                if self.key.is_some() {
                                    self.rekey(epoch);
                                }
                                continue;
                            }
                            let out = self.agent.handle(self.t0.now(), agent::Input::Request(req));
                            wake = self.effects(out).or(wake);
                        }
                        Ok((to, _, _)) => tracing::debug!(device = id, to, "request for another device dropped"),
                        Err(e) => {
                            self.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(device = id, error = %e, "request refused");
                        }
                    }
                }
                _ = tokio::time::sleep_until(self.t0.at(next)) => {
                    let now = self.t0.now();
                    if wake.is_some_and(|w| w <= now) {
                        wake = None;
                        let out = self.agent.handle(now, agent::Input::Tick);
                        wake = self.effects(out).or(wake);
                    }
                    self.flush(now).await;
                }
            }
        }
    }

    /// Moves to `epoch` (above the current one: [`open_keyed_request`] checked) and says so.
    fn rekey(&mut self, epoch: u32) {
        self.epoch = epoch;
        let id = self.agent.meta().id;
        self.epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, epoch);
        tracing::info!(device = id, epoch, "device rekeyed");
        self.queue(self.t0.now(), agent::Reply::Rekeyed { epoch });
    }

    fn publish(&self) {
        let m = self.agent.meta();
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(m.id, m);
    }

    fn queue(&mut self, at: u64, reply: agent::Reply) {
        let id = self.agent.meta().id;
        match encode_reply(id, &reply) {
            Ok(b) => {
                self.seq += 1;
                self.pending.insert((at, self.seq), (b, None));
            }
            Err(e) => tracing::warn!(device = id, error = %e, "reply not encodable"),
        }
    }

    /// Carries out the agent's effects; returns its next wake-up.
    fn effects(&mut self, out: Vec<agent::Effect>) -> Option<u64> {
        let mut wake = None;
        for e in out {
            match e {
                agent::Effect::Reply { at, reply } => self.queue(at, reply),
                agent::Effect::Reading(counter) => {
                    let id = self.agent.meta().id;
                    let temp = 2000 + i16::try_from(counter % 50).unwrap_or(0) * 10;
                    let working = self.key.as_ref().map(|k| k.for_epoch(self.epoch));
                    let f = crate::demo::uplink(working.as_ref(), id, counter, temp, 5000);
                    self.seq += 1;
                    self.pending
                        .insert((self.t0.now(), self.seq), (f, Some(counter)));
                }
                agent::Effect::WakeAt(t) => wake = Some(t),
            }
        }
        wake
    }

    async fn flush(&mut self, now: u64) {
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (bytes, reading) = entry.remove();
            for e in self.region_edges() {
                let _ = self.socket.send_to(&bytes, e).await;
            }
            if let Some(counter) = reading {
                self.sent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(self.agent.meta().id, counter);
            }
        }
    }

    fn region_edges(&self) -> Vec<SocketAddr> {
        self.region.edges()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agent::{Reply, Request};
    use agora_wire::radio::endpoint::{decode_reply, encode_request};

    async fn recv_reply(sock: &UdpSocket, want: impl Fn(&Reply) -> bool) -> (SocketAddr, Reply) {
        let mut buf = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf))
                .await
                .expect("a reply within 20 s")
                .expect("recv");
            if let Ok((_, reply)) = decode_reply(&buf[..r.0])
                && want(&reply)
            {
                return (r.1, reply);
            }
        }
    }

    /// One device over real UDP: announced, rebooted into the bootloader (rediscovered),
    /// flashed, verified and booted on the new version.
    #[tokio::test]
    async fn a_device_is_flashed_over_udp() {
        let edge = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let region = Region::default();
        region.set(vec![edge.local_addr().unwrap()]);
        let cfg = AgentConfig {
            reboot_ms: 50,
            link_bytes_per_s: 100_000,
            reading_ms: 100,
        };
        let devs = SimDevices::start(specs(500, 1, 0, 0, 0), cfg, region)
            .await
            .unwrap();
        let (addr, first) = recv_reply(&edge, |r| matches!(r, Reply::Meta(_))).await;
        let Reply::Meta(m) = first else {
            unreachable!()
        };
        assert_eq!((m.id, m.version.as_str()), (500, START_VERSION));
        let send = |r: Request| {
            let b = encode_request(500, &r).unwrap();
            let edge = &edge;
            async move { edge.send_to(&b, addr).await.unwrap() }
        };
        send(Request::RebootToBootloader).await;
        recv_reply(
            &edge,
            |r| matches!(r, Reply::Meta(m) if m.mode == agora_devices::Mode::Bootloader),
        )
        .await;
        let image = vec![9u8; 3000];
        for (i, c) in image.chunks(1024).enumerate() {
            send(Request::FlashChunk {
                index: i as u32,
                offset: (i * 1024) as u64,
                data: c.to_vec(),
            })
            .await;
            recv_reply(&edge, |r| *r == Reply::ChunkAck { index: i as u32 }).await;
        }
        send(Request::Verify).await;
        let (_, h) = recv_reply(&edge, |r| matches!(r, Reply::Hash(_))).await;
        assert_eq!(h, Reply::Hash(*blake3::hash(&image).as_bytes()));
        send(Request::Boot {
            version: "2.0.0".into(),
        })
        .await;
        let (_, m) = recv_reply(
            &edge,
            |r| matches!(r, Reply::Meta(m) if m.version == "2.0.0"),
        )
        .await;
        let Reply::Meta(m) = m else { unreachable!() };
        assert_eq!(m.boots, 3);
        assert_eq!(devs.stop().await[&500].version, "2.0.0");
    }

    /// One device `id` with root key `key` sending a reading every `reading_ms` (0: none) to
    /// an edge socket, once it announced itself: the edge, the device, its address.
    async fn keyed_device(
        id: DeviceId,
        key: &DeviceKey,
        reading_ms: u64,
    ) -> (UdpSocket, SimDevices, SocketAddr) {
        let edge = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let region = Region::default();
        region.set(vec![edge.local_addr().unwrap()]);
        let cfg = AgentConfig {
            reboot_ms: 50,
            link_bytes_per_s: 100_000,
            reading_ms,
        };
        let mut spec = specs(id, 1, 0, 0, 0);
        spec[0].key = Some(key.clone());
        let devs = SimDevices::start(spec, cfg, region).await.unwrap();
        let (addr, _) = recv_reply(&edge, |r| matches!(r, Reply::Meta(_))).await;
        (edge, devs, addr)
    }

    /// Threat R2: a device with a key ignores an unsealed reboot, one sealed under another
    /// key and a replayed one; it obeys a sealed one with a fresh counter.
    #[tokio::test]
    async fn a_keyed_device_refuses_spoofed_and_replayed_reboots() {
        use agora_devices::Mode;
        use agora_wire::radio::endpoint::seal_request;
        let key = DeviceKey([5; 32]);
        let (edge, devs, addr) = keyed_device(600, &key, 0).await;
        let send = |b: Vec<u8>| {
            let edge = &edge;
            async move { edge.send_to(&b, addr).await.unwrap() }
        };
        let genuine =
            seal_request(&key.for_epoch(0), 600, 10, &Request::RebootToBootloader).unwrap();
        let spoofed = [
            encode_request(600, &Request::RebootToBootloader).unwrap(),
            seal_request(&DeviceKey([6; 32]), 600, 11, &Request::RebootToBootloader).unwrap(),
        ];
        for b in spoofed {
            send(b).await;
        }
        // Requests are taken in order: once the (unsealed, allowed) metadata request that
        // follows is answered, the spoofed ones were refused, not delayed.
        send(encode_request(600, &Request::Metadata).unwrap()).await;
        let (_, m) = recv_reply(&edge, |r| matches!(r, Reply::Meta(_))).await;
        let Reply::Meta(m) = m else { unreachable!() };
        assert_eq!((m.mode, m.boots), (Mode::Running, 1), "not rebooted");
        assert_eq!(devs.refused(), 2);
        // The genuine request is obeyed; the same bytes replayed are refused.
        send(genuine.clone()).await;
        recv_reply(
            &edge,
            |r| matches!(r, Reply::Meta(m) if m.mode == Mode::Bootloader),
        )
        .await;
        send(genuine).await;
        send(encode_request(600, &Request::Metadata).unwrap()).await;
        let (_, m) = recv_reply(&edge, |r| matches!(r, Reply::Meta(_))).await;
        let Reply::Meta(m) = m else { unreachable!() };
        assert_eq!(m.boots, 2, "the replay did not reboot it again");
        assert_eq!(devs.refused(), 3);
        devs.stop().await;
    }

    /// Key rotation (threats R1/R2) over real UDP: a rekey sealed under the working key (all a
    /// provider holds) or another key is refused; one under the root moves the device to the
    /// new epoch, after which the old working key commands nothing and the uplinks carry the
    /// new key's MIC; a replayed or stale rekey is refused.
    #[tokio::test]
    async fn a_device_rekeyed_under_its_root_refuses_the_old_working_key() {
        use agora_wire::radio::endpoint::seal_request;
        use agora_wire::radio::frame::check_mic;
        let root = DeviceKey([5; 32]);
        let (old, new) = (root.for_epoch(0), root.for_epoch(1));
        let (edge, devs, addr) = keyed_device(700, &root, 20).await;
        let send = |b: Vec<u8>| {
            let edge = &edge;
            async move { edge.send_to(&b, addr).await.unwrap() }
        };
        // The old working key is the device's key at epoch 0: a sealed metadata request under
        // it is answered.
        send(seal_request(&old, 700, 10, &Request::Metadata).unwrap()).await;
        recv_reply(&edge, |r| matches!(r, Reply::Meta(_))).await;
        // Only the root rekeys.
        for k in [&old, &DeviceKey([6; 32])] {
            send(seal_request(k, 700, 11, &Request::Rekey { epoch: 1 }).unwrap()).await;
        }
        send(seal_request(&root, 700, 12, &Request::Rekey { epoch: 1 }).unwrap()).await;
        let (_, r) = recv_reply(&edge, |r| matches!(r, Reply::Rekeyed { .. })).await;
        assert_eq!(r, Reply::Rekeyed { epoch: 1 });
        assert_eq!(
            devs.refused(),
            2,
            "the rekeys under the working and a foreign key"
        );
        assert_eq!(devs.epochs()[&700], 1);
        // Replayed and stale rekeys are refused; so is the old working key.
        send(seal_request(&root, 700, 12, &Request::Rekey { epoch: 2 }).unwrap()).await;
        send(seal_request(&root, 700, 13, &Request::Rekey { epoch: 1 }).unwrap()).await;
        send(seal_request(&old, 700, 14, &Request::RebootToBootloader).unwrap()).await;
        // Uplinks from now on verify under the new working key only.
        let mut buf = vec![0u8; 2048];
        let frame = loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(20), edge.recv_from(&mut buf))
                .await
                .expect("an uplink within 20 s")
                .unwrap();
            let b = buf[..n].to_vec();
            if !agora_wire::radio::endpoint::is_endpoint(&b) && check_mic(&new, &b).is_ok() {
                break b;
            }
        };
        assert!(check_mic(&old, &frame).is_err());
        send(seal_request(&new, 700, 15, &Request::RebootToBootloader).unwrap()).await;
        let (_, m) = recv_reply(
            &edge,
            |r| matches!(r, Reply::Meta(m) if m.mode == agora_devices::Mode::Bootloader),
        )
        .await;
        let Reply::Meta(m) = m else { unreachable!() };
        assert_eq!(m.boots, 2, "only the new working key's reboot was obeyed");
        assert_eq!(devs.refused(), 5);
        assert_eq!(devs.epochs()[&700], 1);
        devs.stop().await;
    }
}
