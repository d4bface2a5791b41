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

/// Waits until nodes `a` and `b` are at the same height, and checks their states are equal.
async fn same_state(net: &Devnet, a: usize, b: usize) {
    let state = |i: usize| {
        let l = net.node(i).unwrap().ledger.clone().unwrap();
        async move {
            l.query(|v| (v.ledger.height(), v.ledger.state_hash().unwrap()))
                .await
                .unwrap()
        }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (sa, sb) = (state(a).await, state(b).await);
        if sa.0 == sb.0 {
            assert_eq!(sa.1, sb.1, "node{a} and node{b}: same height, same state");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node{b} at {} never met node{a} at {}",
            sb.0,
            sa.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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

    // Heights the crashed arbitrator would propose do not wait out the whole propose timeout:
    // the survivors' networks report it down, and they move to the next round at once. With
    // four proposers in turn, a few more blocks reach one of its heights.
    let cut = |i: usize| {
        let l = net.node(i).unwrap().ledger.clone().unwrap();
        async move { l.query(|v| v.propose_timeouts_cut).await.unwrap() }
    };
    let mut paid = 750;
    for _ in 0..8 {
        if cut(0).await > 0 {
            break;
        }
        l1.submit(TxKind::Faucet { amount: 1 }).await.unwrap();
        paid += 1;
        wait_balance(&net, &[0, 1, 2], 1, start + paid).await;
    }
    assert!(
        cut(0).await > 0,
        "no round of the crashed proposer was cut short on node0"
    );

    // An overspend is refused at once, with the reason.
    let too_much = TxKind::Transfer {
        to: net.node_id(0),
        amount: u64::MAX / 2,
    };
    assert!(l1.submit(too_much).await.is_err());

    // The crashed arbitrator restarts from its sled store and catches up via sync.
    net.restart(3).await.unwrap();
    wait_balance(&net, &[3], 1, start + paid).await;
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
    same_state(&net, 0, 3).await;
    net.shutdown().await;
}

/// Transactions travel in gossiped batches; every transaction in a batch is checked on its
/// own: a forged one is dropped while the valid ones in the same message still finalise, and a
/// malformed batch is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossiped_batches_keep_valid_transactions_and_drop_forged_ones() {
    use agora_contracts::{Transaction, TxKind};
    use agora_ledger::TX_TOPIC;
    use agora_network::keys::NodeKey;
    use agora_wire::codec::Kind;

    let net = Devnet::builder().nodes(4).spawn().await.unwrap();
    net.wait_connected(3, WAIT).await.unwrap();
    let (start1, start2) = (balance(&net, 0, 1).await, balance(&net, 0, 2).await);
    let chain = {
        let l = net.node(0).unwrap().ledger.clone().unwrap();
        l.query(|v| v.ledger.chain_id().to_string()).await.unwrap()
    };
    let key2 = NodeKey::load(&net.data_dir(2)).unwrap();
    let nonce = {
        let (l, me) = (net.node(0).unwrap().ledger.clone().unwrap(), net.node_id(2));
        l.query(move |v| v.ledger.next_nonce(&me)).await.unwrap()
    };
    let body = |sender, nonce, amount| Transaction {
        chain_id: chain.clone(),
        sender,
        nonce,
        kind: TxKind::Faucet { amount },
    };
    // Node2's own faucet request, and one that claims to come from node1 but carries node2's
    // signature.
    let valid = body(net.node_id(2), nonce, 300)
        .sign(key2.signer())
        .unwrap();
    let mut forged = body(net.node_id(2), nonce, 400)
        .sign(key2.signer())
        .unwrap();
    forged.tx.sender = net.node_id(1);
    let h2 = net.handle(2).unwrap();
    h2.broadcast(TX_TOPIC, Kind::Transaction, b"not a batch".to_vec())
        .await
        .unwrap();
    let batch = serde_cbor::to_vec(&vec![forged, valid]).unwrap();
    h2.broadcast(TX_TOPIC, Kind::Transaction, batch)
        .await
        .unwrap();

    wait_balance(&net, &[0, 1, 3], 2, start2 + 300).await;
    // A block or two later the forged transaction has still not moved node1's balance.
    let h = height(&net, 0).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while height(&net, 0).await < h + 2 {
        assert!(tokio::time::Instant::now() < deadline, "the chain stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..4 {
        assert_eq!(
            balance(&net, i, 1).await,
            start1,
            "node{i}: forged tx applied"
        );
    }
    net.shutdown().await;
}

/// Nodes outside the committee get no vote traffic: they apply the decided blocks the proposers
/// publish, catch up after a restart, and ignore garbage on the blocks topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_decided_blocks_without_vote_traffic() {
    use agora_consensus::DecidedBlock;
    use agora_ledger::{BLOCKS_TOPIC, CONSENSUS_TOPIC};
    use agora_network::NetworkEvent;
    use agora_wire::codec::Kind;

    let mut net = Devnet::builder()
        .nodes(6)
        .committee(4)
        .spawn()
        .await
        .unwrap();
    net.wait_connected(3, WAIT).await.unwrap();
    // A copy of the ledger topics node 5's ledger task judges.
    let mut heard = net.handle(5).unwrap().inbox(
        agora_network::Interest::new("test")
            .topic(BLOCKS_TOPIC)
            .topic(CONSENSUS_TOPIC),
    );
    let start = balance(&net, 0, 4).await;
    let l4 = net.node(4).unwrap().ledger.clone().unwrap();
    l4.submit(TxKind::Faucet { amount: 500 }).await.unwrap();
    wait_balance(&net, &[0, 1, 2, 3, 4, 5], 4, start + 500).await;

    // What replica 5 heard meanwhile: decided blocks, not a single proposal or vote.
    let (mut votes, mut blocks) = (0, Vec::new());
    while let Some(ev) = heard.try_recv() {
        // The ledger's topics are judged before they are forwarded (#13.1).
        if let NetworkEvent::GossipToJudge {
            topic, envelope, ..
        } = ev
        {
            if topic == CONSENSUS_TOPIC {
                votes += 1;
            } else if topic == BLOCKS_TOPIC {
                blocks.push(envelope.payload.clone());
            }
        }
    }
    assert_eq!(votes, 0, "a replica should not receive consensus votes");
    assert!(!blocks.is_empty(), "the replica heard no decided block");
    for raw in &blocks {
        let decided: DecidedBlock = serde_cbor::from_slice(raw).unwrap();
        assert!(
            (0..4).any(|i| net.node_id(i) == decided.block.proposer),
            "decided blocks come from arbitrators"
        );
    }

    // Garbage on the blocks topic (from a replica) changes nothing.
    net.handle(4)
        .unwrap()
        .broadcast(BLOCKS_TOPIC, Kind::Consensus, b"not a block".to_vec())
        .await
        .unwrap();

    // A stopped replica misses blocks, restarts from its store and catches up.
    net.stop(5).await;
    l4.submit(TxKind::Faucet { amount: 250 }).await.unwrap();
    wait_balance(&net, &[0, 4], 4, start + 750).await;
    net.restart(5).await.unwrap();
    wait_balance(&net, &[5], 4, start + 750).await;
    same_state(&net, 0, 5).await;
    net.shutdown().await;
}

/// The next block node 0 applies, within `WAIT`.
async fn next_block(
    blocks: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<agora_ledger::AppliedBlock>>,
) -> std::sync::Arc<agora_ledger::AppliedBlock> {
    loop {
        match tokio::time::timeout(WAIT, blocks.recv()).await {
            Ok(Ok(block)) => return block,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => panic!("ledger stopped: {e}"),
            Err(_) => panic!("no block within {WAIT:?}"),
        }
    }
}

/// With nothing to decide and nothing waiting for the clock, the chain is quiet (no empty block
/// every second on every node), yet a transaction does not wait for the quiet interval: its
/// arrival ends every arbitrator's wait for the next proposal. Judged by the block times the
/// chain itself records, not by how long the test waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_chain_is_quiet_but_decides_transactions_at_once() {
    let quiet = agora_ledger::ChainParams::default().quiet_block_interval_ms;
    let mut net = Devnet::builder()
        .nodes(5)
        .committee(4)
        .spawn()
        .await
        .unwrap();
    net.wait_connected(3, WAIT).await.unwrap();
    let l0 = net.node(0).unwrap().ledger.clone().unwrap();
    let mut blocks = l0.outcomes();
    // Two empty blocks in a row on the idle chain: the second came a quiet interval after the
    // first was decided, so their block times are at least that far apart.
    let mut prev = next_block(&mut blocks).await;
    let idle = loop {
        let block = next_block(&mut blocks).await;
        if prev.events.is_empty() && block.events.is_empty() && block.height == prev.height + 1 {
            break block;
        }
        prev = block;
    };
    assert!(
        idle.time.saturating_sub(prev.time) >= quiet,
        "idle blocks {} and {} are {} ms apart, less than the {quiet} ms quiet interval",
        prev.height,
        idle.height,
        idle.time.saturating_sub(prev.time)
    );

    // Right after a block, the next empty one is a quiet interval away; the block with the
    // transaction is the very next one, and is proposed well before that.
    let start = balance(&net, 0, 1).await;
    let l1 = net.node(1).unwrap().ledger.clone().unwrap();
    l1.submit(TxKind::Faucet { amount: 70 }).await.unwrap();
    let with_tx = next_block(&mut blocks).await;
    assert_eq!(with_tx.height, idle.height + 1);
    assert!(
        !with_tx.events.is_empty(),
        "the block after the submission carries it"
    );
    assert!(
        with_tx.time.saturating_sub(idle.time) < quiet,
        "the transaction's block came {} ms after the previous one, as if it waited for the \
         {quiet} ms quiet interval",
        with_tx.time.saturating_sub(idle.time)
    );
    wait_balance(&net, &[0, 1, 2, 3], 1, start + 70).await;

    // A replica restarted on the quiet chain learns from the arbitrators that it is at the
    // tip, without waiting for the next block.
    let tip = height(&net, 0).await;
    net.stop(4).await;
    net.restart(4).await.unwrap();
    let l4 = net.node(4).unwrap().ledger.clone().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (caught_up, h) = l4
            .query(|v| (v.caught_up, v.ledger.height()))
            .await
            .unwrap();
        if caught_up {
            assert_eq!(h, height(&net, 0).await, "caught up means at the tip");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        height(&net, 0).await,
        tip,
        "no block was needed to know that"
    );
    net.shutdown().await;
}

