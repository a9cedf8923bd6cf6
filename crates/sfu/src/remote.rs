//! How a client reaches the media port: on which transport, from which address.

use std::net::SocketAddr;

/// How a client reaches the media port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams on the shared UDP port.
    Udp,
    /// RFC 4571 frames on one TCP connection the client opened (ICE-TCP, passive).
    Tcp,
    /// Datagrams on a UDP socket of its own (another port) that the relay connection with
    /// this number has to a cluster node's media port: two relays between the same nodes (two
    /// rooms, or one each way) must not share a flow, which the shared port would make them.
    Relay(u64),
}

/// A client's address on one transport: the same address and port may be a UDP flow and a
/// TCP connection at once, and they are different paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Remote {
    pub addr: SocketAddr,
    pub transport: Transport,
}

impl Remote {
    pub fn udp(addr: SocketAddr) -> Remote {
        Remote {
            addr,
            transport: Transport::Udp,
        }
    }

    pub fn tcp(addr: SocketAddr) -> Remote {
        Remote {
            addr,
            transport: Transport::Tcp,
        }
    }
}
