//! Firmware jobs that survive a handover (issue #16, `docs/DEVICES.md`): the owner's edge hands
//! each job over its own devices to the providers of its contracts for them
//! ([`RadioRpc::JobHandoff`], in an envelope it signs); a provider keeps the requests of the
//! devices' owner only ([`Handoffs`]) and fetches their image into its store at once (the owner
//! may be dead when it is needed); once it takes custody of any of the devices, it resumes the
//! job over the devices as they are then.

use std::collections::BTreeSet;

use agora_devices::DeviceMeta;
use agora_devices::handoff::{JobHandoff, Received};
use agora_market::NodeId;
use agora_wire::now_ms;
use tokio::net::UdpSocket;
use tracing::{Instrument, debug, info, warn};

use super::{KEY_TIMEOUT, RadioTask, ask_peer};
use crate::RadioRpc;
use crate::firmware::{JobRequest, Origin, load_image};

impl RadioTask {
    /// Owner: sends the hand-offs due (each a request of its own; the answers come back on
    /// `handoff_tx`). The recipients are the providers of this node's open contracts for the
    /// devices as the ledger says now (the key holders of `crate::rotation`): not an edge
    /// that managed them once, whose contract ended (it would learn the owner's jobs, and
    /// keep asking for their images, for nothing).
    pub(super) fn send_handoffs(&mut self) {
        let (rotation, me) = (&self.rotation, self.me);
        let due = self.jobs.handoffs_due(now_ms(), |devices| {
            devices
                .iter()
                .flat_map(|d| rotation.holders_of(*d))
                .filter(|m| *m != me)
                .collect()
        });
        for (job, peer, handoff) in due {
            self.send_handoff(job, peer, handoff);
        }
    }

    fn send_handoff(&mut self, job: u64, peer: NodeId, handoff: JobHandoff) {
        let finished = handoff.finished;
        let env = self.seal(&RadioRpc::JobHandoff { handoff });
        let (network, tx) = (self.network.clone(), self.handoff_tx.clone());
        tokio::spawn(
            async move {
                let mut kept = false;
                if let Ok(env) = env {
                    kept = matches!(
                        ask_peer(&network, peer, &env, KEY_TIMEOUT, "a job hand-off").await,
                        Some(RadioRpc::HandoffAck { kept: true })
                    );
                }
                if kept {
                    info!(job, %peer, finished, "firmware job handed to the devices' provider");
                } else {
                    debug!(job, %peer, finished, "firmware job hand-off not kept (yet): sent again later");
                }
                let _ = tx.send((job, peer, kept, finished)).await;
            }
            .in_current_span(),
        );
    }

    /// Provider: a hand-off signed by `sender`; kept only if `sender` owns every device it
    /// names (as this node's ledger says: the customer of its contracts for them).
    pub(super) async fn on_handoff(&mut self, id: u64, sender: NodeId, handoff: JobHandoff) {
        let (job, firmware) = (handoff.job, handoff.firmware.clone());
        let owners = &self.owners;
        let received = self
            .handoffs
            .receive(now_ms(), sender, handoff, |d| owners.get(d));
        let changed = matches!(received, Ok(Received::Kept { .. } | Received::Retired));
        let kept = match received {
            Ok(Received::Kept { evicted }) => {
                info!(owner = %sender, job, %firmware, "firmware job handed over by the devices' owner: kept");
                if let Some((owner, j)) = evicted {
                    info!(%owner, job = j, "hand-off table full: one evicted");
                }
                self.hold_handoff_images();
                true
            }
            Ok(Received::AlreadyResumed) => true,
            Ok(Received::Stale) => {
                // A late copy (a resend or a retry that crossed a later word of the owner):
                // answered as kept, since sending it again changes nothing.
                debug!(owner = %sender, job, "firmware job hand-off older than what this edge heard: ignored");
                true
            }
            Ok(Received::Retired) => {
                info!(owner = %sender, job, "firmware job finished by its owner: hand-off retired");
                true
            }
            Err(e) => {
                let s = self.handoffs.stats;
                let refused = s.refused_not_owner + s.refused_malformed;
                if refused <= 16 || refused.is_power_of_two() {
                    warn!(%sender, job, error = %e, refused, "firmware job hand-off refused");
                }
                false
            }
        };
        if changed {
            // Before the answer: a provider that says it keeps a hand-off has it on disk.
            crate::handoff_file::save(self.handoffs_file.as_deref(), &self.handoffs);
        }
        if let Ok(env) = self.seal(&RadioRpc::HandoffAck { kept }) {
            let _ = self.network.respond(id, &env).await;
        }
    }

