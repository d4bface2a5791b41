//! Arbitrator (committee member): watch the customers of standby contracts and attest what
//! this node's own liveness checks see — at once when a customer goes down, again once the
//! outage is long enough for the handover rule, and when it is back; probe the provider's
//! service of every active hosted or standby contract once per probe interval
//! ([`Duty::Probe`](agora_contracts::Duty::Probe), `probes.rs`) and challenge the provider of every
//! active storage contract once per audit round (`audits.rs`), reporting each outcome for a
//! quorum of the committee to decide.

mod audits;
mod probes;
mod rounds;

use std::collections::{BTreeMap, BTreeSet};

use agora_market::{NodeId, Timestamp};

use super::io::{Effect, Input, Note, Presence};
use super::{CLOCK_MARGIN_MS, REPORT_VIEW_MAX_AGE_MS, View};
use agora_contracts::attestation::Liveness;
use agora_contracts::contract::{ActivationClause, ContractId, ContractKind};
use agora_contracts::ledger::TxKind;
use agora_contracts::lifecycle::ContractStatus;

/// A customer this node watches.
#[derive(Clone, Debug, Default)]
struct Watched {
    /// Its standby contracts with their outage thresholds.
    contracts: BTreeMap<ContractId, u64>,
    /// Down since (last seen), while this node reports it unreachable.
    down_since: Option<Timestamp>,
    /// When to attest again while down: once the outage is as long as each of its contracts'
    /// thresholds (one time per distinct threshold, so a contract with a longer one is not
    /// left with a stale vote).
    reattest: BTreeSet<Timestamp>,
    /// Its standbys seen armed and waiting for a handover. One armed while the customer is
    /// down has it attested again at once: the vote of the outage's start may have gone stale
    /// (the ledger's attestation window is 60 s by default), and such a standby was never
    /// handed over.
    armed: BTreeSet<ContractId>,
}

impl Watched {
    /// The times at which each of its contracts' thresholds has run for an outage since
    /// `since` (plus the block-time margin), those still ahead of `now`.
    fn dues(&self, since: Timestamp, now: Timestamp) -> impl Iterator<Item = Timestamp> + '_ {
        // The ledger hands over once `now >= since + threshold` at block time; the block that
        // carries a re-attestation may be stamped up to CLOCK_MARGIN_MS behind this node's
        // clock, so re-attest that much after the threshold.
        self.contracts
            .values()
            .map(move |t| since.saturating_add(*t).saturating_add(CLOCK_MARGIN_MS))
            .filter(move |due| *due > now)
    }
}

/// The arbitrator side of this node.
#[derive(Clone, Debug)]
pub(super) struct Arbitrator {
    watched: BTreeMap<NodeId, Watched>,
    audits: BTreeMap<ContractId, audits::Audit>,
    probes: BTreeMap<ContractId, probes::Probing>,
    /// Places the observations within their rounds ([`super::RolesConfig::evidence_seed`]).
    seed: u64,
}

/// Standby contracts are watched from registration until they close: while active too, so the
/// customer's return is attested (a stale "unreachable" must not hand a later contract over).
fn watched_status(s: ContractStatus) -> bool {
    matches!(
        s,
        ContractStatus::Validated
            | ContractStatus::Migrated
            | ContractStatus::Armed
            | ContractStatus::Active
    )
}

/// Whether this node may report a bad outcome (a probe down, a challenge failed): its ledger
/// view is current and fresh, so it is not itself the one cut off.
fn may_blame(v: &View) -> bool {
    v.synced && v.now.saturating_sub(v.block_seen_at) <= REPORT_VIEW_MAX_AGE_MS
}

/// Forgets the duties (audits or probes) of every contract the view no longer shows active,
/// with a timeline entry `phase` (`why`) for each.
fn drop_inactive<T>(
    duties: &mut BTreeMap<ContractId, T>,
    v: &View,
    phase: &'static str,
    why: &'static str,
    out: &mut Vec<Effect>,
) {
    duties.retain(|id, _| {
        let active = v
            .records
            .get(id)
            .is_some_and(|r| r.status == ContractStatus::Active);
        if !active {
            out.push(Effect::Timeline(Note::new(phase, Some(*id), why)));
        }
        active
    });
}

impl Arbitrator {
    /// An arbitrator side whose probes and challenges are placed by `seed`.
    pub fn new(seed: u64) -> Self {
        Arbitrator {
            watched: BTreeMap::new(),
            audits: BTreeMap::new(),
            probes: BTreeMap::new(),
            seed,
        }
    }

    /// What places this node's probes and challenges within their rounds.
    fn observer(&self, v: &View) -> rounds::Observer {
        rounds::Observer {
            seed: self.seed,
            me: v.me,
        }
    }

    /// The earliest time something is due.
    pub fn next_wake(&self) -> Option<Timestamp> {
        let reattest = self
            .watched
            .values()
            .filter_map(|w| w.reattest.first().copied());
        let audits = self.audits.values().filter_map(audits::Audit::next_wake);
        let probes = self.probes.values().filter_map(probes::Probing::next_wake);
        reattest.chain(audits).chain(probes).min()
    }

