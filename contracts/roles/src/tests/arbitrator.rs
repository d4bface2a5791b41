//! Arbitrator rules: watching, attesting, re-attesting (probes and audits: `evidence.rs`).

use super::*;

pub(super) fn arbitrator(chain: &Chain) -> (Roles, NodeId) {
    let me = chain.committee[0].node_id();
    (
        Roles::new(me, chain.now - 1, RolesConfig::default(), None),
        me,
    )
}

#[test]
fn the_customer_of_a_standby_is_watched_until_the_contract_closes() {
    let mut chain = Chain::new();
    let (mut roles, me) = arbitrator(&chain);
    let customer = chain.customer.node_id();
    let (id, ev) = chain.register(Chain::standby().signed());
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::Watch(customer)));
    assert!(phases(&out).contains(&"watching".to_string()));
    // A second contract on the same customer: no second network watch.
    let (_, ev) = chain.register(Chain::standby().nonce(1).signed());
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(!out.contains(&Effect::Watch(customer)));
    let c = chain.customer.clone();
    chain.now += 100;
    let ev = chain.block(vec![(&c, TxKind::Cancel(id))]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(
        !out.contains(&Effect::Unwatch(customer)),
        "the other still needs it"
    );
    let other = *chain.ledger.contracts().keys().find(|k| **k != id).unwrap();
    chain.now += 100;
    let ev = chain.block(vec![(&c, TxKind::Cancel(other))]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.contains(&Effect::Unwatch(customer)));
}

#[test]
fn a_down_customer_is_attested_at_once_and_again_past_the_threshold() {
    let mut chain = Chain::new();
    let (mut roles, me) = arbitrator(&chain);
    let customer = chain.customer.node_id();
    let (_, ev) = chain.register(Chain::standby().signed());
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let last_seen = chain.now + 100;
    let now = last_seen + PRESENCE_TIMEOUT_MS / 2;
    let out = roles.handle(
        now,
        Input::Presence(Presence::Down {
            node: customer,
            last_seen,
        }),
    );
    let down = TxKind::Attest {
        subject: customer,
        liveness: Liveness::Unreachable { since: last_seen },
    };
    assert_eq!(submitted(&out), vec![down.clone()]);
    // The handover rule needs `since + 1 000` at block time, and that block may be stamped up
    // to CLOCK_MARGIN_MS behind this node's clock.
    let due = last_seen + 1_000 + CLOCK_MARGIN_MS;
    assert!(out.contains(&Effect::WakeAt(due)));
    assert!(submitted(&roles.handle(due - 1, Input::Tick)).is_empty());
    assert_eq!(submitted(&roles.handle(due, Input::Tick)), vec![down]);
    assert!(submitted(&roles.handle(due + 5_000, Input::Tick)).is_empty());
    let out = roles.handle(
        due + 6_000,
        Input::Presence(Presence::Up { node: customer }),
    );
    assert_eq!(
        submitted(&out),
        vec![TxKind::Attest {
            subject: customer,
            liveness: Liveness::Reachable
        }]
    );
    // Only watched nodes are attested.
    let stranger = chain.provider.node_id();
    assert!(
        submitted(&roles.handle(
            due + 7_000,
            Input::Presence(Presence::Down {
                node: stranger,
                last_seen: due
            })
        ))
        .is_empty()
    );
}

#[test]
fn the_watch_threshold_is_the_shortest_outage_of_the_open_contracts() {
    let mut chain = Chain::new();
    let (mut roles, me) = arbitrator(&chain);
    let customer = chain.customer.node_id();
    let (short, ev) = chain.register(
        ContractBuilder::new(1, 2)
            .standby(500)
            .duration(600_000)
            .signed(),
    );
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let (_, ev) = chain.register(Chain::standby().nonce(3).signed());
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let seen = chain.now;
    let out = roles.handle(
        seen + 10,
        Input::Presence(Presence::Down {
            node: customer,
            last_seen: seen,
        }),
    );
    assert!(out.contains(&Effect::WakeAt(seen + 500 + CLOCK_MARGIN_MS)));
    roles.handle(seen + 20, Input::Presence(Presence::Up { node: customer }));
    // The short one closes: the threshold is the remaining contract's.
    let c = chain.customer.clone();
    chain.now += 100;
    let ev = chain.block(vec![(&c, TxKind::Cancel(short))]);
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let seen = chain.now;
    let out = roles.handle(
        seen + 10,
        Input::Presence(Presence::Down {
            node: customer,
            last_seen: seen,
        }),
    );
    assert!(out.contains(&Effect::WakeAt(seen + 1_000 + CLOCK_MARGIN_MS)));
}

