//! Simulated media on real WebRTC peer connections (the async `webrtc` crate): publishers that
//! send VP8-shaped video and Opus-shaped audio RTP at a chosen rate, answer keyframe requests, and
//! stamp every packet; receivers that decrypt everything and account for each packet.
//!
//! Payload: `[VP8 descriptor, 2 bytes, video only][MARK][publisher u16][kind u8][seq u32]
//! [sent ns u64][padding]`. The send time is on this process's monotonic clock, so one-way delay
//! over loopback is exact; `seq` counts the stream's packets and gives loss and duplicates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use miclink_sfu::{RtcpToApplication, is_keyframe_request};
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::Notify;
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, register_default_interceptors,
};

const MARK: &[u8; 4] = b"MLDT";
/// Largest RTP payload a publisher sends; frames above it are split.
const MAX_PAYLOAD: usize = 1100;

/// Nanoseconds on this process's monotonic clock.
pub(crate) fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Whether delays are being recorded (the measurement window, after warm-up).
pub(crate) static MEASURING: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Audio = 0,
    Video = 1,
}

/// One stream a publisher sends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamSpec {
    pub(crate) kind: Kind,
    pub(crate) bitrate_bps: u32,
    /// Frames per second for video; audio sends a packet every 20 ms.
    pub(crate) fps: u32,
}

/// What a publisher has sent, per stream: the next sequence number.
pub(crate) struct Sent {
    pub(crate) publisher: u16,
    pub(crate) kind: Kind,
    pub(crate) next_seq: AtomicU32,
}

/// One receiving member's accounting.
pub(crate) struct Recv {
    started: Instant,
    inner: Mutex<RecvInner>,
}

struct RecvInner {
    first_packet: Option<Duration>,
    streams: HashMap<(u16, Kind), Seen>,
    /// One-way delay in microseconds, for packets received while measuring.
    delay_us: Histogram<u64>,
}

#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    duplicates: u64,
}

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
        (from..to)
            .filter(|&s| {
                self.bits
                    .get(s as usize / 64)
                    .is_some_and(|w| w & (1 << (s % 64)) != 0)
            })
            .count() as u64
    }
}

impl Recv {
    pub(crate) fn new(started: Instant) -> Arc<Recv> {
        Arc::new(Recv {
            started,
            inner: Mutex::new(RecvInner {
                first_packet: None,
                streams: HashMap::new(),
                delay_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            }),
        })
    }

    fn packet(&self, payload: &[u8]) {
        let arrived = now_ns();
        let Some((publisher, kind, seq, sent)) = read_marker(payload) else {
            return;
        };
        let mut inner = self.inner.lock().expect("recv lock");
        if inner.first_packet.is_none() {
            inner.first_packet = Some(self.started.elapsed());
        }
        let seen = inner.streams.entry((publisher, kind)).or_default();
        if !seen.mark(seq) {
            seen.duplicates += 1;
            return;
        }
        if MEASURING.load(Ordering::Relaxed) {
            let us = arrived.saturating_sub(sent) / 1000;
            let _ = inner.delay_us.record(us.max(1));
        }
    }

    pub(crate) fn first_packet(&self) -> Option<Duration> {
        self.inner.lock().expect("recv lock").first_packet
    }

    /// Distinct packets of `(publisher, kind)` with a sequence number in `from..to`, and the
    /// duplicates seen on that stream.
    pub(crate) fn received(&self, publisher: u16, kind: Kind, from: u32, to: u32) -> (u64, u64) {
        let inner = self.inner.lock().expect("recv lock");
        inner
            .streams
            .get(&(publisher, kind))
            .map_or((0, 0), |s| (s.count(from, to), s.duplicates))
    }

    pub(crate) fn add_delays(&self, into: &mut Histogram<u64>) {
        let inner = self.inner.lock().expect("recv lock");
        let _ = into.add(&inner.delay_us);
    }
}

fn write_marker(p: &mut Vec<u8>, publisher: u16, kind: Kind, seq: u32) {
    p.extend_from_slice(MARK);
    p.extend_from_slice(&publisher.to_be_bytes());
    p.push(kind as u8);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&now_ns().to_be_bytes());
}

fn read_marker(payload: &[u8]) -> Option<(u16, Kind, u32, u64)> {
    // Video carries the 2-byte VP8 descriptor first; audio starts with the mark.
    let p = if payload.get(..4)? == MARK {
        payload
    } else {
        payload.get(2..)?
    };
    if p.get(..4)? != MARK {
        return None;
    }
    let publisher = u16::from_be_bytes(p.get(4..6)?.try_into().ok()?);
    let kind = match p.get(6)? {
        0 => Kind::Audio,
        1 => Kind::Video,
        _ => return None,
    };
    let seq = u32::from_be_bytes(p.get(7..11)?.try_into().ok()?);
    let sent = u64::from_be_bytes(p.get(11..19)?.try_into().ok()?);
    Some((publisher, kind, seq, sent))
}

