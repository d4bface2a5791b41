//! Fleet deployments (issue #15): one signed, versioned record of desired state — an image, a
//! selector over providers, a replica count or "all", push or pull — and the pure rules a node
//! reconciles with: selector matching, target choice and `plan(desired, observed, now)`.
//!
//! Hosting is paid per target through the existing auction → award → contract path; this module
//! decides only *which* providers should host and which should stop. See docs/FLEETS.md.
//!
//! Pure like `agora-market`, beside which it lives (no clock, socket, file or task: time and
//! signing are passed in); it may depend on `agora-market` (identities, signatures, resources,
//! ids) only.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod message;
pub mod plan;
pub mod record;
pub mod selector;
pub mod state;
pub mod store;
#[cfg(test)]
mod tests;
pub mod upgrade;
pub mod variant;

pub use message::{FLEET_TOPIC, FleetMessage};
pub use plan::{
    ALL_OFFLINE_SPANS, Action, Observed, PlanConfig, ReleaseReason, TargetPhase, TargetStatus,
    plan, plan_parts, summarize, wants,
};
pub use record::{
    Deployment, DeploymentBody, DeploymentSpec, Replicas, Strategy, decode_deployment,
    deployment_id, encode_deployment, next_version, tombstone, upgraded,
};
pub use selector::{CandidateFacts, ProviderFacts, Selector};
pub use state::{
    BALANCE_TTL_MS, DeploymentView, Effect, FleetConfig, FleetCounters, FleetState, Input,
    LiveContract, LocalReplica, OwnDeployment, RESTORE_GRACE_MS, RestoreReport, SavedDeployment,
    SavedFleet, TargetView, UpgradeTargetView, UpgradeView,
};
pub use store::{DeploymentStore, StoreCounters, StoreLimits, Stored};
pub use upgrade::{Outcome, Step, Upgrade, UpgradeAction, UpgradeConfig, UpgradeTo, Which};
pub use variant::{MAX_VARIANTS, Variant, assign};

use agora_market::identity::{NodeId, Timestamp};
use agora_market::ids::DeploymentId;

/// Bounds on every field of a record that arrives from outside.
pub mod limits {
    /// Largest encoded record accepted (checked before decoding).
    pub const MAX_RECORD_BYTES: usize = 4096;
    /// Longest deployment name.
    pub const MAX_NAME_LEN: usize = 64;
    /// Longest image CID text.
    pub const MAX_CID_LEN: usize = 128;
    /// Longest region name.
    pub const MAX_REGION_LEN: usize = 64;
    /// Most labels in a selector (and in a provider's config).
    pub const MAX_LABELS: usize = 16;
    /// Longest label key.
    pub const MAX_LABEL_KEY_LEN: usize = 32;
    /// Longest label value.
    pub const MAX_LABEL_VALUE_LEN: usize = 64;
    /// Most targets one deployment may hold (also the meaning of `--all`).
    pub const MAX_REPLICAS: usize = 1024;
    /// Most deployments one deployment may wait for (`after`).
    pub const MAX_AFTER: usize = 16;
    /// Longest failure reason carried in a report.
    pub const MAX_REASON_LEN: usize = 200;
    /// How far in the future a record's creation time may be.
    pub const MAX_CREATE_SKEW_MS: u64 = 60_000;
    /// Longest a signed version may stay valid (an honest deployer signs for 10 minutes and
    /// re-signs before expiry): a stranger's record cannot outlive every honest one in a full
    /// store.
    pub const MAX_VALID_FOR_MS: u64 = 24 * 60 * 60 * 1000;
}

