//! The driver of the role machine (`agora_roles::Roles`): ledger blocks, presence
//! changes, ticks and the answers of background work become its inputs, with the time passed
//! in; this module performs the effects it returns, in order.
//!
//! The machine decides the arbitrator's duties (watch the customers of standby contracts,
//! attest their liveness, probe hosted and standby services, challenge storage providers,
//! report each outcome), settlement as either party (the customer back after a handover, a
//! provider that never activated, the end of a term: `agora_roles`' `settle.rs`) and whether
//! the ledger is current (`synced`). The rest of the provider's and the customer's duties are
//! still decided in `handover`, `custody` and `own` (the machine runs with
//! [`RoleSet::ARBITRATOR_AND_SETTLEMENT`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use agora_contracts::ledger::{MAX_PROBE_RESULTS, ProbeReport};
use agora_contracts::probe::{GuestExpectation, ProbeFault, ProbeUp, judge_answer};
use agora_contracts::{ContractId, ContractKind, TxKind};
use agora_market::NodeId;
use agora_network::PresenceEvent;
use agora_network::keys::peer_id_of;
use agora_roles::{AuditVerdict, Effect, Input, LedgerFacts, Presence};
use agora_storage::challenge::StorageCommitment;
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;
use agora_wire::probe::ProbeMsg;
use cid::Cid;
use tracing::{Instrument, debug, warn};

pub use agora_roles::RoleSet;

use super::{Done, Orchestrator};

/// Inputs handled for one outside event (its answers included) before the rest is dropped
/// with a warning: the machine's answers to answers are timeline entries, so a handful is the
/// norm and the bound only guards against a loop.
const MAX_STEPS: usize = 256;
/// Decoded storage commitments kept by CID (one per storage contract this node challenges).
const MAX_COMMITMENTS: usize = 256;

impl Orchestrator {
    /// Hands `input` to the role machine at the current time and performs its effects, and
    /// those of the answers that are known at once (a transaction admitted or refused).
    /// Returns whether the ledger became current meanwhile.
    pub(super) async fn drive(&mut self, input: Input) -> bool {
        let was_synced = self.roles.synced();
        let mut queue = VecDeque::from([input]);
        let mut steps = 0;
        while let Some(input) = queue.pop_front() {
            steps += 1;
            if steps > MAX_STEPS {
                warn!(
                    dropped = queue.len() + 1,
                    "role machine kept answering itself; inputs dropped"
                );
                break;
            }
            for effect in self.roles.handle(now_ms(), input) {
                if let Some(answer) = self.perform(effect).await {
                    queue.push_back(answer);
                }
            }
        }
        !was_synced && self.roles.synced()
    }

    /// The ledger after `events` (none: a rescan), as the machine needs it.
    pub(super) async fn facts(
        &self,
        events: Vec<agora_contracts::LedgerEvent>,
    ) -> Option<LedgerFacts> {
        let (me, images) = (self.me, self.roles.images());
        self.ledger
            .query(move |v| LedgerFacts::from_ledger(me, &v.ledger, events, &images))
            .await
            .ok()
    }

    /// A presence change, for the machine.
    pub(super) async fn on_presence(&mut self, p: PresenceEvent) {
        let p = match p {
            PresenceEvent::Up { node, .. } => Presence::Up { node },
            PresenceEvent::Down {
                node, last_seen, ..
            } => Presence::Down { node, last_seen },
        };
        self.drive(Input::Presence(p)).await;
    }

