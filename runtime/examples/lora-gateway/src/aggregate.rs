//! Per-device aggregation of readings into batches, plus a digest over the raw frames.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::reading::Reading;

/// Running statistics of one device within a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct DeviceStats {
    count: u32,
    temp_min: i16,
    temp_max: i16,
    temp_sum: i64,
    hum_sum: u64,
    last_seq: Option<u32>,
    lost: u32,
    battery_mv: u16,
}

/// Collects readings until a batch is taken.
#[derive(Debug, Default)]
pub struct Aggregator {
    devices: BTreeMap<u32, DeviceStats>,
    last_seq: BTreeMap<u32, u32>,
    readings: u32,
    rejected: u32,
    digest: u64,
}

/// FNV-1a 64 offset basis; the digest chains every accepted raw frame of the batch.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self {
            digest: FNV_OFFSET,
            ..Default::default()
        }
    }

    /// Readings in the current batch.
    pub fn len(&self) -> u32 {
        self.readings
    }

    /// Whether the current batch is empty.
    pub fn is_empty(&self) -> bool {
        self.readings == 0
    }

    /// Frames rejected in the current batch.
    pub fn rejected(&self) -> u32 {
        self.rejected
    }

    /// Counts a frame that failed to decode.
    pub fn reject(&mut self) {
        self.rejected += 1;
    }

    /// Adds a decoded reading (`raw` is its frame, folded into the digest).
    pub fn add(&mut self, r: &Reading, raw: &[u8]) {
        for byte in raw {
            self.digest = (self.digest ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
        }
        self.readings += 1;
        let lost = match self.last_seq.insert(r.device, r.seq) {
            Some(prev) if r.seq > prev => r.seq - prev - 1,
            _ => 0,
        };
        let s = self.devices.entry(r.device).or_insert_with(|| DeviceStats {
            temp_min: i16::MAX,
            temp_max: i16::MIN,
            ..Default::default()
        });
        s.count += 1;
        s.temp_min = s.temp_min.min(r.temp_centi);
        s.temp_max = s.temp_max.max(r.temp_centi);
        s.temp_sum += i64::from(r.temp_centi);
        s.hum_sum += u64::from(r.hum_centi);
        s.last_seq = Some(r.seq);
        s.lost += lost;
        s.battery_mv = r.battery_mv;
    }

    /// Renders the batch as JSON and starts a new one (sequence gaps carry over).
    pub fn take_batch(&mut self, batch: u64, now_ms: i64) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "{{\"batch\":{batch},\"at_ms\":{now_ms},\"readings\":{},\"rejected\":{},\"raw_digest\":\"{:016x}\",\"devices\":[",
            self.readings, self.rejected, self.digest
        );
        for (i, (id, s)) in self.devices.iter().enumerate() {
            let n = i64::from(s.count.max(1));
            let _ = write!(
                out,
                "{}{{\"id\":{id},\"count\":{},\"temp_min_c\":{:.2},\"temp_max_c\":{:.2},\"temp_avg_c\":{:.2},\"hum_avg_pct\":{:.2},\"lost\":{},\"battery_mv\":{}}}",
                if i == 0 { "" } else { "," },
                s.count,
                f64::from(s.temp_min) / 100.0,
                f64::from(s.temp_max) / 100.0,
                (s.temp_sum as f64 / n as f64) / 100.0,
                (s.hum_sum as f64 / n as f64) / 100.0,
                s.lost,
                s.battery_mv
            );
        }
        out.push_str("]}");
        self.devices.clear();
        self.readings = 0;
        self.rejected = 0;
        self.digest = FNV_OFFSET;
        out
    }
}
