//! An honest provider is never slashed by a minority of its committee: over random schedules
//! in which one faulty arbitrator (f = 1 of 4) reports every probe interval down, every audit
//! round failed and the provider unreachable, and the honest arbitrators' reports arrive late
//! or not at all, a provider that activates on time and serves all along ends settled — never
//! breached — and settles once.

use std::collections::BTreeSet;

use agora_market::{KeySigner, Signer};
use proptest::prelude::*;

use crate::attestation::Liveness;
use crate::contract::{ContractId, ContractKind, Qos};
use crate::ledger::tests::Harness;
use crate::ledger::{HeartbeatBatch, LedgerEvent, SettleReason, TxKind, UptimeInterval};
use crate::lifecycle::ContractStatus;
use crate::test_utils::{ContractBuilder, test_cid};

/// What the faulty arbitrator does in one step.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// Reports the round `back` rounds ago bad (down / failed).
    BadRound {
        back: u64,
    },
    /// Attests the provider unreachable since `ago` ms ago.
    ProviderDown {
        ago: u64,
    },
    /// Attests the customer reachable (against a handover).
    CustomerUp,
    /// Reports the round `back` rounds ago good (harmless to the provider).
    GoodRound {
        back: u64,
    },
    Nothing,
}

fn lie() -> impl Strategy<Value = Lie> {
    prop_oneof![
        4 => (0u64..4).prop_map(|back| Lie::BadRound { back }),
        2 => (0u64..20_000).prop_map(|ago| Lie::ProviderDown { ago }),
        1 => Just(Lie::CustomerUp),
        1 => (0u64..4).prop_map(|back| Lie::GoodRound { back }),
        1 => Just(Lie::Nothing),
    ]
}

struct Run {
    h: Harness,
    id: ContractId,
    kind: ContractKind,
    faulty: usize,
    honest: Vec<usize>,
    /// (round, arbitrator) reports already sent by honest arbitrators.
    reported: BTreeSet<(u64, usize)>,
    delays: Vec<u64>,
    drops: Vec<u8>,
    events: Vec<LedgerEvent>,
    heartbeat_to: u64,
}

impl Run {
    fn new(kind: u8, faulty: usize, delays: Vec<u64>, drops: Vec<u8>) -> Self {
        let mut h = Harness::new();
        let qos = Qos {
            max_activation_delay_ms: 5_000,
            min_uptime_permille: 900,
            heartbeat_interval_ms: 1_000,
        };
        let builder = ContractBuilder::new(1, 2).qos(qos).duration(60_000);
        let (builder, kind) = match kind {
            0 => (builder, ContractKind::Hosted),
            1 => (builder.standby(1_000), ContractKind::Standby),
            _ => (builder.storage(), ContractKind::Storage),
        };
        let id = h.armed(builder.signed());
        let honest: Vec<usize> = (0..4).filter(|a| *a != faulty).collect();
        if kind == ContractKind::Standby {
            // The customer fails; the honest arbitrators attest it; handover at 3_000.
            h.now = 3_000;
            for a in &honest {
                h.attest(*a, Liveness::Unreachable { since: 1_000 });
            }
        }
        let p = h.provider();
        let at = h.now;
        h.ok(
            &p,
            TxKind::ReportActivation {
                contract: id,
                activated_at: at,
            },
        );
        Run {
            h,
            id,
            kind,
            faulty,
            honest,
            reported: BTreeSet::new(),
            delays,
            drops,
            events: Vec::new(),
            heartbeat_to: at,
        }
    }

    fn active(&self) -> bool {
        self.h.status(self.id) == ContractStatus::Active
    }

    fn report(&self, round: u64, good: bool) -> TxKind {
        match self.kind {
            ContractKind::Storage => TxKind::StorageProofResult {
                contract: self.id,
                round,
                challenge: test_cid(b"file"),
                passed: good,
            },
            _ => TxKind::ProbeResult {
                contract: self.id,
                interval: round,
                up: good,
            },
        }
    }

    fn send(&mut self, who: &KeySigner, kind: TxKind) {
        if let Ok(events) = self.h.try_apply(who, kind) {
            self.events.extend(events);
        }
    }

    /// The honest provider reports its (true, continuous) uptime up to now.
    fn heartbeat(&mut self) {
        if !self.active() || self.kind == ContractKind::Storage || self.h.now <= self.heartbeat_to {
            return;
        }
        let batch = HeartbeatBatch {
            intervals: vec![UptimeInterval {
                from: self.heartbeat_to,
                to: self.h.now,
            }],
            readings_processed: 1,
            data_proofs: Vec::new(),
        };
        let p = self.h.provider();
        self.send(
            &p,
            TxKind::Heartbeats {
                contract: self.id,
                batch,
            },
        );
        self.heartbeat_to = self.h.now;
    }

