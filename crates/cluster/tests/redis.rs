//! The registry, the room directory and the inboxes against a real Redis (started by the test on
//! loopback, with an ACL user and a password), with nodes in this process; and what somebody
//! who can write to that Redis but lacks the cluster secret can no longer do.

use std::time::Duration;

use miclink_cluster::testing::{RedisServer, TlsFiles};
use miclink_cluster::{Claim, Cluster, ClusterConfig, Load, MAX_MESSAGE, Membership, Refusal};
use redis::AsyncCommands;

const SECRET: &str = "cluster-secret-0123456789";

fn config(redis: &RedisServer, id: &str, secret: &str) -> ClusterConfig {
    let mut config = ClusterConfig::new(&redis.url(), id, &format!("http://{id}.test"));
    config.media = vec!["127.0.0.1:7882".parse().expect("addr")];
    config.ttl = Duration::from_millis(600);
    config.secret = Some(secret.to_owned());
    config
}

async fn node(redis: &RedisServer, id: &str) -> Cluster {
    Cluster::connect(config(redis, id, SECRET))
        .await
        .expect("connect")
}

/// A plain connection to the same Redis with the nodes' credentials: what somebody who got
/// hold of them (but not of the cluster secret) can do.
async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn next_within(inbox: &mut miclink_cluster::Inbox, ms: u64) -> Option<Vec<u8>> {
    tokio::time::timeout(Duration::from_millis(ms), inbox.next())
        .await
        .ok()
        .flatten()
        .map(|m| m.body)
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
    a.heartbeat(Load::default(), &[]).await.expect("beat");
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
    a.heartbeat(Load::default(), &[]).await.expect("beat");
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
    let got = next_within(&mut inbox, 5_000).await;
    assert_eq!(got.as_deref(), Some(&b"hello b"[..]));
    let got = tokio::time::timeout(Duration::from_secs(5), inbox.next())
        .await
        .expect("in time")
        .expect("a message");
    assert_eq!((got.from.as_str(), &got.body[..]), ("a", &b"second"[..]));
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

#[tokio::test]
async fn registry_entries_claims_and_messages_made_without_the_secret_are_refused_and_counted() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a").await, node(&redis, "b").await);
    a.heartbeat(Load::default(), &[]).await.expect("beat");
    b.heartbeat(Load::default(), &[]).await.expect("beat");
    let mut con = raw(&redis).await;

    // A node written straight into the registry: as an older version wrote entries, and
    // signed by a node with another secret.
    let fake = r#"{"id":"fake","boot":1,"http":"http://attacker.invalid","media":[],"load":{"rooms":0,"members":0}}"#;
    let _: () = con.set("miclink:node:fake", fake).await.expect("set");
    let _: () = con.sadd("miclink:nodes", "fake").await.expect("sadd");
    let outsider = Cluster::connect(config(&redis, "outsider", "another-secret-0123456"))
        .await
        .expect("connect");
    outsider
        .heartbeat(Load::default(), &[])
        .await
        .expect("beat");
    let nodes = a.nodes().await.expect("nodes");
    assert_eq!(nodes.keys().collect::<Vec<_>>(), ["a", "b"], "no fake node");
    assert!(a.refused().records(Refusal::Unsigned) >= 1);
    assert!(a.refused().records(Refusal::BadSignature) >= 1);

    // A room "held" by the fake node, or by the outsider: no holder, so the next claim takes
    // the room over.
    let _: () = con.set("miclink:room:r", "fake").await.expect("set");
    assert_eq!(a.origin("r").await.expect("origin"), None);
    assert_eq!(a.claim_room("r").await.expect("claim"), Claim::Origin);
    assert_eq!(b.origin("r").await.expect("origin").as_deref(), Some("a"));
    assert!(outsider.claim_room("s").await.expect("claim") == Claim::Origin);
    assert_eq!(
        a.origin("s").await.expect("origin"),
        None,
        "not a cluster node"
    );
    assert_eq!(a.claim_room("s").await.expect("claim"), Claim::Origin);
    // A's claim copied onto another room is no claim there.
    let claim: String = con.get("miclink:room:r").await.expect("get");
    let _: () = con.set("miclink:room:t", &claim).await.expect("set");
    assert_eq!(b.origin("t").await.expect("origin"), None);
    assert!(a.refused().records(Refusal::BadSignature) >= 2);

    // Messages: unsigned (as an older node sent them), from the outsider, and a's own copied
    // into b's inbox again.
    let mut inbox = b.inbox().await.expect("inbox");
    let envelope = r#"{"from":"a","relay":{"type":"media_open","room":"r"}}"#;
    let _: i64 = con
        .publish("miclink:inbox:b", envelope)
        .await
        .expect("publish");
    outsider.send("b", b"{}").await.expect("send");
    assert_eq!(next_within(&mut inbox, 500).await, None);
    assert_eq!(b.refused().messages(Refusal::Unsigned), 1);
    assert_eq!(b.refused().messages(Refusal::BadSignature), 1);

    // A real message from a, captured on the way and published again: once only.
    let mut spy = redis::Client::open(redis.url())
        .expect("url")
        .get_async_pubsub()
        .await
        .expect("pubsub");
    spy.subscribe("miclink:inbox:b").await.expect("subscribe");
    let mut spied = spy.into_on_message();
    a.send("b", b"once").await.expect("send");
    let copy = {
        use futures_util::StreamExt;
        let msg = tokio::time::timeout(Duration::from_secs(5), spied.next())
            .await
            .expect("in time")
            .expect("a message");
        msg.get_payload_bytes().to_vec()
    };
    assert_eq!(
        next_within(&mut inbox, 5_000).await.as_deref(),
        Some(&b"once"[..])
    );
    let _: i64 = con
        .publish("miclink:inbox:b", &copy)
        .await
        .expect("publish");
    // ... and into another node's inbox, for which it was not sealed.
    let mut a_inbox = a.inbox().await.expect("inbox");
    let _: i64 = con
        .publish("miclink:inbox:a", &copy)
        .await
        .expect("publish");
    assert_eq!(next_within(&mut inbox, 500).await, None);
    assert_eq!(next_within(&mut a_inbox, 200).await, None);
    assert_eq!(b.refused().messages(Refusal::Replayed), 1);
    assert_eq!(a.refused().messages(Refusal::BadSignature), 1);
    // a drops out of the registry (its entry deleted, as an attacker with the nodes' Redis
    // credentials can) and comes back; b's inbox is subscribed anew meanwhile. The copy is
    // still refused: what b took from a is remembered by b, not by the registry or the inbox.
    let _: () = con.del("miclink:node:a").await.expect("del");
    b.nodes().await.expect("nodes");
    drop(inbox);
    let mut inbox = b.inbox().await.expect("inbox");
    a.heartbeat(Load::default(), &[]).await.expect("beat");
    b.nodes().await.expect("nodes");
    let _: i64 = con
        .publish("miclink:inbox:b", &copy)
        .await
        .expect("publish");
    assert_eq!(next_within(&mut inbox, 500).await, None);
    assert_eq!(b.refused().messages(Refusal::Replayed), 2);

    // A node that is no longer live (it left) is not heard either, with the right secret.
    let gone = node(&redis, "gone").await;
    gone.heartbeat(Load::default(), &[]).await.expect("beat");
    gone.send("b", b"while live").await.expect("send");
    assert_eq!(
        next_within(&mut inbox, 5_000).await.as_deref(),
        Some(&b"while live"[..])
    );
    gone.leave(&[]).await.expect("leave");
    // b's next registry read (its heartbeat's) no longer finds it.
    b.nodes().await.expect("nodes");
    gone.send("b", b"after leaving").await.expect("send");
    assert_eq!(next_within(&mut inbox, 500).await, None);
    assert_eq!(b.refused().messages(Refusal::UnknownNode), 1);
}

