//! The provider's heartbeat rule, in one place for the role machine (`provider.rs`) and the
//! node's orchestrator: when a batch is due and what it claims (uptime, readings, data
//! proofs). Pure: the caller passes the time and what it measured (whether the service runs,
//! the readings processed, the proofs the radio offers), submits the batch and reports whether
//! the ledger took it.

use std::collections::BTreeSet;

use agora_contracts::ledger::{ContractRecord, HeartbeatBatch, UptimeInterval};
use agora_market::Timestamp;
use cid::Cid;

use crate::{
    CLOCK_MARGIN_MS, MIN_HEARTBEAT_MS, PROOFS_PER_HEARTBEAT, first_uptime_from, fresh_proofs,
};

/// A provider's heartbeat bookkeeping for one active hosted contract: when the next batch is
/// due and what it claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Time between two batches: the contract's heartbeat interval, at least
    /// [`MIN_HEARTBEAT_MS`].
    period_ms: u64,
    /// Uptime is never claimed before this: when the service (re)started, or when it was
    /// last seen stopped. Each batch starts at this or the ledger's cursor, the later.
    reported_to: Timestamp,
    /// When the latest batch began (or the service started): the next is due a period later.
    last: Timestamp,
    /// The readings total of the latest accepted batch.
    readings_reported: u64,
    /// Proofs of accepted batches that the radio still offers (THREATS C26).
    proofs_reported: BTreeSet<Cid>,
    /// The batch built and not answered yet: its readings total and its proofs.
    in_flight: Option<(u64, Vec<Cid>)>,
}

impl Heartbeat {
    /// Bookkeeping for a contract whose heartbeat interval is `period_ms`. One batch per
    /// evidence round at most (at least [`MIN_HEARTBEAT_MS`]): every replica verifies each
    /// one, and 49 providers heartbeating every 500 ms (twice a round) were most of a 50-node
    /// chain's backlog. The uptime they report is the same; the settlement judges the time
    /// they speak for.
    pub fn new(period_ms: u64) -> Self {
        Heartbeat {
            period_ms: period_ms.max(MIN_HEARTBEAT_MS),
            reported_to: 0,
            last: 0,
            readings_reported: 0,
            proofs_reported: BTreeSet::new(),
            in_flight: None,
        }
    }

