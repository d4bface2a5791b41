//! Proof-of-storage over the swarm (`Kind::Storage` request-response): providers answer
//! challenges from the blocks they hold; arbitrators challenge the providers of active storage
//! contracts and judge the answers against the customer's commitment.
//!
//! The data side (commitments, custody, building answers) is in
//! [`crate::custody`]; the judging is `agora_storage::challenge`; who is answered at all is
//! [`gate`] (only the contract's committee, per-member quotas).

pub mod gate;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agora_market::{KeySigner, NodeId};
use agora_storage::Cid;
use agora_storage::challenge::{Challenge, StorageCommitment, verify_response};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

use crate::StorageHandle;
use agora_network::keys::peer_id_of;
use agora_network::{Interest, NetworkEvent, NetworkHandle};
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;

pub use agora_wire::storage::{MAX_COMMITMENT_BLOCK, StorageRpc};

/// Chunks asked for per challenge.
pub const AUDIT_SAMPLES: usize = 4;
/// How long a provider has to answer a challenge.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Challenges a provider answers at once, to committee members only (strangers are refused
/// before they take a slot); more are refused as busy rather than queued, so a flood of
/// challenges cannot pile up disk reads.
pub const CONCURRENT_ANSWERS: usize = 4;

/// Signs envelopes for one role with its own sequence numbers.
#[derive(Clone, Debug)]
struct Sealer {
    signer: KeySigner,
    seq: Arc<AtomicU64>,
}

impl Sealer {
    fn seal(&self, msg: &StorageRpc) -> Option<Envelope> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Envelope::seal_body(&self.signer, Kind::Storage, now_ms(), seq, msg).ok()
    }
}

/// Starts the provider side: answers the storage challenges the [`gate`] admits (the
/// committee of a storage contract keeping the file); refuses the rest with the reason.
pub fn spawn_responder(
    storage: StorageHandle,
    network: NetworkHandle,
    signer: KeySigner,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let mut events = network.inbox(Interest::new("storage audit").requests(Kind::Storage));
    let sealer = Sealer {
        signer,
        seq: Arc::default(),
    };
    let slots = Arc::new(Semaphore::new(CONCURRENT_ANSWERS));
    let task = async move {
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                ev = events.recv() => ev,
            };
            let (id, peer, envelope) = match ev {
                NetworkEvent::Request { id, peer, envelope } if envelope.kind == Kind::Storage => {
                    (id, peer, envelope)
                }
                _ => continue,
            };
            // Answering reads chunks from disk: do it beside the loop, not in it.
            let (storage, network, sealer) = (storage.clone(), network.clone(), sealer.clone());
            let slots = slots.clone();
            tokio::spawn(
                async move {
                    let answer = admit_and_answer(&storage, &slots, peer, &envelope).await;
                    if let Some(env) = sealer.seal(&answer) {
                        let _ = network.respond(id, &env).await;
                    }
                }
                .in_current_span(),
            );
        }
    };
    tokio::spawn(task.in_current_span())
}

/// The provider's answer to one request: refused unless the gate admits the asker, busy when
/// every slot is taken (no quota spent), else the proof from the store.
async fn admit_and_answer(
    storage: &StorageHandle,
    slots: &Arc<Semaphore>,
    peer: agora_network::PeerId,
    envelope: &Envelope,
) -> StorageRpc {
    let gate = storage.challenge_gate();
    let refuse = |reason: String| StorageRpc::Refused { reason };
    let challenge = match envelope.body::<StorageRpc>(Kind::Storage) {
        Ok(StorageRpc::Challenge(c)) => c,
        Ok(StorageRpc::ShowCommitment { file, commitment }) => {
            // Only the committee, one answer slot like a challenge; a small local read that
            // spends no challenge quota (an arbitrator asks once, then keeps the block).
            if let Err(r) = gate.check(envelope.sender, peer, &file) {
                return refuse(r.to_string());
            }
            let Ok(_slot) = slots.clone().try_acquire_owned() else {
                gate.count_busy();
                return StorageRpc::Busy;
            };
            return match storage.show_commitment(file, commitment).await {
                Ok(block) => {
                    gate.count_shown();
                    StorageRpc::Commitment(block)
                }
                Err(e) => refuse(e.to_string()),
            };
        }
        Ok(_) => {
            gate.count_malformed();
            return refuse("expected a challenge".into());
        }
        Err(e) => {
            gate.count_malformed();
            return refuse(e.to_string());
        }
    };
    let asker = envelope.sender;
    if let Err(r) = gate.check(asker, peer, &challenge.file) {
        return refuse(r.to_string());
    }
    let Ok(_slot) = slots.clone().try_acquire_owned() else {
        gate.count_busy();
        return StorageRpc::Busy;
    };
    if let Err(r) = gate.spend(asker, &challenge.file, now_ms()) {
        return refuse(r.to_string());
    }
    match storage.prove(challenge).await {
        Ok(proof) => StorageRpc::Proof(proof),
        Err(e) => refuse(e.to_string()),
    }
}

