//! Uptime probes (`Kind::Probe` request-response, #13.10): an arbitrator of an active hosted or
//! standby contract asks the provider, once per probe interval, whether the contract's service
//! runs; the provider answers only the members of that contract's committee.
//!
//! What an answer proves: the provider's node was reachable over the swarm during the interval
//! and signed (the envelope's signature, sender = the provider) a statement naming the contract,
//! the interval and the arbitrator's fresh nonce, saying whether its hosting layer reports the
//! contract's service instance running, and — when the image exports `agora_probe` — the value
//! its live instance computed for the nonce, which the arbitrator checks on its own instance of
//! the image (`agora_contracts::probe`): the provider holds the image and executed it at probe
//! time. It does not prove the guest ran between probes (a provider that instantiates on demand
//! passes) nor that it does useful work; for an image without the export the hosting layer's
//! word is all there is.

use agora_contracts::ContractId;
use serde::{Deserialize, Serialize};

/// Request-response body of an uptime probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeMsg {
    /// Arbitrator → provider: does the service of `contract` run now?
    Ask {
        /// The contract whose service is probed.
        contract: ContractId,
        /// The probe interval (evidence round) this probe is for.
        interval: u64,
        /// A fresh random number the answer must repeat (an answer cannot be prepared ahead).
        nonce: u64,
    },
    /// Provider → arbitrator: the signed statement.
    Answer {
        /// The contract asked about.
        contract: ContractId,
        /// The interval asked about.
        interval: u64,
        /// The nonce asked with.
        nonce: u64,
        /// Whether the provider's hosting layer reports the contract's service instance running.
        running: bool,
        /// What the live instance's `agora_probe(nonce)` export returned, when the image has
        /// one (`agora_contracts::probe`): the arbitrator checks it against its own instance.
        #[serde(default)]
        guest: Option<i64>,
    },
    /// Provider → arbitrator: not answered, and why (not a committee member, over quota, not
    /// this node's contract). Counts as down for the asker.
    Refused {
        /// The reason.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::{Envelope, Kind, MAX_RPC_BYTES};
    use agora_market::{KeySigner, Signer};

    #[test]
    fn a_probe_answer_round_trips_signed_by_its_sender() {
        let s = KeySigner::from_seed(7);
        let msg = ProbeMsg::Answer {
            contract: ContractId([1; 32]),
            interval: 3,
            nonce: 42,
            running: true,
            guest: Some(-7),
        };
        let env = Envelope::seal_body(&s, Kind::Probe, 10, 1, &msg).unwrap();
        let back = Envelope::open(&env.to_bytes(), MAX_RPC_BYTES).unwrap();
        assert_eq!(back.sender, s.node_id());
        assert_eq!(back.body::<ProbeMsg>(Kind::Probe).unwrap(), msg);
        assert!(
            back.body::<ProbeMsg>(Kind::Storage).is_err(),
            "kind is checked"
        );
    }
}
