//! The state machine itself: [`Seats`], its actions, replies and outputs, and the timers it arms.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use miclink_protocol::{
    CancelReason, EndReason, Event, Ident, ListAudienceResult, Name, PendingLink, RejectReason,
    Role, RoomState, UserInfo,
};

use crate::SeatError;
use crate::room::{CountState, Kind, Kinds, LinkRequest, Member, Room, TimerKey};

mod control;
mod server;

pub use control::{MAX_BAN_S, MAX_BANS};
pub use server::{KickBy, LinkEnd, Milestone, ServerAction, Summary};

/// Settings of the state machine; see the server's configuration for their meaning.
#[derive(Debug, Clone)]
pub struct SeatsConfig {
    /// Seats per room, counting the anchor's seat 0 (contract default 10).
    pub max_seats: u32,
    /// How long a member whose connection dropped keeps their place.
    pub resume_grace: Duration,
    /// The link request timeout when the request names none.
    pub default_request_timeout_s: u32,
    /// The shortest interval between two `audience_count` events of one room.
    pub audience_count_interval: Duration,
}

impl Default for SeatsConfig {
    fn default() -> Self {
        SeatsConfig {
            max_seats: 10,
            resume_grace: Duration::from_secs(15),
            default_request_timeout_s: 60,
            audience_count_interval: Duration::from_millis(500),
        }
    }
}

/// The longest link request timeout accepted, so deadlines stay far from `Instant` overflow.
pub const MAX_REQUEST_TIMEOUT_S: u32 = 24 * 60 * 60;

/// What a member asks of their room. The acting member and the room are the other arguments of
/// [`Seats::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Go live (anchor) or start watching (audience). Joining again as the same user replaces the
    /// earlier presence and keeps its seat and requests.
    Join { role: Role, name: Option<Name> },
    /// The member's connection came back within the grace period.
    Resume,
    /// Audience: apply (`to` = None). Anchor: invite `to`.
    RequestLink {
        to: Option<Ident>,
        seat: Option<u32>,
        timeout_s: Option<u32>,
        open_camera: Option<bool>,
    },
    /// Withdraw a pending request this member sent. Anchor: `to` = the invitee.
    CancelLink { to: Option<Ident> },
    /// Answer a pending request this member received. `to` = the other side.
    RespondLink { to: Ident, accept: bool },
    /// Anchor: end `user`'s link.
    DisconnectUser { user: Ident },
    /// Linked member: end one's own link and go back to watching.
    TerminateLink,
    /// Leave the room; the anchor leaving ends it.
    Leave,
    /// The member's connection dropped: they leave when the grace period ends unless resumed.
    ConnectionLost,
    /// Anchor: page through the viewers.
    ListAudience { offset: u32, limit: u32 },
    /// Anchor: lock seat `seat` against being taken and/or lock its audio or video; `None`
    /// leaves that lock as it is.
    LockSeat {
        seat: u32,
        lock: Option<bool>,
        audio: Option<bool>,
        video: Option<bool>,
    },
    /// A linked member moves to `seat`; the anchor moves `user` there.
    MoveSeat { seat: u32, user: Option<Ident> },
    /// Anchor: `Some(false)` mutes a linked member's mic or camera, `Some(true)` lifts the mute
    /// (the member then turns it on themselves).
    MuteMember {
        user: Ident,
        mic: Option<bool>,
        camera: Option<bool>,
    },
    /// A seated member's own mute state (`true` = on).
    SetMedia {
        mic: Option<bool>,
        camera: Option<bool>,
    },
    /// Anchor: remove an audience member, barred from joining again for `ban_s` seconds.
    KickUser { user: Ident, ban_s: u32 },
    /// From the media plane, not a client: the kinds `user` publishes now.
    Published { audio: bool, video: bool },
}

/// The answer to a successful [`Seats::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Joined(Joined),
    /// A link request was sent; its id.
    Request(String),
    Audience(ListAudienceResult),
    Done,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub room: RoomState,
    pub me: UserInfo,
    /// The pending link requests the user sent or received (what a resuming client may have
    /// missed on its old socket).
    pub pending: Vec<PendingLink>,
    /// The user was already in the room (replacement or resume): no state changed.
    pub rejoined: bool,
    /// The room's metadata (the server API's).
    pub metadata: String,
}

