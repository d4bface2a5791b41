//! Simulated LoRa-style sensors: each device broadcasts an uplink frame at a fixed interval into
//! a radio region; every edge in range (a UDP address) hears it. A device with a key sends
//! authenticated 24-byte v2 frames (MIC, increasing counter); one without sends 16-byte v1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_radio::DeviceKey;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Encodes one uplink frame (the lora-gateway example's wire format).
pub fn frame(device: u32, seq: u32, temp_centi: i16, hum_centi: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = agora_radio::FRAME_MAGIC;
    b[1..5].copy_from_slice(&device.to_le_bytes());
    b[5..9].copy_from_slice(&seq.to_le_bytes());
    b[9..11].copy_from_slice(&temp_centi.to_le_bytes());
    b[11..13].copy_from_slice(&hum_centi.to_le_bytes());
    b[13..15].copy_from_slice(&3300u16.to_le_bytes());
    b[15] = (-90i8).to_le_bytes()[0];
    b
}

/// The radio region: which edges hear the sensors.
#[derive(Clone, Debug, Default)]
pub struct Region(Arc<Mutex<Vec<SocketAddr>>>);

impl Region {
    /// Edges in range.
    pub fn set(&self, edges: Vec<SocketAddr>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = edges;
    }

    /// Edges in range now.
    pub fn edges(&self) -> Vec<SocketAddr> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The frame `device` sends: v2 under `key`, v1 without one.
pub fn uplink(key: Option<&DeviceKey>, device: u32, seq: u32, temp: i16, hum: u16) -> Vec<u8> {
    let f = frame(device, seq, temp, hum);
    match key {
        Some(k) => {
            let mut payload = [0u8; 7];
            payload.copy_from_slice(&f[9..]);
            agora_radio::seal_frame(k, device, seq, payload).to_vec()
        }
        None => f.to_vec(),
    }
}

/// Running sensors; `sent()` tells the last sequence number each device sent (from 1).
pub struct Sensors {
    sent: Arc<Mutex<BTreeMap<u32, u32>>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Sensors {
    /// Starts `devices`, each sending every `interval` to the edges of `region`, signed with
    /// the working key of epoch 0 of its root key in `keys` if it has one.
    pub async fn start(
        devices: Vec<u32>,
        interval: Duration,
        region: Region,
        keys: BTreeMap<u32, DeviceKey>,
    ) -> std::io::Result<Self> {
        let socket = UdpSocket::bind("0.0.0.0:0").await?;
        let sent = Arc::new(Mutex::new(BTreeMap::new()));
        let cancel = CancellationToken::new();
        let (s2, c2) = (sent.clone(), cancel.clone());
        // These sensors only send (no endpoint takes a rekey): they stay at epoch 0.
        let working: BTreeMap<u32, DeviceKey> =
            keys.iter().map(|(d, k)| (*d, k.for_epoch(0))).collect();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut seq: u32 = 0;
            loop {
                tokio::select! {
                    _ = c2.cancelled() => break,
                    _ = tick.tick() => {}
                }
                seq += 1;
                let edges = region.edges();
                for (i, d) in devices.iter().enumerate() {
                    let temp = 2000 + i16::try_from((seq % 50) * 10).unwrap_or(0);
                    let hum = 5000 + u16::try_from(i).unwrap_or(0) * 100;
                    let f = uplink(working.get(d), *d, seq, temp, hum);
                    for e in &edges {
                        let _ = socket.send_to(&f, e).await;
                    }
                    s2.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(*d, seq);
                }
            }
        });
        Ok(Sensors { sent, cancel, task })
    }

    /// Last sequence number sent per device.
    pub fn sent(&self) -> BTreeMap<u32, u32> {
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops sending.
    pub async fn stop(self) -> BTreeMap<u32, u32> {
        self.cancel.cancel();
        let sent = self.sent.clone();
        let _ = self.task.await;
        sent.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
