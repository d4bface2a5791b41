//! The customer side of a handover: the node's own service on its own sensors. It yields the
//! sensors while a handover is in effect and takes them back, from the provider's last
//! checkpoint, once the contract is settled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use agora_contracts::{ContractId, ContractKind, ContractStatus};
use agora_market::{NodeId, Timestamp};
use agora_roles::key_holders;
use cid::Cid;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::Orchestrator;
use agora_wire::now_ms;

/// Service id of the node's own service.
pub const OWN_SERVICE: &str = "own";
/// Longest wait for the provider's last checkpoint before taking the sensors back.
/// (The sensors' readings are buffered meanwhile and replayed, so waiting loses nothing.)
const RECLAIM_WAIT: Duration = Duration::from_secs(8);
/// How recently a handed-over contract must have closed for a restarted node to wait for the
/// provider's last checkpoint before taking its sensors back.
const RECENT_HANDOVER_MS: u64 = 120_000;

/// `<data-dir>/own-service.json`: the image the node runs on its own sensors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnService {
    /// Image CID.
    pub image: String,
}

#[derive(Debug, Default)]
pub(super) struct Own {
    path: PathBuf,
    pub(super) image: Option<Cid>,
    pub(super) devices: Vec<u32>,
    staged: bool,
    running: bool,
    yielded_at: Option<Timestamp>,
    /// While the sensors wait to be taken back: until when the provider's last checkpoint is
    /// waited for ([`RECLAIM_WAIT`]). The tick checks it (`reclaim_due`): the wait no longer
    /// holds the orchestrator task, which went on with nothing else — blocks, probes,
    /// presence — for up to 8 s while a provider that never released the sensors kept it
    /// waiting (issue #14 review, session 51).
    reclaim_by: Option<tokio::time::Instant>,
}

impl Own {
    pub(super) fn load(data_dir: PathBuf) -> Self {
        let path = data_dir.join("own-service.json");
        let image = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<OwnService>(&b).ok())
            .and_then(|o| o.image.parse().ok());
        Own {
            path,
            image,
            ..Default::default()
        }
    }

    fn save(&self) -> std::io::Result<()> {
        let Some(image) = self.image else {
            return Ok(());
        };
        let body = serde_json::to_vec_pretty(&OwnService {
            image: image.to_string(),
        })?;
        std::fs::write(&self.path, body)
    }
}

impl Orchestrator {
    /// Customer: names the provider of each of this node's open hosted and standby contracts
    /// to the radio as a manager of the contract's devices (threat R1), whether or not they
    /// are the devices of this node's own service (a hosted contract's, like the drone's, are
    /// not): from then on the radio hands that provider the devices' frame keys when it asks,
    /// and counts its checkpoints. Who qualifies is `roles::key_holders` on the ledger; the
    /// devices come from the image's manifest in this node's store. Once per contract.
    pub(super) async fn name_key_holders(&mut self) {
        let me = self.me;
        let Ok(holders) = self
            .ledger
            .query(move |v| key_holders(me, v.ledger.contracts()))
            .await
        else {
            return;
        };
        self.keys_named
            .retain(|c| holders.iter().any(|h| h.contract == *c));
        self.key_devices
            .retain(|c, _| holders.iter().any(|h| h.contract == *c));
        for h in holders {
            if !self.keys_named.insert(h.contract) {
                continue;
            }
            match self.services.devices_of(h.image).await {
                Ok(devices) if devices.is_empty() => {}
                Ok(devices) => {
                    debug!(contract = %h.contract.short(), provider = %h.provider, ?devices, "provider may be handed the devices' keys");
                    self.key_devices
                        .insert(h.contract, (h.provider, devices.clone()));
                    self.radio.managed_by(devices, vec![h.provider]).await;
                }
                Err(e) => warn!(
                    contract = %h.contract.short(),
                    image = %h.image,
                    error = %e,
                    "the contract's image is not in this node's store: its devices' keys are not \
                     handed to the provider, which hears them unverified"
                ),
            }
        }
        // The whole map each time: a provider missing from it no longer holds the keys, and
        // the radio rotates those it was handed.
        let mut by_device: BTreeMap<u32, BTreeSet<NodeId>> = BTreeMap::new();
        for (provider, devices) in self.key_devices.values() {
            for d in devices {
                by_device.entry(*d).or_default().insert(*provider);
            }
        }
        self.radio.key_holders(by_device).await;
    }

