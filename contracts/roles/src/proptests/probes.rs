//! The committee's probe decisions against what really happened in the simulation (its
//! [`Snapshot`]s):
//! - an interval is decided down only if the provider did not serve all through it, and up only
//!   if it served at some moment of it — whatever one lying arbitrator reports;
//! - an interval the provider served all through, while a quorum of honest arbitrators could
//!   reach it and had a current ledger, is decided up;
//! - an honoured contract pays the provider for its coverage time before activation plus the
//!   uptime the quorum confirmed (capped by its own heartbeat claim), to the token.

use std::collections::BTreeMap;

use agora_market::Timestamp;

use crate::sim::{COVERAGE_MS, NODES, STEP_MS, Sim, Snapshot};
use agora_contracts::attestation::quorum;
use agora_contracts::contract::ContractId;
use agora_contracts::ledger::{ContractRecord, LedgerEvent};
use agora_contracts::lifecycle::ContractStatus;

/// The arbitrators' node indices.
const ARBITRATORS: std::ops::Range<usize> = 2..NODES;
/// An arbitrator counts as able to judge an interval when it is connected, with blocks at most
/// [`CURRENT_DELAY_MS`] late, from this long before the interval (to have caught up) ...
const BEFORE_MS: u64 = 3_000;
/// ... until this long after it (for its report to reach a block).
const AFTER_MS: u64 = 1_000;
/// Largest block delay of an arbitrator that counts as current.
const CURRENT_DELAY_MS: u64 = 500;
/// Reports of an interval this close to the end of the run may still be in flight.
const IN_FLIGHT_MS: u64 = 2_000;

/// What the ledger events say about one contract.
#[derive(Default)]
struct Decided {
    /// Decided intervals and their outcome.
    intervals: BTreeMap<u64, bool>,
    /// Sum of the intervals confirmed up (ms).
    confirmed_up_ms: u64,
    /// Block time of the activation.
    activated_block: Option<Timestamp>,
    /// The end a pending settlement judged.
    pending_end: Option<Timestamp>,
    /// Paid to the provider.
    paid: u64,
}

fn decided(sim: &Sim) -> Result<BTreeMap<ContractId, Decided>, String> {
    let mut all: BTreeMap<ContractId, Decided> = BTreeMap::new();
    for (t, e) in &sim.record.events {
        match e {
            LedgerEvent::UptimeConfirmed {
                contract,
                interval,
                up,
                ms,
                ..
            } => {
                let d = all.entry(*contract).or_default();
                if d.intervals.insert(*interval, *up).is_some() {
                    return Err(format!("interval {interval} of {contract:?} decided twice"));
                }
                if *up {
                    d.confirmed_up_ms += ms;
                }
            }
            LedgerEvent::EvidenceTrimmed {
                contract,
                confirmed_up_ms,
                ..
            } => all.entry(*contract).or_default().confirmed_up_ms = *confirmed_up_ms,
            LedgerEvent::Activated { contract, .. } => {
                all.entry(*contract).or_default().activated_block = Some(*t);
            }
            LedgerEvent::SettlementPending { contract, end, .. } => {
                all.entry(*contract).or_default().pending_end = Some(*end);
            }
            LedgerEvent::Paid {
                contract, amount, ..
            } => all.entry(*contract).or_default().paid += amount,
            _ => {}
        }
    }
    Ok(all)
}

/// Honest arbitrators that could reach the provider and had a current ledger around `[s, e)`.
fn judges(sim: &Sim, s: Timestamp, e: Timestamp) -> usize {
    ARBITRATORS
        .filter(|n| sim.liar != Some(*n))
        .filter(|n| {
            sim.record
                .throughout(s.saturating_sub(BEFORE_MS), e + AFTER_MS, |x| {
                    x.connected[*n] && x.delay[*n] <= CURRENT_DELAY_MS
                })
        })
        .count()
}

/// The probe and payment properties (see the module doc).
pub(super) fn check(sim: &Sim) -> Result<(), String> {
    let decided = decided(sim)?;
    let none = Decided::default();
    for (id, rec) in sim.ledger().contracts() {
        let Some(activated) = rec.activated_at else {
            continue;
        };
        let d = decided.get(id).unwrap_or(&none);
        let service = id.to_string();
        let serving = |x: &Snapshot| x.serving.contains(&service);
        let end = d
            .pending_end
            .or(rec.closed_at)
            .unwrap_or(sim.now.saturating_sub(IN_FLIGHT_MS));
        // Arbitrators can probe an interval once the activation block reached them.
        let known = d.activated_block.unwrap_or(u64::MAX) + CURRENT_DELAY_MS + STEP_MS;
        let mut interval = 0;
        while let Some((s, e)) = rec.round_span(interval) {
            if s > sim.now {
                break;
            }
            let what = || format!("interval {interval} ({s}..{e}) of contract {id:?}");
            match d.intervals.get(&interval) {
                Some(false) if sim.record.throughout(s, e, serving) => {
                    return Err(format!(
                        "{} decided down though the provider served all through it",
                        what()
                    ));
                }
                Some(true) if !sim.record.sometime(s, e, serving) => {
                    return Err(format!(
                        "{} decided up though the provider served at no moment of it",
                        what()
                    ));
                }
                None if e <= end
                    && e > known
                    && sim.record.throughout(s, e, serving)
                    && judges(sim, s, e) >= quorum(ARBITRATORS.len()) =>
                {
                    return Err(format!(
                        "{} not confirmed up though the provider served all through it and {} \
                         honest arbitrators could see it",
                        what(),
                        judges(sim, s, e)
                    ));
                }
                _ => {}
            }
            interval += 1;
        }
        if d.confirmed_up_ms != rec.confirmed_up_ms {
            return Err(format!(
                "contract {id:?}: the ledger holds {} ms confirmed up, its events {} ms",
                rec.confirmed_up_ms, d.confirmed_up_ms
            ));
        }
        if rec.status == ContractStatus::Settled {
            let due = earned(rec, activated, end);
            if d.paid != due {
                return Err(format!(
                    "contract {id:?} honoured at {end}: provider paid {} for {} ms claimed, {} ms \
                     confirmed up; due {due}",
                    d.paid, rec.uptime_ms, rec.confirmed_up_ms
                ));
            }
        }
    }
    Ok(())
}

/// What an honoured standby contract owes its provider when the simulation's payment is one
/// token per millisecond: the coverage time before activation plus the uptime both the
/// provider claimed (with the unreported tail) and the committee confirmed, up to `end`.
fn earned(rec: &ContractRecord, activated: Timestamp, end: Timestamp) -> u64 {
    assert_eq!(rec.contract.payment, COVERAGE_MS);
    assert_eq!(rec.contract.duration_ms, COVERAGE_MS);
    // Paid from arming (THREATS P5), not from registration.
    let armed = rec.armed_at.unwrap_or(activated);
    let standing_by = activated.min(end).saturating_sub(armed);
    // The unreported tail before `end` (one heartbeat interval and the 2 s skew at most, after
    // the latest round confirmed down) is paid as far as the committee confirmed it up
    // (THREATS C17).
    let reported_to = rec.last_uptime_end.unwrap_or(activated).max(activated);
    let tail = end
        .saturating_sub(reported_to.max(rec.last_down_end.unwrap_or(0)))
        .min(rec.contract.qos.heartbeat_interval_ms + 2_000);
    let served = (rec.uptime_ms + tail)
        .min(rec.confirmed_up_ms)
        .min(end.saturating_sub(activated));
    (standing_by + served).min(COVERAGE_MS)
}
