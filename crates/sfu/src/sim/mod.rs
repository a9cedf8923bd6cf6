//! An in-memory network around one [`MediaCore`] ([`Net`]), or two relaying to each other
//! as two nodes of a cluster do ([`Pair`]): sans-IO WebRTC clients (rtc peer connections with
//! real ICE, DTLS and SRTP) exchanging datagrams with the cores on a fake clock, with
//! signaling done by direct calls. For tests of the core and for benchmarks of the
//! real forwarding path; nothing here touches a socket or reads the clock after [`Net::new`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use miclink_protocol::Ident;
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;

mod client;
mod hostile;
mod pair;

pub use crate::Codec;
pub use client::Client;
use client::{Publisher, client_pc};
pub use pair::{NODES, Pair};

use crate::{
    CoreConfig, MediaChange, MediaCommand, MediaCore, MediaEvent, Output, PcKind, ReplyTo,
    RtcpToApplication, SfuError, is_keyframe_request,
};

/// The server's address on the simulated network.
pub const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    7882,
);

/// One packet a client received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The msid stream id: the publisher's user id.
    pub publisher: String,
    pub kind: RtpCodecKind,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload_type: u8,
    pub payload: Bytes,
}

/// The core and its clients on one fake clock.
pub struct Net {
    pub core: MediaCore,
    /// The core's address ([`SERVER`] unless one of a [`Pair`]).
    pub server: SocketAddr,
    pub now: Instant,
    pub clients: Vec<Client>,
    /// Every event the core sent signaling, in order.
    pub events: Vec<MediaEvent>,
    /// Keep subscribe answers back until [`Net::release_answers`] (as a slow signaling path
    /// would), while the clients' connectivity checks already fly.
    pub hold_answers: bool,
    /// Addresses the core sent datagrams to that no client has (an address a client only
    /// named, say).
    pub stray: Vec<SocketAddr>,
    /// Every description the clients send claims `a=ice-lite` (they still act as full agents).
    pub claim_ice_lite: bool,
    held: Vec<MediaCommand>,
    next_reply: u64,
    /// Clients' addresses are 10.0.`subnet`.x.
    subnet: u8,
    /// One of a [`Pair`]: datagrams to addresses no client has and relay events wait here
    /// for the pair to carry them to the other node.
    relaying: bool,
    outbox: Vec<Output>,
}

/// Where `claiming_ice_lite` descriptions say the client can also be reached: an address no
/// client has (a third party's).
pub const FOREIGN: &str = "10.9.9.9";

/// `sdp` with an `a=ice-lite` session line and, in every media section, a host candidate on
/// [`FOREIGN`]: what a client that wants the server to check a third party's address sends.
fn claiming_ice_lite(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 128);
    for line in sdp.split_inclusive("\r\n") {
        out.push_str(line);
        if line.starts_with("t=") {
            out.push_str("a=ice-lite\r\n");
        }
        if line.starts_with("a=mid:") {
            out.push_str(&format!(
                "a=candidate:9 1 udp 2130706431 {FOREIGN} 9999 typ host\r\n"
            ));
        }
    }
    out
}

/// Decides, datagram by datagram, what the network loses on the way to a client.
pub type Loss = Box<dyn FnMut(&[u8]) -> bool>;

/// Which client: an index into [`Net::clients`].
pub type ClientId = usize;

impl Net {
    /// A core alone on the network (one loop).
    pub fn new() -> Net {
        Net::with_max_peers(usize::MAX)
    }

    /// A core that may hold at most `max_peers` connections.
    pub fn with_max_peers(max_peers: usize) -> Net {
        Net::at(SERVER, 1, max_peers)
    }

    /// A core at `server` whose clients are on 10.0.`subnet`.x.
    fn at(server: SocketAddr, subnet: u8, max_peers: usize) -> Net {
        let core = MediaCore::new(CoreConfig {
            loop_index: 0,
            loops: 1,
            public: vec![server],
            max_peers,
            tcp_port: None,
        })
        .expect("a media core");
        Net {
            core,
            server,
            subnet,
            relaying: false,
            outbox: Vec::new(),
            now: Instant::now(),
            clients: Vec::new(),
            events: Vec::new(),
            hold_answers: false,
            stray: Vec::new(),
            claim_ice_lite: false,
            held: Vec::new(),
            next_reply: 1,
        }
    }

    fn command(&mut self, command: MediaCommand) {
        self.core.handle_command(self.now, command);
        self.pump();
    }

