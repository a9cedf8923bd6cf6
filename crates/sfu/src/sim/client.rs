//! One simulated member of [`super::Net`]: its connections and what they received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use miclink_protocol::Ident;
use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{RTCDtlsRole, RTCIceCandidateInit};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::{Codec, Loss, Received};
use crate::is_keyframe_request;

/// A simulated member: a subscribe connection (made when the server offers one) and
/// optionally a publish connection.
pub struct Client {
    pub room: Ident,
    pub user: Ident,
    /// The subscribe connection's address; the publish connection's is [`Client::publish_addr`].
    pub addr: SocketAddr,
    /// The server (its node's core) it talks to.
    pub(super) server: SocketAddr,
    pub(super) subscriber: Option<RTCPeerConnection>,
    /// Subscribe connection's track id -> (publisher, kind).
    pub(super) tracks: HashMap<String, (String, RtpCodecKind)>,
    pub(super) publisher: Option<Publisher>,
    pub received: Vec<Received>,
    /// Subscribe offers answered, and how many of them started a new connection.
    pub offers: usize,
    pub new_connections: usize,
    /// Keyframe requests the publish connection received.
    pub keyframe_requests: usize,
    pub subscriber_connected: bool,
    pub publisher_connected: bool,
    /// Drops datagrams on their way to this client while it returns true.
    pub(super) loss: Option<Loss>,
}

pub(super) struct Publisher {
    pub(super) pc: RTCPeerConnection,
    pub(super) senders: Vec<(Codec, RTCRtpSenderId, u32, u8)>,
}

impl Client {
    pub(super) fn pcs(&mut self) -> impl Iterator<Item = &mut RTCPeerConnection> {
        self.subscriber
            .iter_mut()
            .chain(self.publisher.as_mut().map(|p| &mut p.pc))
    }

    /// The publish connection's address (the subscribe connection has [`Client::addr`]).
    pub fn publish_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr.ip(), self.addr.port() + 20_000)
    }

    pub(super) fn deliver(&mut self, now: Instant, to: SocketAddr, data: &[u8]) {
        if let Some(loss) = &mut self.loss
            && loss(data)
        {
            return;
        }
        let pc = if to == self.addr {
            self.subscriber.as_mut()
        } else {
            self.publisher.as_mut().map(|p| &mut p.pc)
        };
        if let Some(pc) = pc {
            let _ = pc.handle_read(TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: to,
                    peer_addr: self.server,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: BytesMut::from(data),
            });
        }
    }

    /// Read everything the connections have for the application.
    pub(super) fn drain(&mut self, _now: Instant) {
        if let Some(pc) = &mut self.subscriber {
            while let Some(e) = pc.poll_event() {
                match e {
                    RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                        let kind = pc
                            .rtp_receiver(init.receiver_id)
                            .map_or(RtpCodecKind::Unspecified, |r| r.track().kind());
                        let publisher = init.stream_ids.first().cloned().unwrap_or_default();
                        self.tracks.insert(init.track_id, (publisher, kind));
                    }
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => {
                        self.subscriber_connected = s == RTCPeerConnectionState::Connected;
                    }
                    _ => {}
                }
            }
            while let Some(m) = pc.poll_read() {
                if let RTCMessage::RtpPacket(track, packet) = m.message {
                    let (publisher, kind) = self.tracks.get(&track).cloned().unwrap_or_default();
                    self.received.push(Received {
                        publisher,
                        kind,
                        seq: packet.header.sequence_number,
                        timestamp: packet.header.timestamp,
                        ssrc: packet.header.ssrc,
                        payload_type: packet.header.payload_type,
                        payload: packet.payload,
                    });
                }
            }
        }
        if let Some(p) = &mut self.publisher {
            while let Some(e) = p.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = e {
                    self.publisher_connected = s == RTCPeerConnectionState::Connected;
                }
            }
            while let Some(m) = p.pc.poll_read() {
                if let RTCMessage::RtcpPacket(_, packets) = m.message
                    && packets.iter().any(|p| is_keyframe_request(p.as_ref()))
                {
                    self.keyframe_requests += 1;
                }
            }
        }
    }

    pub(super) fn answer(&mut self, now: Instant, offer: &str, new_connection: bool) -> String {
        self.offers += 1;
        if new_connection || self.subscriber.is_none() {
            if new_connection {
                self.new_connections += 1;
            }
            let mut media = MediaEngine::default();
            media.register_default_codecs().expect("codecs");
            let registry =
                register_default_interceptors(Registry::new(), &mut media).expect("interceptors");
            self.subscriber = Some(client_pc(now, media, registry, self.addr));
            self.tracks.clear();
            self.subscriber_connected = false;
        }
        let pc = self.subscriber.as_mut().expect("just made");
        pc.set_remote_description(
            now,
            RTCSessionDescription::offer(offer.to_owned()).expect("offer"),
        )
        .expect("remote offer");
        let answer = pc.create_answer(None).expect("answer");
        pc.set_local_description(now, answer.clone())
            .expect("local answer");
        answer.sdp
    }
}

pub(super) fn client_pc(
    now: Instant,
    media: MediaEngine,
    registry: Registry,
    addr: SocketAddr,
) -> RTCPeerConnection {
    // Answer as DTLS client, as browsers do, so the handshake starts as soon as ICE connects.
    let settings = SettingEngineBuilder::new()
        .with_answering_dtls_role(RTCDtlsRole::Client)
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)
        .expect("client connection");
    let candidate = crate::factory::host_candidate(addr, crate::Transport::Udp).expect("candidate");
    pc.add_local_candidate(RTCIceCandidateInit {
        candidate,
        ..Default::default()
    })
    .expect("local candidate");
    pc
}
