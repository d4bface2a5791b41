//! A bounded replay window: remembers recent nonces per author and message kind.

use std::collections::BTreeMap;

use crate::error::MarketError;
use crate::identity::{NodeId, Timestamp};
use crate::signed::Body;

/// Rejects a nonce already seen, or older than the `window` most recent nonces of that author.
///
/// Memory is bounded twice: at most `window` nonces per (author, kind), and `prune(now)` forgets
/// nonces whose messages have expired (those are rejected as expired before the replay check).
#[derive(Clone, Debug, Default)]
pub struct ReplayGuard {
    window: usize,
    seen: BTreeMap<(NodeId, &'static str), BTreeMap<u64, Timestamp>>,
}

impl ReplayGuard {
    /// A guard remembering `window` (at least 1) nonces per author and kind.
    pub fn new(window: usize) -> Self {
        ReplayGuard {
            window: window.max(1),
            seen: BTreeMap::new(),
        }
    }

    /// Accepts and records `nonce` (valid until `expires_at`), or returns `MarketError::Replay`.
    pub fn check_and_record(
        &mut self,
        kind: &'static str,
        author: NodeId,
        nonce: u64,
        expires_at: Timestamp,
    ) -> Result<(), MarketError> {
        if self.would_reject(kind, author, nonce) {
            return Err(MarketError::Replay {
                kind,
                author,
                nonce,
            });
        }
        let set = self.seen.entry((author, kind)).or_default();
        set.insert(nonce, expires_at);
        while set.len() > self.window {
            set.pop_first();
        }
        Ok(())
    }

    /// Checks and records a signed body's (kind, author, nonce, expiry).
    pub fn record<B: Body>(&mut self, body: &B) -> Result<(), MarketError> {
        self.check_and_record(B::KIND, body.author(), body.nonce(), body.expires_at())
    }

    /// True when `nonce` would be rejected now.
    pub fn would_reject(&self, kind: &'static str, author: NodeId, nonce: u64) -> bool {
        self.seen.get(&(author, kind)).is_some_and(|set| {
            set.contains_key(&nonce)
                || (set.len() >= self.window
                    && set.first_key_value().is_some_and(|(m, _)| nonce < *m))
        })
    }

    /// Forgets nonces of messages that expired at or before `now`.
    pub fn prune(&mut self, now: Timestamp) {
        for set in self.seen.values_mut() {
            set.retain(|_, exp| *exp > now);
        }
        self.seen.retain(|_, set| !set.is_empty());
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
        assert!(g.check_and_record("bid", a, 5, 100).is_ok());
        assert!(g.check_and_record("bid", a, 5, 100).is_err());
        assert!(
            g.check_and_record("auction", a, 5, 100).is_ok(),
            "kinds are separate"
        );
        assert!(
            g.check_and_record("bid", a, 3, 100).is_ok(),
            "out of order inside the window"
        );
        assert!(g.check_and_record("bid", a, 9, 200).is_ok());
        // window now {5, 9}; 3 fell out and is older than the window
        assert!(g.would_reject("bid", a, 3));
        assert!(g.check_and_record("bid", a, 3, 100).is_err());
        assert!(g.check_and_record("bid", a, 7, 100).is_ok());
        assert_eq!(g.tracked(), 2);
        // Once their messages expired, entries are forgotten.
        g.prune(100);
        assert_eq!(g.tracked(), 1);
        assert!(g.would_reject("bid", a, 9));
        g.prune(200);
        assert_eq!(g.tracked(), 0);
    }
}
