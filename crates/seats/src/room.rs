//! One live room: its members, its seats and its pending link requests.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use miclink_protocol::{Ident, Name, Role, RoomState, Seat, UserInfo};

/// A timer's deadline and a sequence number that makes it unique.
pub(crate) type TimerKey = (Instant, u64);

/// A pair of flags, one per media kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds {
    pub audio: bool,
    pub video: bool,
}

impl Kinds {
    pub const NONE: Kinds = Kinds {
        audio: false,
        video: false,
    };

    /// Switch each kind whose wish is given: `Some(true)` = on, so the flag (an "off" flag:
    /// muted, anchor-muted) is cleared; `None` leaves it.
    pub(crate) fn switch(&mut self, mic: Option<bool>, camera: Option<bool>) {
        if let Some(on) = mic {
            self.audio = !on;
        }
        if let Some(on) = camera {
            self.video = !on;
        }
    }

    fn or(self, other: Kinds) -> Kinds {
        Kinds {
            audio: self.audio || other.audio,
            video: self.video || other.video,
        }
    }
}

pub(crate) struct Member {
    pub(crate) name: Name,
    pub(crate) role: Role,
    pub(crate) seat: Option<u32>,
    /// The kinds the media plane says this member publishes now.
    pub(crate) published: Kinds,
    /// Turned off by the member (`set_media`), or left off when a block ended.
    pub(crate) muted: Kinds,
    /// Turned off by the anchor (`mute_member`).
    pub(crate) anchor_muted: Kinds,
    /// The number of the current seating (0 while a viewer).
    pub(crate) link: u64,
    /// Join order, the key of [`Room::order`].
    pub(crate) seq: u64,
    /// The grace timer, armed while the member's connection is lost.
    pub(crate) lost: Option<TimerKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The audience member applied; the anchor answers.
    Apply,
    /// The anchor invited; the audience member answers.
    Invite,
}

pub(crate) struct LinkRequest {
    pub(crate) id: String,
    pub(crate) kind: Kind,
    pub(crate) seat: Option<u32>,
    pub(crate) open_camera: bool,
    /// The timeout timer; `None` for requests that never time out.
    pub(crate) timer: Option<TimerKey>,
}

#[derive(Default)]
pub(crate) struct CountState {
    /// The last `audience_count` broadcast, and when.
    pub(crate) sent: Option<(u32, Instant)>,
    /// A deferred broadcast is armed.
    pub(crate) timer: Option<TimerKey>,
}

/// The locks of one seat (`lock_seat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SeatLock {
    /// Nobody can take the seat.
    pub(crate) taken: bool,
    /// What is not forwarded from whoever sits there.
    pub(crate) media: Kinds,
}

/// What every client knows of a seated member's media, announced by `media_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MediaView {
    /// What reaches the room (`UserInfo.mic`/`camera`).
    pub(crate) on: Kinds,
    /// What the anchor or the seat keeps off.
    pub(crate) blocked: Kinds,
}

pub(crate) struct Room {
    pub(crate) id: Ident,
    pub(crate) anchor: Ident,
    /// Index 0 is the anchor's; its length is `max_seats`.
    pub(crate) seats: Vec<Option<Ident>>,
    pub(crate) members: HashMap<Ident, Member>,
    /// Members in join order, for stable paging of the audience list.
    pub(crate) order: BTreeMap<u64, Ident>,
    /// Pending requests keyed by the audience member they concern: the contract allows one per
    /// audience member whichever side sent it, so this key enforces rule 3 by construction.
    pub(crate) requests: HashMap<Ident, LinkRequest>,
    pub(crate) count: CountState,
    /// One per seat, like `seats`.
    pub(crate) locks: Vec<SeatLock>,
    /// Kicked users barred from joining, until when. Bounded by [`crate::MAX_BANS`].
    pub(crate) bans: HashMap<Ident, Instant>,
    /// What the integrator's backend says about the room (the server API's metadata).
    pub(crate) metadata: String,
    /// When the anchor went live.
    pub(crate) started: Instant,
}

