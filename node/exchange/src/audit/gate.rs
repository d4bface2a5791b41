//! Who a provider answers storage challenges from (#13.7, threat A3): only the arbitrators of
//! one of its storage contracts keeping the challenged file, each over its own connection, at
//! most [`CHALLENGES_PER_ROUND`] answered challenges per member and contract per audit round.
//! Everything else is refused with a [`ChallengeRefusal`] and counted ([`ChallengeStats`], shown
//! by `agora storage stats`), before any disk read or answer slot is spent on it.
//!
//! The orchestrator writes the table from the ledger (contract, file, committee, round length)
//! when it takes custody and clears it when the contract ends; the responder only reads it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use agora_market::{NodeId, Timestamp};
use agora_network::PeerId;
use agora_network::keys::peer_id_of;
use agora_storage::Cid;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Challenges one committee member gets answered per contract per audit round. Its duty is one
/// (from the round's middle); two leave room for a restart or clock skew near a round's edge.
pub const CHALLENGES_PER_ROUND: u32 = 2;

/// Why a challenge was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeRefusal {
    /// The envelope's signer is not the peer that sent it.
    #[error(
        "challenge signed by {signer} arrived from peer {peer}; an arbitrator challenges over its own connection"
    )]
    Relayed {
        /// Short id of the signer.
        signer: String,
        /// The peer it came from.
        peer: String,
    },
    /// No storage contract of this node keeps the file.
    #[error("no storage contract of this node keeps {file}; nothing to prove")]
    NoContract {
        /// The challenged file.
        file: String,
    },
    /// The asker is not an arbitrator of any contract keeping the file.
    #[error(
        "{asker} is not an arbitrator of a storage contract keeping {file}; only the contract's committee may challenge"
    )]
    NotArbitrator {
        /// Short id of the asker.
        asker: String,
        /// The challenged file.
        file: String,
    },
    /// The asker already had its challenges of this round answered.
    #[error(
        "{asker} is over its quota for {file}: {allowed} challenges per {window_ms} ms audit round; challenge again next round"
    )]
    OverQuota {
        /// Short id of the asker.
        asker: String,
        /// The challenged file.
        file: String,
        /// Challenges allowed per window.
        allowed: u32,
        /// Window length (the audit round), ms.
        window_ms: u64,
    },
}

/// Counters of the provider's challenge gate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeStats {
    /// Challenges admitted and answered from the store.
    pub answered: u64,
    /// Refused: signer and sending peer differ.
    pub refused_relayed: u64,
    /// Refused: no storage contract keeps the file.
    pub refused_no_contract: u64,
    /// Refused: the asker is not an arbitrator of a contract keeping the file.
    pub refused_not_arbitrator: u64,
    /// Refused: the arbitrator was over its per-round quota.
    pub refused_over_quota: u64,
    /// Answered "busy": every answer slot was taken (the asker may retry).
    pub busy: u64,
    /// Malformed or not a challenge.
    pub malformed: u64,
    /// Commitment blocks shown to committee members that did not hold them (THREATS P4).
    #[serde(default)]
    pub commitments_shown: u64,
}

impl ChallengeStats {
    /// Every refusal for who asked (relayed, no contract, not an arbitrator, over quota).
    pub fn refused(&self) -> u64 {
        self.refused_relayed
            + self.refused_no_contract
            + self.refused_not_arbitrator
            + self.refused_over_quota
    }
}

/// One storage contract this node keeps a file for.
#[derive(Clone, Debug)]
struct Kept {
    file: Cid,
    committee: Vec<NodeId>,
    round_ms: u64,
}

#[derive(Debug, Default)]
struct GateState {
    contracts: BTreeMap<[u8; 32], Kept>,
    /// (asker, file) → (window start, challenges answered in it). Only committee members of a
    /// kept contract get an entry, so the table is bounded by the contracts and committees.
    windows: BTreeMap<(NodeId, Cid), (Timestamp, u32)>,
    stats: ChallengeStats,
}

