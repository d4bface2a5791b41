//! Hand-written protobuf codec for the bitswap `Message`.

use cid::Cid;
use multihash_codetable::{Code, MultihashDigest};

use crate::hash::{BLAKE3, DAG_PB, SHA2_256};
use crate::protobuf::{Reader, WIRE_LEN, get_varint, put_bytes, put_key, put_uint, put_varint};
use crate::{MAX_BLOCK_SIZE, StorageError};

/// Largest encoded message accepted or produced (bitswap's 4 MiB).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
/// Most wantlist entries accepted in one message.
pub const MAX_ENTRIES: usize = 8192;
/// Most blocks, and most block presences, accepted in one message. A presence is ~40 bytes on
/// the wire but ~100 in memory, so an unbounded 4 MiB message would decode to ~10 MiB of them.
pub const MAX_ITEMS: usize = 8192;

/// Errors decoding a bitswap message.
#[derive(Debug, thiserror::Error)]
pub enum BitswapError {
    /// The message is over [`MAX_MESSAGE_SIZE`].
    #[error(
        "bitswap message of {size} bytes exceeds {limit}; the peer is misbehaving, disconnect it"
    )]
    MessageTooLarge {
        /// Encoded size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The message has more than [`MAX_ENTRIES`] wants or [`MAX_ITEMS`] blocks or presences.
    #[error("bitswap message has over {limit} {what}; the peer is misbehaving, disconnect it")]
    TooManyEntries {
        /// What overflowed: "wantlist entries", "blocks" or "block presences".
        what: &'static str,
        /// Limit.
        limit: usize,
    },
    /// A block's CID prefix uses a hash we cannot compute.
    #[error(
        "bitswap block prefix uses multihash {code:#x}; only sha2-256 and blake3 are supported"
    )]
    UnsupportedHash {
        /// Multihash code.
        code: u64,
    },
    /// Wire-format error.
    #[error("malformed bitswap message: {0}")]
    Malformed(String),
    /// Block store failure while responding.
    #[error(transparent)]
    Store(#[from] StorageError),
}

impl BitswapError {
    fn from_decode(e: StorageError) -> Self {
        BitswapError::Malformed(e.to_string())
    }
}

/// What a want asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WantType {
    /// Send the block (0).
    #[default]
    Block,
    /// Say whether we have it (1).
    Have,
}

/// One wantlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantEntry {
    /// Wanted block.
    pub cid: Cid,
    /// Priority (higher first).
    pub priority: i32,
    /// Revokes an earlier want.
    pub cancel: bool,
    /// Block or Have.
    pub want_type: WantType,
    /// Ask for an explicit DONT_HAVE.
    pub send_dont_have: bool,
}

/// A wantlist.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wantlist {
    /// Entries.
    pub entries: Vec<WantEntry>,
    /// Whether this replaces the previous wantlist.
    pub full: bool,
}

/// A block carried in `payload`; the CID is rebuilt from the prefix by hashing the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The block's CID.
    pub cid: Cid,
    /// The block bytes.
    pub data: Vec<u8>,
}

/// HAVE or DONT_HAVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceType {
    /// Have = 0.
    Have,
    /// DontHave = 1.
    DontHave,
}

/// A block presence answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPresence {
    /// The block.
    pub cid: Cid,
    /// Have or not.
    pub kind: PresenceType,
}

/// A bitswap message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Wants (field 1).
    pub wantlist: Option<Wantlist>,
    /// Blocks (field 3, bitswap 1.1+; field 2 blocks are decoded into this as CIDv0).
    pub payload: Vec<Block>,
    /// HAVE / DONT_HAVE answers (field 4).
    pub block_presences: Vec<BlockPresence>,
    /// Bytes the sender still has queued for us (field 5).
    pub pending_bytes: i32,
}

impl Message {
    /// A request for the given blocks, asking for DONT_HAVE answers.
    pub fn want_blocks(cids: &[Cid]) -> Self {
        let entries = cids
            .iter()
            .map(|cid| WantEntry {
                cid: *cid,
                priority: 1,
                cancel: false,
                want_type: WantType::Block,
                send_dont_have: true,
            })
            .collect();
        Message {
            wantlist: Some(Wantlist {
                entries,
                full: false,
            }),
            ..Message::default()
        }
    }

    /// Whether the message carries nothing.
    pub fn is_empty(&self) -> bool {
        self.wantlist
            .as_ref()
            .is_none_or(|w| w.entries.is_empty() && !w.full)
            && self.payload.is_empty()
            && self.block_presences.is_empty()
    }

