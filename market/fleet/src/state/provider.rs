//! The provider side of the fleet machine: records heard, push and pull, reports, stop.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Effect, FleetState};
use crate::limits::MAX_REASON_LEN;
use crate::message::FleetMessage;
use crate::plan::{TargetPhase, TargetStatus, wants};
use crate::record::{Deployment, DeploymentBody, Replicas, Strategy};
use crate::selector::{CandidateFacts, ProviderFacts};
use agora_market::identity::{NodeId, Signer, Timestamp};
use agora_market::ids::DeploymentId;

/// This node's view of a deployment that wants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalReplica {
    /// Who deploys it (polled, reported to).
    pub deployer: NodeId,
    /// The version this node acted on (0: none yet).
    pub acted_version: u64,
    /// The image fetched for it, if any.
    pub prefetched: Option<String>,
    /// When the deployer was last polled.
    pub last_poll: Timestamp,
    /// When this node last offered itself as a candidate (push).
    pub last_offer: Timestamp,
    /// The phase last reported to the deployer, and the image it was about.
    pub reported: Option<(String, TargetStatus)>,
    /// How many times the runtime restarted this replica ([`super::Input::LocalRestarts`]).
    #[serde(default)]
    pub restarts: u32,
    /// The restart count last reported (a change is reported even when the phase is not).
    #[serde(default)]
    pub reported_restarts: u32,
    /// Why the runtime last restarted this replica, bounded ([`super::Input::LocalRestarts`]).
    #[serde(default)]
    pub last_failure: Option<String>,
    /// The version last reported (a newer one acted on is reported even when the phase is not:
    /// the deployer sends the record again to a target behind).
    #[serde(default)]
    pub reported_version: u64,
}

fn bounded_reason(reason: Option<String>) -> Option<String> {
    reason.map(|r| {
        let mut end = r.len().min(MAX_REASON_LEN);
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        r[..end].to_string()
    })
}

impl<S: Signer> FleetState<S> {
    pub(super) fn remote(
        &mut self,
        now: Timestamp,
        from: NodeId,
        gossip: bool,
        msg: FleetMessage,
        out: &mut Vec<Effect>,
    ) {
        match msg {
            FleetMessage::Announce(record) => self.heard(now, from, gossip, *record, out),
            FleetMessage::Poll {
                deployment,
                have_version,
                facts,
            } => {
                let held = self
                    .own
                    .get(&deployment)
                    .map(|o| &o.record)
                    .or_else(|| self.store.get(&deployment));
                let Some(held) = held else {
                    self.counters.polls_unknown += 1;
                    return;
                };
                let msg = if held.body.version > have_version {
                    FleetMessage::Announce(Box::new(held.clone()))
                } else {
                    FleetMessage::UpToDate { deployment }
                };
                self.counters.polls_answered += 1;
                self.candidate(now, from, deployment, facts);
                out.push(Effect::Send { to: from, msg });
            }
            FleetMessage::UpToDate { .. } => {}
            FleetMessage::Candidate { deployment, facts } => {
                self.candidate(now, from, deployment, facts)
            }
            FleetMessage::Report {
                deployment,
                version,
                phase,
                reason,
                image,
                restarts,
                last_failure,
            } => {
                let reason = bounded_reason(reason);
                if self.observe(deployment, from, image.as_deref(), phase, reason) {
                    // The version the target acts on: one behind is sent the record again.
                    // A target only fetching may hold the record unpinned (its contract is not
                    // live yet, or it fetches early): a flood of strangers' records can still
                    // evict it there, so it is not yet counted as acting on it; from staged on,
                    // a live contract pins the record (THREATS N8).
                    if phase != TargetPhase::Fetching
                        && let Some(own) = self.own.get_mut(&deployment)
                    {
                        let acted = own.acted.entry(from).or_insert(0);
                        *acted = (*acted).max(version.min(own.record.body.version));
                    }
                    // `from` is the transport-authenticated sender and a target: a count is only
                    // ever taken from the target itself.
                    self.note_restarts(
                        deployment,
                        from,
                        image.as_deref(),
                        restarts.unwrap_or(0),
                        bounded_reason(last_failure),
                    );
                } else {
                    self.counters.stray_reports += 1;
                    tracing::debug!(peer = %from.short(), deployment = %deployment.short(),
                        "fleet report from a peer that is not a target: ignored");
                }
            }
        }
    }

