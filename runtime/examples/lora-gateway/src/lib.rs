//! LoRa-style sensor gateway, an Agora edge service (guest ABI v1, see agora-runtime docs).
//!
//! Each `agora_poll` drains queued readings (16-byte frames, see [`reading`]), aggregates them
//! per device and publishes a JSON batch every [`BATCH_SIZE`] readings. Each batch carries
//! `raw_digest`, an FNV-1a digest over its raw frames, so a verifier holding the frames can check
//! the batch; the host signs the blake3 of the published bytes. The batch counter persists in
//! the host key-value store, so a restarted gateway continues numbering.

pub mod aggregate;
pub mod reading;

#[cfg(target_arch = "wasm32")]
mod guest;

/// Readings per published batch.
pub const BATCH_SIZE: u32 = 8;

#[cfg(test)]
mod tests {
    use super::aggregate::Aggregator;
    use super::reading::{DecodeError, Reading};

    fn r(device: u32, seq: u32, temp: i16) -> Reading {
        Reading {
            device,
            seq,
            temp_centi: temp,
            hum_centi: 5000,
            battery_mv: 3300,
            rssi: -90,
        }
    }

    #[test]
    fn frames_round_trip_and_bad_frames_fail() {
        let x = r(7, 42, -1234);
        assert_eq!(Reading::decode(&x.encode()), Ok(x));
        assert_eq!(Reading::decode(&[0; 3]), Err(DecodeError::Length(3)));
        let mut bad = x.encode();
        bad[0] = 1;
        assert_eq!(Reading::decode(&bad), Err(DecodeError::Magic(1)));
    }

    #[test]
    fn batches_count_lost_frames() {
        let mut a = Aggregator::new();
        for (seq, t) in [(1, 2000), (2, 2100), (5, 1900)] {
            let x = r(1, seq, t);
            a.add(&x, &x.encode());
        }
        let json = a.take_batch(0, 0);
        assert!(json.contains("\"lost\":2"), "{json}");
        assert!(json.contains("\"temp_min_c\":19.00"), "{json}");
        assert!(a.is_empty());
    }
}
