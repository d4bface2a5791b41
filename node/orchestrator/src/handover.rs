//! The handover, for the provider (migrate, arm, activate, heartbeat, stop) and the customer
//! (take its sensors back), as blocks and ticks arrive. The rules themselves come from
//! `agora_contracts::duties_for`; this module performs them. The contract's arbitrators' side
//! (watch the customer, attest, probe, challenge) and settlement are the role machine's,
//! driven in `roles`.

use agora_contracts::{
    ContractId, ContractKind, ContractRecord, ContractStatus, Duty, LedgerEvent, TxKind, duties_for,
};
use agora_roles::instances::ARM_RECHECK_MS;
use agora_roles::{Arming, Heartbeat, Input, arm_give_up, holding_instances};
use cid::Cid;
use tracing::{debug, warn};

use super::{Done, Hosted, Orchestrator};
use agora_contracts::state::lineage::{Activation, Ending};
use agora_ledger::AppliedBlock;
use agora_wire::now_ms;

impl Orchestrator {
    pub(super) async fn record(&self, id: ContractId) -> Option<ContractRecord> {
        self.ledger
            .query(move |v| v.ledger.contract(&id).cloned())
            .await
            .ok()
            .flatten()
    }

    /// Re-derives standing duties from the ledger (start, restart, lag): the role machine
    /// from a rescan, the provider's from the contracts it serves.
    pub(super) async fn recover(&mut self) {
        if let Some(facts) = self.facts(Vec::new()).await {
            self.drive(Input::Ledger(facts)).await;
        }
        // The radio's device claims came back from its file: those of contracts that ended
        // while this node was down go now (their devices free, their keys forgotten). A rescan
        // after a lagged block channel may be the one that finds the node caught up (the
        // machine takes a rescan past its height as a block): no later block or tick sees that
        // change, so the chunk trees of custodies that ended meanwhile go here too (C25).
        self.let_go_of_ended().await;
        let me = self.me;
        let Ok(mine) = self
            .ledger
            .query(move |v| {
                v.ledger
                    .contracts()
                    .values()
                    .filter(|r| !r.status.is_final() && r.contract.provider == me)
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
            if !self.hosted.contains_key(&id)
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
        }
        self.name_key_holders().await;
        self.evaluate_own().await;
    }

    pub(super) async fn on_block(&mut self, block: &AppliedBlock) {
        self.block_seen_at = now_ms();
        let me = self.me;
        let caught_up = match self.facts(block.events.clone()).await {
            Some(facts) => self.drive(Input::Ledger(facts)).await,
            None => false,
        };
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
        let mut provided_ended = false;
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
                LedgerEvent::ContractRegistered { contract, .. } => {
                    self.warm_probe_image(*contract).await;
                }
                LedgerEvent::StatusChanged { contract, to, .. } => {
                    let Some(rec) = self.record(*contract).await else {
                        continue;
                    };
                    provided_ended |= super::retire::ends_a_provided_contract(me, &rec, *to);
                    self.new_manager_of_followed(&rec).await;
                    // The arbitrator's entries are the role machine's.
                    let role = if rec.contract.provider == me {
                        "provider"
                    } else if rec.contract.customer == me {
                        own_changed = true;
                        "customer"
                    } else {
                        continue;
                    };
                    self.timeline
                        .push(&format!("{to:?}").to_lowercase(), Some(contract), role);
                }
                _ => {}
            }
        }
        if block
            .events
            .iter()
            .any(|e| matches!(e, LedgerEvent::StatusChanged { .. }))
        {
            self.name_key_holders().await;
            self.retain_probe_images().await;
        }
        if caught_up || provided_ended {
            self.let_go_of_ended().await;
        }
        if own_changed || caught_up {
            self.evaluate_own().await;
        }
    }

    /// The contracts whose services here share `contract`'s module and instance group, and how
    /// many instances the module allows: the host's word, with service ids that are not
    /// contract ids (the own service's) left out. [`Self::arming_collides`] weighs them, as
    /// the role machine does when answered `Input::InstanceRivals`.
    pub(super) async fn instance_rivals(&self, contract: ContractId) -> (u32, Vec<ContractId>) {
        let (max, rivals) = self
            .services
            .instance_rivals(&Self::service_id(&contract))
            .await;
        (max, rivals.iter().filter_map(|s| s.parse().ok()).collect())
    }

    /// Provider, before arming `contract`: whether the same customer's other contracts here of
    /// the same module already hold every instance its `max_instances` allows (armed, or
    /// active and not ending, or staged and registered first), so its service could not start
    /// when its activation comes and the customer could have it slashed for that (THREATS
    /// C5, the customer's own contracts). If so it calls the contract off, which it still may
    /// before arming, and says so on the timeline (`arm-refused`): `true`. When the instance
    /// is only held by contracts that are ending (a settlement pending: their service runs
    /// until it is final), arming waits until they are final ([`Self::recheck_arming`]; a
    /// stop-first variant change, or a customer ending one contract to start another of the
    /// same module at once) and this returns `true` too. The rule is `agora_roles::instances`,
    /// which the role machine's provider decides by too.
    async fn arming_collides(&mut self, contract: ContractId) -> bool {
        let (max, rivals) = self.instance_rivals(contract).await;
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if rivals.len() < max {
            self.stop_waiting_to_arm(&contract);
            return false;
        }
        let Ok(Some((holding, activation))) = self
            .ledger
            .query(move |v| {
                let mine = v.ledger.contract(&contract)?;
                let others: Vec<&ContractRecord> = rivals
                    .iter()
                    .filter_map(|id| v.ledger.contract(id))
                    .collect();
                Some((holding_instances(mine, &others), mine.contract.activation))
            })
            .await
        else {
            self.stop_waiting_to_arm(&contract);
            return false;
        };
        let reason = match holding.arming(max) {
            Arming::Refuse => format!(
                "the same customer's {} other contract(s) of this module hold the {max} \
                 instance(s) it may run here: its service could not start, so it is called off \
                 before it is armed",
                holding.held
            ),
            Arming::Arm => {
                self.stop_waiting_to_arm(&contract);
                return false;
            }
            Arming::Wait => {
                let now = now_ms();
                let give_up = *self
                    .arm_give_up
                    .entry(contract)
                    .or_insert(arm_give_up(activation, now));
                let waiting = self.arm_waiting.contains_key(&contract);
                if now < give_up {
                    self.arm_waiting
                        .insert(contract, now.saturating_add(ARM_RECHECK_MS));
                    if !waiting {
                        self.timeline.push(
                            "arm-waiting",
                            Some(&contract),
                            format!(
                                "{} of the same customer's contracts of this module are ending \
                                 and their service still runs here: arming waits until they \
                                 are final",
                                holding.ending
                            ),
                        );
                    }
                    return true;
                }
                "the same customer's ending contract(s) of this module still held its instance \
                 here when the contract had to be armed: called off before it is armed"
                    .to_string()
            }
        };
        self.stop_waiting_to_arm(&contract);
        warn!(contract = %contract.short(), held = holding.held, ending = holding.ending, max, "not arming: the customer's other contracts of this module hold its instances here");
        self.timeline.push("arm-refused", Some(&contract), reason);
        self.submit(TxKind::Cancel(contract), "cancel").await;
        true
    }

    /// `contract` no longer waits to be armed (armed, called off, or free to arm).
    fn stop_waiting_to_arm(&mut self, contract: &ContractId) {
        self.arm_waiting.remove(contract);
        self.arm_give_up.remove(contract);
    }

    /// Provider, before arming `contract`: whether its service depends on a name its
    /// customer has not staged here (or on a cycle), so it could not start when its
    /// activation comes and the customer could have this provider slashed for that (THREATS
    /// C14). If so it calls the contract off, which it still may before arming
    /// (`arm-refused`), and returns `true`.
    async fn depends_on_nothing_here(&mut self, contract: ContractId) -> bool {
        let Some(why) = self
            .services
            .unresolved_dependency(&Self::service_id(&contract))
            .await
        else {
            return false;
        };
        warn!(contract = %contract.short(), %why, "not arming: its service could not start here");
        self.timeline.push(
            "arm-refused",
            Some(&contract),
            format!(
                "{why}: its service could not start here, so it is called off before it is armed"
            ),
        );
        self.submit(TxKind::Cancel(contract), "cancel").await;
        true
    }

    /// Provider: arms again the contracts whose arming waits for the same customer's ending
    /// contracts of the module (each at most every [`ARM_RECHECK_MS`]), while the ledger
    /// still shows them `Migrated`.
    pub(super) async fn recheck_arming(&mut self, now: u64) {
        for contract in super::take_due(&mut self.arm_waiting, now) {
            let migrated = self
                .record(contract)
                .await
                .is_some_and(|r| r.status == ContractStatus::Migrated);
            if migrated {
                // Back in `arm_waiting` if it still has to wait.
                self.arm_waiting.insert(contract, now);
                self.on_duty(Duty::Arm { contract }).await;
                if self.arm_waiting.get(&contract) == Some(&now) {
                    self.arm_waiting.remove(&contract);
                }
            } else {
                self.arm_give_up.remove(&contract);
            }
        }
    }

    /// Provider: the contract's image cannot be staged here (it does not decode, verify or
    /// compile, it asks for more than this host allows, or nobody served it while the
    /// contract left time). The contract is called off while the ledger still lets the
    /// provider back out (before it committed to stand by): a customer naming an image nobody
    /// can run — one it withholds, or a broken one — no longer gets the provider slashed for
    /// not activating (THREATS C6). Past that point it is only recorded.
    async fn on_stage_failed(&mut self, contract: ContractId, reason: String) {
        warn!(contract = %contract.short(), %reason, "service image not staged; calling the contract off");
        self.timeline
            .push("stage-failed", Some(&contract), reason.as_str());
        let Some(rec) = self.record(contract).await else {
            return;
        };
        if rec.contract.provider == self.me && rec.status.provider_may_cancel() {
            self.submit(TxKind::Cancel(contract), "cancel").await;
        }
    }

    /// A contract of a customer whose devices this node follows names their new manager: the
    /// radio counts that provider's checkpoints for them from now on. Without this, an edge
    /// that once provided for the devices refused the checkpoints of every later provider as
    /// "not a manager", and its account of who processed which reading had holes.
    async fn new_manager_of_followed(&mut self, rec: &ContractRecord) {
        if let Some((devices, provider)) = self.device_owners.manager_of(self.me, &rec.contract) {
            self.radio.managed_by(devices, vec![provider]).await;
        }
    }

    /// Provider: gets ready to serve `c` in the background — takes custody of the file of a
    /// storage contract, stages the service image of any other (then starts it if `start`).
    /// The service runs under the manifest's limits clamped to the contract's (#13.6).
    fn prepare(&mut self, id: ContractId, rec: &ContractRecord, start: bool) {
        let c = &rec.contract;
        // Half the report grace past the activation deadline, while this provider may still
        // call the contract off (the role machine's rule, THREATS C6).
        let give_up_at =
            agora_roles::prepare_deadline(rec, agora_contracts::ledger::ACTIVATION_REPORT_GRACE_MS);
        if c.kind == ContractKind::Storage {
            // Only this contract's committee may challenge the file (#13.7); open the gate
            // before custody is checked so a restarted provider answers its audits at once.
            self.storage.challenge_gate().insert(
                id.0,
                c.service_image,
                c.committee.clone(),
                rec.evidence_period_ms(),
            );
            self.take_custody(id, c, give_up_at);
        } else {
            let hb = c.qos.heartbeat_interval_ms;
            let ceiling = agora_hosting::ceiling::ContractCeiling::for_record(id, rec);
            self.stage(
                id,
                c.customer,
                c.service_image,
                hb,
                start,
                ceiling,
                give_up_at,
            );
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
                if self.hosted.contains_key(&contract)
                    && (self.depends_on_nothing_here(contract).await
                        || self.arming_collides(contract).await)
                {
                    return;
                }
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
            // The arbitrator's duties are the role machine's (`roles`).
            Duty::Watch { .. }
            | Duty::Unwatch { .. }
            | Duty::Audit { .. }
            | Duty::EndAudit { .. }
            | Duty::Probe { .. }
            | Duty::EndProbe { .. } => {}
        }
    }

    pub(super) async fn on_done(&mut self, done: Done) {
        let (contract, customer, devices, name, heartbeat_ms, then_start) = match done {
            Done::Staged {
                contract,
                customer,
                devices,
                name,
                heartbeat_ms,
                then_start,
            } => (contract, customer, devices, name, heartbeat_ms, then_start),
            Done::StageFailed { contract, reason } => {
                self.staging.remove(&contract);
                return self.on_stage_failed(contract, reason).await;
            }
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
        // Claims of contracts that ended (while this node was down, too: claims outlive a
        // restart) must not hold their devices against this one.
        self.release_ended_claims().await;
        // The devices become the customer's here, unless they are this node's or another
        // customer's live contract here names them, or the customer would hold more than its
        // share of devices here: then the contract is not served (its service would read
        // another party's sensors, and its customer could hand this node firmware jobs and
        // keys for them; device audit of session 50, THREATS R8/R9).
        if let Err(refused) = self
            .radio
            .claim_devices(contract, customer, devices.clone())
            .await
        {
            // Its staged service and image go like any ended contract's.
            self.retire(contract, now_ms());
            return self.on_stage_failed(contract, refused.to_string()).await;
        }
        // Who may checkpoint these sensors (#13.4): their owner and this node.
        self.radio
            .managed_by(devices.clone(), vec![customer, self.me])
            .await;
        self.device_owners.follow(customer, &devices);
        // The customer's service state, with the readings it reflects, from the customer only
        // (issue #15); restored at the takeover.
        self.radio
            .accept_state(contract, customer, devices.clone())
            .await;
        // Their frame keys, from their owner, now while it is alive (threat R1): at the
        // takeover it will not be.
        self.radio.fetch_keys(devices.clone(), customer).await;
        self.hosted.entry(contract).or_insert(Hosted {
            devices: devices.clone(),
            name,
            customer,
            active_since: None,
            // One heartbeat transaction per evidence round at most (`Heartbeat::new`).
            beat: Heartbeat::new(heartbeat_ms),
            activation_sent: 0,
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
        if !self.roles.synced() {
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
        // A start-first upgrade: another contract of the line holds the devices and state
        // until it ends (`stop_hosted` switches them over); this one runs without devices.
        let standby = match self.lines.activate(contract, h.customer, &h.name) {
            Activation::Standby { holder } => Some(holder),
            Activation::Hold => None,
        };
        let state = match standby {
            None => self.restore_state(contract, &id).await,
            Some(_) => None,
        };
        if let Err(e) = self.services.start(&id).await {
            // Tried again while the contract still asks for it (the tick checks the ledger):
            // a start refused for a moment — the previous contract's instance of the same
            // module still stopping at a stop-first variant change (`max_instances`) — cost
            // an honest provider its stake (`NoActivation`), and its deployer a minute.
            warn!(contract = %contract.short(), error = %e, "service did not start; trying again");
            self.timeline.push(
                "activation-failed",
                Some(&contract),
                format!(
                    "{e}; trying again in {} ms",
                    agora_roles::ACTIVATION_RETRY_MS
                ),
            );
            self.scheduled
                .insert(contract, now_ms() + agora_roles::ACTIVATION_RETRY_MS);
            return;
        }
        let started = now_ms();
        let (resume, replayed) = match standby {
            None => {
                let peer = self.radio.peer_covered(&h.devices).await;
                // Readings resume after what the restored state reflects (which reaches at
                // least as far as the customer's last checkpoint heard here): none is applied
                // to it twice.
                let (resume, behind) = agora_contracts::state::resume_after(state.as_ref(), &peer);
                if !behind.is_empty() {
                    warn!(contract = %contract.short(), ?behind, "checkpoints run past the restored state: it misses those readings");
                }
                let replayed = self
                    .radio
                    .assign(h.devices.clone(), id, resume.clone())
                    .await;
                (resume, replayed)
            }
            Some(holder) => {
                self.timeline.push(
                    "standby-started",
                    Some(&contract),
                    format!(
                        "service {} started beside contract {} of the same line, without devices; \
                         its devices {:?} and key-value state move here when that one ends",
                        h.name,
                        holder.short(),
                        h.devices
                    ),
                );
                (Default::default(), 0)
            }
        };
        let rec = self.record(contract).await;
        // The way back: a standby contract's state goes to the customer when it comes back.
        if standby.is_none()
            && rec
                .as_ref()
                .is_some_and(|r| r.contract.kind == ContractKind::Standby)
        {
            self.radio
                .state_back(Self::service_id(&contract), contract, h.customer)
                .await;
        }
        let already_reported = rec.as_ref().and_then(|r| r.activated_at);
        // After a restart, uptime is claimed only from now on (and never before what the
        // ledger already holds).
        let cursor = rec.as_ref().and_then(|r| r.last_uptime_end);
        if let Some(r) = &rec {
            self.serving.insert(contract, r.contract.committee.clone());
        }
        if let Some(h) = self.hosted.get_mut(&contract) {
            h.active_since = Some(started);
            // The next heartbeat is due a period after the start.
            h.beat.started(started, cursor, started);
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
            self.report_activation(contract, started, now_ms()).await;
        }
    }

    /// Submits `contract`'s activation report (started at `started`) and notes when, so
    /// [`Self::resend_activation_reports`] sends it again while the ledger has not applied it.
    async fn report_activation(&mut self, contract: ContractId, started: u64, now: u64) {
        if let Some(h) = self.hosted.get_mut(&contract) {
            h.activation_sent = now;
        }
        self.submit(
            TxKind::ReportActivation {
                contract,
                activated_at: started,
            },
            "activation",
        )
        .await;
    }

    /// Provider, at the takeover: loads the customer's newest state snapshot (if one came)
    /// into the service's key-value store before it starts.
    async fn restore_state(
        &mut self,
        contract: ContractId,
        id: &str,
    ) -> Option<agora_contracts::state::StateSnapshot> {
        let s = self.radio.take_state(contract).await?;
        self.load_state(id, s, "the customer's state").await
    }

    /// Loads snapshot `s` (`whose` state it is, for the timeline) into service `id`'s
    /// key-value store (staged, not running): `Some(s)` once loaded (timeline
    /// `state-restored`), `None` if the store refused it (`state-not-restored`).
    pub(super) async fn load_state(
        &mut self,
        id: &str,
        s: agora_contracts::state::StateSnapshot,
        whose: &str,
    ) -> Option<agora_contracts::state::StateSnapshot> {
        let entries = s
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        match self.services.kv_replace(id, entries).await {
            Ok(()) => {
                self.timeline.push(
                    "state-restored",
                    Some(&s.contract),
                    format!(
                        "{} keys ({} bytes) of {whose}, reflecting readings up to {:?}",
                        s.entries.len(),
                        s.size_bytes(),
                        s.coverage
                    ),
                );
                Some(s)
            }
            Err(e) => {
                warn!(contract = %s.contract.short(), error = %e, "{whose} not restored");
                self.timeline
                    .push("state-not-restored", Some(&s.contract), e);
                None
            }
        }
    }

    pub(super) async fn stop_hosted(&mut self, contract: ContractId) {
        if self.end_custody(contract).await {
            return;
        }
        self.serving.remove(&contract);
        self.radio.forget_state(contract).await;
        let Some(h) = self.hosted.remove(&contract) else {
            return;
        };
        self.radio.release_devices(contract).await;
        match self.lines.end(&contract) {
            Ending::Alone => {
                self.radio.release(h.devices.clone()).await;
                self.radio.listen(h.devices.clone(), false).await;
            }
            // It held no device: the line's holder keeps them.
            Ending::Standby => {}
            Ending::Switch { to } => self.switch_to(contract, &h, to).await,
        }
        let id = Self::service_id(&contract);
        if let Err(e) = self.services.stop(&id).await {
            debug!(error = %e, "service stop");
        }
        self.retire(contract, now_ms());
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

    pub(super) async fn on_tick(&mut self) {
        // A quiet chain may not produce a fresh block for a while: the ledger task also finds
        // out from the arbitrators that nothing newer was decided.
        if !self.roles.synced()
            && let Ok(Some(height)) = self
                .ledger
                .query(|v| v.caught_up.then(|| v.ledger.height()))
                .await
            && self.drive(Input::CaughtUp { height }).await
        {
            self.let_go_of_ended().await;
            self.evaluate_own().await;
        }
        self.reclaim_due().await;
        // The arbitrator's re-attestations, probes (and their timeouts) and challenges.
        self.drive(Input::Tick).await;
        self.flush_probe_results(now_ms()).await;
        self.retire_due(now_ms()).await;
        self.recheck_arming(now_ms()).await;
        let now = now_ms();
        let synced = self.roles.synced();
        let due = if synced {
            super::take_due(&mut self.scheduled, now)
        } else {
            Vec::new()
        };
        for c in due {
            // Only while the contract still asks for a start (a retry may outlive it).
            let wanted = self.record(c).await.is_some_and(|r| {
                matches!(r.status, ContractStatus::Armed | ContractStatus::Active)
            });
            if wanted {
                self.activate(c).await;
            }
        }
        self.resend_activation_reports(now).await;
        self.resend_storage_activations(now).await;
        let beating: Vec<ContractId> = self
            .hosted
            .iter()
            .filter(|(_, h)| h.active_since.is_some() && h.beat.due(now))
            .map(|(id, _)| *id)
            .collect();
        for id in beating {
            self.heartbeat(id, now).await;
        }
    }

    /// Sends an activation report again while the ledger has not applied it (a block whose
    /// time trailed this node's clock, or a lost transaction, refused or dropped the first):
    /// without it the customer settles the running contract `NoActivation` (THREATS C10).
    async fn resend_activation_reports(&mut self, now: u64) {
        let due: Vec<(ContractId, u64)> = self
            .hosted
            .iter()
            .filter(|(_, h)| {
                h.activation_sent > 0 && now >= h.activation_sent + super::ACTIVATION_RESEND_MS
            })
            .filter_map(|(id, h)| h.active_since.map(|s| (*id, s)))
            .collect();
        for (contract, started) in due {
            let pending = self
                .record(contract)
                .await
                .is_some_and(|r| r.activated_at.is_none() && r.status == ContractStatus::Armed);
            if !pending {
                if let Some(h) = self.hosted.get_mut(&contract) {
                    h.activation_sent = 0;
                }
                continue;
            }
            warn!(contract = %contract.short(), "activation not on the ledger yet: reporting it again");
            self.report_activation(contract, started, now).await;
        }
    }

    /// Reports uptime, readings and data proofs of an active hosted contract: measures and
    /// submits; what the batch claims is `agora_roles::Heartbeat`'s rule.
    async fn heartbeat(&mut self, contract: ContractId, now: u64) {
        if !self.hosted.contains_key(&contract) {
            return;
        }
        let id = Self::service_id(&contract);
        // Active, a restart's wait included: a guest that fails just before a heartbeat must
        // not turn the whole interval since the last one into a gap the provider admits to
        // (the committee's probes judge the wait itself).
        let active = self.services.active(&id).await;
        let status = self.radio.status().await;
        // Proofs that do not parse as CIDs were never sent; they are not tracked either.
        let offered: Vec<Cid> = status
            .checkpoints
            .iter()
            .filter(|c| c.mine && c.checkpoint.service == id && !c.checkpoint.proof.is_empty())
            .filter_map(|c| c.checkpoint.proof.parse().ok())
            .collect();
        // The ledger's uptime cursor and activation time: where the batch starts (THREATS A6);
        // and whether uptime payment waits to be collected. One read serves both, as in the
        // role machine's provider: the batch is applied in a later block, so a second read
        // after submitting it found the same, unless a block landed meanwhile (the next beat
        // sees that one).
        let rec = self.record(contract).await;
        let collect = agora_roles::uptime_collectable(rec.as_ref());
        // Borrowed, not cloned (THREATS C26); `answered` updates it after the submission.
        let Some(h) = self.hosted.get_mut(&contract) else {
            return;
        };
        let processed: u64 = status
            .devices
            .iter()
            .filter(|d| d.service.as_deref() == Some(id.as_str()) || h.devices.contains(&d.device))
            .map(|d| d.processed)
            .sum();
        h.beat.begin(now);
        let batch = h.beat.batch(
            now,
            active,
            processed,
            &offered,
            h.active_since,
            rec.as_ref(),
        );
        let ok = self
            .submit(TxKind::Heartbeats { contract, batch }, "heartbeats")
            .await;
        if let Some(h) = self.hosted.get_mut(&contract) {
            h.beat.answered(ok);
        }
        if collect {
            self.submit(TxKind::SettleUptime(contract), "uptime payment")
                .await;
        }
    }
}
