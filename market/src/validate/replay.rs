//! A bounded replay window: remembers recent nonces per author and message kind.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::MarketError;
use crate::identity::{NodeId, Timestamp};
use crate::signed::Body;

/// Rejects a nonce already seen, or older than the `window` most recent nonces of that author.
///
/// Memory is bounded three times: at most `window` nonces per (author, kind), `prune(now)`
/// forgets nonces whose messages have expired (those are rejected as expired before the replay
/// check), and at most `max_total` nonces are kept in all: beyond it the nonce whose message
/// expires soonest is forgotten (counted in [`ReplayGuard::evicted`]). Forgetting a live nonce
/// lets that one message be accepted again; the book deduplicates it by content id.
#[derive(Clone, Debug, Default)]
pub struct ReplayGuard {
    window: usize,
    max_total: usize,
    seen: BTreeMap<(NodeId, &'static str), BTreeMap<u64, Timestamp>>,
    /// Every remembered nonce by expiry, to find the soonest-expiring one.
    by_expiry: BTreeSet<(Timestamp, NodeId, &'static str, u64)>,
    evicted: u64,
}

impl ReplayGuard {
    /// A guard remembering `window` (at least 1) nonces per author and kind, without a total bound.
    pub fn new(window: usize) -> Self {
        Self::bounded(window, usize::MAX)
    }

    /// A guard remembering `window` (at least 1) nonces per author and kind, `max_total` (at
    /// least 1) in all.
    pub fn bounded(window: usize, max_total: usize) -> Self {
        ReplayGuard {
            window: window.max(1),
            max_total: max_total.max(1),
            ..ReplayGuard::default()
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
        self.check_nonce(kind, author, nonce)?;
        let set = self.seen.entry((author, kind)).or_default();
        set.insert(nonce, expires_at);
        self.by_expiry.insert((expires_at, author, kind, nonce));
        while set.len() > self.window {
            if let Some((old, exp)) = set.pop_first() {
                self.by_expiry.remove(&(exp, author, kind, old));
            }
        }
        while self.by_expiry.len() > self.max_total {
            let Some((exp, a, k, n)) = self.by_expiry.pop_first() else {
                break;
            };
            if let Some(set) = self.seen.get_mut(&(a, k)) {
                set.remove(&n);
                if set.is_empty() {
                    self.seen.remove(&(a, k));
                }
            }
            self.evicted += 1;
            tracing::debug!(author = %a.short(), kind = k, nonce = n, expires_at = exp, "replay guard full: nonce forgotten");
        }
        Ok(())
    }

    /// Checks and records a signed body's (kind, author, nonce, expiry).
    pub fn record<B: Body>(&mut self, body: &B) -> Result<(), MarketError> {
        self.check_and_record(B::KIND, body.author(), body.nonce(), body.expires_at())
    }

    /// `MarketError::Replay` if a signed body's nonce would be rejected now; records nothing.
    pub fn check<B: Body>(&self, body: &B) -> Result<(), MarketError> {
        self.check_nonce(B::KIND, body.author(), body.nonce())
    }

    fn check_nonce(
        &self,
        kind: &'static str,
        author: NodeId,
        nonce: u64,
    ) -> Result<(), MarketError> {
        if self.would_reject(kind, author, nonce) {
            return Err(MarketError::Replay {
                kind,
                author,
                nonce,
            });
        }
        Ok(())
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
        while let Some(&(exp, a, k, n)) = self.by_expiry.first() {
            if exp > now {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(set) = self.seen.get_mut(&(a, k)) {
                set.remove(&n);
            }
        }
        self.seen.retain(|_, set| !set.is_empty());
    }

    /// Number of (author, kind) entries tracked.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }

    /// Number of nonces remembered.
    pub fn len(&self) -> usize {
        self.by_expiry.len()
    }

    /// True when no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_expiry.is_empty()
    }

    /// Nonces forgotten early because the guard was full, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted
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
        assert!(g.is_empty());
    }

    #[test]
    fn total_bound_forgets_the_soonest_to_expire() {
        let mut g = ReplayGuard::bounded(100, 3);
        for (i, exp) in [(1u8, 50u64), (2, 10), (3, 30), (4, 40)] {
            g.check_and_record("auction", NodeId([i; 32]), 1, exp)
                .unwrap();
            assert!(g.len() <= 3);
        }
        assert_eq!(g.evicted(), 1);
        assert!(
            !g.would_reject("auction", NodeId([2; 32]), 1),
            "expiring at 10: forgotten"
        );
        for i in [1u8, 3, 4] {
            assert!(g.would_reject("auction", NodeId([i; 32]), 1));
        }
        assert_eq!(g.tracked(), 3);
    }
}
