//! The server API (`/api/v1`) and room messages against the real server: every endpoint, who
//! may call it, its refusals, and what the room's members hear.

mod common;

use std::time::Duration;

use common::ws::Ws;
use common::{Server, server_with};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &str = "api-test-secret-0123456789";

fn admin_token(exp_from_now: i64) -> String {
    let exp = jsonwebtoken::get_current_timestamp() as i64 + exp_from_now;
    encode(
        &Header::default(),
        &json!({"role": "admin", "sub": "ops", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn member_token(room: &str, user: &str, role: &str) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    encode(
        &Header::default(),
        &json!({"room": room, "sub": user, "role": role, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// A call of the API: its status and JSON body.
async fn api(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut headers = String::from("Content-Type: application/json\r\n");
    if let Some(t) = token {
        headers.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let r = s.http(method, path, &headers, body).await;
    let json = serde_json::from_str(&r.body)
        .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {:?}", r.body));
    (r.status, json)
}

/// Anchor "anna" live in `room`, viewer "vic", and "gus" linked on seat 1.
async fn live_room(s: &Server, room: &str) -> (Ws, Ws, Ws) {
    let (mut anchor, _) = Ws::join(&s.url, room, "anna", "anchor").await;
    let (viewer, _) = Ws::join(&s.url, room, "vic", "audience").await;
    let (mut guest, _) = Ws::join(&s.url, room, "gus", "audience").await;
    let r = guest.request(json!({"type": "request_link"})).await;
    assert_eq!(r["ok"], true, "{r}");
    anchor.event("link_request").await;
    let r = anchor
        .request(json!({"type": "respond_link", "user": "gus", "accept": true}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    guest.event("link_accepted").await;
    (anchor, viewer, guest)
}

#[tokio::test]
async fn every_endpoint_does_what_the_contract_says_and_members_hear_it() {
    let s = server_with(|_| {}).await;
    let (mut anchor, mut viewer, mut guest) = live_room(&s, "shop").await;

    // The live list and one room in full.
    let (status, list) = api(&s, "GET", "/api/v1/rooms", None, "").await;
    assert_eq!(status, 200, "{list}");
    let rooms = list["rooms"].as_array().expect("rooms");
    assert_eq!(rooms.len(), 1, "{list}");
    let shop = &rooms[0];
    assert_eq!(shop["room"], "shop");
    assert_eq!(shop["anchor"]["user"], "anna");
    assert_eq!(shop["audience_count"], 2);
    assert_eq!(shop["linked"][0]["user"], "gus");
    assert_eq!(shop["metadata"], "");
    assert_eq!(shop["cohost"], json!([]));
    assert_eq!(shop["battle"], Value::Null);
    let started = shop["started_at"].as_u64().expect("started_at");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(
        started <= now && now - started < 60_000,
        "{started} vs {now}"
    );
    let (status, one) = api(&s, "GET", "/api/v1/rooms/shop", None, "").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["seats"].as_array().map(Vec::len), Some(10), "{one}");
    assert_eq!(one["seats"][1]["user"]["user"], "gus");
    assert_eq!(one["viewers"], json!([one["viewers"][0].clone()]));
    assert_eq!(one["viewers"][0]["user"], "vic");
    let (status, missing) = api(&s, "GET", "/api/v1/rooms/nope", None, "").await;
    assert_eq!(
        (status, &missing["error"]["code"]),
        (404, &json!("not_found"))
    );

    // Metadata: to everyone now, and in the join reply of whoever comes later.
    let card = r#"{"metadata": "{\"title\":\"Blue mug\"}"}"#;
    let (status, body) = api(&s, "PUT", "/api/v1/rooms/shop/metadata", None, card).await;
    assert_eq!((status, body), (200, json!({})));
    for m in [&mut anchor, &mut viewer, &mut guest] {
        assert_eq!(
            m.event("room_metadata").await["metadata"],
            r#"{"title":"Blue mug"}"#
        );
    }
    let (_, late) = Ws::join(&s.url, "shop", "late", "audience").await;
    assert_eq!(late["metadata"], r#"{"title":"Blue mug"}"#);
    let big = json!({"metadata": "x".repeat(5000)}).to_string();
    let (status, body) = api(&s, "PUT", "/api/v1/rooms/shop/metadata", None, &big).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("bad_request")),
        "{body}"
    );
    let huge = json!({"metadata": "x".repeat(40_000)}).to_string();
    let (status, body) = api(&s, "PUT", "/api/v1/rooms/shop/metadata", None, &huge).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (413, &json!("too_large")),
        "{body}"
    );
    // 4 KiB of control characters is 24 KiB escaped: still read, and taken.
    let escaped = json!({"metadata": "\u{1}".repeat(4096)}).to_string();
    assert!(escaped.len() > 16 * 1024);
    let (status, body) = api(&s, "PUT", "/api/v1/rooms/shop/metadata", None, &escaped).await;
    assert_eq!(status, 200, "{body}");
    for m in [&mut anchor, &mut viewer, &mut guest] {
        assert_eq!(
            m.event("room_metadata").await["metadata"]
                .as_str()
                .map(str::len),
            Some(4096)
        );
    }
    let (status, body) = api(&s, "PUT", "/api/v1/rooms/shop/metadata", None, "{not json").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("bad_request")),
        "{body}"
    );

    // A message from the server: `from` null, to everyone.
    let msg = r#"{"topic": "product", "data": "20% off"}"#;
    let (status, _) = api(&s, "POST", "/api/v1/rooms/shop/messages", None, msg).await;
    assert_eq!(status, 200);
    for m in [&mut anchor, &mut viewer, &mut guest] {
        let e = m.event("room_message").await;
        assert_eq!(
            (&e["from"], &e["topic"], &e["data"]),
            (&Value::Null, &json!("product"), &json!("20% off"))
        );
        assert!(e["at"].as_u64().is_some_and(|at| at >= started), "{e}");
    }
    let (status, _) = api(
        &s,
        "POST",
        "/api/v1/rooms/shop/messages",
        None,
        r#"{"topic": "", "data": "x"}"#,
    )
    .await;
    assert_eq!(status, 400);

    // Mute, then unlink the guest, as the anchor's mute_member and disconnect_user.
    let (status, _) = api(
        &s,
        "POST",
        "/api/v1/rooms/shop/users/gus/mute",
        None,
        r#"{"mic": false}"#,
    )
    .await;
    assert_eq!(status, 200);
    let state = anchor.event("media_state").await;
    assert_eq!(
        (
            &state["user"],
            &state["mic"],
            &state["mic_blocked"],
            &state["by"]
        ),
        (&json!("gus"), &json!(false), &json!(true), &json!("anchor")),
        "{state}"
    );
    let (status, _) = api(&s, "POST", "/api/v1/rooms/shop/users/gus/mute", None, "{}").await;
    assert_eq!(status, 400, "naming neither mic nor camera");
    let (status, _) = api(&s, "POST", "/api/v1/rooms/shop/users/gus/unlink", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(guest.event("link_terminated").await["by"], "anna");
    let (status, body) = api(&s, "POST", "/api/v1/rooms/shop/users/gus/unlink", None, "").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("not_found")),
        "no seat to take"
    );

    // Kick with a ban: told, gone, and barred.
    let (status, _) = api(
        &s,
        "POST",
        "/api/v1/rooms/shop/users/vic/kick",
        None,
        r#"{"ban_s": 60}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(viewer.event("kicked").await["reason"], "kicked_by_server");
    let mut again = Ws::connect(&s.url).await;
    let r = again
        .request(json!({"type": "join", "room": "shop", "user": "vic", "role": "audience"}))
        .await;
    assert_eq!(r["error"]["code"], "banned", "{r}");
    let (status, body) = api(&s, "POST", "/api/v1/rooms/shop/users/anna/kick", None, "").await;
    assert_eq!(status, 400, "the anchor is not kicked: {body}");
    let (status, _) = api(&s, "POST", "/api/v1/rooms/shop/users/nobody/kick", None, "").await;
    assert_eq!(status, 404);
    let (status, _) = api(
        &s,
        "POST",
        "/api/v1/rooms/shop/users/bad%20id/kick",
        None,
        "",
    )
    .await;
    assert_eq!(status, 400);

    // The end: `ended_by_server` for everyone, and the room is gone from the list.
    let (status, _) = api(&s, "DELETE", "/api/v1/rooms/shop", None, "").await;
    assert_eq!(status, 200);
    for m in [&mut anchor, &mut guest] {
        assert_eq!(m.event("room_ended").await["reason"], "ended_by_server");
    }
    let (_, list) = api(&s, "GET", "/api/v1/rooms", None, "").await;
    assert_eq!(list, json!({"rooms": []}));
    let (status, _) = api(&s, "DELETE", "/api/v1/rooms/shop", None, "").await;
    assert_eq!(status, 404);

    // A request a web page made (a browser on this machine is on loopback too) is refused.
    let r = s
        .http(
            "POST",
            "/api/v1/rooms/shop/messages",
            "Origin: http://evil.example\r\nContent-Type: text/plain\r\n",
            msg,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = s
        .http("GET", "/api/v1/rooms", "Sec-Fetch-Site: cross-site\r\n", "")
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // A wrong method is a JSON refusal too.
    let (status, body) = api(&s, "PATCH", "/api/v1/rooms", None, "").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (405, &json!("method_not_allowed"))
    );

    // No secret: no tokens to make; an unknown path is a JSON 404.
    let (status, body) = api(
        &s,
        "POST",
        "/api/v1/tokens",
        None,
        r#"{"room": "r", "user": "u", "role": "anchor"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api(&s, "GET", "/api/v1/no/such/thing", None, "").await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
}

#[tokio::test]
async fn with_a_secret_only_unexpired_admin_tokens_call_the_api() {
    let s = server_with(|c| c.signaling.jwt_secret = Some(SECRET.into())).await;
    let cases = [
        (None, "no token"),
        (Some(member_token("r", "u", "anchor")), "a member's token"),
        (Some(admin_token(-10)), "an expired admin token"),
        (Some("not.a.jwt".to_owned()), "garbage"),
    ];
    for (token, what) in cases {
        let (status, body) = api(&s, "GET", "/api/v1/rooms", token.as_deref(), "").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("unauthorized")),
            "{what}: {body}"
        );
        let (status, body) = api(&s, "DELETE", "/api/v1/rooms/r", token.as_deref(), "").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("unauthorized")),
            "{what}: {body}"
        );
    }
    let admin = admin_token(600);
    let (status, body) = api(&s, "GET", "/api/v1/rooms", Some(&admin), "").await;
    assert_eq!((status, body), (200, json!({"rooms": []})));
    // A join token made by the API joins.
    let ask = r#"{"room": "r", "user": "anna", "role": "anchor", "ttl_s": 120}"#;
    let (status, body) = api(&s, "POST", "/api/v1/tokens", Some(&admin), ask).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token");
    let (_anchor, result) = Ws::join_with(
        &s.url,
        json!({"type": "join", "room": "r", "user": "anna", "role": "anchor", "token": token}),
    )
    .await;
    assert_eq!(result["me"]["user"], "anna");
    for bad in [
        r#"{"room": "r", "user": "anna", "role": "admin"}"#,
        r#"{"room": "r", "user": "anna", "role": "anchor", "ttl_s": 0}"#,
        r#"{"room": "r", "user": "an na", "role": "anchor"}"#,
    ] {
        let (status, _) = api(&s, "POST", "/api/v1/tokens", Some(&admin), bad).await;
        assert_eq!(status, 400, "{bad}");
    }
}

#[tokio::test]
async fn the_rate_limit_answers_429_and_members_messages_are_limited_too() {
    let s = server_with(|c| c.signaling.api_rate_per_s = 5.0).await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let (status, body) = api(&s, "GET", "/api/v1/rooms", None, "").await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited");
        }
        statuses.push(status);
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        limited >= 15,
        "10 at once pass, then about 5 a second: {statuses:?}"
    );
    assert_eq!(statuses[0], 200);

    // Members: every message reaches everyone, the sender too, with who sent it.
    let (mut anchor, _) = Ws::join(&s.url, "r", "anna", "anchor").await;
    let (mut fan, _) = Ws::join(&s.url, "r", "fan", "audience").await;
    let r = fan
        .request(json!({"type": "send_message", "topic": "chat", "data": "hello <b>"}))
        .await;
    assert_eq!(
        (r["ok"].clone(), r["result"].clone()),
        (json!(true), json!({})),
        "{r}"
    );
    for m in [&mut anchor, &mut fan] {
        let e = m.event("room_message").await;
        assert_eq!(e["from"]["user"], "fan");
        assert_eq!(e["from"]["name"], "fan");
        assert_eq!(
            (&e["topic"], &e["data"]),
            (&json!("chat"), &json!("hello <b>"))
        );
    }
    let r = fan
        .request(json!({"type": "send_message", "topic": "x".repeat(65), "data": ""}))
        .await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = fan
        .request(json!({"type": "send_message", "topic": "chat", "data": "x".repeat(2049)}))
        .await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    // Past 5 a second: refused, and none of the refused reach anyone.
    let mut refused = 0;
    for i in 0..12 {
        let r = fan
            .request(json!({"type": "send_message", "topic": "like", "data": i.to_string()}))
            .await;
        if r["ok"] == false {
            assert_eq!(r["error"]["code"], "rate_limited", "{r}");
            refused += 1;
        }
    }
    assert!(refused >= 6, "{refused} of 12 refused");
    let mut likes = 0;
    while anchor
        .gets("room_message", Duration::from_millis(500))
        .await
    {
        anchor.event("room_message").await;
        likes += 1;
    }
    assert_eq!(
        likes,
        12 - refused,
        "the anchor heard exactly the admitted ones; also had {:?}",
        anchor.events
    );
}

