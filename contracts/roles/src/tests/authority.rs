//! The device authority rule.

use super::*;
use agora_contracts::ledger::SettleReason;

const TIMING: Timing = Timing {
    provider_lease_ms: PROVIDER_LEASE_MS,
    owner_suspend_ms: 1_100,
    clock_margin_ms: CLOCK_MARGIN_MS,
};

fn group(chain: &Chain) -> Vec<Group> {
    vec![Group {
        image: Chain::image(),
        devices: vec![101],
        owner: chain.customer.node_id(),
    }]
}

fn authority(chain: &Chain) -> DeviceAuthority {
    let map = device_authority(
        chain.ledger.last_block_time(),
        chain.ledger.contracts(),
        &group(chain),
        TIMING,
    );
    map[&101].clone()
}

#[test]
fn the_owner_holds_its_devices_without_a_contract_in_effect() {
    let mut chain = Chain::new();
    let a = authority(&chain);
    assert_eq!(a.manager, chain.customer.node_id());
    assert_eq!((a.lease_until, a.previous.len()), (None, 0));
    // Registered, armed: still the owner's.
    let (id, _) = chain.register(Chain::standby().signed());
    let p = chain.provider.clone();
    chain.block(vec![
        (&p, TxKind::MarkMigrated(id)),
        (&p, TxKind::MarkArmed(id)),
    ]);
    assert_eq!(authority(&chain).manager, chain.customer.node_id());
}

#[test]
fn a_handover_gives_the_provider_a_lease_after_the_owner_certainly_stopped() {
    let mut chain = Chain::new();
    let (id, _) = chain.register(Chain::standby().signed());
    let p = chain.provider.clone();
    chain.block(vec![
        (&p, TxKind::MarkMigrated(id)),
        (&p, TxKind::MarkArmed(id)),
    ]);
    chain.now = 5_000;
    chain.attest_down(1_200);
    let a = authority(&chain);
    assert_eq!(a.manager, chain.provider.node_id());
    assert_eq!(a.lease_until, Some(5_000 + PROVIDER_LEASE_MS));
    assert_eq!(
        a.previous,
        vec![Previous {
            node: chain.customer.node_id(),
            since: 5_000 - CLOCK_MARGIN_MS,
            until: 1_200 + 1_100 + CLOCK_MARGIN_MS,
        }]
    );
}

#[test]
fn after_settling_the_owner_waits_out_the_providers_lease() {
    let mut chain = Chain::new();
    let (id, _) = chain.register(Chain::lenient().signed());
    let p = chain.provider.clone();
    chain.block(vec![
        (&p, TxKind::MarkMigrated(id)),
        (&p, TxKind::MarkArmed(id)),
    ]);
    chain.now = 5_000;
    chain.attest_down(1_000);
    chain.now = 5_100;
    chain.block(vec![(
        &p,
        TxKind::ReportActivation {
            contract: id,
            activated_at: 5_050,
        },
    )]);
    chain.now = 9_000;
    chain.confirm_up(id);
    let c = chain.customer.clone();
    chain.block(vec![(
        &c,
        TxKind::Settle {
            contract: id,
            reason: SettleReason::CustomerBack,
        },
    )]);
    let a = authority(&chain);
    assert_eq!(a.manager, chain.customer.node_id());
    assert_eq!(a.lease_until, None);
    assert_eq!(
        a.previous,
        vec![Previous {
            node: chain.provider.node_id(),
            since: 9_000 - CLOCK_MARGIN_MS,
            until: 9_000 + PROVIDER_LEASE_MS + CLOCK_MARGIN_MS,
        }]
    );
}

