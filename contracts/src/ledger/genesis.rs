//! Genesis: the chain id, initial balances, the arbitrator committee and ledger parameters.
//!
//! Node ids are written as base58 strings in human-readable formats (TOML/JSON genesis files)
//! and as raw bytes in binary ones (CBOR snapshots).

use agora_market::NodeId;
use serde::{Deserialize, Serialize};

use crate::contract::Amount;

/// Tunables every replica must agree on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LedgerParams {
    /// An arbitrator's attestation counts towards handover for this long after it was applied.
    pub attestation_window_ms: u64,
    /// Most a single faucet transaction may mint.
    pub faucet_max_per_tx: Amount,
    /// Reputation a provider gains per honoured contract.
    pub reputation_reward: i64,
    /// Reputation a provider loses per breached contract.
    pub reputation_penalty: i64,
    /// Extra time after a contract's duration before an unarmed contract may be expired.
    pub expiry_grace_ms: u64,
    /// How far a reported activation time may lie before the ledger time of the report; older
    /// claims are clamped, so a provider cannot backdate a late activation. A `NoActivation`
    /// settlement is accepted only this long after the activation deadline.
    pub activation_report_grace_ms: u64,
    /// Smallest contract committee `RegisterContract` accepts: 3f+1 with f ≥ 1 is 4, the least
    /// that tolerates one faulty arbitrator. Committees are drawn from the genesis arbitrators.
    pub min_committee: usize,
    /// Least a transfer may credit to an account that does not exist yet, and least an account
    /// must hold (spendable, locked and bonded together) for the mempool to admit its
    /// transactions: a key that never held this much cannot grow the state or the mempool.
    pub min_account_balance: Amount,
    /// Most the faucet mints to one account over the chain's life.
    pub faucet_max_per_account: Amount,
    /// Most the faucet mints in one block, all accounts together.
    pub faucet_max_per_block: Amount,
    /// Bond every genesis arbitrator locks from its genesis balance; burned when it is proven
    /// to have equivocated (`ReportEquivocation`).
    pub arbitrator_bond: Amount,
    /// How far a proposed block's time may lie from a validator's own clock, either way
    /// (see [`crate::ledger::check_block_time`]).
    pub block_time_tolerance_ms: u64,
    /// How long after a probe interval or audit round ends the committee's reports for it are
    /// still accepted; later reports are refused and an undecided round stays undecided.
    pub quorum_report_grace_ms: u64,
    /// Most contract records one customer may have the ledger hold at once: open ones and
    /// closed ones not forgotten yet (`RETAIN_CLOSED_MS`). A further `RegisterContract` is
    /// refused, so one funded key cannot grow every replica's state past this however fast it
    /// registers (THREATS N12). A fleet of this many targets, each upgraded once an hour, fits.
    pub max_contracts_per_customer: u32,
}

/// The default of [`LedgerParams::activation_report_grace_ms`]: how old an activation claim
/// may be when it lands, and how long after a contract's activation deadline a `NoActivation`
/// settlement waits (so an honest provider's report in flight is not beaten by it).
pub const ACTIVATION_REPORT_GRACE_MS: u64 = 10_000;

impl Default for LedgerParams {
    fn default() -> Self {
        LedgerParams {
            attestation_window_ms: 60_000,
            faucet_max_per_tx: 1_000_000,
            reputation_reward: 10,
            reputation_penalty: 50,
            expiry_grace_ms: 60_000,
            activation_report_grace_ms: ACTIVATION_REPORT_GRACE_MS,
            min_committee: 4,
            min_account_balance: 1_000,
            faucet_max_per_account: 10_000_000,
            faucet_max_per_block: 5_000_000,
            arbitrator_bond: 10_000,
            block_time_tolerance_ms: 2_000,
            quorum_report_grace_ms: 10_000,
            max_contracts_per_customer: 4_096,
        }
    }
}

/// One funded account at genesis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisAccount {
    /// The account's node id.
    #[serde(with = "b58")]
    pub id: NodeId,
    /// Its initial balance.
    pub balance: Amount,
}

/// The initial ledger state, written once by `agora` into the devnet's genesis file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// Transactions must name this chain; prevents replay across devnets.
    pub chain_id: String,
    /// Funded accounts.
    pub accounts: Vec<GenesisAccount>,
    /// The arbitrators who may attest (contract committees are drawn from these). Each must be
    /// a funded account holding at least `params.arbitrator_bond`, which is locked as its bond.
    #[serde(with = "b58_vec")]
    pub committee: Vec<NodeId>,
    /// Whether `Faucet` transactions may mint tokens (devnets only).
    pub faucet_enabled: bool,
    /// Ledger tunables.
    #[serde(default)]
    pub params: LedgerParams,
}

/// Serde helper: a `NodeId` as base58 in human-readable formats, bytes otherwise.
pub mod b58 {
    use agora_market::NodeId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

    /// Serializes one node id.
    pub fn serialize<S: Serializer>(id: &NodeId, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&id.to_string())
        } else {
            id.serialize(s)
        }
    }

    /// Deserializes one node id.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(D::Error::custom)
        } else {
            NodeId::deserialize(d)
        }
    }
}

/// Serde helper: a list of `NodeId`s, base58 in human-readable formats.
pub mod b58_vec {
    use agora_market::NodeId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

    /// Serializes a list of node ids.
    pub fn serialize<S: Serializer>(ids: &[NodeId], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let strings: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
            strings.serialize(s)
        } else {
            ids.serialize(s)
        }
    }

    /// Deserializes a list of node ids.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeId>, D::Error> {
        if d.is_human_readable() {
            let strings = Vec::<String>::deserialize(d)?;
            strings
                .iter()
                .map(|s| s.parse().map_err(D::Error::custom))
                .collect()
        } else {
            Vec::<NodeId>::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::genesis_with;

    #[test]
    fn genesis_round_trips_through_json_with_base58_ids() {
        let (genesis, _, _) = genesis_with(3, 4, 1_000);
        let json = serde_json::to_string(&genesis).unwrap();
        assert!(json.contains(&genesis.committee[0].to_string()));
        let back: Genesis = serde_json::from_str(&json).unwrap();
        assert_eq!(back, genesis);
    }

    #[test]
    fn genesis_round_trips_through_cbor() {
        let (genesis, _, _) = genesis_with(2, 1, 5);
        let bytes = serde_cbor::to_vec(&genesis).unwrap();
        let back: Genesis = serde_cbor::from_slice(&bytes).unwrap();
        assert_eq!(back, genesis);
    }

    #[test]
    fn bad_node_id_in_genesis_is_an_error() {
        let json = r#"{"chain_id":"x","accounts":[],"committee":["nope!"],"faucet_enabled":false}"#;
        assert!(serde_json::from_str::<Genesis>(json).is_err());
    }
}
