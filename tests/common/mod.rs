//! Members for end-to-end media tests: a signaling WebSocket plus real WebRTC peer connections
//! on the async `webrtc` crate, over loopback. Nothing here is mocked: ICE, DTLS and SRTP are real.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use miclink::{Args, Config};
use miclink_protocol::{
    ClientMessage, Event, Ident, JoinResult, Reply, Request, Role, ServerMessage,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    Registry, register_default_interceptors,
};

pub const WAIT: Duration = Duration::from_secs(20);

/// A running server (signaling + media) on loopback ports chosen by the OS.
pub struct Server {
    pub url: String,
    pub http: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    /// The body of a plain HTTP GET on the server's port.
    async fn get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.http)
            .await
            .expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }

    /// `/healthz` as JSON.
    pub async fn health(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/healthz").await).expect("healthz is JSON")
    }

    /// One per connection series of `/metrics`, e.g. `("nacks", "lossy", "subscribe")`.
    pub async fn peer_metric(&self, name: &str, user: &str, pc: &str) -> u64 {
        let out = self.get("/metrics").await;
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

/// A server whose media settings `adjust` may change (the port is always chosen by the OS).
pub async fn server_with(adjust: impl FnOnce(&mut miclink_signaling::SfuConfig)) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config::load(Args::default()).expect("defaults");
    if let Some(media) = &mut config.signaling.media {
        adjust(media);
        media.udp_addr.set_port(0);
    }
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(miclink::run(listener, config, async {
        let _ = stopped.await;
    }));
    Server {
        url: format!("ws://{addr}/ws"),
        http: addr,
        stop: Some(stop),
    }
}

/// What a member's subscribe connection received, by publisher (msid stream id) and kind.
#[derive(Default, Debug)]
pub struct Received {
    pub streams: HashMap<(String, RtpCodecKind), Stream>,
}

#[derive(Default, Debug, Clone)]
pub struct Stream {
    /// Sequence numbers in arrival order.
    pub seqs: Vec<u16>,
    /// The sender's counters read from the payload markers, in arrival order.
    pub counters: Vec<u32>,
    /// The publisher id each payload marker named.
    pub marked_by: Vec<String>,
    /// Whether the first packet was a VP8 keyframe.
    pub first_is_keyframe: Option<bool>,
    /// The first video payload, for codec-specific checks.
    pub first_payload: Option<Vec<u8>>,
}

struct Shared {
    user: String,
    out: mpsc::UnboundedSender<String>,
    replies: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    received: Mutex<Received>,
    /// Subscribe offers answered so far, and the last one.
    offers: AtomicU64,
    last_offer: Mutex<String>,
    offer_done: Notify,
}

impl Shared {
    async fn request(&self, request: Request) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.replies.lock().await.insert(id, tx);
        let text = serde_json::to_string(&ClientMessage { id, request }).expect("serialize");
        self.out.send(text).expect("socket writer running");
        tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("{}: no reply to request {id}", self.user))
            .expect("reply")
    }
}

/// The video codec a member publishes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Video {
    Vp8,
    H264,
}

pub struct Member {
    pub user: String,
    video: Video,
    shared: Arc<Shared>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub join: JoinResult,
    subscriber: Arc<dyn PeerConnection>,
    publisher: Option<Publisher>,
}

struct Publisher {
    pc: Arc<dyn PeerConnection>,
    stop: Arc<Notify>,
}

#[derive(Clone)]
struct Handler {
    gathered: Arc<Notify>,
    shared: Option<Arc<Shared>>,
    state: Arc<Mutex<RTCPeerConnectionState>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        *self.state.lock().await = state;
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        tokio::spawn(async move {
            let stream_id = track.stream_id().await;
            let kind = track.kind().await;
            while let Some(event) = track.poll().await {
                let TrackRemoteEvent::OnRtpPacket(packet) = event else {
                    continue;
                };
                let mut received = shared.received.lock().await;
                let s = received
                    .streams
                    .entry((stream_id.clone(), kind))
                    .or_default();
                if s.first_is_keyframe.is_none() && kind == RtpCodecKind::Video {
                    s.first_is_keyframe = Some(is_vp8_keyframe(&packet.payload));
                    s.first_payload = Some(packet.payload.to_vec());
                }
                s.seqs.push(packet.header.sequence_number);
                if let Some((who, counter)) = read_marker(&packet.payload, kind) {
                    s.marked_by.push(who);
                    s.counters.push(counter);
                }
            }
        });
    }
}

