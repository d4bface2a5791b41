//! Test hooks (feature `test-utils`, never in the shipped binary): what a byzantine market party
//! does unlike an honest one, for the test crate's `agora-byzantine`, whose process tests
//! perform each attack on real nodes (THREATS C27–C29). Every hook is off by default; the
//! honest side's checks are what the tests exercise, so the hooks deviate exactly where an
//! attacker would and nowhere else.

use super::{AuctionStatus, Effect, MarketState};
use crate::auction::{AwardBody, AwardSubject};
use crate::error::MarketError;
use crate::identity::{NodeId, Signer, Timestamp};
use crate::ids::AwardId;
use crate::message::{MarketMessage, topic_for_region};
use crate::negotiation::AgreedTerms;
use crate::signed::Signed;

/// The term of a byzantine provider's counter-offer ([`MarketState::byzantine_cut_term`]).
pub const CUT_TERM_MS: u64 = 1;

/// What this node's market does unlike an honest one; nothing by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Byzantine {
    /// Our awards carry this many times the auction's term (0 or 1: the auction's own).
    pub(super) stretch_awards: u64,
    /// As provider, we answer each award of our bid with a counter-offer cutting the term.
    pub(super) cut_term: bool,
}

impl<S: Signer + Clone> MarketState<S> {
    /// Test hook: every award this node signs as customer carries `factor` times the auction's
    /// term, for the bid's price (THREATS C27: the provider must refuse it).
    pub fn byzantine_stretch_awards(&mut self, factor: u64) {
        self.byzantine.stretch_awards = factor;
    }

    /// Test hook: as provider, this node answers each award of its bid with a counter-offer at
    /// the auction's maximum price for a term of [`CUT_TERM_MS`] instead of accepting it
    /// (THREATS C28: the customer must refuse it).
    pub fn byzantine_cut_term(&mut self) {
        self.byzantine.cut_term = true;
    }

    /// Test hook: signs a second award of our auction awarded under `first`, for the same bid,
    /// price and term but naming `provider`, and returns its id with the effects that send it
    /// to the first winner and gossip it in the auction's region (THREATS C29: the first
    /// winner must keep the hold of its contract). Nothing is recorded here.
    pub fn byzantine_reaward(
        &mut self,
        now: Timestamp,
        first: &AwardId,
        provider: NodeId,
    ) -> Result<(AwardId, Vec<Effect>), MarketError> {
        let unknown = || MarketError::UnknownAward { award: *first };
        let (auction, entry) = self
            .auctions
            .iter()
            .find(|(_, e)| {
                e.request.body.customer == self.me
                    && matches!(e.status, AuctionStatus::Awarded { award, .. } if award == *first)
            })
            .ok_or_else(unknown)?;
        let AuctionStatus::Awarded {
            provider: winner, ..
        } = entry.status
        else {
            return Err(unknown());
        };
        let (bid, price) = entry
            .bids
            .iter()
            .find(|(_, b)| b.body.provider == winner)
            .map(|(id, b)| (*id, b.body.price))
            .ok_or_else(unknown)?;
        let req = &entry.request.body;
        let (auction, topic) = (*auction, topic_for_region(&req.region));
        let (resources, duration_ms, kind) = (req.resources.clone(), req.duration_ms, req.kind);
        let body = AwardBody {
            customer: self.me,
            provider,
            subject: AwardSubject::Bid { auction, bid },
            price,
            resources,
            duration_ms,
            kind,
            nonce: self.next_nonce(now),
            expires_at: now.saturating_add(self.config.dmu.negotiation.timeout_ms),
        };
        let award = Signed::sign(body, &self.signer)?;
        let id = award.id()?;
        let effects = vec![
            Effect::Send {
                to: winner,
                msg: MarketMessage::Award(award.clone()),
            },
            Effect::Broadcast {
                topic,
                msg: MarketMessage::Award(award),
            },
        ];
        Ok((id, effects))
    }

