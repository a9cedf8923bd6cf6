//! The running media plane as the rest of the server sees it: [`Sfu`], a cheap handle that
//! starts the event loops, routes commands to the loop owning each room, and gathers counters.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use miclink_protocol::Ident;
use tokio::sync::{Notify, mpsc};

use crate::driver::{self, LocalIps, Msg, Shared};
use crate::{CoreConfig, MediaCommand, MediaEvent, PeerStats, SfuError, SfuStats};

/// Settings of the media plane.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The UDP address every peer connection shares.
    pub udp_addr: SocketAddr,
    /// ICE-TCP: also listen on TCP at the same address and port number, and offer passive TCP
    /// candidates there, for clients whose network blocks UDP.
    pub tcp: bool,
    /// Addresses put in the host candidates clients connect to (with `udp_addr`'s port). Empty:
    /// the bound address, or for a wildcard bind the loopback address and every interface address
    /// of its family.
    pub public_ips: Vec<IpAddr>,
    /// Serve only clients on this machine: datagrams (and TCP connections) whose source is not
    /// one of this host's own addresses are dropped. The embedded defaults bind the wildcard so
    /// that a browser which never pairs with a loopback candidate (Firefox) finds the host's
    /// interface address, and this keeps other machines out all the same.
    pub local_only: bool,
    /// Event-loop threads; 0 means one per core.
    pub loops: usize,
    /// Peer connections one loop may hold; `None`: derived from the open file limit
    /// (`max_peers_per_loop`).
    pub max_peers_per_loop: Option<usize>,
    /// Fault injection for tests: the loop that owns this room panics when someone enters it.
    #[cfg(feature = "test-support")]
    pub fault_room: Option<String>,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            udp_addr: SocketAddr::from(([127, 0, 0, 1], 7882)),
            tcp: true,
            public_ips: vec![IpAddr::from([127, 0, 0, 1])],
            local_only: false,
            loops: 0,
            max_peers_per_loop: None,
            #[cfg(feature = "test-support")]
            fault_room: None,
        }
    }
}

/// Peer connections one of `loops` loops may hold: two thirds of the open file limit, less 1,024
/// kept for everything else, shared by the loops (a connection takes a connected socket as a
/// rule, and members' WebSockets take the rest), and at least 256 so a low limit still serves
/// a room: a connection that gets no socket of its own works on the shared one.
pub(crate) fn max_peers_per_loop(loops: usize) -> usize {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(u64::MAX, |(soft, _)| soft);
    let budget = limit.saturating_sub(1024) / 3 * 2 / loops.max(1) as u64;
    usize::try_from(budget).unwrap_or(usize::MAX).max(256)
}

/// A handle to the running media plane.
#[derive(Clone)]
pub struct Sfu {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl Sfu {
    /// Bind the UDP port and start the event loops, each on its own thread. Events for signaling
    /// arrive on the returned receiver.
    pub fn start(config: SfuConfig) -> std::io::Result<(Sfu, mpsc::UnboundedReceiver<MediaEvent>)> {
        let count = match config.loops {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(255);
        let (local_addr, sockets, listeners) = bind(&config, count)?;
        let interfaces: Vec<IpAddr> = if_addrs::get_if_addrs()
            .map(|list| list.into_iter().map(|i| i.ip()).collect())
            .unwrap_or_default();
        let host = LocalIps(interfaces.iter().copied().collect());
        let public_ips = if config.public_ips.is_empty() {
            default_public_ips(local_addr.ip(), interfaces)
        } else {
            config.public_ips.clone()
        };
        let public: Vec<SocketAddr> = public_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, local_addr.port()))
            .collect();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut handles = Vec::with_capacity(count);
        let mut parts = Vec::with_capacity(count);
        let mut listeners = listeners.into_iter();
        for (index, socket) in sockets.into_iter().enumerate() {
            let (handle, part) = driver::new_loop(index, socket, listeners.next())?;
            handles.push(handle);
            parts.push(part);
        }
        let shared = Arc::new(Shared {
            loops: handles,
            owners: RwLock::new(HashMap::new()),
            ufrags: RwLock::new(HashSet::new()),
            host,
            local_only: config.local_only,
            failed: AtomicBool::new(false),
            failure: Notify::new(),
            hash_key: std::hash::RandomState::new(),
        });
        tracing::info!(
            bound = %local_addr,
            advertised = ?public_ips,
            loops = count,
            tcp = config.tcp,
            local_only = config.local_only,
            "media plane listening"
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for part in parts {
            let core = CoreConfig {
                loop_index: part.index,
                loops: count,
                public: public.clone(),
                max_peers: config
                    .max_peers_per_loop
                    .unwrap_or_else(|| max_peers_per_loop(count)),
                tcp_port: config.tcp.then_some(local_addr.port()),
            };
            let (shared, events, ready) = (shared.clone(), events_tx.clone(), ready_tx.clone());
            #[cfg(feature = "test-support")]
            let fault_room = config.fault_room.clone();
            #[cfg(not(feature = "test-support"))]
            let fault_room = None;
            std::thread::Builder::new()
                .name(format!("miclink-sfu-{}", part.index))
                .spawn(move || driver::run(part, core, shared, events, ready, fault_room))?;
        }
        drop(ready_tx);
        // Every loop builds its core (and DTLS certificate) on its own thread, then says so.
        for _ in 0..count {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Err(std::io::Error::other("a media loop did not start")),
            }
        }
        Ok((Sfu { shared, local_addr }, events_rx))
    }

