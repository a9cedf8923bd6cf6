//! The media core: every room pinned to one event loop, their peer connections, and the routing
//! between them, without I/O. The driver hands it datagrams, commands and the time; it answers
//! through [`MediaCore::poll_output`]. Forwarding lives in `forward.rs`, shedding in `shed.rs`.
//!
//! It must not touch a socket or read the clock: every method that needs the time takes `now`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use miclink_protocol::Ident;
use rtc::sansio::Protocol;
use rtc::shared::TransportProtocol;

mod allocate;
mod answers;
pub(crate) mod commands;
mod forward;
mod input;
mod lifecycle;
mod player;
mod probing;
mod relay;
mod room;
mod shedding;
mod subscribe;

use crate::factory::PeerFactory;
use crate::ids::PeerId;
use crate::peer::{Peer, subscriber_losses};
pub use crate::remote::{Remote, Transport};
use crate::shed::Shedder;
use crate::track::SourceId;
use crate::{MediaCommand, MediaEvent, PcKind, PeerStats, SfuError, SfuStats};
pub(crate) use room::{Permit, RoomMedia};

/// Every connection is ticked this often: rtc's interceptors (RTCP reports, NACK generation,
/// TWCC feedback) run on their own intervals that `poll_timeout` does not report.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// The shortest time between two rebuilds of one member's subscribe connection, so a client
/// whose connections keep failing does not make the server spin.
pub(crate) const REBUILD_INTERVAL: Duration = Duration::from_secs(2);

/// Relay connections one room may feed: one per other node of the cluster.
pub(crate) const MAX_RELAYS: usize = 64;

/// Trickled candidates kept per connection; more are ignored.
pub(crate) const MAX_REMOTE_CANDIDATES: usize = 16;

/// Where this core sits among the loops sharing the media port, and what it advertises.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This loop's index: it leads every ufrag the core hands out.
    pub loop_index: usize,
    /// How many loops share the port (ufrags naming another loop are routed there).
    pub loops: usize,
    /// The host candidates clients connect to. The first is the local address every datagram
    /// is tagged with, since ICE matches checks against the candidates it was given.
    pub public: Vec<SocketAddr>,
    /// Peer connections this core may hold (each may take a socket, so the driver derives it
    /// from the open file limit); more are refused with [`SfuError::AtCapacity`].
    pub max_peers: usize,
    /// ICE-TCP: a passive TCP host candidate on this port of every public address, for clients
    /// whose network blocks UDP. `None`: UDP only.
    pub tcp_port: Option<u16>,
}

/// A datagram (or, on TCP, a frame) to send.
#[derive(Debug)]
pub struct Transmit {
    pub to: SocketAddr,
    /// The local address it belongs to (the candidate the client's checks came to): on a
    /// multi-homed host the reply must leave from the address the request came to.
    pub from: SocketAddr,
    pub transport: Transport,
    pub data: BytesMut,
    /// On TCP: a video RTP packet of this SSRC, what a congested connection drops first
    /// (then [`MediaCore::handle_video_dropped`]). `None` for everything else and on UDP,
    /// where the network drops what it must.
    pub video: Option<u32>,
}

/// What the core asks of its driver, in order.
#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    /// `remote` now belongs to a connection of this core: bring its datagrams here (a connected
    /// socket on the shared port); a TCP connection is adopted (kept open).
    Connect {
        remote: Remote,
        /// The local address (candidate) `remote` reached.
        local: SocketAddr,
    },
    /// `remote`'s connection is gone (a TCP connection is closed).
    Forget {
        remote: Remote,
    },
    /// A connection of this core answers checks for `ufrag` from now on (`live`), or no longer
    /// does. Other loops hand a new address's check over only for a ufrag some loop has, so a
    /// forged prefix cannot fill another loop's queue.
    Ufrag {
        ufrag: String,
        live: bool,
    },
    /// For signaling.
    Event(MediaEvent),
}

/// Where a datagram given to [`MediaCore::handle_datagram`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Taken (or dropped and counted) here.
    Handled,
    /// A connectivity check for a connection of the loop with this index.
    Loop(usize),
    /// Not a check, from an address no connection here has: the driver may know which loop
    /// owns it; otherwise it is garbage.
    Unknown,
    /// A check naming a ufrag this loop owns but no connection has (closed, or made up):
    /// dropped and counted; a TCP connection that opens with one is closed at once.
    Refused,
}

