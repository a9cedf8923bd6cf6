//! Unit tests of the state machine, one behaviour each, on a fake clock.

use super::*;

fn id(s: &str) -> Ident {
    Ident::new(s).expect("valid id")
}

struct Harness {
    seats: Seats,
    now: Instant,
    room: Ident,
}

impl Harness {
    /// A live room "r" with anchor "anchor" and viewers `v1..=viewers`.
    fn new(max_seats: u32, viewers: usize) -> Harness {
        let mut h = Harness {
            seats: Seats::new(SeatsConfig {
                max_seats,
                ..SeatsConfig::default()
            }),
            now: Instant::now(),
            room: id("r"),
        };
        h.join("anchor", Role::Anchor).expect("anchor joins");
        for i in 1..=viewers {
            h.join(&format!("v{i}"), Role::Audience)
                .expect("viewer joins");
        }
        // Let the deferred audience count go out so each test starts from a quiet room.
        h.advance(Duration::from_secs(1));
        h.drain();
        h
    }

    fn join(&mut self, user: &str, role: Role) -> Result<Reply, SeatError> {
        self.act(user, Action::Join { role, name: None })
    }

    fn act(&mut self, user: &str, action: Action) -> Result<Reply, SeatError> {
        let room = self.room.clone();
        self.seats.handle(self.now, &room, &id(user), action)
    }

    fn apply(&mut self, user: &str) -> Result<Reply, SeatError> {
        self.act(
            user,
            Action::RequestLink {
                to: None,
                seat: None,
                timeout_s: None,
                open_camera: None,
            },
        )
    }

    fn invite(&mut self, user: &str) -> Result<Reply, SeatError> {
        self.act(
            "anchor",
            Action::RequestLink {
                to: Some(id(user)),
                seat: None,
                timeout_s: None,
                open_camera: Some(false),
            },
        )
    }

    fn respond(&mut self, by: &str, to: &str, accept: bool) -> Result<Reply, SeatError> {
        self.act(by, Action::RespondLink { to: id(to), accept })
    }

    fn link(&mut self, user: &str) {
        self.apply(user).expect("apply");
        self.respond("anchor", user, true).expect("accept");
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.seats.handle_timeout(self.now);
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.seats.poll_output()).collect()
    }

    fn seat_of(&self, user: &str) -> Option<u32> {
        self.seats.user_info(&self.room, &id(user))?.seat
    }
}

fn events_to<'a>(outputs: &'a [Output], user: &str) -> Vec<&'a Event> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event { to, event, .. } if *to == user => Some(event),
            _ => None,
        })
        .collect()
}

fn broadcasts(outputs: &[Output]) -> Vec<&Event> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Broadcast { event, .. } => Some(event),
            _ => None,
        })
        .collect()
}

fn types(events: &[&Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.type_name()).collect()
}

#[test]
fn anchor_goes_live_on_seat_zero_and_may_publish() {
    let h = Harness::new(10, 0);
    let state = h.seats.room_state(&h.room).expect("live");
    assert_eq!(state.anchor, "anchor");
    assert_eq!(state.max_seats, 10);
    assert_eq!(state.seats.len(), 10);
    assert_eq!(h.seat_of("anchor"), Some(0));
    assert_eq!(
        h.seats.may_publish(&h.room, &id("anchor")),
        Some((true, true))
    );
}

#[test]
fn audience_cannot_join_a_room_that_is_not_live() {
    let mut h = Harness::new(10, 0);
    h.room = id("other");
    assert_eq!(h.join("v1", Role::Audience), Err(SeatError::RoomNotFound));
}

#[test]
fn a_second_anchor_is_refused_with_room_exists() {
    let mut h = Harness::new(10, 0);
    assert_eq!(h.join("someone", Role::Anchor), Err(SeatError::RoomExists));
}

#[test]
fn apply_then_accept_seats_the_applicant_and_tells_everyone() {
    let mut h = Harness::new(10, 2);
    let Reply::Request(request) = h.apply("v1").expect("apply") else {
        panic!("apply replies with a request id");
    };
    let out = h.drain();
    match events_to(&out, "anchor").as_slice() {
        [
            Event::LinkRequest {
                from,
                request: r,
                seat: None,
                open_camera: true,
                timeout_s: 60,
            },
        ] => {
            assert_eq!(from.user, "v1");
            assert_eq!(*r, request);
        }
        other => panic!("anchor should get one link_request, got {other:?}"),
    }
    h.respond("anchor", "v1", true).expect("accept");
    let out = h.drain();
    assert_eq!(
        events_to(&out, "v1"),
        vec![&Event::LinkAccepted { user: id("anchor") }]
    );
    match broadcasts(&out).as_slice() {
        [
            Event::ConnectedUsersUpdated {
                users,
                joined,
                left,
            },
        ] => {
            assert_eq!(users.len(), 2);
            assert_eq!(users[0].user, "anchor");
            assert_eq!(joined.len(), 1);
            assert_eq!(joined[0].user, "v1");
            assert_eq!(joined[0].seat, Some(1));
            assert!(left.is_empty());
        }
        other => panic!("one connected_users_updated expected, got {other:?}"),
    }
    let link = h.seats.link(&h.room, &id("v1")).expect("seated");
    assert!(out.contains(&Output::Media(MediaChange::AllowPublish {
        room: h.room.clone(),
        user: id("v1"),
        seat: 1,
        audio: true,
        video: true,
        link,
    })));
    // A new seating gets a new number.
    h.act("v1", Action::TerminateLink).expect("hang up");
    h.link("v1");
    assert_ne!(h.seats.link(&h.room, &id("v1")), Some(link));
}

