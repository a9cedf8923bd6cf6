//! One peer connection as the SFU holds it: the rtc connection, whose it is, its addresses, its
//! tracks, and its offer state; and how the SFU builds one ([`PeerFactory`]).
//!
//! Nothing here routes or forwards; that is the core's job.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use miclink_protocol::Ident;
use rand::RngExt;
use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::{Registry, SenderReportBuilder, Slot};
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability,
    RtpCodecKind, TYPE_RTCP_FB_NACK, TYPE_RTCP_FB_TRANSPORT_CC,
};

use crate::bwe;
use crate::feedback::{RtcpToApplication, sfu_feedback};
use crate::ids::{OutKey, PeerId};
use crate::remote::{Remote, Transport};
use crate::stats::PeerStats;
use crate::track::{InTrack, OutTrack};
use crate::{PcKind, SfuError};

/// A datagram kept before a subscribe connection's first answer: its bytes, its source, and
/// the local address it came to.
pub(crate) type Early = (Vec<u8>, Remote, Option<std::net::IpAddr>);

/// Remote addresses one connection may use at once: a client switches networks now and then,
/// but a handful covers every honest case, and each address costs a map entry and a socket.
pub(crate) const MAX_ADDRS: usize = 4;

/// Datagrams kept per subscribe connection while its first answer is awaited.
pub(crate) const EARLY_DATAGRAMS: usize = 16;

/// ICE-lite hears only the client's checks, and Chromium checks a stable, receiving connection
/// only every 10 to 25 s, so rtc's 5 s default flapped every subscribe connection to
/// `disconnected` and its 25 s failure timer could close one that was fine.
const ICE_DISCONNECTED_TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));
const ICE_FAILED_TIMEOUT: Option<Duration> = Some(Duration::from_secs(60));

/// How long a connection may take to connect (ICE, then DTLS) once its offer and answer were
/// exchanged. A browser on a bad network takes a few seconds; a connection nobody completes
/// (an abandoned WHEP or WHIP offer, a client that vanished) would otherwise hold its place
/// until ICE gives up, a minute or more.
pub(crate) const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

pub(crate) struct Peer {
    pub(crate) pc: RTCPeerConnection,
    pub(crate) room: Ident,
    pub(crate) user: Ident,
    pub(crate) ufrag: String,
    /// Remote addresses learned from the client's checks, at most [`MAX_ADDRS`].
    pub(crate) addrs: Vec<Remote>,
    pub(crate) connected: bool,
    /// Set once descriptions were exchanged: a connection not connected (ICE and DTLS) by then
    /// is closed as failed ([`CONNECT_DEADLINE`]).
    pub(crate) connect_by: Option<Instant>,
    /// Trickled candidates taken so far (they are capped).
    pub(crate) remote_candidates: usize,
    /// What the connection is for, and the state that comes with it.
    pub(crate) role: Role,
    pub(crate) counters: PeerStats,
    pub(crate) span: tracing::Span,
}

/// What a connection is for. Each role's state is its own type; a connection changes role only
/// as it is set up (a subscribe connection becomes a WHEP player's or a relay's, a publish
/// connection a stand-in or a relay's receiving end).
pub(crate) enum Role {
    /// A member's (or an encoder's) publish connection: the client offered it.
    Publisher(Publisher),
    /// A publisher on a relay from another node: its tracks, fed from the relay; never
    /// connected itself.
    StandIn(Publisher, StandIn),
    /// A member's subscribe connection: the server offers it, and offers again when the
    /// tracks change.
    Subscriber(Subscriber),
    /// A WHEP player's: made from its own receive-only offer, answered once; its places
    /// change hands instead of being offered again.
    Player(Subscriber, Vec<crate::whep::Slot>),
    /// At a room's origin: the relay carrying the room to another node (its senders pinned,
    /// every layer a stream of its own).
    RelayOut(Subscriber, String),
    /// At another node: the relay from the room's origin, a client connection of this core;
    /// what it carries feeds the stand-ins.
    RelayIn(crate::relay::RelayIn),
}

/// A stand-in's link to the relay it is fed from.
pub(crate) struct StandIn {
    /// The relay connection (keyframe requests go up it).
    pub(crate) via: PeerId,
    /// The node it comes from.
    pub(crate) node: String,
}

