//! Media for members whose room another node holds (cluster): the origin keeps their sessions
//! and seats, this node keeps their subscribe connections, fed by one relay connection per room
//! from the origin's media plane (`miclink_sfu`'s relays).
//!
//! - A relayed socket whose join or resume succeeded at the origin (its `Joined`, which names the member) becomes a
//!   member here: the local media plane subscribes it, and the first member of a room asks the
//!   origin for the room's relay (`MediaOpen`). The origin's hub leaves that member's subscribe
//!   connection to this node (`SubscribeElsewhere`).
//! - Its subscribe-side requests (answers, ICE for the subscribe connection, `resubscribe`,
//!   `set_subscription`) are served here; everything else still goes to the origin.
//! - A socket that closes keeps its media for the resume grace, as on one node; a session that
//!   ends (`Unbound`), a grace that runs out, or a lost origin ends it, and the last member of a
//!   room closes the relay (`MediaClose`).
//!
//! It must not keep those members' sessions or seats (the origin does): it serves their media,
//! and tells the origin what they publish, whose seats decide.

use std::time::Duration;

use miclink_protocol::{Ident, Request};
use miclink_sfu::{MediaChange, MediaCommand};
use tokio::time::Instant;
use tracing::{debug, info};

use super::{ConnId, Hub};
use crate::relay::{Member, Relay};

/// The shortest wait before asking an origin again for a relay that failed or was refused.
const REOPEN_AFTER: Duration = Duration::from_secs(2);

/// A member served here: its socket now, or when its media ends without one.
pub(crate) struct EdgeMember {
    conn: Option<ConnId>,
    expires: Option<Instant>,
}

/// A room with members served here.
pub(crate) struct EdgeRoom {
    origin: String,
    members: usize,
    /// The relay from the origin, failed, is asked for again then.
    reopen_at: Option<Instant>,
    /// The push to the origin, failed, is opened again then.
    repush_at: Option<Instant>,
    /// This node pushes its publishers of the room to the origin.
    pushing: bool,
}

impl Hub {
    /// A relayed socket's join or resume succeeded at its origin, making `member`.
    pub(super) fn edge_joined(&mut self, conn: ConnId, member: Member, resumed: bool) {
        let Some(origin) = self
            .conns
            .get(&conn)
            .and_then(|c| c.origin().map(str::to_owned))
        else {
            return;
        };
        let Member { room, user } = member;
        // The socket's previous member (its session ended there, and the `Unbound` saying so
        // was overtaken by this join): its media here ends.
        if let Some(prev) = self.conns.get(&conn).and_then(|c| c.edge_member().cloned())
            && prev != (room.clone(), user.clone())
        {
            self.edge_conn_ends(conn, true);
        }
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let moved = cluster
            .edge_rooms
            .get(&room)
            .is_some_and(|r| r.origin != origin);
        if moved {
            // The room moved (its old origin was lost and it went live again elsewhere) while
            // members here waited out their grace: they are not this room's any more.
            debug!(%room, %origin, "a room's origin changed");
            let stale: Vec<(Ident, Ident)> = cluster
                .edge_members
                .keys()
                .filter(|(r, _)| *r == room)
                .cloned()
                .collect();
            for key in stale {
                self.edge_member_gone(&key);
            }
        }
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let key = (room.clone(), user.clone());
        let r = cluster
            .edge_rooms
            .entry(room.clone())
            .or_insert_with(|| EdgeRoom {
                origin: origin.clone(),
                members: 0,
                reopen_at: None,
                repush_at: None,
                pushing: false,
            });
        let before = cluster.edge_members.insert(
            key.clone(),
            EdgeMember {
                conn: Some(conn),
                expires: None,
            },
        );
        let first = before.is_none();
        if first {
            r.members += 1;
        }
        let open = first && r.members == 1;
        if let Some(old) = before.and_then(|m| m.conn).filter(|c| *c != conn)
            && let Some(r) = self.conns.get_mut(&old).and_then(|c| c.relayed_mut())
        {
            r.member = None;
        }
        if let Some(r) = self.conns.get_mut(&conn).and_then(|c| c.relayed_mut()) {
            r.member = Some(key);
        }
        if open {
            info!(%room, %origin, "members here: the room's media is relayed from its origin");
            self.to_media(MediaCommand::RelayFrom {
                room: room.clone(),
                node: origin.clone(),
            });
            self.tell_node(origin, Relay::MediaOpen { room: room.clone() });
        }
        if first && resumed {
            // The client's subscribe connection, if any, was with another node.
            self.to_media(MediaCommand::NewConnection {
                room: room.clone(),
                user: user.clone(),
            });
        }
        // A WHEP player makes its own offer (`Watch`): none is made for it, before its first
        // subscription or after a rejoin (which renews the member's connections).
        let own_offers =
            self.conns
                .get(&conn)
                .is_some_and(|c| c.http)
                .then(|| MediaCommand::OwnOffers {
                    room: room.clone(),
                    user: user.clone(),
                });
        if first && let Some(c) = &own_offers {
            self.to_media(c.clone());
        }
        self.to_media(match (first, resumed) {
            (true, _) => MediaCommand::Seats(MediaChange::Subscribe { room, user }),
            // A pending offer goes out again on the new socket.
            (false, true) => MediaCommand::Resumed { room, user },
            // The same user joined again: new connections at once (rule 9).
            (false, false) => MediaCommand::Rejoin { room, user },
        });
        if !first && let Some(c) = own_offers {
            self.to_media(c);
        }
    }

