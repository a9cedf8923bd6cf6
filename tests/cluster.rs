//! Servers as cluster nodes (`--redis-url`) against a Redis the test starts on loopback: they
//! register and see each other, claim the rooms they hold in the room directory and release
//! them, count a room another node holds, leave at shutdown, and keep serving when Redis goes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use miclink::Config;
use miclink_cluster::testing::RedisServer;
use miclink_cluster::{Cluster, ClusterConfig};
use miclink_loadtest::client;
use miclink_loadtest::recv::Recv;
use miclink_protocol::Role;

fn in_cluster(redis: &RedisServer, id: &str) -> impl FnOnce(&mut Config) + use<> {
    let (url, id) = (redis.url(), id.to_owned());
    move |c| {
        let mut cluster = ClusterConfig::new(&url, &id, &format!("http://{id}.test"));
        cluster.ttl = Duration::from_millis(900);
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
        Recv::new(Instant::now()),
        client::Options::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_claim_their_rooms_and_leave_at_shutdown() {
    let redis = RedisServer::start();
    let a = server_with(in_cluster(&redis, "a")).await;
    let mut b = server_with(in_cluster(&redis, "b")).await;
    cluster_health(&a, "nodes", 2.into()).await;
    cluster_health(&b, "nodes", 2.into()).await;
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

    // The same room on b too: b counts the conflict and does not take the claim.
    let other = join(&b, "other", Role::Anchor).await;
    let end = Instant::now() + Duration::from_secs(10);
    while metric(&b.get("/metrics").await.1, "cluster_room_conflicts_total") == 0 {
        assert!(Instant::now() < end, "no conflict counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        probe.origin("r").await.expect("redis").as_deref(),
        Some("a")
    );

    // a's room ends: a releases it, and b, which still holds it, claims it.
    anchor.close().await;
    origin_becomes(&probe, "r", Some("b")).await;
    cluster_health(&a, "origin_rooms", 0.into()).await;

    // b shuts down: it leaves at once (no waiting for the expiry), its claim with it.
    drop(b.done.take());
    drop(b);
    origin_becomes(&probe, "r", None).await;
    cluster_health(&a, "nodes", 1.into()).await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_serving_without_redis_and_one_without_it_at_start_does_not_start() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = server_with(in_cluster(&redis, "a")).await;
    cluster_health(&a, "redis", "ok".into()).await;
    drop(redis);
    cluster_health(&a, "redis", "unreachable".into()).await;
    // Its own clients are still served.
    let anchor = join(&a, "anchor", Role::Anchor).await;
    let viewer = join(&a, "viewer", Role::Audience).await;
    assert!(metric(&a.get("/metrics").await.1, "cluster_redis_errors_total") > 0);
    viewer.close().await;
    anchor.close().await;

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
