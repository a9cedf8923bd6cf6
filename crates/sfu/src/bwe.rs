//! How much a subscriber's connection can carry, from its transport-wide congestion control
//! feedback (TWCC).
//!
//! Each batch of a subscriber's acknowledged packets ([`crate::twcc`]: departure time, arrival
//! time on the receiver's clock, size, and whether it arrived) goes to [`Estimator`], through
//! rtc's `BandwidthEstimator` interface. No pacer: the SFU forwards at the publishers' pace and
//! chooses layers instead. From them, over the last [`WINDOW`]:
//! - the rate the receiver actually got (`acked`);
//! - the fraction lost;
//! - the queueing delay: one-way delay above the smallest seen in [`BASE_WINDOW`] (the clocks'
//!   offset cancels out), which grows as soon as the path's queue does, before anything is lost.
//!
//! The estimate backs off to 85% of what arrived when the queue grows past [`QUEUE_LIMIT`] or
//! more than 10% is lost. Otherwise it rises at once to what arrived (a probe's result) and,
//! losing under 2%, climbs 8% a second above that, but never past 1.5 times what
//! was acknowledged plus [`HEADROOM`]: an idle or lightly used path proves nothing about its
//! capacity, so only traffic that arrived (media, or the padding the server sends to probe
//! before moving a subscriber up) raises it.
//!
//! The rate things arrived at when the path last backed off is its capacity as far as anyone
//! knows (measured on the receiver's clock, over the latest arrivals): climbing without proof
//! stops at [`CEILING_SHARE`] of it, so a subscriber whose layers were just too much for the
//! path is not given them again a few seconds later on no new evidence (which made a viewer at
//! the edge of a layer step switch up and down several times a minute). Traffic that arrives
//! above it without a queue (a probe that the path carried) lifts it, and so does time: a
//! ceiling no back-off renewed for 15 s is forgotten (a hiccup is not a capacity).
//!
//! The core reads its [`Figures`] when it allocates and probes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::interceptor::PacketReport;

/// Acknowledged packets looked at for the rate, loss and queue.
pub(crate) const WINDOW: Duration = Duration::from_millis(500);

/// How far back the smallest one-way delay is looked for.
const BASE_WINDOW: Duration = Duration::from_secs(10);

/// Queueing delay that counts as congestion.
pub(crate) const QUEUE_LIMIT: Duration = Duration::from_millis(60);

/// What the estimate may exceed 1.5 times the acknowledged rate by.
pub(crate) const HEADROOM: u64 = 100_000;

/// Where a connection starts: unconstrained. Until its path first shows congestion a viewer
/// gets every layer its tiles want, as it would from an SFU without an estimator; the first
/// growing queue or heavy loss brings the estimate down to what arrived.
pub(crate) const INITIAL: u64 = MAX;

/// Bounds of the estimate. The top one is "no limit" in practice: a path that never showed
/// congestion is not capped at any rate, however fast its traffic (a LAN, loopback).
pub(crate) const MIN: u64 = 50_000;
pub(crate) const MAX: u64 = 10_000_000_000;

/// How close to the capacity the path last showed the estimate climbs without proof: room for
/// the bursts (keyframes) that a rate measured over half a second hides.
const CEILING_SHARE: f64 = 0.9;

/// The latest arrivals the delivery rate is measured over: two feedback intervals, as long
/// as a queue must have lasted for the path to back off.
const DELIVERY_SPAN: Duration = Duration::from_millis(250);

/// Back-offs this close together are one spell of congestion, whose capacity is the most that
/// arrived in it.
const CEILING_MERGE: Duration = Duration::from_secs(5);

/// How long a ceiling holds without a new back-off. A back-off can be the receiver's or the
/// network's hiccup rather than the path's capacity, and a probe that would lift it fails on a
/// path whose timing is that noisy; after this long the estimate climbs without proof again
/// (a path that really is that narrow backs off again and sets a new one).
const CEILING_LIFE: Duration = Duration::from_secs(15);

/// After a back-off, no climbing for this long: the queue drains first.
const BACKOFF_HOLD: Duration = Duration::from_millis(1000);

/// Packets remembered at most (a window's worth at a high rate): the feedback's size is the
/// receiver's to choose, the memory is not.
const MAX_SAMPLES: usize = 8192;

/// What the estimator says now, for the core's allocation and probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Figures {
    pub(crate) estimate: u64,
    pub(crate) acked: u64,
    /// Loss over the window, in parts per thousand.
    pub(crate) loss_permille: u64,
    pub(crate) queue_ms: u64,
    /// Report batches taken: 0 until the first feedback.
    pub(crate) reports: u64,
}

