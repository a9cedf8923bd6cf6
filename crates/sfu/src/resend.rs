//! What one subscriber may have retransmitted on one track.
//!
//! A NACK costs the server a packet written and encrypted for every sequence number it names, so
//! a subscriber (honest on a bad link, or forging NACKs) must not be able to make it send more
//! than the stream itself: each number is answered at most once per [`RESEND_GAP`] (a repeat
//! within a round trip is the same loss asked for twice), and in all a track retransmits at most
//! [`SHARE`] of the packets it forwards, plus a burst of [`BURST`] for a loss that comes in one
//! piece.

use std::time::{Duration, Instant};

/// The same number asked again within this long is not sent again (a round trip on most
/// links; a retransmission still on its way would be duplicated).
pub(crate) const RESEND_GAP: Duration = Duration::from_millis(100);
/// Retransmissions earned per forwarded packet.
pub(crate) const SHARE: f32 = 0.5;
/// Retransmissions that may go out at once.
pub(crate) const BURST: f32 = 64.0;
/// Numbers remembered for the repeat check; a NACK names at most 128 (`MAX_NACKED`).
const RECENT: usize = 256;

/// Why a retransmission was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Sent less than [`RESEND_GAP`] ago.
    Repeat,
    /// The track's budget is spent.
    OverBudget,
}

/// One subscriber track's retransmission budget.
#[derive(Debug, Clone)]
pub(crate) struct Resends {
    /// Outgoing sequence number and when it was last retransmitted, by number modulo the ring.
    recent: Box<[Option<(u16, Instant)>; RECENT]>,
    tokens: f32,
}

impl Default for Resends {
    fn default() -> Self {
        Resends {
            recent: Box::new([None; RECENT]),
            tokens: BURST,
        }
    }
}

impl Resends {
    /// A packet of the track went out: it earns [`SHARE`] of a retransmission.
    pub(crate) fn forwarded(&mut self) {
        self.tokens = (self.tokens + SHARE).min(BURST);
    }

    /// Whether outgoing number `seq` may be retransmitted now; notes it if so.
    pub(crate) fn allow(&mut self, now: Instant, seq: u16) -> Result<(), Refused> {
        let slot = &mut self.recent[usize::from(seq) % RECENT];
        if let Some((s, at)) = *slot
            && s == seq
            && now.saturating_duration_since(at) < RESEND_GAP
        {
            return Err(Refused::Repeat);
        }
        if self.tokens < 1.0 {
            return Err(Refused::OverBudget);
        }
        self.tokens -= 1.0;
        *slot = Some((seq, now));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_resent_once_per_gap() {
        let mut r = Resends::default();
        let t = Instant::now();
        assert_eq!(r.allow(t, 7), Ok(()));
        assert_eq!(
            r.allow(t + Duration::from_millis(50), 7),
            Err(Refused::Repeat)
        );
        assert_eq!(
            r.allow(t + RESEND_GAP, 7),
            Ok(()),
            "asked again a round trip later"
        );
    }

    #[test]
    fn the_budget_is_a_burst_then_a_share_of_what_the_track_forwards() {
        let mut r = Resends::default();
        let t = Instant::now();
        let sent = (0..1000u16).filter(|&s| r.allow(t, s).is_ok()).count();
        assert_eq!(sent, BURST as usize);
        for _ in 0..100 {
            r.forwarded();
        }
        let more = (1000..2000u16).filter(|&s| r.allow(t, s).is_ok()).count();
        assert_eq!(more, (100.0 * SHARE) as usize);
    }

    #[test]
    fn numbers_across_the_wrap_are_told_apart() {
        let mut r = Resends::default();
        let t = Instant::now();
        assert_eq!(r.allow(t, 65_535), Ok(()));
        assert_eq!(r.allow(t, 255), Ok(()), "another number in the same slot");
        assert_eq!(
            r.allow(t, 65_535),
            Ok(()),
            "its slot was taken, so it is not a repeat"
        );
    }
}
