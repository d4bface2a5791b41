//! The device endpoint protocol (issue #16): what an edge asks a device over the radio's UDP
//! socket (metadata, reboot to the bootloader, flash a chunk, verify, boot, roll back) and what
//! the device answers. Compact binary, like the uplink frames, every field bounded:
//!
//! ```text
//! request: A9 | device u32 LE | op u8 | body
//!   1 metadata | 2 reboot-to-bootloader | 4 verify | 6 rollback      (no body)
//!   3 flash chunk: index u32 | offset u32 | len u16 (≤ 1024) | data[len]
//!   5 boot:        vlen u8 (≤ 32) | version[vlen] (UTF-8)
//!   7 rekey:       epoch u32 (sealed under the device's root key only)
//! sealed:  AB | device u32 LE | op u8 | body | counter u64 LE | MIC 8 bytes
//!          (a request authenticated under the device's key, threat R2)
//! reply:   AA | device u32 LE | op u8 | body
//!   1 meta:      kind, firmware type, version (each len u8 ≤ 32 + UTF-8) | flags u8
//!                (bit 0 locked, bit 1 bootloader) | boots u32
//!   2 chunk ack: index u32
//!   3 hash:      32 bytes
//!   4 rekeyed:   epoch u32
//! ```
//!
//! Decoding never trusts a length: it is checked against its bound and against what is left
//! before anything is allocated, and trailing bytes are refused, so a decoded message encodes to
//! exactly the bytes it came from. Pure: no I/O.
//!
//! Threat R2: an edge that holds a device's key (its owner, or the provider handed it) seals
//! every request to it ([`seal_request`]): a counter that increases with every request and a
//! MIC (keyed BLAKE3 under the device's frame key, as uplink frames carry) over everything
//! before it. A device with a key takes ([`open_request`]) only sealed requests with a valid MIC
//! and a counter above the last it took; the one exception is `Metadata`, which it answers
//! to anyone (it announces the same after every boot). Replies are not sealed: an edge takes a
//! device's replies only from the address it hears the device on.

use agora_devices::agent::{Reply, Request};
use agora_devices::{DeviceId, DeviceMeta, MAX_LABEL_LEN, Mode};

use super::frame::{DeviceKey, MIC_LEN, mic};

/// First byte of an edge → device request.
pub const REQUEST_MAGIC: u8 = 0xA9;
/// First byte of a device → edge reply.
pub const REPLY_MAGIC: u8 = 0xAA;
/// Largest flash chunk on the wire.
pub const MAX_CHUNK_DATA: usize = 1024;
/// Largest endpoint message.
pub const MAX_ENDPOINT_LEN: usize = 1 + 4 + 1 + 4 + 4 + 2 + MAX_CHUNK_DATA;
/// First byte of a sealed edge → device request.
pub const SEALED_REQUEST_MAGIC: u8 = 0xAB;
/// Largest sealed request.
pub const MAX_SEALED_LEN: usize = MAX_ENDPOINT_LEN + 8 + MIC_LEN;

/// A request a device refuses (threat R2).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefusal {
    /// It does not decode.
    #[error(transparent)]
    Malformed(#[from] EndpointError),
    /// Not sealed, to a device with a key (only `Metadata` may be).
    #[error("unsealed request to device {device}, which has a key: dropped")]
    Unsealed {
        /// Device.
        device: DeviceId,
    },
    /// The MIC is not the device key's.
    #[error("request to device {device} with a bad MIC: dropped")]
    BadMic {
        /// Device.
        device: DeviceId,
    },
    /// A rekey to an epoch not above the device's (a replayed or stale rotation).
    #[error("rekey of device {device} to epoch {epoch}, not above its epoch {at}: dropped")]
    StaleEpoch {
        /// Device.
        device: DeviceId,
        /// Epoch asked for.
        epoch: u32,
        /// The device's epoch.
        at: u32,
    },
    /// The counter is not above the last one taken (a replayed request).
    #[error("request to device {device} with counter {counter}, not above {last}: dropped")]
    Replayed {
        /// Device.
        device: DeviceId,
        /// Its counter.
        counter: u64,
        /// The last counter taken.
        last: u64,
    },
}

