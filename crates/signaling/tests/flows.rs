//! Every seed flow of the contract over a real WebSocket on port 0, one test per behaviour.
//! Timeouts and grace periods run on paused tokio time, never on real sleeps.

mod common;

use std::time::Duration;

use common::*;
use miclink_protocol::{
    CancelReason, EndReason, ErrorCode, Event, KickReason, ListAudienceResult, RejectReason,
    Request, Role,
};
use miclink_seats::SeatsConfig;
use miclink_signaling::SignalingConfig;

fn users_of(event: &Event) -> (Vec<String>, Vec<String>, Vec<String>) {
    let Event::ConnectedUsersUpdated {
        users,
        joined,
        left,
    } = event
    else {
        panic!("not connected_users_updated: {event:?}");
    };
    let names =
        |v: &Vec<miclink_protocol::UserInfo>| v.iter().map(|u| u.user.to_string()).collect();
    (names(users), names(joined), names(left))
}

#[tokio::test]
async fn apply_then_accept_links_the_applicant_for_everyone() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan", "viewer"]).await;
    let [mut fan, mut viewer] = [c.remove(0), c.remove(0)];
    fan.ok(apply()).await;
    match anchor.expect("link_request").await {
        Event::LinkRequest {
            from,
            seat,
            open_camera,
            timeout_s,
            ..
        } => {
            assert_eq!(from.user, "fan");
            assert_eq!((seat, open_camera, timeout_s), (None, true, 60));
        }
        _ => unreachable!(),
    }
    anchor.ok(respond("fan", true)).await;
    assert_eq!(
        fan.expect("link_accepted").await,
        Event::LinkAccepted { user: id("anchor") }
    );
    for c in [&mut anchor, &mut fan, &mut viewer] {
        let e = c.expect("connected_users_updated").await;
        assert_eq!(
            users_of(&e),
            (
                vec!["anchor".into(), "fan".into()],
                vec!["fan".into()],
                vec![]
            )
        );
    }
    viewer.expect_quiet().await;
}

#[tokio::test]
async fn apply_then_reject_tells_the_applicant() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan"]).await;
    let fan = &mut c[0];
    fan.ok(apply()).await;
    anchor.expect("link_request").await;
    anchor.ok(respond("fan", false)).await;
    assert_eq!(
        fan.expect("link_rejected").await,
        Event::LinkRejected {
            user: id("anchor"),
            reason: RejectReason::Rejected
        }
    );
    anchor.expect_quiet().await;
}

#[tokio::test]
async fn apply_then_cancel_tells_the_anchor() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan"]).await;
    let fan = &mut c[0];
    fan.ok(apply()).await;
    anchor.expect("link_request").await;
    fan.ok(Request::CancelLink { user: None }).await;
    assert_eq!(
        anchor.expect("link_cancelled").await,
        Event::LinkCancelled {
            user: id("fan"),
            reason: CancelReason::Cancelled
        }
    );
    assert_eq!(anchor.err(respond("fan", true)).await, ErrorCode::NotFound);
}

#[tokio::test(start_paused = true)]
async fn apply_then_timeout_tells_both_sides() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan"]).await;
    let fan = &mut c[0];
    fan.ok(Request::RequestLink {
        user: None,
        seat: None,
        timeout_s: Some(5),
        open_camera: None,
    })
    .await;
    anchor.expect("link_request").await;
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(
        fan.expect("link_timeout").await,
        Event::LinkTimeout { user: id("anchor") }
    );
    assert_eq!(
        anchor.expect("link_cancelled").await,
        Event::LinkCancelled {
            user: id("fan"),
            reason: CancelReason::Timeout
        }
    );
}

#[tokio::test]
async fn invite_then_accept_with_mic_only() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["guest"]).await;
    let guest = &mut c[0];
    anchor.ok(invite("guest", false)).await;
    match guest.expect("link_request").await {
        Event::LinkRequest {
            from, open_camera, ..
        } => {
            assert_eq!(from.user, "anchor");
            assert!(!open_camera);
        }
        _ => unreachable!(),
    }
    guest.ok(respond("anchor", true)).await;
    assert_eq!(
        anchor.expect("link_accepted").await,
        Event::LinkAccepted { user: id("guest") }
    );
    let Event::ConnectedUsersUpdated { joined, .. } =
        anchor.expect("connected_users_updated").await
    else {
        unreachable!()
    };
    assert_eq!(joined[0].user, "guest");
    // Nothing is published yet (no media plane here): mic and camera are exact.
    assert!(!joined[0].mic && !joined[0].camera);
    // The camera starts muted by the guest's own choice, not blocked: they may turn it on.
    guest
        .ok(Request::SetMedia {
            mic: None,
            camera: Some(true),
        })
        .await;
}

#[tokio::test]
async fn invite_then_reject_tells_the_anchor() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["guest"]).await;
    let guest = &mut c[0];
    anchor.ok(invite("guest", true)).await;
    guest.expect("link_request").await;
    guest.ok(respond("anchor", false)).await;
    assert_eq!(
        anchor.expect("link_rejected").await,
        Event::LinkRejected {
            user: id("guest"),
            reason: RejectReason::Rejected
        }
    );
}

