//! The hub: one task that owns the seat state machine and every session, and routes events.
//!
//! Sockets talk to it over one channel and it answers through each socket's bounded queue with
//! `try_send`, so a slow socket can never stall the hub: it is dropped instead, and its user may
//! `resume`. Broadcasts are serialized once and shared by every recipient.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use miclink_protocol::{
    EndReason, ErrorCode, Event, Ident, JoinResult, KickReason, Name, Reply, Request,
    RequestLinkResult, Role,
};
use miclink_seats::{Action, Joined, Output, Reply as SeatReply, Seats};
use miclink_sfu::{MediaCommand, MediaEvent, ReplyTo, Sfu};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, info_span, warn};

mod edge;

use crate::auth::Auth;
use crate::error::{media_error_code, seat_error_code};
use crate::relay::{Relay, RelayOut, close_reason, token_node};
use crate::session::{Session, SessionId, new_token};
use crate::wire::{CLOSE_GOING_AWAY, CLOSE_REPLACED, ConnId, HubMsg, Outbound, Stats, encode};
use crate::{MediaPlane, SignalingConfig};

const LIST_AUDIENCE_DEFAULT: u32 = 50;
const LIST_AUDIENCE_MAX: u32 = 200;

struct Conn {
    tx: mpsc::Sender<Outbound>,
    session: Option<SessionId>,
    /// A WHIP or WHEP resource ([`HubMsg::Connect`]).
    http: bool,
    /// A WHIP resource whose publish connection was answered: its end is this one's end.
    publishing: bool,
    /// A socket here whose room another node holds: its requests go there ([`crate::relay`]).
    remote: Option<String>,
    /// A connection of another node served here: that node and its id of it.
    served_for: Option<(String, ConnId)>,
    /// Relayed sockets: the requests relayed for it so far ([`Relay::Request`]'s `n`).
    relayed: u64,
    /// Served connections: the last request taken (its `n`), read by the task carrying
    /// `Unbound` to the edge.
    upto: Arc<AtomicU64>,
    /// Relayed sockets: the member (room, user) whose media this node serves ([`edge`]).
    media: Option<(Ident, Ident)>,
    /// Relayed sockets: the last join or resume relayed was a resume.
    resuming: bool,
}

impl Conn {
    fn new(tx: mpsc::Sender<Outbound>, http: bool) -> Conn {
        Conn {
            tx,
            session: None,
            http,
            publishing: false,
            remote: None,
            served_for: None,
            relayed: 0,
            upto: Arc::default(),
            media: None,
            resuming: false,
        }
    }
}

/// Relay messages waiting for the cluster glue at most; past that a relayed connection is
/// dropped as a socket that cannot keep up is.
pub(crate) const RELAY_QUEUE: usize = 16_384;

/// This hub in a cluster.
pub(crate) struct Clustered {
    pub(crate) node: String,
    pub(crate) out: mpsc::Sender<RelayOut>,
    /// Joins waiting to hear which node holds their room: the request, by connection.
    resolving: HashMap<ConnId, (u64, Request)>,
    /// Connections of other nodes served here: (node, its id) -> the id here.
    served: HashMap<(String, ConnId), ConnId>,
    /// Ids for them, from the top of the range down, apart from the sockets' (from 1 up).
    next_served: ConnId,
    /// Members of rooms held elsewhere whose media is served here, and their rooms.
    edge: HashMap<(Ident, Ident), edge::EdgeMember>,
    edge_rooms: HashMap<Ident, edge::EdgeRoom>,
    /// The other nodes live in the registry, as the cluster glue last said: a session token
    /// is relayed only to one of them (a token can name any node; a client must not pick
    /// where this node sends its requests).
    live: HashSet<String>,
}

impl Clustered {
    pub(crate) fn new(node: String, out: mpsc::Sender<RelayOut>) -> Clustered {
        Clustered {
            node,
            out,
            resolving: HashMap::new(),
            served: HashMap::new(),
            next_served: ConnId::MAX,
            edge: HashMap::new(),
            edge_rooms: HashMap::new(),
            live: HashSet::new(),
        }
    }
}

pub(crate) struct Hub {
    config: SignalingConfig,
    auth: Option<Auth>,
    seats: Seats,
    conns: HashMap<ConnId, Conn>,
    sessions: HashMap<SessionId, Session>,
    by_token: HashMap<String, SessionId>,
    by_member: HashMap<(Ident, Ident), SessionId>,
    rooms: HashMap<Ident, HashSet<SessionId>>,
    next_session: SessionId,
    /// Set once shutdown began: joins are refused and waiters are told when sockets are gone.
    shutdown: Option<(Instant, Vec<oneshot::Sender<()>>)>,
    /// The media plane, when configured.
    media: Option<Sfu>,
    /// Encoders publishing for an anchor on a socket ([`HubMsg::Attach`]): at most one each.
    attached: HashMap<(Ident, Ident), ConnId>,
    /// Set when this node is one of a cluster.
    cluster: Option<Clustered>,
}

fn now() -> std::time::Instant {
    // tokio's clock, so tests with paused time drive the seat timers too.
    Instant::now().into_std()
}

