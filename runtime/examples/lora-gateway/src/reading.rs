//! Wire format of one sensor reading (16 bytes, little endian), as a LoRa uplink carries it.

/// First byte of every reading: format version 1.
pub const MAGIC: u8 = 0xA7;
/// Encoded length of a reading.
pub const LEN: usize = 16;

/// One decoded sensor reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Sending device.
    pub device: u32,
    /// Per-device frame counter.
    pub seq: u32,
    /// Temperature in 0.01 °C.
    pub temp_centi: i16,
    /// Relative humidity in 0.01 %.
    pub hum_centi: u16,
    /// Battery voltage in mV.
    pub battery_mv: u16,
    /// Received signal strength in dBm.
    pub rssi: i8,
}

/// Why a frame was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not exactly [`LEN`] bytes.
    Length(usize),
    /// Unknown format version.
    Magic(u8),
    /// Humidity above 100 %.
    Humidity(u16),
}

impl Reading {
    /// Encodes as the 16-byte wire format.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = MAGIC;
        b[1..5].copy_from_slice(&self.device.to_le_bytes());
        b[5..9].copy_from_slice(&self.seq.to_le_bytes());
        b[9..11].copy_from_slice(&self.temp_centi.to_le_bytes());
        b[11..13].copy_from_slice(&self.hum_centi.to_le_bytes());
        b[13..15].copy_from_slice(&self.battery_mv.to_le_bytes());
        b[15] = self.rssi as u8;
        b
    }

    /// Decodes and sanity-checks a frame.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() != LEN {
            return Err(DecodeError::Length(b.len()));
        }
        if b[0] != MAGIC {
            return Err(DecodeError::Magic(b[0]));
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let r = Reading {
            device: u32_at(1),
            seq: u32_at(5),
            temp_centi: u16_at(9) as i16,
            hum_centi: u16_at(11),
            battery_mv: u16_at(13),
            rssi: b[15] as i8,
        };
        if r.hum_centi > 10_000 {
            return Err(DecodeError::Humidity(r.hum_centi));
        }
        Ok(r)
    }
}
