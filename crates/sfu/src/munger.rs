//! One subscriber's numbering of one publisher track ([`Munger`]): sequence numbers that count
//! on by one across wraps, source switches, pauses and padding, and timestamps that advance
//! with the wall clock across a switch. Pure arithmetic: no packet, no connection.

use std::time::Instant;

use crate::layers::SourceId;
#[cfg(test)]
use crate::seq::SeqExtender;
use crate::seq::nearest;

/// What to do with one packet for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// Send it with this sequence number and timestamp.
    Forward { seq: u16, timestamp: u32 },
    /// The subscriber needs a keyframe of this source before anything else.
    WaitKeyframe,
    /// Older than where this subscriber's stream of the source started.
    Drop,
}

/// Keeps one subscriber's stream of one publisher track continuous: its sequence numbers count
/// on by one across wraps, source switches (a republish) and pauses (overload shedding), and its
/// timestamps advance with the wall clock across a switch, so the decoder never sees a jump.
///
/// All arithmetic is on extended (64-bit) sequence numbers: `out = in + offset` within one
/// segment (one source, from one keyframe on), wrapping on purpose.
#[derive(Debug, Clone)]
pub(crate) struct Munger {
    /// The extended number the next new packet goes out with.
    next: u64,
    segment: Option<Segment>,
    /// The last timestamp sent and when, to place the first timestamp of the next segment.
    last_timestamp: u32,
    last_sent: Option<Instant>,
    /// The timestamp offset of a paused segment, kept so a pause and resume of the same source
    /// keeps its exact timing.
    paused_timing: Option<(SourceId, u32)>,
    /// The last packet sent (the newest) ended a frame: padding may go out now.
    frame_end: bool,
    /// Earlier stretches of the current segment, before padding moved its offset: (first
    /// outgoing number, end (exclusive), offset), oldest first, at most [`MAX_STRETCHES`].
    stretches: std::collections::VecDeque<(u64, u64, u64)>,
}

/// Stretches of a segment remembered for NACKs: a probe pads after a frame at most every few
/// frames, so this covers well over a retransmission buffer's time.
const MAX_STRETCHES: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Segment {
    source: SourceId,
    seq_offset: u64,
    /// The first incoming extended number of the segment; older ones are dropped.
    start: u64,
    /// The first outgoing extended number of the segment (since the last padding).
    first_out: u64,
    /// The newest incoming extended number sent.
    highest_in: u64,
    timestamp_offset: u32,
}

impl Munger {
    pub(crate) fn new(first_seq: u16) -> Munger {
        Munger {
            // One cycle up, as incoming numbers are, so nothing below the start goes negative.
            next: (1 << 16) + u64::from(first_seq),
            segment: None,
            last_timestamp: 0,
            last_sent: None,
            paused_timing: None,
            frame_end: false,
            stretches: std::collections::VecDeque::new(),
        }
    }

    /// The sequence number and timestamp packet `ext`/`timestamp` of `source` goes out with.
    #[cfg(test)]
    pub(crate) fn rewrite(
        &mut self,
        source: SourceId,
        ext: u64,
        timestamp: u32,
        is_keyframe: bool,
        clock_rate: u32,
        now: Instant,
    ) -> Rewrite {
        self.rewrite_marked(source, ext, timestamp, is_keyframe, false, clock_rate, now)
    }

