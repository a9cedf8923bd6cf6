//! Random command sequences never break the invariants of the seat state machine.
//!
//! A shadow model is rebuilt from the outputs alone (what clients see), and after every step it
//! must agree with the state machine's own state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use miclink_protocol::{CancelReason, Event, Ident, Role, UserInfo};
use miclink_seats::{Action, Output, Reply, Seats, SeatsConfig};
use proptest::prelude::*;

const ROOMS: &[&str] = &["ra", "rb"];
const USERS: &[&str] = &["u0", "u1", "u2", "u3", "u4", "u5"];
const MAX_SEATS: u32 = 4;

#[derive(Debug, Clone)]
enum Op {
    Act { room: usize, user: usize, act: Act },
    Advance(u64),
}

#[derive(Debug, Clone)]
enum Act {
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
}

fn act_strategy() -> impl Strategy<Value = Act> {
    let user = 0..USERS.len();
    prop_oneof![
        3 => any::<bool>().prop_map(|anchor| Act::Join { anchor }),
        3 => (prop::option::of(0..MAX_SEATS + 1), prop::option::of(0u32..4))
            .prop_map(|(seat, timeout_s)| Act::Apply { seat, timeout_s }),
        2 => user.clone().prop_map(|target| Act::Invite { target }),
        1 => prop::option::of(user.clone()).prop_map(|target| Act::Cancel { target }),
        3 => (prop::option::of(user.clone()), any::<bool>())
            .prop_map(|(target, accept)| Act::Respond { target, accept }),
        1 => user.prop_map(|target| Act::Disconnect { target }),
        1 => Just(Act::Terminate),
        1 => Just(Act::Leave),
        1 => Just(Act::Lost),
        1 => Just(Act::Resume),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..ROOMS.len(), 0..USERS.len(), act_strategy())
            .prop_map(|(room, user, act)| Op::Act { room, user, act }),
        2 => prop_oneof![0u64..600, 0u64..20_000].prop_map(Op::Advance),
    ]
}

fn id(s: &str) -> Ident {
    Ident::new(s).expect("valid id")
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
    }
}

