//! Broken messages on every gossip topic and every request kind.

use agora_wire::codec::{Kind, MAX_GOSSIP_BYTES, MAX_RPC_BYTES};
use agora_wire::topics::{BLOCKS_TOPIC, CONSENSUS_TOPIC, RADIO_TOPIC, TX_TOPIC};

use super::envelopes::{Bad, all_bad, malformed_body};
use super::{Adversary, HostileDevnet};

/// Every gossip topic a devnet node subscribes to, with the kind of envelope it carries.
pub fn topics() -> Vec<(String, Kind)> {
    vec![
        (TX_TOPIC.to_string(), Kind::Transaction),
        (CONSENSUS_TOPIC.to_string(), Kind::Consensus),
        (BLOCKS_TOPIC.to_string(), Kind::Consensus),
        (RADIO_TOPIC.to_string(), Kind::Radio),
        (agora_market::topic_for_region("default"), Kind::Market),
    ]
}

/// Every envelope kind.
pub const KINDS: [Kind; 8] = [
    Kind::Presence,
    Kind::Market,
    Kind::Consensus,
    Kind::Transaction,
    Kind::Deal,
    Kind::Raw,
    Kind::Radio,
    Kind::Storage,
];

/// What a broken-message attack sent.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    /// Messages the network layer must refuse (forged, stale, oversized, garbage…).
    pub invalid: usize,
    /// Correctly signed messages with a payload their kind cannot decode (the application
    /// must drop them without harm).
    pub malformed: usize,
    /// Publications gossipsub itself refused before sending (no peers yet, duplicates).
    pub not_sent: Vec<String>,
}

/// Publishes every broken variant (and a malformed body) of `kind` on `topic`. Gossipsub
/// scores each invalid message against the peer that sent it (`-10 × count²`), so after about
/// three the receivers graylist the adversary and ignore the rest unseen: attack each topic
/// with a fresh identity to reach each validator.
pub async fn broken_gossip_on(adv: &Adversary, topic: &str, kind: Kind) -> Sent {
    let mut sent = Sent::default();
    for Bad { what, bytes } in all_bad(adv.signer(), kind, MAX_GOSSIP_BYTES, true) {
        match adv.publish_raw(topic, bytes).await {
            Ok(()) => sent.invalid += 1,
            Err(e) => sent.not_sent.push(format!("{what} on {topic}: {e:#}")),
        }
    }
    let body = malformed_body(adv.signer(), kind).to_bytes();
    match adv.publish_raw(topic, body).await {
        Ok(()) => sent.malformed += 1,
        Err(e) => sent
            .not_sent
            .push(format!("malformed body on {topic}: {e:#}")),
    }
    sent
}

/// Sends every broken variant of every request kind (and a malformed body of each) to node
/// `i`; returns how many broken ones were sent. None may be answered.
pub async fn broken_requests_everywhere(adv: &Adversary, net: &HostileDevnet, i: usize) -> Sent {
    let peer = net.peer_id(i);
    let mut sent = Sent::default();
    for kind in KINDS {
        for Bad { what, bytes } in all_bad(adv.signer(), kind, MAX_RPC_BYTES, false) {
            if let Ok(answer) = adv.request_raw(peer, bytes).await {
                sent.not_sent
                    .push(format!("{what} {kind:?} request was answered: {answer:?}"));
            }
            sent.invalid += 1;
        }
        // A malformed body may be answered (with a refusal) or not (then the request times
        // out on our side; we do not wait for that); it must not hurt.
        let body = malformed_body(adv.signer(), kind).to_bytes();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            adv.request_raw(peer, body),
        )
        .await;
        sent.malformed += 1;
    }
    sent
}
