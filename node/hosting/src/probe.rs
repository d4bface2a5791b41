//! Uptime probe evidence from the guest (THREATS P1, `agora_contracts::probe`): the provider's
//! side calls the live instance's `agora_probe(nonce)`; an arbitrator's side computes the same
//! on its own fresh instance of the contract's image, fetched like a provider fetches it
//! (pinned in this node's store), compiled once and kept in a bounded cache.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use agora_contracts::probe::GuestExpectation;
use agora_runtime::{CompiledModule, ServiceLimits};
use agora_storage::Cid;

use super::manifest::ServiceKind;
use super::{ServiceError, ServiceHost, lock};
use agora_image::read_image;

/// How long the provider's live instance may take to answer (it answers between two polls).
pub const LIVE_PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// Compiled images an arbitrator keeps for probes; beyond it the oldest entry goes, and its
/// image is let go of (unpinned unless something else here holds or keeps it).
pub const MAX_PROBE_MODULES: usize = 16;
/// The name the probe cache holds its images under ([`agora_exchange::holds`]).
pub const PROBE_HOLDER: &str = "probe";
/// Probe images fetched and compiled at once (THREATS A15: each registered contract naming
/// this node as arbitrator started its own fetch of up to 64 MiB and its own compile, with
/// no bound on how many ran together).
pub const PROBE_LOADS: usize = 2;
/// Loads that may wait for one of the [`PROBE_LOADS`]; beyond them a load is refused
/// ([`ServiceError::ProbeLoadsBusy`], counted) and its probe judged on the hosting layer's
/// word, like a probe whose image is not compiled yet.
pub const PROBE_LOADS_WAITING: usize = 16;
/// Longest fetch of a probe image while another load waits for a turn: a trickled image (a
/// block just inside the fetch's idle timeout, for ever) would otherwise hold one of the
/// [`PROBE_LOADS`] turns for hours. With no load waiting, a slow fetch goes on.
pub const PROBE_FETCH_MAX: Duration = Duration::from_secs(120);

/// What the probe cache's loads did (THREATS A15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeLoadStats {
    /// Loads (fetch and compile) running now.
    pub running: usize,
    /// The most that ever ran at once.
    pub peak: usize,
    /// Loads waiting for a turn now.
    pub waiting: usize,
    /// Loads refused because too many waited.
    pub refused: u64,
    /// Loads not started because the same image was being loaded already (each image takes
    /// one turn or waiting place, however many contracts and probe rounds ask for it).
    pub coalesced: u64,
    /// Fetches given up after [`PROBE_FETCH_MAX`].
    pub timed_out: u64,
}

/// The bound on probe-image loads and what it counted.
pub(crate) struct ProbeLoads {
    turns: tokio::sync::Semaphore,
    running: AtomicUsize,
    peak: AtomicUsize,
    waiting: AtomicUsize,
    refused: AtomicU64,
    coalesced: AtomicU64,
    timed_out: AtomicU64,
    /// Images being loaded or waiting for a turn.
    loading: std::sync::Mutex<std::collections::HashSet<Cid>>,
}

impl Default for ProbeLoads {
    fn default() -> Self {
        Self {
            turns: tokio::sync::Semaphore::new(PROBE_LOADS),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            loading: std::sync::Mutex::default(),
        }
    }
}

/// Decrements a counter when dropped (a waiting or running load whose caller went away).
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An image being loaded: taken out of [`ProbeLoads::loading`] when the load ends.
struct Loading<'a>(&'a ProbeLoads, Cid);

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        lock(&self.0.loading).remove(&self.1);
    }
}

impl ProbeLoads {
    /// Marks `image` as being loaded; `None` (counted) when it is already.
    fn start(&self, image: Cid) -> Option<Loading<'_>> {
        if lock(&self.loading).insert(image) {
            Some(Loading(self, image))
        } else {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// A turn to load, after at most [`PROBE_LOADS_WAITING`] others waiting.
    async fn turn(&self) -> Result<(tokio::sync::SemaphorePermit<'_>, Counted<'_>), ServiceError> {
        let permit = {
            let waiting = Counted(&self.waiting);
            if self.waiting.fetch_add(1, Ordering::Relaxed) >= PROBE_LOADS_WAITING {
                drop(waiting);
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(ServiceError::ProbeLoadsBusy);
            }
            let permit = self
                .turns
                .acquire()
                .await
                .map_err(|e| ServiceError::Task(e.to_string()))?;
            drop(waiting);
            permit
        };
        let now = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Ok((permit, Counted(&self.running)))
    }

    fn stats(&self) -> ProbeLoadStats {
        ProbeLoadStats {
            running: self.running.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }
}

/// An image compiled for probes: its module (`None`: a container image, nothing to call) and
/// the limits a fresh instance gets.
#[derive(Clone)]
pub(crate) struct ProbeModule {
    module: Option<(CompiledModule, ServiceLimits)>,
    /// Insertion order, for eviction.
    seq: u64,
}

impl ServiceHost {
    /// The live instance of service `id`'s `agora_probe(nonce)`, if it has one and answers in
    /// time ([`LIVE_PROBE_TIMEOUT`]).
    pub async fn probe_live(&self, id: &str, nonce: i64) -> Option<i64> {
        if self.is_container(id).unwrap_or(true) {
            return None;
        }
        let service = id.into();
        let call = self.inner.manager.probe(&service, nonce);
        match tokio::time::timeout(LIVE_PROBE_TIMEOUT, call).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(service = id, error = %e, "probe export not answered");
                None
            }
            Err(_) => {
                tracing::debug!(service = id, "probe export too slow");
                None
            }
        }
    }

