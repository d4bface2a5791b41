use super::*;

fn node(b: u8) -> NodeId {
    NodeId([b; 32])
}

fn handoff(job: JobId, devices: &[DeviceId]) -> JobHandoff {
    JobHandoff {
        job,
        selector: "id=1-9".into(),
        firmware: "bafkreiexample".into(),
        firmware_type: "agora-sensor".into(),
        version: "2.0.0".into(),
        max_unavailable: 1,
        devices: devices.to_vec(),
        issued_at: 5,
        finished: false,
        done: Vec::new(),
    }
}

/// Devices 1..=9 belong to node 1, 10.. to node 2.
fn owner_of(d: DeviceId) -> Option<NodeId> {
    match d {
        1..=9 => Some(node(1)),
        10..=19 => Some(node(2)),
        _ => None,
    }
}

#[test]
fn only_the_owner_of_every_device_hands_a_job_over() {
    let mut t = Handoffs::new(4);
    assert_eq!(
        t.receive(0, node(1), handoff(1, &[1, 2]), owner_of),
        Ok(Received::Kept { evicted: None })
    );
    // Another node, even one owning other devices, for node 1's devices: refused.
    assert_eq!(
        t.receive(0, node(2), handoff(2, &[1]), owner_of),
        Err(HandoffRefusal::NotOwner {
            device: 1,
            owner: Some(node(1))
        })
    );
    // One foreign device among its own is enough to refuse the whole request.
    assert!(matches!(
        t.receive(0, node(1), handoff(3, &[2, 10]), owner_of),
        Err(HandoffRefusal::NotOwner { device: 10, .. })
    ));
    // A device whose owner this edge does not know.
    assert!(matches!(
        t.receive(0, node(1), handoff(4, &[99]), owner_of),
        Err(HandoffRefusal::NotOwner {
            device: 99,
            owner: None
        })
    ));
    assert_eq!(t.stats.refused_not_owner, 3);
    assert_eq!(t.list().len(), 1);
}

#[test]
fn malformed_hand_offs_are_refused_and_counted() {
    let mut t = Handoffs::new(4);
    let mut empty = handoff(1, &[]);
    assert!(t.receive(0, node(1), empty.clone(), owner_of).is_err());
    empty.devices = vec![1];
    empty.version = "v".repeat(MAX_LABEL_LEN + 1);
    assert!(t.receive(0, node(1), empty.clone(), owner_of).is_err());
    let mut zero = handoff(1, &[1]);
    zero.max_unavailable = 0;
    assert!(t.receive(0, node(1), zero, owner_of).is_err());
    let many = handoff(1, &[1; MAX_HANDOFF_DEVICES + 1]);
    assert!(t.receive(0, node(1), many, owner_of).is_err());
    assert_eq!(t.stats.refused_malformed, 4);
    assert!(t.list().is_empty());
}

#[test]
fn the_table_is_bounded_and_evicts_resumed_then_oldest() {
    let mut t = Handoffs::new(2);
    t.receive(10, node(1), handoff(1, &[1]), owner_of).unwrap();
    t.receive(20, node(1), handoff(2, &[2]), owner_of).unwrap();
    // Custody of device 2: job 2 is resumed, so it goes first.
    assert_eq!(t.due(30, |d| d == 2).len(), 1);
    assert_eq!(
        t.receive(40, node(1), handoff(3, &[3]), owner_of),
        Ok(Received::Kept {
            evicted: Some((node(1), 2))
        })
    );
    // Then the oldest to arrive.
    assert_eq!(
        t.receive(50, node(1), handoff(4, &[4]), owner_of),
        Ok(Received::Kept {
            evicted: Some((node(1), 1))
        })
    );
    assert_eq!(t.list().len(), 2);
    assert_eq!(t.stats.evicted, 2);
}