/// Why a deployment record or command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// The encoded record is larger than any honest one.
    #[error("deployment record of {len} bytes exceeds the {max}-byte limit; dropping it")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a deployment record.
    #[error("could not decode a deployment record: {0}; is the peer running a compatible agora?")]
    Decode(String),
    /// The signature does not verify.
    #[error("deployment {deployment} has a bad record: {reason}")]
    BadRecord {
        /// The deployment.
        deployment: DeploymentId,
        /// Why.
        reason: String,
    },
    /// A field is out of bounds.
    #[error("deployment {deployment}: field {field} is out of bounds; expected {hint}")]
    Absurd {
        /// The deployment.
        deployment: DeploymentId,
        /// The field.
        field: &'static str,
        /// What is accepted.
        hint: &'static str,
    },
    /// The record expired.
    #[error(
        "deployment {deployment} expired at {expires_at} (now {now}); the deployer must re-sign it"
    )]
    Expired {
        /// The deployment.
        deployment: DeploymentId,
        /// Its expiry.
        expires_at: Timestamp,
        /// Now.
        now: Timestamp,
    },
    /// Signing failed locally.
    #[error("could not sign the deployment record: {0}")]
    Sign(String),
    /// `--to` text that is not a selector.
    #[error("selector part '{part}' is not valid: {hint}")]
    BadSelector {
        /// The offending part.
        part: String,
        /// The accepted form.
        hint: &'static str,
    },
    /// `--variant` text that is not a variant.
    #[error("variant '{text}' is not valid: {hint}")]
    BadVariant {
        /// The offending text.
        text: String,
        /// The accepted form.
        hint: &'static str,
    },
    /// `create` of a live deployment switching between one image and variants.
    #[error(
        "deployment {deployment} would switch between one image and variants; delete it (agora deploy delete) and create it again (a deployment with variants may be given other variants in place)"
    )]
    VariantsChanged {
        /// The deployment.
        deployment: DeploymentId,
    },
    /// `--strategy` that is neither push nor pull.
    #[error("strategy '{0}' is unknown; use --strategy push or --strategy pull")]
    BadStrategy(String),
    /// A deployer already has its quota of records in this node's store.
    #[error(
        "deployer {deployer} already has {max} deployments in this node's store; delete some first"
    )]
    DeployerQuota {
        /// The deployer.
        deployer: NodeId,
        /// The quota.
        max: usize,
    },
    /// Changing the image of a live deployment through `create`: that is an upgrade.
    #[error(
        "deployment {deployment} runs another image; change it with `agora deploy upgrade \
         {deployment} --image NEW_CID` (start-first, rolled back if unhealthy)"
    )]
    UpgradeNotSupported {
        /// The deployment.
        deployment: DeploymentId,
    },
    /// An upgrade of this deployment is under way.
    #[error(
        "deployment {deployment} is being upgraded; wait for it to finish (agora deploy status \
         shows its waves) before changing it again"
    )]
    UpgradeUnderWay {
        /// The deployment.
        deployment: DeploymentId,
    },
    /// An upgrade that cannot start: deleted, or already on that image.
    #[error("deployment {deployment} cannot be upgraded: {reason}")]
    NotUpgradable {
        /// The deployment.
        deployment: DeploymentId,
        /// Why.
        reason: &'static str,
    },
    /// An upgrade of variants names a variant the deployment does not have.
    #[error(
        "deployment {deployment} has no variant '{name}'; `agora deploy status {deployment}` \
         lists its variants (an upgrade changes their images only)"
    )]
    UnknownVariant {
        /// The deployment.
        deployment: DeploymentId,
        /// The name given.
        name: String,
    },
    /// This node already deploys its maximum number of deployments.
    #[error("this node already deploys {max} deployments; delete some (agora deploy delete) first")]
    TooManyOwn {
        /// The limit.
        max: usize,
    },
    /// A deployment this node did not create.
    #[error("deployment {deployment} is not one of this node's; `agora deploy list` shows them")]
    NotMine {
        /// The deployment.
        deployment: DeploymentId,
    },
    /// The store is full of records that matter at least as much.
    #[error("the deployment store is full ({max} records); retry when some expire")]
    StoreFull {
        /// The cap.
        max: usize,
    },
    /// Deleting a deployment that live deployments wait for (`--after`): they are deleted
    /// first, so nothing is left running without what it needs.
    #[error(
        "deployment '{name}' is needed by {} (deployed --after {name}); delete {} first",
        dependents.join(", "),
        if dependents.len() == 1 { "it" } else { "them" }
    )]
    NeededBy {
        /// The deployment's name.
        name: String,
        /// The live deployments that wait for it.
        dependents: Vec<String>,
    },
    /// A deployment's `--after` closes a cycle: every deployment in it would wait for ever.
    #[error("deployments wait for each other in a cycle: {}", cycle.join(" -> "))]
    AfterCycle {
        /// The names around the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
}
