//! The provider's capacity holds for the contracts it countersigned (THREATS C20), followed by
//! one task: an award's reservation in the market lasts `AGREED_HOLD_MS` from the
//! countersignature; once the ledger has the contract registered it is held until the
//! contract's end plus [`CONTRACT_HOLD_SLACK_MS`], and once the contract closes (settled,
//! cancelled, slashed, expired — early or not) it is let go at once. One ledger query every
//! [`FOLLOW_POLL`] answers for every followed contract together, however many there are (at
//! most [`crate::deals::MAX_AGREED_AS_PROVIDER`]).
//!
//! The market forgets every hold when the node stops, so at start the task first waits until
//! the node's ledger is current and has the market hold the capacity of every contract the
//! ledger still has open with this node as provider ([`in_force`]), followed from then on like
//! the others; until then the market takes no work (THREATS C35).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agora_contracts::deal::resources_of;
use agora_contracts::{ActivationClause, ContractId, ContractRecord, Ledger};
use agora_ledger::{LedgerHandle, LedgerView};
use agora_market::{AwardId, ContractHold, MAX_RESTORED_HOLDS, NodeId, ReservationKey};
use agora_wire::now_ms;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::MarketHandle;

/// How much longer than the contract's term a provider holds its capacity: activation, the
/// settlement's grace and a restart's catching up.
pub const CONTRACT_HOLD_SLACK_MS: u64 = 20 * 60_000;
/// How often the ledger is asked about the followed contracts.
pub const FOLLOW_POLL: Duration = Duration::from_secs(2);
/// How often, at start, the ledger is asked whether it is current: the market takes no work
/// until then.
pub const RESTORE_POLL: Duration = Duration::from_millis(200);

/// One countersigned contract whose capacity is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Followed {
    /// The contract.
    pub contract: ContractId,
    /// Its award (the market's key for the hold); `None` for a contract found running at
    /// start, held under its own id ([`in_force`]).
    pub award: Option<AwardId>,
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

/// When the capacity of registered contract `r` is let go at the latest: its end, counted
/// from the latest start the ledger knows of (its registration, its slot, its arming, its
/// activation), and [`CONTRACT_HOLD_SLACK_MS`], as [`step`] holds a contract from its
/// registration.
pub fn held_until(r: &ContractRecord) -> u64 {
    let slot = match r.contract.activation {
        ActivationClause::At(t) => t,
        _ => 0,
    };
    r.registered_at
        .max(slot)
        .max(r.armed_at.unwrap_or(0))
        .max(r.activated_at.unwrap_or(0))
        .saturating_add(r.contract.duration_ms)
        .saturating_add(CONTRACT_HOLD_SLACK_MS)
}

/// The contracts `ledger` has open with `me` as provider whose hold has not ended by `now`,
/// as the market holds them after a start (THREATS C35): what each uses by its terms, until
/// [`held_until`]. At most [`MAX_RESTORED_HOLDS`], those ending last first.
pub fn in_force(ledger: &Ledger, me: NodeId, now: u64) -> Vec<ContractHold> {
    let mut holds: Vec<ContractHold> = ledger
        .contracts()
        .iter()
        .filter(|(_, r)| r.contract.provider == me && !r.status.is_final())
        .map(|(id, r)| ContractHold {
            contract: id.0,
            resources: resources_of(&r.contract.terms),
            until: held_until(r),
        })
        .filter(|h| h.until > now)
        .collect();
    holds.sort_by_key(|h| std::cmp::Reverse(h.until));
    holds.truncate(MAX_RESTORED_HOLDS);
    holds
}

/// Whether the ledger view is current, as the orchestrator judges it: more arbitrators than
/// can be faulty said they have decided nothing newer, or it applied a block made after
/// `started`.
fn current(v: &LedgerView, started: u64) -> bool {
    v.caught_up || v.last_block_at.is_some_and(|t| t >= started)
}

/// Waits until the ledger is current, then has the market hold the capacity of the contracts
/// in force ([`in_force`]) and take work again; returns them to be followed until they close.
/// `None` once cancelled or a task is gone.
async fn restore(
    market: &MarketHandle,
    ledger: &LedgerHandle,
    cancel: &CancellationToken,
) -> Option<Vec<Followed>> {
    let started = now_ms();
    let mut poll = tokio::time::interval(RESTORE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let holds = loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = poll.tick() => {}
        }
        let now = now_ms();
        let found = ledger
            .query(move |v| current(v, started).then(|| in_force(&v.ledger, v.me, now)))
            .await
            .ok()?;
        if let Some(holds) = found {
            break holds;
        }
    };
    let followed: Vec<Followed> = holds
        .iter()
        .map(|h| Followed {
            contract: ContractId(h.contract),
            award: None,
            start: 0,
            duration_ms: 0,
            give_up: 0,
            held_until: Some(h.until),
        })
        .collect();
    market
        .input(agora_market::Input::RestoreCapacity(holds))
        .await
        .ok()?;
    info!(
        contracts = followed.len(),
        "capacity of the running contracts held; the market takes work again"
    );
    Some(followed)
}

/// Has the market let go of `f`'s capacity now.
async fn release(market: &MarketHandle, f: &Followed, now: u64) {
    let input = match f.award {
        // Held until now: the market's next tick lets it go.
        Some(award) => agora_market::Input::HoldAward {
            award,
            until: now,
            registered: true,
        },
        None => agora_market::Input::ReleaseCapacity(ReservationKey::Contract(f.contract.0)),
    };
    let _ = market.input(input).await;
}