/// An endpoint message that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Wrong first byte.
    #[error(
        "endpoint message with magic {0:#04x}, expected {REQUEST_MAGIC:#04x} or {REPLY_MAGIC:#04x}"
    )]
    Magic(u8),
    /// Unknown operation.
    #[error("endpoint message with unknown op {0}")]
    Op(u8),
    /// Ends before a field does.
    #[error("endpoint message truncated at byte {0}")]
    Truncated(usize),
    /// Bytes after the last field.
    #[error("endpoint message has {0} trailing bytes")]
    Trailing(usize),
    /// A length beyond its bound.
    #[error("endpoint field of {len} bytes, at most {max}")]
    TooLong {
        /// Claimed length.
        len: usize,
        /// Bound.
        max: usize,
    },
    /// A label that is not UTF-8.
    #[error("endpoint label is not UTF-8")]
    Utf8,
    /// Unknown flag bits, or a value that does not fit the wire (encoding).
    #[error("endpoint field out of range: {0}")]
    Range(&'static str),
}

/// Reads fields off a byte slice, never past its end.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EndpointError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(EndpointError::Truncated(self.at))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(EndpointError::Truncated(self.at))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, EndpointError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }
    fn u16(&mut self) -> Result<u16, EndpointError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, EndpointError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn label(&mut self) -> Result<String, EndpointError> {
        let len = usize::from(self.u8()?);
        if len > MAX_LABEL_LEN {
            return Err(EndpointError::TooLong {
                len,
                max: MAX_LABEL_LEN,
            });
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| EndpointError::Utf8)
    }
    fn header(&mut self, magic: u8) -> Result<(DeviceId, u8), EndpointError> {
        let m = self.u8()?;
        if m != magic {
            return Err(EndpointError::Magic(m));
        }
        Ok((self.u32()?, self.u8()?))
    }
    fn end(&self) -> Result<(), EndpointError> {
        match self.b.len().saturating_sub(self.at) {
            0 => Ok(()),
            n => Err(EndpointError::Trailing(n)),
        }
    }
}

fn put_label(out: &mut Vec<u8>, s: &str) -> Result<(), EndpointError> {
    let len = u8::try_from(s.len())
        .ok()
        .filter(|l| usize::from(*l) <= MAX_LABEL_LEN)
        .ok_or(EndpointError::TooLong {
            len: s.len(),
            max: MAX_LABEL_LEN,
        })?;
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Encodes a request to `device`.
pub fn encode_request(device: DeviceId, r: &Request) -> Result<Vec<u8>, EndpointError> {
    let mut out = vec![REQUEST_MAGIC];
    out.extend_from_slice(&device.to_le_bytes());
    match r {
        Request::Metadata => out.push(1),
        Request::RebootToBootloader => out.push(2),
        Request::FlashChunk {
            index,
            offset,
            data,
        } => {
            let offset = u32::try_from(*offset).map_err(|_| EndpointError::Range("offset"))?;
            if data.len() > MAX_CHUNK_DATA {
                return Err(EndpointError::TooLong {
                    len: data.len(),
                    max: MAX_CHUNK_DATA,
                });
            }
            out.push(3);
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&(data.len() as u16).to_le_bytes());
            out.extend_from_slice(data);
        }
        Request::Verify => out.push(4),
        Request::Boot { version } => {
            out.push(5);
            put_label(&mut out, version)?;
        }
        Request::Rollback => out.push(6),
        Request::Rekey { epoch } => {
            out.push(7);
            out.extend_from_slice(&epoch.to_le_bytes());
        }
    }
    Ok(out)
}