#[test]
fn reject_tells_the_applicant_and_seats_nobody() {
    let mut h = Harness::new(10, 1);
    h.apply("v1").expect("apply");
    h.drain();
    h.respond("anchor", "v1", false).expect("reject");
    let out = h.drain();
    assert_eq!(
        events_to(&out, "v1"),
        vec![&Event::LinkRejected {
            user: id("anchor"),
            reason: RejectReason::Rejected
        }]
    );
    assert!(broadcasts(&out).is_empty());
    assert_eq!(h.seat_of("v1"), None);
}

#[test]
fn cancel_tells_the_anchor_and_frees_the_applicant() {
    let mut h = Harness::new(10, 1);
    h.apply("v1").expect("apply");
    h.drain();
    h.act("v1", Action::CancelLink { to: None })
        .expect("cancel");
    let out = h.drain();
    assert_eq!(
        events_to(&out, "anchor"),
        vec![&Event::LinkCancelled {
            user: id("v1"),
            reason: CancelReason::Cancelled
        }]
    );
    assert_eq!(
        h.respond("anchor", "v1", true),
        Err(SeatError::NotFound("no pending request to answer"))
    );
    assert!(h.apply("v1").is_ok(), "may apply again");
}

#[test]
fn an_unanswered_application_times_out_on_both_sides() {
    let mut h = Harness::new(10, 1);
    h.act(
        "v1",
        Action::RequestLink {
            to: None,
            seat: None,
            timeout_s: Some(5),
            open_camera: None,
        },
    )
    .expect("apply");
    h.drain();
    h.advance(Duration::from_millis(4999));
    assert!(events_to(&h.drain(), "v1").is_empty());
    h.advance(Duration::from_millis(1));
    let out = h.drain();
    assert_eq!(
        events_to(&out, "v1"),
        vec![&Event::LinkTimeout { user: id("anchor") }]
    );
    assert_eq!(
        events_to(&out, "anchor"),
        vec![&Event::LinkCancelled {
            user: id("v1"),
            reason: CancelReason::Timeout
        }]
    );
    assert_eq!(h.seats.armed_timers(), 0);
}

#[test]
fn a_zero_timeout_never_expires() {
    let mut h = Harness::new(10, 1);
    h.act(
        "v1",
        Action::RequestLink {
            to: None,
            seat: None,
            timeout_s: Some(0),
            open_camera: None,
        },
    )
    .expect("apply");
    assert_eq!(h.seats.poll_timeout(), None);
    h.advance(Duration::from_secs(1_000_000));
    assert_eq!(h.seats.pending_requests(&h.room).len(), 1);
}

#[test]
fn invite_then_accept_with_mic_only() {
    let mut h = Harness::new(10, 1);
    h.invite("v1").expect("invite");
    let out = h.drain();
    assert!(matches!(
        events_to(&out, "v1").as_slice(),
        [Event::LinkRequest { from, open_camera: false, .. }] if from.user == "anchor"
    ));
    h.respond("v1", "anchor", true).expect("accept");
    let out = h.drain();
    assert_eq!(
        events_to(&out, "anchor"),
        vec![&Event::LinkAccepted { user: id("v1") }]
    );
    let info = h.seats.user_info(&h.room, &id("v1")).expect("member");
    // Nothing published yet: mic and camera are exact (version 2).
    assert_eq!((info.seat, info.mic, info.camera), (Some(1), false, false));
    assert_eq!(h.seats.may_publish(&h.room, &id("v1")), Some((true, false)));
    h.act(
        "v1",
        Action::Published {
            audio: true,
            video: true,
        },
    )
    .expect("published");
    let info = h.seats.user_info(&h.room, &id("v1")).expect("member");
    assert_eq!(
        (info.mic, info.camera),
        (true, false),
        "the camera starts muted"
    );
}

#[test]
fn invite_then_reject_tells_the_anchor() {
    let mut h = Harness::new(10, 1);
    h.invite("v1").expect("invite");
    h.drain();
    h.respond("v1", "anchor", false).expect("reject");
    assert_eq!(
        events_to(&h.drain(), "anchor"),
        vec![&Event::LinkRejected {
            user: id("v1"),
            reason: RejectReason::Rejected
        }]
    );
}

