//! Property tests: random transaction sequences never panic, refused transactions change
//! nothing, tokens are conserved (only genesis and the faucet create them, only slashed bonds
//! are burned), no contract reaches a final state twice, locked funds cannot be spent, replays
//! are always refused, and an honest provider is never slashed by a minority of its committee
//! (`honest`).

use proptest::prelude::*;

use super::*;
use crate::test_utils::{genesis_with, tx, tx_with_nonce};
use world::{Op, World, op};

mod honest;
mod settlement;
mod world;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_sequences_keep_invariants(ops in prop::collection::vec(op(), 1..150)) {
        let mut w = World::new();
        for op in &ops {
            w.step(op)?;
        }
    }

    #[test]
    fn replica_seeing_only_accepted_txs_reaches_the_same_state(ops in prop::collection::vec(op(), 1..60)) {
        // Refused transactions must leave no trace: a replica that never sees them, applying
        // only the accepted ones at the same times, must end in the identical state.
        let mut w = World::new();
        let mut replica = w.ledger.clone();
        // Blocks are not transactions: the replica sees only what `apply` accepted.
        for op in ops.iter().filter(|o| !matches!(o, Op::Block)) {
            w.step(op)?;
        }
        prop_assert_eq!(w.blocks, 0);
        for (stx, now) in w.applied.iter().zip(&w.applied_at) {
            prop_assert!(replica.apply(*now, stx).is_ok());
        }
        prop_assert_eq!(replica.state_hash().unwrap(), w.ledger.state_hash().unwrap());
    }

    #[test]
    fn stale_nonces_are_always_refused(n in 1u64..5, stale in 0u64..5) {
        let (genesis, accounts, _) = genesis_with(2, 1, 1_000);
        let mut ledger = Ledger::from_genesis(&genesis).unwrap();
        let to = accounts[1].node_id();
        for _ in 0..n {
            let t = tx(&ledger, &accounts[0], TxKind::Transfer { to, amount: 1 });
            ledger.apply(0, &t).unwrap();
        }
        let stale = stale % n;
        let t = tx_with_nonce(ledger.chain_id(), &accounts[0], stale, TxKind::Transfer { to, amount: 1 });
        let is_bad_nonce = matches!(ledger.apply(0, &t), Err(LedgerError::BadNonce { .. }));
        prop_assert!(is_bad_nonce);
    }
}
