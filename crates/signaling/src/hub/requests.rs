//! A connection's requests, in the order they came: a join (first asking the cluster which node
//! holds the room, when this node is one of a cluster), a resume, a WHIP encoder attaching to an
//! anchor's session, and a member's requests, which go to the seats or the media plane.
//!
//! It must not decide admission itself (the token check and the seats do), nor carry requests
//! to other nodes itself (`cluster` relays them).

use miclink_protocol::{ErrorCode, Ident, Name, Reply, Request, RequestLinkResult, Role};
use miclink_seats::{Action, Reply as SeatReply};
use miclink_sfu::{MediaCommand, ReplyTo};
use tracing::{debug, info, info_span};

use super::{Hub, now};
use crate::error::{media_error_code, seat_error_code};
use crate::relay::{RelayOut, token_node};
use crate::session::{Session, new_token};
use crate::wire::{CLOSE_REPLACED, ConnId, Outbound, encode};

const LIST_AUDIENCE_DEFAULT: u32 = 50;
const LIST_AUDIENCE_MAX: u32 = 200;

impl Hub {
    pub(super) fn on_request(&mut self, conn: ConnId, id: u64, request: Request) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if let Some(node) = c.origin().map(str::to_owned) {
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
                    // (A connection served for another node is not relayed on: that node sends
                    // a resume only here, to the node its token names.)
                    let served = self.conns.get(&conn).is_some_and(|c| c.served().is_some());
                    let elsewhere = self.cluster.as_ref().and_then(|c| {
                        let node = token_node(&session)?;
                        (node != c.node
                            && !served
                            && c.live.contains(node)
                            && !self.by_token.contains_key(&session))
                        .then(|| node.to_owned())
                    });
                    match elsewhere {
                        Some(node) => {
                            if let Some(r) = self.conns.get_mut(&conn).and_then(|c| c.relaying()) {
                                r.origin = Some(node.clone());
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
                .is_some_and(|c| c.served_for().is_none())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn join(
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
            .is_some_and(|c| c.served_for().is_some());
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
    pub(super) fn attach(&mut self, conn: ConnId, id: u64, room: Ident, user: Ident, sdp: String) {
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

    /// The encoder attached for the anchor ends the live (its `DELETE`).
    pub(super) fn end_live(&mut self, conn: ConnId, room: Ident, user: Ident) {
        if self.attached.get(&(room.clone(), user.clone())) == Some(&conn) {
            info!(%room, %user, "the encoder ended the live");
            let _ = self.seats.handle(now(), &room, &user, Action::Leave);
        }
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
            .is_some_and(|c| c.served_for().is_some());
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

    pub(super) fn member_request(
        &mut self,
        conn: ConnId,
        id: u64,
        room: &Ident,
        user: &Ident,
        req: Request,
    ) {
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
            Request::SendMessage { topic, data } => {
                return self.send_message(conn, id, (room, user), topic, data);
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
}
