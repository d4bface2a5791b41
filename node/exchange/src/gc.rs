//! Garbage collection of the embedded store without losing a write in flight.
//!
//! A collection deletes every block no pin reaches. A fetch writes its blocks one by one and
//! pins the root only at the end; an import or a publish writes then pins. A collection in
//! between would delete blocks an operation is about to pin (Kubo guards the same window with
//! its `GCLocker`: adds and pins take a shared lock, `repo gc` the exclusive one). Here every
//! store operation that may write holds a [`GcGate`] pass ([`GcGate::enter`]) from its first
//! write to its pin, and a collection runs only when no pass is out ([`GcGate::try_collect`]);
//! operations that arrive while it runs wait for it to finish. An operation takes one pass and
//! does its nested work under it (`Embedded::blocking_under`): a holder that asked for a
//! second pass while the collector drains (below) would wait for the drain to give up.
//!
//! [`collector`] runs the collection on its own once holders let go of roots
//! ([`crate::holds`]): `storage.gc_interval_ms` after the first unpin since the last
//! collection, skipped (and counted `deferred`) while writes are in flight. Writes that never
//! stop — fetches that overlap one another, which a peer serving slowly or a stream of
//! contracts can keep up — would put collections off for ever and let the store grow without
//! bound; so after [`STARVED_AFTER`] deferrals in a row the collector *drains*
//! ([`GcGate::drain_within`]): new operations wait while those in flight finish, for at most
//! [`DRAIN_WAIT`], then the collection runs (counted `drained`) or the drain gives up (counted
//! `drain_gave_up`) and the writers go on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agora_storage::blockstore::GcStats;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long the operator's `agora storage gc` waits for writes in flight to finish.
pub const MANUAL_GC_WAIT: Duration = Duration::from_secs(30);
/// Automatic collections put off in a row before the collector holds new writes back.
pub const STARVED_AFTER: u32 = 3;
/// Longest a drain holds new writes back while those in flight finish.
pub const DRAIN_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct GateState {
    /// Passes out (operations that may write blocks).
    writers: usize,
    /// A collection runs.
    collecting: bool,
    /// A collection waits for the passes out; no new pass is handed out meanwhile.
    draining: bool,
}

#[derive(Debug, Default)]
struct GateInner {
    state: Mutex<GateState>,
    /// Woken when a collection ends or the last pass comes back.
    changed: Notify,
    /// A root was unpinned since the last collection.
    unpinned: AtomicBool,
    counters: Counters,
}

impl GateInner {
    /// The state (a holder that panicked left it consistent: every change is one assignment).
    fn state(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Default)]
struct Counters {
    runs: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    removed_blocks: AtomicU64,
    removed_bytes: AtomicU64,
    drained: AtomicU64,
    drain_gave_up: AtomicU64,
}

/// What the collections of this process did (`agora storage stats` → `gc`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcCounters {
    /// Collections run (automatic and the operator's).
    pub runs: u64,
    /// Automatic collections put off because writes were in flight.
    pub deferred: u64,
    /// Collections that failed (the store's error is logged).
    pub failed: u64,
    /// Blocks deleted.
    pub removed_blocks: u64,
    /// Bytes deleted.
    pub removed_bytes: u64,
    /// Automatic collections that, put off too often, held new writes back to run.
    pub drained: u64,
    /// Drains that gave up (writes in flight outlasted [`DRAIN_WAIT`]).
    pub drain_gave_up: u64,
    /// Operations that may write blocks, in flight now.
    pub writers: u64,
}

/// The lock between block writes and collections; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct GcGate {
    inner: Arc<GateInner>,
}

/// Held by an operation that may write blocks; a collection waits until every pass is back.
#[derive(Debug)]
#[must_use = "the pass protects writes only while it is held"]
pub struct WritePass {
    inner: Arc<GateInner>,
}

/// Held while a collection runs; operations that may write wait until it is dropped.
#[derive(Debug)]
#[must_use = "the collection is exclusive only while this is held"]
pub struct Collection {
    inner: Arc<GateInner>,
}

