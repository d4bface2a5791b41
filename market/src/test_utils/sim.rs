//! `SimNet`: routes market effects between in-process nodes, for protocol tests.

use std::collections::VecDeque;

use crate::book::{Effect, Input, MarketConfig, MarketState};
use crate::error::MarketError;
use crate::identity::{KeySigner, Timestamp};
use crate::negotiation::AgreedTerms;

/// What every node of a [`SimNet`] knows every node can spend, as a devnet's genesis funds
/// every account (`agora-devnet`'s `DEVNET_BALANCE`).
pub const SIM_BALANCE: u64 = 1_000_000;

/// In-process nodes; `Send` goes to the recipient, `Broadcast` to every other node, instantly.
/// Every node knows every node's balance to be [`SIM_BALANCE`] ([`Input::Balances`]).
#[derive(Debug)]
pub struct SimNet {
    /// The nodes; node `i` signs with `signer(100 + i)`.
    pub nodes: Vec<MarketState<KeySigner>>,
    queue: VecDeque<(usize, Effect)>,
    /// Every effect produced so far, with the index of the node that produced it.
    pub log: Vec<(usize, Effect)>,
}

impl SimNet {
    /// One node per config.
    pub fn new(configs: Vec<MarketConfig>) -> Self {
        let mut nodes: Vec<MarketState<KeySigner>> = configs
            .into_iter()
            .zip(100u64..)
            .map(|(c, seed)| MarketState::new(super::signer(seed), c))
            .collect();
        let funded: Vec<_> = nodes.iter().map(|n| (n.node_id(), SIM_BALANCE)).collect();
        for node in &mut nodes {
            node.handle(0, Input::Balances(funded.clone()));
        }
        SimNet {
            nodes,
            queue: VecDeque::new(),
            log: Vec::new(),
        }
    }

    /// Feeds `input` to `node` at `now` and delivers everything that follows.
    pub fn input(&mut self, now: Timestamp, node: usize, input: Input) {
        let effects = self.nodes[node].handle(now, input);
        self.queue.extend(effects.into_iter().map(|e| (node, e)));
        self.run(now);
    }

    /// Delivers queued messages until quiet (bounded to catch message storms).
    pub fn run(&mut self, now: Timestamp) {
        let mut steps = 0;
        while let Some((from, effect)) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 100_000, "message storm in SimNet");
            let from_id = self.nodes[from].node_id();
            let (targets, msg): (Vec<usize>, _) = match &effect {
                Effect::Send { to, msg } => (
                    self.nodes
                        .iter()
                        .position(|n| n.node_id() == *to)
                        .into_iter()
                        .collect(),
                    Some(msg.clone()),
                ),
                Effect::Broadcast { msg, .. } => (
                    (0..self.nodes.len()).filter(|i| *i != from).collect(),
                    Some(msg.clone()),
                ),
                _ => (Vec::new(), None),
            };
            self.log.push((from, effect));
            if let Some(msg) = msg {
                for t in targets {
                    let effects = self.nodes[t].handle(
                        now,
                        Input::Remote {
                            from: from_id,
                            msg: msg.clone(),
                        },
                    );
                    self.queue.extend(effects.into_iter().map(|e| (t, e)));
                }
            }
        }
    }

    /// Effects produced by `node`.
    pub fn effects_of(&self, node: usize) -> impl Iterator<Item = &Effect> {
        self.log
            .iter()
            .filter(move |(n, _)| *n == node)
            .map(|(_, e)| e)
    }

    /// Errors `node` reported.
    pub fn rejections(&self, node: usize) -> Vec<MarketError> {
        self.effects_of(node)
            .filter_map(|e| match e {
                Effect::Rejected { error, .. } => Some(error.clone()),
                _ => None,
            })
            .collect()
    }

    /// Terms `node` agreed to.
    pub fn agreed(&self, node: usize) -> Vec<AgreedTerms> {
        self.effects_of(node)
            .filter_map(|e| match e {
                Effect::Agreed(a) => Some(a.terms.clone()),
                _ => None,
            })
            .collect()
    }
}
