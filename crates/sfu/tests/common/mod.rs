//! What the core's tests share: a simulated publisher sending numbered frames, and checks
//! of what a client received.
#![allow(dead_code)]

use std::time::Duration;

use miclink_protocol::Ident;
use miclink_sfu::sim::{ClientId, Codec, Net, Received};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

pub(crate) const FRAME: Duration = Duration::from_millis(20);
pub(crate) const CONNECT: Duration = Duration::from_secs(5);

pub(crate) fn id(s: &str) -> Ident {
    Ident::new(s).expect("id")
}

/// A simulated publisher's two streams: audio and video, one packet each per 20 ms frame, a
/// keyframe every 50 frames and whenever the server asked for one. Payloads carry a counter.
pub(crate) struct Pub {
    pub(crate) c: ClientId,
    pub(crate) video: Codec,
    pub(crate) seq: [u16; 2],
    pub(crate) ts: [u32; 2],
    pub(crate) sent: [u32; 2],
    pub(crate) plis_seen: usize,
    /// Send audio as well as video.
    pub(crate) audio: bool,
}

impl Pub {
    pub(crate) fn new(c: ClientId, video: Codec) -> Pub {
        Pub {
            c,
            video,
            seq: [1000, 20_000],
            ts: [5000, 900_000],
            sent: [0, 0],
            plis_seen: 0,
            audio: true,
        }
    }

    pub(crate) fn starting_at(mut self, audio_seq: u16, video_seq: u16) -> Pub {
        self.seq = [audio_seq, video_seq];
        self
    }

    pub(crate) fn frame(&mut self, net: &mut Net) {
        if self.audio {
            self.send(net, Codec::Opus, false);
        }
        let asked = net.clients[self.c].keyframe_requests;
        let key = self.sent[1].is_multiple_of(50) || asked > self.plis_seen;
        self.plis_seen = asked;
        self.send(net, self.video, key);
    }

    pub(crate) fn send(&mut self, net: &mut Net, codec: Codec, key: bool) {
        let i = usize::from(codec.kind() == RtpCodecKind::Video);
        let mut body = self.sent[i].to_be_bytes().to_vec();
        body.resize(if i == 1 { 1000 } else { 80 }, 0xab);
        net.send(
            self.c,
            codec,
            self.seq[i],
            self.ts[i],
            codec.payload(key, &body),
        );
        self.seq[i] = self.seq[i].wrapping_add(1);
        self.ts[i] = self.ts[i].wrapping_add(if i == 1 { 1800 } else { 960 });
        self.sent[i] += 1;
    }
}

pub(crate) fn run(net: &mut Net, pubs: &mut [&mut Pub], frames: usize) {
    for _ in 0..frames {
        for p in pubs.iter_mut() {
            p.frame(net);
        }
        net.step(FRAME);
    }
}

/// The counter a test payload carries after its codec header.
pub(crate) fn counter(r: &Received) -> u32 {
    let skip = if r.kind == RtpCodecKind::Video { 2 } else { 0 };
    u32::from_be_bytes(r.payload[skip..skip + 4].try_into().expect("counter"))
}

pub(crate) fn stream<'a>(
    net: &'a Net,
    c: ClientId,
    publisher: &str,
    kind: RtpCodecKind,
) -> Vec<&'a Received> {
    net.clients[c]
        .received
        .iter()
        .filter(|r| r.publisher == publisher && r.kind == kind)
        .collect()
}

/// Each packet's sequence number follows the previous one's, and its counter too.
pub(crate) fn assert_contiguous(packets: &[&Received], what: &str) {
    assert!(!packets.is_empty(), "{what}: nothing received");
    for w in packets.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "{what}: sequence gap after counter {}",
            counter(w[0])
        );
    }
}
