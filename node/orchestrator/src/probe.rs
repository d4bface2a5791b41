//! Uptime probes of hosted and active standby services (#13.10): the contract's arbitrators ask
//! the provider once per probe interval whether the service runs and put each outcome on the
//! ledger (`ProbeResult`), where a quorum of the committee confirms or refutes the interval;
//! payment follows the confirmed uptime. What an answer proves is in `agora_wire::probe`; when
//! to probe and what to report is the role machine's (`agora_roles`, driven in
//! `roles`), which sends the probes and checks the answers with [`judge`].
//!
//! Provider side ([`spawn_responder`]): a task of its own, so a busy orchestrator never delays
//! an answer. It answers only the members of the probed contract's committee, asking over
//! their own connection, at most [`PROBES_PER_WINDOW`] per member and contract per
//! [`PROBE_WINDOW_MS`] and [`CONCURRENT_ANSWERS`] at once, from the orchestrator's table of the contracts it serves
//! ([`Serving`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use agora_contracts::ContractId;
use agora_hosting::control::ServiceControl;
use agora_market::{KeySigner, NodeId, Timestamp};
use agora_network::keys::peer_id_of;
use agora_network::{Interest, NetworkEvent, NetworkHandle, PeerId};
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;
use agora_wire::probe::ProbeMsg;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

/// Length of the provider's quota window.
pub const PROBE_WINDOW_MS: u64 = 10_000;
/// Probes one committee member may send about one contract per window: its duty is one per
/// interval of at least two seconds (5), asked once more when silent (5 more), with room to
/// spare. Per contract, not per member: a quota per member refused the probes of an honest
/// provider hosting more than four contracts judged by the same arbitrator, and each refusal
/// counts as down (issue #15).
pub const PROBES_PER_WINDOW: u32 = 15;
/// (member, contract) pairs whose quota the provider remembers; the oldest window is dropped
/// beyond it. Only pairs of a served contract and a member of its committee get an entry.
pub const MAX_QUOTA_ENTRIES: usize = 1_024;
/// Probes a provider answers at once; more are refused rather than queued.
pub const CONCURRENT_ANSWERS: usize = 16;

/// The contracts this node serves as provider right now (service started), with their
/// committees: the orchestrator writes it, the probe responder reads it.
#[derive(Clone, Debug, Default)]
pub struct Serving(Arc<Mutex<BTreeMap<ContractId, Vec<NodeId>>>>);

impl Serving {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ContractId, Vec<NodeId>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The service of `contract` runs here; `committee` may probe it.
    pub fn insert(&self, contract: ContractId, committee: Vec<NodeId>) {
        self.lock().insert(contract, committee);
    }

    /// The service of `contract` stopped.
    pub fn remove(&self, contract: &ContractId) {
        self.lock().remove(contract);
    }

    fn committee(&self, contract: &ContractId) -> Option<Vec<NodeId>> {
        self.lock().get(contract).cloned()
    }
}

/// The provider's quota per asking member and contract.
#[derive(Debug, Default)]
pub(super) struct Quota {
    windows: BTreeMap<(NodeId, ContractId), (Timestamp, u32)>,
    /// Probes refused for quota, for the log.
    refused: u64,
}

impl Quota {
    /// Counts one probe from `asker` about `contract` at `now`; false when over quota.
    fn admit(&mut self, asker: NodeId, contract: ContractId, now: Timestamp) -> bool {
        let key = (asker, contract);
        if !self.windows.contains_key(&key) && self.windows.len() >= MAX_QUOTA_ENTRIES {
            let oldest = self
                .windows
                .iter()
                .min_by_key(|(_, (start, _))| *start)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.windows.remove(&k);
                debug!(asker = %k.0.short(), "probe quota table full; oldest entry dropped");
            }
        }
        let w = self.windows.entry(key).or_insert((now, 0));
        if now.saturating_sub(w.0) >= PROBE_WINDOW_MS {
            *w = (now, 0);
        }
        if w.1 >= PROBES_PER_WINDOW {
            self.refused += 1;
            return false;
        }
        w.1 += 1;
        true
    }
}