impl Role {
    /// Which of the two kinds of connection the client sees it as.
    pub(crate) fn kind(&self) -> PcKind {
        match self {
            Role::Subscriber(_) | Role::Player(..) | Role::RelayOut(..) => PcKind::Subscribe,
            Role::Publisher(_) | Role::StandIn(..) | Role::RelayIn(_) => PcKind::Publish,
        }
    }

    /// The receiving side of a publisher or a stand-in.
    pub(crate) fn publisher(&self) -> Option<&Publisher> {
        match self {
            Role::Publisher(p) | Role::StandIn(p, _) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn publisher_mut(&mut self) -> Option<&mut Publisher> {
        match self {
            Role::Publisher(p) | Role::StandIn(p, _) => Some(p),
            _ => None,
        }
    }

    /// The sending side of a subscriber, a player or a relay out.
    pub(crate) fn subscriber(&self) -> Option<&Subscriber> {
        match self {
            Role::Subscriber(s) | Role::Player(s, _) | Role::RelayOut(s, _) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn subscriber_mut(&mut self) -> Option<&mut Subscriber> {
        match self {
            Role::Subscriber(s) | Role::Player(s, _) | Role::RelayOut(s, _) => Some(s),
            _ => None,
        }
    }

    /// The node a relay out carries the room to.
    pub(crate) fn relay_to(&self) -> Option<&str> {
        match self {
            Role::RelayOut(_, node) => Some(node),
            _ => None,
        }
    }

    pub(crate) fn relay_in(&self) -> Option<&crate::relay::RelayIn> {
        match self {
            Role::RelayIn(r) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn relay_in_mut(&mut self) -> Option<&mut crate::relay::RelayIn> {
        match self {
            Role::RelayIn(r) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn stand_in(&self) -> Option<&StandIn> {
        match self {
            Role::StandIn(_, s) => Some(s),
            _ => None,
        }
    }

    /// A WHEP player's places.
    pub(crate) fn slots(&self) -> Option<&Vec<crate::whep::Slot>> {
        match self {
            Role::Player(_, slots) => Some(slots),
            _ => None,
        }
    }

    pub(crate) fn slots_mut(&mut self) -> Option<&mut Vec<crate::whep::Slot>> {
        match self {
            Role::Player(_, slots) => Some(slots),
            _ => None,
        }
    }

    /// A publisher's (or stand-in's) tracks, by track id.
    pub(crate) fn tracks(&self) -> Option<&HashMap<String, InTrack>> {
        self.publisher().map(|p| &p.tracks)
    }

    pub(crate) fn tracks_mut(&mut self) -> Option<&mut HashMap<String, InTrack>> {
        self.publisher_mut().map(|p| &mut p.tracks)
    }

    /// A subscribe connection's (player's, relay's) senders.
    pub(crate) fn outs(&self) -> Option<&HashMap<OutKey, OutTrack>> {
        self.subscriber().map(|s| &s.outs)
    }

    pub(crate) fn outs_mut(&mut self) -> Option<&mut HashMap<OutKey, OutTrack>> {
        self.subscriber_mut().map(|s| &mut s.outs)
    }

    /// Whether this is a relay between nodes (either end).
    pub(crate) fn is_relay(&self) -> bool {
        matches!(self, Role::RelayOut(..) | Role::RelayIn(_))
    }

    /// A subscriber's connection becomes a WHEP player's, with these places.
    pub(crate) fn play(&mut self, slots: Vec<crate::whep::Slot>) {
        if let Role::Subscriber(s) = std::mem::replace(self, Role::Publisher(Publisher::default()))
        {
            *self = Role::Player(s, slots);
        }
    }

    /// A subscriber's connection becomes the relay to `node`.
    pub(crate) fn relay_out(&mut self, node: String) {
        if let Role::Subscriber(s) = std::mem::replace(self, Role::Publisher(Publisher::default()))
        {
            *self = Role::RelayOut(s, node);
        }
    }

    /// A publisher's connection becomes a stand-in fed by relay `via` from `node`.
    pub(crate) fn stand_in_for(&mut self, via: PeerId, node: String) {
        if let Role::Publisher(p) = std::mem::replace(self, Role::Publisher(Publisher::default())) {
            *self = Role::StandIn(p, StandIn { via, node });
        }
    }
}

/// The receiving side of a publish connection.
#[derive(Default)]
pub(crate) struct Publisher {
    /// The seating it publishes under ([`crate::MediaChange::AllowPublish`]'s `link`).
    pub(crate) link: u64,
    /// The simulcast layers its offer announced by name (rids `q`, `h`, `f`), seen or not yet;
    /// empty without simulcast or with other rids.
    pub(crate) simulcast: Vec<miclink_protocol::VideoQuality>,
    /// Tracks by track id.
    pub(crate) tracks: HashMap<String, InTrack>,
}

/// The sending side of a subscribe connection (a member's, a player's, a relay's).
pub(crate) struct Subscriber {
    /// (publisher, kind, layer) -> sender.
    pub(crate) outs: HashMap<OutKey, OutTrack>,
    /// The SDP of an offer that is out and unanswered.
    pub(crate) pending_offer: Option<String>,
    /// The number of the last offer made.
    pub(crate) offer_id: u64,
    /// The offer starts a new connection (the client must make one).
    pub(crate) new_connection: bool,
    /// The track set changed while an offer was out.
    pub(crate) renegotiate: bool,
    /// Before the first answer: the client's first connectivity checks race its answer (UDP
    /// beats the WebSocket and the hub) and rtc refuses a check it cannot yet attribute, so
    /// they are kept (a few) and fed again once the answer is in, instead of leaving the client
    /// to its retransmission schedule.
    pub(crate) early: Option<Vec<Early>>,
    /// The bandwidth estimator, fed from the TWCC feedback.
    pub(crate) bwe: bwe::Estimator,
    /// Transport-wide numbers and the send history.
    pub(crate) twcc: crate::twcc::Twcc,
    /// How many bits a second more than the estimate its tracks' best layers would take (0
    /// when everything fits): what a probe would have to prove.
    pub(crate) wants_more: u64,
    /// What its tracks' best layers would take, bits a second.
    pub(crate) desired: u64,
    pub(crate) probe: crate::probe::Probe,
}

impl Subscriber {
    fn new() -> Subscriber {
        Subscriber {
            outs: HashMap::new(),
            pending_offer: None,
            offer_id: 0,
            new_connection: false,
            renegotiate: false,
            early: Some(Vec::new()),
            bwe: bwe::Estimator::new(),
            twcc: crate::twcc::Twcc::new(),
            wants_more: 0,
            desired: 0,
            probe: Default::default(),
        }
    }

    pub(crate) fn offer_pending(&self) -> bool {
        self.pending_offer.is_some()
    }

    /// A running probe's `count` padding packets, on the first video stream that just ended a
    /// frame (numbered in it: its munger makes room); how many went out.
    pub(crate) fn pad(&mut self, pc: &mut RTCPeerConnection, count: u16, now: Instant) -> u64 {
        let mut sent = 0u64;
        for out in self.outs.values_mut() {
            if out.kind != RtpCodecKind::Video || out.paused {
                continue;
            }
            let Some((pt, twcc_id)) = out.negotiated.as_ref().map(|n| (n.payload_type, n.twcc))
            else {
                continue;
            };
            let Some((first, timestamp)) = out.munger.padding(count) else {
                continue;
            };
            let Some(mut sender) = pc.rtp_sender(out.sender) else {
                continue;
            };
            for i in 0..count {
                let mut packet = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        padding: true,
                        payload_type: pt,
                        sequence_number: first.wrapping_add(i),
                        timestamp,
                        ssrc: out.ssrc,
                        ..Default::default()
                    },
                    payload: Default::default(),
                };
                if let Some(id) = twcc_id {
                    self.twcc.stamp(id, &mut packet, now);
                }
                if sender.write_rtp(now, packet).is_ok() {
                    sent += 1;
                }
            }
            break;
        }
        if sent > 0 {
            self.probe.padded(now);
        }
        sent
    }
}

impl Peer {
    /// Which of the two kinds of connection the client sees it as.
    pub(crate) fn kind(&self) -> PcKind {
        self.role.kind()
    }

    /// Descriptions were exchanged at `now`: the connection has `allowed` to connect, unless it
    /// is connected already (a renegotiation) or its time is running (a second exchange before
    /// connecting).
    pub(crate) fn negotiated(&mut self, now: Instant, allowed: Duration) {
        if !self.connected && self.connect_by.is_none() {
            self.connect_by = Some(now + allowed);
        }
    }

    /// NACKs this publish connection sent since the last read (none for a subscribe one).
    pub(crate) fn read_nacks(&mut self, now: Instant) -> u64 {
        if self.kind() != PcKind::Publish {
            return 0;
        }
        let sent = nacks_sent(&mut self.pc, now);
        let new = sent.saturating_sub(self.counters.nacks);
        self.counters.nacks = sent;
        new
    }
}

/// Builds the SFU's peer connections: ICE-lite, host candidates on the shared port, one DTLS
/// certificate for every connection of the loop (generating one per connection would cost a
/// key generation on the loop for every publish), and the interceptors each kind needs.
pub(crate) struct PeerFactory {
    /// Leads every ufrag: it names the loop that owns the connection.
    prefix: String,
    candidates: Vec<String>,
    certificate: RTCCertificate,
}

impl PeerFactory {
    pub(crate) fn new(
        loop_index: usize,
        public: &[SocketAddr],
        tcp_port: Option<u16>,
    ) -> Result<PeerFactory, SfuError> {
        let internal = |e: &dyn std::fmt::Display| SfuError::Internal(e.to_string());
        let provider = rtc::crypto::default_provider().map_err(|e| internal(&e))?;
        let params =
            CertificateParams::new(vec!["miclink".to_owned()]).map_err(|e| internal(&e))?;
        let certificate = RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            params,
        )
        .map_err(|e| internal(&e))?;
        // UDP first; the passive TCP candidates rank below every UDP one (RFC 6544 local
        // preference), so a client only settles on TCP when UDP does not get through.
        let tcp = tcp_port.into_iter().flat_map(|port| {
            public
                .iter()
                .map(move |addr| (SocketAddr::new(addr.ip(), port), Transport::Tcp))
        });
        let candidates = public
            .iter()
            .map(|addr| (*addr, Transport::Udp))
            .chain(tcp)
            .map(|(addr, transport)| host_candidate(addr, transport).map_err(|e| internal(&e)))
            .collect::<Result<_, _>>()?;
        Ok(PeerFactory {
            prefix: format!("{loop_index:02x}"),
            candidates,
            certificate,
        })
    }

    /// A new connection of `kind` for `user`, with its ufrag.
    pub(crate) fn build(
        &self,
        now: Instant,
        room: &Ident,
        user: &Ident,
        kind: PcKind,
    ) -> Result<Peer, SfuError> {
        let internal = |e: &dyn std::fmt::Display| SfuError::Internal(e.to_string());
        let ufrag = format!("{}{}", self.prefix, random_string(14));
        let mut media = MediaEngine::default();
        register_forwarded_codecs(&mut media).map_err(|e| internal(&e))?;
        let registry = match kind {
            // Receiving: NACK generation toward the publisher, receiver reports, TWCC feedback,
            // and the mid and rid extensions simulcast layers are told apart by (rule 14). The
            // answer offers no RTX codec, so no repair streams come.
            PcKind::Publish => register_default_interceptors(Registry::new(), &mut media),
            // Sending: NACK and PLI are negotiated but no per-connection responder keeps a copy
            // of every packet; the SFU answers NACKs from the published track's one buffer.
            // Sender reports, and TWCC sequence numbers so subscribers send feedback.
            PcKind::Subscribe => {
                // The responder's slot holds the SFU's hook instead: it lets the subscriber's
                // NACK, PLI, FIR and TWCC feedback through to the core.
                // Transport-wide congestion control is negotiated, but its numbers are stamped
                // and its feedback read by the core (`twcc.rs`), not by interceptors: every
                // stage of the chain costs each sent packet a move. Sender reports only:
                // nothing is received on a subscribe leg.
                register_transport_cc(&mut media).map(|()| {
                    Registry::new()
                        .with(Slot::NackResponder, RtcpToApplication::new(sfu_feedback))
                        .with(Slot::SenderReport, SenderReportBuilder::new().build())
                })
            }
        }
        .map_err(|e| internal(&e))?;
        let settings = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), random_string(32))
            // A client that really went away is removed with its signaling session (grace
            // period) long before these expire.
            .with_ice_timeouts(ICE_DISCONNECTED_TIMEOUT, ICE_FAILED_TIMEOUT, None)
            // An ICE-lite server learns client addresses from their checks; resolving a
            // client's `.local` names would send multicast queries onto the server's network
            // for every browser offer.
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .build();
        let pc = self.connection(now, settings, media, registry, &self.candidates)?;
        let pc_kind = match kind {
            PcKind::Publish => "publish",
            PcKind::Subscribe => "subscribe",
        };
        let role = match kind {
            PcKind::Publish => Role::Publisher(Publisher::default()),
            PcKind::Subscribe => Role::Subscriber(Subscriber::new()),
        };
        Ok(Peer {
            pc,
            room: room.clone(),
            user: user.clone(),
            addrs: Vec::new(),
            connected: false,
            connect_by: None,
            remote_candidates: 0,
            role,
            counters: PeerStats::new(room.clone(), user.clone(), kind),
            span: tracing::info_span!("pc", %room, %user, pc = pc_kind, ufrag = %ufrag),
            ufrag,
        })
    }
}

impl PeerFactory {
    /// A client connection to another node's media port (the receiving end of a relay): a
    /// full ICE agent that checks the origin's candidates from `local`, and the DTLS client,
    /// as a browser answering an offer is. It receives as a publish connection does (NACK
    /// generation, receiver reports, TWCC feedback).
    pub(crate) fn build_client(
        &self,
        now: Instant,
        room: &Ident,
        label: &Ident,
        local: SocketAddr,
    ) -> Result<Peer, SfuError> {
        let internal = |e: &dyn std::fmt::Display| SfuError::Internal(e.to_string());
        let mut media = MediaEngine::default();
        register_forwarded_codecs(&mut media).map_err(|e| internal(&e))?;
        let registry =
            register_default_interceptors(Registry::new(), &mut media).map_err(|e| internal(&e))?;
        let ufrag = format!("{}{}", self.prefix, random_string(14));
        let settings = SettingEngineBuilder::new()
            .with_ice_credentials(ufrag.clone(), random_string(32))
            .with_answering_dtls_role(rtc::peer_connection::transport::RTCDtlsRole::Client)
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .build();
        let candidate = host_candidate(local, Transport::Udp).map_err(|e| internal(&e))?;
        let pc = self.connection(now, settings, media, registry, &[candidate])?;
        let mut peer = self.build(now, room, label, PcKind::Publish)?;
        let _ = rtc::sansio::Protocol::close(&mut peer.pc);
        peer.pc = pc;
        peer.span = tracing::info_span!("pc", %room, user = %label, pc = "relay", ufrag = %ufrag);
        peer.ufrag = ufrag;
        Ok(peer)
    }

    /// A connection with the loop's certificate and these settings, codecs, interceptors and
    /// local candidates.
    fn connection(
        &self,
        now: Instant,
        settings: rtc::peer_connection::configuration::setting_engine::SettingEngine,
        media: MediaEngine,
        registry: Registry,
        candidates: &[String],
    ) -> Result<RTCPeerConnection, SfuError> {
        let internal = |e: &dyn std::fmt::Display| SfuError::Internal(e.to_string());
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(vec![self.certificate.clone()])
                    .build(),
            )
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(|e| internal(&e))?;
        for candidate in candidates {
            pc.add_local_candidate(rtc::peer_connection::transport::RTCIceCandidateInit {
                candidate: candidate.clone(),
                ..Default::default()
            })
            .map_err(|e| internal(&e))?;
        }
        Ok(pc)
    }
}

/// The codecs the SFU forwards, on both kinds of connection: publishers can only negotiate
/// what every subscriber can be offered, and keyframes of each can be found (VP9 and AV1 wait
/// for their keyframe detectors). Every subscriber m-section lists them all, because rtc narrows
/// a connection to what its first negotiation settled: one that only ever offered VP8 could
/// never carry a later publisher's H.264. No RTX: lost packets are resent as themselves.
fn register_forwarded_codecs(media: &mut MediaEngine) -> rtc::shared::error::Result<()> {
    let feedback = |list: &[(&str, &str)]| {
        list.iter()
            .map(|(typ, parameter)| RTCPFeedback {
                typ: (*typ).to_owned(),
                parameter: (*parameter).to_owned(),
            })
            .collect::<Vec<_>>()
    };
    let video_feedback = feedback(&[
        ("ccm", "fir"),
        (TYPE_RTCP_FB_NACK, ""),
        (TYPE_RTCP_FB_NACK, "pli"),
        ("transport-cc", ""),
    ]);
    let codec = |mime: &str, clock_rate, channels, fmtp: &str, rtcp_feedback, payload_type| {
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.to_owned(),
                clock_rate,
                channels,
                sdp_fmtp_line: fmtp.to_owned(),
                rtcp_feedback,
            },
            payload_type,
        }
    };
    media.register_codec(
        codec(
            "audio/opus",
            48_000,
            2,
            "minptime=10;useinbandfec=1",
            feedback(&[("transport-cc", "")]),
            111,
        ),
        RtpCodecKind::Audio,
    )?;
    // The payload types are rtc's defaults, so descriptions read as before.
    // Each audio packet's level (RFC 6464): the room's active speakers come from it, and
    // subscribers get it too (browsers show it as `audioLevel` of their receivers).
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: crate::speakers::AUDIO_LEVEL.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    for (mime, fmtp, pt) in [
        ("video/VP8", "", 96),
        (
            "video/H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            125,
        ),
        (
            "video/H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
            102,
        ),
    ] {
        media.register_codec(
            codec(mime, 90_000, 0, fmtp, video_feedback.clone(), pt),
            RtpCodecKind::Video,
        )?;
    }
    Ok(())
}

