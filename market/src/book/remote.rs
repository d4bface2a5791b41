//! Messages from peers: every one is validated before it touches the book.

use std::collections::BTreeMap;

use super::funding::fresh_since;
use super::{
    AuctionEntry, AuctionStatus, Effect, MAX_SNAPSHOT_PEERS, MarketState, SNAPSHOT_EVERY_MS,
};
use crate::auction::{
    AuctionKind, AuctionRequest, Award, AwardBody, AwardSubject, Bid, Offer, offer_total_price,
};
use crate::capacity::ReservationKey;
use crate::error::MarketError;
use crate::identity::{NodeId, Signer, Timestamp};
use crate::ids::{AuctionId, AwardId, OfferId};
use crate::message::MarketMessage;
use crate::negotiation::NegotiationInput;
use crate::validate::{check_auction, check_bid, check_offer};

impl<S: Signer + Clone> MarketState<S> {
    pub(super) fn remote(
        &mut self,
        now: Timestamp,
        from: NodeId,
        msg: MarketMessage,
        out: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        match msg {
            MarketMessage::Auction(req) => self.remote_auction(now, req, out),
            MarketMessage::Bid(bid) => self.remote_bid(now, bid, out),
            MarketMessage::Offer(offer) => self.remote_offer(now, offer),
            MarketMessage::Award(award) => self.remote_award(now, award, out),
            MarketMessage::SnapshotRequest { region } => {
                if self.may_serve_snapshot(now, from) {
                    self.snapshot(now, from, region, out);
                } else {
                    self.counters.snapshots_refused += 1;
                    tracing::debug!(peer = %from.short(), "snapshot request not answered: asked again too soon, or too many peers asked");
                }
                Ok(())
            }
            MarketMessage::SnapshotResponse {
                region,
                auctions,
                offers,
            } => {
                if !self.snapshots_asked.remove(&(from, region.clone())) {
                    self.counters.snapshots_refused += 1;
                    return Err(MarketError::UnsolicitedSnapshot { from, region });
                }
                let max = self.config.snapshot_max;
                for req in auctions.into_iter().take(max) {
                    if let Err(error) = self.remote_auction(now, req, out) {
                        out.push(Effect::Rejected {
                            from: Some(from),
                            error,
                        });
                    }
                }
                for offer in offers.into_iter().take(max) {
                    if let Err(error) = self.remote_offer(now, offer) {
                        out.push(Effect::Rejected {
                            from: Some(from),
                            error,
                        });
                    }
                }
                Ok(())
            }
            MarketMessage::Negotiation(msg) => {
                let award = msg.body.award;
                self.negotiate(now, award, NegotiationInput::Remote(msg), out)
            }
        }
    }

    fn remote_auction(
        &mut self,
        now: Timestamp,
        req: AuctionRequest,
        out: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        // Gossip and snapshots overlap: a known auction is not news and not an error.
        if self.auctions.contains_key(&req.id()?) {
            return Ok(());
        }
        let id = check_auction(&req, now, &self.config.limits)?;
        self.replay.check(&req.body)?;
        self.admit_auction(now, id, &req)?;
        self.replay.record(&req.body)?;
        tracing::debug!(auction = %id.short(), customer = %req.body.customer.short(), "auction accepted");
        self.auctions.insert(
            id,
            AuctionEntry {
                request: req.clone(),
                bids: BTreeMap::new(),
                status: AuctionStatus::Open,
            },
        );
        out.push(Effect::ScheduleTimeout {
            at: req.body.window_closes_at,
        });
        self.auto_bid(now, id, &req, out);
        Ok(())
    }

