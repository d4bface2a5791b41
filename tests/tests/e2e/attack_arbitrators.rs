//! Byzantine arbitrators as separate processes (issue #13; THREATS A1, A2, A4): a 7-node devnet
//! of real `agora` processes in which one node runs the test crate's `agora-byzantine` binary
//! (the same node assembly, config and data directory, with misbehaviours switched on from its
//! command line). Each test asserts what the six honest processes still do.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora` (cargo builds
//! `agora-byzantine` itself for this test), then
//! `nice cargo test -p agora-tests --test e2e attack_arbitrators::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_api::client::ApiClient;
use agora_api::ledger::{LedgerStatus, SubmittedReply, TransferRequest};
use agora_contracts::{ActivationClause, ContractStatus};
use agora_devnet::demo::story::wait_for;
use agora_devnet::files::CONTRACT_NODES;
use agora_tests::adversary::{ByzantineLauncher, HostileDevnet, TestLauncher, byzantine_lines};
use agora_tests::{agora_bin, agora_json, alive};

/// One devnet at a time: each test runs seven nodes on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a scenario may take to show its effect under load.
const PATIENCE: Duration = Duration::from_secs(150);

/// A launcher whose node `bad` runs `agora-byzantine` with `args`.
fn byzantine(bad: usize, args: &[&str]) -> ByzantineLauncher {
    byzantines(&[(bad, args)])
}

