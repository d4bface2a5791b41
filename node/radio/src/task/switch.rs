//! A start-first upgrade on this node (issue #15, docs/FLEETS.md "Upgrade"): the old instance's
//! devices and key-value state move to the new instance in one command of this task, so no
//! frame is fed between the copy and the re-routing. Frames that arrive meanwhile wait in the
//! socket and go to the new instance; each device keeps its last processed sequence number, so
//! the first reading the new instance gets is the one after the old one's last.

use std::time::{Duration, Instant};

use agora_contracts::state::{MAX_STATE_BYTES, MAX_STATE_ENTRIES};
use tracing::{info, warn};

use super::RadioTask;
use crate::SwitchOutcome;

/// Longest wait for the old instance to be quiescent (its queued readings taken, no guest call
/// running) before the devices move without its state.
pub(super) const SWITCH_WAIT: Duration = Duration::from_secs(3);

impl RadioTask {
    /// Moves `from`'s key-value state into `to`, routes `devices` from `from` to `to` and
    /// checkpoints what `from` processed.
    pub(super) async fn switch(&mut self, from: &str, to: &str, devices: &[u32]) -> SwitchOutcome {
        let deadline = Instant::now() + SWITCH_WAIT;
        let state = loop {
            match self
                .services
                .kv_move(from, to, MAX_STATE_ENTRIES, MAX_STATE_BYTES)
            {
                Ok(Some(keys)) => break Ok(keys),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(None) => {
                    break Err(format!(
                        "the old instance stayed busy for {} s",
                        SWITCH_WAIT.as_secs()
                    ));
                }
                Err(e) => break Err(e),
            }
        };
        let mut last_processed = Vec::new();
        for device in devices {
            let d = self.table.local_entry(*device);
            d.status.service = Some(to.to_string());
            d.status.buffering = false;
            last_processed.push((*device, d.status.last_processed));
        }
        // What the old instance processed is checkpointed under its name.
        if let Some(p) = self.state.take_in_flight(from) {
            self.publish_checkpoint(p).await;
        }
        let frames = self.pending.remove(from).unwrap_or_default();
        self.checkpoint_frames(from, frames, Vec::new()).await;
        match &state {
            Ok(keys) => info!(%from, %to, keys, ?last_processed, "devices and state moved"),
            Err(e) => warn!(%from, %to, error = %e, "devices moved without the state"),
        }
        SwitchOutcome {
            keys: state.as_ref().ok().copied(),
            not_moved: state.err(),
            last_processed,
        }
    }
}
