//! Media that lasts: streams long enough to wrap RTP's 16-bit sequence numbers, over real
//! `webrtc` clients on loopback (ICE, DTLS, SRTP), driven through the signaling protocol.

mod common;

use std::time::Duration;

use common::*;
use miclink_protocol::{
    ClientMessage, ErrorCode, Event, Ident, JoinResult, Request, Role, ServerMessage,
};

/// One test at a time: each pushes thousands of packets a second through two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn key(who: &str, kind: Kind) -> (String, Kind) {
    (who.to_owned(), kind)
}

/// Received 16-bit sequence numbers, in arrival order, extended to a running count (a late
/// retransmission lands behind the newest).
fn extend(seqs: &[u16]) -> Vec<i64> {
    let mut highest: Option<i64> = None;
    seqs.iter()
        .map(|&s| {
            let ext = match highest {
                None => i64::from(s),
                Some(h) => h + i64::from(s.wrapping_sub(h as u16) as i16),
            };
            highest = Some(highest.map_or(ext, |h| h.max(ext)));
            ext
        })
        .collect()
}

/// Distinct sender counters from the first one received on.
fn distinct_from_first(counters: &[u32]) -> usize {
    let Some(&first) = counters.first() else {
        return 0;
    };
    let mut c: Vec<u32> = counters.iter().copied().filter(|&c| c >= first).collect();
    c.sort_unstable();
    c.dedup();
    c.len()
}

