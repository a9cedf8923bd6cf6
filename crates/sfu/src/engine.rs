//! One event loop: its socket of the shared port, the rooms pinned to it, every peer connection
//! in them, and the routing between them. It owns its state alone; other threads reach it only
//! through [`LoopHandle`] (a channel and a poll waker).
//!
//! # How each rtc peer connection is driven
//! rtc's `RTCPeerConnection` is sans-IO, and this loop calls it in a fixed order:
//! 1. input: `handle_read` with each datagram that belongs to it (demultiplexed by remote
//!    address, or by the server ufrag of a STUN check), tagged with the advertised local address;
//!    `handle_timeout` when `poll_timeout` is due **and** at least every [`TICK`], because the
//!    interceptors' own intervals (reports, NACK generation, TWCC) are not reported by
//!    `poll_timeout`;
//! 2. drain, right after any input: `poll_event` (connection state, tracks opening) and
//!    `poll_read` (RTP to forward, RTCP the feedback interceptor let through) until both are
//!    empty; forwarding writes into *other* connections (`write_rtp`) and marks them dirty;
//! 3. output, once per turn of the loop: `poll_write` on every dirty connection, sent on the
//!    connection's connected socket or the shared one;
//! 4. then wait in `mio::Poll::poll` until the earliest `poll_timeout`, a datagram, or a command.
//!
//! Signaling commands (`SfuCommand`) are applied between turns, in the order they were sent.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use miclink_protocol::Ident;
use rand::RngExt;
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_twcc_sender_only, register_default_interceptors,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    TYPE_RTCP_FB_NACK,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::sync::{Arc, RwLock};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::feedback::{RtcpToApplication, sfu_feedback};
use crate::seq::SeqExtender;
use crate::{PcKind, PeerStats, SfuCommand, SfuError, SfuEvent, SfuStats, keyframe, stun};

pub(crate) enum Msg {
    Command(SfuCommand),
    Stats(oneshot::Sender<SfuStats>),
    PeerStats(oneshot::Sender<Vec<PeerStats>>),
    /// A datagram another loop's socket received for a peer connection this loop owns: only
    /// the first packets of a flow, before this loop's connected socket takes it over.
    Handover {
        data: Vec<u8>,
        from: SocketAddr,
    },
}

/// How other threads reach one loop.
pub(crate) struct LoopHandle {
    pub(crate) tx: std::sync::mpsc::Sender<Msg>,
    pub(crate) waker: Arc<Waker>,
}

