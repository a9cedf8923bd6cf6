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

use rtc::rtp::Packet;
use rtc::rtp::header::Header;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

use crate::allocate::{ALLOCATE_INTERVAL, UPGRADE_HOLD};
use crate::bwe::QUEUE_LIMIT;
use crate::peer::PeerId;
use crate::{MediaCore, PcKind};

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

/// One subscriber's probing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Probe {
    /// The probe running: until when, and at what padding rate.
    pub(crate) until: Option<Instant>,
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

impl MediaCore {
    /// When the running probes next send padding, if any runs.
    pub(crate) fn probe_due(&self) -> Option<Instant> {
        if self.probing.is_empty() {
            return None;
        }
        self.padded_at.map(|t| t + PAD_INTERVAL).or(self.clock)
    }

    /// Pad the running probes, if their interval is due; end those done or failing.
    pub(crate) fn pad_probes(&mut self, now: Instant) {
        if self.probing.is_empty()
            || self
                .padded_at
                .is_some_and(|t| now.saturating_duration_since(t) < PAD_INTERVAL)
        {
            return;
        }
        self.padded_at = Some(now);
        let mut still = Vec::with_capacity(MAX_PROBES);
        for id in std::mem::take(&mut self.probing) {
            if self.probe_step(now, id) {
                still.push(id);
            }
        }
        self.probing = still;
    }

    /// Start probes where they are wanted (at most [`MAX_PROBES`] at once); run with each
    /// allocation, which is what changes what subscribers want.
    pub(crate) fn probes(&mut self, now: Instant) {
        self.pad_probes(now);
        let running = self.probing.len();
        if running >= MAX_PROBES {
            return;
        }
        let mut candidates: Vec<(u64, PeerId)> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.kind == PcKind::Subscribe
                    && p.connected
                    && p.wants_more > 0
                    && p.probe.until.is_none()
                    && p.probe.not_before.is_none_or(|t| now >= t)
                    && p.bwe.as_ref().is_some_and(|b| {
                        let f = b.figures();
                        f.reports > 0 && f.loss_permille < 100 && f.queue_ms < 20
                    })
                    && !p.outs.values().any(|o| {
                        o.downgraded
                            .is_some_and(|t| now.saturating_duration_since(t) < UPGRADE_HOLD)
                    })
            })
            .map(|(id, p)| (p.wants_more, *id))
            .collect();
        // The subscribers missing the most first.
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for (_, id) in candidates.into_iter().take(MAX_PROBES - running) {
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            let Some(f) = p.bwe.as_ref().map(|b| b.figures()) else {
                continue;
            };
            // What arrives during the probe is what the estimate rises to. Up to every track's
            // best layer and the margin a move up needs, but a step at a time: at first 30%
            // above the estimate, so a probe of a path without that room fills its queue
            // slowly enough to be stopped before anything is lost.
            // Bigger steps only straight after one the path carried: a path not probed for a
            // while starts over from the smallest.
            if p.probe
                .not_before
                .is_none_or(|t| now.saturating_duration_since(t) > ALLOCATE_INTERVAL * 2)
            {
                p.probe.carried = 0;
            }
            let (num, den) = STEPS[p.probe.carried.min(STEPS.len() - 1)];
            let need = (p.desired + p.desired / 4).min(f.estimate.saturating_mul(num) / den);
            p.probe.rate = need.saturating_sub(f.acked).clamp(32_000, 2_000_000);
            p.probe.target = (f.acked + p.probe.rate) * 95 / 100;
            p.probe.started = Some(now);
            p.probe.until = Some(now + DURATION);
            p.probe.last_padded = Some(now);
            p.probe.loss_before = f.loss_permille;
            self.stats.probes += 1;
            self.probing.push(id);
            tracing::debug!(parent: &p.span, rate = p.probe.rate, "probing");
        }
    }

    /// One tick of a running probe; whether it still runs.
    fn probe_step(&mut self, now: Instant, id: PeerId) -> bool {
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        let figures = p.bwe.as_ref().map(|b| b.figures());
        let loss_before = p.probe.loss_before;
        let congested = figures.is_some_and(|f| {
            f.queue_ms > (QUEUE_LIMIT.as_millis() / 2) as u64 || f.loss_permille > loss_before + 30
        });
        let reached = figures.is_some_and(|f| f.estimate >= p.probe.target)
            && p.probe
                .started
                .is_some_and(|t| now.saturating_duration_since(t) >= MIN_DURATION);
        let done = reached || p.probe.until.is_none_or(|t| now >= t);
        if congested || done || !p.connected {
            // A probe the path carried raised the estimate: the next step may follow at once.
            // One it did not waits twice as long as the last one that failed.
            let wait = if congested {
                p.probe.backoff = (p.probe.backoff * 2).clamp(BACKOFF, MAX_BACKOFF);
                p.probe.carried = 0;
                p.probe.backoff
            } else {
                p.probe.backoff = Duration::ZERO;
                p.probe.carried += 1;
                AFTER_SUCCESS
            };
            p.probe.until = None;
            p.probe.not_before = Some(now + wait);
            if congested {
                self.stats.probes_failed += 1;
            }
            tracing::debug!(parent: &p.span, congested, ?figures, "probe ends");
            return false;
        }
        let since = p
            .probe
            .last_padded
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let count = (p.probe.rate * since.as_micros() as u64 / 8 / 1_000_000 / PADDING_SIZE)
            .min(MAX_PER_TICK) as u16;
        if count == 0 {
            return true;
        }
        // Any video stream that just ended a frame takes the padding.
        let mut sent = 0u64;
        for out in p.outs.values_mut() {
            if out.kind != RtpCodecKind::Video || out.paused {
                continue;
            }
            let Some((pt, twcc_id)) = out.negotiated.as_ref().map(|n| (n.payload_type, n.twcc))
            else {
                continue;
            };
            let Some((first, timestamp)) = out.munger.padding(count) else {
                continue;
            };
            let Some(mut sender) = p.pc.rtp_sender(out.sender) else {
                continue;
            };
            for i in 0..count {
                let mut packet = Packet {
                    header: Header {
                        version: 2,
                        padding: true,
                        payload_type: pt,
                        sequence_number: first.wrapping_add(i),
                        timestamp,
                        ssrc: out.ssrc,
                        ..Default::default()
                    },
                    payload: Default::default(),
                };
                if let Some(id) = twcc_id {
                    p.twcc.stamp(id, &mut packet, now);
                }
                if sender.write_rtp(now, packet).is_ok() {
                    sent += 1;
                }
            }
            break;
        }
        if sent > 0 {
            p.probe.last_padded = Some(now);
            self.stats.padding_sent += sent;
            self.dirty.insert(id);
        }
        true
    }
}
