//! One live room: its members, its seats and its pending link requests.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use miclink_protocol::{Ident, Name, Role, RoomState, Seat, UserInfo};

/// A timer's deadline and a sequence number that makes it unique.
pub(crate) type TimerKey = (Instant, u64);

pub(crate) struct Member {
    pub(crate) name: Name,
    pub(crate) role: Role,
    pub(crate) seat: Option<u32>,
    pub(crate) mic: bool,
    pub(crate) camera: bool,
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
}

impl Room {
    /// The acting member, or `NotInRoom`.
    pub(crate) fn member(&self, user: &Ident) -> Result<&Member, crate::SeatError> {
        self.members.get(user).ok_or(crate::SeatError::NotInRoom)
    }

    pub(crate) fn info(&self, user: &Ident) -> Option<UserInfo> {
        self.members.get(user).map(|m| UserInfo {
            user: user.clone(),
            name: m.name.clone(),
            role: m.role,
            seat: m.seat,
            mic: m.mic,
            camera: m.camera,
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
                .map(|(i, u)| Seat {
                    index: i as u32,
                    user: u.as_ref().and_then(|u| self.info(u)),
                    locked: false,
                })
                .collect(),
            audience_count: self.audience_count(),
        }
    }

    pub(crate) fn free_seat(&self) -> Option<u32> {
        self.seats
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, u)| u.is_none())
            .map(|(i, _)| i as u32)
    }

    pub(crate) fn seat_is_free(&self, index: u32) -> bool {
        index != 0 && matches!(self.seats.get(index as usize), Some(None))
    }

    /// The (sender, receiver) of the pending request concerning `member`.
    pub(crate) fn sides(&self, member: &Ident, kind: Kind) -> (Ident, Ident) {
        match kind {
            Kind::Apply => (member.clone(), self.anchor.clone()),
            Kind::Invite => (self.anchor.clone(), member.clone()),
        }
    }
}
