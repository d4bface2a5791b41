//! Key rotation on the radio task (threats R1/R2; the decisions are `crate::rotation`'s).
//!
//! Owner: when the ledger drops a provider that was handed a device's working key, the next
//! epoch's key goes to the providers that remain ([`RadioRpc::KeyUpdate`]), then the device is
//! sent a rekey sealed under its root key, until it answers ([`Reply::Rekeyed`]) or a frame
//! under the next key shows it moved. Provider: takes a key update only from the devices'
//! owner as its ledger knows it, keeps it as the next key, and promotes it once the device's
//! frames verify under it; a device whose frames stop verifying has its key asked for again
//! (at most every [`REFETCH_EVERY`]), for an edge that missed the update.
//!
//! [`Reply::Rekeyed`]: agora_devices::agent::Reply::Rekeyed

use std::time::Instant;

use agora_devices::agent::Request;
use agora_market::NodeId;
use agora_wire::now_ms;
use agora_wire::radio::HandedKey;
use agora_wire::radio::endpoint::seal_request;
use tokio::net::UdpSocket;
use tracing::{Instrument, debug, info, warn};

use super::{KEY_TIMEOUT, RadioTask, Step, ask_peer};
use crate::RadioRpc;

/// How often a provider asks a device's owner again for a key its frames no longer verify
/// under.
const REFETCH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl RadioTask {
    /// Owner: a rotation of `device` to `epoch` starts (`revoked` no longer provide for it),
    /// because a holder dropped out or, `by_hand`, the operator asked for it.
    pub(super) fn begin_rotation(
        &mut self,
        device: u32,
        epoch: u32,
        revoked: &[NodeId],
        by_hand: bool,
    ) {
        if self.keys.begin_rotation(device, epoch).is_none() {
            return;
        }
        let why = if by_hand {
            "asked for by the operator"
        } else {
            "a provider that held it no longer provides for it"
        };
        warn!(device, epoch, ?revoked, "rotating the device's key: {why}");
    }

    /// Owner: carries out the rotation steps due.
    pub(super) async fn drive_rotations(&mut self, socket: Option<&UdpSocket>) {
        for step in self.rotation.due(now_ms()) {
            match step {
                Step::Push { device, epoch, to } => self.push_key(device, epoch, to),
                Step::Rekey { device, epoch } => self.send_rekey(socket, device, epoch).await,
            }
        }
    }

    fn push_key(&mut self, device: u32, epoch: u32, to: Vec<NodeId>) {
        let keys: Vec<HandedKey> = self
            .keys
            .owned(device)
            .into_iter()
            .filter(|k| k.epoch == epoch)
            .collect();
        if keys.is_empty() {
            return;
        }
        let env = self.seal(&RadioRpc::KeyUpdate { keys });
        let Ok(env) = env else {
            return;
        };
        for peer in to {
            let (network, tx, env) = (self.network.clone(), self.rot_tx.clone(), env.clone());
            tokio::spawn(
                async move {
                    if let Some(RadioRpc::KeysTaken { devices }) =
                        ask_peer(&network, peer, &env, KEY_TIMEOUT, "a key update").await
                        && devices.contains(&device)
                    {
                        let _ = tx.send((device, epoch, peer)).await;
                    }
                }
                .in_current_span(),
            );
        }
    }

    async fn send_rekey(&mut self, socket: Option<&UdpSocket>, device: u32, epoch: u32) {
        let Some(root) = self.keys.root(device).cloned() else {
            return;
        };
        self.request_counter = now_ms().max(self.request_counter.saturating_add(1));
        let bytes = match seal_request(
            &root,
            device,
            self.request_counter,
            &Request::Rekey { epoch },
        ) {
            Ok(b) => b,
            Err(e) => return warn!(device, error = %e, "rekey not encodable"),
        };
        match (socket, self.discovery.addr_of(device)) {
            (Some(s), Some(addr)) => match s.send_to(&bytes, addr).await {
                Ok(_) => {
                    self.stats.rekeys_sent += 1;
                    debug!(device, epoch, %addr, "rekey sent");
                }
                Err(e) => debug!(device, error = %e, "rekey not sent"),
            },
            (None, _) => debug!(device, "rekey not sent: no radio socket"),
            (_, None) => debug!(
                device,
                "rekey not sent yet: the device's address is unknown"
            ),
        }
    }

    /// A device's answer to a rekey (from the address it is heard on).
    pub(super) fn on_rekeyed(&mut self, device: u32, epoch: u32) {
        if self.rotation.pending_epoch(device) == Some(epoch) {
            self.moved_to_next(device);
        } else {
            debug!(
                device,
                epoch, "rekey answer for no rotation under way here: ignored"
            );
        }
    }

    /// The device is at its next epoch: the next key is the current one now.
    pub(super) fn moved_to_next(&mut self, device: u32) {
        let Some(epoch) = self.keys.promote(device) else {
            return;
        };
        if self.rotation.confirmed(device, epoch) {
            self.stats.keys_rotated += 1;
            info!(
                device,
                epoch, "device key rotated: the old working key opens nothing any more"
            );
            // A provider dropped meanwhile starts the next rotation.
            for (d, e, revoked) in self.rotation.start_due(now_ms()) {
                self.begin_rotation(d, e, &revoked, false);
            }
        }
        // The buffer is not re-checked: its frames were verified when they came (under the
        // key of their epoch); re-checking them under the new key alone would drop them.
    }

    /// Provider: a frame of `device` verified under no key held here. If the key came from
    /// the device's owner, ask it again (at most every [`REFETCH_EVERY`]): it may have rotated
    /// the key while this edge missed the update. A forged frame costs the owner one answer per
    /// period; the owner hands keys only to providers its ledger names.
    pub(super) fn ask_key_again(&mut self, device: u32) {
        if self.keys.root(device).is_some() || !self.keys.has(device) {
            return;
        }
        let Some(owner) = self.owners.get(device) else {
            return;
        };
        if owner == self.me
            || self
                .refetched
                .get(&device)
                .is_some_and(|t| t.elapsed() < REFETCH_EVERY)
        {
            return;
        }
        if self.refetched.len() >= self.cfg.max_devices && !self.refetched.contains_key(&device) {
            return;
        }
        self.refetched.insert(device, Instant::now());
        self.key_fetches.insert(device, (owner, 0));
        self.next_key_fetch = Instant::now();
        debug!(device, %owner, "frames no longer verify: asking the owner for the key again");
    }

    /// Provider: the devices' owner hands over next-epoch keys. Taken only for devices whose
    /// owner, as this node's ledger knows it, signed the update.
    pub(super) async fn on_key_update(&mut self, id: u64, sender: NodeId, keys: Vec<HandedKey>) {
        let (mine, others): (Vec<HandedKey>, Vec<HandedKey>) = keys
            .into_iter()
            .take(agora_wire::radio::MAX_KEYS_PER_MESSAGE)
            .partition(|k| self.owners.get(k.device) == Some(sender) && sender != self.me);
        if !others.is_empty() {
            self.stats.key_updates_refused += 1;
            if self.stats.key_updates_refused <= 16
                || self.stats.key_updates_refused.is_power_of_two()
            {
                warn!(
                    %sender,
                    devices = ?others.iter().map(|k| k.device).collect::<Vec<_>>(),
                    "key update refused: its signer does not own these devices as this node's \
                     ledger knows"
                );
            }
        }
        let taken: Vec<u32> = mine.iter().map(|k| k.device).collect();
        let changed = self.keys.receive(mine, sender, self.cfg.max_devices);
        self.stats.key_updates_taken += changed.len() as u64;
        if !changed.is_empty() {
            info!(%sender, devices = ?changed, "next device keys taken from their owner");
        }
        let devices = taken.into_iter().filter(|d| self.keys.has(*d)).collect();
        if let Ok(env) = self.seal(&RadioRpc::KeysTaken { devices }) {
            let _ = self.network.respond(id, &env).await;
        }
    }
}
