use agora_contracts::test_utils::{genesis_with, signer, test_cid, tx, tx_with_nonce};
use agora_contracts::{HeartbeatBatch, Ledger, TxKind};
use agora_market::{KeySigner, Signer as _};

use super::*;

fn faucet() -> TxKind {
    TxKind::Faucet { amount: 1 }
}

/// A ledger with `n` funded accounts and a small pool (capacity 20, 5 reserved, 8 per sender)
/// owned by `me`.
fn setup(n: usize, me: &KeySigner) -> (Ledger, Vec<KeySigner>, Mempool) {
    let (genesis, accounts, _) = genesis_with(n, 4, 10_000);
    let ledger = Ledger::from_genesis(&genesis).unwrap();
    let policy = AdmissionPolicy {
        max_pending_per_sender: 8,
        max_nonce_ahead: 16,
        unexecutable_ttl_ms: 1_000,
        ..AdmissionPolicy::default()
    };
    let pool = Mempool::with_limits(me.node_id(), policy, 20, 5);
    (ledger, accounts, pool)
}

#[test]
fn admits_funded_and_refuses_free_keys_stale_far_oversized_and_forged() {
    let me = signer(1);
    let (ledger, accounts, mut pool) = setup(2, &me);
    let a = &accounts[1];
    assert_eq!(pool.admit(&ledger, 0, tx(&ledger, a, faucet())), Ok(true));
    // The same transaction again is not new.
    assert_eq!(pool.admit(&ledger, 0, tx(&ledger, a, faucet())), Ok(false));
    assert_eq!(pool.next_nonce(&ledger, &a.node_id()), 1);

    // A free key (no account) gets no slot at all, whatever its nonce.
    let free = signer(999);
    for nonce in [0, 1, 500] {
        let t = tx_with_nonce(ledger.chain_id(), &free, nonce, faucet());
        assert!(matches!(
            pool.admit(&ledger, 0, t),
            Err(MempoolError::Refused(AdmissionError::UnknownAccount { .. }))
        ));
    }
    let far = tx_with_nonce(ledger.chain_id(), a, 17, faucet());
    assert!(matches!(
        pool.admit(&ledger, 0, far),
        Err(MempoolError::Refused(AdmissionError::TooFarAhead { .. }))
    ));
    let mut forged = tx_with_nonce(ledger.chain_id(), a, 1, faucet());
    forged.tx.sender = accounts[0].node_id();
    assert!(matches!(
        pool.admit(&ledger, 0, forged),
        Err(MempoolError::Refused(AdmissionError::BadSignature { .. }))
    ));
    let batch = HeartbeatBatch {
        intervals: Vec::new(),
        readings_processed: 0,
        data_proofs: (0..1_000u32).map(|i| test_cid(&i.to_le_bytes())).collect(),
    };
    let contract = agora_contracts::ContractId([7; 32]);
    let huge = tx_with_nonce(
        ledger.chain_id(),
        a,
        1,
        TxKind::Heartbeats { contract, batch },
    );
    assert!(matches!(
        pool.admit(&ledger, 0, huge),
        Err(MempoolError::Refused(AdmissionError::TooLarge { .. }))
    ));
    assert_eq!(pool.len(), 1);
    let s = pool.stats();
    assert_eq!((s.admitted, s.duplicates), (1, 1));
    assert_eq!(s.refused_unfunded, 3);
    assert_eq!(s.refused_nonce, 1);
    assert_eq!(s.refused_invalid, 2);
}

#[test]
fn each_sender_gets_at_most_its_quota() {
    let me = signer(1);
    let (ledger, accounts, mut pool) = setup(3, &me);
    let a = &accounts[1];
    for nonce in 0..8 {
        let t = tx_with_nonce(ledger.chain_id(), a, nonce, faucet());
        assert_eq!(pool.admit(&ledger, 0, t), Ok(true));
    }
    let ninth = tx_with_nonce(ledger.chain_id(), a, 8, faucet());
    assert!(matches!(
        pool.admit(&ledger, 0, ninth),
        Err(MempoolError::Refused(AdmissionError::SenderFull { .. }))
    ));
    assert_eq!(pool.stats().refused_sender_full, 1);
    // Another sender is not affected.
    let b = tx(&ledger, &accounts[2], faucet());
    assert_eq!(pool.admit(&ledger, 0, b), Ok(true));
}

