//! What ends a guest call early, whatever the guest is doing: a stop request, the end of the
//! service's lifetime, or a call that has used its CPU budget.
//!
//! Two mechanisms cover every case:
//! - wasmtime's epoch interruption: the host ticks the engine's epoch every
//!   [`crate::host::EPOCH_TICK`]; at the next loop back-edge or function entry of running guest
//!   code the store's callback ([`CallGuard::on_epoch`]) checks the stop flag, the lifetime and
//!   the call's CPU time, then yields to the executor so other guests on the same thread run.
//! - every guest call is an async future raced against the stop signal and the lifetime
//!   ([`CallGuard::race`]); a guest blocked in an async host call (a WASI sleep) is cancelled by
//!   dropping its future, which makes wasmtime unwind the guest's stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use wasmtime::{Trap, UpdateDeadline};

/// A stop request shared by a service's manager entry and its running instance.
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    requested: AtomicBool,
    notify: Notify,
}

impl StopSignal {
    /// Asks the service to stop; wakes every waiter.
    pub(crate) fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Clears a request before the service is started again.
    pub(crate) fn reset(&self) {
        self.requested.store(false, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Completes once a stop is requested (at once if it already was).
    pub(crate) async fn requested(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking the flag so a request in between is not missed.
            notified.as_mut().enable();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }
}

/// Why the runtime cut a guest call short (the trap cause; see `instance::classify`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Interrupted {
    /// The host asked the service to stop.
    #[error("the host stopped the service")]
    Requested,
    /// The service's wall-clock lifetime ended.
    #[error("the service's lifetime ended")]
    Lifetime,
}

/// CPU time of the current thread; wall time where the OS offers no per-thread clock.
pub(crate) fn thread_cpu_nanos(base: Instant) -> u64 {
    #[cfg(unix)]
    {
        let _ = base;
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        u64::try_from(t.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
    }
    #[cfg(not(unix))]
    {
        u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// CPU time a guest call has used: the thread CPU time spent inside polls of its future (guest
/// code and synchronous host calls run inside those polls; an async sleep does not).
#[derive(Debug)]
pub(crate) struct RunClock {
    base: Instant,
    entered: AtomicU64,
    busy: AtomicU64,
}

impl RunClock {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            entered: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        thread_cpu_nanos(self.base)
    }

    /// Starts a new call at zero.
    pub(crate) fn reset(&self) {
        self.busy.store(0, Ordering::Relaxed);
    }

    fn enter(&self) {
        self.entered.store(self.now(), Ordering::Relaxed);
    }

    fn exit(&self) {
        let ran = self
            .now()
            .saturating_sub(self.entered.load(Ordering::Relaxed));
        self.busy.fetch_add(ran, Ordering::Relaxed);
    }

    /// CPU time of the call so far, from inside a poll (the epoch callback runs there).
    fn busy_in_poll(&self) -> Duration {
        let ran = self
            .now()
            .saturating_sub(self.entered.load(Ordering::Relaxed));
        Duration::from_nanos(self.busy.load(Ordering::Relaxed).saturating_add(ran))
    }

    /// CPU time of the finished call.
    pub(crate) fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy.load(Ordering::Relaxed))
    }
}

/// A future whose polls are timed on a [`RunClock`].
pub(crate) struct Timed<'a, F> {
    inner: Pin<Box<F>>,
    clock: &'a RunClock,
}

impl<'a, F> Timed<'a, F> {
    pub(crate) fn new(inner: F, clock: &'a RunClock) -> Self {
        Self {
            inner: Box::pin(inner),
            clock,
        }
    }
}

impl<F: Future> Future for Timed<'_, F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.clock.enter();
        let out = self.inner.as_mut().poll(cx);
        self.clock.exit();
        out
    }
}

/// The per-instance limits the epoch callback and the call race enforce.
#[derive(Debug)]
pub(crate) struct CallGuard {
    pub stop: std::sync::Arc<StopSignal>,
    pub deadline: Option<Instant>,
    pub clock: RunClock,
    /// CPU time after which one call has used its whole fuel budget.
    pub max_busy: Duration,
}

impl CallGuard {
    /// The store's epoch-deadline callback: runs once per epoch tick while guest code runs.
    pub(crate) fn on_epoch(&self) -> wasmtime::Result<UpdateDeadline> {
        if self.stop.is_requested() {
            return Err(Interrupted::Requested.into());
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Interrupted::Lifetime.into());
        }
        if self.clock.busy_in_poll() >= self.max_busy {
            // Fuel counts wasm work, not the host's: a loop of WASI calls (`random_get`, a
            // `poll_oneoff` over many subscriptions) costs a few fuel per call but real CPU.
            // CPU time is the backstop.
            return Err(Trap::OutOfFuel.into());
        }
        Ok(UpdateDeadline::Yield(1))
    }

    /// Runs `call` (a guest call future) unless a stop or the lifetime comes first; either
    /// cancels it at once, even while the guest waits in an async host call.
    pub(crate) async fn race<T>(
        &self,
        call: impl Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        let lifetime = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let call = Timed::new(call, &self.clock);
        tokio::select! {
            biased;
            () = self.stop.requested() => Err(Interrupted::Requested.into()),
            () = lifetime => Err(Interrupted::Lifetime.into()),
            result = call => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn stop_signal_wakes_a_waiter_registered_before_or_after() {
        let s = Arc::new(StopSignal::default());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.requested().await }
        });
        tokio::task::yield_now().await;
        s.request();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        // Already requested: returns at once.
        tokio::time::timeout(Duration::from_secs(10), s.requested())
            .await
            .unwrap();
        s.reset();
        assert!(!s.is_requested());
    }

    #[tokio::test]
    async fn race_cancels_a_pending_call_on_stop_and_lifetime() {
        let guard = CallGuard {
            stop: Arc::new(StopSignal::default()),
            deadline: None,
            clock: RunClock::new(),
            max_busy: Duration::from_secs(1),
        };
        let stopper = guard.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stopper.request();
        });
        let r = guard
            .race(std::future::pending::<wasmtime::Result<()>>())
            .await;
        assert_eq!(
            r.unwrap_err().downcast_ref::<Interrupted>(),
            Some(&Interrupted::Requested)
        );

        let guard = CallGuard {
            deadline: Some(Instant::now() + Duration::from_millis(20)),
            stop: Arc::new(StopSignal::default()),
            clock: RunClock::new(),
            max_busy: Duration::from_secs(1),
        };
        let r = guard
            .race(std::future::pending::<wasmtime::Result<()>>())
            .await;
        assert_eq!(
            r.unwrap_err().downcast_ref::<Interrupted>(),
            Some(&Interrupted::Lifetime)
        );
        // A sleeping call is not charged CPU time.
        let guard = CallGuard {
            deadline: None,
            stop: Arc::new(StopSignal::default()),
            clock: RunClock::new(),
            max_busy: Duration::from_secs(1),
        };
        guard
            .race(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(())
            })
            .await
            .unwrap();
        assert!(
            guard.clock.busy() < Duration::from_millis(25),
            "{:?}",
            guard.clock.busy()
        );
    }
}
