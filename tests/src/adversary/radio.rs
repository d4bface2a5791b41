//! Forged radio checkpoints (threat R1, issue #13.4): a hostile peer claims it processed a
//! device's readings, to make every edge skip them.

use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;
use agora_wire::radio::{Checkpoint, SeqRange};
use agora_wire::topics::RADIO_TOPIC;

use super::Adversary;

/// A checkpoint claiming `devices` processed up to `u32::MAX`: believed, it would silence
/// them on every edge for good.
pub fn silencing(devices: &[u32]) -> Checkpoint {
    Checkpoint {
        service: "hostile".into(),
        ranges: devices
            .iter()
            .map(|d| SeqRange {
                device: *d,
                first: 0,
                last: u32::MAX,
                count: 1,
            })
            .collect(),
        proof: String::new(),
        released: Vec::new(),
        at: now_ms(),
    }
}

/// A plausible checkpoint: `devices` processed from `from` for `n` readings (where an honest
/// edge's next checkpoint would be), and released, as a manager giving them up would say.
pub fn plausible(devices: &[(u32, u32)], n: u32) -> Checkpoint {
    Checkpoint {
        service: "hostile".into(),
        ranges: devices
            .iter()
            .map(|(d, from)| SeqRange {
                device: *d,
                first: *from,
                last: from.saturating_add(n.saturating_sub(1)),
                count: n,
            })
            .collect(),
        proof: String::new(),
        released: devices.iter().map(|(d, _)| *d).collect(),
        at: now_ms(),
    }
}

/// A malformed checkpoint (threat N7): a range whose `first` is after its `last` — no edge
/// processes readings that way, so every honest edge rejects it whoever signed it.
pub fn malformed(devices: &[u32]) -> Checkpoint {
    Checkpoint {
        service: "hostile".into(),
        ranges: devices
            .iter()
            .map(|d| SeqRange {
                device: *d,
                first: 10,
                last: 5,
                count: 1,
            })
            .collect(),
        proof: String::new(),
        released: Vec::new(),
        at: now_ms(),
    }
}

impl Adversary {
    /// Publishes `c`, signed with the adversary's own key, on the radio topic.
    pub async fn publish_checkpoint(&self, c: &Checkpoint) -> anyhow::Result<()> {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let env = Envelope::seal_body(self.signer(), Kind::Radio, now_ms(), seq, c)?;
        self.publish_raw(RADIO_TOPIC, env.to_bytes()).await
    }
}

/// A radio in range of some edges (threat R1, frames): it cannot sign a device's frames, but it
/// can send anything to an edge's radio port — forged MICs, far-ahead counters, unsigned v1
/// frames — and replay genuine frames it overheard.
pub struct HostileRadio {
    socket: tokio::net::UdpSocket,
    /// Every frame sent so far, per kind.
    pub sent: std::collections::BTreeMap<&'static str, u64>,
}

impl HostileRadio {
    /// Binds a loopback socket.
    pub async fn bind() -> anyhow::Result<Self> {
        Ok(HostileRadio {
            socket: tokio::net::UdpSocket::bind("127.0.0.1:0").await?,
            sent: Default::default(),
        })
    }

    /// Sends `frame` (counted under `kind`) to each edge of `to`.
    pub async fn send(
        &mut self,
        kind: &'static str,
        frame: &[u8],
        to: &[std::net::SocketAddr],
    ) -> anyhow::Result<()> {
        for addr in to {
            self.socket.send_to(frame, addr).await?;
        }
        *self.sent.entry(kind).or_default() += 1;
        Ok(())
    }
}

/// A v2 frame of `device` at counter `seq` whose MIC is `salt`-derived noise (the attacker
/// has no key): a distinctive payload, so a leak would be visible in what a service got.
pub fn forged_frame(device: u32, seq: u32, salt: u64) -> Vec<u8> {
    let noise = agora_wire::radio::DeviceKey(*noise(salt));
    agora_wire::radio::seal_frame(&noise, device, seq, [0x5a; 7]).to_vec()
}

/// An unsigned v1 frame of `device` at counter `seq`, same distinctive payload.
pub fn unsigned_frame(device: u32, seq: u32) -> Vec<u8> {
    let mut f = vec![agora_wire::radio::FRAME_MAGIC];
    f.extend(device.to_le_bytes());
    f.extend(seq.to_le_bytes());
    f.extend([0x5a; 7]);
    f
}

/// 32 bytes that vary with `salt` (a key nobody holds).
fn noise(salt: u64) -> Box<[u8; 32]> {
    let mut k = [0u8; 32];
    let mut x = salt ^ 0x9e37_79b9_7f4a_7c15;
    for b in k.iter_mut() {
        // xorshift: noise, not secrecy.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    Box::new(k)
}
