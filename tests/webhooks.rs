//! Webhooks against a real HTTP receiver the test starts: every milestone of a live arrives
//! once, signed, in order; a receiver that fails and recovers gets everything; one that never
//! answers costs a bounded queue and nothing else; three nodes send each event once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::cluster::{cluster_health, in_cluster, metric};
use common::ws::Ws;
use common::{Member, Server, server_with};
use miclink_cluster::testing::RedisServer;
use miclink_protocol::Role;
use miclink_signaling::webhook::{WebhookConfig, signature};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const SECRET: &str = "webhook-test-secret-0123";

/// How the receiver answers.
const OK: u8 = 0;
const FAIL: u8 = 1;
const SILENT: u8 = 2;

/// A webhook receiver on loopback: what it took (2xx), and every attempt it saw.
#[derive(Clone, Default)]
struct Receiver {
    taken: Arc<Mutex<Vec<Value>>>,
    attempts: Arc<std::sync::atomic::AtomicU64>,
    mode: Arc<AtomicU8>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let r = Receiver::default();
        let state = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let r = state.clone();
                async move { r.take(&headers, &body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, url)
    }

    async fn take(&self, headers: &HeaderMap, body: &[u8]) -> StatusCode {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        match self.mode.load(Ordering::Relaxed) {
            FAIL => return StatusCode::INTERNAL_SERVER_ERROR,
            SILENT => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return StatusCode::OK;
            }
            _ => {}
        }
        let body = std::str::from_utf8(body).expect("UTF-8");
        let sig = headers
            .get("miclink-signature")
            .and_then(|v| v.to_str().ok())
            .expect("signed");
        let t: u64 = sig
            .strip_prefix("t=")
            .and_then(|s| s.split(',').next())
            .and_then(|t| t.parse().ok())
            .expect("t=");
        assert_eq!(
            sig,
            signature(SECRET.as_bytes(), t, body),
            "the signature checks"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(now.abs_diff(t) < 60, "signed now: {t} vs {now}");
        self.taken
            .lock()
            .await
            .push(serde_json::from_str(body).expect("JSON"));
        StatusCode::NO_CONTENT
    }

