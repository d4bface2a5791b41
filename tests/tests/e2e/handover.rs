//! The handover story's failure cases on real processes: a 7-node devnet (every node an arbitrator), edge A's LoRa
//! gateway service on simulated sensors, a standby contract with the winning provider B.
//! Processes are killed for real (SIGKILL); the partition case cuts links with network
//! namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agora_api::client::ApiClient;
use agora_api::ledger::LedgerStatus;
use agora_contracts::{ActivationClause, ContractRecord, ContractStatus};
use agora_devnet::demo::Story;
use agora_devnet::demo::story::{DEVICES, wait_for};
use agora_devnet::files::CONTRACT_NODES;
use agora_tests::adversary::TestLauncher;
use agora_tests::netns::PartitionLab;
use agora_tests::{agora_bin, try_agora_json};

/// One devnet at a time: each story runs seven nodes on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until `node`'s ledger has decided a block whose time is at least `t` (ms): the chain's
/// own clock has passed `t`.
async fn wait_ledger_time(s: &Story, node: usize, t: u64, what: &str) {
    let n = s.m.nodes[node].clone();
    wait_for(what, 60, async || {
        let c = ApiClient::for_data_dir(&n.data_dir).ok()?;
        let st: LedgerStatus = c.get("/v1/ledger/status").await.ok()?;
        st.last_block_at.filter(|at| *at >= t).map(|_| ())
    })
    .await
    .unwrap();
}

/// The share of its active time (permille) for which the provider has reported uptime, up to
/// its last heartbeat; settlement judges the provider by this share.
fn reported_uptime_permille(r: &ContractRecord) -> u64 {
    let (Some(from), Some(to)) = (r.activated_at, r.last_uptime_end) else {
        return 0;
    };
    (r.uptime_ms * 1000)
        .checked_div(to.saturating_sub(from))
        .unwrap_or(0)
}

/// The share of its active time up to its last heartbeat (permille) that a quorum of the
/// committee's probes did not confirm down; settlement also judges the provider by this share.
fn not_confirmed_down_permille(r: &ContractRecord) -> u64 {
    let (Some(from), Some(to)) = (r.activated_at, r.last_uptime_end) else {
        return 0;
    };
    let span = to.saturating_sub(from);
    (span.saturating_sub(r.confirmed_down_ms) * 1000)
        .checked_div(span)
        .unwrap_or(0)
}

