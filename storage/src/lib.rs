//! agora-storage: IPFS-compatible content addressing for Agora nodes.
//!
//! - [`unixfs`]: Kubo-compatible UnixFS importer (`import_file`) and exporter (`export`).
//! - [`blockstore`]: the [`BlockStore`] trait, `SledBlockStore` (feature `sled`) and
//!   [`MemoryBlockStore`].
//! - [`car`]: CAR v1 export/import compatible with `ipfs dag export/import`.
//! - [`dagpb`], [`cbor`], [`protobuf`]: hand-written codecs (dag-pb, DAG-CBOR links, protobuf).
//! - [`bitswap`]: pure bitswap 1.2.0 message codec and a responder over a block store.
//! - [`proof`]: signed blake3 Merkle data-integrity proofs over sensor readings.
//! - [`challenge`]: proof-of-storage challenges over a file's chunks.
//! - `kubo`: a small streaming Kubo RPC client (feature `kubo`, on by default).
//!
//! Features `kubo` and `sled` (both default) bring in the Kubo client and the sled store; the
//! fuzz targets build without them.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bitswap;
pub mod blockstore;
pub mod car;
pub mod cbor;
pub mod challenge;
pub mod dagpb;
mod error;
pub mod hash;
#[cfg(feature = "kubo")]
pub mod kubo;
pub mod merkle;
pub mod proof;
pub mod protobuf;
pub mod unixfs;
pub mod wire;

#[cfg(feature = "sled")]
pub use blockstore::SledBlockStore;
pub use blockstore::{BlockStore, MAX_BLOCK_SIZE, MemoryBlockStore};
pub use car::{export_car, import_car};
pub use cid::Cid;
pub use error::StorageError;
#[cfg(feature = "kubo")]
pub use kubo::{KuboClient, KuboError};
pub use proof::DataProof;
pub use unixfs::{CidVersion, ImportOptions, export, export_async, import_async, import_file};

/// Result alias for storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
