//! Just enough CBOR reading for DAG-CBOR: heads, lengths, and finding links (tag 42 CIDs).

use cid::Cid;

use crate::{Result, StorageError};

/// Most items a single links scan will visit before giving up (guards hostile blocks).
const MAX_ITEMS: u64 = 1 << 20;

/// A cursor over CBOR bytes.
pub(crate) struct Cbor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cbor<'a> {
    /// A cursor over `buf`; `what` names the data in errors.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cbor { buf, what }
    }

    fn err(&self, reason: &str) -> StorageError {
        StorageError::decode(self.what, reason)
    }

    /// Takes the next `n` raw bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn be(&mut self, n: usize) -> Result<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0, |a, b| (a << 8) | u64::from(*b)))
    }

    /// Reads a head: (major type, argument).
    pub(crate) fn head(&mut self) -> Result<(u8, u64)> {
        let first = self.take(1)?[0];
        let (major, info) = (first >> 5, first & 0x1f);
        let value = match info {
            0..=23 => u64::from(info),
            24 => self.be(1)?,
            25 => self.be(2)?,
            26 => self.be(4)?,
            27 => self.be(8)?,
            _ => return Err(self.err("indefinite lengths are not DAG-CBOR")),
        };
        Ok((major, value))
    }

    /// Reads a head of `major` type and returns its length argument.
    pub(crate) fn len(&mut self, major: u8) -> Result<usize> {
        match self.head()? {
            (m, v) if m == major => usize::try_from(v).map_err(|_| self.err("length too large")),
            _ => Err(self.err("unexpected CBOR type")),
        }
    }
}

/// Every CID linked (CBOR tag 42) from a DAG-CBOR block, in document order. Iterative, so deep
/// nesting cannot overflow the stack.
pub fn dag_cbor_links(bytes: &[u8]) -> Result<Vec<Cid>> {
    let mut c = Cbor::new(bytes, "dag-cbor block");
    let mut links = Vec::new();
    let mut pending: u64 = 1;
    let mut visited: u64 = 0;
    while pending > 0 {
        pending -= 1;
        visited += 1;
        if visited > MAX_ITEMS {
            return Err(c.err("too many items"));
        }
        let (major, arg) = c.head()?;
        match major {
            2 | 3 => {
                let len = usize::try_from(arg).map_err(|_| c.err("length too large"))?;
                c.take(len)?;
            }
            4 => pending = pending.saturating_add(arg),
            5 => pending = pending.saturating_add(arg.saturating_mul(2)),
            6 if arg == 42 => {
                let len = c.len(2)?;
                let raw = c.take(len)?;
                let cid = raw
                    .strip_prefix(&[0x00])
                    .ok_or_else(|| c.err("CID link missing 0x00 prefix"))?;
                links.push(Cid::try_from(cid).map_err(|e| c.err(&e.to_string()))?);
            }
            6 => pending = pending.saturating_add(1),
            // Integers and simple values/floats carry everything in the head.
            _ => {}
        }
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{RAW, cid_v0, cid_v1_sha256};

    #[test]
    fn finds_nested_links_and_rejects_garbage() {
        let (a, b) = (cid_v0(b"a"), cid_v1_sha256(RAW, b"b"));
        let tagged = |cid: &Cid| {
            let mut v = vec![0xd8, 0x2a, 0x58];
            let bytes = cid.to_bytes();
            v.push(bytes.len() as u8 + 1);
            v.push(0);
            v.extend_from_slice(&bytes);
            v
        };
        // {"x": [1, tag42(a), {"y": tag42(b)}], "z": "s"}
        let mut doc = vec![0xa2, 0x61, b'x', 0x83, 0x01];
        doc.extend(tagged(&a));
        doc.extend([0xa1, 0x61, b'y']);
        doc.extend(tagged(&b));
        doc.extend([0x61, b'z', 0x61, b's']);
        assert_eq!(dag_cbor_links(&doc).unwrap(), vec![a, b]);
        assert!(dag_cbor_links(&doc[..doc.len() - 1]).is_err());
        assert!(dag_cbor_links(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