    /// The UDP address peers send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Hand a command to the loop that owns its room.
    pub fn send(&self, command: MediaCommand) -> Result<(), SfuError> {
        if self.failed() {
            return Err(SfuError::Unavailable);
        }
        let index = self.loop_of(command.room());
        self.shared.loops[index].send(Msg::Command(command));
        Ok(())
    }

    /// Whether an event loop died; the media plane then serves nothing more.
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Resolves once an event loop has died.
    pub async fn failure(&self) {
        loop {
            let notified = self.shared.failure.notified();
            if self.failed() {
                return;
            }
            notified.await;
        }
    }

    /// The loop a room is pinned to: every connection of the room lives there, so forwarding
    /// never leaves the thread.
    fn loop_of(&self, room: &Ident) -> usize {
        use std::hash::BuildHasher;
        let hash = self.shared.hash_key.hash_one(room.as_str());
        (hash % self.shared.loops.len() as u64) as usize
    }

    /// Counters summed over every loop; `None` when a loop does not answer (it died).
    pub async fn stats(&self) -> Option<SfuStats> {
        let mut total = SfuStats::default();
        for l in &self.shared.loops {
            let (tx, rx) = tokio::sync::oneshot::channel();
            l.send(Msg::Stats(tx));
            total += rx.await.ok()?;
        }
        Some(total)
    }

    /// Counters of every peer connection, for per-room and per-participant metrics.
    pub async fn peer_stats(&self) -> Option<Vec<PeerStats>> {
        let mut all = Vec::new();
        for l in &self.shared.loops {
            let (tx, rx) = tokio::sync::oneshot::channel();
            l.send(Msg::PeerStats(tx));
            all.extend(rx.await.ok()?);
        }
        Some(all)
    }
}

/// The media port: `count` UDP sockets of one `SO_REUSEPORT` group (one per loop) and, with
/// ICE-TCP, as many TCP listeners on the same port number. When the OS picks the port (0), the
/// number it gave UDP may be taken for TCP; another is tried then.
#[allow(clippy::type_complexity)]
fn bind(
    config: &SfuConfig,
    count: usize,
) -> std::io::Result<(
    SocketAddr,
    Vec<std::net::UdpSocket>,
    Vec<std::net::TcpListener>,
)> {
    let attempts = if config.udp_addr.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        // The first socket fixes the port (the configured one, or the one the OS picked for 0).
        let first = driver::bind_reuseport(config.udp_addr)?;
        let local_addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..count {
            sockets.push(driver::bind_reuseport(local_addr)?);
        }
        if !config.tcp {
            return Ok((local_addr, sockets, Vec::new()));
        }
        match (0..count)
            .map(|_| crate::tcp::bind_listener(local_addr))
            .collect::<std::io::Result<Vec<_>>>()
        {
            Ok(listeners) => return Ok((local_addr, sockets, listeners)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no media port")))
}

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