#[test]
fn a_hand_off_is_resumed_once_custody_is_taken_and_only_once() {
    let mut t = Handoffs::new(4);
    t.receive(0, node(1), handoff(1, &[1, 2, 3]), owner_of)
        .unwrap();
    assert!(t.due(10, |_| false).is_empty(), "no custody, nothing due");
    assert!(t.waiting());
    let due = t.due(20, |d| d == 3);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].0, node(1));
    assert_eq!(due[0].1.devices, vec![1, 2, 3]);
    assert!(t.due(30, |_| true).is_empty(), "resumed once");
    assert!(!t.waiting());
    // The owner sending it again changes nothing once resumed.
    assert_eq!(
        t.receive(40, node(1), handoff(1, &[1, 2, 3]), owner_of),
        Ok(Received::AlreadyResumed)
    );
    assert_eq!(t.stats.resumed, 1);
}

#[test]
fn a_resent_job_replaces_the_kept_request_and_a_finished_one_retires_it() {
    let mut t = Handoffs::new(4);
    t.receive(0, node(1), handoff(1, &[1, 2]), owner_of)
        .unwrap();
    let mut again = handoff(1, &[2, 1, 2, 3]);
    again.version = "2.0.1".into();
    t.receive(5, node(1), again, owner_of).unwrap();
    let kept = t.list();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].handoff.version, "2.0.1");
    assert_eq!(
        kept[0].handoff.devices,
        vec![1, 2, 3],
        "sorted, deduplicated"
    );
    let mut done = handoff(1, &[1]);
    done.finished = true;
    assert_eq!(
        t.receive(9, node(1), done.clone(), owner_of),
        Ok(Received::Retired)
    );
    assert!(t.list().is_empty());
    assert!(
        t.due(10, |_| true).is_empty(),
        "a retired job is never resumed"
    );
    // A finished hand-off from someone else does not retire the owner's job.
    t.receive(11, node(1), handoff(2, &[1]), owner_of).unwrap();
    assert!(
        t.receive(12, node(2), JobHandoff { job: 2, ..done }, owner_of)
            .is_err()
    );
    assert_eq!(t.list().len(), 1);
}

#[test]
fn a_hand_off_never_resumed_expires() {
    let mut t = Handoffs::new(4);
    t.receive(0, node(1), handoff(1, &[1]), owner_of).unwrap();
    assert!(t.due(HANDOFF_TTL_MS, |_| true).is_empty());
    assert_eq!(t.stats.expired, 1);
    assert!(t.list().is_empty());
}

#[test]
fn the_owner_resends_until_kept_then_retires_once() {
    let (b, c) = (node(2), node(3));
    let mut o = Outbox::default();
    let to: BTreeSet<NodeId> = [b].into();
    assert_eq!(o.due(0, &to, false), vec![b]);
    assert!(o.due(1, &to, false).is_empty(), "one send in flight");
    o.answered(b, false, false);
    assert!(
        o.due(RESEND_MS - 1, &to, false).is_empty(),
        "not before RESEND_MS"
    );
    assert_eq!(o.due(RESEND_MS, &to, false), vec![b]);
    o.answered(b, true, false);
    assert!(
        o.due(10 * RESEND_MS, &to, false).is_empty(),
        "kept: not sent again"
    );
    // A provider named later (a contract armed after the job started) is sent it too.
    let both: BTreeSet<NodeId> = [b, c].into();
    assert_eq!(o.due(10 * RESEND_MS, &both, false), vec![c]);
    o.answered(c, false, false);
    assert_eq!(o.kept_by(), vec![b]);
    // The job is over: only the one that kept it is told, once; nobody new.
    let d = node(4);
    let all: BTreeSet<NodeId> = [b, c, d].into();
    assert_eq!(o.due(20 * RESEND_MS, &all, true), vec![b]);
    // Its answer is lost: the finished version is sent again (a provider that missed it
    // would resume the job at a handover), not before RESEND_MS.
    o.answered(b, false, true);
    assert!(!o.done());
    assert!(o.due(20 * RESEND_MS + 1, &all, true).is_empty());
    assert_eq!(o.due(21 * RESEND_MS, &all, true), vec![b]);
    o.answered(b, true, true);
    assert!(o.due(30 * RESEND_MS, &all, true).is_empty());
    assert!(o.done());
}

