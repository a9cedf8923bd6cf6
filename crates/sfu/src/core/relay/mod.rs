//! Relays between the nodes of a cluster, as the core runs them (`crate::relay` says what a
//! relay is and holds the edge's state of one): the origin's end ([`origin`]), the other
//! node's ([`edge`]), and what either end does when a relay goes.

use crate::core::Output;
use crate::ids::PeerId;
use crate::peer::Role;
use crate::{MediaCore, MediaEvent};
use miclink_protocol::Ident;
use std::time::Instant;
use tracing::{info, warn};

mod edge;
mod origin;

impl MediaCore {
    /// Either end: the relay of `room` with `node` goes.
    pub(crate) fn relay_close(&mut self, now: Instant, room: &Ident, node: &str) {
        let (out, inbound) = match self.rooms.get(room) {
            Some(r) => (r.relays.get(node).copied(), r.relays_in.get(node).copied()),
            None => return,
        };
        if let Some(id) = out {
            info!(%room, %node, "relay to another node closed");
            self.remove_peer(id);
        }
        if let Some(id) = inbound {
            info!(%room, %node, "relay from the origin closed");
            self.close_relay_in(now, id);
        }
    }

    /// A relay connection ended on its own (failed): the other node hears it from signaling.
    pub(crate) fn relay_failed(&mut self, now: Instant, id: PeerId) {
        let Some(p) = self.peers.get(&id) else {
            return;
        };
        let room = p.room.clone();
        let (node, sending) = match &p.role {
            Role::RelayOut(_, node) => (node.clone(), true),
            Role::RelayIn(r) => (r.node.clone(), false),
            _ => return,
        };
        if p.role.relay_in().is_some() {
            self.close_relay_in(now, id);
        } else {
            self.remove_peer(id);
        }
        warn!(%room, %node, "a relay connection failed");
        self.outputs
            .push_back(Output::Event(MediaEvent::RelayEnded {
                room,
                node,
                sending,
            }));
    }
}
