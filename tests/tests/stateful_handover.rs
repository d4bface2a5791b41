//! Stateful handover (issue #15) on real processes: edge A runs a counter guest (each reading
//! adds one to the key `count` in its key-value store) on its sensors, buys standby insurance;
//! A is killed with SIGKILL; the provider B restores A's state from A's last snapshot and
//! replays the readings after it, so B's count ends equal to the number of readings the sensors
//! sent: none lost, none counted twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agora_api::client::ApiClient;
use agora_api::services::LogsReply;
use agora_devnet::demo::Story;
use agora_devnet::demo::story::wait_for;
use agora_devnet::files::CONTRACT_NODES;
use agora_radio::RadioStatus;
use agora_runtime::test_utils::{READINGS_COUNTER, last_count};
use agora_tests::adversary::TestLauncher;
use agora_tests::agora_bin;

/// The last `count=N` the service `id` logged on the node at `data_dir`.
async fn count(data_dir: &std::path::Path, id: &str) -> Option<u64> {
    let c = ApiClient::for_data_dir(data_dir).ok()?;
    let r: LogsReply = c.get(&format!("/v1/services/{id}/logs")).await.ok()?;
    last_count(&r.logs)
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
    let before = count(&an.data_dir, "own").await.unwrap();
    let killed = s.kill(s.a).unwrap();
    s.failover(&armed, killed).await.unwrap();
    // B counts on from A's state.
    wait_for("B counting past A's count", 30, async || {
        count(&bn.data_dir, &armed.id).await.filter(|c| *c > before)
    })
    .await
    .unwrap();
    let cov = s.coverage(armed.b).await;
    let sent = cov.sent;
    // The sensors stopped; B's last poll may still be on its way to the log.
    let got = wait_for("B's count to settle at the readings sent", 15, async || {
        count(&bn.data_dir, &armed.id).await.filter(|c| *c == sent)
    })
    .await;
    let last = count(&bn.data_dir, &armed.id).await;
    let st: RadioStatus = ApiClient::for_data_dir(&bn.data_dir)
        .unwrap()
        .get("/v1/radio")
        .await
        .unwrap();
    eprintln!(
        "stateful handover: A counted {before} before SIGKILL; {sent} readings sent; B's count \
         {last:?}; coverage {cov:?}; B's state stats {:?}",
        st.state
    );
    assert!(
        got.is_ok(),
        "B's count {last:?} != {sent} readings sent (A had counted {before} before it was \
         killed); coverage {cov:?}; B's state stats {:?}",
        st.state
    );
    assert!(st.state.kept > 1, "{:?}", st.state);
    assert_eq!(st.state.restored, 1, "{:?}", st.state);
    assert_eq!(cov.duplicated, 0, "{cov:?}");
    s.down(true).await.unwrap();
}