/// One acknowledged packet: when it left, its one-way delay (receiver clock minus ours, in
/// microseconds, offset included), its size, whether it arrived.
#[derive(Debug, Clone, Copy)]
struct Sample {
    departure: Instant,
    owd_us: Option<i64>,
    /// When it arrived, on the receiver's clock (microseconds).
    arrival_us: Option<i64>,
    size: usize,
    arrived: bool,
}

/// The estimator of one subscribe connection.
pub(crate) struct Estimator {
    figures: Figures,
    samples: VecDeque<Sample>,
    /// The smallest one-way delay per second of the base window: (second, delay).
    base: VecDeque<(Instant, i64)>,
    epoch: Option<Instant>,
    estimate: f64,
    last_update: Option<Instant>,
    backed_off: Option<Instant>,
    /// Report batches in a row that showed congestion.
    congested_batches: u32,
    /// The rate things arrived at when the path last backed off, until traffic proves more,
    /// and when.
    ceiling: Option<f64>,
    ceiling_at: Option<Instant>,
}

impl Estimator {
    pub(crate) fn new() -> Estimator {
        Estimator {
            figures: Figures {
                estimate: INITIAL,
                acked: 0,
                loss_permille: 0,
                queue_ms: 0,
                reports: 0,
            },
            samples: VecDeque::new(),
            base: VecDeque::new(),
            epoch: None,
            estimate: INITIAL as f64,
            last_update: None,
            backed_off: None,
            congested_batches: 0,
            ceiling: None,
            ceiling_at: None,
        }
    }

