//! WAN emulation for devnets, tests and benchmarks (issue #17): one-way delay, jitter and loss
//! added in user space under the transport, because this machine's kernel has no `netem` qdisc.
//!
//! It is off unless a [`WanProfile`] is configured (`[network.wan]` in `config.toml`, which
//! `agora devnet up --latency …` writes); a node without one never builds a [`Shaped`] stream,
//! and one with it logs a warning at start.
//!
//! How faithful it is: every byte a shaped node *receives* is held until `latency ± jitter`
//! after it arrived, in order (a later byte never overtakes an earlier one, as on TCP). When
//! both ends are shaped, which is what the devnet does, each direction of a link gets the delay
//! once, so the round trip is `2 × latency` plus the loopback's own. Loss is modelled the way
//! TCP sees it, as delay, never as missing bytes: each 1,460-byte segment is lost with the
//! given probability, and a loss holds that segment and everything behind it for one
//! retransmission timeout, `max(200 ms, 2 × RTT)` (Linux's minimum RTO, or twice the round
//! trip on slow links). Not modelled: bandwidth limits, queueing in routers, reordering, the
//! sender's congestion window shrinking after a loss, and UDP (QUIC connections are not shaped).
//! What arrives is bounded: at most [`MAX_HELD_BYTES`] wait per connection; beyond that the
//! stream stops reading from the socket, so the sender sees TCP backpressure, not loss.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};

/// Bytes a shaped connection holds back at most before it stops reading from the socket. A
/// real link holds its rate times its delay on the wire, so this caps the emulated rate at
/// `MAX_HELD_BYTES / latency`: 320 MiB/s at 50 ms one way (4 MiB, until session 28, capped it
/// at 80 MiB/s, near what two nodes on this machine reach; `docs/PERFORMANCE.md`).
pub const MAX_HELD_BYTES: usize = 16 << 20;

/// TCP's usual maximum segment size on Ethernet: the unit that is lost.
const SEGMENT: usize = 1460;

/// Linux's minimum retransmission timeout.
const MIN_RTO: Duration = Duration::from_millis(200);

/// What a shaped link adds to every byte it delivers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WanProfile {
    /// One-way delay added to each direction (`latency_ms` in `config.toml`).
    #[serde(rename = "latency_ms", with = "millis")]
    pub latency: Duration,
    /// Each chunk's delay is drawn uniformly from `latency ± jitter` (never below zero; order
    /// is kept).
    #[serde(rename = "jitter_ms", with = "millis", default)]
    pub jitter: Duration,
    /// Segments lost per million (10,000 = 1 %).
    #[serde(default)]
    pub loss_ppm: u32,
}

impl WanProfile {
    /// The retransmission timeout a lost segment costs.
    pub fn rto(&self) -> Duration {
        MIN_RTO.max(self.latency * 4)
    }

    /// Whether the profile adds anything at all.
    pub fn is_active(&self) -> bool {
        !self.latency.is_zero() || !self.jitter.is_zero() || self.loss_ppm > 0
    }
}

/// A duration given as `50ms`, `1.5s` or a bare number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (t, 1.0)
    };
    let ms: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write it as 50ms or 1.5s"))?;
    let ms = ms * scale;
    if !ms.is_finite() || !(0.0..=60_000.0).contains(&ms) {
        return Err(format!("`{text}` is out of range: between 0 and 60s"));
    }
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

/// A loss rate given as `1%`, `0.5%` or a fraction such as `0.01`; returns parts per million.
pub fn parse_loss(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let fraction = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("`{text}` is not a loss rate: write it as 1% or 0.01"))?;
    if !fraction.is_finite() || !(0.0..=0.5).contains(&fraction) {
        return Err(format!("`{text}` is out of range: between 0% and 50%"));
    }
    Ok((fraction * 1_000_000.0).round() as u32)
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A byte stream whose reads are delayed by a [`WanProfile`]; writes pass straight through.
pub struct Shaped<S> {
    inner: S,
    profile: WanProfile,
    rng: StdRng,
    /// Chunks read from the socket with the time they may be delivered; an empty chunk is the
    /// end of the stream.
    held: VecDeque<(Instant, Vec<u8>)>,
    held_bytes: usize,
    /// How much of the front chunk was already delivered.
    offset: usize,
    /// Delivery time of the last chunk queued (later chunks never come earlier).
    last_due: Option<Instant>,
    eof_seen: bool,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Shaped<S> {
    /// Wraps `inner`; `seed` makes the jitter and loss draws of this connection reproducible.
    pub fn new(inner: S, profile: WanProfile, seed: u64) -> Self {
        Shaped {
            inner,
            profile,
            rng: StdRng::seed_from_u64(seed),
            held: VecDeque::new(),
            held_bytes: 0,
            offset: 0,
            last_due: None,
            eof_seen: false,
            timer: None,
        }
    }

    /// Bytes read from the socket and not yet delivered.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    fn delay_for(&mut self, len: usize) -> Duration {
        let p = &self.profile;
        let mut delay = p.latency;
        if !p.jitter.is_zero() {
            let j = i64::try_from(p.jitter.as_micros()).unwrap_or(i64::MAX);
            let offset = self.rng.gen_range(-j..=j);
            let base = i64::try_from(delay.as_micros()).unwrap_or(i64::MAX);
            delay = Duration::from_micros(u64::try_from(base.saturating_add(offset)).unwrap_or(0));
        }
        if p.loss_ppm > 0 {
            let segments = len.div_ceil(SEGMENT).max(1);
            let lost = (0..segments).any(|_| self.rng.gen_range(0..1_000_000) < p.loss_ppm);
            if lost {
                delay += p.rto();
            }
        }
        delay
    }

