//! Seat control and media state (contract version 2): seat locks, moves, the anchor's mutes,
//! a member's own mutes, kicks with bans, and what the media plane says is published.
//!
//! One rule ties the mutes together: whatever the anchor or a seat lock keeps off, the member
//! cannot turn on (`muted_by_anchor`); when that block ends, the member's own switch for that kind
//! is left off, so lifting a mute never opens somebody's microphone behind their back.

use std::time::{Duration, Instant};

use miclink_protocol::{Event, Ident, KickReason, MediaBy, Role};

use super::{KickBy, Leaving, MediaChange, Milestone, Reply, Seats};
use crate::SeatError;
use crate::room::{Kinds, MediaView, Room};

/// The longest ban `kick_user` may set: a day.
pub const MAX_BAN_S: u32 = 24 * 60 * 60;

/// Bans one room keeps. An anchor kicking without end must not grow memory without end: past
/// this, the ban that ends first goes.
pub const MAX_BANS: usize = 1024;

/// Whole seconds left on `user`'s ban from `room` at `now`, if one is in force.
pub(crate) fn ban_left(room: &Room, user: &Ident, now: Instant) -> Option<u64> {
    let until = *room.bans.get(user)?;
    let left = until.checked_duration_since(now).filter(|d| !d.is_zero())?;
    Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
}

/// What a seated member's media looked like before a change, to announce what the change did.
#[derive(Clone, Copy)]
pub(crate) struct Before {
    view: MediaView,
    gate: Kinds,
    seat: u32,
    link: u64,
}

impl Seats {
    /// Until when `user` is barred from `room`, if a ban was set (it may have ended).
    pub fn ban(&self, room: &Ident, user: &Ident) -> Option<Instant> {
        self.rooms.get(room)?.bans.get(user).copied()
    }

    fn anchor_only(&self, room: &Ident, user: &Ident, what: &'static str) -> Result<(), SeatError> {
        let me = self.member(room, user)?;
        if me.role != Role::Anchor {
            return Err(SeatError::NotAllowed(what));
        }
        Ok(())
    }

    /// A linked audience member of `room`, or `NotLinked`.
    fn linked_member(&self, room: &Ident, target: &Ident) -> Result<(), SeatError> {
        let linked = self
            .room(room)?
            .members
            .get(target)
            .is_some_and(|m| m.role == Role::Audience && m.seat.is_some());
        if !linked {
            return Err(SeatError::NotLinked("that user is not linked"));
        }
        Ok(())
    }

    fn check_seat(&self, room: &Ident, seat: u32) -> Result<(), SeatError> {
        let len = self.room(room)?.seats.len() as u32;
        if seat == 0 || seat >= len {
            return Err(SeatError::NoSuchSeat {
                index: seat,
                max: len.saturating_sub(1),
            });
        }
        Ok(())
    }

    pub(super) fn lock_seat(
        &mut self,
        room_id: &Ident,
        user: &Ident,
        seat: u32,
        lock: Option<bool>,
        audio: Option<bool>,
        video: Option<bool>,
    ) -> Result<Reply, SeatError> {
        self.anchor_only(room_id, user, "only the anchor can lock seats")?;
        self.check_seat(room_id, seat)?;
        let room = self.room(room_id)?;
        let occupant = room.seats[seat as usize].clone();
        let before = occupant.as_ref().and_then(|u| self.before(room_id, u));
        let l = &mut self.room_mut(room_id).locks[seat as usize];
        let old = *l;
        l.taken = lock.unwrap_or(l.taken);
        l.media.audio = audio.unwrap_or(l.media.audio);
        l.media.video = video.unwrap_or(l.media.video);
        if *l == old {
            return Ok(Reply::Done);
        }
        if let (Some(u), Some(b)) = (&occupant, before) {
            self.media_changed(room_id, u, b, MediaBy::Seat);
        }
        self.seats_updated(room_id);
        Ok(Reply::Done)
    }

