//! A minimal protobuf wire-format writer and reader (varint and length-delimited fields; fixed
//! fields are skipped), enough for dag-pb, UnixFS and bitswap without pulling in a protobuf
//! crate. Reading is iterative and bounds-checked: peer bytes never drive recursion or indexing.

use crate::{Result, StorageError};

/// Protobuf wire type for varints.
pub const WIRE_VARINT: u8 = 0;
/// Protobuf wire type for length-delimited fields.
pub const WIRE_LEN: u8 = 2;
/// Protobuf wire type for 64-bit fixed fields (skipped when read).
pub const WIRE_FIXED64: u8 = 1;
/// Protobuf wire type for 32-bit fixed fields (skipped when read).
pub const WIRE_FIXED32: u8 = 5;

// The varint helpers live in `crate::wire`, the one copy shared with the node; re-exported
// here under their old names.
pub use crate::wire::{get_varint, put_varint, read_varint, varint_len};

/// Appends a field key.
pub fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

/// Appends a varint field.
pub fn put_uint(out: &mut Vec<u8>, field: u32, value: u64) {
    put_key(out, field, WIRE_VARINT);
    put_varint(out, value);
}

/// Appends a length-delimited field.
pub fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One decoded field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A varint.
    Varint(u64),
    /// A length-delimited byte slice.
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The varint, or a decode error naming `what`.
    pub fn varint(self, what: &'static str) -> Result<u64> {
        match self {
            Value::Varint(v) => Ok(v),
            Value::Bytes(_) => Err(StorageError::decode(what, "expected varint, found bytes")),
        }
    }

    /// The bytes, or a decode error naming `what`.
    pub fn bytes(self, what: &'static str) -> Result<&'a [u8]> {
        match self {
            Value::Bytes(b) => Ok(b),
            Value::Varint(_) => Err(StorageError::decode(what, "expected bytes, found varint")),
        }
    }
}

/// Iterates the fields of one protobuf message; unknown fields are returned too.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the message in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    /// The next `(field number, value)`, `None` at the end.
    ///
    /// Fixed-width fields (wire types 1 and 5) are skipped in a loop, never by recursion: a peer
    /// can send millions of them in one message.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let (key, used) = get_varint(self.buf, self.what)?;
            self.buf = self.buf.get(used..).unwrap_or_default();
            let field = u32::try_from(key >> 3)
                .map_err(|_| StorageError::decode(self.what, "field number too large"))?;
            match (key & 7) as u8 {
                WIRE_VARINT => {
                    let (v, used) = get_varint(self.buf, self.what)?;
                    self.buf = self.buf.get(used..).unwrap_or_default();
                    return Ok(Some((field, Value::Varint(v))));
                }
                WIRE_LEN => {
                    let (len, used) = get_varint(self.buf, self.what)?;
                    let rest = self.buf.get(used..).unwrap_or_default();
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|len| *len <= rest.len())
                        .ok_or_else(|| StorageError::decode(self.what, "field length past end"))?;
                    let (bytes, rest) = rest.split_at(len);
                    self.buf = rest;
                    return Ok(Some((field, Value::Bytes(bytes))));
                }
                wire @ (WIRE_FIXED64 | WIRE_FIXED32) => {
                    // None of our messages use fixed fields: skip them and read on.
                    let width = if wire == WIRE_FIXED64 { 8 } else { 4 };
                    self.buf = self
                        .buf
                        .get(width..)
                        .ok_or_else(|| StorageError::decode(self.what, "truncated fixed field"))?;
                }
                w => {
                    return Err(StorageError::decode(
                        self.what,
                        format!("unsupported wire type {w}"),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trips(v in any::<u64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            prop_assert_eq!(get_varint(&out, "t").unwrap(), (v, out.len()));
            prop_assert_eq!(read_varint(&mut out.as_slice(), "t").unwrap(), Some(v));
        }

        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes, "t");
            while let Ok(Some(_)) = r.next_field() {}
        }
    }

    #[test]
    fn truncated_length_is_an_error() {
        let buf = [0x0a, 0x05, 1, 2];
        assert!(Reader::new(&buf, "t").next_field().is_err());
    }

    /// Runs `f` on a thread with a 64 KiB stack: recursion per field would overflow it at once.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    /// Issue #13.5: a 4 MiB message of 5-byte fixed32 fields (~840k of them) was skipped by one
    /// recursive call per field and overflowed the stack of a debug build.
    #[test]
    fn millions_of_fixed_fields_are_skipped_without_recursion() {
        on_small_stack(|| {
            // field 1 fixed32, then field 2 fixed64: 14 bytes a pair, ~600k fields in 4 MiB.
            let pair = [0x0d, 1, 2, 3, 4, 0x11, 1, 2, 3, 4, 5, 6, 7, 8];
            let mut buf = pair.repeat((4 << 20) / pair.len());
            put_uint(&mut buf, 7, 42);
            let mut r = Reader::new(&buf, "t");
            assert_eq!(r.next_field().unwrap(), Some((7, Value::Varint(42))));
            assert_eq!(r.next_field().unwrap(), None);
            // Only fixed fields: the reader reaches the end in one call.
            let only = [0x0d, 1, 2, 3, 4].repeat(800_000);
            assert_eq!(Reader::new(&only, "t").next_field().unwrap(), None);
        });
    }

    #[test]
    fn truncated_fixed_fields_and_varints_are_errors() {
        for buf in [
            &[0x0d, 1, 2, 3][..],             // fixed32 with 3 bytes
            &[0x09, 1, 2, 3, 4, 5, 6, 7][..], // fixed64 with 7 bytes
            &[0x80][..],                      // key varint cut short
            &[0x08][..],                      // varint field without its value
            &[0x08, 0xff, 0xff][..],          // value varint cut short
            &[0x0a][..],                      // length missing
            &[0x0b][..],                      // wire type 3 (groups) is refused
            &[0x0c][..],                      // wire type 4
            &[0x0f][..],                      // wire type 7
        ] {
            assert!(Reader::new(buf, "t").next_field().is_err(), "{buf:?}");
        }
        // An 11-byte varint and one overflowing u64 in its tenth byte.
        assert!(get_varint(&[0xff; 11], "t").is_err());
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert!(get_varint(&over, "t").is_err());
        assert!(read_varint(&mut over.as_slice(), "t").is_err());
        assert!(read_varint(&mut [0x80, 0x80].as_slice(), "t").is_err());
        assert_eq!(read_varint(&mut [].as_slice(), "t").unwrap(), None);
    }

    #[test]
    fn ten_gigabyte_length_prefix_is_refused_without_allocating() {
        let mut buf = Vec::new();
        put_key(&mut buf, 2, WIRE_LEN);
        put_varint(&mut buf, 10_000_000_000);
        buf.extend_from_slice(b"short");
        assert!(Reader::new(&buf, "t").next_field().is_err());
        let mut max = Vec::new();
        put_key(&mut max, 2, WIRE_LEN);
        put_varint(&mut max, u64::MAX);
        assert!(Reader::new(&max, "t").next_field().is_err());
    }
}
