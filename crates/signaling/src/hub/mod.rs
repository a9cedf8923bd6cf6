//! The hub: one task that owns the seat state machine and every session, and routes events.
//!
//! Sockets talk to it over one channel and it answers through each socket's bounded queue with
//! `try_send`, so a slow socket can never stall the hub: it is dropped instead, and its user may
//! `resume`. Broadcasts are serialized once and shared by every recipient.
//!
//! The hub is one struct ([`Hub`]) whose methods are split by concern, one module each:
//!
//! | module | owns | must not |
//! | --- | --- | --- |
//! | `mod.rs` | the hub's state, its loop (messages, media events, timers), routing the seats' outputs, shutdown | decide anything a request asks (that is `requests`) |
//! | `sessions` | connections and sessions: queueing to a connection, a session, a member, a room; dropping a connection, kicking a replaced session, forgetting one | decide what a request gets, or decide seats |
//! | `requests` | a connection's requests: join (resolved in a cluster), resume, attach, the member's requests to the seats and the media plane | decide admission itself (tokens and seats do), carry requests to other nodes (`cluster` does) |
//! | `media` | the bridge to the local media plane: commands, requests whose answer comes back as an event, its events | decide seats (it reports to them what the media plane saw) |
//! | `cluster` | this node in a cluster: node messages in and out, nodes lost and joined, where a room is held; a socket here relayed to the room's origin | serve another node's connection (that is `served`) |
//! | `served` | the origin's side: connections other nodes relay here, and what the node serving their member's media must hear | touch media of rooms held elsewhere |
//! | `edge` | the edge's side: media here for members whose room another node holds | keep sessions or seats (the origin does) |
//! | `admin` | the integrator's side: server API calls (here, or carried to the room's node), room messages, milestones to the webhooks | decide seats, or wait on a webhook |

mod admin;
mod cluster;
mod edge;
mod media;
mod requests;
mod served;
mod sessions;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use miclink_protocol::{EndReason, Event, Ident};
use miclink_seats::{Output, Seats};
use miclink_sfu::{MediaCommand, MediaEvent, Sfu};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use crate::auth::Auth;
use crate::session::{Session, SessionId};
use crate::wire::{CLOSE_GOING_AWAY, ConnId, HubMsg, Outbound, Stats, encode};
use crate::{MediaPlane, SignalingConfig};

use cluster::ConnCluster;
pub(crate) use cluster::{Clustered, RELAY_QUEUE};

/// A connection of the hub: a socket, a WHIP or WHEP resource, or (in a cluster) a connection
/// another node relays here.
struct Conn {
    tx: mpsc::Sender<Outbound>,
    session: Option<SessionId>,
    /// A WHIP or WHEP resource ([`HubMsg::Connect`]).
    http: bool,
    /// A WHIP resource whose publish connection was answered: its end is this one's end.
    publishing: bool,
    /// Its part in a cluster, if it has one: a connection of a node alone never does.
    cluster: Option<ConnCluster>,
}

impl Conn {
    fn new(tx: mpsc::Sender<Outbound>, http: bool) -> Conn {
        Conn {
            tx,
            session: None,
            http,
            publishing: false,
            cluster: None,
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
    /// Where the rooms' milestones go, when webhooks are configured.
    webhooks: Option<crate::webhook::Webhooks>,
    /// Room messages per room (`send_message`), all members together.
    room_messages: HashMap<Ident, crate::ratelimit::Bucket>,
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
        webhooks: Option<crate::webhook::Webhooks>,
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
            webhooks,
            room_messages: HashMap::new(),
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
            HubMsg::EndLive { conn, room, user } => self.end_live(conn, room, user),
            HubMsg::Watch { conn, id, sdp } => self.watch(conn, id, sdp),
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
            HubMsg::FromNode { from, msg } => self.on_node_msg(from, msg),
            HubMsg::NodeLost { node } => self.node_lost(&node),
            HubMsg::NodeJoined { node } => self.node_joined(node),
            HubMsg::Locate { room, claim, reply } => self.locate(room, claim, reply),
            HubMsg::Api { call, reply } => {
                let answer = self.api(call);
                let _ = reply.send(answer);
            }
            HubMsg::ApiAt { node, call, reply } => self.api_at(node, call, reply),
            HubMsg::Origin { room, reply } => self.origin_of(room, reply),
            HubMsg::Nodes { reply } => {
                let mut nodes: Vec<String> = self
                    .cluster
                    .as_ref()
                    .map(|c| c.live.iter().filter(|n| **n != c.node).cloned().collect())
                    .unwrap_or_default();
                nodes.sort();
                let _ = reply.send(nodes);
            }
        }
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
                Output::Milestone { room, milestone } => self.milestone(&room, &milestone),
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
        // The rooms end without their seats being told (the process is going): their ends go
        // to the webhooks from here, and `Signaling::shutdown` waits for them to be delivered.
        let held: Vec<Ident> = self.seats.rooms().cloned().collect();
        for room in held {
            let end = miclink_seats::Milestone::RoomEnded {
                reason: EndReason::ServerShutdown,
            };
            self.milestone(&room, &end);
        }
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
