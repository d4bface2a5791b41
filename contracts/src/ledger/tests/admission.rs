//! Mempool admission (#13.1): cheap, ordered, and closed to keys without funds.

use agora_market::{KeySigner, Signer};

use super::Harness;
use crate::ledger::{AdmissionError, AdmissionPolicy, HeartbeatBatch, TxKind};
use crate::test_utils::{test_cid, tx, tx_with_nonce};

fn transfer(h: &Harness) -> TxKind {
    TxKind::Transfer {
        to: h.accounts[1].node_id(),
        amount: 1,
    }
}

#[test]
fn a_funded_senders_transaction_within_the_window_is_admitted() {
    let h = Harness::new();
    let policy = AdmissionPolicy::default();
    let a = &h.accounts[0];
    let chain = h.ledger.chain_id();
    for nonce in [0, 1, policy.max_nonce_ahead] {
        let t = tx_with_nonce(chain, a, nonce, transfer(&h));
        assert_eq!(h.ledger.admissible(&t, &policy), Ok(()), "nonce {nonce}");
    }
    // Arbitrators count their bond as funds.
    let arb = &h.committee[0];
    let t = tx(&h.ledger, arb, transfer(&h));
    assert_eq!(h.ledger.admissible(&t, &policy), Ok(()));
}

#[test]
fn admission_refuses_in_order_size_chain_account_funds_nonce_signature() {
    let mut h = Harness::new();
    let policy = AdmissionPolicy::default();
    let a = h.accounts[0].clone();
    let chain = h.ledger.chain_id().to_string();

    let batch = HeartbeatBatch {
        intervals: Vec::new(),
        readings_processed: 0,
        data_proofs: (0..1_000u32).map(|i| test_cid(&i.to_le_bytes())).collect(),
    };
    let huge = tx(
        &h.ledger,
        &a,
        TxKind::Heartbeats {
            contract: crate::contract::ContractId([7; 32]),
            batch,
        },
    );
    assert!(matches!(
        h.ledger.admissible(&huge, &policy),
        Err(AdmissionError::TooLarge { .. })
    ));

    let other = tx_with_nonce("other-chain", &a, 0, transfer(&h));
    assert!(matches!(
        h.ledger.admissible(&other, &policy),
        Err(AdmissionError::WrongChain { .. })
    ));

    // A free key: nonces 1..1000 skipping 0 were the mempool lock-out; none gets in.
    let free = KeySigner::from_seed(31_337);
    for nonce in [0, 1, 999] {
        let t = tx_with_nonce(&chain, &free, nonce, transfer(&h));
        assert!(matches!(
            h.ledger.admissible(&t, &policy),
            Err(AdmissionError::UnknownAccount { .. })
        ));
    }

    // An account that gave its funds away holds less than the minimum.
    let poor = h.accounts[3].clone();
    let min = h.ledger.params().min_account_balance;
    h.ok(
        &poor,
        TxKind::Transfer {
            to: a.node_id(),
            amount: 10_000 - (min - 1),
        },
    );
    let t = tx(&h.ledger, &poor, transfer(&h));
    assert_eq!(
        h.ledger.admissible(&t, &policy),
        Err(AdmissionError::Unfunded {
            sender: poor.node_id(),
            holds: min - 1,
            min
        })
    );

    h.ok(&a, transfer(&h));
    let stale = tx_with_nonce(&chain, &a, 0, transfer(&h));
    assert!(matches!(
        h.ledger.admissible(&stale, &policy),
        Err(AdmissionError::StaleNonce { next: 1, .. })
    ));
    let far = tx_with_nonce(&chain, &a, 1 + policy.max_nonce_ahead + 1, transfer(&h));
    assert!(matches!(
        h.ledger.admissible(&far, &policy),
        Err(AdmissionError::TooFarAhead { .. })
    ));

    let mut forged = tx(&h.ledger, &a, transfer(&h));
    forged.tx.kind = TxKind::Transfer {
        to: a.node_id(),
        amount: 9_000,
    };
    assert!(matches!(
        h.ledger.admissible(&forged, &policy),
        Err(AdmissionError::BadSignature { .. })
    ));
}

#[test]
fn admission_changes_nothing() {
    let h = Harness::new();
    let before = h.ledger.state_hash().unwrap();
    let t = tx(&h.ledger, &h.accounts[0], transfer(&h));
    h.ledger
        .admissible(&t, &AdmissionPolicy::default())
        .unwrap();
    assert_eq!(before, h.ledger.state_hash().unwrap());
}