    /// Encodes the message (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(wl) = &self.wantlist {
            let mut w = Vec::new();
            for e in &wl.entries {
                let mut entry = Vec::new();
                put_bytes(&mut entry, 1, &e.cid.to_bytes());
                put_uint(&mut entry, 2, e.priority as i64 as u64);
                if e.cancel {
                    put_uint(&mut entry, 3, 1);
                }
                if e.want_type == WantType::Have {
                    put_uint(&mut entry, 4, 1);
                }
                if e.send_dont_have {
                    put_uint(&mut entry, 5, 1);
                }
                put_bytes(&mut w, 1, &entry);
            }
            if wl.full {
                put_uint(&mut w, 2, 1);
            }
            put_bytes(&mut out, 1, &w);
        }
        for block in &self.payload {
            let prefix = cid_prefix(&block.cid);
            put_key(&mut out, 3, WIRE_LEN);
            let len = 1
                + crate::protobuf::varint_len(prefix.len() as u64)
                + prefix.len()
                + 1
                + crate::protobuf::varint_len(block.data.len() as u64)
                + block.data.len();
            put_varint(&mut out, len as u64);
            put_bytes(&mut out, 1, &prefix);
            put_bytes(&mut out, 2, &block.data);
        }
        for p in &self.block_presences {
            let mut bp = Vec::new();
            put_bytes(&mut bp, 1, &p.cid.to_bytes());
            if p.kind == PresenceType::DontHave {
                put_uint(&mut bp, 2, 1);
            }
            put_bytes(&mut out, 4, &bp);
        }
        if self.pending_bytes != 0 {
            put_uint(&mut out, 5, self.pending_bytes as i64 as u64);
        }
        out
    }

    /// Decodes a message (without the length prefix), enforcing size limits.
    pub fn decode(bytes: &[u8]) -> Result<Self, BitswapError> {
        if bytes.len() > MAX_MESSAGE_SIZE {
            return Err(BitswapError::MessageTooLarge {
                size: bytes.len(),
                limit: MAX_MESSAGE_SIZE,
            });
        }
        let mut msg = Message::default();
        let mut r = Reader::new(bytes, "bitswap Message");
        while let Some((field, value)) = r.next_field().map_err(BitswapError::from_decode)? {
            match field {
                1 => msg.wantlist = Some(decode_wantlist(bytes_of(value)?)?),
                2 => {
                    room(&msg.payload, MAX_ITEMS, "blocks")?;
                    let data = bytes_of(value)?.to_vec();
                    let cid = block_cid(0, DAG_PB, SHA2_256, &data)?;
                    msg.payload.push(Block { cid, data });
                }
                3 => {
                    room(&msg.payload, MAX_ITEMS, "blocks")?;
                    msg.payload.push(decode_block(bytes_of(value)?)?);
                }
                4 => {
                    room(&msg.block_presences, MAX_ITEMS, "block presences")?;
                    msg.block_presences.push(decode_presence(bytes_of(value)?)?);
                }
                5 => msg.pending_bytes = varint_of(value)? as i32,
                _ => {}
            }
        }
        Ok(msg)
    }
}

/// Errors once `items` is full, before another one is decoded.
fn room<T>(items: &[T], limit: usize, what: &'static str) -> Result<(), BitswapError> {
    if items.len() >= limit {
        return Err(BitswapError::TooManyEntries { what, limit });
    }
    Ok(())
}

fn bytes_of(v: crate::protobuf::Value<'_>) -> Result<&[u8], BitswapError> {
    v.bytes("bitswap field").map_err(BitswapError::from_decode)
}

fn varint_of(v: crate::protobuf::Value<'_>) -> Result<u64, BitswapError> {
    v.varint("bitswap field").map_err(BitswapError::from_decode)
}

fn parse_cid(bytes: &[u8]) -> Result<Cid, BitswapError> {
    Cid::try_from(bytes).map_err(|e| BitswapError::Malformed(format!("bad CID: {e}")))
}

fn decode_wantlist(bytes: &[u8]) -> Result<Wantlist, BitswapError> {
    let mut wl = Wantlist::default();
    let mut r = Reader::new(bytes, "bitswap Wantlist");
    while let Some((field, value)) = r.next_field().map_err(BitswapError::from_decode)? {
        match field {
            1 => {
                room(&wl.entries, MAX_ENTRIES, "wantlist entries")?;
                wl.entries.push(decode_entry(bytes_of(value)?)?);
            }
            2 => wl.full = varint_of(value)? != 0,
            _ => {}
        }
    }
    Ok(wl)
}