    /// A provider offers itself for one of this node's deployments: keep its facts (only for
    /// our own deployments, so strangers cannot fill the table by asking about others').
    fn candidate(
        &mut self,
        now: Timestamp,
        from: NodeId,
        deployment: DeploymentId,
        facts: CandidateFacts,
    ) {
        if self.own.contains_key(&deployment) && facts.check().is_ok() {
            self.provider_seen(facts.about(from, now));
        }
    }

    /// A record from a peer: verify, store, and act on it if it wants this node.
    fn heard(
        &mut self,
        now: Timestamp,
        from: NodeId,
        gossip: bool,
        record: Deployment,
        out: &mut Vec<Effect>,
    ) {
        let id = record.body.id();
        if record.body.deployer == self.me {
            return;
        }
        if let Err(e) = record
            .verify()
            .map_err(|e| e.to_string())
            .and_then(|_| record.body.check(now).map_err(|e| e.to_string()))
        {
            self.counters.bad_records += 1;
            tracing::debug!(peer = %from.short(), deployment = %id.short(), error = %e,
                "fleet record refused");
            return;
        }
        let deployer = record.body.deployer;
        let wanted = self
            .self_facts
            .as_ref()
            .is_some_and(|me| wants(&record.body, me, now));
        // A live contract of its deployer's here for one of its images backs it: that costs
        // the deployer money, so it may evict and is pinned at once.
        let backed = wanted
            && self
                .backing
                .get(&deployer)
                .is_some_and(|live| record.body.images().iter().any(|i| live.contains(*i)));
        let funded = backed || self.funded(&record.body);
        let inserted = self.store.insert_funded(record, wanted, funded);
        if backed && inserted.is_ok() {
            self.store.pin(id);
        }
        // A record evicted to make room: its replica here (no contract backs it, or it would
        // be pinned) goes at once, so the replicas stay within the store's bound.
        for gone in self.store.take_evicted() {
            self.told_unmatched.remove(&gone);
            if self.local.remove(&gone).is_some() {
                out.push(Effect::Stop { deployment: gone });
            }
        }
        if let Err(e) = inserted {
            tracing::debug!(deployment = %id.short(), error = %e, "fleet record not stored");
            return;
        }
        // Push: act on any copy. Pull: act only on the deployer's answer to our poll.
        let answer = !gossip && from == deployer;
        self.sync_local(now, id, answer, out);
    }

    /// True when the deployer's balance, as the node fed it, covers the record: at least
    /// [`super::FleetConfig::min_deployer_balance`] and its price for the replicas it asks for.
    fn funded(&self, body: &DeploymentBody) -> bool {
        let replicas = match body.replicas {
            Replicas::Count(n) => u64::from(n),
            Replicas::All => 1,
        };
        let needs = body
            .max_price_per_replica
            .saturating_mul(replicas)
            .max(self.config.min_deployer_balance);
        self.balances
            .get(&body.deployer)
            .is_some_and(|(balance, _)| *balance >= needs)
    }

