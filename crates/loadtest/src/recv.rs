//! What a receiving member got: every packet accounted by its marker (distinct, duplicate,
//! delay), per-minute figures for long runs, and for tests an optional log of each arrival.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::marker::{self, Kind, now_ns};

/// Start of the measurement window on [`now_ns`]'s clock; 0 outside it. Delays are recorded and
/// minutes counted only inside it.
static WINDOW_START_NS: AtomicU64 = AtomicU64::new(0);

/// Open the measurement window (after warm-up).
pub fn open_window() {
    WINDOW_START_NS.store(now_ns().max(1), Ordering::SeqCst);
}

/// Close it.
pub fn close_window() {
    WINDOW_START_NS.store(0, Ordering::SeqCst);
}

const MINUTE_NS: u64 = 60_000_000_000;

/// One receiver's account of one publisher's stream.
#[derive(Default)]
struct Seen {
    /// Bit `seq` set once packet `seq` arrived.
    bits: Vec<u64>,
    duplicates: u64,
    /// Per minute of the window: duplicates, and the longest time between two new packets.
    minute_duplicates: Vec<u64>,
    minute_max_gap_ns: Vec<u64>,
    last_arrival_ns: u64,
    /// In the window: the time spent in gaps over [`FREEZE`] between new packets, and the
    /// simulcast layer changes.
    freeze_ns: u64,
    switches: u64,
    last_layer: Option<u8>,
}

/// A gap between packets of one stream longer than this is a freeze (a viewer sees the picture
/// stop).
pub const FREEZE: Duration = Duration::from_millis(500);

impl Seen {
    fn mark(&mut self, seq: u32) -> bool {
        let (word, bit) = (seq as usize / 64, seq % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        fresh
    }

    fn count(&self, from: u32, to: u32) -> u64 {
        // Nothing is marked past the bitmap: an open-ended range costs no more than the stream.
        let to = to.min(u32::try_from(self.bits.len() * 64).unwrap_or(u32::MAX));
        (from..to)
            .filter(|&s| {
                self.bits
                    .get(s as usize / 64)
                    .is_some_and(|w| w & (1 << (s % 64)) != 0)
            })
            .count() as u64
    }
}

fn bump(v: &mut Vec<u64>, i: usize, f: impl FnOnce(&mut u64)) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    f(&mut v[i]);
}

/// Every packet of one track, in arrival order (tests).
#[derive(Default, Debug, Clone)]
pub struct Arrivals {
    /// RTP sequence numbers as received.
    pub seqs: Vec<u16>,
    /// The sender's packet counters.
    pub counters: Vec<u32>,
    /// The publisher each marker named.
    pub marked_by: Vec<String>,
    /// Whether each packet started a keyframe (as the sender marked it).
    pub keyframes: Vec<bool>,
    /// The simulcast layer each packet came from (as the sender marked it).
    pub layers: Vec<u8>,
    /// Each packet's VP8 PictureID, when its payload descriptor has one.
    pub pictures: Vec<Option<u16>>,
    /// Sequence numbers of padding-only packets (a server probing the path), kept apart.
    pub padding: Vec<u16>,
    /// The first payload, for codec-specific checks.
    pub first_payload: Option<Vec<u8>>,
}

/// One receiving member's accounting.
pub struct Recv {
    started: Instant,
    log: bool,
    inner: Mutex<Inner>,
}

struct Inner {
    first_packet: Option<Duration>,
    /// By the publisher the marker names, and kind.
    streams: HashMap<(String, Kind), Seen>,
    /// One-way delay in microseconds, for packets received in the window, and per minute of it.
    delay_us: Histogram<u64>,
    minute_delay_us: Vec<Histogram<u64>>,
    /// By the track's msid stream id, and kind (only when logging).
    arrivals: HashMap<(String, Kind), Arrivals>,
    /// Payload bytes received in the window.
    window_bytes: u64,
}

/// Per-minute figures of one stream at one receiver.
#[derive(Debug, Clone, Default)]
pub struct Minutes {
    pub duplicates: Vec<u64>,
    pub max_gap_ns: Vec<u64>,
    pub last_arrival_ns: u64,
}