impl Room {
    /// The acting member, or `NotInRoom`.
    pub(crate) fn member(&self, user: &Ident) -> Result<&Member, crate::SeatError> {
        self.members.get(user).ok_or(crate::SeatError::NotInRoom)
    }

    pub(crate) fn info(&self, user: &Ident) -> Option<UserInfo> {
        let view = self.view(user).unwrap_or(MediaView {
            on: Kinds::NONE,
            blocked: Kinds::NONE,
        });
        self.members.get(user).map(|m| UserInfo {
            user: user.clone(),
            name: m.name.clone(),
            role: m.role,
            seat: m.seat,
            mic: view.on.audio,
            camera: view.on.video,
            mic_blocked: view.blocked.audio,
            camera_blocked: view.blocked.video,
        })
    }

    /// What the anchor or the seat keeps off for a seated `user`.
    pub(crate) fn blocked(&self, user: &Ident) -> Option<Kinds> {
        let m = self.members.get(user)?;
        let seat = m.seat?;
        let lock = self.locks.get(seat as usize).copied().unwrap_or_default();
        Some(m.anchor_muted.or(lock.media))
    }

    /// What of a seated `user` may be forwarded (rule 12): neither muted nor blocked, whether or
    /// not it is published yet.
    pub(crate) fn gate(&self, user: &Ident) -> Option<Kinds> {
        let m = self.members.get(user)?;
        let off = m.muted.or(self.blocked(user)?);
        Some(Kinds {
            audio: !off.audio,
            video: !off.video,
        })
    }

    /// The media view of a seated `user`; `None` for viewers.
    pub(crate) fn view(&self, user: &Ident) -> Option<MediaView> {
        let m = self.members.get(user)?;
        let gate = self.gate(user)?;
        Some(MediaView {
            on: Kinds {
                audio: m.published.audio && gate.audio,
                video: m.published.video && gate.video,
            },
            blocked: self.blocked(user)?,
        })
    }

    /// Every seated user in seat order, the anchor first.
    pub(crate) fn linked(&self) -> Vec<UserInfo> {
        self.seats
            .iter()
            .flatten()
            .filter_map(|u| self.info(u))
            .collect()
    }

    /// Audience members in the room, linked or not (everyone but the anchor).
    pub(crate) fn audience_count(&self) -> u32 {
        u32::try_from(self.members.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }

    pub(crate) fn state(&self) -> RoomState {
        RoomState {
            room: self.id.clone(),
            anchor: self.anchor.clone(),
            max_seats: self.seats.len() as u32,
            seats: self
                .seats
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let lock = self.locks.get(i).copied().unwrap_or_default();
                    Seat {
                        index: i as u32,
                        user: u.as_ref().and_then(|u| self.info(u)),
                        locked: lock.taken,
                        audio_locked: lock.media.audio,
                        video_locked: lock.media.video,
                    }
                })
                .collect(),
            audience_count: self.audience_count(),
        }
    }

    /// The lowest seat nobody holds and nobody locked.
    pub(crate) fn free_seat(&self) -> Option<u32> {
        (1..self.seats.len() as u32).find(|&i| self.seat_is_free(i))
    }

    /// Nobody holds seat `index` and it is not locked (rule 11).
    pub(crate) fn seat_is_free(&self, index: u32) -> bool {
        index != 0
            && matches!(self.seats.get(index as usize), Some(None))
            && !self.seat_is_locked(index)
    }

    pub(crate) fn seat_is_locked(&self, index: u32) -> bool {
        self.locks.get(index as usize).is_some_and(|l| l.taken)
    }

    /// The (sender, receiver) of the pending request concerning `member`.
    pub(crate) fn sides(&self, member: &Ident, kind: Kind) -> (Ident, Ident) {
        match kind {
            Kind::Apply => (member.clone(), self.anchor.clone()),
            Kind::Invite => (self.anchor.clone(), member.clone()),
        }
    }
}
