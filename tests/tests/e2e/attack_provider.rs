//! A hosted provider that runs nothing (issue #13.10, THREATS P1) on a 7-node devnet of real
//! processes: node 0 runs the test crate's `agora-byzantine --host-nothing=…` (the real node,
//! whose service host stages the contract's image but never starts it, while its orchestrator
//! activates the contract and claims uptime in every heartbeat); nodes 1–5 run
//! `agora-byzantine --no-bid` (honest arbitrators that do not bid, so node 0 is the only
//! bidder); node 6 is the customer A, a plain `agora` process. Node 1, an arbitrator of every
//! contract, lies about the probes in two tests (`agora-byzantine --no-bid --false-probes=…`):
//! it reports every interval of the contract `up` for the provider that runs nothing, `down`
//! for the honest one, in `ProbeResults` batches that also carry an entry no replica accepts.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora` (cargo builds
//! `agora-byzantine` itself for this test), then
//! `nice cargo test -p agora-tests --test e2e attack_provider::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use agora_api::ledger::{BalanceReply, TransferRequest};
use agora_contracts::{ContractRecord, ContractStatus};
use agora_devnet::demo::Story;
use agora_devnet::demo::story::wait_for;
use agora_devnet::files::CONTRACT_NODES;
use agora_tests::adversary::{ByzantineLauncher, TestLauncher, byzantine_lines};
use agora_tests::{agora_bin, agora_json, alive, try_agora_json};

/// One devnet at a time: each test runs seven nodes on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The provider that runs nothing.
const BAD: usize = 0;
/// The device the hosted contract's image names (not one of A's own service's).
const DEVICE: u32 = agora_devnet::sensor_keys::KEYED_SENSORS[3];
/// How long the hosted contract lasts: many probe intervals (one per heartbeat interval).
const DURATION_MS: u64 = 20_000;

/// The arbitrator that reports false probe outcomes in the tests that say so.
const LIAR: usize = 1;

/// Node `BAD` runs nothing with `args` (a plain `agora` node when `args` is empty); the others
/// but A (the last) do not bid, and node `LIAR` also misbehaves with `liar`.
fn launcher(args: &[&str], liar: &[&str]) -> ByzantineLauncher {
    let mut bad: Vec<(usize, Vec<String>)> = Vec::new();
    if !args.is_empty() {
        bad.push((BAD, args.iter().map(|a| a.to_string()).collect()));
    }
    for i in 1..CONTRACT_NODES - 1 {
        let mut a = vec!["--no-bid".to_string()];
        if i == LIAR {
            a.extend(liar.iter().map(|a| a.to_string()));
        }
        bad.push((i, a));
    }
    ByzantineLauncher {
        honest: TestLauncher(agora_bin()),
        exe: env!("CARGO_BIN_EXE_agora-byzantine").into(),
        bad,
        // What an ended contract leaves is collected 1 s after it is let go of, not 60 s.
        tune: Some(|_, c| c.storage.gc_interval_ms = 1_000),
    }
}