impl LoopHandle {
    pub(crate) fn send(&self, msg: Msg) {
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// What every loop shares: the way to each other loop, and which loop owns which remote address.
pub(crate) struct Shared {
    pub(crate) loops: Vec<LoopHandle>,
    pub(crate) owners: RwLock<HashMap<SocketAddr, usize>>,
}

const SHARED_SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// Tokens from here on are connected sockets.
const FIRST_CONNECTED: usize = 2;

/// Packets of one published video track kept for retransmission, shared by every subscriber.
const HISTORY: usize = 1024;

/// The shortest interval between two keyframe requests to one publisher track.
const PLI_INTERVAL: Duration = Duration::from_millis(300);
/// Every connection is ticked this often: rtc's interceptors (RTCP reports, NACK generation,
/// TWCC feedback) run on their own intervals that `poll_timeout` does not report.
const TICK: Duration = Duration::from_millis(50);

type PeerId = u64;

/// How keyframes of a track's codec are recognised.
#[derive(Clone, Copy)]
enum KeyframeDetector {
    Vp8,
    H264,
    /// Audio, or a codec we cannot parse: every packet may start a subscriber's stream.
    Any,
}

/// A track arriving on a publish connection.
struct InTrack {
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    keyframes: KeyframeDetector,
    receiver: RTCRtpReceiverId,
    ssrc: u32,
    last_pli: Option<Instant>,
    /// The header extensions worth passing on (see [`FORWARDED_EXTENSIONS`]) with the ids this
    /// publisher negotiated for them.
    extensions: ForwardedExtensions,
    /// Extends the publisher's sequence numbers; nothing downstream compares raw ones.
    seqs: SeqExtender,
    /// The last [`HISTORY`] packets by extended sequence number (video only): the one
    /// retransmission buffer of this track, whatever the number of subscribers.
    history: Vec<Option<(u64, rtc::rtp::Packet)>>,
}

/// One publisher's track as sent on one subscribe connection.
struct OutTrack {
    sender: RTCRtpSenderId,
    ssrc: u32,
    mime: String,
    /// The payload type this subscriber negotiated for the codec, found on first use.
    payload_type: Option<u8>,
    /// Added (wrapping) to the publisher's extended sequence numbers; set at the first forwarded
    /// packet so each subscriber's stream is continuous from where it started.
    seq_offset: Option<u64>,
    /// The publisher's extended sequence number of that first packet: anything older (a late
    /// retransmission from the publisher) belongs to before this subscriber's start.
    start_seq: u64,
    next_seq: u16,
    /// Video waits for a keyframe before the first packet goes out.
    waiting_keyframe: bool,
    /// Part of a subscribe offer already sent.
    offered: bool,
    /// Part of an offer the subscriber has answered. Nothing is forwarded before: a browser
    /// that gets packets of an SSRC its description does not list yet binds them by payload
    /// type to another track with the same codec (with no MID extension to say otherwise), and
    /// keeps them there after the answer, so the track would stay silent.
    negotiated: bool,
    /// The publisher's forwarded extensions (its ids), shared with its track.
    publisher_extensions: ForwardedExtensions,
    /// Publisher extension id -> this subscriber's id, for the extensions both negotiated;
    /// found with the payload type.
    extension_ids: Vec<(u8, u8)>,
}

/// A publisher's forwarded header extensions: (its id, URI).
type ForwardedExtensions = Arc<[(u8, &'static str)]>;

const ICE_DISCONNECTED_TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));
const ICE_FAILED_TIMEOUT: Option<Duration> = Some(Duration::from_secs(60));

/// Header extensions carried from publisher to subscribers, renumbered to each subscriber's ids.
/// Every other extension describes one leg (transport-wide sequence numbers, send times, mid
/// and rid) and is the sending stack's to write; an id the subscriber did not negotiate would
/// make the packet invalid for it.
const FORWARDED_EXTENSIONS: [&str; 2] = [
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "urn:3gpp:video-orientation",
];

/// Rewrite `header`'s extensions from the publisher's `original` ones, keeping those in `ids`
/// (publisher id -> subscriber id).
fn renumber_extensions(
    header: &mut rtc::rtp::header::Header,
    original: &[rtc::rtp::header::Extension],
    ids: &[(u8, u8)],
) {
    header.extension = false;
    header.extension_profile = 0;
    header.extensions.clear();
    header.extensions_padding = 0;
    for &(from, to) in ids {
        let Some(ext) = original.iter().find(|e| e.id == from) else {
            continue;
        };
        if !header.extension {
            header.extension = true;
            header.extension_profile = if to <= 14 && ext.payload.len() <= 16 {
                rtc::rtp::header::EXTENSION_PROFILE_ONE_BYTE
            } else {
                rtc::rtp::header::EXTENSION_PROFILE_TWO_BYTE
            };
        }
        // An extension that does not fit the profile chosen by the first one is dropped.
        let _ = header.set_extension(to, ext.payload.clone());
    }
}

struct Peer {
    pc: RTCPeerConnection,
    room: Ident,
    user: Ident,
    kind: PcKind,
    ufrag: String,
    addrs: Vec<SocketAddr>,
    /// Connected sockets this peer's remote addresses arrive on.
    sockets: Vec<Token>,
    connected: bool,
    /// Publish connections: tracks by track id.
    tracks: HashMap<String, InTrack>,
    /// Subscribe connections: (publisher, kind) -> sender.
    outs: HashMap<(Ident, RtpCodecKind), OutTrack>,
    /// Subscribe connections: an offer is out and unanswered.
    offer_pending: bool,
    /// Subscribe connections: the track set changed while an offer was out.
    renegotiate: bool,
    /// Subscribe connections before their first answer: the client's first connectivity checks
    /// race its answer (UDP beats the WebSocket and the hub) and rtc refuses a check it cannot
    /// yet attribute, so they are kept (a few) and fed again once the answer is in, instead of
    /// leaving the client to its retransmission schedule.
    early: Option<Vec<(Vec<u8>, SocketAddr)>>,
    counters: PeerStats,
}

/// Datagrams kept per subscribe connection while its first answer is awaited.
const EARLY_DATAGRAMS: usize = 16;

#[derive(Default)]
struct RoomMedia {
    /// Who the seats allow to publish, and what.
    allowed: HashMap<Ident, (bool, bool)>,
    members: HashSet<Ident>,
    publish: HashMap<Ident, PeerId>,
    subscribe: HashMap<Ident, PeerId>,
}

struct Engine {
    /// This loop's index among all loops; it leads every ufrag the loop hands out.
    index: usize,
    poll: Poll,
    /// The loop's socket on the shared port (`SO_REUSEPORT`): new flows, as the kernel spreads them.
    socket: UdpSocket,
    bound: SocketAddr,
    /// Sockets connected to one remote address each, on the same port: the kernel delivers a
    /// connected flow to its socket, so after the first packets every datagram of a peer
    /// connection arrives at the loop that owns it.
    connected: HashMap<Token, (UdpSocket, SocketAddr, PeerId)>,
    connected_by_addr: HashMap<SocketAddr, Token>,
    next_token: usize,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    public_ips: Vec<IpAddr>,
    events: mpsc::UnboundedSender<SfuEvent>,
    peers: HashMap<PeerId, Peer>,
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    rooms: HashMap<Ident, RoomMedia>,
    next_peer: PeerId,
    /// Peers with output to flush after the current step.
    dirty: HashSet<PeerId>,
    /// The earliest `poll_timeout` known: folded in from the peers each turn touched, and
    /// recomputed over all peers at every full tick, so a datagram never scans every peer.
    soonest: Instant,
    stats: SfuStats,
}

/// Bind one socket of the shared port's `SO_REUSEPORT` group.
pub(crate) fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if let Err(e) = socket.set_recv_buffer_size(crate::SOCKET_BUFFER) {
        warn!(error = %e, "could not enlarge a media socket's receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(crate::SOCKET_BUFFER) {
        warn!(error = %e, "could not enlarge a media socket's send buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// One event loop: its poll, its socket, its command queue.
pub(crate) struct LoopParts {
    pub(crate) index: usize,
    pub(crate) poll: Poll,
    pub(crate) socket: std::net::UdpSocket,
    pub(crate) commands: std::sync::mpsc::Receiver<Msg>,
}

pub(crate) fn run(
    parts: LoopParts,
    shared: Arc<Shared>,
    public_ips: Vec<IpAddr>,
    events: mpsc::UnboundedSender<SfuEvent>,
) {
    let LoopParts {
        index,
        poll,
        socket,
        commands,
    } = parts;
    let bound = socket
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    let mut socket = UdpSocket::from_std(socket);
    if let Err(e) = poll
        .registry()
        .register(&mut socket, SHARED_SOCKET, Interest::READABLE)
    {
        warn!(error = %e, "media loop could not register its socket");
        return;
    }
    // ICE matches checks to the host candidate we advertised, so that is the local address
    // every datagram is tagged with, whatever wildcard the socket is bound to.
    let local_addr = SocketAddr::new(
        public_ips.first().copied().unwrap_or(bound.ip()),
        bound.port(),
    );
    if index == 0 {
        info!(%bound, advertised = ?public_ips, loops = shared.loops.len(), "media plane listening");
    }
    let engine = Engine {
        index,
        poll,
        socket,
        bound,
        connected: HashMap::new(),
        connected_by_addr: HashMap::new(),
        next_token: FIRST_CONNECTED,
        shared,
        local_addr,
        public_ips,
        events,
        peers: HashMap::new(),
        by_ufrag: HashMap::new(),
        by_addr: HashMap::new(),
        rooms: HashMap::new(),
        next_peer: 1,
        dirty: HashSet::new(),
        soonest: Instant::now(),
        stats: SfuStats::default(),
    };
    engine.run(commands);
}

impl Engine {
    fn run(mut self, commands: std::sync::mpsc::Receiver<Msg>) {
        let mut buf = vec![0u8; 2048];
        let mut events = Events::with_capacity(256);
        let mut last_tick = Instant::now();
        loop {
            let wake = self.soonest.min(last_tick + TICK);
            let timeout = wake.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                warn!(error = %e, "media loop poll failed");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => loop {
                        match commands.try_recv() {
                            Ok(msg) => self.message(msg),
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                            // Every handle is gone: the server is shutting down.
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                        }
                    },
                    SHARED_SOCKET => {
                        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
                            self.datagram(&buf[..n], from);
                        }
                    }
                    token => {
                        while let Some((socket, from, _)) = self.connected.get(&token) {
                            let from = *from;
                            match socket.recv(&mut buf) {
                                Ok(n) => self.datagram(&buf[..n], from),
                                Err(_) => break,
                            }
                        }
                    }
                }
            }
            let now = Instant::now();
            let tick = now.duration_since(last_tick) >= TICK;
            if tick {
                last_tick = now;
            }
            if tick || now >= self.soonest {
                self.run_timers(now, tick);
            }
            self.flush();
        }
    }

    /// NACKs the publish connections' generators sent: rtc counts them on the way out, per
    /// inbound stream.
    fn nacks_to_publishers(&mut self) -> u64 {
        let now = Instant::now();
        self.peers
            .values_mut()
            .filter(|p| p.kind == PcKind::Publish)
            .map(|p| rtc_losses(&mut p.pc, now, PcKind::Publish).1)
            .sum()
    }

    fn message(&mut self, msg: Msg) {
        match msg {
            Msg::Command(c) => self.command(c),
            Msg::Stats(tx) => {
                let _ = tx.send(SfuStats {
                    peers: self.peers.len(),
                    nacks_to_publishers: self.nacks_to_publishers(),
                    ..self.stats
                });
            }
            Msg::PeerStats(tx) => {
                let now = Instant::now();
                let all = self
                    .peers
                    .values_mut()
                    .map(|p| {
                        let mut c = p.counters.clone();
                        let (lost, nacks_sent) = rtc_losses(&mut p.pc, now, p.kind);
                        c.packets_lost = lost;
                        if p.kind == PcKind::Publish {
                            c.nacks = nacks_sent;
                        }
                        c
                    })
                    .collect();
                let _ = tx.send(all);
            }
            Msg::Handover { data, from } => {
                self.stats.handed_over += 1;
                self.datagram(&data, from);
            }
        }
    }

    /// Fire every due peer (every peer on a full `tick`) and recompute the earliest deadline of
    /// the rest; the peers fired here fold theirs in when they are flushed.
    fn run_timers(&mut self, now: Instant, tick: bool) {
        let mut soonest = now + TICK;
        let mut due = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            match p.pc.poll_timeout() {
                Some(t) if tick || t <= now => due.push(*id),
                Some(t) => soonest = soonest.min(t),
                None if tick => due.push(*id),
                None => {}
            }
        }
        self.soonest = soonest;
        for id in due {
            if let Some(p) = self.peers.get_mut(&id) {
                let _ = p.pc.handle_timeout(now);
            }
            self.process(id);
        }
    }

    // ----- input ---------------------------------------------------------------------------

    fn datagram(&mut self, data: &[u8], from: SocketAddr) {
        self.stats.datagrams_in += 1;
        let id = match self.by_addr.get(&from) {
            Some(&id) => id,
            None => {
                // A new address must introduce itself with a STUN check naming a live ufrag,
                // whose first two characters name the loop that owns the connection.
                let ufrag = stun::server_ufrag(data);
                let owner = ufrag
                    .and_then(|u| u.get(..2))
                    .and_then(|i| usize::from_str_radix(i, 16).ok())
                    .filter(|i| *i < self.shared.loops.len());
                let owner = owner.or_else(|| {
                    // Not STUN: a flow another loop owns whose packets the kernel still sends
                    // here (before that loop's connected socket existed).
                    self.shared.owners.read().ok()?.get(&from).copied()
                });
                match owner {
                    Some(owner) if owner != self.index => {
                        self.shared.loops[owner].send(Msg::Handover {
                            data: data.to_vec(),
                            from,
                        });
                        return;
                    }
                    _ => {}
                }
                let Some(&id) = ufrag.and_then(|u| self.by_ufrag.get(u)) else {
                    self.stats.datagrams_dropped += 1;
                    return;
                };
                id
            }
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        if let Some(early) = &mut peer.early {
            if early.len() < EARLY_DATAGRAMS {
                early.push((data.to_vec(), from));
            } else {
                self.stats.datagrams_dropped += 1;
            }
            return;
        }
        let msg = TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = peer.pc.handle_read(msg) {
            debug!(error = %e, %from, "datagram refused by its peer connection");
            self.stats.datagrams_dropped += 1;
            return;
        }
        peer.counters.datagrams_in += 1;
        peer.counters.bytes_in += data.len() as u64;
        if !peer.addrs.contains(&from) && stun::is_stun(data) {
            peer.addrs.push(from);
            self.by_addr.entry(from).or_insert(id);
            self.connect(id, from);
        }
        self.process(id);
    }

    /// Drain one peer's events and media after it was fed.
    fn process(&mut self, id: PeerId) {
        self.dirty.insert(id);
        loop {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            if let Some(event) = peer.pc.poll_event() {
                self.peer_event(id, event);
                continue;
            }
            if let Some(TaggedRTCMessage { message, .. }) = peer.pc.poll_read() {
                match message {
                    RTCMessage::RtpPacket(track_id, packet) => self.forward(id, &track_id, packet),
                    RTCMessage::RtcpPacket(_, packets) => self.rtcp(id, packets),
                    _ => {}
                }
                continue;
            }
            return;
        }
    }

    fn peer_event(&mut self, id: PeerId, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(peer) = self.peers.get_mut(&id) else {
                    return;
                };
                debug!(room = %peer.room, user = %peer.user, kind = ?peer.kind, %state, "peer connection");
                match state {
                    RTCPeerConnectionState::Connected => peer.connected = true,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        self.remove_peer(id);
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                self.track_opened(id, init.track_id, init.receiver_id);
            }
            _ => {}
        }
    }

    fn track_opened(&mut self, id: PeerId, track_id: String, receiver: RTCRtpReceiverId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.kind != PcKind::Publish {
            return;
        }
        let Some(mut r) = peer.pc.rtp_receiver(receiver) else {
            return;
        };
        let kind = r.track().kind();
        let ssrc = r.track().ssrcs().next().unwrap_or(0);
        let parameters = r.get_parameters().rtp_parameters.clone();
        let Some(codec) = parameters.codecs.first().map(|c| c.rtp_codec.clone()) else {
            return;
        };
        let extensions: ForwardedExtensions = parameters
            .header_extensions
            .iter()
            .filter_map(|h| {
                let uri = FORWARDED_EXTENSIONS.iter().find(|u| **u == h.uri)?;
                Some((u8::try_from(h.id).ok()?, *uri))
            })
            .collect();
        let (room, user) = (peer.room.clone(), peer.user.clone());
        info!(%room, %user, ?kind, mime = %codec.mime_type, "track published");
        let mime = codec.mime_type.to_ascii_lowercase();
        let keyframes = match kind {
            RtpCodecKind::Video if mime.ends_with("/vp8") => KeyframeDetector::Vp8,
            RtpCodecKind::Video if mime.ends_with("/h264") => KeyframeDetector::H264,
            _ => KeyframeDetector::Any,
        };
        peer.tracks.insert(
            track_id,
            InTrack {
                kind,
                codec: codec.clone(),
                keyframes,
                receiver,
                ssrc,
                last_pli: None,
                extensions: extensions.clone(),
                seqs: SeqExtender::default(),
                history: if kind == RtpCodecKind::Video {
                    vec![None; HISTORY]
                } else {
                    Vec::new()
                },
            },
        );
        // Every other member receives it.
        let members: Vec<Ident> = self
            .rooms
            .get(&room)
            .map(|r| r.members.iter().filter(|m| **m != user).cloned().collect())
            .unwrap_or_default();
        for member in members {
            self.ensure_subscribe(&room, &member);
            if let Some(sid) = self
                .rooms
                .get(&room)
                .and_then(|r| r.subscribe.get(&member))
                .copied()
            {
                self.add_out_track(sid, &user, kind, &codec, &extensions);
                self.negotiate(sid);
            }
        }
    }

    // ----- forwarding ------------------------------------------------------------------------

    fn forward(&mut self, from: PeerId, track_id: &str, mut packet: rtc::rtp::Packet) {
        self.stats.rtp_in += 1;
        let Some(publisher) = self.peers.get_mut(&from) else {
            return;
        };
        let (room, user) = (publisher.room.clone(), publisher.user.clone());
        let Some(track) = publisher.tracks.get_mut(track_id) else {
            return;
        };
        let kind = track.kind;
        let allowed = self
            .rooms
            .get(&room)
            .and_then(|r| r.allowed.get(&user))
            .is_some_and(|(audio, video)| match kind {
                RtpCodecKind::Audio => *audio,
                RtpCodecKind::Video => *video,
                _ => false,
            });
        if !allowed {
            // Seats rule media: nobody unseated is forwarded, whatever keeps arriving.
            self.stats.rtp_dropped_not_allowed += 1;
            return;
        }
        let is_key = match track.keyframes {
            KeyframeDetector::Vp8 => keyframe::vp8(&packet.payload),
            KeyframeDetector::H264 => keyframe::h264(&packet.payload),
            KeyframeDetector::Any => true,
        };
        // The publisher's extensions, in its id space; each subscriber gets its own renumbering.
        let original_extensions = std::mem::take(&mut packet.header.extensions);
        let had_extensions = packet.header.extension;
        packet.header.extension = false;
        packet.header.extension_profile = 0;
        packet.header.extensions_padding = 0;
        let ext_seq = track.seqs.extend(packet.header.sequence_number);
        if !track.history.is_empty() {
            let slot = (ext_seq % HISTORY as u64) as usize;
            track.history[slot] = Some((ext_seq, packet.clone()));
        }
        let (receiver, media_ssrc) = (track.receiver, track.ssrc);
        publisher.counters.rtp_in += 1;
        let Some(room_media) = self.rooms.get(&room) else {
            return;
        };
        let now = Instant::now();
        let mut want_keyframe = false;
        let ts = packet.header.timestamp;
        let key = (user, kind);
        // Disjoint borrows of the engine's fields: the room's subscriber list is read while
        // subscriber connections are written, with no list copied per packet.
        for (member, &sid) in &room_media.subscribe {
            if *member == key.0 {
                continue;
            }
            let Some(sub) = self.peers.get_mut(&sid) else {
                continue;
            };
            if !sub.connected {
                continue;
            }
            let Some(out) = sub.outs.get_mut(&key) else {
                continue;
            };
            if !out.negotiated {
                continue;
            }
            if out.waiting_keyframe {
                if !is_key {
                    want_keyframe = true;
                    continue;
                }
                out.waiting_keyframe = false;
            }
            let pt = match out.payload_type {
                Some(pt) => pt,
                None => {
                    let Some(mut sender) = sub.pc.rtp_sender(out.sender) else {
                        continue;
                    };
                    let parameters = sender.get_parameters();
                    let Some(pt) = parameters
                        .rtp_parameters
                        .codecs
                        .iter()
                        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&out.mime))
                        .map(|c| c.payload_type)
                    else {
                        continue;
                    };
                    out.extension_ids = out
                        .publisher_extensions
                        .iter()
                        .filter_map(|&(from, uri)| {
                            let to = parameters
                                .rtp_parameters
                                .header_extensions
                                .iter()
                                .find(|h| h.uri == uri)?;
                            Some((from, u8::try_from(to.id).ok()?))
                        })
                        .collect();
                    out.payload_type = Some(pt);
                    pt
                }
            };
            let offset = match out.seq_offset {
                Some(offset) => {
                    if ext_seq < out.start_seq {
                        continue;
                    }
                    offset
                }
                None => {
                    out.start_seq = ext_seq;
                    *out.seq_offset
                        .insert(u64::from(out.next_seq).wrapping_sub(ext_seq))
                }
            };
            let out_seq = ext_seq.wrapping_add(offset) as u16;
            out.next_seq = out_seq.wrapping_add(1);
            packet.header.ssrc = out.ssrc;
            packet.header.payload_type = pt;
            packet.header.sequence_number = out_seq;
            packet.header.timestamp = ts;
            if had_extensions {
                renumber_extensions(&mut packet.header, &original_extensions, &out.extension_ids);
            }
            let sender_id = out.sender;
            if let Some(mut sender) = sub.pc.rtp_sender(sender_id)
                && sender.write_rtp(now, packet.clone()).is_ok()
            {
                self.stats.rtp_out += 1;
                sub.counters.rtp_out += 1;
                self.dirty.insert(sid);
            }
        }
        if want_keyframe {
            self.request_keyframe(from, track_id, receiver, media_ssrc, now);
        }
    }

    fn request_keyframe(
        &mut self,
        from: PeerId,
        track_id: &str,
        receiver: RTCRtpReceiverId,
        media_ssrc: u32,
        now: Instant,
    ) {
        let Some(publisher) = self.peers.get_mut(&from) else {
            return;
        };
        let Some(track) = publisher.tracks.get_mut(track_id) else {
            return;
        };
        if track
            .last_pli
            .is_some_and(|t| now.duration_since(t) < PLI_INTERVAL)
        {
            return;
        }
        track.last_pli = Some(now);
        if let Some(mut r) = publisher.pc.rtp_receiver(receiver) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            if r.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                self.stats.plis_sent += 1;
                publisher.counters.plis += 1;
                self.dirty.insert(from);
            }
        }
    }

    /// RTCP from a peer. Subscribers' NACKs are answered from the published track's buffer and
    /// their keyframe requests go to the publisher; nothing else is passed upstream.
    fn rtcp(&mut self, id: PeerId, packets: Vec<Box<dyn rtc::rtcp::Packet>>) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        if peer.kind != PcKind::Subscribe {
            return;
        }
        for packet in packets {
            let any = packet.as_any();
            if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.stats.nacks_received += 1;
                if let Some(p) = self.peers.get_mut(&id) {
                    p.counters.nacks += 1;
                }
                let lost: Vec<u16> = nack.nacks.iter().flat_map(|p| p.packet_list()).collect();
                self.retransmit(id, nack.media_ssrc, &lost);
            } else if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                self.keyframe_for_subscriber(id, pli.media_ssrc);
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                self.keyframe_for_subscriber(id, fir.media_ssrc);
            } else if any.downcast_ref::<TransportLayerCc>().is_some() {
                // Read for the bandwidth estimator to come; counted so it can be seen working.
                self.stats.twcc_feedback += 1;
            }
        }
    }

    /// The publisher track a subscriber's outgoing SSRC carries: (publish peer, track id).
    fn source_of(&self, sid: PeerId, ssrc: u32) -> Option<(PeerId, String, Ident, RtpCodecKind)> {
        let sub = self.peers.get(&sid)?;
        let ((publisher, kind), _) = sub.outs.iter().find(|(_, o)| o.ssrc == ssrc)?;
        let pid = *self.rooms.get(&sub.room)?.publish.get(publisher)?;
        let track_id = self
            .peers
            .get(&pid)?
            .tracks
            .iter()
            .find(|(_, t)| t.kind == *kind)
            .map(|(tid, _)| tid.clone())?;
        Some((pid, track_id, publisher.clone(), *kind))
    }

    fn keyframe_for_subscriber(&mut self, sid: PeerId, ssrc: u32) {
        let Some((pid, track_id, _, _)) = self.source_of(sid, ssrc) else {
            return;
        };
        let Some((receiver, media_ssrc)) = self
            .peers
            .get(&pid)
            .and_then(|p| p.tracks.get(&track_id))
            .map(|t| (t.receiver, t.ssrc))
        else {
            return;
        };
        self.request_keyframe(pid, &track_id, receiver, media_ssrc, Instant::now());
    }

    fn retransmit(&mut self, sid: PeerId, ssrc: u32, lost: &[u16]) {
        let Some((pid, track_id, publisher, kind)) = self.source_of(sid, ssrc) else {
            return;
        };
        let now = Instant::now();
        for &seq in lost {
            let Some(sub) = self.peers.get(&sid) else {
                return;
            };
            let Some(out) = sub.outs.get(&(publisher.clone(), kind)) else {
                return;
            };
            let (Some(offset), Some(pt)) = (out.seq_offset, out.payload_type) else {
                return;
            };
            let start = out.start_seq;
            // The subscriber names its own 16-bit numbers: back to the publisher's, then
            // extended next to the newest packet of the track.
            let original = seq.wrapping_sub(offset as u16);
            let stored = self
                .peers
                .get(&pid)
                .and_then(|p| p.tracks.get(&track_id))
                .and_then(|t| {
                    let ext = t.seqs.peek(original).filter(|e| *e >= start)?;
                    let (at, packet) = t.history.get((ext % HISTORY as u64) as usize)?.as_ref()?;
                    (*at == ext).then(|| packet.clone())
                });
            let Some(mut packet) = stored else {
                self.stats.retransmit_misses += 1;
                continue;
            };
            let Some(sub) = self.peers.get_mut(&sid) else {
                return;
            };
            let Some(out) = sub.outs.get(&(publisher.clone(), kind)) else {
                return;
            };
            packet.header.ssrc = out.ssrc;
            packet.header.payload_type = pt;
            packet.header.sequence_number = seq;
            let sender = out.sender;
            if let Some(mut s) = sub.pc.rtp_sender(sender)
                && s.write_rtp(now, packet).is_ok()
            {
                self.stats.retransmitted += 1;
                sub.counters.retransmitted += 1;
                self.dirty.insert(sid);
            }
        }
    }

    // ----- output ----------------------------------------------------------------------------

    /// Open a socket connected to `remote` on the shared port, so the kernel brings that flow
    /// to this loop from now on, and say so to the other loops for packets already under way.
    fn connect(&mut self, id: PeerId, remote: SocketAddr) {
        if let Ok(mut owners) = self.shared.owners.write() {
            owners.insert(remote, self.index);
        }
        if self.connected_by_addr.contains_key(&remote) {
            return;
        }
        let socket = bind_reuseport(self.bound).and_then(|s| {
            s.connect(remote)?;
            Ok(s)
        });
        let mut socket = match socket {
            Ok(s) => UdpSocket::from_std(s),
            Err(e) => {
                // The shared socket still works; other loops hand this flow over.
                debug!(error = %e, %remote, "no connected socket");
                return;
            }
        };
        let token = Token(self.next_token);
        self.next_token += 1;
        if self
            .poll
            .registry()
            .register(&mut socket, token, Interest::READABLE)
            .is_err()
        {
            return;
        }
        self.connected.insert(token, (socket, remote, id));
        self.connected_by_addr.insert(remote, token);
        if let Some(p) = self.peers.get_mut(&id) {
            p.sockets.push(token);
        }
    }

    fn flush(&mut self) {
        // Taken and put back so the set keeps its allocation from turn to turn.
        let mut dirty = std::mem::take(&mut self.dirty);
        for id in dirty.drain() {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            while let Some(msg) = peer.pc.poll_write() {
                peer.counters.datagrams_out += 1;
                peer.counters.bytes_out += msg.message.len() as u64;
                let to = msg.transport.peer_addr;
                let sent = match self
                    .connected_by_addr
                    .get(&to)
                    .and_then(|t| self.connected.get(t))
                {
                    Some((socket, _, _)) => socket.send(&msg.message),
                    None => self.socket.send_to(&msg.message, to),
                };
                // UDP: a full send buffer drops the datagram, as the network would.
                if let Err(e) = sent {
                    self.stats.send_errors += 1;
                    debug!(error = %e, %to, "udp send error");
                }
            }
            if let Some(t) = peer.pc.poll_timeout() {
                self.soonest = self.soonest.min(t);
            }
        }
        self.dirty = dirty;
    }

    // ----- commands --------------------------------------------------------------------------

    fn command(&mut self, command: SfuCommand) {
        match command {
            SfuCommand::Allow {
                room,
                user,
                audio,
                video,
            } => {
                self.rooms
                    .entry(room)
                    .or_default()
                    .allowed
                    .insert(user, (audio, video));
            }
            SfuCommand::Revoke { room, user } => self.revoke(&room, &user),
            SfuCommand::Join { room, user } => {
                self.rooms
                    .entry(room.clone())
                    .or_default()
                    .members
                    .insert(user.clone());
                self.ensure_subscribe(&room, &user);
            }
            SfuCommand::Leave { room, user } => {
                self.revoke(&room, &user);
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.members.remove(&user);
                    if let Some(sid) = r.subscribe.remove(&user) {
                        self.close_peer(sid);
                    }
                }
            }
            SfuCommand::CloseRoom { room } => {
                if let Some(r) = self.rooms.remove(&room) {
                    for id in r.publish.into_values().chain(r.subscribe.into_values()) {
                        self.close_peer(id);
                    }
                }
            }
            SfuCommand::Publish {
                room,
                user,
                offer,
                reply,
            } => {
                let result = self.publish(&room, &user, offer);
                let _ = self.events.send(SfuEvent::PublishAnswer { reply, result });
            }
            SfuCommand::SubscribeAnswer {
                room,
                user,
                answer,
                reply,
            } => {
                let result = self.subscribe_answer(&room, &user, answer);
                let _ = self
                    .events
                    .send(SfuEvent::SubscribeAnswered { reply, result });
            }
            SfuCommand::Candidate {
                room,
                user,
                pc,
                candidate,
            } => {
                let Some(r) = self.rooms.get(&room) else {
                    return;
                };
                let id = match pc {
                    PcKind::Publish => r.publish.get(&user),
                    PcKind::Subscribe => r.subscribe.get(&user),
                };
                if let Some(p) = id.copied().and_then(|id| self.peers.get_mut(&id)) {
                    let init = RTCIceCandidateInit {
                        candidate,
                        ..Default::default()
                    };
                    if let Err(e) = p.pc.add_remote_candidate(init) {
                        debug!(error = %e, "remote candidate refused");
                    }
                }
            }
        }
    }

    fn revoke(&mut self, room: &Ident, user: &Ident) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.allowed.remove(user);
        let publish = r.publish.remove(user);
        let subs: Vec<PeerId> = r.subscribe.values().copied().collect();
        if let Some(id) = publish {
            self.close_peer(id);
        }
        // Their tracks leave every subscribe connection.
        for sid in subs {
            let Some(sub) = self.peers.get_mut(&sid) else {
                continue;
            };
            let gone: Vec<(Ident, RtpCodecKind)> = sub
                .outs
                .keys()
                .filter(|(publisher, _)| publisher == user)
                .cloned()
                .collect();
            if gone.is_empty() {
                continue;
            }
            for key in gone {
                if let Some(out) = sub.outs.remove(&key) {
                    let _ = sub.pc.remove_track(out.sender);
                }
            }
            self.negotiate(sid);
        }
    }

    fn publish(&mut self, room: &Ident, user: &Ident, offer: String) -> Result<String, SfuError> {
        let allowed = self
            .rooms
            .get(room)
            .is_some_and(|r| r.allowed.contains_key(user));
        if !allowed {
            return Err(SfuError::NotAllowed);
        }
        let offer =
            RTCSessionDescription::offer(offer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let id = self
            .new_peer(room, user, PcKind::Publish)
            .map_err(SfuError::BadSdp)?;
        let peer = self.peers.get_mut(&id).expect("just created");
        let answer = (|| {
            peer.pc.set_remote_description(Instant::now(), offer)?;
            let answer = peer.pc.create_answer(None)?;
            peer.pc
                .set_local_description(Instant::now(), answer.clone())?;
            Ok::<_, rtc::shared::error::Error>(answer.sdp)
        })();
        match answer {
            Ok(sdp) => {
                let r = self.rooms.entry(room.clone()).or_default();
                if let Some(old) = r.publish.insert(user.clone(), id) {
                    self.close_peer(old);
                }
                self.process(id);
                Ok(sdp)
            }
            Err(e) => {
                self.close_peer(id);
                Err(SfuError::BadSdp(e.to_string()))
            }
        }
    }

    fn subscribe_answer(
        &mut self,
        room: &Ident,
        user: &Ident,
        answer: String,
    ) -> Result<(), SfuError> {
        let id = self
            .rooms
            .get(room)
            .and_then(|r| r.subscribe.get(user))
            .copied()
            .ok_or(SfuError::NoOffer)?;
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoOffer)?;
        if !peer.offer_pending {
            return Err(SfuError::NoOffer);
        }
        let answer =
            RTCSessionDescription::answer(answer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        peer.pc
            .set_remote_description(Instant::now(), answer)
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        peer.offer_pending = false;
        let early = peer.early.take();
        // Payload types may have changed with the new answer; tracks in the answered offer
        // may now be forwarded.
        for out in peer.outs.values_mut() {
            out.payload_type = None;
            out.negotiated |= out.offered;
        }
        if std::mem::take(&mut peer.renegotiate) {
            self.negotiate(id);
        }
        self.process(id);
        for (data, from) in early.into_iter().flatten() {
            self.datagram(&data, from);
        }
        Ok(())
    }

    /// Give `member` a subscribe connection carrying every track published in the room but
    /// their own, if there is any and they have none yet.
    fn ensure_subscribe(&mut self, room: &Ident, member: &Ident) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        if r.subscribe.contains_key(member) || !r.members.contains(member) {
            return;
        }
        let published: Vec<(Ident, RtpCodecKind, RTCRtpCodec, ForwardedExtensions)> = r
            .publish
            .iter()
            .filter(|(u, _)| *u != member)
            .filter_map(|(u, id)| self.peers.get(id).map(|p| (u, p)))
            .flat_map(|(u, p)| {
                p.tracks
                    .values()
                    .map(move |t| (u.clone(), t.kind, t.codec.clone(), t.extensions.clone()))
            })
            .collect();
        if published.is_empty() {
            return;
        }
        let id = match self.new_peer(room, member, PcKind::Subscribe) {
            Ok(id) => id,
            Err(e) => {
                warn!(error = %e, "could not create a subscribe connection");
                return;
            }
        };
        if let Some(r) = self.rooms.get_mut(room) {
            r.subscribe.insert(member.clone(), id);
        }
        for (publisher, kind, codec, extensions) in published {
            self.add_out_track(id, &publisher, kind, &codec, &extensions);
        }
        self.negotiate(id);
    }

    fn add_out_track(
        &mut self,
        sid: PeerId,
        publisher: &Ident,
        kind: RtpCodecKind,
        codec: &RTCRtpCodec,
        extensions: &ForwardedExtensions,
    ) {
        let Some(sub) = self.peers.get_mut(&sid) else {
            return;
        };
        let key = (publisher.clone(), kind);
        if sub.outs.contains_key(&key) {
            return;
        }
        let ssrc: u32 = rand::rng().random();
        // The msid stream id is the publisher's user id (contract rule 7).
        let track = MediaStreamTrack::new(
            publisher.to_string(),
            format!("{publisher}-{kind}"),
            format!("{publisher} {kind}"),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.clone(),
                ..Default::default()
            }],
        );
        match sub.pc.add_track(track) {
            Ok(sender) => {
                sub.outs.insert(
                    key,
                    OutTrack {
                        sender,
                        ssrc,
                        mime: codec.mime_type.clone(),
                        payload_type: None,
                        seq_offset: None,
                        start_seq: 0,
                        next_seq: rand::rng().random(),
                        waiting_keyframe: kind == RtpCodecKind::Video,
                        publisher_extensions: Arc::clone(extensions),
                        extension_ids: Vec::new(),
                        offered: false,
                        negotiated: false,
                    },
                );
            }
            Err(e) => warn!(error = %e, "could not add a track to a subscribe connection"),
        }
    }

    /// Send `sid` a fresh subscribe offer, or note that one is due once the pending one is
    /// answered.
    fn negotiate(&mut self, sid: PeerId) {
        let Some(sub) = self.peers.get_mut(&sid) else {
            return;
        };
        if sub.offer_pending {
            sub.renegotiate = true;
            return;
        }
        let offer = (|| {
            let offer = sub.pc.create_offer(None)?;
            sub.pc
                .set_local_description(Instant::now(), offer.clone())?;
            Ok::<_, rtc::shared::error::Error>(offer.sdp)
        })();
        match offer {
            Ok(sdp) => {
                sub.offer_pending = true;
                for out in sub.outs.values_mut() {
                    out.offered = true;
                }
                let _ = self.events.send(SfuEvent::SubscribeOffer {
                    room: sub.room.clone(),
                    user: sub.user.clone(),
                    sdp,
                });
                self.dirty.insert(sid);
            }
            Err(e) => warn!(error = %e, "could not create a subscribe offer"),
        }
    }

    // ----- peer lifecycle --------------------------------------------------------------------

    fn new_peer(&mut self, room: &Ident, user: &Ident, kind: PcKind) -> Result<PeerId, String> {
        let ufrag = format!("{:02x}{}", self.index, random_string(14));
        let pwd = random_string(32);
        let mut media = MediaEngine::default();
        media.register_default_codecs().map_err(|e| e.to_string())?;
        let registry = match kind {
            // Receiving: NACK generation toward the publisher, receiver reports, TWCC feedback.
            PcKind::Publish => register_default_interceptors(Registry::new(), &mut media),
            // Sending: NACK and PLI are negotiated but no per-connection responder keeps a copy
            // of every packet; the SFU answers NACKs from the published track's one buffer.
            // Sender reports, and TWCC sequence numbers so subscribers send feedback.
            PcKind::Subscribe => {
                for parameter in ["", "pli"] {
                    media.register_feedback(
                        RTCPFeedback {
                            typ: TYPE_RTCP_FB_NACK.to_owned(),
                            parameter: parameter.to_owned(),
                        },
                        RtpCodecKind::Video,
                    );
                }
                // The responder's slot holds the SFU's hook instead: it lets the subscriber's NACK,
                // PLI, FIR and TWCC feedback through to `Engine::rtcp`.
                let registry =
                    Registry::new().with(Slot::NackResponder, RtcpToApplication::new(sfu_feedback));
                configure_twcc_sender_only(configure_rtcp_reports(registry), &mut media)
            }
        }
        .map_err(|e| e.to_string())?;
        let settings = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), pwd)
            // An ICE-lite side hears only the client's checks, and Chromium checks a stable,
            // receiving connection only every 10 to 25 s (seen in the browser tests), so rtc's
            // 5 s default flapped every subscribe connection to `disconnected` and its 25 s
            // failure timer could close one that was fine. A client that really went away is
            // removed with its signaling session (grace period) long before these expire.
            .with_ice_timeouts(ICE_DISCONNECTED_TIMEOUT, ICE_FAILED_TIMEOUT, None)
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .map_err(|e| e.to_string())?;
        for ip in &self.public_ips {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: "udp".to_owned(),
                    address: ip.to_string(),
                    port: self.local_addr.port(),
                    component: 1,
                    ..Default::default()
                },
                ..Default::default()
            }
            .new_candidate_host()
            .map_err(|e| e.to_string())?;
            let init = RTCIceCandidate::from(&candidate)
                .to_json()
                .map_err(|e| e.to_string())?;
            pc.add_local_candidate(init).map_err(|e| e.to_string())?;
        }
        let id = self.next_peer;
        self.next_peer += 1;
        self.by_ufrag.insert(ufrag.clone(), id);
        self.peers.insert(
            id,
            Peer {
                pc,
                room: room.clone(),
                user: user.clone(),
                kind,
                ufrag,
                addrs: Vec::new(),
                sockets: Vec::new(),
                connected: false,
                tracks: HashMap::new(),
                outs: HashMap::new(),
                offer_pending: false,
                renegotiate: false,
                early: (kind == PcKind::Subscribe).then(Vec::new),
                counters: PeerStats {
                    room: room.clone(),
                    user: user.clone(),
                    kind,
                    ..PeerStats::default()
                },
            },
        );
        Ok(id)
    }

    fn close_peer(&mut self, id: PeerId) {
        if let Some(mut peer) = self.peers.remove(&id) {
            let _ = peer.pc.close();
            // The close alerts still go out before the sockets are gone.
            while let Some(msg) = peer.pc.poll_write() {
                let _ = self.socket.send_to(&msg.message, msg.transport.peer_addr);
            }
            self.by_ufrag.remove(&peer.ufrag);
            for a in &peer.addrs {
                if self.by_addr.get(a) == Some(&id) {
                    self.by_addr.remove(a);
                }
            }
            for token in peer.sockets {
                if let Some((mut socket, remote, _)) = self.connected.remove(&token) {
                    let _ = self.poll.registry().deregister(&mut socket);
                    self.connected_by_addr.remove(&remote);
                    if let Ok(mut owners) = self.shared.owners.write() {
                        owners.remove(&remote);
                    }
                }
            }
        }
    }

    /// A peer connection failed or closed on its own: forget it and where it was referenced.
    fn remove_peer(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let (room, user, kind) = (peer.room.clone(), peer.user.clone(), peer.kind);
        if let Some(r) = self.rooms.get_mut(&room) {
            let map = match kind {
                PcKind::Publish => &mut r.publish,
                PcKind::Subscribe => &mut r.subscribe,
            };
            if map.get(&user) == Some(&id) {
                map.remove(&user);
            }
        }
        self.close_peer(id);
    }
}

