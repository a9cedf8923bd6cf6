//! How the SFU builds its peer connections ([`PeerFactory`]): ICE-lite with host candidates
//! on the shared port, one DTLS certificate for the loop, the codecs and header extensions it
//! forwards, and the interceptors each kind of connection needs.

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

use crate::feedback::{RtcpToApplication, sfu_feedback};
use crate::peer::{Peer, Role};
use crate::publisher::Publisher;
use crate::remote::Transport;
use crate::stats::PeerStats;
use crate::subscriber::Subscriber;
use crate::{PcKind, SfuError};

/// ICE-lite hears only the client's checks, and Chromium checks a stable, receiving connection
/// only every 10 to 25 s, so rtc's 5 s default flapped every subscribe connection to
/// `disconnected` and its 25 s failure timer could close one that was fine.
const ICE_DISCONNECTED_TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));
const ICE_FAILED_TIMEOUT: Option<Duration> = Some(Duration::from_secs(60));

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

fn random_string(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
