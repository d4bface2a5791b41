//! Wire messages of the fleet protocol, decoded with a size check before any allocation.

use serde::{Deserialize, Serialize};

use crate::FleetError;
use crate::limits::{MAX_CID_LEN, MAX_REASON_LEN, MAX_RECORD_BYTES};
use crate::plan::TargetPhase;
use crate::record::Deployment;
use crate::selector::CandidateFacts;
use agora_market::ids::DeploymentId;

/// Gossip topic on which deployers announce records (push).
pub const FLEET_TOPIC: &str = "agora/fleet/v1";

/// Largest encoded fleet message (a record plus a little framing).
pub const MAX_MESSAGE_BYTES: usize = MAX_RECORD_BYTES + 256;

/// A fleet message, on gossip (`Announce`) or request-response (the others).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FleetMessage {
    /// The newest version of a deployment (gossip on a push, or the answer to a poll).
    Announce(Box<Deployment>),
    /// A target asks for the newest version of `deployment` (pull), saying what it offers.
    Poll {
        /// The deployment.
        deployment: DeploymentId,
        /// The version the asker holds (0: none).
        have_version: u64,
        /// The asker's facts (region, labels, capacity), so the deployer can choose it.
        facts: CandidateFacts,
    },
    /// A provider that a deployment selects offers itself as a target (push; refreshed).
    Candidate {
        /// The deployment.
        deployment: DeploymentId,
        /// The provider's facts.
        facts: CandidateFacts,
    },
    /// The answer to a poll when nothing newer is held.
    UpToDate {
        /// The deployment.
        deployment: DeploymentId,
    },
    /// A target tells the deployer where its replica is.
    Report {
        /// The deployment.
        deployment: DeploymentId,
        /// The version the target acts on.
        version: u64,
        /// Its phase.
        phase: TargetPhase,
        /// Why (failures), at most [`MAX_REASON_LEN`] bytes.
        reason: Option<String>,
        /// The image this phase is about (during an upgrade a target runs two), at most
        /// [`MAX_CID_LEN`] alphanumerics. Not encoded when absent (reports from before it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        /// How many times the target's runtime restarted this replica (its restart policy).
        /// Not encoded when absent (older targets, or none yet); a u32, so bounded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        restarts: Option<u32>,
        /// Why the runtime last restarted it, at most [`MAX_REASON_LEN`] bytes. Not encoded
        /// when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_failure: Option<String>,
    },
}

impl FleetMessage {
    /// Encodes for the wire.
    pub fn encode(&self) -> Result<Vec<u8>, FleetError> {
        serde_cbor::to_vec(self).map_err(|e| FleetError::Decode(e.to_string()))
    }

    /// Decodes peer bytes: size first, then CBOR, then the bounds of free-text fields. Records
    /// inside are NOT verified here (see [`crate::decode_deployment`] and
    /// [`crate::FleetState`], which verify before storing).
    pub fn decode(bytes: &[u8]) -> Result<FleetMessage, FleetError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(FleetError::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        let msg: FleetMessage =
            serde_cbor::from_slice(bytes).map_err(|e| FleetError::Decode(e.to_string()))?;
        match &msg {
            FleetMessage::Report {
                reason: Some(r), ..
            }
            | FleetMessage::Report {
                last_failure: Some(r),
                ..
            } if r.len() > MAX_REASON_LEN => {
                return Err(FleetError::TooLarge {
                    len: r.len(),
                    max: MAX_REASON_LEN,
                });
            }
            FleetMessage::Report {
                image: Some(image), ..
            } if image.is_empty()
                || image.len() > MAX_CID_LEN
                || !image.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                return Err(FleetError::Decode(
                    "a report's image is not CID text of at most 128 alphanumerics".into(),
                ));
            }
            FleetMessage::Poll { facts, .. } | FleetMessage::Candidate { facts, .. } => {
                facts.check().map_err(|hint| FleetError::BadSelector {
                    part: "candidate facts".into(),
                    hint,
                })?;
            }
            _ => {}
        }
        Ok(msg)
    }
}
