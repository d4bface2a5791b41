//! Messages a service publishes, signed by the hosting node: the node vouches that this payload
//! came out of that service, in that order, at that time. The orchestrator forwards them north.

use agora_market::{Domain, NodeId, Signature, SignatureError, Signer, Timestamp};
use agora_runtime::Published;
use serde::{Deserialize, Serialize};

/// Signature domain of service output.
pub const SERVICE_PUBLISH: Domain = Domain("agora/v1/service-publish");

/// A guest's published message with the host node's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedMsg {
    /// The publishing service id (the contract id for contract services).
    pub service: String,
    /// Per-service sequence number, from 0 for each staging.
    pub seq: u64,
    /// The guest's bytes.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// blake3 of `payload`.
    pub digest: [u8; 32],
    /// The hosting node.
    pub node: NodeId,
    /// When the node signed it (ms since the Unix epoch).
    pub at_ms: Timestamp,
    /// The node's signature over [`PublishedMsg::signing_bytes`] under [`SERVICE_PUBLISH`].
    pub signature: Signature,
}

/// Why a published message does not verify.
#[derive(Debug, thiserror::Error)]
pub enum PublishedError {
    /// The payload does not hash to the digest.
    #[error("payload of {service}#{seq} does not match its digest; the message was altered")]
    Digest {
        /// Service id.
        service: String,
        /// Sequence number.
        seq: u64,
    },
    /// The signature is invalid.
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

impl PublishedMsg {
    /// Signs a message taken from the runtime's outbox.
    pub fn sign(published: Published, signer: &impl Signer, at_ms: Timestamp) -> Self {
        let node = signer.node_id();
        let bytes = signing_bytes(&published.service, published.seq, &published.digest, at_ms);
        let signature = signer.sign(SERVICE_PUBLISH, &bytes);
        Self {
            service: published.service,
            seq: published.seq,
            payload: published.payload,
            digest: published.digest,
            node,
            at_ms,
            signature,
        }
    }

    /// The signed bytes: service id (length-prefixed), seq, digest and time.
    pub fn signing_bytes(&self) -> Vec<u8> {
        signing_bytes(&self.service, self.seq, &self.digest, self.at_ms)
    }

    /// Checks the digest and the node's signature.
    pub fn verify(&self) -> Result<(), PublishedError> {
        if *blake3::hash(&self.payload).as_bytes() != self.digest {
            return Err(PublishedError::Digest {
                service: self.service.clone(),
                seq: self.seq,
            });
        }
        agora_market::verify(
            &self.node,
            SERVICE_PUBLISH,
            &self.signing_bytes(),
            &self.signature,
        )?;
        Ok(())
    }
}

fn signing_bytes(service: &str, seq: u64, digest: &[u8; 32], at_ms: Timestamp) -> Vec<u8> {
    let mut b = Vec::with_capacity(56 + service.len());
    b.extend((service.len() as u64).to_le_bytes());
    b.extend(service.as_bytes());
    b.extend(seq.to_le_bytes());
    b.extend(digest);
    b.extend(at_ms.to_le_bytes());
    b
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_market::KeySigner;

    #[test]
    fn signed_messages_verify_and_tampering_is_caught() {
        let signer = KeySigner::from_seed(7);
        let payload = b"batch 0".to_vec();
        let p = Published {
            service: "svc".into(),
            seq: 3,
            digest: *blake3::hash(&payload).as_bytes(),
            payload,
        };
        let msg = PublishedMsg::sign(p, &signer, 1_000);
        msg.verify().unwrap();
        assert_eq!(msg.node, signer.node_id());

        let mut altered = msg.clone();
        altered.payload = b"batch 1".to_vec();
        assert!(matches!(
            altered.verify(),
            Err(PublishedError::Digest { .. })
        ));
        let mut reordered = msg.clone();
        reordered.seq = 4;
        assert!(matches!(
            reordered.verify(),
            Err(PublishedError::Signature(_))
        ));
        let mut other = msg;
        other.node = KeySigner::from_seed(8).node_id();
        assert!(other.verify().is_err());
    }
}