#[tokio::test]
async fn without_the_password_redis_refuses_and_with_tls_the_cluster_works() {
    let redis = RedisServer::start();
    // The default user is off: no password, nothing.
    let mut anon = redis::Client::open(redis.anonymous_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("a connection (refused at the first command)");
    let e = anon
        .get::<_, Option<String>>("miclink:room:r")
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("NOAUTH"), "{e}");
    // The nodes' user reaches only the cluster's keys.
    let mut con = raw(&redis).await;
    let e = con
        .set::<_, _, ()>("other", "x")
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("NOPERM"), "{e}");
    drop(redis);

    // TLS: a CA, a certificate for 127.0.0.1 signed by it, and a Redis that speaks TLS only.
    let dir = std::env::temp_dir().join(format!("miclink-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let files = tls_files(&dir);
    let redis = RedisServer::start_tls(&files);
    assert!(redis.url().starts_with("rediss://"));
    let with_ca = |id: &str| {
        let mut c = config(&redis, id, SECRET);
        c.redis_ca = Some(files.ca.clone());
        c
    };
    let a = Cluster::connect(with_ca("a"))
        .await
        .expect("TLS with the CA");
    let b = Cluster::connect(with_ca("b"))
        .await
        .expect("TLS with the CA");
    a.heartbeat(Load::default(), &[]).await.expect("beat");
    let mut inbox = b.inbox().await.expect("inbox");
    a.send("b", b"over tls").await.expect("send");
    assert_eq!(
        next_within(&mut inbox, 5_000).await.as_deref(),
        Some(&b"over tls"[..])
    );
    assert_eq!(a.claim_room("r").await.expect("claim"), Claim::Origin);
    assert_eq!(b.origin("r").await.expect("origin").as_deref(), Some("a"));
    // Without the CA, the server's certificate is not trusted.
    assert!(Cluster::connect(config(&redis, "c", SECRET)).await.is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// A CA and a certificate for 127.0.0.1 it signed, as PEM files in `dir`.
fn tls_files(dir: &std::path::Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("cert");
    let files = TlsFiles {
        cert: dir.join("redis.crt"),
        key: dir.join("redis.key"),
        ca: dir.join("ca.crt"),
    };
    std::fs::write(&files.cert, cert.pem()).expect("write");
    std::fs::write(&files.key, key.serialize_pem()).expect("write");
    std::fs::write(&files.ca, ca_cert.pem()).expect("write");
    files
}
