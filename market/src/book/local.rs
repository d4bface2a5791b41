//! Local commands: open an auction, bid, publish or take a standing offer.

use std::collections::BTreeMap;

use super::{AuctionEntry, AuctionStatus, Effect, MarketState, MyBid, OfferSpec};
use crate::auction::{
    AuctionKind, AuctionSpec, AwardBody, AwardSubject, BidSpec, OfferBody, offer_total_price,
};
use crate::capacity::ReservationKey;
use crate::error::MarketError;
use crate::identity::{NodeId, Signer, Timestamp};
use crate::ids::{AuctionId, OfferId};
use crate::message::{MarketMessage, topic_for_region};
use crate::signed::Signed;
use crate::validate::{check_auction, check_bid, check_offer};

impl<S: Signer + Clone> MarketState<S> {
    pub(super) fn create_auction(
        &mut self,
        now: Timestamp,
        spec: AuctionSpec,
        only: Vec<NodeId>,
        out: &mut Vec<Effect>,
    ) -> Result<AuctionId, MarketError> {
        let nonce = self.next_nonce(now);
        let req = spec.create_for(&self.signer, now, nonce, only)?;
        // Our own request passes the same checks as a peer's, so we never gossip garbage.
        let id = check_auction(&req, now, &self.config.limits)?;
        // Relays judge a slot's lead on their own clocks, which may lag ours by the gossip
        // skew: leave them that margin, or a slot right at the limit is dropped on the way
        // (review of session 52). A limit of 30 s or less leaves no slot at all: said so.
        let (limit, margin) = (
            self.config.limits.max_slot_lead_ms,
            crate::validate::MAX_CREATED_AHEAD_MS,
        );
        if let Some(start_at) = req.body.start_at
            && start_at > now.saturating_add(limit.saturating_sub(margin))
        {
            let hint = if limit <= margin {
                "market.limits.max_slot_lead_ms is 30 s or less, the clock skew left to the nodes that relay a slot auction: raise it to open one"
            } else {
                "a slot starts within market.limits.max_slot_lead_ms of now, less 30 s for the clocks of the nodes that relay it"
            };
            return Err(MarketError::Absurd {
                kind: "auction",
                id: id.to_string(),
                field: "start_at",
                value: start_at.to_string(),
                hint,
            });
        }
        self.replay.record(&req.body)?;
        let topic = topic_for_region(&req.body.region);
        let close = req.body.window_closes_at;
        tracing::debug!(auction = %id.short(), topic, "auction opened");
        self.auctions.insert(
            id,
            AuctionEntry {
                request: req.clone(),
                bids: BTreeMap::new(),
                status: AuctionStatus::Open,
            },
        );
        out.push(Effect::Broadcast {
            topic,
            msg: MarketMessage::Auction(req),
        });
        out.push(Effect::ScheduleTimeout { at: close });
        Ok(id)
    }

    pub(super) fn place_bid(
        &mut self,
        now: Timestamp,
        auction: AuctionId,
        spec: BidSpec,
        out: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let entry = self
            .auctions
            .get(&auction)
            .ok_or(MarketError::UnknownAuction { auction })?;
        if entry.status != AuctionStatus::Open {
            return Err(MarketError::NotOpen { auction });
        }
        if let Some(mine) = self.my_bids.get(&auction) {
            return Err(MarketError::AlreadyBid {
                auction,
                bid: mine.bid,
                price: mine.price,
            });
        }
        // Our bids outlive their auctions while an award holds their capacity (the record of
        // what was bid on, THREATS C36): at most as many open ones as the book holds auctions.
        // Awarded ones are not counted: their holds are bounded by who can pay (THREATS C31),
        // and counting them let free keys awarding their own tiny auctions fill this bound, so
        // that every bid was refused (review of session 52).
        let max = self.config.limits.max_auctions;
        let awarded: std::collections::BTreeSet<&ReservationKey> =
            self.award_holds.values().collect();
        // Nor lost ones (another provider was awarded): they hold nothing, and are at most
        // `MAX_LOST_BIDS`.
        let open = self
            .my_bids
            .iter()
            .filter(|(a, m)| {
                m.lost_until.is_none() && !awarded.contains(&ReservationKey::Auction(**a))
            })
            .count();
        if open >= max {
            return Err(MarketError::MarketFull {
                book: "open bids",
                max,
            });
        }
        let request = entry.request.clone();
        let nonce = self.next_nonce(now);
        let bid = spec.create(&request, &self.signer, nonce)?;
        let bid_id = check_bid(&bid, &request, auction, now, &self.config.limits)?;
        // Tentative hold until the award grace after the window closes (or the auction's
        // expiry, if sooner); confirmed if we win, released when another wins or the hold lapses.
        let hold_until = self.hold_until(&request);
        self.ledger.reserve(
            ReservationKey::Auction(auction),
            request.body.resources.clone(),
            Some(hold_until),
        )?;
        self.note_hold(
            ReservationKey::Auction(auction),
            request.body.customer,
            bid.body.price,
        );
        let b = &request.body;
        self.my_bids.insert(
            auction,
            MyBid {
                bid: bid_id,
                price: bid.body.price,
                customer: b.customer,
                image: b.service.clone(),
                start_at: b.start_at,
                duration_ms: b.duration_ms,
                kind: b.kind,
                lost_until: None,
            },
        );
        tracing::debug!(auction = %auction.short(), bid = %bid_id.short(), price = bid.body.price, "bid placed");
        out.push(Effect::Send {
            to: request.body.customer,
            msg: MarketMessage::Bid(bid),
        });
        out.push(Effect::ScheduleTimeout { at: hold_until });
        Ok(())
    }