    /// Wait up to `wait` for `n` events of `room`, and return that room's events.
    async fn events_of(&self, room: &str, n: usize, wait: Duration) -> Vec<Value> {
        let end = Instant::now() + wait;
        loop {
            let got: Vec<Value> = self
                .taken
                .lock()
                .await
                .iter()
                .filter(|e| e["room"] == room)
                .cloned()
                .collect();
            if got.len() >= n || Instant::now() > end {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hooks(url: &str) -> WebhookConfig {
    WebhookConfig::new(vec![url.to_owned()], SECRET.to_owned())
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.get("user") {
            Some(u) => format!(
                "{} {}",
                e["event"].as_str().unwrap_or("?"),
                u["user"].as_str().unwrap_or("?")
            ),
            None => e["event"].as_str().unwrap_or("?").to_owned(),
        })
        .collect()
}

/// `guest` applies and the anchor accepts.
async fn link(anchor: &mut Ws, guest: &mut Ws) {
    assert_eq!(
        guest.request(json!({"type": "request_link"})).await["ok"],
        true
    );
    anchor.event("link_request").await;
    let r = anchor
        .request(json!({"type": "respond_link", "user": "gus", "accept": true}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    guest.event("link_accepted").await;
}

/// A live from start to end: the anchor, a viewer, a guest linked and unlinked by the anchor,
/// linked again, the viewer kicked, the guest leaving the room seated, the end. Returns the
/// room's expected events.
async fn a_full_live(s: &Server, room: &str) -> Vec<&'static str> {
    let (mut anchor, _) = Ws::join(&s.url, room, "anna", "anchor").await;
    let (mut viewer, _) = Ws::join(&s.url, room, "vic", "audience").await;
    let (mut guest, _) = Ws::join(&s.url, room, "gus", "audience").await;
    link(&mut anchor, &mut guest).await;
    let r = anchor
        .request(json!({"type": "disconnect_user", "user": "gus"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    guest.event("link_terminated").await;
    link(&mut anchor, &mut guest).await;
    let r = anchor
        .request(json!({"type": "kick_user", "user": "vic", "ban_s": 30}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    viewer.event("kicked").await;
    assert_eq!(guest.request(json!({"type": "leave"})).await["ok"], true);
    assert_eq!(anchor.request(json!({"type": "leave"})).await["ok"], true);
    vec![
        "room_started anna",
        "user_joined vic",
        "user_joined gus",
        "link_started gus",
        "link_ended gus",
        "link_started gus",
        "user_kicked vic",
        "user_left vic",
        "link_ended gus",
        "user_left gus",
        "room_ended",
    ]
}

fn room_started_name(events: &[Value]) -> Vec<String> {
    let mut n = names(events);
    // `room_started` names the anchor as `anchor`, not `user`.
    if let Some(first) = n.first_mut()
        && first == "room_started"
    {
        *first = format!(
            "room_started {}",
            events[0]["anchor"]["user"].as_str().unwrap_or("?")
        );
    }
    n
}

#[tokio::test]
async fn every_milestone_of_a_live_arrives_once_signed_and_in_order() {
    let (receiver, url) = Receiver::start().await;
    let s = server_with(|c| c.signaling.webhooks = Some(hooks(&url))).await;
    let want = a_full_live(&s, "live1").await;
    let events = receiver
        .events_of("live1", want.len(), Duration::from_secs(20))
        .await;
    assert_eq!(room_started_name(&events), want, "{events:#?}");
    // Fields: how the room started, why links and the room ended, who kicked.
    assert_eq!(events[0]["via"], "ws");
    assert_eq!(events[4]["reason"], "disconnected");
    assert_eq!(
        (&events[6]["by"], &events[6]["ban_s"]),
        (&json!("anchor"), &json!(30))
    );
    assert_eq!(events[8]["reason"], "left");
    assert_eq!(events[10]["reason"], "anchor_left");
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    let mut last_at = 0;
    for e in &events {
        assert_eq!(e["node"], "local");
        let at = e["at"].as_u64().expect("at");
        assert!(at >= last_at, "in order: {e}");
        last_at = at;
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "ids are unique");
    // Nothing more comes (each once): longer than the first retry's backoff.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.events_of("live1", 0, Duration::ZERO).await.len(),
        want.len()
    );

    // The server API's kick says so.
    let (_a, _) = Ws::join(&s.url, "live2", "anna", "anchor").await;
    let (_v, _) = Ws::join(&s.url, "live2", "vic", "audience").await;
    let r = s
        .http("POST", "/api/v1/rooms/live2/users/vic/kick", "", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let events = receiver
        .events_of("live2", 4, Duration::from_secs(20))
        .await;
    let kicked = events
        .iter()
        .find(|e| e["event"] == "user_kicked")
        .expect("kicked");
    assert_eq!(
        (&kicked["by"], &kicked["ban_s"]),
        (&json!("server"), &json!(0))
    );
}

#[tokio::test]
async fn a_server_shutting_down_reports_the_end_of_each_room_it_holds() {
    let (receiver, url) = Receiver::start().await;
    let mut s = server_with(|c| c.signaling.webhooks = Some(hooks(&url))).await;
    let (_a1, _) = Ws::join(&s.url, "bye1", "anna", "anchor").await;
    let (_a2, _) = Ws::join(&s.url, "bye2", "bob", "anchor").await;
    receiver.events_of("bye2", 1, Duration::from_secs(10)).await;
    let done = s.done.take().expect("running");
    drop(s);
    done.await.expect("joined").expect("stopped cleanly");
    // Delivered before the server returned from its shutdown.
    for room in ["bye1", "bye2"] {
        let events = receiver.events_of(room, 2, Duration::ZERO).await;
        assert_eq!(
            names(&events),
            ["room_started", "room_ended"],
            "{events:#?}"
        );
        assert_eq!(events[1]["reason"], "server_shutdown");
    }
}

#[tokio::test]
async fn a_receiver_that_fails_for_twenty_seconds_then_recovers_gets_every_event() {
    let (receiver, url) = Receiver::start().await;
    receiver.mode.store(FAIL, Ordering::Relaxed);
    let s = server_with(|c| {
        let mut h = hooks(&url);
        // The retries of a long outage, closer together so the test stays short.
        h.backoff_max = Duration::from_secs(4);
        c.signaling.webhooks = Some(h);
    })
    .await;
    let want = a_full_live(&s, "down").await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        receiver.attempts.load(Ordering::Relaxed) > 4,
        "it kept trying"
    );
    assert!(
        receiver
            .events_of("down", 0, Duration::ZERO)
            .await
            .is_empty()
    );
    receiver.mode.store(OK, Ordering::Relaxed);
    let events = receiver
        .events_of("down", want.len(), Duration::from_secs(20))
        .await;
    assert_eq!(
        room_started_name(&events),
        want,
        "every event, in order, once"
    );
    let metrics = s.get("/metrics").await.1;
    assert!(
        metric(&metrics, "webhook_attempts_failed_total") > 4,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "webhook_queue"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_costs_a_bounded_queue_and_nothing_else() {
    let (receiver, url) = Receiver::start().await;
    receiver.mode.store(SILENT, Ordering::Relaxed);
    let s = server_with(|c| {
        let mut h = hooks(&url);
        h.queue = 40;
        c.signaling.webhooks = Some(h);
    })
    .await;
    // The room "r" the media helpers use: an anchor publishing, a viewer receiving.
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    // Hundreds of milestones from viewers coming and going.
    for i in 0..150 {
        let (mut ws, _) = Ws::join(&s.url, "r", &format!("v{i}"), "audience").await;
        assert_eq!(ws.request(json!({"type": "leave"})).await["ok"], true);
    }
    let metrics = s.get("/metrics").await.1;
    let queued = metric(&metrics, "webhook_queue");
    assert!(queued <= 40, "the queue holds at most its cap: {queued}");
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("miclink_webhooks_dropped_total{reason=\"overflow\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("overflow counter");
    assert!(dropped >= 250, "the oldest dropped, counted: {dropped}");
    // The live goes on: its media flows to a viewer who joins now, and members still talk.
    viewer
        .wait_received("the anchor's audio and video", |r| {
            r.values().filter(|a| a.seqs.len() > 50).count() >= 2
        })
        .await;
    let late = Member::join(&s.url, "r", "late", Role::Audience).await;
    late.wait_received("the anchor's audio and video", |r| {
        r.values().filter(|a| a.seqs.len() > 20).count() >= 2
    })
    .await;
    let (mut ws, _) = Ws::join(&s.url, "r", "chat", "audience").await;
    let r = ws
        .request(json!({"type": "send_message", "topic": "chat", "data": "hi"}))
        .await;
    assert_eq!(r["ok"], true);
    ws.event("room_message").await;
}

#[tokio::test]
async fn on_three_nodes_each_event_is_sent_once_by_the_node_holding_the_room() {
    let (receiver, url) = Receiver::start().await;
    let redis = RedisServer::start();
    let node = |id: &str| {
        let cluster = in_cluster(&redis, id);
        let url = url.clone();
        move |c: &mut miclink::Config| {
            cluster(c);
            c.signaling.webhooks = Some(hooks(&url));
        }
    };
    let a = server_with(node("a")).await;
    let b = server_with(node("b")).await;
    let c = server_with(node("c")).await;
    for s in [&a, &b, &c] {
        cluster_health(s, "nodes", 3.into()).await;
    }
    let (mut anchor, _) = Ws::join(&a.url, "three", "anna", "anchor").await;
    let (mut on_b, _) = Ws::join(&b.url, "three", "bea", "audience").await;
    let (_on_c, _) = Ws::join(&c.url, "three", "cal", "audience").await;
    assert_eq!(on_b.request(json!({"type": "leave"})).await["ok"], true);
    assert_eq!(anchor.request(json!({"type": "leave"})).await["ok"], true);
    let want = [
        "room_started",
        "user_joined bea",
        "user_joined cal",
        "user_left bea",
        "room_ended",
    ];
    let events = receiver
        .events_of("three", want.len(), Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events_after = receiver.events_of("three", 0, Duration::ZERO).await;
    assert_eq!(
        events.len(),
        events_after.len(),
        "nothing twice: {events_after:#?}"
    );
    let got = names(&events);
    assert_eq!(got, want, "{events:#?}");
    assert!(
        events.iter().all(|e| e["node"] == "a"),
        "sent by the room's origin"
    );
}
