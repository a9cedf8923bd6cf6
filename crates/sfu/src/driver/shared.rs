//! What the loops share and how other threads reach one: each loop's handle (commands, the
//! datagrams handed over from other loops, the waker), the state every loop and handle reads
//! (who owns which flow, the live ufrags, this host's addresses, failure), and how a loop's
//! sockets are made.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use mio::{Poll, Waker};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{error, warn};

use super::WAKER;
use crate::{MediaCommand, MediaEvent, PeerStats, SfuStats};

/// Datagrams queued from other loops (first packets of flows) before more are dropped.
const HANDOVER_QUEUE: usize = 1024;

/// Socket buffers asked of the kernel (it caps them at net.core.rmem_max / wmem_max): one
/// port carries every peer, and bursts of keyframes to many subscribers must not overflow it.
const SOCKET_BUFFER: usize = 4 << 20;

/// What every loop and handle shares.
pub(crate) struct Shared {
    pub(crate) loops: Vec<LoopHandle>,
    /// Which loop owns which remote address, for the first packets of a flow that the kernel
    /// still brings to another loop's socket.
    pub(crate) owners: RwLock<HashMap<SocketAddr, usize>>,
    /// Every live connection's server ufrag, whichever loop has it.
    pub(crate) ufrags: RwLock<HashSet<String>>,
    /// This host's addresses, as read at start: the sources a [`SfuConfig::local_only`] media
    /// plane serves, and the addresses a reply may be sent from.
    pub(crate) host: LocalIps,
    pub(crate) local_only: bool,
    /// A loop died: the media plane is down.
    pub(crate) failed: AtomicBool,
    pub(crate) failure: Notify,
    /// Keys the room-to-loop hash, so nobody outside can aim rooms at one loop.
    pub(crate) hash_key: std::hash::RandomState,
}

/// This host's own addresses, as read at start: the sources a local-only media plane serves.
pub(crate) struct LocalIps(pub(crate) HashSet<IpAddr>);

impl LocalIps {
    pub(crate) fn serves(&self, ip: IpAddr) -> bool {
        // An IPv4 client on an IPv6 wildcard socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_loopback() || self.0.contains(&ip)
    }
}

pub(crate) enum Msg {
    Command(MediaCommand),
    /// A TCP connection another loop accepted whose first check names this loop, with the
    /// bytes that loop read from it.
    Tcp(std::net::TcpStream, SocketAddr, Vec<u8>),
    Stats(oneshot::Sender<SfuStats>),
    PeerStats(oneshot::Sender<Vec<PeerStats>>),
}

/// How other threads reach one loop.
pub(crate) struct LoopHandle {
    commands: std::sync::mpsc::Sender<Msg>,
    /// Bounded: a flood of first packets for this loop's flows must not grow memory.
    handover: std::sync::mpsc::SyncSender<Handed>,
    waker: Arc<Waker>,
}

impl LoopHandle {
    pub(crate) fn send(&self, msg: Msg) {
        if self.commands.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }

    pub(super) fn hand_over(&self, data: &[u8], from: SocketAddr, to: Option<IpAddr>) -> bool {
        let ok = self.handover.try_send((data.to_vec(), from, to)).is_ok();
        if ok {
            let _ = self.waker.wake();
        }
        ok
    }
}

/// What a loop thread starts with.
pub(crate) struct LoopParts {
    pub(crate) index: usize,
    pub(super) poll: Poll,
    pub(super) socket: std::net::UdpSocket,
    pub(super) listener: Option<std::net::TcpListener>,
    pub(super) commands: std::sync::mpsc::Receiver<Msg>,
    pub(super) handover: std::sync::mpsc::Receiver<Handed>,
}

/// A datagram handed between loops: its bytes, its source, and the local address it came to.
pub(super) type Handed = (Vec<u8>, SocketAddr, Option<IpAddr>);

pub(crate) fn new_loop(
    index: usize,
    socket: std::net::UdpSocket,
    listener: Option<std::net::TcpListener>,
) -> std::io::Result<(LoopHandle, LoopParts)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = std::sync::mpsc::channel();
    let (htx, hrx) = std::sync::mpsc::sync_channel(HANDOVER_QUEUE);
    Ok((
        LoopHandle {
            commands: tx,
            handover: htx,
            waker,
        },
        LoopParts {
            index,
            poll,
            socket,
            listener,
            commands: rx,
            handover: hrx,
        },
    ))
}

/// Bind one socket of the shared port's `SO_REUSEPORT` group.
pub(crate) fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        warn!(error = %e, "could not enlarge a media socket's receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        warn!(error = %e, "could not enlarge a media socket's send buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Says when a loop thread dies of a panic: the media plane is marked failed (so `/healthz`
/// and requests say so and the server exits for its supervisor to restart it), and signaling
/// hears of it. A loop that ends because the server is shutting down is not a failure.
pub(super) struct FailGuard {
    pub(super) index: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) events: mpsc::UnboundedSender<MediaEvent>,
}

impl Drop for FailGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            error!(index = self.index, "a media loop died");
            self.shared
                .failed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.shared.failure.notify_waiters();
            let _ = self
                .events
                .send(MediaEvent::LoopFailed { index: self.index });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn local_only_serves_loopback_and_own_addresses_and_nothing_else() {
        let local = LocalIps([ip("192.0.2.2"), ip("2001:db8::7")].into_iter().collect());
        for served in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "192.0.2.2",
            "::ffff:192.0.2.2",
            "2001:db8::7",
        ] {
            assert!(local.serves(ip(served)), "{served}");
        }
        for foreign in [
            "192.0.2.3",
            "10.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::8",
            "0.0.0.0",
        ] {
            assert!(!local.serves(ip(foreign)), "{foreign}");
        }
    }
}