    /// The term our award of an auction lasting `term` carries.
    pub(super) fn awarded_term(&self, term: u64) -> u64 {
        match self.byzantine.stretch_awards {
            0 | 1 => term,
            factor => term.saturating_mul(factor),
        }
    }

    /// A byzantine provider's answer to the award of its bid: a counter-offer at the auction's
    /// maximum price (the award's price for an offer) for [`CUT_TERM_MS`].
    pub(super) fn cut_term_counter(
        &mut self,
        now: Timestamp,
        award: AwardId,
        out: &mut Vec<Effect>,
    ) {
        let Some(current) = self
            .deals
            .get(&award)
            .map(|d| d.negotiation.current_terms().clone())
        else {
            return;
        };
        let max_price = match current.subject {
            AwardSubject::Bid { auction, .. } => self
                .auctions
                .get(&auction)
                .map(|e| e.request.body.max_price),
            AwardSubject::Offer { .. } => None,
        };
        let terms = AgreedTerms {
            price: max_price.unwrap_or(current.price),
            duration_ms: CUT_TERM_MS,
            ..current
        };
        let Some(deal) = self.deals.get_mut(&award) else {
            return;
        };
        let effects = deal.negotiation.byzantine_counter(now, terms);
        self.apply_negotiation(now, award, effects, out);
    }
}

// The hooks of THREATS C33 and C34 (session 53's process tests), in a block of their own.
impl<S: Signer + Clone> MarketState<S> {
    /// Test hook: opens an auction of `spec` that only `only` may win (empty: anyone), signed
    /// with `twist` applied to its body and passed through none of this node's own checks, and
    /// returns its id with the effects that gossip it and close it at its window's end (THREATS
    /// C34: a slot starting past `limits.max_slot_lead_ms`, or a `created_at` ahead of the
    /// clock; every receiver must refuse it). Kept in our book like any auction of ours, so a
    /// bid on it is taken, closes it and is awarded as on an honest one.
    pub fn byzantine_open_auction(
        &mut self,
        now: Timestamp,
        spec: crate::auction::AuctionSpec,
        only: std::collections::BTreeSet<NodeId>,
        twist: impl FnOnce(&mut crate::auction::AuctionBody),
    ) -> Result<(crate::ids::AuctionId, Vec<Effect>), MarketError> {
        let nonce = self.next_nonce(now);
        let named = only.iter().copied().collect();
        let mut body = spec.create_for(&self.signer, now, nonce, named)?.body;
        twist(&mut body);
        let req = Signed::sign(body, &self.signer)?;
        let id = req.id()?;
        let (topic, close) = (
            topic_for_region(&req.body.region),
            req.body.window_closes_at,
        );
        self.auctions.insert(
            id,
            super::AuctionEntry {
                request: req.clone(),
                bids: std::collections::BTreeMap::new(),
                status: AuctionStatus::Open,
            },
        );
        if !only.is_empty() {
            self.restricted.insert(id, only);
        }
        let effects = vec![
            Effect::Broadcast {
                topic,
                msg: MarketMessage::Auction(req),
            },
            Effect::ScheduleTimeout { at: close },
        ];
        Ok((id, effects))
    }

    /// Test hook: signs an award of the standing `offer` for `duration_ms` as `kind`, at the
    /// offer's price for that term, as [`Input::TakeOffer`](super::Input::TakeOffer) does but
    /// without its checks of the term, and records nothing here (no deal: the provider's answer
    /// is refused as an unknown award). Returns its id with the effect that sends it to the
    /// offer's provider (THREATS C33: the provider must refuse a second live award of its offer
    /// by one customer, one for another kind than hosting and one for a term past
    /// `limits.max_duration_ms`).
    pub fn byzantine_take_offer(
        &mut self,
        now: Timestamp,
        offer: crate::ids::OfferId,
        duration_ms: u64,
        kind: crate::auction::AuctionKind,
    ) -> Result<(AwardId, Vec<Effect>), MarketError> {
        let o = self
            .offers
            .get(&offer)
            .ok_or(MarketError::UnknownOffer { offer })?;
        let (provider, resources) = (o.body.provider, o.body.resources.clone());
        let price = crate::auction::offer_total_price(o.body.price_per_hour, duration_ms)
            .unwrap_or(u64::MAX);
        let body = AwardBody {
            customer: self.me,
            provider,
            subject: AwardSubject::Offer { offer },
            price,
            resources,
            duration_ms,
            kind,
            nonce: self.next_nonce(now),
            expires_at: now.saturating_add(self.config.dmu.negotiation.timeout_ms),
        };
        let award = Signed::sign(body, &self.signer)?;
        let id = award.id()?;
        let send = Effect::Send {
            to: provider,
            msg: MarketMessage::Award(award),
        };
        Ok((id, vec![send]))
    }
}

