//! Simulated media on real WebRTC peer connections (the async `webrtc` crate): publishers that
//! send VP8- or H.264-shaped video and Opus-shaped audio RTP at a chosen rate (or as fast as a
//! [`Burst`] says), answer keyframe requests and stamp every packet ([`crate::marker`]);
//! receivers that decrypt everything and hand each packet to a [`Recv`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use miclink_sfu::sim::Codec;
use miclink_sfu::{RtcpToApplication, is_keyframe_request};
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::{RTCIceServer, RTCIceTransportPolicy};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability,
    RtpCodecKind,
};
use tokio::sync::Notify;
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, register_default_interceptors,
};

use crate::marker::{self, Kind};
use crate::recv::Recv;

/// Largest RTP payload a publisher sends; frames above it are split.
const MAX_PAYLOAD: usize = 1100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    /// Constrained baseline, packetization mode 1.
    H264,
}

/// A stream sent as fast as a test needs: one frame every 33 ms until [`Burst::go`], then
/// `per_ms` packets every millisecond until `total` packets were sent in all.
pub struct Burst {
    pub total: u32,
    pub per_ms: u32,
    go: AtomicBool,
}

impl Burst {
    pub fn new(total: u32, per_ms: u32) -> Arc<Burst> {
        Arc::new(Burst {
            total,
            per_ms,
            go: AtomicBool::new(false),
        })
    }

    /// Switch to the fast pace.
    pub fn go(&self) {
        self.go.store(true, Ordering::SeqCst);
    }
}

/// One stream a publisher sends.
#[derive(Clone)]
pub struct StreamSpec {
    pub kind: Kind,
    /// The video codec (audio is always Opus).
    pub codec: VideoCodec,
    pub bitrate_bps: u32,
    /// Frames per second for video; audio sends a packet every 20 ms.
    pub fps: u32,
    /// A keyframe every this many frames, and whenever the server asks for one.
    pub keyframe_every: u32,
    pub burst: Option<Arc<Burst>>,
    /// Audio: the level each packet carries (RFC 6464, in -dBov: 0 is full scale, 127 silence),
    /// read per packet so a scenario can make a publisher start and stop talking.
    pub level: Arc<AtomicU8>,
}

/// The level of a publisher that is not talking: a quiet room.
pub const QUIET_DBOV: u8 = 90;

/// The level of a publisher talking into a processed microphone.
pub const TALKING_DBOV: u8 = 30;

/// The audio level extension (RFC 6464).
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

impl StreamSpec {
    /// Opus-shaped audio: a packet every 20 ms.
    pub fn audio(bitrate_bps: u32) -> StreamSpec {
        StreamSpec {
            kind: Kind::Audio,
            codec: VideoCodec::Vp8,
            bitrate_bps,
            fps: 50,
            keyframe_every: 1,
            burst: None,
            level: Arc::new(AtomicU8::new(QUIET_DBOV)),
        }
    }

    /// VP8-shaped video with a keyframe every two seconds, as live encoders are configured.
    pub fn video(bitrate_bps: u32, fps: u32) -> StreamSpec {
        StreamSpec {
            kind: Kind::Video,
            codec: VideoCodec::Vp8,
            bitrate_bps,
            fps,
            keyframe_every: fps * 2,
            burst: None,
            level: Arc::new(AtomicU8::new(QUIET_DBOV)),
        }
    }
}

/// What a publisher has sent on one stream: the next packet counter.
pub struct Sent {
    pub publisher: String,
    pub kind: Kind,
    pub next_seq: AtomicU32,
}

struct Handler {
    gathered: Arc<Notify>,
    recv: Option<Arc<Recv>>,
    connected: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.connected
            .store(state == RTCPeerConnectionState::Connected, Ordering::SeqCst);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(recv) = self.recv.clone() else {
            return;
        };
        tokio::spawn(async move {
            let stream = track.stream_id().await;
            let kind = match track.kind().await {
                RtpCodecKind::Video => Kind::Video,
                _ => Kind::Audio,
            };
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    recv.packet(
                        &stream,
                        kind,
                        packet.header.sequence_number,
                        &packet.payload,
                    );
                }
            }
        });
    }
}