/// The regression test of the sequence-wrap bug: a subscriber's stream stopped after 32,768
/// packets for the next 32,768 (a signed 16-bit comparison with its start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_stays_complete_and_contiguous_past_both_sequence_wraps() {
    let _serial = ONE_AT_A_TIME.lock().await;
    const TOTAL: u32 = 72_000;
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    // Four packets a millisecond, eight times a 1.5 Mbit/s stream: the wraps come within
    // 20 s, and a stall of the machine up to a quarter second (1,024 packets of history) is
    // still repaired by NACKs.
    let burst = Burst::new(TOTAL, 4);
    anchor.publish_burst(burst.clone()).await;
    let video = key("anchor", Kind::Video);
    viewer
        .wait_received("the first video packet", |r| {
            r.get(&video).is_some_and(|s| !s.counters.is_empty())
        })
        .await;
    burst.go();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let got = loop {
        let got = viewer.received().await;
        let complete = got.get(&video).is_some_and(|s| {
            s.counters
                .first()
                .is_some_and(|&first| distinct_from_first(&s.counters) == (TOTAL - first) as usize)
        });
        if complete {
            break got;
        }
        if tokio::time::Instant::now() > deadline {
            // What the server counted says where the rest went (shed, never arrived, refused).
            let stream = &got[&video];
            panic!(
                "not every packet of the burst arrived: {} distinct from counter {:?}; the \
                 server's media counters: {}",
                distinct_from_first(&stream.counters),
                stream.counters.first(),
                s.health().await["media"]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stream = &got[&video];
    let first = stream.counters[0];
    assert!(
        TOTAL - first > 70_000,
        "the viewer started late, at packet {first}"
    );
    assert_eq!(first_is_keyframe(stream), Some(true));
    // Every packet, retransmissions included, carries the number that follows the first one's
    // by exactly as many packets as the sender sent in between: contiguous across both wraps.
    let ext = extend(&stream.seqs);
    let span = ext.iter().max().expect("packets") - ext[0];
    assert!(span > 70_000, "the numbering spans {span}");
    for (i, (&e, &c)) in ext.iter().zip(&stream.counters).enumerate() {
        assert_eq!(
            e - ext[0],
            i64::from(c - first),
            "packet {i} (sender counter {c}) is out of step"
        );
    }
    viewer.close().await;
    anchor.close().await;
}

/// Sequence numbers in arrival order, widened across wraps; sorted, unique, no gap.
fn contiguous(seqs: &[u16]) -> bool {
    let mut e = extend(seqs);
    e.sort_unstable();
    e.dedup();
    e.len() == seqs.len() && e.windows(2).all(|w| w[1] == w[0] + 1)
}

async fn count(m: &Member, who: &str, kind: Kind) -> usize {
    m.received()
        .await
        .get(&key(who, kind))
        .map_or(0, |s| s.seqs.len())
}

/// Rule 9 with media: a viewer and a seated guest reload (join again as the same user). Each
/// gets a working subscribe connection at once; the guest publishes again at once, and what
/// the others receive of the guest continues with contiguous numbers from a keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoining_members_get_media_back_and_may_publish_again_at_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let mut guest = Member::join(&s.url, "r", "guest", Role::Audience).await;
    guest.link_via(&mut anchor, true).await;
    guest.publish(false).await;
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    for m in [&anchor, &viewer] {
        m.wait_received("the guest's video", |r| {
            r.get(&key("guest", Kind::Video))
                .is_some_and(|s| s.seqs.len() >= 10)
        })
        .await;
    }
    // The viewer reloads: a new page, the same user.
    let viewer2 = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    viewer2
        .wait_received("media on the new page", |r| {
            [("anchor", Kind::Video), ("guest", Kind::Audio)]
                .iter()
                .all(|(w, k)| r.get(&key(w, *k)).is_some_and(|s| s.seqs.len() >= 10))
        })
        .await;
    // The guest reloads: still seated, publishing again at once.
    let before = count(&anchor, "guest", Kind::Video).await;
    let mut guest2 = Member::join(&s.url, "r", "guest", Role::Audience).await;
    assert_eq!(guest2.join.me.seat, Some(1), "the seat survives the reload");
    guest2.publish(false).await;
    anchor
        .wait_received("the reloaded guest's video", |r| {
            r.get(&key("guest", Kind::Video))
                .is_some_and(|s| s.seqs.len() >= before + 20)
        })
        .await;
    let got = anchor.received().await;
    let video = &got[&key("guest", Kind::Video)];
    assert!(
        contiguous(&video.seqs),
        "the anchor's stream of the guest continues without a gap"
    );
    let resumed = video
        .counters
        .windows(2)
        .position(|w| w[1] < w[0])
        .expect("the new page's counters start again")
        + 1;
    assert!(video.keyframes[resumed], "and it resumes at a keyframe");
    // The anchor reloads: the live goes on; the new page receives the guest again and everyone
    // receives the anchor again.
    let before = count(&viewer2, "anchor", Kind::Video).await;
    let mut anchor2 = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor2.publish(false).await;
    anchor2
        .wait_received("the guest on the anchor's new page", |r| {
            r.get(&key("guest", Kind::Video))
                .is_some_and(|s| s.seqs.len() >= 10)
        })
        .await;
    viewer2
        .wait_received("the reloaded anchor's video", |r| {
            r[&key("anchor", Kind::Video)].seqs.len() >= before + 20
        })
        .await;
    for m in [viewer2, guest2, anchor2] {
        m.close().await;
    }
    drop((viewer, guest, anchor));
}

/// A publisher that publishes again (a new device, a network change) replaces its connection;
/// subscribers' streams carry on contiguous from the new stream's keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishing_continues_every_subscribers_stream() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let (mut anchor, viewer) = live_room(&s, "viewer").await;
    viewer
        .wait_received("the anchor's media", |r| {
            r.get(&key("anchor", Kind::Audio))
                .is_some_and(|s| s.seqs.len() >= 20)
        })
        .await;
    let offers = viewer.offers_answered();
    let (v0, a0) = (
        count(&viewer, "anchor", Kind::Video).await,
        count(&viewer, "anchor", Kind::Audio).await,
    );
    anchor.publish(false).await;
    viewer
        .wait_received("the new connection's media", |r| {
            r[&key("anchor", Kind::Video)].seqs.len() >= v0 + 20
                && r[&key("anchor", Kind::Audio)].seqs.len() >= a0 + 20
        })
        .await;
    assert_eq!(
        viewer.offers_answered(),
        offers,
        "no renegotiation for the same codecs"
    );
    let got = viewer.received().await;
    for kind in [Kind::Audio, Kind::Video] {
        let stream = &got[&key("anchor", kind)];
        assert!(
            contiguous(&stream.seqs),
            "{kind}: contiguous across the republish"
        );
    }
    let video = &got[&key("anchor", Kind::Video)];
    let switch = video
        .counters
        .windows(2)
        .position(|w| w[1] < w[0])
        .expect("the new connection's counters")
        + 1;
    assert!(video.keyframes[switch], "resumes at a keyframe");
    assert_eq!(s.media_counter("republished").await, 1);
    viewer.close().await;
    anchor.close().await;
}

/// A client whose subscribe connection broke asks for a new one (`resubscribe`); the offer says
/// it is a new connection, and media flows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_subscribe_connection_is_replaced_on_request() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let (anchor, viewer) = live_room(&s, "viewer").await;
    viewer
        .wait_received("media", |r| {
            r.get(&key("anchor", Kind::Audio))
                .is_some_and(|s| s.seqs.len() >= 10)
        })
        .await;
    viewer.drop_subscriber().await;
    let before = count(&viewer, "anchor", Kind::Audio).await;
    let r = viewer.request(Request::Resubscribe).await;
    assert!(r.ok, "{r:?}");
    viewer
        .wait_received("media on the new connection", |r| {
            r[&key("anchor", Kind::Audio)].seqs.len() >= before + 20
                && r[&key("anchor", Kind::Video)].seqs.len() >= 10
        })
        .await;
    assert_eq!(viewer.new_connections(), 1);
    assert!(s.media_counter("subscribe_rebuilt").await >= 1);
    viewer.close().await;
    anchor.close().await;
}