    /// Holds (fetches and pins) the image of every kept hand-off not held yet, now while its
    /// owner is alive, and lets go of those whose hand-off left the table (retired, expired,
    /// evicted). After a restart the table comes back from its file and every image is held
    /// again (the node drops its holds at start, but the blocks stay until a collection).
    pub(super) fn hold_handoff_images(&mut self) {
        let gone: Vec<(NodeId, u64)> = self
            .held_images
            .keys()
            .filter(|k| !self.handoffs.images().any(|(kept, _)| kept == **k))
            .copied()
            .collect();
        for key in gone {
            if let Some(cid) = self.held_images.remove(&key) {
                let (storage, holder) = (self.storage.clone(), image_holder(&key));
                tokio::spawn(async move {
                    if let Err(e) = storage.release(cid, &holder).await {
                        debug!(%cid, error = %e, "hand-off image hold not released");
                    }
                });
            }
        }
        let new: Vec<((NodeId, u64), agora_storage::Cid)> = self
            .handoffs
            .images()
            .filter(|(key, _)| !self.held_images.contains_key(key))
            // A malformed image id is refused when the job resumes.
            .filter_map(|(key, firmware)| Some((key, agora_exchange::parse_cid(firmware).ok()?)))
            .collect();
        for (key, cid) in new {
            self.held_images.insert(key, cid);
            let (storage, holder) = (self.storage.clone(), image_holder(&key));
            let max = crate::firmware::MAX_FIRMWARE_BYTES.saturating_mul(2);
            tokio::spawn(
                async move {
                    match storage.hold(cid, &holder, Some(max)).await {
                        Ok(_) => debug!(%cid, %holder, "handed-over firmware image held"),
                        Err(e) => {
                            warn!(%cid, error = %e, "handed-over firmware image not fetched yet")
                        }
                    }
                }
                .in_current_span(),
            );
        }
    }

    /// Provider: starts loading the images of kept hand-offs of which this edge now has custody
    /// of a device; [`Self::on_resume`] starts the job.
    pub(super) fn resume_handoffs(&mut self) {
        if !self.handoffs.waiting() {
            return;
        }
        let table = &self.table;
        let expired = self.handoffs.stats.expired;
        let due = self.handoffs.due(now_ms(), |d| {
            table.get(&d).is_some_and(|d| d.status.service.is_some())
        });
        if !due.is_empty() || self.handoffs.stats.expired != expired {
            crate::handoff_file::save(self.handoffs_file.as_deref(), &self.handoffs);
        }
        for (owner, h) in due {
            // Kept while its sender owned the devices here; resumed only if it still does (a
            // customer whose claim ended must not have its job run on the next claimant's
            // devices, with the keys that claimant hands: device audit of session 50).
            if !h.devices.iter().any(|d| self.owners.get(*d) == Some(owner)) {
                warn!(%owner, job = h.job, devices = ?h.devices, "kept firmware hand-off dropped: its sender no longer owns the devices here");
                continue;
            }
            info!(%owner, job = h.job, devices = ?h.devices, "custody taken: resuming the owner's firmware job");
            let (storage, tx) = (self.storage.clone(), self.resume_tx.clone());
            tokio::spawn(
                async move {
                    let image = load_image(&storage, &h.firmware)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = tx.send((owner, h, image)).await;
                }
                .in_current_span(),
            );
        }
    }

    /// Provider: the image of a hand-off whose turn came is loaded: runs the job over its
    /// devices as discovery knows them now (those already on the version are skipped, those
    /// left in their bootloader are flashed again, those not in custody here are reported
    /// `not_managed`).
    pub(super) async fn on_resume(
        &mut self,
        socket: Option<&UdpSocket>,
        owner: NodeId,
        h: JobHandoff,
        image: Result<Vec<u8>, String>,
    ) {
        let image = match (socket, image) {
            (Some(_), Ok(i)) => i,
            (None, _) => return,
            (_, Err(e)) => {
                self.jobs.stats.resume_failed += 1;
                warn!(%owner, job = h.job, error = %e, "handed-over firmware job not resumed: image not loaded");
                return;
            }
        };
        let request = JobRequest {
            selector: h.selector.clone(),
            firmware: h.firmware.clone(),
            version: h.version.clone(),
            max_unavailable: h.max_unavailable,
            firmware_type: Some(h.firmware_type.clone()),
        };
        // Devices the owner finished (updated or rolled back) are not redone here.
        // And only the devices its sender still owns here, checked now (the image load may
        // have taken a while): a device it lost meanwhile is another party's.
        let done: BTreeSet<u32> = h.done.iter().map(|(d, _)| *d).collect();
        let devices: BTreeSet<u32> = h
            .devices
            .iter()
            .copied()
            .filter(|d| !done.contains(d) && self.owners.get(*d) == Some(owner))
            .collect();
        if devices.is_empty() {
            info!(%owner, job = h.job, "handed-over firmware job: the owner finished every device; nothing to resume");
            return;
        }
        let table: Vec<DeviceMeta> = self
            .discovery
            .metas()
            .into_iter()
            .filter(|m| devices.contains(&m.id))
            .collect();
        let managed = self.managed_here(table.iter().map(|m| m.id));
        let origin = Origin::Resumed {
            owner,
            job: h.job,
            done: h.done.clone(),
        };
        match self
            .jobs
            .start(now_ms(), &request, image, table, managed, origin)
        {
            Ok((started, out)) => {
                info!(%owner, owner_job = h.job, job = started.id, devices = started.devices, "handed-over firmware job resumed");
                self.send_requests(socket, out).await;
            }
            Err(e) => {
                self.jobs.stats.resume_failed += 1;
                warn!(%owner, job = h.job, error = %e, "handed-over firmware job not resumed");
            }
        }
    }
}

/// The pin holder of a kept hand-off's image.
fn image_holder((owner, job): &(NodeId, u64)) -> String {
    format!("handoff:{owner}:{job}")
}