#[test]
fn a_strangers_contract_on_the_image_moves_nothing() {
    let mut chain = Chain::new();
    // Seed 3 registers a contract on the same image with itself as customer, seed 4 providing.
    let signed = ContractBuilder::new(3, 4).signed();
    let id = signed.contract.id().unwrap();
    let c = signer(3);
    let p = signer(4);
    chain.block(vec![(&c, TxKind::RegisterContract(Box::new(signed)))]);
    chain.block(vec![
        (&p, TxKind::MarkMigrated(id)),
        (&p, TxKind::MarkArmed(id)),
    ]);
    assert_eq!(
        chain.ledger.contract(&id).unwrap().status,
        agora_contracts::lifecycle::ContractStatus::Armed
    );
    assert_eq!(authority(&chain).manager, chain.customer.node_id());
}

#[test]
fn of_two_contracts_in_effect_the_latest_triggered_manages() {
    let mut chain = Chain::new();
    let early = ContractBuilder::new(1, 2).at(2_000).signed();
    let late = ContractBuilder::new(1, 3).at(3_000).nonce(1).signed();
    let (e, _) = chain.register(early);
    let (l, _) = chain.register(late);
    let (p2, p3) = (signer(2), signer(3));
    chain.block(vec![
        (&p2, TxKind::MarkMigrated(e)),
        (&p2, TxKind::MarkArmed(e)),
        (&p3, TxKind::MarkMigrated(l)),
        (&p3, TxKind::MarkArmed(l)),
    ]);
    chain.now = 2_500;
    chain.block(vec![]);
    assert_eq!(authority(&chain).manager, p2.node_id());
    chain.now = 3_100;
    chain.block(vec![]);
    let a = authority(&chain);
    assert_eq!(a.manager, p3.node_id());
    // The earlier slot's provider may still feed for a lease after the later slot began.
    assert!(
        a.previous
            .iter()
            .any(|x| x.node == p2.node_id()
                && x.until == 3_000 + PROVIDER_LEASE_MS + CLOCK_MARGIN_MS)
    );
}

#[test]
fn keys_go_to_the_providers_of_the_owners_own_open_contracts_only() {
    use agora_contracts::contract::ContractKind;
    use agora_contracts::ledger::ContractRecord;
    use agora_contracts::lifecycle::ContractStatus;
    let owner = signer(1).node_id();
    let record = |b: ContractBuilder, status: ContractStatus| {
        let c = b.build();
        let mut r = ContractRecord::new(c.clone(), 0).unwrap();
        r.status = status;
        (c.id().unwrap(), r)
    };
    let hosted = ContractBuilder::new(1, 2).at(5_000);
    let standby = Chain::standby().nonce(1);
    let records: BTreeMap<ContractId, ContractRecord> = [
        // The drone's case: a hosted slot on the owner's image, keys before the slot begins.
        record(hosted.clone(), ContractStatus::Armed),
        record(standby, ContractStatus::Validated),
        // Not the owner's contract, even on the same image: nothing.
        record(ContractBuilder::new(3, 4).nonce(2), ContractStatus::Active),
        // Storage names no devices; a final contract's provider gets nothing more.
        record(
            ContractBuilder::new(1, 5).storage().nonce(3),
            ContractStatus::Active,
        ),
        record(ContractBuilder::new(1, 6).nonce(4), ContractStatus::Settled),
        // Its own provider: nothing to hand over.
        record(ContractBuilder::new(1, 1).nonce(5), ContractStatus::Active),
    ]
    .into_iter()
    .collect();
    let holders = key_holders(owner, &records);
    let mut providers: Vec<NodeId> = holders.iter().map(|h| h.provider).collect();
    providers.sort();
    assert_eq!(providers, vec![signer(2).node_id(), signer(2).node_id()]);
    let kinds: Vec<ContractKind> = holders
        .iter()
        .map(|h| records[&h.contract].contract.kind)
        .collect();
    assert!(kinds.contains(&ContractKind::Hosted) && kinds.contains(&ContractKind::Standby));
    assert!(holders.iter().all(|h| h.image == Chain::image()));
    assert!(
        key_holders(signer(2).node_id(), &records).is_empty(),
        "a provider owns nothing"
    );
}
