//! Hostile and mistaken input: each gets the contract's error, the connection stays open, and no
//! other user's state or inbox changes.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use miclink_protocol::{ErrorCode, Event, Request, Role, ServerMessage};
use miclink_signaling::SignalingConfig;

#[derive(Debug, Clone, Copy)]
enum Sender {
    /// A joined viewer.
    Viewer,
    /// The joined anchor.
    Anchor,
    /// A socket that has not joined.
    Fresh,
}

enum Frame {
    Text(String),
    Binary,
    Req(Request),
}

#[derive(Debug, PartialEq)]
enum Expect {
    /// An `error` event with `bad_request` (no id to reply to).
    ErrorEvent,
    /// A failed reply with this code.
    Reply(ErrorCode),
}

fn text(s: &str) -> Frame {
    Frame::Text(s.to_owned())
}

fn cases() -> Vec<(&'static str, Sender, Frame, Expect)> {
    use ErrorCode::*;
    use Expect::{ErrorEvent, Reply};
    use Sender::*;
    let oversize = format!(
        r#"{{"id":1,"type":"leave","pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let seat = |seat| {
        Frame::Req(Request::RequestLink {
            user: None,
            seat: Some(seat),
            timeout_s: None,
            open_camera: None,
        })
    };
    vec![
        ("not json", Viewer, text("not json"), ErrorEvent),
        ("json array", Viewer, text("[1,2,3]"), ErrorEvent),
        ("json string", Viewer, text("\"leave\""), ErrorEvent),
        ("binary frame", Viewer, Frame::Binary, ErrorEvent),
        (
            "oversize frame is not executed",
            Viewer,
            Frame::Text(oversize),
            ErrorEvent,
        ),
        (
            "unknown type",
            Viewer,
            text(r#"{"id":1,"type":"fly"}"#),
            ErrorEvent,
        ),
        (
            "missing id is not executed",
            Viewer,
            text(r#"{"type":"leave"}"#),
            ErrorEvent,
        ),
        (
            "negative id",
            Viewer,
            text(r#"{"id":-3,"type":"leave"}"#),
            ErrorEvent,
        ),
        ("missing type", Viewer, text(r#"{"id":3}"#), ErrorEvent),
        (
            "room id with a space",
            Fresh,
            text(r#"{"id":1,"type":"join","room":"bad room","user":"u","role":"audience"}"#),
            Reply(BadRequest),
        ),
        (
            "user id over 64 characters",
            Fresh,
            Frame::Text(format!(
                r#"{{"id":1,"type":"join","room":"r","user":"{}","role":"audience"}}"#,
                "u".repeat(65)
            )),
            Reply(BadRequest),
        ),
        (
            "name over 64 characters",
            Fresh,
            Frame::Text(format!(
                r#"{{"id":1,"type":"join","room":"r","user":"u","role":"audience","name":"{}"}}"#,
                "é".repeat(65)
            )),
            Reply(BadRequest),
        ),
        (
            "unknown role",
            Fresh,
            text(r#"{"id":1,"type":"join","room":"r","user":"u","role":"king"}"#),
            Reply(BadRequest),
        ),
        (
            "field of the wrong type",
            Viewer,
            text(r#"{"id":1,"type":"respond_link","user":"anchor","accept":"yes"}"#),
            Reply(BadRequest),
        ),
        (
            "unknown peer connection kind",
            Viewer,
            text(r#"{"id":1,"type":"ice","pc":"sideways","candidate":{"candidate":""}}"#),
            Reply(BadRequest),
        ),
        (
            "request before join",
            Fresh,
            Frame::Req(Request::Leave),
            Reply(NotInRoom),
        ),
        (
            "join twice on one socket",
            Viewer,
            Frame::Req(Request::Join {
                room: id("r"),
                user: id("eve"),
                role: Role::Audience,
                name: None,
                token: None,
            }),
            Reply(AlreadyJoined),
        ),
        (
            "audience join of a room that is not live",
            Fresh,
            text(r#"{"id":1,"type":"join","room":"nowhere","user":"u","role":"audience"}"#),
            Reply(RoomNotFound),
        ),
        (
            "second anchor",
            Fresh,
            text(r#"{"id":1,"type":"join","room":"r","user":"mallory","role":"anchor"}"#),
            Reply(RoomExists),
        ),
        (
            "audience join as the anchor's identity does not kick the anchor",
            Fresh,
            text(r#"{"id":1,"type":"join","room":"r","user":"anchor","role":"audience"}"#),
            Reply(BadRequest),
        ),
        (
            "resume of an unknown session",
            Fresh,
            Frame::Req(Request::Resume {
                session: "00ff".into(),
            }),
            Reply(SessionExpired),
        ),
        (
            "viewer disconnects a member",
            Viewer,
            Frame::Req(Request::DisconnectUser { user: id("fan") }),
            Reply(NotAllowed),
        ),
        (
            "viewer lists the audience",
            Viewer,
            Frame::Req(Request::ListAudience {
                offset: None,
                limit: None,
            }),
            Reply(NotAllowed),
        ),
        (
            "viewer invites",
            Viewer,
            Frame::Req(invite("fan", true)),
            Reply(NotAllowed),
        ),
        (
            "viewer terminates",
            Viewer,
            Frame::Req(Request::TerminateLink),
            Reply(NotLinked),
        ),
        (
            "viewer publishes",
            Viewer,
            Frame::Req(Request::Publish { sdp: "v=0".into() }),
            Reply(NotLinked),
        ),
        (
            "viewer answers an invitation that does not exist",
            Viewer,
            Frame::Req(respond("anchor", true)),
            Reply(NotFound),
        ),
        (
            "viewer cancels nothing",
            Viewer,
            Frame::Req(Request::CancelLink { user: None }),
            Reply(NotFound),
        ),
        ("viewer asks for seat 0", Viewer, seat(0), Reply(BadRequest)),
        (
            "viewer asks for seat 99",
            Viewer,
            seat(99),
            Reply(BadRequest),
        ),
        (
            "viewer asks for a taken seat",
            Viewer,
            seat(1),
            Reply(SeatTaken),
        ),
        (
            "absurd timeout",
            Viewer,
            Frame::Req(Request::RequestLink {
                user: None,
                seat: None,
                timeout_s: Some(10_000_000),
                open_camera: None,
            }),
            Reply(BadRequest),
        ),
        (
            "anchor terminates",
            Anchor,
            Frame::Req(Request::TerminateLink),
            Reply(NotLinked),
        ),
        (
            "anchor applies",
            Anchor,
            Frame::Req(apply()),
            Reply(NotAllowed),
        ),
        (
            "anchor invites a ghost",
            Anchor,
            Frame::Req(invite("ghost", true)),
            Reply(NotFound),
        ),
        (
            "anchor invites a linked member",
            Anchor,
            Frame::Req(invite("fan", true)),
            Reply(AlreadyLinked),
        ),
        (
            "anchor disconnects a ghost",
            Anchor,
            Frame::Req(Request::DisconnectUser { user: id("ghost") }),
            Reply(NotLinked),
        ),
        (
            "anchor disconnects a viewer",
            Anchor,
            Frame::Req(Request::DisconnectUser { user: id("eve") }),
            Reply(NotLinked),
        ),
        (
            "anchor answers a ghost",
            Anchor,
            Frame::Req(respond("ghost", true)),
            Reply(NotFound),
        ),
        (
            "anchor cancels an invitation that does not exist",
            Anchor,
            Frame::Req(Request::CancelLink {
                user: Some(id("eve")),
            }),
            Reply(NotFound),
        ),
    ]
}

/// Read the answer to a bad frame: the first reply or `error` event, skipping audience counts.
async fn answer(c: &mut Client) -> Expect {
    loop {
        match c.recv().await {
            ServerMessage::Reply(r) => {
                assert!(!r.ok, "{}: bad input succeeded: {r:?}", c.user);
                return Expect::Reply(r.error.expect("error body").code);
            }
            ServerMessage::Event(Event::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::BadRequest);
                return Expect::ErrorEvent;
            }
            ServerMessage::Event(Event::AudienceCount { .. }) => continue,
            ServerMessage::Event(e) => panic!("{}: unexpected {e:?}", c.user),
        }
    }
}

#[tokio::test]
async fn each_bad_input_gets_its_error_and_changes_nothing() {
    for (name, from, frame, expect) in cases() {
        let s = default_server().await;
        let (mut anchor, mut c) = room(&s.url, &["fan", "eve"]).await;
        let (mut fan, mut eve) = (c.remove(0), c.remove(0));
        link(&mut anchor, &mut fan, std::slice::from_mut(&mut eve)).await;
        let mut fresh = Client::connect(&s.url, "fresh").await;
        let sender = match from {
            Sender::Viewer => &mut eve,
            Sender::Anchor => &mut anchor,
            Sender::Fresh => &mut fresh,
        };
        match frame {
            Frame::Text(t) => sender.send_text(t).await,
            Frame::Binary => sender.send_binary(vec![0xff, 0x00, 0x7b]).await,
            Frame::Req(r) => {
                let reply = sender.request(r).await;
                let code = ok_or_code(reply).expect_err(name);
                assert_eq!(Expect::Reply(code), expect, "{name}");
                assert!(sender.still_answers().await, "{name}: socket still open");
                check_untouched(name, &mut anchor, &mut fan, &mut eve).await;
                continue;
            }
        }
        assert_eq!(answer(sender).await, expect, "{name}");
        assert!(sender.still_answers().await, "{name}: socket still open");
        check_untouched(name, &mut anchor, &mut fan, &mut eve).await;
    }
}

/// Nobody else heard anything, the link stands and the viewer is still a viewer.
async fn check_untouched(name: &str, anchor: &mut Client, fan: &mut Client, eve: &mut Client) {
    anchor.expect_quiet().await;
    fan.expect_quiet().await;
    assert_eq!(
        fan.err(apply()).await,
        ErrorCode::AlreadyLinked,
        "{name}: fan still linked"
    );
    let page: miclink_protocol::ListAudienceResult = serde_json::from_value(
        anchor
            .ok(Request::ListAudience {
                offset: None,
                limit: None,
            })
            .await,
    )
    .expect("list");
    let viewers: Vec<_> = page.users.iter().map(|u| u.user.to_string()).collect();
    assert_eq!(
        viewers,
        vec!["eve".to_string()],
        "{name}: eve still watching"
    );
    eve.expect_quiet().await;
}

const SECRET: &str = "a test secret of enough length";

fn token(secret: &str, room: &str, sub: &str, role: &str, exp_from_now: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let claims =
        serde_json::json!({"room": room, "sub": sub, "role": role, "exp": now + exp_from_now});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

#[tokio::test]
async fn tokens_are_checked_when_a_secret_is_set() {
    let s = server(SignalingConfig {
        jwt_secret: Some(SECRET.into()),
        ..SignalingConfig::default()
    })
    .await;
    let mut anchor = Client::connect(&s.url, "anchor").await;
    anchor
        .join_as(
            "r",
            Role::Anchor,
            Some(token(SECRET, "r", "anchor", "anchor", 600)),
        )
        .await
        .expect("a valid token joins");
    let refused: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbage", Some("not.a.jwt".into())),
        ("expired", Some(token(SECRET, "r", "fan", "audience", -5))),
        (
            "forged",
            Some(token(
                "another secret, also long",
                "r",
                "fan",
                "audience",
                600,
            )),
        ),
        (
            "other room",
            Some(token(SECRET, "r2", "fan", "audience", 600)),
        ),
        (
            "other user",
            Some(token(SECRET, "r", "eve", "audience", 600)),
        ),
        ("other role", Some(token(SECRET, "r", "fan", "anchor", 600))),
    ];
    let mut fan = Client::connect(&s.url, "fan").await;
    for (name, tok) in refused {
        assert_eq!(
            fan.join_as("r", Role::Audience, tok).await.err(),
            Some(ErrorCode::Unauthorized),
            "{name}"
        );
    }
    anchor.expect_quiet().await;
    fan.join_as(
        "r",
        Role::Audience,
        Some(token(SECRET, "r", "fan", "audience", 600)),
    )
    .await
    .expect("the right token joins on the same socket");
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed() {
    let s = default_server().await;
    let (mut anchor, mut c) = room(&s.url, &["fan", "eve"]).await;
    let (mut fan, mut eve) = (c.remove(0), c.remove(0));
    link(&mut anchor, &mut fan, std::slice::from_mut(&mut eve)).await;

    // Over 50 frames a second: rate_limited replies, and the socket stays.
    for i in 0..300u64 {
        eve.send_text(format!(r#"{{"id":{i},"type":"cancel_link"}}"#))
            .await;
    }
    // Replies carry ids; those refused at the socket may overtake those answered by the hub.
    let mut limited = 0;
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < 300 {
        let ServerMessage::Reply(reply) = eve.recv().await else {
            continue;
        };
        assert!(answered.insert(reply.id), "one reply per request");
        match reply.error.expect("cancel of nothing fails").code {
            ErrorCode::RateLimited => limited += 1,
            ErrorCode::NotFound => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(limited >= 100, "only {limited} of 300 frames were limited");
    assert!(eve.still_answers().await, "the socket stays open");

    // Past ten times the limit: closed with 1008.
    for i in 0..3000u64 {
        if !eve
            .try_send_text(format!(r#"{{"id":{i},"type":"cancel_link"}}"#))
            .await
        {
            break;
        }
    }
    let (_, code) = eve.until_closed().await;
    assert_eq!(code, Some(1008));

    // Nobody else noticed, and the flooder's seat-less place is kept for a resume.
    anchor.expect_quiet().await;
    fan.expect_quiet().await;
    assert_eq!(fan.err(apply()).await, ErrorCode::AlreadyLinked);
}
