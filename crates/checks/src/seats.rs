//! Command sequences into [`Seats`], with every invariant checked after each step.
//!
//! A shadow model is rebuilt from the outputs alone (what clients see), and after every step it
//! must agree with the state machine's own state. A failed request must change nothing and say
//! nothing. The milestones (what the webhooks report) are a second record rebuilt the same way:
//! who is in each room and who is linked, by them alone, must be what the state machine holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use miclink_protocol::{CancelReason, Event, Ident, Role, RoomState, UserInfo};
use miclink_seats::{
    Action, MediaChange, Milestone, Output, Reply, SeatError, Seats, SeatsConfig, ServerAction,
};

use crate::{Broken, Input, ensure, ensure_eq};

pub const ROOMS: &[&str] = &["ra", "rb"];
pub const USERS: &[&str] = &["u0", "u1", "u2", "u3", "u4", "u5"];
pub const MAX_SEATS: u32 = 4;

#[derive(Debug, Clone)]
pub enum Op {
    Act {
        room: usize,
        user: usize,
        act: Act,
    },
    Advance(u64),
    /// Version 3: the server API acts on a room.
    Serve {
        room: usize,
        act: Serve,
    },
}

/// What the server API does to a room.
#[derive(Debug, Clone)]
pub enum Serve {
    End,
    /// Metadata of this many bytes (over 4096 is refused).
    Metadata(usize),
    Kick {
        target: usize,
        ban_s: u32,
    },
    Unlink {
        target: usize,
    },
    Mute {
        target: usize,
        mic: Option<bool>,
        camera: Option<bool>,
    },
}

fn to_server_action(act: &Serve) -> ServerAction {
    match act {
        Serve::End => ServerAction::End,
        Serve::Metadata(n) => ServerAction::SetMetadata("m".repeat(*n)),
        Serve::Kick { target, ban_s } => ServerAction::Kick {
            user: id(USERS[*target]),
            ban_s: *ban_s,
        },
        Serve::Unlink { target } => ServerAction::Unlink {
            user: id(USERS[*target]),
        },
        Serve::Mute {
            target,
            mic,
            camera,
        } => ServerAction::Mute {
            user: id(USERS[*target]),
            mic: *mic,
            camera: *camera,
        },
    }
}

#[derive(Debug, Clone)]
pub enum Act {
    Join {
        anchor: bool,
    },
    Apply {
        seat: Option<u32>,
        timeout_s: Option<u32>,
    },
    Invite {
        target: usize,
    },
    Cancel {
        target: Option<usize>,
    },
    Respond {
        target: Option<usize>,
        accept: bool,
    },
    Disconnect {
        target: usize,
    },
    Terminate,
    Leave,
    Lost,
    Resume,
    Lock {
        seat: u32,
        lock: Option<bool>,
        audio: Option<bool>,
        video: Option<bool>,
    },
    Move {
        seat: u32,
        target: Option<usize>,
    },
    Mute {
        target: usize,
        mic: Option<bool>,
        camera: Option<bool>,
    },
    SetMedia {
        mic: Option<bool>,
        camera: Option<bool>,
    },
    Kick {
        target: usize,
        ban_s: u32,
    },
    Published {
        audio: bool,
        video: bool,
    },
}

