//! A funded flood backlogs the chain while an honest provider's contract activates, reports and
//! settles (THREATS N9), on a 7-node devnet of real processes.
//!
//! Nodes 0–4 are the arbitrators (`--arbitrators 5`) and run `agora-byzantine --no-bid`
//! (honest, but they do not bid); node 5, a plain `agora` node that is no validator, is the only
//! bidder and becomes the provider; node 6 is the customer A. Every proposer puts at most
//! `MAX_BLOCK_TXS` transactions in a block (`[ledger] max_block_txs`), so a modest flood makes a
//! backlog that lasts: as soon as the hosted contract is registered, a hostile libp2p peer
//! keeps `KEYS` funded keys at their full nonce window (64 transfers each) on the transaction
//! topic, hundreds of transactions ahead of every honest one. The provider proposes no block, so
//! nothing it sends goes in first by being its own. Its activation report, heartbeats and the
//! committee's probe reports are duties (`Ledger::is_duty`), which proposals take before the
//! backlog: the contract activates in time, is paid for its confirmed uptime and settles;
//! without that lane the activation report waited behind the backlog for longer than the
//! ledger's grace and the provider was slashed `LateActivation`.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora`, then
//! `nice cargo test -p agora-tests --test e2e attack_backlog::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_api::client::ApiClient;
use agora_api::ledger::{SubmittedReply, TransferRequest};
use agora_contracts::{ContractStatus, SignedTransaction, Transaction, TxKind};
use agora_devnet::demo::Story;
use agora_devnet::demo::story::wait_for;
use agora_devnet::process::UpOptions;
use agora_market::{KeySigner, Signer as _};
use agora_tests::adversary::{Adversary, ByzantineLauncher, TestLauncher};
use agora_tests::agora_bin;
use agora_wire::codec::Kind;
use agora_wire::topics::TX_TOPIC;
use tokio_util::sync::CancellationToken;

/// Devnet nodes; the first `ARBITRATORS` are the chain's validators.
const NODES: usize = 7;
/// Validators (and every contract's committee: neither party is one).
const ARBITRATORS: usize = 5;
/// The provider, the only bidder, no validator.
const PROVIDER: usize = 5;
/// Most transactions per proposed block on every node.
const MAX_BLOCK_TXS: usize = 8;
/// Funded keys the flood sends from, each at its full nonce window.
const KEYS: u64 = 16;
/// The ledger's nonce window (`AdmissionPolicy::max_nonce_ahead`): what each key keeps pending.
const WINDOW: u64 = 64;
/// Each flood key's funds: the minimum balance and plenty to spend in transfers of 1.
const FUNDS: u64 = 20_000;
/// The device the hosted contract's image names.
const DEVICE: u32 = agora_devnet::sensor_keys::KEYED_SENSORS[3];
/// How long the hosted contract lasts.
const DURATION_MS: u64 = 20_000;

fn launcher() -> ByzantineLauncher {
    ByzantineLauncher {
        honest: TestLauncher(agora_bin()),
        exe: env!("CARGO_BIN_EXE_agora-byzantine").into(),
        bad: (0..ARBITRATORS)
            .map(|i| (i, vec!["--no-bid".to_string()]))
            .collect(),
        tune: Some(|_, c| c.ledger.max_block_txs = MAX_BLOCK_TXS),
    }
}

fn api(s: &Story, i: usize) -> ApiClient {
    ApiClient::for_data_dir(&s.m.nodes[i].data_dir).unwrap()
}

/// Node `i`'s pending transactions (`/v1/ledger/status`).
async fn mempool(s: &Story, i: usize) -> Option<u64> {
    let v: serde_json::Value = api(s, i).get("/v1/ledger/status").await.ok()?;
    v["mempool"].as_u64()
}

