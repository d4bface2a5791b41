//! The signed deployment record: desired state for a fleet, versioned, with bounded fields.

use serde::{Deserialize, Serialize};

use crate::FleetError;
use crate::limits::{
    MAX_AFTER, MAX_CID_LEN, MAX_CREATE_SKEW_MS, MAX_NAME_LEN, MAX_RECORD_BYTES, MAX_REPLICAS,
    MAX_VALID_FOR_MS,
};
use crate::selector::{ProviderFacts, Selector};
use crate::variant::{Variant, check_variants};
use agora_market::identity::{Domain, NodeId, Signer, Timestamp};
use agora_market::ids::{DeploymentId, DeploymentRecordId};
use agora_market::resources::Resources;
use agora_market::signed::{Body, Signed};

/// How many providers should host the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Replicas {
    /// Exactly this many (fewer while not enough providers match).
    Count(u32),
    /// Every matching provider (at most [`MAX_REPLICAS`]).
    All,
}

impl Replicas {
    /// The most targets this deployment may ever hold.
    pub fn ceiling(&self) -> usize {
        match self {
            Replicas::Count(n) => usize::try_from(*n)
                .unwrap_or(MAX_REPLICAS)
                .min(MAX_REPLICAS),
            Replicas::All => MAX_REPLICAS,
        }
    }
}

/// How targets learn of a new version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// The deployer announces on gossip; matching targets act at once.
    Push,
    /// Targets ask for the desired state at an interval.
    Pull,
}

impl std::str::FromStr for Strategy {
    type Err = FleetError;
    fn from_str(s: &str) -> Result<Self, FleetError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "push" => Ok(Strategy::Push),
            "pull" => Ok(Strategy::Pull),
            other => Err(FleetError::BadStrategy(other.chars().take(32).collect())),
        }
    }
}

/// The unsigned content of a deployment record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentBody {
    /// Who deploys (and pays every target's contract).
    pub deployer: NodeId,
    /// The deployer's name for it; with `deployer` it makes the [`DeploymentId`].
    pub name: String,
    /// CID (text) of the service image every target runs.
    pub image: String,
    /// During and after an upgrade: the image it replaces, which every target rolls back to if
    /// the new one is not healthy (bounded like `image`). Not encoded when absent, so records
    /// without it sign and verify exactly as before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_image: Option<String>,
    /// Which providers qualify.
    pub selector: Selector,
    /// Variants of the service (issue #16): each target runs exactly one, chosen by
    /// [`crate::variant::assign`] among those whose constraint admits it; `image` is then
    /// the first variant's. At most [`crate::MAX_VARIANTS`]; not encoded when empty, so
    /// records without variants sign and verify exactly as before the field existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
    /// Resources one replica needs (a target must have them free to be chosen).
    pub needs: Resources,
    /// Dependency order across nodes: the names of this deployer's other deployments that
    /// must be healthy before this one places a target (and that cannot be deleted while this
    /// one is live). At most [`MAX_AFTER`]; not encoded when empty, so records without it sign
    /// and verify exactly as before the field existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// How many targets.
    pub replicas: Replicas,
    /// Push or pull.
    pub strategy: Strategy,
    /// Version, increasing; a higher version replaces a lower one everywhere.
    pub version: u64,
    /// A tombstone: every target stops and is released.
    pub deleted: bool,
    /// Highest total price per replica's contract, in tokens.
    pub max_price_per_replica: u64,
    /// How long each replica's contract runs, in ms.
    pub duration_ms: u64,
    /// Author nonce (unique per deployer).
    pub nonce: u64,
    /// Creation time of this version.
    pub created_at: Timestamp,
    /// After this time nobody keeps or acts on this version.
    pub expires_at: Timestamp,
}

/// A signed deployment record.
pub type Deployment = Signed<DeploymentBody>;

impl Body for DeploymentBody {
    const DOMAIN: Domain = Domain::DEPLOYMENT;
    const KIND: &'static str = "deployment";
    type Id = DeploymentRecordId;
    fn author(&self) -> NodeId {
        self.deployer
    }
    fn nonce(&self) -> u64 {
        self.nonce
    }
    fn expires_at(&self) -> Timestamp {
        self.expires_at
    }
}

/// The stable id of `deployer`'s deployment called `name`.
pub fn deployment_id(deployer: &NodeId, name: &str) -> DeploymentId {
    let mut h = blake3::Hasher::new();
    h.update(b"agora/v1/deployment-id\0");
    h.update(&deployer.0);
    h.update(name.as_bytes());
    DeploymentId(*h.finalize().as_bytes())
}

impl DeploymentBody {
    /// The stable id of this deployment (same for every version).
    pub fn id(&self) -> DeploymentId {
        deployment_id(&self.deployer, &self.name)
    }

