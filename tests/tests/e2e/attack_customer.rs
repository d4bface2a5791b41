//! A customer that tries to get its honest provider unpaid or slashed (THREATS C5, C8, C9,
//! C12, C13, and every transaction that is not its to send), on a 7-node devnet of real
//! processes: node 6, the customer A, runs the test crate's `agora-byzantine --cancel-armed
//! --try-cheats --settle-early --hold-slots --cancel-hosted-lasting 170000ms` (the real node,
//! which also cancels each of its standby contracts once armed, sends what is not its to send
//! about its active hosted contracts, settles each active contract `CustomerBack` as soon as a
//! block confirms one of its probe intervals down, holds countersigned slot contracts back
//! past their deadline, and cancels its hosted contracts of that term the moment they are
//! armed); nodes 1–5 run `agora-byzantine --no-bid` (honest arbitrators that do not bid),
//! so node 0 is the provider of A's contracts: an honest node (`agora-byzantine
//! --slow-start-lasting 170000ms --slow-start-by 3000ms`, the real node, which only waits 3 s
//! before starting the service of a contract of the raced term, so A's cancel lands first).
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora` (cargo builds
//! `agora-byzantine` itself for this test), then
//! `nice cargo test -p agora-tests --test e2e attack_customer::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use agora_api::ledger::BalanceReply;
use agora_contracts::{ContractRecord, ContractStatus};
use agora_devnet::demo::Story;
use agora_devnet::demo::story::wait_for;
use agora_devnet::files::CONTRACT_NODES;
use agora_tests::adversary::{ByzantineLauncher, TestLauncher, byzantine_lines, log_lines};
use agora_tests::{agora, agora_bin, agora_json, alive};

/// The honest provider: the only node that bids.
const PROVIDER: usize = 0;
/// The hostile customer, A (the story's last node).
const CUSTOMER: usize = CONTRACT_NODES - 1;
/// The device the hosted contract's image names (not one of A's own service's).
const DEVICE: u32 = agora_devnet::sensor_keys::KEYED_SENSORS[3];
/// The device of A's second hosted contract, of the same module (one no radio sends for: the
/// contract is called off before it listens).
const SECOND_DEVICE: u32 = 202;
/// The hosted contract's term: three minutes, of which the test lets the provider serve a few
/// seconds, then takes it down for a few more; 10 % of the term (the default
/// `min_uptime_permille` is 900) is far more than the outage.
const HOSTED_MS: u64 = 180_000;
/// Another customer (an honest node) buying the same image from the same provider (C5).
const OTHER: usize = 3;
/// The device of its contract's image.
const OTHER_DEVICE: u32 = 203;
/// The term of the hosted contract A cancels the moment it is armed (C13).
const RACED_MS: u64 = 170_000;
/// Its image's device.
const RACED_DEVICE: u32 = 204;
/// How long the provider waits before it starts the service of a raced contract: more than a
/// block or two (A's cancel, sent as soon as its replica applies the arming block, is in the
/// next one), within the contract's activation budget (5 s).
const SLOW_START_MS: u64 = 3_000;
/// How many times A races a cancel against its provider's activation report (C13). Before the
/// provider's slow start, two CI rehearsals of session 48 lost three races in a row beside
/// another 7-process test; with it the cancel should win the first.
const RACES: usize = 3;
/// How many cheats `agora-byzantine --try-cheats` submits per active hosted contract.
const CHEATS: usize = 8;

fn launcher() -> ByzantineLauncher {
    let mut bad: Vec<(usize, Vec<String>)> = (1..CUSTOMER)
        .map(|i| (i, vec!["--no-bid".to_string()]))
        .collect();
    bad.push((
        PROVIDER,
        vec![
            "--slow-start-lasting".into(),
            format!("{RACED_MS}ms"),
            "--slow-start-by".into(),
            format!("{SLOW_START_MS}ms"),
        ],
    ));
    bad.push((
        CUSTOMER,
        vec![
            "--cancel-armed".into(),
            "--try-cheats".into(),
            "--settle-early".into(),
            "--hold-slots".into(),
            "--cancel-hosted-lasting".into(),
            format!("{RACED_MS}ms"),
        ],
    ));
    ByzantineLauncher {
        honest: TestLauncher(agora_bin()),
        exe: env!("CARGO_BIN_EXE_agora-byzantine").into(),
        bad,
        tune: None,
    }
}

