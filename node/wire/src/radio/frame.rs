//! Authenticated uplinks (threat R1): the version-2 frame carries a MIC — a keyed BLAKE3 hash
//! of everything before it under the device's key, truncated to [`MIC_LEN`] bytes — and its
//! sequence number is the frame counter, which must increase, as LoRaWAN's FCnt does.
//!
//! ```text
//! v1 (16 B): A7 | device u32 LE | seq u32 LE | payload 7 B
//! v2 (24 B): A8 | device u32 LE | seq u32 LE | payload 7 B | MIC 8 B
//! ```
//!
//! The MIC is 8 bytes, not LoRaWAN's 4: a LoRa radio pays airtime for every guess, while
//! anyone who can reach an edge's UDP port can send millions of forgeries a second; 2^-32 per
//! guess falls in about an hour at that rate, 2^-64 never does. 24 bytes is still one small
//! datagram. The service behind the radio keeps receiving the 16-byte v1 reading ([`reading`]):
//! the radio checks the MIC, the service never needs the key.
//!
//! Pure: no clock, no I/O; the radio task keeps the last accepted counter per device.

use super::{FRAME_LEN, FRAME_MAGIC, FrameError};

/// First byte of a version-2 (authenticated) frame.
pub const FRAME_V2_MAGIC: u8 = 0xA8;
/// Length of the MIC that ends a version-2 frame.
pub const MIC_LEN: usize = 8;
/// Length of a version-2 frame.
pub const FRAME_V2_LEN: usize = FRAME_LEN + MIC_LEN;
/// Default for how far a frame counter may jump ahead of the last accepted one (LoRaWAN's
/// `MAX_FCNT_GAP`); further is refused, so one forged far-ahead counter cannot lock a device out
/// even if a MIC were ever guessed.
pub const DEFAULT_COUNTER_WINDOW: u32 = 16_384;

/// A device's 32-byte frame key (the device owner's secret). `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceKey(pub [u8; 32]);

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

impl DeviceKey {
    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim().as_bytes();
        if s.len() != 64 {
            return None;
        }
        let digit = |c: u8| -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        };
        let mut key = [0u8; 32];
        for (k, pair) in key.iter_mut().zip(s.chunks_exact(2)) {
            *k = digit(*pair.first()?)? << 4 | digit(*pair.get(1)?)?;
        }
        Some(DeviceKey(key))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The working key of `epoch` under this root key (key rotation, threats R1/R2): keyed
    /// BLAKE3 of the root over a fixed label and the epoch. A device and its owner hold the
    /// root; frames and requests use the epoch's key, which is all a provider is handed, so a
    /// provider cannot derive the root or another epoch's key, and a device moved to a new
    /// epoch (a rekey request sealed under the root) no longer takes or sends anything under
    /// the old one.
    pub fn for_epoch(&self, epoch: u32) -> DeviceKey {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"agora device key epoch v1");
        h.update(&epoch.to_le_bytes());
        DeviceKey(*h.finalize().as_bytes())
    }
}

/// Device, counter and version of an uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// Device.
    pub device: u32,
    /// Sequence number (the frame counter).
    pub seq: u32,
    /// Whether the frame carries a MIC (version 2).
    pub signed: bool,
}

/// Parses either frame version (the MIC is not checked here).
pub fn parse_uplink(b: &[u8]) -> Result<Uplink, FrameError> {
    let signed = match (b.first(), b.len()) {
        (Some(&FRAME_MAGIC), FRAME_LEN) => false,
        (Some(&FRAME_V2_MAGIC), FRAME_V2_LEN) => true,
        (Some(&FRAME_MAGIC | &FRAME_V2_MAGIC), n) | (None, n) => return Err(FrameError::Length(n)),
        (Some(&m), _) => return Err(FrameError::Magic(m)),
    };
    let u32_at =
        |i: usize| -> Option<u32> { Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?)) };
    match (u32_at(1), u32_at(5)) {
        (Some(device), Some(seq)) => Ok(Uplink {
            device,
            seq,
            signed,
        }),
        _ => Err(FrameError::Length(b.len())),
    }
}

/// The MIC of `body` under `key`: keyed BLAKE3, truncated.
pub fn mic(key: &DeviceKey, body: &[u8]) -> [u8; MIC_LEN] {
    let h = blake3::keyed_hash(&key.0, body);
    let mut m = [0u8; MIC_LEN];
    m.copy_from_slice(&h.as_bytes()[..MIC_LEN]);
    m
}

/// Encodes a version-2 frame: `payload` is the v1 reading's last 7 bytes.
pub fn seal_frame(key: &DeviceKey, device: u32, seq: u32, payload: [u8; 7]) -> [u8; FRAME_V2_LEN] {
    let mut b = [0u8; FRAME_V2_LEN];
    b[0] = FRAME_V2_MAGIC;
    b[1..5].copy_from_slice(&device.to_le_bytes());
    b[5..9].copy_from_slice(&seq.to_le_bytes());
    b[9..FRAME_LEN].copy_from_slice(&payload);
    let m = mic(key, &b[..FRAME_LEN]);
    b[FRAME_LEN..].copy_from_slice(&m);
    b
}

