//! Customer: run the node's own service on its own sensors, yield them while a handover is in
//! effect and take them back once it is settled; and stop feeding its own sensors when it
//! cannot see enough of a standby contract's committee to rule out a handover behind its back.
//! Settling its contracts is [`super::settle`]'s.

use std::collections::{BTreeMap, BTreeSet};

use agora_market::{NodeId, Timestamp};
use cid::Cid;

use super::facts::{handed_over, may_hand_over};
use super::io::{Effect, Input, Note, Presence, ServiceRef};
use super::{OWN_RETRY_MS, View};
use agora_contracts::attestation::quorum;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Unstaged,
    Staging,
    Staged,
    Starting,
    Running,
}

/// The node's own service.
#[derive(Clone, Debug, Default)]
struct Own {
    image: Option<Cid>,
    phase: Phase,
    devices: Vec<u32>,
    yielded_at: Option<Timestamp>,
    listening: bool,
    reply_pending: bool,
    retry_at: Option<Timestamp>,
}

/// Whether the own sensors may be fed, given what this node sees of its committees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Suspension {
    #[default]
    Clear,
    /// Enough of a committee is out of reach that a quorum may be attesting us down.
    Suspended { since: Timestamp },
    /// Back in reach since `resumed_at`; feeding resumes with the first block decided after it
    /// (which shows any handover that happened meanwhile).
    Rechecking { resumed_at: Timestamp },
}

/// The customer side of this node's contracts.
#[derive(Clone, Debug, Default)]
pub(super) struct Customer {
    own: Own,
    /// Committee members of at-risk contracts this node sees down, since when.
    down: BTreeMap<NodeId, Timestamp>,
    watching: BTreeSet<NodeId>,
    suspension: Suspension,
}

impl Customer {
    /// Starts with the own service image persisted by the driver, if any.
    pub fn new(own: Option<Cid>) -> Self {
        Customer {
            own: Own {
                image: own,
                ..Own::default()
            },
            ..Customer::default()
        }
    }

    /// The own service's image and devices, once staged.
    pub fn group(&self) -> Option<(Cid, Vec<u32>)> {
        let image = self.own.image?;
        (!self.own.devices.is_empty()).then(|| (image, self.own.devices.clone()))
    }

    /// The own image.
    pub fn image(&self) -> Option<Cid> {
        self.own.image
    }

    /// When the own sensors' authority lapsed (a time not after now), or `None`.
    pub fn lapsed_since(&self) -> Option<Timestamp> {
        match self.suspension {
            Suspension::Clear => None,
            Suspension::Suspended { since } => Some(since),
            Suspension::Rechecking { resumed_at } => Some(resumed_at),
        }
    }