/// #13.3 on a real swarm: one of four arbitrators (a test hook in its consensus driver)
/// proposes every block 30 days ahead of its clock. The honest three do not vote for those
/// proposals (`contracts::check_block_time`), its rounds time out and the next proposer
/// decides: the chain keeps deciding and ledger time never jumps, on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arbitrator_proposing_thirty_days_ahead_cannot_move_ledger_time() {
    const DAY_MS: u64 = 24 * 60 * 60 * 1_000;
    let net = Devnet::builder().nodes(4).spawn().await.unwrap();
    net.wait_connected(3, WAIT).await.unwrap();
    let l3 = net.node(3).unwrap().ledger.clone().unwrap();
    l3.byzantine_proposal_skew(30 * DAY_MS).await.unwrap();
    let start = height(&net, 0).await;
    // Eight transactions, each final before the next: proposers rotate by height and round, so
    // the skewed arbitrator gets its turns.
    let l1 = net.node(1).unwrap().ledger.clone().unwrap();
    let mut want = balance(&net, 0, 1).await;
    for _ in 0..8 {
        l1.submit(TxKind::Faucet { amount: 10 }).await.unwrap();
        want += 10;
        wait_balance(&net, &[0, 1, 2, 3], 1, want).await;
    }
    assert!(
        height(&net, 0).await >= start + 8,
        "the chain kept deciding"
    );
    let now = agora_wire::now_ms();
    for i in 0..4 {
        let l = net.node(i).unwrap().ledger.clone().unwrap();
        let time = l.query(|v| v.ledger.last_block_time()).await.unwrap();
        assert!(
            time <= now + 2_000,
            "node{i}: ledger time {time} jumped past the clock {now}"
        );
    }
}

