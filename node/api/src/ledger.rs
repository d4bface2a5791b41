//! Control API routes of the ledger: status, balances, contracts, earnings, transfers, faucet.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use agora_contracts::{ContractId, TxKind};
use agora_market::NodeId;

use super::{ApiError, ApiState, authorize};
use agora_ledger::{LedgerHandle, LedgerTaskError, MempoolError};

/// `GET /v1/ledger/status`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LedgerStatus {
    /// Chain id.
    pub chain_id: String,
    /// Last applied height.
    pub height: u64,
    /// Arbitrator committee.
    pub committee: Vec<String>,
    /// Time of the last block (ms).
    pub last_block_at: Option<u64>,
    /// Hex state hash.
    pub state_hash: String,
    /// Pending transactions.
    pub mempool: usize,
    /// The mempool's counters since the node started: admitted, refused (unfunded sender,
    /// nonce, invalid, sender quota, full), evicted, expired, dropped.
    #[serde(default)]
    pub mempool_stats: agora_ledger::MempoolStats,
    /// Every committee member's bond, and its slash if it was proven to equivocate.
    #[serde(default)]
    pub arbitrators: Vec<ArbitratorView>,
    /// Proposals this node refused since it started because their block time was not after
    /// the parent's or not near its clock (`block_time_tolerance_ms`): a faulty proposer.
    #[serde(default)]
    pub proposals_refused_block_time: u64,
    /// Consensus input this node refused since it started (malformed, forged, from outsiders,
    /// inconsistent, or one too many from a flooding member), block-time refusals included.
    #[serde(default)]
    pub consensus_refused: u64,
    /// Sync requests for stored blocks this node served since it started.
    #[serde(default)]
    pub sync_served: u64,
    /// Sync requests it refused since it started (one per peer every 100 ms, at most 4 served
    /// at once): a peer asking too often, or a flood from many.
    #[serde(default)]
    pub sync_refused: u64,
    /// Propose timeouts cut short since start: the round's proposer was an arbitrator this
    /// node's network reported down, so the round moved on after 100 ms instead of 1.5 s.
    #[serde(default)]
    pub propose_timeouts_cut: u64,
    /// How this member paces consensus to its committee's round trip (issue #17).
    #[serde(default)]
    pub pacing: PacingView,
}

/// The round timeouts a member uses, in `GET /v1/ledger/status`: the chain's own on fast
/// links, stretched for the committee's quorum round trip on slow ones.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PacingView {
    /// The smallest round trip within which a quorum of the committee (this member counted)
    /// answers, ms, re-measured every 5 s; `None` until a quorum was measured, and outside the
    /// committee.
    pub quorum_round_trip_ms: Option<u64>,
    /// Round 0's propose timeout, ms.
    pub propose_ms: u64,
    /// Round 0's prevote and precommit timeouts, ms.
    pub vote_ms: u64,
    /// Heights this node decided since it started in a round after the first.
    pub decided_in_later_round: u64,
}

/// One arbitrator of the ledger's committee, in `GET /v1/ledger/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ArbitratorView {
    /// Node id.
    pub id: String,
    /// Bond still locked (0 once slashed).
    pub bonded: u64,
    /// The slash for equivocation, if any.
    pub slashed: Option<agora_contracts::ledger::SlashedArbitrator>,
}

/// One account.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BalanceReply {
    /// Account.
    pub account: String,
    /// Spendable.
    pub balance: u64,
    /// Locked in escrow.
    pub locked: u64,
    /// Reputation.
    pub reputation: i64,
    /// Next nonce.
    pub nonce: u64,
}

/// Transfer body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferRequest {
    /// Recipient node id.
    pub to: String,
    /// Amount.
    pub amount: u64,
}

/// Faucet body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaucetRequest {
    /// Amount.
    pub amount: u64,
}

/// A submitted transaction.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SubmittedReply {
    /// Sender.
    pub sender: String,
    /// Nonce used.
    pub nonce: u64,
}

/// Earnings of this node as provider on one contract.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EarningView {
    /// Contract id.
    pub contract: String,
    /// Customer.
    pub customer: String,
    /// Status.
    pub status: String,
    /// Agreed payment.
    pub payment: u64,
    /// Paid out so far.
    pub paid: u64,
}

fn ledger(s: &ApiState) -> Result<&LedgerHandle, ApiError> {
    s.ledger.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node has no ledger: it runs without a genesis file (join a devnet with \
             `agora node run --join DIR` or set node.genesis in config.toml)"
                .into(),
        )
    })
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e.to_string())
}

