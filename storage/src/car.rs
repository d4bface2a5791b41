//! CAR v1 export and import, compatible with `ipfs dag export` / `ipfs dag import`.
//!
//! Layout: `varint(len) || header || (varint(len) || cid || block)*`, where the header is the
//! DAG-CBOR map `{"roots": [tag42(0x00 || cid)], "version": 1}` (keys in DAG-CBOR order:
//! shorter first). The header is encoded and parsed by hand.

use std::collections::HashSet;
use std::io::{Read, Write};

use cid::Cid;

use crate::blockstore::{block_links, check_size};
use crate::cbor::Cbor;
use crate::hash::verify_block;
use crate::protobuf::{put_varint, read_varint};
use crate::wire::{put_cbor_cid, put_cbor_head as cbor_head, put_cbor_text as cbor_text};
use crate::{BlockStore, Result, StorageError};

/// Largest header accepted on import.
const MAX_HEADER: u64 = 64 * 1024;

/// What an import stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarImport {
    /// Roots named in the header.
    pub roots: Vec<Cid>,
    /// Blocks verified and stored.
    pub blocks: u64,
}

/// Encodes the CAR v1 header for `roots` as DAG-CBOR.
pub fn encode_header(roots: &[Cid]) -> Vec<u8> {
    let mut out = vec![0xa2];
    cbor_text(&mut out, "roots");
    cbor_head(&mut out, 4, roots.len() as u64);
    for root in roots {
        put_cbor_cid(&mut out, root);
    }
    cbor_text(&mut out, "version");
    cbor_head(&mut out, 0, 1);
    out
}

fn header_err(reason: &str) -> StorageError {
    StorageError::decode("CAR header", reason)
}

/// Parses a CAR v1 header, returning its roots.
pub fn decode_header(bytes: &[u8]) -> Result<Vec<Cid>> {
    let mut c = Cbor::new(bytes, "CAR header");
    let entries = c.len(5)?;
    let (mut roots, mut version) = (None, None);
    for _ in 0..entries {
        let key_len = c.len(3)?;
        match c.take(key_len)? {
            b"roots" => {
                let n = c.len(4)?;
                let mut list = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    if c.head()? != (6, 42) {
                        return Err(header_err("root is not a CID (tag 42)"));
                    }
                    let len = c.len(2)?;
                    let raw = c.take(len)?;
                    let cid_bytes = raw
                        .strip_prefix(&[0x00])
                        .ok_or_else(|| header_err("CID missing 0x00 prefix"))?;
                    list.push(Cid::try_from(cid_bytes).map_err(|e| header_err(&e.to_string()))?);
                }
                roots = Some(list);
            }
            b"version" => version = Some(c.head()?),
            _ => return Err(header_err("unknown header key")),
        }
    }
    match version {
        Some((0, 1)) => {}
        Some((0, 2)) => return Err(header_err("CAR v2 is not supported; export as CAR v1")),
        _ => return Err(header_err("missing or unsupported version")),
    }
    roots.ok_or_else(|| header_err("missing roots"))
}

/// Writes a CAR v1 of the DAGs under `roots` (depth first, each block once, like `ipfs dag export`).
pub fn export_car<S: BlockStore + ?Sized, W: Write>(
    store: &S,
    roots: &[Cid],
    mut writer: W,
) -> Result<u64> {
    let header = encode_header(roots);
    let mut prefix = Vec::with_capacity(10);
    put_varint(&mut prefix, header.len() as u64);
    writer.write_all(&prefix)?;
    writer.write_all(&header)?;
    let mut seen = HashSet::new();
    let mut blocks = 0;
    for root in roots {
        let mut stack = vec![*root];
        while let Some(cid) = stack.pop() {
            if !seen.insert(cid) {
                continue;
            }
            let data = store.get(&cid)?;
            let cid_bytes = cid.to_bytes();
            prefix.clear();
            put_varint(&mut prefix, (cid_bytes.len() + data.len()) as u64);
            writer.write_all(&prefix)?;
            writer.write_all(&cid_bytes)?;
            writer.write_all(&data)?;
            blocks += 1;
            let links = block_links(&cid, &data)?;
            stack.extend(links.into_iter().rev());
        }
    }
    writer.flush()?;
    Ok(blocks)
}

/// Reads a CAR v1 stream, verifying every block against its CID before storing it.
pub fn import_car<S: BlockStore + ?Sized, R: Read>(store: &S, mut reader: R) -> Result<CarImport> {
    let header_len = read_varint(&mut reader, "CAR header length")?
        .ok_or_else(|| StorageError::decode("CAR", "empty stream"))?;
    if header_len == 0 || header_len > MAX_HEADER {
        return Err(StorageError::decode(
            "CAR",
            format!("header length {header_len} out of range"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    reader.read_exact(&mut header)?;
    let roots = decode_header(&header)?;
    let mut blocks = 0;
    let mut section = Vec::new();
    while let Some(len) = read_varint(&mut reader, "CAR section length")? {
        // A section is a CID (< 100 bytes) plus a block of at most MAX_BLOCK_SIZE.
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= crate::MAX_BLOCK_SIZE + 128)
            .ok_or_else(|| {
                StorageError::decode(
                    "CAR",
                    format!("section of {len} bytes exceeds the block limit"),
                )
            })?;
        section.resize(len, 0);
        reader.read_exact(&mut section)?;
        let mut cursor = std::io::Cursor::new(section.as_slice());
        let cid = Cid::read_bytes(&mut cursor)
            .map_err(|e| StorageError::decode("CAR section CID", e.to_string()))?;
        let data = &section[cursor.position() as usize..];
        check_size(&cid, data.len())?;
        verify_block(&cid, data)?;
        store.put_unchecked(&cid, data)?;
        blocks += 1;
    }
    Ok(CarImport { roots, blocks })
}

#[cfg(test)]
mod tests;