#[test]
fn disconnect_by_the_anchor_terminates_the_link() {
    let mut h = Harness::new(10, 2);
    h.link("v1");
    h.drain();
    h.act("anchor", Action::DisconnectUser { user: id("v1") })
        .expect("disconnect");
    let out = h.drain();
    assert_eq!(
        events_to(&out, "v1"),
        vec![&Event::LinkTerminated { by: id("anchor") }]
    );
    assert!(matches!(
        broadcasts(&out).as_slice(),
        [Event::ConnectedUsersUpdated { users, joined, left }]
            if users.len() == 1 && joined.is_empty() && left[0].user == "v1"
    ));
    assert!(out.contains(&Output::Media(MediaChange::RevokePublish {
        room: h.room.clone(),
        user: id("v1")
    })));
    assert_eq!(h.seats.may_publish(&h.room, &id("v1")), None);
    assert!(
        matches!(out[0], Output::Media(MediaChange::RevokePublish { .. })),
        "media stops before anyone is told: {out:?}"
    );
}

#[test]
fn terminate_by_the_member_tells_the_anchor_and_other_members() {
    let mut h = Harness::new(10, 3);
    h.link("v1");
    h.link("v2");
    h.drain();
    h.act("v1", Action::TerminateLink).expect("terminate");
    let out = h.drain();
    for to in ["anchor", "v2"] {
        assert!(matches!(
            events_to(&out, to).as_slice(),
            [Event::LinkExited { user }] if user.user == "v1" && user.seat == Some(1)
        ));
    }
    assert!(
        events_to(&out, "v3").is_empty(),
        "viewers get only the broadcast"
    );
    assert_eq!(h.seat_of("v1"), None);
}

#[test]
fn tenth_cohost_is_refused_while_nine_are_linked() {
    let mut h = Harness::new(10, 10);
    for i in 1..=9 {
        h.link(&format!("v{i}"));
    }
    assert_eq!(h.apply("v10"), Err(SeatError::Full));
    assert_eq!(h.invite("v10"), Err(SeatError::Full));
}

#[test]
fn accept_while_full_leaves_the_request_pending() {
    let mut h = Harness::new(3, 3);
    h.apply("v3").expect("apply early");
    h.link("v1");
    h.link("v2");
    h.drain();
    assert_eq!(h.respond("anchor", "v3", true), Err(SeatError::Full));
    assert!(h.drain().is_empty(), "a failed request changes nothing");
    assert_eq!(h.seats.pending_requests(&h.room).len(), 1);
    h.act("v1", Action::TerminateLink).expect("a seat frees");
    h.respond("anchor", "v3", true).expect("now it fits");
    assert_eq!(h.seat_of("v3"), Some(1));
}

#[test]
fn one_pending_request_per_audience_member_whichever_side_sent_it() {
    let mut h = Harness::new(10, 2);
    h.apply("v1").expect("apply");
    assert_eq!(h.apply("v1"), Err(SeatError::RequestPending));
    assert_eq!(h.invite("v1"), Err(SeatError::RequestPending));
    h.invite("v2").expect("the anchor may hold many");
    assert_eq!(h.apply("v2"), Err(SeatError::RequestPending));
}

#[test]
fn a_chosen_seat_must_exist_and_be_free() {
    let mut h = Harness::new(4, 3);
    let ask = |seat| Action::RequestLink {
        to: None,
        seat: Some(seat),
        timeout_s: None,
        open_camera: None,
    };
    assert!(matches!(
        h.act("v1", ask(0)),
        Err(SeatError::NoSuchSeat { .. })
    ));
    assert!(matches!(
        h.act("v1", ask(4)),
        Err(SeatError::NoSuchSeat { .. })
    ));
    h.act("v1", ask(3)).expect("free seat");
    h.respond("anchor", "v1", true).expect("accept");
    assert_eq!(h.seat_of("v1"), Some(3));
    assert_eq!(h.act("v2", ask(3)), Err(SeatError::SeatTaken(3)));
}

#[test]
fn wrong_roles_are_refused() {
    let mut h = Harness::new(10, 2);
    assert!(matches!(
        h.act("v1", Action::DisconnectUser { user: id("v2") }),
        Err(SeatError::NotAllowed(_))
    ));
    assert!(matches!(
        h.act(
            "v1",
            Action::ListAudience {
                offset: 0,
                limit: 10
            }
        ),
        Err(SeatError::NotAllowed(_))
    ));
    assert!(matches!(
        h.act(
            "v1",
            Action::RequestLink {
                to: Some(id("v2")),
                seat: None,
                timeout_s: None,
                open_camera: None
            }
        ),
        Err(SeatError::NotAllowed(_))
    ));
    assert!(matches!(h.apply("anchor"), Err(SeatError::NotAllowed(_))));
    assert!(matches!(
        h.act("anchor", Action::TerminateLink),
        Err(SeatError::NotLinked(_))
    ));
    assert!(matches!(
        h.act("v1", Action::TerminateLink),
        Err(SeatError::NotLinked(_))
    ));
    assert!(matches!(
        h.act("anchor", Action::DisconnectUser { user: id("v1") }),
        Err(SeatError::NotLinked(_))
    ));
    assert!(matches!(h.invite("nobody"), Err(SeatError::NotFound(_))));
    assert!(matches!(
        h.respond("anchor", "nobody", true),
        Err(SeatError::NotFound(_))
    ));
    assert_eq!(h.act("stranger", Action::Leave), Err(SeatError::NotInRoom));
    assert!(h.drain().is_empty(), "refused commands emit nothing");
}

