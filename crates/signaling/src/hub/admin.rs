//! The integrator's side of the hub (contract version 3): server API calls (answered here for
//! rooms held here, carried to the node holding the room otherwise), room messages from members
//! and from the API, and the rooms' milestones handed to the webhooks.
//!
//! It must not decide seats (the seats' [`miclink_seats::Seats::serve`] does) nor deliver
//! webhooks itself (that is [`crate::webhook`]: queued here, never waited on).

use std::time::{SystemTime, UNIX_EPOCH};

use miclink_protocol::api::{RoomDetail, RoomSummary};
use miclink_protocol::{ErrorCode, Event, Ident, Reply, check_message};
use miclink_seats::{Milestone, SeatError, ServerAction, Summary};
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::{Hub, now};
use crate::api::{ApiAnswer, ApiCall};
use crate::ratelimit::Bucket;
use crate::relay::{Relay, RelayOut};
use crate::wire::{ConnId, encode};

/// Viewers a room's detail lists at most.
const DETAIL_VIEWERS: usize = 1000;
/// Room messages one member may send a second.
pub(crate) const MESSAGES_PER_S: f64 = 5.0;
/// Room messages all members of one room may send a second (twice that at once): each goes to
/// every member, so a room full of senders must not multiply into every socket's queue.
pub(crate) const ROOM_MESSAGES_PER_S: f64 = 50.0;
/// Rooms whose message rate is tracked at once; idle ones make room.
const ROOM_BUCKETS: usize = 4096;
/// Server API calls waiting for another node's answer at most.
const CALLS_IN_FLIGHT: usize = 1024;

impl Hub {
    /// A server API call, answered for the rooms this node holds.
    pub(super) fn api(&mut self, call: ApiCall) -> ApiAnswer {
        if self.shutdown.is_some() {
            return ApiAnswer::refused(503, "unavailable", "the server is shutting down");
        }
        if let Some(room) = call.room()
            && self.seats.room_state(room).is_none()
        {
            return match self.cluster {
                Some(_) => ApiAnswer::NotHere,
                None => ApiAnswer::refused(404, "not_found", "no live room with that id"),
            };
        }
        let _span = tracing::info_span!("api", room = ?call.room()).entered();
        let action = match call {
            ApiCall::ListRooms => {
                let rooms: Vec<Ident> = self.seats.rooms().cloned().collect();
                let rooms = rooms
                    .iter()
                    .filter_map(|r| self.seats.summary(r, 0))
                    .map(|s| self.summary(s).0)
                    .collect();
                return ApiAnswer::Rooms { rooms };
            }
            ApiCall::GetRoom { room } => {
                let Some(s) = self.seats.summary(&room, DETAIL_VIEWERS) else {
                    return ApiAnswer::refused(404, "not_found", "no live room with that id");
                };
                let (summary, seats, viewers) = self.summary(s);
                return ApiAnswer::Room {
                    room: Box::new(RoomDetail {
                        summary,
                        seats,
                        viewers,
                    }),
                };
            }
            ApiCall::SendMessage { room, topic, data } => {
                if let Err(why) = check_message(&topic, &data) {
                    return ApiAnswer::refused(400, "bad_request", why);
                }
                let event = Event::RoomMessage {
                    from: None,
                    topic,
                    data,
                    at: unix_ms(),
                };
                self.broadcast_live(&room, &event);
                return ApiAnswer::Done;
            }
            ApiCall::EndRoom { room } => (room, ServerAction::End),
            ApiCall::SetMetadata { room, metadata } => (room, ServerAction::SetMetadata(metadata)),
            ApiCall::Kick { room, user, ban_s } => (room, ServerAction::Kick { user, ban_s }),
            ApiCall::Unlink { room, user } => (room, ServerAction::Unlink { user }),
            ApiCall::Mute {
                room,
                user,
                mic,
                camera,
            } => (room, ServerAction::Mute { user, mic, camera }),
        };
        let (room, action) = action;
        info!(?action, "the server API acts on the room");
        match self.seats.serve(now(), &room, action) {
            Ok(()) => ApiAnswer::Done,
            Err(e) => {
                let not_found = matches!(
                    e,
                    SeatError::RoomNotFound
                        | SeatError::NotFound(_)
                        | SeatError::NotLinked(_)
                        | SeatError::NotInRoom
                );
                match not_found {
                    true => ApiAnswer::refused(404, "not_found", e.to_string()),
                    false => ApiAnswer::refused(400, "bad_request", e.to_string()),
                }
            }
        }
    }

    /// A summary as the API shows it, and the detail's seats and viewers.
    fn summary(
        &self,
        s: Summary,
    ) -> (
        RoomSummary,
        Vec<miclink_protocol::Seat>,
        Vec<miclink_protocol::UserInfo>,
    ) {
        let age = now().saturating_duration_since(s.started);
        let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        let summary = RoomSummary {
            room: s.room,
            anchor: s.anchor,
            started_at: unix_ms().saturating_sub(age_ms),
            audience_count: s.audience_count,
            linked: s.linked,
            metadata: s.metadata,
            cohost: Vec::new(),
            battle: None,
        };
        (summary, s.seats, s.viewers)
    }

