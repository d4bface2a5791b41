//! Before arming a hosted or standby contract, the provider asks which services here are its
//! service's rivals for the module's instances and arms only while one is free (THREATS C5,
//! the rule in `instances.rs`), as the node's orchestrator does.

use agora_market::Timestamp;

use super::steps::submit_once;
use super::{Host, Provider, Step};
use crate::View;
use crate::instances::{ARM_RECHECK_MS, Arming, Holding, arm_give_up, holding_instances};
use crate::io::{Effect, Note};
use agora_contracts::contract::ContractId;
use agora_contracts::ledger::{ContractRecord, TxKind};

/// Where the check before arming stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ArmCheck {
    /// Not asked since the last `MarkArmed` was sent (or ever).
    Unasked,
    /// [`Effect::InstanceRivals`] sent, not answered; `give_up` once a wait began.
    Asked { give_up: Option<Timestamp> },
    /// Answered: what the rivals hold of `max` instances, by the ledger facts of the answer.
    Answered {
        holding: Holding,
        max: usize,
        give_up: Option<Timestamp>,
    },
    /// Only ending rivals hold the last instances: ask again at `recheck_at`; called off at
    /// `give_up`.
    Waiting {
        recheck_at: Timestamp,
        give_up: Timestamp,
    },
    /// Called off: never armed; the cancel is sent until the ledger applies it.
    Refused,
}

impl Provider {
    /// [`crate::Input::InstanceRivals`]: what the rivals hold, by the latest ledger facts (the
    /// orchestrator reads its ledger right after the host's answer).
    pub(super) fn on_instance_rivals(
        &mut self,
        v: &View,
        id: ContractId,
        max: u32,
        rivals: &[ContractId],
    ) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        let ArmCheck::Asked { give_up } = h.arming else {
            return;
        };
        let Some(mine) = v.records.get(&id) else {
            h.arming = ArmCheck::Unasked;
            return;
        };
        let others: Vec<&ContractRecord> = rivals
            .iter()
            .filter(|r| **r != id)
            .filter_map(|r| v.records.get(r))
            .collect();
        h.arming = ArmCheck::Answered {
            holding: holding_instances(mine, &others),
            max: usize::try_from(max).unwrap_or(usize::MAX),
            give_up,
        };
    }
}

/// Whether the migrated contract `id` may be armed now. A storage contract holds no instance
/// and always may. A hosted or standby one asks for its rivals first ([`ArmCheck`]), then arms,
/// waits for ending rivals, or is called off (`arm-refused`) while the provider still may.
pub(super) fn may_arm(
    h: &mut Host,
    id: ContractId,
    rec: &ContractRecord,
    now: Timestamp,
    out: &mut Vec<Effect>,
) -> bool {
    if h.storage.is_some() {
        return true;
    }
    if h.in_flight.contains_key(&Step::Armed) {
        return false;
    }
    let check = h.arming;
    match check {
        ArmCheck::Unasked => ask(h, id, None, out),
        ArmCheck::Waiting {
            recheck_at,
            give_up,
        } if now >= recheck_at => ask(h, id, Some(give_up), out),
        ArmCheck::Answered { .. } => return decide(h, id, rec, now, out),
        ArmCheck::Refused => submit_once(h, Step::Cancel, TxKind::Cancel(id), now, out),
        ArmCheck::Asked { .. } | ArmCheck::Waiting { .. } => {}
    }
    false
}

fn ask(h: &mut Host, id: ContractId, give_up: Option<Timestamp>, out: &mut Vec<Effect>) {
    h.arming = ArmCheck::Asked { give_up };
    out.push(Effect::InstanceRivals { contract: id });
}

/// Acts on the answer: arm (`true`, and the next `MarkArmed` asks again), wait, or call off.
fn decide(
    h: &mut Host,
    id: ContractId,
    rec: &ContractRecord,
    now: Timestamp,
    out: &mut Vec<Effect>,
) -> bool {
    let ArmCheck::Answered {
        holding,
        max,
        give_up,
    } = h.arming
    else {
        return false;
    };
    let reason = match holding.arming(max) {
        Arming::Arm => {
            h.arming = ArmCheck::Unasked;
            return true;
        }
        Arming::Refuse => format!(
            "{} other contract(s) of this module hold the {max} instance(s) it may run here: \
             its service could not start, so it is called off before it is armed",
            holding.held
        ),
        Arming::Wait => {
            let until = give_up.unwrap_or_else(|| arm_give_up(rec.contract.activation, now));
            if now < until {
                if give_up.is_none() {
                    out.push(Effect::Timeline(Note::new(
                        "arm-waiting",
                        Some(id),
                        format!(
                            "{} contract(s) of this module are ending and their service still \
                             runs here: arming waits until they are final",
                            holding.ending
                        ),
                    )));
                }
                h.arming = ArmCheck::Waiting {
                    recheck_at: now.saturating_add(ARM_RECHECK_MS),
                    give_up: until,
                };
                return false;
            }
            "ending contract(s) of this module still held its instance here when the contract \
             had to be armed: called off before it is armed"
                .to_string()
        }
    };
    h.arming = ArmCheck::Refused;
    out.push(Effect::Timeline(Note::new("arm-refused", Some(id), reason)));
    submit_once(h, Step::Cancel, TxKind::Cancel(id), now, out);
    false
}