/// Transport-wide congestion control on both kinds of media: the feedback type and the header
/// extension (what rtc's `configure_twcc_sender_only` registers, without its interceptor).
fn register_transport_cc(media: &mut MediaEngine) -> rtc::shared::error::Result<()> {
    for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
        media.register_feedback(
            RTCPFeedback {
                typ: TYPE_RTCP_FB_TRANSPORT_CC.to_owned(),
                parameter: String::new(),
            },
            kind,
        );
        media.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: rtc::sdp::extmap::TRANSPORT_CC_URI.to_owned(),
            },
            kind,
            None,
        )?;
    }
    Ok(())
}

/// The SDP line of a host candidate on `addr`: UDP, or passive TCP (the client connects).
pub(crate) fn host_candidate(
    addr: SocketAddr,
    transport: Transport,
) -> Result<String, rtc::shared::error::Error> {
    let (network, tcp_type) = match transport {
        Transport::Udp | Transport::Relay(_) => ("udp", TcpType::Unspecified),
        Transport::Tcp => ("tcp", TcpType::Passive),
    };
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: network.to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type,
    }
    .new_candidate_host()?;
    Ok(RTCIceCandidate::from(&candidate).to_json()?.candidate)
}

/// The SSRC of `packet` when it is a video RTP packet this subscribe connection sends: on a
/// congested TCP connection such packets go first. The RTP header (RFC 3550) is clear text
/// under SRTP; RTCP (payload types 192 to 223 in the second byte, RFC 5761) is never video.
pub(crate) fn video_ssrc(peer: &Peer, packet: &[u8]) -> Option<u32> {
    if peer.kind() != PcKind::Subscribe || packet.len() < 12 || !(128..=191).contains(&packet[0]) {
        return None;
    }
    if (192..=223).contains(&packet[1]) {
        return None;
    }
    let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
    peer.role
        .subscriber()?
        .outs
        .values()
        .any(|o| o.ssrc == ssrc && o.kind == RtpCodecKind::Video)
        .then_some(ssrc)
}

