//! The one wire codec: versioned, signed envelopes encoded with serde_cbor.
//!
//! Every message that crosses the network is an [`Envelope`]. Its signature is domain separated by
//! message kind, sizes are checked before any decoding, and every failure is a typed
//! [`CodecError`] — never a panic.

use agora_market::{Domain, NodeId, Signature, Signer, Timestamp, verify};
use serde::{Deserialize, Serialize};

/// Current envelope version; others are rejected.
pub const WIRE_VERSION: u8 = 1;
/// Largest gossip envelope accepted (checked before decoding).
pub const MAX_GOSSIP_BYTES: usize = 256 * 1024;
/// Largest request/response envelope accepted (checked before decoding).
pub const MAX_RPC_BYTES: usize = 4 * 1024 * 1024;
/// How far a gossip envelope's `sent_at` may lie from the receiver's clock, either way.
///
/// Gossip carries no libp2p author (see `network::behaviour`): the envelope's own signature is
/// the authentication. What stops a relay from re-injecting someone else's old message is this
/// window together with content-addressed message ids: inside the window a re-injected copy has
/// the same id and is dropped as a duplicate, outside it the envelope is stale.
pub const GOSSIP_MAX_SKEW_MS: u64 = 30_000;

/// What an envelope carries; each kind signs under its own domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Liveness heartbeat of a node.
    Presence,
    /// Market traffic (auctions, bids, offers, awards, negotiation).
    Market,
    /// Arbitrator consensus (proposals, votes, sync).
    Consensus,
    /// Ledger transactions submitted to the arbitrators.
    Transaction,
    /// Contract signing between the two parties of a deal.
    Deal,
    /// Free-form application payload (diagnostics and tests).
    Raw,
    /// Sensor-radio checkpoints (which readings an edge processed, with their proof).
    Radio,
    /// Proof-of-storage challenges and answers of storage contracts.
    Storage,
    /// Uptime probes of hosted and standby services by their contract's arbitrators.
    Probe,
    /// Fleet deployments: records, polls, candidate offers and progress reports (#15).
    Fleet,
}

impl Kind {
    /// The signing domain of this kind.
    pub fn domain(self) -> Domain {
        match self {
            Kind::Presence => Domain("agora/v1/envelope/presence"),
            Kind::Market => Domain("agora/v1/envelope/market"),
            Kind::Consensus => Domain("agora/v1/envelope/consensus"),
            Kind::Transaction => Domain("agora/v1/envelope/transaction"),
            Kind::Deal => Domain("agora/v1/envelope/deal"),
            Kind::Raw => Domain("agora/v1/envelope/raw"),
            Kind::Radio => Domain("agora/v1/envelope/radio"),
            Kind::Storage => Domain("agora/v1/envelope/storage"),
            Kind::Probe => Domain("agora/v1/envelope/probe"),
            Kind::Fleet => Domain("agora/v1/envelope/fleet"),
        }
    }
}

/// A signed, versioned message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Wire version (must equal [`WIRE_VERSION`]).
    pub version: u8,
    /// Message kind; selects the signing domain.
    pub kind: Kind,
    /// The author.
    pub sender: NodeId,
    /// Author's clock when signed (ms).
    pub sent_at: Timestamp,
    /// Per-sender sequence number.
    pub seq: u64,
    /// The message body, itself CBOR of a kind-specific type.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Signature over everything above under `kind.domain()`.
    pub signature: Signature,
}

#[derive(Serialize)]
struct SignedPart<'a> {
    version: u8,
    kind: Kind,
    sender: &'a NodeId,
    sent_at: Timestamp,
    seq: u64,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

/// Why bytes could not become a trusted envelope.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The message exceeds the size limit; it was not decoded.
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Size received.
        size: usize,
        /// Limit in force.
        limit: usize,
    },
    /// The bytes are not a valid CBOR envelope or payload.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The envelope version is not supported.
    #[error(
        "unsupported wire version {got} (this node speaks {WIRE_VERSION}); upgrade the older node"
    )]
    UnsupportedVersion {
        /// Version received.
        got: u8,
    },
    /// The signature does not verify for the claimed sender and kind.
    #[error("bad signature on {kind:?} message from {sender}")]
    BadSignature {
        /// Claimed sender.
        sender: NodeId,
        /// Claimed kind.
        kind: Kind,
    },
    /// The envelope was sent too long ago (or claims a time too far ahead) to be gossip.
    #[error(
        "message sent at {sent_at} ms is outside the ±{window_ms} ms window around this node's \
         clock ({now} ms): a replay, or one of the two clocks is wrong (check NTP)"
    )]
    Stale {
        /// The envelope's `sent_at`.
        sent_at: Timestamp,
        /// The receiver's clock.
        now: Timestamp,
        /// Allowed distance either way.
        window_ms: u64,
    },
    /// The envelope decoded, but carries a different kind than expected.
    #[error("expected a {expected:?} message, got {got:?}")]
    WrongKind {
        /// What the caller expected.
        expected: Kind,
        /// What arrived.
        got: Kind,
    },
}

fn signed_bytes(
    kind: Kind,
    sender: &NodeId,
    sent_at: Timestamp,
    seq: u64,
    payload: &[u8],
) -> Vec<u8> {
    let part = SignedPart {
        version: WIRE_VERSION,
        kind,
        sender,
        sent_at,
        seq,
        payload,
    };
    // Serializing a plain struct into a Vec cannot fail.
    serde_cbor::to_vec(&part).unwrap_or_default()
}

