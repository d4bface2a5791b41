//! Per-store state of a running service: WASI context, memory limiter and shared host I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::guard::CallGuard;
use crate::io::{KvStore, LogBuffer, Published, ReadingQueue};

/// Host I/O shared between a service's manager entry and its running instance(s).
pub(crate) struct ServiceIo {
    pub service: String,
    pub readings: ReadingQueue,
    pub log: Arc<LogBuffer>,
    pub kv: Arc<dyn KvStore>,
    pub outbox: mpsc::Sender<Published>,
    pub readings_processed: AtomicU64,
    pub readings_dropped: AtomicU64,
    pub published: AtomicU64,
    /// Held while the guest runs a call (init, poll, health) and while the node copies or
    /// replaces its key-value store, so a copy never sees a call half done.
    pub calls: tokio::sync::Mutex<()>,
}

/// The `T` of every `Store<T>` this crate creates.
pub(crate) struct StoreState {
    pub wasi: WasiP1Ctx,
    pub limiter: MemoryLimiter,
    pub io: Arc<ServiceIo>,
    /// Stop, lifetime and CPU-time checks run by the epoch callback.
    pub guard: Arc<CallGuard>,
}

/// Raised (as the trap cause) when a guest grows memory beyond its contract limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (wanted {wanted})")]
pub(crate) struct MemoryLimitExceeded {
    limit: u64,
    wanted: u64,
}

/// Raised when a guest writes more than its output allowance.
#[derive(Debug, thiserror::Error)]
#[error("output limit of {0} bytes exceeded")]
pub(crate) struct OutputLimitExceeded(u64);

/// Enforces `memory_bytes` over all memories of an instance and records the peak.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: u64,
    total: u64,
    pub peak: u64,
    pub exceeded: bool,
}

/// Table growth cap; tables hold function references, not data, so a fixed cap is enough.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            limit,
            total: 0,
            peak: 0,
            exceeded: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let wanted = self
            .total
            .saturating_add((desired as u64).saturating_sub(current as u64));
        if wanted > self.limit {
            self.exceeded = true;
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.limit,
                wanted,
            }));
        }
        self.total = wanted;
        self.peak = self.peak.max(wanted);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }
}

/// stdout/stderr of one instance: appends to the service log and traps the guest once its
/// total output passes the limit.
#[derive(Clone)]
pub(crate) struct LogSink {
    log: Arc<LogBuffer>,
    limit: u64,
    written: Arc<AtomicU64>,
    pub exceeded: Arc<AtomicBool>,
}

impl LogSink {
    /// A sink for one instance; `written` and `exceeded` are shared by its stdout and stderr.
    pub(crate) fn new(log: Arc<LogBuffer>, limit: u64) -> Self {
        Self {
            log,
            limit,
            written: Arc::new(AtomicU64::new(0)),
            exceeded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Bytes written through this sink so far.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn write_bytes(&self, bytes: &[u8]) -> Result<(), OutputLimitExceeded> {
        let total = self
            .written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed)
            .saturating_add(bytes.len() as u64);
        if total > self.limit {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(OutputLimitExceeded(self.limit));
        }
        self.log.append(bytes);
        Ok(())
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(AsyncSink(self.clone()))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl OutputStream for LogSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes)
            .map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always accept a chunk; the limit is checked (and trapped on) in `write`.
        Ok(64 << 10)
    }
}

/// Adapter for WASI paths that want a tokio `AsyncWrite`.
struct AsyncSink(LogSink);

impl tokio::io::AsyncWrite for AsyncSink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(
            self.0
                .write_bytes(buf)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