#[cfg(test)]
mod tests {
    //! Each hook performs its attack in the simulation, and the honest side refuses it: with
    //! the session-51 fix of C27, C28 or C29 reverted, the test of that hook fails.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::book::{Input, MarketConfig};
    use crate::capacity::ReservationKey;
    use crate::negotiation::NegotiationError;
    use crate::test_utils::{AuctionBuilder, SimNet, big_capacity, signer};

    /// Node 0 a customer with the defaults, node 1 an auto-bidding provider; `byzantine`
    /// turns node `i`'s hooks on before node 0 opens an auction of `max_price` 1000.
    fn auction_with(byzantine: impl FnOnce(&mut SimNet)) -> (SimNet, crate::ids::AuctionId) {
        let mut provider = MarketConfig {
            capacity: big_capacity(),
            ..MarketConfig::default()
        };
        provider.dmu.provider.auto_bid = true;
        let mut net = SimNet::new(vec![MarketConfig::default(), provider]);
        byzantine(&mut net);
        let spec = AuctionBuilder::new().max_price(1000).spec();
        net.input(0, 0, Input::CreateAuction(spec));
        let auction = *net.nodes[0].auctions().keys().next().unwrap();
        (net, auction)
    }

    /// C27: the customer's award of the provider's bid signed for 1,000 times the auction's
    /// term is refused (`UnknownBid`); nobody agrees. With the C27 check in `remote_award`
    /// reverted, the provider agrees to the stretched term.
    #[test]
    fn a_stretched_award_is_refused_by_the_provider() {
        let (mut net, auction) = auction_with(|n| n.nodes[0].byzantine_stretch_awards(1_000));
        let term = net.nodes[0]
            .auction(&auction)
            .unwrap()
            .request
            .body
            .duration_ms;
        net.input(10_000, 0, Input::Tick);
        let award = net
            .effects_of(0)
            .find_map(|e| match e {
                Effect::Send {
                    msg: MarketMessage::Award(a),
                    ..
                } => Some(a.body.clone()),
                _ => None,
            })
            .expect("the customer awarded");
        assert_eq!(
            award.duration_ms,
            term * 1_000,
            "the hook stretched the term"
        );
        assert!(
            net.rejections(1)
                .iter()
                .any(|e| matches!(e, MarketError::UnknownBid { .. })),
            "{:?}",
            net.log
        );
        assert!(
            net.agreed(0).is_empty() && net.agreed(1).is_empty(),
            "{:?}",
            net.log
        );
    }

    /// C28: the provider's counter at the auction's maximum price for a 1 ms term is refused
    /// by the customer (`TermsMismatch`); nobody agrees. With `same_deal` ignoring the term
    /// again, the customer accepts it on its price alone.
    #[test]
    fn a_counter_cutting_the_term_is_refused_by_the_customer() {
        let (mut net, _) = auction_with(|n| n.nodes[1].byzantine_cut_term());
        net.input(10_000, 0, Input::Tick);
        let counter = net
            .effects_of(1)
            .find_map(|e| match e {
                Effect::Send {
                    msg: MarketMessage::Negotiation(m),
                    ..
                } => Some(m.body.action.clone()),
                _ => None,
            })
            .expect("the provider countered");
        assert!(
            matches!(&counter, crate::negotiation::NegotiationAction::Counter(t)
                if t.duration_ms == CUT_TERM_MS && t.price == 1000),
            "{counter:?}"
        );
        assert!(
            net.rejections(0).iter().any(|e| matches!(
                e,
                MarketError::Negotiation(NegotiationError::TermsMismatch { .. })
            )),
            "{:?}",
            net.log
        );
        assert!(
            net.agreed(0).is_empty() && net.agreed(1).is_empty(),
            "{:?}",
            net.log
        );
    }

