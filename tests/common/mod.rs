//! The server in this process and members for end-to-end media tests: the load tool's own
//! simulated client (`miclink_loadtest::client`) over loopback, with test conveniences (waits
//! that panic with what arrived, lossy proxies). Nothing is mocked: ICE, DTLS and SRTP are real.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod ws;

use miclink::{Args, Config};
use miclink_loadtest::client::{self, SdpRewrite};
use miclink_loadtest::peer::{StreamSpec, VideoCodec};
use miclink_loadtest::recv::{Arrivals, Recv};
use miclink_protocol::{Event, Ident, JoinResult, Reply, Request, Role};
use tokio::sync::{Notify, oneshot};

pub use miclink_loadtest::marker::Kind;
pub use miclink_loadtest::peer::Burst;
pub use miclink_loadtest::shaper::Shape;

pub const WAIT: Duration = Duration::from_secs(20);

/// The token the test servers' per-connection metrics are read with.
pub const METRICS_TOKEN: &str = "test-metrics-token-0123";

/// A running server (signaling + media) on loopback ports chosen by the OS.
pub struct Server {
    pub url: String,
    pub http: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<Result<(), miclink::RunError>>>,
}

/// What an HTTP request got back.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Names in lower case, in the order sent (repeated ones repeat).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Server {
    /// A plain HTTP GET on the server's port: the status line and the body.
    pub async fn get(&self, path: &str) -> (String, String) {
        self.get_with(path, "").await
    }

    /// Any HTTP request on the server's port, with extra header lines (each ending in CRLF).
    pub async fn http(&self, method: &str, path: &str, headers: &str, body: &str) -> HttpReply {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.http)
            .await
            .expect("connect");
        s.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        HttpReply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// A GET with extra header lines (each ending in CRLF).
    pub async fn get_with(&self, path: &str, headers: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.http)
            .await
            .expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let status = out.lines().next().unwrap_or_default().to_owned();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// `/healthz` as JSON.
    pub async fn health(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/healthz").await.1).expect("healthz is JSON")
    }

    /// One per connection series of `/metrics`, e.g. `("nacks", "lossy", "subscribe")`.
    pub async fn peer_metric(&self, name: &str, user: &str, pc: &str) -> u64 {
        let auth = format!("Authorization: Bearer {METRICS_TOKEN}\r\n");
        let out = self.get_with("/metrics", &auth).await.1;
        let prefix =
            format!("miclink_peer_{name}_total{{room=\"r\",user=\"{user}\",pc=\"{pc}\"}} ");
        out.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{out}"))
    }

    pub async fn media_counter(&self, name: &str) -> u64 {
        self.health().await["media"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no media counter {name}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn server() -> Server {
    server_with(|_| {}).await
}

/// A server whose configuration `adjust` may change (the media port is always chosen by the OS,
/// on loopback: the tests see one host candidate per transport whatever the machine's
/// interfaces).
pub async fn server_with(adjust: impl FnOnce(&mut Config)) -> Server {
    start(|config| {
        adjust(config);
        if let Some(media) = &mut config.media {
            media.udp_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            media.local_only = false;
        }
    })
    .await
}

/// A server whose media port is bound on every address (serving this host only, as the
/// embedded defaults do) and advertises `public`.
pub async fn server_wildcard(public: Vec<std::net::IpAddr>) -> Server {
    start(|config| {
        if let Some(media) = &mut config.media {
            media.udp_addr = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
            media.local_only = true;
            media.public_ips = public;
        }
    })
    .await
}

async fn start(adjust: impl FnOnce(&mut Config)) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config::load(Args::default()).expect("defaults");
    config.metrics_token = Some(METRICS_TOKEN.to_owned());
    adjust(&mut config);
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(miclink::run(listener, config, async {
        let _ = stopped.await;
    }));
    Server {
        url: format!("ws://{addr}/ws"),
        http: addr,
        stop: Some(stop),
        done: Some(done),
    }
}

/// `user` joins room "r" on the load tool's own client (no test wrapper), with `options`.
pub async fn client_join(
    server: &Server,
    user: &str,
    role: Role,
    recv: Arc<Recv>,
    options: client::Options,
) -> client::Member {
    client::Member::join(&server.url, "r", user, role, recv, options)
        .await
        .unwrap_or_else(|e| panic!("{user} joins: {e:#}"))
}

/// The anchor of room "r" on the load tool's client, publishing `streams` until `stop`.
pub async fn client_anchor(
    server: &Server,
    started: Instant,
    streams: &[StreamSpec],
    stop: Arc<Notify>,
) -> client::Member {
    let mut anchor = client_join(
        server,
        "anchor",
        Role::Anchor,
        Recv::new(started),
        client::Options::default(),
    )
    .await;
    anchor
        .publish(streams, stop, None)
        .await
        .unwrap_or_else(|e| panic!("the anchor publishes: {e:#}"));
    anchor
}

/// What a member's subscribe connection received, by publisher (msid stream id) and kind.
pub type Received = HashMap<(String, Kind), Arrivals>;

/// Whether the first packet of a stream started a VP8 keyframe.
pub fn first_is_keyframe(s: &Arrivals) -> Option<bool> {
    s.first_payload.as_deref().map(is_vp8_keyframe)
}

/// A test member: the load tool's client with the pacing tests use (video: one packet a frame
/// at 30 frames a second, a keyframe every 30 frames and when asked; audio every 20 ms).
pub struct Member {
    pub user: String,
    pub join: JoinResult,
    inner: client::Member,
    stop: Arc<Notify>,
    /// The level this member's audio packets carry (RFC 6464, -dBov).
    level: Arc<AtomicU8>,
}

pub fn test_video(codec: VideoCodec) -> StreamSpec {
    StreamSpec {
        codec,
        keyframe_every: 30,
        ..StreamSpec::video(36_000, 30)
    }
}

impl Member {
    pub async fn join(url: &str, room: &str, user: &str, role: Role) -> Member {
        Member::join_with(url, room, user, role, client::Options::default()).await
    }

    /// Join with every 20th video packet from the server to this member's subscribe connection
    /// dropped by a UDP proxy (5% loss on its receive path). The proxy counts what it dropped.
    pub async fn join_lossy(url: &str, room: &str, user: &str, dropped: Arc<AtomicU64>) -> Member {
        let proxy: Arc<std::sync::Mutex<Option<u16>>> = Default::default();
        let video_pt = Arc::new(AtomicU8::new(0));
        let rewrite: SdpRewrite = Arc::new(move |sdp: &str| {
            let (server_port, vp8) = offer_port_and_vp8(sdp);
            if let Some(pt) = vp8 {
                video_pt.store(pt, Ordering::SeqCst);
            }
            let port = *proxy.lock().expect("proxy").get_or_insert_with(|| {
                lossy_proxy(
                    server_port,
                    video_pt.clone(),
                    dropped.clone(),
                    Toward::Client,
                )
            });
            sdp.replace(
                &format!(" {server_port} typ host"),
                &format!(" {port} typ host"),
            )
        });
        let options = client::Options {
            offer_rewrite: Some(rewrite),
            ..Default::default()
        };
        Member::join_with(url, room, user, Role::Audience, options).await
    }

    /// Join receiving through a narrow, lossy downlink (a shaping proxy on loopback).
    pub async fn join_shaped(url: &str, room: &str, user: &str, shape: Shape) -> Member {
        let options = client::Options {
            shape: Some(shape),
            ..Default::default()
        };
        Member::join_with(url, room, user, Role::Audience, options).await
    }

    async fn join_with(
        url: &str,
        room: &str,
        user: &str,
        role: Role,
        options: client::Options,
    ) -> Member {
        let inner = client::Member::join(
            url,
            room,
            user,
            role,
            Recv::logging(Instant::now()),
            options,
        )
        .await
        .unwrap_or_else(|e| panic!("{user}: {e:#}"));
        Member {
            user: user.to_owned(),
            join: inner.join.clone(),
            inner,
            stop: Arc::new(Notify::new()),
            level: Arc::new(AtomicU8::new(miclink_loadtest::peer::QUIET_DBOV)),
        }
    }

    pub async fn request(&self, request: Request) -> Reply {
        self.inner
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The next event of type `kind`, skipping others.
    pub async fn wait_event(&mut self, kind: &str) -> Event {
        self.inner
            .wait_event(kind, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The next `media_state` about `user` for which `pred(mic, camera, mic_blocked)` holds.
    pub async fn wait_media_state(
        &mut self,
        user: &str,
        pred: impl Fn(bool, bool, bool) -> bool,
    ) -> Event {
        loop {
            let e = self.wait_event("media_state").await;
            if let Event::MediaState {
                user: u,
                mic,
                camera,
                mic_blocked,
                ..
            } = &e
                && u == user
                && pred(*mic, *camera, *mic_blocked)
            {
                return e;
            }
        }
    }

    async fn publish_streams(&mut self, streams: &[StreamSpec], rewrite: Option<SdpRewrite>) {
        self.inner
            .publish(streams, self.stop.clone(), rewrite)
            .await
            .unwrap_or_else(|e| panic!("{}: publish: {e:#}", self.user));
    }

    /// From now on this member's audio packets carry `dbov` as their level.
    pub fn talk(&self, dbov: u8) {
        self.level.store(dbov, Ordering::Relaxed);
    }

    fn audio(&self) -> StreamSpec {
        StreamSpec {
            level: self.level.clone(),
            ..StreamSpec::audio(48_000)
        }
    }

    /// Publish VP8 video (unless `audio_only`) and Opus audio.
    pub async fn publish(&mut self, audio_only: bool) {
        let mut streams = vec![self.audio()];
        if !audio_only {
            streams.push(test_video(VideoCodec::Vp8));
        }
        self.publish_streams(&streams, None).await;
    }

    /// Publish H.264 video (constrained baseline, packetization mode 1) and Opus audio.
    pub async fn publish_h264(&mut self) {
        let streams = [StreamSpec::audio(48_000), test_video(VideoCodec::H264)];
        self.publish_streams(&streams, None).await;
    }

    /// Publish Opus audio and VP8 video in three simulcast layers (rids q, h, f at 12, 36
    /// and 120 kbit/s, a keyframe a second). Returns the layers' pause switch (bit 0 low).
    pub async fn publish_simulcast(&mut self) -> Arc<AtomicU8> {
        self.publish_simulcast_paused(0).await
    }

    /// [`Self::publish_simulcast`] with the layers in `paused` (bit 0 low) not sending from
    /// the start, as a browser holds its top layer until its estimate allows it.
    pub async fn publish_simulcast_paused(&mut self, paused: u8) -> Arc<AtomicU8> {
        let video = StreamSpec {
            keyframe_every: 30,
            ..StreamSpec::simulcast(120_000, 30)
        };
        video.paused.store(paused, Ordering::Relaxed);
        let paused = video.paused.clone();
        let streams = [self.audio(), video];
        self.publish_streams(&streams, None).await;
        paused
    }

    /// Publish Opus audio and VP8 video in three simulcast layers at a browser's rates (120,
    /// 360 and 1,200 kbit/s, 30 frames a second, a keyframe every 2 s four frames' size).
    pub async fn publish_simulcast_full_rate(&mut self) {
        let streams = [self.audio(), StreamSpec::simulcast(1_200_000, 30)];
        self.publish_streams(&streams, None).await;
    }

    /// Publish VP8 video alone, paced by `burst`: slow until [`Burst::go`], then fast.
    pub async fn publish_burst(&mut self, burst: Arc<Burst>) {
        let video = StreamSpec {
            burst: Some(burst),
            ..test_video(VideoCodec::Vp8)
        };
        self.publish_streams(&[video], None).await;
    }

    /// Publish through a proxy that drops every 20th video packet on the way to the server.
    pub async fn publish_lossy(&mut self, dropped: Arc<AtomicU64>) {
        let rewrite: SdpRewrite = Arc::new(move |sdp: &str| {
            let (server_port, vp8) = offer_port_and_vp8(sdp);
            let pt = Arc::new(AtomicU8::new(vp8.expect("VP8 answered")));
            let port = lossy_proxy(server_port, pt, dropped.clone(), Toward::Server);
            sdp.replace(
                &format!(" {server_port} typ host"),
                &format!(" {port} typ host"),
            )
        });
        let streams = [StreamSpec::audio(48_000), test_video(VideoCodec::Vp8)];
        self.publish_streams(&streams, Some(rewrite)).await;
    }

    /// Subscribe offers answered so far.
    pub fn offers_answered(&self) -> u64 {
        self.inner.offers_answered()
    }

    /// Offers that started a new subscribe connection.
    pub fn new_connections(&self) -> u64 {
        self.inner.new_connections()
    }

    /// The last subscribe offer the server sent.
    pub async fn last_offer(&self) -> String {
        self.inner.last_offer().await
    }

    /// Close the subscribe connection as a crashed client would.
    pub async fn drop_subscriber(&self) {
        self.inner.drop_subscriber().await;
    }

    /// Wait until more than `n` subscribe offers were answered.
    pub async fn wait_offers_above(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.offers_answered() <= n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no new subscribe offer",
                self.user
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Apply for a seat and have `anchor` accept.
    pub async fn link_via(&mut self, anchor: &mut Member, open_camera: bool) {
        let r = self
            .request(Request::RequestLink {
                user: None,
                seat: None,
                timeout_s: None,
                open_camera: Some(open_camera),
            })
            .await;
        assert!(r.ok, "{}: apply refused: {r:?}", self.user);
        anchor.wait_event("link_request").await;
        let r = anchor
            .request(Request::RespondLink {
                user: Ident::new(&self.user).expect("id"),
                accept: true,
            })
            .await;
        assert!(r.ok, "accept refused: {r:?}");
        self.wait_event("link_accepted").await;
    }

    /// A copy of what arrived so far.
    pub async fn received(&self) -> Received {
        self.inner.recv.arrivals()
    }

    /// Wait until `pred` holds for what arrived.
    pub async fn wait_received(&self, what: &str, pred: impl Fn(&Received) -> bool) {
        self.wait_received_within(WAIT, what, pred).await;
    }

    /// Wait up to `limit` until `pred` holds for what arrived.
    pub async fn wait_received_within(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Received) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.inner.recv.arrivals();
            if pred(&got) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{}: {what} never happened; received {:?}",
                    self.user,
                    summary(&got)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn close(self) {
        self.stop.notify_waiters();
        self.inner.close().await;
    }
}

/// Room "r" with the anchor publishing VP8 and Opus, and one viewer named `viewer`.
pub async fn live_room(server: &Server, viewer: &str) -> (Member, Member) {
    let mut anchor = Member::join(&server.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let viewer = Member::join(&server.url, "r", viewer, Role::Audience).await;
    (anchor, viewer)
}

pub fn summary(streams: &Received) -> Vec<(String, String, usize)> {
    let mut v: Vec<_> = streams
        .iter()
        .map(|((who, kind), s)| (who.clone(), format!("{kind:?}"), s.seqs.len()))
        .collect();
    v.sort();
    v
}

pub fn is_h264_idr(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0x1f == 5)
}

/// The first packet of a VP8 keyframe: the S bit, then (past the descriptor's optional fields,
/// RFC 7741) the payload header's P bit clear.
pub fn is_vp8_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    if first & 0x10 == 0 {
        return false;
    }
    let mut at = 1;
    if first & 0x80 != 0 {
        let Some(&x) = payload.get(1) else {
            return false;
        };
        at = 2;
        if x & 0x80 != 0 {
            at += if payload.get(at).is_some_and(|b| b & 0x80 != 0) {
                2
            } else {
                1
            };
        }
        at += usize::from(x & 0x40 != 0) + usize::from(x & 0x30 != 0);
    }
    payload.get(at).is_some_and(|b| b & 0x01 == 0)
}

/// The server's host candidate port and the VP8 payload type (if video is offered yet).
fn offer_port_and_vp8(sdp: &str) -> (u16, Option<u8>) {
    let port = sdp
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(5).and_then(|p| p.parse().ok())
        })
        .expect("a host candidate");
    let pt = sdp.lines().find_map(|l| {
        let rest = l.strip_prefix("a=rtpmap:")?;
        let (pt, codec) = rest.split_once(' ')?;
        codec.starts_with("VP8/").then(|| pt.parse().ok()).flatten()
    });
    (port, pt)
}

/// Which way a lossy proxy drops packets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Toward {
    Client,
    Server,
}

/// A UDP proxy in front of the server's media port for one client: it drops every 20th RTP
/// packet of payload type `video_pt` going `toward` one side. Returns the port the client uses.
fn lossy_proxy(
    server_port: u16,
    video_pt: Arc<AtomicU8>,
    dropped: Arc<AtomicU64>,
    toward: Toward,
) -> u16 {
    let bind = || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        tokio::net::UdpSocket::from_std(s).expect("tokio socket")
    };
    let (front, back) = (bind(), bind());
    let port = front.local_addr().expect("addr").port();
    let server: std::net::SocketAddr = ([127, 0, 0, 1], server_port).into();
    tokio::spawn(async move {
        let mut client = None;
        let mut video_seen = 0u64;
        let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
        // SRTP keeps the RTP header in clear: version 2, payload type in byte 1.
        let mut drop_this = |p: &[u8]| {
            let pt = video_pt.load(Ordering::SeqCst);
            let is_video = pt != 0 && p.len() > 12 && p[0] >> 6 == 2 && p[1] & 0x7f == pt;
            if is_video {
                video_seen += 1;
                if video_seen.is_multiple_of(20) {
                    dropped.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
            }
            false
        };
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    if toward == Toward::Server && drop_this(&a[..n]) {
                        continue;
                    }
                    let _ = back.send_to(&a[..n], server).await;
                }
                r = back.recv_from(&mut b) => {
                    let Ok((n, _)) = r else { return };
                    let Some(to) = client else { continue };
                    if toward == Toward::Client && drop_this(&b[..n]) {
                        continue;
                    }
                    let _ = front.send_to(&b[..n], to).await;
                }
            }
        }
    });
    port
}