/// How a connection reaches the server.
#[derive(Clone, Debug, Default)]
pub enum Route {
    /// Host candidates on loopback.
    #[default]
    Direct,
    /// Only through these TURN servers (relay candidates only, as a browser's
    /// `iceTransportPolicy: "relay"`).
    Relay(Vec<miclink_protocol::IceServer>),
    /// ICE-TCP only, as a client whose network blocks UDP: no UDP socket at all; the
    /// connection is made to the server's passive TCP candidates.
    Tcp,
}

/// A peer connection bound to loopback, with what it needs to hand out complete descriptions.
pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    gathered: Arc<Notify>,
    connected: Arc<AtomicBool>,
    tcp: bool,
}

impl Peer {
    /// A receiving connection accounting into `recv`, or a sending one when `recv` is None.
    pub async fn new(recv: Option<Arc<Recv>>) -> anyhow::Result<Peer> {
        Peer::with_route(recv, &Route::Direct).await
    }

    /// [`Peer::new`], reaching the server by `route`.
    pub async fn with_route(recv: Option<Arc<Recv>>, route: &Route) -> anyhow::Result<Peer> {
        let sending = recv.is_none();
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        // Publishers send every audio packet's level, as browsers do; subscribers accept it.
        media.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: AUDIO_LEVEL_URI.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )?;
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
        let connected = Arc::new(AtomicBool::new(false));
        // Answer as DTLS client, as browsers do: the answerer starts the handshake the moment its
        // ICE is connected, instead of waiting for a ClientHello that the offerer may send before
        // this side is ready (and then repeats only after DTLS's 1 s retransmission timer).
        let settings = SettingEngineBuilder::new()
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .build();
        let tcp = matches!(route, Route::Tcp);
        let builder = PeerConnectionBuilder::new()
            .with_configuration(configuration(route))
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                gathered: gathered.clone(),
                recv,
                connected: connected.clone(),
            }));
        let pc = if tcp {
            builder.with_tcp_addrs(vec!["127.0.0.1:0".to_owned()])
        } else {
            builder.with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        }
        .build()
        .await?;
        Ok(Peer {
            pc: Arc::new(pc),
            gathered,
            connected,
            tcp,
        })
    }

    /// Whether ICE and DTLS are up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// The local description once gathering is done (loopback gathers at once; no trickle).
    pub async fn local_sdp(&self) -> anyhow::Result<String> {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.gathered.notified()).await;
        Ok(self
            .pc
            .local_description()
            .await
            .ok_or_else(|| anyhow::anyhow!("no local description"))?
            .sdp)
    }

    /// Answer an offer and return the answer's SDP.
    pub async fn answer(&self, offer: String) -> anyhow::Result<String> {
        self.pc
            .set_remote_description(RTCSessionDescription::offer(offer.clone())?)
            .await?;
        self.dial_tcp(&offer).await?;
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer).await?;
        self.local_sdp().await
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }

    /// On a TCP-only connection, hand the remote description's passive TCP candidates to the
    /// stack: webrtc-rs connects to those it is given as candidates, not to the ones it reads
    /// in a description.
    async fn dial_tcp(&self, sdp: &str) -> anyhow::Result<()> {
        if !self.tcp {
            return Ok(());
        }
        for line in sdp.lines() {
            let Some(candidate) = line.trim().strip_prefix("a=") else {
                continue;
            };
            if candidate.starts_with("candidate:") && candidate.contains("tcptype passive") {
                self.pc
                    .add_ice_candidate(RTCIceCandidateInit {
                        candidate: candidate.to_owned(),
                        sdp_mid: Some("0".to_owned()),
                        sdp_mline_index: Some(0),
                        ..Default::default()
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

fn configuration(route: &Route) -> webrtc::peer_connection::RTCConfiguration {
    match route {
        Route::Direct | Route::Tcp => RTCConfigurationBuilder::new().build(),
        Route::Relay(servers) => RTCConfigurationBuilder::new()
            .with_ice_servers(
                servers
                    .iter()
                    .map(|s| RTCIceServer {
                        urls: s.urls.clone(),
                        username: s.username.clone().unwrap_or_default(),
                        credential: s.credential.clone().unwrap_or_default(),
                    })
                    .collect(),
            )
            .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
            .build(),
    }
}

fn codec_of(spec: &StreamSpec) -> (RtpCodecKind, RTCRtpCodec) {
    let codec = match (spec.kind, spec.codec) {
        (Kind::Audio, _) => Codec::Opus,
        (Kind::Video, VideoCodec::Vp8) => Codec::Vp8,
        (Kind::Video, VideoCodec::H264) => Codec::H264,
    };
    (codec.kind(), codec.rtp_codec())
}

/// A publisher's tracks and their sending tasks.
pub struct Publisher {
    pub peer: Peer,
    pub sent: Vec<Arc<Sent>>,
    tracks: Vec<(Arc<TrackLocalStaticRTP>, StreamSpec, Arc<AtomicU8>)>,
}

impl Publisher {
    /// Add one track per stream to a new sending connection and create the offer. `publisher`
    /// is the stream id and the name every payload marker carries.
    pub async fn offer(
        publisher: &str,
        streams: &[StreamSpec],
    ) -> anyhow::Result<(Publisher, String)> {
        Publisher::offer_via(publisher, streams, &Route::Direct).await
    }

    /// [`Publisher::offer`] on a connection that reaches the server by `route`.
    pub async fn offer_via(
        publisher: &str,
        streams: &[StreamSpec],
        route: &Route,
    ) -> anyhow::Result<(Publisher, String)> {
        let peer = Peer::with_route(None, route).await?;
        let mut tracks = Vec::new();
        let mut sent = Vec::new();
        for spec in streams {
            let (kind, codec) = codec_of(spec);
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                publisher.to_owned(),
                format!("{publisher}-{kind}"),
                format!("{publisher} {kind}"),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(rand::random()),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            )));
            peer.pc
                .add_track(track.clone() as Arc<dyn TrackLocal>)
                .await?;
            tracks.push((track, spec.clone(), Arc::new(AtomicU8::new(0))));
            sent.push(Arc::new(Sent {
                publisher: publisher.to_owned(),
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
    pub async fn start(&self, answer: String, stop: Arc<Notify>) -> anyhow::Result<()> {
        let level_id = extension_id(&answer, AUDIO_LEVEL_URI);
        for (_, spec, pt) in &self.tracks {
            let (_, codec) = codec_of(spec);
            let negotiated = negotiated_pt(&answer, &codec.mime_type, &codec.sdp_fmtp_line)
                .ok_or_else(|| anyhow::anyhow!("{} not in the answer", codec.mime_type))?;
            pt.store(negotiated, Ordering::SeqCst);
        }
        self.peer
            .pc
            .set_remote_description(RTCSessionDescription::answer(answer.clone())?)
            .await?;
        self.peer.dial_tcp(&answer).await?;
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
                spec.clone(),
                Negotiated {
                    pt: pt.load(Ordering::SeqCst),
                    level_id: level_id.filter(|_| spec.kind == Kind::Audio),
                },
                sent.clone(),
                keyframe_wanted,
                stop.clone(),
            ));
        }
        Ok(())
    }
}

/// The id an SDP gives the header extension `uri` (the first `a=extmap` naming it).
pub fn extension_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let (id, rest) = l.strip_prefix("a=extmap:")?.split_once(' ')?;
        let id = id.split('/').next()?;
        (rest.split_whitespace().next()? == uri).then(|| id.parse().ok())?
    })
}

/// What the answer settled for one stream.
struct Negotiated {
    pt: u8,
    /// The audio level extension's id, for audio streams when it was negotiated.
    level_id: Option<u8>,
}

/// The payload type an SDP gives the codec `mime` (e.g. "video/H264") whose fmtp holds `fmtp`.
pub fn negotiated_pt(sdp: &str, mime: &str, fmtp: &str) -> Option<u8> {
    let name = mime.split('/').nth(1)?.to_ascii_lowercase();
    sdp.lines().find_map(|l| {
        let (pt, codec) = l.strip_prefix("a=rtpmap:")?.split_once(' ')?;
        if !codec.to_ascii_lowercase().starts_with(&format!("{name}/")) {
            return None;
        }
        let fmtp_line = sdp
            .lines()
            .find(|f| f.starts_with(&format!("a=fmtp:{pt} ")))
            .unwrap_or_default();
        (fmtp.is_empty() || fmtp_line.contains(fmtp)).then(|| pt.parse().ok())?
    })
}

async fn send(
    track: Arc<TrackLocalStaticRTP>,
    spec: StreamSpec,
    negotiated: Negotiated,
    sent: Arc<Sent>,
    keyframe_wanted: Arc<AtomicBool>,
    stop: Arc<Notify>,
) {
    let frames_per_s = match spec.kind {
        Kind::Video => spec.fps.max(1),
        Kind::Audio => 50,
    };
    let (interval, ts_step) = match (&spec.burst, spec.kind) {
        (Some(_), Kind::Video) => (Duration::from_millis(1), 90_000 / frames_per_s),
        (Some(_), Kind::Audio) => (Duration::from_millis(1), 960),
        (None, Kind::Video) => (Duration::from_secs(1) / frames_per_s, 90_000 / frames_per_s),
        (None, Kind::Audio) => (Duration::from_millis(20), 960),
    };
    let frame_bytes = (spec.bitrate_bps / 8 / frames_per_s).max(24) as usize;
    let packets_per_frame = frame_bytes.div_ceil(MAX_PAYLOAD);
    let packet_bytes = frame_bytes / packets_per_frame;
    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    let mut tick = tokio::time::interval(interval);
    // A late tick is skipped, not burst: bursts would show up as the server's delay.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut rtp_seq: u16 = rand::random();
    let mut frame = 0u32;
    for ticks in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.notified() => return,
        }
        let frames = match &spec.burst {
            None => 1,
            Some(b) if b.go.load(Ordering::SeqCst) => b.per_ms,
            // Slow until told: a frame every 33 ms.
            Some(_) => u32::from(ticks % 33 == 0),
        };
        for _ in 0..frames {
            let keyframe = spec.kind == Kind::Video
                && (frame.is_multiple_of(spec.keyframe_every.max(1))
                    || keyframe_wanted.swap(false, Ordering::Relaxed));
            for i in 0..packets_per_frame {
                if let Some(b) = &spec.burst
                    && sent.next_seq.load(Ordering::Relaxed) >= b.total
                {
                    return;
                }
                let seq = sent.next_seq.fetch_add(1, Ordering::Relaxed);
                let mut payload = Vec::with_capacity(packet_bytes + 2);
                match (spec.kind, spec.codec) {
                    (Kind::Audio, _) => {}
                    // VP8 payload descriptor: S bit on a frame's first packet, then the payload
                    // header's P bit (0 on keyframes).
                    (Kind::Video, VideoCodec::Vp8) if i == 0 => {
                        payload.extend_from_slice(&[0x10, if keyframe { 0x00 } else { 0x01 }]);
                    }
                    (Kind::Video, VideoCodec::Vp8) => payload.extend_from_slice(&[0x00, 0x00]),
                    // One NAL unit per packet: IDR slices (type 5) or non-IDR slices (type 1).
                    (Kind::Video, VideoCodec::H264) => {
                        payload.extend_from_slice(&[if keyframe { 0x65 } else { 0x41 }, 0x88]);
                    }
                }
                marker::write(
                    &mut payload,
                    &sent.publisher,
                    spec.kind,
                    seq,
                    keyframe && i == 0,
                );
                payload.resize(payload.len().max(packet_bytes), 0);
                let mut header = rtc::rtp::header::Header {
                    version: 2,
                    marker: spec.kind == Kind::Video && i + 1 == packets_per_frame,
                    payload_type: negotiated.pt,
                    sequence_number: rtp_seq,
                    timestamp: frame.wrapping_mul(ts_step),
                    ssrc,
                    ..Default::default()
                };
                if let Some(id) = negotiated.level_id {
                    // RFC 6464: the V (voice activity) bit, then the level in -dBov.
                    let dbov = spec.level.load(Ordering::Relaxed).min(127);
                    let voiced = if dbov <= TALKING_DBOV { 0x80 } else { 0 };
                    let _ = header.set_extension(id, vec![voiced | dbov].into());
                }
                let packet = rtc::rtp::Packet {
                    header,
                    payload: payload.into(),
                };
                rtp_seq = rtp_seq.wrapping_add(1);
                if track.write_rtp(packet).await.is_err() {
                    return;
                }
            }
            frame += 1;
        }
    }
}