    /// True when `p` qualifies to keep hosting a replica: the selector admits it and, with
    /// variants, at least one variant's constraint does too.
    pub fn admits(&self, p: &ProviderFacts) -> bool {
        self.selector.admits(p, &self.needs)
            && (self.variants.is_empty()
                || self
                    .variants
                    .iter()
                    .any(|v| v.selector.admits(p, &self.needs)))
    }

    /// True when `p` qualifies as a new target: admitted, with one replica's needs free.
    pub fn can_take(&self, p: &ProviderFacts) -> bool {
        self.admits(p) && self.needs.fits_in(&p.free)
    }

    /// Every image a target of this deployment may run: the variants', or the one image.
    pub fn images(&self) -> Vec<&str> {
        if self.variants.is_empty() {
            vec![self.image.as_str()]
        } else {
            self.variants.iter().map(|v| v.image.as_str()).collect()
        }
    }

    /// Checks every field's bounds; `now` bounds the times.
    pub fn check(&self, now: Timestamp) -> Result<(), FleetError> {
        let id = self.id();
        let absurd = |field: &'static str, hint: &'static str| FleetError::Absurd {
            deployment: id,
            field,
            hint,
        };
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN || !is_token(&self.name) {
            return Err(absurd(
                "name",
                "1 to 64 characters of a-z, 0-9, '-', '_' or '.'",
            ));
        }
        if !is_cid_text(&self.image) {
            return Err(absurd("image", "a CID in text form (base32 or base58)"));
        }
        if let Some(prev) = &self.previous_image
            && (!is_cid_text(prev) || *prev == self.image)
        {
            return Err(absurd(
                "previous_image",
                "a CID in text form (base32 or base58) other than the image",
            ));
        }
        self.selector
            .check()
            .map_err(|hint| absurd("selector", hint))?;
        check_variants(&self.variants, &self.image).map_err(|hint| absurd("variants", hint))?;
        if !self.variants.is_empty() && self.previous_image.is_some() {
            return Err(absurd(
                "previous_image",
                "none on a deployment with variants (they are not upgraded in place)",
            ));
        }
        let after_hint = "at most 16 other deployments' names, none twice";
        if self.after.len() > MAX_AFTER {
            return Err(absurd("after", after_hint));
        }
        for (i, name) in self.after.iter().enumerate() {
            if name.is_empty()
                || name.len() > MAX_NAME_LEN
                || !is_token(name)
                || *name == self.name
                || self.after[..i].contains(name)
            {
                return Err(absurd("after", after_hint));
            }
        }
        if let Replicas::Count(n) = self.replicas
            && (n == 0 || usize::try_from(n).map_or(true, |n| n > MAX_REPLICAS))
        {
            return Err(absurd("replicas", "1 to 1024, or all"));
        }
        if self.version == 0 {
            return Err(absurd("version", "versions start at 1"));
        }
        if self.duration_ms == 0 {
            return Err(absurd("duration_ms", "a positive contract duration"));
        }
        if self.created_at > now.saturating_add(MAX_CREATE_SKEW_MS) {
            return Err(absurd("created_at", "not more than a minute in the future"));
        }
        if self.expires_at > now.saturating_add(MAX_VALID_FOR_MS) {
            return Err(absurd(
                "expires_at",
                "at most 24 hours after now (deployers re-sign before expiry)",
            ));
        }
        if self.expires_at <= now {
            return Err(FleetError::Expired {
                deployment: id,
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }
}

/// True for CID text: 1..=[`MAX_CID_LEN`] ASCII alphanumerics.
fn is_cid_text(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_CID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// True for names made of `a-z 0-9 - _ .` (the form that goes into ids and file names).
pub(crate) fn is_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// Decodes a record from peer bytes, checking the size before decoding, then the signature and
/// every field's bounds. Returns the record and its stable id.
pub fn decode_deployment(
    bytes: &[u8],
    now: Timestamp,
) -> Result<(Deployment, DeploymentId), FleetError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(FleetError::TooLarge {
            len: bytes.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    let record: Deployment =
        serde_cbor::from_slice(bytes).map_err(|e| FleetError::Decode(e.to_string()))?;
    let id = record.body.id();
    record.verify().map_err(|e| FleetError::BadRecord {
        deployment: id,
        reason: e.to_string(),
    })?;
    record.body.check(now)?;
    Ok((record, id))
}

/// Encodes a record for the wire (the inverse of [`decode_deployment`]).
pub fn encode_deployment(record: &Deployment) -> Result<Vec<u8>, FleetError> {
    let bytes = serde_cbor::to_vec(record).map_err(|e| FleetError::Decode(e.to_string()))?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(FleetError::TooLarge {
            len: bytes.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    Ok(bytes)
}

/// What a deployer fills in; [`DeploymentSpec::sign`] adds identity, times, version and signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    /// Name (1..=64 of `a-z 0-9 - _ .`).
    pub name: String,
    /// Image CID text.
    pub image: String,
    /// Which providers qualify.
    pub selector: Selector,
    /// Variants (empty: every target runs `image`); with variants, `image` must be the first
    /// variant's.
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// Per-replica resources.
    pub needs: Resources,
    /// How many.
    pub replicas: Replicas,
    /// Push or pull.
    pub strategy: Strategy,
    /// Highest price per replica's contract.
    pub max_price_per_replica: u64,
    /// Contract duration per replica, ms.
    pub duration_ms: u64,
    /// How long this version stays valid, ms (the deployer re-signs before it lapses).
    pub valid_for_ms: u64,
    /// The deployer's deployments (names) that must be healthy before this one is placed.
    #[serde(default)]
    pub after: Vec<String>,
}

impl DeploymentSpec {
    /// Signs version `version` at `now`, checking it like a peer would.
    pub fn sign(
        self,
        signer: &dyn Signer,
        now: Timestamp,
        version: u64,
        nonce: u64,
    ) -> Result<Deployment, FleetError> {
        let body = DeploymentBody {
            deployer: signer.node_id(),
            name: self.name,
            image: self.image,
            previous_image: None,
            selector: self.selector,
            variants: self.variants,
            needs: self.needs,
            after: self.after,
            replicas: self.replicas,
            strategy: self.strategy,
            version,
            deleted: false,
            max_price_per_replica: self.max_price_per_replica,
            duration_ms: self.duration_ms,
            nonce,
            created_at: now,
            expires_at: now.saturating_add(self.valid_for_ms),
        };
        body.check(now)?;
        let record = Signed::sign(body, signer).map_err(|e| FleetError::Sign(e.to_string()))?;
        // A record peers would refuse (too large with its variants) is refused here first.
        encode_deployment(&record)?;
        Ok(record)
    }
}

/// The tombstone for `record`: the next version (the later of version + 1 and `now`, so it
/// supersedes whatever a restarted deployer signed before), marked deleted, signed at `now`.
pub fn tombstone(
    record: &DeploymentBody,
    signer: &dyn Signer,
    now: Timestamp,
    valid_for_ms: u64,
) -> Result<Deployment, FleetError> {
    let mut body = record.clone();
    body.version = next_version(body.version, now);
    body.deleted = true;
    body.nonce = body.version;
    body.created_at = now;
    body.expires_at = now.saturating_add(valid_for_ms);
    body.check(now)?;
    Signed::sign(body, signer).map_err(|e| FleetError::Sign(e.to_string()))
}

/// The next version of `record` moving its targets to `image` (an upgrade): `previous_image`
/// is the image it replaces, the version the later of version + 1 and `now`, signed at `now`.
/// The pure upgrade machine ([`crate::upgrade`]) drives the targets; this is the record
/// every node reads (`agora deploy upgrade` is not wired yet).
pub fn upgraded(
    record: &DeploymentBody,
    image: String,
    signer: &dyn Signer,
    now: Timestamp,
    valid_for_ms: u64,
) -> Result<Deployment, FleetError> {
    let mut body = record.clone();
    body.previous_image = Some(std::mem::replace(&mut body.image, image));
    body.version = next_version(body.version, now);
    body.nonce = body.version;
    body.created_at = now;
    body.expires_at = now.saturating_add(valid_for_ms);
    body.check(now)?;
    Signed::sign(body, signer).map_err(|e| FleetError::Sign(e.to_string()))
}

/// The next version of `record` (a deployment with variants) naming `variants` instead: the
/// upgrade of some variants' images, or the rollback to the previous ones. `image` follows the
/// first variant's, as every record with variants has it.
pub fn with_variants(
    record: &DeploymentBody,
    variants: Vec<Variant>,
    signer: &dyn Signer,
    now: Timestamp,
    valid_for_ms: u64,
) -> Result<Deployment, FleetError> {
    let mut body = record.clone();
    if let Some(first) = variants.first() {
        body.image = first.image.clone();
    }
    body.variants = variants;
    body.version = next_version(body.version, now);
    body.nonce = body.version;
    body.created_at = now;
    body.expires_at = now.saturating_add(valid_for_ms);
    body.check(now)?;
    let record = Signed::sign(body, signer).map_err(|e| FleetError::Sign(e.to_string()))?;
    encode_deployment(&record)?;
    Ok(record)
}

/// The version after `previous` at `now`: versions follow the clock, so a deployer that lost
/// its state still supersedes what it signed before.
pub fn next_version(previous: u64, now: Timestamp) -> u64 {
    previous.saturating_add(1).max(now)
}
