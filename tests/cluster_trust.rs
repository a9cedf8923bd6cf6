//! The cluster's trust boundary, tried as an attacker with write access to the cluster's Redis
//! (the nodes' own credentials) but not the cluster secret would: a node that is not in the
//! registry, a message forged in a real node's name, a room directory entry and a registry entry
//! written straight into Redis, a session token naming a node that does not exist. Each was an
//! attack that worked before messages and records were signed; each test asserts what must not
//! happen any more (nothing reaches the attacker's inbox, no event reaches a member) and that
//! the node counted what it refused.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use futures_util::StreamExt;
use miclink_cluster::testing::RedisServer;
use miclink_loadtest::client;
use miclink_loadtest::peer::StreamSpec;
use miclink_loadtest::recv::Recv;
use miclink_protocol::{Request, Role};
use redis::AsyncCommands;
use tokio::sync::Notify;

/// The attacker's connection to the cluster's Redis.
async fn attacker(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// An inbox the attacker reads: everything a node sends to `node`.
async fn listen(redis: &RedisServer, node: &str) -> redis::aio::PubSub {
    let mut sub = redis::Client::open(redis.url())
        .expect("url")
        .get_async_pubsub()
        .await
        .expect("pubsub");
    sub.subscribe(format!("miclink:inbox:{node}"))
        .await
        .expect("subscribe");
    sub
}

/// What arrives in `sub` within `within`.
async fn heard(sub: redis::aio::PubSub, within: Duration) -> Vec<String> {
    let mut stream = sub.into_on_message();
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + within;
    while let Ok(Some(m)) = tokio::time::timeout_at(end, stream.next()).await {
        got.push(String::from_utf8_lossy(m.get_payload_bytes()).into_owned());
    }
    got
}

/// A message for `to`'s inbox as a node of this version would seal it, claiming to be from
/// `from`, but signed with a secret that is not the cluster's.
fn forged(to: &str, from: &str, body: &str) -> Vec<u8> {
    use miclink_cluster::seal::{Key, Sender, seal_message};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let sender = Sender {
        node: from.to_owned(),
        boot: 1,
        seq: 1_000_000,
    };
    seal_message(
        &Key::new(b"not the cluster secret"),
        to,
        &sender,
        now,
        body.as_bytes(),
    )
}

fn refused(metrics: &str, what: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("miclink_cluster_refused_total{{what=\"{what}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn anchor_live(s: &Server) -> (client::Member, Arc<Notify>) {
    let stop = Arc::new(Notify::new());
    let mut anchor = client_join(
        s,
        "anchor",
        Role::Anchor,
        Recv::logging(Instant::now()),
        client::Options::default(),
    )
    .await;
    let streams = [StreamSpec::audio(48_000), StreamSpec::video(300_000, 30)];
    anchor
        .publish(&streams, stop.clone(), None)
        .await
        .expect("the anchor publishes");
    (anchor, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_open_from_a_node_outside_the_registry_gets_no_relay_offer() {
    let redis = RedisServer::start();
    let a = server_with(in_cluster(&redis, "a")).await;
    cluster_health(&a, "nodes", 1.into()).await;
    let (anchor, stop) = anchor_live(&a).await;
    let spy = listen(&redis, "spy").await;
    let mut con = attacker(&redis).await;
    // As nodes wrote messages before they were signed, and sealed with the wrong secret.
    let open = r#"{"type":"media_open","room":"r"}"#;
    let envelope = format!(r#"{{"from":"spy","relay":{open}}}"#);
    let _: i64 = con
        .publish("miclink:inbox:a", envelope)
        .await
        .expect("publish");
    let _: i64 = con
        .publish("miclink:inbox:a", forged("a", "spy", open))
        .await
        .expect("publish");
    let offers = heard(spy, Duration::from_secs(3)).await;
    assert!(
        offers.is_empty(),
        "a relay offer went to a node outside the registry: {offers:?}"
    );
    let metrics = node_metrics(&a).await;
    assert!(refused(&metrics, "message") >= 2, "{metrics}");
    stop.notify_waiters();
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_forged_in_the_origins_name_does_not_end_a_viewers_room() {
    let (redis, a, b) = two_nodes().await;
    let (anchor, stop) = anchor_live(&a).await;
    // The viewer's socket is on b, relayed to a.
    let mut viewer = client_join(
        &b,
        "viewer",
        Role::Audience,
        Recv::logging(Instant::now()),
        client::Options::default(),
    )
    .await;
    let mut con = attacker(&redis).await;
    let ended = r#"{"type":"room_ended","reason":"anchor_left"}"#;
    // b's ids for its sockets are small numbers: every one of them is tried.
    for conn in 1..=64u64 {
        let text = serde_json::json!({"type": "text", "conn": conn, "text": ended}).to_string();
        let envelope = format!(r#"{{"from":"a","relay":{text}}}"#);
        let _: i64 = con
            .publish("miclink:inbox:b", envelope)
            .await
            .expect("publish");
        let _: i64 = con
            .publish("miclink:inbox:b", forged("b", "a", &text))
            .await
            .expect("publish");
    }
    let told = viewer
        .wait_event("room_ended", Duration::from_secs(3))
        .await;
    assert!(
        told.is_err(),
        "a forged room_ended reached the viewer: {told:?}"
    );
    // The room goes on for it: the anchor's real end still reaches it.
    assert!(refused(&node_metrics(&b).await, "message") >= 128);
    stop.notify_waiters();
    anchor.close().await;
    assert!(
        viewer
            .wait_event("room_ended", Duration::from_secs(10))
            .await
            .is_ok(),
        "the real end arrives"
    );
    viewer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_directory_entry_naming_a_fake_node_redirects_no_encoder_and_relays_no_join() {
    let redis = RedisServer::start();
    let a = server_with(|c| {
        in_cluster(&redis, "a")(c);
        c.signaling.jwt_secret = Some(JWT_SECRET.to_owned());
    })
    .await;
    cluster_health(&a, "nodes", 1.into()).await;
    let mut con = attacker(&redis).await;
    // A node written straight into the registry, as nodes wrote their entries before they
    // were signed, and rooms it "holds".
    let fake = r#"{"id":"fake","boot":1,"http":"http://attacker.invalid","media":[],"load":{"rooms":0,"members":0}}"#;
    let _: () = con.set("miclink:node:fake", fake).await.expect("set");
    let _: () = con.sadd("miclink:nodes", "fake").await.expect("sadd");
    for room in ["r", "r2"] {
        let _: () = con
            .set(format!("miclink:room:{room}"), "fake")
            .await
            .expect("set");
    }
    let inbox = listen(&redis, "fake").await;

    // An encoder posting to a for room r is not sent to the attacker's address.
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
    let headers = format!(
        "Content-Type: application/sdp\r\nAuthorization: Bearer {}\r\n",
        jwt("r", "anchor", "anchor")
    );
    let reply = a.http("POST", "/whip/r", &headers, offer).await;
    assert_ne!(reply.status, 307, "sent to {:?}", reply.header("location"));
    assert!(
        reply
            .header("location")
            .is_none_or(|l| !l.contains("attacker"))
    );

    // A socket's join of r2, token and all, is served here, not relayed to the fake node.
    let raw = client::Member::join(
        &a.url,
        "r2",
        "anchor2",
        Role::Anchor,
        Recv::logging(Instant::now()),
        client::Options {
            token: Some(jwt("r2", "anchor2", "anchor")),
            ..client::Options::default()
        },
    )
    .await
    .expect("joined here: the fake claim is no claim");
    let got = heard(inbox, Duration::from_secs(2)).await;
    assert!(got.is_empty(), "sent to the fake node's inbox: {got:?}");
    let probe = probe(&redis).await;
    origin_becomes(&probe, "r2", Some("a")).await;
    let metrics = node_metrics(&a).await;
    assert!(refused(&metrics, "record") >= 1, "{metrics}");
    raw.request(Request::Leave).await.ok();
    raw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_naming_an_unregistered_node_relays_nothing_there() {
    let redis = RedisServer::start();
    let a = server_with(in_cluster(&redis, "a")).await;
    cluster_health(&a, "nodes", 1.into()).await;
    let inbox = listen(&redis, "ghost").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&a.url)
        .await
        .expect("connect");
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let send = |id: u64, body: serde_json::Value| {
        let mut msg = body;
        msg["id"] = id.into();
        Message::Text(msg.to_string().into())
    };
    ws.send(send(
        1,
        serde_json::json!({"type": "resume", "session": "ghost.0123456789abcdef"}),
    ))
    .await
    .expect("send");
    let reply = next_reply(&mut ws, 1).await;
    assert_eq!(reply["error"]["code"], "session_expired", "{reply}");
    // The socket's next join (with a token, as on a server that checks them) stays here.
    ws.send(send(
        2,
        serde_json::json!({"type": "join", "room": "r", "user": "u", "role": "anchor", "token": "a-join-token"}),
    ))
    .await
    .expect("send");
    let reply = next_reply(&mut ws, 2).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let got = heard(inbox, Duration::from_secs(2)).await;
    assert!(got.is_empty(), "sent to the ghost's inbox: {got:?}");
}

async fn next_reply(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    id: u64,
) -> serde_json::Value {
    let wait = async {
        while let Some(Ok(m)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                if v["type"] == "reply" && v["id"] == id {
                    return v;
                }
            }
        }
        panic!("socket closed before reply {id}");
    };
    tokio::time::timeout(WAIT, wait).await.expect("a reply")
}

const JWT_SECRET: &str = "a jwt secret of enough length";

fn jwt(room: &str, sub: &str, role: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"room": room, "sub": sub, "role": role, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}
