//! The loop's own UDP sockets beside the shared one: one connected to each remote address of a
//! connection here (so the kernel brings that flow to this loop), and one per relay connection
//! to a cluster node's media port.

use std::net::{IpAddr, SocketAddr};

use mio::net::UdpSocket;
use mio::{Interest, Token};
use tracing::{debug, warn};

use super::Driver;
use super::shared::bind_reuseport;
use crate::Pii;

impl Driver {
    /// Open a socket connected to `remote` on the shared port, so the kernel brings that flow
    /// to this loop from now on, and say so to the other loops for packets already under way.
    ///
    /// On a wildcard bind the socket is bound to the local address the flow came to, so what
    /// it sends leaves from there (the kernel's route could pick another address of a
    /// multi-homed host, and the client would drop the answers).
    pub(super) fn connect(&mut self, remote: SocketAddr, local: IpAddr) {
        if let Ok(mut owners) = self.shared.owners.write() {
            owners.insert(remote, self.index);
        }
        if self.connected_by_addr.contains_key(&remote) {
            return;
        }
        let own = self.own_address(local);
        let bind = own.map_or(self.bound, |ip| SocketAddr::new(ip, self.bound.port()));
        let socket = bind_reuseport(bind).and_then(|s| {
            s.connect(remote)?;
            Ok(s)
        });
        let (socket, token) = match socket.map(|s| self.register(s)) {
            Ok(Some(registered)) => registered,
            Ok(None) => return,
            Err(e) => {
                // The shared socket still works; other loops hand this flow over.
                debug!(error = %e, remote = %Pii(remote), "no connected socket");
                return;
            }
        };
        self.connected.insert(token, (socket, remote, Some(local)));
        self.connected_by_addr.insert(remote, token);
    }

    /// A socket of its own for relay connection `relay` to a cluster node's media port at
    /// `remote`: bound to an address of this host's (`local`'s when it is one) on a port the
    /// kernel picks, and connected, so the other node tells this relay's flow from any other.
    pub(super) fn connect_relay(&mut self, remote: SocketAddr, relay: u64, local: IpAddr) {
        if self.relays_by_remote.contains_key(&(remote, relay)) {
            return;
        }
        let ip = self.own_address(local).unwrap_or(self.bound.ip());
        let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).and_then(|s| {
            s.connect(remote)?;
            s.set_nonblocking(true)?;
            Ok(s)
        });
        let (socket, token) = match socket.map(|s| self.register(s)) {
            Ok(Some(registered)) => registered,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, remote = %Pii(remote), "no socket for a relay");
                return;
            }
        };
        self.relays.insert(token, (socket, remote, relay));
        self.relays_by_remote.insert((remote, relay), token);
    }

    /// A UDP socket of this loop's poll, with its token; `None` if the poll refused it.
    pub(super) fn register(&mut self, socket: std::net::UdpSocket) -> Option<(UdpSocket, Token)> {
        let mut socket = UdpSocket::from_std(socket);
        let token = Token(self.next_token);
        self.next_token += 1;
        self.poll
            .registry()
            .register(&mut socket, token, Interest::READABLE)
            .ok()?;
        Some((socket, token))
    }

    pub(super) fn forget(&mut self, remote: SocketAddr) {
        if let Some(token) = self.connected_by_addr.remove(&remote)
            && let Some((mut socket, _, _)) = self.connected.remove(&token)
        {
            let _ = self.poll.registry().deregister(&mut socket);
        }
        if let Ok(mut owners) = self.shared.owners.write()
            && owners.get(&remote) == Some(&self.index)
        {
            owners.remove(&remote);
        }
    }
}
