//! Block sync served off the ledger task (#13.9, sync part).
//!
//! A sync request reads up to [`SYNC_BATCH`](crate::chain) stored blocks (up to half the
//! request-response size limit) from sled. Done inside the ledger task, a flood of them would
//! stall consensus; so the task only admits a request ([`SyncLimiter::admit`]: at most one per
//! peer every [`PER_PEER_INTERVAL_MS`] and at most [`MAX_IN_FLIGHT`] being served at once) and
//! hands it to a spawned task that reads the store on a blocking thread, encodes within the
//! byte cap and answers. A refused request gets an `Ack` (not an empty `Response`, which would
//! mean "nothing newer" to a node checking whether it is at the tip). Every refusal is counted
//! ([`SyncLimiter::refused`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agora_market::NodeId;

/// Least time between two sync requests served to one peer (ms).
pub const PER_PEER_INTERVAL_MS: u64 = 100;
/// Most sync requests being served at once (each reads and encodes up to the byte cap).
pub const MAX_IN_FLIGHT: usize = 4;
/// Most peers remembered; the one served longest ago is forgotten first.
pub const MAX_PEERS: usize = 1_024;

/// Admission of sync requests: per-peer rate and a bound on concurrent serving.
#[derive(Debug, Default)]
pub struct SyncLimiter {
    last: BTreeMap<NodeId, u64>,
    in_flight: Arc<AtomicUsize>,
    refused: u64,
}

/// Held while one request is served; frees its slot when dropped.
#[derive(Debug)]
pub struct SyncPermit(Arc<AtomicUsize>);

impl Drop for SyncPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SyncLimiter {
    /// A permit to serve `peer` at `now` (ms), or `None` (too soon for this peer, or too many
    /// being served).
    pub fn admit(&mut self, peer: NodeId, now: u64) -> Option<SyncPermit> {
        if self
            .last
            .get(&peer)
            .is_some_and(|at| now.saturating_sub(*at) < PER_PEER_INTERVAL_MS)
        {
            self.refused += 1;
            return None;
        }
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_IN_FLIGHT).then_some(n + 1)
            });
        if taken.is_err() {
            self.refused += 1;
            return None;
        }
        if !self.last.contains_key(&peer) && self.last.len() >= MAX_PEERS {
            let oldest = self.last.iter().min_by_key(|(_, at)| **at).map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.last.remove(&p);
            }
        }
        self.last.insert(peer, now);
        Some(SyncPermit(self.in_flight.clone()))
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_peer_per_interval_and_a_bounded_number_in_flight() {
        let mut l = SyncLimiter::default();
        let peer = |i: u8| NodeId([i; 32]);
        let a = l.admit(peer(1), 1_000);
        assert!(a.is_some());
        // Too soon for the same peer.
        assert!(l.admit(peer(1), 1_050).is_none());
        let mut held = vec![a];
        for i in 2..=MAX_IN_FLIGHT as u8 {
            held.push(l.admit(peer(i), 1_050));
        }
        assert!(held.iter().all(Option::is_some));
        // All slots busy: another peer waits.
        assert!(l.admit(peer(50), 1_050).is_none());
        assert_eq!(l.refused(), 2);
        // A finished answer frees its slot; the first peer may ask again after the interval.
        held.pop();
        assert!(l.admit(peer(1), 1_100).is_some());
    }

    #[test]
    fn the_peer_map_is_bounded() {
        let mut l = SyncLimiter::default();
        for i in 0..(MAX_PEERS as u32 + 10) {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            drop(l.admit(NodeId(id), u64::from(i)));
        }
        assert_eq!(l.last.len(), MAX_PEERS);
    }
}