    /// [`rewrite`](Self::rewrite) of a packet whose marker bit is `marker` (the last packet of a
    /// video frame).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rewrite_marked(
        &mut self,
        source: SourceId,
        ext: u64,
        timestamp: u32,
        is_keyframe: bool,
        marker: bool,
        clock_rate: u32,
        now: Instant,
    ) -> Rewrite {
        let segment = match self.segment {
            Some(s) if s.source == source => {
                if ext < s.start {
                    return Rewrite::Drop;
                }
                s
            }
            _ => {
                if !is_keyframe {
                    return Rewrite::WaitKeyframe;
                }
                self.start_segment(source, ext, timestamp, clock_rate, now)
            }
        };
        let out = ext.wrapping_add(segment.seq_offset);
        let timestamp = timestamp.wrapping_add(segment.timestamp_offset);
        if out >= self.next {
            self.next = out + 1;
            self.last_timestamp = timestamp;
            self.last_sent = Some(now);
            self.frame_end = marker;
            if let Some(s) = &mut self.segment {
                s.highest_in = ext;
            }
        }
        Rewrite::Forward {
            seq: out as u16,
            timestamp,
        }
    }

    fn start_segment(
        &mut self,
        source: SourceId,
        ext: u64,
        timestamp: u32,
        clock_rate: u32,
        now: Instant,
    ) -> Segment {
        let timestamp_offset = match (self.paused_timing.take(), self.last_sent) {
            // The same source again after a pause: its own clock is still right.
            (Some((paused, offset)), _) if paused == source => offset,
            // The very first packet: the publisher's timestamps pass through.
            (_, None) => 0,
            // A new source: continue from the last timestamp sent, plus the time since.
            (_, Some(at)) => {
                let elapsed = now.saturating_duration_since(at);
                let ticks = (elapsed.as_micros() * u128::from(clock_rate) / 1_000_000).max(1);
                let target = self.last_timestamp.wrapping_add(ticks as u32);
                target.wrapping_sub(timestamp)
            }
        };
        let segment = Segment {
            source,
            seq_offset: self.next.wrapping_sub(ext),
            start: ext,
            first_out: self.next,
            highest_in: ext,
            timestamp_offset,
        };
        self.stretches.clear();
        self.frame_end = false;
        self.segment = Some(segment);
        segment
    }

    /// Stop the current segment: the next packet sent must be a keyframe.
    pub(crate) fn pause(&mut self) {
        self.stretches.clear();
        self.frame_end = false;
        if let Some(s) = self.segment.take() {
            self.paused_timing = Some((s.source, s.timestamp_offset));
        }
    }

    /// Whether packets of `source` are flowing to this subscriber (a segment of it is open).
    #[cfg(test)]
    pub(crate) fn is_sending(&self, source: SourceId) -> bool {
        self.segment.is_some_and(|s| s.source == source)
    }

    /// The source flowing to this subscriber now, if any.
    pub(crate) fn source(&self) -> Option<SourceId> {
        self.segment.map(|s| s.source)
    }

    /// The source and incoming extended sequence number of a packet this subscriber names by
    /// its own 16-bit number (a NACK), if it belongs to the current segment and was sent.
    pub(crate) fn original(&self, seq: u16) -> Option<(SourceId, u64, u32)> {
        let s = self.segment?;
        let newest = self.next.checked_sub(1)?;
        let out = nearest(newest, seq);
        if out > newest {
            return None;
        }
        let offset = if out >= s.first_out {
            s.seq_offset
        } else {
            // Sent before a padding: the offset of its stretch (padding numbers have none).
            let &(_, _, offset) = self
                .stretches
                .iter()
                .find(|(first, end, _)| (*first..*end).contains(&out))?;
            offset
        };
        Some((s.source, out.wrapping_sub(offset), s.timestamp_offset))
    }

    /// Numbers for `count` padding packets, and their timestamp (the last one sent): only
    /// right after a frame's last packet, while a segment is open. Packets of the segment from
    /// then on go out `count` numbers further along; a late one from before is dropped (its
    /// number would be taken).
    pub(crate) fn padding(&mut self, count: u16) -> Option<(u16, u32)> {
        if !self.frame_end || count == 0 {
            return None;
        }
        let s = self.segment.as_mut()?;
        // Padding right after padding extends it; the media before has its stretch already.
        if s.first_out < self.next {
            if self.stretches.len() >= MAX_STRETCHES {
                self.stretches.pop_front();
            }
            self.stretches
                .push_back((s.first_out, self.next, s.seq_offset));
        }
        let first = self.next;
        self.next += u64::from(count);
        s.seq_offset = s.seq_offset.wrapping_add(u64::from(count));
        s.first_out = self.next;
        s.start = s.highest_in + 1;
        Some((first as u16, self.last_timestamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CLOCK: u32 = 90_000;

    fn forward(v: Rewrite) -> (u16, u32) {
        match v {
            Rewrite::Forward { seq, timestamp } => (seq, timestamp),
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    #[test]
    fn a_stream_stays_contiguous_for_seventy_thousand_packets() {
        let t0 = Instant::now();
        let mut m = Munger::new(65_000);
        let mut expected = 65_000u16;
        // The publisher starts near its own wrap too; extended numbers come from an extender.
        let mut x = SeqExtender::default();
        for i in 0..70_000u32 {
            let ext = x.extend(60_000u16.wrapping_add(i as u16));
            let (seq, ts) = forward(m.rewrite(1, ext, i * 3000, i == 0, CLOCK, t0));
            assert_eq!(seq, expected, "packet {i}");
            assert_eq!(ts, i * 3000, "timestamps of one source pass through");
            expected = expected.wrapping_add(1);
        }
    }

    #[test]
    fn video_waits_for_a_keyframe_and_older_packets_are_dropped() {
        let t0 = Instant::now();
        let mut m = Munger::new(10);
        assert_eq!(
            m.rewrite(1, 100, 0, false, CLOCK, t0),
            Rewrite::WaitKeyframe
        );
        assert_eq!(forward(m.rewrite(1, 101, 3000, true, CLOCK, t0)).0, 10);
        assert_eq!(m.rewrite(1, 100, 0, false, CLOCK, t0), Rewrite::Drop);
        // A reordered packet inside the segment keeps its place.
        assert_eq!(forward(m.rewrite(1, 103, 9000, false, CLOCK, t0)).0, 12);
        assert_eq!(forward(m.rewrite(1, 102, 6000, false, CLOCK, t0)).0, 11);
        assert_eq!(forward(m.rewrite(1, 104, 12000, false, CLOCK, t0)).0, 13);
    }

    #[test]
    fn a_new_source_continues_the_numbering_and_the_clock() {
        let t0 = Instant::now();
        let mut m = Munger::new(u16::MAX - 1);
        let (s1, ts1) = forward(m.rewrite(1, 5000, 1_000_000, true, CLOCK, t0));
        forward(m.rewrite(1, 5001, 1_003_000, false, CLOCK, t0));
        // The republished stream: new numbers, new random timestamp base, 500 ms later.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(
            m.rewrite(2, 70, 42, false, CLOCK, later),
            Rewrite::WaitKeyframe
        );
        let (s2, ts2) = forward(m.rewrite(2, 71, 45, true, CLOCK, later));
        assert_eq!(
            s2,
            s1.wrapping_add(2),
            "one on from the last packet sent, across the wrap"
        );
        assert_eq!(ts2, ts1.wrapping_add(3000).wrapping_add(45_000));
        let (s3, ts3) = forward(m.rewrite(2, 72, 3045, false, CLOCK, later));
        assert_eq!((s3, ts3), (s2.wrapping_add(1), ts2.wrapping_add(3000)));
        // The old source's late packets are not sent any more.
        assert_eq!(
            m.rewrite(1, 5002, 1_006_000, false, CLOCK, later),
            Rewrite::WaitKeyframe
        );
    }

    #[test]
    fn a_pause_resumes_at_a_keyframe_without_a_gap_in_numbers() {
        let t0 = Instant::now();
        let mut m = Munger::new(0);
        forward(m.rewrite(1, 1000, 0, true, CLOCK, t0));
        forward(m.rewrite(1, 1001, 3000, false, CLOCK, t0));
        m.pause();
        assert!(!m.is_sending(1));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            m.rewrite(1, 1060, 180_000, false, CLOCK, t1),
            Rewrite::WaitKeyframe
        );
        let (seq, ts) = forward(m.rewrite(1, 1061, 183_000, true, CLOCK, t1));
        assert_eq!(seq, 2, "numbering resumes where it stopped");
        assert_eq!(ts, 183_000, "the same source keeps its own timing");
    }

    #[test]
    fn padding_takes_numbers_between_frames_and_nacks_still_map_to_their_packets() {
        let t0 = Instant::now();
        let mut m = Munger::new(65_530);
        let mark = |m: &mut Munger, ext: u64, marker| {
            forward(m.rewrite_marked(7, ext, 0, ext == 100, marker, CLOCK, t0)).0
        };
        assert_eq!(mark(&mut m, 100, false), 65_530);
        assert_eq!(m.padding(3), None, "not in the middle of a frame");
        assert_eq!(mark(&mut m, 101, true), 65_531);
        // Three padding packets: 65,532 to 65,534.
        assert_eq!(m.padding(3), Some((65_532, 0)));
        assert_eq!(m.padding(1), Some((65_535, 0)), "more padding extends it");
        // The next frame continues after them, across the wrap.
        assert_eq!(mark(&mut m, 102, false), 0);
        assert_eq!(mark(&mut m, 103, true), 1);
        assert_eq!(m.padding(2), Some((2, 0)));
        assert_eq!(mark(&mut m, 104, true), 4);
        // A late packet from before the padding would take a used number: dropped.
        assert_eq!(
            m.rewrite_marked(7, 101, 0, false, false, CLOCK, t0),
            Rewrite::Drop
        );
        // NACKs: media numbers map to their packets in every stretch, padding numbers to none.
        assert_eq!(m.original(65_531), Some((7, 101, 0)));
        assert_eq!(m.original(0), Some((7, 102, 0)));
        assert_eq!(m.original(1), Some((7, 103, 0)));
        assert_eq!(m.original(4), Some((7, 104, 0)));
        assert_eq!(m.original(5), None, "not sent yet");
        for padding in [65_532, 65_533, 65_534, 65_535, 2, 3] {
            assert_eq!(m.original(padding), None, "{padding}");
        }
    }

    #[test]
    fn nacked_numbers_map_back_within_the_current_segment_only() {
        let t0 = Instant::now();
        let mut m = Munger::new(65_530);
        for i in 0..10u64 {
            forward(m.rewrite(7, 300 + i, 0, i == 0, CLOCK, t0));
        }
        // Sent 65,530 ..= 3 (wrapped); 65,535 came from incoming 305, 2 from 308.
        assert_eq!(m.original(65_535), Some((7, 305, 0)));
        assert_eq!(m.original(2), Some((7, 308, 0)));
        assert_eq!(m.original(4), None, "not sent yet");
        assert_eq!(m.original(65_529), None, "before the segment");
        m.pause();
        assert_eq!(m.original(2), None);
    }
}
