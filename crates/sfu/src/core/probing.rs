//! Probing, as the core runs it: which subscribers probe (at most a few at once), and the
//! padding each running probe sends. The probe's own state is [`crate::probe::Probe`].

use std::time::Instant;

use rtc::rtp::Packet;
use rtc::rtp::header::Header;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

use super::allocate::UPGRADE_HOLD;
use crate::ids::PeerId;
use crate::probe::{MAX_PROBES, PAD_INTERVAL, Tick};
use crate::{MediaCore, PcKind};

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
                    && p.probe.may_start(now)
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
            let rate = p.probe.start(now, &f, p.desired);
            self.stats.probes += 1;
            self.probing.push(id);
            tracing::debug!(parent: &p.span, rate, "probing");
        }
    }

    /// One tick of a running probe; whether it still runs.
    fn probe_step(&mut self, now: Instant, id: PeerId) -> bool {
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        let figures = p.bwe.as_ref().map(|b| b.figures());
        let count = match p.probe.tick(now, figures, p.connected) {
            Tick::Ended { congested } => {
                if congested {
                    self.stats.probes_failed += 1;
                }
                tracing::debug!(parent: &p.span, congested, ?figures, "probe ends");
                return false;
            }
            Tick::Wait => return true,
            Tick::Pad(count) => count,
        };
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
            p.probe.padded(now);
            self.stats.padding_sent += sent;
            self.dirty.insert(id);
        }
        true
    }
}
