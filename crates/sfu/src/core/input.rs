//! Datagrams into the core: which connection one belongs to (its address, else the ufrag of
//! the STUN check that introduces a new address, which also names the loop that owns it), and
//! feeding it to that connection; the first checks of a subscribe connection kept until its
//! answer is in.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::BytesMut;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tracing::debug;

use crate::MediaCore;
use crate::core::{Output, Route};
use crate::peer::MAX_ADDRS;
use crate::pii::Pii;
use crate::remote::{Remote, Transport};
use crate::stun;
use rtc::sansio::Protocol;

impl MediaCore {
    /// The candidate a datagram that came to `to` belongs to: that address when it is one of
    /// the advertised, else the first (behind NAT the advertised address is not a local one).
    fn local_of(&self, to: Option<IpAddr>, transport: Transport) -> SocketAddr {
        let base = match transport {
            Transport::Udp | Transport::Relay(_) => self.local,
            Transport::Tcp => self.local_tcp,
        };
        to.map(|ip| SocketAddr::new(ip, base.port()))
            .filter(|a| self.config.public.iter().any(|p| p.ip() == a.ip()))
            .unwrap_or(base)
    }

    pub(crate) fn input(
        &mut self,
        now: Instant,
        from: Remote,
        to: Option<IpAddr>,
        data: &[u8],
    ) -> Route {
        self.saw(now);
        self.stats.datagrams_in += 1;
        let id = match self.by_addr.get(&from) {
            Some(&id) => id,
            None => {
                // A new address must introduce itself with a STUN check naming a live ufrag,
                // whose first two characters name the loop that owns the connection.
                let Some(ufrag) = stun::server_ufrag(data) else {
                    return Route::Unknown;
                };
                let owner = ufrag
                    .get(..2)
                    .and_then(|i| usize::from_str_radix(i, 16).ok())
                    .filter(|i| *i < self.config.loops);
                if let Some(owner) = owner
                    && owner != self.config.loop_index
                {
                    return Route::Loop(owner);
                }
                let Some(&id) = self.by_ufrag.get(ufrag) else {
                    self.stats.datagrams_dropped += 1;
                    return Route::Refused;
                };
                id
            }
        };
        let local_addr = self.local_of(to, from.transport);
        let Some(peer) = self.peers.get_mut(&id) else {
            self.stats.datagrams_dropped += 1;
            return Route::Handled;
        };
        // A relay's checks went out from its own candidate, whatever socket carried them.
        let local_addr = peer.role.relay_in().map_or(local_addr, |r| r.local);
        if let Some(sub) = peer.role.subscriber_mut()
            && sub.awaits_first_answer()
        {
            if !sub.keep_early(data, from, to) {
                self.stats.datagrams_dropped += 1;
            }
            return Route::Handled;
        }
        let transport_protocol = match from.transport {
            Transport::Udp | Transport::Relay(_) => TransportProtocol::UDP,
            Transport::Tcp => TransportProtocol::TCP,
        };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr,
                peer_addr: from.addr,
                ecn: None,
                transport_protocol,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = peer.pc.handle_read(msg) {
            debug!(parent: &peer.span, error = %e, from = %Pii(from.addr), "datagram refused");
            self.stats.datagrams_dropped += 1;
            return Route::Handled;
        }
        peer.counters.datagrams_in += 1;
        peer.counters.bytes_in += data.len() as u64;
        if !peer.addrs.contains(&from) && stun::is_stun(data) && peer.addrs.len() < MAX_ADDRS {
            peer.addrs.push(from);
            self.by_addr.entry(from).or_insert(id);
            self.outputs.push_back(Output::Connect {
                remote: from,
                local: local_addr,
            });
        }
        self.process(now, id);
        Route::Handled
    }
}
