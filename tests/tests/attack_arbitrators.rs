//! Byzantine arbitrators as separate processes (issue #13; THREATS A1, A2, A4): a 7-node devnet
//! of real `agora` processes in which one node runs the test crate's `agora-byzantine` binary
//! (the same node assembly, config and data directory, with misbehaviours switched on from its
//! command line). Each test asserts what the six honest processes still do.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora` (cargo builds
//! `agora-byzantine` itself for this test), then
//! `nice cargo test -p agora-tests --test attack_arbitrators`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_api::client::ApiClient;
use agora_api::ledger::LedgerStatus;
use agora_contracts::{ActivationClause, ContractStatus};
use agora_devnet::demo::Story;
use agora_devnet::demo::module_bytes;
use agora_devnet::demo::story::wait_for;
use agora_devnet::files::CONTRACT_NODES;
use agora_tests::adversary::{ByzantineLauncher, HostileDevnet, TestLauncher};
use agora_tests::{agora_bin, agora_json, alive};

/// One devnet at a time: each test runs seven nodes on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a scenario may take to show its effect under load.
const PATIENCE: Duration = Duration::from_secs(150);

/// A launcher whose node `bad` runs `agora-byzantine` with `args`.
fn byzantine(bad: usize, args: &[&str]) -> ByzantineLauncher {
    ByzantineLauncher {
        honest: TestLauncher(agora_bin()),
        node: bad,
        exe: env!("CARGO_BIN_EXE_agora-byzantine").into(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

/// The `byzantine:` lines the byzantine node printed to its log.
fn byzantine_lines(data_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(data_dir.join("node.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("byzantine: "))
        .map(String::from)
        .collect()
}

/// Waits until the byzantine node says `what` is on (the binary really misbehaves).
async fn wait_misbehaving(data_dir: &Path, what: &str) {
    let want = format!("byzantine: {what}");
    wait_for(
        &format!("the byzantine node to turn on {what}"),
        30,
        async || {
            byzantine_lines(data_dir)
                .iter()
                .any(|l| l.starts_with(&want))
                .then_some(())
        },
    )
    .await
    .unwrap();
}

async fn status(net: &HostileDevnet, i: usize) -> LedgerStatus {
    net.client(i)
        .unwrap()
        .get("/v1/ledger/status")
        .await
        .unwrap()
}

/// `agora ledger status --json` on node `i`, as an operator reads it.
fn cli_status(data_dir: &str) -> LedgerStatus {
    let v = agora_json(&["ledger", "status", "--data-dir", data_dir]);
    serde_json::from_value(v).expect("ledger status JSON")
}

/// A1: one arbitrator process stamps every block it proposes 30 days ahead. The honest six
/// refuse those proposals (their count of refused block times grows), its rounds time out and
/// the next proposer decides: transfers keep finalising and ledger time stays within the
/// chain's 2 s tolerance of the wall clock on every replica, the byzantine one's included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_arbitrator_process_proposing_thirty_days_ahead_cannot_move_ledger_time() {
    let _serial = SERIAL.lock().await;
    const BAD: usize = 3;
    let launcher = byzantine(BAD, &["--skew-proposals", "30d"]);
    let net = HostileDevnet::up_with(CONTRACT_NODES, &launcher)
        .await
        .unwrap();
    wait_misbehaving(&net.node(BAD).data_dir, "skew-proposals").await;
    let honest: Vec<usize> = (0..net.len()).filter(|i| *i != BAD).collect();
    let start = status(&net, 0).await.height;
    let deadline = Instant::now() + PATIENCE;
    let mut transfers = 0;
    // Transfers, each final before the next, make heights; proposers rotate by height and
    // round, so the byzantine one gets its turns. Go on until an honest node refused one of
    // its proposals, and at least one full rotation of proposers.
    loop {
        net.transfer_finalises(1, 2, 1).await.unwrap();
        transfers += 1;
        let mut refused = 0;
        for &i in &honest {
            refused += status(&net, i).await.proposals_refused_block_time;
        }
        if refused > 0 && transfers > CONTRACT_NODES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {transfers} transfers no honest node refused a proposal of the skewed \
             arbitrator (is it proposing?)"
        );
    }
    let now = agora_wire::now_ms();
    for i in 0..net.len() {
        let s = cli_status(&net.data_dir(i));
        assert!(
            s.height >= start + transfers as u64,
            "node{i}: the chain kept deciding ({} -> {})",
            start,
            s.height
        );
        let at = s.last_block_at.expect("blocks were decided");
        assert!(
            at <= now + 2_000,
            "node{i}: ledger time {at} jumped past the clock {now}"
        );
    }
    let refused: Vec<u64> = honest
        .iter()
        .map(|&i| cli_status(&net.data_dir(i)).proposals_refused_block_time)
        .collect();
    eprintln!("{transfers} transfers; proposals refused for their block time by node: {refused:?}");
    net.assert_alive();
}

/// A2: one arbitrator process casts every vote twice, for different values. The honest
/// drivers find the two signed votes, report them (`ReportEquivocation`), and every honest
/// replica burns the equivocator's bond and records the slash, read through
/// `agora ledger status --json`; the chain keeps deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_equivocating_arbitrator_process_is_slashed_on_every_honest_replica() {
    let _serial = SERIAL.lock().await;
    const BAD: usize = 2;
    let launcher = byzantine(BAD, &["--double-vote"]);
    let net = HostileDevnet::up_with(CONTRACT_NODES, &launcher)
        .await
        .unwrap();
    wait_misbehaving(&net.node(BAD).data_dir, "double-vote").await;
    let bad = net.node_id(BAD).to_string();
    let honest: Vec<usize> = (0..net.len()).filter(|i| *i != BAD).collect();
    let bond_of = |s: &LedgerStatus| {
        s.arbitrators
            .iter()
            .find(|a| a.id == bad)
            .map(|a| (a.bonded, a.slashed.map(|x| x.amount)))
            .expect("the byzantine node is an arbitrator")
    };
    let (bond, slashed) = bond_of(&status(&net, 0).await);
    assert!(bond > 0, "the arbitrator holds a bond before");
    // Slashing may already have happened at the first heights; either way it must happen.
    let _ = slashed;
    let deadline = Instant::now() + PATIENCE;
    let mut transfers = 0;
    loop {
        net.transfer_finalises(1, 3, 1).await.unwrap();
        transfers += 1;
        let mut done = true;
        for &i in &honest {
            let (bonded, slashed) = bond_of(&status(&net, i).await);
            done &= bonded == 0 && slashed == Some(bond);
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {transfers} transfers the equivocator's bond of {bond} was not slashed on \
             every honest replica"
        );
    }
    for &i in &honest {
        let s = cli_status(&net.data_dir(i));
        let (bonded, slashed) = bond_of(&s);
        assert_eq!((bonded, slashed), (0, Some(bond)), "node{i}");
        // Nobody else was slashed.
        let others: Vec<&str> = s
            .arbitrators
            .iter()
            .filter(|a| a.id != bad && (a.slashed.is_some() || a.bonded == 0))
            .map(|a| a.id.as_str())
            .collect();
        assert!(
            others.is_empty(),
            "node{i}: honest arbitrators slashed: {others:?}"
        );
    }
    // The chain still decides with the equivocator slashed.
    net.transfer_finalises(1, 3, 1).await.unwrap();
    eprintln!("slashed after {transfers} transfers");
    net.assert_alive();
}

/// A4: a standby contract is armed (customer A insured, provider B staged) and one of its
/// arbitrators, a separate process, attests the live customer unreachable, dated far enough
/// back for the handover clause, and repeats it every 3 s. One attestation is not a 2f + 1
/// quorum: after the chain's own clock has passed the clause by a wide margin the contract is
/// still armed, nothing was attested, activated, paid or slashed. Then A is killed for real
/// and the honest arbitrators' attestations hand over to B as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_attestation_by_one_arbitrator_process_triggers_no_handover() {
    let _serial = SERIAL.lock().await;
    const BAD: usize = 0;
    let module = module_bytes(None).expect("lora-gateway module (rustup target add wasm32-wasip1)");
    let tmp = tempfile::tempdir().unwrap();
    let launcher = Arc::new(byzantine(BAD, &["--false-attest", "--no-bid"]));
    let mut s = Story::start(
        &tmp.path().join("net"),
        CONTRACT_NODES,
        &module,
        launcher,
        true,
    )
    .await
    .expect("story starts");
    let bad_dir = s.m.nodes[BAD].data_dir.clone();
    wait_misbehaving(&bad_dir, "false-attest").await;
    let armed = s.standby().await.unwrap();
    let bad = s.m.nodes[BAD].node_id.clone();
    assert_ne!(armed.b, BAD, "the byzantine node does not bid");
    assert!(
        armed
            .rec
            .contract
            .committee
            .iter()
            .any(|m| m.to_string() == bad),
        "the byzantine node sits on the contract's committee"
    );
    let obs = (0..CONTRACT_NODES)
        .find(|i| *i != s.a && *i != armed.b && *i != BAD)
        .unwrap();
    let customer = armed.rec.contract.customer.to_string();
    let provider = armed.rec.contract.provider.to_string();
    let before = (
        s.account(obs, &customer).await.unwrap(),
        s.account(obs, &provider).await.unwrap(),
    );
    let ActivationClause::OnHandover { unreachable_for_ms } = armed.rec.contract.activation else {
        panic!("a standby contract activates on handover");
    };

    // The lie is on the chain: a block applied an unreachable attestation of this contract's
    // customer by the byzantine arbitrator (printed by its replica, which applies the same
    // blocks as the honest ones).
    let lie = format!("byzantine: false attestation contract={}", armed.id);
    let recorded = format!("byzantine: attestation recorded subject={customer} ");
    let count = |prefix: &str| {
        byzantine_lines(&bad_dir)
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    };
    wait_for(
        "a false attestation to be decided and applied",
        60,
        async || (count(&recorded) > 0).then_some(()),
    )
    .await
    .unwrap();
    let lied_at = agora_wire::now_ms();
    // The chain's own clock passes the clause by a wide margin while the lie is repeated.
    let c = ApiClient::for_data_dir(&s.m.nodes[obs].data_dir).unwrap();
    let past = lied_at + unreachable_for_ms + 6_000;
    wait_for("the handover clause to pass on the chain", 60, async || {
        let st: LedgerStatus = c.get("/v1/ledger/status").await.ok()?;
        st.last_block_at.filter(|at| *at >= past).map(|_| ())
    })
    .await
    .unwrap();
    let (lies, applied) = (count(&lie), count(&recorded));
    assert!(
        lies >= 2 && applied >= 2,
        "the lie was repeated and applied ({lies} submitted, {applied} applied)"
    );
    let mut seen = 0;
    for i in (0..CONTRACT_NODES).filter(|i| *i != BAD) {
        let rec = s.contract(i, &armed.id).await.unwrap();
        assert_eq!(
            rec.status,
            ContractStatus::Armed,
            "node{i}: no handover: {rec:?}"
        );
        assert!(
            rec.handover.is_none() && rec.trigger_at.is_none(),
            "node{i}: {rec:?}"
        );
        assert!(
            rec.activated_at.is_none(),
            "node{i}: B not activated: {rec:?}"
        );
        assert_eq!(rec.paid_to_provider, 0, "node{i}: nobody paid");
        seen += 1;
    }
    assert_eq!(seen, CONTRACT_NODES - 1);
    let after = (
        s.account(obs, &customer).await.unwrap(),
        s.account(obs, &provider).await.unwrap(),
    );
    for (who, b, a) in [
        ("customer", &before.0, &after.0),
        ("provider", &before.1, &after.1),
    ] {
        assert_eq!(
            (a.locked, a.reputation),
            (b.locked, b.reputation),
            "{who}: nothing released, paid or slashed"
        );
    }
    assert!(
        alive(u64::from(s.m.nodes[BAD].pid.unwrap())),
        "the byzantine node is still running (and still lying)"
    );

    // Control: a real failure of A hands over, the liar's vote counting or not.
    let killed = s.kill(s.a).unwrap();
    s.failover(&armed, killed).await.unwrap();
    let rec = s.contract(obs, &armed.id).await.unwrap();
    let agreeing = rec.handover.map(|h| h.agreeing).unwrap_or_default();
    let n = armed.rec.contract.committee.len();
    let honest_agreeing = agreeing.iter().filter(|m| m.to_string() != bad).count();
    // 2f + 1 agreed, so at least f + 1 of them honest whatever the liar did.
    let (quorum, f) = (agora_contracts::attestation::quorum(n), (n - 1) / 3);
    assert!(
        agreeing.len() >= quorum && honest_agreeing > f,
        "handover agreed by {} of {n} ({honest_agreeing} honest)",
        agreeing.len()
    );
    let agreeing = agreeing.len();
    eprintln!(
        "{lies} false attestations submitted, {applied} applied before the real failure; \
         handover agreed by {agreeing}"
    );
    s.down(true).await.unwrap();
}