#[test]
fn anchor_leaving_ends_the_room_for_everyone() {
    let mut h = Harness::new(10, 2);
    h.link("v1");
    h.drain();
    h.act("anchor", Action::Leave).expect("leave");
    let out = h.drain();
    assert_eq!(
        broadcasts(&out),
        vec![&Event::RoomEnded {
            reason: EndReason::AnchorLeft
        }]
    );
    let departed = out
        .iter()
        .filter(|o| matches!(o, Output::Departed { .. }))
        .count();
    assert_eq!(departed, 3);
    assert!(h.seats.room_state(&h.room).is_none());
    assert_eq!(h.seats.armed_timers(), 0, "no timer outlives its room");
}

#[test]
fn a_member_lost_past_the_grace_period_leaves_and_ends_their_link() {
    let mut h = Harness::new(10, 2);
    h.link("v1");
    h.drain();
    h.act("v1", Action::ConnectionLost).expect("lost");
    h.advance(Duration::from_secs(14));
    assert_eq!(h.seat_of("v1"), Some(1), "still within grace");
    h.advance(Duration::from_secs(1));
    let out = h.drain();
    assert!(matches!(
        events_to(&out, "anchor").as_slice(),
        [Event::LinkExited { user }] if user.user == "v1"
    ));
    assert!(h.seats.user_info(&h.room, &id("v1")).is_none());
}

#[test]
fn resume_within_grace_keeps_the_seat() {
    let mut h = Harness::new(10, 1);
    h.link("v1");
    h.act("v1", Action::ConnectionLost).expect("lost");
    h.advance(Duration::from_secs(10));
    let Reply::Joined(j) = h.act("v1", Action::Resume).expect("resume") else {
        panic!("resume replies with the room");
    };
    assert!(j.rejoined);
    assert_eq!(j.me.seat, Some(1));
    h.advance(Duration::from_secs(60));
    assert_eq!(h.seat_of("v1"), Some(1), "the grace timer was disarmed");
}

#[test]
fn the_anchor_lost_past_grace_ends_the_room_as_anchor_lost() {
    let mut h = Harness::new(10, 1);
    h.act("anchor", Action::ConnectionLost).expect("lost");
    h.drain();
    h.advance(Duration::from_secs(15));
    assert_eq!(
        broadcasts(&h.drain()),
        vec![&Event::RoomEnded {
            reason: EndReason::AnchorLost
        }]
    );
}

#[test]
fn joining_again_keeps_the_seat_and_cancels_the_grace_timer() {
    let mut h = Harness::new(10, 1);
    h.link("v1");
    h.act("v1", Action::ConnectionLost).expect("lost");
    let Reply::Joined(j) = h.join("v1", Role::Audience).expect("rejoin") else {
        panic!("join replies joined");
    };
    assert!(j.rejoined);
    assert_eq!(j.me.seat, Some(1));
    h.advance(Duration::from_secs(60));
    assert_eq!(h.seat_of("v1"), Some(1));
}

#[test]
fn a_leaving_applicant_cancels_their_application() {
    let mut h = Harness::new(10, 2);
    h.apply("v1").expect("apply");
    h.invite("v2").expect("invite");
    h.drain();
    h.act("v1", Action::Leave).expect("leave");
    h.act("v2", Action::Leave).expect("leave");
    let out = h.drain();
    assert_eq!(
        types(&events_to(&out, "anchor")),
        vec!["link_cancelled", "link_cancelled"]
    );
    assert!(h.seats.pending_requests(&h.room).is_empty());
    assert_eq!(
        h.seats.armed_timers(),
        1,
        "only the deferred audience count"
    );
}

#[test]
fn audience_count_is_coalesced_to_one_event_per_interval() {
    let mut h = Harness::new(10, 0);
    for i in 1..=50 {
        h.join(&format!("v{i}"), Role::Audience).expect("join");
    }
    let counts = |out: &[Output]| -> Vec<u32> {
        broadcasts(out)
            .into_iter()
            .filter_map(|e| match e {
                Event::AudienceCount { count } => Some(*count),
                _ => None,
            })
            .collect()
    };
    // The first join goes out at once; the other 49 within the interval are folded into one.
    assert_eq!(counts(&h.drain()), vec![1]);
    h.advance(Duration::from_millis(499));
    assert_eq!(counts(&h.drain()), Vec::<u32>::new());
    h.advance(Duration::from_millis(1));
    assert_eq!(counts(&h.drain()), vec![50]);
    h.advance(Duration::from_secs(1));
    h.join("late", Role::Audience).expect("join");
    assert_eq!(counts(&h.drain()), vec![51], "quiet room: sent at once");
}

