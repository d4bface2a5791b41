//! Identities, signatures and time: the primitives every pure crate shares.
//!
//! `NodeId` is the raw ed25519 public key. Signatures are domain separated: the signed bytes are
//! `domain || 0x00 || message`, so a signature made for one message kind can never be replayed
//! as another kind.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature as DalekSignature, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch; passed in by the caller, never read from a clock here.
pub type Timestamp = u64;

/// A node's identity: its ed25519 public key.
///
/// Serialized as 32 bytes in binary formats (CBOR on the wire and in the store) and as its
/// base58 text in human-readable ones (JSON from the API and CLI, TOML), the form the tables
/// and the CLI arguments use; human-readable input may also be the older array of 32 numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 32]);

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            serde_bytes::serialize(&self.0, s)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(id32::Text::new("a base58 node id", |s| {
                s.parse::<NodeId>().ok().map(|n| n.0)
            }))
            .map(NodeId)
        } else {
            serde_bytes::deserialize::<[u8; 32], D>(d).map(NodeId)
        }
    }
}

/// Human-readable serde of 32-byte ids: their text form, or (older files) an array of numbers.
#[doc(hidden)]
pub mod id32 {
    use serde::de::{self, SeqAccess, Visitor};
    use std::fmt;

    /// Visitor accepting the text form (parsed by `parse`), an array of 32 numbers or bytes.
    pub struct Text {
        what: &'static str,
        parse: fn(&str) -> Option<[u8; 32]>,
    }

    impl Text {
        /// `what` names the text form in error messages.
        pub fn new(what: &'static str, parse: fn(&str) -> Option<[u8; 32]>) -> Self {
            Text { what, parse }
        }
    }

    impl<'de> Visitor<'de> for Text {
        type Value = [u8; 32];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{} (or an array of 32 bytes)", self.what)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<[u8; 32], E> {
            (self.parse)(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<[u8; 32], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 32], A::Error> {
            let mut out = [0u8; 32];
            for (i, b) in out.iter_mut().enumerate() {
                *b = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(i, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(de::Error::invalid_length(33, &self));
            }
            Ok(out)
        }
    }
}

impl NodeId {
    /// The short human form (first 8 base58 characters), used in logs and tables.
    pub fn short(&self) -> String {
        let full = self.to_string();
        full.chars().take(8).collect()
    }

    /// The ed25519 verifying key, or an error if the bytes are not a valid point.
    pub fn verifying_key(&self) -> Result<VerifyingKey, SignatureError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::BadKey(*self))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).into_string())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = SignatureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = bs58::decode(s)
            .into_vec()
            .map_err(|_| SignatureError::BadNodeId(s.to_string()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SignatureError::BadNodeId(s.to_string()))?;
        Ok(NodeId(arr))
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "serde_bytes")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({}..)",
            bs58::encode(&self.0[..6]).into_string()
        )
    }
}

/// A signing context: each message kind signs under its own domain string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Domain(pub &'static str);

impl Domain {
    /// Gossip envelope carrying any application message.
    pub const ENVELOPE: Domain = Domain("agora/v1/envelope");
    /// A customer's auction request.
    pub const AUCTION: Domain = Domain("agora/v1/auction");
    /// A provider's bid.
    pub const BID: Domain = Domain("agora/v1/bid");
    /// A provider's standing offer.
    pub const OFFER: Domain = Domain("agora/v1/offer");
    /// An award (customer picks a winner).
    pub const AWARD: Domain = Domain("agora/v1/award");
    /// A negotiation counter-offer or acceptance.
    pub const NEGOTIATION: Domain = Domain("agora/v1/negotiation");
    /// A contract signature.
    pub const CONTRACT: Domain = Domain("agora/v1/contract");
    /// A ledger transaction.
    pub const TRANSACTION: Domain = Domain("agora/v1/transaction");
    /// A liveness attestation by an arbitrator.
    pub const ATTESTATION: Domain = Domain("agora/v1/attestation");
    /// A service heartbeat / metering report.
    pub const HEARTBEAT: Domain = Domain("agora/v1/heartbeat");
    /// A data-integrity proof over a batch of readings.
    pub const DATA_PROOF: Domain = Domain("agora/v1/data-proof");
    /// A presence heartbeat on the swarm.
    pub const PRESENCE: Domain = Domain("agora/v1/presence");
    /// A consensus vote or proposal.
    pub const CONSENSUS: Domain = Domain("agora/v1/consensus");
    /// A fleet deployment record (desired state for many providers).
    pub const DEPLOYMENT: Domain = Domain("agora/v1/deployment");

