//! Stateful handover (issue #15) on real processes: edge A runs a counter guest (each reading
//! adds one to the key `count` in its key-value store) on its sensors, buys standby insurance;
//! A is killed with SIGKILL; the provider B restores A's state from A's last snapshot and
//! replays the readings after it. Then A comes back: B sends its state to A as it releases the
//! sensors ("the way back"), A restores it and counts on, so A's count ends equal to the number
//! of readings the sensors sent: none lost, none counted twice. Before the kill a hostile peer sends B forged state
//! (its own, signed by itself), and, with A's key (as a replay of A's old or a malformed
//! snapshot would be), an older and an oversized one: B refuses and counts each, and the count
//! still comes out exact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agora_api::client::ApiClient;
use agora_api::services::LogsReply;
use agora_contracts::state::{StateEntry, StateSnapshot};
use agora_devnet::demo::Story;
use agora_devnet::demo::story::wait_for;
use agora_devnet::files::CONTRACT_NODES;
use agora_market::KeySigner;
use agora_network::keys::{NodeKey, peer_id_of};
use agora_radio::{RadioRpc, RadioStatus};
use agora_runtime::test_utils::{READINGS_COUNTER, last_count};
use agora_tests::adversary::{Adversary, TestLauncher};
use agora_tests::agora_bin;
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;

/// The last `count=N` the service `id` logged on the node at `data_dir`.
async fn count(data_dir: &std::path::Path, id: &str) -> Option<u64> {
    let c = ApiClient::for_data_dir(data_dir).ok()?;
    let r: LogsReply = c.get(&format!("/v1/services/{id}/logs")).await.ok()?;
    last_count(&r.logs)
}

/// Sends `snapshot` to B signed by `signer` over the adversary's connection; B's answer, or
/// the request's failure (a request signed by another key than the adversary's is refused by
/// B's network layer before its radio sees it: THREATS N11).
async fn send_state(
    adv: &Adversary,
    signer: &KeySigner,
    b: agora_network::PeerId,
    snapshot: StateSnapshot,
) -> Result<RadioRpc, String> {
    let env = Envelope::seal_body(
        signer,
        Kind::Radio,
        now_ms(),
        now_ms(),
        &RadioRpc::State {
            snapshot,
            checkpoint: None,
        },
    )
    .unwrap();
    let answer = adv
        .network()
        .request(b, &env)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.body::<RadioRpc>(Kind::Radio).unwrap())
}

