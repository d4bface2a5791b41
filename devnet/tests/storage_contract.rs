//! Storage contracts on real swarms: a customer auctions the keeping of a file; the winner
//! fetches, checks and pins it; the arbitrators challenge it for random chunks and record each
//! outcome on the ledger; once the provider drops the data its answers fail, and settlement
//! slashes its stake to the customer.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_contracts::{
    ContractId, ContractKind, ContractRecord, ContractStatus, SettleReason, TxKind,
};
use agora_devnet::Devnet;
use agora_devnet::files::CONTRACT_NODES;
use agora_market::{AuctionKind, AuctionSpec, Input, ReservationKey, Resources};
use agora_storage::CidVersion;

const WAIT: Duration = Duration::from_secs(60);

async fn storage_contract(net: &Devnet, customer: usize) -> Option<(ContractId, ContractRecord)> {
    let me = net.node_id(customer);
    let l = net.node(customer).unwrap().ledger.clone().unwrap();
    l.query(move |v| {
        v.ledger
            .contracts()
            .iter()
            .find(|(_, r)| r.contract.customer == me && r.contract.kind == ContractKind::Storage)
            .map(|(id, r)| (*id, r.clone()))
    })
    .await
    .unwrap()
}

/// Node `i`'s spendable balance on its own ledger.
async fn balance(net: &Devnet, i: usize) -> u64 {
    let l = net.node(i).unwrap().ledger.clone().unwrap();
    let me = net.node_id(i);
    l.query(move |v| v.ledger.account(&me).map(|a| a.balance).unwrap_or(0))
        .await
        .unwrap()
}

async fn record(net: &Devnet, i: usize, id: ContractId) -> ContractRecord {
    let l = net.node(i).unwrap().ledger.clone().unwrap();
    l.query(move |v| v.ledger.contract(&id).cloned())
        .await
        .unwrap()
        .unwrap()
}