impl Envelope {
    /// Signs `payload` as a message of `kind`.
    pub fn seal(
        signer: &dyn Signer,
        kind: Kind,
        sent_at: Timestamp,
        seq: u64,
        payload: Vec<u8>,
    ) -> Envelope {
        let sender = signer.node_id();
        let bytes = signed_bytes(kind, &sender, sent_at, seq, &payload);
        let signature = signer.sign(kind.domain(), &bytes);
        Envelope {
            version: WIRE_VERSION,
            kind,
            sender,
            sent_at,
            seq,
            payload,
            signature,
        }
    }

    /// Signs the CBOR encoding of `body` as a message of `kind`.
    pub fn seal_body<T: Serialize>(
        signer: &dyn Signer,
        kind: Kind,
        sent_at: Timestamp,
        seq: u64,
        body: &T,
    ) -> Result<Envelope, CodecError> {
        let payload = serde_cbor::to_vec(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
        Ok(Self::seal(signer, kind, sent_at, seq, payload))
    }

    /// Encodes the envelope for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_cbor::to_vec(self).unwrap_or_default()
    }

    /// Checks size, decodes, checks version and signature.
    pub fn open(bytes: &[u8], limit: usize) -> Result<Envelope, CodecError> {
        if bytes.len() > limit {
            return Err(CodecError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let env: Envelope =
            serde_cbor::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
        if env.version != WIRE_VERSION {
            return Err(CodecError::UnsupportedVersion { got: env.version });
        }
        let signed = signed_bytes(env.kind, &env.sender, env.sent_at, env.seq, &env.payload);
        verify(&env.sender, env.kind.domain(), &signed, &env.signature).map_err(|_| {
            CodecError::BadSignature {
                sender: env.sender,
                kind: env.kind,
            }
        })?;
        Ok(env)
    }

    /// Checks that `sent_at` lies within `window_ms` of `now`, either way.
    pub fn check_fresh(&self, now: Timestamp, window_ms: u64) -> Result<(), CodecError> {
        if self.sent_at.abs_diff(now) > window_ms {
            return Err(CodecError::Stale {
                sent_at: self.sent_at,
                now,
                window_ms,
            });
        }
        Ok(())
    }

    /// Decodes the payload as `T` after checking the kind.
    pub fn body<T: for<'de> Deserialize<'de>>(&self, expected: Kind) -> Result<T, CodecError> {
        if self.kind != expected {
            return Err(CodecError::WrongKind {
                expected,
                got: self.kind,
            });
        }
        serde_cbor::from_slice(&self.payload).map_err(|e| CodecError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_market::KeySigner;

    #[test]
    fn round_trip() {
        let s = KeySigner::from_seed(3);
        let env = Envelope::seal(&s, Kind::Raw, 10, 1, b"hi".to_vec());
        let opened = Envelope::open(&env.to_bytes(), MAX_GOSSIP_BYTES).unwrap();
        assert_eq!(opened, env);
    }

    #[test]
    fn freshness_window_holds_both_ways() {
        let s = KeySigner::from_seed(3);
        let env = Envelope::seal(&s, Kind::Raw, 100_000, 1, b"hi".to_vec());
        assert!(env.check_fresh(100_000 + 30_000, 30_000).is_ok());
        assert!(env.check_fresh(100_000 - 30_000, 30_000).is_ok());
        let late = env.check_fresh(100_000 + 30_001, 30_000).unwrap_err();
        assert!(matches!(late, CodecError::Stale { now: 130_001, .. }));
        assert!(late.to_string().contains("outside the ±30000 ms window"));
        assert!(matches!(
            env.check_fresh(100_000 - 30_001, 30_000),
            Err(CodecError::Stale { .. })
        ));
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let s = KeySigner::from_seed(3);
        let mut env = Envelope::seal(&s, Kind::Raw, 10, 1, b"hi".to_vec());
        env.payload = b"ho".to_vec();
        let err = Envelope::open(&env.to_bytes(), MAX_GOSSIP_BYTES).unwrap_err();
        assert!(matches!(err, CodecError::BadSignature { .. }));
    }

    #[test]
    fn kind_is_domain_separated() {
        let s = KeySigner::from_seed(3);
        let mut env = Envelope::seal(&s, Kind::Raw, 10, 1, b"hi".to_vec());
        env.kind = Kind::Market;
        assert!(matches!(
            Envelope::open(&env.to_bytes(), MAX_GOSSIP_BYTES),
            Err(CodecError::BadSignature { .. })
        ));
    }

    #[test]
    fn oversized_is_rejected_before_decoding() {
        let junk = vec![0xffu8; MAX_GOSSIP_BYTES + 1];
        assert!(matches!(
            Envelope::open(&junk, MAX_GOSSIP_BYTES),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_not_panic() {
        for bytes in [
            &b""[..],
            &b"\xa1"[..],
            &b"\x9f\x9f\x9f"[..],
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            assert!(matches!(
                Envelope::open(bytes, MAX_GOSSIP_BYTES),
                Err(CodecError::Malformed(_))
            ));
        }
    }

    #[test]
    fn wrong_version_is_rejected() {
        let s = KeySigner::from_seed(3);
        let mut env = Envelope::seal(&s, Kind::Raw, 10, 1, b"hi".to_vec());
        env.version = 9;
        assert!(matches!(
            Envelope::open(&env.to_bytes(), MAX_GOSSIP_BYTES),
            Err(CodecError::UnsupportedVersion { got: 9 })
        ));
    }
}
