//! `MarketMessage`: everything the market sends over gossip or request-response.

use serde::{Deserialize, Serialize};

use crate::auction::{AuctionRequest, Award, Bid, Offer};
use crate::error::MarketError;
use crate::negotiation::NegotiationMessage;

/// One market message; the node carries it opaquely as CBOR bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MarketMessage {
    /// A new auction (gossip on the region topic).
    Auction(AuctionRequest),
    /// A bid (sent to the auction's customer).
    Bid(Bid),
    /// A standing offer (gossip on the region topic).
    Offer(Offer),
    /// An award (sent to the winning provider, and gossiped so others drop the auction).
    Award(Award),
    /// A late joiner asks for open auctions and offers of a region.
    SnapshotRequest {
        /// The region.
        region: String,
    },
    /// Open auctions and offers of a region.
    SnapshotResponse {
        /// The region.
        region: String,
        /// Open auctions.
        auctions: Vec<AuctionRequest>,
        /// Live standing offers.
        offers: Vec<Offer>,
    },
    /// A negotiation step after an award.
    Negotiation(NegotiationMessage),
}

/// Largest accepted encoded message; bigger payloads are refused before decoding.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

impl MarketMessage {
    /// CBOR wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, MarketError> {
        crate::signed::canonical_bytes(self, "market message")
    }

    /// Decodes wire bytes from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, MarketError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(MarketError::Decode(format!(
                "{} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
                bytes.len()
            )));
        }
        // serde_cbor recurses per nesting level: refuse deep input first, iteratively.
        crate::nesting::check_nesting(bytes, crate::nesting::MAX_NESTING)
            .map_err(|e| MarketError::Decode(e.to_string()))?;
        serde_cbor::from_slice(bytes).map_err(|e| MarketError::Decode(e.to_string()))
    }

    /// Short kind name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MarketMessage::Auction(_) => "auction",
            MarketMessage::Bid(_) => "bid",
            MarketMessage::Offer(_) => "offer",
            MarketMessage::Award(_) => "award",
            MarketMessage::SnapshotRequest { .. } => "snapshot-request",
            MarketMessage::SnapshotResponse { .. } => "snapshot-response",
            MarketMessage::Negotiation(_) => "negotiation",
        }
    }
}

/// The gossip topic name of a regional market: `agora/v1/market/<region>`.
pub fn topic_for_region(region: &str) -> String {
    format!("agora/v1/market/{}", region.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_utils::{AuctionBuilder, signer};

    #[test]
    fn round_trips_and_rejects_garbage() {
        let a = AuctionBuilder::new().build(&signer(1), 0);
        let m = MarketMessage::Auction(a);
        let bytes = m.encode().unwrap();
        assert_eq!(MarketMessage::decode(&bytes).unwrap(), m);
        assert!(matches!(
            MarketMessage::decode(b"\xff\x00garbage"),
            Err(MarketError::Decode(_))
        ));
        let huge = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            MarketMessage::decode(&huge),
            Err(MarketError::Decode(_))
        ));
        assert_eq!(topic_for_region(" EU-West "), "agora/v1/market/eu-west");
    }

    /// A message nested a million levels deep is refused before serde_cbor recurses into it.
    #[test]
    fn deeply_nested_messages_are_refused_on_a_small_stack() {
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                for depth in [40usize, 127, 1 << 19] {
                    let mut deep = vec![0xa1, 0x67];
                    deep.extend_from_slice(b"Auction");
                    deep.extend(std::iter::repeat_n(0x81, depth));
                    deep.push(0x00);
                    assert!(matches!(
                        MarketMessage::decode(&deep),
                        Err(MarketError::Decode(reason)) if reason.contains("nested deeper")
                    ));
                }
                // Every real message kind is far shallower than the bound.
                let a = AuctionBuilder::new().build(&signer(1), 0);
                let snapshot = MarketMessage::SnapshotResponse {
                    region: "eu-west".into(),
                    auctions: vec![a.clone(), a],
                    offers: Vec::new(),
                };
                let bytes = snapshot.encode().unwrap();
                assert_eq!(MarketMessage::decode(&bytes).unwrap(), snapshot);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