/// A launcher whose nodes `bad` run `agora-byzantine`, each with its own arguments.
fn byzantines(bad: &[(usize, &[&str])]) -> ByzantineLauncher {
    ByzantineLauncher {
        honest: TestLauncher(agora_bin()),
        exe: env!("CARGO_BIN_EXE_agora-byzantine").into(),
        bad: bad
            .iter()
            .map(|(i, args)| (*i, args.iter().map(|a| a.to_string()).collect()))
            .collect(),
        tune: None,
    }
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

/// A11: one arbitrator process floods every height, as soon as it starts, with signed
/// proposals — four distinct blocks for each round it proposes among the first 400, about 230
/// per height, more than the 128 candidate blocks a replica keeps for a height. The honest
/// replicas take at most two blocks per round and none more than ten rounds ahead, so the
/// honest proposers' blocks still find room: transfers keep finalising on every node, heights
/// are still decided in their first round, and the honest nodes count the flood's extra blocks
/// as refused consensus input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_arbitrator_process_flooding_proposals_cannot_halt_the_chain() {
    let _serial = SERIAL.lock().await;
    const BAD: usize = 3;
    let launcher = byzantine(BAD, &["--flood-proposals"]);
    let net = HostileDevnet::up_with(CONTRACT_NODES, &launcher)
        .await
        .unwrap();
    wait_misbehaving(&net.node(BAD).data_dir, "flood-proposals").await;
    let honest: Vec<usize> = (0..net.len()).filter(|i| *i != BAD).collect();
    let start = status(&net, 0).await.height;
    let deadline = Instant::now() + PATIENCE;
    let mut transfers = 0;
    // A full rotation of proposers and more, each transfer final before the next: every
    // height starts with a flood, and honest proposers must still get their blocks decided.
    let refused = loop {
        net.transfer_finalises(1, 2, 1).await.unwrap();
        transfers += 1;
        let mut refused = Vec::new();
        for &i in &honest {
            refused.push(status(&net, i).await.consensus_refused);
        }
        if refused.iter().all(|r| *r > 0) && transfers > CONTRACT_NODES {
            break refused;
        }
        assert!(
            Instant::now() < deadline,
            "after {transfers} transfers not every honest node refused part of the flood              ({refused:?}): is the byzantine node flooding?"
        );
    };
    for i in 0..net.len() {
        let s = cli_status(&net.data_dir(i));
        assert!(
            s.height >= start + transfers as u64,
            "node{i}: the chain kept deciding ({start} -> {})",
            s.height
        );
    }
    let mut later = Vec::new();
    for &i in &honest {
        let s = status(&net, i).await;
        later.push((s.height - start, s.pacing.decided_in_later_round));
    }
    eprintln!(
        "{transfers} transfers through the flood; consensus input refused by node: {refused:?}; \
         (heights, decided in a later round): {later:?}"
    );
    // The honest round-0 proposals are taken, so heights are not pushed into later rounds (in
    // the code before the fix nearly every height was, when it was decided at all; half is
    // room for the rounds a loaded machine loses on its own).
    for (i, (heights, in_later_round)) in later.iter().enumerate() {
        assert!(
            in_later_round * 2 <= *heights,
            "honest node {}: {in_later_round} of {heights} heights decided after round 0",
            honest[i]
        );
    }
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
    let launcher = Arc::new(byzantine(BAD, &["--false-attest", "--no-bid"]));
    let Some((_tmp, mut s)) = agora_tests::story(
        "a_false_attestation_by_one_arbitrator_process_triggers_no_handover",
        launcher,
    )
    .await
    else {
        return;
    };
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

/// The ledger's view of node `i`: (height, state hash).
async fn tip(net: &HostileDevnet, i: usize) -> (u64, String) {
    let s = status(net, i).await;
    (s.height, s.state_hash)
}

/// Asserts that every pair of nodes at the same height has the same state: no replica
/// decided anything the others did not.
async fn same_state_at_same_height(net: &HostileDevnet) {
    let mut tips = Vec::new();
    for i in 0..net.len() {
        tips.push(tip(net, i).await);
    }
    for (i, a) in tips.iter().enumerate() {
        for (j, b) in tips.iter().enumerate().skip(i + 1) {
            if a.0 == b.0 {
                assert_eq!(a.1, b.1, "node{i} and node{j} differ at height {}", a.0);
            }
        }
    }
}

/// A5: withheld votes, on a 4-arbitrator devnet (f = 1). One arbitrator process that never
/// sends a prevote or precommit cannot stop the chain: transfers finalise. When a second
/// one withholds too (f + 1 = 2 of 4, below the 2f + 1 quorum) the chain stops: over a 20 s
/// window no replica gets past the height in flight, a transfer submitted meanwhile is
/// applied nowhere, and replicas at the same height hold the same state. When that second
/// arbitrator is restarted as an honest `agora` process the chain resumes: the waiting
/// transfer is applied exactly once on every replica and new ones finalise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withholding_arbitrator_processes_one_of_four_cannot_stop_the_chain_two_can_until_one_votes_again()
 {
    let _serial = SERIAL.lock().await;
    const NODES: usize = 4;
    const FIRST: usize = 3;
    const SECOND: usize = 2;
    let args = ["--withhold-votes"];
    let mut net = HostileDevnet::up_with(NODES, &byzantine(FIRST, &args))
        .await
        .unwrap();
    wait_misbehaving(&net.node(FIRST).data_dir, "withhold-votes").await;

    // f = 1 withholding: the other three are a quorum.
    let start = status(&net, 0).await.height;
    for _ in 0..3 {
        net.transfer_finalises(0, 1, 1).await.unwrap();
    }
    let after_one = status(&net, 0).await.height;
    assert!(after_one >= start + 3, "decided {start} -> {after_one}");
    same_state_at_same_height(&net).await;

    // f + 1 = 2 withholding.
    net.restart_with(SECOND, &byzantine(SECOND, &args))
        .await
        .unwrap();
    wait_misbehaving(&net.node(SECOND).data_dir, "withhold-votes").await;
    let mut top = 0;
    for i in 0..NODES {
        top = top.max(status(&net, i).await.height);
    }
    let to = 1;
    let mut was = Vec::new();
    for i in 0..NODES {
        was.push(net.balance(i, to).await.unwrap());
    }
    let req = TransferRequest {
        to: net.node_id(to).to_string(),
        amount: 7,
    };
    let _: SubmittedReply = net
        .client(0)
        .unwrap()
        .post("/v1/ledger/transfer", &req)
        .await
        .unwrap();
    // A negative observation needs a window: many consensus rounds (timeouts of 1-3 s) fit
    // in 20 s, polled throughout.
    let window = Instant::now() + Duration::from_secs(20);
    while Instant::now() < window {
        for i in 0..NODES {
            let h = status(&net, i).await.height;
            assert!(
                h <= top + 1,
                "node{i} decided height {h} with 2 of 4 withholding (top was {top})"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut stalled = Vec::new();
    for i in 0..NODES {
        stalled.push(status(&net, i).await.height);
    }
    // Nothing was in flight when the second one stopped voting (each transfer before was
    // final everywhere), so the transfer submitted since must be applied nowhere.
    let stuck = *stalled.iter().max().unwrap();
    for (i, was) in was.iter().enumerate() {
        let now = net.balance(i, to).await.unwrap();
        assert_eq!(
            now, *was,
            "node{i}: the transfer was applied while 2 of 4 withheld their votes"
        );
    }
    same_state_at_same_height(&net).await;
    eprintln!("stalled at heights {stalled:?} (top before {top})");

    // The second one comes back honest: 3 of 4 vote again.
    net.restart_with(SECOND, &TestLauncher(agora_bin()))
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    for (i, &was) in was.iter().enumerate() {
        loop {
            let now = net.balance(i, to).await.unwrap_or(was);
            if now >= was + req.amount {
                assert_eq!(now, was + req.amount, "node{i}: applied exactly once");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node{i}: the waiting transfer was not applied after the arbitrator came back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    net.transfer_finalises(1, 0, 1).await.unwrap();
    let mut resumed = Vec::new();
    for i in 0..NODES {
        resumed.push(status(&net, i).await.height);
    }
    assert!(resumed.iter().all(|h| *h > stuck), "resumed: {resumed:?}");
    same_state_at_same_height(&net).await;
    eprintln!("resumed at heights {resumed:?}");
    net.assert_alive();
}

/// A5 and A4 together on a 7-arbitrator devnet (f = 2): node 0 withholds every vote and
/// node 1 does not, and both collude to attest the live customer A of an armed standby
/// contract unreachable (dated back past the handover clause, every 3 s); neither bids, so
/// both sit on the contract's committee of 5, whose quorum is 4. The chain keeps deciding
/// without node 0's votes (the contract is armed, the lies are applied), yet two liars are
/// no quorum: once the chain's clock is past the clause the contract is still armed on every
/// honest replica, nothing paid. Then A is killed for real (a second fault among the
/// arbitrators: 5 of 7 still vote) and the handover to B completes with a quorum in which
/// at least two honest members agreed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withholding_arbitrator_and_two_colluding_liars_neither_stop_the_chain_nor_hand_over() {
    let _serial = SERIAL.lock().await;
    const WITHHOLDER: usize = 0;
    const LIAR: usize = 1;
    let withholder: &[&str] = &["--withhold-votes", "--false-attest", "--no-bid"];
    let liar: &[&str] = &["--false-attest", "--no-bid"];
    let launcher = Arc::new(byzantines(&[(WITHHOLDER, withholder), (LIAR, liar)]));
    let Some((_tmp, mut s)) = agora_tests::story(
        "a_withholding_arbitrator_and_two_colluding_liars_neither_stop_the_chain_nor_hand_over",
        launcher,
    )
    .await
    else {
        return;
    };
    let bad_dirs = [
        s.m.nodes[WITHHOLDER].data_dir.clone(),
        s.m.nodes[LIAR].data_dir.clone(),
    ];
    wait_misbehaving(&bad_dirs[0], "withhold-votes").await;
    for d in &bad_dirs {
        wait_misbehaving(d, "false-attest").await;
    }
    // Armed with node 0 withholding: the chain decided the contract.
    let armed = s.standby().await.unwrap();
    let liars: Vec<String> = [WITHHOLDER, LIAR]
        .iter()
        .map(|i| s.m.nodes[*i].node_id.clone())
        .collect();
    assert!(![WITHHOLDER, LIAR].contains(&armed.b), "liars do not bid");
    let committee: Vec<String> = armed
        .rec
        .contract
        .committee
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert!(
        liars.iter().all(|l| committee.contains(l)),
        "both liars sit on the committee {committee:?}"
    );
    let n = committee.len();
    let quorum = agora_contracts::attestation::quorum(n);
    assert!(
        liars.len() < quorum,
        "{} liars of {n}, quorum {quorum}",
        liars.len()
    );
    let obs = (0..CONTRACT_NODES)
        .find(|i| ![s.a, armed.b, WITHHOLDER, LIAR].contains(i))
        .unwrap();
    let customer = armed.rec.contract.customer.to_string();
    let ActivationClause::OnHandover { unreachable_for_ms } = armed.rec.contract.activation else {
        panic!("a standby contract activates on handover");
    };
    let recorded = format!("byzantine: attestation recorded subject={customer} ");
    let applied = |d: &Path| {
        byzantine_lines(d)
            .iter()
            .filter(|l| l.starts_with(&recorded))
            .count()
    };
    wait_for("both liars' attestations to be applied", 90, async || {
        bad_dirs
            .iter()
            .all(|d| applied(d.as_path()) > 0)
            .then_some(())
    })
    .await
    .unwrap();
    let lied_at = agora_wire::now_ms();
    let c = ApiClient::for_data_dir(&s.m.nodes[obs].data_dir).unwrap();
    let past = lied_at + unreachable_for_ms + 6_000;
    wait_for("the handover clause to pass on the chain", 90, async || {
        let st: LedgerStatus = c.get("/v1/ledger/status").await.ok()?;
        st.last_block_at.filter(|at| *at >= past).map(|_| ())
    })
    .await
    .unwrap();
    for i in (0..CONTRACT_NODES).filter(|i| ![WITHHOLDER, LIAR].contains(i)) {
        let rec = s.contract(i, &armed.id).await.unwrap();
        assert_eq!(rec.status, ContractStatus::Armed, "node{i}: {rec:?}");
        assert!(
            rec.handover.is_none() && rec.trigger_at.is_none() && rec.activated_at.is_none(),
            "node{i}: no handover: {rec:?}"
        );
        assert_eq!(rec.paid_to_provider, 0, "node{i}: nobody paid");
    }
    let lies: Vec<usize> = bad_dirs.iter().map(|d| applied(d.as_path())).collect();

    // A real failure: A killed. With node 0 silent too, 5 of 7 arbitrators vote.
    let killed = s.kill(s.a).unwrap();
    s.failover(&armed, killed).await.unwrap();
    let rec = s.contract(obs, &armed.id).await.unwrap();
    let agreeing = rec.handover.map(|h| h.agreeing).unwrap_or_default();
    let honest_agreeing = agreeing
        .iter()
        .filter(|m| !liars.contains(&m.to_string()))
        .count();
    assert!(
        agreeing.len() >= quorum && honest_agreeing >= quorum - liars.len(),
        "handover agreed by {} of {n} ({honest_agreeing} honest)",
        agreeing.len()
    );
    for i in [WITHHOLDER, LIAR] {
        assert!(
            alive(u64::from(s.m.nodes[i].pid.unwrap())),
            "byzantine node{i} still running"
        );
    }
    eprintln!(
        "lies applied per liar before the real failure: {lies:?}; handover agreed by {} \
         ({honest_agreeing} honest) of {n}",
        agreeing.len()
    );
    s.down(true).await.unwrap();
}