#[test]
fn a_full_pool_evicts_the_largest_senders_last_nonce_and_keeps_room_for_our_own() {
    let me = signer(1);
    let (ledger, accounts, mut pool) = setup(6, &me);
    // Two flooders fill the 15 slots other nodes may use: 8 + 7.
    let (f1, f2) = (&accounts[1], &accounts[2]);
    for nonce in 0..8 {
        let t = tx_with_nonce(ledger.chain_id(), f1, nonce, faucet());
        assert_eq!(pool.admit(&ledger, 0, t), Ok(true));
    }
    for nonce in 0..7 {
        let t = tx_with_nonce(ledger.chain_id(), f2, nonce, faucet());
        assert_eq!(pool.admit(&ledger, 0, t), Ok(true));
    }
    assert_eq!(pool.len(), 15);
    // f2's eighth finds the share full; f1 holds 8, not more than f2 would after admission:
    // nothing gives way (no ping-pong between equals).
    let t = tx_with_nonce(ledger.chain_id(), f2, 7, faucet());
    assert!(matches!(
        pool.admit(&ledger, 0, t),
        Err(MempoolError::Full { .. })
    ));
    assert_eq!(pool.stats().refused_full, 1);
    // An honest sender with nothing pending still gets in.
    let honest = tx(&ledger, &accounts[3], faucet());
    assert_eq!(pool.admit(&ledger, 0, honest.clone()), Ok(true));
    assert!(pool.holds(&honest));
    assert_eq!(pool.len(), 15);
    // The largest sender's highest nonce made way.
    assert_eq!(pool.pending_of(&f1.node_id()), 7);
    assert!(!pool.holds(&tx_with_nonce(ledger.chain_id(), f1, 7, faucet())));
    // This node's own use the reserved five without evicting anyone.
    for nonce in 0..5 {
        let t = tx_with_nonce(ledger.chain_id(), &me, nonce, faucet());
        assert_eq!(pool.admit(&ledger, 0, t), Ok(true));
    }
    assert_eq!(pool.len(), 20);
    let evicted_before = pool.stats().evicted;
    // The pool is full: our own sixth still gets in, by eviction.
    let sixth = tx_with_nonce(ledger.chain_id(), &me, 5, faucet());
    assert_eq!(pool.admit(&ledger, 0, sixth.clone()), Ok(true));
    assert!(pool.holds(&sixth));
    assert_eq!(pool.stats().evicted, evicted_before + 1);
    assert_eq!(pool.len(), 20);
    // A second new sender with one pending does not evict the honest one (equal counts).
    let other = tx(&ledger, &accounts[4], faucet());
    assert_eq!(pool.admit(&ledger, 0, other), Ok(true));
    assert!(pool.holds(&honest));
    // Our own come first in a proposal.
    let proposal = pool.proposal(&ledger, 3);
    assert!(proposal.iter().all(|t| t.tx.sender == me.node_id()));
}

#[test]
fn when_nothing_may_be_evicted_the_newcomer_is_refused() {
    let me = signer(1);
    let (genesis, accounts, _) = genesis_with(4, 4, 10_000);
    let ledger = Ledger::from_genesis(&genesis).unwrap();
    let policy = AdmissionPolicy {
        max_pending_per_sender: 2,
        ..AdmissionPolicy::default()
    };
    let mut pool = Mempool::with_limits(me.node_id(), policy, 3, 1);
    assert_eq!(
        pool.admit(&ledger, 0, tx(&ledger, &accounts[1], faucet())),
        Ok(true)
    );
    assert_eq!(
        pool.admit(&ledger, 0, tx(&ledger, &accounts[2], faucet())),
        Ok(true)
    );
    // Every other sender holds one: evicting one of them would leave it no better off than
    // the newcomer, so the newcomer is refused.
    assert!(matches!(
        pool.admit(&ledger, 0, tx(&ledger, &accounts[3], faucet())),
        Err(MempoolError::Full { .. })
    ));
    assert_eq!(pool.stats().refused_full, 1);
}