    /// The seats allow `user` to publish.
    pub fn allow(&mut self, room: &str, user: &str, seat: u32, audio: bool, video: bool) {
        self.command(MediaCommand::Seats(MediaChange::AllowPublish {
            room: id(room),
            user: id(user),
            seat,
            audio,
            video,
            // The sim's seats are simple: one seating per user.
            link: 1,
        }));
    }

    /// The seats revoke `user`'s permission to publish.
    pub fn revoke(&mut self, room: &str, user: &str) {
        self.command(MediaCommand::Seats(MediaChange::RevokePublish {
            room: id(room),
            user: id(user),
        }));
    }

    /// `user` enters `room`: a client is made for them and the core told.
    pub fn enter(&mut self, room: &str, user: &str) -> ClientId {
        let n = self.enter_silently(room, user);
        self.command(MediaCommand::Seats(MediaChange::Subscribe {
            room: id(room),
            user: id(user),
        }));
        n
    }

    /// `user`'s client, the core not yet told.
    fn enter_silently(&mut self, room: &str, user: &str) -> ClientId {
        let n = self.clients.len();
        self.clients.push(Client {
            room: id(room),
            user: id(user),
            addr: SocketAddr::from(([10, 0, self.subnet, (n % 250) as u8 + 1], 10_000 + n as u16)),
            server: self.server,
            subscriber: None,
            tracks: HashMap::new(),
            publisher: None,
            received: Vec::new(),
            offers: 0,
            new_connections: 0,
            keyframe_requests: 0,
            subscriber_connected: false,
            publisher_connected: false,
            loss: None,
        });
        n
    }

