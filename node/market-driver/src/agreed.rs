//! Agreed deals on their way from the market task to the deal task. Each one is a deal this
//! node must turn into a contract (as customer) or be ready to countersign (as provider), so
//! none may be lost: they travel on a bounded channel (the deal task's backpressure) and wait,
//! in order, in the market task's outbox while the deal task is busy. The market task never
//! blocks on a slow deal task; it hands the oldest waiting terms over whenever there is room
//! (`AgreedOutbox::forward`, one branch of its loop).
//!
//! The outbox is bounded too ([`MAX_PENDING_AGREED`], far above what a node's auctions agree
//! between two turns of the deal task); terms beyond it are dropped, counted as the market
//! event `agreed-dropped` and logged.

use std::collections::VecDeque;

use agora_market::Agreement;
use tokio::sync::mpsc;
use tracing::warn;

/// Agreed terms in flight to the deal task.
pub const AGREED_CHANNEL: usize = 64;
/// Agreed terms waiting in the market task while the channel is full.
pub const MAX_PENDING_AGREED: usize = 4_096;

/// The market task's side.
#[derive(Debug)]
pub(crate) struct AgreedOutbox {
    tx: mpsc::Sender<Agreement>,
    pending: VecDeque<Agreement>,
    limit: usize,
    /// Terms dropped over the limit or because the deal task is gone.
    pub dropped: u64,
}

impl AgreedOutbox {
    /// An outbox and the deal task's receiver.
    pub fn channel() -> (Self, mpsc::Receiver<Agreement>) {
        Self::with_limits(AGREED_CHANNEL, MAX_PENDING_AGREED)
    }

    fn with_limits(capacity: usize, limit: usize) -> (Self, mpsc::Receiver<Agreement>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let outbox = AgreedOutbox {
            tx,
            pending: VecDeque::new(),
            limit,
            dropped: 0,
        };
        (outbox, rx)
    }

    /// Queues `terms` behind those already waiting (handed over at once when the deal task
    /// has room). False when they were dropped: the outbox is full or the deal task is gone.
    pub fn push(&mut self, terms: Agreement) -> bool {
        let terms = if self.pending.is_empty() {
            match self.tx.try_send(terms) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(t)) => t,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.dropped += 1;
                    warn!(
                        dropped = self.dropped,
                        "deal task gone; agreed terms dropped"
                    );
                    return false;
                }
            }
        } else {
            terms
        };
        if self.pending.len() >= self.limit {
            self.dropped += 1;
            warn!(
                dropped = self.dropped,
                waiting = self.pending.len(),
                "deal task far behind; agreed terms dropped"
            );
            return false;
        }
        self.pending.push_back(terms);
        true
    }

    /// Whether terms wait for room in the channel.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Waits for room in the channel and hands the oldest waiting terms over. Cancel-safe:
    /// nothing leaves the outbox unless it is sent.
    pub async fn forward(&mut self) {
        if self.pending.is_empty() {
            return std::future::pending().await;
        }
        match self.tx.reserve().await {
            Ok(permit) => {
                if let Some(t) = self.pending.pop_front() {
                    permit.send(t);
                }
            }
            Err(_) => {
                self.dropped += self.pending.len() as u64;
                warn!(
                    dropped = self.dropped,
                    "deal task gone; waiting agreed terms dropped"
                );
                self.pending.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agora_market::{
        AgreedTerms, AuctionFacts, AuctionKind, AwardId, AwardSubject, KeySigner, OfferId,
        Resources, Signer,
    };

    /// Distinct agreements, told apart by their price.
    fn terms(i: u64) -> Agreement {
        let terms = AgreedTerms {
            award: AwardId::of_bytes(&i.to_le_bytes()),
            customer: KeySigner::from_seed(1).node_id(),
            provider: KeySigner::from_seed(2).node_id(),
            subject: AwardSubject::Offer {
                offer: OfferId::of_bytes(&i.to_le_bytes()),
            },
            kind: AuctionKind::Hosted,
            resources: Resources::default(),
            duration_ms: 60_000,
            price: i,
        };
        Agreement {
            terms,
            auction: Some(AuctionFacts::default()),
            respond_by: 0,
        }
    }

    /// A burst four times the old broadcast's capacity, while the deal task is busy: every
    /// one arrives, in order, and the market side never waited for the reader.
    #[tokio::test]
    async fn a_burst_larger_than_the_channel_loses_no_agreed_terms() {
        let (mut outbox, mut rx) = AgreedOutbox::channel();
        let burst = 4 * AGREED_CHANNEL as u64;
        for i in 0..burst {
            assert!(outbox.push(terms(i)), "terms {i} refused");
        }
        assert!(outbox.has_pending());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(t) = rx.recv().await {
                got.push(t.terms.price);
                if got.len() as u64 == burst {
                    break;
                }
            }
            got
        });
        while outbox.has_pending() {
            tokio::time::timeout(std::time::Duration::from_secs(10), outbox.forward())
                .await
                .unwrap();
        }
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (0..burst).collect::<Vec<_>>());
        assert_eq!(outbox.dropped, 0);
    }

    #[tokio::test]
    async fn beyond_its_bound_the_outbox_drops_and_counts() {
        let (mut outbox, _rx) = AgreedOutbox::with_limits(2, 3);
        let accepted = (0..10).filter(|i| outbox.push(terms(*i))).count();
        assert_eq!(accepted, 5, "2 in the channel, 3 waiting");
        assert_eq!(outbox.dropped, 5);
    }

    #[tokio::test]
    async fn a_gone_deal_task_is_counted_not_waited_for() {
        let (mut outbox, rx) = AgreedOutbox::with_limits(1, 8);
        assert!(outbox.push(terms(0)));
        assert!(outbox.push(terms(1)));
        drop(rx);
        outbox.forward().await;
        assert!(!outbox.has_pending());
        assert!(!outbox.push(terms(2)));
        assert_eq!(outbox.dropped, 2);
    }
}