    /// Performs one effect; returns the answer to feed back at once, if any.
    async fn perform(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Submit(TxKind::ProbeResult {
                contract,
                interval,
                up,
            }) => {
                // Batched: one transaction per `PROBE_BATCH_MS` (`flush_probe_results`).
                if self.probe_batch.is_empty() {
                    self.probe_batch_since = now_ms();
                }
                self.probe_batch.push(ProbeReport {
                    contract,
                    interval,
                    up,
                });
            }
            Effect::Submit(tx) => {
                let accepted = match self.ledger.submit(tx.clone()).await {
                    Ok(_) => true,
                    Err(e) => {
                        debug!(tx = ?tx, error = %e, "transaction not submitted");
                        false
                    }
                };
                return Some(Input::Submitted { tx, accepted });
            }
            Effect::Watch(node) => {
                if let Err(e) = self.network.watch(node).await {
                    debug!(node = %node.short(), error = %e, "cannot watch the peer");
                }
            }
            Effect::Unwatch(node) => {
                if let Err(e) = self.network.unwatch(node).await {
                    debug!(node = %node.short(), error = %e, "cannot unwatch the peer");
                }
            }
            Effect::Challenge {
                contract,
                provider,
                file,
                commitment,
            } => self.challenge(contract, provider, file, commitment),
            Effect::Probe {
                contract,
                provider,
                interval,
                timeout_ms,
            } => self.probe(contract, provider, interval, timeout_ms),
            Effect::Timeline(note) => self.timeline.push_latency(
                &note.phase,
                note.contract.as_ref(),
                note.detail,
                note.latency_ms,
            ),
            // Emitted only once the provider's role is the machine's; answered already.
            Effect::InstanceRivals { contract } => {
                let (max, rivals) = self.instance_rivals(contract).await;
                return Some(Input::InstanceRivals {
                    contract,
                    max,
                    rivals,
                });
            }
            // One tick every `TICK_MS` delivers every wake-up in time.
            Effect::WakeAt(_) => {}
            other => {
                // The provider and customer roles are off in this machine: never emitted.
                warn!(effect = ?other, "effect of a role the machine does not drive; ignored");
            }
        }
        None
    }

    /// Submits the probe outcomes gathered since the oldest waiting one, as one
    /// `ProbeResults` transaction of at most `MAX_PROBE_RESULTS` (several when more wait),
    /// once that one has waited [`PROBE_BATCH_MS`] or a batch is full, and tells the machine
    /// each entry's fate as if it had been submitted alone.
    pub(super) async fn flush_probe_results(&mut self, now: agora_market::Timestamp) {
        while !self.probe_batch.is_empty()
            && (self.probe_batch.len() >= MAX_PROBE_RESULTS
                || now.saturating_sub(self.probe_batch_since) >= PROBE_BATCH_MS)
        {
            let take = self.probe_batch.len().min(MAX_PROBE_RESULTS);
            let batch: Vec<ProbeReport> = self.probe_batch.drain(..take).collect();
            let accepted = match self
                .ledger
                .submit(TxKind::ProbeResults(batch.clone()))
                .await
            {
                Ok(_) => true,
                Err(e) => {
                    debug!(reports = batch.len(), error = %e, "probe results not submitted");
                    false
                }
            };
            for r in batch {
                let tx = TxKind::ProbeResult {
                    contract: r.contract,
                    interval: r.interval,
                    up: r.up,
                };
                self.drive(Input::Submitted { tx, accepted }).await;
            }
        }
    }

    /// Challenges `provider` once in the background; answers `Done::Audited`. The commitment
    /// block the challenge is drawn from comes from this node's cache, else the provider shows
    /// it: it took custody of it with the file, so one it cannot show fails the round. Before,
    /// the block was fetched from any peer and the round left unjudged when none served it,
    /// so a provider that never took custody was paid in full while its customer, the only
    /// other holder, was offline (THREATS P4).
    fn challenge(
        &mut self,
        contract: ContractId,
        provider: NodeId,
        file: Cid,
        commitment_cid: Cid,
    ) {
        let known = self.commitments.get(&commitment_cid).copied();
        let (network, signer) = (self.network.clone(), self.signer.clone());
        let done = self.done_tx.clone();
        tokio::spawn(
            async move {
                let commitment = match known {
                    Some(c) => Ok(c),
                    None => agora_exchange::audit::show_commitment(
                        &network,
                        &signer,
                        provider,
                        file,
                        commitment_cid,
                    )
                    .await
                    .map_err(|why| {
                        format!("the provider did not show commitment {commitment_cid}: {why}")
                    }),
                };
                let verdict = match &commitment {
                    Ok(c) => {
                        match agora_exchange::audit::challenge(&network, &signer, provider, c).await
                        {
                            agora_exchange::audit::Verdict::Passed => AuditVerdict::Passed,
                            agora_exchange::audit::Verdict::Failed(why) => {
                                AuditVerdict::Failed(why)
                            }
                        }
                    }
                    Err(why) => AuditVerdict::Failed(why.clone()),
                };
                let _ = done
                    .send(Done::Audited {
                        contract,
                        verdict,
                        commitment: commitment.ok().map(|c| (commitment_cid, c)),
                    })
                    .await;
            }
            .in_current_span(),
        );
    }

    /// A challenge's outcome, for the machine; its commitment is kept for the next one.
    pub(super) async fn on_audited(
        &mut self,
        contract: ContractId,
        verdict: AuditVerdict,
        commitment: Option<(Cid, StorageCommitment)>,
    ) {
        if let Some((cid, c)) = commitment {
            remember(&mut self.commitments, cid, c);
        }
        self.drive(Input::AuditAnswer { contract, verdict }).await;
    }

    /// Asks `provider` in the background whether the service of `contract` runs; answers
    /// `Done::Probed`, or nothing when it stays silent for `timeout_ms` (the machine counts
    /// the silence as down itself). Meanwhile this node computes the image's `agora_probe` for
    /// the nonce on its own instance ([`ServiceControl::probe_image`]) and judges the signed
    /// answer against it (`agora_contracts::probe::judge_answer`); a value not ready before the
    /// probe's time runs out leaves the hosting layer's word (counted `probe-unverified`).
    /// Refused, "not running" and mismatched answers go on the timeline (`probe-refused`,
    /// `probe-not-running`, `probe-guest-mismatch`, `probe-no-guest-value`), hence into
    /// `orchestrator_phases` in the node's metrics.
    fn probe(&mut self, contract: ContractId, provider: NodeId, interval: u64, timeout_ms: u64) {
        let nonce: u64 = rand::random();
        let ask = ProbeMsg::Ask {
            contract,
            interval,
            nonce,
        };
        // One envelope per attempt (each its own sequence number: the provider refuses
        // replays).
        let first_seq = self.next_seq();
        self.seq = self.seq.wrapping_add(PROBE_ATTEMPTS - 1);
        let envs: Result<Vec<Envelope>, _> = (0..PROBE_ATTEMPTS)
            .map(|i| {
                Envelope::seal_body(
                    &self.signer,
                    Kind::Probe,
                    now_ms(),
                    first_seq.wrapping_add(i),
                    &ask,
                )
            })
            .collect();
        let network = self.network.clone();
        let done = self.done_tx.clone();
        let timeline = self.timeline.clone();
        let timeout = Duration::from_millis(timeout_ms);
        // The verdict must reach the machine before it counts the probe as silent.
        let judge_by = tokio::time::Instant::now() + timeout.saturating_sub(JUDGE_MARGIN);
        let mut expected = tokio::spawn(
            expected_value(
                self.ledger.clone(),
                self.services.clone(),
                contract,
                super::probe::nonce_value(nonce),
            )
            .in_current_span(),
        );
        tokio::spawn(
            async move {
                let outcome = match (envs, peer_id_of(&provider)) {
                    (Ok(envs), Some(peer)) => {
                        let deadline = tokio::time::Instant::now() + timeout;
                        let asked = ask_until(&network, peer, &envs, deadline);
                        match tokio::time::timeout_at(deadline, asked).await {
                            Err(_) => {
                                debug!(contract = %contract.short(), interval, "probe unanswered");
                                return;
                            }
                            Ok(Err(e)) => Err(format!("unreachable: {e}")),
                            Ok(Ok(answer)) => {
                                match super::probe::judge(
                                    &answer, provider, contract, interval, nonce,
                                ) {
                                    Err(why) => {
                                        timeline.push(
                                            "probe-refused",
                                            Some(&contract),
                                            why.clone(),
                                        );
                                        Err(why)
                                    }
                                    Ok((running, guest)) => {
                                        let want =
                                            match tokio::time::timeout_at(judge_by, &mut expected)
                                                .await
                                            {
                                                Ok(Ok(e)) => e,
                                                Ok(Err(e)) => {
                                                    GuestExpectation::Unknown(e.to_string())
                                                }
                                                Err(_) => GuestExpectation::Unknown(
                                                    "this node's own value was not ready in time"
                                                        .into(),
                                                ),
                                            };
                                        verdict(
                                            &timeline, contract, interval, running, guest, &want,
                                        )
                                    }
                                }
                            }
                        }
                    }
                    (Err(e), _) => Err(format!("cannot encode the probe: {e}")),
                    (_, None) => Err("provider id is not a valid peer id".into()),
                };
                let _ = done
                    .send(Done::Probed {
                        contract,
                        interval,
                        outcome,
                    })
                    .await;
            }
            .in_current_span(),
        );
    }

    /// An arbitrator of a newly registered hosted or standby contract compiles its image for
    /// probes now, in the background, so its first probe (within seconds of activation) can
    /// already be checked against the guest's value rather than the hosting layer's word.
    pub(super) async fn warm_probe_image(&self, contract: ContractId) {
        let Some(rec) = self.record(contract).await else {
            return;
        };
        let c = &rec.contract;
        if !c.committee.contains(&self.me)
            || !matches!(c.kind, ContractKind::Hosted | ContractKind::Standby)
        {
            return;
        }
        let (services, image) = (self.services.clone(), c.service_image);
        tokio::spawn(
            async move {
                let started = std::time::Instant::now();
                let e = services.probe_image(image, 0).await;
                let ms = started.elapsed().as_millis();
                match e {
                    GuestExpectation::Unknown(why) => {
                        tracing::debug!(%image, ms, %why, "image not loaded for probes now");
                    }
                    e => tracing::info!(%image, ms, ?e, "image ready for probes"),
                }
            }
            .in_current_span(),
        );
    }

    /// After a contract changed status: the probe cache keeps only the images of the hosted
    /// and standby contracts this node still judges (a committee member, not ended), and lets
    /// go of the others at once (THREATS C4) instead of holding up to 16 images until they
    /// are evicted or the process ends.
    pub(super) async fn retain_probe_images(&self) {
        let me = self.me;
        let Ok(keep) = self
            .ledger
            .query(move |v| {
                v.ledger
                    .contracts()
                    .values()
                    .filter(|r| {
                        !r.status.is_final()
                            && r.contract.committee.contains(&me)
                            && matches!(
                                r.contract.kind,
                                ContractKind::Hosted | ContractKind::Standby
                            )
                    })
                    .map(|r| r.contract.service_image)
                    .collect::<std::collections::BTreeSet<_>>()
            })
            .await
        else {
            return;
        };
        let gone = self.services.retain_probe_images(&keep).await;
        if gone > 0 {
            tracing::info!(
                gone,
                kept = keep.len(),
                "probe images of ended contracts let go of"
            );
        }
    }

    /// A probe's outcome, for the machine.
    pub(super) async fn on_probed(
        &mut self,
        contract: ContractId,
        interval: u64,
        outcome: Result<(), String>,
    ) {
        if let Err(why) = &outcome {
            debug!(contract = %contract.short(), interval, why, "probe: down");
        }
        let up = outcome.is_ok();
        self.drive(Input::ProbeAnswer {
            contract,
            interval,
            up,
        })
        .await;
    }
}

