//! Provider, a start-first upgrade on this node (issue #15, docs/FLEETS.md "Upgrade"): when the
//! contract that holds a service line ends while a newer contract of the line stands by, the
//! old instance's devices and key-value state move to the new one before it stops. Which
//! contract holds and who takes over is `agora_contracts::state::lineage`; the move itself is
//! one command of the radio task ([`agora_radio::RadioHandle::switch`]).

use agora_contracts::ContractId;
use agora_contracts::state::lineage::switch_devices;

use super::{Hosted, Orchestrator};

impl Orchestrator {
    /// Hands the devices and state of `from` (ending; `h` is its record) to the stand-by `to`.
    pub(super) async fn switch_to(&mut self, from: ContractId, h: &Hosted, to: ContractId) {
        let to_devices = self
            .hosted
            .get(&to)
            .map(|t| t.devices.clone())
            .unwrap_or_default();
        let (moved, released, added) = switch_devices(&h.devices, &to_devices);
        let to_id = Self::service_id(&to);
        let out = self
            .radio
            .switch(Self::service_id(&from), to_id.clone(), moved.clone())
            .await;
        if !released.is_empty() {
            self.radio.release(released.clone()).await;
            self.radio.listen(released.clone(), false).await;
        }
        if !added.is_empty() {
            let peer = self.radio.peer_covered(&added).await;
            self.radio.assign(added.clone(), to_id, peer).await;
        }
        let devices = format!(
            "devices {moved:?} moved (last processed by the old instance: {:?}), {released:?} \
             released, {added:?} taken fresh",
            out.last_processed
        );
        match (out.keys, out.not_moved) {
            (Some(keys), _) => self.timeline.push(
                "state-moved",
                Some(&to),
                format!(
                    "{keys} keys of contract {}'s state moved here at the upgrade switch; {devices}",
                    from.short()
                ),
            ),
            (None, reason) => self.timeline.push(
                "state-not-moved",
                Some(&to),
                format!(
                    "contract {}'s state not moved at the upgrade switch ({}); {devices}",
                    from.short(),
                    reason.unwrap_or_default()
                ),
            ),
        }
    }
}