fn hostile(contract: agora_contracts::ContractId, seq: u64, keys: u32) -> StateSnapshot {
    StateSnapshot {
        contract,
        seq,
        taken_at: now_ms(),
        coverage: vec![(101, 1)],
        entries: (0..keys)
            .map(|i| StateEntry {
                key: if i == 0 {
                    b"count".to_vec()
                } else {
                    format!("k{i:06}").into_bytes()
                },
                value: 1_000_000u64.to_le_bytes().to_vec(),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_handover_continues_the_count_from_the_customers_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let module = wat::parse_str(READINGS_COUNTER).unwrap();
    let mut s = Story::start(
        &tmp.path().join("net"),
        CONTRACT_NODES,
        &module,
        Arc::new(TestLauncher(agora_bin())),
        true,
    )
    .await
    .expect("story starts");
    let an = s.m.nodes[s.a].clone();
    wait_for("A counting its readings", 30, async || {
        count(&an.data_dir, "own").await.filter(|c| *c > 0)
    })
    .await
    .unwrap();
    let armed = s.standby().await.unwrap();
    let bn = s.m.nodes[armed.b].clone();
    // B keeps A's state snapshots (the newest only), and they keep coming.
    let first = wait_for("B to keep a snapshot of A's state", 30, async || {
        let st: RadioStatus = ApiClient::for_data_dir(&bn.data_dir)
            .ok()?
            .get("/v1/radio")
            .await
            .ok()?;
        st.states
            .iter()
            .find(|k| k.contract == armed.id && k.entries == 1)
            .map(|k| k.seq)
    })
    .await
    .unwrap();
    wait_for("a newer snapshot on B", 30, async || {
        let st: RadioStatus = ApiClient::for_data_dir(&bn.data_dir)
            .ok()?
            .get("/v1/radio")
            .await
            .ok()?;
        st.states
            .iter()
            .any(|k| k.contract == armed.id && k.seq > first)
            .then_some(())
    })
    .await
    .unwrap();
    // Hostile snapshots: a stranger's (refused by B's radio: not the customer); with A's key
    // but over the stranger's connection, an older one and one over the bounds (refused by
    // B's network: signed by another node than the peer that sent them; the radio's own
    // rules for them have unit tests, `agora-radio` `state::tests`).
    let adv = Adversary::join_manifest(&s.m).await.unwrap();
    let b_peer = peer_id_of(&armed.rec.contract.provider).unwrap();
    let contract = armed.rec.contract.id().unwrap();
    let a_key = NodeKey::load(&an.data_dir).unwrap();
    let refused =
        |r: &Result<RadioRpc, String>| matches!(r, Ok(RadioRpc::StateAck { kept: false, .. }));
    let r = send_state(
        &adv,
        adv.signer(),
        b_peer,
        hostile(contract, u64::MAX / 2, 1),
    )
    .await;
    assert!(refused(&r), "a stranger's state: {r:?}");
    let st: RadioStatus = ApiClient::for_data_dir(&bn.data_dir)
        .unwrap()
        .get("/v1/radio")
        .await
        .unwrap();
    let (older, malformed) = (st.state.refused_older, st.state.refused_malformed);
    let r = send_state(&adv, a_key.signer(), b_peer, hostile(contract, 1, 1)).await;
    assert!(r.is_err(), "an older state in A's name: {r:?}");
    let r = send_state(
        &adv,
        a_key.signer(),
        b_peer,
        hostile(contract, u64::MAX / 2, 1025),
    )
    .await;
    assert!(r.is_err(), "an oversized state in A's name: {r:?}");
    let st: RadioStatus = ApiClient::for_data_dir(&bn.data_dir)
        .unwrap()
        .get("/v1/radio")
        .await
        .unwrap();
    assert!(st.state.refused_not_customer >= 1, "{:?}", st.state);
    assert_eq!(
        (st.state.refused_older, st.state.refused_malformed),
        (older, malformed),
        "the radio never saw the impersonations: {:?}",
        st.state
    );
    let before = count(&an.data_dir, "own").await.unwrap();
    let killed = s.kill(s.a).unwrap();
    s.failover(&armed, killed).await.unwrap();
    // B counts on from A's state.
    wait_for("B counting past A's count", 30, async || {
        count(&bn.data_dir, &armed.id).await.filter(|c| *c > before)
    })
    .await
    .unwrap();
    // The way back: A comes back, the contract settles (customer back), B sends its state to
    // A as it releases the sensors, and A counts on from B's count, not from its own older
    // one.
    s.restart(s.a).await.unwrap();
    let obs = (0..CONTRACT_NODES)
        .find(|i| *i != s.a && *i != armed.b)
        .unwrap();
    s.wait_contract(obs, &armed.id, "the settlement on A's return", 60, |r| {
        r.status.is_final()
    })
    .await
    .unwrap();
    s.a_resumed().await.unwrap();
    let b_last = count(&bn.data_dir, &armed.id).await.unwrap_or(0);
    // A's own store stopped at `before`: past B's last logged count, A holds B's state.
    wait_for("A counting on past B's count", 30, async || {
        count(&an.data_dir, "own").await.filter(|c| *c > b_last)
    })
    .await
    .unwrap();
    let cov = s.coverage(armed.b).await;
    let sent = cov.sent;
    // The sensors stopped; A's last poll may still be on its way to the log.
    let got = wait_for("A's count to settle at the readings sent", 15, async || {
        count(&an.data_dir, "own").await.filter(|c| *c == sent)
    })
    .await;
    let last = count(&an.data_dir, "own").await;
    let st: RadioStatus = ApiClient::for_data_dir(&bn.data_dir)
        .unwrap()
        .get("/v1/radio")
        .await
        .unwrap();
    let a_st: RadioStatus = ApiClient::for_data_dir(&an.data_dir)
        .unwrap()
        .get("/v1/radio")
        .await
        .unwrap();
    eprintln!(
        "stateful handover: A counted {before} before SIGKILL; B counted to {b_last}; {sent} \
         readings sent; A's count after its return {last:?}; coverage {cov:?}; B's state stats \
         {:?}; A's {:?}",
        st.state, a_st.state
    );
    assert!(
        got.is_ok(),
        "A's count {last:?} != {sent} readings sent (A had counted {before} before it was \
         killed, B {b_last}); coverage {cov:?}; B's state stats {:?}, A's {:?}",
        st.state,
        a_st.state
    );
    assert!(st.state.kept > 1, "{:?}", st.state);
    assert_eq!(st.state.restored, 1, "{:?}", st.state);
    assert!(
        st.stats.state_sent >= 1,
        "B sent no state back: {:?}",
        st.stats
    );
    assert!(a_st.state.kept >= 1, "A kept no state: {:?}", a_st.state);
    assert_eq!(cov.duplicated, 0, "{cov:?}");
    assert_eq!(cov.missing, 0, "{cov:?}");
    // A's checkpoints came with its snapshots and B gossiped them on (a SIGKILL between B's
    // answer and A's own gossip no longer loses one).
    assert!(st.stats.state_checkpoints_relayed >= 1, "{:?}", st.stats);
    assert_eq!(st.stats.state_checkpoints_refused, 0, "{:?}", st.stats);
    s.down(true).await.unwrap();
}