    /// The request of relayed socket `conn`, if its member's media is served here and the
    /// request is about its subscribe side: served here. Otherwise handed back.
    pub(super) fn edge_request(
        &mut self,
        conn: ConnId,
        id: u64,
        request: Request,
    ) -> Option<Request> {
        let Some((room, user)) = self.conns.get(&conn).and_then(|c| c.edge_member().cloned())
        else {
            return Some(request);
        };
        let here = matches!(
            &request,
            Request::SubscribeAnswer { .. }
                | Request::Resubscribe
                | Request::SetSubscription { .. }
                | Request::Ice { .. }
        );
        if let Request::Publish { sdp } = request {
            // Published here and pushed to the origin; the seats there decide what may be
            // (`MediaSeat`), and this node's media plane refuses a publisher they do not allow.
            let command = MediaCommand::Publish {
                room,
                user,
                offer: sdp,
                reply: miclink_sfu::ReplyTo { conn, id },
            };
            self.ask_media(conn, id, command);
            return None;
        }
        if !here {
            return Some(request);
        }
        self.member_request(conn, id, &room, &user, request);
        None
    }

    /// Edge: what a member publishes here is the origin's seats' business; the first
    /// publisher of the room here opens the push of this node's publishers to the origin.
    /// Whether the report was taken (it was about a member served here).
    pub(super) fn edge_published(
        &mut self,
        room: &Ident,
        user: &Ident,
        audio: bool,
        video: bool,
        link: u64,
    ) -> bool {
        let Some(r) = self.cluster.as_mut().and_then(|c| {
            c.edge_members
                .contains_key(&(room.clone(), user.clone()))
                .then_some(())?;
            c.edge_rooms.get_mut(room)
        }) else {
            return false;
        };
        let origin = r.origin.clone();
        let push = (audio || video) && !r.pushing;
        if push {
            r.pushing = true;
        }
        self.tell_node(
            origin.clone(),
            Relay::MediaPublished {
                room: room.clone(),
                user: user.clone(),
                audio,
                video,
                link,
            },
        );
        if push {
            info!(%room, %origin, "a member publishes here: pushed to the origin");
            self.to_media(MediaCommand::RelayOpen {
                room: room.clone(),
                node: origin,
            });
        }
        true
    }

    /// The socket of a member whose media is served here, for events of the local media plane.
    pub(super) fn edge_conn(&self, room: &Ident, user: &Ident) -> Option<ConnId> {
        self.cluster
            .as_ref()?
            .edge_members
            .get(&(room.clone(), user.clone()))?
            .conn
    }