impl GcGate {
    fn state(&self) -> MutexGuard<'_, GateState> {
        self.inner.state()
    }

    /// A pass for an operation that may write blocks: waits while a collection runs or drains.
    pub async fn enter(&self) -> WritePass {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = self.state();
                if !s.collecting && !s.draining {
                    s.writers += 1;
                    return WritePass {
                        inner: self.inner.clone(),
                    };
                }
            }
            changed.await;
        }
    }

    /// The right to collect, if no operation that may write is in flight.
    pub fn try_collect(&self) -> Option<Collection> {
        let mut s = self.state();
        if s.writers > 0 || s.collecting {
            return None;
        }
        s.collecting = true;
        s.draining = false;
        // Unpins from now on need another collection.
        self.inner.unpinned.store(false, Ordering::SeqCst);
        Some(Collection {
            inner: self.inner.clone(),
        })
    }

    /// The right to collect, waiting up to `wait` for writes in flight to finish.
    pub async fn collect_within(&self, wait: Duration) -> Option<Collection> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(c) = self.try_collect() {
                return Some(c);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// The right to collect, holding new passes back for up to `wait` while those out come
    /// back; `None` (and new passes flow again) if they do not.
    pub async fn drain_within(&self, wait: Duration) -> Option<Collection> {
        {
            let mut s = self.state();
            if s.collecting || s.draining {
                return None;
            }
            s.draining = true;
        }
        // Ends the drain however this returns, dropped half-way included (a collection that
        // got in has already ended it: `try_collect`).
        let _drain = EndDrain(&self.inner);
        self.collect_within(wait).await
    }

    /// Operations that may write blocks, in flight now.
    pub fn writers(&self) -> usize {
        self.state().writers
    }

    /// A root was unpinned: the next automatic collection has something to do.
    pub fn note_unpinned(&self) {
        self.inner.unpinned.store(true, Ordering::SeqCst);
    }

    /// Whether a root was unpinned since the last collection started.
    pub fn has_unpinned(&self) -> bool {
        self.inner.unpinned.load(Ordering::SeqCst)
    }

    /// Records (and logs) a finished collection.
    pub fn record(&self, outcome: Result<&GcStats, &str>) {
        let c = &self.inner.counters;
        c.runs.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(stats) => {
                c.removed_blocks
                    .fetch_add(stats.removed_blocks as u64, Ordering::Relaxed);
                c.removed_bytes
                    .fetch_add(stats.removed_bytes, Ordering::Relaxed);
                if stats.removed_blocks > 0 {
                    tracing::info!(
                        blocks = stats.removed_blocks,
                        bytes = stats.removed_bytes,
                        "collected unpinned blocks"
                    );
                }
            }
            Err(error) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "block collection failed");
            }
        }
    }

    /// The counters.
    pub fn counters(&self) -> GcCounters {
        let c = &self.inner.counters;
        GcCounters {
            runs: c.runs.load(Ordering::Relaxed),
            deferred: c.deferred.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            removed_blocks: c.removed_blocks.load(Ordering::Relaxed),
            removed_bytes: c.removed_bytes.load(Ordering::Relaxed),
            drained: c.drained.load(Ordering::Relaxed),
            drain_gave_up: c.drain_gave_up.load(Ordering::Relaxed),
            writers: self.writers() as u64,
        }
    }
}

impl Drop for WritePass {
    fn drop(&mut self) {
        let last = {
            let mut s = self.inner.state();
            s.writers = s.writers.saturating_sub(1);
            s.writers == 0
        };
        if last {
            self.inner.changed.notify_waiters();
        }
    }
}

/// Ends a drain when dropped; new passes flow again.
struct EndDrain<'a>(&'a GateInner);

impl Drop for EndDrain<'_> {
    fn drop(&mut self) {
        self.0.state().draining = false;
        self.0.changed.notify_waiters();
    }
}

impl Drop for Collection {
    fn drop(&mut self) {
        self.inner.state().collecting = false;
        self.inner.changed.notify_waiters();
    }
}

