//! The negotiation state machine for one award, run by each of the two parties.

use super::{
    AgreedTerms, NegotiationAction, NegotiationBody, NegotiationEffect, NegotiationError,
    NegotiationInput, NegotiationMessage, NegotiationStatus,
};
use crate::auction::Award;
use crate::error::MarketError;
use crate::identity::{NodeId, Signer, Timestamp};
use crate::ids::{AwardId, TermsId};
use crate::signed::Signed;

/// One party's view of a negotiation.
#[derive(Debug)]
pub struct Negotiation<S> {
    signer: S,
    me: NodeId,
    peer: NodeId,
    award: AwardId,
    current: AgreedTerms,
    current_id: TermsId,
    proposed_by: NodeId,
    round: u32,
    max_rounds: u32,
    deadline: Timestamp,
    status: NegotiationStatus,
    last_nonce: u64,
}

impl<S: Signer> Negotiation<S> {
    /// Starts from `award` (round 0, proposed by the customer); `signer` must be a party.
    pub fn new(
        signer: S,
        award: &Award,
        award_id: AwardId,
        max_rounds: u32,
        deadline: Timestamp,
    ) -> Result<Self, MarketError> {
        let me = signer.node_id();
        let b = &award.body;
        let peer = if me == b.customer {
            b.provider
        } else if me == b.provider {
            b.customer
        } else {
            return Err(MarketError::WrongSigner {
                kind: "negotiation",
                author: b.provider,
                signer: me,
            });
        };
        let current = AgreedTerms::from_award(award, award_id);
        let current_id = current.id()?;
        Ok(Negotiation {
            signer,
            me,
            peer,
            award: award_id,
            current,
            current_id,
            proposed_by: b.customer,
            round: 0,
            max_rounds,
            deadline,
            status: NegotiationStatus::Open,
            last_nonce: 0,
        })
    }

    /// Current status.
    pub fn status(&self) -> &NegotiationStatus {
        &self.status
    }

    /// The latest proposal on the table.
    pub fn current_terms(&self) -> &AgreedTerms {
        &self.current
    }

    /// Who made the latest proposal.
    pub fn proposed_by(&self) -> NodeId {
        self.proposed_by
    }

    /// Current round (0 = the award itself).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// When the negotiation lapses without agreement.
    pub fn deadline(&self) -> Timestamp {
        self.deadline
    }

    /// The counterparty.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Applies one input.
    pub fn handle(&mut self, now: Timestamp, input: NegotiationInput) -> Vec<NegotiationEffect> {
        if self.status != NegotiationStatus::Open {
            return vec![NegotiationEffect::Rejected(NegotiationError::Finished {
                award: self.award,
            })];
        }
        let result = match input {
            NegotiationInput::Counter { price } => self.local_counter(now, price),
            NegotiationInput::Accept => self.local_accept(now),
            NegotiationInput::WalkAway => self.walk_away(now),
            NegotiationInput::Remote(msg) => self.remote(now, msg),
            NegotiationInput::Tick => Ok(self.tick(now)),
        };
        result.unwrap_or_else(|e| vec![NegotiationEffect::Rejected(e)])
    }

    fn wrap(&self, e: MarketError) -> NegotiationError {
        NegotiationError::Message {
            award: self.award,
            source: Box::new(e),
        }
    }

    fn send(
        &mut self,
        now: Timestamp,
        action: NegotiationAction,
    ) -> Result<NegotiationEffect, NegotiationError> {
        self.last_nonce = self.last_nonce.saturating_add(1).max(now);
        let body = NegotiationBody {
            award: self.award,
            from: self.me,
            round: self.round,
            action,
            nonce: self.last_nonce,
            expires_at: self.deadline,
        };
        let msg = Signed::sign(body, &self.signer).map_err(|e| self.wrap(e))?;
        Ok(NegotiationEffect::Send(self.peer, msg))
    }

    fn local_counter(
        &mut self,
        now: Timestamp,
        price: u64,
    ) -> Result<Vec<NegotiationEffect>, NegotiationError> {
        let terms = AgreedTerms {
            price,
            ..self.current.clone()
        };
        self.counter(now, terms)
    }