/// A provider whose contract ended (the ledger no longer names it) is sent nothing more while
/// the job runs: not a refreshed hand-off if it kept one (it is told when the job ends), not
/// the job at all if it never answered (it is forgotten).
#[test]
fn a_provider_the_ledger_dropped_is_sent_nothing_more() {
    let (b, c) = (node(2), node(3));
    let mut o = Outbox::default();
    let both: BTreeSet<NodeId> = [b, c].into();
    assert_eq!(o.due(0, &both, false), vec![b, c]);
    o.answered(b, true, false);
    o.answered(c, false, false);
    // Both contracts ended; a new provider d is named.
    let d = node(4);
    let now: BTreeSet<NodeId> = [d].into();
    assert_eq!(
        o.due(RESEND_MS, &now, false),
        vec![d],
        "c is not sent it again"
    );
    o.answered(d, true, false);
    o.refresh();
    assert_eq!(
        o.due(2 * RESEND_MS, &now, false),
        vec![d],
        "b gets no refreshed hand-off"
    );
    o.answered(d, true, false);
    assert_eq!(o.kept_by(), vec![d], "b keeps an older version only");
    // The job ends: those that kept it are told, c never is.
    assert_eq!(o.due(3 * RESEND_MS, &now, true), vec![b, d]);
}

#[test]
fn the_owner_gives_up_on_a_recipient_after_max_sends() {
    let b = node(2);
    let mut o = Outbox::default();
    let to: BTreeSet<NodeId> = [b].into();
    let mut sends = 0;
    for i in 0..(u64::from(MAX_SENDS) + 10) {
        for p in o.due(i * RESEND_MS, &to, false) {
            sends += 1;
            o.answered(p, false, false);
        }
    }
    assert_eq!(sends, MAX_SENDS);
}

#[test]
fn outcomes_the_owner_reached_travel_checked() {
    let mut t = Handoffs::new(4);
    let mut h = handoff(1, &[1, 2, 3]);
    h.done = vec![
        (2, OwnerDone::RolledBack),
        (1, OwnerDone::Updated),
        (2, OwnerDone::Updated),
    ];
    assert!(t.receive(0, node(1), h, owner_of).is_ok());
    assert_eq!(
        t.list()[0].handoff.done,
        vec![(1, OwnerDone::Updated), (2, OwnerDone::Updated)],
        "one entry per device (the first after sorting), sorted"
    );
    let mut foreign = handoff(2, &[1]);
    foreign.done = vec![(5, OwnerDone::Updated)];
    assert_eq!(
        t.receive(0, node(1), foreign, owner_of),
        Err(HandoffRefusal::Malformed(
            "a device done that is not in the job"
        ))
    );
    let mut many = handoff(3, &[1]);
    many.done = vec![(1, OwnerDone::Updated), (1, OwnerDone::RolledBack)];
    assert!(
        matches!(
            t.receive(0, node(1), many, owner_of),
            Err(HandoffRefusal::Malformed(_))
        ),
        "more entries than devices"
    );
}

