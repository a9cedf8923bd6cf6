//! The bridge to the local media plane ([`miclink_sfu`]): commands nobody waits for, requests
//! whose answer comes back later as a [`MediaEvent`] addressed to the connection and request id,
//! and the plane's events: answers, offers and reports for members, publishing reports for the
//! seats, and the relays between nodes' media planes, which go to the cluster.
//!
//! It must not decide seats: what the media plane saw (a member publishing, a WHEP viewer's
//! connection ending) is reported to the seats, which decide.

use miclink_protocol::{ErrorCode, Event, Ident, Reply, Request};
use miclink_seats::Action;
use miclink_sfu::{MediaCommand, MediaEvent, ReplyTo};
use tracing::{debug, error};

use super::{Hub, now};
use crate::error::media_error_code;
use crate::relay::Relay;
use crate::wire::{CLOSE_GOING_AWAY, ConnId, Outbound, encode};

impl Hub {
    /// WHEP: the connection's member watches through a connection made from `sdp`.
    pub(super) fn watch(&mut self, conn: ConnId, id: u64, sdp: String) {
        // A session here, or one another node holds whose media is served here.
        let member = self.conns.get(&conn).and_then(|c| match c.session {
            Some(sid) => self
                .sessions
                .get(&sid)
                .map(|s| (s.room.clone(), s.user.clone())),
            None => c.edge_member().cloned(),
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

    /// In a cluster: whose media plane makes `user`'s subscribe connection
    /// ([`MediaCommand::SubscribeElsewhere`]). Nothing on a node alone.
    pub(super) fn subscribe_elsewhere(&self, room: &Ident, user: &Ident, elsewhere: bool) {
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
    pub(super) fn to_media(&self, command: MediaCommand) {
        if let Some(media) = &self.media
            && let Err(e) = media.send(command)
        {
            debug!(error = %e, "media plane did not take a command");
        }
    }

    /// Hand a media request to the media plane; its answer comes back as a [`MediaEvent`].
    pub(super) fn ask_media(&mut self, conn: ConnId, id: u64, command: MediaCommand) {
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

    pub(super) fn on_media_event(&mut self, event: MediaEvent) {
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
                    && let Some(node) = self
                        .conns
                        .get(&conn)
                        .and_then(|c| c.origin().map(str::to_owned))
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
}
