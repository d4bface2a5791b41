//! Bidders' reputations from this node's ledger, for scoring the bids on its auctions (THREATS
//! P6): a bid's own `reputation_permille` is a claim anyone can set to 1000; the market counts
//! it only up to the neutral 500, and what the ledger says of the bidder in its place once
//! this task has told it ([`agora_market::Input::Reputation`]).
//!
//! The task follows the market's event log: for each `bid-received` it reads the bidder's
//! account on the ledger and hands the market its reputation as permille: 500 plus the
//! ledger's reputation points (+10 per honoured contract, −50 per breach by default), clamped
//! to 0..=1000. A bidder with no account is left to its claim (at most 500).

use std::collections::BTreeSet;
use std::time::Duration;

use agora_ledger::LedgerHandle;
use agora_market::{Input, NodeId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::MarketHandle;

/// How often the market's event log is read for new bids.
const POLL: Duration = Duration::from_millis(250);

/// The permille a ledger reputation of `points` is scored as.
pub fn permille_of(points: i64) -> u16 {
    let p = points.saturating_add(i64::from(agora_market::NEUTRAL_REPUTATION));
    u16::try_from(p.clamp(0, 1000)).unwrap_or(0)
}

/// Starts the task that tells `market` the ledger's reputation of each new bidder.
pub fn spawn(
    market: MarketHandle,
    ledger: LedgerHandle,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut last = market.events_after(None).last().map(|r| r.seq);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
                let records = market.events_after(last);
                let Some(newest) = records.last().map(|r| r.seq) else {
                    continue;
                };
                last = Some(newest);
                let bidders: BTreeSet<NodeId> = records
                    .iter()
                    .filter(|r| r.kind == "bid-received")
                    .filter_map(|r| r.data["provider"].as_str()?.parse().ok())
                    .collect();
                for node in bidders {
                    let points = ledger
                        .query(move |v| v.ledger.account(&node).map(|a| a.reputation))
                        .await;
                    let Ok(Some(points)) = points else {
                        continue;
                    };
                    let permille = permille_of(points);
                    let _ = market.input(Input::Reputation { node, permille }).await;
                }
            }
        }
        .in_current_span(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_points_map_to_permille_around_the_neutral_score() {
        assert_eq!(permille_of(0), 500);
        assert_eq!(permille_of(120), 620);
        assert_eq!(permille_of(-50), 450);
        assert_eq!(permille_of(-10_000), 0);
        assert_eq!(permille_of(i64::MAX), 1000);
        assert_eq!(permille_of(i64::MIN), 0);
    }
}
