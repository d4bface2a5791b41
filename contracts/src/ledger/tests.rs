//! Scenario tests for the ledger: money, registration, lifecycle, handover, settlement.

use agora_market::{KeySigner, Signer};

use super::*;
use crate::attestation::Liveness;
use crate::contract::{ContractId, SignedContract};
use crate::lifecycle::ContractStatus;
use crate::test_utils::{ContractBuilder, genesis_with, test_cid, tx, tx_with_nonce};

mod admission;
mod arbitrators;
mod handover;
mod lifecycle_flows;
mod reports;
mod state_growth;

/// Two conflicting signed prevotes of `signer` at `height`, `round`.
pub(crate) fn equivocation(
    signer: &KeySigner,
    height: u64,
    round: u32,
) -> crate::vote::EquivocationEvidence {
    use crate::vote::{BlockHash, ConsensusVote, SignedVote, VoteKind};
    let vote = |b: u8| ConsensusVote {
        kind: VoteKind::Prevote,
        height,
        round,
        block: Some(BlockHash([b; 32])),
        voter: signer.node_id(),
    };
    let chain = crate::vote::ChainTag::of(crate::test_utils::TEST_CHAIN);
    crate::vote::EquivocationEvidence {
        first: SignedVote::new(vote(1), &chain, signer),
        second: SignedVote::new(vote(2), &chain, signer),
    }
}

/// A ledger with accounts seeds 1..=4 (10_000 each) and a 4-arbitrator committee.
pub(crate) struct Harness {
    pub ledger: Ledger,
    pub accounts: Vec<KeySigner>,
    pub committee: Vec<KeySigner>,
    pub now: Timestamp,
}

impl Harness {
    pub fn new() -> Self {
        let (genesis, accounts, committee) = genesis_with(4, 4, 10_000);
        Harness {
            ledger: Ledger::from_genesis(&genesis).unwrap(),
            accounts,
            committee,
            now: 1_000,
        }
    }

    pub fn customer(&self) -> KeySigner {
        self.accounts[0].clone()
    }

    pub fn provider(&self) -> KeySigner {
        self.accounts[1].clone()
    }

    pub fn try_apply(
        &mut self,
        s: &KeySigner,
        kind: TxKind,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let t = tx(&self.ledger, s, kind);
        let before = self.ledger.state_hash().unwrap();
        let out = self.ledger.apply(self.now, &t);
        if out.is_err() {
            assert_eq!(
                before,
                self.ledger.state_hash().unwrap(),
                "refused tx changed state"
            );
        }
        self.ledger.audit().unwrap();
        out
    }

    pub fn ok(&mut self, s: &KeySigner, kind: TxKind) -> Vec<LedgerEvent> {
        match self.try_apply(s, kind) {
            Ok(e) => e,
            Err(e) => panic!("tx refused: {e}"),
        }
    }

    pub fn register(&mut self, signed: SignedContract) -> ContractId {
        let id = signed.contract.id().unwrap();
        let c = self.customer();
        self.ok(&c, TxKind::RegisterContract(Box::new(signed)));
        id
    }

    /// Registers, migrates and arms.
    pub fn armed(&mut self, signed: SignedContract) -> ContractId {
        let id = self.register(signed);
        let p = self.provider();
        self.ok(&p, TxKind::MarkMigrated(id));
        self.ok(&p, TxKind::MarkArmed(id));
        id
    }

    pub fn attest(&mut self, arbitrator: usize, liveness: Liveness) -> Vec<LedgerEvent> {
        let a = self.committee[arbitrator].clone();
        let subject = self.customer().node_id();
        self.ok(&a, TxKind::Attest { subject, liveness })
    }

    /// Committee members `members` report probe interval `interval` of `id` as `up`.
    pub fn probe(
        &mut self,
        id: ContractId,
        interval: u64,
        up: bool,
        members: impl IntoIterator<Item = usize>,
    ) -> Vec<LedgerEvent> {
        let mut events = Vec::new();
        for m in members {
            let a = self.committee[m].clone();
            let kind = TxKind::ProbeResult {
                contract: id,
                interval,
                up,
            };
            events.extend(self.ok(&a, kind));
        }
        events
    }