#[test]
fn list_audience_pages_viewers_in_join_order() {
    let mut h = Harness::new(10, 5);
    h.link("v2");
    let Reply::Audience(page) = h
        .act(
            "anchor",
            Action::ListAudience {
                offset: 1,
                limit: 2,
            },
        )
        .expect("list")
    else {
        panic!("audience reply");
    };
    assert_eq!(page.total, 4);
    let names: Vec<&str> = page.users.iter().map(|u| u.user.as_str()).collect();
    assert_eq!(names, vec!["v3", "v4"]);
}

#[test]
fn resume_lists_the_pending_requests_in_both_directions() {
    let mut h = Harness::new(10, 3);
    let Reply::Request(applied) = h
        .act(
            "v1",
            Action::RequestLink {
                to: None,
                seat: Some(2),
                timeout_s: Some(30),
                open_camera: Some(false),
            },
        )
        .expect("apply")
    else {
        panic!("a request id");
    };
    let Reply::Request(invited) = h.invite("v2").expect("invite") else {
        panic!("a request id");
    };
    h.act("anchor", Action::ConnectionLost).expect("lost");
    h.advance(Duration::from_millis(10_500));
    let room = h.room.clone();
    let j = h.seats.resume(h.now, &room, &id("anchor")).expect("resume");
    let mut pending = j.pending.clone();
    pending.sort_by(|a, b| a.request.cmp(&b.request));
    assert_eq!(pending.len(), 2, "{pending:?}");
    let apply = pending
        .iter()
        .find(|p| p.request == applied)
        .expect("apply");
    assert_eq!(apply.from.user, "v1");
    assert_eq!(apply.to, "anchor");
    assert_eq!(apply.seat, Some(2));
    assert!(!apply.open_camera);
    assert_eq!(apply.timeout_s, 20, "30 s less 10.5 s, rounded up");
    let invite = pending
        .iter()
        .find(|p| p.request == invited)
        .expect("invite");
    assert_eq!(
        (invite.from.user.as_str(), invite.to.as_str()),
        ("anchor", "v2")
    );
    // A member sees only their own.
    let j = h.seats.resume(h.now, &room, &id("v3")).expect("resume");
    assert!(j.pending.is_empty());
    let j = h.seats.resume(h.now, &room, &id("v2")).expect("resume");
    assert_eq!(j.pending.len(), 1);
}

// ----- version 2: seat control and media state ------------------------------------------------

impl Harness {
    /// `user` linked on `seat` and publishing both kinds, outputs drained.
    fn seated_publisher(&mut self, user: &str) {
        self.link(user);
        self.act(
            user,
            Action::Published {
                audio: true,
                video: true,
            },
        )
        .expect("published");
        self.act(
            user,
            Action::SetMedia {
                mic: None,
                camera: Some(true),
            },
        )
        .expect("camera on");
        self.drain();
    }

    fn lock(
        &mut self,
        seat: u32,
        lock: Option<bool>,
        audio: Option<bool>,
    ) -> Result<Reply, SeatError> {
        self.act(
            "anchor",
            Action::LockSeat {
                seat,
                lock,
                audio,
                video: None,
            },
        )
    }

    fn mute(&mut self, user: &str, mic: bool) -> Result<Reply, SeatError> {
        self.act(
            "anchor",
            Action::MuteMember {
                user: id(user),
                mic: Some(mic),
                camera: None,
            },
        )
    }

    fn mic(&mut self, user: &str, on: bool) -> Result<Reply, SeatError> {
        self.act(
            user,
            Action::SetMedia {
                mic: Some(on),
                camera: None,
            },
        )
    }
}

fn media_states(outputs: &[Output]) -> Vec<(String, bool, bool, MediaBy, bool)> {
    broadcasts(outputs)
        .into_iter()
        .filter_map(|e| match e {
            Event::MediaState {
                user,
                mic,
                camera,
                by,
                mic_blocked,
                ..
            } => Some((user.to_string(), *mic, *camera, *by, *mic_blocked)),
            _ => None,
        })
        .collect()
}

fn gates(outputs: &[Output]) -> Vec<(String, u32, bool, bool)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Media(MediaChange::AllowPublish {
                user,
                seat,
                audio,
                video,
                ..
            }) => Some((user.to_string(), *seat, *audio, *video)),
            _ => None,
        })
        .collect()
}

use miclink_protocol::{KickReason, MediaBy};