    /// The time between two batches.
    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }

    /// The service started at `at` while the ledger's uptime cursor (`last_uptime_end`) stood
    /// at `cursor`: after a restart, uptime is claimed only from then on and never before what
    /// the ledger already holds. The next batch is due a period after `now`.
    pub fn started(&mut self, at: Timestamp, cursor: Option<Timestamp>, now: Timestamp) {
        self.reported_to = at.max(cursor.unwrap_or(0));
        self.last = now;
    }

    /// When the next batch is due.
    pub fn due_at(&self) -> Timestamp {
        self.last.saturating_add(self.period_ms)
    }

    /// Whether a batch is due at `now`.
    pub fn due(&self, now: Timestamp) -> bool {
        now >= self.due_at()
    }

    /// A batch begins at `now` (the role machine: when it asks for the meter); the next is due
    /// a period later.
    pub fn begin(&mut self, now: Timestamp) {
        self.last = now;
    }

    /// The batch to submit at `now`, kept in flight until [`Self::answered`]:
    /// - uptime, if the service is `running`, from where the ledger's cursor stands, never
    ///   before the service (re)started (`since`, by this node's clock) or was last seen
    ///   stopped ([`first_uptime_from`], THREATS A6), to [`CLOCK_MARGIN_MS`] before `now`
    ///   (the block that carries it may be stamped that far behind this clock). A service seen
    ///   stopped never claims the time until then, even once it runs again;
    /// - the readings `processed` since the latest accepted batch;
    /// - up to [`PROOFS_PER_HEARTBEAT`] of the `offered` proofs (the radio's bounded history,
    ///   oldest first) not reported yet ([`fresh_proofs`], THREATS C26).
    ///
    /// `rec` is the contract's ledger record (cursor and activation time).
    pub fn batch(
        &mut self,
        now: Timestamp,
        running: bool,
        processed: u64,
        offered: &[Cid],
        since: Option<Timestamp>,
        rec: Option<&ContractRecord>,
    ) -> HeartbeatBatch {
        let fresh = fresh_proofs(&mut self.proofs_reported, offered, PROOFS_PER_HEARTBEAT);
        let to = now.saturating_sub(CLOCK_MARGIN_MS);
        if !running {
            self.reported_to = self.reported_to.max(to);
        }
        // A block stamped behind this node's clock clips a batch, and a refused batch moves
        // nothing: starting at this node's own end of the last batch would leave the
        // difference as a gap counted against it. Batches in flight together overlap; the
        // ledger counts each moment once.
        let from = first_uptime_from(
            self.reported_to,
            since,
            rec.and_then(|r| r.last_uptime_end),
            rec.and_then(|r| r.activated_at),
        );
        let interval = (running && to > from).then_some(UptimeInterval { from, to });
        let batch = HeartbeatBatch {
            intervals: interval.into_iter().collect(),
            readings_processed: processed.saturating_sub(self.readings_reported),
            data_proofs: fresh.clone(),
        };
        // A total below the one reported (a radio that did not answer counts 0) claims none
        // and keeps what was reported: the next answer would claim it all again.
        self.in_flight = Some((processed.max(self.readings_reported), fresh));
        batch
    }

    /// The batch in flight was `accepted` (or refused): only an accepted one moves the
    /// readings and proofs reported, so a refused batch's are claimed again by the next.
    pub fn answered(&mut self, accepted: bool) {
        let Some((processed, proofs)) = self.in_flight.take() else {
            return;
        };
        if accepted {
            self.readings_reported = processed;
            self.proofs_reported.extend(proofs);
        }
    }
}

/// Whether a `SettleUptime` should follow a heartbeat: the ledger shows uptime payment to
/// collect (one it would refuse still takes a block's room).
pub fn uptime_collectable(rec: Option<&ContractRecord>) -> bool {
    rec.is_some_and(|r| r.collectable() > 0)
}

#[cfg(test)]
mod tests {
    //! One test per rule; each names the mutant of [`Heartbeat`] it catches.

    use agora_contracts::ledger::MAX_CLOCK_SKEW_MS;
    use agora_contracts::test_utils::{ContractBuilder, test_cid};

    use super::*;

    const PERIOD: u64 = 3_000;
    const STARTED: Timestamp = 10_000;

    fn record(cursor: Option<Timestamp>, activated_at: Option<Timestamp>) -> ContractRecord {
        let mut r = ContractRecord::new(ContractBuilder::new(1, 2).build(), 1_000).unwrap();
        r.last_uptime_end = cursor;
        r.activated_at = activated_at;
        r
    }

    /// A contract's bookkeeping with its service started at [`STARTED`], nothing on the
    /// ledger yet.
    fn started() -> Heartbeat {
        let mut hb = Heartbeat::new(PERIOD);
        hb.started(STARTED, None, STARTED);
        hb
    }

    fn proofs(n: u8) -> Vec<Cid> {
        (0..n).map(|i| test_cid(&[i])).collect()
    }

    /// Mutants: `due` as `now > due_at` (off by one), or `begin` not moving `last`.
    #[test]
    fn a_batch_is_not_due_before_its_period() {
        let mut hb = started();
        assert!(!hb.due(STARTED + PERIOD - 1));
        assert!(hb.due(STARTED + PERIOD));
        hb.begin(STARTED + PERIOD);
        assert!(!hb.due(STARTED + 2 * PERIOD - 1));
        assert!(hb.due(STARTED + 2 * PERIOD));
    }

    /// Mutant: `new` without `.max(MIN_HEARTBEAT_MS)`.
    #[test]
    fn the_period_is_never_below_one_evidence_round() {
        let hb = Heartbeat::new(500);
        assert_eq!(hb.period_ms(), MIN_HEARTBEAT_MS);
        assert!(!hb.due(MIN_HEARTBEAT_MS - 1));
        assert!(hb.due(MIN_HEARTBEAT_MS));
        assert_eq!(Heartbeat::new(PERIOD).period_ms(), PERIOD);
    }