/// Encodes a request to `device` sealed under its key with `counter` (which must increase
/// with every request an edge sends the device).
pub fn seal_request(
    key: &DeviceKey,
    device: DeviceId,
    counter: u64,
    r: &Request,
) -> Result<Vec<u8>, EndpointError> {
    let mut out = encode_request(device, r)?;
    if let Some(m) = out.first_mut() {
        *m = SEALED_REQUEST_MAGIC;
    }
    out.extend_from_slice(&counter.to_le_bytes());
    let m = mic(key, &out);
    out.extend_from_slice(&m);
    Ok(out)
}

/// What a device does with the bytes an edge sent. With a `key`: a sealed request whose MIC
/// is the key's and whose counter is above `last` (its counter is returned, to keep as the new
/// `last`), or an unsealed `Metadata` request; everything else is refused. Without a key: any
/// request (a sealed one unchecked).
pub fn open_request(
    b: &[u8],
    key: Option<&DeviceKey>,
    last: Option<u64>,
) -> Result<(DeviceId, Request, Option<u64>), RequestRefusal> {
    open_with(b, key.is_some(), |_| key.cloned(), last)
}

/// [`open_request`] for a device with a root key at `epoch` (key rotation): a
/// [`Request::Rekey`] must be sealed under the root key itself and name a higher epoch (else it
/// is refused as [`RequestRefusal::StaleEpoch`]), every other sealed request under the
/// epoch's working key ([`DeviceKey::for_epoch`]).
pub fn open_keyed_request(
    b: &[u8],
    root: &DeviceKey,
    epoch: u32,
    last: Option<u64>,
) -> Result<(DeviceId, Request, Option<u64>), RequestRefusal> {
    let working = root.for_epoch(epoch);
    let opened = open_with(
        b,
        true,
        |r| {
            Some(if matches!(r, Request::Rekey { .. }) {
                root.clone()
            } else {
                working.clone()
            })
        },
        last,
    )?;
    if let (device, Request::Rekey { epoch: to }, _) = &opened
        && *to <= epoch
    {
        return Err(RequestRefusal::StaleEpoch {
            device: *device,
            epoch: *to,
            at: epoch,
        });
    }
    Ok(opened)
}

fn open_with(
    b: &[u8],
    keyed: bool,
    key_for: impl Fn(&Request) -> Option<DeviceKey>,
    last: Option<u64>,
) -> Result<(DeviceId, Request, Option<u64>), RequestRefusal> {
    if b.first() != Some(&SEALED_REQUEST_MAGIC) {
        let (device, req) = decode_request(b)?;
        if keyed && req != Request::Metadata {
            return Err(RequestRefusal::Unsealed { device });
        }
        return Ok((device, req, None));
    }
    if b.len() > MAX_SEALED_LEN {
        return Err(EndpointError::TooLong {
            len: b.len(),
            max: MAX_SEALED_LEN,
        }
        .into());
    }
    let body_len = b
        .len()
        .checked_sub(8 + MIC_LEN)
        .ok_or(EndpointError::Truncated(b.len()))?;
    let (body, tail) = b.split_at(body_len);
    let (counter, got) = tail.split_at(8);
    let mut plain = body.to_vec();
    if let Some(m) = plain.first_mut() {
        *m = REQUEST_MAGIC;
    }
    let (device, req) = decode_request(&plain)?;
    let mut c = [0u8; 8];
    c.copy_from_slice(counter);
    let counter = u64::from_le_bytes(c);
    if keyed && let Some(k) = key_for(&req) {
        let want = mic(&k, b.get(..body_len + 8).unwrap_or_default());
        // Constant time, like the frames' check.
        if want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Err(RequestRefusal::BadMic { device });
        }
        if let Some(last) = last.filter(|l| counter <= *l) {
            return Err(RequestRefusal::Replayed {
                device,
                counter,
                last,
            });
        }
    }
    Ok((device, req, Some(counter)))
}

