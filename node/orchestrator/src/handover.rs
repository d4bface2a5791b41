//! The handover, role by role: what the provider (migrate, arm, activate, heartbeat, stop),
//! the contract's arbitrators (watch the customer, attest) and the customer (settle, take its
//! sensors back) do as blocks, presence changes and ticks arrive. The rules themselves come from
//! `agora_contracts::duties_for`; this module performs them.

use agora_contracts::attestation::Liveness;
use agora_contracts::{
    ActivationClause, ContractId, ContractKind, ContractRecord, ContractStatus, Duty,
    HeartbeatBatch, LedgerEvent, SettleReason, TxKind, UptimeInterval, duties_for,
};
use agora_market::NodeId;
use tracing::{debug, warn};

use super::{Done, Hosted, Orchestrator};
use agora_ledger::AppliedBlock;
use agora_network::PresenceEvent;
use agora_wire::now_ms;

/// Block time may trail the local clock a little; uptime claims stay this far behind it.
const CLOCK_MARGIN_MS: u64 = 50;
/// Data-proof CIDs per heartbeat transaction.
const PROOFS_PER_HEARTBEAT: usize = 16;

impl Orchestrator {
    pub(super) async fn record(&self, id: ContractId) -> Option<ContractRecord> {
        self.ledger
            .query(move |v| v.ledger.contract(&id).cloned())
            .await
            .ok()
            .flatten()
    }

