//! Host-side I/O of a service: its reading queue, north-bound messages, key-value store and
//! bounded log. Every buffer here is bounded so a guest cannot grow host memory without limit.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Largest sensor reading accepted by `push_reading`.
pub const MAX_READING_BYTES: usize = 64 << 10;
/// Largest message a guest may `publish`.
pub const MAX_PUBLISH_BYTES: usize = 64 << 10;
/// Largest key accepted by `kv_put`/`kv_get`.
pub const MAX_KV_KEY_BYTES: usize = 256;
/// Largest value accepted by `kv_put`.
pub const MAX_KV_VALUE_BYTES: usize = 16 << 10;
/// Largest single `log` line kept.
pub const MAX_LOG_LINE_BYTES: usize = 4 << 10;
/// Most entries one `kv_scan` call returns (and a [`KvStore::scan`] is asked for).
pub const MAX_KV_SCAN_ITEMS: usize = 64;

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A message a service published for north-side forwarding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The publishing service.
    pub service: String,
    /// Per-service sequence number, from 0.
    pub seq: u64,
    /// The guest's bytes.
    pub payload: Vec<u8>,
    /// blake3 of `payload`; the node signs this to vouch for what it forwarded.
    pub digest: [u8; 32],
}

/// A [`KvStore`] that does not implement an operation (the guest sees `-3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this key-value store does not support {0}; implement it in the KvStore")]
pub struct KvUnsupported(pub &'static str);

/// Entries returned by [`KvStore::scan`], as (key, value) pairs in key order.
pub type KvEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// The small persistent key-value store a service sees; one namespace per service.
pub trait KvStore: Send + Sync {
    /// The value under `key` in `namespace`, if any.
    fn get(&self, namespace: &str, key: &[u8]) -> Option<Vec<u8>>;
    /// Stores `value`; returns false when a size or count bound would be exceeded.
    fn put(&self, namespace: &str, key: &[u8], value: &[u8]) -> bool;
    /// Removes `key`; returns whether it was there.
    fn delete(&self, namespace: &str, key: &[u8]) -> Result<bool, KvUnsupported> {
        let _ = (namespace, key);
        Err(KvUnsupported("delete"))
    }
    /// Up to `max_items` entries of `namespace` with keys `>= start`, in key order. The host
    /// never asks for more than [`MAX_KV_SCAN_ITEMS`], so one call's work stays bounded.
    fn scan(
        &self,
        namespace: &str,
        start: &[u8],
        max_items: usize,
    ) -> Result<KvEntries, KvUnsupported> {
        let _ = (namespace, start, max_items);
        Err(KvUnsupported("scan"))
    }
}

/// (namespace, key) → value.
type KvMap = BTreeMap<(String, Vec<u8>), Vec<u8>>;

/// In-memory [`KvStore`] bounded in entries per namespace; not persistent (a restart of the
/// node loses it) — a sled-backed store belongs in `node`.
#[derive(Debug)]
pub struct MemoryKv {
    max_entries: usize,
    inner: Mutex<KvMap>,
}

impl MemoryKv {
    /// A store holding at most `max_entries` keys per namespace.
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            inner: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Default for MemoryKv {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl KvStore for MemoryKv {
    fn get(&self, namespace: &str, key: &[u8]) -> Option<Vec<u8>> {
        lock(&self.inner)
            .get(&(namespace.to_string(), key.to_vec()))
            .cloned()
    }

    fn put(&self, namespace: &str, key: &[u8], value: &[u8]) -> bool {
        if key.len() > MAX_KV_KEY_BYTES || value.len() > MAX_KV_VALUE_BYTES {
            return false;
        }
        let mut map = lock(&self.inner);
        let k = (namespace.to_string(), key.to_vec());
        if !map.contains_key(&k) {
            // Count only this namespace's keys (a range, not a walk over every namespace).
            let used = namespace_range(&map, namespace, &[])
                .take(self.max_entries)
                .count();
            if used >= self.max_entries {
                return false;
            }
        }
        map.insert(k, value.to_vec());
        true
    }

    fn delete(&self, namespace: &str, key: &[u8]) -> Result<bool, KvUnsupported> {
        Ok(lock(&self.inner)
            .remove(&(namespace.to_string(), key.to_vec()))
            .is_some())
    }

    fn scan(
        &self,
        namespace: &str,
        start: &[u8],
        max_items: usize,
    ) -> Result<KvEntries, KvUnsupported> {
        let map = lock(&self.inner);
        Ok(namespace_range(&map, namespace, start)
            .take(max_items.min(MAX_KV_SCAN_ITEMS))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// The entries of `namespace` with keys `>= start`, in order.
fn namespace_range<'a>(
    map: &'a KvMap,
    namespace: &'a str,
    start: &[u8],
) -> impl Iterator<Item = (&'a (String, Vec<u8>), &'a Vec<u8>)> + 'a {
    map.range((
        Bound::Included((namespace.to_string(), start.to_vec())),
        Bound::Unbounded,
    ))
    .take_while(move |((ns, _), _)| ns == namespace)
}

/// Bounded FIFO of sensor readings waiting for a service; drops the oldest when full.
#[derive(Debug)]
pub(crate) struct ReadingQueue {
    capacity: usize,
    queue: Mutex<VecDeque<Vec<u8>>>,
    ready: Notify,
}

impl ReadingQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
        }
    }

    /// Queues a reading; returns false if the oldest had to be dropped.
    pub(crate) fn push(&self, reading: Vec<u8>) -> bool {
        let mut q = lock(&self.queue);
        let dropped = if q.len() >= self.capacity {
            q.pop_front();
            true
        } else {
            false
        };
        q.push_back(reading);
        drop(q);
        // Stores a permit if the service is busy, so the next `readable` returns at once.
        self.ready.notify_one();
        !dropped
    }

    /// Takes the next reading if it fits in `cap` bytes: `Ok(Some)`, `Ok(None)` when empty,
    /// `Err(len)` when it does not fit (it stays queued).
    pub(crate) fn pop_fitting(&self, cap: usize) -> Result<Option<Vec<u8>>, usize> {
        let mut q = lock(&self.queue);
        match q.front() {
            None => Ok(None),
            Some(r) if r.len() > cap => Err(r.len()),
            Some(_) => Ok(q.pop_front()),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.queue).is_empty()
    }

    /// Completes when a reading may be queued (at once if one is).
    pub(crate) async fn readable(&self) {
        if self.is_empty() {
            self.ready.notified().await;
        }
    }
}

/// Bounded service log: keeps the last `keep` bytes and counts everything written, so the
/// output limit is enforced on the total while memory stays bounded.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    keep: usize,
    inner: Mutex<LogInner>,
}

