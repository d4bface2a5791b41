//! A bounded replay window: remembers the most recent nonces per author and message kind.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::MarketError;
use crate::identity::NodeId;

/// Rejects a nonce already seen, or older than the `window` most recent nonces of that author.
///
/// Memory is bounded by `window` nonces per (author, kind); authors are dropped by `forget`.
#[derive(Clone, Debug, Default)]
pub struct ReplayGuard {
    window: usize,
    seen: BTreeMap<(NodeId, &'static str), BTreeSet<u64>>,
}

impl ReplayGuard {
    /// A guard remembering `window` (at least 1) nonces per author and kind.
    pub fn new(window: usize) -> Self {
        ReplayGuard {
            window: window.max(1),
            seen: BTreeMap::new(),
        }
    }

    /// Accepts and records `nonce`, or returns `MarketError::Replay`.
    pub fn check_and_record(
        &mut self,
        kind: &'static str,
        author: NodeId,
        nonce: u64,
    ) -> Result<(), MarketError> {
        let set = self.seen.entry((author, kind)).or_default();
        let too_old = set.len() >= self.window && set.first().is_some_and(|min| nonce < *min);
        if too_old || set.contains(&nonce) {
            return Err(MarketError::Replay {
                kind,
                author,
                nonce,
            });
        }
        set.insert(nonce);
        while set.len() > self.window {
            set.pop_first();
        }
        Ok(())
    }

    /// True when `nonce` would be rejected now.
    pub fn would_reject(&self, kind: &'static str, author: NodeId, nonce: u64) -> bool {
        self.seen.get(&(author, kind)).is_some_and(|set| {
            set.contains(&nonce)
                || (set.len() >= self.window && set.first().is_some_and(|m| nonce < *m))
        })
    }

    /// Drops everything remembered about `author`.
    pub fn forget(&mut self, author: &NodeId) {
        self.seen.retain(|(a, _), _| a != author);
    }

    /// Number of (author, kind) entries tracked.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_and_too_old_nonces_are_rejected() {
        let a = NodeId([1; 32]);
        let mut g = ReplayGuard::new(2);
        assert!(g.check_and_record("bid", a, 5).is_ok());
        assert!(g.check_and_record("bid", a, 5).is_err());
        assert!(
            g.check_and_record("auction", a, 5).is_ok(),
            "kinds are separate"
        );
        assert!(
            g.check_and_record("bid", a, 3).is_ok(),
            "out of order inside the window"
        );
        assert!(g.check_and_record("bid", a, 9).is_ok());
        // window now {5, 9}; 3 fell out and is older than the window
        assert!(g.would_reject("bid", a, 3));
        assert!(g.check_and_record("bid", a, 3).is_err());
        assert!(g.check_and_record("bid", a, 7).is_ok());
        assert_eq!(g.tracked(), 2);
    }
}