/// Waits (`secs` at most) for a `byzantine:` line of node `dir` starting with `prefix`.
async fn line(dir: &Path, prefix: &str, secs: u64) -> String {
    wait_for(&format!("`{prefix}`"), secs, async || {
        byzantine_lines(dir)
            .into_iter()
            .find(|l| l.starts_with(prefix))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", byzantine_lines(dir)))
}

/// Waits until every honest replica (nodes 1 to 5) logs that a block refused A's transaction
/// with `nonce` (`a_short`: A's id as the log abbreviates it); `what` names it.
async fn refused_everywhere(s: &Story, a_short: &str, nonce: &str, what: &str) {
    let refused = format!("sender={a_short} nonce={nonce} ");
    for i in 1..CUSTOMER {
        let dir = s.m.nodes[i].data_dir.clone();
        wait_for(&format!("node{i} to refuse `{what}`"), 30, async || {
            log_lines(&dir)
                .iter()
                .any(|x| x.contains("block refused a transaction") && x.contains(&refused))
                .then_some(())
        })
        .await
        .unwrap();
    }
}

/// `agora contract show ID --json` on `dir`, as an operator reads it.
fn cli_contract(dir: &Path, id: &str) -> ContractRecord {
    let dir = dir.display().to_string();
    let v = agora_json(&["contract", "show", id, "--data-dir", &dir]);
    serde_json::from_value(v).expect("contract JSON")
}

/// `agora balance WHO --json` on `dir`.
fn cli_balance(dir: &Path, who: &str) -> BalanceReply {
    let dir = dir.display().to_string();
    let v = agora_json(&["balance", who, "--data-dir", &dir]);
    serde_json::from_value(v).expect("balance JSON")
}

/// C9: A cancels its standby contract once armed, when the refund would leave its provider,
/// standing by, unpaid: every honest replica refuses it (the transaction is in a block, its
/// nonce used up, the contract still armed). C5: once A's hosted contract is active, a second
/// hosted contract of the same module, which could not start beside the first on the same
/// provider, is called off by the provider before it is armed, while another customer's
/// contract of the same module starts beside A's. C8: A holds a countersigned pre-contracted
/// slot contract back until its activation deadline has passed, then registers it and settles
/// it `NoActivation` at once: every honest replica refuses both, and none knows the contract.
/// A also sends eight transactions only another party may send or the contract's state does
/// not allow (settle it `NoActivation` or `DurationEnded` early, cancel, expire, report its
/// activation, uptime or a probe interval down, collect the uptime payment): each is in a
/// block and every honest replica refuses it. C13: A cancels a hosted contract the moment a
/// block arms it, racing its provider's start; once the cancel applies, no service runs for it
/// on the provider. C12: A's hosted contract runs; its provider is
/// killed and restarted (a brief outage, a few probe intervals confirmed down); A settles
/// `CustomerBack` right after the first interval confirmed down, when the service so far looks
/// mostly down. Judged against the whole term, the provider would still pass: every honest
/// replica settles the contract (not slashed), the provider gets its stake back, and is paid
/// for no more than the time confirmed up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_can_neither_cancel_an_armed_standby_nor_take_the_stake_after_one_outage() {
    let test = "attack_customer::a_customer_can_neither_cancel_an_armed_standby_nor_take_the_stake_after_one_outage";
    let Some((_tmp, mut s)) = agora_tests::story(test, Arc::new(launcher())).await else {
        return;
    };
    assert_eq!(s.a, CUSTOMER);
    let a_dir = s.m.nodes[CUSTOMER].data_dir.clone();
    line(&a_dir, "byzantine: cancel-armed", 30).await;
    line(&a_dir, "byzantine: settle-early", 30).await;
    line(&a_dir, "byzantine: try-cheats", 30).await;

    // C9: the armed standby cannot be cancelled.
    let standby = s.standby().await.unwrap();
    assert_eq!(standby.b, PROVIDER, "the only bidder won");
    let submitted = line(
        &a_dir,
        &format!("byzantine: cancel submitted contract={}", standby.id),
        30,
    )
    .await;
    let outcome = line(
        &a_dir,
        &format!("byzantine: cancel refused contract={}", standby.id),
        60,
    )
    .await;
    for i in 1..CUSTOMER {
        let r = cli_contract(&s.m.nodes[i].data_dir, &standby.id);
        assert!(
            matches!(r.status, ContractStatus::Armed | ContractStatus::Settled),
            "node{i}: the standby was not cancelled: {r:?}"
        );
    }

    // C12: one brief outage, then the customer is "back".
    let hosted = s.hosted(&[DEVICE], HOSTED_MS).await.unwrap();
    assert_eq!(hosted.b, PROVIDER, "the only bidder won");
    let obs = 2;
    let provider = s.m.nodes[PROVIDER].node_id.clone();
    // C5, the customer's own contracts: a second hosted contract of the same module (capped
    // at one instance) on the same provider could never start beside the first, and A could
    // have it slashed for that. The provider calls it off before arming it.
    let before_second = cli_balance(&s.m.nodes[obs].data_dir, &provider);
    let second = s
        .hosted_until(&[SECOND_DEVICE], HOSTED_MS, None, ContractStatus::Cancelled)
        .await
        .unwrap();
    assert_eq!(second.b, PROVIDER, "the only bidder won");
    let refused = agora_json(&[
        "timeline",
        "--data-dir",
        &s.m.nodes[PROVIDER].data_dir.display().to_string(),
    ]);
    assert!(
        refused
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["phase"] == "arm-refused" && e["contract"] == second.id.as_str()),
        "the provider says why it called the contract off: {refused}"
    );
    for i in 1..CUSTOMER {
        let r = cli_contract(&s.m.nodes[i].data_dir, &second.id);
        assert_eq!(r.status, ContractStatus::Cancelled, "node{i}: {r:?}");
    }
    let after_second = cli_balance(&s.m.nodes[obs].data_dir, &provider);
    assert!(
        after_second.balance >= before_second.balance,
        "{before_second:?} -> {after_second:?}"
    );
    // C5, another customer's contract: node OTHER buys the same image (the same module, capped
    // at one instance) from the same provider while A's contract of it is active there: each
    // customer's services are their own instance group, so it starts beside A's.
    let other = s
        .hosted_by(
            OTHER,
            &[OTHER_DEVICE],
            HOSTED_MS,
            Some(PROVIDER),
            ContractStatus::Active,
        )
        .await
        .unwrap();
    assert_eq!(other.b, PROVIDER, "the only bidder near the provider won");
    for i in 1..CUSTOMER {
        let r = cli_contract(&s.m.nodes[i].data_dir, &hosted.id);
        assert_eq!(
            r.status,
            ContractStatus::Active,
            "node{i}: A's still runs: {r:?}"
        );
    }
    // C8: A asks for a pre-contracted slot of the same image starting 5 s after bidding; its
    // node holds the countersigned contract back until past the slot's activation deadline,
    // then registers it and settles it `NoActivation` at once (checked at the end).
    let image = hosted.rec.contract.service_image.to_string();
    let a_arg = a_dir.display().to_string();
    agora_json(&[
        "auction",
        "create",
        "--data-dir",
        &a_arg,
        "--cpu",
        "250m",
        "--memory",
        "64MiB",
        "--duration",
        "2m",
        "--max-price",
        "100",
        "--window",
        "1s",
        "--service",
        &image,
        "--start-in",
        "5s",
    ]);
    let holding = line(&a_dir, "byzantine: hold-slot holding contract=", 30).await;
    s.wait_contract(obs, &hosted.id, "an interval confirmed up", 60, |r| {
        r.confirmed_up_ms > 0
    })
    .await
    .unwrap();
    // Every transaction A may not send about its active contract (eight cheats) is in a block
    // and refused there by every honest replica; the contract stays active.
    let cheat = "byzantine: cheat ";
    let tried: Vec<String> = wait_for("A's eight cheats", 60, async || {
        let lines: Vec<String> = byzantine_lines(&a_dir)
            .into_iter()
            .filter(|l| l.starts_with(cheat) && l.contains(&hosted.id))
            .collect();
        (lines.len() >= CHEATS).then_some(lines)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", byzantine_lines(&a_dir)));
    let a_short: String = s.m.nodes[CUSTOMER].node_id.chars().take(8).collect();
    for l in &tried {
        assert!(l.contains(" submitted "), "admitted to A's mempool: {l}");
        let nonce = l.rsplit("nonce=").next().unwrap();
        refused_everywhere(&s, &a_short, nonce, l).await;
    }
    for i in 1..CUSTOMER {
        let r = cli_contract(&s.m.nodes[i].data_dir, &hosted.id);
        assert_eq!(r.status, ContractStatus::Active, "node{i}: {r:?}");
    }
    // C13: a hosted contract of another module, which A cancels the moment a block arms it,
    // racing the activation report its provider sends once it has started the service. When
    // the cancel applies, no service runs for the contract on the provider a few seconds
    // later (its sweep stops one it started: "stopped"; or it never started: "ended-unused").
    // The provider starts the service of a contract of that term 3 s late, so the cancel
    // lands first and its sweep has to stop a service it started for an ended contract. Should
    // the activation report still win (a block slower than 3 s), the contract runs, and A
    // tries again with another module and device, up to RACES times.
    let p_dir = s.m.nodes[PROVIDER].data_dir.display().to_string();
    let mut lost = Vec::new();
    let raced = loop {
        let attempt = lost.len() as u8;
        let raced = s
            .hosted_tagged(
                CUSTOMER,
                2 + attempt,
                &[RACED_DEVICE + u32::from(attempt)],
                RACED_MS,
                None,
                |st| st == ContractStatus::Cancelled || st == ContractStatus::Active,
            )
            .await
            .unwrap();
        if raced.rec.status == ContractStatus::Cancelled {
            break raced;
        }
        line(
            &a_dir,
            &format!("byzantine: cancel-hosted refused contract={}", raced.id),
            30,
        )
        .await;
        lost.push(raced.id);
        assert!(
            lost.len() < RACES,
            "the activation report won every race: {lost:?}"
        );
    };
    let raced_line = line(
        &a_dir,
        &format!("byzantine: cancel-hosted applied contract={}", raced.id),
        30,
    )
    .await;
    eprintln!("C13: {raced_line} (after {} lost race(s))", lost.len());
    // The provider was slow on purpose, and only for this term.
    line(
        &s.m.nodes[PROVIDER].data_dir,
        &format!("byzantine: slow-start delays service={}", raced.id),
        30,
    )
    .await;
    let ended_how = wait_for("the raced contract's service to be gone", 30, async || {
        let services = agora_tests::try_agora_json(&["service", "list", "--data-dir", &p_dir])?;
        let running = services
            .as_array()?
            .iter()
            .any(|x| x["id"] == raced.id.as_str() && x["state"] == "Active");
        let timeline = agora_tests::try_agora_json(&["timeline", "--data-dir", &p_dir])?;
        let how = timeline.as_array()?.iter().find_map(|e| {
            (e["contract"] == raced.id.as_str()
                && (e["phase"] == "stopped" || e["phase"] == "ended-unused"))
                .then(|| e["phase"].as_str().unwrap_or_default().to_string())
        })?;
        (!running).then_some(how)
    })
    .await
    .unwrap();
    let before = cli_balance(&s.m.nodes[obs].data_dir, &provider);
    s.kill(PROVIDER).unwrap();
    let settled_early = line(
        &a_dir,
        &format!("byzantine: settle-early submitted contract={}", hosted.id),
        60,
    )
    .await;
    s.restart(PROVIDER).await.unwrap();
    let mut done = Vec::new();
    for i in 1..CUSTOMER {
        let r = s
            .wait_contract(i, &hosted.id, "the early settlement", 60, |r| {
                r.status.is_final()
            })
            .await
            .unwrap();
        assert_eq!(r.status, ContractStatus::Settled, "node{i}: {r:?}");
        assert!(
            r.confirmed_down_ms > 0,
            "node{i}: the outage was confirmed: {r:?}"
        );
        assert!(
            r.paid_to_provider <= r.contract.payment * r.confirmed_up_ms / r.contract.duration_ms,
            "node{i}: paid for no more than the time confirmed up: {r:?}"
        );
        done.push(r);
    }
    let r = &done[obs - 1];
    // Early: judged long before the term's end.
    let window_end = r.window_end().unwrap();
    assert!(
        agora_wire::now_ms() + 60_000 < window_end,
        "settled early: {r:?}"
    );
    let after = cli_balance(&s.m.nodes[obs].data_dir, &provider);
    assert!(
        after.balance >= before.balance + hosted.rec.escrow.provider_stake,
        "the provider's stake came back: {before:?} -> {after:?}"
    );
    assert!(
        after.reputation > before.reputation,
        "{before:?} -> {after:?}"
    );
    // C8: the slot contract registered past its activation deadline is refused by every
    // honest replica, and so is its settlement; no replica knows the contract.
    let registered = line(&a_dir, "byzantine: hold-slot registered contract=", 120).await;
    let settle = line(&a_dir, "byzantine: hold-slot settle contract=", 30).await;
    let slot = registered
        .split("contract=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_string();
    assert!(holding.contains(&slot), "{holding} / {registered}");
    for l in [&registered, &settle] {
        let nonce = l.rsplit("nonce=").next().unwrap();
        refused_everywhere(&s, &a_short, nonce, l).await;
    }
    for i in 1..CUSTOMER {
        let dir = s.m.nodes[i].data_dir.display().to_string();
        let out = agora(&["contract", "show", &slot, "--data-dir", &dir]);
        assert!(
            !out.status.success(),
            "node{i} knows the held-back contract: {out:?}"
        );
    }
    for (i, n) in s.m.nodes.iter().enumerate() {
        assert!(alive(u64::from(n.pid.unwrap())), "node{i} still runs");
    }
    eprintln!(
        "C8: {holding} / {registered} / {settle}; C13: {raced_line}, on the provider: {ended_how}; C9: {submitted} / {outcome}; {} cheats refused by {} honest replicas; C12: {settled_early}; confirmed up {} ms, down {} ms of \
         a {HOSTED_MS} ms term; paid {} of {}; provider balance {} -> {}, reputation {} -> {}",
        tried.len(),
        CUSTOMER - 1,
        r.confirmed_up_ms,
        r.confirmed_down_ms,
        r.paid_to_provider,
        r.contract.payment,
        before.balance,
        after.balance,
        before.reputation,
        after.reputation
    );
    s.down(true).await.unwrap();
}