/// The SFU of one event loop, without I/O: rooms, peer connections, routing and forwarding.
///
/// # Calling it
/// As with `quinn-proto`'s `Connection` and str0m's `Rtc`, the methods fall into groups:
/// - getters ([`stats`](Self::stats), [`peer_stats`](Self::peer_stats),
///   [`peers`](Self::peers)) read state;
/// - `handle_*` feed it: [`handle_datagram`](Self::handle_datagram) with each datagram from the
///   media port, [`handle_command`](Self::handle_command) with each signaling command,
///   [`handle_backlog`](Self::handle_backlog) with how long the driver has been behind its
///   sockets, and [`handle_timeout`](Self::handle_timeout) once [`poll_timeout`](Self::poll_timeout)
///   is due;
/// - [`poll_output`](Self::poll_output) yields what to do, in order: datagrams to send, remote
///   addresses to connect or forget, events for signaling.
///
/// After any `handle_*` call (or a batch of datagrams), drain `poll_output` until `None` and
/// send what it says, then wait for input until `poll_timeout`. `now` never goes backwards.
/// The core never reads the clock, so tests drive it with a fake one.
///
/// ```
/// use std::time::{Duration, Instant};
/// use miclink_protocol::Ident;
/// use miclink_sfu::{CoreConfig, MediaChange, MediaCommand, MediaCore, Output};
///
/// let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
/// let mut core = MediaCore::new(CoreConfig {
///     loop_index: 0,
///     loops: 1,
///     public: vec![socket.local_addr().unwrap()],
///     max_peers: 1000,
///     tcp_port: None,
/// })
/// .unwrap();
/// let (room, user) = (Ident::new("r").unwrap(), Ident::new("u").unwrap());
/// let mut now = Instant::now();
/// core.handle_command(now, MediaCommand::Seats(MediaChange::Subscribe { room, user }));
/// socket.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
/// let mut buf = [0u8; 2048];
/// for _ in 0..3 {
///     while let Some(output) = core.poll_output() {
///         if let Output::Transmit(t) = output {
///             socket.send_to(&t.data, t.to).unwrap();
///         }
///     }
///     if let Ok((n, from)) = socket.recv_from(&mut buf) {
///         core.handle_datagram(now, from, &buf[..n]);
///     }
///     if let Some(at) = core.poll_timeout() {
///         now = now.max(at);
///         core.handle_timeout(now);
///     }
/// }
/// assert_eq!(core.peers(), 0, "nobody publishes, so nobody needs a subscribe connection");
/// ```
pub struct MediaCore {
    config: CoreConfig,
    /// The address every datagram is tagged with as its local address.
    local: SocketAddr,
    /// The same for TCP frames: the passive candidate's address.
    local_tcp: SocketAddr,
    factory: PeerFactory,
    peers: HashMap<PeerId, Peer>,
    /// Subscribe offers made so far: the last one's number.
    offers_made: u64,
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<Remote, PeerId>,
    rooms: HashMap<Ident, RoomMedia>,
    next_peer: PeerId,
    next_source: SourceId,
    /// Peers with output to flush, and the one being flushed.
    dirty: HashSet<PeerId>,
    flushing: Option<PeerId>,
    outputs: VecDeque<Output>,
    /// The earliest `poll_timeout` of the peers that were not due at the last timer run; every
    /// peer is run at every tick anyway, so no datagram ever scans every peer.
    soonest: Option<Instant>,
    last_tick: Option<Instant>,
    /// The latest `now` any `handle_*` call brought.
    clock: Option<Instant>,
    /// Subscribe connections to rebuild: (not before, room, member).
    rebuilds: Vec<(Instant, Ident, Ident)>,
    /// When each member's subscribe connection was last rebuilt.
    last_rebuild: HashMap<(Ident, Ident), Instant>,
    /// Members whose subscribe connections missed the connect deadline, how many times in a
    /// row: each next one waits longer to be rebuilt and gets longer to connect (a client on a
    /// slow path, TURN over TCP, still gets in; a broken one is not rebuilt every 12 s).
    unconnected: HashMap<(Ident, Ident), u32>,
    shed: Shedder,
    stats: SfuStats,
    /// When the publishers' NACK counts were last read from rtc (once a second, so statistics
    /// requests cost nothing per peer whatever their rate).
    nacks_read: Option<Instant>,
    /// When every subscriber's streams were last chosen again.
    allocated_at: Option<Instant>,
    /// The subscribe connections probing now (at most `MAX_PROBES`), and when probes last
    /// sent padding.
    probing: Vec<PeerId>,
    padded_at: Option<Instant>,
    /// A relayed stream may be waiting for its publisher's place here to come free (see
    /// [`MediaCore::take_up_waiting`]): set when one waits or a publish connection goes.
    waiting: bool,
}

