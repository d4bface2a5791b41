//! The storage error type shared by the block store, importer, exporter, CAR and bitswap code.

use cid::Cid;

/// Errors from block storage and the codecs built on it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No block with this CID is stored.
    #[error("block {cid} not found; fetch it from a peer (bitswap) or re-import the file")]
    NotFound {
        /// The missing block.
        cid: Cid,
    },
    /// The stored bytes do not hash to the CID; the block was removed so it can be refetched.
    #[error("block {cid} was corrupted on disk and has been removed; refetch it from a peer")]
    Corrupted {
        /// The corrupted block.
        cid: Cid,
    },
    /// Bytes offered for a CID do not hash to it.
    #[error("block {cid} does not match its hash; the sender is faulty, fetch it elsewhere")]
    HashMismatch {
        /// The CID the bytes claimed to be.
        cid: Cid,
    },
    /// The CID uses a multihash we cannot verify.
    #[error(
        "block {cid} uses multihash code {code:#x}; only sha2-256 (0x12) and blake3 (0x1e) are supported"
    )]
    UnsupportedHash {
        /// The block.
        cid: Cid,
        /// Its multihash code.
        code: u64,
    },
    /// A block is larger than [`crate::MAX_BLOCK_SIZE`].
    #[error("block {cid} is {size} bytes, over the {limit}-byte block limit; use smaller chunks")]
    BlockTooLarge {
        /// The block.
        cid: Cid,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A file's root declares more bytes than the operation allows (a small DAG that links the
    /// same blocks many times can declare a huge file).
    #[error(
        "file {cid} declares {declared} bytes, over the {limit}-byte limit of this operation; \
         it is refused before any of it is written"
    )]
    FileTooLarge {
        /// The file's root.
        cid: Cid,
        /// The size its root declares.
        declared: u64,
        /// The limit.
        limit: u64,
    },
    /// The block's codec is not one this operation understands.
    #[error("block {cid} has codec {codec:#x}; expected dag-pb (0x70) or raw (0x55)")]
    UnsupportedCodec {
        /// The block.
        cid: Cid,
        /// Its multicodec.
        codec: u64,
    },
    /// A block failed to decode.
    #[error("block {cid} is malformed: {reason}")]
    Malformed {
        /// The block.
        cid: Cid,
        /// What was wrong.
        reason: String,
    },
    /// A byte stream (CAR file, protobuf, CBOR) failed to decode.
    #[error("malformed {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The sled database failed.
    #[cfg(feature = "sled")]
    #[error(
        "block database error: {0}; check the storage directory is writable and not opened by another agora process"
    )]
    Db(#[from] sled::Error),
    /// Reading or writing the data stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    /// Shorthand for a [`StorageError::Decode`].
    pub(crate) fn decode(what: &'static str, reason: impl Into<String>) -> Self {
        StorageError::Decode {
            what,
            reason: reason.into(),
        }
    }
}
