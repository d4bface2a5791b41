//! Where guests run: a small tokio runtime owned by the host, and the thread that ticks the
//! engine's epoch so running guest code is interrupted every [`EPOCH_TICK`].
//!
//! Guest calls are async (wasmtime's async support), so a guest waiting in a WASI sleep is a
//! suspended future that holds no thread, and a stop cancels it; a guest in a tight loop yields
//! at every tick, so a few runtime threads are shared fairly by many guests.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use wasmtime::Engine;

/// How often the engine's epoch advances: the latency of a stop, a lifetime end or a CPU-time
/// check, and the time slice of a guest that never waits.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The guest runtime and epoch ticker of one [`super::Host`]; both end when it is dropped.
pub(crate) struct GuestExecutor {
    handle: Handle,
    runtime: Option<Runtime>,
    ticker_stop: Option<mpsc::Sender<()>>,
    ticker: Option<JoinHandle<()>>,
}

impl GuestExecutor {
    /// Starts `threads` guest threads and the epoch ticker for `engine`.
    pub(crate) fn start(engine: &Engine, threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("agora-guest")
            .enable_time()
            .build()?;
        let (ticker_stop, stopped) = mpsc::channel::<()>();
        let engine = engine.clone();
        let ticker = std::thread::Builder::new()
            .name("agora-epoch".into())
            .spawn(move || {
                // Ends when the sender is dropped (or, never, sent to).
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            ticker_stop: Some(ticker_stop),
            ticker: Some(ticker),
        })
    }

    /// The runtime guests are spawned on.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for GuestExecutor {
    fn drop(&mut self) {
        drop(self.ticker_stop.take());
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        // `shutdown_background` may be called from inside another runtime (the node drops its
        // host from async code); remaining guest tasks are dropped, which frees their stores.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