/// A change of who may publish or subscribe, for the media plane to obey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaChange {
    /// `user` may publish from now on: the anchor went live or a member was linked. `seat`
    /// ranks their media (0 is the anchor, who comes first); `audio` and `video` say what may
    /// be forwarded (rule 12: mutes and seat locks act at packet level). Sent again whenever the
    /// seat or what may be forwarded changes.
    AllowPublish {
        room: Ident,
        user: Ident,
        seat: u32,
        audio: bool,
        video: bool,
        /// Names this seating of `user` (unique per process): the media plane tags its reports
        /// of what `user` publishes with it, so a report about an earlier link that arrives
        /// after a new one began is told apart ([`Seats::link`]).
        link: u64,
    },
    /// `user` may no longer publish: stop forwarding their media at once, remove their tracks
    /// from every subscriber and close their publish connection.
    RevokePublish { room: Ident, user: Ident },
    /// `user` entered the room and gets a subscribe connection.
    Subscribe { room: Ident, user: Ident },
    /// `user` left the room.
    Unsubscribe { room: Ident, user: Ident },
    /// The room ended: drop everything in it.
    CloseRoom { room: Ident },
}

/// Something the state machine wants the world to know, drained with [`Seats::poll_output`].
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// One event for one member of `room`.
    Event {
        room: Ident,
        to: Ident,
        event: Event,
    },
    /// One event for every member of `room` at this point of the output sequence, viewers
    /// included. Members whose [`Output::Departed`] came earlier are not included.
    Broadcast {
        room: Ident,
        event: Event,
    },
    Media(MediaChange),
    /// `user` is no longer in `room` (left, lost, or the room ended); their session can go.
    Departed {
        room: Ident,
        user: Ident,
    },
    /// A step in the room's life for the record (the integrator's webhooks), in the order they
    /// happened.
    Milestone {
        room: Ident,
        milestone: Milestone,
    },
}

/// Why a member leaves a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    Left,
    Lost,
    Kicked,
}

#[derive(Debug, Clone)]
enum Timer {
    RequestTimeout {
        room: Ident,
        member: Ident,
        request: String,
    },
    Grace {
        room: Ident,
        user: Ident,
    },
    AudienceCount {
        room: Ident,
    },
}

/// Every live room on this server, with their seats and pending link requests.
///
/// # Calling it
/// The methods fall into four groups, as in `quinn-proto`'s `Connection`:
/// - getters ([`room_state`](Self::room_state), [`may_publish`](Self::may_publish), ...) read
///   state and change nothing;
/// - [`handle`](Self::handle) applies one member's [`Action`] at time `now` and returns the reply
///   for that member, or an error that left every state untouched;
/// - [`handle_timeout`](Self::handle_timeout) fires every timer due at `now`;
/// - [`poll_output`](Self::poll_output) yields the events and media changes the last calls
///   produced, in order, and [`poll_timeout`](Self::poll_timeout) says when `handle_timeout`
///   wants to be called next.
///
/// After every `handle` or `handle_timeout`, drain `poll_output` until it returns `None`, then
/// sleep until `poll_timeout` (or the next command). `now` must never go backwards. Nothing here
/// reads the clock, so tests drive it with any `Instant` they like.
///
/// ```
/// use std::time::{Duration, Instant};
/// use miclink_protocol::{Ident, Role};
/// use miclink_seats::{Action, Output, Seats, SeatsConfig};
///
/// let mut seats = Seats::new(SeatsConfig::default());
/// let room = Ident::new("r1").unwrap();
/// let (anchor, fan) = (Ident::new("anna").unwrap(), Ident::new("fan").unwrap());
/// let mut now = Instant::now();
/// seats.handle(now, &room, &anchor, Action::Join { role: Role::Anchor, name: None }).unwrap();
/// seats.handle(now, &room, &fan, Action::Join { role: Role::Audience, name: None }).unwrap();
/// seats.handle(now, &room, &fan, Action::RequestLink {
///     to: None, seat: None, timeout_s: Some(5), open_camera: None,
/// }).unwrap();
/// // The event loop: drain outputs, then sleep until the next timer.
/// loop {
///     while let Some(output) = seats.poll_output() {
///         if let Output::Event { to, event, .. } = output {
///             println!("to {to}: {}", event.type_name());
///         }
///     }
///     match seats.poll_timeout() {
///         Some(at) => { now = now.max(at); seats.handle_timeout(now); }
///         None => break,
///     }
///     if seats.pending_requests(&room).is_empty() { break; }
/// }
/// assert!(seats.pending_requests(&room).is_empty(), "the application timed out");
/// ```
pub struct Seats {
    config: SeatsConfig,
    rooms: HashMap<Ident, Room>,
    outputs: VecDeque<Output>,
    /// Armed timers by deadline. Each owner (request, lost member, room counter) keeps its key
    /// and disarms it when it ends, so the map holds only live timers.
    timers: BTreeMap<TimerKey, Timer>,
    next_seq: u64,
}