#[tokio::test]
async fn anchor_disconnects_a_member() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan", "viewer"]).await;
    let (mut fan, mut viewer) = (c.remove(0), c.remove(0));
    link(&mut anchor, &mut fan, std::slice::from_mut(&mut viewer)).await;
    anchor.ok(Request::DisconnectUser { user: id("fan") }).await;
    assert_eq!(
        fan.expect("link_terminated").await,
        Event::LinkTerminated { by: id("anchor") }
    );
    for c in [&mut anchor, &mut fan, &mut viewer] {
        let e = c.expect("connected_users_updated").await;
        assert_eq!(
            users_of(&e),
            (vec!["anchor".into()], vec![], vec!["fan".into()])
        );
    }
    assert_eq!(fan.err(Request::TerminateLink).await, ErrorCode::NotLinked);
}

#[tokio::test]
async fn member_terminates_their_link() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan", "other"]).await;
    let (mut fan, mut other) = (c.remove(0), c.remove(0));
    link(&mut anchor, &mut fan, std::slice::from_mut(&mut other)).await;
    link(&mut anchor, &mut other, std::slice::from_mut(&mut fan)).await;
    fan.ok(Request::TerminateLink).await;
    for c in [&mut anchor, &mut other] {
        match c.expect("link_exited").await {
            Event::LinkExited { user } => assert_eq!(user.user, "fan"),
            _ => unreachable!(),
        }
        c.expect("connected_users_updated").await;
    }
    fan.expect("connected_users_updated").await;
}

#[tokio::test]
async fn tenth_audience_member_is_refused_while_nine_are_linked() {
    let s = default_server().await;
    let names: Vec<String> = (1..=10).map(|i| format!("a{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (mut anchor, mut members) = room(&s.url, &refs).await;
    for i in 0..9 {
        let mut member = members.remove(i);
        link(&mut anchor, &mut member, &mut members).await;
        members.insert(i, member);
    }
    let tenth = &mut members[9];
    assert_eq!(tenth.err(apply()).await, ErrorCode::SeatsFull);
    assert_eq!(anchor.err(invite("a10", true)).await, ErrorCode::SeatsFull);
}

#[tokio::test]
async fn accept_while_full_leaves_the_request_pending() {
    let config = SignalingConfig {
        seats: SeatsConfig {
            max_seats: 2,
            ..SeatsConfig::default()
        },
        ..SignalingConfig::default()
    };
    let s = server(config).await;
    let (mut anchor, mut c) = room(&s.url, &["first", "second"]).await;
    let (mut first, mut second) = (c.remove(0), c.remove(0));
    second.ok(apply()).await;
    anchor.expect("link_request").await;
    link(&mut anchor, &mut first, std::slice::from_mut(&mut second)).await;
    assert_eq!(
        anchor.err(respond("second", true)).await,
        ErrorCode::SeatsFull
    );
    second.expect_quiet().await;
    first.ok(Request::TerminateLink).await;
    anchor.expect("link_exited").await;
    anchor.expect("connected_users_updated").await;
    anchor.ok(respond("second", true)).await;
    second.expect("connected_users_updated").await;
    second.expect("link_accepted").await;
}

#[tokio::test]
async fn anchor_leaving_ends_the_room_for_everyone() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan", "viewer"]).await;
    let (mut fan, mut viewer) = (c.remove(0), c.remove(0));
    link(&mut anchor, &mut fan, std::slice::from_mut(&mut viewer)).await;
    anchor.ok(Request::Leave).await;
    for c in [&mut fan, &mut viewer] {
        assert_eq!(
            c.expect("room_ended").await,
            Event::RoomEnded {
                reason: EndReason::AnchorLeft
            }
        );
    }
    let (_, again) = Client::join(&s.url, "r", "anchor2", Role::Anchor).await;
    assert_eq!(again.room.anchor, "anchor2", "the room id is free again");
}

#[tokio::test(start_paused = true)]
async fn resume_within_grace_keeps_the_seat() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan"]).await;
    let mut fan = c.remove(0);
    link(&mut anchor, &mut fan, &mut []).await;
    let session = fan.drop_connection().expect("session");
    s.wait_for_connections(1).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut back = Client::connect(&s.url, "fan").await;
    let reply = back.ok(Request::Resume { session }).await;
    let result: miclink_protocol::JoinResult = serde_json::from_value(reply).expect("join result");
    assert_eq!(result.me.seat, Some(1));
    tokio::time::advance(Duration::from_secs(30)).await;
    anchor.expect_quiet().await;
    back.ok(Request::TerminateLink).await;
    anchor.expect("link_exited").await;
}