impl MediaCore {
    pub fn new(config: CoreConfig) -> Result<MediaCore, SfuError> {
        let local = *config
            .public
            .first()
            .ok_or_else(|| SfuError::Internal("no address to advertise".into()))?;
        let factory = PeerFactory::new(config.loop_index, &config.public, config.tcp_port)?;
        let local_tcp = SocketAddr::new(local.ip(), config.tcp_port.unwrap_or(local.port()));
        Ok(MediaCore {
            config,
            local,
            local_tcp,
            factory,
            peers: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            rooms: HashMap::new(),
            next_peer: 1,
            next_source: 1,
            dirty: HashSet::new(),
            flushing: None,
            outputs: VecDeque::new(),
            soonest: None,
            last_tick: None,
            clock: None,
            rebuilds: Vec::new(),
            last_rebuild: HashMap::new(),
            unconnected: HashMap::new(),
            shed: Shedder::default(),
            stats: SfuStats::default(),
            nacks_read: None,
            allocated_at: None,
            probing: Vec::new(),
            padded_at: None,
            offers_made: 0,
            waiting: false,
        })
    }

    // ----- getters ---------------------------------------------------------------------------

    /// Peer connections open now.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// This core's counters. The publishers' NACK counts are read from rtc at most once a
    /// second, so asking often costs nothing per peer.
    pub fn stats(&mut self, now: Instant) -> SfuStats {
        self.read_nacks(now);
        SfuStats {
            peers: self.peers.len() as u64,
            shed_level: self.shed.level() as u64,
            backlog_ms: self.shed.backlog().as_millis() as u64,
            ..self.stats
        }
    }

    /// Counters of every peer connection (subscribers' losses read from rtc now).
    pub fn peer_stats(&mut self, now: Instant) -> Vec<PeerStats> {
        self.peers
            .values_mut()
            .map(|p| {
                let mut c = p.counters.clone();
                // A publisher's leg keeps the server's own count (numbers skipped on arrival):
                // rtc's figure falls back to zero once retransmissions repair the gaps.
                if p.kind() == PcKind::Subscribe {
                    c.packets_lost = subscriber_losses(&mut p.pc, now);
                }
                c
            })
            .collect()
    }

    /// Read each publish connection's NACK count from rtc, at most once a second.
    fn read_nacks(&mut self, now: Instant) {
        if self
            .nacks_read
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.nacks_read = Some(now);
        for p in self.peers.values_mut() {
            self.stats.nacks_to_publishers += p.read_nacks(now);
        }
    }

    // ----- input -----------------------------------------------------------------------------

