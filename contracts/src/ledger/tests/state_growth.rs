//! Free state growth (#13.11): only funded accounts act, new accounts need the minimum
//! balance, the faucet is bounded per account and per block; arbitrator bonds at genesis.

use agora_market::{KeySigner, Signer};

use super::Harness;
use crate::ledger::{Genesis, GenesisAccount, Ledger, LedgerError, TxKind};
use crate::test_utils::{genesis_with, signer, tx, tx_with_nonce};

#[test]
fn transfers_of_nothing_are_refused() {
    let mut h = Harness::new();
    let (a, b) = (h.accounts[0].clone(), h.accounts[1].clone());
    let err = h
        .try_apply(
            &a,
            TxKind::Transfer {
                to: b.node_id(),
                amount: 0,
            },
        )
        .unwrap_err();
    assert!(matches!(err, LedgerError::ZeroAmount { .. }), "{err}");
    let err = h.try_apply(&a, TxKind::Faucet { amount: 0 }).unwrap_err();
    assert!(matches!(err, LedgerError::ZeroAmount { .. }), "{err}");
}

#[test]
fn a_new_account_needs_the_minimum_balance() {
    let mut h = Harness::new();
    let a = h.accounts[0].clone();
    let min = h.ledger.params().min_account_balance;
    let fresh = KeySigner::from_seed(4_242).node_id();
    let err = h
        .try_apply(
            &a,
            TxKind::Transfer {
                to: fresh,
                amount: min - 1,
            },
        )
        .unwrap_err();
    assert_eq!(
        err,
        LedgerError::BelowMinimumBalance {
            to: fresh,
            amount: min - 1,
            min
        }
    );
    assert!(h.ledger.account(&fresh).is_none());
    h.ok(
        &a,
        TxKind::Transfer {
            to: fresh,
            amount: min,
        },
    );
    assert_eq!(h.ledger.spendable(&fresh), min);
    // An existing account takes any positive amount.
    h.ok(
        &a,
        TxKind::Transfer {
            to: fresh,
            amount: 1,
        },
    );
}

#[test]
fn a_key_that_was_never_funded_can_do_nothing() {
    let mut h = Harness::new();
    let stranger = KeySigner::from_seed(7_777);
    let to = h.accounts[0].node_id();
    let before = h.ledger.state_hash().unwrap();
    for kind in [
        TxKind::Transfer { to, amount: 0 },
        TxKind::Faucet { amount: 1_000 },
        TxKind::Attest {
            subject: to,
            liveness: crate::attestation::Liveness::Reachable,
        },
    ] {
        let t = tx(&h.ledger, &stranger, kind);
        assert_eq!(
            h.ledger.apply(h.now, &t),
            Err(LedgerError::UnknownAccount {
                sender: stranger.node_id()
            })
        );
    }
    // Not even inside a block: no account, no nonce, no trace.
    let t = tx(&h.ledger, &stranger, TxKind::Faucet { amount: 1_000 });
    let out = h.ledger.apply_block(1, h.now, &[t]).unwrap();
    assert_eq!(out.rejected.len(), 1);
    assert!(h.ledger.account(&stranger.node_id()).is_none());
    let mut replica = Ledger::from_genesis(&genesis_with(4, 4, 10_000).0).unwrap();
    replica.apply_block(1, h.now, &[]).unwrap();
    assert_eq!(
        h.ledger.state_hash().unwrap(),
        replica.state_hash().unwrap()
    );
    assert_ne!(before, h.ledger.state_hash().unwrap(), "the height moved");
}