struct Handler {
    gathered: Arc<Notify>,
    recv: Option<Arc<Recv>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(recv) = self.recv.clone() else {
            return;
        };
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    recv.packet(&packet.payload);
                }
            }
        });
    }
}

/// A peer connection bound to loopback, with what it needs to hand out complete descriptions.
pub(crate) struct Peer {
    pub(crate) pc: Arc<dyn PeerConnection>,
    gathered: Arc<Notify>,
}

impl Peer {
    /// A receiving connection accounting into `recv`, or a sending one when `recv` is None.
    pub(crate) async fn new(recv: Option<Arc<Recv>>) -> anyhow::Result<Peer> {
        let sending = recv.is_none();
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let mut registry = register_default_interceptors(Registry::new(), &mut media)?;
        if sending {
            // PLI and FIR from the server must reach the publisher's track (rtc's chain stops
            // inbound RTCP before the application unless an interceptor vouches for it); the
            // interval-PLI slot is free on a sending-only connection.
            registry = registry.with(
                Slot::IntervalPli,
                RtcpToApplication::new(is_keyframe_request),
            );
        }
        let gathered = Arc::new(Notify::new());
        // Answer as DTLS client, as browsers do: the answerer starts the handshake the moment its
        // ICE is connected, instead of waiting for a ClientHello that the offerer may send before
        // this side is ready (and then repeats only after DTLS's 1 s retransmission timer).
        let settings = SettingEngineBuilder::new()
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                gathered: gathered.clone(),
                recv,
            }))
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await?;
        Ok(Peer {
            pc: Arc::new(pc),
            gathered,
        })
    }

    /// The local description once gathering is done (loopback gathers at once; no trickle).
    pub(crate) async fn local_sdp(&self) -> anyhow::Result<String> {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.gathered.notified()).await;
        Ok(self
            .pc
            .local_description()
            .await
            .ok_or_else(|| anyhow::anyhow!("no local description"))?
            .sdp)
    }

    /// Answer an offer and return the answer's SDP.
    pub(crate) async fn answer(&self, offer: String) -> anyhow::Result<String> {
        use webrtc::peer_connection::RTCSessionDescription;
        self.pc
            .set_remote_description(RTCSessionDescription::offer(offer)?)
            .await?;
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer).await?;
        self.local_sdp().await
    }

    pub(crate) async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

/// A publisher's tracks and their sending tasks.
pub(crate) struct Publisher {
    pub(crate) peer: Peer,
    pub(crate) sent: Vec<Arc<Sent>>,
    tracks: Vec<(Arc<TrackLocalStaticRTP>, StreamSpec, Arc<AtomicU8>)>,
}

impl Publisher {
    /// Add one track per stream to a new sending connection and create the offer.
    pub(crate) async fn offer(
        publisher: u16,
        stream_id: &str,
        streams: &[StreamSpec],
    ) -> anyhow::Result<(Publisher, String)> {
        let peer = Peer::new(None).await?;
        let mut tracks = Vec::new();
        let mut sent = Vec::new();
        for spec in streams {
            let (kind, mime, clock_rate, channels) = match spec.kind {
                Kind::Audio => (RtpCodecKind::Audio, "audio/opus", 48_000, 2),
                Kind::Video => (RtpCodecKind::Video, "video/VP8", 90_000, 0),
            };
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                stream_id.to_owned(),
                format!("{stream_id}-{kind}"),
                format!("{stream_id} {kind}"),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(rand::random()),
                        ..Default::default()
                    },
                    codec: RTCRtpCodec {
                        mime_type: mime.to_owned(),
                        clock_rate,
                        channels,
                        sdp_fmtp_line: String::new(),
                        rtcp_feedback: vec![],
                    },
                    ..Default::default()
                }],
            )));
            peer.pc
                .add_track(track.clone() as Arc<dyn TrackLocal>)
                .await?;
            tracks.push((track, *spec, Arc::new(AtomicU8::new(0))));
            sent.push(Arc::new(Sent {
                publisher,
                kind: spec.kind,
                next_seq: AtomicU32::new(0),
            }));
        }
        let offer = peer.pc.create_offer(None).await?;
        peer.pc.set_local_description(offer).await?;
        let sdp = peer.local_sdp().await?;
        Ok((Publisher { peer, sent, tracks }, sdp))
    }

    /// Apply the answer and start sending until `stop`.
    pub(crate) async fn start(&self, answer: String, stop: Arc<Notify>) -> anyhow::Result<()> {
        use webrtc::peer_connection::RTCSessionDescription;
        for (_, spec, pt) in &self.tracks {
            let name = match spec.kind {
                Kind::Audio => "opus",
                Kind::Video => "vp8",
            };
            let negotiated = negotiated_pt(&answer, name)
                .ok_or_else(|| anyhow::anyhow!("{name} not in the answer"))?;
            pt.store(negotiated, Ordering::SeqCst);
        }
        self.peer
            .pc
            .set_remote_description(RTCSessionDescription::answer(answer)?)
            .await?;
        for ((track, spec, pt), sent) in self.tracks.iter().zip(&self.sent) {
            let keyframe_wanted = Arc::new(AtomicBool::new(true));
            if spec.kind == Kind::Video {
                let (track, wanted) = (track.clone(), keyframe_wanted.clone());
                tokio::spawn(async move {
                    while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = track.poll().await {
                        if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                            wanted.store(true, Ordering::Relaxed);
                        }
                    }
                });
            }
            tokio::spawn(send(
                track.clone(),
                *spec,
                pt.load(Ordering::SeqCst),
                sent.clone(),
                keyframe_wanted,
                stop.clone(),
            ));
        }
        Ok(())
    }
}