#[test]
fn after_a_block_stale_unfunded_and_long_gapped_transactions_go() {
    let me = signer(1);
    let (mut ledger, accounts, mut pool) = setup(4, &me);
    let chain = ledger.chain_id().to_string();
    let a = &accounts[1];
    let gapper = &accounts[2];
    let spender = &accounts[3];
    // a: nonce 0 (will be included) and 1 (ready afterwards).
    for nonce in 0..2 {
        let t = tx_with_nonce(&chain, a, nonce, faucet());
        assert_eq!(pool.admit(&ledger, 0, t), Ok(true));
    }
    // gapper skips nonce 0: nonces 1..=3 can never execute.
    for nonce in 1..=3 {
        let t = tx_with_nonce(&chain, gapper, nonce, faucet());
        assert_eq!(pool.admit(&ledger, 100, t), Ok(true));
    }
    assert!(pool.has_ready(&ledger));
    // spender queues a faucet, then a block moves all its funds away.
    let queued = tx_with_nonce(&chain, spender, 1, faucet());
    let all = ledger.account(&spender.node_id()).unwrap().balance;
    let drain = tx_with_nonce(
        &chain,
        spender,
        0,
        TxKind::Transfer {
            to: accounts[0].node_id(),
            amount: all,
        },
    );
    assert_eq!(pool.admit(&ledger, 0, drain.clone()), Ok(true));
    assert_eq!(pool.admit(&ledger, 0, queued), Ok(true));
    let first = tx_with_nonce(&chain, a, 0, faucet());
    let outcome = ledger.apply_block(1, 1_000, &[first, drain]).unwrap();
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);

    // Before the time to live the gapped ones stay.
    let report = pool.after_block(&ledger, 500);
    assert_eq!(report.unfunded, 1);
    assert_eq!(report.expired, 0);
    assert_eq!(pool.pending_of(&spender.node_id()), 0);
    assert_eq!(pool.pending_of(&gapper.node_id()), 3);
    assert_eq!(pool.pending_of(&a.node_id()), 1);
    // The included ones are counted as such.
    assert_eq!(pool.stats().included, 2);
    // After it they expire; a's ready transaction stays.
    let report = pool.after_block(&ledger, 1_100);
    assert_eq!(report.expired, 3);
    assert_eq!(pool.len(), 1);
    assert_eq!(pool.stats().expired, 3);
    assert_eq!(pool.stats().dropped_unfunded, 1);
    assert_eq!(
        pool.proposal(&ledger, 10),
        vec![tx_with_nonce(&chain, a, 1, faucet())]
    );
}

#[test]
fn a_gap_only_pool_has_nothing_ready() {
    let me = signer(1);
    let (ledger, accounts, mut pool) = setup(2, &me);
    let t = tx_with_nonce(ledger.chain_id(), &accounts[1], 3, faucet());
    assert_eq!(pool.admit(&ledger, 0, t), Ok(true));
    assert!(!pool.has_ready(&ledger));
    assert!(pool.proposal(&ledger, 10).is_empty());
}

#[test]
fn a_proposal_takes_the_oldest_first_whatever_the_senders_ids() {
    let me = signer(1);
    let (ledger, accounts, mut pool) = setup(3, &me);
    let chain = ledger.chain_id().to_string();
    // `first` sorts before `last` (the order the senders' ids give).
    let (mut first, mut last) = (&accounts[1], &accounts[2]);
    if first.node_id() > last.node_id() {
        std::mem::swap(&mut first, &mut last);
    }
    // `last` waited: its three arrived before a burst of eight (its quota) from `first`.
    for nonce in 0..3 {
        let t = tx_with_nonce(&chain, last, nonce, faucet());
        assert_eq!(pool.admit(&ledger, nonce, t), Ok(true));
    }
    for nonce in 0..8 {
        let t = tx_with_nonce(&chain, first, nonce, faucet());
        assert_eq!(pool.admit(&ledger, 10 + nonce, t), Ok(true));
    }
    let p = pool.proposal(&ledger, 3);
    assert_eq!(
        p,
        (0..3)
            .map(|n| tx_with_nonce(&chain, last, n, faucet()))
            .collect::<Vec<_>>(),
        "the waiting sender goes first, not the one whose id sorts first"
    );
    // Interleaved arrivals interleave, each sender's nonces in order; this node's own first.
    let (ledger, accounts, mut pool) = setup(3, &me);
    let (a, b) = (&accounts[1], &accounts[2]);
    for n in 0..3 {
        let ta = tx_with_nonce(&chain, a, n, faucet());
        let tb = tx_with_nonce(&chain, b, n, faucet());
        assert_eq!(pool.admit(&ledger, 2 * n + 1, ta), Ok(true));
        assert_eq!(pool.admit(&ledger, 2 * n + 2, tb), Ok(true));
    }
    let mine = tx_with_nonce(&chain, &me, 0, faucet());
    assert_eq!(pool.admit(&ledger, 100, mine.clone()), Ok(true));
    let order: Vec<(NodeId, u64)> = pool
        .proposal(&ledger, 10)
        .iter()
        .map(|t| (t.tx.sender, t.tx.nonce))
        .collect();
    let (a, b, m) = (a.node_id(), b.node_id(), me.node_id());
    assert_eq!(
        order,
        vec![(m, 0), (a, 0), (b, 0), (a, 1), (b, 1), (a, 2), (b, 2)]
    );
}