#[test]
fn a_locked_seat_cannot_be_taken_but_its_member_stays() {
    let mut h = Harness::new(4, 3);
    h.seated_publisher("v1");
    h.lock(1, Some(true), None).expect("lock occupied seat");
    h.lock(2, Some(true), None).expect("lock empty seat");
    let out = h.drain();
    let seats = broadcasts(&out)
        .into_iter()
        .filter_map(|e| match e {
            Event::SeatsUpdated { seats } => Some(seats.clone()),
            _ => None,
        })
        .next_back()
        .expect("seats_updated");
    assert!(seats[1].locked && seats[2].locked && !seats[3].locked);
    assert_eq!(h.seat_of("v1"), Some(1), "the member stays");
    assert_eq!(
        h.act(
            "v2",
            Action::RequestLink {
                to: None,
                seat: Some(2),
                timeout_s: None,
                open_camera: None
            }
        ),
        Err(SeatError::SeatLocked(2))
    );
    // Any seat: the one free and unlocked.
    h.link("v2");
    assert_eq!(h.seat_of("v2"), Some(3));
    // Now nothing is free: locked seats do not count.
    assert_eq!(h.apply("v3"), Err(SeatError::Full));
    assert_eq!(
        h.act(
            "v2",
            Action::MoveSeat {
                seat: 2,
                user: None
            }
        ),
        Err(SeatError::SeatLocked(2))
    );
    // Locking again changes nothing and says nothing.
    h.drain();
    h.lock(2, Some(true), None).expect("same lock");
    assert!(h.drain().is_empty());
    assert_eq!(
        h.act(
            "v1",
            Action::LockSeat {
                seat: 2,
                lock: Some(false),
                audio: None,
                video: None
            }
        ),
        Err(SeatError::NotAllowed("only the anchor can lock seats"))
    );
    assert!(matches!(
        h.lock(0, Some(true), None),
        Err(SeatError::NoSuchSeat { .. })
    ));
    assert!(matches!(
        h.lock(4, Some(true), None),
        Err(SeatError::NoSuchSeat { .. })
    ));
}

#[test]
fn an_accepted_request_for_a_seat_locked_meanwhile_gets_another() {
    let mut h = Harness::new(4, 1);
    h.act(
        "v1",
        Action::RequestLink {
            to: None,
            seat: Some(1),
            timeout_s: None,
            open_camera: None,
        },
    )
    .expect("apply for seat 1");
    h.lock(1, Some(true), None).expect("lock");
    h.respond("anchor", "v1", true).expect("accept");
    assert_eq!(h.seat_of("v1"), Some(2));
}

#[test]
fn an_audio_locked_seat_forwards_no_audio_and_lifting_leaves_the_mic_off() {
    let mut h = Harness::new(4, 1);
    h.seated_publisher("v1");
    h.lock(1, None, Some(true)).expect("lock audio");
    let out = h.drain();
    assert_eq!(gates(&out), vec![("v1".into(), 1, false, true)]);
    assert_eq!(
        media_states(&out),
        vec![("v1".into(), false, true, MediaBy::Seat, true)]
    );
    // The media plane hears first, then everyone.
    let gate_at = out
        .iter()
        .position(|o| matches!(o, Output::Media(_)))
        .expect("gate");
    let state_at = out
        .iter()
        .position(|o| {
            matches!(
                o,
                Output::Broadcast {
                    event: Event::MediaState { .. },
                    ..
                }
            )
        })
        .expect("media_state");
    assert!(gate_at < state_at);
    assert!(matches!(
        h.mic("v1", true),
        Err(SeatError::MutedByAnchor(_))
    ));
    h.lock(1, None, Some(false)).expect("unlock audio");
    let out = h.drain();
    assert_eq!(
        media_states(&out),
        vec![("v1".into(), false, true, MediaBy::Seat, false)],
        "unblocked, still off"
    );
    assert!(gates(&out).is_empty(), "still nothing to forward");
    h.mic("v1", true).expect("the member turns it on");
    let out = h.drain();
    assert_eq!(gates(&out), vec![("v1".into(), 1, true, true)]);
    assert_eq!(
        media_states(&out),
        vec![("v1".into(), true, true, MediaBy::User, false)]
    );
}

#[test]
fn the_anchor_mutes_a_member_who_cannot_unmute_until_lifted() {
    let mut h = Harness::new(4, 2);
    h.seated_publisher("v1");
    h.mute("v1", false).expect("anchor mutes");
    let out = h.drain();
    assert_eq!(gates(&out), vec![("v1".into(), 1, false, true)]);
    assert_eq!(
        media_states(&out),
        vec![("v1".into(), false, true, MediaBy::Anchor, true)]
    );
    assert_eq!(
        h.seats.user_info(&h.room, &id("v1")).map(|u| u.mic),
        Some(false)
    );
    assert!(matches!(
        h.mic("v1", true),
        Err(SeatError::MutedByAnchor(_))
    ));
    assert!(h.drain().is_empty(), "a refused unmute says nothing");
    // Muting again is no change.
    h.mute("v1", false).expect("again");
    assert!(h.drain().is_empty());
    h.mute("v1", true).expect("lift");
    let out = h.drain();
    assert_eq!(
        media_states(&out),
        vec![("v1".into(), false, true, MediaBy::Anchor, false)]
    );
    h.mic("v1", true).expect("unmute");
    assert_eq!(
        h.seats.user_info(&h.room, &id("v1")).map(|u| u.mic),
        Some(true)
    );
    // Errors: wrong role, not linked, unknown, self.
    assert!(matches!(
        h.act(
            "v1",
            Action::MuteMember {
                user: id("anchor"),
                mic: Some(false),
                camera: None
            }
        ),
        Err(SeatError::NotAllowed(_))
    ));
    assert!(matches!(h.mute("v2", false), Err(SeatError::NotLinked(_))));
    assert!(matches!(
        h.mute("nobody", false),
        Err(SeatError::NotLinked(_))
    ));
    assert!(matches!(
        h.mute("anchor", false),
        Err(SeatError::NotAllowed(_))
    ));
    assert!(matches!(h.mic("v2", false), Err(SeatError::NotLinked(_))));
}

