//! This node in a cluster ([`crate::relay`]): what it knows of the others (which are live, which
//! connections it serves for them), the messages it sends them and what it does with theirs,
//! a node lost or joined, and where a WHIP or WHEP request's room is held. And one side of
//! connection relaying: a socket here whose room another node holds (its origin) has its
//! join resolved, its requests relayed there, and what the origin says back put on it.
//!
//! It must not serve another node's connection (that is `served`) nor handle the media of rooms
//! held elsewhere (that is `edge`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use miclink_protocol::{EndReason, Event, Ident, Request};
use miclink_sfu::MediaCommand;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{Conn, Hub, edge};
use crate::relay::{Relay, RelayOut, close_reason};
use crate::wire::{ConnId, Outbound, encode};

/// Relay messages waiting for the cluster glue at most; past that a relayed connection is
/// dropped as a socket that cannot keep up is.
pub(crate) const RELAY_QUEUE: usize = 16_384;

/// This hub in a cluster.
pub(crate) struct Clustered {
    pub(crate) node: String,
    pub(crate) out: mpsc::Sender<RelayOut>,
    /// Joins waiting to hear which node holds their room: the request, by connection.
    pub(super) resolving: HashMap<ConnId, (u64, Request)>,
    /// Connections of other nodes served here: (node, its id) -> the id here.
    pub(super) served: HashMap<(String, ConnId), ConnId>,
    /// Ids for them, from the top of the range down, apart from the sockets' (from 1 up).
    pub(super) next_served: ConnId,
    /// Members of rooms held elsewhere whose media is served here, and their rooms.
    pub(super) edge_members: HashMap<(Ident, Ident), edge::EdgeMember>,
    pub(super) edge_rooms: HashMap<Ident, edge::EdgeRoom>,
    /// The other nodes live in the registry, as the cluster glue last said: a session token
    /// is relayed only to one of them (a token can name any node; a client must not pick
    /// where this node sends its requests).
    pub(super) live: HashSet<String>,
    /// Server API calls carried to other nodes, waiting for their answers, by call id.
    pub(super) calls: HashMap<u64, (String, oneshot::Sender<crate::api::ApiAnswer>)>,
    pub(super) next_call: u64,
}

impl Clustered {
    pub(crate) fn new(node: String, out: mpsc::Sender<RelayOut>) -> Clustered {
        Clustered {
            node,
            out,
            resolving: HashMap::new(),
            served: HashMap::new(),
            next_served: ConnId::MAX,
            edge_members: HashMap::new(),
            edge_rooms: HashMap::new(),
            live: HashSet::new(),
            calls: HashMap::new(),
            next_call: 0,
        }
    }
}

/// What a connection is to the cluster.
pub(super) enum ConnCluster {
    /// A socket (or WHEP resource) here that was relayed to another node: from its first
    /// relayed request on, whether it is relayed now or not.
    Relayed(Relayed),
    /// A connection of another node, served here.
    Served(Served),
}

/// A socket here whose room another node holds, or held ([`crate::relay`]).
pub(super) struct Relayed {
    /// The node its requests go to now (the room's origin); `None` once that ended.
    pub(super) origin: Option<String>,
    /// The requests relayed for it so far ([`Relay::Request`]'s `n`; never reset).
    pub(super) sent: u64,
    /// The last join or resume relayed was a resume.
    pub(super) resuming: bool,
    /// The member (room, user) whose media this node serves ([`super::edge`]).
    pub(super) member: Option<(Ident, Ident)>,
}

/// A connection of another node served here ([`super::served`]).
pub(super) struct Served {
    /// That node, and its id of the connection.
    pub(super) by: (String, ConnId),
    /// The last request taken (its `n`), read by the task carrying `Unbound` to that node.
    pub(super) upto: Arc<AtomicU64>,
}

impl Conn {
    /// Relayed: the node its requests go to now.
    pub(super) fn origin(&self) -> Option<&str> {
        self.relayed()?.origin.as_deref()
    }

    pub(super) fn relayed(&self) -> Option<&Relayed> {
        match &self.cluster {
            Some(ConnCluster::Relayed(r)) => Some(r),
            _ => None,
        }
    }

    pub(super) fn relayed_mut(&mut self) -> Option<&mut Relayed> {
        match &mut self.cluster {
            Some(ConnCluster::Relayed(r)) => Some(r),
            _ => None,
        }
    }

    /// The relayed part, made on the first request relayed; `None` for a connection served
    /// for another node (which is never relayed on).
    pub(super) fn relaying(&mut self) -> Option<&mut Relayed> {
        if self.cluster.is_none() {
            self.cluster = Some(ConnCluster::Relayed(Relayed {
                origin: None,
                sent: 0,
                resuming: false,
                member: None,
            }));
        }
        self.relayed_mut()
    }

