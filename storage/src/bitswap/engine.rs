//! A stateless bitswap responder: wants in, response messages out.
//!
//! Not done here: per-peer ledgers, remembered wants (a want for a block we lack is answered with
//! DONT_HAVE if asked, and forgotten), and serving cancels; the node keeps that state.

use cid::Cid;

use super::message::{
    BitswapError, Block, BlockPresence, MAX_MESSAGE_SIZE, Message, PresenceType, WantType,
};
use crate::{BlockStore, StorageError};

/// Room left for framing and presences when packing blocks into one message.
const HEADROOM: usize = 64 * 1024;

/// Blocks go into one message until it holds this many bytes; a larger block travels alone.
/// Small blocks are batched, but a 256 KiB block (UnixFS's usual chunk) is a message of its
/// own, so the receiver can store it, and ask for the next one, as soon as it arrived instead
/// of after up to 4 MiB of other blocks (as Kubo's engine sends large blocks one at a time).
pub const TARGET_MESSAGE_SIZE: usize = 256 * 1024;

/// Answers a peer's wants from `store`, split into messages each under the size limit and,
/// unless a single block is larger, at most [`TARGET_MESSAGE_SIZE`].
///
/// Block wants we can serve get the block; Have wants get HAVE; wants we cannot serve get
/// DONT_HAVE when the peer asked for it. Corrupted local blocks are treated as missing (the store
/// deletes them). Cancel entries need no answer.
pub fn respond<S: BlockStore + ?Sized>(
    store: &S,
    request: &Message,
) -> Result<Vec<Message>, BitswapError> {
    let Some(wantlist) = &request.wantlist else {
        return Ok(Vec::new());
    };
    let mut entries: Vec<_> = wantlist.entries.iter().filter(|e| !e.cancel).collect();
    // Highest priority first; stable so equal priorities keep arrival order.
    entries.sort_by_key(|e| std::cmp::Reverse(e.priority));
    let mut out = vec![Message::default()];
    let mut size = 0usize;
    for entry in entries {
        let presence = match entry.want_type {
            WantType::Block => match store.get(&entry.cid) {
                Ok(data) => {
                    let need = data.len() + 128;
                    let limit = TARGET_MESSAGE_SIZE.min(MAX_MESSAGE_SIZE - HEADROOM);
                    if size + need > limit && size > 0 {
                        out.push(Message::default());
                        size = 0;
                    }
                    size += need;
                    if let Some(msg) = out.last_mut() {
                        msg.payload.push(Block {
                            cid: entry.cid,
                            data,
                        });
                    }
                    None
                }
                Err(StorageError::NotFound { .. } | StorageError::Corrupted { .. }) => {
                    entry.send_dont_have.then_some(PresenceType::DontHave)
                }
                Err(e) => return Err(e.into()),
            },
            WantType::Have => {
                if store.has(&entry.cid)? {
                    Some(PresenceType::Have)
                } else {
                    entry.send_dont_have.then_some(PresenceType::DontHave)
                }
            }
        };
        if let (Some(kind), Some(msg)) = (presence, out.last_mut()) {
            msg.block_presences.push(BlockPresence {
                cid: entry.cid,
                kind,
            });
            size += 48;
        }
    }
    out.retain(|m| !m.is_empty());
    Ok(out)
}

/// What a received message delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// Blocks stored.
    pub stored: Vec<Cid>,
    /// Peer says it has these.
    pub have: Vec<Cid>,
    /// Peer says it lacks these.
    pub dont_have: Vec<Cid>,
}

/// Stores the blocks in a received message and sorts its presences. Payload CIDs were rebuilt by
/// hashing, so every stored block matches its CID; the caller should drop blocks it never wanted.
pub fn ingest<S: BlockStore + ?Sized>(
    store: &S,
    message: &Message,
) -> Result<Received, BitswapError> {
    let mut received = Received::default();
    for block in &message.payload {
        store.put(&block.cid, &block.data)?;
        received.stored.push(block.cid);
    }
    for p in &message.block_presences {
        match p.kind {
            PresenceType::Have => received.have.push(p.cid),
            PresenceType::DontHave => received.dont_have.push(p.cid),
        }
    }
    Ok(received)
}