fn decode_entry(bytes: &[u8]) -> Result<WantEntry, BitswapError> {
    let mut cid = None;
    let (mut priority, mut cancel, mut want_type, mut send_dont_have) =
        (1, false, WantType::Block, false);
    let mut r = Reader::new(bytes, "bitswap Entry");
    while let Some((field, value)) = r.next_field().map_err(BitswapError::from_decode)? {
        match field {
            1 => cid = Some(parse_cid(bytes_of(value)?)?),
            2 => priority = varint_of(value)? as i32,
            3 => cancel = varint_of(value)? != 0,
            4 => {
                want_type = if varint_of(value)? == 1 {
                    WantType::Have
                } else {
                    WantType::Block
                }
            }
            5 => send_dont_have = varint_of(value)? != 0,
            _ => {}
        }
    }
    let cid = cid.ok_or_else(|| BitswapError::Malformed("want entry without CID".into()))?;
    Ok(WantEntry {
        cid,
        priority,
        cancel,
        want_type,
        send_dont_have,
    })
}

fn decode_presence(bytes: &[u8]) -> Result<BlockPresence, BitswapError> {
    let mut cid = None;
    let mut kind = PresenceType::Have;
    let mut r = Reader::new(bytes, "bitswap BlockPresence");
    while let Some((field, value)) = r.next_field().map_err(BitswapError::from_decode)? {
        match field {
            1 => cid = Some(parse_cid(bytes_of(value)?)?),
            2 => {
                kind = if varint_of(value)? == 1 {
                    PresenceType::DontHave
                } else {
                    PresenceType::Have
                }
            }
            _ => {}
        }
    }
    let cid = cid.ok_or_else(|| BitswapError::Malformed("block presence without CID".into()))?;
    Ok(BlockPresence { cid, kind })
}

fn decode_block(bytes: &[u8]) -> Result<Block, BitswapError> {
    let (mut prefix, mut data) = (None, None);
    let mut r = Reader::new(bytes, "bitswap Block");
    while let Some((field, value)) = r.next_field().map_err(BitswapError::from_decode)? {
        match field {
            1 => prefix = Some(bytes_of(value)?),
            2 => data = Some(bytes_of(value)?),
            _ => {}
        }
    }
    let prefix = prefix.ok_or_else(|| BitswapError::Malformed("block without prefix".into()))?;
    let data = data.unwrap_or_default().to_vec();
    let mut fields = [0u64; 4];
    let mut rest = prefix;
    for f in &mut fields {
        let (v, used) = get_varint(rest, "bitswap prefix").map_err(BitswapError::from_decode)?;
        *f = v;
        rest = &rest[used..];
    }
    let [version, codec, code, len] = fields;
    if len != 32 {
        return Err(BitswapError::Malformed(format!(
            "prefix digest length {len}, expected 32"
        )));
    }
    Ok(Block {
        cid: block_cid(version, codec, code, &data)?,
        data,
    })
}

/// Rebuilds a block's CID by hashing it as the prefix says.
fn block_cid(version: u64, codec: u64, code: u64, data: &[u8]) -> Result<Cid, BitswapError> {
    if data.len() > MAX_BLOCK_SIZE {
        return Err(BitswapError::Malformed(format!(
            "block of {} bytes over the {MAX_BLOCK_SIZE}-byte limit",
            data.len()
        )));
    }
    let mh = match code {
        SHA2_256 => Code::Sha2_256.digest(data),
        BLAKE3 => Code::Blake3_256.digest(data),
        _ => return Err(BitswapError::UnsupportedHash { code }),
    };
    match version {
        0 => Cid::new_v0(mh).map_err(|e| BitswapError::Malformed(e.to_string())),
        1 => Ok(Cid::new_v1(codec, mh)),
        v => Err(BitswapError::Malformed(format!("CID version {v}"))),
    }
}

/// The CID prefix: version, codec, multihash code, digest length (all varints).
pub(crate) fn cid_prefix(cid: &Cid) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    put_varint(&mut out, u64::from(cid.version()));
    put_varint(&mut out, cid.codec());
    put_varint(&mut out, cid.hash().code());
    put_varint(&mut out, u64::from(cid.hash().size()));
    out
}