    /// A WHEP player `user` of `room`, watching `slots` places: a member making its own
    /// offers, whose receive-only offer (an audio and a video section a place) the core
    /// answers; its connection is the client's subscribe connection.
    pub fn player(&mut self, room: &str, user: &str, slots: usize) -> Result<ClientId, SfuError> {
        use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
        let n = self.enter_silently(room, user);
        // As the hub tells it: a member (seats), then an HTTP client (no offers of the core's).
        self.command(MediaCommand::Seats(MediaChange::Subscribe {
            room: id(room),
            user: id(user),
        }));
        self.command(MediaCommand::OwnOffers {
            room: id(room),
            user: id(user),
        });
        let mut media = MediaEngine::default();
        media.register_default_codecs().expect("codecs");
        let registry =
            register_default_interceptors(Registry::new(), &mut media).expect("interceptors");
        let now = self.now;
        let mut pc = client_pc(now, media, registry, self.clients[n].addr);
        for _ in 0..slots {
            for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
                let init = RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: Vec::new(),
                    send_encodings: Vec::new(),
                };
                pc.add_transceiver_from_kind(kind, Some(init))
                    .expect("transceiver");
            }
        }
        let offer = pc.create_offer(None).expect("offer");
        pc.set_local_description(now, offer.clone())
            .expect("local offer");
        let reply = self.reply();
        self.command(MediaCommand::Watch {
            room: id(room),
            user: id(user),
            offer: offer.sdp,
            reply,
        });
        let answer = self
            .events
            .iter()
            .rev()
            .find_map(|e| match e {
                MediaEvent::PublishAnswer { reply: r, result } if *r == reply => {
                    Some(result.clone())
                }
                _ => None,
            })
            .expect("the core answers a watch at once")?;
        pc.set_remote_description(now, RTCSessionDescription::answer(answer).expect("answer"))
            .expect("remote answer");
        self.clients[n].subscriber = Some(pc);
        self.pump();
        Ok(n)
    }

    /// Any other command of the client's (room and user filled in by the caller).
    pub fn send_command(&mut self, command: MediaCommand) {
        self.command(command);
    }

    /// Publish `codecs` from client `c` on a new publish connection (replacing any earlier one).
    pub fn publish(&mut self, c: ClientId, codecs: &[Codec]) -> Result<(), SfuError> {
        let now = self.now;
        let addr = self.clients[c].publish_addr();
        let mut media = MediaEngine::default();
        media.register_default_codecs().expect("codecs");
        // Keyframe requests from the server reach the application (counted).
        let registry = register_default_interceptors(Registry::new(), &mut media)
            .expect("interceptors")
            .with(
                Slot::IntervalPli,
                RtcpToApplication::new(is_keyframe_request),
            );
        let mut pc = client_pc(now, media, registry, addr);
        let mut senders = Vec::new();
        for &codec in codecs {
            let ssrc = 0x5000_0000 + (c as u32) * 16 + senders.len() as u32;
            let sender = pc
                .add_track(MediaStreamTrack::new(
                    self.clients[c].user.to_string(),
                    format!("{}-{:?}", self.clients[c].user, codec),
                    format!("{:?}", codec),
                    codec.kind(),
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        codec: codec.rtp_codec(),
                        ..Default::default()
                    }],
                ))
                .expect("track");
            senders.push((codec, sender, ssrc, 0));
        }
        let offer = pc.create_offer(None).expect("offer");
        pc.set_local_description(now, offer.clone())
            .expect("local offer");
        let reply = self.reply();
        let (room, user) = (self.clients[c].room.clone(), self.clients[c].user.clone());
        let offer = if self.claim_ice_lite {
            claiming_ice_lite(&offer.sdp)
        } else {
            offer.sdp
        };
        self.command(MediaCommand::Publish {
            room,
            user,
            offer,
            reply,
        });
        let answer = self
            .events
            .iter()
            .find_map(|e| match e {
                MediaEvent::PublishAnswer { reply: r, result } if *r == reply => {
                    Some(result.clone())
                }
                _ => None,
            })
            .expect("the core answers a publish at once")?;
        pc.set_remote_description(now, RTCSessionDescription::answer(answer).expect("answer"))
            .expect("remote answer");
        for (codec, sender, _, pt) in &mut senders {
            let mut s = pc.rtp_sender(*sender).expect("sender");
            *pt = s
                .get_parameters()
                .rtp_parameters
                .codecs
                .iter()
                .find(|p| {
                    p.rtp_codec
                        .mime_type
                        .eq_ignore_ascii_case(&codec.rtp_codec().mime_type)
                })
                .map(|p| p.payload_type)
                .expect("negotiated");
        }
        self.clients[c].publisher = Some(Publisher { pc, senders });
        self.clients[c].publisher_connected = false;
        self.pump();
        Ok(())
    }

    /// Client `c` sends one RTP packet of its `codec` track.
    pub fn send(&mut self, c: ClientId, codec: Codec, seq: u16, timestamp: u32, payload: Bytes) {
        let now = self.now;
        let publisher = self.clients[c].publisher.as_mut().expect("publishing");
        let &(_, sender, ssrc, pt) = publisher
            .senders
            .iter()
            .find(|(k, ..)| *k == codec)
            .expect("a track of that codec");
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: pt,
                sequence_number: seq,
                timestamp,
                ssrc,
                ..Default::default()
            },
            payload,
        };
        publisher
            .pc
            .rtp_sender(sender)
            .expect("sender")
            .write_rtp(now, packet)
            .expect("write");
    }

    /// The datagram client `c` would send for one RTP packet of its `codec` track (SRTP
    /// applied), taken out instead of delivered: benchmarks feed it to the core themselves.
    pub fn sealed(
        &mut self,
        c: ClientId,
        codec: Codec,
        seq: u16,
        timestamp: u32,
        payload: Bytes,
    ) -> Vec<u8> {
        self.send(c, codec, seq, timestamp, payload);
        let publisher = self.clients[c].publisher.as_mut().expect("publishing");
        let mut rtp = None;
        while let Some(msg) = publisher.pc.poll_write() {
            // RTP, not RTCP (payload types 72 to 79 in the second byte's low bits are RTCP).
            let b = msg.message.get(1).copied().unwrap_or(0) & 0x7f;
            if rtp.is_none() && !(72..=79).contains(&b) {
                rtp = Some(msg.message.to_vec());
            }
        }
        rtp.expect("the packet became a datagram")
    }

    /// Drop datagrams toward client `c` while `drop` says so (`None` stops dropping).
    pub fn set_loss(&mut self, c: ClientId, drop: Option<Loss>) {
        self.clients[c].loss = drop;
    }

    /// RTCP `packets` (a forged NACK, say) arrive on client `c`'s subscribe connection at the
    /// server, as if the client had sent them: handed to the core after rtc's decryption, which
    /// is where the core's own handling starts.
    pub fn inject_rtcp(&mut self, c: ClientId, packets: Vec<Box<dyn rtc::rtcp::Packet>>) {
        let (room, user) = (self.clients[c].room.clone(), self.clients[c].user.clone());
        if let Some(id) = self.core.room_peer(&room, &user, PcKind::Subscribe) {
            self.core.rtcp(self.now, id, packets);
        }
        self.pump();
    }

    /// Client `c` trickles `candidate` (an SDP candidate line) for its connection `pc`.
    pub fn trickle(&mut self, c: ClientId, pc: PcKind, candidate: &str) {
        let (room, user) = (self.clients[c].room.clone(), self.clients[c].user.clone());
        self.command(MediaCommand::Candidate {
            room,
            user,
            pc,
            candidate: candidate.to_owned(),
        });
    }

    /// Client `c`'s subscribe connection vanishes without a word, as a crashed tab's does.
    pub fn kill_subscriber(&mut self, c: ClientId) {
        self.clients[c].subscriber = None;
        self.clients[c].subscriber_connected = false;
    }

    /// Advance the clock by `dt`, running every timer and delivering everything in flight.
    pub fn step(&mut self, dt: Duration) {
        self.now += dt;
        let now = self.now;
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
        for client in &mut self.clients {
            for pc in client.pcs() {
                if pc.poll_timeout().is_some_and(|t| t <= now) {
                    let _ = pc.handle_timeout(now);
                }
            }
        }
        self.pump();
    }

    /// Step `dt` at a time until `done` holds; panics after `limit` of simulated time.
    pub fn run_until(&mut self, limit: Duration, dt: Duration, done: impl Fn(&Net) -> bool) {
        let end = self.now + limit;
        while !done(self) {
            assert!(self.now < end, "not done after {limit:?} of simulated time");
            self.step(dt);
        }
    }

    /// Deliver until nothing moves.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(output) = self.core.poll_output() {
                moved = true;
                match output {
                    Output::Transmit(t) => {
                        match self
                            .clients
                            .iter_mut()
                            .find(|c| c.addr == t.to || c.publish_addr() == t.to)
                        {
                            Some(client) => client.deliver(self.now, t.to, &t.data),
                            None if self.relaying => self.outbox.push(Output::Transmit(t)),
                            None => self.stray.push(t.to),
                        }
                    }
                    Output::Event(
                        e @ (MediaEvent::RelayOffer { .. }
                        | MediaEvent::RelayAnswer { .. }
                        | MediaEvent::RelayEnded { .. }),
                    ) if self.relaying => {
                        self.events.push(e.clone());
                        self.outbox.push(Output::Event(e));
                    }
                    Output::Event(e) => self.event(e),
                    Output::Connect { .. } | Output::Forget { .. } | Output::Ufrag { .. } => {}
                }
            }
            for i in 0..self.clients.len() {
                let now = self.now;
                let client = &mut self.clients[i];
                let mut outgoing = Vec::new();
                if let Some(pc) = &mut client.subscriber {
                    while let Some(msg) = pc.poll_write() {
                        outgoing.push((client.addr, msg.message));
                    }
                }
                let publish_addr = client.publish_addr();
                if let Some(p) = &mut client.publisher {
                    while let Some(msg) = p.pc.poll_write() {
                        outgoing.push((publish_addr, msg.message));
                    }
                }
                client.drain(now);
                for (from, data) in outgoing {
                    moved = true;
                    self.core.handle_datagram(now, from, &data);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Hand the core every subscribe answer held back.
    pub fn release_answers(&mut self) {
        for command in std::mem::take(&mut self.held) {
            self.core.handle_command(self.now, command);
        }
        self.pump();
    }

    fn reply(&mut self) -> ReplyTo {
        self.next_reply += 1;
        ReplyTo {
            conn: 0,
            id: self.next_reply,
        }
    }

    fn event(&mut self, e: MediaEvent) {
        if let MediaEvent::SubscribeOffer {
            room,
            user,
            sdp,
            new_connection,
            offer_id,
        } = &e
            && let Some(c) = self
                .clients
                .iter()
                .position(|c| c.room == *room && c.user == *user)
        {
            let mut answer = self.clients[c].answer(self.now, sdp, *new_connection);
            if self.claim_ice_lite {
                answer = claiming_ice_lite(&answer);
            }
            self.events.push(e.clone());
            let reply = self.reply();
            let command = MediaCommand::SubscribeAnswer {
                room: room.clone(),
                user: user.clone(),
                answer,
                offer_id: Some(*offer_id),
                reply,
            };
            if self.hold_answers {
                self.held.push(command);
            } else {
                self.core.handle_command(self.now, command);
            }
            return;
        }
        self.events.push(e);
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

fn id(s: &str) -> Ident {
    Ident::new(s).expect("a valid identifier")
}