#[test]
fn a_self_mute_stops_forwarding_and_sends_one_media_state() {
    let mut h = Harness::new(4, 1);
    h.seated_publisher("v1");
    h.mic("v1", false).expect("mute");
    let out = h.drain();
    assert_eq!(gates(&out), vec![("v1".into(), 1, false, true)]);
    assert_eq!(
        media_states(&out),
        vec![("v1".into(), false, true, MediaBy::User, false)]
    );
    h.mic("v1", false).expect("again");
    assert!(h.drain().is_empty(), "no change, no event");
    // The anchor mutes itself too.
    h.act(
        "anchor",
        Action::Published {
            audio: true,
            video: false,
        },
    )
    .expect("published");
    h.drain();
    h.mic("anchor", false).expect("anchor mutes itself");
    let out = h.drain();
    assert_eq!(gates(&out), vec![("anchor".into(), 0, false, true)]);
    // Unpublishing is a change of its own (by the user); gates stay as they are.
    h.act(
        "v1",
        Action::Published {
            audio: false,
            video: false,
        },
    )
    .expect("unpublished");
    let out = h.drain();
    assert!(gates(&out).is_empty());
    assert_eq!(
        media_states(&out),
        vec![("v1".into(), false, false, MediaBy::User, false)]
    );
}

#[test]
fn moves_by_the_member_and_by_the_anchor() {
    let mut h = Harness::new(4, 3);
    h.seated_publisher("v1");
    h.seated_publisher("v2");
    h.act(
        "v1",
        Action::MoveSeat {
            seat: 3,
            user: None,
        },
    )
    .expect("move own seat");
    let out = h.drain();
    assert_eq!(h.seat_of("v1"), Some(3));
    assert_eq!(gates(&out), vec![("v1".into(), 3, true, true)]);
    assert_eq!(
        types(&broadcasts(&out)),
        vec!["seats_updated", "connected_users_updated"]
    );
    assert!(
        media_states(&out).is_empty(),
        "nothing about the media changed"
    );
    h.act(
        "anchor",
        Action::MoveSeat {
            seat: 1,
            user: Some(id("v2")),
        },
    )
    .expect("anchor moves v2");
    assert_eq!(h.seat_of("v2"), Some(1));
    assert_eq!(
        h.act(
            "anchor",
            Action::MoveSeat {
                seat: 1,
                user: Some(id("v1"))
            }
        ),
        Err(SeatError::SeatTaken(1))
    );
    assert!(matches!(
        h.act(
            "v1",
            Action::MoveSeat {
                seat: 2,
                user: Some(id("v2"))
            }
        ),
        Err(SeatError::NotAllowed(_))
    ));
    assert!(matches!(
        h.act(
            "anchor",
            Action::MoveSeat {
                seat: 2,
                user: None
            }
        ),
        Err(SeatError::NotAllowed(_))
    ));
    assert!(matches!(
        h.act(
            "v3",
            Action::MoveSeat {
                seat: 2,
                user: None
            }
        ),
        Err(SeatError::NotLinked(_))
    ));
    assert!(matches!(
        h.act(
            "v1",
            Action::MoveSeat {
                seat: 9,
                user: None
            }
        ),
        Err(SeatError::NoSuchSeat { .. })
    ));
    // Onto an audio-locked seat: its audio stops; off it again, the mic stays off.
    h.drain();
    h.lock(2, None, Some(true))
        .expect("lock audio of the empty seat");
    h.act(
        "v1",
        Action::MoveSeat {
            seat: 2,
            user: None,
        },
    )
    .expect("move");
    let out = h.drain();
    assert_eq!(gates(&out), vec![("v1".into(), 2, false, true)]);
    assert_eq!(
        media_states(&out),
        vec![("v1".into(), false, true, MediaBy::Seat, true)]
    );
    h.act(
        "v1",
        Action::MoveSeat {
            seat: 3,
            user: None,
        },
    )
    .expect("move back");
    let out = h.drain();
    assert_eq!(gates(&out), vec![("v1".into(), 3, false, true)]);
}