#[tokio::test]
async fn in_a_cluster_every_node_answers_for_every_room() {
    let (_redis, a, b) = common::cluster::two_nodes().await;
    let (mut anchor, _) = Ws::join(&a.url, "on-a", "anna", "anchor").await;
    // A viewer that came in through node b: its session lives at a, its socket at b.
    let (mut viewer, _) = Ws::join(&b.url, "on-a", "vic", "audience").await;
    let (_other, _) = Ws::join(&b.url, "on-b", "bob", "anchor").await;

    // The live list from either node holds both nodes' rooms.
    for s in [&a, &b] {
        let (status, list) = api(s, "GET", "/api/v1/rooms", None, "").await;
        assert_eq!(status, 200, "{list}");
        let rooms: Vec<&str> = list["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .map(|r| r["room"].as_str().expect("room"))
            .collect();
        assert_eq!(rooms, ["on-a", "on-b"], "{list}");
    }
    // Node b asks node a for a's room, and what it changes there reaches everyone.
    let (status, one) = api(&b, "GET", "/api/v1/rooms/on-a", None, "").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["viewers"][0]["user"], "vic");
    let (status, _) = api(
        &b,
        "PUT",
        "/api/v1/rooms/on-a/metadata",
        None,
        r#"{"metadata": "card"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(anchor.event("room_metadata").await["metadata"], "card");
    assert_eq!(viewer.event("room_metadata").await["metadata"], "card");
    let (status, _) = api(&b, "POST", "/api/v1/rooms/on-a/users/nobody/kick", None, "").await;
    assert_eq!(status, 404, "a's refusal comes back through b");
    let (status, _) = api(&b, "GET", "/api/v1/rooms/nowhere", None, "").await;
    assert_eq!(status, 404);
    let (status, _) = api(&b, "DELETE", "/api/v1/rooms/on-a", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        viewer.event("room_ended").await["reason"],
        "ended_by_server"
    );
}

#[tokio::test]
async fn a_room_full_of_senders_is_held_to_the_rooms_message_budget() {
    let s = server_with(|_| {}).await;
    let (_anchor, _) = Ws::join(&s.url, "busy", "anna", "anchor").await;
    let mut fans = Vec::new();
    for i in 0..30 {
        fans.push(
            Ws::join(&s.url, "busy", &format!("f{i}"), "audience")
                .await
                .0,
        );
    }
    // Each within its own 5, together 150 at once: past the room's 100, refused.
    let (mut sent, mut refused) = (0, 0);
    for fan in &mut fans {
        for _ in 0..5 {
            let r = fan
                .request(json!({"type": "send_message", "topic": "chat", "data": "hi"}))
                .await;
            if r["ok"] == true {
                sent += 1;
            } else {
                assert_eq!(r["error"]["code"], "rate_limited", "{r}");
                refused += 1;
            }
        }
    }
    assert!((100..130).contains(&sent), "{sent} sent, {refused} refused");
    assert!(refused > 20, "{sent} sent, {refused} refused");
}