#[test]
fn the_faucet_is_capped_per_account_over_its_life() {
    let (mut genesis, accounts, _) = genesis_with(2, 4, 10_000);
    genesis.params.faucet_max_per_tx = 400;
    genesis.params.faucet_max_per_account = 1_000;
    genesis.params.faucet_max_per_block = 100_000;
    let mut ledger = Ledger::from_genesis(&genesis).unwrap();
    let a = &accounts[0];
    for height in 1..=2 {
        let t = tx(&ledger, a, TxKind::Faucet { amount: 400 });
        let out = ledger.apply_block(height, height * 1_000, &[t]).unwrap();
        assert!(out.rejected.is_empty());
    }
    let t = tx(&ledger, a, TxKind::Faucet { amount: 201 });
    let out = ledger.apply_block(3, 3_000, &[t]).unwrap();
    assert!(matches!(
        out.rejected.as_slice(),
        [(
            0,
            LedgerError::FaucetAccountCap {
                received: 800,
                requested: 201,
                max: 1_000,
                ..
            }
        )]
    ));
    let t = tx(&ledger, a, TxKind::Faucet { amount: 200 });
    let out = ledger.apply_block(4, 4_000, &[t]).unwrap();
    assert!(out.rejected.is_empty());
    assert_eq!(ledger.account(&a.node_id()).unwrap().faucet_received, 1_000);
    // Another account has its own allowance.
    let t = tx(&ledger, &accounts[1], TxKind::Faucet { amount: 400 });
    assert!(
        ledger
            .apply_block(5, 5_000, &[t])
            .unwrap()
            .rejected
            .is_empty()
    );
    assert_eq!(ledger.supply().minted, 1_400);
    ledger.audit().unwrap();
}

#[test]
fn the_faucet_is_capped_per_block() {
    let (mut genesis, accounts, _) = genesis_with(3, 4, 10_000);
    genesis.params.faucet_max_per_block = 1_000;
    let mut ledger = Ledger::from_genesis(&genesis).unwrap();
    let faucet = |i: usize, amount| {
        tx_with_nonce(ledger_chain(), &accounts[i], 0, TxKind::Faucet { amount })
    };
    let txs = vec![faucet(0, 600), faucet(1, 400), faucet(2, 1)];
    let out = ledger.apply_block(1, 1_000, &txs).unwrap();
    let refused: Vec<usize> = out.rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(refused, vec![2]);
    assert!(matches!(
        out.rejected[0].1,
        LedgerError::FaucetBlockCap {
            minted: 1_000,
            requested: 1,
            max: 1_000
        }
    ));
    // The next block has a fresh allowance (account 2's refused tx used up its nonce 0).
    let t = tx(&ledger, &accounts[2], TxKind::Faucet { amount: 1_000 });
    let out = ledger.apply_block(2, 2_000, &[t]).unwrap();
    assert!(out.rejected.is_empty());
    assert_eq!(ledger.supply().minted, 2_000);
}

fn ledger_chain() -> &'static str {
    crate::test_utils::TEST_CHAIN
}

#[test]
fn arbitrators_lock_their_bond_at_genesis() {
    let h = Harness::new();
    let bond = h.ledger.params().arbitrator_bond;
    for a in &h.committee {
        let account = h.ledger.account(&a.node_id()).unwrap();
        assert_eq!(account.bonded, bond);
        assert_eq!(account.balance, crate::test_utils::ARBITRATOR_SPENDABLE);
    }
    let genesis_total = 4 * 10_000 + 4 * (bond + crate::test_utils::ARBITRATOR_SPENDABLE);
    assert_eq!(h.ledger.supply().genesis, genesis_total);
    h.ledger.audit().unwrap();
}

#[test]
fn genesis_refuses_unfunded_or_duplicate_arbitrators_and_a_zero_minimum() {
    let (genesis, _, _) = genesis_with(2, 4, 10_000);
    let unfunded = Genesis {
        accounts: genesis.accounts[..2].to_vec(),
        ..genesis.clone()
    };
    let err = Ledger::from_genesis(&unfunded).unwrap_err();
    assert!(matches!(err, LedgerError::BadGenesis(ref m) if m.contains("no genesis account")));
    let mut poor = genesis.clone();
    poor.accounts[2] = GenesisAccount {
        id: poor.committee[0],
        balance: poor.params.arbitrator_bond - 1,
    };
    let err = Ledger::from_genesis(&poor).unwrap_err();
    assert!(matches!(err, LedgerError::BadGenesis(ref m) if m.contains("bond")));
    let mut twice = genesis.clone();
    twice.committee.push(twice.committee[0]);
    assert!(matches!(
        Ledger::from_genesis(&twice),
        Err(LedgerError::BadGenesis(_))
    ));
    let mut zero = genesis;
    zero.params.min_committee = 0;
    assert!(matches!(
        Ledger::from_genesis(&zero),
        Err(LedgerError::BadGenesis(_))
    ));
}

