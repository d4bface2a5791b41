//! The one home of byte-level wire code shared by storage, the node and the runtime: unsigned
//! LEB128 varints, length-prefixed frames (blocking and async) whose announced length is checked
//! against a limit before anything is allocated, and the head encoder of hand-written CBOR.
//! CIDs are minted and checked in [`crate::hash`].
//!
//! Users: protobuf (dag-pb, UnixFS, bitswap messages) and CAR in this crate; the node's
//! request-response codec and bitswap streams (one varint length prefix per message); the
//! image records of hosted services (DAG-CBOR).

use std::io::{Read, Write};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Result, StorageError};

/// Most bytes of a varint that encodes a `u64`.
pub const MAX_VARINT_LEN: usize = 10;

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `value` as an unsigned LEB128 varint.
pub fn encode_varint(value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(varint_len(value));
    put_varint(&mut out, value);
    out
}

/// Length of `value` encoded as a varint.
pub fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Decodes a varint one byte at a time, so the slice, blocking and async readers share the
/// rules: at most [`MAX_VARINT_LEN`] bytes, and the value must fit a `u64`.
#[derive(Debug, Default)]
struct VarintDecoder {
    value: u64,
    len: usize,
}

impl VarintDecoder {
    /// Feeds one byte: the value once it is complete, or why the varint is invalid.
    fn push(&mut self, byte: u8) -> std::result::Result<Option<u64>, &'static str> {
        let low = u64::from(byte & 0x7f);
        if self.len == MAX_VARINT_LEN - 1 && low > 1 {
            return Err("varint overflows u64");
        }
        self.value |= low << (7 * self.len);
        self.len += 1;
        if byte & 0x80 == 0 {
            return Ok(Some(self.value));
        }
        if self.len == MAX_VARINT_LEN {
            return Err("over-long varint");
        }
        Ok(None)
    }

    /// The stream ended: fine before the first byte, a truncated varint after it.
    fn end(&self) -> std::result::Result<(), &'static str> {
        if self.len == 0 {
            Ok(())
        } else {
            Err("truncated varint")
        }
    }
}