    /// Customer: the own service's key-value state goes, with the readings it reflects, to
    /// the provider of each of its standby contracts migrated or armed, not in effect yet
    /// (issue #15): from then
    /// on the radio gossips the own service's checkpoints only after the snapshot of the same
    /// readings reached them (`agora_radio::task::state`).
    async fn state_to_standby_providers(&mut self) {
        let (me, image) = (self.me, self.own.image);
        let targets = self
            .ledger
            .query(move |v| {
                v.ledger
                    .contracts()
                    .iter()
                    .filter(|(_, r)| {
                        r.contract.customer == me
                            && r.contract.kind == ContractKind::Standby
                            && Some(r.contract.service_image) == image
                            && r.trigger_at.is_none()
                            // Migrated: the provider has staged it and accepts state.
                            && matches!(
                                r.status,
                                ContractStatus::Migrated | ContractStatus::Armed
                            )
                    })
                    .map(|(id, r)| (*id, r.contract.provider))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        self.radio.state_to(OWN_SERVICE.to_string(), targets).await;
    }

    /// Makes `image` this node's own service (persisted), staging and starting it.
    pub(super) async fn set_own(&mut self, image: Cid) -> Result<Vec<u32>, String> {
        if self.own.running {
            let _ = self.services.stop(OWN_SERVICE).await;
            self.radio.release(self.own.devices.clone()).await;
            self.own.running = false;
        }
        self.own.image = Some(image);
        self.own.staged = false;
        self.own
            .save()
            .map_err(|e| format!("saving own-service.json: {e}"))?;
        self.evaluate_own().await;
        if self.own.staged {
            Ok(self.own.devices.clone())
        } else {
            Err(format!(
                "image {image} could not be staged; see the node log"
            ))
        }
    }

    /// At each tick while the sensors wait to be taken back: takes them back once the
    /// provider's last checkpoint released them or the wait is over.
    pub(super) async fn reclaim_due(&mut self) {
        let Some(by) = self.own.reclaim_by else {
            return;
        };
        // Behind, `evaluate_own` would return before the sensors: not at every tick.
        if !self.roles.synced() {
            return;
        }
        let released = match self.own.yielded_at {
            Some(since) => self.radio.released_by_peer(&self.own.devices, since).await,
            None => true,
        };
        if released || tokio::time::Instant::now() >= by {
            self.evaluate_own().await;
        }
    }

    /// Runs, yields or reclaims the own service according to the ledger.
    pub(super) async fn evaluate_own(&mut self) {
        let Some(image) = self.own.image else {
            return;
        };
        if !self.own.staged {
            match self.services.stage(OWN_SERVICE, image).await {
                Ok(s) => {
                    self.own.devices = s.devices;
                    self.own.staged = true;
                }
                Err(e) => {
                    warn!(error = %e, "own service not staged");
                    self.timeline.push("own-service-failed", None, e);
                    return;
                }
            }
        }
        let me = self.me;
        // Who may checkpoint these sensors (#13.4): this node and the provider of every standby
        // contract it has made for them. And the standby contracts still open, each with its
        // provider: the way back (below).
        let (providers, open) = self
            .ledger
            .query(move |v| {
                let mine = v.ledger.contracts().iter().filter(|(_, r)| {
                    r.contract.customer == me && r.contract.kind != ContractKind::Storage
                });
                let providers: Vec<NodeId> =
                    mine.clone().map(|(_, r)| r.contract.provider).collect();
                let open: Vec<(ContractId, NodeId)> = mine
                    .filter(|(_, r)| {
                        r.contract.kind == ContractKind::Standby && !r.status.is_final()
                    })
                    .map(|(id, r)| (*id, r.contract.provider))
                    .collect();
                (providers, open)
            })
            .await
            .unwrap_or_default();
        self.state_to_standby_providers().await;
        self.radio.own_devices(self.own.devices.clone()).await;
        let mut managers = vec![me];
        managers.extend(providers);
        self.radio
            .managed_by(self.own.devices.clone(), managers)
            .await;
        // The way back: the provider of a standby contract sends its service's state when it
        // releases the sensors; it is taken from that provider only, for as long as the
        // contract is open (allowed from the start, even before this node has caught up: the
        // provider may release them the moment it sees this node back).
        for (contract, provider) in open {
            self.radio
                .accept_state(contract, provider, self.own.devices.clone())
                .await;
        }
        // A restarted node's ledger may be stale (a handover may have happened meanwhile):
        // touch the sensors only once it has caught up.
        if !self.roles.synced() {
            return;
        }
        let handed_over = self
            .ledger
            .query(move |v| {
                v.ledger.contracts().values().any(|r| {
                    r.contract.customer == me
                        && r.contract.kind == ContractKind::Standby
                        && (r.status == ContractStatus::Active
                            || (r.status == ContractStatus::Armed && r.trigger_at.is_some()))
                })
            })
            .await
            .unwrap_or(false);
        let devices = self.own.devices.clone();
        if handed_over {
            // A reclaim that was waiting belonged to the handover that ended: this one's
            // provider must release the sensors after now (an earlier provider's release must
            // not stand in for it; review of session 51).
            if self.own.reclaim_by.take().is_some() {
                self.own.yielded_at = Some(now_ms());
            }
            self.own.yielded_at.get_or_insert_with(now_ms);
            if self.own.running {
                self.radio.release(devices.clone()).await;
                let _ = self.services.stop(OWN_SERVICE).await;
                self.own.running = false;
                self.own.staged = false;
                self.timeline
                    .push("own-service-yielded", None, format!("sensors {devices:?}"));
            }
            self.radio.listen(devices, true).await;
            return;
        }
        if self.own.running {
            return;
        }
        // A node restarted during a handover may find the contract already closed when it
        // has caught up (it never saw the handover in effect, so `yielded_at` is unset): the
        // provider may still be serving the sensors until it sees the close. Wait for its last
        // checkpoint from the recent handover's trigger, as if this node had yielded then.
        if self.own.yielded_at.is_none() {
            let now = now_ms();
            self.own.yielded_at = self
                .ledger
                .query(move |v| {
                    v.ledger
                        .contracts()
                        .values()
                        .filter(|r| {
                            r.contract.customer == me
                                && r.contract.kind == ContractKind::Standby
                                && r.activated_at.is_some()
                                && r.closed_at
                                    .is_some_and(|c| now.saturating_sub(c) < RECENT_HANDOVER_MS)
                        })
                        .filter_map(|r| r.trigger_at)
                        .max()
                })
                .await
                .unwrap_or(None);
        }
        if let Some(since) = self.own.yielded_at {
            let deadline = *self
                .own
                .reclaim_by
                .get_or_insert_with(|| tokio::time::Instant::now() + RECLAIM_WAIT);
            if !self.radio.released_by_peer(&devices, since).await
                && tokio::time::Instant::now() < deadline
            {
                // Asked again at each tick until released or the wait is over.
                return;
            }
        }
        self.own.reclaim_by = None;
        let back = self.state_back_from_providers().await;
        if let Err(e) = self.services.start(OWN_SERVICE).await {
            self.timeline.push("own-service-failed", None, e);
            return;
        }
        let peer = self.radio.peer_covered(&devices).await;
        // Readings resume after what the provider's state reflects (its release checkpoint
        // covers as much): none is applied to it twice.
        let (resume, behind) = agora_contracts::state::resume_after(back.as_ref(), &peer);
        if !behind.is_empty() {
            warn!(
                ?behind,
                "checkpoints run past the state sent back: it misses those readings"
            );
        }
        let replayed = self
            .radio
            .reclaim(devices.clone(), OWN_SERVICE.to_string(), resume.clone())
            .await;
        self.own.running = true;
        self.own.yielded_at = None;
        self.timeline.push(
            "own-service-running",
            None,
            format!("sensors {devices:?}, resuming after {resume:?}, {replayed} buffered readings replayed"),
        );
    }
}

impl Orchestrator {
    /// The way back: the newest state the provider of a recent standby contract sent when it
    /// released the sensors, loaded into the own service's store (staged, not running) before
    /// it starts. `None` (the own service resumes from its own, older state) when none came.
    async fn state_back_from_providers(&mut self) -> Option<agora_contracts::state::StateSnapshot> {
        let (me, now) = (self.me, now_ms());
        let recent: Vec<ContractId> = self
            .ledger
            .query(move |v| {
                v.ledger
                    .contracts()
                    .iter()
                    .filter(|(_, r)| {
                        r.contract.customer == me
                            && r.contract.kind == ContractKind::Standby
                            && r.activated_at.is_some()
                            && r.closed_at
                                .is_none_or(|c| now.saturating_sub(c) < RECENT_HANDOVER_MS)
                    })
                    .map(|(id, _)| *id)
                    .collect()
            })
            .await
            .unwrap_or_default();
        let mut newest: Option<agora_contracts::state::StateSnapshot> = None;
        for contract in recent {
            let taken = self.radio.take_state(contract).await;
            self.radio.forget_state(contract).await;
            if let Some(s) = taken
                && newest.as_ref().is_none_or(|n| s.taken_at > n.taken_at)
            {
                newest = Some(s);
            }
        }
        let s = newest?;
        self.load_state(
            OWN_SERVICE,
            s,
            "the provider's state, sent back when it released the sensors",
        )
        .await
    }
}
