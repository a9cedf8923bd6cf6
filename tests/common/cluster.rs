//! Cluster nodes for the tests: in-process servers (or a probe) joined to a Redis the test
//! started, all with the same cluster secret.

use std::time::{Duration, Instant};

use miclink::Config;
use miclink_cluster::testing::RedisServer;
use miclink_cluster::{Cluster, ClusterConfig};

use super::{METRICS_TOKEN, Server, server_with};

/// The cluster secret every test node shares.
pub const SECRET: &str = "cluster-secret-for-tests-0123";

/// Node `id`'s configuration for the Redis at `url`, with the tests' secret.
pub fn node_config(url: &str, id: &str) -> ClusterConfig {
    let mut cluster = ClusterConfig::new(url, id, &format!("http://{id}.test"));
    cluster.secret = Some(SECRET.to_owned());
    cluster
}

pub fn in_cluster(redis: &RedisServer, id: &str) -> impl FnOnce(&mut Config) + use<> {
    in_cluster_ttl(redis, id, Duration::from_millis(900))
}

/// A node whose entry and claims outlive its last heartbeat by `ttl`.
pub fn in_cluster_ttl(
    redis: &RedisServer,
    id: &str,
    ttl: Duration,
) -> impl FnOnce(&mut Config) + use<> {
    let (url, id) = (redis.url(), id.to_owned());
    move |c| {
        let mut cluster = node_config(&url, &id);
        cluster.ttl = ttl;
        c.cluster = Some(cluster);
    }
}

/// Redis and two in-process nodes, a and b, that see each other.
pub async fn two_nodes() -> (RedisServer, Server, Server) {
    let redis = RedisServer::start();
    let a = server_with(in_cluster(&redis, "a")).await;
    let b = server_with(in_cluster(&redis, "b")).await;
    cluster_health(&b, "nodes", 2.into()).await;
    cluster_health(&a, "nodes", 2.into()).await;
    (redis, a, b)
}

/// A handle on the cluster that is no node (it never beats): reads the directory as nodes do.
pub async fn probe(redis: &RedisServer) -> Cluster {
    Cluster::connect(node_config(&redis.url(), "probe"))
        .await
        .expect("probe")
}

/// Wait up to 10 s for `what` of `/healthz`'s cluster part to be `want`.
pub async fn cluster_health(s: &Server, what: &str, want: serde_json::Value) {
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

pub async fn origin_becomes(probe: &Cluster, room: &str, want: Option<&str>) {
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

/// A `/metrics` value of a series without labels.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("miclink_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// `/metrics` with the per-connection series.
pub async fn node_metrics(s: &Server) -> String {
    s.get_with(
        "/metrics",
        &format!("Authorization: Bearer {METRICS_TOKEN}\r\n"),
    )
    .await
    .1
}