    /// A server API call carried to `node`; answered when its [`Relay::ApiAnswer`] comes.
    pub(super) fn api_at(
        &mut self,
        node: String,
        call: ApiCall,
        reply: oneshot::Sender<ApiAnswer>,
    ) {
        let Some(c) = &mut self.cluster else {
            let _ = reply.send(ApiAnswer::NotHere);
            return;
        };
        if c.calls.len() >= CALLS_IN_FLIGHT {
            // Callers that gave up (their HTTP request timed out) make room.
            c.calls.retain(|_, (_, r)| !r.is_closed());
            if c.calls.len() >= CALLS_IN_FLIGHT {
                let _ = reply.send(ApiAnswer::refused(
                    503,
                    "unavailable",
                    "too many calls in flight",
                ));
                return;
            }
        }
        c.next_call += 1;
        let id = c.next_call;
        c.calls.insert(id, (node.clone(), reply));
        let relay = Relay::Api { id, call };
        if c.out.try_send(RelayOut::Send { node, relay }).is_err()
            && let Some((_, reply)) = c.calls.remove(&id)
        {
            let _ = reply.send(ApiAnswer::refused(
                503,
                "unavailable",
                "the cluster is busy",
            ));
        }
    }

    /// Another node's call, answered as this node's own.
    pub(super) fn api_from(&mut self, from: String, id: u64, call: ApiCall) {
        // A list from another node is of this node's rooms only: never asked on.
        let answer = self.api(call);
        if let Some(c) = &self.cluster {
            let relay = Relay::ApiAnswer { id, answer };
            let _ = c.out.try_send(RelayOut::Send { node: from, relay });
        }
    }

    /// Another node answered call `id`.
    pub(super) fn api_answered(&mut self, from: &str, id: u64, answer: ApiAnswer) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        // Only the node asked answers a call.
        if c.calls.get(&id).is_some_and(|(node, _)| node == from)
            && let Some((_, reply)) = c.calls.remove(&id)
        {
            debug!(node = from, id, "a node answered a server API call");
            let _ = reply.send(answer);
        }
    }

    /// The node holding `room`, when another one does.
    pub(super) fn origin_of(&mut self, room: Ident, reply: oneshot::Sender<Option<String>>) {
        match &self.cluster {
            Some(c) if self.seats.room_state(&room).is_none() => {
                if let Err(e) = c.out.try_send(RelayOut::Origin { room, reply })
                    && let RelayOut::Origin { reply, .. } = e.into_inner()
                {
                    let _ = reply.send(None);
                }
            }
            _ => {
                let _ = reply.send(None);
            }
        }
    }

    /// A member's `send_message`: to everyone in the room, the sender too.
    pub(super) fn send_message(
        &mut self,
        conn: ConnId,
        id: u64,
        (room, user): (&Ident, &Ident),
        topic: String,
        data: String,
    ) {
        if let Err(why) = check_message(&topic, &data) {
            return self.reply_err(conn, id, ErrorCode::BadRequest, why);
        }
        let Some(sid) = self.by_member.get(&(room.clone(), user.clone())).copied() else {
            return self.reply_err(conn, id, ErrorCode::NotInRoom, "join a room first");
        };
        let now = tokio::time::Instant::now();
        let admitted = self.sessions.get_mut(&sid).is_some_and(|s| {
            s.messages
                .get_or_insert_with(|| Bucket::new(MESSAGES_PER_S, 1.0, now))
                .take(now)
        });
        if !admitted {
            return self.reply_err(
                conn,
                id,
                ErrorCode::RateLimited,
                "at most 5 messages a second",
            );
        }
        if self.room_messages.len() >= ROOM_BUCKETS && !self.room_messages.contains_key(room) {
            self.room_messages.retain(|_, b| !b.is_idle(now));
        }
        let room_admits = self
            .room_messages
            .entry(room.clone())
            .or_insert_with(|| Bucket::new(ROOM_MESSAGES_PER_S, 2.0, now))
            .take(now);
        if !room_admits {
            return self.reply_err(
                conn,
                id,
                ErrorCode::RateLimited,
                "this room's members send at most 50 messages a second together",
            );
        }
        let from = self.seats.user_info(room, user);
        let event = Event::RoomMessage {
            from,
            topic,
            data,
            at: unix_ms(),
        };
        self.send_conn(conn, encode(&Reply::ok(id, miclink_protocol::Empty {})));
        self.broadcast_live(room, &event);
    }

    /// A milestone of a room held here, to the webhooks.
    pub(super) fn milestone(&mut self, room: &Ident, milestone: &Milestone) {
        let Some(hooks) = &self.webhooks else {
            return;
        };
        // How the room started: from an HTTP resource (WHIP) or a socket.
        let via = match milestone {
            Milestone::RoomStarted { anchor } => {
                let http = self
                    .by_member
                    .get(&(room.clone(), anchor.user.clone()))
                    .and_then(|sid| self.sessions.get(sid)?.conn)
                    .and_then(|c| self.conns.get(&c))
                    .is_some_and(|c| c.http);
                if http { "whip" } else { "ws" }
            }
            _ => "ws",
        };
        let (event, fields) = crate::webhook::event_of(milestone, via);
        hooks.push(room, event, fields);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
