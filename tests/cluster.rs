//! Servers as cluster nodes (`--redis-url`) against a Redis the test starts on loopback: they
//! register and see each other, claim the rooms they hold in the room directory and release
//! them, leave at shutdown, keep serving when Redis goes, and carry one room's sessions across
//! nodes to its origin.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use miclink::Config;
use miclink_cluster::testing::RedisServer;
use miclink_cluster::{Cluster, ClusterConfig};
use miclink_loadtest::client;
use miclink_loadtest::marker::Kind;
use miclink_loadtest::peer::StreamSpec;
use miclink_loadtest::recv::Recv;
use miclink_protocol::{EndReason, Event, Request, Role};
use tokio::sync::Notify;

fn in_cluster(redis: &RedisServer, id: &str) -> impl FnOnce(&mut Config) + use<> {
    in_cluster_ttl(redis, id, Duration::from_millis(900))
}

/// A node whose entry and claims outlive its last heartbeat by `ttl`.
fn in_cluster_ttl(
    redis: &RedisServer,
    id: &str,
    ttl: Duration,
) -> impl FnOnce(&mut Config) + use<> {
    let (url, id) = (redis.url(), id.to_owned());
    move |c| {
        let mut cluster = ClusterConfig::new(&url, &id, &format!("http://{id}.test"));
        cluster.ttl = ttl;
        c.cluster = Some(cluster);
    }
}

