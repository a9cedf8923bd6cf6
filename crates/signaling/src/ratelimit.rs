//! Per-connection frame rate limits of the contract: more than 50 frames/s sustained over 2 s
//! gets `rate_limited`; past ten times that the socket is closed with 1008. The token bucket is
//! also the room messages' limit per member and the server API's per client address.

use tokio::time::Instant;

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    /// `rate` a second, and up to `window_s` seconds' worth at once.
    pub(crate) fn new(rate: f64, window_s: f64, now: Instant) -> Bucket {
        let burst = rate * window_s;
        Bucket {
            tokens: burst,
            rate,
            burst,
            last: now,
        }
    }

    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Bucket {
    /// Full again, had it been left alone since `last` (an idle client's entry can go).
    pub(crate) fn is_idle(&self, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * self.rate
            >= self.burst
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    /// Answer `rate_limited` and drop the frame.
    Limited,
    /// Close the socket with 1008.
    Close,
}

#[derive(Debug)]
pub(crate) struct RateLimiter {
    soft: Bucket,
    hard: Bucket,
}

pub(crate) const FRAMES_PER_SECOND: f64 = 50.0;
const WINDOW_S: f64 = 2.0;
const CLOSE_FACTOR: f64 = 10.0;

impl RateLimiter {
    pub(crate) fn new(now: Instant) -> RateLimiter {
        RateLimiter {
            soft: Bucket::new(FRAMES_PER_SECOND, WINDOW_S, now),
            hard: Bucket::new(FRAMES_PER_SECOND * CLOSE_FACTOR, WINDOW_S, now),
        }
    }

    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        if !self.hard.take(now) {
            Verdict::Close
        } else if !self.soft.take(now) {
            Verdict::Limited
        } else {
            Verdict::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fifty_frames_a_second_pass_forever() {
        let mut now = Instant::now();
        let mut rl = RateLimiter::new(now);
        for _ in 0..10_000 {
            now += Duration::from_millis(20);
            assert_eq!(rl.check(now), Verdict::Pass);
        }
    }

    #[test]
    fn a_burst_over_two_seconds_worth_is_limited_then_closed() {
        let now = Instant::now();
        let mut rl = RateLimiter::new(now);
        let verdicts: Vec<Verdict> = (0..1001).map(|_| rl.check(now)).collect();
        assert!(verdicts[..100].iter().all(|v| *v == Verdict::Pass));
        assert!(verdicts[100..1000].iter().all(|v| *v == Verdict::Limited));
        assert_eq!(verdicts[1000], Verdict::Close);
    }

    #[test]
    fn the_soft_limit_recovers_after_a_pause() {
        let mut now = Instant::now();
        let mut rl = RateLimiter::new(now);
        while rl.check(now) == Verdict::Pass {}
        now += Duration::from_secs(1);
        assert_eq!(rl.check(now), Verdict::Pass);
    }
}