/// #13.13 on a real swarm: one of four arbitrators (a test hook in its consensus driver) casts
/// every vote twice, for different values. The honest drivers find the two signed votes, each
/// node submits them once as `ReportEquivocation` through its mempool, the report is decided,
/// and every replica burns the equivocator's bond; the chain keeps deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_arbitrator_is_reported_and_its_bond_slashed_on_every_replica() {
    let net = Devnet::builder().nodes(4).spawn().await.unwrap();
    net.wait_connected(3, WAIT).await.unwrap();
    let bad = net.node_id(3);
    let bond = |i: usize| {
        let l = net.node(i).unwrap().ledger.clone().unwrap();
        async move {
            l.query(move |v| {
                (
                    v.ledger.account(&bad).map(|a| a.bonded).unwrap_or(0),
                    v.ledger.slashed().get(&bad).map(|s| s.amount),
                    v.evidence.contains(&bad),
                )
            })
            .await
            .unwrap()
        }
    };
    let (bonded, slashed, _) = bond(0).await;
    assert!(bonded > 0, "the arbitrator holds a bond before");
    assert_eq!(slashed, None);
    net.node(3)
        .unwrap()
        .ledger
        .clone()
        .unwrap()
        .byzantine_double_vote()
        .await
        .unwrap();

    // Transactions make heights (and votes) happen; the double votes come with them.
    let l1 = net.node(1).unwrap().ledger.clone().unwrap();
    let mut want = balance(&net, 0, 1).await;
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    'outer: loop {
        l1.submit(TxKind::Faucet { amount: 10 }).await.unwrap();
        want += 10;
        wait_balance(&net, &[0, 1, 2], 1, want).await;
        let mut done = true;
        for i in 0..3 {
            let (now_bonded, now_slashed, seen) = bond(i).await;
            done &= now_bonded == 0 && now_slashed == Some(bonded) && seen;
        }
        if done {
            break 'outer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the equivocator's bond was not slashed on every honest replica: {:?}",
            [bond(0).await, bond(1).await, bond(2).await]
        );
    }
    // Slashed once, whoever reported first; the chain still decides.
    l1.submit(TxKind::Faucet { amount: 10 }).await.unwrap();
    wait_balance(&net, &[0, 1, 2], 1, want + 10).await;
    net.shutdown().await;
}

