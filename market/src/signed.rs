//! Signed message bodies: canonical bytes, content ids and signature checks.
//!
//! Canonical bytes are `serde_cbor` of the unsigned body (struct fields in declaration order,
//! maps are `BTreeMap`s, so encoding is deterministic). The id is blake3 of those bytes; the
//! signature covers the same bytes under the body's `Domain`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::MarketError;
use crate::identity::{Domain, NodeId, Signature, Signer, Timestamp, verify};

/// A message body that is signed by its author.
pub trait Body: Serialize + DeserializeOwned + Clone {
    /// Signing domain for this kind.
    const DOMAIN: Domain;
    /// Short kind name used in errors and logs.
    const KIND: &'static str;
    /// The content id type.
    type Id: From<[u8; 32]> + Copy + Ord + std::fmt::Display + std::fmt::Debug;
    /// Who must sign it.
    fn author(&self) -> NodeId;
    /// The author's nonce (unique per author and kind).
    fn nonce(&self) -> u64;
    /// When the message stops being valid.
    fn expires_at(&self) -> Timestamp;
}

/// A body plus its author's signature over the canonical bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signed<B> {
    /// The unsigned content.
    pub body: B,
    /// Author's signature over `canonical_bytes(body)` under `B::DOMAIN`.
    pub signature: Signature,
}

/// Canonical CBOR bytes of any serialisable value.
pub fn canonical_bytes<T: Serialize>(
    value: &T,
    kind: &'static str,
) -> Result<Vec<u8>, MarketError> {
    serde_cbor::to_vec(value).map_err(|e| MarketError::Encoding {
        kind,
        reason: e.to_string(),
    })
}

impl<B: Body> Signed<B> {
    /// Signs `body`; fails if `signer` is not the body's author.
    pub fn sign(body: B, signer: &dyn Signer) -> Result<Self, MarketError> {
        if signer.node_id() != body.author() {
            return Err(MarketError::WrongSigner {
                kind: B::KIND,
                author: body.author(),
                signer: signer.node_id(),
            });
        }
        let bytes = canonical_bytes(&body, B::KIND)?;
        let signature = signer.sign(B::DOMAIN, &bytes);
        Ok(Signed { body, signature })
    }

    /// The canonical bytes of the body.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, MarketError> {
        canonical_bytes(&self.body, B::KIND)
    }

    /// The content id: blake3 of the canonical bytes.
    pub fn id(&self) -> Result<B::Id, MarketError> {
        Ok(B::Id::from(
            *blake3::hash(&self.canonical_bytes()?).as_bytes(),
        ))
    }

    /// Checks the signature and returns the id on success.
    pub fn verify(&self) -> Result<B::Id, MarketError> {
        let bytes = self.canonical_bytes()?;
        verify(&self.body.author(), B::DOMAIN, &bytes, &self.signature).map_err(|source| {
            MarketError::BadSignature {
                kind: B::KIND,
                author: self.body.author(),
                source,
            }
        })?;
        Ok(B::Id::from(*blake3::hash(&bytes).as_bytes()))
    }
}