/// Follows every contract sent on `rx` until its hold is settled one way or the other, after
/// the contracts found running at start ([`restore`]); `count` is how many of them still
/// await their registration (the deal task refuses to sign more than its bound; a registered
/// one holds its capacity, which bounds those).
pub async fn follow(
    market: MarketHandle,
    ledger: LedgerHandle,
    mut rx: mpsc::Receiver<Followed>,
    count: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let Some(running) = restore(&market, &ledger, &cancel).await else {
        return;
    };
    let mut followed: BTreeMap<ContractId, Followed> =
        running.into_iter().map(|f| (f.contract, f)).collect();
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
                    match step(f, fact, now) {
                        Step::Wait => continue,
                        Step::Hold(until) => {
                            if f.held_until.replace(until).is_none() {
                                // Registered: no longer awaited.
                                count.fetch_sub(1, Ordering::Relaxed);
                            }
                            // Only a countersigned contract is awaited (one found running at
                            // start is held to its end already). Registered: paid for, no
                            // longer one of the customer's unpaid holds (THREATS C31).
                            if let Some(award) = f.award {
                                let _ = market
                                    .input(agora_market::Input::HoldAward {
                                        award,
                                        until,
                                        registered: true,
                                    })
                                    .await;
                                debug!(award = %award.short(), until, "capacity held until the contract's end");
                            }
                            continue;
                        }
                        Step::Release => {
                            release(&market, f, now).await;
                            debug!(contract = %id.short(), "contract closed: capacity released");
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
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agora_market::Signer as _;

    fn followed() -> Followed {
        Followed {
            contract: ContractId([1; 32]),
            award: Some(AwardId([2; 32])),
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

    /// THREATS C35: at start, the contracts the ledger has open with this node as provider are
    /// held in the market, each for what its terms use until its end and the slack; contracts
    /// it is the customer of, closed ones and ones past their end are not.
    #[test]
    fn contracts_in_force_are_reserved_at_start() {
        use agora_contracts::test_utils::{ContractBuilder, genesis_with, signer, tx};
        use agora_contracts::{Contract, Ledger, TxKind};
        use agora_market::{Input, Interface, KeySigner, MarketConfig, MarketState, Resources};

        let (genesis, accounts, _) = genesis_with(4, 4, 10_000);
        let mut ledger = Ledger::from_genesis(&genesis).unwrap();
        let now = 1_000;
        let register = |ledger: &mut Ledger, c: Contract, customer: u64, provider: u64| {
            let id = c.id().unwrap();
            let signed = c.sign_both(&signer(customer), &signer(provider)).unwrap();
            let t = tx(
                ledger,
                &signer(customer),
                TxKind::RegisterContract(Box::new(signed)),
            );
            ledger.apply(now, &t).unwrap();
            id
        };
        // Seed 2 is this node. A contract it runs, with a radio.
        let mut radio = ContractBuilder::new(1, 2).nonce(1).build();
        radio.terms.interfaces = vec!["lora:1".into()];
        let radio = register(&mut ledger, radio, 1, 2);
        // A slot it runs later.
        let slot = ContractBuilder::new(1, 2).at(500_000).nonce(2).build();
        let slot = register(&mut ledger, slot, 1, 2);
        // One it is the customer of, and one that closed.
        let bought = ContractBuilder::new(2, 1).nonce(3).build();
        register(&mut ledger, bought, 2, 1);
        let cancelled = ContractBuilder::new(1, 2).nonce(4).build();
        let cancelled = register(&mut ledger, cancelled, 1, 2);
        let t = tx(&ledger, &accounts[0], TxKind::Cancel(cancelled));
        ledger.apply(now, &t).unwrap();

        let me = accounts[1].node_id();
        let holds = in_force(&ledger, me, now);
        let used = Resources {
            cpu_millis: 250,
            memory_bytes: 64 << 20,
            storage_bytes: 16 << 20,
            ..Resources::default()
        };
        // Ending last first; the slot counts from its start.
        assert_eq!(
            holds,
            vec![
                ContractHold {
                    contract: slot.0,
                    resources: used.clone(),
                    until: 500_000 + 60_000 + CONTRACT_HOLD_SLACK_MS,
                },
                ContractHold {
                    contract: radio.0,
                    resources: used.clone().with_interface(Interface::LoRa, 1),
                    until: now + 60_000 + CONTRACT_HOLD_SLACK_MS,
                },
            ]
        );
        // Past the radio contract's end and slack only the slot is held.
        let later = in_force(&ledger, me, now + 60_000 + CONTRACT_HOLD_SLACK_MS);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].contract, slot.0);

        // The restarted market holds them before it takes any work.
        let capacity = Resources {
            cpu_millis: 1_000,
            memory_bytes: 1 << 30,
            storage_bytes: 1 << 30,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1);
        let config = MarketConfig {
            capacity,
            ..MarketConfig::default()
        };
        let mut market = MarketState::awaiting_contracts(KeySigner::from_seed(2), config);
        market.handle(now, Input::RestoreCapacity(holds));
        assert!(market.capacity_restored());
        let free = market.ledger().available();
        assert_eq!(free.cpu_millis, 1_000 - 2 * 250);
        assert_eq!(free.interface_count(Interface::LoRa), 0);
        for id in [radio, slot] {
            assert!(
                market
                    .ledger()
                    .reservations()
                    .contains_key(&ReservationKey::Contract(id.0))
            );
        }
    }

    #[test]
    fn a_contract_never_registered_is_forgotten_after_the_wait() {
        let f = followed();
        assert_eq!(step(&f, Fact::Unknown, f.give_up - 1), Step::Wait);
        assert_eq!(step(&f, Fact::Unknown, f.give_up), Step::Forget);
    }
}