    /// Honest arbitrators report every round that ended, after their own delay, unless their
    /// report is dropped.
    fn honest_reports(&mut self) {
        let Some(rec) = self.h.ledger.contract(&self.id) else {
            return;
        };
        let mut due = Vec::new();
        for round in 0..64u64 {
            let Some((_, end)) = rec.round_span(round) else {
                break;
            };
            for a in &self.honest {
                let slot = (round as usize * 4 + a) % self.delays.len();
                let dropped = self.drops[slot % self.drops.len()] == 0;
                if end + self.delays[slot] <= self.h.now
                    && !dropped
                    && !self.reported.contains(&(round, *a))
                {
                    due.push((round, *a));
                }
            }
        }
        for (round, a) in due {
            self.reported.insert((round, a));
            let arb = self.h.committee[a].clone();
            let kind = self.report(round, true);
            self.send(&arb, kind);
        }
    }

    fn lie(&mut self, lie: Lie) {
        let bad = self.h.committee[self.faulty].clone();
        let current = self
            .h
            .ledger
            .contract(&self.id)
            .and_then(|r| r.evidence_round(self.h.now))
            .unwrap_or(0);
        let kind = match lie {
            Lie::BadRound { back } => self.report(current.saturating_sub(back), false),
            Lie::GoodRound { back } => self.report(current.saturating_sub(back), true),
            Lie::ProviderDown { ago } => TxKind::Attest {
                subject: self.h.provider().node_id(),
                liveness: Liveness::Unreachable {
                    since: self.h.now.saturating_sub(ago),
                },
            },
            Lie::CustomerUp => TxKind::Attest {
                subject: self.h.customer().node_id(),
                liveness: Liveness::Reachable,
            },
            Lie::Nothing => return,
        };
        self.send(&bad, kind);
    }

    fn tick(&mut self) {
        let events = self.h.ledger.tick(self.h.now);
        self.h.ledger.audit().unwrap();
        self.events.extend(events);
    }

    fn settle(&mut self, who: &KeySigner, reason: SettleReason) {
        let closing = self
            .h
            .ledger
            .contract(&self.id)
            .is_some_and(|r| r.closing.is_some());
        if self.active() && !closing {
            let kind = TxKind::Settle {
                contract: self.id,
                reason,
            };
            self.send(who, kind);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn an_honest_provider_is_never_slashed_by_a_minority(
        kind in 0u8..3,
        faulty in 0usize..4,
        steps in prop::collection::vec((200u64..2_000, lie()), 5..60),
        delays in prop::collection::vec(0u64..9_000, 16..64),
        drops in prop::collection::vec(0u8..8, 16..64),
        back_after in 0u64..70_000,
    ) {
        let mut run = Run::new(kind, faulty, delays, drops);
        let activated = run.h.now;
        let c = run.h.customer();
        for (advance, lie) in steps {
            run.h.now += advance;
            run.heartbeat();
            run.lie(lie);
            run.honest_reports();
            if run.h.now >= activated + back_after {
                run.settle(&c, SettleReason::CustomerBack);
            }
            run.tick();
        }
        // However the schedule went, the term ends and the contract is judged.
        let window_end = run.h.ledger.contract(&run.id).unwrap().window_end().unwrap();
        let p = run.h.provider();
        while run.h.now < window_end + 20_000 {
            run.h.now += 1_000;
            run.heartbeat();
            run.honest_reports();
            if run.h.now >= window_end {
                run.settle(&p, SettleReason::DurationEnded);
            }
            run.tick();
        }
        let slashed = run.events.iter().any(|e| matches!(e, LedgerEvent::Slashed { .. }));
        prop_assert!(!slashed, "honest provider slashed: {:?}", run.events);
        prop_assert_eq!(run.h.status(run.id), ContractStatus::Settled);
        let finals = run
            .events
            .iter()
            .filter(|e| matches!(e, LedgerEvent::StatusChanged { to, .. } if to.is_final()))
            .count();
        prop_assert_eq!(finals, 1, "settled more than once");
        // The provider never loses its stake and its reputation only grows.
        prop_assert!(run.h.balance(&p) >= 10_000);
        prop_assert!(run.h.ledger.account(&p.node_id()).unwrap().reputation >= 0);
        let rec = run.h.ledger.contract(&run.id).unwrap();
        prop_assert_eq!(rec.storage_failed, 0);
        prop_assert_eq!(rec.confirmed_down_ms, 0);
    }
}
