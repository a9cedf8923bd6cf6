//! What the socket tasks and the hub say to each other, and how frames are encoded. Both sides
//! depend on this module and not on each other.

use axum::extract::ws::Utf8Bytes;
use miclink_protocol::{Ident, Request};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub(crate) type ConnId = u64;

/// What a socket task tells the hub.
pub(crate) enum HubMsg {
    Connect {
        conn: ConnId,
        tx: mpsc::Sender<Outbound>,
        /// A WHIP or WHEP resource rather than a socket: its member makes its own offers,
        /// and the end of its media connection is the end of its connection.
        http: bool,
    },
    /// WHIP for an anchor already in `room` on a socket (the demo's controls): the encoder
    /// publishes `sdp` for them; `not_in_room` when they are not (the encoder then joins).
    Attach {
        conn: ConnId,
        id: u64,
        room: miclink_protocol::Ident,
        user: miclink_protocol::Ident,
        sdp: String,
    },
    /// The anchor an encoder attached to ends the live (the encoder's `DELETE`).
    EndLive {
        conn: ConnId,
        room: miclink_protocol::Ident,
        user: miclink_protocol::Ident,
    },
    /// WHEP: the connection's member watches through a connection made from `sdp`.
    Watch {
        conn: ConnId,
        id: u64,
        sdp: String,
    },
    Request {
        conn: ConnId,
        id: u64,
        request: Request,
    },
    Closed {
        conn: ConnId,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    /// The rooms this hub holds (for a cluster's room directory).
    Rooms {
        reply: oneshot::Sender<Vec<miclink_protocol::Ident>>,
    },
    /// The cluster's answer to [`crate::relay::RelayOut::Resolve`]: the node holding the room
    /// `conn` joins, `None` for this one.
    Resolved {
        conn: ConnId,
        origin: Option<String>,
    },
    /// What another node sent.
    FromNode {
        from: String,
        msg: crate::relay::Relay,
    },
    /// A node of the cluster stopped heartbeating.
    NodeLost {
        node: String,
    },
    /// A node of the cluster registered (or registered again after a restart).
    NodeJoined {
        node: String,
    },
    /// A WHIP or WHEP request for `room`: the URL of the node holding it when another does
    /// (`claim`: a WHIP encoder going live claims it for this node when nobody does).
    Locate {
        room: Ident,
        claim: bool,
        reply: oneshot::Sender<Option<String>>,
    },
    /// A server API call, answered here ([`crate::api::ApiAnswer::NotHere`] in a cluster when
    /// another node holds its room).
    Api {
        call: crate::api::ApiCall,
        reply: oneshot::Sender<crate::api::ApiAnswer>,
    },
    /// A server API call for node `node` of the cluster, carried there.
    ApiAt {
        node: String,
        call: crate::api::ApiCall,
        reply: oneshot::Sender<crate::api::ApiAnswer>,
    },
    /// The node of the cluster holding `room`, when another one does.
    Origin {
        room: Ident,
        reply: oneshot::Sender<Option<String>>,
    },
    /// The other live nodes of the cluster.
    Nodes {
        reply: oneshot::Sender<Vec<String>>,
    },
}

/// What the signaling plane holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub rooms: usize,
    pub sessions: usize,
    pub connections: usize,
}

/// What the hub asks a socket to do.
#[derive(Debug)]
pub(crate) enum Outbound {
    Text(Utf8Bytes),
    /// The reply to a successful join or resume: the socket now has a session, of `member`
    /// (said by the hub that made it; `None` from an older origin node that does not say).
    Joined {
        text: Utf8Bytes,
        member: Option<crate::relay::Member>,
    },
    /// The socket's session ended (left, disconnected, room ended) but the socket stays: it is
    /// held to the join timeout again.
    Unbound,
    Close(u16, &'static str),
    /// For a connection served for another node: a message for that node, carried in order
    /// with the connection's replies (a socket never gets one).
    ToNode(Box<crate::relay::Relay>),
}

/// WebSocket close code for "policy violation".
pub(crate) const CLOSE_POLICY: u16 = 1008;
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Application close code: a newer session of the same user took over.
pub(crate) const CLOSE_REPLACED: u16 = 4001;

pub(crate) fn encode(msg: &impl Serialize) -> Utf8Bytes {
    serde_json::to_string(msg)
        .expect("protocol messages hold only string-keyed maps and always serialize")
        .into()
}