    /// The bytes actually signed: `domain || 0x00 || message`.
    pub fn signing_bytes(&self, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() + 1 + message.len());
        out.extend_from_slice(self.0.as_bytes());
        out.push(0);
        out.extend_from_slice(message);
        out
    }
}

/// Errors from identity parsing and signature checks.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The public key bytes are not a valid ed25519 point.
    #[error("node id {0} is not a valid ed25519 public key")]
    BadKey(NodeId),
    /// The signature does not verify.
    #[error("signature by {signer} under domain {domain} does not verify")]
    Invalid {
        /// Who supposedly signed.
        signer: NodeId,
        /// The domain the check used.
        domain: &'static str,
    },
    /// A node id string could not be parsed.
    #[error("'{0}' is not a node id (expected 32 bytes in base58)")]
    BadNodeId(String),
}

/// Anything that can sign on behalf of a node; passed into the pure state machines.
pub trait Signer {
    /// The identity whose key signs.
    fn node_id(&self) -> NodeId;
    /// Signs `message` under `domain`.
    fn sign(&self, domain: Domain, message: &[u8]) -> Signature;
}

/// A `Signer` holding an ed25519 key in memory.
#[derive(Clone)]
pub struct KeySigner {
    key: SigningKey,
}

impl fmt::Debug for KeySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySigner({})", self.node_id().short())
    }
}

impl KeySigner {
    /// Wraps a secret key.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        KeySigner {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// A deterministic key from a seed; for tests and simulations.
    pub fn from_seed(seed: u64) -> Self {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&seed.to_le_bytes());
        let hashed = blake3::hash(&secret);
        Self::from_secret(*hashed.as_bytes())
    }

    /// The secret key bytes (to persist or derive the libp2p identity from).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }
}

impl Signer for KeySigner {
    fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    fn sign(&self, domain: Domain, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer as _;
        Signature(self.key.sign(&domain.signing_bytes(message)).to_bytes())
    }
}

/// Verifies `signature` by `signer` over `message` under `domain`.
pub fn verify(
    signer: &NodeId,
    domain: Domain,
    message: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    let key = signer.verifying_key()?;
    let sig = DalekSignature::from_bytes(&signature.0);
    key.verify(&domain.signing_bytes(message), &sig)
        .map_err(|_| SignatureError::Invalid {
            signer: *signer,
            domain: domain.0,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip() {
        let s = KeySigner::from_seed(1);
        let sig = s.sign(Domain::BID, b"hello");
        assert!(verify(&s.node_id(), Domain::BID, b"hello", &sig).is_ok());
    }

    #[test]
    fn domain_separation_rejects_other_kind() {
        let s = KeySigner::from_seed(1);
        let sig = s.sign(Domain::BID, b"hello");
        let err = verify(&s.node_id(), Domain::AUCTION, b"hello", &sig).unwrap_err();
        assert!(matches!(err, SignatureError::Invalid { .. }));
    }

    #[test]
    fn node_id_parses_its_display_form() {
        let id = KeySigner::from_seed(7).node_id();
        let parsed: NodeId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(id.short().len(), 8);
        assert!("not-base58!".parse::<NodeId>().is_err());
    }
}