    pub fn handle(&mut self, v: &View, input: &Input, out: &mut Vec<Effect>) {
        match input {
            Input::Presence(p) => self.on_presence(v, *p, out),
            Input::AuditAnswer { contract, verdict } => {
                self.on_audit_answer(v, *contract, verdict, out)
            }
            Input::ProbeAnswer {
                contract,
                interval,
                up,
            } => self.on_probe_answer(v, *contract, *interval, *up, out),
            Input::Submitted { tx, accepted: true } => self.on_submitted(tx, out),
            _ => {}
        }
        self.reconcile_watches(v, out);
        self.reconcile_audits(v, out);
        self.reconcile_probes(v, out);
        self.reattest_due(v, out);
        self.challenge_due(v, out);
        self.probe_due(v, out);
    }

    fn reconcile_watches(&mut self, v: &View, out: &mut Vec<Effect>) {
        let mut wanted: BTreeMap<NodeId, BTreeMap<ContractId, u64>> = BTreeMap::new();
        for (id, r) in v.records {
            let c = &r.contract;
            if c.kind == ContractKind::Standby
                && c.committee.contains(&v.me)
                && watched_status(r.status)
            {
                let after = match c.activation {
                    ActivationClause::OnHandover { unreachable_for_ms } => unreachable_for_ms,
                    _ => 0,
                };
                wanted.entry(c.customer).or_default().insert(*id, after);
            }
        }
        for (customer, contracts) in &wanted {
            let w = self.watched.entry(*customer).or_default();
            if w.contracts.is_empty() {
                // Keep a direct connection so the liveness check is this node's own.
                out.push(Effect::Watch(*customer));
            }
            for (id, after) in contracts {
                if w.contracts.insert(*id, *after).is_none() {
                    out.push(Effect::Timeline(Note::new(
                        "watching",
                        Some(*id),
                        format!("customer {}", customer.short()),
                    )));
                    // The ledger counts for a contract only what was attested after its
                    // registration (THREATS C18): a customer this node already sees down is
                    // attested again for it, and again once its threshold has run.
                    if let Some(since) = w.down_since {
                        let due = since.saturating_add(*after).saturating_add(CLOCK_MARGIN_MS);
                        if due > v.now {
                            w.reattest.insert(due);
                        }
                        out.push(attest(*customer, Liveness::Unreachable { since }));
                    }
                }
            }
            w.contracts.retain(|id, _| contracts.contains_key(id));
        }
        let gone: Vec<NodeId> = self
            .watched
            .keys()
            .filter(|n| !wanted.contains_key(n))
            .copied()
            .collect();
        for n in gone {
            self.watched.remove(&n);
            out.push(Effect::Unwatch(n));
        }
    }

    fn on_presence(&mut self, v: &View, p: Presence, out: &mut Vec<Effect>) {
        match p {
            Presence::Down { node, last_seen } => {
                let Some(w) = self.watched.get_mut(&node) else {
                    return;
                };
                w.down_since = Some(last_seen);
                w.reattest = w.dues(last_seen, v.now).collect();
                out.push(attest(node, Liveness::Unreachable { since: last_seen }));
            }
            Presence::Up { node } => {
                let Some(w) = self.watched.get_mut(&node) else {
                    return;
                };
                if w.down_since.take().is_some() {
                    w.reattest.clear();
                    out.push(attest(node, Liveness::Reachable));
                }
            }
        }
    }

    /// Attests every customer still down again once one of its contracts' thresholds has run,
    /// and when one of its standbys is newly armed and waits for its handover.
    fn reattest_due(&mut self, v: &View, out: &mut Vec<Effect>) {
        for (node, w) in self.watched.iter_mut() {
            let armed: BTreeSet<ContractId> = w
                .contracts
                .keys()
                .filter(|id| {
                    v.records.get(id).is_some_and(|r| {
                        r.status == ContractStatus::Armed
                            && r.handover.is_none()
                            && matches!(r.contract.activation, ActivationClause::OnHandover { .. })
                    })
                })
                .copied()
                .collect();
            let newly_armed = armed.iter().any(|id| !w.armed.contains(id));
            w.armed = armed;
            let Some(since) = w.down_since else {
                continue;
            };
            let threshold_ran = w.reattest.first().is_some_and(|t| v.now >= *t);
            w.reattest.retain(|t| *t > v.now);
            if threshold_ran || newly_armed {
                out.push(attest(*node, Liveness::Unreachable { since }));
            }
        }
    }

    fn on_submitted(&mut self, tx: &TxKind, out: &mut Vec<Effect>) {
        match tx {
            TxKind::Attest { subject, liveness } => {
                let what = match liveness {
                    Liveness::Unreachable { .. } => "attested-down",
                    Liveness::Reachable => "attested-up",
                };
                out.push(Effect::Timeline(Note::new(
                    what,
                    None,
                    format!("{} {liveness:?}", subject.short()),
                )));
            }
            TxKind::StorageProofResult { contract, .. } => {
                if let Some(detail) = self
                    .audits
                    .get_mut(contract)
                    .and_then(|a| a.reporting.take())
                {
                    out.push(Effect::Timeline(Note::new(
                        "storage-challenge",
                        Some(*contract),
                        detail,
                    )));
                }
            }
            TxKind::ProbeResult {
                contract,
                interval,
                up,
            } => self.on_probe_reported(*contract, *interval, *up, out),
            _ => {}
        }
    }
}

fn attest(subject: NodeId, liveness: Liveness) -> Effect {
    Effect::Submit(TxKind::Attest { subject, liveness })
}
