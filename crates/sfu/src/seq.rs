//! Extended RTP sequence numbers.
//!
//! RTP's 16-bit sequence numbers wrap every 65,536 packets (three minutes of 1.5 Mbit/s video).
//! They are extended once, where a packet enters, into a 64-bit count of the whole stream;
//! everything downstream (the "older than this subscriber's start" rule, the retransmission
//! buffer, rewriting) compares extended values only, so no comparison can turn negative half
//! way round.

/// Extends one stream's 16-bit sequence numbers by counting rollovers.
///
/// A packet within half the sequence space behind the highest seen is a late or reordered one
/// and gets an extended number below it; anything else moves the stream forward.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqExtender {
    highest: Option<u64>,
}

/// Where the first packet of a stream lands: one cycle up, so a packet reordered before it still
/// has a (smaller) extended number instead of going below zero.
const SEQ_BASE: u64 = 1 << 16;

impl SeqExtender {
    /// The extended number of `seq`, remembering it when it is the newest so far.
    pub(crate) fn extend(&mut self, seq: u16) -> u64 {
        let ext = match self.highest {
            None => SEQ_BASE + u64::from(seq),
            Some(highest) => nearest(highest, seq),
        };
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        ext
    }

    /// The extended number `seq` would get, without remembering anything.
    #[cfg(test)]
    pub(crate) fn peek(&self, seq: u16) -> Option<u64> {
        self.highest.map(|h| nearest(h, seq))
    }

    /// The newest extended number seen.
    pub(crate) fn highest(&self) -> Option<u64> {
        self.highest
    }
}

/// The extended number closest to `reference` whose low 16 bits are `seq`.
pub(crate) fn nearest(reference: u64, seq: u16) -> u64 {
    let delta = i64::from(seq.wrapping_sub(reference as u16) as i16);
    reference.saturating_add_signed(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_counts_on_through_both_wraps() {
        let mut x = SeqExtender::default();
        let first = x.extend(60_000);
        let mut last = first;
        // 140,000 packets from 60,000: past 65,536, past 32,768 of the next cycle, and again.
        for i in 1..140_000u64 {
            let seq = (60_000 + i) as u16;
            let ext = x.extend(seq);
            assert_eq!(ext, last + 1, "packet {i} (seq {seq})");
            last = ext;
        }
        assert_eq!(last - first, 139_999);
    }

    #[test]
    fn late_packets_land_behind_and_do_not_move_the_stream() {
        let mut x = SeqExtender::default();
        let a = x.extend(65_534);
        let b = x.extend(1); // wrapped, four ahead
        assert_eq!(b, a + 3);
        let late = x.extend(65_535); // reordered from before the wrap
        assert_eq!(late, a + 1);
        assert_eq!(x.highest(), Some(b));
        // A packet from before the first one still gets a number, below it.
        assert_eq!(x.extend(65_530), a - 4);
        assert_eq!(x.peek(2), Some(b + 1));
    }

    #[test]
    fn half_way_round_is_never_negative() {
        let mut x = SeqExtender::default();
        let start = x.extend(0);
        for seq in (1..=40_000u32).map(|s| s as u16) {
            x.extend(seq);
        }
        // 40,000 after the start: a signed 16-bit difference would say -25,536.
        assert_eq!(x.highest(), Some(start + 40_000));
        assert!(x.highest() > Some(start));
    }
}