    /// Mutant: `to = now` (no `CLOCK_MARGIN_MS`).
    #[test]
    fn the_interval_ends_a_clock_margin_before_now() {
        let mut hb = started();
        let now = STARTED + PERIOD;
        let batch = hb.batch(now, true, 0, &[], Some(STARTED), None);
        assert_eq!(
            batch.intervals,
            vec![UptimeInterval {
                from: STARTED,
                to: now - CLOCK_MARGIN_MS
            }]
        );
        // Nothing to claim yet within the margin of the start.
        let mut hb = started();
        let batch = hb.batch(STARTED + CLOCK_MARGIN_MS, true, 0, &[], Some(STARTED), None);
        assert!(batch.intervals.is_empty());
    }

    /// Mutants: dropping `if !running { reported_to = reported_to.max(to) }` (or moving it
    /// into `answered`, for accepted batches only), or claiming an interval while not running.
    #[test]
    fn time_seen_stopped_is_never_claimed() {
        let mut hb = started();
        let stopped_at = STARTED + PERIOD;
        let batch = hb.batch(stopped_at, false, 0, &[], Some(STARTED), None);
        assert!(
            batch.intervals.is_empty(),
            "a stopped service claims no uptime"
        );
        hb.answered(true);
        // Running again: the batch starts where it was seen stopped, not at the start.
        let now = stopped_at + PERIOD;
        let batch = hb.batch(now, true, 0, &[], Some(STARTED), None);
        assert_eq!(
            batch.intervals,
            vec![UptimeInterval {
                from: stopped_at - CLOCK_MARGIN_MS,
                to: now - CLOCK_MARGIN_MS
            }]
        );
        // Whatever the ledger said about the batch: a refused one does not bring it back.
        let mut hb = started();
        hb.batch(stopped_at, false, 0, &[], Some(STARTED), None);
        hb.answered(false);
        let batch = hb.batch(now, true, 0, &[], Some(STARTED), None);
        assert_eq!(batch.intervals[0].from, stopped_at - CLOCK_MARGIN_MS);
    }

    /// Mutants: `batch` passing `first_uptime_from` no cursor (the batch would start before
    /// what the ledger holds) or no `activated_at` (A6: a gap at the start under skew), or
    /// `started` ignoring its cursor.
    #[test]
    fn a_batch_starts_at_the_ledger_cursor_or_at_the_recorded_activation() {
        let now = STARTED + 2 * PERIOD;
        // Where the first batch of a service started at `STARTED` begins, given the ledger.
        let start = |cursor, activated_at| {
            let rec = record(cursor, activated_at);
            let batch = started().batch(now, true, 0, &[], Some(STARTED), Some(&rec));
            assert_eq!(batch.intervals.len(), 1);
            batch.intervals[0].from
        };
        // The ledger holds uptime up to its cursor: the batch starts there.
        assert_eq!(
            start(Some(STARTED + PERIOD), Some(STARTED)),
            STARTED + PERIOD
        );
        // No batch on the ledger yet, the activation dated behind this clock (within the
        // ledger's skew): from the ledger's activation, or that time is a gap (A6).
        assert_eq!(start(None, Some(STARTED - 500)), STARTED - 500);
        // Further behind than the skew: a restart long after the activation claims nothing
        // before it.
        let long_ago = STARTED - MAX_CLOCK_SKEW_MS - 1;
        assert_eq!(start(None, Some(long_ago)), STARTED);
        // Restarted while the ledger's cursor stood past the start: never before it.
        let mut hb = Heartbeat::new(PERIOD);
        hb.started(STARTED, Some(STARTED + 700), STARTED);
        let batch = hb.batch(now, true, 0, &[], Some(STARTED), None);
        assert_eq!(batch.intervals[0].from, STARTED + 700);
    }