async fn peer(handler: Handler) -> Arc<dyn PeerConnection> {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let registry =
        register_default_interceptors(Registry::new(), &mut media).expect("interceptors");
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(handler))
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .expect("peer connection");
    Arc::new(pc)
}

/// Complete local description once ICE gathering is done (no trickle needed on loopback).
async fn gathered_sdp(pc: &Arc<dyn PeerConnection>, gathered: &Notify) -> String {
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.notified()).await;
    pc.local_description().await.expect("local description").sdp
}

impl Member {
    pub async fn join(url: &str, room: &str, user: &str, role: Role) -> Member {
        Member::join_with(url, room, user, role, None).await
    }

    /// Join with every 20th video packet from the server to this member's subscribe connection
    /// dropped by a UDP proxy (5% loss on its receive path). The proxy counts what it dropped.
    pub async fn join_lossy(url: &str, room: &str, user: &str, dropped: Arc<AtomicU64>) -> Member {
        Member::join_with(url, room, user, Role::Audience, Some(dropped)).await
    }

    async fn join_with(
        url: &str,
        room: &str,
        user: &str,
        role: Role,
        lossy: Option<Arc<AtomicU64>>,
    ) -> Member {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        });
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            out,
            replies: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            received: Mutex::new(Received::default()),
            offers: AtomicU64::new(0),
            last_offer: Mutex::new(String::new()),
            offer_done: Notify::new(),
        });
        let gathered = Arc::new(Notify::new());
        let subscriber = peer(Handler {
            gathered: gathered.clone(),
            shared: Some(shared.clone()),
            state: Arc::new(Mutex::new(RTCPeerConnectionState::New)),
        })
        .await;
        let (events_tx, events) = mpsc::unbounded_channel();
        {
            let shared = shared.clone();
            let subscriber = subscriber.clone();
            let mut proxy: Option<u16> = None;
            let video_pt = Arc::new(std::sync::atomic::AtomicU8::new(0));
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    match serde_json::from_str::<ServerMessage>(&text).expect("server message") {
                        ServerMessage::Reply(r) => {
                            if let Some(tx) = shared.replies.lock().await.remove(&r.id) {
                                let _ = tx.send(r);
                            }
                        }
                        ServerMessage::Event(Event::SubscribeOffer { sdp }) => {
                            // Answer in order: the server re-offers only after an answer.
                            *shared.last_offer.lock().await = sdp.clone();
                            let sdp = match &lossy {
                                Some(dropped) => {
                                    let (server_port, vp8) = offer_port_and_vp8(&sdp);
                                    if let Some(pt) = vp8 {
                                        video_pt.store(pt, Ordering::SeqCst);
                                    }
                                    let port = match proxy {
                                        Some(p) => p,
                                        None => {
                                            let p = lossy_proxy(
                                                server_port,
                                                video_pt.clone(),
                                                dropped.clone(),
                                                Toward::Client,
                                            )
                                            .await;
                                            proxy = Some(p);
                                            p
                                        }
                                    };
                                    sdp.replace(
                                        &format!(" {server_port} typ host"),
                                        &format!(" {port} typ host"),
                                    )
                                }
                                None => sdp,
                            };
                            let offer = RTCSessionDescription::offer(sdp).expect("offer");
                            subscriber
                                .set_remote_description(offer)
                                .await
                                .expect("set offer");
                            let answer = subscriber.create_answer(None).await.expect("answer");
                            subscriber
                                .set_local_description(answer)
                                .await
                                .expect("set answer");
                            let sdp = gathered_sdp(&subscriber, &gathered).await;
                            let shared2 = shared.clone();
                            tokio::spawn(async move {
                                let r = shared2.request(Request::SubscribeAnswer { sdp }).await;
                                assert!(r.ok, "{}: subscribe_answer refused: {r:?}", shared2.user);
                                shared2.offers.fetch_add(1, Ordering::SeqCst);
                                shared2.offer_done.notify_waiters();
                            });
                        }
                        ServerMessage::Event(e) => {
                            let _ = events_tx.send(e);
                        }
                    }
                }
            });
        }
        let reply = shared
            .request(Request::Join {
                room: Ident::new(room).expect("room"),
                user: Ident::new(user).expect("user"),
                role,
                name: None,
                token: None,
            })
            .await;
        assert!(reply.ok, "{user}: join refused: {reply:?}");
        let join = serde_json::from_value(reply.result.expect("result")).expect("join result");
        Member {
            user: user.to_owned(),
            video: Video::Vp8,
            shared,
            events,
            join,
            subscriber,
            publisher: None,
        }
    }

    pub async fn request(&self, request: Request) -> Reply {
        self.shared.request(request).await
    }

    /// The next event of type `kind`, skipping others.
    pub async fn wait_event(&mut self, kind: &str) -> Event {
        loop {
            let e = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no {kind} event", self.user))
                .expect("events");
            if e.type_name() == kind {
                return e;
            }
        }
    }

    /// Publish VP8 video (unless `audio_only`) and Opus audio, sending RTP until dropped:
    /// video at 30 packets/s with a keyframe every 30, audio at 50 packets/s.
    pub async fn publish(&mut self, audio_only: bool) {
        self.publish_with(audio_only, None, None).await;
    }

    /// Publish VP8 video alone, paced by `burst`: slow until [`Burst::go`], then fast.
    pub async fn publish_burst(&mut self, burst: Arc<Burst>) {
        self.video = Video::Vp8;
        self.publish_with(false, None, Some(burst)).await;
    }

    /// Publish H.264 video (constrained baseline, packetization mode 1) and Opus audio.
    pub async fn publish_h264(&mut self) {
        self.video = Video::H264;
        self.publish_with(false, None, None).await;
    }

    /// Publish through a proxy that drops every 20th video packet on the way to the server.
    pub async fn publish_lossy(&mut self, dropped: Arc<AtomicU64>) {
        self.publish_with(false, Some(dropped), None).await;
    }

    async fn publish_with(
        &mut self,
        audio_only: bool,
        lossy: Option<Arc<AtomicU64>>,
        burst: Option<Arc<Burst>>,
    ) {
        let gathered = Arc::new(Notify::new());
        let pc = peer(Handler {
            gathered: gathered.clone(),
            shared: None,
            state: Arc::new(Mutex::new(RTCPeerConnectionState::New)),
        })
        .await;
        let mut kinds = vec![(RtpCodecKind::Audio, "audio/opus", 48000, 2, "")];
        if burst.is_some() {
            kinds.clear();
        }
        if !audio_only {
            kinds.push(match self.video {
                Video::Vp8 => (RtpCodecKind::Video, "video/VP8", 90000, 0, ""),
                Video::H264 => (
                    RtpCodecKind::Video,
                    "video/H264",
                    90000,
                    0,
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                ),
            });
        }
        let stop = Arc::new(Notify::new());
        // Payload types come from the answer; until it arrives nothing can be sent anyway.
        let mut pts = Vec::new();
        for (kind, mime, clock_rate, channels, fmtp) in kinds {
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                self.user.clone(),
                format!("{}-{kind}", self.user),
                format!("{} {kind}", self.user),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(rand_u32()),
                        ..Default::default()
                    },
                    codec: RTCRtpCodec {
                        mime_type: mime.to_owned(),
                        clock_rate,
                        channels,
                        sdp_fmtp_line: fmtp.to_owned(),
                        rtcp_feedback: vec![],
                    },
                    ..Default::default()
                }],
            )));
            pc.add_track(track.clone() as Arc<dyn TrackLocal>)
                .await
                .expect("add track");
            let pt = Arc::new(std::sync::atomic::AtomicU8::new(0));
            pts.push((pt.clone(), mime, fmtp));
            tokio::spawn(send_rtp(
                track,
                kind,
                self.video,
                self.user.clone(),
                stop.clone(),
                pt,
                burst.clone(),
            ));
        }
        let offer = pc.create_offer(None).await.expect("offer");
        pc.set_local_description(offer).await.expect("set offer");
        let sdp = gathered_sdp(&pc, &gathered).await;
        let reply = self.request(Request::Publish { sdp }).await;
        assert!(reply.ok, "{}: publish refused: {reply:?}", self.user);
        let answer: miclink_protocol::PublishResult =
            serde_json::from_value(reply.result.expect("result")).expect("publish result");
        for (pt, mime, fmtp) in pts {
            let negotiated = negotiated_pt(&answer.sdp, mime, fmtp)
                .unwrap_or_else(|| panic!("{mime} {fmtp} not in the answer"));
            pt.store(negotiated, Ordering::SeqCst);
        }
        let sdp = match lossy {
            Some(dropped) => {
                let (server_port, vp8) = offer_port_and_vp8(&answer.sdp);
                let pt = Arc::new(std::sync::atomic::AtomicU8::new(vp8.expect("VP8 answered")));
                let port = lossy_proxy(server_port, pt, dropped, Toward::Server).await;
                answer.sdp.replace(
                    &format!(" {server_port} typ host"),
                    &format!(" {port} typ host"),
                )
            }
            None => answer.sdp,
        };
        pc.set_remote_description(RTCSessionDescription::answer(sdp).expect("answer"))
            .await
            .expect("set answer");
        self.publisher = Some(Publisher { pc, stop });
    }

    /// Subscribe offers answered so far.
    pub fn offers_answered(&self) -> u64 {
        self.shared.offers.load(Ordering::SeqCst)
    }

    /// The last subscribe offer the server sent.
    pub async fn last_offer(&self) -> String {
        self.shared.last_offer.lock().await.clone()
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
    pub async fn received(&self) -> HashMap<(String, RtpCodecKind), Stream> {
        self.shared.received.lock().await.streams.clone()
    }

    /// Wait until `pred` holds for what arrived.
    pub async fn wait_received(
        &self,
        what: &str,
        pred: impl Fn(&HashMap<(String, RtpCodecKind), Stream>) -> bool,
    ) {
        self.wait_received_within(WAIT, what, pred).await;
    }

    /// Wait up to `limit` until `pred` holds for what arrived.
    pub async fn wait_received_within(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&HashMap<(String, RtpCodecKind), Stream>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if pred(&self.shared.received.lock().await.streams) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{}: {what} never happened; received {:?}",
                    self.user,
                    summary(&self.shared.received.lock().await.streams)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn close(self) {
        if let Some(p) = self.publisher {
            p.stop.notify_waiters();
            let _ = p.pc.close().await;
        }
        let _ = self.subscriber.close().await;
    }
}

/// Room "r" with the anchor publishing VP8 and Opus, and one viewer named `viewer`.
pub async fn live_room(server: &Server, viewer: &str) -> (Member, Member) {
    let mut anchor = Member::join(&server.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let viewer = Member::join(&server.url, "r", viewer, Role::Audience).await;
    (anchor, viewer)
}

pub fn summary(streams: &HashMap<(String, RtpCodecKind), Stream>) -> Vec<(String, String, usize)> {
    let mut v: Vec<_> = streams
        .iter()
        .map(|((who, kind), s)| (who.clone(), kind.to_string(), s.seqs.len()))
        .collect();
    v.sort();
    v
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() as u32
}

const MARK: &[u8; 4] = b"MKLK";

/// Payload: [codec header][MARK][len][publisher id][counter u32].
fn payload(kind: RtpCodecKind, video: Video, user: &str, counter: u32, keyframe: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    if kind == RtpCodecKind::Video {
        match video {
            // VP8 descriptor: S=1, partition 0; payload header P bit 0 on keyframes.
            Video::Vp8 => p.extend_from_slice(&[0x10, if keyframe { 0x00 } else { 0x01 }]),
            // A single NAL unit: IDR slice (type 5) or non-IDR slice (type 1).
            Video::H264 => p.extend_from_slice(&[if keyframe { 0x65 } else { 0x41 }, 0x88]),
        }
    }
    p.extend_from_slice(MARK);
    p.push(user.len() as u8);
    p.extend_from_slice(user.as_bytes());
    p.extend_from_slice(&counter.to_be_bytes());
    p.resize(p.len().max(120), 0);
    p
}

fn read_marker(payload: &[u8], kind: RtpCodecKind) -> Option<(String, u32)> {
    let skip = if kind == RtpCodecKind::Video { 2 } else { 0 };
    let p = payload.get(skip..)?;
    if p.get(..4)? != MARK {
        return None;
    }
    let len = *p.get(4)? as usize;
    let who = std::str::from_utf8(p.get(5..5 + len)?).ok()?.to_owned();
    let c = p.get(5 + len..9 + len)?;
    Some((who, u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
}

pub fn is_h264_idr(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0x1f == 5)
}

pub fn is_vp8_keyframe(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0x10 != 0) && payload.get(1).is_some_and(|b| b & 0x01 == 0)
}

/// The payload type an SDP gives the codec `mime` (e.g. "video/H264") whose fmtp holds `fmtp`.
fn negotiated_pt(sdp: &str, mime: &str, fmtp: &str) -> Option<u8> {
    let name = mime.split('/').nth(1)?.to_ascii_lowercase();
    sdp.lines().find_map(|l| {
        let (pt, codec) = l.strip_prefix("a=rtpmap:")?.split_once(' ')?;
        if !codec.to_ascii_lowercase().starts_with(&format!("{name}/")) {
            return None;
        }
        let fmtp_line = sdp
            .lines()
            .find(|f| f.starts_with(&format!("a=fmtp:{pt} ")))
            .unwrap_or_default();
        (fmtp.is_empty() || fmtp_line.contains(fmtp)).then(|| pt.parse().ok())?
    })
}

/// A video stream sent as fast as a test needs: a packet every 33 ms until [`Burst::go`], then
/// `per_ms` packets every millisecond until `total` packets were sent in all.
pub struct Burst {
    pub total: u32,
    pub per_ms: u32,
    go: std::sync::atomic::AtomicBool,
    sent: std::sync::atomic::AtomicU32,
}

impl Burst {
    pub fn new(total: u32, per_ms: u32) -> Arc<Burst> {
        Arc::new(Burst {
            total,
            per_ms,
            go: Default::default(),
            sent: Default::default(),
        })
    }

    /// Switch to the fast pace.
    pub fn go(&self) {
        self.go.store(true, Ordering::SeqCst);
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u32 {
        self.sent.load(Ordering::SeqCst)
    }
}

async fn send_rtp(
    track: Arc<TrackLocalStaticRTP>,
    kind: RtpCodecKind,
    video: Video,
    user: String,
    stop: Arc<Notify>,
    pt: Arc<std::sync::atomic::AtomicU8>,
    burst: Option<Arc<Burst>>,
) {
    let (interval, ts_step) = match (kind, &burst) {
        (_, Some(_)) => (Duration::from_millis(1), 3000u32),
        (RtpCodecKind::Video, None) => (Duration::from_millis(33), 3000u32),
        _ => (Duration::from_millis(20), 960u32),
    };
    let mut tick = tokio::time::interval(interval);
    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    let mut counter = 0u32;
    for ticks in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.notified() => return,
        }
        let pt = pt.load(Ordering::SeqCst);
        if pt == 0 {
            continue;
        }
        let packets = match &burst {
            None => 1,
            Some(b) if b.go.load(Ordering::SeqCst) => b.per_ms.min(b.total - counter),
            Some(_) => u32::from(ticks % 33 == 0),
        };
        for _ in 0..packets {
            if !send_one(&track, kind, video, &user, counter, ts_step, ssrc, pt).await {
                return;
            }
            counter += 1;
            if let Some(b) = &burst {
                b.sent.store(counter, Ordering::SeqCst);
                if counter >= b.total {
                    return;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_one(
    track: &TrackLocalStaticRTP,
    kind: RtpCodecKind,
    video: Video,
    user: &str,
    counter: u32,
    ts_step: u32,
    ssrc: u32,
    pt: u8,
) -> bool {
    let keyframe = kind == RtpCodecKind::Video && counter % 30 == 0;
    let packet = rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            marker: kind == RtpCodecKind::Video,
            payload_type: pt,
            sequence_number: counter as u16,
            timestamp: counter.wrapping_mul(ts_step),
            ssrc,
            ..Default::default()
        },
        payload: payload(kind, video, user, counter, keyframe).into(),
    };
    track.write_rtp(packet).await.is_ok()
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
async fn lossy_proxy(
    server_port: u16,
    video_pt: Arc<std::sync::atomic::AtomicU8>,
    dropped: Arc<AtomicU64>,
    toward: Toward,
) -> u16 {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
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