    /// Advances time to `until`; at the end of every probe interval of `id` before it, a
    /// quorum (arbitrators 0..3) reports the interval `up` (if not decided yet).
    pub fn probed_until(&mut self, id: ContractId, until: Timestamp, up: bool) -> Vec<LedgerEvent> {
        let mut events = Vec::new();
        for round in 0.. {
            let Some(rec) = self.ledger.contract(&id) else {
                break;
            };
            let Some((_, end)) = rec.round_span(round) else {
                break;
            };
            if end > until {
                break;
            }
            if rec.probes.is_decided(round) || rec.status != ContractStatus::Active {
                continue;
            }
            self.now = self.now.max(end);
            let grace = self.ledger.params().quorum_report_grace_ms;
            if end + grace < self.now {
                continue;
            }
            events.extend(self.probe(id, round, up, 0..3));
        }
        self.now = self.now.max(until);
        events
    }

    /// Reports two conflicting prevotes of committee member `member` (from account 2).
    pub fn slash_arbitrator(&mut self, member: usize) -> Vec<LedgerEvent> {
        let evidence = equivocation(&self.committee[member], 5, 0);
        let reporter = self.accounts[2].clone();
        self.ok(&reporter, TxKind::ReportEquivocation(Box::new(evidence)))
    }

    pub fn status(&self, id: ContractId) -> ContractStatus {
        self.ledger.contract(&id).unwrap().status
    }

    pub fn balance(&self, s: &KeySigner) -> Amount {
        self.ledger.spendable(&s.node_id())
    }
}

#[test]
fn transfer_moves_funds_and_replay_is_rejected() {
    let mut h = Harness::new();
    let (a, b) = (h.accounts[0].clone(), h.accounts[1].clone());
    let kind = TxKind::Transfer {
        to: b.node_id(),
        amount: 300,
    };
    let t = h.ledger.sign_next(&a, kind).unwrap();
    h.ledger.check(h.now, &t).unwrap();
    assert_eq!(h.balance(&a), 10_000, "check must not change the ledger");
    h.ledger.apply(h.now, &t).unwrap();
    assert_eq!(h.balance(&a), 9_700);
    assert_eq!(h.balance(&b), 10_300);
    let err = h.ledger.apply(h.now, &t).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::BadNonce {
                expected: 1,
                got: 0,
                ..
            }
        ),
        "{err}"
    );
    h.ledger.audit().unwrap();
}

#[test]
fn wrong_chain_future_nonce_and_forged_signature_are_rejected() {
    let mut h = Harness::new();
    let (a, b) = (h.accounts[0].clone(), h.accounts[1].clone());
    let kind = TxKind::Transfer {
        to: b.node_id(),
        amount: 1,
    };
    let t = tx_with_nonce("other-chain", &a, 0, kind.clone());
    assert!(matches!(
        h.ledger.apply(h.now, &t),
        Err(LedgerError::WrongChain { .. })
    ));
    let t = tx_with_nonce(h.ledger.chain_id(), &a, 5, kind.clone());
    assert!(matches!(
        h.ledger.apply(h.now, &t),
        Err(LedgerError::BadNonce { .. })
    ));
    let mut forged = tx(&h.ledger, &a, kind);
    forged.tx.kind = TxKind::Transfer {
        to: b.node_id(),
        amount: 9_000,
    };
    assert!(matches!(
        h.ledger.apply(h.now, &forged),
        Err(LedgerError::BadSignature { .. })
    ));
    assert_eq!(h.balance(&a), 10_000);
}

#[test]
fn overspending_is_refused() {
    let mut h = Harness::new();
    let (a, b) = (h.accounts[0].clone(), h.accounts[1].clone());
    let err = h
        .try_apply(
            &a,
            TxKind::Transfer {
                to: b.node_id(),
                amount: 10_001,
            },
        )
        .unwrap_err();
    assert!(matches!(
        err,
        LedgerError::InsufficientFunds {
            available: 10_000,
            ..
        }
    ));
}

