//! Round-trip time smoothing as TCP does it (RFC 6298): `srtt` and `rttvar` from samples, and a
//! timeout of `srtt + 4·rttvar` within bounds. Used wherever a wait should follow the measured
//! latency of a peer instead of a constant: bitswap's per-provider want deadline
//! (`agora-exchange`) and a watched peer's presence timeout (`agora-network`).

use std::time::Duration;

/// Smoothed round-trip time of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttEstimator {
    srtt: Duration,
    rttvar: Duration,
}

impl RttEstimator {
    /// The estimator after its first sample (RFC 6298 §2.2).
    pub fn first(sample: Duration) -> RttEstimator {
        RttEstimator {
            srtt: sample,
            rttvar: sample / 2,
        }
    }

    /// Folds in a later sample (RFC 6298 §2.3: α = 1/8, β = 1/4).
    pub fn update(&mut self, sample: Duration) {
        let err = self.srtt.abs_diff(sample);
        self.rttvar = (self.rttvar * 3 + err) / 4;
        self.srtt = (self.srtt * 7 + sample) / 8;
    }

    /// `self` updated with `sample`, or the first estimate when there was none.
    pub fn sampled(prev: Option<RttEstimator>, sample: Duration) -> RttEstimator {
        match prev {
            Some(mut e) => {
                e.update(sample);
                e
            }
            None => RttEstimator::first(sample),
        }
    }

    /// The smoothed round-trip time.
    pub fn srtt(&self) -> Duration {
        self.srtt
    }

    /// `srtt + 4·rttvar`, within `[min, max]` (`min` wins when `max < min`).
    pub fn timeout(&self, min: Duration, max: Duration) -> Duration {
        (self.srtt + self.rttvar * 4).clamp(min, max.max(min))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn a_steady_peer_gets_a_short_timeout_within_the_bounds() {
        let mut l = RttEstimator::first(Duration::from_millis(5));
        for _ in 0..50 {
            l.update(Duration::from_millis(5));
        }
        assert_eq!(l.timeout(MIN, MAX), MIN);
        let mut slow = RttEstimator::first(Duration::from_secs(2));
        slow.update(Duration::from_secs(3));
        assert_eq!(slow.timeout(MIN, MAX), MAX);
    }

    #[test]
    fn the_timeout_follows_latency_and_its_variation() {
        let mut l = RttEstimator::first(Duration::from_millis(200));
        for _ in 0..100 {
            l.update(Duration::from_millis(200));
        }
        let steady = l.timeout(MIN, MAX);
        assert!(steady >= Duration::from_millis(200) && steady < Duration::from_millis(260));
        assert_eq!(l.srtt(), Duration::from_millis(200));
        l.update(Duration::from_millis(900));
        l.update(Duration::from_millis(100));
        assert!(l.timeout(MIN, MAX) > steady, "jitter widens the timeout");
    }

    #[test]
    fn a_minimum_above_the_maximum_keeps_the_minimum() {
        let l = RttEstimator::first(Duration::from_millis(1));
        let tiny = Duration::from_millis(50);
        assert_eq!(l.timeout(MIN.min(tiny), tiny), tiny);
        assert_eq!(l.timeout(MIN, tiny), MIN);
    }

    #[test]
    fn sampled_starts_or_updates() {
        let a = RttEstimator::sampled(None, Duration::from_millis(10));
        assert_eq!(a, RttEstimator::first(Duration::from_millis(10)));
        let b = RttEstimator::sampled(Some(a), Duration::from_millis(10));
        assert_eq!(b.srtt(), Duration::from_millis(10));
    }
}
