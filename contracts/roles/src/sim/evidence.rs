//! The committee's evidence in the simulation: what every node could do at each step (for the
//! properties to compare the committee's decisions with), what a probe sees, and the lying
//! arbitrator.

use std::collections::BTreeSet;

use agora_market::{NodeId, Timestamp};

use super::{B, NODES, Record, Sim};
use agora_contracts::contract::ContractId;
use agora_contracts::ledger::TxKind;
use agora_contracts::lifecycle::ContractStatus;

/// What every node could do during a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Up and not partitioned.
    pub connected: [bool; NODES],
    /// How late blocks reach it.
    pub delay: [u64; NODES],
    /// The services (contract ids) the provider runs while it is connected.
    pub serving: BTreeSet<String>,
}

impl Record {
    /// The snapshot in force at `t`.
    fn at(&self, t: Timestamp) -> Option<&Snapshot> {
        let i = self.snapshots.partition_point(|(at, _)| *at <= t);
        self.snapshots.get(i.checked_sub(1)?).map(|(_, s)| s)
    }

    /// The snapshots in force at some moment of `[from, to)`.
    fn during(&self, from: Timestamp, to: Timestamp) -> impl Iterator<Item = &Snapshot> {
        let later = self
            .snapshots
            .iter()
            .filter(move |(at, _)| *at > from && *at < to)
            .map(|(_, s)| s);
        self.at(from).into_iter().chain(later)
    }

    /// Whether `pred` held at every moment of `[from, to)`.
    pub fn throughout(
        &self,
        from: Timestamp,
        to: Timestamp,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> bool {
        self.at(from).is_some() && self.during(from, to).all(pred)
    }

    /// Whether `pred` held at some moment of `[from, to)`.
    pub fn sometime(
        &self,
        from: Timestamp,
        to: Timestamp,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> bool {
        self.during(from, to).any(pred)
    }
}

impl Sim {
    /// Records what every node can do now, when it changed.
    pub(super) fn snapshot(&mut self) {
        let b = &self.nodes[B];
        let s = Snapshot {
            connected: std::array::from_fn(|i| self.nodes[i].connected()),
            delay: std::array::from_fn(|i| self.nodes[i].delay),
            serving: if b.connected() {
                b.running.clone()
            } else {
                BTreeSet::new()
            },
        };
        if self
            .record
            .snapshots
            .last()
            .is_none_or(|(_, last)| *last != s)
        {
            self.record.snapshots.push((self.now, s));
        }
    }

    /// What the arbitrator `i` sees when it probes `provider`'s service of `contract` now.
    pub(super) fn probe_sees(
        &self,
        i: usize,
        provider: NodeId,
        contract: ContractId,
    ) -> Option<bool> {
        let j = self.nodes.iter().position(|n| n.id == provider)?;
        let reachable = self.nodes[j].connected() && self.nodes[i].connected();
        reachable.then(|| self.nodes[j].running.contains(&contract.to_string()))
    }

    /// The lying arbitrator reports every probe interval, as early as it can (at the interval's
    /// first step), the opposite of what it would see; its own machine is told the opposite
    /// too, so its later reports lie as well (the ledger refuses them as repeats).
    pub(super) fn lie(&mut self) {
        let Some(l) = self.liar else {
            return;
        };
        if !self.nodes[l].connected() {
            return;
        }
        let me = self.nodes[l].id;
        let now = self.now;
        let due: Vec<(ContractId, u64, NodeId)> = self
            .chain
            .scratch
            .contracts()
            .iter()
            .filter(|(_, r)| {
                r.status == ContractStatus::Active
                    && r.is_probed()
                    && r.contract.committee.contains(&me)
            })
            .filter_map(|(id, r)| Some((*id, r.evidence_round(now)?, r.contract.provider)))
            .filter(|(id, interval, _)| !self.lied.contains(&(*id, *interval)))
            .collect();
        for (contract, interval, provider) in due {
            let up = !self.probe_sees(l, provider, contract).unwrap_or(false);
            let signer = self.nodes[l].signer.clone();
            let kind = TxKind::ProbeResult {
                contract,
                interval,
                up,
            };
            if self.chain.admit(now, &signer, kind) {
                self.lied.insert((contract, interval));
            }
        }
    }
}