    /// C29: after the deal, the customer's second award of the auction naming another
    /// provider is refused (`AlreadyAwarded`) and the first provider's hold stays. With the
    /// C29 guard narrowed back to awards naming this provider, the hold is released.
    #[test]
    fn a_reaward_to_another_provider_leaves_the_winners_hold() {
        let (mut net, auction) = auction_with(|_| {});
        net.input(10_000, 0, Input::Tick);
        assert_eq!(net.agreed(1).len(), 1, "{:?}", net.log);
        let first = net.agreed(0)[0].award;
        let key = ReservationKey::Auction(auction);
        assert!(net.nodes[1].ledger().reservations().contains_key(&key));
        let (second, effects) = net.nodes[0]
            .byzantine_reaward(10_001, &first, signer(7).node_id())
            .unwrap();
        assert_ne!(second, first);
        let customer = net.nodes[0].node_id();
        let mut refused = Vec::new();
        for effect in effects {
            let msg = match effect {
                Effect::Send { msg, .. } | Effect::Broadcast { msg, .. } => msg,
                other => panic!("only messages: {other:?}"),
            };
            refused.extend(net.nodes[1].handle(
                10_002,
                Input::Remote {
                    from: customer,
                    msg,
                },
            ));
        }
        assert!(
            refused.iter().any(|e| matches!(
                e,
                Effect::Rejected {
                    error: MarketError::AlreadyAwarded { .. },
                    ..
                }
            )),
            "{refused:?}"
        );
        net.nodes[1].handle(10_003, Input::Tick);
        assert!(
            net.nodes[1].ledger().reservations().contains_key(&key),
            "the winner's hold stays"
        );
        assert!(net.nodes[1].holds_award(&first));
    }

    /// Node 0's messages in `effects`, handed to node 1 at `now`; node 1's answer.
    fn to_provider(net: &mut SimNet, now: Timestamp, effects: Vec<Effect>) -> Vec<Effect> {
        let customer = net.nodes[0].node_id();
        let mut out = Vec::new();
        for effect in effects {
            if let Effect::Broadcast { msg, .. } | Effect::Send { msg, .. } = effect {
                out.extend(net.nodes[1].handle(
                    now,
                    Input::Remote {
                        from: customer,
                        msg,
                    },
                ));
            }
        }
        out
    }

    /// Whether `out` sends a bid.
    fn bids(out: &[Effect]) -> bool {
        out.iter().any(|e| {
            matches!(
                e,
                Effect::Send {
                    msg: MarketMessage::Bid(_),
                    ..
                }
            )
        })
    }

