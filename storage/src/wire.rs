//! The one home of byte-level wire code shared by storage, the node and the runtime: unsigned
//! LEB128 varints, length-prefixed frames (blocking and async) whose announced length is checked
//! against a limit before anything is allocated, and the head encoder of hand-written CBOR.
//! CIDs are minted and checked in [`crate::hash`].
//!
//! Users: protobuf (dag-pb, UnixFS, bitswap messages) and CAR in this crate; the node's
//! request-response codec and bitswap streams (one varint length prefix per message); the
//! image records of hosted services (DAG-CBOR).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
    /// The frame could not grow: the frames being read already hold the node's whole
    /// [`FrameBudget`]. What it held was given back.
    #[error(
        "a frame of {size} bytes cannot grow: frames being read hold the {budget}-byte budget; \
         closing the stream"
    )]
    OverBudget {
        /// Announced length.
        size: usize,
        /// The budget in force.
        budget: usize,
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

/// The part of each frame a [`FrameBudget`] does not charge, and the unit its buffer grows by:
/// a small request (most are a few hundred bytes) is read however full the budget is. Kept
/// small because it is free on every stream: 100 request streams on each of 512 connections
/// could hold 3.2 GiB at 64 KiB each, 200 MiB at 4 KiB.
const FREE_BYTES: usize = 4 * 1024;

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

/// One budget for the bytes of frames still being read, shared by every stream on which a node
/// reads frames from peers (requests, responses, bitswap messages). A frame's buffer is charged
/// as it grows, by its capacity beyond the first 4 KiB (`FREE_BYTES`, so a small frame never
/// waits for the budget), and given back when the frame is whole or its reader is dropped; a
/// frame that cannot grow fails ([`FrameError::OverBudget`]) and is counted. Without it a peer
/// that announces large frames and sends them slowly on many streams made the node hold all it
/// uploaded until the streams timed out (found in session 54's triage, THREATS N16).
#[derive(Debug)]
pub struct FrameBudget {
    limit: usize,
    held: AtomicUsize,
    refused: AtomicU64,
}

impl FrameBudget {
    /// A budget of `limit` bytes for all frames being read together.
    pub fn new(limit: usize) -> FrameBudget {
        FrameBudget {
            limit,
            held: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// No bound: for readers whose frames no peer can multiply (tests, tools).
    pub fn unbounded() -> FrameBudget {
        FrameBudget::new(usize::MAX)
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged to frames being read now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Frames failed so far because the budget had no room for them to grow.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Charges `bytes` if they fit beside what is held.
    fn take(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Counts a frame that could not grow, logging the 1st, 2nd, 4th, 8th… (a flood of them
    /// must not flood the log; the stream's failure is logged with its peer where it is known).
    fn refuse(&self, size: usize) -> FrameError {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                size,
                budget = self.limit,
                refused = n,
                "frame refused: frames being read hold the whole budget"
            );
        }
        FrameError::OverBudget {
            size,
            budget: self.limit,
        }
    }
}

/// What one frame being read holds of its [`FrameBudget`]; given back when dropped, whether the
/// frame was read whole, failed, or its reader was dropped half way (a stream timed out).
struct FrameCharge<'a> {
    budget: &'a FrameBudget,
    bytes: usize,
}

impl FrameCharge<'_> {
    /// Charges a buffer grown to `capacity` bytes for a frame of `size` (its first
    /// [`FREE_BYTES`] are free).
    fn cover(&mut self, capacity: usize, size: usize) -> std::result::Result<(), FrameError> {
        let wanted = capacity.saturating_sub(FREE_BYTES);
        let more = wanted.saturating_sub(self.bytes);
        if more > 0 {
            if !self.budget.take(more) {
                return Err(self.budget.refuse(size));
            }
            self.bytes = wanted;
        }
        Ok(())
    }
}

impl Drop for FrameCharge<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// The capacity a frame's buffer of `capacity` bytes grows to, for a frame of `len`: by whole
/// [`FREE_BYTES`] steps, at least a quarter of what it holds. A buffer grows only once it is
/// full, so a peer makes this node charge at most a quarter (and one step) more than it sent:
/// the budget cannot be taken with length prefixes alone. A 4 MiB frame grows about thirty
/// times (each growth may move the buffer), not a thousand.
fn next_capacity(capacity: usize, len: usize) -> usize {
    let step = (capacity / 4 / FREE_BYTES).max(1) * FREE_BYTES;
    capacity.saturating_add(step).min(len)
}

/// Reads a varint length prefix from an async stream; `Ok(None)` at the end of the stream
/// before its first byte.
async fn read_prefix_async<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::result::Result<Option<u64>, FrameError> {
    let mut decoder = VarintDecoder::default();
    loop {
        let mut byte = [0u8; 1];
        if r.read(&mut byte).await? == 0 {
            decoder.end().map_err(FrameError::BadLength)?;
            return Ok(None);
        }
        if let Some(len) = decoder.push(byte[0]).map_err(FrameError::BadLength)? {
            return Ok(Some(len));
        }
    }
}

/// [`read_frame`] on an async stream, with no budget (see [`read_frame_async_within`]).
pub async fn read_frame_async<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> std::result::Result<Option<Vec<u8>>, FrameError> {
    let budget = FrameBudget::unbounded();
    read_frame_async_within(r, limit, &budget).await
}

/// [`read_frame`] on an async stream from a peer: the buffer grows as bytes arrive, and its
/// growth is charged to `budget`, shared with every other frame the node is reading. A frame
/// that cannot grow fails with [`FrameError::OverBudget`] (its reader should close the
/// stream); what it held is given back then, when it is read whole, or when this future is
/// dropped.
pub async fn read_frame_async_within<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    budget: &FrameBudget,
) -> std::result::Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = read_prefix_async(r).await? else {
        return Ok(None);
    };
    let len = checked_len(len, limit)?;
    let mut charge = FrameCharge { budget, bytes: 0 };
    let mut body: Vec<u8> = Vec::new();
    let mut filled = 0;
    while filled < len {
        if filled == body.len() {
            // Charged before it is allocated; `reserve_exact` keeps the capacity what was
            // charged (plain `resize` would double it).
            let capacity = next_capacity(body.len(), len);
            charge.cover(capacity, len)?;
            body.reserve_exact(capacity - body.len());
            body.resize(capacity, 0);
        }
        let n = r.read(&mut body[filled..]).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        filled = (filled + n).min(body.len());
    }
    Ok(Some(body))
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

    /// A reader that hands out what it holds and then waits for good: a peer that stopped
    /// sending in the middle of a frame.
    struct Stalls<'a>(&'a [u8]);

    impl AsyncRead for Stalls<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.0.is_empty() {
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(std::io::Read::read(&mut self.0, buf))
        }
    }

    /// Frames being read share one budget (THREATS N16): while a stalled frame holds most of it,
    /// another that needs more than is left fails, is counted and gives back what it took; a
    /// frame within the free first 4 KiB is read whatever is held; once the stalled frame's
    /// reader is dropped (its stream timed out) the budget is whole again.
    #[tokio::test]
    async fn frames_share_one_budget_and_give_it_back() {
        use futures::FutureExt;
        let budget = FrameBudget::new(1 << 20);
        // A: a 4 MiB frame of which 768 KiB arrive, then nothing.
        let mut head = encode_varint(4 << 20);
        head.resize(head.len() + 768 * 1024, 1);
        let mut stalled = Stalls(&head);
        let mut a = Box::pin(read_frame_async_within(&mut stalled, 4 << 20, &budget));
        assert!(a.as_mut().now_or_never().is_none(), "A waits for the rest");
        let held = budget.held();
        assert!(
            (768 * 1024 - FREE_BYTES..=1 << 20).contains(&held),
            "A holds {held} bytes of the budget"
        );
        // B: a whole 512 KiB frame does not fit beside A.
        let body = vec![2u8; 512 * 1024];
        let mut framed = Vec::new();
        write_frame(&mut framed, &body, 4 << 20).unwrap();
        let b = read_frame_async_within(
            &mut futures::io::Cursor::new(framed.clone()),
            4 << 20,
            &budget,
        )
        .await;
        assert!(
            matches!(
                b,
                Err(FrameError::OverBudget { size, budget: limit })
                    if size == body.len() && limit == 1 << 20
            ),
            "B was read beside A: {:?}",
            b.err()
        );
        assert_eq!(budget.refused(), 1);
        assert_eq!(budget.held(), held, "B gave back what it took");
        // A small frame takes nothing from the budget.
        let mut small = Vec::new();
        write_frame(&mut small, &[3u8; 1000], 4 << 20).unwrap();
        let got = read_frame_async_within(&mut futures::io::Cursor::new(small), 4 << 20, &budget)
            .await
            .unwrap();
        assert_eq!(got.map(|f| f.len()), Some(1000));
        // A's reader dropped: its share comes back, and B is read whole and gives its own back.
        drop(a);
        assert_eq!(budget.held(), 0);
        let got = read_frame_async_within(&mut futures::io::Cursor::new(framed), 4 << 20, &budget)
            .await
            .unwrap();
        assert!(got.as_deref() == Some(&body[..]), "B was not read whole");
        assert_eq!(budget.held(), 0);
        assert_eq!(budget.refused(), 1);
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
