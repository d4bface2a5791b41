//! Storage-challenge floods (#13.7, threat A3): a stranger asks a provider to prove chunks of a
//! file it keeps for someone else's contract, as fast as it can, to spend the provider's answer
//! slots and disk reads and starve the committee's audits.

use std::collections::BTreeMap;
use std::time::Duration;

use agora_network::PeerId;
use agora_storage::Cid;
use agora_storage::challenge::Challenge;
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;
use agora_wire::storage::StorageRpc;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::Adversary;

/// What the provider answered to a challenge flood.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChallengeFloodReport {
    /// Proofs the provider computed for the stranger (a defended provider sends none).
    pub proofs: usize,
    /// "Busy" answers (a defended provider never spends a slot on a stranger).
    pub busy: usize,
    /// Refusals, by reason with ids stripped (the text before the first ':' or id).
    pub refused: BTreeMap<String, usize>,
    /// Requests with no answer (the network's per-peer limits, timeouts).
    pub unanswered: usize,
}

impl ChallengeFloodReport {
    /// Refusals of every reason.
    pub fn refused_total(&self) -> usize {
        self.refused.values().sum()
    }
}

/// Seals a fresh challenge for chunks `indices` of `file` from the adversary (each envelope with
/// its own sequence number, so none is dropped as a replay).
pub fn sealed_challenge(adv: &Adversary, file: Cid, indices: Vec<u64>) -> Option<Envelope> {
    let seq = adv.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let msg = StorageRpc::Challenge(Challenge { file, indices });
    Envelope::seal_body(adv.signer(), Kind::Storage, now_ms(), seq, &msg).ok()
}

/// Sends `n` challenges for `file` to `provider` at once and sorts the answers; gives up on
/// answers after `wait`.
pub async fn flood(
    adv: &Adversary,
    provider: PeerId,
    file: Cid,
    n: usize,
    wait: Duration,
) -> ChallengeFloodReport {
    let mut sent: FuturesUnordered<_> = (0..n as u64)
        .filter_map(|i| sealed_challenge(adv, file, vec![i % 3]))
        .map(|env| adv.request_raw(provider, env.to_bytes()))
        .collect();
    let mut report = ChallengeFloodReport::default();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, sent.next()).await {
        match r.map(|env| env.body::<StorageRpc>(Kind::Storage)) {
            Ok(Ok(StorageRpc::Proof(_))) => report.proofs += 1,
            Ok(Ok(StorageRpc::Busy)) => report.busy += 1,
            Ok(Ok(StorageRpc::Refused { reason })) => {
                *report.refused.entry(reason_kind(&reason)).or_default() += 1;
            }
            Ok(
                Ok(
                    StorageRpc::Challenge(_)
                    | StorageRpc::ShowCommitment { .. }
                    | StorageRpc::Commitment(_),
                )
                | Err(_),
            ) => {
                *report.refused.entry("malformed".into()).or_default() += 1;
            }
            Err(_) => report.unanswered += 1,
        }
    }
    report.unanswered += sent.len();
    report
}

/// The kind of a refusal, ids left out ("is not an arbitrator of a storage contract", …).
fn reason_kind(reason: &str) -> String {
    if reason.contains("not an arbitrator") {
        "not an arbitrator".into()
    } else if reason.contains("over its quota") {
        "over quota".into()
    } else if reason.contains("own connection") {
        "relayed".into()
    } else if reason.contains("no storage contract") {
        "no contract".into()
    } else {
        reason.chars().take(60).collect()
    }
}