    /// Brings this node's replica of `id` in line with the stored record: start tracking and
    /// fetch the image if it is wanted (at once on a push, on `answer` on a pull), stop it if
    /// it no longer is.
    fn sync_local(
        &mut self,
        now: Timestamp,
        id: DeploymentId,
        answer: bool,
        out: &mut Vec<Effect>,
    ) {
        let record = self.store.get(&id);
        let wanted = match (record, &self.self_facts) {
            (Some(r), Some(me)) => wants(&r.body, me, now),
            _ => false,
        };
        let Some(record) = record.filter(|_| wanted) else {
            self.store.unpin(&id);
            let was_local = self.local.remove(&id).is_some();
            if was_local {
                out.push(Effect::Stop { deployment: id });
            }
            self.tell_unmatched(now, id, was_local, out);
            return;
        };
        self.told_unmatched.remove(&id);
        let body = &record.body;
        let local = self.local.entry(id).or_insert_with(|| LocalReplica {
            deployer: body.deployer,
            acted_version: 0,
            prefetched: None,
            last_poll: 0,
            last_offer: 0,
            reported: None,
            restarts: 0,
            reported_restarts: 0,
            last_failure: None,
            reported_version: 0,
        });
        let push = body.strategy == Strategy::Push;
        if push
            && let Some(me) = &self.self_facts
            && (local.last_offer == 0
                || now.saturating_sub(local.last_offer) >= self.config.candidate_refresh_ms)
        {
            local.last_offer = now;
            out.push(Effect::Send {
                to: body.deployer,
                msg: FleetMessage::Candidate {
                    deployment: id,
                    facts: me.candidate(),
                },
            });
        }
        if (push || answer) && body.version > local.acted_version {
            local.acted_version = body.version;
            // With variants, which one this node runs is the deployer's choice (its contract
            // says): fetch early only when a single variant admits this node.
            let image = match &self.self_facts {
                Some(me) if !body.variants.is_empty() => {
                    let mut fit = body
                        .variants
                        .iter()
                        .filter(|v| v.selector.admits(me, &body.needs));
                    match (fit.next(), fit.next()) {
                        (Some(only), None) => Some(only.image.clone()),
                        _ => None,
                    }
                }
                _ => Some(body.image.clone()),
            };
            if let Some(image) = image
                && local.prefetched.as_deref() != Some(image.as_str())
            {
                local.prefetched = Some(image.clone());
                out.push(Effect::Prefetch {
                    deployment: id,
                    image,
                });
            }
        }
    }

    /// Provider: the held record `id` no longer selects this node (its labels, region or
    /// capacity changed, say) while this node may still count as its deployer's target: it
    /// tracked a replica of it until now (`was_local`), or a live contract of the deployer's
    /// for one of its images runs here (after a restart this node tracks nothing, but the
    /// contract still stands). Such a provider sends neither polls nor candidates any more, so
    /// without a word the deployer kept it until it had been silent for `offline_after_ms`
    /// (5 minutes with `--all`) and released it as `Offline`. Instead the deployer is sent
    /// this node's current facts as a `Candidate`: its plan releases this node as
    /// `NoLongerMatches` and places a replacement. At most once per [`super::FleetConfig::candidate_refresh_ms`] per
    /// record while its contract stands (a message lost is sent again), and once per change
    /// without one. The deployer keeps facts only under the sender's own authenticated id, so
    /// this can release no other target.
    fn tell_unmatched(
        &mut self,
        now: Timestamp,
        id: DeploymentId,
        was_local: bool,
        out: &mut Vec<Effect>,
    ) {
        let (Some(record), Some(me)) = (self.store.get(&id), &self.self_facts) else {
            return;
        };
        let body = &record.body;
        // A deleted or expired record is released by its deployer anyway.
        if body.deleted
            || now >= body.expires_at
            || body.deployer == self.me
            || wants(body, me, now)
        {
            return;
        }
        let backed = self
            .backing
            .get(&body.deployer)
            .is_some_and(|live| body.images().iter().any(|i| live.contains(*i)));
        let may_be_target = was_local || backed;
        let told_lately = self
            .told_unmatched
            .get(&id)
            .is_some_and(|at| now.saturating_sub(*at) < self.config.candidate_refresh_ms);
        if !may_be_target || told_lately {
            return;
        }
        let (deployer, facts) = (body.deployer, me.candidate());
        self.told_unmatched.insert(id, now);
        self.counters.unmatched_told += 1;
        tracing::debug!(deployment = %id.short(), deployer = %deployer.short(),
            "fleet record no longer selects this node: telling its deployer");
        out.push(Effect::Send {
            to: deployer,
            msg: FleetMessage::Candidate {
                deployment: id,
                facts,
            },
        });
    }