/// The 16-byte v1 reading a service receives: a v1 frame as is, a v2 frame without its MIC and
/// with the v1 magic. `None` for anything else.
pub fn reading(b: &[u8]) -> Option<[u8; FRAME_LEN]> {
    let up = parse_uplink(b).ok()?;
    let mut r = [0u8; FRAME_LEN];
    r.copy_from_slice(b.get(..FRAME_LEN)?);
    if up.signed {
        r[0] = FRAME_MAGIC;
    }
    Some(r)
}

/// Why a frame of a device whose key this edge holds was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameRefusal {
    /// Not a frame at all.
    #[error("malformed radio frame: {0}")]
    Malformed(FrameError),
    /// A version-1 (unsigned) frame for a device that has a key.
    #[error("unsigned (v1) frame for device {device}, which has a key here: only v2 frames count")]
    Unsigned {
        /// Device.
        device: u32,
    },
    /// The MIC does not match the device's key.
    #[error("frame of device {device} seq {seq} has a bad MIC (forged or corrupted)")]
    BadMic {
        /// Device.
        device: u32,
        /// Claimed counter.
        seq: u32,
    },
    /// The counter does not increase: a replay or an old frame.
    #[error("frame of device {device} replays counter {seq} (last accepted {last})")]
    Replayed {
        /// Device.
        device: u32,
        /// Claimed counter.
        seq: u32,
        /// Last accepted counter.
        last: u32,
    },
    /// The counter jumps further ahead than the window allows.
    #[error(
        "frame of device {device} counter {seq} is beyond the window after {last} (radio.frame_counter_window)"
    )]
    BeyondWindow {
        /// Device.
        device: u32,
        /// Claimed counter.
        seq: u32,
        /// Last accepted counter.
        last: u32,
    },
}

/// A frame that passed [`authenticate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The frame.
    pub uplink: Uplink,
    /// Whether its MIC was checked (`false`: no key here, hearsay).
    pub verified: bool,
}

/// Whether `seq` may follow `last` (the last accepted counter, `None` before the first):
/// strictly greater, by at most `window`.
pub fn check_counter(
    device: u32,
    last: Option<u32>,
    seq: u32,
    window: u32,
) -> Result<(), FrameRefusal> {
    let Some(last) = last else {
        return Ok(());
    };
    if seq <= last {
        return Err(FrameRefusal::Replayed { device, seq, last });
    }
    if seq - last > window {
        return Err(FrameRefusal::BeyondWindow { device, seq, last });
    }
    Ok(())
}

/// Whether a v2 frame's MIC matches `key` (compared in constant time); a v1 frame fails.
pub fn check_mic(key: &DeviceKey, b: &[u8]) -> Result<Uplink, FrameRefusal> {
    let up = parse_uplink(b).map_err(FrameRefusal::Malformed)?;
    if !up.signed {
        return Err(FrameRefusal::Unsigned { device: up.device });
    }
    let (body, got) = (b.get(..FRAME_LEN), b.get(FRAME_LEN..));
    let ok = match (body, got) {
        (Some(body), Some(got)) => {
            let want = mic(key, body);
            got.len() == MIC_LEN && want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        }
        _ => false,
    };
    if ok {
        Ok(up)
    } else {
        Err(FrameRefusal::BadMic {
            device: up.device,
            seq: up.seq,
        })
    }
}