impl GateState {
    /// Contracts keeping `file` whose committee holds `asker`: (count, shortest round).
    fn memberships(&self, asker: &NodeId, file: &Cid) -> Result<(u32, u64), ChallengeRefusal> {
        let mut keeping = false;
        let (mut n, mut round_ms) = (0u32, u64::MAX);
        for k in self.contracts.values().filter(|k| k.file == *file) {
            keeping = true;
            if k.committee.contains(asker) {
                n = n.saturating_add(1);
                round_ms = round_ms.min(k.round_ms);
            }
        }
        match (keeping, n) {
            (false, _) => Err(ChallengeRefusal::NoContract {
                file: file.to_string(),
            }),
            (true, 0) => Err(ChallengeRefusal::NotArbitrator {
                asker: asker.short(),
                file: file.to_string(),
            }),
            _ => Ok((n, round_ms.max(1))),
        }
    }

    fn count(&mut self, refusal: &ChallengeRefusal) {
        let (counter, what) = match refusal {
            ChallengeRefusal::Relayed { .. } => (&mut self.stats.refused_relayed, "relayed"),
            ChallengeRefusal::NoContract { .. } => {
                (&mut self.stats.refused_no_contract, "no contract")
            }
            ChallengeRefusal::NotArbitrator { .. } => {
                (&mut self.stats.refused_not_arbitrator, "not an arbitrator")
            }
            ChallengeRefusal::OverQuota { .. } => {
                (&mut self.stats.refused_over_quota, "over quota")
            }
        };
        *counter += 1;
        if counter.is_power_of_two() {
            warn!(refused = *counter, why = what, error = %refusal, "storage challenges refused");
        }
    }
}

/// The provider's table of who may challenge which file; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ChallengeGate(Arc<Mutex<GateState>>);

