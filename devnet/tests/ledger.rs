//! The arbitrators' ledger on real swarms: transactions finalise on every replica, with one
//! arbitrator crashed, and a restarted arbitrator recovers its ledger from sled and catches up.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_contracts::TxKind;
use agora_devnet::Devnet;

const WAIT: Duration = Duration::from_secs(30);

async fn balance(net: &Devnet, i: usize, of: usize) -> u64 {
    let who = net.node_id(of);
    let l = net.node(i).unwrap().ledger.clone().unwrap();
    l.query(move |v| v.ledger.account(&who).map(|a| a.balance).unwrap_or(0))
        .await
        .unwrap()
}

async fn height(net: &Devnet, i: usize) -> u64 {
    let l = net.node(i).unwrap().ledger.clone().unwrap();
    l.query(|v| v.ledger.height()).await.unwrap()
}

async fn wait_balance(net: &Devnet, nodes: &[usize], of: usize, want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut all = true;
        for &i in nodes {
            if balance(net, i, of).await != want {
                all = false;
            }
        }
        if all {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "balance of node{of} never reached {want} on nodes {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_arbitrators_finalise_survive_a_crash_and_catch_up() {
    let mut net = Devnet::builder().nodes(4).spawn().await.unwrap();
    net.wait_connected(3, WAIT).await.unwrap();
    let start = balance(&net, 0, 1).await;

    // A faucet transaction from node1 is final on all four replicas.
    let l1 = net.node(1).unwrap().ledger.clone().unwrap();
    l1.submit(TxKind::Faucet { amount: 500 }).await.unwrap();
    wait_balance(&net, &[0, 1, 2, 3], 1, start + 500).await;

    // One arbitrator crashes (f = 1): the other three still finalise.
    net.stop(3).await;
    let h_before = height(&net, 0).await;
    l1.submit(TxKind::Faucet { amount: 250 }).await.unwrap();
    wait_balance(&net, &[0, 1, 2], 1, start + 750).await;
    assert!(height(&net, 0).await > h_before);

    // An overspend is refused at once, with the reason.
    let too_much = TxKind::Transfer {
        to: net.node_id(0),
        amount: u64::MAX / 2,
    };
    assert!(l1.submit(too_much).await.is_err());

    // The crashed arbitrator restarts from its sled store and catches up via sync.
    net.restart(3).await.unwrap();
    wait_balance(&net, &[3], 1, start + 750).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (h0, h3) = (height(&net, 0).await, height(&net, 3).await);
        if h3 + 2 >= h0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node3 stuck at {h3}, others at {h0}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Replicas agree on the state.
    let hash = |i: usize| {
        let l = net.node(i).unwrap().ledger.clone().unwrap();
        async move {
            l.query(|v| (v.ledger.height(), v.ledger.state_hash().unwrap()))
                .await
                .unwrap()
        }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (a, b) = (hash(0).await, hash(3).await);
        if a.0 == b.0 {
            assert_eq!(a.1, b.1, "same height, same state");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never at the same height"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    net.shutdown().await;
}