fn random_string(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// One figure summed over a connection's rtc statistics (read when asked, never on the packet
/// path).
fn stats_sum(
    pc: &mut RTCPeerConnection,
    now: Instant,
    pick: impl Fn(&rtc::statistics::report::RTCStatsReportEntry) -> Option<u64>,
) -> u64 {
    pc.get_stats(now, rtc::statistics::StatsSelector::None)
        .iter()
        .filter_map(pick)
        .sum()
}

/// Packets lost on a subscribe connection's leg, as the subscriber's receiver reports say.
pub(crate) fn subscriber_losses(pc: &mut RTCPeerConnection, now: Instant) -> u64 {
    use rtc::statistics::report::RTCStatsReportEntry;
    stats_sum(pc, now, |entry| match entry {
        RTCStatsReportEntry::RemoteInboundRtp(s) => {
            Some(s.received_rtp_stream_stats.packets_lost.max(0) as u64)
        }
        _ => None,
    })
}

/// NACKs a publish connection has sent its publisher.
fn nacks_sent(pc: &mut RTCPeerConnection, now: Instant) -> u64 {
    use rtc::statistics::report::RTCStatsReportEntry;
    stats_sum(pc, now, |entry| match entry {
        RTCStatsReportEntry::InboundRtp(s) => Some(u64::from(s.nack_count)),
        _ => None,
    })
}