impl ChallengeGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This node keeps `file` for storage contract `contract`, audited by `committee` in
    /// rounds of `round_ms`.
    pub fn insert(&self, contract: [u8; 32], file: Cid, committee: Vec<NodeId>, round_ms: u64) {
        self.lock().contracts.insert(
            contract,
            Kept {
                file,
                committee,
                round_ms,
            },
        );
    }

    /// The contract ended (or custody was refused): its committee may no longer challenge.
    pub fn remove(&self, contract: &[u8; 32]) {
        let mut s = self.lock();
        if s.contracts.remove(contract).is_none() {
            return;
        }
        let GateState {
            contracts, windows, ..
        } = &mut *s;
        windows.retain(|(asker, file), _| {
            contracts
                .values()
                .any(|k| k.file == *file && k.committee.contains(asker))
        });
    }

    /// Whether `asker` (the envelope's signer), sending from `peer`, may challenge `file` at
    /// all; a refusal is counted. Spends no quota (a busy answer is not an answer).
    pub fn check(&self, asker: NodeId, peer: PeerId, file: &Cid) -> Result<(), ChallengeRefusal> {
        let mut s = self.lock();
        let result = if peer_id_of(&asker) != Some(peer) {
            Err(ChallengeRefusal::Relayed {
                signer: asker.short(),
                peer: peer.to_string(),
            })
        } else {
            s.memberships(&asker, file).map(|_| ())
        };
        if let Err(r) = &result {
            s.count(r);
        }
        result
    }

    /// Spends one of `asker`'s answers for `file` at `now`: admitted, or refused (and counted)
    /// when over quota or no longer a member.
    pub fn spend(&self, asker: NodeId, file: &Cid, now: Timestamp) -> Result<(), ChallengeRefusal> {
        let mut s = self.lock();
        let result = match s.memberships(&asker, file) {
            Err(r) => Err(r),
            Ok((contracts, window_ms)) => {
                let allowed = CHALLENGES_PER_ROUND.saturating_mul(contracts);
                let w = s.windows.entry((asker, *file)).or_insert((now, 0));
                if now.saturating_sub(w.0) >= window_ms || now < w.0 {
                    *w = (now, 0);
                }
                if w.1 >= allowed {
                    Err(ChallengeRefusal::OverQuota {
                        asker: asker.short(),
                        file: file.to_string(),
                        allowed,
                        window_ms,
                    })
                } else {
                    w.1 += 1;
                    Ok(())
                }
            }
        };
        match &result {
            Ok(()) => s.stats.answered += 1,
            Err(r) => s.count(r),
        }
        result
    }

    /// Counts a commitment block shown to a committee member.
    pub fn count_shown(&self) {
        self.lock().stats.commitments_shown += 1;
    }

    /// Counts a busy answer.
    pub fn count_busy(&self) {
        self.lock().stats.busy += 1;
    }

    /// Counts a malformed request.
    pub fn count_malformed(&self) {
        self.lock().stats.malformed += 1;
    }

    /// The counters so far.
    pub fn stats(&self) -> ChallengeStats {
        self.lock().stats.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use agora_market::{KeySigner, Signer};
    use agora_storage::hash::{RAW, cid_v1_blake3};

    use super::*;

    fn node(i: u8) -> NodeId {
        KeySigner::from_seed(u64::from(i)).node_id()
    }

    fn peer(n: &NodeId) -> PeerId {
        peer_id_of(n).unwrap()
    }

    fn setup() -> (ChallengeGate, Cid, Vec<NodeId>) {
        let gate = ChallengeGate::default();
        let file = cid_v1_blake3(RAW, b"file");
        let committee: Vec<NodeId> = (1..=4).map(node).collect();
        gate.insert([1; 32], file, committee.clone(), 2_000);
        (gate, file, committee)
    }

    #[test]
    fn strangers_and_unkept_files_are_refused_and_counted() {
        let (gate, file, _) = setup();
        let stranger = node(9);
        assert!(matches!(
            gate.check(stranger, peer(&stranger), &file),
            Err(ChallengeRefusal::NotArbitrator { .. })
        ));
        let other = cid_v1_blake3(RAW, b"other");
        let member = node(1);
        assert!(matches!(
            gate.check(member, peer(&member), &other),
            Err(ChallengeRefusal::NoContract { .. })
        ));
        // Spending re-checks membership: a stranger never gets an answer.
        assert!(gate.spend(stranger, &file, 0).is_err());
        let s = gate.stats();
        assert_eq!(s.refused_not_arbitrator, 2);
        assert_eq!(s.refused_no_contract, 1);
        assert_eq!(s.answered, 0);
        assert_eq!(s.refused(), 3);
    }

    #[test]
    fn a_member_challenge_relayed_by_another_peer_is_refused() {
        let (gate, file, committee) = setup();
        let relay = node(9);
        assert!(matches!(
            gate.check(committee[0], peer(&relay), &file),
            Err(ChallengeRefusal::Relayed { .. })
        ));
        assert_eq!(gate.stats().refused_relayed, 1);
        assert!(gate.check(committee[0], peer(&committee[0]), &file).is_ok());
    }

    #[test]
    fn each_member_gets_its_quota_per_round_and_no_more() {
        let (gate, file, committee) = setup();
        for m in &committee {
            for _ in 0..CHALLENGES_PER_ROUND {
                gate.spend(*m, &file, 1_000).unwrap();
            }
            assert!(matches!(
                gate.spend(*m, &file, 1_500),
                Err(ChallengeRefusal::OverQuota { allowed: 2, .. })
            ));
        }
        // One member's flood does not touch another's quota; the next round opens it again.
        gate.spend(committee[0], &file, 3_000).unwrap();
        let s = gate.stats();
        assert_eq!(s.answered, 4 * u64::from(CHALLENGES_PER_ROUND) + 1);
        assert_eq!(s.refused_over_quota, 4);
    }

    #[test]
    fn a_member_of_two_contracts_for_the_same_file_gets_both_quotas() {
        let (gate, file, committee) = setup();
        gate.insert([2; 32], file, vec![committee[0]], 10_000);
        for _ in 0..2 * CHALLENGES_PER_ROUND {
            gate.spend(committee[0], &file, 0).unwrap();
        }
        assert!(gate.spend(committee[0], &file, 1).is_err());
    }

    #[test]
    fn an_ended_contract_closes_its_committee_and_its_windows() {
        let (gate, file, committee) = setup();
        gate.spend(committee[0], &file, 0).unwrap();
        gate.remove(&[1; 32]);
        assert!(matches!(
            gate.check(committee[0], peer(&committee[0]), &file),
            Err(ChallengeRefusal::NoContract { .. })
        ));
        assert!(gate.lock().windows.is_empty());
    }
}