/// How many of node `LIAR`'s false probe reports (`up` as given) for `contract` a decided block
/// applied, from its `byzantine: false probe recorded` lines; waits (60 s at most) until its
/// `--false-probes` misbehaviour is on first.
async fn lies_recorded(dir: &Path, contract: &str, up: bool) -> usize {
    let word = if up { "up" } else { "down" };
    let on = format!("byzantine: false-probes={word}");
    wait_for("the liar to lie", 60, async || {
        byzantine_lines(dir).contains(&on).then_some(())
    })
    .await
    .unwrap();
    let want = format!("byzantine: false probe recorded contract={contract} ");
    let outcome = format!(" up={up} ");
    byzantine_lines(dir)
        .iter()
        .filter(|l| l.starts_with(&want) && l.contains(&outcome))
        .count()
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

/// A started story on the devnet `launcher` makes, node `BAD` misbehaving as `word` says;
/// `None` (after saying skipped) when the lora-gateway module cannot be built here.
async fn story(
    test: &str,
    launcher: ByzantineLauncher,
    word: &str,
) -> Option<(tempfile::TempDir, Story)> {
    let (tmp, s) = agora_tests::story(test, Arc::new(launcher)).await?;
    if !word.is_empty() {
        let dir = s.m.nodes[BAD].data_dir.clone();
        let want = format!("byzantine: host-nothing={word}");
        wait_for("the provider to run nothing", 30, async || {
            byzantine_lines(&dir).contains(&want).then_some(())
        })
        .await
        .unwrap();
    }
    Some((tmp, s))
}

/// A transfer between two honest nodes is applied on every honest replica.
async fn honest_transfer_finalises(s: &Story, from: usize, to: usize) {
    let who = s.m.nodes[to].node_id.clone();
    let mut was = Vec::new();
    for i in 1..CONTRACT_NODES {
        was.push(s.account(i, &who).await.unwrap().balance);
    }
    let req = TransferRequest {
        to: who.clone(),
        amount: 3,
    };
    let c = agora_api::client::ApiClient::for_data_dir(&s.m.nodes[from].data_dir).unwrap();
    let _: agora_api::ledger::SubmittedReply = c.post("/v1/ledger/transfer", &req).await.unwrap();
    for (k, i) in (1..CONTRACT_NODES).enumerate() {
        let want = was[k] + req.amount;
        wait_for(&format!("node{i} to apply the transfer"), 60, async || {
            let b = s.account(i, &who).await?.balance;
            (b >= want).then_some(())
        })
        .await
        .unwrap();
    }
}

/// `agora timeline --json` on `dir`: how many entries of `phase` name `contract`.
fn timeline_count(dir: &Path, phase: &str, contract: &str) -> usize {
    let dir = dir.display().to_string();
    let v = agora_json(&["timeline", "--data-dir", &dir]);
    v.as_array()
        .expect("timeline JSON")
        .iter()
        .filter(|e| e["phase"] == phase && e["contract"] == contract)
        .count()
}

/// Node `BAD` runs nothing as the provider of a 20 s hosted contract, answering the probes as
/// `word` says (`honest` or `lie`). Asserts, on every honest replica, that the contract ends
/// slashed with nothing paid and no interval confirmed up, though the provider claimed uptime
/// in its heartbeats; that its balance did not grow; that each honest arbitrator counted its
/// answers as `phase` (`agora timeline --json`); and that the honest nodes keep trading. With
/// `lie_up`, arbitrator `LIAR` reports every interval up all along (checked: its lies are on
/// the chain), and changes none of that.
async fn provider_running_nothing(test: &str, word: &str, phase: &str, lie_up: bool) {
    let arg = format!("--host-nothing={word}");
    let liar: &[&str] = if lie_up { &["--false-probes=up"] } else { &[] };
    let Some((_tmp, s)) = story(test, launcher(&[arg.as_str()], liar), word).await else {
        return;
    };
    let hosted = s.hosted(&[DEVICE], DURATION_MS).await.unwrap();
    assert_eq!(hosted.b, BAD, "the only bidder won");
    let bad_dir = s.m.nodes[BAD].data_dir.clone();
    let provider = hosted.rec.contract.provider.to_string();
    assert_eq!(provider, s.m.nodes[BAD].node_id);
    let payment = hosted.rec.contract.payment;
    assert!(payment > 0, "{:?}", hosted.rec);
    let obs = 2;
    let before = cli_balance(&s.m.nodes[obs].data_dir, &provider);
    // It ran nothing: it only pretended to start the contract's service.
    let pretended = format!(
        "byzantine: host-nothing pretends to start service={}",
        hosted.id
    );
    assert!(
        byzantine_lines(&bad_dir).contains(&pretended),
        "{:?}",
        byzantine_lines(&bad_dir)
    );

    let done = s
        .wait_contract(
            obs,
            &hosted.id,
            "settlement",
            DURATION_MS / 1000 + 90,
            |r| r.status.is_final(),
        )
        .await
        .unwrap();
    let running = word == "lie";
    let said = format!(
        "byzantine: probe answered service={} running={running}",
        hosted.id
    );
    let answered = byzantine_lines(&bad_dir)
        .iter()
        .filter(|l| l.starts_with(&said))
        .count();
    assert!(answered > 0, "the provider answered probes (not silent)");
    let mut counted = Vec::new();
    for i in 1..CONTRACT_NODES {
        s.wait_contract(i, &hosted.id, "settlement here too", 30, |r| {
            r.status.is_final()
        })
        .await
        .unwrap();
        let r = cli_contract(&s.m.nodes[i].data_dir, &hosted.id);
        assert_eq!(r.status, ContractStatus::Slashed, "node{i}: {r:?}");
        assert_eq!(r.paid_to_provider, 0, "node{i}: paid nothing: {r:?}");
        assert_eq!(
            r.confirmed_up_ms, 0,
            "node{i}: no interval confirmed up: {r:?}"
        );
        assert!(
            r.confirmed_down_ms > 0,
            "node{i}: intervals confirmed down: {r:?}"
        );
        assert!(
            r.uptime_ms > 0,
            "node{i}: the provider did claim uptime: {r:?}"
        );
        let me = &s.m.nodes[i].node_id;
        if r.contract.committee.iter().any(|m| m.to_string() == *me) && !(lie_up && i == LIAR) {
            // An honest arbitrator of the contract: it counted the answers.
            counted.push(timeline_count(&s.m.nodes[i].data_dir, phase, &hosted.id));
        }
    }
    let lies = if lie_up {
        lies_recorded(&s.m.nodes[LIAR].data_dir, &hosted.id, true).await
    } else {
        0
    };
    assert_eq!(
        lies > 0,
        lie_up,
        "the liar's `up` reports are on the chain: {:?}",
        byzantine_lines(&s.m.nodes[LIAR].data_dir)
    );
    assert!(
        counted.len() >= 4 && counted.iter().all(|n| *n > 0),
        "every honest arbitrator counted `{phase}`: {counted:?}"
    );
    let after = cli_balance(&s.m.nodes[obs].data_dir, &provider);
    assert!(
        after.balance <= before.balance,
        "the provider's balance did not grow: {} -> {}",
        before.balance,
        after.balance
    );
    assert!(
        after.reputation < before.reputation,
        "{before:?} -> {after:?}"
    );

    // The honest nodes keep trading.
    honest_transfer_finalises(&s, 2, 3).await;
    for (i, n) in s.m.nodes.iter().enumerate() {
        assert!(alive(u64::from(n.pid.unwrap())), "node{i} still runs");
    }
    eprintln!(
        "{answered} probes answered running={running}; {lies} false `up` reports recorded; \
         `{phase}` per honest arbitrator {counted:?}; \
         claimed uptime {} ms, confirmed down {} ms; paid {} of {payment}; provider balance \
         {} -> {}",
        done.uptime_ms,
        done.confirmed_down_ms,
        done.paid_to_provider,
        before.balance,
        after.balance
    );
    s.down(true).await.unwrap();
}

/// P1 (b): the provider of a hosted contract stages its image but never runs it, activates the
/// contract and claims uptime in every heartbeat; asked by the arbitrators' probes, it says
/// its service does not run. One arbitrator (`LIAR`) sides with it and reports every interval
/// up (a minority cannot pay). No interval is confirmed up, a quorum confirms them down: the
/// contract is slashed at its end on every honest replica, the provider is paid nothing and
/// its balance does not grow, and the honest nodes keep trading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_running_nothing_that_says_so_to_the_probes_is_paid_nothing_though_one_arbitrator_lies_up()
 {
    let _serial = SERIAL.lock().await;
    provider_running_nothing(
        "attack_provider::a_provider_running_nothing_that_says_so_to_the_probes_is_paid_nothing_though_one_arbitrator_lies_up",
        "honest",
        "probe-not-running",
        true,
    )
    .await;
}

/// P1 (b), the liar: the same provider answers every probe "running", with a made-up value
/// for the image's `agora_probe(nonce)` (the lora-gateway image exports it). Each honest
/// arbitrator computes the value on its own instance of the image, finds the answer wrong
/// (`probe-guest-mismatch`) and reports the interval down: paid nothing, slashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_running_nothing_that_lies_to_the_probes_is_caught_by_the_guest_value() {
    let _serial = SERIAL.lock().await;
    provider_running_nothing(
        "attack_provider::a_provider_running_nothing_that_lies_to_the_probes_is_caught_by_the_guest_value",
        "lie",
        "probe-guest-mismatch",
        false,
    )
    .await;
}