    /// Mutants: `answered` moving readings or proofs whatever `accepted` says, `batch` writing
    /// `readings_reported`/`proofs_reported` itself, or `answered` leaving the batch in flight
    /// (a stray second answer would then apply the refused batch).
    #[test]
    fn a_refused_batch_moves_neither_readings_nor_proofs() {
        let offered = proofs(4);
        let mut hb = started();
        let batch = hb.batch(STARTED + PERIOD, true, 10, &offered, Some(STARTED), None);
        assert_eq!((batch.readings_processed, batch.data_proofs.len()), (10, 4));
        hb.answered(false);
        hb.answered(true);
        let batch = hb.batch(
            STARTED + 2 * PERIOD,
            true,
            15,
            &offered,
            Some(STARTED),
            None,
        );
        assert_eq!(
            batch.readings_processed, 15,
            "the refused 10 are claimed again"
        );
        assert_eq!(batch.data_proofs, offered, "and so are its proofs");
        hb.answered(true);
        let batch = hb.batch(
            STARTED + 3 * PERIOD,
            true,
            18,
            &offered,
            Some(STARTED),
            None,
        );
        assert_eq!(batch.readings_processed, 3);
        assert!(batch.data_proofs.is_empty());
    }

    /// Mutants: `batch` taking more than [`PROOFS_PER_HEARTBEAT`], or filtering `offered`
    /// against `proofs_reported` without `fresh_proofs`' prune (THREATS C26: the set grew for
    /// the contract's life).
    #[test]
    fn proofs_stay_bounded_by_the_offered_history() {
        const HISTORY: usize = 40;
        let all = proofs(200);
        let mut hb = started();
        let batch = hb.batch(STARTED, true, 0, &all[..HISTORY], Some(STARTED), None);
        assert_eq!(batch.data_proofs, all[..PROOFS_PER_HEARTBEAT].to_vec());
        hb.answered(false);
        let mut sent = Vec::new();
        // Each round the radio makes 16 new proofs and keeps its latest `HISTORY`.
        for (i, newest) in (16..=all.len()).step_by(16).enumerate() {
            let offered = &all[newest.saturating_sub(HISTORY)..newest];
            let at = STARTED + PERIOD * (i as u64 + 1);
            let batch = hb.batch(at, true, 0, offered, Some(STARTED), None);
            sent.extend(batch.data_proofs);
            hb.answered(true);
            assert!(hb.proofs_reported.len() <= HISTORY, "at batch {i}");
        }
        assert_eq!(sent, all[..192].to_vec(), "each proof once, in order");
    }

    /// Mutants: `uptime_collectable` as `rec.is_some()`, or as never.
    #[test]
    fn uptime_is_collected_only_when_the_ledger_shows_some() {
        assert!(!uptime_collectable(None));
        assert!(!uptime_collectable(Some(&record(None, None))));
        // Active, with confirmed uptime reported and not paid yet.
        let mut r = record(Some(STARTED + 10_000), Some(STARTED));
        r.status = agora_contracts::lifecycle::ContractStatus::Active;
        r.uptime_ms = r.contract.duration_ms / 2;
        r.confirmed_up_ms = r.uptime_ms;
        assert!(r.collectable() > 0, "{r:?}");
        assert!(uptime_collectable(Some(&r)));
    }

    /// A readings total below the one reported (a radio that did not answer counts 0) claims
    /// none and keeps what was reported. Mutant: the total taken as it comes (the next batch
    /// would claim every reading again).
    #[test]
    fn the_readings_reported_never_go_back() {
        let mut hb = started();
        let b = hb.batch(STARTED + PERIOD, true, 40, &[], None, None);
        assert_eq!(b.readings_processed, 40);
        hb.answered(true);
        let b = hb.batch(STARTED + 2 * PERIOD, true, 0, &[], None, None);
        assert_eq!(b.readings_processed, 0);
        hb.answered(true);
        let b = hb.batch(STARTED + 3 * PERIOD, true, 45, &[], None, None);
        assert_eq!(
            b.readings_processed, 5,
            "only the readings since the 40 reported"
        );
    }
}