/// How long a probe outcome waits for others to share its transaction. Every active hosted or
/// standby contract costs each of its arbitrators one report per probe interval (2 s or more):
/// alone, each was a transaction that every node verifies twice (gossip and block) — 72 % of
/// the ledger's transactions with 19 contracts on 20 nodes (docs/PERFORMANCE.md). Batched,
/// an arbitrator sends about one per second whatever the number of contracts; the ledger
/// accepts reports until `quorum_report_grace_ms` (10 s) after their interval, far beyond this.
const PROBE_BATCH_MS: u64 = 1_000;

/// How long before the machine's probe timeout a verdict is given, whatever is still missing.
const JUDGE_MARGIN: Duration = Duration::from_millis(150);

/// Requests per probe at most: a request that fails at once (the connection closed under it, a
/// dial that failed) is sent again while the provider's time to answer lasts, so one dropped
/// connection does not count as its service down.
const PROBE_ATTEMPTS: u64 = 3;

/// Pause before a probe's request is sent again.
const PROBE_RETRY: Duration = Duration::from_millis(200);

/// Sends the probe `envs[0]`, then the next one after each failed request while a retry fits
/// before `deadline`; the provider's answer, or the last request's error.
async fn ask_until(
    network: &agora_network::NetworkHandle,
    peer: agora_network::PeerId,
    envs: &[Envelope],
    deadline: tokio::time::Instant,
) -> Result<Envelope, String> {
    let mut last = String::from("no request sent");
    for (i, env) in envs.iter().enumerate() {
        match network.request(peer, env).await {
            Ok(answer) => return Ok(answer),
            Err(e) => last = e.to_string(),
        }
        if i + 1 == envs.len() || tokio::time::Instant::now() + PROBE_RETRY >= deadline {
            break;
        }
        debug!(%peer, attempt = i + 1, error = %last, "probe request failed; sending it again");
        tokio::time::sleep(PROBE_RETRY).await;
    }
    Err(last)
}