/// The honest provider: node 0 is a plain, honest `agora` node and the only bidder; it runs
/// the contract's lora-gateway image, whose `agora_probe` its live instance answers and every
/// arbitrator checks on its own instance. One arbitrator (`LIAR`) reports every interval down
/// all along, as soon as each starts (a minority cannot slash): the contract settles, the
/// provider is paid for the confirmed intervals (more than half the payment), no interval is
/// confirmed down, and no honest arbitrator found a wrong or missing guest value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_provider_answers_the_guest_value_and_is_paid_though_one_arbitrator_lies_down() {
    let _serial = SERIAL.lock().await;
    let test = "attack_provider::an_honest_provider_answers_the_guest_value_and_is_paid_though_one_arbitrator_lies_down";
    let Some((_tmp, s)) = story(test, launcher(&[], &["--false-probes=down"]), "").await else {
        return;
    };
    let hosted = s.hosted(&[DEVICE], DURATION_MS).await.unwrap();
    assert_eq!(hosted.b, BAD, "the only bidder won");
    let obs = 2;
    s.wait_contract(
        obs,
        &hosted.id,
        "settlement",
        DURATION_MS / 1000 + 90,
        |r| r.status.is_final(),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    for i in 1..CONTRACT_NODES {
        s.wait_contract(i, &hosted.id, "settlement here too", 30, |r| {
            r.status.is_final()
        })
        .await
        .unwrap();
        let r = cli_contract(&s.m.nodes[i].data_dir, &hosted.id);
        assert_eq!(r.status, ContractStatus::Settled, "node{i}: {r:?}");
        assert!(
            r.paid_to_provider * 2 > r.contract.payment,
            "node{i}: paid more than half: {r:?}"
        );
        assert!(r.confirmed_up_ms > 0, "node{i}: {r:?}");
        assert_eq!(r.confirmed_down_ms, 0, "node{i}: {r:?}");
        let me = &s.m.nodes[i].node_id;
        if r.contract.committee.iter().any(|m| m.to_string() == *me) && i != LIAR {
            let dir = &s.m.nodes[i].data_dir;
            let bad: usize = [
                "probe-guest-mismatch",
                "probe-no-guest-value",
                "probe-not-running",
            ]
            .iter()
            .map(|p| timeline_count(dir, p, &hosted.id))
            .sum();
            assert_eq!(bad, 0, "node{i} found the honest provider's answers wrong");
            seen.push(timeline_count(dir, "probe-unverified", &hosted.id));
        }
    }
    let lies = lies_recorded(&s.m.nodes[LIAR].data_dir, &hosted.id, false).await;
    assert!(
        lies > 0,
        "the liar's `down` reports are on the chain: {:?}",
        byzantine_lines(&s.m.nodes[LIAR].data_dir)
    );
    honest_transfer_finalises(&s, 2, 3).await;
    for (i, n) in s.m.nodes.iter().enumerate() {
        assert!(alive(u64::from(n.pid.unwrap())), "node{i} still runs");
    }
    let done = s.contract(obs, &hosted.id).await.unwrap();
    eprintln!(
        "honest provider: paid {} of {}; confirmed up {} ms, down {} ms; {lies} false `down` \
         reports recorded; probes on the hosting layer's word per honest arbitrator {seen:?}",
        done.paid_to_provider, done.contract.payment, done.confirmed_up_ms, done.confirmed_down_ms
    );
    what_an_ended_contract_left_goes(&s, &done, BAD).await;
    s.down(true).await.unwrap();
}