#[derive(Debug, Default)]
struct LogInner {
    tail: VecDeque<u8>,
    total: u64,
}

impl LogBuffer {
    pub(crate) fn new(keep: usize) -> Arc<Self> {
        Arc::new(Self {
            keep,
            inner: Mutex::new(LogInner::default()),
        })
    }

    /// Appends bytes; returns the total written so far (including these).
    pub(crate) fn append(&self, bytes: &[u8]) -> u64 {
        let mut inner = lock(&self.inner);
        inner.total = inner.total.saturating_add(bytes.len() as u64);
        let start = bytes.len().saturating_sub(self.keep);
        inner.tail.extend(&bytes[start..]);
        let excess = inner.tail.len().saturating_sub(self.keep);
        inner.tail.drain(..excess);
        inner.total
    }

    /// The kept tail, lossily decoded as UTF-8.
    pub(crate) fn text(&self) -> String {
        let inner = lock(&self.inner);
        let bytes: Vec<u8> = inner.tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_enforces_bounds_per_namespace() {
        let kv = MemoryKv::new(2);
        assert!(kv.put("a", b"k1", b"v1"));
        assert!(kv.put("a", b"k2", b"v2"));
        assert!(!kv.put("a", b"k3", b"v3"));
        assert!(kv.put("a", b"k1", b"v1b"), "overwrite stays within bound");
        assert!(kv.put("b", b"k1", b"other"));
        assert_eq!(kv.get("a", b"k1").unwrap(), b"v1b");
        assert_eq!(kv.get("b", b"k1").unwrap(), b"other");
        assert!(!kv.put("a", &[0; MAX_KV_KEY_BYTES + 1], b""));
        assert!(!kv.put("b", b"k2", &vec![0; MAX_KV_VALUE_BYTES + 1]));
    }

    #[test]
    fn kv_delete_and_bounded_scan_stay_in_their_namespace() {
        let kv = MemoryKv::new(1000);
        for i in 0..200u32 {
            assert!(kv.put("a", &i.to_be_bytes(), b"v"));
        }
        assert!(kv.put("b", b"", b"other"));
        assert!(kv.put("aa", b"", b"other"));
        let page = kv.scan("a", &[], 10_000).unwrap();
        assert_eq!(page.len(), MAX_KV_SCAN_ITEMS, "a scan is capped per call");
        assert_eq!(page[0].0, 0u32.to_be_bytes());
        let next = kv.scan("a", &190u32.to_be_bytes(), 64).unwrap();
        assert_eq!(next.len(), 10);
        assert_eq!(next[0].0, 190u32.to_be_bytes());
        assert!(kv.scan("c", &[], 64).unwrap().is_empty());
        assert_eq!(kv.delete("a", &5u32.to_be_bytes()), Ok(true));
        assert_eq!(kv.delete("a", &5u32.to_be_bytes()), Ok(false));
        assert_eq!(kv.get("a", &5u32.to_be_bytes()), None);
        assert_eq!(kv.get("b", b"").unwrap(), b"other");
    }

    #[test]
    fn reading_queue_drops_oldest_and_keeps_big_reading() {
        let q = ReadingQueue::new(2);
        assert!(q.push(vec![1]));
        assert!(q.push(vec![2, 2]));
        assert!(!q.push(vec![3, 3, 3]));
        assert_eq!(q.pop_fitting(8).unwrap().unwrap(), vec![2, 2]);
        assert_eq!(q.pop_fitting(2), Err(3));
        assert_eq!(q.pop_fitting(3).unwrap().unwrap(), vec![3, 3, 3]);
        assert_eq!(q.pop_fitting(3), Ok(None));
    }

    #[test]
    fn log_keeps_tail_and_counts_total() {
        let log = LogBuffer::new(4);
        log.append(b"hello");
        assert_eq!(log.append(b"xy"), 7);
        assert_eq!(log.text(), "loxy");
    }
}