/// Why a varint could not be read from a stream.
enum PrefixError {
    Io(std::io::Error),
    Bad(&'static str),
}

/// Reads a varint from a blocking stream; `Ok(None)` at the end of the stream before its first
/// byte.
fn read_prefix<R: Read>(r: &mut R) -> std::result::Result<Option<u64>, PrefixError> {
    let mut decoder = VarintDecoder::default();
    loop {
        let mut byte = [0u8; 1];
        match r.read(&mut byte) {
            Ok(0) => return decoder.end().map(|()| None).map_err(PrefixError::Bad),
            Ok(_) => {
                if let Some(value) = decoder.push(byte[0]).map_err(PrefixError::Bad)? {
                    return Ok(Some(value));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PrefixError::Io(e)),
        }
    }
}

/// Decodes a varint from the front of `buf`, returning the value and bytes consumed.
pub fn get_varint(buf: &[u8], what: &'static str) -> Result<(u64, usize)> {
    let mut decoder = VarintDecoder::default();
    for (i, byte) in buf.iter().enumerate() {
        match decoder.push(*byte) {
            Ok(Some(value)) => return Ok((value, i + 1)),
            Ok(None) => {}
            Err(reason) => return Err(StorageError::decode(what, reason)),
        }
    }
    Err(StorageError::decode(what, "truncated varint"))
}

/// Reads a varint from a byte stream; `Ok(None)` on a clean end of stream before the first byte.
pub fn read_varint<R: Read>(r: &mut R, what: &'static str) -> Result<Option<u64>> {
    read_prefix(r).map_err(|e| match e {
        PrefixError::Io(e) => e.into(),
        PrefixError::Bad(reason) => StorageError::decode(what, reason),
    })
}

/// Errors reading or writing a length-prefixed frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed, or closed in the middle of a frame.
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is not a valid varint.
    #[error("malformed length prefix ({0}); closing the stream")]
    BadLength(&'static str),
    /// The frame is longer than the limit; nothing was allocated for it.
    #[error("frame of {size} bytes exceeds the {limit}-byte limit; closing the stream")]
    TooLarge {
        /// Announced (or attempted) length.
        size: u64,
        /// Limit in force.
        limit: usize,
    },
}

impl From<FrameError> for std::io::Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}

/// The body length announced by a prefix, if it is within `limit`.
fn checked_len(len: u64, limit: usize) -> std::result::Result<usize, FrameError> {
    usize::try_from(len)
        .ok()
        .filter(|l| *l <= limit)
        .ok_or(FrameError::TooLarge { size: len, limit })
}

/// The varint length prefix of a `len`-byte body, refusing bodies over `limit`.
fn prefix_for(len: usize, limit: usize) -> std::result::Result<Vec<u8>, FrameError> {
    if len > limit {
        return Err(FrameError::TooLarge {
            size: len as u64,
            limit,
        });
    }
    Ok(encode_varint(len as u64))
}

/// Reads one frame (varint length, then that many bytes); `Ok(None)` on a clean end of stream
/// before the prefix. A length over `limit` is refused before the body is allocated or read.
pub fn read_frame<R: Read>(
    r: &mut R,
    limit: usize,
) -> std::result::Result<Option<Vec<u8>>, FrameError> {
    let len = match read_prefix(r) {
        Ok(Some(len)) => len,
        Ok(None) => return Ok(None),
        Err(PrefixError::Io(e)) => return Err(e.into()),
        Err(PrefixError::Bad(reason)) => return Err(FrameError::BadLength(reason)),
    };
    let len = checked_len(len, limit)?;
    let mut body = Vec::with_capacity(len.min(FIRST_READ));
    r.take(len as u64).read_to_end(&mut body)?;
    whole(body, len)
}

/// How much of a frame's announced length is set aside before any of it arrives: the buffer
/// grows with what is read, so a peer that announces the limit and sends little makes this
/// node hold little (found by a read-only audit in session 49: the whole announced length was
/// allocated from the prefix alone, before any quota saw the request).
const FIRST_READ: usize = 64 * 1024;

/// `body` if it is the whole `len` bytes; the stream ended inside the frame otherwise.
fn whole(body: Vec<u8>, len: usize) -> std::result::Result<Option<Vec<u8>>, FrameError> {
    if body.len() == len {
        Ok(Some(body))
    } else {
        Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
    }
}

/// Writes one frame (varint length, then `body`) and flushes; refuses a body over `limit`.
pub fn write_frame<W: Write>(
    w: &mut W,
    body: &[u8],
    limit: usize,
) -> std::result::Result<(), FrameError> {
    let prefix = prefix_for(body.len(), limit)?;
    w.write_all(&prefix)?;
    w.write_all(body)?;
    w.flush()?;
    Ok(())
}

/// [`read_frame`] on an async stream.
pub async fn read_frame_async<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> std::result::Result<Option<Vec<u8>>, FrameError> {
    let mut decoder = VarintDecoder::default();
    let len = loop {
        let mut byte = [0u8; 1];
        if r.read(&mut byte).await? == 0 {
            decoder.end().map_err(FrameError::BadLength)?;
            return Ok(None);
        }
        if let Some(len) = decoder.push(byte[0]).map_err(FrameError::BadLength)? {
            break len;
        }
    };
    let len = checked_len(len, limit)?;
    let mut body = Vec::with_capacity(len.min(FIRST_READ));
    r.take(len as u64).read_to_end(&mut body).await?;
    whole(body, len)
}

/// [`write_frame`] on an async stream (flushes, does not close).
pub async fn write_frame_async<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
    limit: usize,
) -> std::result::Result<(), FrameError> {
    let mut frame = prefix_for(body.len(), limit)?;
    frame.extend_from_slice(body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// CBOR major type of unsigned integers.
pub const CBOR_UINT: u8 = 0;
/// CBOR major type of byte strings.
pub const CBOR_BYTES: u8 = 2;
/// CBOR major type of text strings.
pub const CBOR_TEXT: u8 = 3;
/// CBOR major type of arrays.
pub const CBOR_ARRAY: u8 = 4;
/// CBOR major type of maps.
pub const CBOR_MAP: u8 = 5;
/// CBOR major type of tags.
pub const CBOR_TAG: u8 = 6;
/// The CBOR tag of a CID in DAG-CBOR.
pub const CBOR_TAG_CID: u64 = 42;

/// Appends the head of a CBOR item of `major` type with argument `value`, in the shortest form
/// (as DAG-CBOR requires).
pub fn put_cbor_head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    match value {
        0..=23 => out.push(m | value as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, value as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// Appends a CBOR text string.
pub fn put_cbor_text(out: &mut Vec<u8>, s: &str) {
    put_cbor_head(out, CBOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends a DAG-CBOR link: tag 42 over the byte string `0x00 || cid`.
pub fn put_cbor_cid(out: &mut Vec<u8>, cid: &cid::Cid) {
    let bytes = cid.to_bytes();
    put_cbor_head(out, CBOR_TAG, CBOR_TAG_CID);
    put_cbor_head(out, CBOR_BYTES, bytes.len() as u64 + 1);
    out.push(0);
    out.extend_from_slice(&bytes);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip_through_every_reader(v in any::<u64>()) {
            let bytes = encode_varint(v);
            prop_assert_eq!(bytes.len(), varint_len(v));
            prop_assert_eq!(get_varint(&bytes, "t").unwrap(), (v, bytes.len()));
            prop_assert_eq!(read_varint(&mut bytes.as_slice(), "t").unwrap(), Some(v));
        }

        #[test]
        fn frames_round_trip(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = Vec::new();
            write_frame(&mut buf, &body, 300).unwrap();
            let mut r = buf.as_slice();
            prop_assert_eq!(read_frame(&mut r, 300).unwrap(), Some(body));
            prop_assert!(read_frame(&mut r, 300).unwrap().is_none());
        }

        #[test]
        fn readers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = get_varint(&bytes, "t");
            let _ = read_varint(&mut bytes.as_slice(), "t");
            let _ = read_frame(&mut bytes.as_slice(), 16);
        }
    }

    #[test]
    fn bad_varints_are_errors() {
        assert!(get_varint(&[0x80, 0x80], "t").is_err());
        assert!(get_varint(&[0xff; 10], "t").is_err());
        // Ten bytes whose last one carries more than the 64th bit.
        let mut overflow = vec![0xff; 9];
        overflow.push(0x02);
        assert!(get_varint(&overflow, "t").is_err());
        assert!(read_varint(&mut [0x80u8].as_slice(), "t").is_err());
        assert_eq!(read_varint(&mut [0u8; 0].as_slice(), "t").unwrap(), None);
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        // A prefix announcing 10 GB, then nothing: refused without reading or allocating.
        let mut r = encode_varint(10 << 30);
        r.push(1);
        assert!(matches!(
            read_frame(&mut r.as_slice(), 1024),
            Err(FrameError::TooLarge { size, limit: 1024 }) if size == 10 << 30
        ));
        assert!(matches!(
            write_frame(&mut Vec::new(), &[0u8; 9], 8),
            Err(FrameError::TooLarge { size: 9, limit: 8 })
        ));
        assert!(matches!(
            read_frame(&mut [0xffu8; 12].as_slice(), 1024),
            Err(FrameError::BadLength(_))
        ));
        // Truncated body.
        let mut short = encode_varint(10);
        short.push(1);
        assert!(matches!(
            read_frame(&mut short.as_slice(), 1024),
            Err(FrameError::Io(_))
        ));
    }

    #[tokio::test]
    async fn async_frames_match_blocking_ones() {
        let mut buf = Vec::new();
        write_frame_async(&mut buf, b"hello", 16).await.unwrap();
        let mut blocking = Vec::new();
        write_frame(&mut blocking, b"hello", 16).unwrap();
        assert_eq!(buf, blocking);
        let mut r = futures::io::Cursor::new(buf);
        assert_eq!(
            read_frame_async(&mut r, 16).await.unwrap(),
            Some(b"hello".to_vec())
        );
        assert!(read_frame_async(&mut r, 16).await.unwrap().is_none());
        let mut r = futures::io::Cursor::new(encode_varint(17));
        assert!(matches!(
            read_frame_async(&mut r, 16).await,
            Err(FrameError::TooLarge { size: 17, .. })
        ));
    }

    /// A reader over `data` that records the largest buffer it was asked to fill.
    struct Watched<'a> {
        data: &'a [u8],
        largest: usize,
    }

    impl std::io::Read for Watched<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.largest = self.largest.max(buf.len());
            std::io::Read::read(&mut self.data, buf)
        }
    }

    impl AsyncRead for Watched<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(std::io::Read::read(&mut *self, buf))
        }
    }

    /// A peer announcing a 4 MiB frame and sending 1 KiB of it makes the reader hold about what
    /// arrived, not the announced length (THREATS N2).
    #[tokio::test]
    async fn a_frame_s_buffer_grows_with_what_arrives_not_with_its_prefix() {
        let mut bytes = encode_varint(4 << 20);
        bytes.extend_from_slice(&[7u8; 1024]);
        let mut r = Watched {
            data: &bytes,
            largest: 0,
        };
        assert!(matches!(
            read_frame_async(&mut r, 4 << 20).await,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof
        ));
        assert!(r.largest <= FIRST_READ, "asked to fill {} bytes", r.largest);
        let mut r = Watched {
            data: &bytes,
            largest: 0,
        };
        assert!(matches!(
            read_frame(&mut r, 4 << 20),
            Err(FrameError::Io(_))
        ));
        assert!(r.largest <= FIRST_READ, "asked to fill {} bytes", r.largest);
        // A whole frame larger than the first read still arrives whole.
        let body = vec![9u8; 3 * FIRST_READ + 5];
        let mut framed = Vec::new();
        write_frame(&mut framed, &body, 4 << 20).unwrap();
        let mut r = futures::io::Cursor::new(framed.clone());
        assert_eq!(
            read_frame_async(&mut r, 4 << 20).await.unwrap(),
            Some(body.clone())
        );
        assert_eq!(
            read_frame(&mut framed.as_slice(), 4 << 20).unwrap(),
            Some(body)
        );
    }

    #[test]
    fn cbor_heads_use_the_shortest_form() {
        let head = |major, v| {
            let mut out = Vec::new();
            put_cbor_head(&mut out, major, v);
            out
        };
        assert_eq!(head(CBOR_UINT, 23), [0x17]);
        assert_eq!(head(CBOR_UINT, 24), [0x18, 24]);
        assert_eq!(head(CBOR_BYTES, 0x100), [0x59, 0x01, 0x00]);
        assert_eq!(head(CBOR_ARRAY, 0x1_0000), [0x9a, 0, 1, 0, 0]);
        assert_eq!(
            head(CBOR_MAP, 0x1_0000_0000),
            [0xbb, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(head(CBOR_TAG, CBOR_TAG_CID), [0xd8, 42]);
        let cid = crate::hash::cid_v1_blake3(crate::hash::RAW, b"x");
        let mut link = Vec::new();
        put_cbor_cid(&mut link, &cid);
        let raw = cid.to_bytes();
        assert_eq!(link[..3], [0xd8, 42, 0x58]);
        assert_eq!(usize::from(link[3]), raw.len() + 1);
        assert_eq!(link[4], 0);
        assert_eq!(link[5..], raw[..]);
    }
}
