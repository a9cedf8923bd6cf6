//! Probing a subscriber's path before moving it up a layer.
//!
//! The bandwidth estimate never climbs past what traffic proved ([`crate::bwe`]), so a
//! subscriber held on a low layer (its path was narrow a moment ago, or its wish was) would stay
//! there. When its tracks' best layers would take more than the estimate, its path is clean (no
//! queue, no loss) and it was not moved down a moment ago, the server sends it RTP padding for
//! [`DURATION`] on one of its video streams, at the rate that would prove enough room: padding
//! packets between frames, numbered in the stream (the munger makes room), carrying no media,
//! which receivers count for their feedback and drop. If the path carries it, the estimate rises
//! and the next allocation moves the subscriber up (or the next probe, half a second later, goes
//! a step further: the first pads 30% above the estimate, each next one in a row that the path
//! carried a bigger step, up to twice the estimate); if the queue grows or packets are lost, the
//! probe stops at once and the next one waits twice as long (up to [`MAX_BACKOFF`]). A probe
//! ends early once the estimate reached what it aimed at.
//!
//! The longest wait bounds how late a path that widened (a viewer's Wi-Fi recovered, a
//! competing download ended) is found: [`MAX_BACKOFF`], then a few steps of about a second.
//!
//! Probes cost packets (padding is at most a few bytes in rtc, so many small ones), so a loop
//! runs at most [`MAX_PROBES`] at a time.

use std::time::{Duration, Instant};

use crate::bwe::{Figures, QUEUE_LIMIT};

/// How long one probe sends padding: several feedback intervals.
pub(crate) const DURATION: Duration = Duration::from_millis(1000);

/// The wait after a probe the path carried, before the next step up is probed.
const AFTER_SUCCESS: Duration = Duration::from_millis(500);

/// Probes one loop runs at once.
pub(crate) const MAX_PROBES: usize = 2;

/// A probe that reached its aim sooner ends then, but not before this: the estimate's window
/// must be mostly probe by then.
const MIN_DURATION: Duration = Duration::from_millis(600);

/// The wait after a probe, doubled after each one that failed, up to [`MAX_BACKOFF`]. A failed
/// probe costs the path a queue of about 30 ms for a moment, so even on a path that stays
/// narrow, one every few seconds is cheap; waiting longer would leave a widened path unused.
pub(crate) const BACKOFF: Duration = Duration::from_secs(2);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(6);

/// How far above the estimate a probe aims, by how many before it in a row the path carried:
/// a path that carried two steps likely has room for a bigger one.
const STEPS: [(u64, u64); 3] = [(13, 10), (16, 10), (2, 1)];

/// How often a running probe sends its padding: often enough that each burst is small (a burst
/// of hundreds of packets overflows socket buffers on the way and reads as loss).
pub(crate) const PAD_INTERVAL: Duration = Duration::from_millis(10);

/// Padding packets one probe sends per interval at most (2 Mbit/s of 24-byte packets).
const MAX_PER_TICK: u64 = 120;

/// Bytes a padding packet counts for in the estimate (RTP header, the transport-wide sequence
/// number extension, four bytes of padding).
const PADDING_SIZE: u64 = 24;

/// A probe that began longer ago than this (twice the allocation's pace) was not part of the
/// same climb: the next starts again from the smallest step.
const CLIMB: Duration = Duration::from_millis(1000);

/// One subscriber's probing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Probe {
    /// The probe running: until when, and at what padding rate.
    until: Option<Instant>,
    rate: u64,
    last_padded: Option<Instant>,
    /// Loss before the probe began, per thousand: a lossy path (Wi-Fi) is not congested by
    /// it; more loss than that is.
    loss_before: u64,
    /// Not before this may the next start.
    not_before: Option<Instant>,
    backoff: Duration,
    /// The estimate the probe aims at: reached, it has proven what it set out to.
    target: u64,
    /// Probes in a row that the path carried.
    carried: usize,
    started: Option<Instant>,
}

/// What a running probe does at one of its ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    /// It ended: it carried (the next may follow soon) or the path was congested (the next
    /// waits twice as long as the last that failed).
    Ended { congested: bool },
    /// Send this many padding packets now.
    Pad(u16),
    /// Nothing due yet.
    Wait,
}

impl Probe {
    /// Whether one may start now: none runs, and the wait after the last one is over.
    pub(crate) fn may_start(&self, now: Instant) -> bool {
        self.until.is_none() && self.not_before.is_none_or(|t| now >= t)
    }

    /// Start one from the estimator's `f`, toward `desired` bits a second (what the
    /// subscriber's tracks' best layers take); its padding rate.
    ///
    /// What arrives during the probe is what the estimate rises to. Up to every track's best
    /// layer and the margin a move up needs, but a step at a time: at first 30% above the
    /// estimate, so a probe of a path without that room fills its queue slowly enough to be
    /// stopped before anything is lost. Bigger steps only straight after one the path carried:
    /// a path not probed for a while starts over from the smallest.
    pub(crate) fn start(&mut self, now: Instant, f: &Figures, desired: u64) -> u64 {
        if self
            .not_before
            .is_none_or(|t| now.saturating_duration_since(t) > CLIMB)
        {
            self.carried = 0;
        }
        let (num, den) = STEPS[self.carried.min(STEPS.len() - 1)];
        let need = (desired + desired / 4).min(f.estimate.saturating_mul(num) / den);
        self.rate = need.saturating_sub(f.acked).clamp(32_000, 2_000_000);
        self.target = (f.acked + self.rate) * 95 / 100;
        self.started = Some(now);
        self.until = Some(now + DURATION);
        self.last_padded = Some(now);
        self.loss_before = f.loss_permille;
        self.rate
    }

    /// One tick of a running probe, with the estimator's `figures` now; `connected`: the
    /// connection still is.
    pub(crate) fn tick(&mut self, now: Instant, figures: Option<Figures>, connected: bool) -> Tick {
        let congested = figures.is_some_and(|f| {
            f.queue_ms > (QUEUE_LIMIT.as_millis() / 2) as u64
                || f.loss_permille > self.loss_before + 30
        });
        let reached = figures.is_some_and(|f| f.estimate >= self.target)
            && self
                .started
                .is_some_and(|t| now.saturating_duration_since(t) >= MIN_DURATION);
        let done = reached || self.until.is_none_or(|t| now >= t);
        if congested || done || !connected {
            // A probe the path carried raised the estimate: the next step may follow at once.
            // One it did not waits twice as long as the last one that failed.
            let wait = if congested {
                self.backoff = (self.backoff * 2).clamp(BACKOFF, MAX_BACKOFF);
                self.carried = 0;
                self.backoff
            } else {
                self.backoff = Duration::ZERO;
                self.carried += 1;
                AFTER_SUCCESS
            };
            self.until = None;
            self.not_before = Some(now + wait);
            return Tick::Ended { congested };
        }
        let since = self
            .last_padded
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let count = (self.rate * since.as_micros() as u64 / 8 / 1_000_000 / PADDING_SIZE)
            .min(MAX_PER_TICK) as u16;
        if count == 0 {
            Tick::Wait
        } else {
            Tick::Pad(count)
        }
    }

    /// Padding went out at `now`.
    pub(crate) fn padded(&mut self, now: Instant) {
        self.last_padded = Some(now);
    }
}