/// Judges one uplink heard over the radio. Without a key for its device (`key` is `None`) any
/// well-formed frame passes unverified. With one, only a v2 frame whose counter follows
/// `last` within `window` and whose MIC matches passes; the counter is checked first (it
/// costs no hashing, so a flood of stale forgeries is cheap to drop).
pub fn authenticate(
    b: &[u8],
    key: Option<&DeviceKey>,
    last: Option<u32>,
    window: u32,
) -> Result<Accepted, FrameRefusal> {
    let up = parse_uplink(b).map_err(FrameRefusal::Malformed)?;
    let Some(key) = key else {
        return Ok(Accepted {
            uplink: up,
            verified: false,
        });
    };
    if !up.signed {
        return Err(FrameRefusal::Unsigned { device: up.device });
    }
    check_counter(up.device, last, up.seq, window)?;
    let uplink = check_mic(key, b)?;
    Ok(Accepted {
        uplink,
        verified: true,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: DeviceKey = DeviceKey([7u8; 32]);
    const PAYLOAD: [u8; 7] = [1, 2, 3, 4, 5, 6, 7];

    #[test]
    fn a_sealed_frame_passes_and_reads_as_v1() {
        let f = seal_frame(&KEY, 9, 42, PAYLOAD);
        let a = authenticate(&f, Some(&KEY), Some(41), 10).unwrap();
        assert_eq!(
            a.uplink,
            Uplink {
                device: 9,
                seq: 42,
                signed: true
            }
        );
        assert!(a.verified);
        let r = reading(&f).unwrap();
        assert_eq!(r[0], FRAME_MAGIC);
        assert_eq!(&r[1..], &f[1..FRAME_LEN]);
    }

    #[test]
    fn another_key_is_a_bad_mic() {
        let f = seal_frame(&DeviceKey([8u8; 32]), 9, 42, PAYLOAD);
        assert_eq!(
            authenticate(&f, Some(&KEY), None, 10),
            Err(FrameRefusal::BadMic { device: 9, seq: 42 })
        );
    }

    #[test]
    fn counters_must_increase_within_the_window() {
        let f = seal_frame(&KEY, 9, 42, PAYLOAD);
        assert!(matches!(
            authenticate(&f, Some(&KEY), Some(42), 10),
            Err(FrameRefusal::Replayed { last: 42, .. })
        ));
        assert!(matches!(
            authenticate(&f, Some(&KEY), Some(50), 10),
            Err(FrameRefusal::Replayed { .. })
        ));
        assert!(matches!(
            authenticate(&f, Some(&KEY), Some(31), 10),
            Err(FrameRefusal::BeyondWindow { last: 31, .. })
        ));
        assert!(authenticate(&f, Some(&KEY), Some(32), 10).is_ok());
        assert!(
            authenticate(&f, Some(&KEY), None, 10).is_ok(),
            "first frame heard"
        );
    }

    #[test]
    fn v1_frames_pass_only_without_a_key() {
        let mut f = vec![FRAME_MAGIC];
        f.extend(9u32.to_le_bytes());
        f.extend(1u32.to_le_bytes());
        f.extend(PAYLOAD);
        assert_eq!(
            authenticate(&f, Some(&KEY), None, 10),
            Err(FrameRefusal::Unsigned { device: 9 })
        );
        let a = authenticate(&f, None, None, 10).unwrap();
        assert!(!a.verified);
        assert_eq!(reading(&f).map(Vec::from), Some(f));
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let k = DeviceKey([0xab; 32]);
        assert_eq!(DeviceKey::from_hex(&k.to_hex()), Some(k));
        assert_eq!(DeviceKey::from_hex("zz"), None);
        assert_eq!(DeviceKey::from_hex(&"g".repeat(64)), None);
        assert_eq!(format!("{:?}", DeviceKey([1; 32])), "DeviceKey(..)");
    }

    #[test]
    fn malformed_frames_are_refused() {
        for b in [
            &[][..],
            &[FRAME_V2_MAGIC; 16][..],
            &[FRAME_MAGIC; 24][..],
            &[0u8; 24][..],
        ] {
            assert!(matches!(
                authenticate(b, Some(&KEY), None, 10),
                Err(FrameRefusal::Malformed(_))
            ));
        }
    }

    proptest! {
        /// A frame with any one bit flipped is refused (by its magic, its counter or its MIC).
        #[test]
        fn any_flipped_bit_is_refused(device: u32, seq in 1u32..u32::MAX, payload: [u8; 7], bit in 0usize..FRAME_V2_LEN * 8) {
            let mut f = seal_frame(&KEY, device, seq, payload);
            prop_assert!(authenticate(&f, Some(&KEY), Some(seq - 1), u32::MAX).is_ok());
            f[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(authenticate(&f, Some(&KEY), Some(seq - 1), u32::MAX).is_err());
        }

        /// Feeding a stream of genuine frames in any order with replays, an edge accepts each
        /// counter at most once and only increasing ones.
        #[test]
        fn accepted_counters_strictly_increase(seqs in proptest::collection::vec(0u32..64, 1..64)) {
            let mut last = None;
            let mut accepted = Vec::new();
            for s in seqs {
                let f = seal_frame(&KEY, 5, s, PAYLOAD);
                if let Ok(a) = authenticate(&f, Some(&KEY), last, 16) {
                    accepted.push(a.uplink.seq);
                    last = Some(a.uplink.seq);
                }
            }
            prop_assert!(accepted.windows(2).all(|w| w[0] < w[1]));
        }

        /// Without the key, no forged MIC passes.
        #[test]
        fn random_mics_are_refused(device: u32, seq: u32, payload: [u8; 7], forged: [u8; MIC_LEN]) {
            let mut f = seal_frame(&KEY, device, seq, payload);
            prop_assume!(f[FRAME_LEN..] != forged);
            f[FRAME_LEN..].copy_from_slice(&forged);
            prop_assert_eq!(
                authenticate(&f, Some(&KEY), None, u32::MAX),
                Err(FrameRefusal::BadMic { device, seq })
            );
        }
    }
}