    /// C34: the hook's auctions with a slot an hour past the lead limit, and created a day
    /// ahead of the clock, are refused by a provider that auto-bids on slots up to a week
    /// ahead (`Absurd` on `start_at`, `created_at`), which bids on neither, and then bids on an
    /// honest auction. With either C34 check in `check_auction` reverted, it bids.
    #[test]
    fn auctions_with_a_far_slot_or_created_ahead_are_refused() {
        let mut provider = MarketConfig {
            capacity: big_capacity(),
            ..MarketConfig::default()
        };
        provider.dmu.provider.auto_bid = true;
        provider.dmu.provider.max_slot_lead_ms = 7 * 24 * 3_600_000;
        let mut net = SimNet::new(vec![MarketConfig::default(), provider]);
        let now = 1_000;
        let lead = net.nodes[0].config().limits.max_slot_lead_ms;
        let spec = AuctionBuilder::new().spec();
        let only = std::collections::BTreeSet::new();
        let slot = now + lead + 3_600_000;
        let (far, effects) = net.nodes[0]
            .byzantine_open_auction(now, spec.clone(), only.clone(), |b| b.start_at = Some(slot))
            .unwrap();
        let mut out = to_provider(&mut net, now, effects);
        let ahead = now + 24 * 3_600_000;
        let (created, effects) = net.nodes[0]
            .byzantine_open_auction(now, spec.clone(), only, |b| b.created_at = ahead)
            .unwrap();
        out.extend(to_provider(&mut net, now, effects));
        for (id, field) in [(far, "start_at"), (created, "created_at")] {
            assert!(
                out.iter().any(|e| matches!(e, Effect::Rejected {
                    error: MarketError::Absurd { id: i, field: f, .. }, ..
                } if *i == id.to_string() && *f == field)),
                "{field}: {out:?}"
            );
            assert!(net.nodes[1].auction(&id).is_none());
        }
        assert!(!bids(&out), "{out:?}");
        net.input(now, 0, Input::CreateAuction(spec));
        let honest: Vec<Effect> = net.effects_of(1).cloned().collect();
        assert!(bids(&honest), "{honest:?}");
    }

    /// C33: once node 0's honest take of node 1's offer is agreed, the hook's second take with
    /// the same terms, a take as storage and one for a term past `max_duration_ms` are each
    /// refused (`OfferTaken`, `Absurd` on `kind`, on `duration_ms`), and node 1 holds the
    /// offer's capacity once. With any one of `check_offer_award`'s three checks off, that
    /// take is awarded or refused for another reason.
    #[test]
    fn takes_again_of_an_agreed_offer_are_refused() {
        use crate::auction::AuctionKind;
        let provider = MarketConfig {
            capacity: big_capacity(),
            ..MarketConfig::default()
        };
        let mut net = SimNet::new(vec![MarketConfig::default(), provider]);
        let resources = crate::resources::Resources {
            cpu_millis: 2000,
            ..crate::resources::Resources::default()
        };
        let spec = crate::book::OfferSpec {
            region: "eu-west".into(),
            resources,
            price_per_hour: 30,
            location: None,
            ttl_ms: 3_600_000,
        };
        net.input(0, 1, Input::PublishOffer(spec));
        let offer = *net.nodes[0].offers().keys().next().unwrap();
        let hour = 3_600_000;
        net.input(
            1,
            0,
            Input::TakeOffer {
                offer,
                duration_ms: hour,
            },
        );
        assert_eq!(net.agreed(1).len(), 1, "{:?}", net.log);
        let first = net.agreed(1)[0].award;
        let held = net.nodes[1].ledger().reservations().len();
        let too_long = net.nodes[0].config().limits.max_duration_ms + 1;
        for (term, kind, field) in [
            (hour, AuctionKind::Hosted, None),
            (hour, AuctionKind::Storage, Some("kind")),
            (too_long, AuctionKind::Hosted, Some("duration_ms")),
        ] {
            let (award, effects) = net.nodes[0]
                .byzantine_take_offer(2, offer, term, kind)
                .unwrap();
            let out = to_provider(&mut net, 3, effects);
            let refused = out.iter().any(|e| match e {
                Effect::Rejected {
                    error:
                        MarketError::OfferTaken {
                            first: f, award: a, ..
                        },
                    ..
                } => field.is_none() && *f == first && *a == award,
                Effect::Rejected {
                    error: MarketError::Absurd { field: f, .. },
                    ..
                } => field == Some(*f),
                _ => false,
            });
            assert!(refused, "{kind:?} for {term} ms: {out:?}");
            assert!(!out.iter().any(|e| matches!(e, Effect::Awarded { .. })));
        }
        assert_eq!(net.nodes[1].ledger().reservations().len(), held);
    }
}