/// Decodes a request (what a device does with the bytes an edge sent).
pub fn decode_request(b: &[u8]) -> Result<(DeviceId, Request), EndpointError> {
    let mut r = Reader { b, at: 0 };
    let (device, op) = r.header(REQUEST_MAGIC)?;
    let req = match op {
        1 => Request::Metadata,
        2 => Request::RebootToBootloader,
        3 => {
            let index = r.u32()?;
            let offset = u64::from(r.u32()?);
            let len = usize::from(r.u16()?);
            if len > MAX_CHUNK_DATA {
                return Err(EndpointError::TooLong {
                    len,
                    max: MAX_CHUNK_DATA,
                });
            }
            let data = r.take(len)?.to_vec();
            Request::FlashChunk {
                index,
                offset,
                data,
            }
        }
        4 => Request::Verify,
        5 => Request::Boot {
            version: r.label()?,
        },
        6 => Request::Rollback,
        7 => Request::Rekey { epoch: r.u32()? },
        op => return Err(EndpointError::Op(op)),
    };
    r.end()?;
    Ok((device, req))
}

/// Encodes a device's reply.
pub fn encode_reply(device: DeviceId, reply: &Reply) -> Result<Vec<u8>, EndpointError> {
    let mut out = vec![REPLY_MAGIC];
    out.extend_from_slice(&device.to_le_bytes());
    match reply {
        Reply::Meta(m) => {
            if m.id != device {
                return Err(EndpointError::Range("meta of another device"));
            }
            out.push(1);
            put_label(&mut out, &m.kind)?;
            put_label(&mut out, &m.firmware_type)?;
            put_label(&mut out, &m.version)?;
            let flags = u8::from(m.locked) | (u8::from(m.mode == Mode::Bootloader) << 1);
            out.push(flags);
            out.extend_from_slice(&m.boots.to_le_bytes());
        }
        Reply::ChunkAck { index } => {
            out.push(2);
            out.extend_from_slice(&index.to_le_bytes());
        }
        Reply::Hash(h) => {
            out.push(3);
            out.extend_from_slice(h);
        }
        Reply::Rekeyed { epoch } => {
            out.push(4);
            out.extend_from_slice(&epoch.to_le_bytes());
        }
    }
    Ok(out)
}

/// Decodes a device's reply (what an edge does with the bytes a device sent).
pub fn decode_reply(b: &[u8]) -> Result<(DeviceId, Reply), EndpointError> {
    let mut r = Reader { b, at: 0 };
    let (device, op) = r.header(REPLY_MAGIC)?;
    let reply = match op {
        1 => {
            let kind = r.label()?;
            let firmware_type = r.label()?;
            let version = r.label()?;
            let flags = r.u8()?;
            if flags & !0b11 != 0 {
                return Err(EndpointError::Range("flags"));
            }
            let boots = r.u32()?;
            Reply::Meta(DeviceMeta {
                id: device,
                kind,
                firmware_type,
                version,
                locked: flags & 1 != 0,
                mode: if flags & 2 != 0 {
                    Mode::Bootloader
                } else {
                    Mode::Running
                },
                boots,
            })
        }
        2 => Reply::ChunkAck { index: r.u32()? },
        3 => {
            let mut h = [0u8; 32];
            h.copy_from_slice(r.take(32)?);
            Reply::Hash(h)
        }
        4 => Reply::Rekeyed { epoch: r.u32()? },
        op => return Err(EndpointError::Op(op)),
    };
    r.end()?;
    Ok((device, reply))
}

