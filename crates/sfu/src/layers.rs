//! The streams of a published track ([`Layer`]): one for audio or plain video, up to three for
//! simulcast video (rule 14: rids `q`, `h`, `f`). Each keeps its own sequence numbers,
//! retransmission buffer, keyframe requests, bit rate and liveness, and which one a subscriber
//! gets is chosen here ([`select`]).

use std::time::{Duration, Instant};

use miclink_protocol::VideoQuality;
use rtc::rtp::Packet;

use crate::seq::SeqExtender;

/// Packets of one published video stream kept for retransmission, shared by every subscriber.
pub(crate) const HISTORY: usize = 1024;

/// The shortest interval between two keyframe requests to one publisher stream.
pub(crate) const PLI_INTERVAL: Duration = Duration::from_millis(300);

/// Simulcast streams one track may carry: the contract's three; more would be a publisher
/// growing the server's state for nothing.
pub(crate) const MAX_LAYERS: usize = 3;

/// A layer that has sent nothing for this long is not offered to subscribers (its publisher
/// paused it, or lost the bandwidth for it).
pub(crate) const IDLE: Duration = Duration::from_secs(1);

/// A layer must have been flowing this long before a subscriber switches to it: one that just
/// (re)started, often at a low rate while its encoder ramps up, may stop again at once.
pub(crate) const WARMUP: Duration = Duration::from_secs(2);

/// How long the bit rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Identifies one published stream for as long as the process lives: a republish, even of the
/// same kind by the same user, is a new source, and so is each simulcast layer, so a
/// subscriber's stream notices every switch.
pub(crate) type SourceId = u64;

/// One RTP stream of a published track.
pub(crate) struct Layer {
    pub(crate) rid: String,
    pub(crate) ssrc: u32,
    pub(crate) source: SourceId,
    last_pli: Option<Instant>,
    seqs: SeqExtender,
    history: History,
    /// Bytes since `window_start`, and the rate of the last full windows, smoothed (kept while
    /// the layer pauses: what it will cost when it resumes).
    window_bytes: u64,
    window_start: Option<Instant>,
    pub(crate) bps: u64,
    /// The highest rate measured: ranks layers whose rids say nothing.
    peak_bps: u64,
    /// When the current run of packets (without a pause longer than [`IDLE`]) began.
    run_start: Option<Instant>,
    last_packet: Option<Instant>,
}

impl Layer {
    pub(crate) fn new(rid: &str, ssrc: u32, source: SourceId, history: usize) -> Layer {
        Layer {
            rid: rid.to_owned(),
            ssrc,
            source,
            last_pli: None,
            seqs: SeqExtender::default(),
            history: History::new(history),
            window_bytes: 0,
            window_start: None,
            bps: 0,
            peak_bps: 0,
            run_start: None,
            last_packet: None,
        }
    }

    /// Take one packet in: its extended sequence number and how many numbers it skipped (packets
    /// missing on arrival, whether or not a retransmission repairs them later), and a copy kept
    /// for retransmission.
    pub(crate) fn receive(&mut self, now: Instant, packet: &Packet) -> (u64, u64) {
        let before = self.seqs.highest();
        let ext = self.seqs.extend(packet.header.sequence_number);
        let skipped = before.map_or(0, |h| ext.saturating_sub(h).saturating_sub(1));
        self.history.put(ext, packet);
        self.meter(now, packet.payload.len() + 12);
        (ext, skipped)
    }

    /// A packet that is not forwarded (its kind is muted): its number moves the baseline, so the
    /// muted span does not count as lost when forwarding resumes. Nothing is stored.
    pub(crate) fn held(&mut self, now: Instant, packet: &Packet) {
        self.seqs.extend(packet.header.sequence_number);
        self.meter(now, packet.payload.len() + 12);
    }