async fn wait_record(
    net: &Devnet,
    i: usize,
    id: ContractId,
    what: &str,
    mut ok: impl FnMut(&ContractRecord) -> bool,
) -> ContractRecord {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = record(net, i, id).await;
        if ok(&r) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened; contract is {:?} with {} passed / {} failed challenges",
            r.status,
            r.storage_passed,
            r.storage_failed
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Node `customer` adds a 700 kB file (three 256 KiB chunks) and auctions keeping it with
/// `storage_bytes` of storage; returns the file's CID and the contract once registered.
async fn auction_storage(
    net: &Devnet,
    customer: usize,
    storage_bytes: u64,
) -> (String, ContractId, ContractRecord) {
    let n0 = net.node(customer).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("data.bin");
    let data: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let file = n0.storage.add_file(path, CidVersion::V0).await.unwrap().cid;
    // Every provider bids only once its market holds its running contracts (THREATS C35).
    net.wait_markets_ready(WAIT).await.unwrap();
    let spec = AuctionSpec {
        region: "default".into(),
        resources: Resources {
            storage_bytes,
            ..Resources::default()
        },
        duration_ms: 120_000,
        max_price: 1_000,
        window_ms: 1_500,
        kind: AuctionKind::Storage,
        near: None,
        award_grace_ms: 30_000,
        service: Some(file.clone()),
        start_at: None,
    };
    n0.market.input(Input::CreateAuction(spec)).await.unwrap();
    // Auction, award, dual signature, escrow.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some((id, rec)) = storage_contract(net, customer).await {
            return (file, id, rec);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no storage contract"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_contract_is_audited_and_a_provider_that_drops_the_data_is_slashed() {
    let net = Devnet::builder()
        .nodes(CONTRACT_NODES)
        .spawn()
        .await
        .unwrap();
    net.wait_connected(CONTRACT_NODES - 1, WAIT).await.unwrap();
    let customer = 0;
    let n0 = net.node(customer).unwrap();
    // The provider takes custody and activates.
    let (file, id, rec) = auction_storage(&net, customer, 1 << 20).await;
    assert_eq!(rec.contract.service_image.to_string(), file);
    assert_ne!(
        rec.contract.config, rec.contract.service_image,
        "the config names the customer's chunk commitment"
    );
    let provider = (0..net.len())
        .find(|i| net.node_id(*i) == rec.contract.provider)
        .unwrap();
    wait_record(&net, customer, id, "activation", |r| {
        r.status == ContractStatus::Active
    })
    .await;
    let pinned = net.node(provider).unwrap().storage.ls().await.unwrap().pins;
    assert!(pinned.contains(&file), "the provider pinned the file");
    // THREATS C25: the file's chunk tree is kept on disk for a restart.
    let tree = net
        .data_dir(provider)
        .join(agora_exchange::custody::TREES_DIR)
        .join(format!("{file}.tree"));
    assert!(tree.exists(), "no kept tree at {}", tree.display());
    // THREATS C20: the provider's market holds the award's capacity until the contract's end
    // once it is registered (not for good, and not only the 11 min an unregistered award gets).
    let registered = rec.registered_at;
    let end = registered + rec.contract.duration_ms;
    let p = net.node(provider).unwrap();
    let mut held = None;
    // The deal task asks the ledger every 2 s whether the contract is registered.
    for _ in 0..200 {
        held = p
            .market
            .query(|s| {
                s.ledger()
                    .reservations()
                    .iter()
                    .filter_map(|(k, r)| Some((r.expires_at?, *k)))
                    .max()
            })
            .await
            .unwrap();
        if held.is_some_and(|(t, _)| t == end + agora_market_driver::deals::CONTRACT_HOLD_SLACK_MS)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (held, hold_key) = held.expect("the award's capacity is held");
    assert_eq!(
        held,
        end + agora_market_driver::deals::CONTRACT_HOLD_SLACK_MS,
        "held until the contract's end and the slack"
    );

    // The arbitrators challenge the honest provider: every challenge passes.
    let honest = wait_record(&net, customer, id, "two passed challenges", |r| {
        r.storage_passed >= 2
    })
    .await;
    assert_eq!(honest.storage_failed, 0, "an honest provider fails nothing");
    // Each arbitrator had the provider show the commitment once and kept it (THREATS P4).
    let pstore = &net.node(provider).unwrap().storage;
    let shown = pstore.challenge_gate().stats().commitments_shown;
    let members = rec.contract.committee.len() as u64;
    assert!(
        (1..=members).contains(&shown),
        "{shown} commitments shown to a committee of {members}"
    );
    // It shows the commitment only for the contract's file, and no other block as one.
    let commitment = rec.contract.config;
    let root = file.parse().unwrap();
    assert!(pstore.show_commitment(root, commitment).await.is_ok());
    assert!(
        pstore
            .show_commitment(commitment, commitment)
            .await
            .is_err()
    );
    assert!(pstore.show_commitment(root, root).await.is_err());

    // The provider drops the data; its answers now fail.
    // Its custody holds the file (the operator's unpin is refused while it does): a provider
    // that drops it lets go of every hold.
    let err = pstore.unpin(root).await.unwrap_err().to_string();
    assert!(err.contains("is held by custody:"), "{err}");
    let holders = pstore.ls().await.unwrap().held[&file].clone();
    for holder in holders {
        pstore.release(root, &holder).await.unwrap();
    }
    assert!(!pstore.ls().await.unwrap().pins.contains(&file));
    pstore.gc().await.unwrap();
    // An early end is judged against the whole term (THREATS C12): the customer waits until
    // the failed rounds exceed what the term's rounds allow, so the breach is certain.
    let judged = wait_record(
        &net,
        customer,
        id,
        "failures beyond the term's allowance",
        |r| {
            let term_rounds = r.contract.duration_ms / r.evidence_period_ms();
            let allowed = 1000 - u64::from(r.contract.qos.min_uptime_permille);
            r.storage_failed * 1000 > allowed * term_rounds
        },
    )
    .await;
    let customer_before = balance(&net, customer).await;
    // A tree of no live custody here, as one that ended while the provider was down leaves:
    // only the retain after a block that ends a contract the provider provides removes it
    // (`let_go_of_ended` in the orchestrator's `on_block`; the contract's own tree also goes
    // with its custody, below).
    let stray = tree.with_file_name(format!("{commitment}.tree"));
    std::fs::write(&stray, b"left behind").unwrap();

    // The customer settles: the evidence says breach, so the provider's stake is slashed to
    // the customer.
    n0.ledger
        .clone()
        .unwrap()
        .submit(TxKind::Settle {
            contract: id,
            reason: SettleReason::CustomerBack,
        })
        .await
        .unwrap();
    let closed = wait_record(&net, customer, id, "slashing", |r| {
        r.status == ContractStatus::Slashed
    })
    .await;
    assert!(closed.storage_failed >= judged.storage_failed);
    // The kept tree goes with the contract's custody.
    let mut gone = false;
    for _ in 0..300 {
        gone = !tree.exists() && !stray.exists();
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!tree.exists(), "the kept tree outlived its custody");
    assert!(
        gone,
        "a kept tree of no live custody outlived the block that ended the provider's contract"
    );
    // The contract closed long before its end: the provider lets its capacity go at once
    // (the deal task's follower sees it closed within 2 s; the market's next tick drops it).
    let mut released = false;
    for _ in 0..300 {
        released = !p
            .market
            .query(move |s| s.ledger().reservations().contains_key(&hold_key))
            .await
            .unwrap();
        if released {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        released,
        "the closed contract's capacity is released before its end"
    );
    let customer_after = balance(&net, customer).await;
    assert!(
        customer_after >= customer_before + rec.contract.stakes.provider_stake,
        "the provider's stake went to the customer ({customer_before} -> {customer_after})"
    );
    net.shutdown().await;
}

/// THREATS C35: a restarted provider's market holds the capacity of the contract it still runs
/// before it takes any work. The hold lived only in memory: after a restart all of the
/// capacity looked free, and the provider bid on and hosted work beyond it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_provider_holds_its_running_contract_before_it_bids() {
    let mut net = Devnet::builder()
        .nodes(CONTRACT_NODES)
        .spawn()
        .await
        .unwrap();
    net.wait_connected(CONTRACT_NODES - 1, WAIT).await.unwrap();
    let (_, id, rec) = auction_storage(&net, 0, 1 << 20).await;
    let provider = (0..net.len())
        .find(|i| net.node_id(*i) == rec.contract.provider)
        .unwrap();
    wait_record(&net, 0, id, "activation", |r| {
        r.status == ContractStatus::Active
    })
    .await;
    net.stop(provider).await;
    net.restart(provider).await.unwrap();
    let p = net.node(provider).unwrap();
    let key = ReservationKey::Contract(id.0);
    let deadline = tokio::time::Instant::now() + WAIT;
    let (held, free) = loop {
        let (restored, held, free, reservations) = p
            .market
            .query(move |s| {
                let l = s.ledger();
                (
                    s.capacity_restored(),
                    l.reservations().get(&key).cloned(),
                    l.available().clone(),
                    l.reservations().len(),
                )
            })
            .await
            .unwrap();
        if restored {
            break (held, free);
        }
        // Until then it holds nothing: it has bid on nothing and taken no offer.
        assert_eq!(reservations, 0, "a hold before the running contract's");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted market never held its running contract"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rec = record(&net, provider, id).await;
    assert!(
        !rec.status.is_final(),
        "the contract closed meanwhile: {:?}",
        rec.status
    );
    let held = held.expect("the running contract's capacity is held");
    assert_eq!(held.resources.storage_bytes, 1 << 20);
    assert_eq!(
        held.expires_at,
        Some(agora_market_driver::holds::held_until(&rec)),
        "held until the contract's end and the slack"
    );
    let capacity = p
        .market
        .query(|s| s.ledger().capacity().clone())
        .await
        .unwrap();
    assert!(
        free.storage_bytes <= capacity.storage_bytes - (1 << 20),
        "the running contract's storage looks free: {} of {}",
        free.storage_bytes,
        capacity.storage_bytes
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_the_storage_bought_is_refused_and_the_contract_cancelled() {
    let net = Devnet::builder()
        .nodes(CONTRACT_NODES)
        .spawn()
        .await
        .unwrap();
    net.wait_connected(CONTRACT_NODES - 1, WAIT).await.unwrap();
    // 700 kB of file, but only 100 KiB of storage bought.
    let (file, id, rec) = auction_storage(&net, 0, 100 * 1024).await;
    let provider = (0..net.len())
        .find(|i| net.node_id(*i) == rec.contract.provider)
        .unwrap();
    wait_record(&net, 0, id, "cancellation", |r| {
        r.status == ContractStatus::Cancelled
    })
    .await;
    let pins = net.node(provider).unwrap().storage.ls().await.unwrap().pins;
    assert!(!pins.contains(&file), "the provider pinned nothing");
    net.shutdown().await;
}

/// THREATS C19: a customer's file that declares far more than the storage bought (a DAG of five
/// small blocks whose links repeat one block, 174^4 bytes declared) is refused by the provider's
/// custody from its root's declared size, before the commitment is built over it (which reads
/// and hashes every leaf); the fetch itself took a few hundred bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_declaring_more_than_the_storage_bought_is_refused_before_it_is_read() {
    use agora_exchange::StoreBackend as _;
    use agora_storage::challenge::StorageCommitment;
    use agora_storage::dagpb::{PbLink, PbNode};
    use agora_storage::hash::{DAG_PB, RAW, cid_v1_sha256};
    use agora_storage::unixfs::{DataType, UnixFsData};

    let net = Devnet::builder().nodes(2).spawn().await.unwrap();
    net.wait_connected(1, WAIT).await.unwrap();
    let customer = net.node(0).unwrap().storage.embedded().unwrap().clone();
    let mut node = cid_v1_sha256(RAW, b"x");
    customer.put_block(node, b"x".to_vec()).await.unwrap();
    let mut size = 1u64;
    for _ in 0..4 {
        let fs = UnixFsData {
            kind: DataType::File,
            data: None,
            filesize: Some(size * 174),
            blocksizes: vec![size; 174],
        };
        let block = PbNode {
            links: (0..174)
                .map(|_| PbLink {
                    cid: node,
                    name: Some(String::new()),
                    tsize: Some(size),
                })
                .collect(),
            data: Some(fs.encode()),
        }
        .encode();
        node = cid_v1_sha256(DAG_PB, &block);
        customer.put_block(node, block).await.unwrap();
        size *= 174;
    }
    let file = node;
    let claimed = StorageCommitment::from_chunks(file, &[b"x".to_vec()]).unwrap();
    let (commitment, block) = agora_exchange::custody::commitment_block(&claimed).unwrap();
    customer.put_block(commitment, block).await.unwrap();
    let provider = &net.node(1).unwrap().storage;
    let err = tokio::time::timeout(
        WAIT,
        provider.take_custody(file, commitment, 1 << 20, "test"),
    )
    .await
    .expect("refused in time")
    .unwrap_err();
    assert!(
        err.to_string().contains("declares 916636176 bytes"),
        "{err}"
    );
    // THREATS R6: a bounded fetch of it to a file (a firmware job's image) is refused before
    // a byte is written, instead of writing the 916 MB it declares.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("image");
    let (progress, _rx) = tokio::sync::watch::channel(agora_exchange::FetchProgress::default());
    let cfg = agora_exchange::FetchConfig {
        max_bytes: Some(8 << 20),
        ..provider.fetch_config()
    };
    let err = provider
        .get_file(file, out.clone(), &progress, cfg)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("declares 916636176 bytes"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0), 0);
    net.shutdown().await;
}

/// Storage audit of session 50: a contract's commitment must be a raw blake3 block — a `config`
/// naming a DAG (here the customer's 700 kB file itself) is refused before a block is fetched,
/// where before the provider fetched the whole DAG; and the blocks of a custody fetch that
/// failed (a file larger than the storage bought) are left to the next automatic collection,
/// which before never ran for them (nothing was unpinned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_as_commitment_is_refused_unfetched_and_a_failed_custody_fetch_is_collected() {
    let net = Devnet::builder().nodes(2).spawn().await.unwrap();
    net.wait_connected(1, WAIT).await.unwrap();
    let customer = &net.node(0).unwrap().storage;
    let provider = &net.node(1).unwrap().storage;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("data.bin");
    let data: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let file: agora_storage::Cid = customer
        .add_file(path, CidVersion::V0)
        .await
        .unwrap()
        .cid
        .parse()
        .unwrap();
    let blocks_before = provider.ls().await.unwrap().blocks;

    let err = tokio::time::timeout(WAIT, provider.take_custody(file, file, 1 << 20, "test"))
        .await
        .expect("refused in time")
        .unwrap_err();
    assert!(err.to_string().contains("not a raw blake3 block"), "{err}");
    assert_eq!(
        provider.ls().await.unwrap().blocks,
        blocks_before,
        "the provider fetched blocks of a DAG named as a commitment"
    );

    let (commitment, _) = customer.commit_file(file).await.unwrap();
    let gate = provider.embedded().unwrap().gc_gate();
    assert!(!gate.has_unpinned(), "nothing was unpinned yet");
    let err = tokio::time::timeout(
        WAIT,
        provider.take_custody(file, commitment, 100 * 1024, "test"),
    )
    .await
    .expect("refused in time")
    .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    assert!(
        provider.ls().await.unwrap().blocks > blocks_before,
        "the refused fetch stored part of the file"
    );
    // Collected at the next automatic collection (60 s; run here at once).
    assert!(
        gate.has_unpinned(),
        "the failed fetch's blocks are not marked for the next collection"
    );
    provider.gc().await.unwrap();
    assert_eq!(provider.ls().await.unwrap().blocks, blocks_before);
    net.shutdown().await;
}

/// Device audit of session 50: firmware images are loaded through a temporary file of their
/// own; many loads at once (one edge resuming several hand-offs) each get their own image's
/// bytes, where a name from the pid and the millisecond was shared and overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_firmware_loads_each_read_their_own_image() {
    let net = Devnet::builder().nodes(1).spawn().await.unwrap();
    let storage = net.node(0).unwrap().storage.clone();
    let tmp = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for k in 0..16u8 {
        let path = tmp.path().join(format!("fw{k}"));
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i as u8) ^ k).collect();
        std::fs::write(&path, &bytes).unwrap();
        let cid = storage.add_file(path, CidVersion::V1).await.unwrap().cid;
        images.push((cid, bytes));
    }
    let loads = images.iter().map(|(cid, _)| {
        let storage = storage.clone();
        let cid = cid.clone();
        tokio::spawn(async move { agora_radio::firmware::load_image(&storage, &cid).await })
    });
    let mut loaded = Vec::new();
    for load in loads.collect::<Vec<_>>() {
        loaded.push(load.await);
    }
    for ((cid, want), got) in images.iter().zip(loaded) {
        let got = got.unwrap().unwrap();
        assert!(got == *want, "{cid}: another image's bytes");
    }
    net.shutdown().await;
}

