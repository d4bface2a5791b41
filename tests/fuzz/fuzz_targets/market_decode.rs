//! Market messages as peers send them: decode, re-encode, validate, and feed to a book.
#![no_main]

use agora_fuzz::assert_stable_encoding;
use agora_market::validate::{Limits, check_auction, check_offer};
use agora_market::{Input, KeySigner, MarketConfig, MarketMessage, MarketState, NodeId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = MarketMessage::decode(data) else {
        return;
    };
    assert_stable_encoding(
        &msg,
        |m| m.encode().expect("a decoded message encodes"),
        |b| MarketMessage::decode(b).ok(),
    );
    let limits = Limits::default();
    match &msg {
        MarketMessage::Auction(a) => {
            let _ = check_auction(a, 1, &limits);
        }
        MarketMessage::Offer(o) => {
            let _ = check_offer(o, 1, &limits);
        }
        MarketMessage::Award(a) => {
            let _ = a.verify();
        }
        _ => {}
    }
    let mut node = MarketState::new(KeySigner::from_seed(1), MarketConfig::default());
    node.handle(
        1,
        Input::Remote {
            from: NodeId([7; 32]),
            msg,
        },
    );
    node.handle(u64::MAX, Input::Tick);
});
