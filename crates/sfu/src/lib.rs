//! miclink's media plane: a selective forwarding unit on webrtc-rs's sans-IO core (`rtc`).
//!
//! One event-loop thread owns one UDP socket and every peer connection on it. Datagrams are
//! routed to their peer connection by the server ufrag of STUN checks, then by remote address.
//! Each member has up to two connections: *publish* (offered by the client, anchor and linked
//! members only) and *subscribe* (offered by the server, re-offered when the room's published
//! tracks change). This crate obeys the seat state machine's permissions and never decides
//! admission: media from anyone not allowed is dropped at packet level.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod engine;
mod feedback;
mod keyframe;
mod stun;

use std::net::{IpAddr, SocketAddr};

use miclink_protocol::Ident;
use tokio::sync::mpsc;

/// Settings of the media plane.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The UDP address every peer connection shares.
    pub udp_addr: SocketAddr,
    /// Addresses put in the host candidates clients connect to (with `udp_addr`'s port).
    pub public_ips: Vec<IpAddr>,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            udp_addr: SocketAddr::from(([127, 0, 0, 1], 7882)),
            public_ips: vec![IpAddr::from([127, 0, 0, 1])],
        }
    }
}

/// Which of a member's connections a message concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PcKind {
    Publish,
    Subscribe,
}

/// Where the answer to a request goes: the signaling socket and the request id. Opaque here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub conn: u64,
    pub id: u64,
}

/// What signaling asks of the media plane.
#[derive(Debug)]
pub enum SfuCommand {
    /// The seats allow `user` to publish from now on.
    Allow {
        room: Ident,
        user: Ident,
        audio: bool,
        video: bool,
    },
    /// `user` may no longer publish: stop forwarding now, drop their tracks, close the connection.
    Revoke { room: Ident, user: Ident },
    /// `user` is in the room and receives every other publisher.
    Join { room: Ident, user: Ident },
    /// `user` left the room.
    Leave { room: Ident, user: Ident },
    /// The room ended.
    CloseRoom { room: Ident },
    /// The client's publish offer; the answer comes back as [`SfuEvent::Reply`].
    Publish {
        room: Ident,
        user: Ident,
        offer: String,
        reply: ReplyTo,
    },
    /// The client's answer to the last subscribe offer.
    SubscribeAnswer {
        room: Ident,
        user: Ident,
        answer: String,
        reply: ReplyTo,
    },
    /// A trickled client candidate (`RTCIceCandidateInit.candidate`).
    Candidate {
        room: Ident,
        user: Ident,
        pc: PcKind,
        candidate: String,
    },
}

/// Why a media request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    #[error("the session description was refused: {0}")]
    BadSdp(String),
    #[error("not allowed to publish")]
    NotAllowed,
    #[error("no subscribe offer is waiting for an answer")]
    NoOffer,
}

/// What the media plane tells signaling.
#[derive(Debug, Clone, PartialEq)]
pub enum SfuEvent {
    /// The answer SDP to a [`SfuCommand::Publish`].
    PublishAnswer {
        reply: ReplyTo,
        result: Result<String, SfuError>,
    },
    /// The outcome of a [`SfuCommand::SubscribeAnswer`].
    SubscribeAnswered {
        reply: ReplyTo,
        result: Result<(), SfuError>,
    },
    /// A (re-)offer for `user`'s subscribe connection.
    SubscribeOffer {
        room: Ident,
        user: Ident,
        sdp: String,
    },
}

/// Packet and byte counters of the whole media plane, kept cheaply on the hot path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SfuStats {
    pub peers: usize,
    pub datagrams_in: u64,
    pub datagrams_dropped: u64,
    pub rtp_in: u64,
    pub rtp_dropped_not_allowed: u64,
    pub rtp_out: u64,
    /// Keyframe requests sent to publishers.
    pub plis_sent: u64,
    /// NACK packets received from subscribers.
    pub nacks_received: u64,
    /// Packets sent again from a published track's buffer.
    pub retransmitted: u64,
    /// NACKed packets no longer in the buffer.
    pub retransmit_misses: u64,
    /// Transport-wide congestion control feedback packets read.
    pub twcc_feedback: u64,
}

/// Counters of one peer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub room: Ident,
    pub user: Ident,
    pub kind: PcKind,
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// RTP packets received (publish connections).
    pub rtp_in: u64,
    /// RTP packets forwarded (subscribe connections).
    pub rtp_out: u64,
    pub retransmitted: u64,
    /// Keyframe requests sent (publish connections).
    pub plis: u64,
}

impl Default for PeerStats {
    fn default() -> Self {
        let nobody = Ident::new("-").expect("a valid identifier");
        PeerStats {
            room: nobody.clone(),
            user: nobody,
            kind: PcKind::Publish,
            datagrams_in: 0,
            bytes_in: 0,
            datagrams_out: 0,
            bytes_out: 0,
            rtp_in: 0,
            rtp_out: 0,
            retransmitted: 0,
            plis: 0,
        }
    }
}

/// Socket buffers asked of the kernel (it caps them at net.core.rmem_max / wmem_max): one
/// socket carries every peer, and bursts of keyframes to many subscribers must not overflow it.
const SOCKET_BUFFER: usize = 4 << 20;

fn bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::warn!(error = %e, "could not enlarge the media socket's receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::warn!(error = %e, "could not enlarge the media socket's send buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A handle to the running media plane.
#[derive(Clone)]
pub struct Sfu {
    commands: mpsc::UnboundedSender<engine::Msg>,
    local_addr: SocketAddr,
}

impl Sfu {
    /// Bind the UDP socket and start the event loop on its own thread. Events for signaling
    /// arrive on the returned receiver.
    pub fn start(config: SfuConfig) -> std::io::Result<(Sfu, mpsc::UnboundedReceiver<SfuEvent>)> {
        let socket = bind(config.udp_addr)?;
        let local_addr = socket.local_addr()?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let public_ips = if config.public_ips.is_empty() {
            vec![local_addr.ip()]
        } else {
            config.public_ips
        };
        std::thread::Builder::new()
            .name("miclink-sfu".into())
            .spawn(move || engine::run(socket, public_ips, cmd_rx, ev_tx))?;
        Ok((
            Sfu {
                commands: cmd_tx,
                local_addr,
            },
            ev_rx,
        ))
    }

    /// The UDP address peers send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn send(&self, command: SfuCommand) {
        let _ = self.commands.send(engine::Msg::Command(command));
    }

    pub async fn stats(&self) -> Option<SfuStats> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(engine::Msg::Stats(tx)).ok()?;
        rx.await.ok()
    }

    /// Counters of every peer connection, for per-room and per-participant metrics.
    pub async fn peer_stats(&self) -> Option<Vec<PeerStats>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(engine::Msg::PeerStats(tx)).ok()?;
        rx.await.ok()
    }
}