#[tokio::test(start_paused = true)]
async fn events_missed_while_disconnected_arrive_on_resume() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["guest"]).await;
    let session = c.remove(0).drop_connection().expect("session");
    s.wait_for_connections(1).await;
    anchor.ok(invite("guest", true)).await;
    let mut back = Client::connect(&s.url, "guest").await;
    back.ok(Request::Resume { session }).await;
    back.expect("link_request").await;
}

#[tokio::test(start_paused = true)]
async fn a_member_lost_past_grace_ends_their_link() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan", "viewer"]).await;
    let (mut fan, mut viewer) = (c.remove(0), c.remove(0));
    link(&mut anchor, &mut fan, std::slice::from_mut(&mut viewer)).await;
    let session = fan.drop_connection().expect("session");
    s.wait_for_connections(2).await;
    tokio::time::advance(Duration::from_secs(16)).await;
    match anchor.expect("link_exited").await {
        Event::LinkExited { user } => assert_eq!(user.user, "fan"),
        _ => unreachable!(),
    }
    let e = viewer.expect("connected_users_updated").await;
    assert_eq!(users_of(&e).2, vec!["fan".to_string()]);
    let mut back = Client::connect(&s.url, "fan").await;
    assert_eq!(
        back.err(Request::Resume { session }).await,
        ErrorCode::SessionExpired
    );
}

#[tokio::test(start_paused = true)]
async fn the_anchor_lost_past_grace_ends_the_room() {
    let s = default_server().await;
    let (anchor, mut c) = room(&s.url, &["viewer"]).await;
    drop(anchor.drop_connection());
    s.wait_for_connections(1).await;
    tokio::time::advance(Duration::from_secs(16)).await;
    assert_eq!(
        c[0].expect("room_ended").await,
        Event::RoomEnded {
            reason: EndReason::AnchorLost
        }
    );
}

#[tokio::test]
async fn a_second_join_of_the_same_user_kicks_the_first_session() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan"]).await;
    let mut old = c.remove(0);
    link(&mut anchor, &mut old, &mut []).await;
    let (mut new, result) = Client::join(&s.url, "r", "fan", Role::Audience).await;
    assert_eq!(result.me.seat, Some(1), "the new session keeps the seat");
    let (events, code) = old.until_closed().await;
    assert!(events.contains(&Event::Kicked {
        reason: KickReason::Replaced
    }));
    assert_eq!(code, Some(4001));
    anchor.expect_quiet().await;
    new.ok(Request::TerminateLink).await;
    anchor.expect("link_exited").await;
}

#[tokio::test(start_paused = true)]
async fn audience_count_is_sent_at_most_every_half_second() {
    let s = default_server().await;
    let (mut anchor, _) = Client::join(&s.url, "r", "anchor", Role::Anchor).await;
    let mut viewers = Vec::new();
    for i in 0..20 {
        viewers.push(
            Client::join(&s.url, "r", &format!("v{i}"), Role::Audience)
                .await
                .0,
        );
    }
    tokio::time::advance(Duration::from_millis(600)).await;
    let mut counts = Vec::new();
    while counts.last() != Some(&20) {
        if let miclink_protocol::ServerMessage::Event(Event::AudienceCount { count }) =
            anchor.recv().await
        {
            counts.push(count);
        }
    }
    assert!(counts.len() <= 2, "20 joins in one interval: {counts:?}");
}

#[tokio::test]
async fn list_audience_pages_the_viewers() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["v1", "v2", "v3"]).await;
    link(&mut anchor, &mut c[0], &mut []).await;
    let page: ListAudienceResult = serde_json::from_value(
        anchor
            .ok(Request::ListAudience {
                offset: Some(0),
                limit: Some(1),
            })
            .await,
    )
    .expect("list");
    assert_eq!(page.total, 2, "linked members are not viewers");
    assert_eq!(page.users.len(), 1);
    assert_eq!(page.users[0].user, "v2");
    assert_eq!(
        c[1].err(Request::ListAudience {
            offset: None,
            limit: None
        })
        .await,
        ErrorCode::NotAllowed
    );
}

#[tokio::test]
async fn shutdown_ends_every_room_then_closes_every_socket() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["viewer"]).await;
    let signaling = s.signaling.clone();
    let shutdown = tokio::spawn(async move { signaling.shutdown().await });
    for c in [&mut anchor, &mut c[0]] {
        let (events, code) = c.until_closed().await;
        assert!(events.contains(&Event::RoomEnded {
            reason: EndReason::ServerShutdown
        }));
        assert_eq!(code, Some(1001));
    }
    shutdown.await.expect("shutdown finishes");
    let mut late = Client::connect(&s.url, "late").await;
    let (_, code) = late.until_closed().await;
    assert_eq!(code, Some(1001), "no new sessions while shutting down");
}

#[tokio::test]
async fn media_requests_follow_the_seats() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["viewer"]).await;
    let publish = || Request::Publish {
        sdp: "v=0\r\n".into(),
    };
    assert_eq!(c[0].err(publish()).await, ErrorCode::NotLinked);
    assert_eq!(anchor.err(publish()).await, ErrorCode::NotImplemented);
}