fn id(s: &str) -> Ident {
    // The names above are valid identifiers; a failure here is a bug of this file.
    Ident::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn to_action(seats: &Seats, room: &Ident, act: &Act) -> Action {
    let anchor = || seats.room_state(room).map(|s| s.anchor);
    let user = |i: usize| id(USERS[i]);
    match act {
        Act::Join { anchor } => Action::Join {
            role: if *anchor {
                Role::Anchor
            } else {
                Role::Audience
            },
            name: None,
        },
        Act::Apply { seat, timeout_s } => Action::RequestLink {
            to: None,
            seat: *seat,
            timeout_s: *timeout_s,
            open_camera: None,
        },
        Act::Invite { target } => Action::RequestLink {
            to: Some(user(*target)),
            seat: None,
            timeout_s: Some(3),
            open_camera: Some(false),
        },
        Act::Cancel { target } => Action::CancelLink {
            to: target.map(user),
        },
        Act::Respond { target, accept } => Action::RespondLink {
            to: target.map(user).or_else(anchor).unwrap_or_else(|| id("u0")),
            accept: *accept,
        },
        Act::Disconnect { target } => Action::DisconnectUser {
            user: user(*target),
        },
        Act::Terminate => Action::TerminateLink,
        Act::Leave => Action::Leave,
        Act::Lost => Action::ConnectionLost,
        Act::Resume => Action::Resume,
        Act::Lock {
            seat,
            lock,
            audio,
            video,
        } => Action::LockSeat {
            seat: *seat,
            lock: *lock,
            audio: *audio,
            video: *video,
        },
        Act::Move { seat, target } => Action::MoveSeat {
            seat: *seat,
            user: target.map(user),
        },
        Act::Mute {
            target,
            mic,
            camera,
        } => Action::MuteMember {
            user: user(*target),
            mic: *mic,
            camera: *camera,
        },
        Act::SetMedia { mic, camera } => Action::SetMedia {
            mic: *mic,
            camera: *camera,
        },
        Act::Kick { target, ban_s } => Action::KickUser {
            user: user(*target),
            ban_s: *ban_s,
        },
        Act::Published { audio, video } => Action::Published {
            audio: *audio,
            video: *video,
        },
    }
}

/// What clients know of one seated member's media: (mic, camera, mic_blocked, camera_blocked).
type View = (bool, bool, bool, bool);

/// What clients could know from the outputs alone.
#[derive(Default)]
struct Shadow {
    /// Last `users` list per room (seeded from the anchor's join reply).
    users: HashMap<Ident, Vec<UserInfo>>,
    /// Open requests per room: (sender, receiver) -> request id.
    requests: HashMap<Ident, BTreeMap<(Ident, Ident), String>>,
    /// Media views per room and seated member, from join replies, links and `media_state`.
    views: HashMap<(Ident, Ident), View>,
    /// What the media plane was last told it may forward per room and publisher.
    gates: HashMap<(Ident, Ident), (bool, bool)>,
    /// Bans per room and user, until when.
    bans: HashMap<(Ident, Ident), Instant>,
    /// The room's metadata, as `room_metadata` said it.
    metadata: HashMap<Ident, String>,
    /// Who is in each room, and who is linked, by the milestones alone.
    present: HashMap<Ident, BTreeSet<Ident>>,
    linked: HashMap<Ident, BTreeSet<Ident>>,
}

fn ids(users: &[UserInfo]) -> Vec<Ident> {
    users.iter().map(|u| u.user.clone()).collect()
}

fn members(seats: &Seats) -> HashMap<Ident, BTreeSet<Ident>> {
    ROOMS
        .iter()
        .map(|r| (id(r), seats.members(&id(r)).into_iter().collect()))
        .collect()
}

fn check_step(
    seats: &Seats,
    shadow: &mut Shadow,
    before: &HashMap<Ident, BTreeSet<Ident>>,
    rooms_before: &[Option<RoomState>],
    outputs: &[Output],
) -> Result<(), Broken> {
    let after = members(seats);
    let mut media_states = BTreeSet::new();
    // Timeouts come as a pair in one step: link_timeout to the sender, link_cancelled(timeout) to
    // the receiver. Collect both halves and match them at the end of the step.
    let mut timeouts = BTreeSet::new();
    let mut timeout_cancels = BTreeSet::new();
    for out in outputs {
        match out {
            Output::Event { room, to, event } => {
                let in_room = before[room].contains(to) || after[room].contains(to);
                ensure!(in_room, "{event:?} sent to {to} outside {room}");
                let open = shadow.requests.entry(room.clone()).or_default();
                match event {
                    Event::LinkRequest { from, request, .. } => {
                        let key = (from.user.clone(), to.clone());
                        ensure!(
                            open.insert(key, request.clone()).is_none(),
                            "{event:?}: a second open request between the same two"
                        );
                    }
                    Event::LinkAccepted { user } | Event::LinkRejected { user, .. } => {
                        let ended = open.remove(&(to.clone(), user.clone()));
                        ensure!(ended.is_some(), "{event:?} to {to} ends no request");
                    }
                    Event::LinkCancelled { user, reason } => match reason {
                        CancelReason::Cancelled => {
                            let ended = open.remove(&(user.clone(), to.clone()));
                            ensure!(ended.is_some(), "{event:?} to {to} ends no request");
                        }
                        CancelReason::Left => {
                            let a = open.remove(&(user.clone(), to.clone()));
                            let b = open.remove(&(to.clone(), user.clone()));
                            ensure!(a.is_some() != b.is_some(), "{event:?} ends one request");
                            ensure!(!after[room].contains(user), "{user} left");
                        }
                        CancelReason::Timeout => {
                            timeout_cancels.insert((room.clone(), user.clone(), to.clone()));
                        }
                    },
                    Event::LinkTimeout { user } => {
                        let ended = open.remove(&(to.clone(), user.clone()));
                        ensure!(ended.is_some(), "{event:?} to {to} ends no request");
                        timeouts.insert((room.clone(), to.clone(), user.clone()));
                    }
                    _ => {}
                }
            }
            Output::Broadcast { room, event } => match event {
                Event::ConnectedUsersUpdated {
                    users,
                    joined,
                    left,
                } => {
                    let prev = shadow.users.get(room).cloned().unwrap_or_default();
                    let prev_ids: BTreeSet<_> = ids(&prev).into_iter().collect();
                    let now_ids: BTreeSet<_> = ids(users).into_iter().collect();
                    let want_joined: BTreeSet<_> = now_ids.difference(&prev_ids).cloned().collect();
                    let want_left: BTreeSet<_> = prev_ids.difference(&now_ids).cloned().collect();
                    ensure_eq!(
                        ids(joined).into_iter().collect::<BTreeSet<_>>(),
                        want_joined
                    );
                    ensure_eq!(ids(left).into_iter().collect::<BTreeSet<_>>(), want_left);
                    let seat_of = |list: &[UserInfo]| -> BTreeMap<Ident, Option<u32>> {
                        list.iter().map(|u| (u.user.clone(), u.seat)).collect()
                    };
                    ensure!(
                        !joined.is_empty() || !left.is_empty() || seat_of(&prev) != seat_of(users),
                        "an update changes something"
                    );
                    for u in left {
                        shadow.views.remove(&(room.clone(), u.user.clone()));
                    }
                    for u in joined {
                        // A member linked onto a seat whose media is locked knows it from the
                        // seat list; nothing else blocks a new link.
                        let lock = seats
                            .room_state(room)
                            .and_then(|s| s.seats.get(u.seat? as usize).cloned())
                            .map_or((false, false), |s| (s.audio_locked, s.video_locked));
                        shadow.views.insert(
                            (room.clone(), u.user.clone()),
                            (u.mic, u.camera, lock.0, lock.1),
                        );
                    }
                    let seats_in_order: Vec<_> = users.iter().map(|u| u.seat).collect();
                    ensure_eq!(
                        seats_in_order.first().copied(),
                        Some(Some(0)),
                        "anchor first"
                    );
                    ensure!(seats_in_order.windows(2).all(|w| w[0] < w[1]), "seat order");
                    shadow.users.insert(room.clone(), users.clone());
                }
                Event::RoomEnded { .. } => {
                    shadow.users.remove(room);
                    shadow.requests.remove(room);
                    shadow.views.retain(|(r, _), _| r != room);
                    shadow.gates.retain(|(r, _), _| r != room);
                    shadow.bans.retain(|(r, _), _| r != room);
                }
                Event::MediaState {
                    user,
                    mic,
                    camera,
                    mic_blocked,
                    camera_blocked,
                    ..
                } => {
                    ensure!(
                        media_states.insert((room.clone(), user.clone())),
                        "two media_state for {user} in one step"
                    );
                    let view = (*mic, *camera, *mic_blocked, *camera_blocked);
                    let old = shadow.views.insert((room.clone(), user.clone()), view);
                    ensure!(old.is_some(), "media_state for {user}, who has no seat");
                    ensure!(old != Some(view), "media_state for {user} changes nothing");
                }
                _ => {}
            },
            Output::Media(change) => match change {
                MediaChange::AllowPublish {
                    room,
                    user,
                    audio,
                    video,
                    ..
                } => {
                    shadow
                        .gates
                        .insert((room.clone(), user.clone()), (*audio, *video));
                }
                MediaChange::RevokePublish { room, user } => {
                    shadow.gates.remove(&(room.clone(), user.clone()));
                }
                MediaChange::CloseRoom { room } => {
                    shadow.gates.retain(|(r, _), _| r != room);
                }
                _ => {}
            },
            Output::Departed { .. } => {}
            Output::Milestone { room, milestone } => {
                let present = shadow.present.entry(room.clone()).or_default();
                let linked = shadow.linked.entry(room.clone()).or_default();
                match milestone {
                    Milestone::RoomStarted { anchor } => {
                        ensure!(present.is_empty(), "{room} started twice");
                        present.insert(anchor.user.clone());
                    }
                    Milestone::RoomEnded { .. } => {
                        shadow.present.remove(room);
                        shadow.linked.remove(room);
                    }
                    Milestone::UserJoined { user } => {
                        ensure!(
                            present.insert(user.user.clone()),
                            "{} joined twice",
                            user.user
                        );
                    }
                    Milestone::UserLeft { user } => {
                        ensure!(present.remove(&user.user), "{} left unseen", user.user);
                        ensure!(!linked.contains(&user.user), "{} left linked", user.user);
                    }
                    Milestone::LinkStarted { user } => {
                        ensure!(
                            linked.insert(user.user.clone()),
                            "{} linked twice",
                            user.user
                        );
                    }
                    Milestone::LinkEnded { user, .. } => {
                        ensure!(linked.remove(&user.user), "{} unlinked unseen", user.user);
                    }
                    Milestone::UserKicked { user, .. } => {
                        ensure!(present.contains(&user.user), "{} kicked unseen", user.user);
                    }
                }
            }
        }
        if let Output::Broadcast {
            room,
            event: Event::RoomMetadata { metadata },
        } = out
        {
            shadow.metadata.insert(room.clone(), metadata.clone());
        }
    }
    ensure_eq!(timeouts, timeout_cancels, "each timeout tells both sides");

    for (i, r) in ROOMS.iter().enumerate() {
        let room = id(r);
        // Rule 11: a seat locked and empty before the step is still empty.
        if let (Some(old), Some(new)) = (&rooms_before[i], seats.room_state(&room)) {
            for (was, is) in old.seats.iter().zip(&new.seats) {
                ensure!(
                    !(was.locked && was.user.is_none() && is.user.is_some()),
                    "locked seat {} was taken",
                    was.index
                );
            }
        }
        let Some(state) = seats.room_state(&room) else {
            ensure!(
                !shadow.users.contains_key(&room),
                "{room} ended without room_ended"
            );
            ensure!(
                !shadow.present.contains_key(&room),
                "{room} ended without its milestone"
            );
            shadow.metadata.remove(&room);
            continue;
        };
        // The milestones' record: everyone in the room, and its linked audience.
        let members: BTreeSet<Ident> = seats.members(&room).into_iter().collect();
        ensure_eq!(
            shadow.present.get(&room).cloned().unwrap_or_default(),
            members,
            "who is in {room}, by the milestones"
        );
        let linked_audience: BTreeSet<Ident> = seats
            .linked(&room)
            .into_iter()
            .filter(|u| u.role == Role::Audience)
            .map(|u| u.user)
            .collect();
        ensure_eq!(
            shadow.linked.get(&room).cloned().unwrap_or_default(),
            linked_audience,
            "who is linked in {room}, by the milestones"
        );
        let summary = seats
            .summary(&room, 0)
            .ok_or_else(|| format!("{room} is live without a summary"))?;
        ensure_eq!(
            &summary.metadata,
            shadow.metadata.get(&room).map_or("", String::as_str),
            "{room}'s metadata, as room_metadata said"
        );
        // Exactly one anchor, on seat 0.
        let anchor_info = state.seats[0]
            .user
            .as_ref()
            .ok_or_else(|| format!("{room}: seat 0 is empty while live"))?;
        ensure_eq!(&anchor_info.user, &state.anchor);
        ensure_eq!(anchor_info.role, Role::Anchor);
        let anchors = state
            .seats
            .iter()
            .filter_map(|s| s.user.as_ref())
            .filter(|u| u.role == Role::Anchor)
            .count();
        ensure_eq!(anchors, 1);
        let linked = seats.linked(&room);
        ensure!(
            linked.len() as u32 <= MAX_SEATS,
            "at most max_seats - 1 linked audience"
        );
        // Each seat index names the member who holds it.
        for (i, s) in state.seats.iter().enumerate() {
            if let Some(u) = &s.user {
                ensure_eq!(u.seat, Some(i as u32));
            }
        }
        // Clients that applied every update know exactly who is linked.
        let known = shadow
            .users
            .entry(room.clone())
            .or_insert_with(|| linked.clone());
        ensure_eq!(ids(known), ids(&linked));
        // Requests seen open by clients are exactly the pending ones, and none concerns a linked
        // member.
        let pending: BTreeMap<(Ident, Ident), String> = seats
            .pending_requests(&room)
            .into_iter()
            .map(|(req, from, to)| ((from, to), req))
            .collect();
        let seen = shadow.requests.get(&room).cloned().unwrap_or_default();
        ensure_eq!(&seen, &pending);
        for (from, to) in pending.keys() {
            let member = if *from == state.anchor { to } else { from };
            let info = seats
                .user_info(&room, member)
                .ok_or_else(|| format!("a request concerns {member}, not a member"))?;
            ensure_eq!(info.seat, None, "{} is linked and pending", member);
        }
        // Media: what clients were told is what is so, and nothing muted or locked is let through.
        for seat in &state.seats {
            let Some(u) = &seat.user else { continue };
            let key = (room.clone(), u.user.clone());
            let view = shadow
                .views
                .get(&key)
                .copied()
                .ok_or_else(|| format!("nobody was told about {}'s media", u.user))?;
            ensure_eq!(
                (view.0, view.1),
                (u.mic, u.camera),
                "{}'s media_state",
                u.user
            );
            let gate = shadow
                .gates
                .get(&key)
                .copied()
                .ok_or_else(|| format!("the media plane was never told about {}", u.user))?;
            ensure_eq!(Some(gate), seats.may_publish(&room, &u.user));
            ensure!(
                !(gate.0 && (seat.audio_locked || view.2)),
                "{}'s audio is forwarded while locked or muted by the anchor",
                u.user
            );
            ensure!(
                !(gate.1 && (seat.video_locked || view.3)),
                "{}'s video is forwarded while locked or muted by the anchor",
                u.user
            );
            ensure!(
                !view.2 || seat.audio_locked || seat.index > 0,
                "the anchor is never blocked"
            );
            ensure!(
                u.mic <= gate.0 && u.camera <= gate.1,
                "on but not forwarded"
            );
        }
    }
    Ok(())
}

/// Decode a fuzzer's bytes into operations: each takes one to three bytes.
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut input = Input::new(data);
    let mut ops = Vec::new();
    while !input.is_empty() {
        let tag = input.byte();
        let room = usize::from(tag >> 7);
        let user = usize::from(input.byte()) % USERS.len();
        let arg = input.byte();
        let target = usize::from(arg) % USERS.len();
        let act = match tag & 0x0f {
            0 => Act::Join {
                anchor: arg & 1 == 1,
            },
            1 => Act::Apply {
                seat: (arg & 0x08 != 0).then_some(u32::from(arg & 0x07) % (MAX_SEATS + 1)),
                timeout_s: (arg & 0x80 != 0).then_some(u32::from(arg >> 4 & 0x03)),
            },
            2 => Act::Invite { target },
            3 => Act::Cancel {
                target: (arg & 0x80 != 0).then_some(target),
            },
            4 => Act::Respond {
                target: (arg & 0x80 != 0).then_some(target),
                accept: arg & 0x40 != 0,
            },
            5 => Act::Disconnect { target },
            6 => Act::Terminate,
            7 => Act::Leave,
            8 => Act::Lost,
            9 => Act::Resume,
            // Time passes: up to 2.5 s in small steps, up to 64 s in big ones.
            10 | 11 => {
                ops.push(Op::Advance(u64::from(arg) * 10));
                continue;
            }
            12 => {
                ops.push(Op::Advance(u64::from(arg) * 250));
                continue;
            }
            // Version 2: the next byte picks which, the one after gives the flags.
            13..=15 => {
                let flags = input.byte();
                let maybe = |bits: u8| match bits & 3 {
                    0 => None,
                    1 => Some(false),
                    _ => Some(true),
                };
                match (tag >> 4) & 7 {
                    // Version 3: the server API.
                    6 => {
                        let act = match flags & 7 {
                            0 => Serve::End,
                            1 => Serve::Metadata(usize::from(arg) * 8),
                            2 => Serve::Metadata(4096 + usize::from(arg & 1)),
                            3 => Serve::Kick {
                                target,
                                ban_s: u32::from(flags >> 4),
                            },
                            4 => Serve::Unlink { target },
                            _ => Serve::Mute {
                                target,
                                mic: maybe(flags >> 3),
                                camera: maybe(flags >> 5),
                            },
                        };
                        ops.push(Op::Serve { room, act });
                        continue;
                    }
                    0 => Act::Lock {
                        seat: u32::from(arg & 7) % (MAX_SEATS + 1),
                        lock: maybe(flags),
                        audio: maybe(flags >> 2),
                        video: maybe(flags >> 4),
                    },
                    1 => Act::Move {
                        seat: u32::from(flags & 7) % (MAX_SEATS + 1),
                        target: (flags & 0x80 != 0).then_some(target),
                    },
                    2 | 7 => Act::Mute {
                        target,
                        mic: maybe(flags),
                        camera: maybe(flags >> 2),
                    },
                    3 => Act::SetMedia {
                        mic: maybe(flags),
                        camera: maybe(flags >> 2),
                    },
                    4 => Act::Kick {
                        target,
                        ban_s: u32::from(flags >> 4),
                    },
                    _ => Act::Published {
                        audio: flags & 1 != 0,
                        video: flags & 2 != 0,
                    },
                }
            }
            _ => Act::Apply {
                seat: None,
                timeout_s: None,
            },
        };
        ops.push(Op::Act { room, user, act });
    }
    ops
}

