//! The driver of one event loop: its socket of the shared port, the sockets connected to each
//! remote address of its connections, its command queue, and the clock. It feeds one
//! [`MediaCore`] and does what it says; it is the only code of the media plane that does I/O.
//!
//! # One turn of the loop
//! 1. wait in `mio::Poll` until a socket is readable, a command arrives, or the core's deadline;
//! 2. apply every queued command and handed-over datagram;
//! 3. read at most [`BATCH`] datagrams from each readable socket into the core; a socket with
//!    more waiting stays on the readable list for the next turn;
//! 4. tell the core how long the loop has been behind (sockets left unread since when), run its
//!    timers when due, and send everything it output.
//!
//! So commands (a revoked seat, a leave) and writes happen at least every [`BATCH`] datagrams
//! per socket however hard a flood comes, and the core's queued output never outgrows one turn.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

mod ice_tcp;
mod shared;
mod sockets;

use shared::{FailGuard, Handed, LoopParts};
pub(crate) use shared::{LocalIps, Msg, Shared, bind_reuseport, new_loop};

use crate::tcp::{Sent, TcpConn, TcpConns};
use crate::{CoreConfig, MediaCore, MediaEvent, Output, Pii, Route, Transport};

/// Datagrams read from one socket before the loop turns (commands, timers, writes).
pub(crate) const BATCH: usize = 64;

/// Datagrams read in all in one turn: what the core queues between two flushes is at most this
/// many packets' fan-out, however many sockets are readable.
pub(crate) const TURN: usize = 256;

/// How often a dropped foreign source is logged at most.
const FOREIGN_NOTICE: Duration = Duration::from_secs(60);

const SHARED_SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
const LISTENER: Token = Token(2);
/// Tokens from here on are connected UDP sockets and TCP connections.
const FIRST_CONNECTED: usize = 3;

/// TCP connections accepted in one turn at most.
const ACCEPTS: usize = 64;

/// Counters only the driver sees; added to the core's.
#[derive(Default)]
struct DriverStats {
    dropped_unknown: u64,
    /// From another machine while the media plane serves only this one.
    dropped_foreign: u64,
    handed_over: u64,
    handover_dropped: u64,
    send_errors: u64,
    tcp_accepted: u64,
    tcp_refused: u64,
    tcp_video_dropped: u64,
    tcp_dropped: u64,
}

struct Driver {
    index: usize,
    poll: Poll,
    socket: UdpSocket,
    /// The shared socket's `recvmsg`/`sendmsg` with `IP_PKTINFO` (and GRO where the kernel
    /// has it).
    udp: UdpSocketState,
    bound: SocketAddr,
    /// Sockets connected to one remote address each, on the same port: the kernel delivers a
    /// connected flow to its socket, so after the first packets every datagram of a peer
    /// connection arrives at the loop that owns it.
    /// Each with its remote and the local address its datagrams are tagged with.
    connected: HashMap<Token, (UdpSocket, SocketAddr, Option<IpAddr>)>,
    connected_by_addr: HashMap<SocketAddr, Token>,
    /// Relay connections' own sockets (another port each, connected to a cluster node's
    /// media port), with their relay's number.
    relays: HashMap<Token, (UdpSocket, SocketAddr, u64)>,
    relays_by_remote: HashMap<(SocketAddr, u64), Token>,
    /// ICE-TCP: the listener and the connections this loop holds.
    tcp: TcpConns,
    /// When pending TCP connections were last looked at for their deadline.
    tcp_swept: Option<Instant>,
    next_token: usize,
    /// Sockets with datagrams left unread at the end of the last turn.
    readable: Vec<Token>,
    behind_since: Option<Instant>,
    core: MediaCore,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<MediaEvent>,
    stats: DriverStats,
    #[cfg(feature = "test-support")]
    fault_room: Option<String>,
    /// When a dropped foreign source was last logged.
    foreign_said: Option<Instant>,
}