/// What clients could know from the outputs alone.
#[derive(Default)]
struct Shadow {
    /// Last `users` list per room (seeded from the anchor's join reply).
    users: HashMap<Ident, Vec<UserInfo>>,
    /// Open requests per room: (sender, receiver) -> request id.
    requests: HashMap<Ident, BTreeMap<(Ident, Ident), String>>,
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
    outputs: &[Output],
) -> Result<(), TestCaseError> {
    let after = members(seats);
    // Timeouts come as a pair in one step: link_timeout to the sender, link_cancelled(timeout) to
    // the receiver. Collect both halves and match them at the end of the step.
    let mut timeouts = BTreeSet::new();
    let mut timeout_cancels = BTreeSet::new();
    for out in outputs {
        match out {
            Output::Event { room, to, event } => {
                let in_room = before[room].contains(to) || after[room].contains(to);
                prop_assert!(in_room, "{event:?} sent to {to} outside {room}");
                let open = shadow.requests.entry(room.clone()).or_default();
                match event {
                    Event::LinkRequest { from, request, .. } => {
                        let key = (from.user.clone(), to.clone());
                        prop_assert!(open.insert(key, request.clone()).is_none());
                    }
                    Event::LinkAccepted { user } | Event::LinkRejected { user, .. } => {
                        let ended = open.remove(&(to.clone(), user.clone()));
                        prop_assert!(ended.is_some(), "{event:?} to {to} ends no request");
                    }
                    Event::LinkCancelled { user, reason } => match reason {
                        CancelReason::Cancelled => {
                            let ended = open.remove(&(user.clone(), to.clone()));
                            prop_assert!(ended.is_some(), "{event:?} to {to} ends no request");
                        }
                        CancelReason::Left => {
                            let a = open.remove(&(user.clone(), to.clone()));
                            let b = open.remove(&(to.clone(), user.clone()));
                            prop_assert!(a.is_some() != b.is_some(), "{event:?} ends one request");
                            prop_assert!(!after[room].contains(user), "{user} left");
                        }
                        CancelReason::Timeout => {
                            timeout_cancels.insert((room.clone(), user.clone(), to.clone()));
                        }
                    },
                    Event::LinkTimeout { user } => {
                        let ended = open.remove(&(to.clone(), user.clone()));
                        prop_assert!(ended.is_some(), "{event:?} to {to} ends no request");
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
                    prop_assert_eq!(
                        ids(joined).into_iter().collect::<BTreeSet<_>>(),
                        want_joined
                    );
                    prop_assert_eq!(ids(left).into_iter().collect::<BTreeSet<_>>(), want_left);
                    prop_assert!(
                        !joined.is_empty() || !left.is_empty(),
                        "an update changes something"
                    );
                    let seats_in_order: Vec<_> = users.iter().map(|u| u.seat).collect();
                    prop_assert_eq!(
                        seats_in_order.first().copied(),
                        Some(Some(0)),
                        "anchor first"
                    );
                    prop_assert!(seats_in_order.windows(2).all(|w| w[0] < w[1]), "seat order");
                    shadow.users.insert(room.clone(), users.clone());
                }
                Event::RoomEnded { .. } => {
                    shadow.users.remove(room);
                    shadow.requests.remove(room);
                }
                _ => {}
            },
            Output::Media(_) | Output::Departed { .. } => {}
        }
    }
    prop_assert_eq!(timeouts, timeout_cancels, "each timeout tells both sides");

    for r in ROOMS {
        let room = id(r);
        let Some(state) = seats.room_state(&room) else {
            prop_assert!(
                !shadow.users.contains_key(&room),
                "{room} ended without room_ended"
            );
            continue;
        };
        // Exactly one anchor, on seat 0.
        let anchor_info = state.seats[0]
            .user
            .as_ref()
            .expect("seat 0 is held while live");
        prop_assert_eq!(&anchor_info.user, &state.anchor);
        prop_assert_eq!(anchor_info.role, Role::Anchor);
        let anchors = state
            .seats
            .iter()
            .filter_map(|s| s.user.as_ref())
            .filter(|u| u.role == Role::Anchor)
            .count();
        prop_assert_eq!(anchors, 1);
        let linked = seats.linked(&room);
        prop_assert!(
            linked.len() as u32 <= MAX_SEATS,
            "at most max_seats - 1 linked audience"
        );
        // Each seat index names the member who holds it.
        for (i, s) in state.seats.iter().enumerate() {
            if let Some(u) = &s.user {
                prop_assert_eq!(u.seat, Some(i as u32));
            }
        }
        // Clients that applied every update know exactly who is linked.
        let known = shadow
            .users
            .entry(room.clone())
            .or_insert_with(|| linked.clone());
        prop_assert_eq!(ids(known), ids(&linked));
        // Requests seen open by clients are exactly the pending ones, and none concerns a linked
        // member.
        let pending: BTreeMap<(Ident, Ident), String> = seats
            .pending_requests(&room)
            .into_iter()
            .map(|(req, from, to)| ((from, to), req))
            .collect();
        let seen = shadow.requests.get(&room).cloned().unwrap_or_default();
        prop_assert_eq!(&seen, &pending);
        for (from, to) in pending.keys() {
            let member = if *from == state.anchor { to } else { from };
            let info = seats
                .user_info(&room, member)
                .expect("requests concern members");
            prop_assert_eq!(info.seat, None, "{} is linked and pending", member);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant(ops in prop::collection::vec(op_strategy(), 1..80)) {
        let mut seats = Seats::new(SeatsConfig { max_seats: MAX_SEATS, ..SeatsConfig::default() });
        let mut shadow = Shadow::default();
        let mut now = Instant::now();
        for op in ops {
            let before = members(&seats);
            let room_states: Vec<_> = ROOMS.iter().map(|r| seats.room_state(&id(r))).collect();
            let pending: Vec<_> = ROOMS.iter().map(|r| {
                let mut p = seats.pending_requests(&id(r));
                p.sort();
                p
            }).collect();
            match &op {
                Op::Advance(ms) => {
                    now += Duration::from_millis(*ms);
                    seats.handle_timeout(now);
                }
                Op::Act { room, user, act } => {
                    let room = id(ROOMS[*room]);
                    let action = to_action(&seats, &room, act);
                    let result = seats.handle(now, &room, &id(USERS[*user]), action);
                    match result {
                        Err(_) => {
                            // A failed request changes no state and says nothing.
                            prop_assert!(seats.poll_output().is_none());
                            let after: Vec<_> = ROOMS.iter().map(|r| seats.room_state(&id(r))).collect();
                            prop_assert_eq!(&after, &room_states);
                            let pending_after: Vec<_> = ROOMS.iter().map(|r| {
                                let mut p = seats.pending_requests(&id(r));
                                p.sort();
                                p
                            }).collect();
                            prop_assert_eq!(&pending_after, &pending);
                        }
                        Ok(Reply::Joined(j)) if !j.rejoined && j.me.role == Role::Anchor => {
                            // The join reply is the anchor's starting point.
                            shadow.users.insert(room.clone(), ids_to_infos(&j.room));
                        }
                        Ok(_) => {}
                    }
                }
            }
            let outputs: Vec<Output> = std::iter::from_fn(|| seats.poll_output()).collect();
            check_step(&seats, &mut shadow, &before, &outputs)?;
        }
    }
}

fn ids_to_infos(room: &miclink_protocol::RoomState) -> Vec<UserInfo> {
    room.seats.iter().filter_map(|s| s.user.clone()).collect()
}