/// The payload type an answer gives a codec (by its rtpmap name, case-insensitive).
fn negotiated_pt(sdp: &str, name: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let (pt, codec) = l.strip_prefix("a=rtpmap:")?.split_once(' ')?;
        codec
            .to_ascii_lowercase()
            .starts_with(&format!("{name}/"))
            .then(|| pt.parse().ok())?
    })
}

async fn send(
    track: Arc<TrackLocalStaticRTP>,
    spec: StreamSpec,
    pt: u8,
    sent: Arc<Sent>,
    keyframe_wanted: Arc<AtomicBool>,
    stop: Arc<Notify>,
) {
    let (interval, ts_step) = match spec.kind {
        Kind::Video => (
            Duration::from_secs(1) / spec.fps.max(1),
            90_000 / spec.fps.max(1),
        ),
        Kind::Audio => (Duration::from_millis(20), 960),
    };
    let frames_per_s = match spec.kind {
        Kind::Video => spec.fps.max(1),
        Kind::Audio => 50,
    };
    let frame_bytes = (spec.bitrate_bps / 8 / frames_per_s).max(24) as usize;
    let packets_per_frame = frame_bytes.div_ceil(MAX_PAYLOAD);
    let packet_bytes = frame_bytes / packets_per_frame;
    // A keyframe every two seconds, as encoders configured for live streaming do, and at once
    // when the server asks for one.
    let keyframe_every = frames_per_s * 2;
    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    let mut tick = tokio::time::interval(interval);
    // A late tick is skipped, not burst: bursts would show up as the server's delay.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut rtp_seq: u16 = rand::random();
    for frame in 0u32.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.notified() => return,
        }
        let keyframe = spec.kind == Kind::Video
            && (frame % keyframe_every == 0 || keyframe_wanted.swap(false, Ordering::Relaxed));
        for i in 0..packets_per_frame {
            let seq = sent.next_seq.fetch_add(1, Ordering::Relaxed);
            let mut payload = Vec::with_capacity(packet_bytes + 2);
            if spec.kind == Kind::Video {
                // VP8 payload descriptor: S bit on a frame's first packet, then the payload
                // header's P bit (0 on keyframes).
                if i == 0 {
                    payload.extend_from_slice(&[0x10, if keyframe { 0x00 } else { 0x01 }]);
                } else {
                    payload.extend_from_slice(&[0x00, 0x00]);
                }
            }
            write_marker(&mut payload, sent.publisher, spec.kind, seq);
            payload.resize(payload.len().max(packet_bytes), 0);
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    marker: spec.kind == Kind::Video && i + 1 == packets_per_frame,
                    payload_type: pt,
                    sequence_number: rtp_seq,
                    timestamp: frame.wrapping_mul(ts_step),
                    ssrc,
                    ..Default::default()
                },
                payload: payload.into(),
            };
            rtp_seq = rtp_seq.wrapping_add(1);
            if track.write_rtp(packet).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_for_both_kinds() {
        for kind in [Kind::Audio, Kind::Video] {
            let mut p = Vec::new();
            if kind == Kind::Video {
                p.extend_from_slice(&[0x10, 0x00]);
            }
            write_marker(&mut p, 7, kind, 123_456);
            p.resize(200, 0);
            let (publisher, k, seq, _) = read_marker(&p).expect("marker");
            assert_eq!((publisher, k, seq), (7, kind, 123_456));
        }
        assert!(read_marker(b"not a marker at all").is_none());
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
}
