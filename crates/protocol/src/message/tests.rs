//! Round trips against literal JSON written the way docs/protocol.md writes it.

use super::*;
use serde_json::json;

fn id(s: &str) -> Ident {
    Ident::new(s).expect("valid ident in test")
}

fn alice() -> UserInfo {
    UserInfo {
        user: id("alice"),
        name: Name::new("Alice").expect("valid name"),
        role: Role::Audience,
        seat: Some(1),
        mic: true,
        camera: false,
        mic_blocked: false,
        camera_blocked: false,
    }
}

/// Parse `text` as a request and check it equals `expected`, and that writing it back gives the
/// same JSON value.
fn request_round_trip(text: Value, expected_id: u64, expected: Request) {
    let (got_id, got) = parse_request(&text.to_string()).expect("parses");
    assert_eq!(got_id, expected_id);
    assert_eq!(got, expected);
    let written = serde_json::to_value(ClientMessage {
        id: got_id,
        request: got,
    })
    .expect("serializes");
    assert_eq!(written, text);
}

#[test]
fn join_request() {
    request_round_trip(
        json!({"id": 1, "type": "join", "room": "r1", "user": "alice", "role": "audience", "name": "Alice", "token": "t"}),
        1,
        Request::Join {
            room: id("r1"),
            user: id("alice"),
            role: Role::Audience,
            name: Some(Name::new("Alice").expect("valid")),
            token: Some("t".into()),
        },
    );
    request_round_trip(
        json!({"id": 2, "type": "join", "room": "r1", "user": "bob", "role": "anchor"}),
        2,
        Request::Join {
            room: id("r1"),
            user: id("bob"),
            role: Role::Anchor,
            name: None,
            token: None,
        },
    );
}

#[test]
fn link_requests() {
    request_round_trip(
        json!({"id": 3, "type": "request_link", "seat": 2, "timeout_s": 0, "open_camera": false}),
        3,
        Request::RequestLink {
            user: None,
            seat: Some(2),
            timeout_s: Some(0),
            open_camera: Some(false),
        },
    );
    request_round_trip(
        json!({"id": 4, "type": "request_link", "user": "alice"}),
        4,
        Request::RequestLink {
            user: Some(id("alice")),
            seat: None,
            timeout_s: None,
            open_camera: None,
        },
    );
    request_round_trip(
        json!({"id": 5, "type": "cancel_link"}),
        5,
        Request::CancelLink { user: None },
    );
    request_round_trip(
        json!({"id": 6, "type": "respond_link", "user": "alice", "accept": true}),
        6,
        Request::RespondLink {
            user: id("alice"),
            accept: true,
        },
    );
    request_round_trip(
        json!({"id": 7, "type": "disconnect_user", "user": "alice"}),
        7,
        Request::DisconnectUser { user: id("alice") },
    );
    request_round_trip(
        json!({"id": 8, "type": "terminate_link"}),
        8,
        Request::TerminateLink,
    );
    request_round_trip(json!({"id": 9, "type": "leave"}), 9, Request::Leave);
    request_round_trip(
        json!({"id": 10, "type": "resume", "session": "abc"}),
        10,
        Request::Resume {
            session: "abc".into(),
        },
    );
    request_round_trip(
        json!({"id": 11, "type": "list_audience", "offset": 50, "limit": 50}),
        11,
        Request::ListAudience {
            offset: Some(50),
            limit: Some(50),
        },
    );
}

