//! miclink's media plane: a selective forwarding unit on webrtc-rs's sans-IO core (`rtc`).
//!
//! A fixed number of event-loop threads share one UDP port. Each owns a socket of the port's
//! `SO_REUSEPORT` group, the rooms pinned to it and their peer connections. Datagrams are routed
//! to their peer connection by the server ufrag of STUN checks, then by remote address; once a
//! remote address is known its loop opens a socket connected to it on the same port, so the kernel
//! brings that flow straight to the loop that owns it.
//! Each member has up to two connections: *publish* (offered by the client, anchor and linked
//! members only) and *subscribe* (offered by the server, re-offered when the room's published
//! tracks change). This crate obeys the seat state machine's permissions and never decides
//! admission: media from anyone not allowed is dropped at packet level.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod engine;
mod feedback;
mod keyframe;
mod seq;
mod stun;

pub use feedback::{RtcpToApplication, is_keyframe_request};

use std::net::{IpAddr, SocketAddr};

use miclink_protocol::Ident;
use tokio::sync::mpsc;

/// Settings of the media plane.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The UDP address every peer connection shares.
    pub udp_addr: SocketAddr,
    /// Addresses put in the host candidates clients connect to (with `udp_addr`'s port). Empty:
    /// the bound address, or for a wildcard bind the loopback address and every interface address
    /// of its family.
    pub public_ips: Vec<IpAddr>,
    /// Event-loop threads; 0 means one per core.
    pub loops: usize,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            udp_addr: SocketAddr::from(([127, 0, 0, 1], 7882)),
            public_ips: vec![IpAddr::from([127, 0, 0, 1])],
            loops: 0,
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
    /// The client's publish offer; the answer comes back as [`SfuEvent::PublishAnswer`].
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
    /// NACK packets sent to publishers for what the server lost on their leg.
    pub nacks_to_publishers: u64,
    /// Packets sent again from a published track's buffer.
    pub retransmitted: u64,
    /// NACKed packets no longer in the buffer.
    pub retransmit_misses: u64,
    /// Transport-wide congestion control feedback packets read.
    pub twcc_feedback: u64,
    /// Datagrams a loop received for a connection another loop owns (first packets of a flow).
    pub handed_over: u64,
    /// Datagrams the kernel would not take (full send buffer).
    pub send_errors: u64,
}

impl std::ops::AddAssign for SfuStats {
    fn add_assign(&mut self, o: SfuStats) {
        self.peers += o.peers;
        self.datagrams_in += o.datagrams_in;
        self.datagrams_dropped += o.datagrams_dropped;
        self.rtp_in += o.rtp_in;
        self.rtp_dropped_not_allowed += o.rtp_dropped_not_allowed;
        self.rtp_out += o.rtp_out;
        self.plis_sent += o.plis_sent;
        self.nacks_received += o.nacks_received;
        self.nacks_to_publishers += o.nacks_to_publishers;
        self.retransmitted += o.retransmitted;
        self.retransmit_misses += o.retransmit_misses;
        self.twcc_feedback += o.twcc_feedback;
        self.handed_over += o.handed_over;
        self.send_errors += o.send_errors;
    }
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
    /// NACK packets: received from this subscriber, or sent to this publisher.
    pub nacks: u64,
    /// RTP packets lost: on this publisher's leg as the server counts them, or on this
    /// subscriber's leg as its receiver reports say.
    pub packets_lost: u64,
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
            nacks: 0,
            packets_lost: 0,
        }
    }
}

/// Socket buffers asked of the kernel (it caps them at net.core.rmem_max / wmem_max): one
/// port carries every peer, and bursts of keyframes to many subscribers must not overflow it.
pub(crate) const SOCKET_BUFFER: usize = 4 << 20;