/// Whether `b` is an endpoint message rather than an uplink frame (by its first byte).
pub fn is_endpoint(b: &[u8]) -> bool {
    matches!(
        b.first(),
        Some(&REQUEST_MAGIC | &REPLY_MAGIC | &SEALED_REQUEST_MAGIC)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta() -> DeviceMeta {
        DeviceMeta {
            id: 9,
            kind: "thermo".into(),
            firmware_type: "esp32".into(),
            version: "1.2.3".into(),
            locked: true,
            mode: Mode::Bootloader,
            boots: 77,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let reqs = [
            Request::Metadata,
            Request::RebootToBootloader,
            Request::FlashChunk {
                index: 3,
                offset: 3 * 1024,
                data: vec![1; 1024],
            },
            Request::Verify,
            Request::Boot {
                version: "2.0".into(),
            },
            Request::Rollback,
        ];
        for r in reqs {
            let b = encode_request(9, &r).unwrap();
            assert!(b.len() <= MAX_ENDPOINT_LEN && is_endpoint(&b));
            assert_eq!(decode_request(&b), Ok((9, r)));
        }
        for r in [
            Reply::Meta(meta()),
            Reply::ChunkAck { index: 5 },
            Reply::Hash([4; 32]),
        ] {
            let b = encode_reply(9, &r).unwrap();
            assert_eq!(decode_reply(&b), Ok((9, r)));
        }
    }

    #[test]
    fn hostile_lengths_and_bytes_are_refused_before_allocation() {
        // A chunk claiming 65535 bytes: refused on the bound, not read.
        let mut b = vec![
            REQUEST_MAGIC,
            9,
            0,
            0,
            0,
            3,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xff,
            0xff,
        ];
        assert_eq!(
            decode_request(&b),
            Err(EndpointError::TooLong {
                len: 65535,
                max: MAX_CHUNK_DATA
            })
        );
        // A chunk claiming more than it carries.
        b[14] = 10;
        b[15] = 0;
        assert_eq!(decode_request(&b), Err(EndpointError::Truncated(16)));
        // A label over the bound.
        let mut boot = vec![REQUEST_MAGIC, 9, 0, 0, 0, 5, 200];
        boot.extend([b'a'; 200]);
        assert!(matches!(
            decode_request(&boot),
            Err(EndpointError::TooLong { len: 200, .. })
        ));
        // Trailing bytes, unknown ops and flags, wrong magic, not UTF-8.
        let mut v = encode_request(9, &Request::Verify).unwrap();
        v.push(0);
        assert_eq!(decode_request(&v), Err(EndpointError::Trailing(1)));
        assert_eq!(
            decode_request(&[REQUEST_MAGIC, 9, 0, 0, 0, 99]),
            Err(EndpointError::Op(99))
        );
        let mut m = encode_reply(9, &Reply::Meta(meta())).unwrap();
        let flags_at = m.len() - 5;
        m[flags_at] = 0x80;
        assert_eq!(decode_reply(&m), Err(EndpointError::Range("flags")));
        assert_eq!(decode_reply(&[0xA7]), Err(EndpointError::Magic(0xA7)));
        assert_eq!(
            decode_request(&[REQUEST_MAGIC, 9, 0, 0, 0, 5, 1, 0xff]),
            Err(EndpointError::Utf8)
        );
        // Encoding refuses what the wire cannot carry.
        let big = Request::FlashChunk {
            index: 0,
            offset: 0,
            data: vec![0; MAX_CHUNK_DATA + 1],
        };
        assert!(encode_request(1, &big).is_err());
        assert!(
            encode_reply(1, &Reply::Meta(meta())).is_err(),
            "meta of device 9 as 1"
        );
    }

    proptest! {
        /// Any bytes: decoding never panics, and what decodes encodes back to the same bytes.
        #[test]
        fn decoding_is_total_and_canonical(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = b;
            if let Some(first) = b.first_mut() {
                *first = if *first % 2 == 0 { REQUEST_MAGIC } else { REPLY_MAGIC };
            }
            if let Ok((d, r)) = decode_request(&b) {
                prop_assert_eq!(encode_request(d, &r).unwrap(), b.clone());
            }
            if let Ok((d, r)) = decode_reply(&b) {
                prop_assert_eq!(encode_reply(d, &r).unwrap(), b);
            }
        }
    }

    /// Key rotation: at epoch `e` a device takes requests under `root.for_epoch(e)` only, and
    /// a rekey only under the root itself and only to a higher epoch.
    #[test]
    fn a_rekey_needs_the_root_and_a_higher_epoch() {
        let root = DeviceKey([7; 32]);
        let (e0, e1) = (root.for_epoch(0), root.for_epoch(1));
        assert_ne!(e0, root);
        assert_ne!(e0, e1);
        let reboot = Request::RebootToBootloader;
        let b = seal_request(&e0, 9, 10, &reboot).unwrap();
        assert_eq!(
            open_keyed_request(&b, &root, 0, None),
            Ok((9, reboot.clone(), Some(10)))
        );
        assert_eq!(
            open_keyed_request(&b, &root, 1, None),
            Err(RequestRefusal::BadMic { device: 9 }),
            "the old working key opens nothing at epoch 1"
        );
        assert_eq!(
            open_keyed_request(
                &seal_request(&root, 9, 10, &reboot).unwrap(),
                &root,
                0,
                None
            ),
            Err(RequestRefusal::BadMic { device: 9 }),
            "the root seals only rekeys"
        );
        let rekey = Request::Rekey { epoch: 1 };
        assert_eq!(
            open_keyed_request(&seal_request(&e0, 9, 11, &rekey).unwrap(), &root, 0, None),
            Err(RequestRefusal::BadMic { device: 9 }),
            "a working key cannot rekey"
        );
        let by_root = seal_request(&root, 9, 11, &rekey).unwrap();
        assert_eq!(
            open_keyed_request(&by_root, &root, 0, Some(10)),
            Ok((9, rekey.clone(), Some(11)))
        );
        assert_eq!(
            open_keyed_request(&by_root, &root, 0, Some(11)),
            Err(RequestRefusal::Replayed {
                device: 9,
                counter: 11,
                last: 11
            })
        );
        assert_eq!(
            open_keyed_request(&by_root, &root, 1, Some(10)),
            Err(RequestRefusal::StaleEpoch {
                device: 9,
                epoch: 1,
                at: 1
            })
        );
        let (d, r) = decode_reply(&encode_reply(9, &Reply::Rekeyed { epoch: 1 }).unwrap()).unwrap();
        assert_eq!((d, r), (9, Reply::Rekeyed { epoch: 1 }));
    }

    #[test]
    fn sealed_requests_are_taken_only_with_the_key_and_a_rising_counter() {
        let key = DeviceKey([7; 32]);
        let other = DeviceKey([8; 32]);
        let reboot = Request::RebootToBootloader;
        let b = seal_request(&key, 9, 100, &reboot).unwrap();
        assert!(is_endpoint(&b) && b.len() <= MAX_SEALED_LEN);
        assert_eq!(
            open_request(&b, Some(&key), Some(99)),
            Ok((9, reboot.clone(), Some(100)))
        );
        assert_eq!(
            open_request(&b, Some(&key), Some(100)),
            Err(RequestRefusal::Replayed {
                device: 9,
                counter: 100,
                last: 100
            }),
            "a replay"
        );
        let forged = seal_request(&other, 9, 101, &reboot).unwrap();
        assert_eq!(
            open_request(&forged, Some(&key), Some(100)),
            Err(RequestRefusal::BadMic { device: 9 })
        );
        let plain = encode_request(9, &reboot).unwrap();
        assert_eq!(
            open_request(&plain, Some(&key), None),
            Err(RequestRefusal::Unsealed { device: 9 })
        );
        // Metadata is answered to anyone; a device without a key takes everything.
        let meta = encode_request(9, &Request::Metadata).unwrap();
        assert_eq!(
            open_request(&meta, Some(&key), None),
            Ok((9, Request::Metadata, None))
        );
        assert_eq!(
            open_request(&plain, None, None),
            Ok((9, reboot.clone(), None))
        );
        assert_eq!(
            open_request(&forged, None, None),
            Ok((9, reboot, Some(101)))
        );
        // A flipped byte anywhere breaks the MIC (or the decoding).
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 1;
            assert!(open_request(&t, Some(&key), None).is_err(), "byte {i}");
        }
        assert!(open_request(&b[..10], Some(&key), None).is_err());
    }
}
