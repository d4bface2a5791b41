//! Gossipsub topics of the node's own protocols (the market's region topics are named by
//! `agora_market::topic_for_region`).

/// Ledger transactions submitted to the arbitrators (every node).
pub const TX_TOPIC: &str = "agora/tx/1";
/// Proposals, votes and round certificates of the consensus (subscribed only by the members of
/// the committee).
pub const CONSENSUS_TOPIC: &str = "agora/consensus/1";
/// Decided blocks with their commit certificates, published by each block's proposer (every
/// node).
pub const BLOCKS_TOPIC: &str = "agora/blocks/1";
/// Sensor-radio checkpoints: which readings an edge processed, with the CID of their proof.
pub const RADIO_TOPIC: &str = "agora/radio/1";
