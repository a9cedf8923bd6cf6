//! Overload shedding: when a loop cannot keep up with its sockets, it stops forwarding some
//! video instead of queueing, so memory and delay stay flat and audio keeps flowing.
//!
//! The unit shed is one subscriber's copy of one publisher's track. Every video unit comes before
//! every audio unit (audio goes only once no video is left to shed), and within a kind units are
//! ordered by the publisher's seat, highest first (the anchor, seat 0, last), then by subscriber;
//! the first `level` of them are paused. The level rises by a tenth of the units every 100 ms the driver
//! stays behind its sockets and falls by a twentieth once it has kept up for a second: quick to
//! protect the loop, slow to probe back. A resumed unit restarts at a keyframe, with its sequence
//! numbers continuing where they stopped.

use std::time::{Duration, Instant};

/// Behind the sockets this long: shed more.
const BEHIND: Duration = Duration::from_millis(50);
/// Caught up to within this: calm.
const CAUGHT_UP: Duration = Duration::from_millis(5);
/// The shortest time between two increases.
const STEP_UP: Duration = Duration::from_millis(100);
/// Calm for this long (and this long since the last change) before shedding less.
const STEP_DOWN: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(crate) struct Shedder {
    level: usize,
    units: usize,
    backlog: Duration,
    changed: Option<Instant>,
    calm_since: Option<Instant>,
}

impl Shedder {
    /// How many units are paused.
    pub(crate) fn level(&self) -> usize {
        self.level
    }

    /// There are `units` units to shed from now: the level, never more than there are.
    pub(crate) fn count(&mut self, units: usize) -> usize {
        self.units = units;
        self.level = self.level.min(units);
        self.level
    }

    /// The driver's last reported backlog.
    pub(crate) fn backlog(&self) -> Duration {
        self.backlog
    }

    /// Take the driver's backlog into account; true when the level changed.
    pub(crate) fn observe(&mut self, now: Instant, backlog: Duration) -> bool {
        self.backlog = backlog;
        let since_change = self
            .changed
            .map_or(Duration::MAX, |c| now.saturating_duration_since(c));
        if backlog >= BEHIND {
            self.calm_since = None;
            if since_change >= STEP_UP && self.level < self.units.max(1) {
                self.level += (self.units / 10).max(1);
                self.changed = Some(now);
                return true;
            }
        } else if backlog <= CAUGHT_UP {
            let calm = *self.calm_since.get_or_insert(now);
            if self.level > 0
                && now.saturating_duration_since(calm) >= STEP_DOWN
                && since_change >= STEP_DOWN
            {
                self.level = self.level.saturating_sub((self.units / 20).max(1));
                self.changed = Some(now);
                return true;
            }
        } else {
            self.calm_since = None;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn sheds_quickly_while_behind_and_recovers_slowly() {
        let t0 = Instant::now();
        let mut s = Shedder {
            units: 40,
            ..Default::default()
        };
        assert!(!s.observe(t0, ms(10)), "a short burst is not overload");
        assert!(s.observe(t0, ms(60)));
        assert_eq!(s.level(), 4);
        assert!(!s.observe(t0 + ms(50), ms(120)), "one step per 100 ms");
        assert!(s.observe(t0 + ms(100), ms(160)));
        assert_eq!(s.level(), 8);
        // Caught up: nothing changes for a second, then a twentieth at a time.
        let t1 = t0 + ms(200);
        assert!(!s.observe(t1, ms(0)));
        assert!(!s.observe(t1 + ms(900), ms(1)));
        assert!(s.observe(t1 + ms(1000), ms(0)));
        assert_eq!(s.level(), 6);
        assert!(!s.observe(t1 + ms(1500), ms(0)));
        assert!(s.observe(t1 + ms(2000), ms(0)));
        assert_eq!(s.level(), 4);
        // In between the thresholds: hold.
        assert!(!s.observe(t1 + ms(5000), ms(20)));
        assert_eq!(s.level(), 4);
    }

    #[test]
    fn never_counts_past_the_units_there_are() {
        let t0 = Instant::now();
        let mut s = Shedder {
            units: 3,
            ..Default::default()
        };
        for i in 0..100 {
            s.observe(t0 + ms(100 * i), ms(500));
        }
        assert_eq!(s.level(), 3);
    }
}
