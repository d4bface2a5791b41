//! A per-peer quota on inbound fleet requests (polls, candidate offers, reports, records): a
//! token bucket per peer in a bounded table. A peer over its rate is refused and counted; when
//! the table is full the peer heard from longest ago is evicted (counted), so a stranger cycling
//! identities cannot grow it.

use std::collections::BTreeMap;

use agora_market::{NodeId, Timestamp};

/// Tuning of the quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Requests a peer may send in a burst.
    pub burst: u32,
    /// Tokens regained per second.
    pub per_second: u32,
    /// Most peers tracked.
    pub max_peers: usize,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        // A pull target polls once a second per deployment; a few deployments per deployer
        // and a report per phase change stay well inside this.
        QuotaConfig {
            burst: 32,
            per_second: 16,
            max_peers: 1024,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    at: Timestamp,
}

/// What the quota counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaCounters {
    /// Requests refused: the peer was over its rate.
    pub refused: u64,
    /// Peers evicted from the full table.
    pub evicted: u64,
}

/// The per-peer request quota.
#[derive(Debug, Default)]
pub struct Quota {
    config: QuotaConfig,
    peers: BTreeMap<NodeId, Bucket>,
    counters: QuotaCounters,
}

impl Quota {
    /// An empty quota.
    pub fn new(config: QuotaConfig) -> Self {
        Quota {
            config,
            peers: BTreeMap::new(),
            counters: QuotaCounters::default(),
        }
    }

    /// Takes one token of `peer` at `now`; false (counted) when it has none left.
    pub fn allow(&mut self, peer: NodeId, now: Timestamp) -> bool {
        let cfg = self.config;
        if !self.peers.contains_key(&peer) && self.peers.len() >= cfg.max_peers {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(node, b)| (b.at, **node))
                .map(|(node, _)| *node);
            if let Some(node) = oldest {
                self.peers.remove(&node);
                self.counters.evicted += 1;
                tracing::debug!(peer = %node.short(), "fleet quota table full: evicted the oldest");
            }
        }
        let bucket = self.peers.entry(peer).or_insert(Bucket {
            tokens: cfg.burst,
            at: now,
        });
        let elapsed_ms = now.saturating_sub(bucket.at);
        let regained = elapsed_ms.saturating_mul(u64::from(cfg.per_second)) / 1000;
        if regained > 0 {
            let tokens = u64::from(bucket.tokens).saturating_add(regained);
            bucket.tokens = u32::try_from(tokens.min(u64::from(cfg.burst))).unwrap_or(cfg.burst);
            bucket.at = now;
        }
        if bucket.tokens == 0 {
            self.counters.refused += 1;
            return false;
        }
        bucket.tokens -= 1;
        true
    }

    /// Peers tracked.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// What was counted.
    pub fn counters(&self) -> QuotaCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_market::{KeySigner, Signer};

    fn node(i: u64) -> NodeId {
        KeySigner::from_seed(i).node_id()
    }

    #[test]
    fn a_peer_over_its_rate_is_refused_and_regains_tokens_with_time() {
        let mut q = Quota::new(QuotaConfig {
            burst: 3,
            per_second: 2,
            max_peers: 8,
        });
        let a = node(1);
        assert!((0..3).all(|_| q.allow(a, 1_000)));
        assert!(!q.allow(a, 1_000));
        assert_eq!(q.counters().refused, 1);
        // Another peer has its own bucket.
        assert!(q.allow(node(2), 1_000));
        // Half a second later: one token back.
        assert!(q.allow(a, 1_500));
        assert!(!q.allow(a, 1_500));
        // Ten seconds later: the bucket is full again, never beyond the burst.
        assert_eq!((0..10).filter(|_| q.allow(a, 11_500)).count(), 3);
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_peer_heard_from_longest_ago() {
        let mut q = Quota::new(QuotaConfig {
            burst: 1,
            per_second: 1,
            max_peers: 4,
        });
        for i in 0..100u64 {
            assert!(q.allow(node(i), 1_000 + i));
            assert!(q.len() <= 4);
        }
        assert_eq!(q.counters().evicted, 96);
        // The newest four are kept: node 99 is still out of tokens at the same instant.
        assert!(!q.allow(node(99), 1_099));
    }
}