#[test]
fn a_genesis_file_without_the_new_params_gets_the_defaults() {
    let id = signer(1).node_id();
    let json = format!(
        r#"{{"chain_id":"x","accounts":[{{"id":"{id}","balance":20000}}],"committee":["{id}"],"faucet_enabled":true,"params":{{"attestation_window_ms":60000}}}}"#
    );
    let genesis: Genesis = serde_json::from_str(&json).unwrap();
    assert_eq!(genesis.params.min_committee, 4);
    let ledger = Ledger::from_genesis(&genesis).unwrap();
    assert_eq!(ledger.account(&id).unwrap().bonded, 10_000);
}

/// THREATS N12: a contract paying nothing (or naming oversized interfaces) is refused, and
/// registering one whose provider locks nothing makes no account for that provider.
#[test]
fn contracts_paying_nothing_or_naming_too_much_are_refused() {
    use crate::test_utils::ContractBuilder;
    let mut h = Harness::new();
    let c = h.customer();
    let free = ContractBuilder::new(1, 2).payment(0).signed();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(free)))
        .unwrap_err();
    assert!(err.to_string().contains("payment must be greater"), "{err}");
    let mut padded = ContractBuilder::new(1, 2).nonce(9).build();
    padded.terms.interfaces = vec!["x".repeat(crate::contract::MAX_INTERFACE_LEN + 1)];
    let padded = padded.sign_both(&h.customer(), &h.provider()).unwrap();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(padded)))
        .unwrap_err();
    assert!(err.to_string().contains("interfaces"), "{err}");
    let mut many = ContractBuilder::new(1, 2).nonce(10).build();
    many.terms.interfaces = (0..=crate::contract::MAX_INTERFACES)
        .map(|i| format!("i{i}"))
        .collect();
    let many = many.sign_both(&h.customer(), &h.provider()).unwrap();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(many)))
        .unwrap_err();
    assert!(err.to_string().contains("interfaces"), "{err}");
    // Signed a day ahead of the block's time: refused (its register window would never close).
    let ahead = ContractBuilder::new(1, 2)
        .nonce(11)
        .created(h.now + 86_400_000)
        .signed();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(ahead)))
        .unwrap_err();
    assert!(err.to_string().contains("after this block"), "{err}");
    // A throwaway provider that stakes nothing gets no account: not at registration, not
    // from the reputation a `NoActivation` slash takes from it.
    let slot = h.now + 120_000;
    let throwaway = ContractBuilder::new(1, 77)
        .nonce(12)
        .stakes(100, 0)
        .at(slot)
        .signed();
    let id = h.register(throwaway);
    let lazy = signer(77).node_id();
    assert!(h.ledger.account(&lazy).is_none());
    h.now = slot + 3_600_000;
    h.ok(
        &c,
        TxKind::Settle {
            contract: id,
            reason: crate::ledger::SettleReason::NoActivation,
        },
    );
    assert!(h.ledger.contract(&id).unwrap().status.is_final());
    assert!(h.ledger.account(&lazy).is_none(), "no account for nothing");
}

