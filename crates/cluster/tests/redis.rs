//! The registry, the room directory and the inboxes against a real Redis (started by the test on
//! loopback), with nodes in this process.

use std::time::Duration;

use miclink_cluster::testing::RedisServer;
use miclink_cluster::{Claim, Cluster, ClusterConfig, Load, MAX_MESSAGE, Membership};

async fn node(redis: &RedisServer, id: &str) -> Cluster {
    let mut config = ClusterConfig::new(&redis.url(), id, &format!("http://{id}.test"));
    config.media = vec!["127.0.0.1:7882".parse().expect("addr")];
    config.ttl = Duration::from_millis(600);
    Cluster::connect(config).await.expect("connect")
}

#[tokio::test]
async fn nodes_see_each_other_and_one_that_stops_beating_is_lost() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a").await, node(&redis, "b").await);
    a.heartbeat(Load::default(), &[]).await.expect("beat");
    b.heartbeat(
        Load {
            rooms: 1,
            members: 7,
        },
        &[],
    )
    .await
    .expect("beat");
    let nodes = a.nodes().await.expect("nodes");
    assert_eq!(nodes.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(nodes["b"].load.members, 7);
    assert_eq!(nodes["b"].http, "http://b.test");
    let mut membership = Membership::default();
    membership.update(&nodes);

    // b stops beating; a keeps on. Within the expiry b is gone, and pruned from the set.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.heartbeat(Load::default(), &[]).await.expect("beat");
    }
    let nodes = a.nodes().await.expect("nodes");
    let changes = membership.update(&nodes);
    assert_eq!(changes.lost, ["b"]);
    assert!(changes.joined.is_empty());

    // A node that leaves is gone at once.
    a.leave(&[]).await.expect("leave");
    assert!(b.nodes().await.expect("nodes").is_empty());
}

#[tokio::test]
async fn a_room_has_one_origin_which_alone_renews_or_releases_it() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a").await, node(&redis, "b").await);
    let room = "r1".to_owned();
    assert_eq!(a.claim_room(&room).await.expect("claim"), Claim::Origin);
    // Claiming again is harmless; another node finds it taken.
    assert_eq!(a.claim_room(&room).await.expect("claim"), Claim::Origin);
    assert_eq!(
        b.claim_room(&room).await.expect("claim"),
        Claim::Elsewhere("a".into())
    );
    assert_eq!(b.origin(&room).await.expect("origin").as_deref(), Some("a"));
    assert!(!b.release_room(&room).await.expect("release"), "not b's");

    // The origin's heartbeat keeps it past the expiry.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lost = a
            .heartbeat(Load::default(), std::slice::from_ref(&room))
            .await
            .expect("beat");
        assert!(lost.is_empty());
    }
    assert_eq!(b.origin(&room).await.expect("origin").as_deref(), Some("a"));

    // a stalls past the expiry; b takes the room; a learns at its next renewal that it lost it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(b.claim_room(&room).await.expect("claim"), Claim::Origin);
    let lost = a
        .heartbeat(Load::default(), std::slice::from_ref(&room))
        .await
        .expect("beat");
    assert_eq!(lost, std::slice::from_ref(&room));
    assert_eq!(b.origin(&room).await.expect("origin").as_deref(), Some("b"));

    // Released by its origin, it is free for anyone.
    assert!(b.release_room(&room).await.expect("release"));
    assert_eq!(b.origin(&room).await.expect("origin"), None);
    assert_eq!(a.claim_room(&room).await.expect("claim"), Claim::Origin);
}

#[tokio::test]
async fn renewal_covers_many_rooms_and_names_only_those_lost() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a").await, node(&redis, "b").await);
    let rooms: Vec<String> = (0..600).map(|i| format!("room{i}")).collect();
    for r in &rooms {
        assert_eq!(a.claim_room(r).await.expect("claim"), Claim::Origin);
    }
    // b releases nothing of a's, and a release of a's room by a frees it.
    assert!(a.release_room(&rooms[7]).await.expect("release"));
    assert_eq!(b.claim_room(&rooms[7]).await.expect("claim"), Claim::Origin);
    let lost = a.heartbeat(Load::default(), &rooms).await.expect("beat");
    assert_eq!(lost, [rooms[7].clone()]);
}

#[tokio::test]
async fn inboxes_carry_messages_between_nodes_and_refuse_oversize_ones() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a").await, node(&redis, "b").await);
    let mut inbox = b.inbox().await.expect("inbox");
    a.send("b", b"hello b").await.expect("send");
    a.send("c", b"nobody listens")
        .await
        .expect("send to no one");
    assert!(matches!(
        a.send("b", &vec![0; MAX_MESSAGE + 1]).await,
        Err(miclink_cluster::ClusterError::TooLarge(_))
    ));
    a.send("b", b"second").await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(5), inbox.next())
        .await
        .expect("in time");
    assert_eq!(got.as_deref(), Some(&b"hello b"[..]));
    let got = tokio::time::timeout(Duration::from_secs(5), inbox.next())
        .await
        .expect("in time");
    assert_eq!(got.as_deref(), Some(&b"second"[..]));
}

#[tokio::test]
async fn a_bad_node_id_or_an_unreachable_redis_is_a_clear_error() {
    let redis = RedisServer::start();
    let config = ClusterConfig::new(&redis.url(), "a:b", "http://x");
    let e = Cluster::connect(config).await.err().expect("refused");
    assert!(e.to_string().contains("node id"), "{e}");
    let port = redis.port;
    drop(redis);
    let config = ClusterConfig::new(&format!("redis://127.0.0.1:{port}/"), "a", "http://x");
    assert!(Cluster::connect(config).await.is_err());
}