    /// Count `bytes` arriving now; a packet after [`IDLE`] (or the first) starts a new run.
    pub(crate) fn meter(&mut self, now: Instant, bytes: usize) {
        if self
            .last_packet
            .is_none_or(|t| now.saturating_duration_since(t) > IDLE)
        {
            self.run_start = Some(now);
        }
        self.last_packet = Some(now);
        self.window_bytes += bytes as u64;
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let rate = self.window_bytes * 8 * 1000 / (elapsed.as_millis() as u64).max(1);
            // Smoothed over a few windows: keyframes make single seconds uneven.
            self.bps = if self.bps == 0 {
                rate
            } else {
                (self.bps * 7 + rate * 3) / 10
            };
            self.peak_bps = self.peak_bps.max(rate);
            self.window_bytes = 0;
            self.window_start = Some(now);
        }
    }

    /// Sending now: a packet within [`IDLE`].
    pub(crate) fn active(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) <= IDLE)
    }

    /// Sending, and for at least [`WARMUP`].
    fn warm(&self, now: Instant) -> bool {
        self.active(now)
            && self
                .run_start
                .is_some_and(|t| now.saturating_duration_since(t) >= WARMUP)
    }

    /// The stored packet with extended sequence number `ext`.
    pub(crate) fn stored(&self, ext: u64) -> Option<&Packet> {
        self.history.get(ext)
    }

    /// A keyframe arrives now: a request within the next [`PLI_INTERVAL`] would only ask for
    /// another.
    pub(crate) fn keyframe_arrives(&mut self, now: Instant) {
        self.last_pli = Some(now);
    }

    /// Whether a keyframe request may go out now (one per [`PLI_INTERVAL`]); notes it if so.
    pub(crate) fn pli_due(&mut self, now: Instant) -> bool {
        if self
            .last_pli
            .is_some_and(|t| now.saturating_duration_since(t) < PLI_INTERVAL)
        {
            return false;
        }
        self.last_pli = Some(now);
        true
    }
}

/// The quality a rid names (rule 14): `q`, `h`, `f`; other rids name none.
pub(crate) fn named(rid: &str) -> Option<VideoQuality> {
    match rid {
        "q" => Some(VideoQuality::Low),
        "h" => Some(VideoQuality::Medium),
        "f" => Some(VideoQuality::High),
        _ => None,
    }
}

/// The rid that names `quality` (rule 14).
pub(crate) fn rid_of(quality: VideoQuality) -> &'static str {
    match quality {
        VideoQuality::Low => "q",
        VideoQuality::Medium => "h",
        // "off" names no layer; asked for, it is the top one.
        VideoQuality::High | VideoQuality::Off => "f",
    }
}

/// The quality each layer stands for, in the layers' order. Rids `q`, `h`, `f` say it (rule
/// 14); otherwise the layers are ranked by the highest rate each has sent, the top one "high".
/// A track with one stream is "high": it is all there is, unless its publisher announced
/// named layers (`simulcast`) and the others have not been seen yet.
pub(crate) fn qualities(layers: &[Layer], simulcast: bool) -> Vec<VideoQuality> {
    let named: Option<Vec<VideoQuality>> = layers.iter().map(|l| named(&l.rid)).collect();
    if let Some(named) = named
        && (layers.len() > 1 || simulcast)
    {
        return named;
    }
    let mut order: Vec<usize> = (0..layers.len()).collect();
    // Highest first; the later layer first among equals (browsers list low to high).
    order.sort_by_key(|&i| std::cmp::Reverse((layers[i].peak_bps, i)));
    let mut out = vec![VideoQuality::Low; layers.len()];
    for (rank, i) in order.into_iter().enumerate() {
        out[i] = match rank {
            0 => VideoQuality::High,
            1 => VideoQuality::Medium,
            _ => VideoQuality::Low,
        };
    }
    out
}