/// Run `ops` against a fresh [`Seats`] and check every invariant after each step.
pub fn run(ops: &[Op]) -> Result<(), Broken> {
    let mut seats = Seats::new(SeatsConfig {
        max_seats: MAX_SEATS,
        ..SeatsConfig::default()
    });
    let mut shadow = Shadow::default();
    let mut now = Instant::now();
    let snapshot = |seats: &Seats| {
        ROOMS
            .iter()
            .map(|r| {
                let mut pending = seats.pending_requests(&id(r));
                pending.sort();
                // What each user may have forwarded and their ban: a refused mute or kick must
                // leave both as they were.
                let media: Vec<_> = USERS
                    .iter()
                    .map(|u| (seats.may_publish(&id(r), &id(u)), seats.ban(&id(r), &id(u))))
                    .collect();
                (seats.room_state(&id(r)), pending, media)
            })
            .collect::<Vec<_>>()
    };
    for op in ops {
        let before = members(&seats);
        let state_before = snapshot(&seats);
        let rooms_before: Vec<Option<RoomState>> =
            ROOMS.iter().map(|r| seats.room_state(&id(r))).collect();
        match op {
            Op::Advance(ms) => {
                now += Duration::from_millis(*ms);
                seats.handle_timeout(now);
            }
            Op::Serve { room, act } => {
                let room = id(ROOMS[*room]);
                let outcome = seats.serve(now, &room, to_server_action(act));
                match outcome {
                    Err(e) => {
                        ensure!(
                            seats.poll_output().is_none(),
                            "{op:?} failed ({e}) and still said something"
                        );
                        ensure_eq!(
                            snapshot(&seats),
                            state_before,
                            "{op:?} failed and changed state"
                        );
                    }
                    Ok(()) => {
                        if let Serve::Kick { target, ban_s } = act
                            && *ban_s > 0
                        {
                            shadow.bans.insert(
                                (room.clone(), id(USERS[*target])),
                                now + Duration::from_secs(u64::from(*ban_s)),
                            );
                        }
                        if let Serve::Metadata(n) = act {
                            ensure!(*n <= 4096, "{op:?}: oversize metadata was taken");
                        }
                    }
                }
            }
            Op::Act { room, user, act } => {
                let room = id(ROOMS[*room]);
                let action = to_action(&seats, &room, act);
                let me = id(USERS[*user]);
                let banned = shadow
                    .bans
                    .get(&(room.clone(), me.clone()))
                    .is_some_and(|until| *until > now);
                let outcome = seats.handle(now, &room, &me, action);
                if let Act::Join { .. } = act
                    && seats.room_state(&room).is_some()
                {
                    let refused = matches!(outcome, Err(SeatError::Banned { .. }));
                    ensure_eq!(refused, banned, "{op:?}: the ban (rule 13)");
                }
                if let (Act::Kick { target, ban_s }, Ok(_)) = (act, &outcome)
                    && *ban_s > 0
                {
                    shadow.bans.insert(
                        (room.clone(), id(USERS[*target])),
                        now + Duration::from_secs(u64::from(*ban_s)),
                    );
                }
                match outcome {
                    Err(e) => {
                        ensure!(
                            seats.poll_output().is_none(),
                            "{op:?} failed ({e}) and still said something"
                        );
                        ensure_eq!(
                            snapshot(&seats),
                            state_before,
                            "{op:?} failed and changed state"
                        );
                    }
                    Ok(Reply::Joined(j)) if !j.rejoined && j.me.role == Role::Anchor => {
                        // The join reply is the anchor's starting point.
                        shadow.users.insert(room.clone(), ids_to_infos(&j.room));
                        shadow.views.insert(
                            (room.clone(), j.me.user.clone()),
                            (j.me.mic, j.me.camera, false, false),
                        );
                    }
                    Ok(_) => {}
                }
            }
        }
        let outputs: Vec<Output> = std::iter::from_fn(|| seats.poll_output()).collect();
        check_step(&seats, &mut shadow, &before, &rooms_before, &outputs)
            .map_err(|e| format!("after {op:?}: {e}"))?;
    }
    Ok(())
}

fn ids_to_infos(room: &miclink_protocol::RoomState) -> Vec<UserInfo> {
    room.seats.iter().filter_map(|s| s.user.clone()).collect()
}
