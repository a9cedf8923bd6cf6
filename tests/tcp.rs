//! ICE-TCP: members whose connections may use TCP only (no UDP socket at all, as behind a
//! firewall that blocks UDP) reach the media port over passive TCP candidates and get media both
//! ways; a TCP reader that stops reading costs only its own video, never the loop's other peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use miclink_loadtest::client::{Member, Options, SdpRewrite};
use miclink_loadtest::marker::Kind;
use miclink_loadtest::peer::StreamSpec;
use miclink_loadtest::recv::Recv;
use miclink_protocol::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

mod common;

fn tcp_only() -> Options {
    Options {
        tcp_only: true,
        ..Options::default()
    }
}

/// Packets of `kind` from `publisher` that `recv` has had.
fn count(recv: &Recv, publisher: &str, kind: Kind) -> u64 {
    recv.received(publisher, kind, 0, u32::MAX).0
}

/// Wait until `recv` has had more than `above` packets of `kind` from `publisher`.
async fn heard_above(recv: &Recv, publisher: &str, kind: Kind, above: u64) -> bool {
    let deadline = Instant::now() + common::WAIT;
    while count(recv, publisher, kind) <= above {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// The candidate lines of a description.
fn candidates(sdp: &str) -> Vec<&str> {
    sdp.lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_allowed_only_tcp_gets_media_both_ways_over_ice_tcp() {
    let server = common::server().await;
    let started = Instant::now();
    let stop = Arc::new(Notify::new());
    let anchor_recv = Recv::new(started);
    let mut anchor = common::client_join(
        &server,
        "anchor",
        Role::Anchor,
        anchor_recv.clone(),
        // Accepts the guest's application below.
        Options {
            auto_accept: true,
            ..Options::default()
        },
    )
    .await;
    anchor
        .publish(
            &[StreamSpec::audio(32_000), StreamSpec::video(300_000, 15)],
            stop.clone(),
            None,
        )
        .await
        .expect("anchor publishes over UDP");
    let guest_recv = Recv::new(started);
    let mut guest = common::client_join(
        &server,
        "guest",
        Role::Audience,
        guest_recv.clone(),
        tcp_only(),
    )
    .await;
    assert!(
        heard_above(&guest_recv, "anchor", Kind::Audio, 0).await,
        "the guest hears the anchor over TCP"
    );
    if !heard_above(&guest_recv, "anchor", Kind::Video, 0).await {
        let h = tokio::time::timeout(Duration::from_secs(5), server.health()).await;
        panic!(
            "the guest sees the anchor over TCP: audio {} health {h:?}",
            count(&guest_recv, "anchor", Kind::Audio)
        );
    }
    let sdp = guest
        .subscriber_sdp()
        .await
        .expect("a subscribe connection");
    let lines = candidates(&sdp);
    assert!(
        !lines.is_empty()
            && lines
                .iter()
                .all(|l| l.contains(" tcp ") || l.contains(" TCP ")),
        "the guest offers TCP candidates only: {lines:?}"
    );
    assert!(
        server.media_counter("tcp_accepted").await >= 1,
        "the server accepted a TCP connection"
    );

    // The other way: the guest links and publishes over TCP; the anchor (UDP) gets it.
    guest.apply(true).await.expect("the anchor accepts");
    guest
        .publish(
            &[StreamSpec::audio(32_000), StreamSpec::video(300_000, 15)],
            stop.clone(),
            None,
        )
        .await
        .expect("guest publishes over TCP");
    assert!(
        heard_above(&anchor_recv, "guest", Kind::Audio, 0).await,
        "the anchor hears the guest"
    );
    assert!(
        heard_above(&anchor_recv, "guest", Kind::Video, 0).await,
        "the anchor sees the guest"
    );
    assert!(
        server.media_counter("tcp_accepted").await >= 2,
        "publish and subscribe connections each came over TCP"
    );
    stop.notify_waiters();
    guest.close().await;
    anchor.close().await;
}

/// A TCP proxy on loopback in front of the media port's TCP listener that can stop reading what
/// the server sends (a client that stops reading): its socket toward the server has a small
/// receive buffer, so the server's side fills within a second or two.
struct Proxy {
    port: u16,
    /// The server's TCP port, learned from the first offer.
    target: Arc<AtomicU16>,
    paused: Arc<AtomicBool>,
    resumed: Arc<Notify>,
    /// Bytes carried from the server to the client.
    down: Arc<AtomicU64>,
}

async fn proxy() -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy binds");
    let port = listener.local_addr().expect("addr").port();
    let paused = Arc::new(AtomicBool::new(false));
    let resumed = Arc::new(Notify::new());
    let down = Arc::new(AtomicU64::new(0));
    let target = Arc::new(AtomicU16::new(0));
    let (p, r, d, t) = (
        paused.clone(),
        resumed.clone(),
        down.clone(),
        target.clone(),
    );
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server_port = t.load(Ordering::SeqCst);
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .set_recv_buffer_size(16 * 1024)
                .expect("small buffer");
            let Ok(upstream) = socket.connect(([127, 0, 0, 1], server_port).into()).await else {
                continue;
            };
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = upstream.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
            });
            let (p, r, d) = (p.clone(), r.clone(), d.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    while p.load(Ordering::SeqCst) {
                        let resumed = r.notified();
                        if !p.load(Ordering::SeqCst) {
                            break;
                        }
                        resumed.await;
                    }
                    let n = match server_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    d.fetch_add(n as u64, Ordering::Relaxed);
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Proxy {
        port,
        target,
        paused,
        resumed,
        down,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_reader_that_stops_reading_costs_only_its_own_video() {
    let server = common::server().await;
    let proxy = proxy().await;
    let started = Instant::now();
    let stop = Arc::new(Notify::new());
    // Enough video that a stalled reader's queues fill in about a second.
    let anchor = common::client_anchor(
        &server,
        started,
        &[StreamSpec::audio(32_000), StreamSpec::video(2_000_000, 30)],
        stop.clone(),
    )
    .await;
    let udp_recv = Recv::new(started);
    let udp_viewer = common::client_join(
        &server,
        "udp-viewer",
        Role::Audience,
        udp_recv.clone(),
        Options::default(),
    )
    .await;
    // The slow viewer's client reaches the server's passive candidate through the proxy.
    let (proxy_port, target) = (proxy.port, proxy.target.clone());
    let rewrite: SdpRewrite = Arc::new(move |sdp: &str| {
        let Some(port) = passive_port(sdp) else {
            return sdp.to_owned();
        };
        target.store(port, Ordering::SeqCst);
        sdp.replace(
            &format!(" {port} typ host tcptype passive"),
            &format!(" {proxy_port} typ host tcptype passive"),
        )
    });
    let slow_recv = Recv::new(started);
    let slow = Member::join(
        &server.url,
        "r",
        "slow-viewer",
        Role::Audience,
        slow_recv.clone(),
        Options {
            tcp_only: true,
            offer_rewrite: Some(rewrite),
            ..Options::default()
        },
    )
    .await
    .expect("slow viewer joins");
    assert!(
        heard_above(&slow_recv, "anchor", Kind::Video, 0).await,
        "the TCP viewer gets video through the proxy"
    );
    assert!(
        heard_above(&udp_recv, "anchor", Kind::Video, 0).await,
        "the UDP viewer gets video"
    );

    // The slow viewer stops reading for four seconds.
    proxy.paused.store(true, Ordering::SeqCst);
    let video_dropped = server.media_counter("tcp_video_dropped").await;
    let udp_before = count(&udp_recv, "anchor", Kind::Video);
    let udp_audio_before = count(&udp_recv, "anchor", Kind::Audio);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let udp_video = count(&udp_recv, "anchor", Kind::Video) - udp_before;
    let udp_audio = count(&udp_recv, "anchor", Kind::Audio) - udp_audio_before;
    // 2 Mbit/s of 1,200-byte packets is about 200 a second; audio is 50 a second.
    assert!(
        udp_video >= 500 && udp_audio >= 150,
        "the other viewer kept getting media while one TCP reader stalled: {udp_video} video, \
         {udp_audio} audio packets in 4 s"
    );
    let dropped = server.media_counter("tcp_video_dropped").await - video_dropped;
    assert!(
        dropped > 0,
        "the stalled connection's video was dropped, not queued without bound"
    );
    let health = server.health().await;
    assert_eq!(health["status"], "ok", "{health}");

    // It reads again: video resumes (at a keyframe the server asked for).
    let slow_before = count(&slow_recv, "anchor", Kind::Video);
    let down_before = proxy.down.load(Ordering::Relaxed);
    proxy.paused.store(false, Ordering::SeqCst);
    proxy.resumed.notify_waiters();
    assert!(
        heard_above(&slow_recv, "anchor", Kind::Video, slow_before + 100).await,
        "the TCP viewer gets video again once it reads"
    );
    // What was held back while it stalled was bounded: the server queued at most its limit,
    // and the kernel buffers theirs.
    let caught_up = proxy.down.load(Ordering::Relaxed) - down_before;
    assert!(caught_up > 0);
    stop.notify_waiters();
    slow.close().await;
    udp_viewer.close().await;
    anchor.close().await;
}

/// The port of the server's passive TCP candidate in `sdp`
/// ("a=candidate:F 1 tcp PRIO 127.0.0.1 PORT typ host tcptype passive").
fn passive_port(sdp: &str) -> Option<u16> {
    sdp.lines()
        .find(|l| l.contains("tcptype passive"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|p| p.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_garbage_and_oversized_tcp_connections_are_closed_and_keep_nobody_out() {
    let server = common::server().await;
    let started = Instant::now();
    let stop = Arc::new(Notify::new());
    let anchor =
        common::client_anchor(&server, started, &[StreamSpec::audio(32_000)], stop.clone()).await;
    let probe = common::client_join(
        &server,
        "probe",
        Role::Audience,
        Recv::new(started),
        Options::default(),
    )
    .await;
    let deadline = Instant::now() + common::WAIT;
    while probe.offers_answered() == 0 {
        assert!(Instant::now() < deadline, "no offer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let offer = probe.last_offer().await;
    let port =
        passive_port(&offer).unwrap_or_else(|| panic!("no passive TCP candidate in {offer}"));
    let refused_before = server.media_counter("tcp_refused").await;

    // Far more idle connections than a loop keeps pending, each sending nothing.
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    // Garbage (framed, not STUN), and a frame that declares more than any packet.
    let mut garbage = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    garbage
        .write_all(&[0, 8, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .expect("write");
    let mut oversized = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    oversized
        .write_all(&[0xff, 0xff, 0, 0])
        .await
        .expect("write");
    for stream in [&mut garbage, &mut oversized] {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the server closed the connection: {read:?}"
        );
    }

    // A real client still gets in over TCP while the idle ones are there.
    let recv = Recv::new(started);
    let guest =
        common::client_join(&server, "guest", Role::Audience, recv.clone(), tcp_only()).await;
    assert!(
        heard_above(&recv, "anchor", Kind::Audio, 0).await,
        "a TCP client connects past idle connections"
    );
    let refused = server.media_counter("tcp_refused").await - refused_before;
    // 400 idle over two loops of 128 pending each, plus the garbage and the oversized.
    assert!(
        refused >= 400 - 2 * 128 + 2,
        "idle connections past the cap were closed: {refused}"
    );
    stop.notify_waiters();
    drop(idle);
    guest.close().await;
    probe.close().await;
    anchor.close().await;
}

/// A binding request naming server ufrag `ufrag`, framed for ICE-TCP (RFC 4571).
fn framed_check(ufrag: &str) -> Vec<u8> {
    let username = format!("{ufrag}:client");
    let padded = username.len().div_ceil(4) * 4;
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&6u16.to_be_bytes());
    m.extend_from_slice(&(username.len() as u16).to_be_bytes());
    m.extend_from_slice(username.as_bytes());
    m.resize(20 + 4 + padded, 0);
    let mut framed = (m.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&m);
    framed
}

/// Whether the server closes `stream` within `limit` (the read ends or fails).
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Issue 26, item 4: the pending deadline was enforced only when something else woke the media
/// loop, so silent connections to an idle server held their descriptors until the next HTTP
/// request; and a check naming a ufrag nobody has kept its connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_connections_to_an_idle_server_close_at_their_deadline_and_unknown_ufrags_at_once()
 {
    let server = common::server().await;
    // The media port's number, from a subscribe offer; then everybody leaves, and the loops
    // hold nothing that needs time.
    let started = Instant::now();
    let stop = Arc::new(Notify::new());
    let anchor =
        common::client_anchor(&server, started, &[StreamSpec::audio(32_000)], stop.clone()).await;
    let probe = common::client_join(
        &server,
        "probe",
        Role::Audience,
        Recv::new(started),
        Options::default(),
    )
    .await;
    let deadline = Instant::now() + common::WAIT;
    while probe.offers_answered() == 0 {
        assert!(Instant::now() < deadline, "no offer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let offer = probe.last_offer().await;
    let port =
        passive_port(&offer).unwrap_or_else(|| panic!("no passive TCP candidate in {offer}"));
    stop.notify_waiters();
    probe.close().await;
    anchor.close().await;
    let deadline = Instant::now() + common::WAIT;
    while server.health().await["media"]["peers"] != 0 {
        assert!(Instant::now() < deadline, "connections left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A check naming a ufrag no connection has, on either loop's prefix: closed at once.
    for ufrag in ["00deadbeefdeadbe", "01deadbeefdeadbe"] {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        c.write_all(&framed_check(ufrag)).await.expect("write");
        assert!(
            closed_within(&mut c, Duration::from_secs(2)).await,
            "a check for unknown ufrag {ufrag} kept its connection"
        );
    }

    // Silent connections, and nothing else touching the server: each is closed by its 5 s
    // pending deadline, not by the next request that happens to wake the loop.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    for (i, c) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(c, Duration::from_secs(9)).await,
            "silent connection {i} still open past its deadline"
        );
    }
}