/// THREATS A14 on a real swarm: one of four arbitrators' consensus WAL writes start failing (a
/// full disk, by a test hook). It must not send the votes it could not record — after a restart
/// it might vote differently, an equivocation that burns its bond — so it sends nothing more
/// for that height and stops the node with the reason; the other three go on deciding, and the
/// stopped node, restarted, catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arbitrator_whose_wal_fails_stops_instead_of_voting_unrecorded() {
    use agora_consensus::ConsensusMessage;
    use agora_ledger::CONSENSUS_TOPIC;
    use agora_network::NetworkEvent;

    let mut net = Devnet::builder().nodes(4).spawn().await.unwrap();
    net.wait_connected(3, WAIT).await.unwrap();
    let bad = net.node_id(3);
    let l3 = net.node(3).unwrap().ledger.clone().unwrap();
    // Every consensus message node 1's ledger task judges, from now on.
    let mut heard = net
        .handle(1)
        .unwrap()
        .inbox(agora_network::Interest::new("test").topic(CONSENSUS_TOPIC));
    // Failing from three heights on: the next two are decided normally, the one after is the
    // first whose WAL writes fail (nothing of it can have been voted before the hook).
    let from = height(&net, 3).await + 3;
    l3.fail_wal_from(from).await.unwrap();
    assert!(
        height(&net, 3).await + 1 < from,
        "a block was decided while the hook was set: rerun"
    );
    let l1 = net.node(1).unwrap().ledger.clone().unwrap();
    let mut want = balance(&net, 0, 1).await;
    let cancel = net.node(3).unwrap().cancel_token();
    // Drained as the test goes, so the inbox never fills (a full inbox drops).
    let mut from_bad: Vec<Vec<u8>> = Vec::new();
    let mut drain = |heard: &mut agora_network::Inbox| {
        while let Some(ev) = heard.try_recv() {
            if let NetworkEvent::GossipToJudge { envelope, .. } = ev
                && envelope.sender == bad
            {
                from_bad.push(envelope.payload.clone());
            }
        }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cancel.is_cancelled() {
        drain(&mut heard);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the arbitrator with a failing WAL did not stop"
        );
        l1.submit(TxKind::Faucet { amount: 10 }).await.unwrap();
        want += 10;
        wait_balance(&net, &[0, 1, 2], 1, want).await;
    }
    let why = l3.fatal().expect("the ledger says why it stopped the node");
    assert!(why.contains("WAL"), "{why}");
    // It sent nothing for a height whose WAL writes failed (by its own account; what its
    // peers heard is checked below).
    assert!(
        l3.sent_height() < from,
        "node 3 sent a consensus message for height {} (WAL failing from {from})",
        l3.sent_height()
    );
    assert!(
        l3.sent_height() > 0,
        "node 3 never voted before the failure"
    );
    // The three others go on deciding.
    l1.submit(TxKind::Faucet { amount: 10 }).await.unwrap();
    want += 10;
    wait_balance(&net, &[0, 1, 2], 1, want).await;
    drain(&mut heard);
    // Not one vote (nor proposal) of the failing heights left node 3.
    let mut sent_after = Vec::new();
    for payload in &from_bad {
        let height = ConsensusMessage::decode(payload).unwrap().height();
        if height >= from {
            sent_after.push(height);
        }
    }
    assert!(
        !from_bad.is_empty(),
        "node 1 heard nothing from node 3 before the failure"
    );
    assert!(
        sent_after.is_empty(),
        "node 3 sent consensus messages it could not record, at heights {sent_after:?}"
    );
    // Restarted (its disk fixed), it catches up with the others. On its previous port, which
    // the stopped node's sockets may hold a moment longer.
    net.stop(3).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(e) = net.restart(3).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 did not restart: {e:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_balance(&net, &[3], 1, want).await;
    same_state(&net, 0, 3).await;
    net.shutdown().await;
}