/// THREATS C4: the provider of `done` (node `provider`, which did not publish its image)
/// removes the ended contract's service and unpins the image; the customer keeps its own
/// published image pinned; an honest arbitrator's probe cache lets go of it.
async fn what_an_ended_contract_left_goes(s: &Story, done: &ContractRecord, provider: usize) {
    let id = done.contract.id().unwrap().to_string();
    let image = done.contract.service_image.to_string();
    let dir = |i: usize| s.m.nodes[i].data_dir.display().to_string();
    let pins = |i: usize| -> Option<serde_json::Value> {
        try_agora_json(&["storage", "ls", "--data-dir", &dir(i)])
    };
    let pinned = |ls: &serde_json::Value| {
        ls["pins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|c| c == image.as_str()))
    };
    let on_provider = pins(provider).expect("provider's pins");
    eprintln!("provider's pins at the settlement: {on_provider}");
    wait_for(
        "the provider to remove the ended contract's service and unpin its image",
        60,
        async || {
            let services = try_agora_json(&["service", "list", "--data-dir", &dir(provider)])?;
            let listed = services.as_array()?.iter().any(|x| x["id"] == id.as_str());
            (!listed && !pinned(&pins(provider)?)).then_some(())
        },
    )
    .await
    .unwrap();
    // Its blocks (the image's record, manifest and module at least) are collected without
    // the operator (`storage.gc_interval_ms` after the unpin).
    wait_for(
        "the provider to collect the ended contract's image blocks",
        30,
        async || {
            let stats = try_agora_json(&["storage", "stats", "--data-dir", &dir(provider)])?;
            (stats["gc"]["removed_blocks"].as_u64()? >= 3).then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        timeline_count(&s.m.nodes[provider].data_dir, "retired", &id),
        1,
        "the provider's timeline says the service was retired"
    );
    let customer = pins(s.a).expect("customer's pins");
    assert!(
        pinned(&customer),
        "the customer keeps its own image: {customer}"
    );
    for i in 1..CONTRACT_NODES {
        let member = done
            .contract
            .committee
            .iter()
            .any(|m| m.to_string() == s.m.nodes[i].node_id);
        if !member || i == LIAR || i == provider {
            continue;
        }
        // Its probe cache let go of the image when the contract ended (no other contract it
        // judges runs it), so nothing here holds it any more.
        let held_for_probes = |ls: &serde_json::Value| {
            ls["held"][image.as_str()]
                .as_array()
                .is_some_and(|h| h.iter().any(|x| x == "probe"))
        };
        wait_for(
            "an honest arbitrator's probe cache to let go of the ended contract's image",
            30,
            async || (!held_for_probes(&pins(i)?)).then_some(()),
        )
        .await
        .unwrap_or_else(|e| panic!("node{i}: {e}: {:?}", pins(i)));
        eprintln!("arbitrator node{i}'s pins after the end: {:?}", pins(i));
    }
}

/// How long the customer lets a contract stay unarmed in the never-arm test (the default is
/// 5 min: `agora_roles::ARM_TIMEOUT_MS`).
const ARM_TIMEOUT_MS: u64 = 15_000;

/// C16: the only bidder (`agora-byzantine --never-arm`) wins a 10-minute hosted contract,
/// countersigns it and then never finishes staging its image, so it never arms. The customer's
/// payment and stake were locked until the contract expired, its whole term plus the ledger's
/// grace later; now the customer (a plain `agora` node, `deals.customer.arm_timeout_ms` 15 s
/// here) calls it off once it has stayed unarmed that long: on every honest replica it ends
/// `Cancelled` with nothing paid, the customer's locked funds drop by its payment and stake,
/// its timeline says why, and the honest nodes keep trading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_never_arms_has_its_contract_called_off_and_the_customers_funds_back() {
    let _serial = SERIAL.lock().await;
    let test = "attack_provider::a_provider_that_never_arms_has_its_contract_called_off_and_the_customers_funds_back";
    let mut l = launcher(&["--never-arm"], &[]);
    l.tune = Some(|_, c| {
        c.storage.gc_interval_ms = 1_000;
        c.deals.customer.arm_timeout_ms = ARM_TIMEOUT_MS;
    });
    let Some((_tmp, s)) = agora_tests::story(test, Arc::new(l)).await else {
        return;
    };
    let bad_dir = s.m.nodes[BAD].data_dir.clone();
    wait_for("the provider to never arm", 30, async || {
        byzantine_lines(&bad_dir)
            .contains(&"byzantine: never-arm".to_string())
            .then_some(())
    })
    .await
    .unwrap();
    let a = s.a;
    let customer = s.m.nodes[a].node_id.clone();
    let obs = 2;
    let hosted = s
        .hosted_until(&[DEVICE], 600_000, None, ContractStatus::Validated)
        .await
        .unwrap();
    assert_eq!(hosted.b, BAD, "the only bidder won");
    // The observer has applied the registration before its view of A's locked funds counts.
    s.wait_contract(obs, &hosted.id, "registered here too", 30, |r| {
        r.status == ContractStatus::Validated
    })
    .await
    .unwrap();
    let locked_while = cli_balance(&s.m.nodes[obs].data_dir, &customer).locked;
    let c = &hosted.rec.contract;
    let held = c.payment + c.stakes.customer_stake;
    assert!(held > 0, "{:?}", hosted.rec);
    let stalled = "byzantine: never-arm stalls staging service=";
    wait_for("the provider to stall its staging", 30, async || {
        byzantine_lines(&bad_dir)
            .iter()
            .any(|l| l.starts_with(stalled) && l.contains(&hosted.id))
            .then_some(())
    })
    .await
    .unwrap();
    for i in 1..CONTRACT_NODES {
        let r = s
            .wait_contract(
                i,
                &hosted.id,
                "called off",
                ARM_TIMEOUT_MS / 1000 + 60,
                |r| r.status.is_final(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, ContractStatus::Cancelled, "node{i}: {r:?}");
        assert_eq!(r.paid_to_provider, 0, "node{i}: {r:?}");
        assert!(r.armed_at.is_none(), "node{i}: never armed: {r:?}");
        assert!(
            r.closed_at.unwrap() >= r.registered_at + ARM_TIMEOUT_MS,
            "node{i}: not before the arm timeout: {r:?}"
        );
    }
    let locked_after = cli_balance(&s.m.nodes[obs].data_dir, &customer).locked;
    assert!(
        locked_after + held <= locked_while,
        "the customer's payment and stake are back: locked {locked_while} -> {locked_after} \
         (held {held})"
    );
    assert_eq!(
        timeline_count(&s.m.nodes[a].data_dir, "cancel-requested", &hosted.id),
        1,
        "the customer's timeline says why"
    );
    honest_transfer_finalises(&s, 2, 3).await;
    for (i, n) in s.m.nodes.iter().enumerate() {
        assert!(alive(u64::from(n.pid.unwrap())), "node{i} still runs");
    }
    eprintln!(
        "called off {} ms after the registration; customer locked {locked_while} -> \
         {locked_after} (held {held})",
        cli_contract(&s.m.nodes[obs].data_dir, &hosted.id)
            .closed_at
            .unwrap()
            - hosted.rec.registered_at
    );
    s.down(true).await.unwrap();
}