/// Asks `provider` to show the commitment block `cid` of the storage contract keeping `file`,
/// and checks it: the block must hash to `cid` and describe `file`. A busy provider is asked
/// again until [`ANSWER_TIMEOUT`] has passed; any other failure is the provider's word (or
/// silence) on why it cannot show what it took custody of.
pub async fn show_commitment(
    network: &NetworkHandle,
    signer: &KeySigner,
    provider: NodeId,
    file: Cid,
    cid: Cid,
) -> Result<StorageCommitment, String> {
    let peer = peer_id_of(&provider).ok_or("provider id is not a valid peer id")?;
    let sealer = Sealer {
        signer: signer.clone(),
        seq: Arc::new(AtomicU64::new(now_ms())),
    };
    let ask = StorageRpc::ShowCommitment {
        file,
        commitment: cid,
    };
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    loop {
        let env = sealer
            .seal(&ask)
            .ok_or("cannot encode the request for the commitment")?;
        let answer = match tokio::time::timeout_at(deadline, network.request(peer, &env)).await {
            Err(_) => return Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
            Ok(Err(e)) => return Err(format!("unreachable: {e}")),
            Ok(Ok(answer)) => answer,
        };
        if answer.sender != provider {
            return Err("answer signed by another node".into());
        }
        return match answer.body::<StorageRpc>(Kind::Storage) {
            Ok(StorageRpc::Commitment(block)) if block.len() > MAX_COMMITMENT_BLOCK => {
                Err(format!(
                    "a commitment block of {} bytes; at most {MAX_COMMITMENT_BLOCK}",
                    block.len()
                ))
            }
            Ok(StorageRpc::Commitment(block)) => {
                let shown = crate::custody::decode_commitment(&cid, &block)?;
                if shown.file != file {
                    return Err(format!(
                        "commitment {cid} is for {}, not {file}",
                        shown.file
                    ));
                }
                Ok(shown)
            }
            Ok(StorageRpc::Busy) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Ok(StorageRpc::Busy) => Err(format!("busy for {ANSWER_TIMEOUT:?}")),
            Ok(StorageRpc::Refused { reason }) => Err(format!(
                "refused: {}",
                agora_wire::clip(&reason, agora_wire::MAX_PEER_REASON)
            )),
            Ok(_) => Err("answered something else".into()),
            Err(e) => Err(format!("malformed answer: {e}")),
        };
    }
}

/// What one challenge showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every challenged chunk matched the commitment.
    Passed,
    /// The provider answered wrongly, refused, or did not answer in time.
    Failed(String),
}

/// Challenges `provider` once for the file of `commitment`, with a fresh random seed. A busy
/// provider is asked again until [`ANSWER_TIMEOUT`] has passed.
pub async fn challenge(
    network: &NetworkHandle,
    signer: &KeySigner,
    provider: NodeId,
    commitment: &StorageCommitment,
) -> Verdict {
    let challenge = Challenge::from_seed(rand::random(), commitment, AUDIT_SAMPLES);
    let Some(peer) = peer_id_of(&provider) else {
        return Verdict::Failed("provider id is not a valid peer id".into());
    };
    let sealer = Sealer {
        signer: signer.clone(),
        seq: Arc::new(AtomicU64::new(now_ms())),
    };
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    loop {
        let Some(env) = sealer.seal(&StorageRpc::Challenge(challenge.clone())) else {
            return Verdict::Failed("cannot encode the challenge".into());
        };
        let answer = match tokio::time::timeout_at(deadline, network.request(peer, &env)).await {
            Err(_) => return Verdict::Failed(format!("no answer within {ANSWER_TIMEOUT:?}")),
            Ok(Err(e)) => return Verdict::Failed(format!("unreachable: {e}")),
            Ok(Ok(answer)) => answer,
        };
        if answer.sender != provider {
            return Verdict::Failed("answer signed by another node".into());
        }
        return match answer.body::<StorageRpc>(Kind::Storage) {
            Ok(StorageRpc::Proof(response)) => {
                match verify_response(commitment, &challenge, &response) {
                    Ok(()) => Verdict::Passed,
                    Err(e) => Verdict::Failed(e.to_string()),
                }
            }
            Ok(StorageRpc::Busy) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Ok(StorageRpc::Busy) => Verdict::Failed(format!("busy for {ANSWER_TIMEOUT:?}")),
            // The provider's text: it ends in the arbitrator's timeline and log, so bounded.
            Ok(StorageRpc::Refused { reason }) => Verdict::Failed(format!(
                "refused: {}",
                agora_wire::clip(&reason, agora_wire::MAX_PEER_REASON)
            )),
            Ok(StorageRpc::Challenge(_) | StorageRpc::ShowCommitment { .. }) => {
                Verdict::Failed("answered with a request".into())
            }
            Ok(StorageRpc::Commitment(_)) => {
                Verdict::Failed("answered a challenge with a commitment".into())
            }
            Err(e) => {
                debug!(error = %e, "malformed storage answer");
                Verdict::Failed(format!("malformed answer: {e}"))
            }
        };
    }
}