/// Packets lost on a connection's leg and NACKs it sent, from rtc's statistics (read when asked,
/// never on the packet path). Publish connections count their own receive side; subscribe
/// connections what the subscriber's receiver reports say.
fn rtc_losses(pc: &mut RTCPeerConnection, now: Instant, kind: PcKind) -> (u64, u64) {
    use rtc::statistics::report::RTCStatsReportEntry;
    let (mut lost, mut nacks) = (0u64, 0u64);
    for entry in pc
        .get_stats(now, rtc::statistics::StatsSelector::None)
        .iter()
    {
        match (kind, entry) {
            (PcKind::Publish, RTCStatsReportEntry::InboundRtp(s)) => {
                lost += s.received_rtp_stream_stats.packets_lost.max(0) as u64;
                nacks += u64::from(s.nack_count);
            }
            (PcKind::Subscribe, RTCStatsReportEntry::RemoteInboundRtp(s)) => {
                lost += s.received_rtp_stream_stats.packets_lost.max(0) as u64;
            }
            _ => {}
        }
    }
    (lost, nacks)
}

fn random_string(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::renumber_extensions;
    use bytes::Bytes;
    use rtc::rtp::header::{EXTENSION_PROFILE_ONE_BYTE, Extension, Header};
    use rtc::shared::marshal::{Marshal, Unmarshal};

    fn ext(id: u8, payload: &'static [u8]) -> Extension {
        Extension {
            id,
            payload: Bytes::from_static(payload),
        }
    }

    fn carrying(extensions: &[Extension]) -> Header {
        Header {
            version: 2,
            extension: true,
            extension_profile: EXTENSION_PROFILE_ONE_BYTE,
            extensions: extensions.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn extensions_are_renumbered_and_the_rest_dropped() {
        // Publisher ids: 1 = audio level, 3 = transport-wide cc, 4 = mid.
        let original = [ext(1, &[0x85]), ext(3, &[0, 7]), ext(4, b"0")];
        let mut header = carrying(&original);
        renumber_extensions(&mut header, &original, &[(1, 9)]);
        let wire = header.marshal().unwrap();
        let back = Header::unmarshal(&mut wire.as_ref()).unwrap();
        assert!(back.extension);
        assert_eq!(back.get_extension(9), Some(Bytes::from_static(&[0x85])));
        assert_eq!(back.get_extension(1), None);
        assert_eq!(back.get_extension(3), None);
        assert_eq!(back.get_extension(4), None);
    }

    #[test]
    fn no_common_extension_leaves_a_plain_header() {
        let original = [ext(3, &[0, 7])];
        let mut header = carrying(&original);
        renumber_extensions(&mut header, &original, &[(1, 9)]);
        let wire = header.marshal().unwrap();
        assert_eq!(wire.len(), 12, "a fixed header without an extension block");
        let back = Header::unmarshal(&mut wire.as_ref()).unwrap();
        assert!(!back.extension);
    }
}
