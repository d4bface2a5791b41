//! When an arbitrator observes a contract's evidence rounds (probe intervals, audit rounds):
//! once per round, at a moment inside it drawn from the machine's seed, so a provider cannot
//! tell when to be up, and each arbitrator of the committee looks at its own moment.

use agora_market::{NodeId, Timestamp};

use crate::PROBE_TIMEOUT_MS;
use agora_contracts::contract::ContractId;
use agora_contracts::ledger::ContractRecord;

/// Places one arbitrator's observations.
#[derive(Clone, Copy, Debug)]
pub(super) struct Observer {
    pub seed: u64,
    pub me: NodeId,
}

impl Observer {
    /// The first round at or after `from` that is not over at `now`, and when to observe it: a
    /// moment among the round's first `length - PROBE_TIMEOUT_MS` (so the answer lands in the
    /// round), or now if that moment passed. `None` once the service window is over.
    pub fn next(
        &self,
        id: &ContractId,
        rec: &ContractRecord,
        from: u64,
        now: Timestamp,
    ) -> Option<(u64, Timestamp)> {
        let round = rec
            .evidence_round(now)
            .map_or(from, |current| current.max(from));
        let (start, end) = rec.round_span(round)?;
        if end <= now {
            return None;
        }
        let room = end
            .saturating_sub(start)
            .saturating_sub(PROBE_TIMEOUT_MS)
            .max(1);
        let at = start.saturating_add(self.draw(id, round) % room);
        Some((round, at.max(now)))
    }

    /// A pseudo-random number for (`id`, `round`) from the seed and this node's id.
    fn draw(&self, id: &ContractId, round: u64) -> u64 {
        let words = self.me.0.chunks_exact(8).chain(id.0.chunks_exact(8));
        words.fold(mix(self.seed ^ mix(round)), |h, w| {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            mix(h ^ u64::from_le_bytes(b))
        })
    }
}

/// splitmix64's finaliser: every input bit moves every output bit.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_contracts::contract::Qos;
    use agora_contracts::test_utils::{ContractBuilder, node};

    fn record(activated: Timestamp) -> (ContractId, ContractRecord) {
        let c = ContractBuilder::new(1, 2)
            .duration(10_000)
            .qos(Qos {
                max_activation_delay_ms: 5_000,
                min_uptime_permille: 900,
                heartbeat_interval_ms: 500,
            })
            .build();
        let id = c.id().unwrap();
        let mut rec = ContractRecord::new(c, 0).unwrap();
        rec.activated_at = Some(activated);
        (id, rec)
    }

    #[test]
    fn each_round_is_observed_once_inside_its_first_part() {
        let (id, rec) = record(1_000);
        let o = Observer {
            seed: 7,
            me: node(100),
        };
        // Rounds of 2 s from 1 000 until the window ends at 11 000.
        let mut now = 0;
        let mut from = 0;
        let mut seen = Vec::new();
        while let Some((round, at)) = o.next(&id, &rec, from, now) {
            let (start, end) = rec.round_span(round).unwrap();
            assert!(
                at >= start && at < end - PROBE_TIMEOUT_MS,
                "{round} at {at}"
            );
            assert_eq!(rec.evidence_round(at), Some(round));
            seen.push(round);
            now = at;
            from = round + 1;
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_late_start_observes_the_current_round_at_once() {
        let (id, rec) = record(1_000);
        let o = Observer {
            seed: 7,
            me: node(100),
        };
        // Restarted at 6 990, in round 2 (5 000..7 000), after every moment drawn in it.
        assert_eq!(o.next(&id, &rec, 0, 6_990), Some((2, 6_990)));
        // Round 1 asked for late: the current one instead.
        assert_eq!(o.next(&id, &rec, 1, 6_990).map(|r| r.0), Some(2));
        // The window is over.
        assert_eq!(o.next(&id, &rec, 0, 11_000), None);
    }

    #[test]
    fn arbitrators_and_seeds_draw_different_moments() {
        let (id, rec) = record(1_000);
        let moments = |seed, me| {
            let o = Observer { seed, me };
            (0..5)
                .map(|r| o.next(&id, &rec, r, 0).unwrap().1)
                .collect::<Vec<_>>()
        };
        let a = moments(1, node(100));
        assert_eq!(a, moments(1, node(100)), "deterministic");
        assert_ne!(a, moments(2, node(100)));
        assert_ne!(a, moments(1, node(101)));
    }
}