    /// Test hook (feature `test-utils`, never in the shipped binary): a counter-offer of
    /// `terms` whatever else they change, as a byzantine party sends one (an honest party
    /// changes the price only, [`NegotiationInput::Counter`]); the peer must refuse it.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn byzantine_counter(
        &mut self,
        now: Timestamp,
        terms: AgreedTerms,
    ) -> Vec<NegotiationEffect> {
        if self.status != NegotiationStatus::Open {
            return vec![NegotiationEffect::Rejected(NegotiationError::Finished {
                award: self.award,
            })];
        }
        self.counter(now, terms)
            .unwrap_or_else(|e| vec![NegotiationEffect::Rejected(e)])
    }

    /// Puts `terms` on the table as our counter-offer, in the next round.
    fn counter(
        &mut self,
        now: Timestamp,
        terms: AgreedTerms,
    ) -> Result<Vec<NegotiationEffect>, NegotiationError> {
        if self.round >= self.max_rounds {
            return Err(NegotiationError::TooManyRounds {
                award: self.award,
                max: self.max_rounds,
            });
        }
        let id = terms.id().map_err(|e| self.wrap(e))?;
        self.round += 1;
        self.current = terms.clone();
        self.current_id = id;
        self.proposed_by = self.me;
        Ok(vec![self.send(now, NegotiationAction::Counter(terms))?])
    }

    fn local_accept(&mut self, now: Timestamp) -> Result<Vec<NegotiationEffect>, NegotiationError> {
        if self.proposed_by == self.me {
            return Err(NegotiationError::BadAccept {
                award: self.award,
                terms: self.current_id,
            });
        }
        let send = self.send(now, NegotiationAction::Accept(self.current_id))?;
        self.status = NegotiationStatus::Agreed(self.current.clone());
        Ok(vec![send, NegotiationEffect::Agreed(self.current.clone())])
    }

    fn walk_away(&mut self, now: Timestamp) -> Result<Vec<NegotiationEffect>, NegotiationError> {
        let send = self.send(now, NegotiationAction::WalkAway)?;
        self.status = NegotiationStatus::Failed { by: Some(self.me) };
        Ok(vec![
            send,
            NegotiationEffect::Failed {
                award: self.award,
                by: Some(self.me),
            },
        ])
    }

    fn tick(&mut self, now: Timestamp) -> Vec<NegotiationEffect> {
        if now < self.deadline {
            return Vec::new();
        }
        self.status = NegotiationStatus::Failed { by: None };
        vec![NegotiationEffect::Failed {
            award: self.award,
            by: None,
        }]
    }

    fn remote(
        &mut self,
        now: Timestamp,
        msg: NegotiationMessage,
    ) -> Result<Vec<NegotiationEffect>, NegotiationError> {
        msg.verify().map_err(|e| self.wrap(e))?;
        let b = msg.body;
        if b.from != self.peer {
            return Err(NegotiationError::WrongPeer {
                award: self.award,
                from: b.from,
                expected: self.peer,
            });
        }
        if b.award != self.award {
            return Err(NegotiationError::TermsMismatch { award: self.award });
        }
        match b.action {
            NegotiationAction::Counter(terms) => {
                let expected = self.round + 1;
                if b.round != expected {
                    return Err(NegotiationError::WrongRound {
                        award: self.award,
                        got: b.round,
                        expected,
                    });
                }
                if expected > self.max_rounds {
                    // The peer broke the bound: refuse and end the negotiation.
                    let mut out = vec![NegotiationEffect::Rejected(
                        NegotiationError::TooManyRounds {
                            award: self.award,
                            max: self.max_rounds,
                        },
                    )];
                    out.extend(self.walk_away(now)?);
                    return Ok(out);
                }
                if !self.current.same_deal(&terms) || terms.price == 0 {
                    return Err(NegotiationError::TermsMismatch { award: self.award });
                }
                self.current_id = terms.id().map_err(|e| self.wrap(e))?;
                self.current = terms.clone();
                self.round = expected;
                self.proposed_by = self.peer;
                Ok(vec![NegotiationEffect::Proposed(terms)])
            }
            NegotiationAction::Accept(hash) => {
                if self.proposed_by != self.me || hash != self.current_id || b.round != self.round {
                    return Err(NegotiationError::BadAccept {
                        award: self.award,
                        terms: hash,
                    });
                }
                self.status = NegotiationStatus::Agreed(self.current.clone());
                Ok(vec![NegotiationEffect::Agreed(self.current.clone())])
            }
            NegotiationAction::WalkAway => {
                self.status = NegotiationStatus::Failed {
                    by: Some(self.peer),
                };
                Ok(vec![NegotiationEffect::Failed {
                    award: self.award,
                    by: Some(self.peer),
                }])
            }
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
