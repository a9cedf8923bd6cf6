//! The integrator's side (contract version 3): what the server API does to a room (end it, set
//! its metadata, kick, unlink or mute a member), what it reads of one ([`Summary`]), and the
//! milestones of a room's life the webhooks report.
//!
//! The server acts with the anchor's powers: an unlink or a mute is the anchor's
//! `disconnect_user` or `mute_member`, checked the same way. Only the end of a room and a kick
//! say the server did it (`ended_by_server`, `kicked_by_server`).

use std::time::Instant;

use miclink_protocol::{EndReason, Event, Ident, MAX_METADATA_BYTES, Seat, UserInfo};

use super::{Reply, Seats};
use crate::SeatError;

/// What the server API asks of a room.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerAction {
    /// End the live: everyone gets `room_ended` with reason `ended_by_server`.
    End,
    /// Replace the room's metadata (at most [`MAX_METADATA_BYTES`]); everyone gets
    /// `room_metadata`.
    SetMetadata(String),
    /// Remove `user`, barred for `ban_s` seconds; they get `kicked` (`kicked_by_server`).
    Kick { user: Ident, ban_s: u32 },
    /// End `user`'s link, as the anchor's `disconnect_user`.
    Unlink { user: Ident },
    /// Turn `user`'s microphone or camera off (`false`) or lift that (`true`), as the anchor's
    /// `mute_member`.
    Mute {
        user: Ident,
        mic: Option<bool>,
        camera: Option<bool>,
    },
}

/// Who kicked a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickBy {
    Anchor,
    Server,
}

/// Why a link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEnd {
    /// The member ended it (`terminate_link`).
    Terminated,
    /// The anchor ended it (`disconnect_user`), or the server API's unlink.
    Disconnected,
    /// The member was kicked.
    Kicked,
    /// The member left the room while seated.
    Left,
    /// The member's connection was lost past the resume grace.
    Lost,
}

impl LinkEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkEnd::Terminated => "terminated",
            LinkEnd::Disconnected => "disconnected",
            LinkEnd::Kicked => "kicked",
            LinkEnd::Left => "left",
            LinkEnd::Lost => "lost",
        }
    }
}

/// A step in a room's life. The anchor's arrival and departure are the room's start and end;
/// a room's end ends every membership and link in it without a milestone each.
#[derive(Debug, Clone, PartialEq)]
pub enum Milestone {
    RoomStarted {
        anchor: UserInfo,
    },
    RoomEnded {
        reason: EndReason,
    },
    /// An audience member joined (a replacement or resume is not a join).
    UserJoined {
        user: UserInfo,
    },
    UserLeft {
        user: UserInfo,
    },
    LinkStarted {
        user: UserInfo,
    },
    /// `user` as they were while seated.
    LinkEnded {
        user: UserInfo,
        reason: LinkEnd,
    },
    UserKicked {
        user: UserInfo,
        by: KickBy,
        ban_s: u32,
    },
}

/// What the server API shows of a live room.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub room: Ident,
    pub anchor: UserInfo,
    /// When the anchor went live.
    pub started: Instant,
    pub audience_count: u32,
    /// Seated members other than the anchor, in seat order.
    pub linked: Vec<UserInfo>,
    pub metadata: String,
    /// Every seat, in order (with [`Seats::summary`]'s `viewers` > 0 only; else empty).
    pub seats: Vec<Seat>,
    /// Viewers (members without a seat) in join order, at most the number asked for.
    pub viewers: Vec<UserInfo>,
}

impl Seats {
    /// Every live room.
    pub fn rooms(&self) -> impl Iterator<Item = &Ident> {
        self.rooms.keys()
    }

    /// What the server API shows of `room`: with `viewers` > 0, also its seats and up to that
    /// many viewers.
    pub fn summary(&self, room: &Ident, viewers: usize) -> Option<Summary> {
        let r = self.rooms.get(room)?;
        let mut linked = r.linked();
        let anchor = if linked.first().is_some_and(|u| u.user == r.anchor) {
            linked.remove(0)
        } else {
            r.info(&r.anchor)?
        };
        let (seats, viewers) = if viewers > 0 {
            let list = r
                .order
                .values()
                .filter(|u| r.members.get(*u).is_some_and(|m| m.seat.is_none()))
                .take(viewers)
                .filter_map(|u| r.info(u))
                .collect();
            (r.state().seats, list)
        } else {
            (Vec::new(), Vec::new())
        };
        Some(Summary {
            room: room.clone(),
            anchor,
            started: r.started,
            audience_count: r.audience_count(),
            linked,
            metadata: r.metadata.clone(),
            seats,
            viewers,
        })
    }

    /// Apply the server API's `action` to `room` at `now`. An error left every state untouched.
    pub fn serve(
        &mut self,
        now: Instant,
        room_id: &Ident,
        action: ServerAction,
    ) -> Result<(), SeatError> {
        let anchor = self
            .rooms
            .get(room_id)
            .ok_or(SeatError::RoomNotFound)?
            .anchor
            .clone();
        match action {
            ServerAction::End => self.end_room(room_id, EndReason::EndedByServer),
            ServerAction::SetMetadata(metadata) => {
                if metadata.len() > MAX_METADATA_BYTES {
                    return Err(SeatError::TooLong("metadata is at most 4096 bytes"));
                }
                self.room_mut(room_id).metadata = metadata.clone();
                self.broadcast(room_id, Event::RoomMetadata { metadata });
            }
            ServerAction::Kick { user, ban_s } => {
                if user == anchor {
                    return Err(SeatError::NotAllowed(
                        "the anchor cannot be kicked; end the room instead",
                    ));
                }
                self.kick(now, room_id, &user, ban_s, KickBy::Server)
                    .map(|_| ())?;
            }
            ServerAction::Unlink { user } => {
                self.disconnect_user(room_id, &anchor, &user).map(|_| ())?;
            }
            ServerAction::Mute { user, mic, camera } => {
                self.mute_member(room_id, &anchor, &user, mic, camera)
                    .map(|_: Reply| ())?;
            }
        }
        Ok(())
    }
}