    pub(super) fn publish_offer(
        &mut self,
        now: Timestamp,
        spec: OfferSpec,
        out: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let nonce = self.next_nonce(now);
        let body = OfferBody {
            provider: self.me,
            region: spec.region,
            resources: spec.resources,
            price_per_hour: spec.price_per_hour,
            location: spec.location,
            nonce,
            expires_at: now.saturating_add(spec.ttl_ms),
        };
        let offer = Signed::sign(body, &self.signer)?;
        let id = check_offer(&offer, now, &self.config.limits)?;
        if !offer.body.resources.fits_in(self.ledger.capacity()) {
            return Err(MarketError::Capacity(
                crate::capacity::CapacityError::Insufficient {
                    key: ReservationKey::Contract(id.0),
                },
            ));
        }
        self.replay.record(&offer.body)?;
        let topic = topic_for_region(&offer.body.region);
        self.offers.insert(id, offer.clone());
        out.push(Effect::Broadcast {
            topic,
            msg: MarketMessage::Offer(offer),
        });
        Ok(())
    }

    pub(super) fn take_offer(
        &mut self,
        now: Timestamp,
        offer: OfferId,
        duration_ms: u64,
        out: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let o = self
            .offers
            .get(&offer)
            .ok_or(MarketError::UnknownOffer { offer })?;
        if o.body.expires_at <= now {
            return Err(MarketError::Expired {
                kind: "offer",
                id: offer.to_string(),
                expires_at: o.body.expires_at,
                now,
            });
        }
        let price = offer_total_price(o.body.price_per_hour, duration_ms)
            .filter(|p| {
                *p > 0 && duration_ms > 0 && duration_ms <= self.config.limits.max_duration_ms
            })
            .ok_or_else(|| MarketError::Absurd {
                kind: "offer",
                id: offer.to_string(),
                field: "duration_ms",
                value: duration_ms.to_string(),
                hint: "1 ms ..= market.limits.max_duration_ms",
            })?;
        let provider = o.body.provider;
        let resources = o.body.resources.clone();
        let region = o.body.region.clone();
        let nonce = self.next_nonce(now);
        let body = AwardBody {
            customer: self.me,
            provider,
            subject: AwardSubject::Offer { offer },
            price,
            resources,
            duration_ms,
            kind: AuctionKind::Hosted,
            nonce,
            expires_at: now.saturating_add(self.config.dmu.negotiation.timeout_ms),
        };
        let award = Signed::sign(body, &self.signer)?;
        let award_id = award.id()?;
        let deal = self.new_deal(now, &award, award_id, None)?;
        self.replay.record(&award.body)?;
        tracing::debug!(offer = %offer.short(), award = %award_id.short(), %region, "offer taken");
        self.start_deal(award_id, deal, out);
        out.push(Effect::Send {
            to: provider,
            msg: MarketMessage::Award(award),
        });
        out.push(Effect::Awarded {
            award: award_id,
            auction: None,
            customer: self.me,
            provider,
            price,
        });
        Ok(())
    }
}