    /// Relayed: the member whose media this node serves.
    pub(super) fn edge_member(&self) -> Option<&(Ident, Ident)> {
        self.relayed()?.member.as_ref()
    }

    pub(super) fn served(&self) -> Option<&Served> {
        match &self.cluster {
            Some(ConnCluster::Served(s)) => Some(s),
            _ => None,
        }
    }

    /// Served: no longer; what it was.
    pub(super) fn take_served(&mut self) -> Option<Served> {
        match self.cluster.take() {
            Some(ConnCluster::Served(s)) => Some(s),
            other => {
                self.cluster = other;
                None
            }
        }
    }

    /// Served: the node it is served for, and that node's id of it.
    pub(super) fn served_for(&self) -> Option<&(String, ConnId)> {
        self.served().map(|s| &s.by)
    }
}

impl Hub {
    /// Tell the cluster glue `out`; a full queue drops `conn` (whose traffic it is), as a
    /// socket that cannot keep up is dropped.
    pub(super) fn tell_cluster(&mut self, conn: ConnId, out: RelayOut) {
        let Some(c) = &self.cluster else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = c.out.try_send(out) {
            warn!(
                conn,
                "the cluster cannot keep up; dropping a relayed connection"
            );
            self.drop_conn(conn);
        }
    }

    /// Send `relay` to `node` for local socket `conn` (a full queue drops the socket).
    pub(super) fn tell_node_for(&mut self, conn: ConnId, node: String, relay: Relay) {
        self.tell_cluster(conn, RelayOut::Send { node, relay });
    }

    /// A message for `node` that belongs to no socket.
    pub(super) fn tell_node(&mut self, node: String, relay: Relay) {
        if let Some(c) = &self.cluster
            && c.out.try_send(RelayOut::Send { node, relay }).is_err()
        {
            debug!("the cluster cannot keep up; a relay message was dropped");
        }
    }

