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

impl Adversary {
    /// Publishes `c`, signed with the adversary's own key, on the radio topic.
    pub async fn publish_checkpoint(&self, c: &Checkpoint) -> anyhow::Result<()> {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let env = Envelope::seal_body(self.signer(), Kind::Radio, now_ms(), seq, c)?;
        self.publish_raw(RADIO_TOPIC, env.to_bytes()).await
    }
}