/// The layer a subscriber wanting at most `want` should get: the best sending one not above
/// `want`, else the lowest sending one. A switch up from `current` goes only to a layer that
/// has been sending for [`WARMUP`] (down, to any sending one); a subscriber with nothing yet
/// takes any sending layer. A
/// track with one stream always gets that stream (its pauses are the publisher's to make).
/// `None` when `want` is off; `current` unchanged when no layer qualifies.
pub(crate) fn select(
    layers: &[Layer],
    qualities: &[VideoQuality],
    want: VideoQuality,
    current: Option<SourceId>,
    now: Instant,
) -> Option<SourceId> {
    if want == VideoQuality::Off {
        return None;
    }
    if layers.len() == 1 {
        return Some(layers[0].source);
    }
    let pick = |usable: &dyn Fn(&Layer) -> bool| {
        let ranked = layers.iter().zip(qualities).filter(|(l, _)| usable(l));
        ranked
            .clone()
            .filter(|(_, q)| **q <= want)
            .max_by_key(|(_, q)| **q)
            .or_else(|| ranked.min_by_key(|(_, q)| **q))
            .map(|(l, _)| l.source)
    };
    let quality_of = |source: SourceId| {
        layers
            .iter()
            .position(|l| l.source == source)
            .map(|i| qualities[i])
    };
    let current_quality = current.and_then(quality_of);
    // Moving down never waits: a lower layer is taken as soon as it sends.
    let lower =
        |l: &Layer| current_quality.is_some_and(|c| quality_of(l.source).is_some_and(|q| q < c));
    pick(&|l| {
        l.active(now) && (Some(l.source) == current || current.is_none() || l.warm(now) || lower(l))
    })
    // The current layer stopped and nothing else is warm: any sending one beats a freeze.
    .or_else(|| pick(&|l| l.active(now)))
    .or(current)
}

/// A ring of the last packets by extended sequence number; each slot remembers whose it is, so
/// a lookup never returns a packet one ring length older than asked.
struct History {
    slots: Vec<Option<(u64, Packet)>>,
}

impl History {
    fn new(len: usize) -> History {
        History {
            slots: vec![None; len],
        }
    }

    fn put(&mut self, ext: u64, packet: &Packet) {
        if self.slots.is_empty() {
            return;
        }
        let len = self.slots.len() as u64;
        self.slots[(ext % len) as usize] = Some((ext, packet.clone()));
    }

