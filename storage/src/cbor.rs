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
        let first = self.take(1)?.first().copied().unwrap_or_default();
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

/// Checks, without recursion, that the CBOR item at the front of `bytes` nests arrays, maps and
/// tags at most `max_depth` deep (and has at most 2^20 items), before it is handed to a
/// recursive decoder. serde_cbor stops at 128 levels, but 127 levels of its recursion (an
/// unknown field of a `DataProof` holding nested arrays) needed 512-768 KiB of stack in a debug
/// build, a third of a 2 MiB async worker's stack; our messages nest a handful of levels.
pub fn check_nesting(bytes: &[u8], max_depth: usize, what: &'static str) -> Result<()> {
    let mut c = Cbor::new(bytes, what);
    // Items still to read at each open level; the outermost level holds the one top item.
    let mut open: Vec<u64> = vec![1];
    let mut visited: u64 = 0;
    while let Some(left) = open.last_mut() {
        if *left == 0 {
            open.pop();
            continue;
        }
        *left -= 1;
        visited += 1;
        if visited > MAX_ITEMS {
            return Err(c.err("too many items"));
        }
        let (major, arg) = c.head()?;
        let items = match major {
            2 | 3 => {
                let len = usize::try_from(arg).map_err(|_| c.err("length too large"))?;
                c.take(len)?;
                continue;
            }
            4 => arg,
            5 => arg.saturating_mul(2),
            6 => 1,
            _ => continue,
        };
        if items > 0 {
            if open.len() > max_depth {
                return Err(c.err(&format!("nested deeper than {max_depth} levels")));
            }
            open.push(items);
        }
    }
    Ok(())
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

    /// Deep nesting is walked by a counter, not recursion: a block of a million nested arrays
    /// (or maps, or tags) is refused or read on a 64 KiB stack.
    #[test]
    fn deep_nesting_does_not_recurse() {
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| {
                for open in [0x81u8, 0xa1, 0xc1] {
                    let deep = vec![open; 1 << 20];
                    assert!(dag_cbor_links(&deep).is_err(), "{open:#x}");
                }
                // 100k nested one-element arrays around a link: fine, and found.
                let cid = cid_v0(b"deep");
                let mut doc = vec![0x81; 100_000];
                doc.extend([0xd8, 0x2a, 0x58, 35, 0]);
                doc.extend(cid.to_bytes());
                assert_eq!(dag_cbor_links(&doc).unwrap(), vec![cid]);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn nesting_is_measured_without_recursion() {
        // [[1, {"a": [2]}], 42(h'')] nests 4 levels: two arrays, the map, the array in it.
        let doc = [
            0x82, 0x82, 0x01, 0xa1, 0x61, b'a', 0x81, 0x02, 0xd8, 0x2a, 0x40,
        ];
        assert!(check_nesting(&doc, 4, "t").is_ok());
        assert!(check_nesting(&doc, 3, "t").is_err());
        assert!(check_nesting(&[0x01], 0, "t").is_ok());
        assert!(
            check_nesting(&[0x80], 0, "t").is_ok(),
            "an empty array opens no level"
        );
        assert!(check_nesting(&[0x81, 0x01], 0, "t").is_err());
        assert!(check_nesting(&[0x82, 0x01], 4, "t").is_err(), "truncated");
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| {
                for open in [0x81u8, 0xa1, 0xc1] {
                    assert!(check_nesting(&vec![open; 1 << 20], 64, "t").is_err());
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn huge_lengths_are_refused_without_allocating() {
        // A byte string and a text string claiming 10 GB, an array claiming 2^64-1 items.
        let ten_gb = 10_000_000_000u64.to_be_bytes();
        for major in [0x5b, 0x7b, 0x9b, 0xbb] {
            let mut doc = vec![major];
            doc.extend(ten_gb);
            assert!(dag_cbor_links(&doc).is_err());
        }
        assert!(dag_cbor_links(&[0x5f]).is_err(), "indefinite length");
        assert!(dag_cbor_links(&[0x19, 0x01]).is_err(), "truncated head");
        assert!(dag_cbor_links(&[]).is_err());
    }
}
