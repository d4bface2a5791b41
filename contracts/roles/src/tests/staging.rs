//! The provider gives up staging an image it cannot run and calls the contract off (THREATS C6,
//! `staging.rs`).

use super::*;

/// A provider machine that saw `b` registered and asked to stage its image.
fn staging(chain: &mut Chain, b: ContractBuilder) -> (Roles, ContractId) {
    let me = chain.provider.node_id();
    let mut roles = Roles::new(me, chain.now - 1, RolesConfig::default(), None);
    let (id, ev) = chain.register(b.signed());
    let out = roles.handle(chain.now, chain.facts(&roles, me, ev));
    assert!(out.iter().any(|e| matches!(e, Effect::Stage { .. })));
    (roles, id)
}

fn failed(id: ContractId, permanent: bool) -> Input {
    Input::StageFailed {
        service: ServiceRef::Contract(id),
        error: "the module does not compile".into(),
        permanent,
    }
}

fn stages(out: &[Effect]) -> bool {
    out.iter().any(|e| matches!(e, Effect::Stage { .. }))
}

/// When the slot contract `id`'s staging is given up.
fn deadline(chain: &Chain, id: ContractId) -> Timestamp {
    let rec = chain.ledger.contract(&id).unwrap();
    rec.activation_deadline().unwrap() + chain.ledger.params().activation_report_grace_ms / 2
}

/// A permanent failure (the image does not decode, verify or compile) is not retried: the
/// provider gives up at once and calls the contract off. Mutants: ignoring `permanent` in
/// `stage_retry_at` schedules a retry and sends no cancel; `give_up_staging` without its
/// `submit_once(Cancel)` leaves the provider to be slashed for not activating.
#[test]
fn a_permanent_staging_failure_gives_up_at_once_and_calls_the_contract_off() {
    let mut chain = Chain::new();
    let (mut roles, id) = staging(&mut chain, Chain::standby());
    let out = roles.handle(chain.now, failed(id, true));
    assert!(phases(&out).contains(&"stage-failed".to_string()));
    assert!(!phases(&out).contains(&"migration-retry".to_string()));
    assert_eq!(submitted(&out), vec![TxKind::Cancel(id)]);
    assert!(!stages(&roles.handle(chain.now + 60_000, Input::Tick)));
}

/// A slot's staging ends at its deadline (half the report grace past the activation
/// deadline), woken for, even while an attempt is still under way; its late answer changes
/// nothing. Mutants: without the deadline check in `advance` the contract is never called
/// off; without the deadline in `next_wake` the driver is not told to wake for it.
#[test]
fn staging_is_given_up_at_its_deadline_while_an_attempt_runs() {
    let mut chain = Chain::new();
    let (mut roles, id) = staging(&mut chain, ContractBuilder::new(1, 2).at(9_000));
    let d = deadline(&chain, id);
    assert_eq!(roles.provider.next_wake(), Some(d));
    let out = roles.handle(d - 1, Input::Tick);
    assert!(submitted(&out).is_empty());
    assert!(!phases(&out).contains(&"stage-failed".to_string()));
    let out = roles.handle(d, Input::Tick);
    assert!(phases(&out).contains(&"stage-failed".to_string()));
    assert_eq!(submitted(&out), vec![TxKind::Cancel(id)]);
    let late = roles.handle(
        d + 10,
        Input::Staged {
            service: ServiceRef::Contract(id),
            devices: DEVICES.to_vec(),
        },
    );
    assert!(submitted(&late).is_empty());
    assert!(!phases(&late).contains(&"staged".to_string()));
}

/// A failure whose retry would start at or past the deadline gives up rather than try once
/// more. Mutant: `on_stage_failed` passing no deadline to `stage_retry_at` retries after it.
#[test]
fn a_retry_that_would_start_past_the_deadline_gives_up() {
    let mut chain = Chain::new();
    let (mut roles, id) = staging(&mut chain, ContractBuilder::new(1, 2).at(9_000));
    let d = deadline(&chain, id);
    let out = roles.handle(d - STAGE_BACKOFF_MS, failed(id, false));
    assert!(phases(&out).contains(&"stage-failed".to_string()));
    assert_eq!(submitted(&out), vec![TxKind::Cancel(id)]);
    // One that leaves time is retried.
    let mut chain = Chain::new();
    let (mut roles, id) = staging(&mut chain, ContractBuilder::new(1, 2).at(9_000));
    let d = deadline(&chain, id);
    let out = roles.handle(d - STAGE_BACKOFF_MS - 1, failed(id, false));
    assert!(submitted(&out).is_empty());
    assert!(phases(&out).contains(&"migration-retry".to_string()));
    assert!(stages(&roles.handle(d - 1, Input::Tick)));
}