impl Seats {
    pub fn new(config: SeatsConfig) -> Seats {
        let config = SeatsConfig {
            max_seats: config.max_seats.max(1),
            ..config
        };
        Seats {
            config,
            rooms: HashMap::new(),
            outputs: VecDeque::new(),
            timers: BTreeMap::new(),
            next_seq: 1,
        }
    }

    // ----- getters ---------------------------------------------------------------------------

    pub fn room_state(&self, room: &Ident) -> Option<RoomState> {
        self.rooms.get(room).map(Room::state)
    }

    pub fn user_info(&self, room: &Ident, user: &Ident) -> Option<UserInfo> {
        self.rooms.get(room)?.info(user)
    }

    /// Every member of `room`, anchor and viewers alike, in join order.
    pub fn members(&self, room: &Ident) -> Vec<Ident> {
        self.rooms
            .get(room)
            .map(|r| r.order.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Seated users in seat order, the anchor first (the `users` of `connected_users_updated`).
    pub fn linked(&self, room: &Ident) -> Vec<UserInfo> {
        self.rooms.get(room).map(Room::linked).unwrap_or_default()
    }

    /// Pending requests of `room` as (request id, sender, receiver).
    pub fn pending_requests(&self, room: &Ident) -> Vec<(String, Ident, Ident)> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        r.requests
            .iter()
            .map(|(member, req)| {
                let (from, to) = r.sides(member, req.kind);
                (req.id.clone(), from, to)
            })
            .collect()
    }

    /// The seat `user` holds in `room`, if any.
    pub fn seat(&self, room: &Ident, user: &Ident) -> Option<u32> {
        self.rooms.get(room)?.members.get(user)?.seat
    }

    /// Whether `user` holds a seat in `room` and so may publish: `(audio, video)`.
    /// The number of `user`'s current seating in `room` (see [`MediaChange::AllowPublish`]).
    pub fn link(&self, room: &Ident, user: &Ident) -> Option<u64> {
        let m = self.rooms.get(room)?.members.get(user)?;
        m.seat.map(|_| m.link)
    }

    /// `(audio, video)`: what of theirs may be forwarded now.
    pub fn may_publish(&self, room: &Ident, user: &Ident) -> Option<(bool, bool)> {
        let gate = self.rooms.get(room)?.gate(user)?;
        Some((gate.audio, gate.video))
    }

    // ----- handle ----------------------------------------------------------------------------

    /// Apply `user`'s `action` in `room` at `now`.
    pub fn handle(
        &mut self,
        now: Instant,
        room: &Ident,
        user: &Ident,
        action: Action,
    ) -> Result<Reply, SeatError> {
        match action {
            Action::Join { role, name } => {
                self.join(now, room, user, role, name).map(Reply::Joined)
            }
            Action::Resume => self.resume(now, room, user).map(Reply::Joined),
            Action::RequestLink {
                to,
                seat,
                timeout_s,
                open_camera,
            } => self.request_link(now, room, user, to, seat, timeout_s, open_camera),
            Action::CancelLink { to } => self.cancel_link(room, user, to),
            Action::RespondLink { to, accept } => self.respond_link(room, user, &to, accept),
            Action::DisconnectUser { user: target } => self.disconnect_user(room, user, &target),
            Action::TerminateLink => self.terminate_link(room, user),
            Action::Leave => {
                self.member(room, user)?;
                self.remove_member(now, room, user, Leaving::Left);
                Ok(Reply::Done)
            }
            Action::ConnectionLost => self.connection_lost(now, room, user),
            Action::ListAudience { offset, limit } => self.list_audience(room, user, offset, limit),
            Action::LockSeat {
                seat,
                lock,
                audio,
                video,
            } => self.lock_seat(room, user, seat, lock, audio, video),
            Action::MoveSeat { seat, user: target } => self.move_seat(room, user, seat, target),
            Action::MuteMember {
                user: target,
                mic,
                camera,
            } => self.mute_member(room, user, &target, mic, camera),
            Action::SetMedia { mic, camera } => self.set_media(room, user, mic, camera),
            Action::KickUser {
                user: target,
                ban_s,
            } => self.kick_user(now, room, user, &target, ban_s),
            Action::Published { audio, video } => {
                self.published(room, user, Kinds { audio, video })
            }
        }
    }

    /// Fire every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            let (at, _) = *entry.key();
            if at > now {
                break;
            }
            let timer = entry.remove();
            match timer {
                Timer::RequestTimeout {
                    room,
                    member,
                    request,
                } => self.request_timed_out(&room, &member, &request),
                Timer::Grace { room, user } => {
                    if let Some(m) = self
                        .rooms
                        .get_mut(&room)
                        .and_then(|r| r.members.get_mut(&user))
                    {
                        m.lost = None;
                        self.remove_member(now, &room, &user, Leaving::Lost);
                    }
                }
                Timer::AudienceCount { room } => {
                    if let Some(r) = self.rooms.get_mut(&room) {
                        r.count.timer = None;
                        self.send_count_now(now, &room);
                    }
                }
            }
        }
    }

    // ----- poll ------------------------------------------------------------------------------

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// How many timers are armed (requests with a timeout, lost members, deferred counts).
    pub fn armed_timers(&self) -> usize {
        self.timers.len()
    }

    // ----- actions ---------------------------------------------------------------------------

    /// [`Action::Join`], with its reply typed: go live (anchor) or start watching (audience).
    pub fn join(
        &mut self,
        now: Instant,
        room_id: &Ident,
        user: &Ident,
        role: Role,
        name: Option<Name>,
    ) -> Result<Joined, SeatError> {
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| Name::from(user));
        if let Some(room) = self.rooms.get_mut(room_id) {
            if let Some(seconds) = control::ban_left(room, user, now) {
                return Err(SeatError::Banned { seconds });
            }
            let is_anchor = room.anchor == *user;
            match (role, is_anchor) {
                (Role::Anchor, false) => return Err(SeatError::RoomExists),
                (Role::Audience, true) => {
                    return Err(SeatError::WrongRole(
                        "this user is the room's anchor; join as anchor",
                    ));
                }
                _ => {}
            }
            if let Some(m) = room.members.get_mut(user) {
                // The same identity again: a new device or a reconnect that lost its session.
                // It takes over the member's place as it stands, except the member's own mutes:
                // a new client starts with its microphone and camera on and shows them so, and
                // what it shows must be what the room gets. The anchor's mutes and the seat's
                // locks stay (the join reply says so). Nothing is published until the new client
                // publishes: the media plane closes the old publish connection on a rejoin.
                let lost = m.lost.take();
                m.name = name;
                self.disarm(lost);
                if let Some(before) = self.before(room_id, user) {
                    if let Some(m) = self.room_mut(room_id).members.get_mut(user) {
                        m.muted = Kinds::NONE;
                        m.published = Kinds::NONE;
                    }
                    self.media_changed(room_id, user, before, miclink_protocol::MediaBy::User);
                }
                return Ok(self.joined(now, room_id, user, true));
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            room.members.insert(
                user.clone(),
                Member {
                    name,
                    role: Role::Audience,
                    seat: None,
                    published: Kinds::NONE,
                    muted: Kinds::NONE,
                    anchor_muted: Kinds::NONE,
                    link: 0,
                    seq,
                    lost: None,
                },
            );
            room.order.insert(seq, user.clone());
            let info = room.info(user).expect("just inserted");
            self.milestone(room_id, Milestone::UserJoined { user: info });
            self.media(MediaChange::Subscribe {
                room: room_id.clone(),
                user: user.clone(),
            });
            self.count_changed(now, room_id);
            return Ok(self.joined(now, room_id, user, false));
        }
        if role == Role::Audience {
            return Err(SeatError::RoomNotFound);
        }
        let seq = self.next_seq();
        let mut seats = vec![None; self.config.max_seats as usize];
        seats[0] = Some(user.clone());
        let mut room = Room {
            id: room_id.clone(),
            anchor: user.clone(),
            seats,
            members: HashMap::new(),
            order: BTreeMap::new(),
            requests: HashMap::new(),
            count: CountState::default(),
            locks: vec![Default::default(); self.config.max_seats as usize],
            bans: HashMap::new(),
            metadata: String::new(),
            started: now,
        };
        room.members.insert(
            user.clone(),
            Member {
                name,
                role: Role::Anchor,
                seat: Some(0),
                published: Kinds::NONE,
                muted: Kinds::NONE,
                anchor_muted: Kinds::NONE,
                link: seq,
                seq,
                lost: None,
            },
        );
        room.order.insert(seq, user.clone());
        // The join reply carries the count, so the first broadcast need not repeat it.
        room.count.sent = Some((0, now));
        let anchor = room.info(user).expect("just inserted");
        self.rooms.insert(room_id.clone(), room);
        self.milestone(room_id, Milestone::RoomStarted { anchor });
        self.media(MediaChange::Subscribe {
            room: room_id.clone(),
            user: user.clone(),
        });
        self.media(MediaChange::AllowPublish {
            room: room_id.clone(),
            user: user.clone(),
            seat: 0,
            audio: true,
            video: true,
            link: seq,
        });
        Ok(self.joined(now, room_id, user, false))
    }

    fn joined(&self, now: Instant, room: &Ident, user: &Ident, rejoined: bool) -> Joined {
        let r = &self.rooms[room];
        let pending = r
            .requests
            .iter()
            .filter_map(|(member, req)| {
                let (from, to) = r.sides(member, req.kind);
                if from != *user && to != *user {
                    return None;
                }
                let left = req.timer.map_or(0, |(at, _)| {
                    let d = at.saturating_duration_since(now);
                    // Rounded up, and never 0 (which would read as "never times out").
                    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
                });
                Some(PendingLink {
                    request: req.id.clone(),
                    from: r.info(&from)?,
                    to,
                    seat: req.seat,
                    open_camera: req.open_camera,
                    timeout_s: u32::try_from(left).unwrap_or(u32::MAX),
                })
            })
            .collect();
        Joined {
            room: r.state(),
            me: r.info(user).expect("the member was just found or inserted"),
            pending,
            rejoined,
            metadata: r.metadata.clone(),
        }
    }

    /// [`Action::Resume`], with its reply typed: the member's connection came back.
    pub fn resume(
        &mut self,
        now: Instant,
        room_id: &Ident,
        user: &Ident,
    ) -> Result<Joined, SeatError> {
        let room = self.rooms.get_mut(room_id).ok_or(SeatError::NotInRoom)?;
        let m = room.members.get_mut(user).ok_or(SeatError::NotInRoom)?;
        let lost = m.lost.take();
        self.disarm(lost);
        Ok(self.joined(now, room_id, user, true))
    }

    #[allow(clippy::too_many_arguments)]
    fn request_link(
        &mut self,
        now: Instant,
        room_id: &Ident,
        user: &Ident,
        to: Option<Ident>,
        seat: Option<u32>,
        timeout_s: Option<u32>,
        open_camera: Option<bool>,
    ) -> Result<Reply, SeatError> {
        let timeout_s = timeout_s.unwrap_or(self.config.default_request_timeout_s);
        if timeout_s > MAX_REQUEST_TIMEOUT_S {
            return Err(SeatError::TimeoutTooLong {
                max: MAX_REQUEST_TIMEOUT_S,
            });
        }
        let room = self.room(room_id)?;
        let me = room.member(user)?;
        let (member, kind) = match (me.role, to) {
            (Role::Audience, None) => (user.clone(), Kind::Apply),
            (Role::Audience, Some(_)) => {
                return Err(SeatError::NotAllowed("only the anchor can invite"));
            }
            (Role::Anchor, None) => {
                return Err(SeatError::NotAllowed(
                    "the anchor holds seat 0 and cannot apply; name a user to invite",
                ));
            }
            (Role::Anchor, Some(target)) => {
                let t = room
                    .members
                    .get(&target)
                    .ok_or(SeatError::NotFound("no such user in this room"))?;
                if t.role == Role::Anchor {
                    return Err(SeatError::NotAllowed("the anchor cannot invite itself"));
                }
                (target, Kind::Invite)
            }
        };
        if room.members[&member].seat.is_some() {
            return Err(SeatError::AlreadyLinked);
        }
        if room.requests.contains_key(&member) {
            return Err(SeatError::RequestPending);
        }
        match seat {
            Some(index) if index == 0 || index >= room.seats.len() as u32 => {
                return Err(SeatError::NoSuchSeat {
                    index,
                    max: room.seats.len() as u32 - 1,
                });
            }
            Some(index) if room.seat_is_locked(index) => return Err(SeatError::SeatLocked(index)),
            Some(index) if !room.seat_is_free(index) => return Err(SeatError::SeatTaken(index)),
            Some(_) => {}
            None if room.free_seat().is_none() => return Err(SeatError::Full),
            None => {}
        }
        let open_camera = open_camera.unwrap_or(true);
        let (sender, receiver) = room.sides(&member, kind);
        let from = room.info(&sender).expect("the sender is a member");
        let id = format!("r{}", self.next_seq());
        let timer = (timeout_s > 0).then(|| {
            self.arm(
                now + Duration::from_secs(u64::from(timeout_s)),
                Timer::RequestTimeout {
                    room: room_id.clone(),
                    member: member.clone(),
                    request: id.clone(),
                },
            )
        });
        self.room_mut(room_id).requests.insert(
            member,
            LinkRequest {
                id: id.clone(),
                kind,
                seat,
                open_camera,
                timer,
            },
        );
        self.event(
            room_id,
            receiver,
            Event::LinkRequest {
                from,
                request: id.clone(),
                seat,
                open_camera,
                timeout_s,
            },
        );
        Ok(Reply::Request(id))
    }

    fn cancel_link(
        &mut self,
        room_id: &Ident,
        user: &Ident,
        to: Option<Ident>,
    ) -> Result<Reply, SeatError> {
        let room = self.room(room_id)?;
        let me = room.member(user)?;
        let (member, kind) = match me.role {
            Role::Audience => (user.clone(), Kind::Apply),
            Role::Anchor => (
                to.ok_or(SeatError::NotFound(
                    "name the invited user whose invitation to cancel",
                ))?,
                Kind::Invite,
            ),
        };
        if room.requests.get(&member).map(|r| r.kind) != Some(kind) {
            return Err(SeatError::NotFound("no pending request of yours to cancel"));
        }
        let (sender, receiver) = room.sides(&member, kind);
        self.end_request(room_id, &member);
        self.event(
            room_id,
            receiver,
            Event::LinkCancelled {
                user: sender,
                reason: CancelReason::Cancelled,
            },
        );
        Ok(Reply::Done)
    }

    fn respond_link(
        &mut self,
        room_id: &Ident,
        user: &Ident,
        to: &Ident,
        accept: bool,
    ) -> Result<Reply, SeatError> {
        let room = self.room(room_id)?;
        let me = room.member(user)?;
        let (member, kind) = match me.role {
            Role::Anchor => (to.clone(), Kind::Apply),
            Role::Audience if *to == room.anchor => (user.clone(), Kind::Invite),
            Role::Audience => {
                return Err(SeatError::NotFound(
                    "audience members answer the anchor's invitation: user must be the anchor",
                ));
            }
        };
        let Some(req) = room.requests.get(&member).filter(|r| r.kind == kind) else {
            return Err(SeatError::NotFound("no pending request to answer"));
        };
        let (sender, _) = room.sides(&member, kind);
        if !accept {
            self.end_request(room_id, &member);
            self.event(
                room_id,
                sender,
                Event::LinkRejected {
                    user: user.clone(),
                    reason: RejectReason::Rejected,
                },
            );
            return Ok(Reply::Done);
        }
        // The seat asked for if it is still free, else any free one: the request was for a link.
        let index = req
            .seat
            .filter(|&i| room.seat_is_free(i))
            .or_else(|| room.free_seat())
            .ok_or(SeatError::Full)?;
        let req = self
            .end_request(room_id, &member)
            .expect("the request was found above");
        let link = self.next_seq();
        let room = self.room_mut(room_id);
        room.seats[index as usize] = Some(member.clone());
        let m = room
            .members
            .get_mut(&member)
            .expect("requests concern members");
        m.seat = Some(index);
        // Linked without the camera: it starts muted, and the member may turn it on.
        m.muted = Kinds {
            audio: false,
            video: !req.open_camera,
        };
        m.anchor_muted = Kinds::NONE;
        m.published = Kinds::NONE;
        m.link = link;
        let gate = room.gate(&member).expect("just seated");
        let joined = room.info(&member).expect("member");
        let joined_info = joined.clone();
        let users = room.linked();
        self.event(room_id, sender, Event::LinkAccepted { user: user.clone() });
        self.broadcast(
            room_id,
            Event::ConnectedUsersUpdated {
                users,
                joined: vec![joined],
                left: vec![],
            },
        );
        self.milestone(room_id, Milestone::LinkStarted { user: joined_info });
        self.media(MediaChange::AllowPublish {
            room: room_id.clone(),
            user: member,
            seat: index,
            audio: gate.audio,
            video: gate.video,
            link,
        });
        Ok(Reply::Done)
    }

    fn disconnect_user(
        &mut self,
        room_id: &Ident,
        user: &Ident,
        target: &Ident,
    ) -> Result<Reply, SeatError> {
        let room = self.room(room_id)?;
        let me = room.member(user)?;
        if me.role != Role::Anchor {
            return Err(SeatError::NotAllowed(
                "only the anchor can disconnect a link",
            ));
        }
        let linked = room
            .members
            .get(target)
            .is_some_and(|m| m.role == Role::Audience && m.seat.is_some());
        if !linked {
            return Err(SeatError::NotLinked("that user is not linked"));
        }
        self.revoke_media(room_id, target);
        self.event(
            room_id,
            target.clone(),
            Event::LinkTerminated { by: user.clone() },
        );
        self.unlink(room_id, target, LinkEnd::Disconnected);
        Ok(Reply::Done)
    }

    fn terminate_link(&mut self, room_id: &Ident, user: &Ident) -> Result<Reply, SeatError> {
        let room = self.room(room_id)?;
        let me = room.member(user)?;
        if me.role != Role::Audience || me.seat.is_none() {
            return Err(SeatError::NotLinked(
                "only a linked audience member can terminate a link (the anchor leaves instead)",
            ));
        }
        self.exit_link(room_id, user, LinkEnd::Terminated);
        Ok(Reply::Done)
    }

    fn connection_lost(
        &mut self,
        now: Instant,
        room_id: &Ident,
        user: &Ident,
    ) -> Result<Reply, SeatError> {
        let previous = self.member(room_id, user)?.lost;
        self.disarm(previous);
        let key = self.arm(
            now + self.config.resume_grace,
            Timer::Grace {
                room: room_id.clone(),
                user: user.clone(),
            },
        );
        let m = self
            .rooms
            .get_mut(room_id)
            .and_then(|r| r.members.get_mut(user))
            .expect("checked above");
        m.lost = Some(key);
        Ok(Reply::Done)
    }

    fn list_audience(
        &self,
        room_id: &Ident,
        user: &Ident,
        offset: u32,
        limit: u32,
    ) -> Result<Reply, SeatError> {
        let room = self.room(room_id)?;
        let me = room.member(user)?;
        if me.role != Role::Anchor {
            return Err(SeatError::NotAllowed(
                "only the anchor can list the audience",
            ));
        }
        let viewers = room
            .order
            .values()
            .filter(|u| room.members.get(*u).is_some_and(|m| m.seat.is_none()));
        let total = viewers.clone().count();
        let users = viewers
            .skip(offset as usize)
            .take(limit as usize)
            .filter_map(|u| room.info(u))
            .collect();
        Ok(Reply::Audience(ListAudienceResult {
            users,
            total: u32::try_from(total).unwrap_or(u32::MAX),
            offset,
        }))
    }

    // ----- shared steps ----------------------------------------------------------------------

    fn request_timed_out(&mut self, room_id: &Ident, member: &Ident, request: &str) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        if room.requests.get(member).map(|r| r.id.as_str()) != Some(request) {
            return;
        }
        // The timer that brought us here is already gone from the map.
        if let Some(r) = room.requests.get_mut(member) {
            r.timer = None;
        }
        let kind = room.requests[member].kind;
        let (sender, receiver) = room.sides(member, kind);
        self.end_request(room_id, member);
        self.event(
            room_id,
            sender.clone(),
            Event::LinkTimeout {
                user: receiver.clone(),
            },
        );
        self.event(
            room_id,
            receiver,
            Event::LinkCancelled {
                user: sender,
                reason: CancelReason::Timeout,
            },
        );
    }

    /// Tell the media plane first, so forwarding stops before anyone hears the link ended.
    fn revoke_media(&mut self, room: &Ident, user: &Ident) {
        self.media(MediaChange::RevokePublish {
            room: room.clone(),
            user: user.clone(),
        });
    }

    /// Take `user`'s seat away and tell everyone. Returns the user as they were while seated.
    /// The caller has revoked their media already.
    fn unlink(&mut self, room_id: &Ident, user: &Ident, why: LinkEnd) -> Option<UserInfo> {
        let room = self.rooms.get_mut(room_id)?;
        let before = room.info(user)?;
        let index = before.seat? as usize;
        room.seats[index] = None;
        let m = room.members.get_mut(user).expect("info found the member");
        m.seat = None;
        m.published = Kinds::NONE;
        m.muted = Kinds::NONE;
        m.anchor_muted = Kinds::NONE;
        let users = room.linked();
        self.broadcast(
            room_id,
            Event::ConnectedUsersUpdated {
                users,
                joined: vec![],
                left: vec![before.clone()],
            },
        );
        self.milestone(
            room_id,
            Milestone::LinkEnded {
                user: before.clone(),
                reason: why,
            },
        );
        Some(before)
    }

    /// A linked member ends their own link (terminate, leave, lost).
    fn exit_link(&mut self, room_id: &Ident, user: &Ident, why: LinkEnd) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let Some(info) = room.info(user) else {
            return;
        };
        let others: Vec<Ident> = room
            .seats
            .iter()
            .flatten()
            .filter(|u| *u != user)
            .cloned()
            .collect();
        self.revoke_media(room_id, user);
        for to in others {
            self.event(room_id, to, Event::LinkExited { user: info.clone() });
        }
        self.unlink(room_id, user, why);
    }

    /// `user` leaves `room` (asked to, lost past the grace period, or kicked).
    fn remove_member(&mut self, now: Instant, room_id: &Ident, user: &Ident, why: Leaving) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        if room.anchor == *user {
            let reason = match why {
                Leaving::Lost => EndReason::AnchorLost,
                Leaving::Left | Leaving::Kicked => EndReason::AnchorLeft,
            };
            self.end_room(room_id, reason);
            return;
        }
        let info = room.info(user);
        let Some(m) = room.members.get(user) else {
            return;
        };
        let linked = m.seat.is_some();
        let pending = room.requests.get(user).map(|r| r.kind);
        let anchor = room.anchor.clone();
        // Departed first: the broadcasts below are about the user, no longer for them.
        self.outputs.push_back(Output::Departed {
            room: room_id.clone(),
            user: user.clone(),
        });
        if pending.is_some() {
            self.end_request(room_id, user);
            // Whichever side the leaver was on, the anchor is the other side.
            self.event(
                room_id,
                anchor,
                Event::LinkCancelled {
                    user: user.clone(),
                    reason: CancelReason::Left,
                },
            );
        }
        if linked {
            let end = match why {
                Leaving::Left => LinkEnd::Left,
                Leaving::Lost => LinkEnd::Lost,
                Leaving::Kicked => LinkEnd::Kicked,
            };
            self.exit_link(room_id, user, end);
        }
        let room = self.room_mut(room_id);
        let lost = room.members.remove(user).and_then(|m| {
            room.order.remove(&m.seq);
            m.lost
        });
        self.disarm(lost);
        if let Some(info) = info {
            self.milestone(room_id, Milestone::UserLeft { user: info });
        }
        self.media(MediaChange::Unsubscribe {
            room: room_id.clone(),
            user: user.clone(),
        });
        self.count_changed(now, room_id);
    }

    fn end_room(&mut self, room_id: &Ident, reason: EndReason) {
        self.broadcast(room_id, Event::RoomEnded { reason });
        self.milestone(room_id, Milestone::RoomEnded { reason });
        self.media(MediaChange::CloseRoom {
            room: room_id.clone(),
        });
        if let Some(room) = self.rooms.remove(room_id) {
            let timers = room.requests.values().filter_map(|r| r.timer);
            let timers = timers.chain(room.members.values().filter_map(|m| m.lost));
            for key in timers.chain(room.count.timer) {
                self.timers.remove(&key);
            }
            for user in room.order.into_values() {
                self.outputs.push_back(Output::Departed {
                    room: room_id.clone(),
                    user,
                });
            }
        }
    }

    /// The audience count changed: broadcast it now, or arm a timer if one went out within the
    /// last interval (a timer already armed will send the latest value).
    fn count_changed(&mut self, now: Instant, room_id: &Ident) {
        let interval = self.config.audience_count_interval;
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        if room.count.timer.is_some() {
            return;
        }
        match room.count.sent {
            Some((_, at)) if now < at + interval => {
                let key = self.arm(
                    at + interval,
                    Timer::AudienceCount {
                        room: room_id.clone(),
                    },
                );
                self.room_mut(room_id).count.timer = Some(key);
            }
            _ => self.send_count_now(now, room_id),
        }
    }

    fn send_count_now(&mut self, now: Instant, room_id: &Ident) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let count = room.audience_count();
        if room.count.sent.map(|(c, _)| c) == Some(count) {
            return;
        }
        room.count.sent = Some((count, now));
        self.broadcast(room_id, Event::AudienceCount { count });
    }

    // ----- small helpers ---------------------------------------------------------------------

    fn room(&self, room: &Ident) -> Result<&Room, SeatError> {
        self.rooms.get(room).ok_or(SeatError::NotInRoom)
    }

    fn room_mut(&mut self, room: &Ident) -> &mut Room {
        self.rooms
            .get_mut(room)
            .expect("callers look the room up before changing it")
    }

    fn member(&self, room: &Ident, user: &Ident) -> Result<&Member, SeatError> {
        self.room(room)?.member(user)
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    fn arm(&mut self, at: Instant, timer: Timer) -> TimerKey {
        let key = (at, self.next_seq());
        self.timers.insert(key, timer);
        key
    }

    fn disarm(&mut self, key: Option<TimerKey>) {
        if let Some(key) = key {
            self.timers.remove(&key);
        }
    }

    /// Remove the pending request concerning `member` and its timer.
    fn end_request(&mut self, room: &Ident, member: &Ident) -> Option<LinkRequest> {
        let req = self.rooms.get_mut(room)?.requests.remove(member)?;
        self.disarm(req.timer);
        Some(req)
    }

    fn event(&mut self, room: &Ident, to: Ident, event: Event) {
        self.outputs.push_back(Output::Event {
            room: room.clone(),
            to,
            event,
        });
    }

    fn broadcast(&mut self, room: &Ident, event: Event) {
        self.outputs.push_back(Output::Broadcast {
            room: room.clone(),
            event,
        });
    }

    fn media(&mut self, change: MediaChange) {
        self.outputs.push_back(Output::Media(change));
    }

    fn milestone(&mut self, room: &Ident, milestone: Milestone) {
        self.outputs.push_back(Output::Milestone {
            room: room.clone(),
            milestone,
        });
    }
}

#[cfg(test)]
mod tests;