/// A bare protocol client: a socket we can cut, that never answers offers.
struct Raw {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Raw { ws, next: 1 }
    }

    async fn send(&mut self, request: Request) -> u64 {
        use futures_util::SinkExt;
        let id = self.next;
        self.next += 1;
        let text = serde_json::to_string(&ClientMessage { id, request }).expect("json");
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .expect("send");
        id
    }

    /// Messages until `pred` picks one (within the wait), in order.
    async fn until(&mut self, what: &str, pred: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        use futures_util::StreamExt;
        let wait = async {
            while let Some(Ok(m)) = self.ws.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                    let msg: ServerMessage = serde_json::from_str(&t).expect("server message");
                    if pred(&msg) {
                        return msg;
                    }
                }
            }
            panic!("socket closed waiting for {what}");
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("no {what}"))
    }
}

/// What was in flight on a socket that died (an offer not yet answered, a link request) is not
/// lost: the resume reply lists the pending request and the offer comes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_brings_back_the_pending_offer_and_requests() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let mut raw = Raw::connect(&s.url).await;
    let id = raw
        .send(Request::Join {
            room: Ident::new("r").expect("id"),
            user: Ident::new("fan").expect("id"),
            role: Role::Audience,
            name: None,
            token: None,
        })
        .await;
    let ServerMessage::Reply(joined) = raw
        .until(
            "the join reply",
            |m| matches!(m, ServerMessage::Reply(r) if r.id == id),
        )
        .await
    else {
        unreachable!()
    };
    let join: JoinResult = serde_json::from_value(joined.result.expect("result")).expect("join");
    let offer = |m: &ServerMessage| matches!(m, ServerMessage::Event(Event::SubscribeOffer { .. }));
    raw.until("a subscribe offer", offer).await;
    raw.send(Request::RequestLink {
        user: None,
        seat: None,
        timeout_s: Some(0),
        open_camera: Some(true),
    })
    .await;
    anchor.wait_event("link_request").await;
    // The socket dies without a close; a new one resumes the session.
    drop(raw);
    let mut again = Raw::connect(&s.url).await;
    let id = again
        .send(Request::Resume {
            session: join.session.clone(),
        })
        .await;
    let ServerMessage::Reply(resumed) = again
        .until(
            "the resume reply",
            |m| matches!(m, ServerMessage::Reply(r) if r.id == id),
        )
        .await
    else {
        unreachable!()
    };
    assert!(resumed.ok, "{resumed:?}");
    let result: JoinResult = serde_json::from_value(resumed.result.expect("result")).expect("json");
    assert_eq!(
        result.requests.len(),
        1,
        "the application in flight: {:?}",
        result.requests
    );
    assert_eq!(result.requests[0].from.user, "fan");
    assert_eq!(result.requests[0].to, "anchor");
    match again.until("the subscribe offer again", offer).await {
        ServerMessage::Event(Event::SubscribeOffer { sdp, .. }) => {
            assert!(
                sdp.contains("msid:anchor "),
                "the same offer, with the anchor's tracks"
            );
        }
        _ => unreachable!(),
    }
    anchor.close().await;
}

/// A media loop that panics is not silent: `/healthz` says 503 at once, media requests answer
/// `unavailable`, and the server stops with an error (so `main` exits non-zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_media_loop_turns_health_red_and_stops_the_server() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut s = server_with(|c| {
        let media = c.media.as_mut().expect("media plane");
        media.fault_room = Some("boom".into());
        media.loops = 1;
        c.failure_exit_delay = Duration::from_secs(2);
    })
    .await;
    let (status, _) = s.get("/healthz").await;
    assert!(status.contains("200"), "{status}");
    let anchor = Member::join(&s.url, "boom", "anchor", Role::Anchor).await;
    let mut red = false;
    for _ in 0..50 {
        let (status, body) = s.get("/healthz").await;
        if status.contains("503") {
            assert!(body.contains("media_failed"), "{body}");
            red = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(red, "/healthz never said 503");
    let reply = anchor
        .request(Request::Publish {
            sdp: "v=0\r\n".into(),
        })
        .await;
    assert_eq!(reply.error.map(|e| e.code), Some(ErrorCode::Unavailable));
    let done = s.done.take().expect("server task");
    let result = tokio::time::timeout(Duration::from_secs(15), done)
        .await
        .expect("the server stopped")
        .expect("no panic");
    assert!(
        matches!(result, Err(miclink::RunError::MediaFailed)),
        "{result:?}"
    );
}