#[test]
fn a_persisted_table_reloads_checked_bounded_and_fresh() {
    let mut t = Handoffs::new(3);
    t.receive(10, node(1), handoff(1, &[1]), owner_of).unwrap();
    t.receive(20, node(1), handoff(2, &[2]), owner_of).unwrap();
    let saved = t.list();
    let mut again = Handoffs::new(3);
    again.restore(30, saved.clone());
    assert_eq!(again.list(), saved, "what was kept comes back");
    assert_eq!(again.stats.dropped_on_load, 0);
    assert!(again.waiting());
    // Hostile or stale entries: malformed, finished, expired, a duplicate, beyond the bound.
    let entry = |job, at, h: JobHandoff| KeptHandoff {
        owner: node(1),
        handoff: JobHandoff { job, ..h },
        received_at: at,
        resumed: false,
    };
    let mut no_devices = handoff(0, &[]);
    no_devices.devices.clear();
    let mut finished = handoff(0, &[3]);
    finished.finished = true;
    let now = HANDOFF_TTL_MS + 100;
    let entries = vec![
        entry(1, now, no_devices),
        entry(2, now, finished),
        entry(3, 50, handoff(0, &[3])),
        entry(4, now - 1, handoff(0, &[4])),
        entry(4, now - 2, handoff(0, &[5])),
        entry(5, now - 3, handoff(0, &[6])),
        entry(6, now - 4, handoff(0, &[7])),
        entry(7, now - 5, handoff(0, &[8])),
    ];
    let mut t = Handoffs::new(3);
    t.restore(now, entries);
    let jobs: Vec<JobId> = t.list().iter().map(|k| k.handoff.job).collect();
    assert_eq!(jobs, vec![4, 5, 6], "the newest three valid ones");
    assert_eq!(
        t.list()[0].handoff.devices,
        vec![4],
        "the later of a duplicate"
    );
    assert_eq!(
        t.stats.dropped_on_load, 4,
        "the finished entry is a retired job, not dropped"
    );
    assert_eq!(t.retired(), 1);
}

/// THREATS R5: copies of one job arrive out of order (the owner's resends, the network's
/// retries); none undoes what a later one said.
#[test]
fn a_late_copy_never_undoes_a_later_word_of_the_owner() {
    let mut t = Handoffs::new(4);
    let first = handoff(1, &[1, 2, 3]);
    t.receive(0, node(1), first.clone(), owner_of).unwrap();
    // The owner finished device 1, then device 2; the copy naming only 1 arrives last.
    let mut one = first.clone();
    one.done = vec![(1, OwnerDone::Updated)];
    let mut two = first.clone();
    two.done = vec![(1, OwnerDone::Updated), (2, OwnerDone::RolledBack)];
    t.receive(1, node(1), two, owner_of).unwrap();
    t.receive(2, node(1), one, owner_of).unwrap();
    t.receive(3, node(1), first.clone(), owner_of).unwrap();
    assert_eq!(
        t.list()[0].handoff.done,
        vec![(1, OwnerDone::Updated), (2, OwnerDone::RolledBack)],
        "what the owner finished stays finished"
    );
    // The owner finishes the job; a copy of an earlier send still on its way arrives after.
    let mut finished = first.clone();
    finished.finished = true;
    assert_eq!(
        t.receive(4, node(1), finished.clone(), owner_of),
        Ok(Received::Retired)
    );
    assert_eq!(
        t.receive(5, node(1), first.clone(), owner_of),
        Ok(Received::Stale)
    );
    assert!(t.list().is_empty(), "a finished job is not kept again");
    assert!(t.due(6, |_| true).is_empty(), "nor resumed");
    // Persisted and reloaded (a restart), the retired job is still known.
    let mut again = Handoffs::new(4);
    again.restore(7, t.to_file());
    assert_eq!(again.stats.dropped_on_load, 0);
    assert_eq!(
        again.receive(8, node(1), first.clone(), owner_of),
        Ok(Received::Stale)
    );
    assert_eq!(again.stats.stale, 1);
    // The owner restarted and uses the id again for a job started later: a new job.
    let mut reused = first.clone();
    reused.issued_at = 100;
    assert_eq!(
        again.receive(9, node(1), reused.clone(), owner_of),
        Ok(Received::Kept { evicted: None })
    );
    // A finished copy of the old start retires nothing of the new one.
    assert_eq!(
        again.receive(10, node(1), finished, owner_of),
        Ok(Received::Stale)
    );
    assert_eq!(again.due(11, |_| true).len(), 1);
    // Resumed; a copy of the old start neither replaces it nor is resumed again.
    assert_eq!(
        again.receive(12, node(1), first, owner_of),
        Ok(Received::Stale)
    );
    assert!(again.due(13, |_| true).is_empty());
}

