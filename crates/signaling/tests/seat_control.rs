//! Version 2 seat control over a real WebSocket: locks, moves, mutes, self mutes and kicks with
//! bans, each with its events and its errors. This server has no media plane, so nobody publishes
//! and `mic`/`camera` stay false; the `*_blocked` flags carry what the anchor and the seats do.
//! (The media tests check that mutes and locks stop packets.)

mod common;

use std::time::Duration;

use common::*;
use miclink_protocol::{ErrorCode, Event, KickReason, MediaBy, Request, Role, Seat};

fn lock(seat: u32, lock: Option<bool>, audio: Option<bool>) -> Request {
    Request::LockSeat {
        seat,
        lock,
        lock_audio: audio,
        lock_video: None,
    }
}

fn seats_of(event: &Event) -> Vec<Seat> {
    match event {
        Event::SeatsUpdated { seats } => seats.clone(),
        other => panic!("not seats_updated: {other:?}"),
    }
}

fn mute(user: &str, mic: bool) -> Request {
    Request::MuteMember {
        user: id(user),
        mic: Some(mic),
        camera: None,
    }
}

fn set_mic(on: bool) -> Request {
    Request::SetMedia {
        mic: Some(on),
        camera: None,
    }
}

#[tokio::test]
async fn a_locked_seat_is_shown_to_everyone_and_cannot_be_taken() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan", "viewer"]).await;
    let (mut fan, mut viewer) = (c.remove(0), c.remove(0));
    anchor.ok(lock(1, Some(true), None)).await;
    for client in [&mut anchor, &mut fan, &mut viewer] {
        let seats = seats_of(&client.expect("seats_updated").await);
        assert!(seats[1].locked && !seats[2].locked);
    }
    let code = fan
        .err(Request::RequestLink {
            user: None,
            seat: Some(1),
            timeout_s: None,
            open_camera: None,
        })
        .await;
    assert_eq!(code, ErrorCode::SeatLocked);
    // Any seat: the application is for seat 2 onward, and accepting puts the fan there.
    link(&mut anchor, &mut fan, std::slice::from_mut(&mut viewer)).await;
    let (_, joined) = Client::join(&s.url, "r", "late", Role::Audience).await;
    assert_eq!(
        joined.room.seats[2].user.as_ref().map(|u| u.user.as_str()),
        Some("fan")
    );
    assert!(joined.room.seats[1].locked, "a newcomer sees the lock");
    // Errors.
    assert_eq!(
        viewer.err(lock(3, Some(true), None)).await,
        ErrorCode::NotAllowed
    );
    assert_eq!(
        anchor.err(lock(0, Some(true), None)).await,
        ErrorCode::BadRequest
    );
    assert_eq!(
        anchor.err(lock(10, Some(true), None)).await,
        ErrorCode::BadRequest
    );
    viewer.expect_quiet().await;
}

