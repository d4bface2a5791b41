#![allow(clippy::unwrap_used)]
use super::*;
use crate::identity::KeySigner;
use crate::negotiation::NegotiationEffect as E;
use crate::test_utils::{award, signer};

fn pair(max_rounds: u32) -> (Negotiation<KeySigner>, Negotiation<KeySigner>) {
    let (c, p) = (signer(1), signer(2));
    let a = award(&c, p.node_id(), 100, 1_000);
    let id = a.id().unwrap();
    (
        Negotiation::new(c, &a, id, max_rounds, 1_000).unwrap(),
        Negotiation::new(p, &a, id, max_rounds, 1_000).unwrap(),
    )
}

fn sent(effects: &[NegotiationEffect]) -> NegotiationMessage {
    effects
        .iter()
        .find_map(|e| match e {
            E::Send(_, m) => Some(m.clone()),
            _ => None,
        })
        .unwrap()
}

fn agreed(effects: &[NegotiationEffect]) -> Option<AgreedTerms> {
    effects.iter().find_map(|e| match e {
        E::Agreed(t) => Some(t.clone()),
        _ => None,
    })
}

#[test]
fn provider_accepting_the_award_agrees_on_identical_terms() {
    let (mut cust, mut prov) = pair(3);
    let out = prov.handle(1, NegotiationInput::Accept);
    let p_terms = agreed(&out).unwrap();
    let out = cust.handle(2, NegotiationInput::Remote(sent(&out)));
    let c_terms = agreed(&out).unwrap();
    assert_eq!(p_terms, c_terms);
    assert_eq!(p_terms.id().unwrap(), c_terms.id().unwrap());
    assert_eq!(p_terms.price, 100);
    assert!(matches!(cust.status(), NegotiationStatus::Agreed(_)));
}

#[test]
fn counter_offers_then_agreement_on_last_price() {
    let (mut cust, mut prov) = pair(3);
    let out = prov.handle(1, NegotiationInput::Counter { price: 150 });
    let out = cust.handle(2, NegotiationInput::Remote(sent(&out)));
    assert!(matches!(&out[..], [E::Proposed(t)] if t.price == 150));
    let out = cust.handle(3, NegotiationInput::Counter { price: 120 });
    let out = prov.handle(4, NegotiationInput::Remote(sent(&out)));
    assert!(matches!(&out[..], [E::Proposed(t)] if t.price == 120));
    let out = prov.handle(5, NegotiationInput::Accept);
    let out = cust.handle(6, NegotiationInput::Remote(sent(&out)));
    assert_eq!(agreed(&out).unwrap().price, 120);
}

#[test]
fn rounds_are_bounded_on_both_sides() {
    let (mut cust, mut prov) = pair(1);
    let out = prov.handle(1, NegotiationInput::Counter { price: 150 });
    cust.handle(2, NegotiationInput::Remote(sent(&out)));
    let out = cust.handle(3, NegotiationInput::Counter { price: 120 });
    assert!(matches!(
        &out[..],
        [E::Rejected(NegotiationError::TooManyRounds { max: 1, .. })]
    ));

    // A peer that ignores the bound makes the other side walk away.
    let (mut cust, mut prov) = pair(1);
    let out = prov.handle(1, NegotiationInput::Counter { price: 150 });
    cust.handle(2, NegotiationInput::Remote(sent(&out)));
    // Forge a round-2 counter signed by the provider's key.
    let mut body = sent(&out).body;
    body.round = 2;
    body.nonce += 1;
    let forged = Signed::sign(body, &signer(2)).unwrap();
    let out = cust.handle(3, NegotiationInput::Remote(forged));
    assert!(
        out.iter()
            .any(|e| matches!(e, E::Failed { by: Some(_), .. }))
    );
    assert!(matches!(cust.status(), NegotiationStatus::Failed { .. }));
}

#[test]
fn strangers_forgeries_and_self_accepts_are_refused() {
    let (mut cust, mut prov) = pair(3);
    let out = prov.handle(1, NegotiationInput::Counter { price: 150 });
    let mut tampered = sent(&out);
    tampered.body.round = 7;
    let res = cust.handle(2, NegotiationInput::Remote(tampered));
    assert!(matches!(
        &res[..],
        [E::Rejected(NegotiationError::Message { .. })]
    ));

    let mut stranger_body = sent(&out).body;
    stranger_body.from = signer(9).node_id();
    let stranger = Signed::sign(stranger_body, &signer(9)).unwrap();
    let res = cust.handle(2, NegotiationInput::Remote(stranger));
    assert!(matches!(
        &res[..],
        [E::Rejected(NegotiationError::WrongPeer { .. })]
    ));

    // The customer proposed round 0; it cannot accept its own proposal.
    let res = cust.handle(2, NegotiationInput::Accept);
    assert!(matches!(
        &res[..],
        [E::Rejected(NegotiationError::BadAccept { .. })]
    ));
}

#[test]
fn lapses_at_the_deadline() {
    let (mut cust, _) = pair(3);
    assert!(cust.handle(999, NegotiationInput::Tick).is_empty());
    let out = cust.handle(1_000, NegotiationInput::Tick);
    assert!(matches!(&out[..], [E::Failed { by: None, .. }]));
    let out = cust.handle(1_001, NegotiationInput::Accept);
    assert!(matches!(
        &out[..],
        [E::Rejected(NegotiationError::Finished { .. })]
    ));
}

/// Market audit of session 51: a counter changes the price only. One that cut the term was
/// accepted on its price alone (both sides' automatic rules compare only the price), so a
/// provider countering with the customer's ceiling and a 1 ms term had it agreed.
#[test]
fn a_counter_with_another_term_is_refused() {
    let (mut cust, mut prov) = pair(3);
    let out = prov.handle(1, NegotiationInput::Counter { price: 150 });
    let mut body = sent(&out).body;
    let NegotiationAction::Counter(terms) = &mut body.action else {
        panic!("a counter was sent");
    };
    terms.duration_ms = 1;
    let cut = Signed::sign(body, &signer(2)).unwrap();
    let res = cust.handle(2, NegotiationInput::Remote(cut));
    assert!(
        matches!(
            &res[..],
            [E::Rejected(NegotiationError::TermsMismatch { .. })]
        ),
        "{res:?}"
    );
    assert!(agreed(&res).is_none());
    // The same counter with the award's term is taken.
    let res = cust.handle(3, NegotiationInput::Remote(sent(&out)));
    assert!(
        matches!(&res[..], [E::Proposed(t)] if t.price == 150),
        "{res:?}"
    );
}
