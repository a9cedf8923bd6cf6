//! Servers as cluster nodes (`--redis-url`) against a Redis the test starts on loopback: they
//! register and see each other, claim the rooms they hold in the room directory and release
//! them, leave at shutdown, keep serving when Redis goes, carry one room's sessions across
//! nodes to its origin (WHIP and WHEP are sent there), and its media to every node with members
//! over one relay each.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use miclink_cluster::Cluster;
use miclink_cluster::testing::RedisServer;
use miclink_loadtest::client;
use miclink_loadtest::marker::Kind;
use miclink_loadtest::peer::{Peer, Publisher, StreamSpec};
use miclink_loadtest::recv::Recv;
use miclink_protocol::{EndReason, Event, Request, Role, VideoQuality};
use tokio::sync::Notify;

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

/// `user` joins `room` on the node at `url` as `role`.
async fn in_room(url: String, room: &str, user: &str, role: Role) -> client::Member {
    client::Member::join(
        &url,
        room,
        user,
        role,
        Recv::logging(Instant::now()),
        client::Options::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{user} joins {room}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_claim_their_rooms_relay_a_viewer_and_leave_at_shutdown() {
    let redis = RedisServer::start();
    let a = server_with(in_cluster(&redis, "a")).await;
    // b's entry and claims would outlive it by 30 s: what goes at once went by its leaving.
    let mut b = server_with(in_cluster_ttl(&redis, "b", Duration::from_secs(30))).await;
    cluster_health(&a, "nodes", 2.into()).await;
    assert_eq!(a.health().await["cluster"]["node"], "a");
    let probe = probe(&redis).await;
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

    // WHIP for the room on b is sent on to a (307, the same path there); a player for a room
    // nobody holds finds no live room.
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
    let sdp = "Content-Type: application/sdp\r\n";
    for path in ["/whip/r"] {
        let reply = b.http("POST", path, sdp, offer).await;
        assert_eq!(reply.status, 307, "{path}: {}", reply.body);
        let location = reply
            .headers
            .iter()
            .find(|(name, _)| name == "location")
            .map(|(_, v)| v.as_str());
        assert_eq!(location, Some(format!("http://a.test{path}").as_str()));
    }
    let reply = b.http("POST", "/whep/nobody-here", sdp, offer).await;
    assert_eq!(reply.status, 404, "{}", reply.body);

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
    let probe = Cluster::connect(node_config(&url, "probe"))
        .await
        .expect("probe");
    origin_becomes(&probe, "r", Some("a")).await;
    viewer.close().await;
    anchor.close().await;
    drop(redis);

    // No Redis at all: the server says so and stops.
    let mut s = server_with(move |c| {
        c.cluster = Some(node_config(&url, "late"));
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
            .env("MICLINK_CLUSTER_SECRET", SECRET)
            .env("MICLINK_NODE_ID", id)
            .env("MICLINK_METRICS_TOKEN", METRICS_TOKEN)
            .spawn()
            .expect("start the server binary");
        NodeProcess { child, http }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// Stop the process (SIGSTOP) until the guard is dropped (SIGCONT): a node that is slow,
    /// not gone.
    fn freeze(&self) -> Frozen {
        let pid = self.child.id().to_string();
        let signal = |s: &str| {
            let ok = std::process::Command::new("kill")
                .args([s, &pid])
                .status()
                .is_ok_and(|st| st.success());
            assert!(ok, "kill {s} {pid}");
        };
        signal("-STOP");
        Frozen(pid)
    }

    /// `/metrics`.
    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.http)
            .await
            .expect("connect");
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {METRICS_TOKEN}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }
}

/// A node process stopped by [`NodeProcess::freeze`]; dropped, it goes on.
struct Frozen(String);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0])
            .status();
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

/// Video packets `m` received from `from`.
fn video_from(m: &client::Member, from: &str) -> usize {
    m.recv
        .arrivals()
        .get(&(from.to_owned(), Kind::Video))
        .map_or(0, |a| a.seqs.len())
}

fn got_video(m: &client::Member, from: &str) -> bool {
    video_from(m, from) > 30
}

/// An in-process node's `/metrics`.
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

