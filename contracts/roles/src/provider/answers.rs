//! The provider's answers to its effects (staged, custody, activation, metering, submission)
//! and its heartbeats.

use agora_market::Timestamp;
use cid::Cid;

use super::steps::submit_once;
use super::{Host, Prep, Provider, Run, Step};
use crate::io::{Effect, Note, ServiceRef};
use crate::staging::stage_retry_at;
use crate::{REFUSED_RETRY_MS, View, uptime_collectable};
use agora_contracts::contract::ContractId;
use agora_contracts::ledger::TxKind;
use agora_contracts::lifecycle::ContractStatus;

/// Whether a provider that could not take custody of a storage contract's file calls the
/// contract off, given its status on the ledger. A commitment that does not describe the file
/// would fail every honest answer to a challenge, so the provider cancels instead of being
/// slashed for it, while the ledger still lets it: validated or migrated
/// ([`ContractStatus::provider_may_cancel`]; THREATS C15). Once armed the ledger refuses a
/// provider's cancel, so none is sent (both copies of this rule used to send one while armed,
/// which only spent a transaction). The node's orchestrator, which still takes custody itself,
/// decides by this rule too.
pub fn custody_refusal_cancels(status: ContractStatus) -> bool {
    status.provider_may_cancel()
}

/// The provider gives up staging `id`'s image (THREATS C6): it says so on the timeline
/// (`stage-failed`, as the node's orchestrator does) and calls the contract off while the ledger
/// still lets it back out, so a customer naming an image nobody can run (one it withholds, or a
/// broken one) no longer gets the provider slashed for not activating. Past that point it is
/// only recorded.
pub(super) fn give_up_staging(
    h: &mut Host,
    id: ContractId,
    v: &View,
    why: String,
    out: &mut Vec<Effect>,
) {
    h.prep = Prep::Failed;
    out.push(Effect::Timeline(Note::new("stage-failed", Some(id), why)));
    let cancellable = v
        .records
        .get(&id)
        .is_some_and(|r| r.contract.provider == v.me && r.status.provider_may_cancel());
    if cancellable {
        submit_once(h, Step::Cancel, TxKind::Cancel(id), v.now, out);
    }
}

impl Provider {
    pub(super) fn heartbeat_if_due(&mut self, v: &View, id: ContractId, out: &mut Vec<Effect>) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        let Prep::Ready { devices } = &h.prep else {
            return;
        };
        if h.storage.is_some() || !matches!(h.run, Run::Active { .. }) || h.metering {
            return;
        }
        if !h.beat.due(v.now) {
            return;
        }
        h.metering = true;
        h.beat.begin(v.now);
        out.push(Effect::Meter {
            contract: id,
            service: ServiceRef::Contract(id),
            devices: devices.clone(),
        });
    }

    pub(super) fn on_ready(&mut self, id: ContractId, devices: Vec<u32>, out: &mut Vec<Effect>) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        if !matches!(h.prep, Prep::Preparing { .. }) {
            return;
        }
        let note = match h.storage {
            Some((file, commitment)) => Note::new(
                "stored",
                Some(id),
                format!("file {file} fetched, verified against commitment {commitment}, pinned"),
            ),
            None => Note::new(
                "staged",
                Some(id),
                format!("image fetched, verified, precompiled; devices {devices:?}"),
            ),
        };
        h.prep = Prep::Ready { devices };
        out.push(Effect::Timeline(note));
    }

    /// A staging attempt failed: retried after a back-off, or given up ([`stage_retry_at`]:
    /// a permanent failure, the last attempt, or a retry that would start past the deadline).
    pub(super) fn on_stage_failed(
        &mut self,
        v: &View,
        id: ContractId,
        error: &str,
        permanent: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        let Prep::Preparing { attempts, .. } = h.prep else {
            return;
        };
        let attempts = attempts.saturating_add(1);
        let Some(retry_at) = stage_retry_at(attempts, permanent, v.now, h.stage_deadline) else {
            let why = format!("gave up after {attempts} attempt(s): {error}");
            give_up_staging(h, id, v, why, out);
            return;
        };
        h.prep = Prep::Preparing {
            attempts,
            retry_at: Some(retry_at),
        };
        out.push(Effect::Timeline(Note::new(
            "migration-retry",
            Some(id),
            error,
        )));
    }

    pub(super) fn on_custody_refused(
        &mut self,
        v: &View,
        id: ContractId,
        error: &str,
        out: &mut Vec<Effect>,
    ) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        h.prep = Prep::Failed;
        out.push(Effect::Timeline(Note::new(
            "custody-refused",
            Some(id),
            error,
        )));
        let cancellable = v
            .records
            .get(&id)
            .is_some_and(|r| custody_refusal_cancels(r.status));
        if cancellable {
            submit_once(h, Step::Cancel, TxKind::Cancel(id), v.now, out);
        }
    }

    pub(super) fn on_activated(
        &mut self,
        v: &View,
        id: ContractId,
        started_at: Timestamp,
        replayed: u64,
        out: &mut Vec<Effect>,
    ) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        if h.run != Run::Starting {
            return;
        }
        let rec = v.records.get(&id);
        // After a restart, uptime is claimed only from now on, and never before what the
        // ledger already holds.
        h.run = Run::Active { since: started_at };
        h.beat
            .started(started_at, rec.and_then(|r| r.last_uptime_end), v.now);
        let latency = v.now.saturating_sub(v.block_seen_at);
        out.push(Effect::Timeline(Note {
            latency_ms: Some(latency),
            ..Note::new(
                "activated",
                Some(id),
                format!(
                    "service started and sensors taken over {latency} ms after the handover \
                     block arrived ({replayed} buffered readings replayed)"
                ),
            )
        }));
        if rec.is_some_and(|r| r.activated_at.is_none()) {
            submit_once(
                h,
                Step::Activation,
                TxKind::ReportActivation {
                    contract: id,
                    activated_at: started_at,
                },
                v.now,
                out,
            );
        }
    }

    pub(super) fn on_metered(
        &mut self,
        v: &View,
        id: ContractId,
        running: bool,
        processed: u64,
        proofs: &[Cid],
        out: &mut Vec<Effect>,
    ) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        h.metering = false;
        let Run::Active { since } = h.run else {
            return;
        };
        let rec = v.records.get(&id);
        let batch = h
            .beat
            .batch(v.now, running, processed, proofs, Some(since), rec);
        out.push(Effect::Submit(TxKind::Heartbeats {
            contract: id,
            batch,
        }));
        if uptime_collectable(rec) {
            out.push(Effect::Submit(TxKind::SettleUptime(id)));
        }
    }

    pub(super) fn on_submitted(&mut self, v: &View, tx: &TxKind, accepted: bool) {
        let (id, step) = match tx {
            TxKind::MarkMigrated(id) => (*id, Some(Step::Migrated)),
            TxKind::MarkArmed(id) => (*id, Some(Step::Armed)),
            TxKind::ReportActivation { contract, .. } => (*contract, Some(Step::Activation)),
            TxKind::Cancel(id) => (*id, Some(Step::Cancel)),
            TxKind::Heartbeats { contract, .. } => (*contract, None),
            _ => return,
        };
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        match step {
            // Refused (a full mempool, no connection): ask again a little later.
            Some(step) if !accepted => {
                h.in_flight
                    .insert(step, v.now.saturating_add(REFUSED_RETRY_MS));
            }
            Some(_) => {}
            None => h.beat.answered(accepted),
        }
    }
}
