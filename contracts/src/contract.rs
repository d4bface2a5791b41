//! The staked service contract between a customer and a provider: its terms, canonical bytes
//! and content-derived id. Signing and verification live in [`signed`].

use std::fmt;

use agora_market::{NodeId, Timestamp};
use cid::Cid;
use serde::{Deserialize, Serialize};

pub mod signed;
pub mod terms;

pub use signed::{ContractError, Party, SignedContract};
pub use terms::Terms;

/// Token amounts (smallest unit).
pub type Amount = u64;

/// A contract's id: blake3 over its canonical bytes.
///
/// 32 bytes in binary formats (CBOR); its 64-character hex text in human-readable ones (JSON
/// from the API and CLI), as printed in tables and taken by CLI arguments.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContractId(pub [u8; 32]);

impl Serialize for ContractId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            serde_bytes::serialize(&self.0, s)
        }
    }
}

impl<'de> Deserialize<'de> for ContractId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(agora_market::identity::id32::Text::new(
                "a hex contract id",
                |s| s.parse::<ContractId>().ok().map(|c| c.0),
            ))
            .map(ContractId)
        } else {
            serde_bytes::deserialize::<[u8; 32], D>(d).map(ContractId)
        }
    }
}

impl ContractId {
    /// The short human form (first 8 hex characters), used in logs.
    pub fn short(&self) -> String {
        self.to_string().chars().take(8).collect()
    }
}

impl fmt::Display for ContractId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ContractId {
    type Err = ContractError;
    /// Parses the 64-character hex form printed by `Display`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ContractError::BadId(s.to_string());
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(ContractId(out))
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn ids_are_text_in_json_and_bytes_in_cbor() {
        let id = ContractId([0xab; 32]);
        let node = agora_market::NodeId([7; 32]);
        let json = serde_json::to_string(&(id, node)).unwrap();
        assert_eq!(json, format!("[\"{id}\",\"{node}\"]"));
        let back: (ContractId, agora_market::NodeId) = serde_json::from_str(&json).unwrap();
        assert_eq!(back, (id, node));
        // Older JSON (arrays of numbers) still reads.
        let old = serde_json::to_string(&([0xabu8; 32], [7u8; 32])).unwrap();
        let back: (ContractId, agora_market::NodeId) = serde_json::from_str(&old).unwrap();
        assert_eq!(back, (id, node));
        assert!(serde_json::from_str::<ContractId>("\"zz\"").is_err());
        assert!(serde_json::from_str::<agora_market::NodeId>("[1,2,3]").is_err());
        // The binary form is the plain 32-byte string it always was (signed bytes unchanged).
        let cbor = serde_cbor::to_vec(&id).unwrap();
        assert_eq!(
            cbor,
            serde_cbor::to_vec(&serde_bytes::Bytes::new(&[0xab; 32])).unwrap()
        );
        assert_eq!(serde_cbor::from_slice::<ContractId>(&cbor).unwrap(), id);
        let cbor = serde_cbor::to_vec(&node).unwrap();
        assert_eq!(
            cbor,
            serde_cbor::to_vec(&serde_bytes::Bytes::new(&[7; 32])).unwrap()
        );
        assert_eq!(
            serde_cbor::from_slice::<agora_market::NodeId>(&cbor).unwrap(),
            node
        );
    }

    #[test]
    fn contract_id_parses_its_display_form() {
        let id = ContractId([0xab; 32]);
        assert_eq!(id.to_string().parse::<ContractId>().unwrap(), id);
        assert!("abc".parse::<ContractId>().is_err());
        assert!("zz".repeat(32).parse::<ContractId>().is_err());
    }
}

impl fmt::Debug for ContractId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContractId({})", self.short())
    }
}

/// When the provider must start the customer's service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivationClause {
    /// As soon as the contract is armed.
    Immediately,
    /// When the committee attests the customer unreachable for at least this long.
    OnHandover {
        /// How long the customer must be unreachable before handover.
        unreachable_for_ms: u64,
    },
    /// At a fixed time.
    At(Timestamp),
}

/// What the contract buys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContractKind {
    /// The provider runs the service now and is paid for verified uptime.
    Hosted,
    /// The provider keeps the service ready and takes over on handover.
    Standby,
    /// The provider stores data and answers storage challenges.
    Storage,
}

/// Quality-of-service obligations the provider is judged against at settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qos {
    /// Longest allowed delay between the trigger and the reported activation.
    pub max_activation_delay_ms: u64,
    /// Minimum uptime (or passed storage challenges) in thousandths.
    pub min_uptime_permille: u16,
    /// How often the provider must send heartbeats while active.
    pub heartbeat_interval_ms: u64,
}

/// Stakes both parties lock in escrow; the provider's is slashed on breach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stakes {
    /// Locked by the customer, returned at the end.
    pub customer_stake: Amount,
    /// Locked by the provider, paid to the customer on breach.
    pub provider_stake: Amount,
}