    /// Re-derives standing duties from the ledger (start, restart, lag).
    pub(super) async fn recover(&mut self) {
        let me = self.me;
        let Ok(mine) = self
            .ledger
            .query(move |v| {
                v.ledger
                    .contracts()
                    .values()
                    .filter(|r| !r.status.is_final())
                    .filter(|r| {
                        let c = &r.contract;
                        c.customer == me || c.provider == me || c.committee.contains(&me)
                    })
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        for rec in mine {
            let id = match rec.contract.id() {
                Ok(id) => id,
                Err(_) => continue,
            };
            let c = &rec.contract;
            if c.provider == me
                && !self.hosted.contains_key(&id)
                && matches!(
                    rec.status,
                    ContractStatus::Validated
                        | ContractStatus::Migrated
                        | ContractStatus::Armed
                        | ContractStatus::Active
                )
            {
                self.prepare(id, &rec, rec.status == ContractStatus::Active);
            }
            if c.committee.contains(&me)
                && c.kind == ContractKind::Storage
                && rec.status == ContractStatus::Active
            {
                self.on_duty(agora_contracts::audit_duty(id, c)).await;
            }
            if c.committee.contains(&me)
                && rec.status == ContractStatus::Active
                && let Some(duty) = agora_contracts::probe_duty(id, c)
            {
                self.on_duty(duty).await;
            }
            if c.committee.contains(&me)
                && c.kind == ContractKind::Standby
                && matches!(
                    rec.status,
                    ContractStatus::Validated | ContractStatus::Migrated | ContractStatus::Armed
                )
            {
                self.watch(id, &rec).await;
            }
        }
        self.evaluate_own().await;
    }

    pub(super) async fn on_block(&mut self, block: &AppliedBlock) {
        self.block_seen_at = now_ms();
        let me = self.me;
        let caught_up = !self.synced && block.time >= self.started_at;
        if caught_up {
            self.mark_synced(format!("ledger caught up at height {}", block.height));
        }
        let events = block.events.clone();
        let duties = self
            .ledger
            .query(move |v| duties_for(me, &v.ledger, &events))
            .await
            .unwrap_or_default();
        for duty in duties {
            self.on_duty(duty).await;
        }
        let mut own_changed = false;
        for ev in &block.events {
            match ev {
                LedgerEvent::HandoverAttested {
                    contract, customer, ..
                } if *customer == me => {
                    self.timeline.push(
                        "handover-attested-while-up",
                        Some(contract),
                        "yielding sensors",
                    );
                    own_changed = true;
                }
                LedgerEvent::StatusChanged { contract, to, .. } => {
                    let Some(rec) = self.record(*contract).await else {
                        continue;
                    };
                    let role = if rec.contract.provider == me {
                        "provider"
                    } else if rec.contract.customer == me {
                        own_changed = true;
                        "customer"
                    } else if rec.contract.committee.contains(&me) {
                        "arbitrator"
                    } else {
                        continue;
                    };
                    self.timeline
                        .push(&format!("{to:?}").to_lowercase(), Some(contract), role);
                }
                _ => {}
            }
        }
        if own_changed || caught_up {
            self.evaluate_own().await;
        }
    }

    /// Provider: gets ready to serve `c` in the background — takes custody of the file of a
    /// storage contract, stages the service image of any other (then starts it if `start`).
    /// The service runs under the manifest's limits clamped to the contract's (#13.6).
    fn prepare(&mut self, id: ContractId, rec: &ContractRecord, start: bool) {
        let c = &rec.contract;
        if c.kind == ContractKind::Storage {
            // Only this contract's committee may challenge the file (#13.7); open the gate
            // before custody is checked so a restarted provider answers its audits at once.
            self.storage.challenge_gate().insert(
                id.0,
                c.service_image,
                c.committee.clone(),
                rec.evidence_period_ms(),
            );
            self.take_custody(id, c);
        } else {
            let hb = c.qos.heartbeat_interval_ms;
            let ceiling = agora_hosting::ceiling::ContractCeiling::for_record(id, rec);
            self.stage(id, c.customer, c.service_image, hb, start, ceiling);
        }
    }

    pub(super) async fn on_duty(&mut self, duty: Duty) {
        match duty {
            Duty::Migrate { contract, .. } => {
                if let Some(rec) = self.record(contract).await {
                    self.prepare(contract, &rec, false);
                }
            }
            Duty::Arm { contract } => {
                if self.submit(TxKind::MarkArmed(contract), "arm").await
                    && let Some(h) = self.hosted.get(&contract)
                {
                    self.radio.listen(h.devices.clone(), true).await;
                }
            }
            Duty::Activate {
                contract,
                not_before,
                ..
            } => self.activate_at(contract, not_before).await,
            Duty::Stop { contract } => self.stop_hosted(contract).await,
            Duty::Watch { contract, .. } => {
                if let Some(rec) = self.record(contract).await {
                    self.watch(contract, &rec).await;
                }
            }
            Duty::Audit {
                contract,
                provider,
                file,
                commitment,
                every_ms,
            } => self.start_audit(contract, provider, file, commitment, every_ms),
            Duty::Probe {
                contract,
                provider,
                every_ms,
            } => self.start_probe(contract, provider, every_ms),
            Duty::EndProbe { contract } => self.end_probe(contract),
            Duty::EndAudit { contract } => {
                if self.audits.remove(&contract).is_some() {
                    self.timeline
                        .push("audit-ended", Some(&contract), "contract closed");
                }
            }
            Duty::Unwatch { contract, subject } => {
                if let Some(w) = self.watched.get_mut(&subject) {
                    w.contracts.remove(&contract);
                    if w.contracts.is_empty() {
                        self.watched.remove(&subject);
                        let _ = self.network.unwatch(subject).await;
                    }
                }
            }
        }
    }

    async fn watch(&mut self, contract: ContractId, rec: &ContractRecord) {
        let after = match rec.contract.activation {
            ActivationClause::OnHandover { unreachable_for_ms } => unreachable_for_ms,
            _ => 0,
        };
        let w = self.watched.entry(rec.contract.customer).or_default();
        if w.contracts.insert(contract) {
            w.unreachable_for_ms = if w.contracts.len() == 1 {
                after
            } else {
                w.unreachable_for_ms.min(after)
            };
            self.timeline.push(
                "watching",
                Some(&contract),
                format!("customer {}", rec.contract.customer.short()),
            );
            // Keep a direct connection so the liveness check is this node's own (one network
            // watch per customer, undone when its last contract is unwatched).
            if w.contracts.len() == 1
                && let Err(e) = self.network.watch(rec.contract.customer).await
            {
                debug!(error = %e, "cannot watch the customer");
            }
        }
    }

    pub(super) async fn on_done(&mut self, done: Done) {
        let (contract, customer, devices, heartbeat_ms, then_start) = match done {
            Done::Staged {
                contract,
                customer,
                devices,
                heartbeat_ms,
                then_start,
            } => (contract, customer, devices, heartbeat_ms, then_start),
            Done::Custody {
                contract,
                file,
                commitment,
                result,
            } => return self.on_custody(contract, file, commitment, result).await,
            Done::Audited {
                contract,
                verdict,
                commitment,
            } => return self.on_audited(contract, verdict, commitment).await,
            Done::Probed {
                contract,
                interval,
                outcome,
            } => return self.on_probed(contract, interval, outcome).await,
        };
        self.staging.remove(&contract);
        // Who may checkpoint these sensors (#13.4): their owner and this node.
        self.radio
            .managed_by(devices.clone(), vec![customer, self.me])
            .await;
        // Their frame keys, from their owner, now while it is alive (threat R1): at the
        // takeover it will not be.
        self.radio.fetch_keys(devices.clone(), customer).await;
        self.hosted.entry(contract).or_insert(Hosted {
            devices: devices.clone(),
            customer,
            active_since: None,
            reported_to: 0,
            last_heartbeat: 0,
            heartbeat_ms: heartbeat_ms.max(100),
            proofs_reported: Default::default(),
            readings_reported: 0,
        });
        self.timeline.push(
            "staged",
            Some(&contract),
            format!("image fetched, verified, precompiled; devices {devices:?}"),
        );
        let Some(rec) = self.record(contract).await else {
            return;
        };
        match rec.status {
            ContractStatus::Validated => {
                self.submit(TxKind::MarkMigrated(contract), "migrated")
                    .await;
            }
            ContractStatus::Migrated => {
                self.on_duty(Duty::Arm { contract }).await;
            }
            ContractStatus::Armed if rec.trigger_at.is_some() => {
                self.activate_at(contract, rec.trigger_at.unwrap_or(0))
                    .await
            }
            ContractStatus::Armed => self.radio.listen(devices, true).await,
            ContractStatus::Active if then_start || rec.activated_at.is_some() => {
                self.activate(contract).await
            }
            _ => {}
        }
    }

    /// Activates now, or schedules it when `not_before` lies ahead (a pre-contracted slot).
    pub(super) async fn activate_at(&mut self, contract: ContractId, not_before: u64) {
        if not_before > now_ms() {
            self.scheduled.insert(contract, not_before);
            self.timeline.push(
                "scheduled",
                Some(&contract),
                format!("activation at {not_before}"),
            );
        } else {
            self.activate(contract).await;
        }
    }

    /// Starts a staged service and takes its sensors over.
    async fn activate(&mut self, contract: ContractId) {
        if !self.synced {
            // Just (re)started: wait until the ledger caught up, which also means peers are
            // connected to replay the uplinks this node missed while it was down.
            self.scheduled.insert(contract, now_ms());
            return;
        }
        if let Some((file, _)) = self.stored.get(&contract).copied() {
            return self.activate_storage(contract, file).await;
        }
        let Some(h) = self.hosted.get(&contract).cloned() else {
            // Not staged yet (e.g. right after a restart): activation follows staging.
            if let Some(rec) = self.record(contract).await {
                self.prepare(contract, &rec, true);
            }
            return;
        };
        if h.active_since.is_some() {
            return;
        }
        let id = Self::service_id(&contract);
        if let Err(e) = self.services.start(&id).await {
            warn!(contract = %contract.short(), error = %e, "service did not start");
            self.timeline.push("activation-failed", Some(&contract), e);
            return;
        }
        let started = now_ms();
        let resume = self.radio.peer_covered(&h.devices).await;
        let replayed = self
            .radio
            .assign(h.devices.clone(), id, resume.clone())
            .await;
        let rec = self.record(contract).await;
        let already_reported = rec.as_ref().and_then(|r| r.activated_at);
        // After a restart, uptime is claimed only from now on (and never before what the
        // ledger already holds).
        let cursor = rec.as_ref().and_then(|r| r.last_uptime_end).unwrap_or(0);
        if let Some(r) = &rec {
            self.serving.insert(contract, r.contract.committee.clone());
        }
        if let Some(h) = self.hosted.get_mut(&contract) {
            h.active_since = Some(started);
            h.reported_to = started.max(cursor);
            h.last_heartbeat = started;
        }
        let latency = now_ms().saturating_sub(self.block_seen_at);
        self.timeline.push_latency(
            "activated",
            Some(&contract),
            format!(
                "service started and sensors taken over {latency} ms after the handover block \
                 arrived (resuming after {resume:?}; {replayed} buffered readings replayed)"
            ),
            Some(latency),
        );
        if already_reported.is_none() {
            self.submit(
                TxKind::ReportActivation {
                    contract,
                    activated_at: started,
                },
                "activation",
            )
            .await;
        }
    }

    async fn stop_hosted(&mut self, contract: ContractId) {
        self.storage.challenge_gate().remove(&contract.0);
        if let Some((file, commitment)) = self.stored.remove(&contract) {
            return self.release_custody(contract, file, commitment).await;
        }
        self.serving.remove(&contract);
        let Some(h) = self.hosted.remove(&contract) else {
            return;
        };
        self.radio.release(h.devices.clone()).await;
        self.radio.listen(h.devices.clone(), false).await;
        let id = Self::service_id(&contract);
        if let Err(e) = self.services.stop(&id).await {
            debug!(error = %e, "service stop");
        }
        self.timeline.push(
            "stopped",
            Some(&contract),
            format!(
                "service stopped, sensors {:?} handed back to {}",
                h.devices,
                h.customer.short()
            ),
        );
    }

    pub(super) async fn on_presence(&mut self, p: PresenceEvent) {
        let now = now_ms();
        match p {
            PresenceEvent::Down {
                node, last_seen, ..
            } => {
                let Some(w) = self.watched.get_mut(&node) else {
                    return;
                };
                w.down_since = Some(last_seen);
                let due = last_seen
                    .saturating_add(w.unreachable_for_ms)
                    .saturating_add(20);
                w.reattest_at = (due > now).then_some(due);
                self.attest(node, Liveness::Unreachable { since: last_seen })
                    .await;
            }
            PresenceEvent::Up { node, .. } => {
                let Some(w) = self.watched.get_mut(&node) else {
                    return;
                };
                if w.down_since.take().is_some() {
                    w.reattest_at = None;
                    self.attest(node, Liveness::Reachable).await;
                }
            }
        }
    }

    async fn attest(&self, subject: NodeId, liveness: Liveness) {
        let what = match liveness {
            Liveness::Unreachable { .. } => "attested-down",
            Liveness::Reachable => "attested-up",
        };
        if self
            .submit(TxKind::Attest { subject, liveness }, what)
            .await
        {
            self.timeline
                .push(what, None, format!("{} {liveness:?}", subject.short()));
        }
    }

    /// The ledger is current: from now on this node acts on it (its own sensors, activations).
    fn mark_synced(&mut self, how: String) {
        self.synced = true;
        self.timeline.push("synced", None, how);
    }

    pub(super) async fn on_tick(&mut self) {
        // A quiet chain may not produce a fresh block for a while: the ledger task also finds
        // out from the arbitrators that nothing newer was decided.
        if !self.synced
            && let Ok(Some(height)) = self
                .ledger
                .query(|v| v.caught_up.then(|| v.ledger.height()))
                .await
        {
            self.mark_synced(format!(
                "ledger at the chain's tip at height {height} (the arbitrators have nothing newer)"
            ));
            self.evaluate_own().await;
        }
        let now = now_ms();
        let due: Vec<ContractId> = self
            .scheduled
            .iter()
            .filter(|(_, t)| self.synced && **t <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in due {
            self.scheduled.remove(&c);
            self.activate(c).await;
        }
        let due: Vec<(NodeId, u64)> = self
            .watched
            .iter_mut()
            .filter_map(|(n, w)| {
                let at = w.reattest_at.filter(|t| *t <= now)?;
                let _ = at;
                w.reattest_at = None;
                Some((*n, w.down_since?))
            })
            .collect();
        for (node, since) in due {
            self.attest(node, Liveness::Unreachable { since }).await;
        }
        let beating: Vec<ContractId> = self
            .hosted
            .iter()
            .filter(|(_, h)| h.active_since.is_some() && now >= h.last_heartbeat + h.heartbeat_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in beating {
            self.heartbeat(id, now).await;
        }
        self.run_due_audits(now);
        self.run_due_probes(now).await;
        self.settle_due(now).await;
    }

    /// Reports uptime, readings and data proofs of an active hosted contract.
    async fn heartbeat(&mut self, contract: ContractId, now: u64) {
        let Some(h) = self.hosted.get(&contract).cloned() else {
            return;
        };
        let id = Self::service_id(&contract);
        let running = self.services.running(&id).await;
        let status = self.radio.status().await;
        let processed: u64 = status
            .devices
            .iter()
            .filter(|d| d.service.as_deref() == Some(id.as_str()) || h.devices.contains(&d.device))
            .map(|d| d.processed)
            .sum();
        let proofs: Vec<String> = status
            .checkpoints
            .iter()
            .filter(|c| c.mine && c.checkpoint.service == id && !c.checkpoint.proof.is_empty())
            .map(|c| c.checkpoint.proof.clone())
            .filter(|p| !h.proofs_reported.contains(p))
            .take(PROOFS_PER_HEARTBEAT)
            .collect();
        let to = now.saturating_sub(CLOCK_MARGIN_MS);
        let intervals = if running && to > h.reported_to {
            vec![UptimeInterval {
                from: h.reported_to,
                to,
            }]
        } else {
            Vec::new()
        };
        let batch = HeartbeatBatch {
            intervals: intervals.clone(),
            readings_processed: processed.saturating_sub(h.readings_reported),
            data_proofs: proofs.iter().filter_map(|p| p.parse().ok()).collect(),
        };
        let ok = self
            .submit(TxKind::Heartbeats { contract, batch }, "heartbeats")
            .await;
        let cursor = if ok {
            0
        } else {
            // Refused (e.g. an overlapping interval): resynchronise with the ledger.
            self.record(contract)
                .await
                .and_then(|r| r.last_uptime_end)
                .unwrap_or(0)
        };
        if let Some(h) = self.hosted.get_mut(&contract) {
            h.last_heartbeat = now;
            h.reported_to = h.reported_to.max(cursor);
            if ok {
                if let Some(iv) = intervals.last() {
                    h.reported_to = iv.to;
                }
                h.readings_reported = processed;
                h.proofs_reported.extend(proofs);
            }
        }
        if let Some(rec) = self.record(contract).await
            && rec.contract.kind == ContractKind::Hosted
        {
            self.submit(TxKind::SettleUptime(contract), "uptime payment")
                .await;
        }
    }

    /// Settles contracts whose moment has come: the customer is back after a handover, an
    /// activation deadline passed, or the term ended.
    async fn settle_due(&mut self, now: u64) {
        let me = self.me;
        let Ok(recs) = self
            .ledger
            .query(move |v| {
                v.ledger
                    .contracts()
                    .iter()
                    .filter(|(_, r)| {
                        (r.contract.customer == me || r.contract.provider == me)
                            && !r.status.is_final()
                    })
                    .map(|(id, r)| (*id, r.clone()))
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        for (id, rec) in recs {
            if self.settling.get(&id).is_some_and(|t| now < t + 2_000) {
                continue;
            }
            let customer = rec.contract.customer == me;
            let ended = rec.window_end().is_some_and(|e| now >= e);
            let reason = match rec.status {
                ContractStatus::Active
                    if customer && rec.contract.kind == ContractKind::Standby =>
                {
                    Some(SettleReason::CustomerBack)
                }
                ContractStatus::Active | ContractStatus::Armed if ended => {
                    Some(SettleReason::DurationEnded)
                }
                ContractStatus::Validated | ContractStatus::Migrated | ContractStatus::Armed
                    if customer && rec.activation_deadline().is_some_and(|d| now > d) =>
                {
                    Some(SettleReason::NoActivation)
                }
                _ => None,
            };
            if let Some(reason) = reason {
                self.settling.insert(id, now);
                if self
                    .submit(
                        TxKind::Settle {
                            contract: id,
                            reason,
                        },
                        "settle",
                    )
                    .await
                {
                    self.timeline
                        .push("settle-requested", Some(&id), format!("{reason:?}"));
                }
            }
        }
    }
}
