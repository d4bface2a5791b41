//! Why the ledger refused a transaction or block. A refused transaction changes nothing.

use agora_market::{NodeId, SignatureError, Timestamp};

use crate::contract::{Amount, ContractError, ContractId};
use crate::lifecycle::{ContractStatus, IllegalTransition};

/// Errors from applying transactions and blocks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LedgerError {
    /// CBOR encoding failed.
    #[error("could not encode ledger data to CBOR: {0}")]
    Encoding(String),
    /// A signer tried to sign someone else's transaction.
    #[error("transaction sender is {sender} but signer is {signer}; sign with the sender's key")]
    WrongSigner {
        /// The declared sender.
        sender: NodeId,
        /// Who tried to sign.
        signer: NodeId,
    },
    /// The transaction signature does not verify.
    #[error("transaction {nonce} from {sender} has a bad signature: {source}")]
    BadSignature {
        /// The declared sender.
        sender: NodeId,
        /// Its nonce.
        nonce: u64,
        /// The underlying check.
        source: SignatureError,
    },
    /// The transaction names another chain.
    #[error(
        "transaction is for chain '{got}' but this ledger is '{expected}'; check the genesis file"
    )]
    WrongChain {
        /// This ledger's chain id.
        expected: String,
        /// The transaction's chain id.
        got: String,
    },
    /// Replay or out-of-order nonce.
    #[error("nonce {got} from {sender} rejected: expected {expected} (replayed or out of order)")]
    BadNonce {
        /// The sender.
        sender: NodeId,
        /// The next nonce the ledger accepts.
        expected: u64,
        /// The nonce in the transaction.
        got: u64,
    },
    /// Not enough spendable (unlocked) balance.
    #[error(
        "account {account} has {available} spendable but needs {needed}; locked funds cannot be spent"
    )]
    InsufficientFunds {
        /// The account.
        account: NodeId,
        /// Spendable balance.
        available: Amount,
        /// What the transaction needs.
        needed: Amount,
    },
    /// Faucet transactions are off on this chain.
    #[error("the faucet is disabled on this chain; set faucet_enabled in the genesis of a devnet")]
    FaucetDisabled,
    /// Faucet request too large.
    #[error("faucet request of {requested} exceeds the limit of {max} per transaction")]
    FaucetLimit {
        /// Requested amount.
        requested: Amount,
        /// Limit (params.faucet_max_per_tx).
        max: Amount,
    },
    /// An amount would exceed the representable supply.
    #[error("amount overflow while {context}")]
    Overflow {
        /// What was being computed.
        context: &'static str,
    },
    /// The dual-signed contract is invalid.
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// The contract is already on the ledger.
    #[error("contract {0} is already registered")]
    DuplicateContract(ContractId),
    /// No such contract.
    #[error("contract {0} is not registered")]
    UnknownContract(ContractId),
    /// The sender is not allowed to do this to the contract.
    #[error("{sender} may not {action} contract {contract}")]
    NotAllowed {
        /// The contract.
        contract: ContractId,
        /// Who tried.
        sender: NodeId,
        /// What they tried.
        action: &'static str,
    },
    /// A contract's committee member is not a genesis arbitrator.
    #[error(
        "contract {contract} names arbitrator {arbitrator}, who is not in the genesis committee"
    )]
    UnknownArbitrator {
        /// The contract.
        contract: ContractId,
        /// The unknown arbitrator.
        arbitrator: NodeId,
    },
    /// Attestation from outside the committee.
    #[error("{attester} is not a committee arbitrator; only committee members may attest")]
    NotCommitteeMember {
        /// Who tried.
        attester: NodeId,
    },
    /// The lifecycle does not allow this now.
    #[error("contract {contract}: {source}")]
    Lifecycle {
        /// The contract.
        contract: ContractId,
        /// The refused transition.
        source: IllegalTransition,
    },
    /// The transaction is valid in general but not in this state/time.
    #[error("contract {contract} (status {status:?}): {reason}")]
    NotNow {
        /// The contract.
        contract: ContractId,
        /// Its status.
        status: ContractStatus,
        /// What is missing.
        reason: String,
    },
    /// Evidence or timestamps that cannot be right.
    #[error("invalid evidence: {reason} (ledger time {now})")]
    InvalidEvidence {
        /// What is wrong.
        reason: String,
        /// Ledger time.
        now: Timestamp,
    },
    /// Block height not next in sequence.
    #[error("block height {got} does not follow {current}; apply blocks in order")]
    BadHeight {
        /// Current height.
        current: u64,
        /// Offered height.
        got: u64,
    },
    /// Block time went backwards.
    #[error("block time {got} is before the previous block time {previous}")]
    TimeWentBackwards {
        /// Previous block time.
        previous: Timestamp,
        /// Offered block time.
        got: Timestamp,
    },
    /// A snapshot could not be decoded.
    #[error("ledger snapshot is corrupt or from another version: {0}; resync from genesis")]
    Snapshot(String),
    /// Genesis is unusable.
    #[error("invalid genesis: {0}")]
    BadGenesis(String),
    /// The sender has no account: it was never funded.
    #[error(
        "{sender} has no account on this ledger; a funded account must first transfer at least \
         the minimum balance to it"
    )]
    UnknownAccount {
        /// The sender.
        sender: NodeId,
    },
    /// A transfer or faucet request of nothing.
    #[error("{sender} asked to move 0 tokens; transfers and faucet requests must be positive")]
    ZeroAmount {
        /// The sender.
        sender: NodeId,
    },
    /// A transfer would create an account holding less than the minimum.
    #[error(
        "transferring {amount} would create account {to} below the minimum balance {min}; send \
         at least {min}"
    )]
    BelowMinimumBalance {
        /// The new account.
        to: NodeId,
        /// The amount offered.
        amount: Amount,
        /// `params.min_account_balance`.
        min: Amount,
    },
    /// The faucet's lifetime cap for this account would be exceeded.
    #[error(
        "the faucet already minted {received} to {account}; {requested} more would pass its \
         lifetime cap of {max}"
    )]
    FaucetAccountCap {
        /// The account.
        account: NodeId,
        /// Minted to it so far.
        received: Amount,
        /// Requested now.
        requested: Amount,
        /// `params.faucet_max_per_account`.
        max: Amount,
    },
    /// The faucet's per-block total would be exceeded.
    #[error(
        "the faucet minted {minted} in this block already; {requested} more would pass the \
         per-block cap of {max}; try again in the next block"
    )]
    FaucetBlockCap {
        /// Minted in this block so far.
        minted: Amount,
        /// Requested now.
        requested: Amount,
        /// `params.faucet_max_per_block`.
        max: Amount,
    },
    /// The contract's committee is smaller than the ledger's minimum.
    #[error(
        "contract {contract} names {size} arbitrators but this ledger requires at least {min} \
         (3f+1 with f >= 1); draw the committee from more arbitrators"
    )]
    CommitteeTooSmall {
        /// The contract.
        contract: ContractId,
        /// Its committee size.
        size: usize,
        /// `params.min_committee`.
        min: usize,
    },
    /// The contract names an arbitrator that was slashed for equivocation.
    #[error(
        "contract {contract} names arbitrator {arbitrator}, who was slashed for equivocation; \
         leave it out of the committee"
    )]
    SlashedInCommittee {
        /// The contract.
        contract: ContractId,
        /// The slashed arbitrator.
        arbitrator: NodeId,
    },
    /// A slashed arbitrator's reports no longer count.
    #[error("arbitrator {arbitrator} was slashed for equivocation; its reports no longer count")]
    SlashedArbitrator {
        /// The slashed arbitrator.
        arbitrator: NodeId,
    },
    /// The equivocation evidence does not prove anything.
    #[error("invalid equivocation evidence: {0}")]
    InvalidEquivocation(#[from] crate::vote::EquivocationError),
    /// The arbitrator was already slashed (the same or other evidence was reported before).
    #[error("arbitrator {arbitrator} was already slashed; evidence counts once")]
    AlreadySlashed {
        /// The arbitrator.
        arbitrator: NodeId,
    },
    /// A committee member reported the same round twice.
    #[error("{reporter} already reported round {round} of contract {contract}; one report each")]
    DuplicateReport {
        /// The contract.
        contract: ContractId,
        /// The round or probe interval.
        round: u64,
        /// Who reported.
        reporter: NodeId,
    },
    /// The round already has a quorum outcome.
    #[error("round {round} of contract {contract} is already decided ({outcome}); report the next")]
    RoundDecided {
        /// The contract.
        contract: ContractId,
        /// The round or probe interval.
        round: u64,
        /// Its outcome (passed / up).
        outcome: bool,
    },
}