#[test]
fn faucet_respects_genesis_flag_and_limit() {
    let mut h = Harness::new();
    let a = h.accounts[2].clone();
    h.ok(&a, TxKind::Faucet { amount: 500 });
    assert_eq!(h.ledger.supply().minted, 500);
    let max = h.ledger.params().faucet_max_per_tx;
    let err = h
        .try_apply(&a, TxKind::Faucet { amount: max + 1 })
        .unwrap_err();
    assert!(matches!(err, LedgerError::FaucetLimit { .. }));

    let (mut genesis, accounts, _) = genesis_with(1, 1, 10);
    genesis.faucet_enabled = false;
    let mut ledger = Ledger::from_genesis(&genesis).unwrap();
    let t = tx(&ledger, &accounts[0], TxKind::Faucet { amount: 1 });
    assert_eq!(ledger.apply(0, &t), Err(LedgerError::FaucetDisabled));
}

#[test]
fn registration_locks_payment_and_stakes_which_cannot_be_spent() {
    let mut h = Harness::new();
    let id = h.register(ContractBuilder::new(1, 2).signed());
    let (c, p) = (h.customer(), h.provider());
    assert_eq!(h.status(id), ContractStatus::Validated);
    assert_eq!(h.balance(&c), 10_000 - 1_000 - 100);
    assert_eq!(h.ledger.account(&c.node_id()).unwrap().locked, 1_100);
    assert_eq!(h.balance(&p), 10_000 - 500);
    let err = h
        .try_apply(
            &p,
            TxKind::Transfer {
                to: c.node_id(),
                amount: 9_501,
            },
        )
        .unwrap_err();
    assert!(matches!(err, LedgerError::InsufficientFunds { .. }));
}

#[test]
fn registration_rejects_duplicates_outsiders_and_unknown_arbitrators() {
    let mut h = Harness::new();
    let signed = ContractBuilder::new(1, 2).signed();
    h.register(signed.clone());
    let c = h.customer();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(signed)))
        .unwrap_err();
    assert!(matches!(err, LedgerError::DuplicateContract(_)));

    let outsider = h.accounts[2].clone();
    let other = ContractBuilder::new(1, 2).nonce(1).signed();
    let err = h
        .try_apply(&outsider, TxKind::RegisterContract(Box::new(other)))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotAllowed { .. }));

    let stranger = KeySigner::from_seed(999).node_id();
    let mut committee: Vec<_> = h.committee.iter().map(|s| s.node_id()).collect();
    committee[3] = stranger;
    let bad = ContractBuilder::new(1, 2)
        .nonce(2)
        .committee(committee)
        .signed();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(bad)))
        .unwrap_err();
    assert!(matches!(err, LedgerError::UnknownArbitrator { .. }));
}

#[test]
fn registration_needs_funds_on_both_sides() {
    let mut h = Harness::new();
    let c = h.customer();
    let rich = ContractBuilder::new(1, 2).stakes(100, 20_000).signed();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(rich)))
        .unwrap_err();
    assert!(matches!(
        err,
        LedgerError::InsufficientFunds { needed: 20_000, .. }
    ));
}

#[test]
fn tampered_contract_is_rejected_at_registration() {
    let mut h = Harness::new();
    let mut signed = ContractBuilder::new(1, 2).signed();
    signed.contract.payment = 1;
    let c = h.customer();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(signed)))
        .unwrap_err();
    assert!(matches!(err, LedgerError::Contract(_)));
}

#[test]
fn only_the_provider_moves_the_contract_forward() {
    let mut h = Harness::new();
    let id = h.register(ContractBuilder::new(1, 2).signed());
    let c = h.customer();
    let err = h.try_apply(&c, TxKind::MarkMigrated(id)).unwrap_err();
    assert!(matches!(err, LedgerError::NotAllowed { .. }));
    let p = h.provider();
    let err = h.try_apply(&p, TxKind::MarkArmed(id)).unwrap_err();
    assert!(matches!(err, LedgerError::Lifecycle { .. }));
}