/// The hostile peer: joins the devnet (connected to every node) and, every 300 ms until
/// `stop`, gossips every key's whole nonce window from the key's next nonce (asked of node 0's
/// API), signed transfers of 1 to node 0. Returns the transactions it published.
async fn start_flood(
    s: &Story,
    chain: String,
    keys: Vec<KeySigner>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    let adv = Adversary::join_manifest(&s.m)
        .await
        .expect("hostile peer joins");
    adv.network().subscribe(TX_TOPIC).await.unwrap();
    let node0 = api(s, 0);
    let to = s.m.nodes[0].node_id.parse().unwrap();
    tokio::spawn(async move {
        let net = adv.network();
        let mut published = 0u64;
        while !stop.is_cancelled() {
            for k in &keys {
                let path = format!("/v1/ledger/accounts/{}", k.node_id());
                let Ok(v) = node0.get::<serde_json::Value>(&path).await else {
                    continue;
                };
                let Some(next) = v["nonce"].as_u64() else {
                    continue;
                };
                let txs: Vec<SignedTransaction> = (next..next + WINDOW)
                    .map(|nonce| {
                        Transaction {
                            chain_id: chain.clone(),
                            sender: k.node_id(),
                            nonce,
                            kind: TxKind::Transfer { to, amount: 1 },
                        }
                        .sign(k)
                        .unwrap()
                    })
                    .collect();
                let batch = serde_cbor::to_vec(&txs).unwrap();
                if net
                    .broadcast(TX_TOPIC, Kind::Transaction, batch)
                    .await
                    .is_ok()
                {
                    published += WINDOW;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
        published
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_funded_flood_does_not_hold_back_an_honest_providers_duties() {
    let test = "attack_backlog::a_funded_flood_does_not_hold_back_an_honest_providers_duties";
    let Some(module) = agora_tests::lora_module(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let opts = UpOptions {
        arbitrators: Some(ARBITRATORS),
        ..UpOptions::default()
    };
    let s = Story::start_with(
        &tmp.path().join("net"),
        NODES,
        &module,
        Arc::new(launcher()),
        true,
        opts,
    )
    .await
    .expect("story starts");
    assert_eq!(s.a, NODES - 1, "A is the last node");
    let genesis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.m.dir.join("genesis.json")).unwrap())
            .unwrap();
    let chain = genesis["chain_id"].as_str().unwrap().to_string();
    assert_eq!(
        genesis["committee"].as_array().unwrap().len(),
        ARBITRATORS,
        "the provider and A propose no blocks"
    );

    // The flood's keys, funded by node 0 (a validator: its own transfers go in first).
    let keys: Vec<KeySigner> = (0..KEYS)
        .map(|i| KeySigner::from_seed(77_000 + i))
        .collect();
    for k in &keys {
        let req = TransferRequest {
            to: k.node_id().to_string(),
            amount: FUNDS,
        };
        let _: SubmittedReply = api(&s, 0).post("/v1/ledger/transfer", &req).await.unwrap();
    }
    for k in &keys {
        let id = k.node_id().to_string();
        wait_for("the flood's keys to be funded", 60, async || {
            let b = s.account(0, &id).await?.balance;
            (b == FUNDS).then_some(())
        })
        .await
        .unwrap();
    }

    // The hosted contract; the flood starts the moment it is registered, before the provider
    // stages, arms and activates it.
    let stop = CancellationToken::new();
    let (hosted, flood) = tokio::join!(s.hosted(&[DEVICE], DURATION_MS), async {
        wait_for("the hosted contract's registration", 60, async || {
            let v: serde_json::Value = api(&s, s.a).get("/v1/ledger/contracts").await.ok()?;
            (!v.as_array()?.is_empty()).then_some(())
        })
        .await?;
        anyhow::Ok(start_flood(&s, chain.clone(), keys.clone(), stop.clone()).await)
    });
    let flood = flood.expect("the hosted contract is registered");
    let hosted = hosted.expect("the contract activates under the flood");
    assert_eq!(hosted.b, PROVIDER, "the only bidder won");

    // The backlog is real: while the contract runs, the validators hold hundreds of pending
    // transactions, and a transfer A sends now waits behind them.
    let mut peak = 0;
    wait_for("a backlog on node 0", 30, async || {
        peak = peak.max(mempool(&s, 0).await.unwrap_or(0));
        (peak >= KEYS * WINDOW / 2).then_some(())
    })
    .await
    .unwrap();
    let payee = s.m.nodes[1].node_id.clone();
    let was = s.account(3, &payee).await.unwrap().balance;
    let sent = Instant::now();
    let req = TransferRequest {
        to: payee.clone(),
        amount: 5,
    };
    let _: SubmittedReply = api(&s, s.a)
        .post("/v1/ledger/transfer", &req)
        .await
        .unwrap();

    // The contract settles on every replica: activated in time, paid for its confirmed uptime,
    // never confirmed down.
    let obs = 2;
    s.wait_contract(
        obs,
        &hosted.id,
        "settlement",
        DURATION_MS / 1000 + 120,
        |r| r.status.is_final(),
    )
    .await
    .unwrap();
    let waited = wait_for("A's transfer behind the backlog", 300, async || {
        let b = s.account(3, &payee).await?.balance;
        (b >= was + 5).then(|| sent.elapsed())
    })
    .await
    .unwrap();
    for i in 0..ARBITRATORS {
        peak = peak.max(mempool(&s, i).await.unwrap_or(0));
    }
    stop.cancel();
    let published = flood.await.unwrap();
    for i in 0..NODES {
        let r = s
            .wait_contract(i, &hosted.id, "settlement here too", 60, |r| {
                r.status.is_final()
            })
            .await
            .unwrap();
        assert_eq!(r.status, ContractStatus::Settled, "node{i}: {r:?}");
        let trigger = r.trigger_at.expect("a hosted contract's trigger");
        let activated = r.activated_at.expect("activated");
        assert!(
            activated - trigger <= r.contract.qos.max_activation_delay_ms,
            "node{i}: activated {} ms after the trigger: {r:?}",
            activated - trigger
        );
        assert!(
            r.paid_to_provider * 2 > r.contract.payment,
            "node{i}: paid more than half: {r:?}"
        );
        assert!(r.confirmed_up_ms > 0, "node{i}: {r:?}");
        assert_eq!(r.confirmed_down_ms, 0, "node{i}: {r:?}");
    }
    // The flood's transfers went into blocks all along (it was a backlog, not refused junk).
    let mut included = 0;
    for k in &keys {
        included += s.account(0, &k.node_id().to_string()).await.unwrap().nonce;
    }
    assert!(
        included > KEYS * WINDOW,
        "{included} flood transactions in blocks"
    );
    let done = s.contract(obs, &hosted.id).await.unwrap();
    eprintln!(
        "backlog: peak {peak} pending; {published} flood transactions published, {included} \
         in blocks; A's transfer waited {:.1} s; the provider activated {} ms after the \
         trigger and was paid {} of {} (confirmed up {} ms)",
        waited.as_secs_f64(),
        done.activated_at.unwrap() - done.trigger_at.unwrap(),
        done.paid_to_provider,
        done.contract.payment,
        done.confirmed_up_ms,
    );
    s.down(true).await.unwrap();
}
