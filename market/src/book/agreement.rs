//! What a deal agreed here hands to the node's deal task ([`Effect::Agreed`](super::Effect)):
//! the terms, and what the auction behind them said of the contract (its service image and
//! slot), read from the book as the deal is agreed. Read later, by the deal task, the auction
//! could be gone: the task builds contracts one at a time (committing a storage image can take
//! long), and our own awarded auction is kept only until the award's expiry, so a backlog built
//! the contract with the default image and no slot, which the honest provider refused and was
//! then marked for (review 7, M3; THREATS C36).

use serde::{Deserialize, Serialize};

use super::MarketState;
use crate::auction::AwardSubject;
use crate::identity::{Signer, Timestamp};
use crate::negotiation::AgreedTerms;

/// What the auction behind an award said of the contract (both `None` for a taken offer, or an
/// auction that named neither).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuctionFacts {
    /// The service image CID the auction named (`AuctionBody::service`), unparsed.
    pub image: Option<String>,
    /// The start time of a pre-contracted hosted slot (`AuctionBody::start_at`).
    pub start_at: Option<Timestamp>,
}

/// A deal this node agreed, as customer or provider.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    /// The terms both parties sign.
    pub terms: AgreedTerms,
    /// What the auction said, as the deal was agreed: as customer, our own auction; as
    /// provider, the auction as we bid on it ([`MyBid`](super::MyBid), THREATS C36); the
    /// default for a taken offer. `None` when the book held neither then (not expected: both
    /// stay while the award is negotiated): the deal task then proposes and signs nothing,
    /// rather than a contract built from defaults.
    pub auction: Option<AuctionFacts>,
    /// The award's own deadline (the negotiation's): the provider agreed before it, and the
    /// customer's deal task waits for its countersignature no longer than that (with a small
    /// floor), so a key that accepts at the last moment and goes silent costs the auction no
    /// more than its award's lapse (session 54, review 11 M1).
    pub respond_by: Timestamp,
}

impl<S: Signer + Clone> MarketState<S> {
    /// `terms`, just agreed, with what their auction said ([`Agreement::auction`]).
    pub(super) fn agreement(&self, terms: AgreedTerms, respond_by: Timestamp) -> Agreement {
        let auction = match terms.subject {
            AwardSubject::Offer { .. } => Some(AuctionFacts::default()),
            AwardSubject::Bid { auction, .. } if terms.customer == self.me => {
                self.auctions.get(&auction).map(|e| AuctionFacts {
                    image: e.request.body.service.clone(),
                    start_at: e.request.body.start_at,
                })
            }
            AwardSubject::Bid { auction, .. } => self.my_bids.get(&auction).map(|b| AuctionFacts {
                image: b.image.clone(),
                start_at: b.start_at,
            }),
        };
        Agreement {
            terms,
            auction,
            respond_by,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auction::AuctionKind;
    use crate::book::{Effect, Input, MarketConfig};
    use crate::ids::{AuctionId, AwardId, BidId, OfferId};
    use crate::resources::Resources;
    use crate::test_utils::{AuctionBuilder, SimNet, big_capacity};

    /// The empty UnixFS file's CID, as an auction names it.
    const IMAGE: &str = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH";

    fn agreements(net: &SimNet, node: usize) -> Vec<Agreement> {
        net.effects_of(node)
            .filter_map(|e| match e {
                Effect::Agreed(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    /// Terms of `subject` between nodes 0 (customer) and 1 (provider) of `net`.
    fn terms(net: &SimNet, subject: AwardSubject) -> AgreedTerms {
        AgreedTerms {
            award: AwardId::of_bytes(b"award"),
            customer: net.nodes[0].node_id(),
            provider: net.nodes[1].node_id(),
            subject,
            kind: AuctionKind::Hosted,
            resources: Resources::default(),
            duration_ms: 60_000,
            price: 10,
        }
    }

    /// Review 7, M3: both sides' agreement carries the image and slot the auction named, read
    /// as the deal was agreed (the customer's deal task read them from its book when it got
    /// to the deal, by when the auction could be gone). An auction the book no longer holds
    /// gives `None`, never the defaults; a taken offer has no auction. Mutants — `agreement`
    /// reading nothing (`auction: None` throughout): the first loop fails; the missing
    /// auction read as the default facts (`unwrap_or_default`): the last but one assert fails.
    #[test]
    fn an_agreement_carries_what_its_auction_said() {
        let mut provider = MarketConfig {
            capacity: big_capacity(),
            ..MarketConfig::default()
        };
        provider.dmu.provider.auto_bid = true;
        let mut net = SimNet::new(vec![MarketConfig::default(), provider]);
        let mut spec = AuctionBuilder::new().spec();
        spec.service = Some(IMAGE.into());
        spec.start_at = Some(30_000);
        net.input(0, 0, Input::CreateAuction(spec));
        net.input(10_000, 0, Input::Tick);
        let said = AuctionFacts {
            image: Some(IMAGE.into()),
            start_at: Some(30_000),
        };
        for node in [0, 1] {
            let agreed = agreements(&net, node);
            assert_eq!(agreed.len(), 1, "node {node}: {:?}", net.log);
            assert_eq!(agreed[0].auction.as_ref(), Some(&said), "node {node}");
        }
        let gone = AwardSubject::Bid {
            auction: AuctionId::of_bytes(b"gone"),
            bid: BidId::of_bytes(b"bid"),
        };
        for node in [0, 1] {
            let a = net.nodes[node].agreement(terms(&net, gone), 0);
            assert_eq!(a.auction, None, "node {node}");
        }
        let offer = AwardSubject::Offer {
            offer: OfferId::of_bytes(b"offer"),
        };
        let a = net.nodes[0].agreement(terms(&net, offer), 0);
        assert_eq!(a.auction, Some(AuctionFacts::default()));
    }
}