/// THREATS N12, A9: a closed contract's record is forgotten `RETAIN_CLOSED_MS` after it
/// closed (never before), liveness observations once older than the attestation window, and
/// an arbitrator's attestation of a node that is no party of a live contract it judges is
/// refused.
#[test]
fn closed_contracts_and_stale_observations_are_forgotten() {
    use crate::attestation::Liveness;
    use crate::ledger::RETAIN_CLOSED_MS;
    use crate::test_utils::ContractBuilder;
    let mut h = Harness::new();
    let c = h.customer();
    let id = h.register(ContractBuilder::new(1, 2).signed());
    // An arbitrator of the contract attests its customer; a stranger it may not attest.
    h.attest(0, Liveness::Reachable);
    let a = h.committee[0].clone();
    let stranger = KeySigner::from_seed(9_999).node_id();
    let err = h
        .try_apply(
            &a,
            TxKind::Attest {
                subject: stranger,
                liveness: Liveness::Reachable,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("no party"), "{err}");
    h.ok(&c, TxKind::Cancel(id));
    let closed = h.ledger.contract(&id).unwrap().closed_at.unwrap();
    let window = h.ledger.params().attestation_window_ms;
    let attested = h.ledger.liveness[&c.node_id()][&a.node_id()].recorded_at;
    h.ledger.tick(attested + window);
    assert!(
        h.ledger.liveness.contains_key(&c.node_id()),
        "fresh within the window"
    );
    h.ledger.tick(attested + window + 1);
    assert!(h.ledger.liveness.is_empty(), "stale observations forgotten");
    // A closed contract's customer stays attestable while the contract is kept.
    h.ok(
        &a,
        TxKind::Attest {
            subject: c.node_id(),
            liveness: Liveness::Reachable,
        },
    );
    h.ledger.tick(closed + RETAIN_CLOSED_MS - 1);
    assert!(
        h.ledger.contract(&id).is_some(),
        "kept while operators may look"
    );
    h.ledger.tick(closed + RETAIN_CLOSED_MS);
    assert!(h.ledger.contract(&id).is_none(), "forgotten");
    // Once its contract is forgotten, its customer is no longer attestable.
    let err = h
        .try_apply(
            &a,
            TxKind::Attest {
                subject: c.node_id(),
                liveness: Liveness::Reachable,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("no party"), "{err}");
}

/// THREATS N12: one customer may have at most `max_contracts_per_customer` contract records
/// on the ledger (open, or closed and not forgotten yet); a further registration is refused
/// until one of its closed ones is forgotten. Another customer is not held back by it.
#[test]
fn one_customer_holds_a_bounded_number_of_contracts() {
    use crate::ledger::RETAIN_CLOSED_MS;
    use crate::test_utils::ContractBuilder;
    let (mut genesis, accounts, committee) = genesis_with(4, 4, 10_000);
    genesis.params.max_contracts_per_customer = 3;
    let mut h = Harness {
        ledger: Ledger::from_genesis(&genesis).unwrap(),
        accounts,
        committee,
        now: 1_000,
    };
    let c = h.customer();
    let ids: Vec<_> = (0..3)
        .map(|n| h.register(ContractBuilder::new(1, 2).nonce(n).signed()))
        .collect();
    let held = |h: &Harness| h.ledger.account(&c.node_id()).unwrap().contracts_held;
    assert_eq!(held(&h), 3);
    let fourth = ContractBuilder::new(1, 2).nonce(3).signed();
    let err = h
        .try_apply(&c, TxKind::RegisterContract(Box::new(fourth.clone())))
        .unwrap_err();
    assert!(err.to_string().contains("already has 3 contracts"), "{err}");
    // Another customer (seed 2 buys from seed 1) is not held back.
    let other = h.accounts[1].clone();
    let theirs = ContractBuilder::new(2, 1).nonce(0).signed();
    h.ok(&other, TxKind::RegisterContract(Box::new(theirs)));
    // A closed contract still counts until it is forgotten.
    h.ok(&c, TxKind::Cancel(ids[0]));
    let closed = h.ledger.contract(&ids[0]).unwrap().closed_at.unwrap();
    assert!(
        h.try_apply(&c, TxKind::RegisterContract(Box::new(fourth.clone())))
            .is_err()
    );
    h.ledger.tick(closed + RETAIN_CLOSED_MS);
    assert!(h.ledger.contract(&ids[0]).is_none());
    assert_eq!(held(&h), 2);
    h.now = closed + RETAIN_CLOSED_MS;
    let fourth = ContractBuilder::new(1, 2).nonce(4).created(h.now).signed();
    h.ok(&c, TxKind::RegisterContract(Box::new(fourth)));
    assert_eq!(held(&h), 3);
}
