//! Probing, as the core runs it: which subscribers probe (at most a few at once), and the
//! padding each running probe sends. The probe's own state is [`crate::probe::Probe`].

use std::time::Instant;

use super::allocate::UPGRADE_HOLD;
use crate::MediaCore;
use crate::ids::PeerId;
use crate::probe::{MAX_PROBES, PAD_INTERVAL, Tick};

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
            .filter(|(_, p)| p.connected)
            .filter_map(|(id, p)| Some((*id, p.role.subscriber()?)))
            .filter(|(_, s)| {
                let f = s.figures();
                s.may_probe(now)
                    && f.reports > 0
                    && f.loss_permille < 100
                    && f.queue_ms < 20
                    && !s.outs().any(|(_, o)| {
                        o.downgraded
                            .is_some_and(|t| now.saturating_duration_since(t) < UPGRADE_HOLD)
                    })
            })
            .map(|(id, s)| (s.wants_more(), id))
            .collect();
        // The subscribers missing the most first.
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for (_, id) in candidates.into_iter().take(MAX_PROBES - running) {
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            let Some(s) = p.role.subscriber_mut() else {
                continue;
            };
            let rate = s.start_probe(now);
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
        let Some(s) = p.role.subscriber_mut() else {
            return false;
        };
        let (tick, figures) = s.probe_tick(now, p.connected);
        let count = match tick {
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
        let sent = s.pad(&mut p.pc, count, now);
        if sent > 0 {
            self.stats.padding_sent += sent;
            self.dirty.insert(id);
        }
        true
    }
}