/// The candidate addresses when none are configured: the bound address itself, or for a wildcard
/// bind the loopback address followed by every interface address of the same family.
fn default_public_ips(bound: IpAddr, interfaces: Vec<IpAddr>) -> Vec<IpAddr> {
    if !bound.is_unspecified() {
        return vec![bound];
    }
    let loopback = match bound {
        IpAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    };
    let mut ips = vec![loopback];
    for ip in interfaces {
        let usable = ip.is_ipv4() == bound.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified();
        // IPv6 link-local addresses need a scope id a candidate cannot carry.
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if usable && !link_local && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_specific_bind_advertises_itself() {
        assert_eq!(
            default_public_ips(ip("10.1.2.3"), vec![ip("192.168.0.2")]),
            vec![ip("10.1.2.3")]
        );
    }

    #[test]
    fn a_wildcard_bind_advertises_loopback_and_interfaces_of_its_family() {
        let interfaces = vec![
            ip("127.0.0.1"),
            ip("192.168.0.2"),
            ip("10.0.0.5"),
            ip("fe80::1"),
            ip("2001:db8::7"),
        ];
        assert_eq!(
            default_public_ips(ip("0.0.0.0"), interfaces.clone()),
            vec![ip("127.0.0.1"), ip("192.168.0.2"), ip("10.0.0.5")]
        );
        assert_eq!(
            default_public_ips(ip("::"), interfaces),
            vec![ip("::1"), ip("2001:db8::7")]
        );
    }
}

/// A handle to the running media plane.
#[derive(Clone)]
pub struct Sfu {
    shared: std::sync::Arc<engine::Shared>,
    local_addr: SocketAddr,
}

impl Sfu {
    /// Bind the UDP port and start the event loops, each on its own thread. Events for signaling
    /// arrive on the returned receiver.
    pub fn start(config: SfuConfig) -> std::io::Result<(Sfu, mpsc::UnboundedReceiver<SfuEvent>)> {
        let count = match config.loops {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(255);
        // The first socket fixes the port (the configured one, or the one the OS picked for 0).
        let first = engine::bind_reuseport(config.udp_addr)?;
        let local_addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..count {
            sockets.push(engine::bind_reuseport(local_addr)?);
        }
        let public_ips = if config.public_ips.is_empty() {
            let interfaces = if_addrs::get_if_addrs()
                .map(|list| list.into_iter().map(|i| i.ip()).collect())
                .unwrap_or_default();
            default_public_ips(local_addr.ip(), interfaces)
        } else {
            config.public_ips
        };
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let mut handles = Vec::with_capacity(count);
        let mut parts = Vec::with_capacity(count);
        for (index, socket) in sockets.into_iter().enumerate() {
            let poll = mio::Poll::new()?;
            let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), mio::Token(1))?);
            let (tx, rx) = std::sync::mpsc::channel();
            handles.push(engine::LoopHandle { tx, waker });
            parts.push(engine::LoopParts {
                index,
                poll,
                socket,
                commands: rx,
            });
        }
        let shared = std::sync::Arc::new(engine::Shared {
            loops: handles,
            owners: std::sync::RwLock::new(std::collections::HashMap::new()),
        });
        for part in parts {
            let (shared, ips, events) = (shared.clone(), public_ips.clone(), ev_tx.clone());
            std::thread::Builder::new()
                .name(format!("miclink-sfu-{}", part.index))
                .spawn(move || engine::run(part, shared, ips, events))?;
        }
        Ok((Sfu { shared, local_addr }, ev_rx))
    }

    /// The UDP address peers send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many event loops run.
    pub fn loops(&self) -> usize {
        self.shared.loops.len()
    }

    pub fn send(&self, command: SfuCommand) {
        let room = match &command {
            SfuCommand::Allow { room, .. }
            | SfuCommand::Revoke { room, .. }
            | SfuCommand::Join { room, .. }
            | SfuCommand::Leave { room, .. }
            | SfuCommand::CloseRoom { room }
            | SfuCommand::Publish { room, .. }
            | SfuCommand::SubscribeAnswer { room, .. }
            | SfuCommand::Candidate { room, .. } => room,
        };
        self.shared.loops[self.loop_of(room)].send(engine::Msg::Command(command));
    }

    /// The loop a room is pinned to: every connection of the room lives there, so forwarding
    /// never leaves the thread.
    fn loop_of(&self, room: &Ident) -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(room.as_str());
        (hash % self.shared.loops.len() as u64) as usize
    }

    /// Counters summed over every loop.
    pub async fn stats(&self) -> Option<SfuStats> {
        let mut total = SfuStats::default();
        for l in &self.shared.loops {
            let (tx, rx) = tokio::sync::oneshot::channel();
            l.send(engine::Msg::Stats(tx));
            total += rx.await.ok()?;
        }
        Some(total)
    }

    /// Counters of every peer connection, for per-room and per-participant metrics.
    pub async fn peer_stats(&self) -> Option<Vec<PeerStats>> {
        let mut all = Vec::new();
        for l in &self.shared.loops {
            let (tx, rx) = tokio::sync::oneshot::channel();
            l.send(engine::Msg::PeerStats(tx));
            all.extend(rx.await.ok()?);
        }
        Some(all)
    }
}
