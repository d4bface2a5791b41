//! Provider: get ready (stage the image, or take custody of a storage contract's file),
//! migrate, arm, activate when the trigger fires (and the ledger is current), report uptime
//! heartbeats with readings and data proofs, settle when the term ends, stop when it closed.

use std::collections::BTreeMap;

use agora_market::{NodeId, Timestamp};
use cid::Cid;

mod answers;
mod arming;
mod steps;

pub use answers::custody_refusal_cancels;
use answers::give_up_staging;
use arming::{ArmCheck, may_arm};
use steps::{activate, listen, prepare_effect, report_activation_again, stop, submit_once};

use super::facts::{closed, provider_engaged};
use super::io::{Effect, Input, Note, ServiceRef};
use super::staging::prepare_deadline;
use super::{ACTIVATION_RESEND_MS, ACTIVATION_RETRY_MS, Heartbeat, RESUBMIT_MS, View};
use agora_contracts::contract::{ContractId, ContractKind};
use agora_contracts::ledger::{ContractRecord, TxKind};
use agora_contracts::lifecycle::ContractStatus;

/// A transaction that moves the contract on, in flight until the ledger shows its effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Migrated,
    Armed,
    Activation,
    Cancel,
}

impl Step {
    /// How long a submission of this step may stay without effect on the ledger before it is
    /// sent again: an activation report sooner than the rest (THREATS C10).
    fn resend_ms(self) -> u64 {
        match self {
            Step::Activation => ACTIVATION_RESEND_MS,
            Step::Migrated | Step::Armed | Step::Cancel => RESUBMIT_MS,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Prep {
    /// Staging or taking custody; `retry_at` after a failed attempt.
    Preparing {
        attempts: u32,
        retry_at: Option<Timestamp>,
    },
    /// Staged (devices from the manifest) or custody taken.
    Ready { devices: Vec<u32> },
    /// Gave up staging, or custody refused.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Run {
    Idle,
    Starting,
    Active { since: Timestamp },
}

#[derive(Clone, Debug)]
struct Host {
    storage: Option<(Cid, Cid)>,
    customer: NodeId,
    prep: Prep,
    run: Run,
    scheduled: Option<Timestamp>,
    listening: bool,
    /// Submissions in flight, with when to submit again if the ledger shows no effect.
    in_flight: BTreeMap<Step, Timestamp>,
    /// Heartbeat bookkeeping of the active service (`heartbeat.rs`).
    beat: Heartbeat,
    /// A `Meter` asked for and not answered yet: no other until it is.
    metering: bool,
    /// After a failed start: not before this time; `gave_up` once the deadline passed.
    retry_at: Option<Timestamp>,
    gave_up: bool,
    /// The check of the module's instances before arming (THREATS C5, `arming.rs`).
    arming: ArmCheck,
    /// When staging is given up and the contract called off (THREATS C6,
    /// [`crate::staging::prepare_deadline`]); `None` for storage and without a deadline.
    stage_deadline: Option<Timestamp>,
}

/// The provider side of every contract this node provides.
#[derive(Clone, Debug, Default)]
pub(super) struct Provider {
    hosts: BTreeMap<ContractId, Host>,
}

impl Provider {
    /// Service images and devices of the contracts staged here.
    pub fn groups(
        &self,
        records: &BTreeMap<ContractId, ContractRecord>,
    ) -> Vec<(Cid, Vec<u32>, NodeId)> {
        self.hosts
            .iter()
            .filter_map(|(id, h)| {
                let Prep::Ready { devices } = &h.prep else {
                    return None;
                };
                let rec = records.get(id)?;
                (h.storage.is_none())
                    .then(|| (rec.contract.service_image, devices.clone(), h.customer))
            })
            .collect()
    }

    /// Images of the contracts this node provides.
    pub fn images(&self, records: &BTreeMap<ContractId, ContractRecord>) -> Vec<Cid> {
        self.hosts
            .keys()
            .filter_map(|id| records.get(id))
            .map(|r| r.contract.service_image)
            .collect()
    }

    /// The earliest time something is due.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.hosts
            .values()
            .flat_map(|h| {
                let beat =
                    matches!(h.run, Run::Active { .. }) && h.storage.is_none() && !h.metering;
                let retry = match h.prep {
                    Prep::Preparing { retry_at, .. } => retry_at,
                    _ => None,
                };
                let resubmit = h.in_flight.values().min().copied();
                let recheck = match h.arming {
                    ArmCheck::Waiting { recheck_at, .. } => Some(recheck_at),
                    _ => None,
                };
                let preparing = matches!(h.prep, Prep::Preparing { .. });
                let deadline = h.stage_deadline.filter(|_| preparing);
                [
                    resubmit,
                    h.scheduled,
                    retry,
                    h.retry_at,
                    beat.then(|| h.beat.due_at()),
                    recheck,
                    deadline,
                ]
            })
            .flatten()
            .min()
    }

    pub fn handle(&mut self, v: &View, input: &Input, out: &mut Vec<Effect>) {
        match input {
            Input::Staged {
                service: ServiceRef::Contract(id),
                devices,
            } => self.on_ready(*id, devices.clone(), out),
            Input::StageFailed {
                service: ServiceRef::Contract(id),
                error,
                permanent,
            } => self.on_stage_failed(v, *id, error, *permanent, out),
            Input::CustodyTaken { contract } => self.on_ready(*contract, Vec::new(), out),
            Input::CustodyRefused { contract, error } => {
                self.on_custody_refused(v, *contract, error, out)
            }
            Input::ActivationDone {
                service: ServiceRef::Contract(id),
                started_at,
                replayed,
            } => self.on_activated(v, *id, *started_at, *replayed, out),
            Input::ActivationFailed {
                service: ServiceRef::Contract(id),
                error,
            } => {
                if let Some(h) = self.hosts.get_mut(id) {
                    h.run = Run::Idle;
                    // Deviation from the old orchestrator, which never retried: try again while
                    // the activation still counts (reported already, or before its deadline).
                    let rec = v.records.get(id);
                    let retry = v.now.saturating_add(ACTIVATION_RETRY_MS);
                    let worth = rec.is_some_and(|r| {
                        r.activated_at.is_some()
                            || r.activation_deadline().is_none_or(|d| retry <= d)
                    });
                    h.retry_at = Some(retry);
                    h.gave_up = !worth;
                    out.push(Effect::Timeline(Note::new(
                        "activation-failed",
                        Some(*id),
                        error.clone(),
                    )));
                }
            }
            Input::Metered {
                contract,
                running,
                processed,
                proofs,
            } => self.on_metered(v, *contract, *running, *processed, proofs, out),
            Input::InstanceRivals {
                contract,
                max,
                rivals,
            } => self.on_instance_rivals(v, *contract, *max, rivals),
            Input::Submitted { tx, accepted } => self.on_submitted(v, tx, *accepted),
            _ => {}
        }
        self.reconcile(v, out);
    }

    /// Level-triggered: brings every hosted contract in line with the ledger and the clock.
    fn reconcile(&mut self, v: &View, out: &mut Vec<Effect>) {
        let mine: Vec<(ContractId, &ContractRecord)> = v
            .records
            .iter()
            .filter(|(_, r)| r.contract.provider == v.me)
            .map(|(id, r)| (*id, r))
            .collect();
        for (id, rec) in &mine {
            if closed(rec.status) {
                if let Some(h) = self.hosts.remove(id) {
                    stop(*id, h, out);
                }
                continue;
            }
            if !provider_engaged(rec.status) {
                continue;
            }
            if !self.hosts.contains_key(id) {
                self.prepare(*id, rec, v.params.activation_report_grace_ms, out);
            }
            self.advance(v, *id, rec, out);
        }
        // Contracts that left the facts altogether (closed long ago while we were away).
        let gone: Vec<ContractId> = self
            .hosts
            .keys()
            .filter(|id| !v.records.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(h) = self.hosts.remove(&id) {
                stop(id, h, out);
            }
        }
    }

    /// Starts getting ready for `id`: custody of a storage contract's file, or staging (given
    /// up half the ledger's report grace, `grace_ms`, past the activation deadline).
    fn prepare(
        &mut self,
        id: ContractId,
        rec: &ContractRecord,
        grace_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let c = &rec.contract;
        let storage = (c.kind == ContractKind::Storage).then_some((c.service_image, c.config));
        let stage_deadline = match storage {
            None => prepare_deadline(rec, grace_ms),
            Some(_) => None,
        };
        self.hosts.insert(
            id,
            Host {
                storage,
                customer: c.customer,
                prep: Prep::Preparing {
                    attempts: 0,
                    retry_at: None,
                },
                run: Run::Idle,
                scheduled: None,
                listening: false,
                in_flight: BTreeMap::new(),
                beat: Heartbeat::new(c.qos.heartbeat_interval_ms),
                metering: false,
                retry_at: None,
                gave_up: false,
                arming: ArmCheck::Unasked,
                stage_deadline,
            },
        );
        out.push(prepare_effect(id, rec));
    }

    /// What the ledger status asks of a ready host now.
    fn advance(&mut self, v: &View, id: ContractId, rec: &ContractRecord, out: &mut Vec<Effect>) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        // Not staged by the deadline, even with an attempt under way: given up, the contract
        // called off while the provider still may (THREATS C6).
        if let Some(d) = h.stage_deadline
            && v.now >= d
            && matches!(h.prep, Prep::Preparing { .. })
        {
            let why = format!(
                "not staged by {d}, half the report grace past the activation deadline: given up"
            );
            give_up_staging(h, id, v, why, out);
        }
        // A retry of a failed stage.
        if let Prep::Preparing {
            retry_at: Some(t), ..
        } = h.prep
            && v.now >= t
        {
            if let Prep::Preparing { retry_at, .. } = &mut h.prep {
                *retry_at = None;
            }
            out.push(prepare_effect(id, rec));
        }
        // Forget submissions the ledger has acted on, or that were lost for too long.
        let status = rec.status;
        h.in_flight.retain(|step, retry_at| {
            let done = match step {
                Step::Migrated => status != ContractStatus::Validated,
                Step::Armed => {
                    !matches!(status, ContractStatus::Validated | ContractStatus::Migrated)
                }
                Step::Activation => rec.activated_at.is_some(),
                Step::Cancel => false,
            };
            !done && v.now < *retry_at
        });
        let Prep::Ready { devices } = h.prep.clone() else {
            return;
        };
        let idle = h.run == Run::Idle
            && h.scheduled.is_none()
            && !h.gave_up
            && h.retry_at.is_none_or(|t| v.now >= t);
        match status {
            ContractStatus::Validated => {
                submit_once(h, Step::Migrated, TxKind::MarkMigrated(id), v.now, out)
            }
            ContractStatus::Migrated if may_arm(h, id, rec, v.now, out) => {
                submit_once(h, Step::Armed, TxKind::MarkArmed(id), v.now, out);
                listen(h, &devices, out);
            }
            ContractStatus::Armed => match rec.trigger_at {
                Some(t) if idle => {
                    if t > v.now {
                        h.scheduled = Some(t);
                        out.push(Effect::Timeline(Note::new(
                            "scheduled",
                            Some(id),
                            format!("activation at {t}"),
                        )));
                    } else {
                        h.scheduled = Some(v.now);
                    }
                }
                None => listen(h, &devices, out),
                _ => {}
            },
            ContractStatus::Active if idle => {
                // Restarted while active: resume serving.
                h.scheduled = Some(v.now);
            }
            _ => {}
        }
        report_activation_again(h, id, rec, v.now, out);
        // A restarted node activates only once its ledger is current: a handover may have
        // happened meanwhile, and its peers must be connected to replay missed uplinks.
        if h.scheduled.is_some_and(|t| v.now >= t) && v.synced {
            h.scheduled = None;
            h.retry_at = None;
            activate(h, id, rec, &devices, v.now, out);
        }
        self.heartbeat_if_due(v, id, out);
    }
}