async fn status(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<LedgerStatus>, ApiError> {
    authorize(&s, &headers)?;
    let st = ledger(&s)?
        .query(|v| LedgerStatus {
            chain_id: v.ledger.chain_id().to_string(),
            height: v.ledger.height(),
            committee: v.ledger.committee().iter().map(|c| c.to_string()).collect(),
            last_block_at: v.last_block_at,
            state_hash: v.ledger.state_hash().map(hex::encode).unwrap_or_default(),
            mempool: v.mempool,
            mempool_stats: v.mempool_stats.clone(),
            arbitrators: v
                .ledger
                .committee()
                .iter()
                .map(|c| ArbitratorView {
                    id: c.to_string(),
                    bonded: v.ledger.account(c).map_or(0, |a| a.bonded),
                    slashed: v.ledger.slashed().get(c).copied(),
                })
                .collect(),
            proposals_refused_block_time: v.proposals_refused_block_time,
            consensus_refused: v.consensus_refused,
            sync_served: v.sync_served,
            sync_refused: v.sync_refused,
            propose_timeouts_cut: v.propose_timeouts_cut,
            pacing: PacingView {
                quorum_round_trip_ms: v.quorum_round_trip_ms,
                propose_ms: u64::try_from(v.timeouts.propose.as_millis()).unwrap_or(u64::MAX),
                vote_ms: u64::try_from(v.timeouts.prevote.as_millis()).unwrap_or(u64::MAX),
                decided_in_later_round: v.decided_in_later_round,
            },
        })
        .await?;
    Ok(Json(st))
}

async fn balance(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(account): Path<String>,
) -> Result<Json<BalanceReply>, ApiError> {
    authorize(&s, &headers)?;
    let who: Option<NodeId> = if account == "me" {
        None
    } else {
        Some(account.parse().map_err(bad)?)
    };
    let reply = ledger(&s)?
        .query(move |v| {
            let id = who.unwrap_or(v.me);
            let a = v.ledger.account(&id).cloned().unwrap_or_default();
            BalanceReply {
                account: id.to_string(),
                balance: a.balance,
                locked: a.locked,
                reputation: a.reputation,
                nonce: a.nonce,
            }
        })
        .await?;
    Ok(Json(reply))
}

async fn contracts(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    authorize(&s, &headers)?;
    let list = ledger(&s)?
        .query(|v| {
            v.ledger
                .contracts()
                .iter()
                .map(|(id, r)| {
                    serde_json::json!({
                        "id": id.to_string(),
                        "customer": r.contract.customer.to_string(),
                        "provider": r.contract.provider.to_string(),
                        "kind": format!("{:?}", r.contract.kind).to_lowercase(),
                        "status": format!("{:?}", r.status).to_lowercase(),
                        "image": r.contract.service_image.to_string(),
                        "payment": r.contract.payment,
                        "paid_to_provider": r.paid_to_provider,
                    })
                })
                .collect()
        })
        .await?;
    Ok(Json(list))
}

async fn contract(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    let cid: ContractId = id.parse().map_err(bad)?;
    let rec = ledger(&s)?
        .query(move |v| {
            v.ledger
                .contract(&cid)
                .map(|r| serde_json::to_value(r).unwrap_or_default())
        })
        .await?
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("contract {id} is not on the ledger"),
            )
        })?;
    Ok(Json(rec))
}