/// Starts the provider side: answers the probes of the contracts in `serving` from their
/// committees' members.
pub fn spawn_responder(
    network: NetworkHandle,
    services: Arc<dyn ServiceControl>,
    signer: KeySigner,
    serving: Serving,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let mut events = network.inbox(Interest::new("probe").requests(Kind::Probe));
    let quota = Arc::new(Mutex::new(Quota::default()));
    let slots = Arc::new(Semaphore::new(CONCURRENT_ANSWERS));
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(now_ms()));
    let task = async move {
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                ev = events.recv() => ev,
            };
            let (id, peer, envelope) = match ev {
                NetworkEvent::Request { id, peer, envelope } if envelope.kind == Kind::Probe => {
                    (id, peer, envelope)
                }
                _ => continue,
            };
            let (network, services, signer, serving, quota, seq) = (
                network.clone(),
                services.clone(),
                signer.clone(),
                serving.clone(),
                quota.clone(),
                seq.clone(),
            );
            let slot = slots.clone().try_acquire_owned();
            tokio::spawn(
                async move {
                    let reply = match slot {
                        Err(_) => ProbeMsg::Refused {
                            reason: format!("busy: {CONCURRENT_ANSWERS} probes being answered"),
                        },
                        Ok(_slot) => reply(&*services, &serving, &quota, peer, &envelope).await,
                    };
                    let n = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match Envelope::seal_body(&signer, Kind::Probe, now_ms(), n, &reply) {
                        Ok(env) => {
                            if let Err(e) = network.respond(id, &env).await {
                                debug!(error = %e, "probe answer not sent");
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot encode a probe answer"),
                    }
                }
                .in_current_span(),
            );
        }
    };
    tokio::spawn(task.in_current_span())
}

/// The provider's answer to one probe.
async fn reply(
    services: &dyn ServiceControl,
    serving: &Serving,
    quota: &Mutex<Quota>,
    peer: PeerId,
    envelope: &Envelope,
) -> ProbeMsg {
    let refuse = |reason: String| ProbeMsg::Refused { reason };
    let (contract, interval, nonce) = match envelope.body::<ProbeMsg>(Kind::Probe) {
        Ok(ProbeMsg::Ask {
            contract,
            interval,
            nonce,
        }) => (contract, interval, nonce),
        Ok(_) => return refuse("expected a probe".into()),
        Err(e) => return refuse(e.to_string()),
    };
    let asker = envelope.sender;
    // Only over the asker's own connection: a relayed probe cannot spend its quota.
    if peer_id_of(&asker) != Some(peer) {
        return refuse("probe relayed by another peer".into());
    }
    let Some(committee) = serving.committee(&contract) else {
        return refuse(format!("no service of {} runs here", contract.short()));
    };
    if !committee.contains(&asker) {
        return refuse(format!(
            "{} is not an arbitrator of {}",
            asker.short(),
            contract.short()
        ));
    }
    {
        let mut q = quota
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !q.admit(asker, contract, now_ms()) {
            if q.refused.is_power_of_two() {
                warn!(asker = %asker.short(), refused = q.refused, "probes over quota refused");
            }
            return refuse(format!(
                "over quota: {PROBES_PER_WINDOW} probes per {PROBE_WINDOW_MS} ms"
            ));
        }
    }
    let witness = services
        .probe(&contract.to_string(), nonce_value(nonce))
        .await;
    ProbeMsg::Answer {
        contract,
        interval,
        nonce,
        running: witness.running,
        guest: witness.guest,
    }
}

/// The probe's nonce as the guest's `agora_probe` argument (the same bits).
pub(super) fn nonce_value(nonce: u64) -> i64 {
    i64::from_le_bytes(nonce.to_le_bytes())
}