/// Collects `interval` after roots were unpinned, while `cancel` is not triggered. `collect`
/// runs one collection under the [`Collection`] it is given.
pub async fn collector<F, Fut>(
    gate: GcGate,
    interval: Duration,
    cancel: CancellationToken,
    collect: F,
) where
    F: Fn(Collection) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut put_off = 0u32;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !gate.has_unpinned() {
            continue;
        }
        let c = &gate.inner.counters;
        if put_off >= STARVED_AFTER {
            tracing::info!(
                writers = gate.writers(),
                put_off,
                "block collection put off too often: holding new writes back"
            );
            let drained = tokio::select! {
                () = cancel.cancelled() => return,
                got = gate.drain_within(DRAIN_WAIT) => got,
            };
            match drained {
                Some(collection) => {
                    put_off = 0;
                    c.drained.fetch_add(1, Ordering::Relaxed);
                    collect(collection).await;
                }
                None => {
                    c.drain_gave_up.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        writers = gate.writers(),
                        "block collection: writes in flight outlasted the drain"
                    );
                }
            }
            continue;
        }
        match gate.try_collect() {
            Some(collection) => {
                put_off = 0;
                collect(collection).await;
            }
            None => {
                put_off += 1;
                c.deferred.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    writers = gate.writers(),
                    "block collection put off: writes in flight"
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_collection_while_a_pass_is_out_and_passes_nest() {
        let gate = GcGate::default();
        let outer = gate.enter().await;
        let inner = gate.enter().await;
        assert_eq!(gate.writers(), 2);
        assert!(gate.try_collect().is_none());
        drop(inner);
        assert!(gate.try_collect().is_none());
        drop(outer);
        let c = gate.try_collect().unwrap();
        assert!(gate.try_collect().is_none(), "one collection at a time");
        drop(c);
        assert_eq!(gate.writers(), 0);
    }

    #[tokio::test]
    async fn a_write_waits_for_the_collection_to_end() {
        let gate = GcGate::default();
        let c = gate.try_collect().unwrap();
        let g = gate.clone();
        let mut writer = tokio::spawn(async move {
            let _pass = g.enter().await;
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut writer)
                .await
                .is_err(),
            "a writer got in during a collection"
        );
        drop(c);
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn the_operators_collection_waits_for_writes_then_gives_up() {
        let gate = GcGate::default();
        let pass = gate.enter().await;
        assert!(
            gate.collect_within(Duration::from_millis(50))
                .await
                .is_none()
        );
        let g = gate.clone();
        let waiting =
            tokio::spawn(async move { g.collect_within(Duration::from_secs(5)).await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(pass);
        assert!(waiting.await.unwrap());
    }

    /// Operations that overlap without end: a new one every 100 ms, each writing for 250 ms.
    fn overlapping_writers(gate: &GcGate, started: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
        let gate = gate.clone();
        tokio::spawn(async move {
            loop {
                let g = gate.clone();
                let started = started.clone();
                tokio::spawn(async move {
                    let _pass = g.enter().await;
                    started.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    fn counting_collector(
        gate: &GcGate,
        interval: Duration,
        cancel: &CancellationToken,
    ) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
        let runs = Arc::new(AtomicU64::new(0));
        let task = {
            let (gate, runs, cancel) = (gate.clone(), runs.clone(), cancel.clone());
            tokio::spawn(collector(gate.clone(), interval, cancel, move |c| {
                let (gate, runs) = (gate.clone(), runs.clone());
                async move {
                    assert_eq!(gate.writers(), 0, "collected with a write in flight");
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.record(Ok(&GcStats::default()));
                    drop(c);
                }
            }))
        };
        (runs, task)
    }

    #[tokio::test(start_paused = true)]
    async fn writes_that_never_stop_do_not_put_collections_off_for_ever() {
        let gate = GcGate::default();
        let cancel = CancellationToken::new();
        let started = Arc::new(AtomicU64::new(0));
        let writers = overlapping_writers(&gate, started.clone());
        let (runs, task) = counting_collector(&gate, Duration::from_secs(1), &cancel);
        gate.note_unpinned();
        // Put off while writes overlap, then the drain: new writes wait, those in flight end.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        assert_eq!(gate.counters().deferred, u64::from(STARVED_AFTER));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the drain did not collect");
        let c = gate.counters();
        assert_eq!((c.drained, c.drain_gave_up), (1, 0));
        // Writes go on after it.
        let before = started.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            started.load(Ordering::SeqCst) >= before + 5,
            "writes did not resume"
        );
        writers.abort();
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_that_a_write_outlasts_gives_up_and_lets_writes_through() {
        let gate = GcGate::default();
        let stuck = gate.enter().await;
        let got = {
            let g = gate.clone();
            tokio::spawn(async move { g.drain_within(Duration::from_secs(5)).await.is_some() })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A new writer waits during the drain...
        let g = gate.clone();
        let mut late = tokio::spawn(async move {
            let _pass = g.enter().await;
        });
        assert!(
            tokio::time::timeout(Duration::from_secs(2), &mut late)
                .await
                .is_err(),
            "a writer got in during a drain"
        );
        // ...and gets in when the drain gives up.
        assert!(!got.await.unwrap());
        tokio::time::timeout(Duration::from_secs(1), late)
            .await
            .unwrap()
            .unwrap();
        // A drain dropped half-way lets writes through too.
        let g = gate.clone();
        let dropped = tokio::spawn(async move { g.drain_within(Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        dropped.abort();
        let _ = dropped.await;
        let pass = tokio::time::timeout(Duration::from_secs(1), gate.enter())
            .await
            .unwrap();
        drop((pass, stuck));
    }

    #[tokio::test(start_paused = true)]
    async fn the_collector_runs_only_after_an_unpin_and_defers_while_writing() {
        let gate = GcGate::default();
        let cancel = CancellationToken::new();
        let (runs, task) = counting_collector(&gate, Duration::from_secs(1), &cancel);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing was unpinned");
        gate.note_unpinned();
        let pass = gate.enter().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "collected during a write");
        assert!(gate.counters().deferred >= 1);
        drop(pass);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "nothing new was unpinned");
        assert_eq!(gate.counters().runs, 1);
        cancel.cancel();
        task.await.unwrap();
    }
}