    fn remote_bid(
        &mut self,
        now: Timestamp,
        bid: Bid,
        out: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let auction = bid.body.auction;
        let entry = self
            .auctions
            .get(&auction)
            .ok_or(MarketError::UnknownAuction { auction })?;
        if entry.request.body.customer != self.me {
            return Err(MarketError::NotCustomer {
                auction,
                who: self.me,
            });
        }
        let bid_id = check_bid(&bid, &entry.request, auction, now, &self.config.limits)?;
        if entry.status != AuctionStatus::Open {
            return Err(MarketError::NotOpen { auction });
        }
        self.replay.check(&bid.body)?;
        self.admit_bid(auction, bid_id, &bid)?;
        self.replay.record(&bid.body)?;
        let (provider, price) = (bid.body.provider, bid.body.price);
        if let Some(entry) = self.auctions.get_mut(&auction) {
            entry.bids.insert(bid_id, bid);
        }
        if self
            .auctions
            .get(&auction)
            .is_some_and(|e| self.every_chosen_bid(&auction, e))
        {
            // Every provider it is open to has bid: close it at the next tick, now.
            out.push(Effect::ScheduleTimeout { at: now });
        }
        tracing::debug!(auction = %auction.short(), bid = %bid_id.short(), price, "bid accepted");
        out.push(Effect::BidReceived {
            auction,
            bid: bid_id,
            provider,
            price,
        });
        Ok(())
    }

    fn remote_offer(&mut self, now: Timestamp, offer: Offer) -> Result<(), MarketError> {
        if self.offers.contains_key(&offer.id()?) {
            return Ok(());
        }
        let id = check_offer(&offer, now, &self.config.limits)?;
        self.replay.check(&offer.body)?;
        self.admit_offer(id, &offer)?;
        self.replay.record(&offer.body)?;
        self.offers.insert(id, offer);
        Ok(())
    }