    fn hold(&mut self, chunk: Vec<u8>) {
        let now = Instant::now();
        let delay = self.delay_for(chunk.len());
        let due = (now + delay).max(self.last_due.unwrap_or(now));
        self.last_due = Some(due);
        self.held_bytes += chunk.len();
        self.held.push_back((due, chunk));
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Shaped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            // Take in what the socket has, up to the bound (this also registers the waker).
            while !this.eof_seen && this.held_bytes < MAX_HELD_BYTES {
                let mut chunk = vec![0u8; 16 * 1024];
                match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                    Poll::Ready(Ok(0)) => {
                        this.eof_seen = true;
                        this.hold(Vec::new());
                    }
                    Poll::Ready(Ok(n)) => {
                        chunk.truncate(n);
                        this.hold(chunk);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            let Some((due, _)) = this.held.front() else {
                return Poll::Pending;
            };
            let due = *due;
            if due > Instant::now() {
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                timer.as_mut().reset(due);
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                continue;
            }
            let Some((_, chunk)) = this.held.front() else {
                return Poll::Pending;
            };
            if chunk.is_empty() {
                // The end of the stream, delivered after everything before it.
                return Poll::Ready(Ok(0));
            }
            let n = (chunk.len() - this.offset).min(buf.len());
            buf[..n].copy_from_slice(&chunk[this.offset..this.offset + n]);
            this.offset += n;
            if this.offset == chunk.len() {
                this.held_bytes -= chunk.len();
                this.held.pop_front();
                this.offset = 0;
            }
            return Poll::Ready(Ok(n));
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Shaped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::AsyncReadExt;
    use futures::io::Cursor;

    use super::*;

    fn profile(latency_ms: u64, jitter_ms: u64, loss_ppm: u32) -> WanProfile {
        WanProfile {
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss_ppm,
        }
    }

    async fn read_all_timed(mut s: Shaped<Cursor<Vec<u8>>>) -> (Vec<u8>, Duration) {
        let start = Instant::now();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap_or_default();
        (out, start.elapsed())
    }

    #[tokio::test]
    async fn bytes_arrive_after_the_latency_and_in_order() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let s = Shaped::new(Cursor::new(data.clone()), profile(50, 0, 0), 1);
        let (out, took) = read_all_timed(s).await;
        assert_eq!(out, data);
        assert!(took >= Duration::from_millis(50), "{took:?}");
    }

    #[tokio::test]
    async fn jitter_never_reorders_bytes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let s = Shaped::new(Cursor::new(data.clone()), profile(50, 40, 0), 7);
        let (out, took) = read_all_timed(s).await;
        assert_eq!(out, data);
        // The last chunk waited at least latency - jitter.
        assert!(took >= Duration::from_millis(10), "{took:?}");
    }

    #[tokio::test]
    async fn loss_costs_a_retransmission_timeout_never_bytes() {
        // Every segment lost: the data still arrives whole, one RTO later.
        let data = vec![7u8; 10_000];
        let s = Shaped::new(Cursor::new(data.clone()), profile(50, 0, 1_000_000), 3);
        let (out, took) = read_all_timed(s).await;
        assert_eq!(out, data);
        assert!(took >= Duration::from_millis(250), "{took:?}");
    }

    #[test]
    fn an_inactive_profile_adds_nothing_and_delays_stay_within_latency_plus_minus_jitter() {
        let mut none = Shaped::new(Cursor::new(Vec::<u8>::new()), WanProfile::default(), 0);
        assert!(!WanProfile::default().is_active());
        let mut jittery = Shaped::new(Cursor::new(Vec::<u8>::new()), profile(50, 10, 0), 9);
        for len in [1, 1460, 16 * 1024] {
            assert_eq!(none.delay_for(len), Duration::ZERO);
            let d = jittery.delay_for(len);
            assert!(
                d >= Duration::from_millis(40) && d <= Duration::from_millis(60),
                "{d:?}"
            );
        }
    }

    #[test]
    fn durations_and_loss_rates_parse_and_bad_ones_say_how_to_write_them() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_millis(20)));
        assert!(parse_duration("fast").is_err_and(|e| e.contains("50ms")));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("-5ms").is_err());
        assert_eq!(parse_loss("1%"), Ok(10_000));
        assert_eq!(parse_loss("0.5%"), Ok(5_000));
        assert_eq!(parse_loss("0.01"), Ok(10_000));
        assert!(parse_loss("lots").is_err_and(|e| e.contains("1%")));
        assert!(parse_loss("80%").is_err());
    }

    #[test]
    fn the_rto_is_linux_minimum_or_twice_the_round_trip() {
        assert_eq!(profile(10, 0, 0).rto(), Duration::from_millis(200));
        assert_eq!(profile(100, 0, 0).rto(), Duration::from_millis(400));
    }
}
