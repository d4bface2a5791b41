//! Copying a service's key-value state out and back in (a stateful service's state travels
//! with it to another node). A copy is taken only while the service is quiescent, so it
//! reflects exactly the readings fed to the service so far.

use super::ServiceManager;
use crate::io::{KvEntries, KvStore, MAX_KV_SCAN_ITEMS};
use crate::{RuntimeError, ServiceId, ServiceState};

impl ServiceManager {
    /// A consistent copy of service `id`'s key-value store, in key order, taken only while the
    /// service is quiescent: no reading queued and no guest call running (no call starts while
    /// it copies). `Ok(None)`: busy, ask again later. More than `max_entries` entries or
    /// `max_bytes` of keys and values is an error, as is a store that cannot scan.
    pub fn kv_snapshot(
        &self,
        id: &ServiceId,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<KvEntries>, RuntimeError> {
        let shared = self.shared(id)?;
        let Ok(_calls) = shared.io.calls.try_lock() else {
            return Ok(None);
        };
        if !shared.io.readings.is_empty() {
            return Ok(None);
        }
        let (kv, ns) = (&*shared.io.kv, shared.io.service.as_str());
        copy(kv, ns, max_entries, max_bytes)
            .map(Some)
            .map_err(|reason| RuntimeError::KvState {
                service: id.0.clone(),
                reason,
            })
    }

    /// Moves service `from`'s key-value state into service `to` (a start-first upgrade on one
    /// node: the new instance takes over the old one's state), only while both are quiescent:
    /// no reading queued for either and no guest call running in either (both call gates are
    /// held, so none starts while it copies); `to` may be running. `to`'s keys are replaced,
    /// not merged. `Ok(None)`: busy, ask again later; `Ok(Some(n))`: `n` keys moved. Over
    /// `max_entries` or `max_bytes` is an error and changes nothing.
    pub fn kv_move(
        &self,
        from: &ServiceId,
        to: &ServiceId,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<usize>, RuntimeError> {
        if from == to {
            return Err(RuntimeError::KvState {
                service: to.0.clone(),
                reason: "moving a service's state onto itself".into(),
            });
        }
        let (a, b) = (self.shared(from)?, self.shared(to)?);
        let Ok(_from_calls) = a.io.calls.try_lock() else {
            return Ok(None);
        };
        let Ok(_to_calls) = b.io.calls.try_lock() else {
            return Ok(None);
        };
        if !a.io.readings.is_empty() || !b.io.readings.is_empty() {
            return Ok(None);
        }
        let entries =
            copy(&*a.io.kv, a.io.service.as_str(), max_entries, max_bytes).map_err(|reason| {
                RuntimeError::KvState {
                    service: from.0.clone(),
                    reason,
                }
            })?;
        write(&*b.io.kv, b.io.service.as_str(), &entries).map_err(|reason| {
            RuntimeError::KvState {
                service: to.0.clone(),
                reason,
            }
        })?;
        Ok(Some(entries.len()))
    }

    /// Replaces service `id`'s key-value store with `entries` (the service must not be
    /// active): every key it holds is deleted first.
    pub fn kv_replace(&self, id: &ServiceId, entries: &KvEntries) -> Result<(), RuntimeError> {
        let shared = self.shared(id)?;
        let err = |reason: String| RuntimeError::KvState {
            service: id.0.clone(),
            reason,
        };
        if crate::io::lock(&shared.live).state == ServiceState::Active {
            return Err(RuntimeError::WrongState {
                service: id.0.clone(),
                state: "active".into(),
                hint: "stop it before replacing its key-value state",
            });
        }
        let Ok(_calls) = shared.io.calls.try_lock() else {
            return Err(err("a guest call is running".into()));
        };
        write(&*shared.io.kv, shared.io.service.as_str(), entries).map_err(err)
    }
}

/// Every entry of `ns` in key order; more than `max_entries` or `max_bytes` is an error.
fn copy(
    kv: &dyn KvStore,
    ns: &str,
    max_entries: usize,
    max_bytes: usize,
) -> Result<KvEntries, String> {
    let mut out: KvEntries = Vec::new();
    let mut bytes = 0usize;
    let mut start = Vec::new();
    loop {
        let page = kv
            .scan(ns, &start, MAX_KV_SCAN_ITEMS)
            .map_err(|e| e.to_string())?;
        let full = page.len() >= MAX_KV_SCAN_ITEMS;
        for (k, v) in page {
            bytes = bytes.saturating_add(k.len() + v.len());
            if out.len() >= max_entries || bytes > max_bytes {
                return Err(format!(
                    "more than {max_entries} keys or {max_bytes} bytes; too large to travel"
                ));
            }
            start.clone_from(&k);
            out.push((k, v));
        }
        if !full {
            return Ok(out);
        }
        start.push(0);
    }
}

/// Replaces every key of `ns` with `entries`.
fn write(kv: &dyn KvStore, ns: &str, entries: &KvEntries) -> Result<(), String> {
    clear(kv, ns)?;
    for (k, v) in entries {
        if !kv.put(ns, k, v) {
            return Err(format!(
                "key of {} bytes refused by the store's bounds",
                k.len()
            ));
        }
    }
    Ok(())
}

/// Deletes every key of `ns`.
fn clear(kv: &dyn KvStore, ns: &str) -> Result<(), String> {
    loop {
        let page = kv
            .scan(ns, &[], MAX_KV_SCAN_ITEMS)
            .map_err(|e| e.to_string())?;
        if page.is_empty() {
            return Ok(());
        }
        for (k, _) in page {
            if !kv.delete(ns, &k).map_err(|e| e.to_string())? {
                return Err("a key could not be deleted".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::test_utils::{self, READINGS_COUNTER};
    use crate::{MemoryKv, ServiceId, ServiceLimits, ServiceManager, ServiceSpec};

    fn limits() -> ServiceLimits {
        ServiceLimits {
            memory_bytes: 16 << 20,
            max_instances: 2,
            ..ServiceLimits::default()
        }
    }

    async fn wait_count(m: &ServiceManager, id: &ServiceId, want: u64) {
        for _ in 0..500 {
            if test_utils::last_count(&m.logs(id).unwrap()) == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("count {want} not reached: {}", m.logs(id).unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiescent_copy_carries_the_count_to_another_service() {
        let dir = tempfile::tempdir().unwrap();
        let host = test_utils::host(dir.path());
        let module = test_utils::compile(&host, READINGS_COUNTER);
        let (m, _out) = ServiceManager::new(host, Arc::new(MemoryKv::default()), 16);
        let (a, b) = (ServiceId::from("a"), ServiceId::from("b"));
        m.stage(ServiceSpec::new("a", module.clone(), limits()))
            .unwrap();
        m.stage(ServiceSpec::new("b", module, limits())).unwrap();
        // A reading queued but not taken yet: not quiescent.
        m.push_reading(&a, vec![1; 16]).unwrap();
        assert_eq!(m.kv_snapshot(&a, 16, 1 << 20).unwrap(), None);
        m.start(&a).unwrap();
        for _ in 0..4 {
            m.push_reading(&a, vec![1; 16]).unwrap();
        }
        wait_count(&m, &a, 5).await;
        let copy = loop {
            if let Some(c) = m.kv_snapshot(&a, 16, 1 << 20).unwrap() {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(copy, vec![(b"count".to_vec(), 5u64.to_le_bytes().to_vec())]);
        assert!(m.kv_snapshot(&a, 0, 1 << 20).is_err(), "over the bound");
        // B had a count of its own: replaced, not merged.
        m.start(&b).unwrap();
        m.push_reading(&b, vec![1; 16]).unwrap();
        wait_count(&m, &b, 1).await;
        assert!(m.kv_replace(&b, &copy).is_err(), "not while it runs");
        m.stop(&b).unwrap();
        m.wait_stopped(&b).await.unwrap();
        m.kv_replace(&b, &copy).unwrap();
        m.start(&b).unwrap();
        m.push_reading(&b, vec![1; 16]).unwrap();
        wait_count(&m, &b, 6).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_instance_takes_over_a_quiescent_ones_state() {
        let dir = tempfile::tempdir().unwrap();
        let host = test_utils::host(dir.path());
        let module = test_utils::compile(&host, READINGS_COUNTER);
        let (m, _out) = ServiceManager::new(host, Arc::new(MemoryKv::default()), 16);
        let (old, new) = (ServiceId::from("old"), ServiceId::from("new"));
        m.stage(ServiceSpec::new("old", module.clone(), limits()))
            .unwrap();
        m.stage(ServiceSpec::new("new", module, limits())).unwrap();
        m.start(&old).unwrap();
        m.start(&new).unwrap();
        for _ in 0..5 {
            m.push_reading(&old, vec![1; 16]).unwrap();
        }
        wait_count(&m, &old, 5).await;
        // The new instance counted on its own meanwhile: replaced, not merged.
        m.push_reading(&new, vec![1; 16]).unwrap();
        wait_count(&m, &new, 1).await;
        assert!(m.kv_move(&old, &old, 16, 1 << 20).is_err(), "onto itself");
        assert!(m.kv_move(&old, &new, 0, 1 << 20).is_err(), "over the bound");
        // Not while a reading waits for the old one.
        m.stop(&old).unwrap();
        m.wait_stopped(&old).await.unwrap();
        m.push_reading(&old, vec![1; 16]).unwrap();
        assert_eq!(m.kv_move(&old, &new, 16, 1 << 20).unwrap(), None);
        m.start(&old).unwrap();
        wait_count(&m, &old, 6).await;
        let moved = loop {
            if let Some(n) = m.kv_move(&old, &new, 16, 1 << 20).unwrap() {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(moved, 1);
        // The running new instance counts on from the old one's 6.
        m.push_reading(&new, vec![1; 16]).unwrap();
        wait_count(&m, &new, 7).await;
    }
}
