//! Who can pay, from this node's ledger, for the market (THREATS C31, C32): keys are free, so
//! the market bids for a customer on its own only once it knows the customer's balance covers
//! the price and stake, and lets a bidder that can lock the provider stake win first
//! ([`agora_market::Input::Balances`]).
//!
//! The task asks the market every [`POLL`] whose balance it would like (customers of auctions
//! it may bid on, bidders on its own; `MarketState::balances_wanted`), reads them from the
//! ledger in one query and hands them over. Every [`PUSH_EVERY`] it also hands over every
//! account the ledger counts funded, when there are at most [`MAX_PUSHED`] (a devnet's, a
//! small network's), so an honest customer's first auction finds its balance known. An
//! auction the market declined for want of a balance is decided again when it arrives.

use std::time::Duration;

use agora_contracts::Ledger;
use agora_ledger::LedgerHandle;
use agora_market::{Input, NodeId};
use agora_wire::now_ms;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

use crate::MarketHandle;

/// How often the market is asked whose balance it would like. Cheap enough to keep short: an
/// idle node spent under 1 millicore on it (20-node devnet, 7.0 against 6.3 millicores p50
/// with the poll in effect off; session 53).
pub const POLL: Duration = Duration::from_millis(250);
/// How often every funded account is handed over, when there are few.
pub const PUSH_EVERY: Duration = Duration::from_secs(5);
/// Most funded accounts handed over unasked; with more, the market's own wishes suffice.
pub const MAX_PUSHED: usize = 1_024;
/// Most balances asked for in one poll.
pub const MAX_WANTED: usize = 256;

/// What the ledger says `nodes` can spend, as the market takes it: an account's spendable
/// balance if the ledger counts it funded (it holds the minimum balance a sender needs), else
/// 0 (no account, or too little: a throwaway key).
pub fn balances_in(ledger: &Ledger, nodes: &[NodeId]) -> Vec<(NodeId, u64)> {
    nodes
        .iter()
        .map(|n| {
            let balance = match ledger.account(n) {
                Some(a) if ledger.is_funded(n) => a.balance,
                _ => 0,
            };
            (*n, balance)
        })
        .collect()
}

/// Every account the ledger counts funded with its spendable balance, or `None` when there
/// are more than `max`.
pub fn funded_balances(ledger: &Ledger, max: usize) -> Option<Vec<(NodeId, u64)>> {
    let funded: Vec<NodeId> = ledger
        .funded()
        .take(max.saturating_add(1))
        .copied()
        .collect();
    (funded.len() <= max).then(|| balances_in(ledger, &funded))
}

/// Starts the task that tells `market` the balances it asks for.
pub fn spawn(
    market: MarketHandle,
    ledger: LedgerHandle,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut pushed_at: Option<tokio::time::Instant> = None;
            loop {
                if pushed_at.is_none_or(|t| t.elapsed() >= PUSH_EVERY) {
                    pushed_at = Some(tokio::time::Instant::now());
                    let Ok(all) = ledger
                        .query(|v| funded_balances(&v.ledger, MAX_PUSHED))
                        .await
                    else {
                        return;
                    };
                    match all {
                        Some(balances) if !balances.is_empty() => {
                            if market.input(Input::Balances(balances)).await.is_err() {
                                return;
                            }
                        }
                        Some(_) => {}
                        None => debug!(
                            max = MAX_PUSHED,
                            "many funded accounts: balances only as the market asks"
                        ),
                    }
                }
                let now = now_ms();
                let Ok(wanted) = market
                    .query(move |s| s.balances_wanted(now, MAX_WANTED))
                    .await
                else {
                    return;
                };
                if !wanted.is_empty() {
                    let Ok(balances) = ledger.query(move |v| balances_in(&v.ledger, &wanted)).await
                    else {
                        return;
                    };
                    if market.input(Input::Balances(balances)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
        .in_current_span(),
    )
}

#[cfg(test)]
mod tests {
    use agora_contracts::{Genesis, GenesisAccount, LedgerParams};
    use agora_market::{
        AuctionSpec, Effect, KeySigner, MarketConfig, MarketMessage, MarketState, Resources, Signer,
    };

    use super::*;

    fn ledger(accounts: &[(NodeId, u64)]) -> Ledger {
        let genesis = Genesis {
            chain_id: "funding-test".into(),
            accounts: accounts
                .iter()
                .map(|(id, balance)| GenesisAccount {
                    id: *id,
                    balance: *balance,
                })
                .collect(),
            committee: Vec::new(),
            faucet_enabled: false,
            params: LedgerParams::default(),
        };
        Ledger::from_genesis(&genesis).expect("genesis")
    }

    #[test]
    fn funded_accounts_map_to_their_balance_and_the_rest_to_nothing() {
        let (rich, poor, stranger) = (
            KeySigner::from_seed(1).node_id(),
            KeySigner::from_seed(2).node_id(),
            KeySigner::from_seed(3).node_id(),
        );
        let min = LedgerParams::default().min_account_balance;
        let l = ledger(&[(rich, min * 5), (poor, min - 1)]);
        assert_eq!(
            balances_in(&l, &[rich, poor, stranger]),
            vec![(rich, min * 5), (poor, 0), (stranger, 0)]
        );
        assert_eq!(funded_balances(&l, 1), Some(vec![(rich, min * 5)]));
        let l = ledger(&[(rich, min), (poor, min)]);
        assert_eq!(funded_balances(&l, 1), None, "more than the bound");
    }

    /// The feed's one step, as the task runs it: the market names the customer it declined
    /// for want of a balance, the ledger answers, and the market then bids (THREATS C31).
    #[test]
    fn a_balance_the_market_asks_for_reaches_it_and_it_bids() {
        let customer = KeySigner::from_seed(1);
        let min = LedgerParams::default().min_account_balance;
        let l = ledger(&[(customer.node_id(), min * 100)]);
        let mut config = MarketConfig {
            capacity: Resources {
                cpu_millis: 4_000,
                ..Resources::default()
            },
            ..MarketConfig::default()
        };
        config.dmu.provider.auto_bid = true;
        let mut provider = MarketState::new(KeySigner::from_seed(2), config);
        // Half the capacity: more than strangers share, so no bid while the customer is unknown.
        let spec = AuctionSpec {
            region: "default".into(),
            resources: Resources {
                cpu_millis: 2_000,
                ..Resources::default()
            },
            duration_ms: 3_600_000,
            max_price: 1_000,
            window_ms: 10_000,
            kind: agora_market::AuctionKind::Hosted,
            near: None,
            award_grace_ms: 60_000,
            service: None,
            start_at: None,
        };
        let auction = spec.create(&customer, 0, 1).expect("signed");
        let sent_bid = |out: &[Effect]| {
            out.iter().any(|e| {
                matches!(
                    e,
                    Effect::Send {
                        msg: MarketMessage::Bid(_),
                        ..
                    }
                )
            })
        };
        let out = provider.handle(
            1,
            Input::Remote {
                from: customer.node_id(),
                msg: MarketMessage::Auction(auction),
            },
        );
        assert!(!sent_bid(&out), "{out:?}");
        let wanted = provider.balances_wanted(2, MAX_WANTED);
        assert_eq!(wanted, vec![customer.node_id()]);
        let out = provider.handle(3, Input::Balances(balances_in(&l, &wanted)));
        assert!(sent_bid(&out), "{out:?}");
        assert_eq!(provider.known_balance(&customer.node_id()), Some(min * 100));
        assert!(provider.balances_wanted(4, MAX_WANTED).is_empty());
    }
}