    pub(super) fn move_seat(
        &mut self,
        room_id: &Ident,
        user: &Ident,
        seat: u32,
        target: Option<Ident>,
    ) -> Result<Reply, SeatError> {
        let me = self.member(room_id, user)?;
        let target = target.unwrap_or_else(|| user.clone());
        match (me.role, target == *user) {
            (Role::Anchor, true) => {
                return Err(SeatError::NotAllowed("the anchor stays on seat 0"));
            }
            (Role::Audience, false) => {
                return Err(SeatError::NotAllowed("only the anchor moves other members"));
            }
            _ => {}
        }
        self.linked_member(room_id, &target)?;
        self.check_seat(room_id, seat)?;
        let room = self.room(room_id)?;
        let from = room.members[&target].seat.expect("linked");
        if from == seat {
            return Ok(Reply::Done);
        }
        if room.seat_is_locked(seat) {
            return Err(SeatError::SeatLocked(seat));
        }
        if room.seats[seat as usize].is_some() {
            return Err(SeatError::SeatTaken(seat));
        }
        let before = self.before(room_id, &target).expect("linked");
        let room = self.room_mut(room_id);
        room.seats[from as usize] = None;
        room.seats[seat as usize] = Some(target.clone());
        room.members.get_mut(&target).expect("linked member").seat = Some(seat);
        self.media_changed(room_id, &target, before, MediaBy::Seat);
        self.seats_updated(room_id);
        let users = self.room(room_id)?.linked();
        self.broadcast(
            room_id,
            Event::ConnectedUsersUpdated {
                users,
                joined: vec![],
                left: vec![],
            },
        );
        Ok(Reply::Done)
    }

    pub(super) fn mute_member(
        &mut self,
        room_id: &Ident,
        user: &Ident,
        target: &Ident,
        mic: Option<bool>,
        camera: Option<bool>,
    ) -> Result<Reply, SeatError> {
        self.anchor_only(room_id, user, "only the anchor mutes members")?;
        if target == user {
            return Err(SeatError::NotAllowed(
                "the anchor mutes itself with set_media",
            ));
        }
        self.linked_member(room_id, target)?;
        let before = self.before(room_id, target).expect("linked");
        // `false` = the anchor turns it off; `true` lifts the anchor's mute.
        self.room_mut(room_id)
            .members
            .get_mut(target)
            .expect("linked member")
            .anchor_muted
            .switch(mic, camera);
        self.media_changed(room_id, target, before, MediaBy::Anchor);
        Ok(Reply::Done)
    }

    pub(super) fn set_media(
        &mut self,
        room_id: &Ident,
        user: &Ident,
        mic: Option<bool>,
        camera: Option<bool>,
    ) -> Result<Reply, SeatError> {
        let room = self.room(room_id)?;
        room.member(user)?;
        let Some(blocked) = room.blocked(user) else {
            return Err(SeatError::NotLinked(
                "only seated members have a mic and camera",
            ));
        };
        if mic == Some(true) && blocked.audio {
            return Err(SeatError::MutedByAnchor(
                "the anchor or the seat keeps your mic off",
            ));
        }
        if camera == Some(true) && blocked.video {
            return Err(SeatError::MutedByAnchor(
                "the anchor or the seat keeps your camera off",
            ));
        }
        let before = self.before(room_id, user).expect("seated");
        self.room_mut(room_id)
            .members
            .get_mut(user)
            .expect("member")
            .muted
            .switch(mic, camera);
        self.media_changed(room_id, user, before, MediaBy::User);
        Ok(Reply::Done)
    }

    pub(super) fn kick_user(
        &mut self,
        now: Instant,
        room_id: &Ident,
        user: &Ident,
        target: &Ident,
        ban_s: u32,
    ) -> Result<Reply, SeatError> {
        self.anchor_only(room_id, user, "only the anchor removes users")?;
        self.kick(now, room_id, target, ban_s, KickBy::Anchor)
    }