/// The users with a connection of kind `pc` in room "r", from a node's `/metrics`.
fn connections(metrics: &str, pc: &str) -> Vec<String> {
    let mut users: Vec<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("miclink_peer_rtp_out_total{room=\"r\",user=\""))
        .filter_map(|l| l.split_once("\",pc=\""))
        .filter(|(_, rest)| rest.starts_with(&format!("{pc}\"")))
        .map(|(user, _)| user.to_owned())
        .collect();
    users.sort();
    users
}

/// The anchor unlinks `member` (`disconnect_user`).
async fn unlink(anchor: &client::Member, member: &client::Member) {
    anchor
        .call(Request::DisconnectUser {
            user: miclink_protocol::Ident::new(&member.user).expect("id"),
        })
        .await
        .expect("unlinked");
}

/// A member applies (on whatever node it is connected to) and the anchor accepts on a.
async fn admit(anchor: &mut client::Member, member: &mut client::Member) {
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
}

/// One room across three nodes: the anchor on its origin a (a process of its own), a member
/// who applies on b and one on c, both accepted by the anchor on a, a viewer on b and two on c.
/// Everyone's requests reach the room on a; everyone gets everyone's media, the viewers' and
/// members' from their own node, which gets each stream from a over one relay connection
/// whatever the number of its viewers, and pushes its own members' streams to a over one; a member who reloads its page on b is seen again; a
/// member the anchor unlinks stops reaching b and c at once; killing c leaves a and b serving; when a dies outright the members on b hear that
/// their room ended (`node_lost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_nodes_its_media_crosses_once_per_node_and_ends_when_its_node_dies() {
    let redis = RedisServer::start();
    let a = NodeProcess::start(&redis, "a");
    let b = server_with(in_cluster(&redis, "b")).await;
    let c = NodeProcess::start(&redis, "c");
    cluster_health(&b, "nodes", 3.into()).await;
    let probe = probe(&redis).await;

    let stop = Arc::new(Notify::new());
    let streams = [StreamSpec::audio(48_000), StreamSpec::video(300_000, 30)];
    let member_of = |url: String, user: &'static str, role: Role| in_room(url, "r", user, role);
    let mut anchor = member_of(a.url(), "anchor", Role::Anchor).await;
    anchor
        .publish(&streams, stop.clone(), None)
        .await
        .expect("the anchor publishes");
    assert_eq!(
        probe.origin("r").await.expect("redis").as_deref(),
        Some("a")
    );

    // Viewers on b and c: the room's state is a's, and the anchor's media arrives.
    let viewer_b = join(&b, "viewer-b", Role::Audience).await;
    assert_eq!(viewer_b.join.room.anchor.as_str(), "anchor");
    let session = viewer_b.join.session.clone();
    assert!(
        session.starts_with("a."),
        "the token names its node: {session}"
    );
    let viewer_c1 = member_of(c.url(), "viewer-c1", Role::Audience).await;
    let viewer_c2 = member_of(c.url(), "viewer-c2", Role::Audience).await;
    for v in [&viewer_b, &viewer_c1, &viewer_c2] {
        until("the anchor's video at a viewer", || got_video(v, "anchor"))
            .await
            .unwrap_or_else(|| panic!("{}", seen(v)));
    }

    // A member applies on b and one on c; the anchor, on a, accepts both; they publish.
    let mut member_b = join(&b, "member-b", Role::Audience).await;
    admit(&mut anchor, &mut member_b).await;
    let mut member_c = member_of(c.url(), "member-c", Role::Audience).await;
    admit(&mut anchor, &mut member_c).await;
    for m in [&mut member_b, &mut member_c] {
        m.publish(&streams, stop.clone(), None)
            .await
            .expect("a member publishes");
    }
    let everyone = [
        &anchor, &member_b, &member_c, &viewer_b, &viewer_c1, &viewer_c2,
    ];
    for m in everyone {
        for publisher in ["anchor", "member-b", "member-c"] {
            if m.user != publisher {
                until("everyone's video everywhere", || got_video(m, publisher))
                    .await
                    .unwrap_or_else(|| panic!("{publisher}'s video: {}", seen(m)));
            }
        }
    }

    // a sends the room's streams to b and to c once each: its subscribe connections are the
    // anchor's and the two relays; b and c feed their own viewers and members. The members
    // linked on b and c publish there, and each node pushes them to a over one relay: a's
    // publish connections are the anchor's, the two relays', and a stand-in for each member.
    let metrics_a = a.metrics().await;
    assert_eq!(
        connections(&metrics_a, "subscribe"),
        ["anchor", "relay.b", "relay.c"],
        "{metrics_a}"
    );
    assert_eq!(
        connections(&metrics_a, "publish"),
        ["anchor", "member-b", "member-c", "relay.b", "relay.c"],
        "{metrics_a}"
    );
    assert!(
        metric(&metrics_a, "media_rtp_relayed_total") > 0,
        "{metrics_a}"
    );
    let metrics_c = c.metrics().await;
    assert_eq!(
        connections(&metrics_c, "subscribe"),
        ["member-c", "relay.a", "viewer-c1", "viewer-c2"],
        "{metrics_c}"
    );
    let metrics_b = b
        .get_with(
            "/metrics",
            &format!("Authorization: Bearer {METRICS_TOKEN}\r\n"),
        )
        .await
        .1;
    assert_eq!(
        connections(&metrics_b, "subscribe"),
        ["member-b", "relay.a", "viewer-b"],
        "{metrics_b}"
    );
    // member-b's own publish connection is b's (its stand-in on a is fed by b's push).
    let peer_rtp_in = |metrics: &str, user: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "miclink_peer_rtp_in_total{{room=\"r\",user=\"{user}\",pc=\"publish\"}} "
                ))
            })
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(peer_rtp_in(&metrics_b, "member-b") > 0, "{metrics_b}");
    for s in [&metrics_b, &metrics_c] {
        assert!(metric(s, "cluster_relayed_out_total") > 0, "{s}");
        assert!(metric(s, "cluster_relayed_in_total") > 0, "{s}");
    }

    // member-b reloads its page: a new socket on b joins as the same user (rule 9), keeps its
    // seat and publishes again; b and c get its media again (the stand-in b holds for it is
    // the origin's to end, not the rejoin's).
    let mut member_b = {
        let mut again = join(&b, "member-b", Role::Audience).await;
        drop(member_b);
        again
            .publish(&streams, stop.clone(), None)
            .await
            .expect("member-b publishes again");
        again
    };
    for v in [&viewer_b, &viewer_c1] {
        let before = video_from(v, "member-b");
        until("member-b's video again after its reload", || {
            video_from(v, "member-b") > before + 60
        })
        .await
        .unwrap_or_else(|| panic!("{}", seen(v)));
    }

    // The anchor unlinks member-b on a: its media stops reaching b and c at once (what is on
    // the wire lands within a moment; nothing comes after).
    unlink(&anchor, &member_b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<usize> = [&viewer_b, &viewer_c1, &anchor]
        .iter()
        .map(|m| video_from(m, "member-b"))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later: Vec<usize> = [&viewer_b, &viewer_c1, &anchor]
        .iter()
        .map(|m| video_from(m, "member-b"))
        .collect();
    assert_eq!(
        after, later,
        "member-b's video still arrives after the unlink"
    );

    // The anchor unlinks member-c while c is frozen (it cannot take member-c's streams off
    // its push to a yet): a stops forwarding member-c at once and makes no stand-in again
    // from the streams c still pushes (its seats do not allow member-c any more).
    let frozen = c.freeze();
    unlink(&anchor, &member_c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics_a = a.metrics().await;
    assert_eq!(
        connections(&metrics_a, "publish"),
        ["anchor", "relay.b", "relay.c"],
        "no publish connection of member-b's or member-c's is left on a: {metrics_a}"
    );
    drop(frozen);

    // c dies outright: a and b go on serving (the anchor's video keeps reaching b).
    drop(c);
    cluster_health(&b, "nodes", 2.into()).await;
    let before = video_from(&viewer_b, "anchor");
    until("the anchor's video at b once c is gone", || {
        video_from(&viewer_b, "anchor") > before + 60
    })
    .await
    .unwrap_or_else(|| panic!("{}", seen(&viewer_b)));
    let metrics_a = a.metrics().await;
    assert_eq!(
        connections(&metrics_a, "subscribe"),
        ["anchor", "relay.b"],
        "a let c's relay go: {metrics_a}"
    );

    // a dies without a word: b finds it gone and ends the room for its members.
    drop(a);
    let mut viewer_b = viewer_b;
    for m in [&mut viewer_b, &mut member_b] {
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
    cluster_health(&b, "nodes", 1.into()).await;
    stop.notify_waiters();
}

/// Wait until each of `watchers` has received 60 more video packets from `from` than now.
async fn seen_again(watchers: &[&client::Member], from: &str, what: &str) {
    let before: Vec<usize> = watchers.iter().map(|m| video_from(m, from)).collect();
    for (m, before) in watchers.iter().zip(before) {
        until(what, || video_from(m, from) > before + 60)
            .await
            .unwrap_or_else(|| panic!("{from}'s video {what}: {}", seen(m)));
    }
}

/// A publisher who moves between nodes (its device's socket dies; it resumes its session
/// through another node and publishes there) is seen everywhere again after each move: from
/// the origin to another node, between two other nodes, and back to the origin. When its
/// streams reach a node while its old place there still stands (here: the node it left is
/// frozen for two seconds, so the origin keeps the stand-in that node fed), they wait and are
/// taken up once that place goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_moving_between_nodes_is_seen_everywhere_after_each_move() {
    let redis = RedisServer::start();
    let a = NodeProcess::start(&redis, "a");
    let b = NodeProcess::start(&redis, "b");
    let c = server_with(in_cluster(&redis, "c")).await;
    cluster_health(&c, "nodes", 3.into()).await;

    let stop = Arc::new(Notify::new());
    let streams = [StreamSpec::audio(48_000), StreamSpec::video(300_000, 30)];
    let mut anchor = in_room(a.url(), "r", "anchor", Role::Anchor).await;
    anchor
        .publish(&streams, stop.clone(), None)
        .await
        .expect("the anchor publishes");
    let viewer_b = in_room(b.url(), "r", "viewer-b", Role::Audience).await;
    let viewer_c = join(&c, "viewer-c", Role::Audience).await;

    // The member is linked on the origin, and publishes there.
    let mut member = in_room(a.url(), "r", "member", Role::Audience).await;
    admit(&mut anchor, &mut member).await;
    member
        .publish(&streams, stop.clone(), None)
        .await
        .expect("the member publishes");
    seen_again(&[&anchor, &viewer_b, &viewer_c], "member", "on a").await;

    for (to, what) in [
        (b.url(), "after its move to b"),
        (c.url.clone(), "after its move from b to c"),
        (a.url(), "back on a"),
    ] {
        let session = member.join.session.clone();
        // Leaving b, b hears late that the member publishes elsewhere now.
        let frozen = (to == c.url).then(|| b.freeze());
        member.kill().await;
        member = client::Member::resume(
            &to,
            "member",
            &session,
            Recv::logging(Instant::now()),
            client::Options::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("the member resumes {what}: {e:#}"));
        member
            .publish(&streams, stop.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("the member publishes {what}: {e:#}"));
        if let Some(frozen) = frozen {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(frozen);
        }
        seen_again(&[&anchor, &viewer_b, &viewer_c], "member", what).await;
        // And it still sees the anchor where it is now.
        seen_again(&[&member], "anchor", what).await;
    }

    // Its old places are gone: a has one publish connection of the member's, its own.
    let metrics_a = a.metrics().await;
    let publish = connections(&metrics_a, "publish");
    assert_eq!(
        publish.iter().filter(|u| *u == "member").count(),
        1,
        "{metrics_a}"
    );
    stop.notify_waiters();
}

/// A WHEP player that posts to a node other than the room's origin is served there, from the
/// room's relay: it decodes the anchor from a keyframe, the origin has no connection of its own
/// for it (only the relay), and the origin's seats count it as a viewer. Its `DELETE` ends its
/// media at once: its node lets the relay go, and the origin's viewers are one fewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_player_on_another_node_is_served_there_from_the_relay() {
    let (_redis, a, b) = two_nodes().await;
    let stop = Arc::new(Notify::new());
    let mut anchor = join(&a, "anchor", Role::Anchor).await;
    anchor
        .publish(
            &[StreamSpec::audio(48_000), StreamSpec::video(300_000, 30)],
            stop.clone(),
            None,
        )
        .await
        .expect("the anchor publishes");

    let recv = Recv::logging(Instant::now());
    let peer = Peer::new(Some(recv.clone())).await.expect("peer");
    let offer = peer.receive_offer(1).await.expect("offer");
    let reply = b
        .http(
            "POST",
            "/whep/r",
            "Content-Type: application/sdp\r\n",
            &offer,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let location = reply.header("location").expect("a resource").to_owned();
    assert!(location.starts_with("/whep/r/"), "{location}");
    peer.accept(reply.body.clone())
        .await
        .expect("the answer applies");
    let from_keyframe = || {
        let r = recv.arrivals();
        r.get(&("slot0".to_owned(), Kind::Video)).is_some_and(|v| {
            v.seqs.len() > 60
                && v.first_payload.as_deref().is_some_and(is_vp8_keyframe)
                && v.marked_by.iter().all(|m| m == "anchor")
        })
    };
    until("the anchor's video at the player on b", from_keyframe)
        .await
        .unwrap_or_else(|| panic!("{:?}", summary(&recv.arrivals())));

    let on_a = node_metrics(&a).await;
    assert_eq!(connections(&on_a, "subscribe"), ["relay.b"], "{on_a}");
    let on_b = node_metrics(&b).await;
    // b serves the player, fed by the relay from a (a client connection of b's, beside the
    // anchor's stand-in).
    let subs = connections(&on_b, "subscribe");
    assert!(
        subs.len() == 1 && subs[0].starts_with("whep-"),
        "b serves the player: {on_b}"
    );
    assert_eq!(
        connections(&on_b, "publish"),
        ["anchor", "relay.a"],
        "{on_b}"
    );
    let viewers = || async {
        anchor
            .call(Request::ListAudience {
                offset: None,
                limit: None,
            })
            .await
            .expect("the audience")["total"]
            .as_u64()
    };
    assert_eq!(viewers().await, Some(1));

    // The player leaves: its media on b ends at once, b lets the relay go, the origin counts
    // no viewer.
    let gone = b.http("DELETE", &location, "", "").await;
    assert!(gone.status < 300, "{gone:?}");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (on_a, on_b) = (node_metrics(&a).await, node_metrics(&b).await);
        if connections(&on_a, "subscribe").is_empty()
            && connections(&on_b, "subscribe").is_empty()
            && connections(&on_b, "publish").is_empty()
            && viewers().await == Some(0)
        {
            break;
        }
        assert!(Instant::now() < end, "left behind: {on_a}\n{on_b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.notify_waiters();
}

/// An encoder (WHIP) attached at the origin for an anchor whose socket is relayed from another
/// node publishes for the anchor at the origin: viewers on both nodes get its media, and an
/// anchor's socket that drops and resumes through that node again leaves it publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoder_for_an_anchor_on_another_node_keeps_publishing_across_the_anchors_resume() {
    let (_redis, a, b) = two_nodes().await;
    // The anchor goes live on a, and its socket moves to b.
    let moved = |m: client::Member| async {
        let session = m.join.session.clone();
        m.kill().await;
        client::Member::resume(
            &b.url,
            "anchor",
            &session,
            Recv::logging(Instant::now()),
            client::Options::default(),
        )
        .await
        .expect("the anchor resumes through b")
    };
    let anchor = moved(join(&a, "anchor", Role::Anchor).await).await;

    // Its encoder posts to the origin (b would send it there) and publishes for it.
    let stop = Arc::new(Notify::new());
    let (encoder, offer) = Publisher::offer(
        "whip",
        &[StreamSpec::audio(48_000), StreamSpec::video(300_000, 30)],
    )
    .await
    .expect("offer");
    let reply = a
        .http(
            "POST",
            "/whip/r",
            "Content-Type: application/sdp\r\nAuthorization: Bearer anchor\r\n",
            &offer,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    encoder
        .start(reply.body.clone(), stop.clone())
        .await
        .expect("the answer applies");
    let viewer_a = join(&a, "viewer-a", Role::Audience).await;
    let viewer_b = join(&b, "viewer-b", Role::Audience).await;
    seen_again(&[&viewer_a, &viewer_b], "anchor", "from the encoder").await;

    // The anchor's socket drops and resumes through b again: the encoder goes on.
    let _anchor = moved(anchor).await;
    seen_again(
        &[&viewer_a, &viewer_b],
        "anchor",
        "after the anchor's socket moved again",
    )
    .await;
    stop.notify_waiters();
}

/// The layers of the last `n` video packets `m` received from `from`.
fn last_layers(m: &client::Member, from: &str, n: usize) -> Vec<u8> {
    let arrivals = m.recv.arrivals();
    let layers = arrivals
        .get(&(from.to_owned(), Kind::Video))
        .map(|a| a.layers.clone())
        .unwrap_or_default();
    layers[layers.len().saturating_sub(n)..].to_vec()
}

/// A relay carries every simulcast layer: two viewers on another node than the anchor's get
/// the layer each asks for, chosen there, and the anchor hears that every layer is watched
/// (the relay takes them all). Then two more rooms between the same nodes, one held by each:
/// three relays between one pair of nodes, each on a flow of its own, all carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_carry_every_layer_the_other_node_chooses_per_viewer_and_rooms_share_no_flow() {
    let (_redis, a, b) = two_nodes().await;
    let stop = Arc::new(Notify::new());
    let mut anchor = join(&a, "anchor", Role::Anchor).await;
    let video = StreamSpec {
        keyframe_every: 30,
        ..StreamSpec::simulcast(120_000, 30)
    };
    anchor
        .publish(&[StreamSpec::audio(48_000), video], stop.clone(), None)
        .await
        .expect("the anchor publishes three layers");
    let low = join(&b, "low", Role::Audience).await;
    let high = join(&b, "high", Role::Audience).await;
    low.call(Request::SetSubscription {
        user: miclink_protocol::Ident::new("anchor").expect("id"),
        video: VideoQuality::Low,
    })
    .await
    .expect("a wish for the anchor, served on b");
    let settled = |m: &client::Member, layer: u8| {
        let l = last_layers(m, "anchor", 60);
        l.len() == 60 && l.iter().all(|&x| x == layer)
    };
    until(
        "the low layer at low and the high one at high, both on b",
        || settled(&low, 0) && settled(&high, 2),
    )
    .await
    .unwrap_or_else(|| panic!("{} / {}", seen(&low), seen(&high)));
    // Each viewer's stream is one numbering, whatever the layers it went through.
    for m in [&low, &high] {
        let arrivals = m.recv.arrivals();
        let v = &arrivals[&("anchor".to_owned(), Kind::Video)];
        let gaps = v
            .seqs
            .windows(2)
            .filter(|w| w[1] != w[0].wrapping_add(1))
            .count();
        assert!(
            gaps <= v.seqs.len() / 100,
            "{}: {gaps} breaks in {} packets",
            m.user,
            v.seqs.len()
        );
    }
    // The anchor is asked for every layer: b's relay carries them all.
    let all = [VideoQuality::Low, VideoQuality::Medium, VideoQuality::High];
    let mut heard = Vec::new();
    while heard != all {
        match anchor
            .wait_event("publisher_layers", Duration::from_secs(10))
            .await
        {
            Ok(Event::PublisherLayers { video }) => heard = video,
            _ => panic!("the anchor never heard that every layer is watched: {heard:?}"),
        }
    }
    let metrics = a
        .get_with(
            "/metrics",
            &format!("Authorization: Bearer {METRICS_TOKEN}\r\n"),
        )
        .await
        .1;
    assert_eq!(
        connections(&metrics, "subscribe"),
        ["relay.b"],
        "a sends the room to b over one relay: {metrics}"
    );

    // Two more rooms between the same two nodes: "s" held by a too (a second relay from a to
    // b) and "t" held by b (a relay the other way). Each relay has a flow of its own.
    let mut anchor_s = in_room(a.url.clone(), "s", "anchor-s", Role::Anchor).await;
    let mut anchor_t = in_room(b.url.clone(), "t", "anchor-t", Role::Anchor).await;
    let streams = [StreamSpec::audio(48_000), StreamSpec::video(300_000, 30)];
    for m in [&mut anchor_s, &mut anchor_t] {
        m.publish(&streams, stop.clone(), None)
            .await
            .expect("an anchor publishes");
    }
    let viewer_s = in_room(b.url.clone(), "s", "viewer-s", Role::Audience).await;
    let viewer_t = in_room(a.url.clone(), "t", "viewer-t", Role::Audience).await;
    for (v, anchor) in [(&viewer_s, "anchor-s"), (&viewer_t, "anchor-t")] {
        until("each room's video across its relay", || {
            got_video(v, anchor)
        })
        .await
        .unwrap_or_else(|| panic!("{}", seen(v)));
    }
    // The first room's viewers are still fed.
    let before = video_from(&high, "anchor");
    until("room r's video goes on beside the others", || {
        video_from(&high, "anchor") > before + 60
    })
    .await
    .unwrap_or_else(|| panic!("{}", seen(&high)));
    stop.notify_waiters();
}