    fn remote_award(
        &mut self,
        now: Timestamp,
        award: Award,
        out: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let award_id = award.verify()?;
        if self.deals.contains_key(&award_id) {
            return Ok(()); // same award via gossip and direct send
        }
        let b = award.body.clone();
        if b.expires_at <= now {
            return Err(MarketError::Expired {
                kind: "award",
                id: award_id.to_string(),
                expires_at: b.expires_at,
                now,
            });
        }
        let (reservation, deal) = match b.subject {
            AwardSubject::Bid { auction, bid } => {
                let entry = self
                    .auctions
                    .get(&auction)
                    .ok_or(MarketError::UnknownAuction { auction })?;
                if let AuctionStatus::Awarded { award, provider } = entry.status {
                    if award == award_id {
                        return Ok(());
                    }
                    // One bid, one deal: the customer signing more awards of our bid with fresh
                    // nonces would start a deal (and a contract backed by one reservation) per
                    // award, and evict other customers' agreements (THREATS C21). Nor may a
                    // later award name another provider: it released the hold of our live
                    // contract (market audit of session 51).
                    if provider == self.me {
                        return Err(MarketError::AlreadyAwarded {
                            auction,
                            first: award,
                            award: award_id,
                        });
                    }
                }
                if entry.request.body.customer != b.customer {
                    return Err(MarketError::NotCustomer {
                        auction,
                        who: b.customer,
                    });
                }
                let auction_resources = entry.request.body.resources.clone();
                let request = entry.request.clone();
                let key = ReservationKey::Auction(auction);
                if b.provider != self.me {
                    self.replay.record(&b)?;
                    self.mark_awarded(auction, award_id, b.provider);
                    // Someone else won: drop our tentative hold, if any. Our bid may be kept
                    // until the hold would have lapsed: if that award ends without a deal, the
                    // customer awards the next bid (THREATS C32), and the capacity is taken
                    // again if it is still free (`book/lost.rs`).
                    if self.my_bids.contains_key(&auction) {
                        self.ledger.release(&key);
                        let until = self.hold_until(&request);
                        self.lose_bid(now, auction, until);
                    }
                    return Ok(());
                }
                // An award of our bid must be for what was bid on: the same bid, price and
                // resources, and the auction's term and kind (an award for a year of a bid
                // made for a minute's hosting was agreed and registered; market audit of
                // session 51). And only while the bid's hold lasts: a bid whose hold lapsed
                // with no award is forgotten (THREATS C30), so a late award is refused rather
                // than taking the capacity again; a bid whose hold we let go of when another
                // provider was awarded may still be awarded until the hold would have lapsed
                // (that award ended without a deal, THREATS C32). Checked before anything is
                // recorded: a refused award changes nothing here.
                let held = self.ledger.reservations().contains_key(&key);
                match self.my_bids.get(&auction) {
                    Some(mine)
                        if mine.bid == bid
                            && mine.price == b.price
                            && auction_resources == b.resources
                            && mine.duration_ms == b.duration_ms
                            && mine.kind == b.kind
                            && (held || mine.lost_until.is_some_and(|t| now <= t)) => {}
                    _ => return Err(MarketError::UnknownBid { auction, bid }),
                }
                // A lost bid awarded after all: its capacity is taken again only within the
                // budgets of who can pay, as a new bid's (else a key awarding its own auctions
                // to a made-up provider, then to us, held all of our capacity outside them;
                // review of session 52), on balances fed lately (a key that drained its
                // account since is a stranger), and only if it is free. The check only
                // refuses: a refused award records nothing and may come again.
                let since = fresh_since(now);
                if !held && let Some(refusal) = self.hold_refusal(since, &request, b.price) {
                    tracing::debug!(auction = %auction.short(), reason = refusal.reason(), "award of a lost bid refused");
                    return Err(MarketError::UnknownBid { auction, bid });
                }
                let deal = self.new_deal(now, &award, award_id, Some(key))?;
                // Held until the contract is registered (extended then), or for good never: the
                // bid's hold, or taken again here (and let go if the nonce is refused).
                let until = now.saturating_add(super::AGREED_HOLD_MS);
                if !held {
                    self.ledger.reserve(key, b.resources.clone(), Some(until))?;
                }
                if let Err(e) = self.replay.record(&b) {
                    if !held {
                        self.ledger.release(&key);
                    }
                    return Err(e);
                }
                self.mark_awarded(auction, award_id, b.provider);
                self.ledger.hold_until(&key, until);
                self.unmark_lost(&auction);
                (key, deal)
            }
            AwardSubject::Offer { offer } => {
                if b.provider != self.me {
                    return Ok(());
                }
                // Our offer taken before the capacity of our running contracts is held would be
                // work on top of them (THREATS C35).
                self.require_restored()?;
                self.check_offer_award(award_id, offer, &b)?;
                let key = ReservationKey::Award(award_id);
                let deal = self.new_deal(now, &award, award_id, Some(key))?;
                // Reserved before the nonce is recorded, and let go if that fails, as for a
                // bid: a refused award changes nothing here (review of session 52).
                let until = now.saturating_add(super::AGREED_HOLD_MS);
                self.ledger.reserve(key, b.resources.clone(), Some(until))?;
                if let Err(e) = self.replay.record(&b) {
                    self.ledger.release(&key);
                    return Err(e);
                }
                (key, deal)
            }
        };
        tracing::debug!(award = %award_id.short(), customer = %b.customer.short(), price = b.price, "award received");
        self.start_deal(award_id, deal, out);
        self.award_holds.insert(award_id, reservation);
        if let AwardSubject::Offer { offer } = b.subject {
            self.offer_holds.insert(award_id, (offer, b.customer));
        }
        self.note_hold(reservation, b.customer, b.price);
        out.push(Effect::Awarded {
            award: award_id,
            auction: b.auction(),
            customer: b.customer,
            provider: b.provider,
            price: b.price,
        });
        if self.config.dmu.provider.auto_accept_award {
            // Test hook: a byzantine provider counters instead (`book/byzantine.rs`).
            #[cfg(any(test, feature = "test-utils"))]
            if self.byzantine.cut_term {
                self.cut_term_counter(now, award_id, out);
                return Ok(());
            }
            self.negotiate(now, award_id, NegotiationInput::Accept, out)?;
        }
        Ok(())
    }