    /// Relay socket `conn`'s request to `node`, numbered.
    pub(super) fn relay_request(&mut self, conn: ConnId, node: String, id: u64, request: Request) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(r) = c.relaying() else {
            return;
        };
        r.sent += 1;
        match request {
            Request::Join { .. } => r.resuming = false,
            Request::Resume { .. } => r.resuming = true,
            _ => {}
        }
        let n = r.sent;
        self.tell_node_for(
            conn,
            node,
            Relay::Request {
                conn,
                n,
                id,
                request,
            },
        );
    }

    /// Which node holds the room a join waited for is known.
    pub(super) fn resolved(&mut self, conn: ConnId, origin: Option<String>) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let Some((id, request)) = cluster.resolving.remove(&conn) else {
            return;
        };
        let here = origin.as_ref().is_none_or(|o| *o == cluster.node);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Requests were refused while the join waited, so this cannot hold; if it did, the
        // socket's state wins over a stale answer.
        if c.session.is_some() || c.origin().is_some() {
            return;
        }
        if here {
            if let Request::Join {
                room,
                user,
                role,
                name,
                token,
            } = request
            {
                self.join(conn, id, room, user, role, name, token);
            }
            return;
        }
        let node = origin.unwrap_or_default();
        debug!(conn, %node, "the room is held by another node; relaying there");
        if let Some(r) = c.relaying() {
            r.origin = Some(node.clone());
        }
        self.relay_request(conn, node, id, request);
    }

    /// What another node sent: requests of its sockets for rooms held here, what our own
    /// relayed sockets get back, or a word about media ([`Self::on_node_media`]).
    pub(super) fn on_node_msg(&mut self, from: String, msg: Relay) {
        if self.cluster.is_none() {
            return;
        }
        match msg {
            Relay::Request {
                conn,
                n,
                id,
                request,
            } => self.serve_request(from, conn, n, id, request),
            Relay::Closed { conn } => self.served_closed(from, conn),
            Relay::Api { id, call } => self.api_from(from, id, call),
            Relay::ApiAnswer { id, answer } => self.api_answered(&from, id, answer),
            Relay::Text { conn, text } => {
                self.origin_says(&from, conn, Outbound::Text(text.into()))
            }
            Relay::Joined { conn, text, member } => {
                let relayed = self
                    .conns
                    .get(&conn)
                    .and_then(|c| c.relayed())
                    .filter(|r| r.origin.as_deref() == Some(from.as_str()))
                    .map(|r| r.resuming);
                let joined = Outbound::Joined {
                    text: text.into(),
                    member: member.clone(),
                };
                self.origin_says(&from, conn, joined);
                if let Some(resumed) = relayed
                    && let Some(member) = member
                {
                    self.edge_joined(conn, member, resumed);
                }
            }
            relay @ (Relay::MediaOpen { .. }
            | Relay::MediaClose { .. }
            | Relay::MediaOffer { .. }
            | Relay::MediaAnswer { .. }
            | Relay::MediaEnded { .. }
            | Relay::MediaSeat { .. }
            | Relay::MediaPublished { .. }) => self.on_node_media(from, relay),
            Relay::Unbound { conn, upto } => {
                // A later request is on its way there: a join the origin serves as a new
                // connection, whose reply must still reach the socket.
                // (0: from a node that does not number requests.)
                if upto != 0
                    && self
                        .conns
                        .get(&conn)
                        .and_then(|c| c.relayed())
                        .is_some_and(|r| r.sent > upto)
                {
                    debug!(
                        conn,
                        upto, "a session ended there with a request after it in flight"
                    );
                    return;
                }
                self.origin_says(&from, conn, Outbound::Unbound)
            }
            Relay::Close { conn, code, reason } => {
                self.origin_says(&from, conn, Outbound::Close(code, close_reason(&reason)))
            }
        }
    }

    /// What the origin `from` sends one of our sockets relayed to it. A session that ended
    /// there ends the relaying: the socket may join again, anywhere.
    pub(super) fn origin_says(&mut self, from: &str, conn: ConnId, out: Outbound) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(r) = c
            .relayed_mut()
            .filter(|r| r.origin.as_deref() == Some(from))
        else {
            return;
        };
        let ends = matches!(out, Outbound::Unbound | Outbound::Close(..));
        if ends {
            r.origin = None;
        }
        if matches!(out, Outbound::Unbound) {
            self.edge_conn_ends(conn, true);
        }
        self.queue(conn, out);
        if ends {
            self.tell_node_for(conn, from.to_owned(), Relay::Closed { conn });
        }
    }

    /// `node` is gone. Our sockets relayed to it hear that their room ended (`node_lost`);
    /// the connections we served for it are dropped (their sessions wait out their grace).
    pub(super) fn node_lost(&mut self, node: &str) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        cluster.live.remove(node);
        // Server API calls waiting on it get their answer now.
        let lost: Vec<u64> = cluster
            .calls
            .iter()
            .filter(|(_, (n, _))| n == node)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some((_, reply)) = cluster.calls.remove(&id) {
                let _ = reply.send(crate::api::ApiAnswer::refused(
                    503,
                    "unavailable",
                    "the node holding the room was lost",
                ));
            }
        }
        let served: Vec<ConnId> = cluster
            .served
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|(_, here)| *here)
            .collect();
        let relayed: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.origin() == Some(node))
            .map(|(id, _)| *id)
            .collect();
        if !served.is_empty() || !relayed.is_empty() {
            warn!(%node, served = served.len(), relayed = relayed.len(), "a cluster node was lost");
        }
        for here in served {
            self.forget_served(here);
        }
        let ended = encode(&Event::RoomEnded {
            reason: EndReason::NodeLost,
        });
        // Media: relays to it from rooms held here, and members served here of rooms it held.
        let held: Vec<Ident> = self.rooms.keys().cloned().collect();
        for room in held {
            self.to_media(MediaCommand::RelayClose {
                room,
                node: node.to_owned(),
            });
        }
        self.edge_node_lost(node);
        for conn in relayed {
            self.edge_conn_ends(conn, true);
            if let Some(r) = self.conns.get_mut(&conn).and_then(|c| c.relayed_mut()) {
                r.origin = None;
            }
            // Should the node only have looked lost (Redis was away), its sessions for these
            // sockets must not stay bound: best effort, it is likely gone.
            self.tell_node_for(conn, node.to_owned(), Relay::Closed { conn });
            self.queue(conn, Outbound::Text(ended.clone()));
            self.queue(conn, Outbound::Unbound);
        }
    }

    /// A node of the cluster registered (or registered again after a restart).
    pub(super) fn node_joined(&mut self, node: String) {
        if let Some(c) = &mut self.cluster {
            c.live.insert(node);
        }
    }

    /// Where a WHIP or WHEP request for `room` belongs: another node's URL, or `None` for here.
    pub(super) fn locate(
        &mut self,
        room: Ident,
        claim: bool,
        reply: oneshot::Sender<Option<String>>,
    ) {
        match &self.cluster {
            // Held here, or no cluster: served here.
            Some(c) if !self.rooms.contains_key(&room) => {
                if let Err(e) = c.out.try_send(RelayOut::Locate { room, claim, reply })
                    && let RelayOut::Locate { reply, .. } = e.into_inner()
                {
                    let _ = reply.send(None);
                }
            }
            _ => {
                let _ = reply.send(None);
            }
        }
    }
}
