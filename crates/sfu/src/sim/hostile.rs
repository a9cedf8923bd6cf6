//! What a hostile client can put on the wire besides well-behaved media: raw datagrams from its
//! own addresses and arbitrary RTCP inside its real SRTCP context. Used by the attack tests and
//! by the media fuzz target (crates/checks).

use std::net::SocketAddr;

use super::{ClientId, Net};
use crate::PcKind;

impl Net {
    /// A raw datagram arrives at the core from client `c`'s address of connection `pc`, as is
    /// (no ICE, DTLS or SRTP applied): garbage, a forged STUN message, a replayed record.
    pub fn raw(&mut self, c: ClientId, pc: PcKind, data: &[u8]) {
        let from = match pc {
            PcKind::Subscribe => self.clients[c].addr,
            PcKind::Publish => self.clients[c].publish_addr(),
        };
        self.raw_from(from, data);
    }

    /// A raw datagram arrives at the core from `from`, which may be no client's address.
    pub fn raw_from(&mut self, from: SocketAddr, data: &[u8]) {
        let now = self.now;
        self.core.handle_datagram(now, from, data);
        self.pump();
    }

    /// Client `c` sends `packets` on its connection `pc` through the connection's own SRTCP
    /// context, so they pass authentication at the core and reach its RTCP handling. Returns
    /// false when the connection or a track to send them on does not exist (yet).
    pub fn write_rtcp(
        &mut self,
        c: ClientId,
        pc: PcKind,
        packets: Vec<Box<dyn rtc::rtcp::Packet>>,
    ) -> bool {
        let now = self.now;
        let client = &mut self.clients[c];
        let written = match pc {
            PcKind::Subscribe => client.subscriber.as_mut().and_then(|pc| {
                let id = pc.get_receivers().next()?;
                pc.rtp_receiver(id)?.write_rtcp(now, packets).ok()
            }),
            PcKind::Publish => client.publisher.as_mut().and_then(|p| {
                let id = p.pc.get_senders().next()?;
                p.pc.rtp_sender(id)?.write_rtcp(now, packets).ok()
            }),
        };
        self.pump();
        written.is_some()
    }
}