    /// One datagram from the media port.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Route {
        self.input(now, Remote::udp(from), None, data)
    }

    /// One datagram from the media port that arrived at local address `to` (`IP_PKTINFO`):
    /// it is tagged with the candidate of that address, so on a multi-homed host every
    /// address is a candidate of its own and the answers go out from it.
    pub fn handle_datagram_at(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: IpAddr,
        data: &[u8],
    ) -> Route {
        self.input(now, Remote::udp(from), Some(to), data)
    }

    /// One datagram on the socket of relay connection `relay` ([`Transport::Relay`]), from
    /// the cluster node `from` it is connected to.
    pub fn handle_relay_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        relay: u64,
        data: &[u8],
    ) -> Route {
        self.input(
            now,
            Remote {
                addr: from,
                transport: Transport::Relay(relay),
            },
            None,
            data,
        )
    }

    /// One RFC 4571 frame from a TCP connection (its peer address `from`). A connection is
    /// adopted ([`Output::Connect`]) once a frame is a check for a connection here; the driver
    /// closes one that is not.
    pub fn handle_tcp_frame(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Route {
        self.input(now, Remote::tcp(from), None, data)
    }

    /// A TCP connection closed: its address no longer reaches its peer connection.
    pub fn handle_tcp_closed(&mut self, now: Instant, from: SocketAddr) {
        self.saw(now);
        let remote = Remote::tcp(from);
        if let Some(id) = self.by_addr.remove(&remote)
            && let Some(peer) = self.peers.get_mut(&id)
        {
            peer.addrs.retain(|a| *a != remote);
        }
    }

    /// A congested TCP connection dropped video of this (outgoing) SSRC: the subscriber's
    /// decoder needs a keyframe to go on, so its publisher is asked for one (at most one
    /// request per track every 300 ms, as for the subscriber's own).
    pub fn handle_video_dropped(&mut self, now: Instant, to: SocketAddr, ssrc: u32) {
        self.saw(now);
        if let Some(&id) = self.by_addr.get(&Remote::tcp(to)) {
            self.keyframe_for_subscriber(now, id, ssrc);
        }
    }

    /// One command from signaling.
    pub fn handle_command(&mut self, now: Instant, command: MediaCommand) {
        self.saw(now);
        self.command(now, command);
    }

    /// How long the driver has been behind its sockets (zero once it drained them): the input
    /// of overload shedding.
    pub fn handle_backlog(&mut self, now: Instant, backlog: Duration) {
        self.saw(now);
        if self.shed.observe(now, backlog) {
            self.apply_shedding();
        }
    }

    /// Run every timer due at `now`: the connections' own, the periodic tick, rebuilds.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.saw(now);
        let tick = self
            .last_tick
            .is_none_or(|t| now.saturating_duration_since(t) >= TICK);
        let mut soonest: Option<Instant> = None;
        let mut due = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            match p.pc.poll_timeout() {
                Some(t) if tick || t <= now => due.push(*id),
                Some(t) => soonest = Some(soonest.map_or(t, |s| s.min(t))),
                None if tick => due.push(*id),
                None => {}
            }
        }
        if tick {
            self.last_tick = Some(now);
            self.expire_unconnected(now);
            self.take_up_waiting(now);
            if self.allocate_all(now) {
                self.probes(now);
            } else {
                self.pad_probes(now);
            }
            for (room, r) in &mut self.rooms {
                if r.speakers.due(now)
                    && let Some(speakers) = r.speakers.evaluate(now)
                {
                    self.outputs
                        .push_back(Output::Event(MediaEvent::ActiveSpeakers {
                            room: room.clone(),
                            speakers,
                        }));
                }
            }
        } else {
            self.pad_probes(now);
        }
        // The peers not due set the next deadline; those fired are looked at again at the next
        // tick at the latest (asking each flushed peer for its deadline cost more per forwarded
        // packet than the rest of the rewrite). A deadline left in the past would make every
        // turn scan every peer.
        self.soonest = soonest;
        for id in due {
            if let Some(p) = self.peers.get_mut(&id) {
                let _ = p.pc.handle_timeout(now);
            }
            self.process(now, id);
        }
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rebuilds)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.rebuilds = later;
        for (_, room, user) in ready {
            let member = self
                .rooms
                .get(&room)
                .is_some_and(|r| r.members.contains(&user) && !r.subscribe.contains_key(&user));
            if member {
                self.stats.subscribe_rebuilt += 1;
                self.renew_subscribe(now, &room, &user);
            }
        }
    }

    // ----- output ----------------------------------------------------------------------------

    /// The next thing to do, or `None` until more input.
    pub fn poll_output(&mut self) -> Option<Output> {
        loop {
            if let Some(o) = self.outputs.pop_front() {
                return Some(o);
            }
            if let Some(id) = self.flushing {
                if let Some(peer) = self.peers.get_mut(&id)
                    && let Some(msg) = peer.pc.poll_write()
                {
                    peer.counters.datagrams_out += 1;
                    peer.counters.bytes_out += msg.message.len() as u64;
                    let (transport, video) = match msg.transport.transport_protocol {
                        TransportProtocol::TCP => {
                            (Transport::Tcp, crate::peer::video_ssrc(peer, &msg.message))
                        }
                        // A relay sends on its own socket.
                        _ if peer.role.relay_in().is_some() => (Transport::Relay(id), None),
                        _ => (Transport::Udp, None),
                    };
                    return Some(Output::Transmit(Transmit {
                        to: msg.transport.peer_addr,
                        from: msg.transport.local_addr,
                        transport,
                        data: msg.message,
                        video,
                    }));
                }
                self.flushing = None;
            }
            let id = *self.dirty.iter().next()?;
            self.dirty.remove(&id);
            self.flushing = Some(id);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next; `None` while the core
    /// holds nothing that needs time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.peers.is_empty() && self.rebuilds.is_empty() {
            return None;
        }
        let tick = match self.last_tick {
            Some(t) => t + TICK,
            // Never ticked: at once.
            None => self.clock?,
        };
        let rebuild = self.rebuilds.iter().map(|(at, _, _)| *at).min();
        [Some(tick), self.soonest, rebuild, self.probe_due()]
            .into_iter()
            .flatten()
            .min()
    }

    fn saw(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
    }
}