#[test]
fn an_empty_user_in_request_link_means_an_application() {
    let (_, req) = parse_request(r#"{"id":1,"type":"request_link","user":""}"#).expect("parses");
    assert_eq!(
        req,
        Request::RequestLink {
            user: None,
            seat: None,
            timeout_s: None,
            open_camera: None
        }
    );
}

#[test]
fn media_requests() {
    request_round_trip(
        json!({"id": 12, "type": "publish", "sdp": "v=0\r\n"}),
        12,
        Request::Publish {
            sdp: "v=0\r\n".into(),
        },
    );
    request_round_trip(
        json!({"id": 13, "type": "subscribe_answer", "sdp": "v=0\r\n"}),
        13,
        Request::SubscribeAnswer {
            sdp: "v=0\r\n".into(),
            offer_id: None,
        },
    );
    request_round_trip(
        json!({"id": 16, "type": "subscribe_answer", "sdp": "v=0\r\n", "offer_id": 7}),
        16,
        Request::SubscribeAnswer {
            sdp: "v=0\r\n".into(),
            offer_id: Some(7),
        },
    );
    request_round_trip(
        json!({"id": 15, "type": "resubscribe"}),
        15,
        Request::Resubscribe,
    );
    request_round_trip(
        json!({"id": 16, "type": "ice_servers"}),
        16,
        Request::IceServers,
    );
    request_round_trip(
        json!({"id": 14, "type": "ice", "pc": "publish", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}}),
        14,
        Request::Ice {
            pc: PeerConnectionKind::Publish,
            candidate: IceCandidate {
                candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            },
        },
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let (_, req) =
        parse_request(r#"{"id":1,"type":"leave","future_field":[1,2]}"#).expect("parses");
    assert_eq!(req, Request::Leave);
}

#[test]
fn frames_without_a_usable_id_or_type_are_frame_errors() {
    for text in [
        "not json",
        "[1,2]",
        "\"str\"",
        r#"{"type":"leave"}"#,
        r#"{"id":-1,"type":"leave"}"#,
        r#"{"id":"1","type":"leave"}"#,
        r#"{"id":1}"#,
        r#"{"id":1,"type":"fly"}"#,
        r#"{"id":1,"type":7}"#,
    ] {
        assert!(
            matches!(parse_request(text), Err(ParseError::Frame(_))),
            "{text} should be a frame error"
        );
    }
}

#[test]
fn bad_fields_keep_the_id_for_the_reply() {
    for text in [
        r#"{"id":5,"type":"join","room":"bad room","user":"u","role":"anchor"}"#,
        r#"{"id":5,"type":"join","room":"r","user":"u","role":"king"}"#,
        r#"{"id":5,"type":"join","room":"r","role":"anchor"}"#,
        r#"{"id":5,"type":"respond_link","user":"u"}"#,
        r#"{"id":5,"type":"request_link","seat":-1}"#,
    ] {
        match parse_request(text) {
            Err(ParseError::Fields { id, .. }) => assert_eq!(id, 5),
            other => panic!("{text}: expected a field error, got {other:?}"),
        }
    }
}

fn reply_round_trip(text: Value, expected: Reply) {
    let got: ServerMessage = serde_json::from_value(text.clone()).expect("parses");
    assert_eq!(got, ServerMessage::Reply(expected.clone()));
    assert_eq!(serde_json::to_value(&expected).expect("serializes"), text);
}

#[test]
fn replies() {
    reply_round_trip(
        json!({"type":"reply","id":1,"ok":true,"result":{"request":"r7"}}),
        Reply::ok(
            1,
            RequestLinkResult {
                request: "r7".into(),
            },
        ),
    );
    reply_round_trip(
        json!({"type":"reply","id":2,"ok":false,"error":{"code":"seats_full","message":"all 9 seats are taken"}}),
        Reply::err(2, ErrorCode::SeatsFull, "all 9 seats are taken"),
    );
    reply_round_trip(
        json!({"type":"reply","id":3,"ok":true,"result":{}}),
        Reply::ok(3, Empty {}),
    );
}

#[test]
fn join_result() {
    let text = json!({
        "room": {
            "room": "r1", "anchor": "bob", "max_seats": 2,
            "seats": [
                {"index": 0, "user": {"user": "bob", "name": "Bob", "role": "anchor", "seat": 0, "mic": true, "camera": true}, "locked": false, "audio_locked": false, "video_locked": false},
                {"index": 1, "user": null, "locked": false, "audio_locked": false, "video_locked": false}
            ],
            "audience_count": 1
        },
        "me": {"user": "alice", "name": "Alice", "role": "audience", "seat": null, "mic": false, "camera": false},
        "ice_servers": [{"urls": ["turn:turn.example:3478"], "username": "u", "credential": "c"}],
        "session": "s1"
    });
    let parsed: JoinResult = serde_json::from_value(text.clone()).expect("parses");
    assert_eq!(parsed.room.seats.len(), 2);
    assert_eq!(parsed.me.seat, None);
    assert!(parsed.requests.is_empty(), "absent means none pending");
    // A version 2 server's reply has no metadata: read as "", and this server always says it.
    assert_eq!(parsed.metadata, "");
    let mut with_metadata = text;
    with_metadata["metadata"] = json!("");
    assert_eq!(
        serde_json::to_value(&parsed).expect("serializes"),
        with_metadata
    );
}

#[test]
fn resume_result_lists_pending_requests() {
    let text = json!({
        "room": {"room": "r1", "anchor": "bob", "max_seats": 1,
                 "seats": [{"index": 0, "user": null, "locked": false, "audio_locked": false, "video_locked": false}], "audience_count": 1},
        "me": {"user": "bob", "name": "Bob", "role": "anchor", "seat": 0, "mic": true, "camera": true},
        "ice_servers": [],
        "session": "s1",
        "metadata": "{\"title\":\"Blue mug\"}",
        "requests": [{"request": "q1",
                      "from": {"user": "al", "name": "Al", "role": "audience", "seat": null, "mic": false, "camera": false},
                      "to": "bob", "seat": null, "open_camera": true, "timeout_s": 42}]
    });
    let parsed: JoinResult = serde_json::from_value(text.clone()).expect("parses");
    assert_eq!(parsed.requests[0].from.user, "al");
    assert_eq!(parsed.requests[0].timeout_s, 42);
    assert_eq!(parsed.metadata, r#"{"title":"Blue mug"}"#);
    assert_eq!(serde_json::to_value(&parsed).expect("serializes"), text);
}

fn event_round_trip(text: Value, expected: Event) {
    let got: ServerMessage = serde_json::from_value(text.clone()).expect("parses");
    assert_eq!(got, ServerMessage::Event(expected.clone()));
    assert_eq!(serde_json::to_value(&expected).expect("serializes"), text);
}

#[test]
fn events() {
    let alice_json =
        json!({"user":"alice","name":"Alice","role":"audience","seat":1,"mic":true,"camera":false});
    event_round_trip(
        json!({"type":"link_request","from":alice_json,"request":"r1","seat":null,"open_camera":true,"timeout_s":60}),
        Event::LinkRequest {
            from: alice(),
            request: "r1".into(),
            seat: None,
            open_camera: true,
            timeout_s: 60,
        },
    );
    event_round_trip(
        json!({"type":"link_cancelled","user":"alice","reason":"timeout"}),
        Event::LinkCancelled {
            user: id("alice"),
            reason: CancelReason::Timeout,
        },
    );
    event_round_trip(
        json!({"type":"link_accepted","user":"bob"}),
        Event::LinkAccepted { user: id("bob") },
    );
    event_round_trip(
        json!({"type":"link_rejected","user":"bob","reason":"seats_full"}),
        Event::LinkRejected {
            user: id("bob"),
            reason: RejectReason::SeatsFull,
        },
    );
    event_round_trip(
        json!({"type":"link_timeout","user":"bob"}),
        Event::LinkTimeout { user: id("bob") },
    );
    event_round_trip(
        json!({"type":"connected_users_updated","users":[alice_json],"joined":[alice_json],"left":[]}),
        Event::ConnectedUsersUpdated {
            users: vec![alice()],
            joined: vec![alice()],
            left: vec![],
        },
    );
    event_round_trip(
        json!({"type":"link_terminated","by":"bob"}),
        Event::LinkTerminated { by: id("bob") },
    );
    event_round_trip(
        json!({"type":"link_exited","user":alice_json}),
        Event::LinkExited { user: alice() },
    );
    event_round_trip(
        json!({"type":"room_ended","reason":"anchor_lost"}),
        Event::RoomEnded {
            reason: EndReason::AnchorLost,
        },
    );
    event_round_trip(
        json!({"type":"audience_count","count":1000}),
        Event::AudienceCount { count: 1000 },
    );
    event_round_trip(
        json!({"type":"kicked","reason":"replaced"}),
        Event::Kicked {
            reason: KickReason::Replaced,
        },
    );
    event_round_trip(
        json!({"type":"subscribe_offer","sdp":"v=0\r\n"}),
        Event::SubscribeOffer {
            sdp: "v=0\r\n".into(),
            new_connection: false,
            offer_id: 0,
        },
    );
    event_round_trip(
        json!({"type":"subscribe_offer","sdp":"v=0\r\n","new_connection":true,"offer_id":3}),
        Event::SubscribeOffer {
            sdp: "v=0\r\n".into(),
            new_connection: true,
            offer_id: 3,
        },
    );
    event_round_trip(
        json!({"type":"ice","pc":"subscribe","candidate":{"candidate":"c","sdpMid":"1"}}),
        Event::Ice {
            pc: PeerConnectionKind::Subscribe,
            candidate: IceCandidate {
                candidate: "c".into(),
                sdp_mid: Some("1".into()),
                sdp_m_line_index: None,
                username_fragment: None,
            },
        },
    );
    event_round_trip(
        json!({"type":"error","code":"bad_request","message":"frame is not JSON"}),
        Event::Error {
            code: ErrorCode::BadRequest,
            message: "frame is not JSON".into(),
        },
    );
}

/// Found by the frame fuzz target: serde's error named the whole bad value, so a 64 KiB frame
/// came back as a larger error answer.
#[test]
fn a_field_error_does_not_echo_a_long_value() {
    let long = "x".repeat(60_000);
    let text = format!(r#"{{"id":2,"type":"join","room":"r","user":"u","role":"{long}"}}"#);
    match parse_request(&text) {
        Err(ParseError::Fields { id: 2, message }) => {
            assert!(message.len() < 300, "{} bytes", message.len());
            assert!(message.starts_with("unknown variant"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn version_two_requests() {
    request_round_trip(
        json!({"id": 20, "type": "lock_seat", "seat": 3, "lock": true, "lock_video": false}),
        20,
        Request::LockSeat {
            seat: 3,
            lock: Some(true),
            lock_audio: None,
            lock_video: Some(false),
        },
    );
    request_round_trip(
        json!({"id": 21, "type": "move_seat", "seat": 2}),
        21,
        Request::MoveSeat {
            seat: 2,
            user: None,
        },
    );
    request_round_trip(
        json!({"id": 22, "type": "move_seat", "seat": 4, "user": "alice"}),
        22,
        Request::MoveSeat {
            seat: 4,
            user: Some(id("alice")),
        },
    );
    request_round_trip(
        json!({"id": 23, "type": "mute_member", "user": "alice", "mic": false}),
        23,
        Request::MuteMember {
            user: id("alice"),
            mic: Some(false),
            camera: None,
        },
    );
    request_round_trip(
        json!({"id": 24, "type": "set_media", "mic": true, "camera": false}),
        24,
        Request::SetMedia {
            mic: Some(true),
            camera: Some(false),
        },
    );
    request_round_trip(
        json!({"id": 25, "type": "kick_user", "user": "troll", "ban_s": 600}),
        25,
        Request::KickUser {
            user: id("troll"),
            ban_s: Some(600),
        },
    );
    assert!(matches!(
        parse_request(r#"{"id": 26, "type": "lock_seat"}"#),
        Err(ParseError::Fields { id: 26, .. })
    ));
}

#[test]
fn version_two_events() {
    event_round_trip(
        json!({"type":"seats_updated","seats":[{"index":0,"user":null,"locked":false,"audio_locked":false,"video_locked":false},{"index":1,"user":null,"locked":true,"audio_locked":true,"video_locked":false}]}),
        Event::SeatsUpdated {
            seats: vec![
                Seat {
                    index: 0,
                    user: None,
                    locked: false,
                    audio_locked: false,
                    video_locked: false,
                },
                Seat {
                    index: 1,
                    user: None,
                    locked: true,
                    audio_locked: true,
                    video_locked: false,
                },
            ],
        },
    );
    event_round_trip(
        json!({"type":"media_state","user":"alice","mic":false,"camera":true,"by":"anchor","mic_blocked":true,"camera_blocked":false}),
        Event::MediaState {
            user: id("alice"),
            mic: false,
            camera: true,
            by: MediaBy::Anchor,
            mic_blocked: true,
            camera_blocked: false,
        },
    );
    event_round_trip(
        json!({"type":"media_state","user":"alice","mic":true,"camera":true,"by":"self","mic_blocked":false,"camera_blocked":false}),
        Event::MediaState {
            user: id("alice"),
            mic: true,
            camera: true,
            by: MediaBy::User,
            mic_blocked: false,
            camera_blocked: false,
        },
    );
    event_round_trip(
        json!({"type":"active_speakers","speakers":[{"user":"alice","level":0.5},{"user":"bob","level":0.25}]}),
        Event::ActiveSpeakers {
            speakers: vec![
                Speaker {
                    user: id("alice"),
                    level: 0.5,
                },
                Speaker {
                    user: id("bob"),
                    level: 0.25,
                },
            ],
        },
    );
    event_round_trip(
        json!({"type":"kicked","reason":"kicked_by_anchor"}),
        Event::Kicked {
            reason: KickReason::KickedByAnchor,
        },
    );
    // Version 3.
    event_round_trip(
        json!({"type":"kicked","reason":"kicked_by_server"}),
        Event::Kicked {
            reason: KickReason::KickedByServer,
        },
    );
    event_round_trip(
        json!({"type":"room_ended","reason":"ended_by_server"}),
        Event::RoomEnded {
            reason: EndReason::EndedByServer,
        },
    );
    event_round_trip(
        json!({"type":"room_message","from":null,"topic":"like","data":"1","at":1767225600123u64}),
        Event::RoomMessage {
            from: None,
            topic: "like".into(),
            data: "1".into(),
            at: 1_767_225_600_123,
        },
    );
    event_round_trip(
        json!({"type":"room_metadata","metadata":"card"}),
        Event::RoomMetadata {
            metadata: "card".into(),
        },
    );
    let send = parse_request(r#"{"type":"send_message","id":4,"topic":"chat","data":"hi"}"#)
        .expect("parses");
    assert_eq!(
        send,
        (
            4,
            Request::SendMessage {
                topic: "chat".into(),
                data: "hi".into()
            }
        )
    );
    assert_eq!(crate::check_message("chat", "hi"), Ok(()));
    assert!(crate::check_message("", "hi").is_err());
    assert!(crate::check_message(&"t".repeat(65), "").is_err());
    assert_eq!(
        crate::check_message(&"é".repeat(64), ""),
        Ok(()),
        "characters, not bytes"
    );
    assert!(crate::check_message("a\nb", "").is_err());
    assert!(crate::check_message("t", &"d".repeat(2049)).is_err());
    // A version 1 server's seats still parse.
    let seat: Seat =
        serde_json::from_value(json!({"index":2,"user":null,"locked":false})).expect("parses");
    assert!(!seat.audio_locked && !seat.video_locked);
}