#[test]
fn a_kicked_user_is_told_leaves_and_is_banned_until_the_ban_ends() {
    let mut h = Harness::new(4, 2);
    h.seated_publisher("v1");
    h.act(
        "anchor",
        Action::KickUser {
            user: id("v1"),
            ban_s: 60,
        },
    )
    .expect("kick");
    let out = h.drain();
    let kicked_at = out
        .iter()
        .position(|o| {
            matches!(o, Output::Event { to, event: Event::Kicked { reason: KickReason::KickedByAnchor }, .. } if *to == "v1")
        })
        .expect("told");
    let departed_at = out
        .iter()
        .position(|o| matches!(o, Output::Departed { user, .. } if *user == "v1"))
        .expect("departed");
    assert!(kicked_at < departed_at, "told before their session goes");
    assert!(out.iter().any(
        |o| matches!(o, Output::Media(MediaChange::RevokePublish { user, .. }) if *user == "v1")
    ));
    assert_eq!(h.seat_of("v1"), None);
    assert!(!h.seats.members(&h.room).contains(&id("v1")));
    h.advance(Duration::from_secs(59));
    assert_eq!(
        h.join("v1", Role::Audience),
        Err(SeatError::Banned { seconds: 1 })
    );
    h.advance(Duration::from_secs(1));
    h.join("v1", Role::Audience).expect("the ban ended");
    // Without a ban: back at once.
    h.act(
        "anchor",
        Action::KickUser {
            user: id("v2"),
            ban_s: 0,
        },
    )
    .expect("kick");
    h.join("v2", Role::Audience).expect("no ban");
    // Errors.
    assert!(matches!(
        h.act(
            "v2",
            Action::KickUser {
                user: id("v1"),
                ban_s: 0
            }
        ),
        Err(SeatError::NotAllowed(_))
    ));
    assert!(matches!(
        h.act(
            "anchor",
            Action::KickUser {
                user: id("anchor"),
                ban_s: 0
            }
        ),
        Err(SeatError::NotAllowed(_))
    ));
    assert!(matches!(
        h.act(
            "anchor",
            Action::KickUser {
                user: id("ghost"),
                ban_s: 0
            }
        ),
        Err(SeatError::NotFound(_))
    ));
    assert!(matches!(
        h.act(
            "anchor",
            Action::KickUser {
                user: id("v2"),
                ban_s: MAX_BAN_S + 1
            }
        ),
        Err(SeatError::BanTooLong { .. })
    ));
}

#[test]
fn bans_are_bounded_per_room() {
    let mut h = Harness::new(4, 0);
    for i in 0..MAX_BANS + 10 {
        let user = format!("k{i}");
        h.join(&user, Role::Audience).expect("join");
        h.act(
            "anchor",
            Action::KickUser {
                user: id(&user),
                ban_s: 3600 + i as u32,
            },
        )
        .expect("kick");
        h.drain();
    }
    let room = &h.seats.rooms[&h.room];
    assert_eq!(room.bans.len(), MAX_BANS);
    // The ones ending first went; the latest are in force.
    assert!(h.join("k0", Role::Audience).is_ok());
    assert!(matches!(
        h.join(&format!("k{}", MAX_BANS + 9), Role::Audience),
        Err(SeatError::Banned { .. })
    ));
}

#[test]
fn a_publish_report_for_a_viewer_changes_nothing() {
    let mut h = Harness::new(4, 1);
    h.act(
        "v1",
        Action::Published {
            audio: true,
            video: true,
        },
    )
    .expect("ignored");
    assert!(h.drain().is_empty());
    assert_eq!(
        h.seats
            .user_info(&h.room, &id("v1"))
            .map(|u| (u.mic, u.camera)),
        Some((false, false))
    );
}

#[test]
fn a_rejoin_turns_own_mutes_off_and_keeps_the_anchors() {
    let mut h = Harness::new(4, 1);
    h.seated_publisher("v1");
    h.mic("v1", false).expect("own mute");
    h.act(
        "v1",
        Action::SetMedia {
            mic: None,
            camera: Some(false),
        },
    )
    .expect("camera off");
    h.act(
        "anchor",
        Action::MuteMember {
            user: id("v1"),
            mic: None,
            camera: Some(false),
        },
    )
    .expect("anchor mutes the camera");
    h.drain();
    let Ok(Reply::Joined(j)) = h.join("v1", Role::Audience) else {
        panic!("rejoin refused");
    };
    assert!(j.rejoined);
    // The new client's mic will reach the room once it publishes; the anchor's camera mute
    // holds, and the reply says so.
    assert_eq!(
        (j.me.mic, j.me.camera, j.me.mic_blocked, j.me.camera_blocked),
        (false, false, false, true)
    );
    let out = h.drain();
    assert_eq!(gates(&out), vec![("v1".into(), 1, true, false)]);
    assert!(
        media_states(&out).is_empty(),
        "nothing is on yet: no change to tell"
    );
    h.act(
        "v1",
        Action::Published {
            audio: true,
            video: true,
        },
    )
    .expect("published again");
    assert_eq!(
        media_states(&h.drain()),
        vec![("v1".into(), true, false, MediaBy::User, false)]
    );
    // A resume (the same client) changes nothing.
    h.mic("v1", false).expect("mute");
    h.drain();
    h.act("v1", Action::Resume).expect("resume");
    assert!(h.drain().is_empty());
    assert_eq!(
        h.seats.may_publish(&h.room, &id("v1")),
        Some((false, false))
    );
}