    fn get(&self, ext: u64) -> Option<&Packet> {
        if self.slots.is_empty() {
            return None;
        }
        let len = self.slots.len() as u64;
        match &self.slots[(ext % len) as usize] {
            Some((at, packet)) if *at == ext => Some(packet),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, len: usize) -> Packet {
        Packet {
            header: rtc::rtp::header::Header {
                sequence_number: seq,
                ..Default::default()
            },
            payload: vec![0u8; len].into(),
        }
    }

    #[test]
    fn numbers_skipped_on_arrival_are_counted_across_the_wrap_and_late_ones_are_not() {
        let now = Instant::now();
        let mut l = Layer::new("", 7, 1, HISTORY);
        let mut skipped = |seq| l.receive(now, &packet(seq, 10)).1;
        assert_eq!(skipped(65_533), 0, "the first packet");
        assert_eq!(skipped(65_534), 0);
        assert_eq!(skipped(1), 2, "65,535 and 0 missing across the wrap");
        assert_eq!(skipped(0), 0, "a late one (a repair) skips nothing");
        assert_eq!(skipped(2), 0);
    }

    #[test]
    fn history_returns_only_the_packet_asked_for() {
        let mut h = History::new(4);
        for ext in 10..16u64 {
            h.put(ext, &packet(ext as u16, 0));
        }
        assert!(h.get(11).is_none(), "overwritten by 15");
        assert_eq!(h.get(13).map(|p| p.header.sequence_number), Some(13));
        assert!(h.get(13 + 4 * 1000).is_none());
    }

    /// Three layers sending from `t0` at 100, 400 and 1,500 kbit/s (10 ms packets) until `until`,
    /// except those in `stopped`, which stop at `stop`.
    fn simulcast(t0: Instant, until: Duration, stopped: &[usize], stop: Duration) -> Vec<Layer> {
        let mut layers: Vec<Layer> = ["q", "h", "f"]
            .iter()
            .enumerate()
            .map(|(i, rid)| Layer::new(rid, 100 + i as u32, 10 + i as u64, 16))
            .collect();
        let sizes = [125usize, 500, 1875];
        let mut t = Duration::ZERO;
        let mut seq = 0u16;
        while t <= until {
            for (i, l) in layers.iter_mut().enumerate() {
                if stopped.contains(&i) && t > stop {
                    continue;
                }
                l.receive(t0 + t, &packet(seq, sizes[i] - 12));
            }
            seq = seq.wrapping_add(1);
            t += Duration::from_millis(10);
        }
        layers
    }

    #[test]
    fn rids_name_the_qualities_and_other_rids_rank_by_rate() {
        let t0 = Instant::now();
        let layers = simulcast(t0, Duration::from_secs(3), &[], Duration::ZERO);
        use VideoQuality::*;
        assert_eq!(qualities(&layers, false), vec![Low, Medium, High]);
        for (l, want) in layers.iter().zip([100_000u64, 400_000, 1_500_000]) {
            assert!(
                l.bps.abs_diff(want) < want / 50,
                "{} measured for {want}",
                l.bps
            );
        }
        // Unnamed rids, listed high to low: ranked by what they sent.
        let mut renamed = simulcast(t0, Duration::from_secs(3), &[], Duration::ZERO);
        renamed.reverse();
        for (l, rid) in renamed.iter_mut().zip(["a", "b", "c"]) {
            l.rid = rid.to_owned();
        }
        assert_eq!(qualities(&renamed, false), vec![High, Medium, Low]);
        assert_eq!(
            qualities(&renamed[..1], false),
            vec![High],
            "one stream is all there is"
        );
        // The first of three layers an offer named, before the others are seen: its name holds.
        assert_eq!(qualities(&layers[..1], false), vec![High]);
        assert_eq!(qualities(&layers[..1], true), vec![Low]);
        assert_eq!(qualities(&renamed[..1], true), vec![High], "unnamed");
    }

    #[test]
    fn the_best_layer_not_above_the_wish_and_only_warm_ones_for_a_switch() {
        use VideoQuality::*;
        let t0 = Instant::now();
        let layers = simulcast(t0, Duration::from_secs(3), &[], Duration::ZERO);
        let q = qualities(&layers, false);
        let now = t0 + Duration::from_secs(3);
        let pick = |want, current| select(&layers, &q, want, current, now);
        assert_eq!(pick(High, None), Some(12));
        assert_eq!(pick(Medium, Some(12)), Some(11));
        assert_eq!(pick(Low, Some(12)), Some(10));
        assert_eq!(pick(Off, Some(12)), None);
        // Only 1 s in, nothing is warm: a newcomer takes what it wants; a subscriber already on
        // a layer stays there.
        let young = simulcast(t0, Duration::from_secs(1), &[], Duration::ZERO);
        let at = t0 + Duration::from_secs(1);
        assert_eq!(select(&young, &q, High, None, at), Some(12));
        assert_eq!(select(&young, &q, High, Some(10), at), Some(10));
        assert_eq!(
            select(&young, &q, Low, Some(12), at),
            Some(10),
            "down at once"
        );
    }

    #[test]
    fn a_stopped_layer_is_left_for_the_nearest_one_still_sending() {
        use VideoQuality::*;
        let t0 = Instant::now();
        // "f" stops at 3 s (its publisher paused it); at 5 s it has been idle for 2 s.
        let layers = simulcast(t0, Duration::from_secs(5), &[2], Duration::from_secs(3));
        let q = qualities(&layers, false);
        let now = t0 + Duration::from_secs(5);
        assert_eq!(select(&layers, &q, High, Some(12), now), Some(11));
        // Only "q" sends: a subscriber wanting medium gets low rather than nothing.
        let only_low = simulcast(t0, Duration::from_secs(5), &[1, 2], Duration::from_secs(3));
        assert_eq!(select(&only_low, &q, Medium, Some(11), now), Some(10));
        // Nothing sends at all: the subscriber stays where it is.
        let none = simulcast(
            t0,
            Duration::from_secs(5),
            &[0, 1, 2],
            Duration::from_secs(3),
        );
        assert_eq!(select(&none, &q, High, Some(12), now), Some(12));
    }
}
