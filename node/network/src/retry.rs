//! Requests sent again after a failure, and a bound on how many messages retry at once: one
//! home for the market's direct messages (`agora-market-driver`) and the fleet's
//! (`agora-fleet`), which sent again with a loop and a counter of their own each.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Counts the messages being delivered with retries (a [`Slot`] gives its place back when
/// dropped).
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<AtomicUsize>);

/// A place in an [`InFlight`] count.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    /// A place while fewer than `max` are taken, else `None`.
    pub fn take(&self, max: usize) -> Option<Slot> {
        if self.0.fetch_add(1, Ordering::Relaxed) >= max {
            self.0.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self.0.clone()))
    }

    /// Places taken now.
    pub fn now(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// How long to wait after failure `n`: `retry_ms << n`, scaled by `0.5 + r` for `r` in [0, 1).
/// The jitter matters when many nodes fail at once for one reason — three hundred providers
/// bidding on one auction the moment it reaches them find the customer's handshake slots
/// full (`MAX_PENDING_INCOMING`): with the same delays they would all come back together.
pub fn backoff(retry_ms: u64, n: u32, r: f64) -> Duration {
    let step = retry_ms.checked_shl(n).unwrap_or(u64::MAX) as f64;
    Duration::from_millis((step * (0.5 + r.clamp(0.0, 1.0))) as u64)
}

/// Runs `attempt(n)` for n = 0, 1, … until one succeeds or `attempts` were made, sleeping
/// [`backoff`]`(retry_ms, n, random)` after failure n. Returns the number of the attempt that
/// succeeded, or the last error.
pub async fn with_retries<F, Fut, E>(attempts: u32, retry_ms: u64, mut attempt: F) -> Result<u32, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut n = 0;
    loop {
        match attempt(n).await {
            Ok(()) => return Ok(n),
            Err(e) if n + 1 >= attempts.max(1) => return Err(e),
            Err(_) => {
                tokio::time::sleep(backoff(retry_ms, n, rand::random::<f64>())).await;
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn the_backoff_doubles_and_spreads_half_a_step_either_way() {
        assert_eq!(backoff(500, 0, 0.5), Duration::from_millis(500));
        assert_eq!(backoff(500, 1, 0.5), Duration::from_millis(1000));
        assert_eq!(backoff(500, 2, 0.0), Duration::from_millis(1000));
        assert_eq!(backoff(500, 2, 0.999), Duration::from_millis(2998));
        // Out-of-range draws are clamped; huge steps saturate instead of overflowing.
        assert_eq!(backoff(500, 0, 7.0), Duration::from_millis(750));
        assert!(backoff(500, 80, 0.5) > Duration::from_secs(1 << 40));
    }

    #[tokio::test]
    async fn a_request_that_fails_is_sent_again_until_it_arrives() {
        let calls = Cell::new(0u32);
        let got = with_retries(3, 1, |n| {
            calls.set(calls.get() + 1);
            async move { if n < 2 { Err("closed") } else { Ok(()) } }
        })
        .await;
        assert_eq!(got, Ok(2), "the third attempt arrived");
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test]
    async fn retries_are_bounded_and_the_last_error_is_kept() {
        let calls = Cell::new(0u32);
        let got: Result<u32, u32> = with_retries(3, 1, |n| {
            calls.set(calls.get() + 1);
            async move { Err(n) }
        })
        .await;
        assert_eq!(got, Err(2));
        assert_eq!(calls.get(), 3);
        let once: Result<u32, &str> = with_retries(0, 1, |_| async { Err("x") }).await;
        assert_eq!(once, Err("x"), "0 attempts still makes one");
    }

    #[test]
    fn only_so_many_messages_retry_at_once() {
        let r = InFlight::default();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(r.take(3).expect("a slot below the bound"));
        }
        assert!(r.take(3).is_none(), "past the bound");
        assert_eq!(r.now(), 3);
        held.pop();
        assert_eq!(r.now(), 2);
        assert!(r.take(3).is_some(), "a freed slot is taken again");
        assert_eq!(r.now(), 2, "and given back when dropped");
    }
}