/// A started story in `dir`; `None` (after saying `test` is skipped) when this toolchain cannot
/// build the lora-gateway module (see [`agora_tests::lora_module`]).
async fn story(
    test: &str,
    dir: &std::path::Path,
    launcher: Arc<dyn agora_devnet::process::Launcher>,
) -> Option<Story> {
    let module = agora_tests::lora_module(test)?;
    Some(
        Story::start(dir, CONTRACT_NODES, &module, launcher, true)
            .await
            .expect("story starts"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_back_early_pays_pro_rata_and_no_reading_is_lost() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut s) = story(
        "customer_back_early_pays_pro_rata_and_no_reading_is_lost",
        &tmp.path().join("net"),
        Arc::new(TestLauncher(agora_bin())),
    )
    .await
    else {
        return;
    };
    let armed = s.standby().await.unwrap();
    let obs = (0..CONTRACT_NODES)
        .find(|i| *i != s.a && *i != armed.b)
        .unwrap();
    let killed = s.kill(s.a).unwrap();
    let split = s.failover(&armed, killed).await.unwrap();
    assert!(split.end_to_end_ms > 0);
    // The outage lasts until B's service is on the record (its first uptime heartbeat).
    s.wait_contract(obs, &armed.id, "B's first heartbeat", 30, |r| {
        r.uptime_ms > 0
    })
    .await
    .unwrap();
    s.restart(s.a).await.unwrap();
    let done = s
        .wait_contract(obs, &armed.id, "settlement", 30, |r| r.status.is_final())
        .await
        .unwrap();
    assert_eq!(done.status, ContractStatus::Settled);
    assert!(done.paid_to_provider > 0, "provider paid for the outage");
    assert!(
        done.paid_to_provider < done.contract.payment,
        "early return pays pro rata: {} of {}",
        done.paid_to_provider,
        done.contract.payment
    );
    s.a_resumed().await.unwrap();
    let cov = s.coverage(armed.b).await;
    assert_eq!(cov.missing, 0, "{cov:?}");
    assert_eq!(cov.duplicated, 0, "{cov:?}");
    assert!(
        cov.by_edge.len() >= 2,
        "A and B both processed readings: {cov:?}"
    );
    s.down(true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_that_never_activates_is_slashed() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut s) = story(
        "provider_that_never_activates_is_slashed",
        &tmp.path().join("net"),
        Arc::new(TestLauncher(agora_bin())),
    )
    .await
    else {
        return;
    };
    let armed = s.standby().await.unwrap();
    let obs = (0..CONTRACT_NODES)
        .find(|i| *i != s.a && *i != armed.b)
        .unwrap();
    let customer = armed.rec.contract.customer.to_string();
    let provider = armed.rec.contract.provider.to_string();
    let rep_before = s.account(obs, &provider).await.unwrap().reputation;
    s.kill(armed.b).unwrap();
    s.kill(s.a).unwrap();
    let attested = s
        .wait_contract(obs, &armed.id, "handover attested", 30, |r| {
            r.trigger_at.is_some()
        })
        .await
        .unwrap();
    // The chain passes the activation deadline with no activation on the record.
    let deadline = attested.trigger_at.unwrap() + armed.rec.contract.qos.max_activation_delay_ms;
    wait_ledger_time(&s, obs, deadline + 1, "the activation deadline to pass").await;
    let rec = s.contract(obs, &armed.id).await.unwrap();
    assert!(rec.activated_at.is_none(), "B is dead: {rec:?}");
    let balance_before = s.account(obs, &customer).await.unwrap();
    s.restart(s.a).await.unwrap();
    let done = s
        .wait_contract(obs, &armed.id, "breach", 30, |r| r.status.is_final())
        .await
        .unwrap();
    assert_eq!(done.status, ContractStatus::Slashed);
    assert_eq!(done.paid_to_provider, 0);
    let after = s.account(obs, &customer).await.unwrap();
    assert!(
        after.balance >= balance_before.balance + armed.rec.escrow.provider_stake,
        "customer receives the provider's stake: {} -> {}",
        balance_before.balance,
        after.balance
    );
    assert!(s.account(obs, &provider).await.unwrap().reputation < rep_before);
    s.restart(armed.b).await.unwrap();
    s.down(true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_crash_mid_contract_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut s) = story(
        "provider_crash_mid_contract_loses_nothing",
        &tmp.path().join("net"),
        Arc::new(TestLauncher(agora_bin())),
    )
    .await
    else {
        return;
    };
    // Three minutes: B's crash and restart cost whole probe intervals confirmed down, which
    // take about ten times as long to make up at a 90 % minimum.
    let armed = s.standby_lasting(180_000).await.unwrap();
    let obs = (0..CONTRACT_NODES)
        .find(|i| *i != s.a && *i != armed.b)
        .unwrap();
    let killed = s.kill(s.a).unwrap();
    s.failover(&armed, killed).await.unwrap();
    // B crashes mid-contract, once its service is on the record.
    s.wait_contract(obs, &armed.id, "B's first heartbeat", 30, |r| {
        r.uptime_ms > 0
    })
    .await
    .unwrap();
    let crashed = s.kill(armed.b).unwrap();
    s.restart(armed.b).await.unwrap();
    // B resumes the contract from the ledger and fetches the uplinks it missed from its peers.
    let bn = s.m.nodes[armed.b].clone();
    wait_for("B serving A's sensors again", 30, async || {
        let c = ApiClient::for_data_dir(&bn.data_dir).ok()?;
        let st: agora_radio::RadioStatus = c.get("/v1/radio").await.ok()?;
        st.devices
            .iter()
            .filter(|d| [101, 102, 103].contains(&d.device))
            .all(|d| d.service.is_some() && d.processed > 0)
            .then_some(())
    })
    .await
    .unwrap();
    // Serve until the reported uptime, the crash's gap included, is above the contract's
    // minimum (a few seconds of restart and catch-up take about ten times as long to make up
    // at a 90 % minimum), and so is the time the arbitrators' probes did not find B down (the
    // crash costs whole probe intervals); both only grow while B serves on until A has settled.
    let min = u64::from(armed.rec.contract.qos.min_uptime_permille);
    let want = (min + 10).min(1000);
    s.wait_contract(obs, &armed.id, "B's uptime to cover the crash", 180, |r| {
        r.last_uptime_end.is_some_and(|t| t > crashed)
            && reported_uptime_permille(r) >= want
            && not_confirmed_down_permille(r) >= want
    })
    .await
    .unwrap();
    s.restart(s.a).await.unwrap();
    let done = s
        .wait_contract(obs, &armed.id, "settlement", 30, |r| r.status.is_final())
        .await
        .unwrap();
    assert_eq!(done.status, ContractStatus::Settled, "{done:?}");
    assert!(done.paid_to_provider > 0);
    s.a_resumed().await.unwrap();
    let cov = s.coverage(armed.b).await;
    assert_eq!(cov.missing, 0, "{cov:?}");
    assert_eq!(cov.duplicated, 0, "{cov:?}");
    // B's own count agrees: after its crash it skipped no reading that nobody processed.
    let c = ApiClient::for_data_dir(&bn.data_dir).unwrap();
    let st: agora_radio::RadioStatus = c.get("/v1/radio").await.unwrap();
    for d in st
        .devices
        .iter()
        .filter(|d| [101, 102, 103].contains(&d.device))
    {
        assert_eq!(d.missing, 0, "B's node-local missing count: {d:?}");
    }
    s.down(true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_between_customer_and_provider_is_no_handover() {
    let _serial = SERIAL.lock().await;
    let lab = match PartitionLab::new(CONTRACT_NODES, agora_bin()) {
        Ok(lab) => Arc::new(lab),
        Err(why) => {
            agora_devnet::skipped(
                "partition_between_customer_and_provider_is_no_handover",
                &format!("network namespaces unavailable ({why}); needs root and iproute2"),
            );
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut s) = story(
        "partition_between_customer_and_provider_is_no_handover",
        &tmp.path().join("net"),
        lab.clone(),
    )
    .await
    else {
        return;
    };
    let armed = s.standby().await.unwrap();
    let obs = (0..CONTRACT_NODES)
        .find(|i| *i != s.a && *i != armed.b)
        .unwrap();
    let cut_at = agora_wire::now_ms();
    lab.cut(s.a, armed.b).unwrap();
    // The cut is real: A's presence table loses B (and only through the cut: the other nodes
    // still reach both).
    let a_dir = s.m.nodes[s.a].data_dir.clone();
    let b_node = s.m.nodes[armed.b].node_id.clone();
    wait_for("A to see B unreachable through the cut", 30, async || {
        let table = ApiClient::for_data_dir(&a_dir)
            .ok()?
            .presence()
            .await
            .ok()?;
        table
            .iter()
            .any(|p| p.node.to_string() == b_node && !p.reachable)
            .then_some(())
    })
    .await
    .unwrap();
    // Wait until the chain's own clock is well past the moment a handover would have been
    // attested if losing B were enough: a watched peer is down after 1 s of silence, then the
    // contract's handover clause, plus a few blocks of margin.
    let ActivationClause::OnHandover { unreachable_for_ms } = armed.rec.contract.activation else {
        panic!("a standby contract activates on handover");
    };
    wait_ledger_time(
        &s,
        obs,
        cut_at + unreachable_for_ms + 5_000,
        "the handover clause to pass on the chain",
    )
    .await;
    let rec = s.contract(obs, &armed.id).await.unwrap();
    assert_eq!(rec.status, ContractStatus::Armed, "no handover: {rec:?}");
    assert!(rec.trigger_at.is_none());
    lab.heal(s.a, armed.b).unwrap();
    // Control: a real failure of A does trigger the handover in this same setup.
    let killed = s.kill(s.a).unwrap();
    s.failover(&armed, killed).await.unwrap();
    s.down(true).await.unwrap();
}

/// [`TestLauncher`] whose nodes collect unpinned blocks 2 s after an unpin instead of 60 s, so
/// a test that waits for a collection does not wait a minute.
struct QuickGc(TestLauncher);

impl agora_devnet::process::Launcher for QuickGc {
    fn host(&self, i: usize) -> String {
        self.0.host(i)
    }

    fn configure(&self, _i: usize, config: &mut agora_daemon::config::NodeConfig) {
        config.storage.gc_interval_ms = 2_000;
    }

    fn spawn(
        &self,
        i: usize,
        exe: &std::path::Path,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<u32> {
        self.0.spawn(i, exe, data_dir)
    }

    fn exe(&self) -> anyhow::Result<std::path::PathBuf> {
        self.0.exe()
    }
}

/// THREATS C4: a standby contract that ends without a handover (A stays up) leaves nothing
/// on its provider B: B stops buffering A's devices for a takeover, removes the staged
/// service and lets go of the image, whose blocks it collects. Before, an armed standby
/// kept its devices "in use" in B's radio table (never evicted) and its service staged for
/// the life of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_ends_unused_leaves_nothing_on_its_provider() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let Some(s) = story(
        "a_standby_that_ends_unused_leaves_nothing_on_its_provider",
        &tmp.path().join("net"),
        Arc::new(QuickGc(TestLauncher(agora_bin()))),
    )
    .await
    else {
        return;
    };
    let armed = s.standby_lasting(20_000).await.unwrap();
    let bn = s.m.nodes[armed.b].clone();
    let dir = bn.data_dir.display().to_string();
    let image = armed.rec.contract.service_image.to_string();
    let buffering = async |want: bool| {
        let st: agora_radio::RadioStatus = ApiClient::for_data_dir(&bn.data_dir)
            .ok()?
            .get("/v1/radio")
            .await
            .ok()?;
        DEVICES
            .iter()
            .all(|d| {
                st.devices
                    .iter()
                    .any(|x| x.device == *d && x.buffering == want)
            })
            .then_some(())
    };
    wait_for("B to buffer A's devices while armed", 30, async || {
        buffering(true).await
    })
    .await
    .unwrap();
    let pinned = |ls: &serde_json::Value| {
        ls["pins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|c| c == image.as_str()))
    };
    let on_b = try_agora_json(&["storage", "ls", "--data-dir", &dir]).unwrap();
    assert!(
        pinned(&on_b),
        "B holds the staged image while armed: {on_b}"
    );
    let done = s
        .wait_contract(armed.b, &armed.id, "the unused standby's end", 60, |r| {
            r.status.is_final()
        })
        .await
        .unwrap();
    assert!(done.activated_at.is_none(), "no handover: {done:?}");
    wait_for("B to stop buffering A's devices", 30, async || {
        buffering(false).await
    })
    .await
    .unwrap();
    wait_for(
        "B to remove the unused standby's service and let go of its image",
        60,
        async || {
            let services = try_agora_json(&["service", "list", "--data-dir", &dir])?;
            let listed = services
                .as_array()?
                .iter()
                .any(|x| x["id"] == armed.id.as_str());
            let ls = try_agora_json(&["storage", "ls", "--data-dir", &dir])?;
            (!listed && !pinned(&ls)).then_some(())
        },
    )
    .await
    .unwrap();
    wait_for("B to collect the image's blocks", 120, async || {
        let stats = try_agora_json(&["storage", "stats", "--data-dir", &dir])?;
        (stats["gc"]["removed_blocks"].as_u64()? >= 3).then_some(())
    })
    .await
    .unwrap();
    // A's own service is untouched: it still runs on its devices.
    let an = s.m.nodes[s.a].clone();
    let st: agora_radio::RadioStatus = ApiClient::for_data_dir(&an.data_dir)
        .unwrap()
        .get("/v1/radio")
        .await
        .unwrap();
    assert!(
        DEVICES.iter().all(|d| st
            .devices
            .iter()
            .any(|x| x.device == *d && x.service.is_some())),
        "A keeps its devices: {:?}",
        st.devices
    );
    s.down(true).await.unwrap();
}
