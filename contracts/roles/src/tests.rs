//! Unit tests of the role machine, one per rule, on a real ledger.

mod arbitrator;
mod arming;
mod authority;
mod customer;
mod evidence;
mod machine;
mod provider;
mod settle;
mod staging;

use agora_market::{KeySigner, NodeId, Signer, Timestamp};
use cid::Cid;

use super::*;
use agora_contracts::attestation::Liveness;
use agora_contracts::contract::SignedContract;
use agora_contracts::ledger::{Ledger, LedgerEvent, Transaction, TxKind};
use agora_contracts::test_utils::{
    ContractBuilder, committee_signers, genesis_with, signer, test_cid,
};

/// Devices of the test image.
pub(super) const DEVICES: [u32; 3] = [101, 102, 103];

/// A ledger that applies one block per call, with the parties' and arbitrators' keys.
pub(super) struct Chain {
    pub ledger: Ledger,
    pub now: Timestamp,
    pub customer: KeySigner,
    pub provider: KeySigner,
    pub committee: Vec<KeySigner>,
}

impl Chain {
    pub fn new() -> Self {
        let (genesis, _, _) = genesis_with(4, 4, 1_000_000);
        Chain {
            ledger: Ledger::from_genesis(&genesis).unwrap(),
            now: 1_000,
            customer: signer(1),
            provider: signer(2),
            committee: committee_signers(4),
        }
    }

    pub fn image() -> Cid {
        test_cid(b"image")
    }

    /// Applies one block of `txs` at the current time; every one must be accepted.
    pub fn block(&mut self, txs: Vec<(&KeySigner, TxKind)>) -> Vec<LedgerEvent> {
        let mut nonces: std::collections::BTreeMap<NodeId, u64> = Default::default();
        let signed: Vec<_> = txs
            .into_iter()
            .map(|(s, kind)| {
                let id = s.node_id();
                let n = nonces
                    .entry(id)
                    .or_insert_with(|| self.ledger.next_nonce(&id));
                let body = Transaction {
                    chain_id: self.ledger.chain_id().to_string(),
                    sender: id,
                    nonce: *n,
                    kind,
                };
                *n += 1;
                body.sign(s).unwrap()
            })
            .collect();
        let height = self.ledger.height() + 1;
        let out = self.ledger.apply_block(height, self.now, &signed).unwrap();
        assert!(out.rejected.is_empty(), "refused: {:?}", out.rejected);
        out.events
    }

    /// Registers `signed` (as the customer).
    pub fn register(&mut self, signed: SignedContract) -> (ContractId, Vec<LedgerEvent>) {
        let id = signed.contract.id().unwrap();
        let c = self.customer.clone();
        let ev = self.block(vec![(&c, TxKind::RegisterContract(Box::new(signed)))]);
        (id, ev)
    }

    /// Three arbitrators attest the customer unreachable since `since`.
    pub fn attest_down(&mut self, since: Timestamp) -> Vec<LedgerEvent> {
        let subject = self.customer.node_id();
        let arbs = self.committee.clone();
        self.block(
            arbs[..3]
                .iter()
                .map(|a| {
                    (
                        a,
                        TxKind::Attest {
                            subject,
                            liveness: Liveness::Unreachable { since },
                        },
                    )
                })
                .collect(),
        )
    }

    /// Three arbitrators (a quorum) report every probe interval of `id` up to now up, in one
    /// block: what the committee does while the provider's service runs.
    pub fn confirm_up(&mut self, id: ContractId) -> Vec<LedgerEvent> {
        let rec = self.ledger.contract(&id).unwrap();
        let last = rec.evidence_round(self.now).unwrap();
        let arbs = self.committee.clone();
        let reports = (0..=last)
            .flat_map(|interval| {
                arbs[1..].iter().map(move |a| {
                    (
                        a,
                        TxKind::ProbeResult {
                            contract: id,
                            interval,
                            up: true,
                        },
                    )
                })
            })
            .collect();
        self.block(reports)
    }

    /// The facts `roles` needs after `events`.
    pub fn facts(&self, roles: &Roles, me: NodeId, events: Vec<LedgerEvent>) -> Input {
        Input::Ledger(LedgerFacts::from_ledger(
            me,
            &self.ledger,
            events,
            &roles.images(),
        ))
    }

    /// A standby contract of 10 minutes that hands over after 1 s, heartbeats every second.
    pub fn standby() -> ContractBuilder {
        ContractBuilder::new(1, 2).standby(1_000).duration(600_000)
    }

    /// [`Chain::standby`] without an uptime minimum, so settling it needs no heartbeats.
    pub fn lenient() -> ContractBuilder {
        Chain::standby().qos(agora_contracts::contract::Qos {
            max_activation_delay_ms: 5_000,
            min_uptime_permille: 0,
            heartbeat_interval_ms: 1_000,
        })
    }
}

/// `roles` (a customer's machine) settles contract `id` `NoActivation` only once the ledger's
/// grace for a late activation report has passed after its deadline, and then at once.
pub(super) fn settles_no_activation_only_past_the_grace(
    chain: &Chain,
    roles: &mut Roles,
    id: ContractId,
) {
    let deadline = chain
        .ledger
        .contract(&id)
        .unwrap()
        .activation_deadline()
        .unwrap();
    let due = deadline + agora_contracts::ledger::ACTIVATION_REPORT_GRACE_MS;
    assert!(submitted(&roles.handle(deadline + 1, Input::Tick)).is_empty());
    assert!(submitted(&roles.handle(due, Input::Tick)).is_empty());
    assert_eq!(
        submitted(&roles.handle(due + 1, Input::Tick)),
        vec![TxKind::Settle {
            contract: id,
            reason: agora_contracts::ledger::SettleReason::NoActivation
        }]
    );
}

/// The transactions among `out`.
pub(super) fn submitted(out: &[Effect]) -> Vec<TxKind> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Submit(tx) => Some(tx.clone()),
            _ => None,
        })
        .collect()
}

/// The timeline phases among `out`.
pub(super) fn phases(out: &[Effect]) -> Vec<String> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Timeline(n) => Some(n.phase.clone()),
            _ => None,
        })
        .collect()
}

/// A provider machine that took contract `id` to armed with the test devices staged.
pub(super) fn armed_provider(chain: &mut Chain, b: ContractBuilder) -> (Roles, ContractId) {
    let me = chain.provider.node_id();
    let mut roles = Roles::new(me, chain.now - 1, RolesConfig::default(), None);
    let (id, ev) = chain.register(b.signed());
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    roles.handle(
        chain.now,
        Input::Staged {
            service: ServiceRef::Contract(id),
            devices: DEVICES.to_vec(),
        },
    );
    let p = chain.provider.clone();
    chain.now += 100;
    let ev = chain.block(vec![(&p, TxKind::MarkMigrated(id))]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    chain.now += 100;
    let ev = chain.block(vec![(&p, TxKind::MarkArmed(id))]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    (roles, id)
}
