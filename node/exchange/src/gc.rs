//! Garbage collection of the embedded store without losing a write in flight.
//!
//! A collection deletes every block no pin reaches. A fetch writes its blocks one by one and
//! pins the root only at the end; an import or a publish writes then pins. A collection in
//! between would delete blocks an operation is about to pin (Kubo guards the same window with
//! its `GCLocker`: adds and pins take a shared lock, `repo gc` the exclusive one). Here every
//! store operation that may write holds a [`GcGate`] pass ([`GcGate::enter`]) from its first
//! write to its pin, and a collection runs only when no pass is out ([`GcGate::try_collect`]);
//! operations that arrive while it runs wait for it to finish. Passes nest (an operation
//! holding one may take another), because a collection never waits for a pass to be handed
//! out: it starts only when none is out, and is tried again later otherwise.
//!
//! [`collector`] runs the collection on its own once holders let go of roots
//! ([`crate::holds`]): `storage.gc_interval_ms` after the first unpin since the last
//! collection, skipped (and counted `deferred`) while writes are in flight.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agora_storage::blockstore::GcStats;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long the operator's `agora storage gc` waits for writes in flight to finish.
pub const MANUAL_GC_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct GateState {
    /// Passes out (operations that may write blocks).
    writers: usize,
    /// A collection runs.
    collecting: bool,
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

#[derive(Debug, Default)]
struct Counters {
    runs: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    removed_blocks: AtomicU64,
    removed_bytes: AtomicU64,
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
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pass for an operation that may write blocks: waits while a collection runs.
    pub async fn enter(&self) -> WritePass {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = self.state();
                if !s.collecting {
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
            writers: self.writers() as u64,
        }
    }
}

impl Drop for WritePass {
    fn drop(&mut self) {
        let last = {
            let mut s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            s.writers = s.writers.saturating_sub(1);
            s.writers == 0
        };
        if last {
            self.inner.changed.notify_waiters();
        }
    }
}

impl Drop for Collection {
    fn drop(&mut self) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .collecting = false;
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
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !gate.has_unpinned() {
            continue;
        }
        match gate.try_collect() {
            Some(collection) => collect(collection).await,
            None => {
                gate.inner.counters.deferred.fetch_add(1, Ordering::Relaxed);
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

    #[tokio::test(start_paused = true)]
    async fn the_collector_runs_only_after_an_unpin_and_defers_while_writing() {
        let gate = GcGate::default();
        let runs = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let task = {
            let (gate, runs, cancel) = (gate.clone(), runs.clone(), cancel.clone());
            tokio::spawn(collector(
                gate.clone(),
                Duration::from_secs(1),
                cancel,
                move |c| {
                    let (gate, runs) = (gate.clone(), runs.clone());
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        gate.record(Ok(&GcStats::default()));
                        drop(c);
                    }
                },
            ))
        };
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
