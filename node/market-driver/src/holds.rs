//! The provider's capacity holds for the contracts it countersigned (THREATS C20), followed by
//! one task: an award's reservation in the market lasts `AGREED_HOLD_MS` from the
//! countersignature; once the ledger has the contract registered it is held until the
//! contract's end plus [`CONTRACT_HOLD_SLACK_MS`], and once the contract closes (settled,
//! cancelled, slashed, expired — early or not) it is let go at once. One ledger query every
//! [`FOLLOW_POLL`] answers for every followed contract together, however many there are (at
//! most [`crate::deals::MAX_AGREED_AS_PROVIDER`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agora_contracts::ContractId;
use agora_ledger::LedgerHandle;
use agora_market::AwardId;
use agora_wire::now_ms;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::MarketHandle;

/// How much longer than the contract's term a provider holds its capacity: activation, the
/// settlement's grace and a restart's catching up.
pub const CONTRACT_HOLD_SLACK_MS: u64 = 20 * 60_000;
/// How often the ledger is asked about the followed contracts.
pub const FOLLOW_POLL: Duration = Duration::from_secs(2);

/// One countersigned contract whose capacity is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Followed {
    /// The contract.
    pub contract: ContractId,
    /// Its award (the market's key for the hold).
    pub award: AwardId,
    /// Its slot's start (0: none).
    pub start: u64,
    /// Its term.
    pub duration_ms: u64,
    /// When to stop waiting for its registration (the hold then ends by itself).
    pub give_up: u64,
    /// Until when the hold was extended, once registered.
    pub held_until: Option<u64>,
}

/// What the ledger says of a followed contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fact {
    /// Not registered (or no longer kept).
    Unknown,
    /// Registered at this time, still open.
    Open {
        /// Its registration.
        registered_at: u64,
    },
    /// Closed (a final status).
    Closed,
}

/// What to do with a followed contract's hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Hold the capacity until this time.
    Hold(u64),
    /// Let the capacity go now; stop following.
    Release,
    /// Stop following; the hold ends by itself.
    Forget,
}

/// The rule for one followed contract at `now`.
pub fn step(f: &Followed, fact: Fact, now: u64) -> Step {
    match (fact, f.held_until) {
        (Fact::Closed, _) => Step::Release,
        (Fact::Open { registered_at }, None) => Step::Hold(
            registered_at
                .max(f.start)
                .saturating_add(f.duration_ms)
                .saturating_add(CONTRACT_HOLD_SLACK_MS),
        ),
        // A registered contract the ledger no longer keeps has closed.
        (Fact::Unknown, Some(_)) => Step::Release,
        (Fact::Open { .. }, Some(until)) if now >= until => Step::Forget,
        (Fact::Open { .. }, Some(_)) => Step::Wait,
        (Fact::Unknown, None) if now >= f.give_up => Step::Forget,
        (Fact::Unknown, None) => Step::Wait,
    }
}

/// Follows every contract sent on `rx` until its hold is settled one way or the other;
/// `count` is how many of them still await their registration (the deal task refuses to sign
/// more than its bound; a registered one holds its capacity, which bounds those).
pub async fn follow(
    market: MarketHandle,
    ledger: LedgerHandle,
    mut rx: mpsc::Receiver<Followed>,
    count: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let mut followed: BTreeMap<ContractId, Followed> = BTreeMap::new();
    let mut tick = tokio::time::interval(FOLLOW_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            f = rx.recv() => match f {
                Some(f) => {
                    if followed.insert(f.contract, f).is_some_and(|old| old.held_until.is_none()) {
                        // The same contract twice while awaited: counted once.
                        count.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                if followed.is_empty() {
                    continue;
                }
                let ids: Vec<ContractId> = followed.keys().copied().collect();
                let Ok(facts) = ledger
                    .query(move |v| {
                        ids.into_iter()
                            .map(|id| {
                                let fact = match v.ledger.contract(&id) {
                                    None => Fact::Unknown,
                                    Some(r) if r.status.is_final() => Fact::Closed,
                                    Some(r) => Fact::Open { registered_at: r.registered_at },
                                };
                                (id, fact)
                            })
                            .collect::<Vec<_>>()
                    })
                    .await
                else {
                    return;
                };
                let now = now_ms();
                for (id, fact) in facts {
                    let Some(f) = followed.get_mut(&id) else { continue };
                    let award = f.award;
                    match step(f, fact, now) {
                        Step::Wait => continue,
                        Step::Hold(until) => {
                            if f.held_until.replace(until).is_none() {
                                // Registered: no longer awaited.
                                count.fetch_sub(1, Ordering::Relaxed);
                            }
                            let _ = market
                                .input(agora_market::Input::HoldAward { award, until })
                                .await;
                            debug!(award = %award.short(), until, "capacity held until the contract's end");
                            continue;
                        }
                        Step::Release => {
                            // Held until now: the market's next tick lets it go.
                            let _ = market
                                .input(agora_market::Input::HoldAward { award, until: now })
                                .await;
                            debug!(award = %award.short(), "contract closed: capacity released");
                        }
                        Step::Forget => {}
                    }
                    if followed.remove(&id).is_some_and(|f| f.held_until.is_none()) {
                        count.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn followed() -> Followed {
        Followed {
            contract: ContractId([1; 32]),
            award: AwardId([2; 32]),
            start: 0,
            duration_ms: 60_000,
            give_up: 1_000_000,
            held_until: None,
        }
    }

    #[test]
    fn a_registered_contract_is_held_to_its_end_and_the_slack() {
        let f = followed();
        let end = 500_000 + 60_000 + CONTRACT_HOLD_SLACK_MS;
        assert_eq!(
            step(
                &f,
                Fact::Open {
                    registered_at: 500_000
                },
                500_100
            ),
            Step::Hold(end)
        );
        // A slot starting later counts from its start.
        let slot = Followed {
            start: 900_000,
            ..f.clone()
        };
        assert_eq!(
            step(
                &slot,
                Fact::Open {
                    registered_at: 500_000
                },
                500_100
            ),
            Step::Hold(900_000 + 60_000 + CONTRACT_HOLD_SLACK_MS)
        );
        let held = Followed {
            held_until: Some(end),
            ..f
        };
        assert_eq!(
            step(
                &held,
                Fact::Open {
                    registered_at: 500_000
                },
                end - 1
            ),
            Step::Wait
        );
        assert_eq!(
            step(
                &held,
                Fact::Open {
                    registered_at: 500_000
                },
                end
            ),
            Step::Forget
        );
    }

    #[test]
    fn a_contract_that_closes_early_lets_its_capacity_go_at_once() {
        let f = followed();
        assert_eq!(step(&f, Fact::Closed, 500_000), Step::Release);
        let held = Followed {
            held_until: Some(2_000_000),
            ..f
        };
        assert_eq!(step(&held, Fact::Closed, 600_000), Step::Release);
        // Registered, then gone from the ledger: closed.
        assert_eq!(step(&held, Fact::Unknown, 600_000), Step::Release);
    }

    #[test]
    fn a_contract_never_registered_is_forgotten_after_the_wait() {
        let f = followed();
        assert_eq!(step(&f, Fact::Unknown, f.give_up - 1), Step::Wait);
        assert_eq!(step(&f, Fact::Unknown, f.give_up), Step::Forget);
    }
}