    fn take(&mut self, report: &PacketReport) {
        let epoch = *self.epoch.get_or_insert(report.departure);
        let owd_us = report.arrival.map(|a| {
            let sent = report.departure.saturating_duration_since(epoch);
            a.as_micros() as i64 - sent.as_micros() as i64
        });
        if let Some(d) = owd_us {
            match self.base.back_mut() {
                Some((at, min))
                    if report.departure.saturating_duration_since(*at) < Duration::from_secs(1) =>
                {
                    *min = (*min).min(d);
                }
                _ => self.base.push_back((report.departure, d)),
            }
        }
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            departure: report.departure,
            owd_us,
            arrival_us: report.arrival.map(|a| a.as_micros() as i64),
            size: report.size,
            arrived: report.arrived,
        });
    }

    fn update(&mut self, now: Instant) {
        let newest = match self.samples.back() {
            Some(s) => s.departure,
            None => return,
        };
        while self
            .samples
            .front()
            .is_some_and(|s| newest.saturating_duration_since(s.departure) > WINDOW)
        {
            self.samples.pop_front();
        }
        while self
            .base
            .front()
            .is_some_and(|(at, _)| newest.saturating_duration_since(*at) > BASE_WINDOW)
        {
            self.base.pop_front();
        }
        let Some(first) = self.samples.front().map(|s| s.departure) else {
            return;
        };
        let span = newest
            .saturating_duration_since(first)
            .max(Duration::from_millis(100));
        let (mut bytes, mut lost) = (0usize, 0usize);
        for s in &self.samples {
            if s.arrived {
                bytes += s.size;
            } else {
                lost += 1;
            }
        }
        let acked = bytes as f64 * 8.0 / span.as_secs_f64();
        let loss = lost as f64 / self.samples.len() as f64;
        let base = self.base.iter().map(|(_, d)| *d).min().unwrap_or(0);
        // The queue now: the median of the last few delays above the base, so one late packet
        // is not a congested path.
        let mut recent: Vec<i64> = self
            .samples
            .iter()
            .rev()
            .filter_map(|s| s.owd_us)
            .take(9)
            .collect();
        recent.sort_unstable();
        let queue_us = recent
            .get(recent.len() / 2)
            .map_or(0, |d| (d - base).max(0));
        let queue = Duration::from_micros(queue_us as u64);

        let elapsed = self
            .last_update
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .min(Duration::from_secs(1));
        self.last_update = Some(now);
        let holding = self
            .backed_off
            .is_some_and(|t| now.saturating_duration_since(t) < BACKOFF_HOLD);
        // One batch of late arrivals is as likely a busy receiver or a scheduling hiccup as a
        // queue; two in a row (about 200 ms) is a queue.
        let congested = queue > QUEUE_LIMIT || loss > 0.10;
        self.congested_batches = if congested {
            self.congested_batches + 1
        } else {
            0
        };
        if self.congested_batches >= 2 {
            if !holding {
                self.estimate = (acked * 0.85).min(self.estimate);
                self.backed_off = Some(now);
                // A back-off soon after another measures the sending that the first one cut
                // (and losses from before it still in the window), not the path: the higher
                // figure stands.
                let recent = self
                    .ceiling_at
                    .is_some_and(|t| now.saturating_duration_since(t) < CEILING_MERGE);
                // Too few arrivals to measure say nothing.
                let delivered = self.delivered();
                if delivered > 0.0 {
                    self.ceiling = Some(match self.ceiling {
                        Some(c) if recent => c.max(delivered),
                        _ => delivered,
                    });
                    self.ceiling_at = Some(now);
                }
                tracing::debug!(acked, ceiling = ?self.ceiling, loss, "backing off");
            }
        } else if !congested && !holding {
            // What arrived without a queue building is proven at once (a probe's result),
            // whatever the random loss; beyond it the estimate climbs slowly, and only on a
            // path losing under 2%.
            let base = self.estimate.max(acked);
            let grown = if loss < 0.02 {
                base * 1.08f64.powf(elapsed.as_secs_f64())
            } else {
                base
            };
            // Above it by more than the measure wanders, or long enough ago.
            if let Some(c) = self.ceiling
                && (self
                    .ceiling_at
                    .is_some_and(|t| now.saturating_duration_since(t) > CEILING_LIFE)
                    || self.delivered() > c * 1.1)
            {
                tracing::debug!(acked, ceiling = c, "ceiling lifted");
                self.ceiling = None;
            }
            let mut proven = acked * 1.5 + HEADROOM as f64;
            if let Some(c) = self.ceiling {
                proven = proven.min(c * CEILING_SHARE);
            }
            // Climbing stops at what traffic proved, but an estimate already above that (the
            // initial guess, or a path that got quieter) is not pulled down by idleness alone.
            self.estimate = if grown > proven {
                base.max(proven.min(grown))
            } else {
                grown
            };
        }
        self.estimate = self.estimate.clamp(MIN as f64, MAX as f64);
        self.figures = Figures {
            estimate: self.estimate as u64,
            acked: acked as u64,
            loss_permille: (loss * 1000.0) as u64,
            queue_ms: queue.as_millis() as u64,
            reports: self.figures.reports + 1,
        };
    }

    /// The rate things arrived at lately, on the receiver's clock: while a queue holds packets
    /// (as it has, when the path backs off), the path's capacity. The departure rate over the
    /// window says less: what left in a span arrives over a longer one, and before the queue
    /// built the path was not full. 0 when too few arrived to tell.
    fn delivered(&self) -> f64 {
        let Some(last) = self.samples.iter().filter_map(|s| s.arrival_us).max() else {
            return 0.0;
        };
        let from = last - DELIVERY_SPAN.as_micros() as i64;
        let (mut first, mut bytes) = (last, 0usize);
        for s in &self.samples {
            if let Some(a) = s.arrival_us.filter(|a| *a >= from) {
                first = first.min(a);
                bytes += s.size;
            }
        }
        let span_us = last - first;
        if span_us < DELIVERY_SPAN.as_micros() as i64 / 2 {
            return 0.0;
        }
        bytes as f64 * 8.0 * 1_000_000.0 / span_us as f64
    }

    /// Packets whose fate the subscriber reported, in send order.
    pub(crate) fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        for r in reports {
            self.take(r);
        }
        self.update(now);
    }

    pub(crate) fn figures(&self) -> Figures {
        self.figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds an estimator packets of 1,200 bytes sent at `send_bps` over a path of `capacity`
    /// bits a second with a 50 ms queue (beyond it, packets are lost), `loss` of them lost at
    /// random besides, with feedback every 100 ms, for `secs` seconds from `t0`.
    struct Path {
        est: Estimator,
        t0: Instant,
        now: Duration,
        /// When the path's queue empties, relative to t0.
        busy_until: Duration,
        next_id: u64,
    }

    impl Path {
        fn new() -> Path {
            Path {
                est: Estimator::new(),
                t0: Instant::now(),
                now: Duration::ZERO,
                busy_until: Duration::ZERO,
                next_id: 0,
            }
        }

        fn run(&mut self, secs: f64, send_bps: f64, capacity: f64, loss_every: u64) {
            const SIZE: usize = 1200;
            let gap = Duration::from_secs_f64(SIZE as f64 * 8.0 / send_bps);
            let serialize = Duration::from_secs_f64(SIZE as f64 * 8.0 / capacity);
            let end = self.now + Duration::from_secs_f64(secs);
            let mut batch = Vec::new();
            let mut next_feedback = self.now + Duration::from_millis(100);
            while self.now < end {
                let start = self.busy_until.max(self.now);
                let queued = start - self.now;
                let dropped = queued > Duration::from_millis(50)
                    || (loss_every > 0 && self.next_id.is_multiple_of(loss_every));
                let arrival = if dropped {
                    None
                } else {
                    self.busy_until = start + serialize;
                    // 20 ms of propagation, plus the queue and the serialization.
                    Some(self.busy_until + Duration::from_millis(20) + Duration::from_secs(100))
                };
                batch.push(PacketReport {
                    ssrc: 1,
                    id: self.next_id,
                    rtp_sequence_number: self.next_id as u16,
                    is_twcc: true,
                    twcc_sequence_number: self.next_id as u16,
                    size: SIZE,
                    arrived: arrival.is_some(),
                    departure: self.t0 + self.now,
                    arrival,
                    ecn: rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn::NotEct,
                });
                self.next_id += 1;
                self.now += gap;
                if self.now >= next_feedback {
                    self.est.on_reports(self.t0 + self.now, &batch);
                    batch.clear();
                    next_feedback += Duration::from_millis(100);
                }
            }
        }

        fn estimate(&self) -> u64 {
            self.est.figures().estimate
        }
    }

    #[test]
    fn sending_above_a_capped_path_backs_off_to_what_it_carries() {
        let mut p = Path::new();
        p.run(5.0, 1_500_000.0, 700_000.0, 0);
        let f = p.est.figures();
        assert!(f.estimate < 700_000, "{f:?}");
        assert!(f.estimate > 450_000, "{f:?}");
    }

    #[test]
    fn an_idle_path_proves_nothing_and_traffic_that_arrives_does() {
        let mut p = Path::new();
        // Back off first on a 700 kbit/s path.
        p.run(3.0, 1_500_000.0, 700_000.0, 0);
        let low = p.estimate();
        // The path is now 5 Mbit/s, but only 300 kbit/s of media flow: the estimate stays near
        // 1.5 times that, however long it runs.
        p.run(20.0, 300_000.0, 5_000_000.0, 0);
        let idle = p.estimate();
        assert!(idle <= 300_000 * 3 / 2 + HEADROOM + 50_000, "{idle}");
        assert!(idle >= low.min(550_000), "{idle} fell below {low}");
        // A second of probing at 1.5 Mbit/s that arrives raises it to about that at once.
        p.run(1.0, 1_500_000.0, 5_000_000.0, 0);
        assert!(p.estimate() > 1_400_000, "{:?}", p.est.figures());
    }

    #[test]
    fn after_a_back_off_the_estimate_climbs_no_nearer_than_the_capacity_shown_until_proven() {
        let mut p = Path::new();
        p.run(3.0, 1_500_000.0, 1_000_000.0, 0);
        let ceiling = p.est.ceiling.expect("backed off");
        assert!((900_000.0..1_100_000.0).contains(&ceiling), "{ceiling}");
        // Media at 800 kbit/s, under the capacity, for a while: without the ceiling the
        // estimate would climb to 1.5 times that plus the headroom (1.3 Mbit/s), and the next
        // allocation would send more than the path carried a moment ago.
        p.run(10.0, 800_000.0, 1_000_000.0, 0);
        assert!(
            p.estimate() as f64 <= ceiling * CEILING_SHARE + 1.0,
            "{:?} above {ceiling}",
            p.est.figures()
        );
        // The path widened and a probe proves it: the ceiling goes, and the estimate climbs
        // from what arrived as before.
        p.run(1.0, 1_600_000.0, 5_000_000.0, 0);
        assert!(p.est.ceiling.is_none());
        p.run(10.0, 1_200_000.0, 5_000_000.0, 0);
        assert!(p.estimate() > 1_700_000, "{:?}", p.est.figures());
    }

    #[test]
    fn a_ceiling_no_back_off_renews_is_forgotten() {
        let mut p = Path::new();
        p.run(3.0, 1_500_000.0, 1_000_000.0, 0);
        assert!(p.est.ceiling.is_some());
        // The path is wide now but nothing probes it: after the ceiling's life the estimate
        // climbs without proof again, as before any back-off.
        p.run(20.0, 800_000.0, 5_000_000.0, 0);
        assert!(p.est.ceiling.is_none());
        assert!(p.estimate() > 1_100_000, "{:?}", p.est.figures());
    }

    #[test]
    fn two_percent_random_loss_holds_and_twenty_percent_backs_off() {
        let mut p = Path::new();
        p.run(5.0, 1_000_000.0, 10_000_000.0, 50);
        assert!(p.estimate() >= 1_000_000, "{}", p.estimate());
        p.run(5.0, 1_000_000.0, 10_000_000.0, 5);
        assert!(p.estimate() < 900_000, "{}", p.estimate());
    }

    #[test]
    fn a_flood_of_feedback_is_held_to_the_sample_cap() {
        let mut p = Path::new();
        // 100 Mbit/s of tiny reports: the window would hold far more than the cap.
        p.run(1.0, 100_000_000.0, 1_000_000_000.0, 0);
        assert!(p.est.samples.len() <= MAX_SAMPLES);
        assert!(p.est.base.len() <= 12);
    }
}