#[test]
fn each_sender_gets_a_bounded_share_of_the_mempool() {
    let policy = AdmissionPolicy::default();
    let who = KeySigner::from_seed(1).node_id();
    assert_eq!(
        policy.check_sender_quota(who, policy.max_pending_per_sender - 1),
        Ok(())
    );
    assert_eq!(
        policy.check_sender_quota(who, policy.max_pending_per_sender),
        Err(AdmissionError::SenderFull {
            sender: who,
            pending: policy.max_pending_per_sender,
            max: policy.max_pending_per_sender
        })
    );
}

/// What a proposer takes first under a backlog (THREATS N9): only a sender's own duty on a
/// contract that is still live, never a transfer, a stranger's report or a dead contract's.
#[test]
fn duties_are_a_senders_own_on_live_contracts_and_nothing_else() {
    use crate::attestation::Liveness;
    use crate::contract::ContractId;
    use crate::ledger::{ProbeReport, SettleReason};
    use crate::test_utils::ContractBuilder;

    let mut h = Harness::new();
    let id = h.armed(ContractBuilder::new(1, 2).signed());
    let (customer, provider) = (h.customer(), h.provider());
    let member = h.committee[0].clone();
    let stranger = h.accounts[2].clone();
    let duty =
        |h: &Harness, s: &KeySigner, kind: TxKind| h.ledger.is_duty(&tx(&h.ledger, s, kind).tx);
    let activation = |contract| TxKind::ReportActivation {
        contract,
        activated_at: 1_000,
    };
    let heartbeats = |contract| TxKind::Heartbeats {
        contract,
        batch: HeartbeatBatch {
            intervals: Vec::new(),
            readings_processed: 0,
            data_proofs: Vec::new(),
        },
    };
    let probe = |contract| ProbeReport {
        contract,
        interval: 0,
        up: true,
    };
    let unknown = ContractId([9; 32]);

    // The provider's reports on its own contract; nobody else's, and not on a contract that
    // does not exist.
    assert!(duty(&h, &provider, activation(id)));
    assert!(duty(&h, &provider, heartbeats(id)));
    assert!(duty(&h, &provider, TxKind::SettleUptime(id)));
    assert!(!duty(&h, &customer, activation(id)));
    assert!(!duty(&h, &stranger, heartbeats(id)));
    assert!(!duty(&h, &member, heartbeats(id)));
    assert!(!duty(&h, &provider, activation(unknown)));
    // Either party may end it; a stranger may not.
    let settle = TxKind::Settle {
        contract: id,
        reason: SettleReason::CustomerBack,
    };
    assert!(duty(&h, &customer, settle.clone()));
    assert!(duty(&h, &provider, TxKind::Cancel(id)));
    assert!(!duty(&h, &stranger, settle));
    // The committee's probe reports: every entry on a contract the sender is a member of.
    assert!(duty(
        &h,
        &member,
        TxKind::ProbeResult {
            contract: id,
            interval: 0,
            up: true
        }
    ));
    assert!(duty(&h, &member, TxKind::ProbeResults(vec![probe(id)])));
    assert!(!duty(
        &h,
        &member,
        TxKind::ProbeResults(vec![probe(id), probe(unknown)])
    ));
    assert!(!duty(&h, &member, TxKind::ProbeResults(Vec::new())));
    assert!(!duty(&h, &stranger, TxKind::ProbeResults(vec![probe(id)])));
    // Attestations from arbitrators only.
    let attest = TxKind::Attest {
        subject: customer.node_id(),
        liveness: Liveness::Reachable,
    };
    assert!(duty(&h, &member, attest.clone()));
    assert!(!duty(&h, &stranger, attest));
    // Transfers, faucet requests and new contracts never, whoever sends them.
    assert!(!duty(&h, &provider, transfer(&h)));
    assert!(!duty(&h, &member, TxKind::Faucet { amount: 1 }));
    // A contract that reached a final state asks nothing of anyone any more.
    h.ok(&customer, TxKind::Cancel(id));
    assert!(!duty(&h, &provider, heartbeats(id)));
    assert!(!duty(&h, &member, TxKind::ProbeResults(vec![probe(id)])));
}
