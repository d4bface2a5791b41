//! A minimal protobuf wire-format writer and reader (varint and length-delimited fields only),
//! enough for dag-pb, UnixFS and bitswap without pulling in a protobuf crate.

use crate::{Result, StorageError};

/// Protobuf wire type for varints.
pub const WIRE_VARINT: u8 = 0;
/// Protobuf wire type for length-delimited fields.
pub const WIRE_LEN: u8 = 2;

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
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let (key, used) = get_varint(self.buf, self.what)?;
        self.buf = &self.buf[used..];
        let field = u32::try_from(key >> 3)
            .map_err(|_| StorageError::decode(self.what, "field number too large"))?;
        match (key & 7) as u8 {
            WIRE_VARINT => {
                let (v, used) = get_varint(self.buf, self.what)?;
                self.buf = &self.buf[used..];
                Ok(Some((field, Value::Varint(v))))
            }
            WIRE_LEN => {
                let (len, used) = get_varint(self.buf, self.what)?;
                let rest = &self.buf[used..];
                let len = usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= rest.len())
                    .ok_or_else(|| StorageError::decode(self.what, "field length past end"))?;
                let (bytes, rest) = rest.split_at(len);
                self.buf = rest;
                Ok(Some((field, Value::Bytes(bytes))))
            }
            1 | 5 => {
                // 64-bit and 32-bit fixed fields: skip, none of our messages use them.
                let width = if key & 7 == 1 { 8 } else { 4 };
                if self.buf.len() < width {
                    return Err(StorageError::decode(self.what, "truncated fixed field"));
                }
                self.buf = &self.buf[width..];
                self.next_field()
            }
            w => Err(StorageError::decode(
                self.what,
                format!("unsupported wire type {w}"),
            )),
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
}