/// THREATS C25 (review of session 51): a custody of a file refused before its hold (here a
/// commitment to another file) leaves the kept tree of the file's live custody alone; the
/// tree goes only with the file's last custody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_custody_leaves_the_kept_tree_of_the_files_live_custody() {
    let net = Devnet::builder().nodes(1).spawn().await.unwrap();
    let node = net.node(0).unwrap();
    let s = &node.storage;
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for seed in 0..2u32 {
        let path = tmp.path().join(format!("data{seed}.bin"));
        let data: Vec<u8> = (0..600_000u32).map(|i| (i * 31 + seed) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file: agora_storage::Cid = s
            .add_file(path, CidVersion::V0)
            .await
            .unwrap()
            .cid
            .parse()
            .unwrap();
        files.push(file);
    }
    let (file, other) = (files[0], files[1]);
    let (commitment, _) = s.commit_file(file).await.unwrap();
    let (other_commitment, _) = s.commit_file(other).await.unwrap();
    s.take_custody(file, commitment, 1 << 20, "custody:a")
        .await
        .unwrap();
    let tree = net
        .data_dir(0)
        .join(agora_exchange::custody::TREES_DIR)
        .join(format!("{file}.tree"));
    assert!(tree.exists(), "custody keeps the tree");
    let err = s
        .take_custody(file, other_commitment, 1 << 20, "custody:x")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not for the contract's file"),
        "{err}"
    );
    assert!(
        tree.exists(),
        "a refused custody removed the live one's tree"
    );
    // A second custody of the file, then both end: the tree goes with the last.
    s.take_custody(file, commitment, 1 << 20, "custody:b")
        .await
        .unwrap();
    s.release_custody(file, commitment, "custody:a").await;
    assert!(tree.exists(), "custody:b still holds the file");
    s.release_custody(file, commitment, "custody:b").await;
    assert!(!tree.exists(), "the tree outlived the file's last custody");
    net.shutdown().await;
}