/// THREATS C18: the ledger counts for a contract only attestations recorded after its
/// registration, so a customer this node already reports down is attested again for a new
/// standby it starts watching (its customer registered it while cut off from this member),
/// and again once the new threshold has run.
#[test]
fn a_customer_seen_down_is_attested_again_for_a_new_contract() {
    let mut chain = Chain::new();
    let (mut roles, me) = arbitrator(&chain);
    let customer = chain.customer.node_id();
    let (_, ev) = chain.register(
        ContractBuilder::new(1, 2)
            .standby(60_000)
            .duration(600_000)
            .signed(),
    );
    roles.handle(chain.now, chain.facts(&roles, me, ev));
    let seen = chain.now;
    let out = roles.handle(
        seen + 10,
        Input::Presence(Presence::Down {
            node: customer,
            last_seen: seen,
        }),
    );
    let down = TxKind::Attest {
        subject: customer,
        liveness: Liveness::Unreachable { since: seen },
    };
    assert_eq!(submitted(&out), vec![down.clone()]);
    chain.now = seen + 2_000;
    let (_, ev) = chain.register(Chain::standby().nonce(5).signed());
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert_eq!(submitted(&out), vec![down.clone()]);
    // The new contract's 1 s threshold has run by now: no extra wake, the attestation above
    // is after it; the 60 s one no longer sets the time.
    let due = seen + 1_000 + CLOCK_MARGIN_MS;
    assert!(due <= chain.now);
    assert!(submitted(&roles.handle(chain.now + 10, Input::Tick)).is_empty());
    // Nothing more for a contract it already watches.
    let out = roles.handle(chain.now + 20, chain.facts(&roles, me, Vec::new()));
    assert!(submitted(&out).is_empty());
}

/// A customer that stays down is attested again once each of its standbys' thresholds has run
/// (a contract with a longer one is not left with a stale vote: found by the review of C18),
/// and at once when one of its standbys is armed later (the vote of the outage's start may be
/// stale by then: such a standby was never handed over); nothing else while it stays down.
#[test]
fn a_customer_that_stays_down_is_attested_at_each_threshold_and_when_a_standby_arms() {
    let mut chain = Chain::new();
    let (mut roles, me) = arbitrator(&chain);
    let customer = chain.customer.node_id();
    let mut ids = Vec::new();
    for (threshold, nonce) in [(120_000, 1), (30_000, 2)] {
        let (id, ev) = chain.register(
            ContractBuilder::new(1, 2)
                .standby(threshold)
                .duration(600_000)
                .nonce(nonce)
                .signed(),
        );
        ids.push(id);
        roles.handle(chain.now, chain.facts(&roles, me, ev));
    }
    let seen = chain.now;
    let down = TxKind::Attest {
        subject: customer,
        liveness: Liveness::Unreachable { since: seen },
    };
    let out = roles.handle(
        seen + 10,
        Input::Presence(Presence::Down {
            node: customer,
            last_seen: seen,
        }),
    );
    assert_eq!(submitted(&out), vec![down.clone()]);
    // Every moment an attestation is due until the longer threshold has run, and beyond.
    let mut attested = Vec::new();
    let mut t = seen;
    while t < seen + 200_000 {
        t += 50;
        if !submitted(&roles.handle(t, Input::Tick)).is_empty() {
            attested.push(t - seen);
        }
    }
    let margin = CLOCK_MARGIN_MS;
    assert_eq!(attested, vec![30_000 + margin, 120_000 + margin]);
    // The 30 s standby is armed now: attested again at once, then nothing more.
    chain.now = seen + 200_000;
    let p = chain.provider.clone();
    let ev = chain.block(vec![
        (&p, TxKind::MarkMigrated(ids[1])),
        (&p, TxKind::MarkArmed(ids[1])),
    ]);
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert_eq!(submitted(&out), vec![down.clone()]);
    assert!(submitted(&roles.handle(chain.now + 60_000, Input::Tick)).is_empty());
    // Back: attested reachable, and nothing more.
    let out = roles.handle(
        chain.now + 60_010,
        Input::Presence(Presence::Up { node: customer }),
    );
    assert_eq!(
        submitted(&out),
        vec![TxKind::Attest {
            subject: customer,
            liveness: Liveness::Reachable
        }]
    );
}
