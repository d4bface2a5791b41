//! Awards turn into negotiations; their effects become market effects.

use super::{Deal, Effect, MarketState, PriceBound};
use crate::auction::{Award, AwardSubject};
use crate::capacity::ReservationKey;
use crate::error::MarketError;
use crate::identity::{Signer, Timestamp};
use crate::ids::AwardId;
use crate::message::MarketMessage;
use crate::negotiation::{Negotiation, NegotiationEffect, NegotiationInput, NegotiationStatus};

impl<S: Signer + Clone> MarketState<S> {
    /// The negotiation of `award` (we are customer or provider), holding `reservation` once
    /// started ([`Self::start_deal`]). It lapses at the award's expiry; as provider, no later
    /// than our own negotiation timeout from now, so a customer cannot hold our capacity with
    /// a far-off expiry. Built before anything is recorded or reserved for the award, so that
    /// its one failure (an encoding error) leaves nothing behind: before, a hold taken for the
    /// award stayed 11 minutes with no deal (third review of session 52).
    pub(super) fn new_deal(
        &self,
        now: Timestamp,
        award: &Award,
        award_id: AwardId,
        reservation: Option<ReservationKey>,
    ) -> Result<Deal<S>, MarketError> {
        let rules = &self.config.dmu.negotiation;
        let b = &award.body;
        // Counter-offers inside these bounds are accepted without asking the operator.
        let auto_accept = if b.customer == self.me {
            let cap = match b.subject {
                AwardSubject::Bid { auction, .. } => self
                    .auctions
                    .get(&auction)
                    .map(|e| e.request.body.max_price),
                AwardSubject::Offer { .. } => Some(b.price),
            };
            cap.filter(|_| self.config.dmu.customer.accept_counter_within_max)
                .map(PriceBound::AtMost)
        } else {
            self.config
                .dmu
                .provider
                .accept_counter_not_below_bid
                .then_some(PriceBound::AtLeast(b.price))
        };
        let deadline = if b.customer == self.me {
            b.expires_at
        } else {
            b.expires_at.min(now.saturating_add(rules.timeout_ms))
        };
        let negotiation = Negotiation::new(
            self.signer.clone(),
            award,
            award_id,
            rules.max_rounds,
            deadline,
        )?;
        Ok(Deal {
            negotiation,
            reservation,
            auto_accept,
            bid_held: false,
            long_lapse: false,
        })
    }

    /// Starts negotiating `award` with `deal` ([`Self::new_deal`]): it cannot fail.
    pub(super) fn start_deal(&mut self, award: AwardId, deal: Deal<S>, out: &mut Vec<Effect>) {
        out.push(Effect::ScheduleTimeout {
            at: deal.negotiation.deadline(),
        });
        self.deals.insert(award, deal);
    }

    /// Feeds a local decision or peer message to the negotiation of `award`.
    pub(super) fn negotiate(
        &mut self,
        now: Timestamp,
        award: AwardId,
        input: NegotiationInput,
        out: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let deal = self
            .deals
            .get_mut(&award)
            .ok_or(MarketError::UnknownAward { award })?;
        let effects = deal.negotiation.handle(now, input);
        let bound = deal.auto_accept;
        let accept = effects.iter().any(|e| match (e, bound) {
            (NegotiationEffect::Proposed(t), Some(PriceBound::AtMost(max))) => t.price <= max,
            (NegotiationEffect::Proposed(t), Some(PriceBound::AtLeast(min))) => t.price >= min,
            _ => false,
        });
        let countered = effects
            .iter()
            .any(|e| matches!(e, NegotiationEffect::Proposed(_)));
        self.apply_negotiation(now, award, effects, out);
        if accept {
            let effects = self
                .deals
                .get_mut(&award)
                .map(|d| d.negotiation.handle(now, NegotiationInput::Accept));
            self.apply_negotiation(now, award, effects.unwrap_or_default(), out);
        } else if countered {
            // A counter above our bound is the provider's refusal (THREATS C32).
            self.counter_refused(now, award, out);
        }
        Ok(())
    }

    /// Turns the effects of `award`'s negotiation at `now` into market effects. One that ends
    /// it without a deal releases what the deal holds, and is judged here, while the deal is
    /// still in the book: whether its provider walked away ([`Self::note_failed_award`]).
    pub(super) fn apply_negotiation(
        &mut self,
        now: Timestamp,
        award: AwardId,
        effects: Vec<NegotiationEffect>,
        out: &mut Vec<Effect>,
    ) {
        for effect in effects {
            match effect {
                NegotiationEffect::Send(to, msg) => out.push(Effect::Send {
                    to,
                    msg: MarketMessage::Negotiation(msg),
                }),
                NegotiationEffect::Proposed(terms) => out.push(Effect::Proposed(terms)),
                NegotiationEffect::Agreed(terms) => {
                    tracing::debug!(award = %award.short(), price = terms.price, "deal agreed");
                    let respond_by = self
                        .deals
                        .get(&award)
                        .map_or(0, |d| d.negotiation.deadline());
                    out.push(Effect::Agreed(self.agreement(terms, respond_by)));
                }
                NegotiationEffect::Failed { award, by } => {
                    if let Some(key) = self
                        .deals
                        .get_mut(&award)
                        .and_then(|d| d.reservation.take())
                    {
                        self.ledger.release(&key);
                    }
                    self.note_failed_award(now, award, by);
                    out.push(Effect::NegotiationFailed { award, by });
                }
                NegotiationEffect::Rejected(e) => out.push(Effect::Rejected {
                    from: None,
                    error: MarketError::Negotiation(e),
                }),
            }
        }
    }

    /// Times out lapsed negotiations and forgets finished ones past their deadline.
    pub(super) fn tick_deals(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let open: Vec<AwardId> = self
            .deals
            .iter()
            .filter(|(_, d)| {
                *d.negotiation.status() == NegotiationStatus::Open
                    && d.negotiation.deadline() <= now
            })
            .map(|(id, _)| *id)
            .collect();
        for id in open {
            if let Some(deal) = self.deals.get_mut(&id) {
                let effects = deal.negotiation.handle(now, NegotiationInput::Tick);
                self.apply_negotiation(now, id, effects, out);
            }
        }
        // Agreed deals keep their reservation until it ends (`AGREED_HOLD_MS` after the award,
        // or the contract's end once it is registered: `Input::HoldAward`).
        self.deals.retain(|_, d| {
            *d.negotiation.status() == NegotiationStatus::Open || d.negotiation.deadline() > now
        });
    }
}