    /// Relayed socket `conn` no longer has its session (`ended`) or is gone (its member's
    /// media stays for the resume grace).
    pub(super) fn edge_conn_ends(&mut self, conn: ConnId, ended: bool) {
        let Some(key) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.relayed_mut()?.member.take())
        else {
            return;
        };
        let grace = self.config.seats.resume_grace;
        let Some(m) = self
            .cluster
            .as_mut()
            .and_then(|c| c.edge_members.get_mut(&key))
            .filter(|m| m.conn == Some(conn))
        else {
            return;
        };
        if !ended {
            m.conn = None;
            m.expires = Some(Instant::now() + grace);
            return;
        }
        self.edge_member_gone(&key);
    }

    /// A member's media here ends; the room's last closes the relay.
    fn edge_member_gone(&mut self, key: &(Ident, Ident)) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let Some(m) = cluster.edge_members.remove(key) else {
            return;
        };
        if let Some(r) = m.conn.and_then(|c| self.conns.get_mut(&c)?.relayed_mut()) {
            r.member = None;
        }
        let (room, user) = key.clone();
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let last = match cluster.edge_rooms.get_mut(&room) {
            Some(r) => {
                r.members = r.members.saturating_sub(1);
                r.members == 0
            }
            None => false,
        };
        self.to_media(MediaCommand::Seats(MediaChange::Unsubscribe {
            room: room.clone(),
            user,
        }));
        if last
            && let Some(r) = self
                .cluster
                .as_mut()
                .and_then(|c| c.edge_rooms.remove(&room))
        {
            info!(%room, origin = %r.origin, "no members here any more: the relay closes");
            self.to_media(MediaCommand::Seats(MediaChange::CloseRoom {
                room: room.clone(),
            }));
            self.tell_node(r.origin, Relay::MediaClose { room });
        }
    }

    /// `node` is lost: the media of every member whose room it held ends here.
    pub(super) fn edge_node_lost(&mut self, node: &str) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let gone: Vec<(Ident, Ident)> = cluster
            .edge_members
            .keys()
            .filter(|(room, _)| {
                cluster
                    .edge_rooms
                    .get(room)
                    .is_some_and(|r| r.origin == node)
            })
            .cloned()
            .collect();
        for key in gone {
            self.edge_member_gone(&key);
        }
    }

    /// A relay of `room` with its origin `node` failed (`push`: this node's push to it, or its
    /// relay from it; `None`: not said, both): that one, and only that one, is opened again
    /// shortly, while members remain (renewing the other would interrupt every stream it
    /// carries).
    pub(super) fn edge_relay_ended(&mut self, room: &Ident, node: &str, push: Option<bool>) {
        if let Some(r) = self
            .cluster
            .as_mut()
            .and_then(|c| c.edge_rooms.get_mut(room))
            .filter(|r| r.origin == node)
        {
            let at = Some(Instant::now() + REOPEN_AFTER);
            if push != Some(false) {
                r.repush_at = at;
            }
            if push != Some(true) {
                r.reopen_at = at;
            }
        }
    }

    /// The next time [`Self::edge_timeout`] has something to do.
    pub(super) fn edge_deadline(&self) -> Option<Instant> {
        let c = self.cluster.as_ref()?;
        let members = c.edge_members.values().filter_map(|m| m.expires);
        let rooms = c
            .edge_rooms
            .values()
            .flat_map(|r| [r.reopen_at, r.repush_at])
            .flatten();
        members.chain(rooms).min()
    }

    /// Members whose grace ran out go; failed relays are asked for again.
    pub(super) fn edge_timeout(&mut self) {
        let now = Instant::now();
        let Some(c) = &mut self.cluster else {
            return;
        };
        let expired: Vec<(Ident, Ident)> = c
            .edge_members
            .iter()
            .filter(|(_, m)| m.expires.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let (mut reopen, mut repush) = (Vec::new(), Vec::new());
        for (room, r) in &mut c.edge_rooms {
            if r.reopen_at.is_some_and(|t| t <= now) {
                r.reopen_at = None;
                reopen.push((r.origin.clone(), room.clone()));
            }
            if r.repush_at.is_some_and(|t| t <= now) {
                r.repush_at = None;
                if r.pushing {
                    repush.push((r.origin.clone(), room.clone()));
                }
            }
        }
        for key in expired {
            debug!(room = %key.0, user = %key.1, "no socket came back: media here ends");
            self.edge_member_gone(&key);
        }
        for (origin, room) in reopen {
            info!(%room, %origin, "asking for the room's relay again");
            self.tell_node(origin, Relay::MediaOpen { room });
        }
        for (origin, room) in repush {
            info!(%room, %origin, "pushing the room's publishers to its origin again");
            self.to_media(MediaCommand::RelayOpen { room, node: origin });
        }
    }

    /// What another node says about media: about the relays between the nodes' media planes,
    /// as origin (`MediaOpen`, `MediaAnswer`, `MediaClose`) or as edge (`MediaOffer`,
    /// `MediaEnded`); a member's permit (`MediaSeat`) or publishing (`MediaPublished`).
    pub(super) fn on_node_media(&mut self, from: String, relay: Relay) {
        let edge_of = |hub: &Hub, room: &Ident| {
            hub.cluster
                .as_ref()
                .and_then(|c| c.edge_rooms.get(room))
                .is_some_and(|r| r.origin == from)
        };
        match relay {
            Relay::MediaOpen { room } if self.rooms.contains_key(&room) => {
                self.to_media(MediaCommand::RelayOpen { room, node: from });
            }
            Relay::MediaOpen { room } => {
                // Not held here (any more, or yet again after a restart): the edge asks again
                // a little later, until its members' sessions end.
                debug!(%room, node = %from, "relay asked for a room not held here");
                self.tell_node(
                    from,
                    Relay::MediaEnded {
                        room,
                        push: Some(false),
                    },
                );
            }
            Relay::MediaAnswer {
                room,
                sdp,
                offer_id,
            } => self.to_media(MediaCommand::RelayAnswer {
                room,
                node: from,
                sdp,
                offer_id,
            }),
            Relay::MediaClose { room } => {
                self.to_media(MediaCommand::RelayClose { room, node: from });
            }
            // From the origin (its relay of the room), or to the origin from a node pushing its
            // publishers.
            Relay::MediaOffer {
                room,
                sdp,
                offer_id,
                fresh,
            } if edge_of(self, &room) || self.rooms.contains_key(&room) => {
                self.to_media(MediaCommand::RelayOffer {
                    room,
                    node: from,
                    sdp,
                    offer_id,
                    fresh,
                })
            }
            // An offer for a room this node neither holds nor has members of: the only node
            // waiting for an answer is one pushing to what it took for the room's origin (it
            // asks again a little later).
            Relay::MediaOffer { room, .. } => {
                debug!(%room, node = %from, "relay offer for a room not held here");
                self.tell_node(
                    from,
                    Relay::MediaEnded {
                        room,
                        push: Some(true),
                    },
                );
            }
            Relay::MediaEnded { room, push } if edge_of(self, &room) => {
                self.edge_relay_ended(&room, &from, push);
            }
            // From the room's origin only (it comes after the reply that made the member known).
            Relay::MediaSeat { room, user, allow } if edge_of(self, &room) => {
                let change = match allow {
                    Some(p) => MediaChange::AllowPublish {
                        room,
                        user,
                        seat: p.seat,
                        audio: p.audio,
                        video: p.video,
                        link: p.link,
                    },
                    None => MediaChange::RevokePublish { room, user },
                };
                self.to_media(MediaCommand::Seats(change));
            }
            // As for a publish connection here: only a report about the seating that stands
            // counts.
            Relay::MediaPublished {
                room,
                user,
                audio,
                video,
                link,
            } if self.seats.link(&room, &user) == Some(link)
                && self.member_on(&room, &user, &from) =>
            {
                let _ = self.seats.handle(
                    super::now(),
                    &room,
                    &user,
                    miclink_seats::Action::Published { audio, video },
                );
            }
            _ => {}
        }
    }
}
