//! Simulated media on real WebRTC peer connections (the async `webrtc` crate): publishers that
//! send VP8- or H.264-shaped video and Opus-shaped audio RTP at a chosen rate (or as fast as a
//! [`Burst`] says), answer keyframe requests and stamp every packet ([`crate::marker`]);
//! receivers that decrypt everything and hand each packet to a [`Recv`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use miclink_sfu::{Codec, Sdp};
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
    /// Video: send three simulcast layers (rids `q`, `h`, `f`) at [`SIMULCAST_SHARES`] of
    /// `bitrate_bps`, as a browser sends 180p, 360p and 720p.
    pub simulcast: bool,
    /// Video: a keyframe is this many times the size of another frame (encoders spend several
    /// frames' worth of bits on one).
    pub keyframe_scale: u32,
    /// Simulcast layers not sent now, one bit per layer (bit 0 low): a publisher pausing what
    /// nobody watches (`publisher_layers`), or a test stopping one.
    pub paused: Arc<AtomicU8>,
}

/// The simulcast layers' rids, low to high.
pub const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];

/// Each simulcast layer's share of the top rate, in percent: 180p, 360p and 720p VP8 at the
/// rates browsers choose for them.
pub const SIMULCAST_SHARES: [u32; 3] = [10, 30, 100];

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
            simulcast: false,
            keyframe_scale: 1,
            paused: Arc::new(AtomicU8::new(0)),
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
            simulcast: false,
            keyframe_scale: 1,
            paused: Arc::new(AtomicU8::new(0)),
        }
    }

    /// [`StreamSpec::video`] as three simulcast layers, `bitrate_bps` the top one's rate, with
    /// keyframes four frames' size.
    pub fn simulcast(bitrate_bps: u32, fps: u32) -> StreamSpec {
        StreamSpec {
            simulcast: true,
            keyframe_scale: 4,
            ..StreamSpec::video(bitrate_bps, fps)
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
        if sending {
            // Simulcast layers are told apart by these (RFC 8852).
            for uri in [
                rtc::sdp::extmap::SDES_MID_URI,
                rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
            ] {
                media.register_header_extension(
                    RTCRtpHeaderExtensionCapability {
                        uri: uri.to_owned(),
                    },
                    RtpCodecKind::Video,
                    None,
                )?;
            }
        }
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

    /// A receive-only offer of `pairs` audio and video transceivers (a WHEP player's), once
    /// gathered; [`Peer::accept`] applies the answer.
    pub async fn receive_offer(&self, pairs: usize) -> anyhow::Result<String> {
        use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
        for _ in 0..pairs {
            for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
                let init = RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: Vec::new(),
                    send_encodings: Vec::new(),
                };
                self.pc.add_transceiver_from_kind(kind, Some(init)).await?;
            }
        }
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        self.local_sdp().await
    }

    /// Apply the answer to this peer's offer.
    pub async fn accept(&self, answer: String) -> anyhow::Result<()> {
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer)?)
            .await?;
        Ok(())
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
        for candidate in Sdp::parse(sdp)?.candidates() {
            if candidate.contains("tcptype passive") {
                self.pc
                    .add_ice_candidate(RTCIceCandidateInit {
                        candidate: format!("candidate:{candidate}"),
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
            let rids: &[&str] = if spec.simulcast && kind == RtpCodecKind::Video {
                &SIMULCAST_RIDS
            } else {
                &[""]
            };
            let encodings = rids
                .iter()
                .map(|rid| RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        rid: (*rid).to_owned(),
                        ssrc: Some(rand::random()),
                        ..Default::default()
                    },
                    codec: codec.clone(),
                    ..Default::default()
                })
                .collect();
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                publisher.to_owned(),
                format!("{publisher}-{kind}"),
                format!("{publisher} {kind}"),
                kind,
                encodings,
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

    /// Apply the answer and hand over the tracks, each with its SSRC, for a caller that sends
    /// media of its own (real frames rather than this module's marked payloads).
    pub async fn accept(
        &self,
        answer: String,
    ) -> anyhow::Result<Vec<(Arc<TrackLocalStaticRTP>, u32)>> {
        self.peer
            .pc
            .set_remote_description(RTCSessionDescription::answer(answer)?)
            .await?;
        let mut tracks = Vec::with_capacity(self.tracks.len());
        for (track, _, _) in &self.tracks {
            let ssrc = track
                .codings()
                .await
                .first()
                .and_then(|c| c.rtp_coding_parameters.ssrc)
                .ok_or_else(|| anyhow::anyhow!("a track without an SSRC"))?;
            tracks.push((track.clone(), ssrc));
        }
        Ok(tracks)
    }

    /// Apply the answer and start sending until `stop`.
    pub async fn start(&self, answer: String, stop: Arc<Notify>) -> anyhow::Result<()> {
        let described = Sdp::parse(&answer)?;
        let level_id = described.extension_id(AUDIO_LEVEL_URI);
        let mid_id = described.extension_id(rtc::sdp::extmap::SDES_MID_URI);
        let rid_id = described.extension_id(rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI);
        for (_, spec, pt) in &self.tracks {
            let (_, codec) = codec_of(spec);
            let negotiated = described
                .payload_type(&codec.mime_type, &codec.sdp_fmtp_line)
                .ok_or_else(|| anyhow::anyhow!("{} not in the answer", codec.mime_type))?;
            pt.store(negotiated, Ordering::SeqCst);
        }
        self.peer
            .pc
            .set_remote_description(RTCSessionDescription::answer(answer.clone())?)
            .await?;
        self.peer.dial_tcp(&answer).await?;
        for ((track, spec, pt), sent) in self.tracks.iter().zip(&self.sent) {
            let codings = track.codings().await;
            let simulcast = codings.len() > 1;
            let mid = described.mid("video").map(str::to_owned);
            if simulcast && (mid_id.is_none() || rid_id.is_none() || mid.is_none()) {
                anyhow::bail!("the answer took simulcast without its mid and rid extensions");
            }
            let layers: Vec<(u32, Arc<AtomicBool>)> = codings
                .iter()
                .map(|c| {
                    let ssrc = c.rtp_coding_parameters.ssrc.unwrap_or(0);
                    (ssrc, Arc::new(AtomicBool::new(true)))
                })
                .collect();
            if spec.kind == Kind::Video {
                let (track, layers) = (track.clone(), layers.clone());
                tokio::spawn(async move {
                    while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = track.poll().await {
                        for ssrc in packets
                            .iter()
                            .filter_map(|p| keyframe_request_ssrc(p.as_ref()))
                        {
                            // A request for an SSRC this track does not send asks for all.
                            let named = layers.iter().any(|(s, _)| *s == ssrc);
                            for (s, wanted) in &layers {
                                if !named || *s == ssrc {
                                    wanted.store(true, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                });
            }
            for (index, (coding, (ssrc, wanted))) in codings.iter().zip(layers).enumerate() {
                let rid = &coding.rtp_coding_parameters.rid;
                let share = if simulcast {
                    SIMULCAST_SHARES[index.min(2)]
                } else {
                    100
                };
                let sdes = match (simulcast, mid_id, rid_id, &mid) {
                    (true, Some(m), Some(r), Some(mid)) => Some(Sdes {
                        mid_id: m,
                        mid: mid.clone().into_bytes().into(),
                        rid_id: r,
                        rid: rid.clone().into_bytes().into(),
                    }),
                    _ => None,
                };
                tokio::spawn(send(
                    track.clone(),
                    spec.clone(),
                    Settled {
                        pt: pt.load(Ordering::SeqCst),
                        level_id: level_id.filter(|_| spec.kind == Kind::Audio),
                    },
                    Stream {
                        ssrc,
                        layer: index as u8,
                        bitrate_bps: (u64::from(spec.bitrate_bps) * u64::from(share) / 100) as u32,
                        sdes,
                    },
                    sent.clone(),
                    wanted,
                    stop.clone(),
                ));
            }
        }
        Ok(())
    }
}

/// The SSRC a keyframe request (PLI or FIR) names.
fn keyframe_request_ssrc(packet: &dyn rtc::rtcp::Packet) -> Option<u32> {
    use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    let any = packet.as_any();
    if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
        return Some(pli.media_ssrc);
    }
    let fir = any.downcast_ref::<FullIntraRequest>()?;
    Some(fir.fir.first().map_or(fir.media_ssrc, |e| e.ssrc))
}

/// One RTP stream a publisher's track sends: the track's only one, or a simulcast layer.
struct Stream {
    ssrc: u32,
    /// 0 low to 2 high; 0 without simulcast.
    layer: u8,
    bitrate_bps: u32,
    /// Simulcast: the mid and rid extensions every packet carries.
    sdes: Option<Sdes>,
}

struct Sdes {
    mid_id: u8,
    mid: bytes::Bytes,
    rid_id: u8,
    rid: bytes::Bytes,
}

/// What the answer settled for one stream.
struct Settled {
    pt: u8,
    /// The audio level extension's id, for audio streams when it was negotiated.
    level_id: Option<u8>,
}

async fn send(
    track: Arc<TrackLocalStaticRTP>,
    spec: StreamSpec,
    negotiated: Settled,
    stream: Stream,
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
    // Keyframes are `keyframe_scale` frames' size; the others share what is left of the rate.
    let scale = spec.keyframe_scale.max(1);
    let gop = spec.keyframe_every.max(1);
    let delta_bytes = if spec.kind == Kind::Video && scale > 1 && gop > 1 {
        (u64::from(stream.bitrate_bps) * u64::from(gop)
            / 8
            / u64::from(frames_per_s)
            / u64::from(gop + scale - 1)) as usize
    } else {
        (stream.bitrate_bps / 8 / frames_per_s) as usize
    }
    .max(24);
    let ssrc = stream.ssrc;
    // VP8 PictureIDs (15 bits), from a random start as encoders do.
    let mut picture: u16 = rand::random::<u16>() & 0x7fff;
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
        if spec.paused.load(Ordering::Relaxed) & (1 << stream.layer) != 0 {
            // A paused encoding starts again with a keyframe, as browsers' do.
            keyframe_wanted.store(true, Ordering::Relaxed);
            continue;
        }
        for _ in 0..frames {
            let keyframe = spec.kind == Kind::Video
                && (frame.is_multiple_of(spec.keyframe_every.max(1))
                    || keyframe_wanted.swap(false, Ordering::Relaxed));
            let frame_bytes = if keyframe {
                delta_bytes * scale as usize
            } else {
                delta_bytes
            };
            let packets_per_frame = frame_bytes.div_ceil(MAX_PAYLOAD);
            let packet_bytes = frame_bytes / packets_per_frame;
            let [picture_hi, picture_lo] = (picture | 0x8000).to_be_bytes();
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
                    // VP8 payload descriptor with a 15-bit PictureID (as browsers send), the S
                    // bit on a frame's first packet, then the payload header's P bit (0 on
                    // keyframes).
                    (Kind::Video, VideoCodec::Vp8) if i == 0 => {
                        let p = if keyframe { 0x00 } else { 0x01 };
                        payload.extend_from_slice(&[0x90, 0x80, picture_hi, picture_lo, p]);
                    }
                    (Kind::Video, VideoCodec::Vp8) => {
                        payload.extend_from_slice(&[0x80, 0x80, picture_hi, picture_lo]);
                    }
                    // One NAL unit per packet: IDR slices (type 5) or non-IDR slices (type 1).
                    (Kind::Video, VideoCodec::H264) => {
                        payload.extend_from_slice(&[if keyframe { 0x65 } else { 0x41 }, 0x88]);
                    }
                }
                marker::write_layer(
                    &mut payload,
                    &sent.publisher,
                    spec.kind,
                    seq,
                    keyframe && i == 0,
                    stream.layer,
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
                if let Some(sdes) = &stream.sdes {
                    let _ = header.set_extension(sdes.mid_id, sdes.mid.clone());
                    let _ = header.set_extension(sdes.rid_id, sdes.rid.clone());
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
            picture = picture.wrapping_add(1) & 0x7fff;
        }
    }
}