/// The contract body both parties sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contract {
    /// Who pays and whose service is run.
    pub customer: NodeId,
    /// Who hosts, stands by or stores.
    pub provider: NodeId,
    /// The agreed resources and price.
    pub terms: Terms,
    /// CID of the service image (Wasm module).
    #[serde(with = "crate::cid_text")]
    pub service_image: Cid,
    /// CID of the service configuration.
    #[serde(with = "crate::cid_text")]
    pub config: Cid,
    /// When the service must be started.
    pub activation: ActivationClause,
    /// Hosted, standby or storage.
    pub kind: ContractKind,
    /// Length of the service period in ms (from activation; for storage from arming).
    pub duration_ms: u64,
    /// QoS obligations.
    pub qos: Qos,
    /// Stakes locked in escrow.
    pub stakes: Stakes,
    /// Payment the customer locks in escrow for the full duration.
    pub payment: Amount,
    /// Arbitrators who attest liveness and storage challenges for this contract.
    pub committee: Vec<NodeId>,
    /// When the parties agreed (ms).
    pub created_at: Timestamp,
    /// Distinguishes otherwise identical contracts.
    pub nonce: u64,
}

/// The most interfaces a contract's terms may name.
pub const MAX_INTERFACES: usize = 64;
/// The longest interface name a contract's terms may carry, bytes.
pub const MAX_INTERFACE_LEN: usize = 64;

impl Contract {
    /// The canonical bytes: CBOR of the body. Signatures and the id are over these.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, ContractError> {
        serde_cbor::to_vec(self).map_err(|e| ContractError::Encoding(e.to_string()))
    }

    /// The content-derived id.
    pub fn id(&self) -> Result<ContractId, ContractError> {
        Ok(ContractId(
            *blake3::hash(&self.canonical_bytes()?).as_bytes(),
        ))
    }

    /// Total the customer locks at registration: payment plus the customer stake.
    pub fn customer_lock(&self) -> Option<Amount> {
        self.payment.checked_add(self.stakes.customer_stake)
    }

    /// Checks the body is self-consistent (not the signatures).
    pub fn validate(&self) -> Result<(), ContractError> {
        let id = self.id()?;
        let bad = |reason: &str| ContractError::Malformed {
            contract: id,
            reason: reason.to_string(),
        };
        if self.customer == self.provider {
            return Err(bad("customer and provider are the same node"));
        }
        if self.duration_ms == 0 {
            return Err(bad("duration_ms must be greater than zero"));
        }
        if self.qos.min_uptime_permille > 1000 {
            return Err(bad("min_uptime_permille must be at most 1000"));
        }
        if self.qos.heartbeat_interval_ms == 0 {
            return Err(bad("heartbeat_interval_ms must be greater than zero"));
        }
        if self.committee.is_empty() {
            return Err(bad(
                "the arbitrator committee is empty; name at least one arbitrator",
            ));
        }
        let mut sorted = self.committee.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.committee.len() {
            return Err(bad("the committee lists an arbitrator twice"));
        }
        if sorted.contains(&self.customer) || sorted.contains(&self.provider) {
            return Err(bad("a party cannot sit on its own contract's committee"));
        }
        let handover = matches!(self.activation, ActivationClause::OnHandover { .. });
        if handover != (self.kind == ContractKind::Standby) {
            return Err(bad(
                "standby contracts (and only they) must activate OnHandover",
            ));
        }
        if self.customer_lock().is_none() {
            return Err(bad("payment plus customer stake overflows"));
        }
        // A contract that pays nothing costs its parties nothing to register and every replica
        // its record (THREATS N12).
        if self.payment == 0 {
            return Err(bad("payment must be greater than zero"));
        }
        if self.terms.interfaces.len() > MAX_INTERFACES
            || self
                .terms
                .interfaces
                .iter()
                .any(|i| i.len() > MAX_INTERFACE_LEN)
        {
            return Err(bad(&format!(
                "at most {MAX_INTERFACES} interfaces of at most {MAX_INTERFACE_LEN} bytes each"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::ContractBuilder;

    #[test]
    fn id_changes_with_any_field() {
        let c = ContractBuilder::new(1, 2).build();
        let mut other = c.clone();
        other.nonce += 1;
        assert_ne!(c.id().unwrap(), other.id().unwrap());
        assert_eq!(c.id().unwrap(), c.clone().id().unwrap());
    }

    #[test]
    fn validate_rejects_party_in_committee() {
        let mut c = ContractBuilder::new(1, 2).build();
        c.committee.push(c.provider);
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ContractError::Malformed { .. }), "{err}");
    }

    #[test]
    fn validate_rejects_standby_without_handover_clause() {
        let mut c = ContractBuilder::new(1, 2).standby(5_000).build();
        assert!(c.validate().is_ok());
        c.activation = ActivationClause::Immediately;
        assert!(c.validate().is_err());
    }

    #[test]
    fn validate_rejects_zero_duration_and_duplicate_arbitrators() {
        let mut c = ContractBuilder::new(1, 2).build();
        c.duration_ms = 0;
        assert!(c.validate().is_err());
        let mut c = ContractBuilder::new(1, 2).build();
        let first = c.committee[0];
        c.committee.push(first);
        assert!(c.validate().is_err());
    }
}