    /// Remove `target` from the room, barred from it for `ban_s` seconds: the anchor's
    /// `kick_user` or the server API's kick.
    pub(super) fn kick(
        &mut self,
        now: Instant,
        room_id: &Ident,
        target: &Ident,
        ban_s: u32,
        by: KickBy,
    ) -> Result<Reply, SeatError> {
        if ban_s > MAX_BAN_S {
            return Err(SeatError::BanTooLong { max: MAX_BAN_S });
        }
        let room = self.room(room_id)?;
        let t = room
            .members
            .get(target)
            .ok_or(SeatError::NotFound("no such user in this room"))?;
        if t.role == Role::Anchor {
            return Err(SeatError::NotAllowed(
                "the anchor cannot remove itself; leave",
            ));
        }
        if ban_s > 0 {
            let room = self.room_mut(room_id);
            room.bans.retain(|_, until| *until > now);
            if room.bans.len() >= MAX_BANS
                && !room.bans.contains_key(target)
                && let Some(first) = room
                    .bans
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(u, _)| u.clone())
            {
                room.bans.remove(&first);
            }
            room.bans
                .insert(target.clone(), now + Duration::from_secs(u64::from(ban_s)));
        }
        // Told before they go: once departed, their session gets nothing more.
        let reason = match by {
            KickBy::Anchor => KickReason::KickedByAnchor,
            KickBy::Server => KickReason::KickedByServer,
        };
        self.event(room_id, target.clone(), Event::Kicked { reason });
        if let Some(user) = self.room(room_id)?.info(target) {
            self.milestone(room_id, Milestone::UserKicked { user, by, ban_s });
        }
        self.remove_member(now, room_id, target, Leaving::Kicked);
        Ok(Reply::Done)
    }

    /// The media plane's word on what `user` publishes. Ignored for members without a seat: a
    /// report can cross their unlink.
    pub(super) fn published(
        &mut self,
        room_id: &Ident,
        user: &Ident,
        published: Kinds,
    ) -> Result<Reply, SeatError> {
        self.member(room_id, user)?;
        let Some(before) = self.before(room_id, user) else {
            return Ok(Reply::Done);
        };
        self.room_mut(room_id)
            .members
            .get_mut(user)
            .expect("member")
            .published = published;
        self.media_changed(room_id, user, before, MediaBy::User);
        Ok(Reply::Done)
    }

    /// A seated member's media as it stands, before a change.
    pub(crate) fn before(&self, room: &Ident, user: &Ident) -> Option<Before> {
        let r = self.rooms.get(room)?;
        Some(Before {
            view: r.view(user)?,
            gate: r.gate(user)?,
            seat: r.members.get(user)?.seat?,
            link: r.members.get(user)?.link,
        })
    }

    /// After a change to `user`'s seat, mutes or locks: leave off what stopped being blocked,
    /// tell the media plane what it may forward (first, so nothing muted slips out while the
    /// news travels), then tell everyone what changed, once.
    pub(super) fn media_changed(
        &mut self,
        room_id: &Ident,
        user: &Ident,
        before: Before,
        by: MediaBy,
    ) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let Some(blocked) = room.blocked(user) else {
            return;
        };
        let m = room.members.get_mut(user).expect("seated member");
        if before.view.blocked.audio && !blocked.audio {
            m.muted.audio = true;
        }
        if before.view.blocked.video && !blocked.video {
            m.muted.video = true;
        }
        let Some(after) = self.before(room_id, user) else {
            return;
        };
        if after.gate != before.gate || after.seat != before.seat {
            self.media(MediaChange::AllowPublish {
                room: room_id.clone(),
                user: user.clone(),
                seat: after.seat,
                audio: after.gate.audio,
                video: after.gate.video,
                link: after.link,
            });
        }
        if after.view != before.view {
            self.broadcast(
                room_id,
                Event::MediaState {
                    user: user.clone(),
                    mic: after.view.on.audio,
                    camera: after.view.on.video,
                    by,
                    mic_blocked: after.view.blocked.audio,
                    camera_blocked: after.view.blocked.video,
                },
            );
        }
    }

    fn seats_updated(&mut self, room_id: &Ident) {
        if let Some(state) = self.room_state(room_id) {
            self.broadcast(room_id, Event::SeatsUpdated { seats: state.seats });
        }
    }
}