/// THREATS N9: a provider's duty goes ahead of an older backlog of others' transfers, at most
/// `DUTIES_PER_SENDER` a proposal; its nonces stay in order; a report on a contract the sender
/// has no part in waits like any transfer.
#[test]
fn a_providers_duties_go_ahead_of_an_older_backlog_a_few_a_proposal() {
    use agora_contracts::test_utils::ContractBuilder;
    let me = signer(50);
    let (genesis, accounts, _) = genesis_with(3, 4, 10_000);
    let mut ledger = Ledger::from_genesis(&genesis).unwrap();
    let (customer, provider, flooder) = (&accounts[0], &accounts[1], &accounts[2]);
    let signed = ContractBuilder::new(1, 2).signed();
    let id = signed.contract.id().unwrap();
    for (s, kind) in [
        (customer, TxKind::RegisterContract(Box::new(signed))),
        (provider, TxKind::MarkMigrated(id)),
        (provider, TxKind::MarkArmed(id)),
    ] {
        let t = tx(&ledger, s, kind);
        ledger.apply(1_000, &t).unwrap();
    }
    let chain = ledger.chain_id().to_string();
    let policy = AdmissionPolicy {
        max_pending_per_sender: 16,
        max_nonce_ahead: 32,
        ..AdmissionPolicy::default()
    };
    let transfer = || TxKind::Transfer {
        to: customer.node_id(),
        amount: 1,
    };
    let heartbeats = || TxKind::Heartbeats {
        contract: id,
        batch: HeartbeatBatch {
            intervals: Vec::new(),
            readings_processed: 0,
            data_proofs: Vec::new(),
        },
    };
    let (f, p) = (flooder.node_id(), provider.node_id());
    let base = |s: &KeySigner| ledger.next_nonce(&s.node_id());
    let (fb, pb) = (base(flooder), base(provider));
    let order = |pool: &Mempool, max: usize| -> Vec<(NodeId, u64)> {
        pool.proposal(&ledger, max)
            .iter()
            .map(|t| (t.tx.sender, t.tx.nonce))
            .collect()
    };

    // A backlog of sixteen transfers arrived first; then the provider's activation report,
    // six heartbeats and a transfer of its own.
    let mut pool = Mempool::with_limits(me.node_id(), policy.clone(), 100, 5);
    for n in 0..16 {
        let t = tx_with_nonce(&chain, flooder, fb + n, transfer());
        assert_eq!(pool.admit(&ledger, n, t), Ok(true));
    }
    let activation = TxKind::ReportActivation {
        contract: id,
        activated_at: 1_000,
    };
    let mut mine = vec![activation];
    mine.extend((0..6).map(|_| heartbeats()));
    mine.push(transfer());
    for (n, kind) in mine.into_iter().enumerate() {
        let n = n as u64;
        let t = tx_with_nonce(&chain, provider, pb + n, kind);
        assert_eq!(pool.admit(&ledger, 100 + n, t), Ok(true));
    }
    let want: Vec<_> = (0..DUTIES_PER_SENDER as u64)
        .map(|n| (p, pb + n))
        .chain((0..4).map(|n| (f, fb + n)))
        .collect();
    assert_eq!(order(&pool, 8), want, "four duties first, then the backlog");
    let all = order(&pool, 100);
    assert_eq!(all.len(), 24);
    assert_eq!(all[..4], want[..4]);
    assert_eq!(
        all[4..20],
        (0..16).map(|n| (f, fb + n)).collect::<Vec<_>>()[..],
        "the rest of the backlog"
    );
    assert_eq!(
        all[20..],
        (4..8).map(|n| (p, pb + n)).collect::<Vec<_>>()[..],
        "duties past the lane's share, and the provider's transfer, wait their turn"
    );

    // A duty behind the sender's own transfer waits for it; a stranger's heartbeats on the
    // provider's contract are no duty.
    let mut pool = Mempool::with_limits(me.node_id(), policy, 100, 5);
    for n in 0..4 {
        let t = tx_with_nonce(&chain, customer, base(customer) + n, transfer());
        assert_eq!(pool.admit(&ledger, n, t), Ok(true));
    }
    let t = tx_with_nonce(&chain, provider, pb, transfer());
    assert_eq!(pool.admit(&ledger, 10, t), Ok(true));
    let t = tx_with_nonce(&chain, provider, pb + 1, heartbeats());
    assert_eq!(pool.admit(&ledger, 11, t), Ok(true));
    let t = tx_with_nonce(&chain, flooder, fb, heartbeats());
    assert_eq!(pool.admit(&ledger, 12, t), Ok(true));
    let c = customer.node_id();
    let cb = base(customer);
    assert_eq!(
        order(&pool, 10),
        vec![
            (c, cb),
            (c, cb + 1),
            (c, cb + 2),
            (c, cb + 3),
            (p, pb),
            (p, pb + 1),
            (f, fb)
        ]
    );
}
