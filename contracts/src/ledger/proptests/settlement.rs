//! Property tests of settlement arithmetic: what each party ends with, given the evidence.

use agora_market::Signer;
use proptest::prelude::*;

use crate::contract::Qos;
use crate::ledger::tests::Harness;
use crate::ledger::{HeartbeatBatch, LedgerEvent, SettleReason, TxKind, UptimeInterval};
use crate::lifecycle::ContractStatus;
use crate::test_utils::ContractBuilder;

fn qos(min_uptime_permille: u16) -> Qos {
    Qos {
        max_activation_delay_ms: 5_000,
        min_uptime_permille,
        heartbeat_interval_ms: 1_000,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Hosted: honoured pays `payment × uptime / duration` (the unreported tail before the end
    /// included, as far as the committee confirmed it up); late activation or downtime the
    /// provider's heartbeats admit (a gap before its later reports) slashes. A provider that
    /// reports its uptime and then nothing (`silent_after`: its heartbeats may be stuck in a
    /// backlog) is paid for what it reported and not slashed for the silence, which only the
    /// committee's confirmed downtime could prove.
    #[test]
    fn hosted_settlement_pays_for_uptime_or_slashes(
        payment in 1u64..5_000,
        stakes in (0u64..1_000, 0u64..4_000),
        duration in 1_000u64..100_000,
        delay in 0u64..10_000,
        uptime_permille in 0u64..=1_000,
        min_uptime in 0u16..=1_000,
        silent_after in any::<bool>(),
    ) {
        let mut h = Harness::new();
        let signed = ContractBuilder::new(1, 2)
            .payment(payment)
            .stakes(stakes.0, stakes.1)
            .duration(duration)
            .qos(qos(min_uptime))
            .signed();
        let id = h.armed(signed);
        let (c, p) = (h.customer(), h.provider());
        let activated = h.now + delay;
        h.now = activated;
        h.ok(&p, TxKind::ReportActivation { contract: id, activated_at: activated });
        let up = duration * uptime_permille / 1_000;
        // The committee confirms the whole window up: the provider's claim decides.
        h.probed_until(id, activated + duration, true);
        h.now = activated + duration;
        // Silent after its uptime, or down first and up for the rest of the window.
        let (from, to) = if silent_after {
            (activated, activated + up)
        } else {
            (activated + duration - up, activated + duration)
        };
        if up > 0 {
            let batch = HeartbeatBatch {
                intervals: vec![UptimeInterval { from, to }],
                readings_processed: 1,
                data_proofs: vec![],
            };
            h.ok(&p, TxKind::Heartbeats { contract: id, batch });
        }
        let mut events = h.ok(&c, TxKind::Settle { contract: id, reason: SettleReason::DurationEnded });
        // A shortfall waits for in-flight heartbeats, then is judged after the grace period.
        h.now += 13_000;
        events.extend(h.ledger.tick(h.now));
        // Judged uptime: over the time the reports speak for (activation to the last report),
        // plus at most one heartbeat interval of unreported tail.
        let reported_to = if up > 0 { to } else { activated };
        let tail = (activated + duration - reported_to).min(1_000);
        let spoken_for = reported_to + tail - activated;
        let measured = (up + tail).min(spoken_for) * 1_000 / spoken_for;
        // Late past the budget and the lag a proposer may stamp the trigger block with (A10).
        let lag = h.ledger.params().block_time_tolerance_ms;
        let breached = delay > 5_000 + lag || measured < u64::from(min_uptime);
        if breached {
            prop_assert_eq!(h.status(id), ContractStatus::Slashed);
            prop_assert_eq!(h.balance(&c), 10_000 + stakes.1);
            prop_assert_eq!(h.balance(&p), 10_000 - stakes.1);
        } else {
            // Paid: the reported uptime plus the unreported tail before the end (one heartbeat
            // interval and the 2 s skew at most), as far as the committee confirmed it up (the
            // whole window here; THREATS C17).
            let paid_tail = (activated + duration - reported_to).min(1_000 + 2_000);
            let paid = (up + paid_tail).min(duration);
            let earned = (u128::from(payment) * u128::from(paid) / u128::from(duration)) as u64;
            prop_assert_eq!(h.status(id), ContractStatus::Settled);
            prop_assert_eq!(h.balance(&p), 10_000 + earned);
            prop_assert_eq!(h.balance(&c), 10_000 - earned);
        }
        let slashes = events.iter().filter(|e| matches!(e, LedgerEvent::Slashed { .. })).count();
        prop_assert_eq!(slashes, usize::from(breached));
        let again = h.try_apply(&c, TxKind::Settle { contract: id, reason: SettleReason::DurationEnded });
        prop_assert!(again.is_err(), "settled twice");
        prop_assert_eq!(h.ledger.account(&c.node_id()).unwrap().locked, 0);
        prop_assert_eq!(h.ledger.account(&p.node_id()).unwrap().locked, 0);
    }

    /// Standby: a customer back early pays pro rata for the elapsed coverage window (standing
    /// by, then service the committee confirmed up).
    #[test]
    fn standby_customer_back_pays_pro_rata(
        payment in 1u64..5_000,
        duration in 20_000u64..200_000,
        back_after in 0u64..250_000,
    ) {
        let mut h = Harness::new();
        let signed = ContractBuilder::new(1, 2)
            .standby(1_000)
            .payment(payment)
            .duration(duration)
            .qos(qos(0))
            .signed();
        let registered = h.now;
        let id = h.armed(signed);
        h.now += 2_000;
        for a in 0..3 {
            h.attest(a, crate::attestation::Liveness::Unreachable { since: registered });
        }
        let (c, p) = (h.customer(), h.provider());
        let at = h.now;
        h.ok(&p, TxKind::ReportActivation { contract: id, activated_at: at });
        let back = registered + 2_000 + back_after;
        let served_to = back.min(registered + duration);
        h.probed_until(id, served_to, true);
        h.now = h.now.max(served_to);
        let batch = HeartbeatBatch {
            intervals: vec![UptimeInterval { from: at, to: served_to }],
            readings_processed: 1,
            data_proofs: vec![],
        };
        h.ok(&p, TxKind::Heartbeats { contract: id, batch });
        h.now = back;
        h.ok(&c, TxKind::Settle { contract: id, reason: SettleReason::CustomerBack });
        // The probe interval around the customer's return ends after it: reported then.
        h.probed_until(id, back + 2_000, true);
        prop_assert_eq!(h.status(id), ContractStatus::Settled);
        let elapsed = (back - registered).min(duration);
        let earned = (u128::from(payment) * u128::from(elapsed) / u128::from(duration)) as u64;
        prop_assert_eq!(h.balance(&p), 10_000 + earned);
        prop_assert_eq!(h.balance(&c), 10_000 - earned);
    }
}
