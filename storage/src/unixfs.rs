//! UnixFS files, byte-for-byte compatible with Kubo's `ipfs add` defaults: fixed 256 KiB chunks,
//! balanced DAG with at most 174 links per node; CIDv0 with dag-pb leaves, or CIDv1 with raw
//! leaves (`--cid-version 1`).

mod builder;
mod data;
mod exporter;

use std::io::Read;

use cid::Cid;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{BlockStore, Result};

pub use builder::FileBuilder;
pub use data::{DataType, UnixFsData};
pub use exporter::{
    ExportStats, FileReader, MAX_DAG_DEPTH, MAX_FILE_LEAVES, declared_size, export, export_async,
    export_within, file_leaves, file_leaves_within, leaf_bytes,
};

/// Kubo's default chunk size (`size-262144`).
pub const DEFAULT_CHUNK_SIZE: usize = 262_144;
/// Kubo's maximum links per balanced-DAG node.
pub const DEFAULT_MAX_LINKS: usize = 174;

/// CID version of the imported DAG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CidVersion {
    /// CIDv0 with dag-pb UnixFS leaves (Kubo's default).
    #[default]
    V0,
    /// CIDv1: raw leaves and dag-pb internal nodes, base32 text (`ipfs add --cid-version 1`).
    V1,
}

/// How to chunk and encode a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// CID version (and leaf format).
    pub cid_version: CidVersion,
    /// Chunk size in bytes (Kubo default 262144).
    pub chunk_size: usize,
    /// Maximum links per internal node (Kubo default 174).
    pub max_links: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            cid_version: CidVersion::V0,
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_links: DEFAULT_MAX_LINKS,
        }
    }
}

impl ImportOptions {
    /// Kubo's `ipfs add --cid-version 1` settings.
    pub fn v1() -> Self {
        ImportOptions {
            cid_version: CidVersion::V1,
            ..Self::default()
        }
    }
}

/// Imports a file from `reader` into `store`, one chunk in memory at a time; returns the root CID.
pub fn import_file<S: BlockStore + ?Sized, R: Read>(
    store: &S,
    mut reader: R,
    options: ImportOptions,
) -> Result<Cid> {
    let mut builder = FileBuilder::new(store, options)?;
    let mut chunk = vec![0u8; options.chunk_size];
    loop {
        let n = read_full(&mut reader, &mut chunk)?;
        if n == 0 {
            break;
        }
        builder.push_chunk(&chunk[..n])?;
        if n < chunk.len() {
            break;
        }
    }
    builder.finish()
}

/// Like [`import_file`] for an async reader; block writes are synchronous (sled is fast, but
/// call this from a task that may block briefly).
pub async fn import_async<S: BlockStore + ?Sized, R: AsyncRead + Unpin>(
    store: &S,
    mut reader: R,
    options: ImportOptions,
) -> Result<Cid> {
    let mut builder = FileBuilder::new(store, options)?;
    let mut chunk = vec![0u8; options.chunk_size];
    loop {
        let mut filled = 0;
        while filled < chunk.len() {
            let n = reader.read(&mut chunk[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        builder.push_chunk(&chunk[..filled])?;
        if filled < chunk.len() {
            break;
        }
    }
    builder.finish()
}

/// Reads until `buf` is full or the stream ends (like Go's `io.ReadFull`, which Kubo's chunker uses).
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests;