    /// The earliest time something is due.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.own.retry_at
    }

    pub fn handle(&mut self, v: &View, input: &Input, out: &mut Vec<Effect>) {
        match input {
            Input::SetOwn { image } => {
                if self.own.phase == Phase::Running {
                    out.push(Effect::YieldDevices {
                        devices: self.own.devices.clone(),
                    });
                    out.push(Effect::StopService {
                        service: ServiceRef::Own,
                    });
                }
                self.own = Own {
                    image: Some(*image),
                    reply_pending: true,
                    ..Own::default()
                };
            }
            Input::Staged {
                service: ServiceRef::Own,
                devices,
            } if self.own.phase == Phase::Staging => {
                self.own.phase = Phase::Staged;
                self.own.devices = devices.clone();
                if std::mem::take(&mut self.own.reply_pending) {
                    out.push(Effect::OwnSet(Ok(devices.clone())));
                }
            }
            Input::StageFailed {
                service: ServiceRef::Own,
                error,
                ..
            } if self.own.phase == Phase::Staging => {
                self.own.phase = Phase::Unstaged;
                self.own.retry_at = Some(v.now.saturating_add(OWN_RETRY_MS));
                out.push(Effect::Timeline(Note::new(
                    "own-service-failed",
                    None,
                    error.clone(),
                )));
                if std::mem::take(&mut self.own.reply_pending) {
                    let image = self.own.image.map(|i| i.to_string()).unwrap_or_default();
                    out.push(Effect::OwnSet(Err(format!(
                        "image {image} could not be staged: {error}"
                    ))));
                }
            }
            Input::ActivationDone {
                service: ServiceRef::Own,
                replayed,
                ..
            } if self.own.phase == Phase::Starting => {
                self.own.phase = Phase::Running;
                self.own.yielded_at = None;
                self.own.listening = false;
                out.push(Effect::Timeline(Note::new(
                    "own-service-running",
                    None,
                    format!(
                        "sensors {:?}, {replayed} buffered readings replayed",
                        self.own.devices
                    ),
                )));
            }
            Input::ActivationFailed {
                service: ServiceRef::Own,
                error,
            } if self.own.phase == Phase::Starting => {
                self.own.phase = Phase::Staged;
                self.own.retry_at = Some(v.now.saturating_add(OWN_RETRY_MS));
                out.push(Effect::Timeline(Note::new(
                    "own-service-failed",
                    None,
                    error.clone(),
                )));
            }
            Input::Presence(p) => self.on_presence(v, *p),
            _ => {}
        }
        self.watch_committees(v, out);
        self.update_suspension(v, out);
        self.evaluate_own(v, out);
    }

    fn on_presence(&mut self, v: &View, p: Presence) {
        match p {
            Presence::Down { node, .. } => {
                if self.watching.contains(&node) {
                    self.down.entry(node).or_insert(v.now);
                }
            }
            Presence::Up { node } => {
                self.down.remove(&node);
            }
        }
    }

    /// Committee members of the standby contracts that could hand this node's sensors over
    /// (armed, or about to be: the provider arms without the customer).
    fn at_risk_committees(v: &View) -> Vec<Vec<NodeId>> {
        v.records
            .values()
            .filter(|r| r.contract.customer == v.me && may_hand_over(r))
            .map(|r| {
                let mut c = r.contract.committee.clone();
                c.sort();
                c.dedup();
                c
            })
            .collect()
    }

    /// Keeps a direct connection to the committees of at-risk contracts, so this node learns
    /// within the presence timeout when it is cut off from them (deviation: the old
    /// orchestrator did not watch its committee).
    fn watch_committees(&mut self, v: &View, out: &mut Vec<Effect>) {
        let wanted: BTreeSet<NodeId> = Self::at_risk_committees(v)
            .into_iter()
            .flatten()
            .filter(|n| *n != v.me)
            .collect();
        for n in wanted.difference(&self.watching) {
            out.push(Effect::Watch(*n));
        }
        for n in self.watching.difference(&wanted) {
            out.push(Effect::Unwatch(*n));
        }
        self.down.retain(|n, _| wanted.contains(n));
        self.watching = wanted;
    }

    /// A quorum of a committee that this node cannot see may be attesting it down: stop
    /// feeding its own sensors (so a provider taking over never feeds them at the same time),
    /// and resume only with a block decided after it is back in reach.
    fn update_suspension(&mut self, v: &View, out: &mut Vec<Effect>) {
        let suspect = Self::at_risk_committees(v).iter().any(|c| {
            let unseen = c
                .iter()
                .filter(|n| **n != v.me && self.down.contains_key(n))
                .count();
            unseen >= quorum(c.len())
        });
        let next = match (self.suspension, suspect) {
            (Suspension::Clear, true) => Suspension::Suspended { since: v.now },
            (Suspension::Suspended { .. }, false) => Suspension::Rechecking { resumed_at: v.now },
            (Suspension::Rechecking { .. }, true) => Suspension::Suspended { since: v.now },
            (Suspension::Rechecking { resumed_at }, false) if v.block_time >= resumed_at => {
                Suspension::Clear
            }
            (s, _) => s,
        };
        if next != self.suspension {
            let (phase, detail) = match next {
                Suspension::Suspended { .. } => (
                    "own-suspended",
                    "a quorum of the committee is out of reach; sensors buffered",
                ),
                Suspension::Rechecking { .. } => (
                    "own-rechecking",
                    "committee back in reach; waiting for a fresh block",
                ),
                Suspension::Clear => ("own-resumed", "ledger current; feeding own sensors"),
            };
            out.push(Effect::Timeline(Note::new(phase, None, detail)));
            self.suspension = next;
        }
    }

    /// Runs, yields or reclaims the own service according to the ledger.
    fn evaluate_own(&mut self, v: &View, out: &mut Vec<Effect>) {
        let Some(image) = self.own.image else {
            return;
        };
        if self.own.retry_at.is_some_and(|t| v.now < t) {
            return;
        }
        self.own.retry_at = None;
        match self.own.phase {
            Phase::Unstaged => {
                self.own.phase = Phase::Staging;
                out.push(Effect::Stage {
                    service: ServiceRef::Own,
                    image,
                });
                return;
            }
            Phase::Staging | Phase::Starting => return,
            Phase::Staged | Phase::Running => {}
        }
        // A restarted node's ledger may be stale (a handover may have happened meanwhile):
        // touch the sensors only once it has caught up.
        if !v.synced {
            return;
        }
        let handed = v
            .records
            .values()
            .any(|r| r.contract.customer == v.me && handed_over(r));
        let devices = self.own.devices.clone();
        if handed {
            self.own.yielded_at.get_or_insert(v.now);
            if self.own.phase == Phase::Running {
                out.push(Effect::YieldDevices {
                    devices: devices.clone(),
                });
                out.push(Effect::StopService {
                    service: ServiceRef::Own,
                });
                out.push(Effect::Timeline(Note::new(
                    "own-service-yielded",
                    None,
                    format!("sensors {devices:?}"),
                )));
                // Stopping unloads the image: stage it again before taking the sensors back.
                self.own.phase = Phase::Unstaged;
            }
            if !self.own.listening {
                self.own.listening = true;
                out.push(Effect::Listen { devices, on: true });
            }
            return;
        }
        if self.own.phase == Phase::Running {
            return;
        }
        self.own.phase = Phase::Starting;
        out.push(Effect::Activate {
            service: ServiceRef::Own,
            devices,
            reclaim: self.own.yielded_at.is_some(),
        });
    }
}