pub(crate) fn run(
    parts: LoopParts,
    config: CoreConfig,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<MediaEvent>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    fault_room: Option<String>,
) {
    #[cfg(not(feature = "test-support"))]
    let _ = fault_room;
    let LoopParts {
        index,
        poll,
        socket,
        listener,
        commands,
        handover,
    } = parts;
    let _guard = FailGuard {
        index,
        shared: shared.clone(),
        events: events.clone(),
    };
    let bound = socket
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    let mut socket = UdpSocket::from_std(socket);
    let udp = match UdpSocketState::new(UdpSockRef::from(&socket)) {
        Ok(udp) => udp,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let mut listener = listener.map(TcpListener::from_std);
    let started = poll
        .registry()
        .register(&mut socket, SHARED_SOCKET, Interest::READABLE)
        .and_then(|()| match &mut listener {
            Some(l) => poll.registry().register(l, LISTENER, Interest::READABLE),
            None => Ok(()),
        })
        .map_err(|e| e.to_string())
        .and_then(|()| MediaCore::new(config).map_err(|e| e.to_string()));
    let core = match started {
        Ok(core) => {
            let _ = ready.send(Ok(()));
            core
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut driver = Driver {
        index,
        poll,
        socket,
        udp,
        bound,
        connected: HashMap::new(),
        relays: HashMap::new(),
        relays_by_remote: HashMap::new(),
        connected_by_addr: HashMap::new(),
        tcp: TcpConns::new(listener),
        tcp_swept: None,
        next_token: FIRST_CONNECTED,
        readable: Vec::new(),
        behind_since: None,
        core,
        shared,
        events,
        stats: DriverStats::default(),
        #[cfg(feature = "test-support")]
        fault_room,
        foreign_said: None,
    };
    driver.run(&commands, &handover);
}

impl Driver {
    fn run(
        &mut self,
        commands: &std::sync::mpsc::Receiver<Msg>,
        handover: &std::sync::mpsc::Receiver<Handed>,
    ) {
        // Room for a whole GRO batch of the shared socket (segments of a datagram's size).
        let mut buf = vec![0u8; self.udp.gro_segments().max(1) * 2048];
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = if self.readable.is_empty() {
                // The core's timers, and the ICE-TCP pending deadline: an idle loop must still
                // close the connections that never sent a check.
                [self.core.poll_timeout(), self.tcp_sweep_due()]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                error!(error = %e, "media loop poll failed");
                panic!("media loop {} cannot poll: {e}", self.index);
            }
            let mut woken = false;
            let mut accept = false;
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => woken = true,
                    LISTENER => accept = true,
                    token => {
                        if event.is_writable() && !self.tcp_writable(now, token) {
                            continue;
                        }
                        if event.is_readable() && !self.readable.contains(&token) {
                            self.readable.push(token);
                        }
                    }
                }
            }
            if woken {
                loop {
                    match commands.try_recv() {
                        Ok(msg) => self.message(now, msg),
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        // Every handle is gone: the server is shutting down.
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                    }
                }
                while let Ok((data, from, to)) = handover.try_recv() {
                    self.stats.handed_over += 1;
                    self.datagram(now, &data, from, to);
                }
            }
            if accept {
                self.accept(now);
            }
            self.sweep_tcp(now);
            self.read(now, &mut buf);
            let now = Instant::now();
            let backlog = if self.readable.is_empty() {
                self.behind_since = None;
                Duration::ZERO
            } else {
                now.saturating_duration_since(*self.behind_since.get_or_insert(now))
            };
            self.core.handle_backlog(now, backlog);
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
            }
            self.flush();
        }
    }

    /// One turn's reading: up to [`BATCH`] datagrams from each readable socket and [`TURN`] in
    /// all. Sockets left with datagrams go to the back of the list, so every flow gets its turn.
    fn read(&mut self, now: Instant, buf: &mut [u8]) {
        let tokens = std::mem::take(&mut self.readable);
        let mut budget = TURN;
        let (mut waiting, mut read_from) = (Vec::new(), Vec::new());
        for token in tokens {
            if budget == 0 {
                waiting.push(token);
                continue;
            }
            if self.tcp.by_token.contains_key(&token) {
                let (more, frames) = self.read_tcp(now, token, buf, BATCH.min(budget));
                budget = budget.saturating_sub(frames.max(1));
                if more {
                    read_from.push(token);
                }
                continue;
            }
            let mut more = false;
            for _ in 0..BATCH.min(budget) {
                budget -= 1;
                if let Some((socket, from, relay)) = self.relays.get(&token) {
                    let (from, relay) = (*from, *relay);
                    match socket.recv(buf) {
                        Ok(n) => {
                            self.core.handle_relay_datagram(now, from, relay, &buf[..n]);
                            more = true;
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            more = false;
                            break;
                        }
                        Err(_) => {
                            more = true;
                            continue;
                        }
                    }
                }
                let got = if token == SHARED_SOCKET {
                    let mut meta = [RecvMeta::default()];
                    self.udp
                        .recv(
                            UdpSockRef::from(&self.socket),
                            &mut [IoSliceMut::new(buf)],
                            &mut meta,
                        )
                        .map(|_| (meta[0].len, meta[0].stride, meta[0].addr, meta[0].dst_ip))
                } else {
                    match self.connected.get(&token) {
                        Some((socket, from, to)) => socket.recv(buf).map(|n| (n, n, *from, *to)),
                        None => break,
                    }
                };
                match got {
                    // Connected sockets carry flows that passed this check on the shared one.
                    Ok((_, _, from, _)) if token == SHARED_SOCKET && !self.serves(from) => {
                        more = true;
                    }
                    Ok((n, stride, from, to)) => {
                        // One read may hold several datagrams of one flow (GRO).
                        for datagram in buf[..n].chunks(stride.max(1)) {
                            self.datagram(now, datagram, from, to);
                        }
                        more = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        more = false;
                        break;
                    }
                    // An ICMP error reported on a connected socket: the datagrams behind it are
                    // still there.
                    Err(_) => more = true,
                }
            }
            if more {
                read_from.push(token);
            }
        }
        waiting.extend(read_from);
        self.readable = waiting;
    }

    /// Whether `from` may reach the media plane; a refusal is counted, and said once a minute at
    /// most, since it usually means the server was started on its local defaults and someone
    /// else tried to connect.
    fn serves(&mut self, from: SocketAddr) -> bool {
        if !self.shared.local_only || self.shared.host.serves(from.ip()) {
            return true;
        }
        self.stats.dropped_foreign += 1;
        let now = Instant::now();
        if self
            .foreign_said
            .is_none_or(|t| now.saturating_duration_since(t) >= FOREIGN_NOTICE)
        {
            self.foreign_said = Some(now);
            warn!(
                from = %Pii(from),
                dropped = self.stats.dropped_foreign,
                "media from another machine dropped: on its defaults the media plane serves only \
                 this one; set media_addr (and media_public_ips) to serve others"
            );
        }
        false
    }

    /// `ip` when the shared socket is bound to the wildcard and `ip` is one of this host's
    /// addresses: a reply can then be sent from it. Behind NAT the advertised address is not
    /// a local one, and the kernel picks.
    fn own_address(&self, ip: IpAddr) -> Option<IpAddr> {
        (self.bound.ip().is_unspecified() && !ip.is_unspecified() && self.shared.host.serves(ip))
            .then_some(ip)
    }

    fn datagram(&mut self, now: Instant, data: &[u8], from: SocketAddr, to: Option<IpAddr>) {
        let route = match to {
            Some(to) => self.core.handle_datagram_at(now, from, to, data),
            None => self.core.handle_datagram(now, from, data),
        };
        let owner = match route {
            Route::Handled | Route::Refused => return,
            // Only for a ufrag some loop has: a made-up one is dropped here, not queued there.
            Route::Loop(owner) => crate::stun::server_ufrag(data)
                .filter(|u| self.shared.ufrags.read().is_ok_and(|set| set.contains(*u)))
                .map(|_| owner),
            // Not a check: a flow another loop owns whose packets the kernel still brings here
            // (before that loop's connected socket existed), or garbage.
            Route::Unknown => self
                .shared
                .owners
                .read()
                .ok()
                .and_then(|o| o.get(&from).copied())
                .filter(|o| *o != self.index),
        };
        match owner.and_then(|o| self.shared.loops.get(o)) {
            Some(l) => {
                if !l.hand_over(data, from, to) {
                    self.stats.handover_dropped += 1;
                }
            }
            None => self.stats.dropped_unknown += 1,
        }
    }

    fn message(&mut self, now: Instant, msg: Msg) {
        match msg {
            Msg::Command(command) => {
                #[cfg(feature = "test-support")]
                if let (
                    Some(fault),
                    crate::MediaCommand::Seats(crate::MediaChange::Subscribe { room, .. }),
                ) = (&self.fault_room, &command)
                    && room.as_str() == fault
                {
                    panic!("fault injection: media loop {} dies", self.index);
                }
                self.core.handle_command(now, command);
            }
            Msg::Stats(tx) => {
                let mut s = self.core.stats(now);
                s.datagrams_dropped += self.stats.dropped_unknown;
                s.dropped_foreign += self.stats.dropped_foreign;
                s.handed_over += self.stats.handed_over;
                s.handover_dropped += self.stats.handover_dropped;
                s.send_errors += self.stats.send_errors;
                s.tcp_accepted += self.stats.tcp_accepted;
                s.tcp_refused += self.stats.tcp_refused;
                s.tcp_video_dropped += self.stats.tcp_video_dropped;
                s.tcp_dropped += self.stats.tcp_dropped;
                let _ = tx.send(s);
            }
            Msg::PeerStats(tx) => {
                let _ = tx.send(self.core.peer_stats(now));
            }
            Msg::Tcp(stream, peer, read) => {
                let conn = TcpConn::handed_over(stream, peer, &read, now);
                self.adopt_tcp(now, conn, true);
            }
        }
    }

    fn flush(&mut self) {
        let mut dropped = Vec::new();
        loop {
            while let Some(output) = self.core.poll_output() {
                match output {
                    Output::Transmit(t) if t.transport == Transport::Tcp => {
                        match self.tcp.send(t.to, &t.data, t.video.is_some()) {
                            Sent::Taken => {}
                            Sent::VideoDropped => {
                                self.stats.tcp_video_dropped += 1;
                                if let Some(ssrc) = t.video {
                                    dropped.push((t.to, ssrc));
                                }
                            }
                            Sent::Dropped => self.stats.tcp_dropped += 1,
                            Sent::NoConnection => self.stats.send_errors += 1,
                        }
                    }
                    Output::Transmit(t) if matches!(t.transport, Transport::Relay(_)) => {
                        let Transport::Relay(relay) = t.transport else {
                            continue;
                        };
                        let sent = match self
                            .relays_by_remote
                            .get(&(t.to, relay))
                            .and_then(|token| self.relays.get(token))
                        {
                            Some((socket, _, _)) => socket.send(&t.data).map(|_| ()),
                            None => Err(std::io::ErrorKind::NotConnected.into()),
                        };
                        if let Err(e) = sent {
                            self.stats.send_errors += 1;
                            debug!(error = %e, to = %Pii(t.to), "relay send error");
                        }
                    }
                    Output::Transmit(t) => {
                        let sent = match self
                            .connected_by_addr
                            .get(&t.to)
                            .and_then(|token| self.connected.get(token))
                        {
                            Some((socket, _, _)) => socket.send(&t.data).map(|_| ()),
                            // From the address the client's checks came to, whatever route
                            // the kernel would pick.
                            None => self.udp.try_send(
                                UdpSockRef::from(&self.socket),
                                &quinn_udp::Transmit {
                                    destination: t.to,
                                    ecn: None,
                                    contents: &t.data,
                                    segment_size: None,
                                    src_ip: self.own_address(t.from.ip()),
                                },
                            ),
                        };
                        // UDP: a full send buffer drops the datagram, as the network would.
                        if let Err(e) = sent {
                            self.stats.send_errors += 1;
                            debug!(error = %e, to = %Pii(t.to), "udp send error");
                        }
                    }
                    Output::Connect { remote, local } => match remote.transport {
                        Transport::Udp => self.connect(remote.addr, local.ip()),
                        Transport::Relay(relay) => {
                            self.connect_relay(remote.addr, relay, local.ip())
                        }
                        Transport::Tcp => {
                            if let Some(conn) = self
                                .tcp
                                .by_peer
                                .get(&remote.addr)
                                .and_then(|t| self.tcp.by_token.get_mut(t))
                            {
                                conn.pending_since = None;
                            }
                        }
                    },
                    Output::Forget { remote } => match remote.transport {
                        Transport::Udp => self.forget(remote.addr),
                        Transport::Relay(relay) => {
                            if let Some(token) = self.relays_by_remote.remove(&(remote.addr, relay))
                                && let Some((mut socket, _, _)) = self.relays.remove(&token)
                            {
                                let _ = self.poll.registry().deregister(&mut socket);
                            }
                        }
                        Transport::Tcp => {
                            if let Some(token) = self.tcp.by_peer.get(&remote.addr).copied() {
                                self.tcp.remove(token, self.poll.registry());
                            }
                        }
                    },
                    Output::Ufrag { ufrag, live } => {
                        if let Ok(mut set) = self.shared.ufrags.write() {
                            if live {
                                set.insert(ufrag);
                            } else {
                                set.remove(&ufrag);
                            }
                        }
                    }
                    Output::Event(event) => {
                        let _ = self.events.send(event);
                    }
                }
            }
            // Keyframe requests for what congested TCP connections dropped; what they send goes
            // out in this same flush.
            if dropped.is_empty() {
                return;
            }
            let now = Instant::now();
            for (to, ssrc) in dropped.drain(..) {
                self.core.handle_video_dropped(now, to, ssrc);
            }
        }
    }
}