impl Recv {
    /// Accounting only.
    pub fn new(started: Instant) -> Arc<Recv> {
        Recv::build(started, false)
    }

    /// Accounting and a log of every arrival.
    pub fn logging(started: Instant) -> Arc<Recv> {
        Recv::build(started, true)
    }

    fn build(started: Instant, log: bool) -> Arc<Recv> {
        Arc::new(Recv {
            started,
            log,
            inner: Mutex::new(Inner {
                first_packet: None,
                streams: HashMap::new(),
                delay_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
                minute_delay_us: Vec::new(),
                arrivals: HashMap::new(),
                window_bytes: 0,
            }),
        })
    }

    /// One RTP packet of the track with msid stream id `stream`.
    pub fn packet(&self, stream: &str, kind: Kind, rtp_seq: u16, payload: &[u8]) {
        let arrived = now_ns();
        let marker = marker::read(payload);
        let mut inner = self.inner.lock().expect("recv lock");
        if self.log && payload.is_empty() {
            let a = inner.arrivals.entry((stream.to_owned(), kind)).or_default();
            a.padding.push(rtp_seq);
            return;
        }
        if self.log {
            let a = inner.arrivals.entry((stream.to_owned(), kind)).or_default();
            if a.first_payload.is_none() {
                a.first_payload = Some(payload.to_vec());
            }
            a.seqs.push(rtp_seq);
            a.pictures.push(vp8_picture_id(payload));
            if let Some(m) = &marker {
                a.layers.push(m.layer);
                a.counters.push(m.seq);
                a.marked_by.push(m.publisher.clone());
                a.keyframes.push(m.keyframe);
            }
        }
        let Some(m) = marker else {
            return;
        };
        if inner.first_packet.is_none() {
            inner.first_packet = Some(self.started.elapsed());
        }
        let window = WINDOW_START_NS.load(Ordering::Relaxed);
        let minute =
            (window != 0 && arrived >= window).then(|| ((arrived - window) / MINUTE_NS) as usize);
        if minute.is_some() {
            inner.window_bytes += payload.len() as u64;
        }
        let seen = inner.streams.entry((m.publisher, m.kind)).or_default();
        if m.kind == Kind::Video {
            if minute.is_some() && seen.last_layer.is_some_and(|l| l != m.layer) {
                seen.switches += 1;
            }
            seen.last_layer = Some(m.layer);
        }
        if !seen.mark(m.seq) {
            seen.duplicates += 1;
            if let Some(i) = minute {
                bump(&mut seen.minute_duplicates, i, |d| *d += 1);
            }
            return;
        }
        let gap = arrived.saturating_sub(seen.last_arrival_ns);
        let had_one = seen.last_arrival_ns != 0;
        seen.last_arrival_ns = arrived;
        if let Some(i) = minute {
            if had_one {
                bump(&mut seen.minute_max_gap_ns, i, |g| *g = (*g).max(gap));
            }
            // The part of a freeze inside the window.
            if had_one && gap > FREEZE.as_nanos() as u64 {
                seen.freeze_ns += arrived - (arrived - gap).max(window);
            }
            let us = arrived.saturating_sub(m.sent_ns) / 1000;
            let _ = inner.delay_us.record(us.max(1));
            while inner.minute_delay_us.len() <= i {
                // Two significant digits: a minute's percentiles need no more.
                let h = Histogram::new_with_bounds(1, 600_000_000, 2).expect("histogram bounds");
                inner.minute_delay_us.push(h);
            }
            let _ = inner.minute_delay_us[i].record(us.max(1));
        }
    }

    /// Time `(publisher, kind)` spent frozen between `start_ns` and `end_ns` (the window), in
    /// nanoseconds: gaps over [`FREEZE`], a silence running at the end, or the whole window for
    /// a stream that never came; and its simulcast layer changes.
    pub fn freeze(&self, publisher: &str, kind: Kind, start_ns: u64, end_ns: u64) -> (u64, u64) {
        let inner = self.inner.lock().expect("recv lock");
        let Some(s) = inner.streams.get(&(publisher.to_owned(), kind)) else {
            return (end_ns.saturating_sub(start_ns), 0);
        };
        let since = s.last_arrival_ns.max(start_ns);
        let tail = end_ns.saturating_sub(since);
        let tail = if tail > FREEZE.as_nanos() as u64 {
            tail
        } else {
            0
        };
        (s.freeze_ns + tail, s.switches)
    }