    /// What the probe cache's loads did (THREATS A15).
    pub fn probe_load_stats(&self) -> ProbeLoadStats {
        self.inner.probe_loads.stats()
    }

    /// What `image`'s `agora_probe(nonce)` returns on a fresh instance here: what the
    /// provider's live instance must have answered.
    pub async fn probe_image(&self, image: Cid, nonce: i64) -> GuestExpectation {
        let m = match self.probe_module(image).await {
            Ok(m) => m,
            Err(e) => return GuestExpectation::Unknown(e.to_string()),
        };
        let Some((module, limits)) = m else {
            return GuestExpectation::NoExport;
        };
        match self.inner.manager.probe_fresh(module, limits, nonce).await {
            Ok(Some(v)) => GuestExpectation::Value(v),
            Ok(None) => GuestExpectation::NoExport,
            Err(e) => GuestExpectation::Unknown(e.to_string()),
        }
    }

    /// `image` compiled for probes, from the cache or fetched, verified and compiled now.
    async fn probe_module(
        &self,
        image: Cid,
    ) -> Result<Option<(CompiledModule, ServiceLimits)>, ServiceError> {
        if let Some(m) = lock(&self.inner.probe_modules).get(&image) {
            return Ok(m.module.clone());
        }
        let loads = &self.inner.probe_loads;
        let Some(_loading) = loads.start(image) else {
            return Err(ServiceError::ProbeImageLoading);
        };
        let _turn = loads.turn().await?;
        // A load of the same image may have finished just before this one started.
        if let Some(m) = lock(&self.inner.probe_modules).get(&image) {
            return Ok(m.module.clone());
        }
        // Held while cached: an arbitrator keeps at most MAX_PROBE_MODULES probed images.
        // Past PROBE_FETCH_MAX the turn is given up, but only to a load that waits for it: a
        // slow honest image with no one waiting goes on loading.
        let mut hold = std::pin::pin!(self.inner.storage.hold(
            image,
            PROBE_HOLDER,
            Some(crate::IMAGE_MAX_BYTES)
        ));
        let started = tokio::time::Instant::now();
        loop {
            tokio::select! {
                held = &mut hold => {
                    held?;
                    break;
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if started.elapsed() >= PROBE_FETCH_MAX
                        && loads.waiting.load(Ordering::Relaxed) > 0
                    {
                        loads.timed_out.fetch_add(1, Ordering::Relaxed);
                        if !lock(&self.inner.probe_modules).contains_key(&image) {
                            self.release_probe_image(image).await;
                        }
                        return Err(ServiceError::ProbeFetchTimeout(PROBE_FETCH_MAX.as_secs()));
                    }
                }
            }
        }
        let compiled = self.compile_probe_module(image).await;
        let module = match compiled {
            Ok(m) => m,
            Err(e) => {
                if !lock(&self.inner.probe_modules).contains_key(&image) {
                    self.release_probe_image(image).await;
                }
                return Err(e);
            }
        };
        let evicted = {
            let mut cache = lock(&self.inner.probe_modules);
            let seq = cache.values().map(|m| m.seq).max().map_or(0, |s| s + 1);
            let evicted = if !cache.contains_key(&image) && cache.len() >= MAX_PROBE_MODULES {
                cache.iter().min_by_key(|(_, m)| m.seq).map(|(c, _)| *c)
            } else {
                None
            };
            if let Some(oldest) = &evicted {
                cache.remove(oldest);
            }
            cache.insert(
                image,
                ProbeModule {
                    module: module.clone(),
                    seq,
                },
            );
            evicted
        };
        if let Some(oldest) = evicted {
            self.release_probe_image(oldest).await;
        }
        Ok(module)
    }

    /// Keeps in the probe cache only the images in `keep` (those of the contracts this node
    /// still judges) and lets go of the others at once, rather than when they are evicted or
    /// the process ends (THREATS C4); returns how many it let go of.
    pub async fn retain_probe_images(&self, keep: &std::collections::BTreeSet<Cid>) -> usize {
        let gone: Vec<Cid> = {
            let mut cache = lock(&self.inner.probe_modules);
            let gone: Vec<Cid> = cache
                .keys()
                .filter(|c| !keep.contains(c))
                .copied()
                .collect();
            for image in &gone {
                cache.remove(image);
            }
            gone
        };
        for image in &gone {
            tracing::debug!(%image, "probe image let go of: no contract judged here runs it");
            self.release_probe_image(*image).await;
        }
        gone.len()
    }

    /// The probe cache lets go of `image` (unpinned unless held or kept for another reason).
    async fn release_probe_image(&self, image: Cid) {
        if let Err(e) = self.inner.storage.release(image, PROBE_HOLDER).await {
            tracing::debug!(%image, error = %e, "probe image hold not released");
        }
    }

    /// `image` (held here) read, verified and compiled for probes.
    async fn compile_probe_module(
        &self,
        image: Cid,
    ) -> Result<Option<(CompiledModule, ServiceLimits)>, ServiceError> {
        let (record, manifest, bytes): (_, _, Vec<u8>) = self
            .embedded_store()?
            .blocking(move |s| Ok(read_image(s, &image)))
            .await??;
        let module = match manifest.kind {
            ServiceKind::Container => None,
            ServiceKind::Wasm => {
                let compiled = self.load_module(record.module_id, bytes).await?;
                let mut limits = manifest.service_limits();
                limits.memory_bytes = limits.memory_bytes.min(self.inner.config.max_memory_bytes);
                limits.wall_clock_ms = None;
                Some((compiled, limits))
            }
        };
        Ok(module)
    }
}