    /// Provider tick: drop expired records, follow changes of this node's own facts, poll the
    /// deployers of pull deployments.
    pub(super) fn provider_tick(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        self.store.prune(now);
        let store = &self.store;
        self.told_unmatched.retain(|id, _| store.get(id).is_some());
        let ids: Vec<DeploymentId> = self
            .store
            .iter()
            .map(|(id, _)| *id)
            .chain(self.local.keys().copied())
            .collect();
        for id in ids {
            self.sync_local(now, id, false, out);
        }
        let interval = self.config.pull_interval_ms;
        let facts = self
            .self_facts
            .as_ref()
            .map(ProviderFacts::candidate)
            .unwrap_or_default();
        // A pull replica polls its deployer only when the record is backed here (pinned: a
        // contract of its deployer's runs it) or its deployer is funded: a stranger's pull
        // records would otherwise make every provider they select send it a poll a second.
        let polled: BTreeSet<DeploymentId> = self
            .local
            .keys()
            .filter(|id| {
                self.store.get(id).is_some_and(|r| {
                    r.body.strategy == Strategy::Pull
                        && (self.store.is_pinned(id) || self.funded(&r.body))
                })
            })
            .copied()
            .collect();
        for (id, local) in self.local.iter_mut() {
            let pull = polled.contains(id);
            if pull && now.saturating_sub(local.last_poll) >= interval {
                local.last_poll = now;
                out.push(Effect::Send {
                    to: local.deployer,
                    msg: FleetMessage::Poll {
                        deployment: *id,
                        have_version: local.acted_version,
                        facts: facts.clone(),
                    },
                });
            }
        }
    }

    /// Provider: this node's replica of `deployment` (of `image`, its variant's, or else the
    /// image its record names now) reached `phase`; tell the deployer once per phase and image.
    pub(super) fn local_phase(
        &mut self,
        deployment: DeploymentId,
        image: Option<String>,
        phase: TargetPhase,
        reason: Option<String>,
        out: &mut Vec<Effect>,
    ) {
        let Some(local) = self.local.get_mut(&deployment) else {
            return;
        };
        let Some(body) = self.store.get(&deployment).map(|r| &r.body) else {
            return;
        };
        // The node names the image only when a live contract of the deployer's with this node
        // runs it (`backed`): that record is pinned (no stranger's record evicts it) while it
        // does.
        let (image, backed) = match image {
            Some(i) if body.images().contains(&i.as_str()) => (i, true),
            Some(_) => return,
            // With variants, the image fetched early is the only one known before a contract.
            None if !body.variants.is_empty() => match &local.prefetched {
                Some(i) => (i.clone(), false),
                None => return,
            },
            None => (body.image.clone(), false),
        };
        if backed {
            self.store.pin(deployment);
        } else {
            self.store.unpin(&deployment);
        }
        let Some(local) = self.local.get_mut(&deployment) else {
            return;
        };
        let status = TargetStatus {
            phase,
            reason: bounded_reason(reason),
        };
        let report = (image, status);
        if local.reported.as_ref() == Some(&report)
            && local.reported_restarts == local.restarts
            && local.reported_version == local.acted_version
        {
            return;
        }
        local.reported = Some(report.clone());
        local.reported_restarts = local.restarts;
        local.reported_version = local.acted_version;
        let (image, status) = report;
        out.push(Effect::Send {
            to: local.deployer,
            msg: FleetMessage::Report {
                deployment,
                version: local.acted_version,
                phase: status.phase,
                reason: status.reason,
                image: Some(image),
                restarts: (local.restarts > 0).then_some(local.restarts),
                last_failure: local.last_failure.clone().filter(|_| local.restarts > 0),
            },
        });
    }

    /// Provider: the runtime restarted this node's replica of `deployment` `restarts` times in
    /// all, the last time because of `last_failure`; the next [`super::Input::LocalPhase`]
    /// reports a change of the count even if the phase is the same.
    pub(super) fn local_restarts(
        &mut self,
        deployment: DeploymentId,
        restarts: u32,
        last_failure: Option<String>,
    ) {
        if let Some(local) = self.local.get_mut(&deployment) {
            local.restarts = restarts;
            local.last_failure = bounded_reason(last_failure);
        }
    }

    /// This node's replicas of others' deployments.
    pub fn local_replicas(&self) -> impl Iterator<Item = (&DeploymentId, &LocalReplica)> {
        self.local.iter()
    }
}