/// Wait up to 10 s for `what` of `/healthz`'s cluster part to be `want`.
async fn cluster_health(s: &Server, what: &str, want: serde_json::Value) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let h = s.health().await;
        if h["cluster"][what] == want {
            return;
        }
        assert!(Instant::now() < end, "cluster {what} is not {want}: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn origin_becomes(probe: &Cluster, room: &str, want: Option<&str>) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let now = probe.origin(room).await.expect("redis");
        if now.as_deref() == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "origin of {room} is {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("miclink_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

async fn join(s: &Server, user: &str, role: Role) -> client::Member {
    client_join(
        s,
        user,
        role,
        Recv::logging(Instant::now()),
        client::Options::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_claim_their_rooms_relay_a_viewer_and_leave_at_shutdown() {
    let redis = RedisServer::start();
    let a = server_with(in_cluster(&redis, "a")).await;
    // b's entry and claims would outlive it by 30 s: what goes at once went by its leaving.
    let mut b = server_with(in_cluster_ttl(&redis, "b", Duration::from_secs(30))).await;
    cluster_health(&a, "nodes", 2.into()).await;
    assert_eq!(a.health().await["cluster"]["node"], "a");
    let probe = Cluster::connect(ClusterConfig::new(&redis.url(), "probe", "http://probe"))
        .await
        .expect("probe");
    assert_eq!(
        probe.nodes().await.expect("nodes")["b"].http,
        "http://b.test"
    );

    // A room held on a is claimed for a.
    let anchor = join(&a, "anchor", Role::Anchor).await;
    origin_becomes(&probe, "r", Some("a")).await;
    cluster_health(&a, "origin_rooms", 1.into()).await;

    // A viewer of the same room on b is relayed to a: the claim stays a's.
    let other = join(&b, "other", Role::Audience).await;
    assert_eq!(
        probe.origin("r").await.expect("redis").as_deref(),
        Some("a")
    );
    assert!(metric(&b.get("/metrics").await.1, "cluster_relayed_out_total") > 0);
    cluster_health(&b, "origin_rooms", 0.into()).await;

    // a's room ends with its anchor: the viewer on b hears it, and a releases the room.
    anchor.close().await;
    let mut other = other;
    let ended = other
        .wait_event("room_ended", Duration::from_secs(10))
        .await
        .expect("the room ends on b too");
    assert_eq!(
        ended,
        Event::RoomEnded {
            reason: EndReason::AnchorLeft
        }
    );
    origin_becomes(&probe, "r", None).await;
    cluster_health(&a, "origin_rooms", 0.into()).await;

    // Joined again on b, the room is b's now.
    let again = join(&b, "again", Role::Anchor).await;
    origin_becomes(&probe, "r", Some("b")).await;

    // b shuts down: it leaves at once (no waiting for the expiry), its claim with it.
    drop(b.done.take());
    drop(b);
    let left = Instant::now();
    origin_becomes(&probe, "r", None).await;
    cluster_health(&a, "nodes", 1.into()).await;
    assert!(
        left.elapsed() < Duration::from_secs(10),
        "b's entry and claim went by expiry, not by its leaving"
    );
    other.close().await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_without_redis_and_comes_back_with_it_and_one_without_it_at_start_does_not_start()
 {
    let redis = RedisServer::start();
    let (url, port) = (redis.url(), redis.port);
    let a = server_with(in_cluster(&redis, "a")).await;
    cluster_health(&a, "redis", "ok".into()).await;
    drop(redis);
    cluster_health(&a, "redis", "unreachable".into()).await;
    // Its own clients are still served.
    let anchor = join(&a, "anchor", Role::Anchor).await;
    let viewer = join(&a, "viewer", Role::Audience).await;
    assert!(metric(&a.get("/metrics").await.1, "cluster_redis_errors_total") > 0);
    // Redis comes back (empty): the node reconnects, registers again and claims its room.
    let redis = RedisServer::start_on(port);
    cluster_health(&a, "redis", "ok".into()).await;
    cluster_health(&a, "nodes", 1.into()).await;
    let probe = Cluster::connect(ClusterConfig::new(&url, "probe", "http://probe"))
        .await
        .expect("probe");
    origin_becomes(&probe, "r", Some("a")).await;
    viewer.close().await;
    anchor.close().await;
    drop(redis);

    // No Redis at all: the server says so and stops.
    let mut s = server_with(move |c| {
        c.cluster = Some(ClusterConfig::new(&url, "late", "http://late.test"));
    })
    .await;
    let done = s.done.take().expect("running");
    let e = tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("it stops")
        .expect("no panic")
        .expect_err("refused to start");
    assert!(e.to_string().contains("cluster"), "{e}");
}

/// A node as a process of its own (the binary), so it can be killed outright.
struct NodeProcess {
    child: std::process::Child,
    http: std::net::SocketAddr,
}

impl NodeProcess {
    fn start(redis: &RedisServer, id: &str) -> NodeProcess {
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_miclink"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("MICLINK_HTTP_ADDR", http.to_string())
            .env("MICLINK_MEDIA_ADDR", "127.0.0.1:0")
            .env("MICLINK_REDIS_URL", redis.url())
            .env("MICLINK_NODE_ID", id)
            .spawn()
            .expect("start the server binary");
        NodeProcess { child, http }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `m` got, for a failure's message.
fn seen(m: &client::Member) -> String {
    format!(
        "{}: {} subscribe offers answered, streams {:?}",
        m.user,
        m.offers_answered(),
        m.recv
            .arrivals()
            .iter()
            .map(|(k, a)| (k.clone(), a.seqs.len()))
            .collect::<Vec<_>>()
    )
}

fn got_video(m: &client::Member, from: &str) -> bool {
    m.recv
        .arrivals()
        .get(&(from.to_owned(), Kind::Video))
        .is_some_and(|a| a.seqs.len() > 30)
}

/// Wait up to 20 s for `check`; `None` if it never held (the caller says what it saw).
#[must_use]
async fn until(what: &str, check: impl Fn() -> bool) -> Option<()> {
    let end = Instant::now() + Duration::from_secs(20);
    while !check() {
        if Instant::now() > end {
            eprintln!("timed out: {what}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(())
}

/// One room across three nodes: the anchor on the origin A (a process of its own), a member
/// who applies on B and whom the anchor accepts on A, a viewer on C; everyone's requests reach
/// the room on A, everyone gets everyone's media, and when A dies outright the members on B
/// and C hear that their room ended (`node_lost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_nodes_its_seat_flows_work_from_any_node_and_ends_when_its_node_dies() {
    let redis = RedisServer::start();
    let a = NodeProcess::start(&redis, "a");
    let b = server_with(in_cluster(&redis, "b")).await;
    let c = server_with(in_cluster(&redis, "c")).await;
    cluster_health(&b, "nodes", 3.into()).await;
    cluster_health(&c, "nodes", 3.into()).await;
    let probe = Cluster::connect(ClusterConfig::new(&redis.url(), "probe", "http://probe"))
        .await
        .expect("probe");

    let started = Instant::now();
    let stop = Arc::new(Notify::new());
    let streams = [StreamSpec::audio(48_000), StreamSpec::video(300_000, 30)];
    let mut anchor = client::Member::join(
        &a.url(),
        "r",
        "anchor",
        Role::Anchor,
        Recv::logging(started),
        client::Options::default(),
    )
    .await
    .expect("the anchor joins on a");
    anchor
        .publish(&streams, stop.clone(), None)
        .await
        .expect("the anchor publishes");
    assert_eq!(
        probe.origin("r").await.expect("redis").as_deref(),
        Some("a")
    );

    // A viewer on c: the room's state is a's, and the anchor's media arrives.
    let viewer = join(&c, "viewer", Role::Audience).await;
    assert_eq!(viewer.join.room.anchor.as_str(), "anchor");
    let session = viewer.join.session.clone();
    assert!(
        session.starts_with("a."),
        "the token names its node: {session}"
    );
    until("the anchor's video at the viewer on c", || {
        got_video(&viewer, "anchor")
    })
    .await
    .unwrap_or_else(|| panic!("{}", seen(&viewer)));

    // A member applies on b; the anchor, on a, accepts; the member publishes on b.
    let mut member = join(&b, "member", Role::Audience).await;
    let accept = async {
        let Event::LinkRequest { from, .. } = anchor
            .wait_event("link_request", Duration::from_secs(10))
            .await
            .expect("the application reaches the anchor")
        else {
            unreachable!("wait_event returns the kind asked for");
        };
        anchor
            .call(Request::RespondLink {
                user: from.user,
                accept: true,
            })
            .await
            .expect("accepted");
    };
    let (applied, ()) = tokio::join!(member.apply(true), accept);
    applied.expect("admitted across nodes");
    member
        .publish(&streams, stop.clone(), None)
        .await
        .expect("the member publishes");
    until("the member's video at the viewer on c", || {
        got_video(&viewer, "member")
    })
    .await
    .unwrap_or_else(|| panic!("{}", seen(&viewer)));
    until("the member's video at the anchor on a", || {
        got_video(&anchor, "member")
    })
    .await
    .unwrap_or_else(|| panic!("{}", seen(&anchor)));
    until("the anchor's video at the member on b", || {
        got_video(&member, "anchor")
    })
    .await
    .unwrap_or_else(|| panic!("{}", seen(&member)));
    for s in [&b, &c] {
        let m = s.get("/metrics").await.1;
        assert!(metric(&m, "cluster_relayed_out_total") > 0, "{m}");
        assert!(metric(&m, "cluster_relayed_in_total") > 0, "{m}");
    }

    // a dies without a word: b and c find it gone and end the room for their members.
    drop(a);
    let mut viewer = viewer;
    for m in [&mut viewer, &mut member] {
        let ended = m
            .wait_event("room_ended", Duration::from_secs(20))
            .await
            .expect("the room ends");
        assert_eq!(
            ended,
            Event::RoomEnded {
                reason: EndReason::NodeLost
            }
        );
    }
    cluster_health(&b, "nodes", 2.into()).await;
    stop.notify_waiters();
}
