//! Delivery of direct market messages (bids to a customer, awards to a provider, the
//! negotiation of the contract's terms): each is a request to one peer, and one lost to a
//! connection closed at the wrong moment costs a placement its auction or a deal its contract
//! (seen on a 37-process devnet on 2 cores: "Connection was closed before a response was
//! received" for an award and two negotiation messages; each placement waited 120 s for a
//! contract that could not come). So a failed request is sent again, a few times, each time in
//! a fresh envelope.
//!
//! A message that did arrive although its answer was lost arrives twice: the market refuses the
//! copy as a replay or as no longer fitting (an award already taken, a negotiation step already
//! made) and counts it, which changes nothing. The retries are bounded per message
//! ([`ATTEMPTS`]) and in all ([`MAX_RETRYING`]: beyond that, messages are sent once), so a peer
//! that makes this node send many messages cannot make it hold many retrying tasks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Attempts per message.
pub(crate) const ATTEMPTS: u32 = 3;
/// Delay before the first retry, doubled each time (0.5 s, then 1 s).
pub(crate) const RETRY_MS: u64 = 500;
/// Messages that may be retrying at once; past this, a message gets one attempt.
pub(crate) const MAX_RETRYING: usize = 256;

/// Counts the messages being retried (the guard gives its slot back when dropped).
#[derive(Clone, Debug, Default)]
pub(crate) struct Retrying(Arc<AtomicUsize>);

/// A slot of [`Retrying`].
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Retrying {
    /// A slot and the attempts it allows: [`ATTEMPTS`] while fewer than `max` messages retry,
    /// else one (no slot).
    pub(crate) fn take(&self, max: usize) -> (Option<Slot>, u32) {
        if self.0.fetch_add(1, Ordering::Relaxed) >= max {
            self.0.fetch_sub(1, Ordering::Relaxed);
            return (None, 1);
        }
        (Some(Slot(self.0.clone())), ATTEMPTS)
    }

    /// Messages retrying now.
    #[cfg(test)]
    pub(crate) fn now(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs `attempt(n)` for n = 0, 1, … until one succeeds or `attempts` were made, sleeping
/// `retry_ms << n` after failure n. Returns the number of the attempt that succeeded, or the
/// last error.
pub(crate) async fn with_retries<F, Fut, E>(
    attempts: u32,
    retry_ms: u64,
    mut attempt: F,
) -> Result<u32, E>
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
                tokio::time::sleep(Duration::from_millis(retry_ms << n)).await;
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test]
    async fn a_request_that_fails_is_sent_again_until_it_arrives() {
        let calls = Cell::new(0u32);
        let got = with_retries(ATTEMPTS, 1, |n| {
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
        let got: Result<u32, u32> = with_retries(ATTEMPTS, 1, |n| {
            calls.set(calls.get() + 1);
            async move { Err(n) }
        })
        .await;
        assert_eq!(got, Err(ATTEMPTS - 1));
        assert_eq!(calls.get(), ATTEMPTS);
        let once: Result<u32, &str> = with_retries(0, 1, |_| async { Err("x") }).await;
        assert_eq!(once, Err("x"), "0 attempts still makes one");
    }

    #[test]
    fn only_so_many_messages_retry_at_once() {
        let r = Retrying::default();
        let mut held = Vec::new();
        for _ in 0..3 {
            let (slot, attempts) = r.take(3);
            assert_eq!(attempts, ATTEMPTS);
            held.push(slot.expect("a slot below the bound"));
        }
        let (slot, attempts) = r.take(3);
        assert!(slot.is_none());
        assert_eq!(attempts, 1, "past the bound a message is sent once");
        assert_eq!(r.now(), 3);
        held.pop();
        assert_eq!(r.now(), 2);
        assert_eq!(r.take(3).1, ATTEMPTS, "a freed slot is taken again");
        assert_eq!(r.now(), 2, "and given back when dropped");
    }
}
