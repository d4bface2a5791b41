//! What the provider does to a contract it hosts: prepare, submit once, listen, activate, stop.

use agora_market::Timestamp;

use super::{Host, Prep, Run, Step};
use crate::io::{Effect, Note, ServiceRef};
use agora_contracts::contract::{ContractId, ContractKind};
use agora_contracts::ledger::{ContractRecord, TxKind};
use agora_contracts::lifecycle::ContractStatus;

pub(super) fn prepare_effect(id: ContractId, rec: &ContractRecord) -> Effect {
    let c = &rec.contract;
    if c.kind == ContractKind::Storage {
        Effect::TakeCustody {
            contract: id,
            file: c.service_image,
            commitment: c.config,
            max_bytes: c.terms.storage_bytes,
        }
    } else {
        Effect::Stage {
            service: ServiceRef::Contract(id),
            image: c.service_image,
        }
    }
}

/// Submits `tx` unless `step` is in flight; it is sent again after [`Step::resend_ms`] (or
/// `REFUSED_RETRY_MS` once refused) while the ledger shows no effect.
pub(super) fn submit_once(
    h: &mut Host,
    step: Step,
    tx: TxKind,
    now: Timestamp,
    out: &mut Vec<Effect>,
) {
    if h.in_flight.contains_key(&step) {
        return;
    }
    h.in_flight
        .insert(step, now.saturating_add(step.resend_ms()));
    out.push(Effect::Submit(tx));
}

/// Reports a running service's activation (or a storage contract's) again, with the time
/// first reported, while the ledger still has the contract armed without it: a report refused
/// in its block, or by a full mempool, is retried by nobody else, and the customer would
/// settle the running contract `NoActivation` (THREATS C10). [`submit_once`] paces it.
pub(super) fn report_activation_again(
    h: &mut Host,
    id: ContractId,
    rec: &ContractRecord,
    now: Timestamp,
    out: &mut Vec<Effect>,
) {
    let Run::Active { since } = h.run else {
        return;
    };
    if rec.status != ContractStatus::Armed || rec.activated_at.is_some() {
        return;
    }
    let tx = TxKind::ReportActivation {
        contract: id,
        activated_at: since,
    };
    submit_once(h, Step::Activation, tx, now, out);
}

pub(super) fn listen(h: &mut Host, devices: &[u32], out: &mut Vec<Effect>) {
    if h.storage.is_none() && !h.listening {
        h.listening = true;
        out.push(Effect::Listen {
            devices: devices.to_vec(),
            on: true,
        });
    }
}

/// Starts the service (or, for storage, reports the activation: once, as the orchestrator
/// does, and again with that first time by [`report_activation_again`]).
pub(super) fn activate(
    h: &mut Host,
    id: ContractId,
    rec: &ContractRecord,
    devices: &[u32],
    now: Timestamp,
    out: &mut Vec<Effect>,
) {
    if let Some((file, _)) = h.storage {
        if rec.activated_at.is_none() && h.run == Run::Idle {
            h.run = Run::Active { since: now };
            submit_once(
                h,
                Step::Activation,
                TxKind::ReportActivation {
                    contract: id,
                    activated_at: now,
                },
                now,
                out,
            );
            out.push(Effect::Timeline(Note::new(
                "activated",
                Some(id),
                format!("holding {file}; answering storage challenges"),
            )));
        }
        return;
    }
    if h.run != Run::Idle {
        return;
    }
    h.run = Run::Starting;
    out.push(Effect::Activate {
        service: ServiceRef::Contract(id),
        devices: devices.to_vec(),
        reclaim: false,
    });
}

/// The contract closed: stop serving and give everything back.
pub(super) fn stop(id: ContractId, h: Host, out: &mut Vec<Effect>) {
    let devices = match &h.prep {
        Prep::Ready { devices } => devices.clone(),
        _ => Vec::new(),
    };
    if let Some((file, commitment)) = h.storage {
        if matches!(h.prep, Prep::Ready { .. }) {
            out.push(Effect::ReleaseCustody {
                contract: id,
                file,
                commitment,
            });
            out.push(Effect::Timeline(Note::new(
                "released",
                Some(id),
                format!("storage contract closed; {file} unpinned"),
            )));
        }
        return;
    }
    if h.run != Run::Idle {
        out.push(Effect::YieldDevices {
            devices: devices.clone(),
        });
        out.push(Effect::StopService {
            service: ServiceRef::Contract(id),
        });
        out.push(Effect::Timeline(Note::new(
            "stopped",
            Some(id),
            format!(
                "service stopped, sensors {devices:?} handed back to {}",
                h.customer.short()
            ),
        )));
    }
    if h.listening || h.run != Run::Idle {
        out.push(Effect::Listen { devices, on: false });
    }
}