async fn earnings(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<EarningView>>, ApiError> {
    authorize(&s, &headers)?;
    let list = ledger(&s)?.query(earnings_of).await?;
    Ok(Json(list))
}

/// What this node earns as a provider, one entry per contract (the API and the dashboard).
pub(crate) fn earnings_of(v: &agora_ledger::LedgerView) -> Vec<EarningView> {
    v.ledger
        .contracts()
        .iter()
        .filter(|(_, r)| r.contract.provider == v.me)
        .map(|(id, r)| EarningView {
            contract: id.to_string(),
            customer: r.contract.customer.to_string(),
            status: format!("{:?}", r.status).to_lowercase(),
            payment: r.contract.payment,
            paid: r.paid_to_provider,
        })
        .collect()
}

async fn transfer(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<TransferRequest>,
) -> Result<Json<SubmittedReply>, ApiError> {
    authorize(&s, &headers)?;
    let to: NodeId = req.to.parse().map_err(bad)?;
    let tx = ledger(&s)?
        .submit(TxKind::Transfer {
            to,
            amount: req.amount,
        })
        .await
        .map_err(|e| bad(explain(s.network.node_id(), &e)))?;
    Ok(Json(SubmittedReply {
        sender: tx.tx.sender.to_string(),
        nonce: tx.tx.nonce,
    }))
}

async fn faucet(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<FaucetRequest>,
) -> Result<Json<SubmittedReply>, ApiError> {
    authorize(&s, &headers)?;
    let tx = ledger(&s)?
        .submit(TxKind::Faucet { amount: req.amount })
        .await
        .map_err(|e| bad(explain(s.network.node_id(), &e)))?;
    Ok(Json(SubmittedReply {
        sender: tx.tx.sender.to_string(),
        nonce: tx.tx.nonce,
    }))
}

/// Turns the ledger's (or the mempool's) refusal of this node's own transaction into a full
/// sentence that names the fix; other errors keep their own message.
fn explain(me: NodeId, e: &LedgerTaskError) -> String {
    use agora_contracts::{AdmissionError as A, LedgerError as L};
    let fund_me = format!(
        "this node's account {me} does not exist on the ledger yet (it is not in the genesis \
         file, and the faucet only tops up existing accounts): ask the operator of a funded node \
         to send it at least the minimum balance, e.g. `agora transfer {me} 1000 --data-dir \
         .agora-devnet/node0`, then try again"
    );
    let sentence = match e {
        LedgerTaskError::Refused(L::UnknownAccount { .. })
        | LedgerTaskError::Mempool(MempoolError::Refused(A::UnknownAccount { .. })) => fund_me,
        LedgerTaskError::Mempool(MempoolError::Refused(A::Unfunded { holds, min, .. })) => format!(
            "this node's account {me} holds {holds} tokens, less than the {min} an account needs \
             to submit transactions: ask a funded node to send it at least {}, e.g. `agora \
             transfer {me} {} --data-dir .agora-devnet/node0`",
            min.saturating_sub(*holds),
            min.saturating_sub(*holds)
        ),
        LedgerTaskError::Refused(L::ZeroAmount { .. }) => {
            "the amount is 0: transfers and faucet requests must move at least 1 token".into()
        }
        LedgerTaskError::Refused(L::BelowMinimumBalance { to, amount, min }) => format!(
            "{to} has no account yet, and a transfer that creates an account must bring at least \
             {min} tokens (this one brings {amount}): send {min} or more"
        ),
        LedgerTaskError::Refused(L::InsufficientFunds {
            available, needed, ..
        }) => format!(
            "this node has {available} spendable tokens but this needs {needed} (locked and \
             bonded funds cannot be spent): send less, or on a devnet ask the faucet first \
             (`agora faucet --amount N`)"
        ),
        LedgerTaskError::Refused(L::FaucetDisabled) => {
            "this chain has no faucet (only devnets do): ask the operator of a funded account \
             for a transfer (`agora transfer NODE_ID AMOUNT` on their node)"
                .into()
        }
        LedgerTaskError::Refused(L::FaucetLimit { requested, max }) => format!(
            "the faucet gives at most {max} per request ({requested} asked): ask for {max} or \
             less, e.g. `agora faucet --amount {max}`"
        ),
        LedgerTaskError::Refused(L::FaucetAccountCap {
            received,
            requested,
            max,
            ..
        }) => format!(
            "the faucet already gave this account {received} of its lifetime cap of {max}, so \
             {requested} more is refused: ask for at most {} or get a transfer from a funded \
             account",
            max.saturating_sub(*received)
        ),
        LedgerTaskError::Refused(L::FaucetBlockCap { max, .. }) => format!(
            "the faucet already minted close to its per-block cap of {max} in this block: wait \
             a few seconds for the next block and ask again (or for less)"
        ),
        LedgerTaskError::Mempool(MempoolError::Refused(A::SenderFull { pending, .. })) => {
            format!(
                "this node already has {pending} transactions waiting for a block: wait a few \
                 seconds for them to be included, then submit again"
            )
        }
        LedgerTaskError::Mempool(MempoolError::Full { .. }) => {
            "the mempool is full: wait a few seconds for the next block, then submit again".into()
        }
        other => return other.to_string(),
    };
    let mut s = sentence;
    if let Some(first) = s.get(..1) {
        let upper = first.to_uppercase();
        s.replace_range(..1, &upper);
    }
    s.push('.');
    s
}

/// The ledger routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/ledger/status", get(status))
        .route("/v1/ledger/accounts/{account}", get(balance))
        .route("/v1/ledger/contracts", get(contracts))
        .route("/v1/ledger/contracts/{id}", get(contract))
        .route("/v1/ledger/earnings", get(earnings))
        .route("/v1/ledger/transfer", post(transfer))
        .route("/v1/ledger/faucet", post(faucet))
}

#[cfg(test)]
mod tests {
    use agora_contracts::{AdmissionError, LedgerError};
    use agora_market::NodeId;

    use super::*;

    #[test]
    fn refusals_become_sentences_that_name_the_fix() {
        let me = NodeId([3; 32]);
        let fresh = explain(
            me,
            &LedgerTaskError::Mempool(MempoolError::Refused(AdmissionError::UnknownAccount {
                sender: me,
                min: 1_000,
            })),
        );
        assert!(fresh.starts_with("This node's account"), "{fresh}");
        assert!(
            fresh.contains(&format!("agora transfer {me} 1000")),
            "{fresh}"
        );
        assert!(fresh.ends_with('.'));
        let zero = explain(
            me,
            &LedgerTaskError::Refused(LedgerError::ZeroAmount { sender: me }),
        );
        assert!(zero.contains("at least 1 token"), "{zero}");
        let cap = explain(
            me,
            &LedgerTaskError::Refused(LedgerError::FaucetAccountCap {
                account: me,
                received: 9_000,
                requested: 5_000,
                max: 10_000,
            }),
        );
        assert!(cap.contains("at most 1000"), "{cap}");
        let small = explain(
            me,
            &LedgerTaskError::Refused(LedgerError::BelowMinimumBalance {
                to: me,
                amount: 5,
                min: 1_000,
            }),
        );
        assert!(small.contains("send 1000 or more"), "{small}");
        // Anything else keeps the ledger's own message.
        assert_eq!(
            explain(me, &LedgerTaskError::Stopped),
            LedgerTaskError::Stopped.to_string()
        );
    }
}