impl Hub {
    pub(crate) fn new(
        config: SignalingConfig,
        media: Option<MediaPlane>,
        cluster: Option<Clustered>,
    ) -> (Hub, Option<mpsc::UnboundedReceiver<MediaEvent>>) {
        let (media, media_events) = media.map(|m| (m.sfu, m.events)).unzip();
        let hub = Hub {
            auth: config.jwt_secret.as_deref().map(Auth::new),
            seats: Seats::new(config.seats.clone()),
            config,
            conns: HashMap::new(),
            sessions: HashMap::new(),
            by_token: HashMap::new(),
            by_member: HashMap::new(),
            rooms: HashMap::new(),
            next_session: 1,
            shutdown: None,
            media,
            attached: HashMap::new(),
            cluster,
        };
        (hub, media_events)
    }

    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<HubMsg>,
        mut media_events: Option<mpsc::UnboundedReceiver<MediaEvent>>,
    ) {
        loop {
            let timer = self.seats.poll_timeout().map(Instant::from_std);
            let shutdown_at = self.shutdown.as_ref().map(|(at, _)| *at);
            let edge_at = self.edge_deadline();
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_msg(msg),
                    None => return,
                },
                Some(event) = async {
                    match media_events.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.on_media_event(event),
                _ = sleep_until(timer.unwrap_or_else(far_future)), if timer.is_some() => {
                    self.seats.handle_timeout(now());
                }
                _ = sleep_until(shutdown_at.unwrap_or_else(far_future)), if shutdown_at.is_some() => {
                    self.finish_shutdown();
                }
                _ = sleep_until(edge_at.unwrap_or_else(far_future)), if edge_at.is_some() => {
                    self.edge_timeout();
                }
            }
            self.drain();
        }
    }

    fn on_msg(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Connect { conn, tx, http } => {
                if self.shutdown.is_some() {
                    let _ = tx.try_send(Outbound::Close(CLOSE_GOING_AWAY, "server shutdown"));
                    return;
                }
                self.conns.insert(conn, Conn::new(tx, http));
            }
            HubMsg::Request { conn, id, request } => self.on_request(conn, id, request),
            HubMsg::Attach {
                conn,
                id,
                room,
                user,
                sdp,
            } => self.attach(conn, id, room, user, sdp),
            HubMsg::EndLive { conn, room, user } => {
                if self.attached.get(&(room.clone(), user.clone())) == Some(&conn) {
                    info!(%room, %user, "the encoder ended the live");
                    let _ = self.seats.handle(now(), &room, &user, Action::Leave);
                }
            }
            HubMsg::Watch { conn, id, sdp } => {
                // A session here, or one another node holds whose media is served here.
                let member = self.conns.get(&conn).and_then(|c| match c.session {
                    Some(sid) => self
                        .sessions
                        .get(&sid)
                        .map(|s| (s.room.clone(), s.user.clone())),
                    None => c.media.clone(),
                });
                let Some((room, user)) = member else {
                    return self.reply_err(conn, id, ErrorCode::NotInRoom, "join a room first");
                };
                let command = MediaCommand::Watch {
                    room,
                    user,
                    offer: sdp,
                    reply: ReplyTo { conn, id },
                };
                self.ask_media(conn, id, command);
            }
            HubMsg::Closed { conn } => {
                self.drop_conn(conn);
                if self.conns.is_empty() && self.shutdown.is_some() {
                    self.finish_shutdown();
                }
            }
            HubMsg::Shutdown { done } => self.start_shutdown(done),
            HubMsg::Stats { reply } => {
                let _ = reply.send(Stats {
                    rooms: self.rooms.len(),
                    sessions: self.sessions.len(),
                    connections: self.conns.len(),
                });
            }
            HubMsg::Rooms { reply } => {
                let _ = reply.send(self.rooms.keys().cloned().collect());
            }
            HubMsg::Resolved { conn, origin } => self.resolved(conn, origin),
            HubMsg::Relayed { from, relay } => self.relayed(from, relay),
            HubMsg::NodeLost { node } => {
                if let Some(c) = &mut self.cluster {
                    c.live.remove(&node);
                }
                self.node_lost(&node);
            }
            HubMsg::NodeJoined { node } => {
                if let Some(c) = &mut self.cluster {
                    c.live.insert(node);
                }
            }
            HubMsg::Locate { room, claim, reply } => match &self.cluster {
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
            },
        }
    }

    /// Tell the cluster glue `out`; a full queue drops `conn` (whose traffic it is), as a
    /// socket that cannot keep up is dropped.
    fn tell_cluster(&mut self, conn: ConnId, out: RelayOut) {
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

    /// Send `relay` for local socket `conn` to `node`.
    fn relay_to(&mut self, conn: ConnId, node: String, relay: Relay) {
        self.tell_cluster(conn, RelayOut::Send { node, relay });
    }

    /// Relay socket `conn`'s request to `node`, numbered.
    fn relay_request(&mut self, conn: ConnId, node: String, id: u64, request: Request) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.relayed += 1;
        match request {
            Request::Join { .. } => c.resuming = false,
            Request::Resume { .. } => c.resuming = true,
            _ => {}
        }
        let n = c.relayed;
        self.relay_to(
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
    fn resolved(&mut self, conn: ConnId, origin: Option<String>) {
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
        if c.session.is_some() || c.remote.is_some() {
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
        c.remote = Some(node.clone());
        self.relay_request(conn, node, id, request);
    }

    /// What another node sent: requests of its sockets for rooms held here, or what our own
    /// relayed sockets get back.
    fn relayed(&mut self, from: String, relay: Relay) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        match relay {
            Relay::Request {
                conn,
                n,
                id,
                request,
            } => {
                let key = (from, conn);
                let here = match cluster.served.get(&key) {
                    Some(here) => *here,
                    None => {
                        // Only a join or a resume starts a relayed connection: anything else
                        // is for a session that ended here (the edge has not heard yet). Its
                        // request is answered as a socket without a session is, and the
                        // relaying ends after it.
                        let starts =
                            matches!(request, Request::Join { .. } | Request::Resume { .. });
                        let full = cluster.served.len() >= self.config.max_relayed;
                        if !starts || full {
                            let (code, message) = if starts {
                                warn!(node = %key.0, "too many relayed connections; refusing one");
                                (ErrorCode::Unavailable, "the server is full")
                            } else {
                                (ErrorCode::NotInRoom, "join a room first")
                            };
                            let text = encode(&Reply::err(id, code, message));
                            for relay in [
                                Relay::Text {
                                    conn,
                                    text: text.as_str().to_owned(),
                                },
                                Relay::Unbound { conn, upto: n },
                            ] {
                                let node = key.0.clone();
                                let _ = cluster.out.try_send(RelayOut::Send { node, relay });
                            }
                            return;
                        }
                        let here = cluster.next_served;
                        cluster.next_served -= 1;
                        cluster.served.insert(key.clone(), here);
                        let (tx, rx) = mpsc::channel(self.config.outbound_queue);
                        let mut c = Conn::new(tx, false);
                        let upto = c.upto.clone();
                        tokio::spawn(forward(rx, key.0.clone(), conn, upto, cluster.out.clone()));
                        c.served_for = Some(key);
                        self.conns.insert(here, c);
                        here
                    }
                };
                if let Some(c) = self.conns.get(&here) {
                    c.upto.store(n, Ordering::Relaxed);
                }
                self.on_request(here, id, request);
                // A join or resume that failed, or a session that ended with this request:
                // the relaying ends (the edge clears it on `Unbound`) and the connection goes.
                if self.conns.get(&here).is_some_and(|c| c.session.is_none()) {
                    self.queue(here, Outbound::Unbound);
                    self.forget_served(here);
                }
            }
            Relay::Closed { conn } => {
                if let Some(here) = cluster.served.get(&(from, conn)).copied() {
                    self.forget_served(here);
                }
            }
            Relay::Text { conn, text } => {
                self.origin_says(&from, conn, Outbound::Text(text.into()))
            }
            Relay::Joined { conn, text } => {
                let relayed = self
                    .conns
                    .get(&conn)
                    .filter(|c| c.remote.as_deref() == Some(from.as_str()))
                    .map(|c| c.resuming);
                self.origin_says(&from, conn, Outbound::Joined(text.as_str().into()));
                if let Some(resumed) = relayed {
                    self.edge_joined(conn, &text, resumed);
                }
            }
            relay @ (Relay::MediaOpen { .. }
            | Relay::MediaClose { .. }
            | Relay::MediaOffer { .. }
            | Relay::MediaAnswer { .. }
            | Relay::MediaEnded { .. }
            | Relay::MediaSeat { .. }
            | Relay::MediaPublished { .. }) => self.relay_media(from, relay),
            Relay::Unbound { conn, upto } => {
                // A later request is on its way there: a join the origin serves as a new
                // connection, whose reply must still reach the socket.
                // (0: from a node that does not number requests.)
                if upto != 0 && self.conns.get(&conn).is_some_and(|c| c.relayed > upto) {
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
    fn origin_says(&mut self, from: &str, conn: ConnId, out: Outbound) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.remote.as_deref() != Some(from) {
            return;
        }
        let ends = matches!(out, Outbound::Unbound | Outbound::Close(..));
        if ends {
            c.remote = None;
        }
        if matches!(out, Outbound::Unbound) {
            self.edge_conn_ends(conn, true);
        }
        self.queue(conn, out);
        if ends {
            self.relay_to(conn, from.to_owned(), Relay::Closed { conn });
        }
    }

    /// `node` is gone. Our sockets relayed to it hear that their room ended (`node_lost`);
    /// the connections we served for it are dropped (their sessions wait out their grace).
    fn node_lost(&mut self, node: &str) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let served: Vec<ConnId> = cluster
            .served
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|(_, here)| *here)
            .collect();
        let relayed: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.remote.as_deref() == Some(node))
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
            if let Some(c) = self.conns.get_mut(&conn) {
                c.remote = None;
            }
            // Should the node only have looked lost (Redis was away), its sessions for these
            // sockets must not stay bound: best effort, it is likely gone.
            self.relay_to(conn, node.to_owned(), Relay::Closed { conn });
            self.queue(conn, Outbound::Text(ended.clone()));
            self.queue(conn, Outbound::Unbound);
        }
    }

    /// Let go of a connection served for another node without telling that node to close it
    /// (it closed it, ended it with `Unbound`, or is gone).
    fn forget_served(&mut self, here: ConnId) {
        if let Some(c) = self.conns.get_mut(&here)
            && let Some(key) = c.served_for.take()
            && let Some(cluster) = &mut self.cluster
        {
            cluster.served.remove(&key);
        }
        self.drop_conn(here);
    }

    fn on_request(&mut self, conn: ConnId, id: u64, request: Request) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if let Some(node) = c.remote.clone() {
            // A member whose media is served here: its subscribe side stays here.
            if let Some(request) = self.edge_request(conn, id, request) {
                self.relay_request(conn, node, id, request);
            }
            return;
        }
        // A join waiting to hear which node holds its room: nothing else until it is known.
        if self
            .cluster
            .as_ref()
            .is_some_and(|cl| cl.resolving.contains_key(&conn))
        {
            return self.reply_err(conn, id, ErrorCode::BadRequest, "a join is under way");
        }
        let kind = request.type_name();
        match c.session {
            None if self.must_resolve(conn, &request) => {
                let Some(cluster) = &mut self.cluster else {
                    return;
                };
                let Request::Join { room, .. } = &request else {
                    return;
                };
                let room = room.clone();
                cluster.resolving.insert(conn, (id, request));
                self.tell_cluster(conn, RelayOut::Resolve { conn, room });
            }
            None => match request {
                Request::Join {
                    room,
                    user,
                    role,
                    name,
                    token,
                } => self.join(conn, id, room, user, role, name, token),
                Request::Resume { session } => {
                    // A session another live node of the cluster made: resumed there. A token
                    // naming any other node is a session unknown here.
                    let elsewhere = self.cluster.as_ref().and_then(|c| {
                        let node = token_node(&session)?;
                        (node != c.node
                            && c.live.contains(node)
                            && !self.by_token.contains_key(&session))
                        .then(|| node.to_owned())
                    });
                    match elsewhere {
                        Some(node) => {
                            if let Some(c) = self.conns.get_mut(&conn) {
                                c.remote = Some(node.clone());
                            }
                            let request = Request::Resume { session };
                            self.relay_request(conn, node, id, request);
                        }
                        None => self.resume(conn, id, &session),
                    }
                }
                _ => self.reply_err(conn, id, ErrorCode::NotInRoom, "join a room first"),
            },
            Some(sid) => {
                let s = &self.sessions[&sid];
                let (room, user) = (s.room.clone(), s.user.clone());
                let _span = info_span!("request", %room, %user, kind).entered();
                self.member_request(conn, id, &room, &user, request);
            }
        }
    }

    /// Whether a join on `conn` must first learn which node holds its room: in a cluster, when
    /// the room is not held here already. (An encoder's `POST` was sent to the origin, or
    /// claimed its room here, before it joins; a player's is served wherever it lands.)
    fn must_resolve(&self, conn: ConnId, request: &Request) -> bool {
        let Request::Join { room, .. } = request else {
            return false;
        };
        // A connection another node relayed here was resolved there already.
        self.cluster.is_some()
            && self.shutdown.is_none()
            && !self.rooms.contains_key(room)
            && self
                .conns
                .get(&conn)
                .is_some_and(|c| c.served_for.is_none())
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        conn: ConnId,
        id: u64,
        room: Ident,
        user: Ident,
        role: Role,
        name: Option<Name>,
        token: Option<String>,
    ) {
        let _span = info_span!("join", %room, %user, ?role).entered();
        if self.shutdown.is_some() {
            return self.reply_err(conn, id, ErrorCode::Unavailable, "server is shutting down");
        }
        if let Some(auth) = &self.auth
            && let Err(why) = auth.check(token.as_deref(), &room, &user, role)
        {
            return self.reply_err(conn, id, ErrorCode::Unauthorized, why.to_string());
        }
        let joined = match self.seats.join(now(), &room, &user, role, name) {
            Ok(j) => j,
            Err(e) => return self.reply_err(conn, id, seat_error_code(&e), e.to_string()),
        };
        // Rule 9: the same user joining again replaces the earlier session.
        if let Some(old) = self.by_member.get(&(room.clone(), user.clone())).copied() {
            info!("replacing an earlier session of the same user");
            self.kick(old);
            self.forget_session(old);
        }
        // In a cluster, a socket relayed from another node has its subscribe connection made
        // there, from the room's relay: said before anything below makes one here.
        let relayed = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.served_for.is_some());
        if relayed {
            self.subscribe_elsewhere(&room, &user, true);
        }
        if joined.rejoined {
            // A reload or a second device: the new session gets new media connections at once
            // (and may publish again) instead of waiting for the old ones to time out.
            self.to_media(MediaCommand::Rejoin {
                room: room.clone(),
                user: user.clone(),
            });
        }
        if !relayed {
            self.subscribe_elsewhere(&room, &user, false);
        }
        let sid = self.next_session;
        self.next_session += 1;
        // In a cluster the token names this node, so a resume on another node comes here.
        let token = match &self.cluster {
            Some(c) => format!("{}.{}", c.node, new_token()),
            None => new_token(),
        };
        self.sessions.insert(
            sid,
            Session::new(token.clone(), room.clone(), user.clone(), conn),
        );
        self.by_token.insert(token.clone(), sid);
        self.by_member.insert((room.clone(), user.clone()), sid);
        self.rooms.entry(room.clone()).or_default().insert(sid);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(sid);
            if c.http {
                // An HTTP client cannot take the subscribe offers every member gets.
                self.to_media(MediaCommand::OwnOffers { room, user });
            }
        }
        info!("joined");
        self.reply_joined(conn, id, joined, token);
        // A rejoin keeps the seat: the node the member is on now may let it publish (told
        // after the reply, which makes the member known there).
        self.member_node(sid, conn);
    }

    /// An encoder (WHIP, on `conn`) publishes for `user`, the anchor of `room` in the room on a
    /// socket, which keeps the controls. An encoder attached before is let go: its publish
    /// connection is replaced.
    fn attach(&mut self, conn: ConnId, id: u64, room: Ident, user: Ident, sdp: String) {
        let on_socket = self
            .by_member
            .get(&(room.clone(), user.clone()))
            .and_then(|sid| self.sessions.get(sid)?.conn)
            .is_some_and(|c| self.conns.get(&c).is_some_and(|c| !c.http));
        if !on_socket {
            return self.reply_err(
                conn,
                id,
                ErrorCode::NotInRoom,
                "not in the room on a socket",
            );
        }
        let anchor = self
            .seats
            .linked(&room)
            .iter()
            .any(|u| u.user == user && u.seat == Some(0));
        if !anchor {
            return self.reply_err(conn, id, ErrorCode::NotAllowed, "only the anchor goes live");
        }
        if let Some(old) = self.attached.insert((room.clone(), user.clone()), conn)
            && old != conn
            && let Some(c) = self.conns.remove(&old)
        {
            let _ =
                c.tx.try_send(Outbound::Close(CLOSE_REPLACED, "another encoder"));
        }
        info!(%room, %user, "an encoder publishes for the anchor");
        self.ask_media(
            conn,
            id,
            MediaCommand::Publish {
                room,
                user,
                offer: sdp,
                reply: ReplyTo { conn, id },
            },
        );
    }

    fn resume(&mut self, conn: ConnId, id: u64, token: &str) {
        let Some(&sid) = self.by_token.get(token) else {
            return self.reply_err(
                conn,
                id,
                ErrorCode::SessionExpired,
                "no such session; join again",
            );
        };
        let s = &self.sessions[&sid];
        let (room, user, old_conn) = (s.room.clone(), s.user.clone(), s.conn);
        let _span = info_span!("resume", %room, %user).entered();
        let Ok(joined) = self.seats.resume(now(), &room, &user) else {
            return self.reply_err(conn, id, ErrorCode::SessionExpired, "session has ended");
        };
        if let Some(old) = old_conn {
            // The client came back before we noticed its old socket die; that one is stale.
            self.kick(sid);
            if let Some(c) = self.conns.get_mut(&old) {
                c.session = None;
            }
        }
        let s = self.sessions.get_mut(&sid).expect("found above");
        s.conn = Some(conn);
        let backlog = s.take_backlog();
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(sid);
        }
        info!(missed = backlog.len(), "resumed");
        self.reply_joined(conn, id, joined, token.to_owned());
        for text in backlog {
            self.send_session(sid, text);
        }
        // Resumed through another node, its subscribe connection is made there; resumed here
        // after that, here again.
        let elsewhere = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.served_for.is_some());
        let was_elsewhere = self.sessions.get(&sid).is_some_and(|s| s.node.is_some());
        self.subscribe_elsewhere(&room, &user, elsewhere);
        self.member_node(sid, conn);
        // An offer that was in flight on the old socket goes out again on this one. (Back
        // from another node, the member has just been offered a new connection here: the same
        // offer twice would make the client replace the connection it answered with.)
        if !was_elsewhere || elsewhere {
            self.to_media(MediaCommand::Resumed { room, user });
        }
    }

    fn member_request(&mut self, conn: ConnId, id: u64, room: &Ident, user: &Ident, req: Request) {
        let action = match req {
            Request::RequestLink {
                user: to,
                seat,
                timeout_s,
                open_camera,
            } => Action::RequestLink {
                to,
                seat,
                timeout_s,
                open_camera,
            },
            Request::CancelLink { user: to } => Action::CancelLink { to },
            Request::RespondLink { user: to, accept } => Action::RespondLink { to, accept },
            Request::DisconnectUser { user: target } => Action::DisconnectUser { user: target },
            Request::TerminateLink => Action::TerminateLink,
            Request::Leave => Action::Leave,
            Request::ListAudience { offset, limit } => Action::ListAudience {
                offset: offset.unwrap_or(0),
                limit: limit
                    .unwrap_or(LIST_AUDIENCE_DEFAULT)
                    .min(LIST_AUDIENCE_MAX),
            },
            Request::LockSeat {
                seat,
                lock,
                lock_audio,
                lock_video,
            } => Action::LockSeat {
                seat,
                lock,
                audio: lock_audio,
                video: lock_video,
            },
            Request::MoveSeat { seat, user: target } => Action::MoveSeat { seat, user: target },
            Request::MuteMember {
                user: target,
                mic,
                camera,
            } => Action::MuteMember {
                user: target,
                mic,
                camera,
            },
            Request::SetMedia { mic, camera } => Action::SetMedia { mic, camera },
            Request::KickUser {
                user: target,
                ban_s,
            } => Action::KickUser {
                user: target,
                ban_s: ban_s.unwrap_or(0),
            },
            Request::Join { .. } | Request::Resume { .. } => {
                return self.reply_err(
                    conn,
                    id,
                    ErrorCode::AlreadyJoined,
                    "this socket already joined",
                );
            }
            Request::Publish { sdp } => {
                if self.seats.may_publish(room, user).is_none() {
                    return self.reply_err(
                        conn,
                        id,
                        ErrorCode::NotLinked,
                        "only seated users publish",
                    );
                }
                return self.ask_media(
                    conn,
                    id,
                    MediaCommand::Publish {
                        room: room.clone(),
                        user: user.clone(),
                        offer: sdp,
                        reply: ReplyTo { conn, id },
                    },
                );
            }
            Request::SubscribeAnswer { sdp, offer_id } => {
                return self.ask_media(
                    conn,
                    id,
                    MediaCommand::SubscribeAnswer {
                        room: room.clone(),
                        user: user.clone(),
                        answer: sdp,
                        offer_id,
                        reply: ReplyTo { conn, id },
                    },
                );
            }
            Request::IceServers => {
                let ice_servers = crate::turn::ice_servers_for(
                    &self.config.ice_servers,
                    self.config.turn.as_ref(),
                    user.as_str(),
                    std::time::SystemTime::now(),
                );
                let reply = Reply::ok(id, miclink_protocol::IceServersResult { ice_servers });
                return self.send_conn(conn, encode(&reply));
            }
            Request::Resubscribe => {
                return self.ask_media(
                    conn,
                    id,
                    MediaCommand::Resubscribe {
                        room: room.clone(),
                        user: user.clone(),
                        reply: ReplyTo { conn, id },
                    },
                );
            }
            Request::SetSubscription {
                user: publisher,
                video,
            } => {
                return self.ask_media(
                    conn,
                    id,
                    MediaCommand::SetSubscription {
                        room: room.clone(),
                        user: user.clone(),
                        publisher,
                        video,
                        reply: ReplyTo { conn, id },
                    },
                );
            }
            Request::Ice { pc, candidate } => {
                let Some(media) = &self.media else {
                    return self.reply_err(
                        conn,
                        id,
                        ErrorCode::NotImplemented,
                        "this server runs without a media plane",
                    );
                };
                // ICE-lite: the server learns client addresses from their checks, so a
                // trickled candidate is a hint; it is acknowledged at once.
                let reply = match media.send(MediaCommand::Candidate {
                    room: room.clone(),
                    user: user.clone(),
                    pc,
                    candidate: candidate.candidate,
                }) {
                    Ok(()) => Reply::ok(id, miclink_protocol::Empty {}),
                    Err(e) => Reply::err(id, media_error_code(&e), e.to_string()),
                };
                return self.send_conn(conn, encode(&reply));
            }
        };
        let reply = match self.seats.handle(now(), room, user, action) {
            Ok(SeatReply::Request(request)) => Reply::ok(id, RequestLinkResult { request }),
            Ok(SeatReply::Audience(list)) => Reply::ok(id, list),
            Ok(SeatReply::Done | SeatReply::Joined(_)) => Reply::ok(id, miclink_protocol::Empty {}),
            Err(e) => {
                debug!(error = %e, "refused");
                Reply::err(id, seat_error_code(&e), e.to_string())
            }
        };
        self.send_conn(conn, encode(&reply));
    }

    /// Route everything the state machine produced.
    fn drain(&mut self) {
        while let Some(output) = self.seats.poll_output() {
            match output {
                Output::Event { room, to, event } => {
                    match self.by_member.get(&(room, to)).copied() {
                        Some(sid) => self.send_session(sid, encode(&event)),
                        None => warn!(
                            event = event.type_name(),
                            "event for a user without a session"
                        ),
                    }
                }
                Output::Broadcast { room, event } => self.broadcast(&room, &event),
                Output::Media(change) => {
                    if self.cluster.is_some() {
                        self.seat_to_edge(&change);
                    }
                    self.to_media(MediaCommand::Seats(change));
                }
                Output::Departed { room, user } => {
                    if let Some(sid) = self.by_member.get(&(room, user)).copied() {
                        self.forget_session(sid);
                    }
                }
            }
        }
    }

    /// In a cluster: whose media plane makes `user`'s subscribe connection
    /// ([`MediaCommand::SubscribeElsewhere`]). Nothing on a node alone.
    fn subscribe_elsewhere(&self, room: &Ident, user: &Ident, elsewhere: bool) {
        if self.cluster.is_some() {
            self.to_media(MediaCommand::SubscribeElsewhere {
                room: room.clone(),
                user: user.clone(),
                elsewhere,
                encoder: self.attached.contains_key(&(room.clone(), user.clone())),
            });
        }
    }

    /// Tell the media plane what changed; nobody waits for an answer.
    fn to_media(&self, command: MediaCommand) {
        if let Some(media) = &self.media
            && let Err(e) = media.send(command)
        {
            debug!(error = %e, "media plane did not take a command");
        }
    }

    /// Hand a media request to the media plane; its answer comes back as a [`MediaEvent`].
    fn ask_media(&mut self, conn: ConnId, id: u64, command: MediaCommand) {
        let sent = match &self.media {
            Some(media) => media.send(command),
            None => {
                return self.reply_err(
                    conn,
                    id,
                    ErrorCode::NotImplemented,
                    "this server runs without a media plane",
                );
            }
        };
        if let Err(e) = sent {
            self.reply_err(conn, id, media_error_code(&e), e.to_string());
        }
    }

    fn on_media_event(&mut self, event: MediaEvent) {
        match event {
            MediaEvent::PublishAnswer { reply: to, result } => {
                if result.is_ok()
                    && let Some(c) = self.conns.get_mut(&to.conn)
                {
                    c.publishing = c.http;
                }
                let reply = match result {
                    Ok(sdp) => Reply::ok(to.id, miclink_protocol::PublishResult { sdp }),
                    Err(e) => Reply::err(to.id, media_error_code(&e), e.to_string()),
                };
                self.send_conn(to.conn, encode(&reply));
            }
            MediaEvent::Done { reply: to, result } => {
                let reply = match result {
                    Ok(()) => Reply::ok(to.id, miclink_protocol::Empty {}),
                    Err(e) => Reply::err(to.id, media_error_code(&e), e.to_string()),
                };
                self.send_conn(to.conn, encode(&reply));
            }
            MediaEvent::SubscribeOffer {
                room,
                user,
                sdp,
                new_connection,
                offer_id,
            } => {
                let event = Event::SubscribeOffer {
                    sdp,
                    new_connection,
                    offer_id,
                };
                self.send_member(room, user, &event);
            }
            MediaEvent::Published {
                room,
                user,
                audio,
                video,
                link,
            } => {
                // A member of a room held elsewhere publishing here: the origin's seats hear it.
                if self.edge_published(&room, &user, audio, video, link) {
                    return;
                }
                // The origin: a member served on another node publishes there, and only that
                // node's reports count (this one is of a publish connection it left here).
                if self.served_elsewhere(&room, &user) {
                    return;
                }
                // A report can cross the member's departure or a new seating of theirs (the
                // sockets and the media plane are read in no set order): only one about the
                // seating that stands now counts.
                if self.seats.link(&room, &user) != Some(link) {
                    return;
                }
                let _ = self
                    .seats
                    .handle(now(), &room, &user, Action::Published { audio, video });
                // A WHIP anchor has no socket: its publish connection ending (the client
                // vanished without a DELETE) is its connection lost, with the same grace
                // for it to come back (rule 8) by posting again.
                let whip = self
                    .by_member
                    .get(&(room, user))
                    .and_then(|sid| self.sessions.get(sid)?.conn)
                    .filter(|conn| self.conns.get(conn).is_some_and(|c| c.publishing));
                if let Some(conn) = whip
                    && !audio
                    && !video
                {
                    if let Some(c) = self.conns.get(&conn) {
                        let _ =
                            c.tx.try_send(Outbound::Close(CLOSE_GOING_AWAY, "media ended"));
                    }
                    self.drop_conn(conn);
                }
            }
            MediaEvent::ActiveSpeakers { room, speakers } => {
                self.broadcast(&room, &Event::ActiveSpeakers { speakers });
            }
            MediaEvent::PublisherLayers { room, user, video } => {
                self.send_member(room, user, &Event::PublisherLayers { video });
            }
            MediaEvent::SubscriptionState {
                room,
                user,
                publisher,
                video,
                reason,
            } => {
                let event = Event::SubscriptionState {
                    user: publisher,
                    video,
                    reason,
                };
                self.send_member(room, user, &event);
            }
            MediaEvent::WatchEnded { room, user } => {
                // A WHEP viewer cannot come back on a connection that ended: it leaves.
                let conn = self
                    .by_member
                    .get(&(room.clone(), user.clone()))
                    .and_then(|sid| self.sessions.get(sid)?.conn)
                    .filter(|conn| self.conns.get(conn).is_some_and(|c| c.http));
                if conn.is_some() {
                    let _ = self.seats.handle(now(), &room, &user, Action::Leave);
                }
                // Served here for a room another node holds: it leaves there, and its resource
                // ends here at once (not only when the origin's `Unbound` comes back).
                if let Some(conn) = self
                    .edge_conn(&room, &user)
                    .filter(|conn| self.conns.get(conn).is_some_and(|c| c.http))
                    && let Some(node) = self.conns.get(&conn).and_then(|c| c.remote.clone())
                {
                    self.relay_request(conn, node.clone(), 0, Request::Leave);
                    self.origin_says(&node, conn, Outbound::Unbound);
                }
            }
            MediaEvent::RelayOffer {
                room,
                node,
                sdp,
                offer_id,
                fresh,
            } => self.tell_node(
                node,
                Relay::MediaOffer {
                    room,
                    sdp,
                    offer_id,
                    fresh,
                },
            ),
            MediaEvent::RelayAnswer {
                room,
                node,
                sdp,
                offer_id,
            } => self.tell_node(
                node,
                Relay::MediaAnswer {
                    room,
                    sdp,
                    offer_id,
                },
            ),
            MediaEvent::RelayEnded {
                room,
                node,
                sending,
            } => {
                // The origin sends the room's relay to an edge and receives its push; an
                // edge the other way round.
                if self.rooms.contains_key(&room) {
                    let push = Some(!sending);
                    self.tell_node(node, Relay::MediaEnded { room, push });
                } else {
                    self.edge_relay_ended(&room, &node, Some(sending));
                }
            }
            MediaEvent::LoopFailed { index } => {
                // The server exits for its supervisor to restart it; until then media requests
                // answer `unavailable`.
                error!(index, "a media loop died; media requests now fail");
            }
        }
    }

    fn reply_joined(&mut self, conn: ConnId, id: u64, joined: Joined, session: String) {
        let ice_servers = crate::turn::ice_servers_for(
            &self.config.ice_servers,
            self.config.turn.as_ref(),
            joined.me.user.as_str(),
            std::time::SystemTime::now(),
        );
        let result = JoinResult {
            room: joined.room,
            me: joined.me,
            ice_servers,
            session,
            requests: joined.pending,
        };
        self.queue(conn, Outbound::Joined(encode(&Reply::ok(id, result))));
    }

    /// One event to one member's session, if they still have one.
    fn send_member(&mut self, room: Ident, user: Ident, event: &Event) {
        if let Some(sid) = self.by_member.get(&(room.clone(), user.clone())).copied() {
            self.send_session(sid, encode(event));
        } else if let Some(conn) = self.edge_conn(&room, &user) {
            // A member of a room held elsewhere, whose media is served here.
            self.send_conn(conn, encode(event));
        }
    }

    /// One event to every session of `room`, serialized once.
    fn broadcast(&mut self, room: &Ident, event: &Event) {
        let Some(members) = self.rooms.get(room) else {
            return;
        };
        let text = encode(event);
        let members: Vec<SessionId> = members.iter().copied().collect();
        for sid in members {
            self.send_session(sid, text.clone());
        }
    }

    fn reply_err(&mut self, conn: ConnId, id: u64, code: ErrorCode, message: impl Into<String>) {
        self.send_conn(conn, encode(&Reply::err(id, code, message)));
    }

    fn send_session(&mut self, sid: SessionId, text: Utf8Bytes) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        match s.conn {
            Some(conn) => self.send_conn(conn, text),
            None => s.keep(text),
        }
    }

    fn send_conn(&mut self, conn: ConnId, text: Utf8Bytes) {
        self.queue(conn, Outbound::Text(text));
    }

    fn queue(&mut self, conn: ConnId, out: Outbound) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = c.tx.try_send(out) {
            warn!(conn, "socket cannot keep up; dropping it");
            self.drop_conn(conn);
        }
    }

    /// Forget a socket. Its session, if any, waits for a resume within the grace period.
    fn drop_conn(&mut self, conn: ConnId) {
        // An HTTP client never resumes: its media here ends with it.
        let http = self.conns.get(&conn).is_some_and(|c| c.http);
        self.edge_conn_ends(conn, http);
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(cluster) = &mut self.cluster {
            cluster.resolving.remove(&conn);
            if let Some(key) = &c.served_for {
                // Dropped here (too slow, or shutting down): the edge closes its socket.
                cluster.served.remove(key);
                let _ = cluster.out.try_send(RelayOut::Send {
                    node: key.0.clone(),
                    relay: Relay::Close {
                        conn: key.1,
                        code: CLOSE_GOING_AWAY,
                        reason: "closed".into(),
                    },
                });
            }
            if let Some(node) = c.remote.clone() {
                // Best effort: a full queue means the origin hears of it when its own socket
                // for this one is dropped as too slow.
                let _ = cluster.out.try_send(RelayOut::Send {
                    node,
                    relay: Relay::Closed { conn },
                });
            }
        }
        let Some(sid) = c.session else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.conn = None;
        if self.shutdown.is_none() {
            let (room, user) = (s.room.clone(), s.user.clone());
            debug!(%room, %user, "connection lost; grace period starts");
            let _ = self
                .seats
                .handle(now(), &room, &user, Action::ConnectionLost);
        }
    }

    /// Tell a session's socket it was replaced, close it, and unbind it.
    fn kick(&mut self, sid: SessionId) {
        let Some(conn) = self.sessions.get_mut(&sid).and_then(|s| s.conn.take()) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = None;
            let told =
                c.tx.try_send(Outbound::Text(encode(&Event::Kicked {
                    reason: KickReason::Replaced,
                })))
                .is_ok()
                    && c.tx
                        .try_send(Outbound::Close(CLOSE_REPLACED, "replaced"))
                        .is_ok();
            if !told {
                // Too far behind to be told: forgetting the socket ends its task.
                self.conns.remove(&conn);
            }
        }
    }

    fn forget_session(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.remove(&sid) else {
            return;
        };
        self.by_token.remove(&s.token);
        let key = (s.room.clone(), s.user.clone());
        // An encoder publishing for them goes with them.
        if let Some(enc) = self.attached.remove(&key)
            && let Some(c) = self.conns.remove(&enc)
        {
            let _ =
                c.tx.try_send(Outbound::Close(CLOSE_GOING_AWAY, "the anchor left"));
        }
        if self.by_member.get(&key) == Some(&sid) {
            self.by_member.remove(&key);
        }
        if let Some(set) = self.rooms.get_mut(&s.room) {
            set.remove(&sid);
            if set.is_empty() {
                self.rooms.remove(&s.room);
            }
        }
        if let Some(conn) = s.conn
            && let Some(c) = self.conns.get_mut(&conn)
        {
            c.session = None;
            // The socket stays open (it may join again) but is again one without a session,
            // held to the join timeout like a new one.
            let told = c.tx.try_send(Outbound::Unbound).is_ok();
            if c.served_for.is_some() {
                // Relayed: `Unbound` ends the relaying at the edge; nothing more comes here.
                self.forget_served(conn);
            } else if !told {
                self.conns.remove(&conn);
            }
        }
    }

    fn start_shutdown(&mut self, done: oneshot::Sender<()>) {
        if let Some((_, waiters)) = &mut self.shutdown {
            waiters.push(done);
            return;
        }
        info!(
            rooms = self.rooms.len(),
            sockets = self.conns.len(),
            "shutting down"
        );
        self.shutdown = Some((Instant::now() + self.config.shutdown_grace, vec![done]));
        let ended = encode(&Event::RoomEnded {
            reason: EndReason::ServerShutdown,
        });
        let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in sessions {
            self.send_session(sid, ended.clone());
        }
        for c in self.conns.values() {
            let _ =
                c.tx.try_send(Outbound::Close(CLOSE_GOING_AWAY, "server shutdown"));
        }
        if self.conns.is_empty() {
            self.finish_shutdown();
        }
    }

    fn finish_shutdown(&mut self) {
        if let Some((at, waiters)) = &mut self.shutdown {
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
            // Nothing left to wait for; keep refusing joins.
            *at = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Carry what the hub sends a connection of `node` (its id `conn`) there, until the hub lets
/// go of it (which tells that node itself, when it must).
async fn forward(
    mut rx: mpsc::Receiver<Outbound>,
    node: String,
    conn: ConnId,
    upto: Arc<AtomicU64>,
    out: mpsc::Sender<RelayOut>,
) {
    while let Some(o) = rx.recv().await {
        let relay = match o {
            Outbound::Text(text) => Relay::Text {
                conn,
                text: text.as_str().to_owned(),
            },
            Outbound::Joined(text) => Relay::Joined {
                conn,
                text: text.as_str().to_owned(),
            },
            // The hub takes no request on the connection after it queues this.
            Outbound::Unbound => Relay::Unbound {
                conn,
                upto: upto.load(Ordering::Relaxed),
            },
            Outbound::Close(code, reason) => Relay::Close {
                conn,
                code,
                reason: reason.to_owned(),
            },
            Outbound::Relay(relay) => *relay,
        };
        if out
            .send(RelayOut::Send {
                node: node.clone(),
                relay,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}