    /// Payload bytes received in the measurement window.
    pub fn window_bytes(&self) -> u64 {
        self.inner.lock().expect("recv lock").window_bytes
    }

    pub fn first_packet(&self) -> Option<Duration> {
        self.inner.lock().expect("recv lock").first_packet
    }

    /// Distinct packets of `(publisher, kind)` with a counter in `from..to`, and the duplicates
    /// seen on that stream.
    pub fn received(&self, publisher: &str, kind: Kind, from: u32, to: u32) -> (u64, u64) {
        let inner = self.inner.lock().expect("recv lock");
        inner
            .streams
            .get(&(publisher.to_owned(), kind))
            .map_or((0, 0), |s| (s.count(from, to), s.duplicates))
    }

    /// Per-minute figures of `(publisher, kind)`.
    pub fn minutes(&self, publisher: &str, kind: Kind) -> Minutes {
        let inner = self.inner.lock().expect("recv lock");
        inner
            .streams
            .get(&(publisher.to_owned(), kind))
            .map(|s| Minutes {
                duplicates: s.minute_duplicates.clone(),
                max_gap_ns: s.minute_max_gap_ns.clone(),
                last_arrival_ns: s.last_arrival_ns,
            })
            .unwrap_or_default()
    }

    pub fn add_delays(&self, into: &mut Histogram<u64>) {
        let inner = self.inner.lock().expect("recv lock");
        let _ = into.add(&inner.delay_us);
    }

    /// Add minute `m`'s delays to `into`.
    pub fn add_minute_delays(&self, m: usize, into: &mut Histogram<u64>) {
        let inner = self.inner.lock().expect("recv lock");
        if let Some(h) = inner.minute_delay_us.get(m) {
            let _ = into.add(h);
        }
    }

    /// The arrival log by msid stream id and kind (empty unless made with [`Recv::logging`]).
    pub fn arrivals(&self) -> HashMap<(String, Kind), Arrivals> {
        self.inner.lock().expect("recv lock").arrivals.clone()
    }
}

/// The PictureID of a VP8 payload descriptor (RFC 7741), if it carries one.
pub fn vp8_picture_id(payload: &[u8]) -> Option<u16> {
    if payload.first()? & 0x80 == 0 || payload.get(1)? & 0x80 == 0 {
        return None;
    }
    let b = *payload.get(2)?;
    if b & 0x80 != 0 {
        Some(u16::from(b & 0x7f) << 8 | u16::from(*payload.get(3)?))
    } else {
        Some(u16::from(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(publisher: &str, seq: u32) -> Vec<u8> {
        let mut p = Vec::new();
        marker::write(&mut p, publisher, Kind::Audio, seq, false);
        p
    }

    #[test]
    fn seen_counts_distinct_in_range_and_duplicates() {
        let mut s = Seen::default();
        for seq in [0, 1, 2, 5, 64, 65, 200] {
            assert!(s.mark(seq));
        }
        assert!(!s.mark(5));
        assert_eq!(s.count(0, 66), 6);
        assert_eq!(s.count(3, 201), 4);
    }

    #[test]
    fn packets_are_keyed_by_the_marker_and_logged_by_stream_id() {
        let r = Recv::logging(Instant::now());
        r.packet("janus", Kind::Audio, 10, &payload("p1", 0));
        r.packet("janus", Kind::Audio, 11, &payload("p1", 1));
        r.packet("janus", Kind::Audio, 11, &payload("p1", 1));
        r.packet("janus", Kind::Audio, 12, b"no marker");
        assert_eq!(r.received("p1", Kind::Audio, 0, 10), (2, 1));
        let log = r.arrivals();
        let a = &log[&("janus".to_owned(), Kind::Audio)];
        assert_eq!(a.seqs, vec![10, 11, 11, 12]);
        assert_eq!(a.counters, vec![0, 1, 1]);
        assert!(a.marked_by.iter().all(|m| m == "p1"));
        assert!(r.first_packet().is_some());
    }
}