#[tokio::test]
async fn a_member_moves_and_the_anchor_moves_members() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["a", "b", "viewer"]).await;
    let (mut a, mut rest) = (c.remove(0), c);
    link(&mut anchor, &mut a, &mut rest).await;
    let (mut b, mut viewer) = (rest.remove(0), rest.remove(0));
    link(&mut anchor, &mut b, std::slice::from_mut(&mut a)).await;
    viewer.expect("connected_users_updated").await;
    a.ok(Request::MoveSeat {
        seat: 5,
        user: None,
    })
    .await;
    for client in [&mut anchor, &mut a, &mut b, &mut viewer] {
        let seats = seats_of(&client.expect("seats_updated").await);
        assert_eq!(seats[5].user.as_ref().map(|u| u.user.as_str()), Some("a"));
        assert!(seats[1].user.is_none());
        match client.expect("connected_users_updated").await {
            Event::ConnectedUsersUpdated {
                users,
                joined,
                left,
            } => {
                assert!(joined.is_empty() && left.is_empty(), "a move, not a link");
                let order: Vec<_> = users.iter().map(|u| (u.user.to_string(), u.seat)).collect();
                assert_eq!(
                    order,
                    vec![
                        ("anchor".into(), Some(0)),
                        ("b".into(), Some(2)),
                        ("a".into(), Some(5))
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
    }
    anchor
        .ok(Request::MoveSeat {
            seat: 1,
            user: Some(id("b")),
        })
        .await;
    b.expect("seats_updated").await;
    // Errors: taken, locked, not linked, not allowed.
    let move_to = |seat, user: Option<&str>| Request::MoveSeat {
        seat,
        user: user.map(id),
    };
    assert_eq!(a.err(move_to(1, None)).await, ErrorCode::SeatTaken);
    anchor.ok(lock(7, Some(true), None)).await;
    assert_eq!(a.err(move_to(7, None)).await, ErrorCode::SeatLocked);
    assert_eq!(viewer.err(move_to(3, None)).await, ErrorCode::NotLinked);
    assert_eq!(a.err(move_to(3, Some("b"))).await, ErrorCode::NotAllowed);
    assert_eq!(anchor.err(move_to(3, None)).await, ErrorCode::NotAllowed);
    assert_eq!(
        anchor.err(move_to(3, Some("viewer"))).await,
        ErrorCode::NotLinked
    );
    assert_eq!(
        anchor.err(move_to(3, Some("ghost"))).await,
        ErrorCode::NotLinked
    );
    assert_eq!(a.err(move_to(12, None)).await, ErrorCode::BadRequest);
}

#[tokio::test]
async fn the_anchor_mutes_a_member_who_may_unmute_only_once_lifted() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan", "viewer"]).await;
    let (mut fan, mut viewer) = (c.remove(0), c.remove(0));
    link(&mut anchor, &mut fan, std::slice::from_mut(&mut viewer)).await;
    anchor.ok(mute("fan", false)).await;
    for client in [&mut anchor, &mut fan, &mut viewer] {
        assert_eq!(
            client.expect("media_state").await,
            Event::MediaState {
                user: id("fan"),
                mic: false,
                camera: false,
                by: MediaBy::Anchor,
                mic_blocked: true,
                camera_blocked: false,
            }
        );
    }
    assert_eq!(fan.err(set_mic(true)).await, ErrorCode::MutedByAnchor);
    fan.ok(set_mic(false)).await;
    anchor.ok(mute("fan", true)).await;
    match fan.expect("media_state").await {
        Event::MediaState {
            mic_blocked, by, ..
        } => assert_eq!((mic_blocked, by), (false, MediaBy::Anchor)),
        other => panic!("{other:?}"),
    }
    fan.ok(set_mic(true)).await;
    // Errors: wrong role, not linked, unknown user, a viewer's own media.
    assert_eq!(viewer.err(mute("fan", false)).await, ErrorCode::NotAllowed);
    assert_eq!(
        anchor.err(mute("viewer", false)).await,
        ErrorCode::NotLinked
    );
    assert_eq!(anchor.err(mute("ghost", false)).await, ErrorCode::NotLinked);
    assert_eq!(
        anchor.err(mute("anchor", false)).await,
        ErrorCode::NotAllowed
    );
    assert_eq!(viewer.err(set_mic(false)).await, ErrorCode::NotLinked);
}

#[tokio::test]
async fn an_audio_locked_seat_blocks_its_members_mic() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan"]).await;
    let fan = &mut c[0];
    link(&mut anchor, fan, &mut []).await;
    anchor.ok(lock(1, None, Some(true))).await;
    match fan.expect("media_state").await {
        Event::MediaState {
            mic_blocked, by, ..
        } => assert_eq!((mic_blocked, by), (true, MediaBy::Seat)),
        other => panic!("{other:?}"),
    }
    let seats = seats_of(&fan.expect("seats_updated").await);
    assert!(seats[1].audio_locked && !seats[1].locked);
    assert_eq!(fan.err(set_mic(true)).await, ErrorCode::MutedByAnchor);
}

#[tokio::test(start_paused = true)]
async fn a_kicked_user_is_told_and_banned_until_the_ban_ends() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["troll", "viewer"]).await;
    let (mut troll, mut viewer) = (c.remove(0), c.remove(0));
    link(&mut anchor, &mut troll, std::slice::from_mut(&mut viewer)).await;
    anchor
        .ok(Request::KickUser {
            user: id("troll"),
            ban_s: Some(60),
        })
        .await;
    assert_eq!(
        troll.expect("kicked").await,
        Event::Kicked {
            reason: KickReason::KickedByAnchor
        }
    );
    match viewer.expect("connected_users_updated").await {
        Event::ConnectedUsersUpdated { left, .. } => assert_eq!(left[0].user, "troll"),
        other => panic!("{other:?}"),
    }
    // The session is over: the socket answers like one that never joined.
    assert_eq!(troll.err(apply()).await, ErrorCode::NotInRoom);
    let join = |token| Request::Join {
        room: id("r"),
        user: id("troll"),
        role: Role::Audience,
        name: None,
        token,
    };
    assert_eq!(troll.err(join(None)).await, ErrorCode::Banned);
    tokio::time::advance(Duration::from_secs(59)).await;
    let mut again = Client::connect(&s.url, "troll").await;
    assert_eq!(again.err(join(None)).await, ErrorCode::Banned);
    tokio::time::advance(Duration::from_secs(2)).await;
    again.ok(join(None)).await;
    // Errors: wrong role, unknown user, the anchor, too long a ban.
    let kick = |user: &str, ban_s| Request::KickUser {
        user: id(user),
        ban_s,
    };
    assert_eq!(viewer.err(kick("troll", None)).await, ErrorCode::NotAllowed);
    assert_eq!(anchor.err(kick("ghost", None)).await, ErrorCode::NotFound);
    assert_eq!(
        anchor.err(kick("anchor", None)).await,
        ErrorCode::NotAllowed
    );
    assert_eq!(
        anchor.err(kick("viewer", Some(86_401))).await,
        ErrorCode::BadRequest
    );
}