#[test]
fn one_owner_cannot_flush_another_owners_retired_jobs() {
    let mut t = Handoffs::new(4);
    let mut h = handoff(1, &[10]);
    h.finished = true;
    t.receive(0, node(2), h, owner_of).unwrap();
    // Node 1 retires far more jobs than its share.
    for job in 0..(MAX_RETIRED as u64 * 2) {
        let mut h = handoff(job, &[1]);
        h.finished = true;
        t.receive(1 + job, node(1), h, owner_of).unwrap();
    }
    assert_eq!(t.retired(), MAX_RETIRED_PER_OWNER + 1);
    assert_eq!(
        t.receive(10_000, node(2), handoff(1, &[10]), owner_of),
        Ok(Received::Stale),
        "node 2's retired job is still known"
    );
}

#[test]
fn a_reused_ids_later_start_does_not_forget_the_retired_one() {
    let mut t = Handoffs::new(1);
    let mut old = handoff(1, &[1]);
    old.finished = true;
    t.receive(0, node(1), old.clone(), owner_of).unwrap();
    let mut new = handoff(1, &[1]);
    new.issued_at = 50;
    t.receive(1, node(1), new, owner_of).unwrap();
    // The new start is evicted by another job; a late copy of the old start still is stale.
    t.receive(2, node(1), handoff(2, &[2]), owner_of).unwrap();
    assert_eq!(
        t.receive(3, node(1), handoff(1, &[1]), owner_of),
        Ok(Received::Stale)
    );
}

#[test]
fn retired_jobs_are_bounded_and_the_oldest_go_first() {
    // Five owners, device `b` owned by node `b`, each retiring its share of jobs in turn.
    let owner = |d: DeviceId| Some(node(d as u8));
    let mut t = Handoffs::new(4);
    let mut at = 0;
    for b in 1..=5u8 {
        for job in 0..MAX_RETIRED_PER_OWNER as u64 {
            let mut h = handoff(job, &[DeviceId::from(b)]);
            h.finished = true;
            at += 1;
            t.receive(at, node(b), h, owner).unwrap();
        }
    }
    assert_eq!(t.retired(), MAX_RETIRED);
    // Node 1's were the oldest: gone, so its copy is kept again; node 2's are still known.
    assert!(matches!(
        t.receive(1_000, node(1), handoff(0, &[1]), owner),
        Ok(Received::Kept { .. })
    ));
    assert_eq!(
        t.receive(1_001, node(2), handoff(0, &[2]), owner),
        Ok(Received::Stale)
    );
    let file = t.to_file();
    assert_eq!(file.len(), 1 + MAX_RETIRED);
    let mut again = Handoffs::new(4);
    again.restore(1_002, file);
    assert_eq!(again.retired(), MAX_RETIRED);
    assert_eq!(again.list().len(), 1);
    assert_eq!(again.stats.dropped_on_load, 0);
}

#[test]
fn a_changed_hand_off_is_sent_again_and_an_outdated_ack_does_not_count() {
    let mut o = Outbox::default();
    let to: BTreeSet<NodeId> = [node(7), node(8)].into();
    assert_eq!(o.due(0, &to, false).len(), 2);
    o.answered(node(7), true, false);
    // node 8's send is still in flight when the owner finishes a device.
    o.refresh();
    o.answered(node(8), true, false);
    assert!(o.kept_by().is_empty(), "both hold an outdated version");
    assert_eq!(
        o.due(1, &to, false),
        vec![node(7), node(8)],
        "sent again at once"
    );
    o.answered(node(7), true, false);
    o.answered(node(8), true, false);
    assert_eq!(o.kept_by(), vec![node(7), node(8)]);
    assert!(o.due(10_000, &to, false).is_empty());
    // A recipient that kept only an outdated version is still told the job finished.
    o.refresh();
    assert_eq!(o.due(20_000, &BTreeSet::new(), true).len(), 2);
}
