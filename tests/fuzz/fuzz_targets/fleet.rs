//! Fleet messages as peers send them (issue #13): decode, re-encode, and feed to a fleet machine
//! that deploys a push and a pull deployment of its own, with validly signed announcements from
//! a few other deployers mixed in (gossiped, or sent by the deployer itself), their ledger
//! balances, the live contracts it provides for (backing: pinned on arrival), its own replicas'
//! phases (with or without a contract: pinning) and time passing. The node is a provider too (`site=factory`).
//! After every step the machine stays within its bounds: the store of others' records, the
//! records pinned in it, its replicas (never more than the records held), the providers it
//! keeps, its own deployments.
#![no_main]

use agora_fuzz::assert_stable_encoding;
use std::collections::BTreeMap;

use agora_fleet_core::{
    CandidateFacts, DeploymentSpec, FleetConfig, FleetMessage, FleetState, Input, ProviderFacts,
    Replicas, Selector, StoreLimits, Strategy, TargetPhase, deployment_id,
};
use agora_market::resources::Resources;
use agora_market::{KeySigner, Signer};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes from party `from` (gossip or a request).
    Remote {
        from: u8,
        gossip: bool,
        bytes: Vec<u8>,
    },
    /// A validly signed announcement by party `from`.
    Announce {
        from: u8,
        name: u8,
        version: u8,
        replicas: u8,
        pull: bool,
        valid_for_s: u16,
        /// Gossiped (or sent by the deployer itself).
        gossip: bool,
    },
    /// The live contracts the node provides for: one per party in the mask (its image).
    Backing(u8),
    /// A party offers itself as a target of one of our deployments.
    Candidate {
        from: u8,
        own: bool,
    },
    /// The node's ledger shows party `from`'s balance.
    Balance {
        from: u8,
        balance: u16,
    },
    /// The node's replica of party `from`'s deployment `name` reached a phase, under a live
    /// contract (`backed`: pinned) or not.
    Phase {
        from: u8,
        name: u8,
        backed: bool,
    },
    /// Time passes.
    Advance(u16),
    Tick,
}

const IMAGE: &str = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";

fn spec(name: String, replicas: u8, pull: bool, valid_for_ms: u64) -> DeploymentSpec {
    DeploymentSpec {
        name,
        image: IMAGE.into(),
        selector: Selector::parse("site=factory").expect("a valid selector"),
        variants: Vec::new(),
        needs: Resources {
            cpu_millis: 100,
            memory_bytes: 16 << 20,
            ..Resources::default()
        },
        replicas: Replicas::Count(u32::from(replicas % 5)),
        strategy: if pull { Strategy::Pull } else { Strategy::Push },
        max_price_per_replica: 100,
        duration_ms: 3_600_000,
        valid_for_ms,
        after: Vec::new(),
    }
}

fn config() -> FleetConfig {
    FleetConfig {
        max_own: 4,
        max_providers: 8,
        store: StoreLimits {
            max_records: 6,
            max_per_deployer: 2,
        },
        ..FleetConfig::default()
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let cfg = config();
    let parties: Vec<KeySigner> = (1..=4).map(KeySigner::from_seed).collect();
    let me = KeySigner::from_seed(100);
    let mut node = FleetState::new(me.clone(), cfg);
    let mut now = 1_000_000u64;
    let capacity = Resources {
        cpu_millis: 1_000,
        memory_bytes: 1 << 30,
        ..Resources::default()
    };
    let _ = node.handle(
        now,
        Input::SelfFacts(ProviderFacts {
            node: me.node_id(),
            region: None,
            labels: BTreeMap::from([("site".to_string(), "factory".to_string())]),
            free: capacity.clone(),
            capacity,
            last_seen: now,
        }),
    );
    let mut own = Vec::new();
    for (name, pull) in [("push-own", false), ("pull-own", true)] {
        let _ = node.handle(now, Input::Create(spec(name.into(), 2, pull, 600_000)));
    }
    for (id, _) in node.own_deployments() {
        own.push(*id);
    }
    for op in ops.into_iter().take(64) {
        let input = match op {
            Op::Remote {
                from,
                gossip,
                bytes,
            } => {
                let Ok(msg) = FleetMessage::decode(&bytes) else {
                    continue;
                };
                assert_stable_encoding(
                    &msg,
                    |m| m.encode().expect("a decoded message encodes"),
                    |b| FleetMessage::decode(b).ok(),
                );
                let from = parties[usize::from(from) % parties.len()].node_id();
                Input::Remote { from, gossip, msg }
            }
            Op::Announce {
                from,
                name,
                version,
                replicas,
                pull,
                valid_for_s,
                gossip,
            } => {
                let signer = &parties[usize::from(from) % parties.len()];
                let Ok(record) = spec(
                    format!("d{}", name % 8),
                    replicas,
                    pull,
                    u64::from(valid_for_s) * 1_000,
                )
                .sign(signer, now, u64::from(version), u64::from(name)) else {
                    continue;
                };
                Input::Remote {
                    from: signer.node_id(),
                    gossip,
                    msg: FleetMessage::Announce(Box::new(record)),
                }
            }
            Op::Backing(mask) => Input::Backing(
                parties
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, p)| (p.node_id(), IMAGE.to_string()))
                    .collect(),
            ),
            Op::Candidate { from, own: ours } => {
                let party = &parties[usize::from(from) % parties.len()];
                let deployment = match (ours, own.first()) {
                    (true, Some(id)) => *id,
                    _ => continue,
                };
                Input::Remote {
                    from: party.node_id(),
                    gossip: false,
                    msg: FleetMessage::Candidate {
                        deployment,
                        facts: CandidateFacts::default(),
                    },
                }
            }
            Op::Balance { from, balance } => Input::DeployerBalance {
                deployer: parties[usize::from(from) % parties.len()].node_id(),
                balance: u64::from(balance),
            },
            Op::Phase { from, name, backed } => Input::LocalPhase {
                deployment: deployment_id(
                    &parties[usize::from(from) % parties.len()].node_id(),
                    &format!("d{}", name % 8),
                ),
                image: backed.then(|| IMAGE.to_string()),
                phase: TargetPhase::Running,
                reason: None,
            },
            Op::Advance(ms) => {
                now = now.saturating_add(u64::from(ms) * 100);
                Input::Tick
            }
            Op::Tick => Input::Tick,
        };
        let ticked = matches!(input, Input::Tick);
        let _ = node.handle(now, input);
        assert!(
            node.store().len() <= cfg.store.max_records,
            "store over its bound"
        );
        assert!(
            node.store().pinned() <= cfg.store.max_records / 2,
            "more than half the store pinned"
        );
        assert!(
            node.local_replicas().count() <= node.store().len(),
            "a replica outlived its record"
        );
        assert!(
            node.providers().len() <= cfg.max_providers,
            "providers over their bound"
        );
        assert!(
            node.own_deployments().count() <= cfg.max_own,
            "own deployments over bound"
        );
        // Pruned to the current targets every tick.
        for (_, d) in node.own_deployments().filter(|_| ticked) {
            let targets = d.targets.len() + d.upgrade.as_ref().map_or(0, |u| u.steps().len());
            assert!(
                d.acted.len() <= targets && d.sent.len() <= targets,
                "what was sent to targets outlived them"
            );
        }
    }
});
