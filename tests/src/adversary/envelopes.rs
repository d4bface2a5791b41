//! Hand-crafted broken envelopes: each is what a hostile peer can put on the wire, and each
//! must be refused (and counted) by every node that receives it.

use agora_market::{KeySigner, Signer};
use agora_wire::codec::{Envelope, GOSSIP_MAX_SKEW_MS, Kind};
use agora_wire::now_ms;

/// One broken message, named for the assertion messages of attack tests.
#[derive(Clone, Debug)]
pub struct Bad {
    /// What is wrong with it (`"forged"`, `"stale"`, …).
    pub what: &'static str,
    /// The bytes to send.
    pub bytes: Vec<u8>,
}

/// The envelope `signer` would send, with its payload changed after signing: the signature no
/// longer verifies.
pub fn forged(signer: &KeySigner, kind: Kind, payload: Vec<u8>) -> Envelope {
    let mut env = Envelope::seal(signer, kind, now_ms(), 1, payload);
    env.payload.push(0xff);
    env
}

/// A correctly signed envelope claiming to come from `victim` but signed by `signer`.
pub fn impersonating(signer: &KeySigner, victim: agora_market::NodeId, kind: Kind) -> Envelope {
    let mut env = Envelope::seal(signer, kind, now_ms(), 1, b"i am someone else".to_vec());
    env.sender = victim;
    env
}

/// Correctly signed, but sent long ago (outside the gossip freshness window).
pub fn stale(signer: &KeySigner, kind: Kind, payload: Vec<u8>) -> Envelope {
    let at = now_ms().saturating_sub(10 * GOSSIP_MAX_SKEW_MS);
    Envelope::seal(signer, kind, at, 1, payload)
}

/// Correctly signed, but dated well beyond any clock skew in the future.
pub fn future_dated(signer: &KeySigner, kind: Kind, payload: Vec<u8>) -> Envelope {
    let at = now_ms() + 10 * GOSSIP_MAX_SKEW_MS;
    Envelope::seal(signer, kind, at, 1, payload)
}

/// Correctly signed and fresh, with a payload of `limit + 1` bytes (pass the receiving side's
/// limit: `MAX_GOSSIP_BYTES` or `MAX_RPC_BYTES`).
pub fn oversized(signer: &KeySigner, kind: Kind, limit: usize) -> Envelope {
    Envelope::seal(signer, kind, now_ms(), 1, vec![0x5a; limit + 1])
}

/// Signed under `signed_as`'s domain, but claiming to be `claimed`: the domain separation
/// makes the signature fail for the claimed kind.
pub fn wrong_kind(
    signer: &KeySigner,
    signed_as: Kind,
    claimed: Kind,
    payload: Vec<u8>,
) -> Envelope {
    let mut env = Envelope::seal(signer, signed_as, now_ms(), 1, payload);
    env.kind = claimed;
    env
}

/// A correctly signed, fresh envelope whose payload is not the body its kind expects.
pub fn malformed_body(signer: &KeySigner, kind: Kind) -> Envelope {
    Envelope::seal(signer, kind, now_ms(), 1, vec![0xff, 0x00, 0x13, 0x37])
}

/// Bytes that are no envelope at all.
pub fn garbage(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ 0xa5)
        .collect()
}

/// The envelope's encoding cut in half.
pub fn truncated(env: &Envelope) -> Vec<u8> {
    let mut bytes = env.to_bytes();
    bytes.truncate(bytes.len() / 2);
    bytes
}

/// Every broken variant of a `kind` message from `signer` (`limit`: the receiver's size limit).
/// Stale and future-dated count as broken for gossip only (requests carry no freshness rule);
/// pass `gossip` accordingly.
pub fn all_bad(signer: &KeySigner, kind: Kind, limit: usize, gossip: bool) -> Vec<Bad> {
    let other = if kind == Kind::Raw {
        Kind::Market
    } else {
        Kind::Raw
    };
    let victim = KeySigner::from_seed(0xdead).node_id();
    let mut out = vec![
        Bad {
            what: "forged signature",
            bytes: forged(signer, kind, b"forged".to_vec()).to_bytes(),
        },
        Bad {
            what: "impersonation",
            bytes: impersonating(signer, victim, kind).to_bytes(),
        },
        Bad {
            what: "oversized",
            bytes: oversized(signer, kind, limit).to_bytes(),
        },
        Bad {
            what: "wrong kind",
            bytes: wrong_kind(signer, other, kind, b"wrong kind".to_vec()).to_bytes(),
        },
        Bad {
            what: "garbage",
            bytes: garbage(512),
        },
        Bad {
            what: "truncated",
            bytes: truncated(&Envelope::seal(signer, kind, now_ms(), 9, vec![1; 64])),
        },
    ];
    if gossip {
        out.push(Bad {
            what: "stale",
            bytes: stale(signer, kind, b"stale".to_vec()).to_bytes(),
        });
        out.push(Bad {
            what: "future-dated",
            bytes: future_dated(signer, kind, b"future".to_vec()).to_bytes(),
        });
    }
    out
}