    /// Our auction book's record that `auction` was awarded to `provider` by `award`.
    fn mark_awarded(&mut self, auction: AuctionId, award: AwardId, provider: NodeId) {
        if let Some(entry) = self.auctions.get_mut(&auction) {
            entry.status = AuctionStatus::Awarded { award, provider };
        }
    }

    /// Whether `b`, an award of our standing `offer`, may hold capacity: it takes the offer as
    /// published (its resources, at least its price for the term), for hosting (what
    /// `take_offer` signs; an offer names no kind) and for a term within
    /// `limits.max_duration_ms`, and its customer holds no other live award of the offer.
    /// Before, one key took an offer again and again with fresh nonces, each award holding
    /// capacity for [`AGREED_HOLD_MS`](super::AGREED_HOLD_MS) and a place in the deal task's
    /// table of agreements, and as storage or standby too (THREATS C33).
    fn check_offer_award(
        &self,
        award: AwardId,
        offer: OfferId,
        b: &AwardBody,
    ) -> Result<(), MarketError> {
        let o = self
            .offers
            .get(&offer)
            .ok_or(MarketError::UnknownOffer { offer })?;
        let min_price = offer_total_price(o.body.price_per_hour, b.duration_ms).unwrap_or(u64::MAX);
        if o.body.provider != self.me || o.body.resources != b.resources || b.price < min_price {
            return Err(MarketError::UnknownOffer { offer });
        }
        let absurd = |field: &'static str, value: String, hint: &'static str| MarketError::Absurd {
            kind: "award",
            id: award.to_string(),
            field,
            value,
            hint,
        };
        if b.kind != AuctionKind::Hosted {
            return Err(absurd(
                "kind",
                format!("{:?}", b.kind),
                "a standing offer is taken for hosting only",
            ));
        }
        if b.duration_ms == 0 || b.duration_ms > self.config.limits.max_duration_ms {
            return Err(absurd(
                "duration_ms",
                b.duration_ms.to_string(),
                "1 ms ..= market.limits.max_duration_ms",
            ));
        }
        let first = self
            .offer_holds
            .iter()
            .find(|(a, (taken, by))| *taken == offer && *by == b.customer && self.holds_award(a))
            .map(|(a, _)| *a);
        if let Some(first) = first {
            return Err(MarketError::OfferTaken {
                offer,
                first,
                award,
            });
        }
        Ok(())
    }

    /// Whether `from`'s snapshot request is answered now: once per [`SNAPSHOT_EVERY_MS`] per
    /// peer, and for at most [`MAX_SNAPSHOT_PEERS`] peers per interval (a snapshot is up to
    /// `snapshot_max` auctions and offers; identities are free).
    fn may_serve_snapshot(&mut self, now: Timestamp, from: NodeId) -> bool {
        let recent = |at: &Timestamp| now.saturating_sub(*at) < SNAPSHOT_EVERY_MS;
        if self.snapshots_served.get(&from).is_some_and(recent) {
            return false;
        }
        if self.snapshots_served.len() >= MAX_SNAPSHOT_PEERS {
            self.snapshots_served.retain(|_, at| recent(at));
            if self.snapshots_served.len() >= MAX_SNAPSHOT_PEERS {
                return false;
            }
        }
        self.snapshots_served.insert(from, now);
        true
    }

    fn snapshot(&self, now: Timestamp, to: NodeId, region: String, out: &mut Vec<Effect>) {
        let max = self.config.snapshot_max;
        let auctions: Vec<AuctionRequest> = self
            .auctions
            .values()
            .filter(|e| {
                e.status == AuctionStatus::Open
                    && e.request.body.region == region
                    && e.request.body.window_closes_at > now
            })
            .take(max)
            .map(|e| e.request.clone())
            .collect();
        let offers: Vec<Offer> = self
            .offers
            .values()
            .filter(|o| o.body.region == region && o.body.expires_at > now)
            .take(max.saturating_sub(auctions.len()))
            .cloned()
            .collect();
        out.push(Effect::Send {
            to,
            msg: MarketMessage::SnapshotResponse {
                region,
                auctions,
                offers,
            },
        });
    }
}