/// The provider's signed statement for exactly this probe: whether its hosting layer runs the
/// service, and the guest's `agora_probe` value if any (judged with
/// `agora_contracts::probe::judge_answer`); `Err` for anything else (why it counts as down).
pub(super) fn judge(
    answer: &Envelope,
    provider: NodeId,
    contract: ContractId,
    interval: u64,
    nonce: u64,
) -> Result<(bool, Option<i64>), String> {
    if answer.sender != provider {
        return Err("answer signed by another node".into());
    }
    match answer.body::<ProbeMsg>(Kind::Probe) {
        Ok(ProbeMsg::Answer {
            contract: c,
            interval: i,
            nonce: n,
            running,
            guest,
        }) if c == contract && i == interval && n == nonce => Ok((running, guest)),
        Ok(ProbeMsg::Answer { .. }) => Err("answer names another probe".into()),
        // The provider's text: kept in the timeline and logged, so bounded.
        Ok(ProbeMsg::Refused { reason }) => Err(format!(
            "refused: {}",
            agora_wire::clip(&reason, agora_wire::MAX_PEER_REASON)
        )),
        Ok(ProbeMsg::Ask { .. }) => Err("answered with a probe".into()),
        Err(e) => Err(format!("malformed answer: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agora_market::{KeySigner, Signer};

    fn answer(s: &KeySigner, msg: &ProbeMsg) -> Envelope {
        Envelope::seal_body(s, Kind::Probe, 1, 1, msg).unwrap()
    }

    #[test]
    fn only_the_providers_answer_to_this_probe_is_taken() {
        let p = KeySigner::from_seed(1);
        let other = KeySigner::from_seed(2);
        let c = ContractId([3; 32]);
        let ok = ProbeMsg::Answer {
            contract: c,
            interval: 4,
            nonce: 5,
            running: true,
            guest: Some(9),
        };
        assert_eq!(
            judge(&answer(&p, &ok), p.node_id(), c, 4, 5),
            Ok((true, Some(9)))
        );
        assert!(judge(&answer(&other, &ok), p.node_id(), c, 4, 5).is_err());
        assert!(
            judge(&answer(&p, &ok), p.node_id(), c, 4, 6).is_err(),
            "nonce"
        );
        assert!(
            judge(&answer(&p, &ok), p.node_id(), c, 3, 5).is_err(),
            "interval"
        );
        assert!(
            judge(&answer(&p, &ok), p.node_id(), ContractId([9; 32]), 4, 5).is_err(),
            "contract"
        );
        let stopped = ProbeMsg::Answer {
            contract: c,
            interval: 4,
            nonce: 5,
            running: false,
            guest: None,
        };
        assert_eq!(
            judge(&answer(&p, &stopped), p.node_id(), c, 4, 5),
            Ok((false, None)),
            "\"not running\" is judged with the guest value, by agora_contracts::probe"
        );
        let refused = ProbeMsg::Refused { reason: "x".into() };
        assert!(judge(&answer(&p, &refused), p.node_id(), c, 4, 5).is_err());
    }

    #[test]
    fn quota_refuses_past_the_window_budget_and_stays_bounded() {
        let mut q = Quota::default();
        let a = KeySigner::from_seed(1).node_id();
        let (c1, c2) = (ContractId([1; 32]), ContractId([2; 32]));
        for _ in 0..PROBES_PER_WINDOW {
            assert!(q.admit(a, c1, 100));
        }
        assert!(!q.admit(a, c1, 200));
        // The same member's probes of another contract have their own budget: a provider
        // hosting many contracts judged by one arbitrator answers each of them.
        for _ in 0..PROBES_PER_WINDOW {
            assert!(q.admit(a, c2, 200));
        }
        assert!(q.admit(a, c1, 100 + PROBE_WINDOW_MS), "a new window");
        for i in 0..(MAX_QUOTA_ENTRIES as u64 + 10) {
            let n = KeySigner::from_seed(1_000 + i).node_id();
            assert!(q.admit(n, c1, 1_000 + i));
        }
        assert!(q.windows.len() <= MAX_QUOTA_ENTRIES);
    }
}
