//! The readings pause of a firmware job (issue #16): a device this edge tells to reboot into
//! its bootloader sends nothing until it runs a final firmware again. The pure job says so
//! with `Effect::Pause` / `Effect::Resume`; the radio task applies them to the device's entry
//! through these functions, so that
//! - the silence is expected: a paused device whose every reading heard here is behind the
//!   resume point is not a gap at a takeover (no replay request goes out for it);
//! - a fresh reading heard while paused (the device was not offline after all) is counted
//!   (`heard_paused`) and still processed, never dropped;
//! - after boot the bookkeeping resumes where it stopped: the first reading processed after
//!   the pause is recorded (`resumed_from`), and the duplicate and missing rules apply to it
//!   as to any other (the device's frame counter survives reboots, so it is the next one).
//!
//! Nothing here grows: the fields are on the device's existing entry, and only a device in
//! the table (one this edge has custody of) is paused.

use super::DeviceStatus;

/// A firmware job took the device offline: no reading is expected until [`resume`].
pub(crate) fn pause(st: &mut DeviceStatus) {
    if st.paused {
        return;
    }
    st.paused = true;
    st.pauses = st.pauses.saturating_add(1);
    st.paused_after = st.last_processed.max(st.heard);
    st.resumed_from = None;
}

/// The device runs a final firmware again (or its job ended): its readings count as usual.
pub(crate) fn resume(st: &mut DeviceStatus) {
    st.paused = false;
}

/// Reading `seq` of the device was heard (before the duplicate checks).
pub(crate) fn on_heard(st: &mut DeviceStatus, seq: u32) {
    if st.paused && st.paused_after.is_none_or(|p| seq > p) {
        st.heard_paused = st.heard_paused.saturating_add(1);
    }
}

/// Reading `seq` of the device was processed here.
pub(crate) fn on_processed(st: &mut DeviceStatus, seq: u32) {
    if st.pauses > 0 && st.resumed_from.is_none() && st.paused_after.is_none_or(|p| seq > p) {
        st.resumed_from = Some(seq);
    }
}

/// Whether a takeover resuming after `resume_after` has nothing to fetch from peers because
/// the device is paused and sent nothing beyond it: every reading heard here before the pause
/// is at or behind the resume point.
pub(crate) fn silent_since(st: &DeviceStatus, resume_after: u32) -> bool {
    st.paused && st.paused_after.is_some_and(|p| p <= resume_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> DeviceStatus {
        DeviceStatus {
            device: 7,
            ..DeviceStatus::default()
        }
    }

    /// What the radio task does with a reading: hear, then process unless stale.
    fn reading(st: &mut DeviceStatus, seq: u32) -> bool {
        st.heard = Some(st.heard.map_or(seq, |h| h.max(seq)));
        on_heard(st, seq);
        if st.last_processed.is_some_and(|l| seq <= l) {
            st.duplicates += 1;
            return false;
        }
        st.missing += crate::rules::skipped(st.last_processed, st.peer_covered, seq);
        st.processed += 1;
        st.last_processed = Some(seq);
        on_processed(st, seq);
        true
    }

    #[test]
    fn bookkeeping_resumes_at_the_next_reading_after_boot() {
        let mut st = status();
        for seq in 1..=5 {
            assert!(reading(&mut st, seq));
        }
        pause(&mut st);
        assert!(st.paused);
        assert_eq!((st.pauses, st.paused_after), (1, Some(5)));
        // A frame of before the reboot arriving late is a duplicate, not a fresh one.
        assert!(!reading(&mut st, 5));
        assert_eq!(st.heard_paused, 0);
        resume(&mut st);
        for seq in 6..=8 {
            assert!(reading(&mut st, seq));
        }
        assert_eq!(st.resumed_from, Some(6));
        assert_eq!((st.processed, st.duplicates, st.missing), (8, 1, 0));
        // A second pause records its own resume point.
        pause(&mut st);
        pause(&mut st);
        assert_eq!(
            (st.pauses, st.paused_after, st.resumed_from),
            (2, Some(8), None)
        );
        resume(&mut st);
        assert!(reading(&mut st, 9));
        assert_eq!(st.resumed_from, Some(9));
    }

    #[test]
    fn a_fresh_reading_while_paused_is_counted_and_still_processed() {
        let mut st = status();
        assert!(reading(&mut st, 1));
        pause(&mut st);
        assert!(reading(&mut st, 2), "never dropped");
        assert_eq!(st.heard_paused, 1);
        assert_eq!(st.processed, 2);
    }

    #[test]
    fn a_paused_device_is_a_gap_only_if_it_sent_past_the_resume_point() {
        let mut st = status();
        for seq in 1..=4 {
            reading(&mut st, seq);
        }
        assert!(
            !silent_since(&st, 4),
            "not paused: peers may have heard more"
        );
        pause(&mut st);
        assert!(silent_since(&st, 4));
        assert!(silent_since(&st, 9));
        assert!(
            !silent_since(&st, 3),
            "reading 4 was sent before the pause: fetch it"
        );
        resume(&mut st);
        assert!(!silent_since(&st, 4));
        // Never heard anything: no word on what it sent, ask.
        let mut fresh = status();
        pause(&mut fresh);
        assert!(!silent_since(&fresh, 0));
    }
}