#[test]
fn blocks_apply_in_order_and_replicas_agree() {
    let (genesis, accounts, _) = genesis_with(3, 4, 1_000);
    let mut a = Ledger::from_genesis(&genesis).unwrap();
    let mut b = a.clone();
    let to = accounts[1].node_id();
    let t0 = tx(&a, &accounts[0], TxKind::Transfer { to, amount: 10 });
    let t1 = tx_with_nonce(
        a.chain_id(),
        &accounts[0],
        1,
        TxKind::Transfer { to, amount: 5_000 },
    );
    let t2 = tx_with_nonce(
        a.chain_id(),
        &accounts[0],
        1,
        TxKind::Transfer { to, amount: 20 },
    );
    let txs = vec![t0.clone(), t1, t2];
    let out = a.apply_block(1, 10, &txs).unwrap();
    // The overspend is refused but, being authenticated, uses up nonce 1 (so the sender's
    // later transactions never stall behind it); the second transaction with nonce 1 is stale.
    let refused: Vec<usize> = out.rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(refused, vec![1, 2]);
    assert!(matches!(out.rejected[1].1, LedgerError::BadNonce { .. }));
    assert_eq!(a.next_nonce(&accounts[0].node_id()), 2);
    // A replica that verified the signatures at mempool admission skips the second check and
    // reaches the same state; one that vouches for nothing checks everything.
    b.apply_block_with(1, 10, &txs, |t| *t == txs[0]).unwrap();
    assert_eq!(a.state_hash().unwrap(), b.state_hash().unwrap());
    assert_eq!(a.spendable(&to), 1_010);
    // A forged transaction (bad signature) in a block uses up nothing.
    let mut forged = tx_with_nonce(
        a.chain_id(),
        &accounts[2],
        0,
        TxKind::Transfer { to, amount: 1 },
    );
    forged.tx.sender = accounts[0].node_id();
    forged.tx.nonce = 2;
    let out = a.apply_block(2, 11, &[forged]).unwrap();
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(a.next_nonce(&accounts[0].node_id()), 2);
    assert!(matches!(
        a.apply_block(4, 20, &[]),
        Err(LedgerError::BadHeight { .. })
    ));
    assert!(matches!(
        a.apply_block(3, 5, &[]),
        Err(LedgerError::TimeWentBackwards { .. })
    ));
    // Replaying the block's first tx in a later block is refused.
    let out = a.apply_block(3, 20, &[t0]).unwrap();
    assert_eq!(out.rejected.len(), 1);
}

#[test]
fn snapshot_round_trip_preserves_state_hash() {
    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).standby(5_000).signed());
    h.attest(0, Liveness::Unreachable { since: 500 });
    let bytes = h.ledger.to_snapshot().unwrap();
    let back = Ledger::from_snapshot(&bytes).unwrap();
    assert!(matches!(
        Ledger::from_snapshot(&bytes[..bytes.len() / 2]),
        Err(LedgerError::Snapshot(_))
    ));
    assert_eq!(back.state_hash().unwrap(), h.ledger.state_hash().unwrap());
    assert_eq!(back.contract(&id).unwrap().status, ContractStatus::Armed);
    assert_ne!(test_cid(b"a"), test_cid(b"b"));
}

#[test]
fn genesis_rejects_duplicate_accounts_and_empty_chain_id() {
    let (mut genesis, _, _) = genesis_with(2, 1, 0);
    genesis.accounts[1].id = genesis.accounts[0].id;
    assert!(matches!(
        Ledger::from_genesis(&genesis),
        Err(LedgerError::BadGenesis(_))
    ));
    let (mut genesis, _, _) = genesis_with(2, 1, 5);
    genesis.chain_id.clear();
    assert!(matches!(
        Ledger::from_genesis(&genesis),
        Err(LedgerError::BadGenesis(_))
    ));
}