/// What `contract`'s image's `agora_probe(nonce)` returns on this node (its image from the
/// ledger). Runs in a task of its own: compiling a cold image goes on (and fills the cache)
/// even when the probe was judged without it.
async fn expected_value(
    ledger: agora_ledger::LedgerHandle,
    services: std::sync::Arc<dyn agora_hosting::control::ServiceControl>,
    contract: ContractId,
    nonce: i64,
) -> GuestExpectation {
    let image = ledger
        .query(move |v| {
            v.ledger
                .contract(&contract)
                .map(|r| r.contract.service_image)
        })
        .await
        .ok()
        .flatten();
    match image {
        Some(image) => services.probe_image(image, nonce).await,
        None => GuestExpectation::Unknown("the contract is not on this node's ledger".into()),
    }
}

/// Judges a signed answer against this node's own value, noting what counts against the
/// provider (or was taken on the hosting layer's word) on the timeline.
fn verdict(
    timeline: &crate::Timeline,
    contract: ContractId,
    interval: u64,
    running: bool,
    guest: Option<i64>,
    want: &GuestExpectation,
) -> Result<(), String> {
    match judge_answer(running, guest, want) {
        Ok(ProbeUp::Unverified) => {
            if let GuestExpectation::Unknown(why) = want {
                timeline.push(
                    "probe-unverified",
                    Some(&contract),
                    format!("interval {interval}: on the hosting layer's word: {why}"),
                );
            }
            Ok(())
        }
        Ok(ProbeUp::Verified | ProbeUp::HostingWord) => Ok(()),
        Err(fault) => {
            let phase = match fault {
                ProbeFault::NotRunning => "probe-not-running",
                ProbeFault::NoGuestValue => "probe-no-guest-value",
                ProbeFault::GuestMismatch { .. } => "probe-guest-mismatch",
            };
            timeline.push(
                phase,
                Some(&contract),
                format!("interval {interval}: {fault}"),
            );
            Err(fault.to_string())
        }
    }
}

/// Keeps `c` under `cid`, dropping an arbitrary other entry when the cache is full.
fn remember(cache: &mut BTreeMap<Cid, StorageCommitment>, cid: Cid, c: StorageCommitment) {
    if !cache.contains_key(&cid)
        && cache.len() >= MAX_COMMITMENTS
        && let Some(evict) = cache.keys().next().copied()
    {
        cache.remove(&evict);
        debug!(%evict, "commitment cache full; one entry dropped");
    }
    cache.insert(cid, c);
}
