//! WHIP ingest and WHEP playback (contract rule 15) with webrtc-rs clients over HTTP on
//! loopback: an encoder goes live as the room's anchor and viewers on the WebSocket get its
//! media, `DELETE` ends the live; a player watches the room's seats in order, its places
//! following the seats without a new offer; every refusal has its HTTP status.

mod common;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::*;
use miclink_loadtest::peer::{Peer, Publisher, StreamSpec, VideoCodec};
use miclink_loadtest::recv::Recv;
use miclink_protocol::{EndReason, Event, Request, Role};
use tokio::sync::Notify;

/// A WHIP encoder: the sending connection, and what the server answered its POST.
struct Encoder {
    /// Held: the connection lives as long as the encoder.
    _publisher: Publisher,
    stop: Arc<Notify>,
    reply: HttpReply,
}

impl Drop for Encoder {
    fn drop(&mut self) {
        self.stop.notify_waiters();
    }
}

/// Offer `streams` to `POST /whip/{room}`; on 201, start sending.
async fn whip(s: &Server, room: &str, auth: &str, streams: &[StreamSpec]) -> Encoder {
    let (publisher, offer) = Publisher::offer("whip", streams).await.expect("offer");
    let reply = s
        .http(
            "POST",
            &format!("/whip/{room}"),
            &format!("Content-Type: application/sdp\r\n{auth}"),
            &offer,
        )
        .await;
    let stop = Arc::new(Notify::new());
    if reply.status == 201 {
        publisher
            .start(reply.body.clone(), stop.clone())
            .await
            .expect("the answer applies");
    }
    Encoder {
        _publisher: publisher,
        stop,
        reply,
    }
}

fn av(codec: VideoCodec) -> Vec<StreamSpec> {
    vec![StreamSpec::audio(48_000), test_video(codec)]
}

fn got_media(r: &Received, keyframe: fn(&[u8]) -> bool) -> bool {
    got_media_of(r, "whip", keyframe)
}

fn got_media_of(r: &Received, who: &str, keyframe: fn(&[u8]) -> bool) -> bool {
    let audio = r.get(&(who.to_owned(), Kind::Audio));
    let video = r.get(&(who.to_owned(), Kind::Video));
    audio.is_some_and(|a| a.seqs.len() > 20)
        && video
            .is_some_and(|v| v.seqs.len() > 20 && v.first_payload.as_deref().is_some_and(keyframe))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_encoder_goes_live_viewers_get_its_media_and_delete_ends_the_live() {
    let s = server().await;
    let enc = whip(&s, "r", "", &av(VideoCodec::Vp8)).await;
    let r = &enc.reply;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    assert!(r.body.starts_with("v=0"), "the answer: {}", r.body);
    let location = r.header("location").expect("a Location").to_owned();
    assert!(location.starts_with("/whip/r/"), "{location}");
    assert!(r.header("etag").is_some(), "an ETag");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // The room is live with the WHIP encoder as its anchor; a viewer gets its audio and
    // video, starting at a keyframe.
    let mut viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    viewer
        .wait_received("the WHIP anchor's media", |r| got_media(r, is_vp8_keyframe))
        .await;

    // A second encoder cannot take the room while the first is live... unless it is the same
    // anchor coming back (without tokens every WHIP encoder is the same user): that is tested
    // with tokens below.

    // Trickled candidates are taken; an ICE restart is refused (422).
    let etag = r.header("etag").expect("etag").to_owned();
    let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:efghefghefghefghefghefgh\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let patch = |if_match: String| {
        let location = location.clone();
        let s = &s;
        async move {
            s.http(
                "PATCH",
                &location,
                &format!(
                    "Content-Type: application/trickle-ice-sdpfrag\r\nIf-Match: {if_match}\r\n"
                ),
                frag,
            )
            .await
            .status
        }
    };
    assert_eq!(patch(etag.clone()).await, 204);
    assert_eq!(patch("*".into()).await, 422);
    assert_eq!(patch("\"stale\"".into()).await, 412);

    // DELETE ends the live for everyone.
    let deleted = s.http("DELETE", &location, "", "").await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    loop {
        if let Event::RoomEnded { reason } = viewer.wait_event("room_ended").await {
            assert_eq!(reason, EndReason::AnchorLeft);
            break;
        }
    }
    assert_eq!(s.http("DELETE", &location, "", "").await.status, 404);
    viewer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h264_only_encoder_is_forwarded_from_its_idr() {
    let s = server().await;
    let enc = whip(&s, "r", "", &av(VideoCodec::H264)).await;
    assert_eq!(enc.reply.status, 201, "{:?}", enc.reply);
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    viewer
        .wait_received("the WHIP anchor's H.264", |r| got_media(r, is_h264_idr))
        .await;
    viewer.close().await;
}

const SECRET: &str = "a test secret of enough length";

fn token(room: &str, sub: &str, role: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 600;
    let claims = serde_json::json!({"room": room, "sub": sub, "role": role, "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_the_anchor_is_the_tokens_user() {
    let s = server_with(|c| c.signaling.jwt_secret = Some(SECRET.into())).await;
    let refused = [
        ("no token", String::new()),
        ("a forged token", bearer("e30.e30.e30")),
        ("an audience token", bearer(&token("r", "ann", "audience"))),
        ("another room's token", bearer(&token("q", "ann", "anchor"))),
    ];
    for (what, auth) in refused {
        let enc = whip(&s, "r", &auth, &av(VideoCodec::Vp8)).await;
        assert_eq!(enc.reply.status, 401, "{what}: {:?}", enc.reply);
        assert_eq!(
            enc.reply.header("www-authenticate"),
            Some("Bearer"),
            "{what}"
        );
    }
    let ann = bearer(&token("r", "ann", "anchor"));
    let enc = whip(&s, "r", &ann, &av(VideoCodec::Vp8)).await;
    assert_eq!(enc.reply.status, 201, "{:?}", enc.reply);
    let location = enc.reply.header("location").expect("location").to_owned();

    // Another anchor for a live room: 409.
    let bob = whip(
        &s,
        "r",
        &bearer(&token("r", "bob", "anchor")),
        &av(VideoCodec::Vp8),
    )
    .await;
    assert_eq!(bob.reply.status, 409, "{:?}", bob.reply);

    // The resource is ann's: no token or another user's cannot end it.
    assert_eq!(s.http("DELETE", &location, "", "").await.status, 401);
    let bobs = bearer(&token("r", "bob", "anchor"));
    assert_eq!(s.http("DELETE", &location, &bobs, "").await.status, 401);
    assert_eq!(s.http("DELETE", &location, &ann, "").await.status, 200);
    // Once ended, the room is free for bob.
    let bob = whip(&s, "r", &bobs, &av(VideoCodec::Vp8)).await;
    assert_eq!(bob.reply.status, 201, "{:?}", bob.reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status() {
    let s = server().await;
    let sdp = "Content-Type: application/sdp\r\n";
    // Not SDP, garbage SDP, no codec the server forwards.
    let not_sdp = s
        .http("POST", "/whip/r", "Content-Type: text/plain\r\n", "v=0")
        .await;
    assert_eq!(not_sdp.status, 415, "{not_sdp:?}");
    assert_eq!(s.http("POST", "/whip/r", sdp, "hello").await.status, 400);
    let garbage = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\nnonsense";
    assert_eq!(s.http("POST", "/whip/r", sdp, garbage).await.status, 400);
    let av1 = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 AV1/90000\r\n";
    assert_eq!(s.http("POST", "/whip/r", sdp, av1).await.status, 406);
    let big = "v=0\r\n".to_owned() + &"a=x\r\n".repeat(20_000);
    assert_eq!(s.http("POST", "/whip/r", sdp, &big).await.status, 413);
    // A room id that cannot be one; an unknown resource.
    assert_eq!(
        s.http("POST", "/whip/no%20such", sdp, av1).await.status,
        404
    );
    assert_eq!(s.http("DELETE", "/whip/r/abc", "", "").await.status, 404);
    assert_eq!(s.http("PATCH", "/whip/r/abc", "", "").await.status, 404);

    // Nothing was left behind by the refusals: the room can go live.
    let (alice, _viewer) = live_room(&s, "viewer").await;
    // A room with another (WebSocket) anchor: 409.
    let enc = whip(&s, "r", "", &av(VideoCodec::Vp8)).await;
    assert_eq!(enc.reply.status, 409, "{:?}", enc.reply);

    // CORS: the preflight names what the endpoint takes.
    let pre = s
        .http("OPTIONS", "/whip/r", "Origin: http://player\r\n", "")
        .await;
    assert_eq!(pre.status, 204, "{pre:?}");
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    let methods = pre.header("access-control-allow-methods").unwrap_or("");
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    assert_eq!(pre.header("accept-post"), Some("application/sdp"));
    alice.close().await;
}

/// A WHEP player: its receiving connection, what arrived, and what the server answered.
struct Player {
    peer: Peer,
    recv: Arc<Recv>,
    reply: HttpReply,
}

async fn whep(s: &Server, room: &str, auth: &str, pairs: usize) -> Player {
    let recv = Recv::logging(Instant::now());
    let peer = Peer::new(Some(recv.clone())).await.expect("peer");
    let offer = peer.receive_offer(pairs).await.expect("offer");
    let reply = s
        .http(
            "POST",
            &format!("/whep/{room}"),
            &format!("Content-Type: application/sdp\r\n{auth}"),
            &offer,
        )
        .await;
    if reply.status == 201 {
        peer.accept(reply.body.clone())
            .await
            .expect("the answer applies");
    }
    Player { peer, recv, reply }
}

impl Player {
    /// Wait until place `slot` has shown `more` audio and video packets beyond `since` (video
    /// starting at a keyframe when `since` is zero).
    async fn wait_slot(&self, slot: usize, since: (usize, usize), more: usize) -> (usize, usize) {
        let key = |kind| (format!("slot{slot}"), kind);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let r = self.recv.arrivals();
            let a = r.get(&key(Kind::Audio)).map_or(0, |a| a.seqs.len());
            let v = r.get(&key(Kind::Video));
            let vn = v.map_or(0, |v| v.seqs.len());
            let from_keyframe = v
                .and_then(|v| v.first_payload.as_deref())
                .is_some_and(is_vp8_keyframe);
            if a > since.0 + more && vn > since.1 + more && from_keyframe {
                return (a, vn);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "place {slot}: {:?}",
                summary(&r)
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Who the packets of place `slot` came from (the payload markers name the publisher).
    fn shown(&self, slot: usize) -> Vec<String> {
        let r = self.recv.arrivals();
        let mut who: Vec<String> = r
            .get(&(format!("slot{slot}"), Kind::Video))
            .map(|v| v.marked_by.clone())
            .unwrap_or_default();
        who.dedup();
        who
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_player_watches_the_seats_in_order_and_its_places_follow_the_seats() {
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let player = whep(&s, "r", "", 2).await;
    let r = &player.reply;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    let location = r.header("location").expect("a Location").to_owned();
    assert!(location.starts_with("/whep/r/"), "{location}");

    // Place 0 shows the anchor; place 1 nobody yet.
    let first = player.wait_slot(0, (0, 0), 20).await;
    // A member links and publishes: place 1 shows them, without a new offer.
    let mut guest = Member::join(&s.url, "r", "guest", Role::Audience).await;
    guest.link_via(&mut anchor, true).await;
    guest.publish(false).await;
    player.wait_slot(1, (0, 0), 20).await;
    assert_eq!(player.shown(1), vec!["guest".to_owned()]);
    // The anchor's place went on all along.
    player.wait_slot(0, first, 20).await;
    assert_eq!(player.shown(0), vec!["anchor".to_owned()]);

    // The member hangs up and another links: place 1 passes to them, its stream numbered on
    // without a gap (one stream to the player, from a keyframe of the new publisher).
    let r = guest.request(Request::TerminateLink).await;
    assert!(r.ok, "{r:?}");
    let mut other = Member::join(&s.url, "r", "other", Role::Audience).await;
    other.link_via(&mut anchor, true).await;
    other.publish(false).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while player.shown(1).last().map(String::as_str) != Some("other") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "place 1: {:?}",
            player.shown(1)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        player.shown(1),
        vec!["guest".to_owned(), "other".to_owned()]
    );
    let arrivals = player.recv.arrivals();
    let v = &arrivals[&("slot1".to_owned(), Kind::Video)];
    let handover = v
        .marked_by
        .iter()
        .position(|p| p == "other")
        .expect("other");
    assert!(
        v.keyframes[handover],
        "the new publisher's first packet starts a keyframe"
    );
    let step = v.seqs[handover].wrapping_sub(v.seqs[handover - 1]);
    assert_eq!(step, 1, "numbering continues across the handover");

    // DELETE leaves: the resource is gone.
    assert_eq!(s.http("DELETE", &location, "", "").await.status, 200);
    assert_eq!(s.http("DELETE", &location, "", "").await.status, 404);
    player.peer.close().await;
    other.close().await;
    guest.close().await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_player_needs_a_live_room_and_a_receiving_offer() {
    let s = server().await;
    let nobody = whep(&s, "r", "", 1).await;
    assert_eq!(nobody.reply.status, 404, "{:?}", nobody.reply);
    let (anchor, viewer) = live_room(&s, "viewer").await;
    // An offer that receives nothing.
    let (_p, sending) = Publisher::offer("x", &av(VideoCodec::Vp8))
        .await
        .expect("offer");
    let sdp = "Content-Type: application/sdp\r\n";
    let sending = sending.replace("a=sendrecv", "a=sendonly");
    let refused = s.http("POST", "/whep/r", sdp, &sending).await;
    assert_eq!(refused.status, 400, "{refused:?}");
    // An offer asking for more places than a room has seats is refused, saying the bound (each
    // section would cost a transceiver and an answer section); one asking for every seat gets
    // ten places.
    let greedy = whep(&s, "r", "", 12).await;
    assert_eq!(greedy.reply.status, 400, "{:?}", greedy.reply);
    assert!(
        greedy.reply.body.contains("at most 21 m-sections"),
        "{:?}",
        greedy.reply
    );
    greedy.peer.close().await;
    let greedy = whep(&s, "r", "", 10).await;
    assert_eq!(greedy.reply.status, 201, "{:?}", greedy.reply);
    let mut places: Vec<&str> = greedy
        .reply
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("a=msid:"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    places.sort_unstable();
    places.dedup();
    assert_eq!(places.len(), 10, "{places:?}");
    greedy.peer.close().await;
    viewer.close().await;
    anchor.close().await;
}

/// The anchor keeps the controls in the demo (a socket) and goes live from an encoder: the
/// encoder's offer, with a bearer naming the anchor, is attached to the anchor's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoder_publishes_for_an_anchor_on_a_socket_who_seats_a_co_host_a_whep_player_sees() {
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    let enc = whip(
        &s,
        "r",
        "Authorization: Bearer anchor\r\n",
        &av(VideoCodec::Vp8),
    )
    .await;
    assert_eq!(enc.reply.status, 201, "{:?}", enc.reply);
    let location = enc.reply.header("location").expect("location").to_owned();
    // Viewers see the encoder's media as the anchor's.
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    viewer
        .wait_received("the encoder's media as the anchor's", |r| {
            got_media_of(r, "anchor", is_vp8_keyframe)
        })
        .await;
    // The anchor seats a co-host from the socket, and sees them there.
    let mut guest = Member::join(&s.url, "r", "guest", Role::Audience).await;
    guest.link_via(&mut anchor, true).await;
    guest.publish(false).await;
    anchor
        .wait_received("the co-host on the anchor's socket", |r| {
            got_media_of(r, "guest", is_vp8_keyframe)
        })
        .await;
    // A WHEP player sees both, in seat order.
    let player = whep(&s, "r", "", 2).await;
    assert_eq!(player.reply.status, 201, "{:?}", player.reply);
    player.wait_slot(0, (0, 0), 20).await;
    player.wait_slot(1, (0, 0), 20).await;
    assert_eq!(
        player.shown(0),
        vec!["whip".to_owned()],
        "the encoder's packets"
    );
    assert_eq!(player.shown(1), vec!["guest".to_owned()]);

    // A second encoder for the same anchor takes over; the first one's resource is gone.
    let again = whip(
        &s,
        "r",
        "Authorization: Bearer anchor\r\n",
        &av(VideoCodec::Vp8),
    )
    .await;
    assert_eq!(again.reply.status, 201, "{:?}", again.reply);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let frag = "Content-Type: application/trickle-ice-sdpfrag\r\n";
    while s.http("PATCH", &location, frag, "").await.status != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replaced encoder's resource stays"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The encoder's DELETE ends the live for everyone.
    let location = again.reply.header("location").expect("location").to_owned();
    assert_eq!(s.http("DELETE", &location, "", "").await.status, 200);
    loop {
        if let Event::RoomEnded { reason } = guest.wait_event("room_ended").await {
            assert_eq!(reason, EndReason::AnchorLeft);
            break;
        }
    }
    player.peer.close().await;
    for m in [viewer, guest, anchor] {
        m.close().await;
    }
}

/// A WHEP offer nobody will complete: its place is held until the connect deadline.
async fn abandoned_offer() -> String {
    let peer = Peer::new(None).await.expect("peer");
    let offer = peer.receive_offer(1).await.expect("offer");
    peer.close().await;
    offer
}

async fn post_whep(s: &Server, room: &str, offer: &str) -> u16 {
    s.http(
        "POST",
        &format!("/whep/{room}"),
        "Content-Type: application/sdp\r\n",
        offer,
    )
    .await
    .status
}

/// Issue 26, item 2: 300 WHEP POSTs from one address took every media connection of a server,
/// and WHIP and `publish` in another room got `unavailable` until ICE gave up on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_flood_from_one_address_leaves_another_room_able_to_go_live() {
    let s = server_with(|c| {
        c.signaling.http_media_per_ip_on_loopback = true;
        c.signaling.http_media_per_ip = 16;
        if let Some(m) = &mut c.media {
            m.loops = 1;
            m.max_peers_per_loop = Some(64);
        }
    })
    .await;
    let (anchor, viewer) = live_room(&s, "viewer").await;
    let offer = abandoned_offer().await;
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..300 {
        *statuses
            .entry(post_whep(&s, "r", &offer).await)
            .or_insert(0) += 1;
    }
    // The address's 16 places, then 429 for the rest.
    assert_eq!(statuses.get(&201), Some(&16), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&284), "{statuses:?}");

    // Another room's anchor goes live, and its viewer gets its media.
    let mut other = Member::join(&s.url, "q", "anchor", Role::Anchor).await;
    other.publish(false).await;
    let watcher = Member::join(&s.url, "q", "watcher", Role::Audience).await;
    watcher
        .wait_received("the other room's anchor", |r| {
            r.get(&("anchor".to_owned(), Kind::Audio))
                .is_some_and(|a| a.seqs.len() > 10)
        })
        .await;

    // The abandoned offers never connect: at the connect deadline (10 s) their places are
    // free again, and the address may watch once more.
    let end = Instant::now() + std::time::Duration::from_secs(30);
    while s.media_counter("connect_timeouts").await < 16 {
        assert!(Instant::now() < end, "the abandoned offers were not closed");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut again = 0;
    while again != 201 {
        again = post_whep(&s, "r", &offer).await;
        assert!(Instant::now() < end, "no place freed: {again}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    watcher.close().await;
    other.close().await;
    viewer.close().await;
    anchor.close().await;
}

/// Players from many addresses are held by their room's cap (the loop's share kept from
/// players is tested on the core: `whep_players_leave_publishers_a_share_of_the_loop`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_players_are_held_to_their_rooms_cap() {
    let s = server_with(|c| {
        c.signaling.whep_per_room = 6;
        c.signaling.http_media_per_ip = 0;
    })
    .await;
    let (anchor, viewer) = live_room(&s, "viewer").await;
    let offer = abandoned_offer().await;
    let mut codes = Vec::new();
    for _ in 0..7 {
        codes.push(post_whep(&s, "r", &offer).await);
    }
    assert_eq!(
        codes,
        [201, 201, 201, 201, 201, 201, 503],
        "the room's cap of 6"
    );
    viewer.close().await;
    anchor.close().await;
}

const FINGERPRINT: &str = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99";

/// An offer of `sections` m-sections, alternating audio and video, each with `extra` lines:
/// shaped as a client's (credentials, fingerprint), so that only its size tells it apart.
fn shaped_offer(sections: usize, extra: &str) -> String {
    let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    for i in 0..sections {
        let (kind, pt, codec) = if i % 2 == 0 {
            ("audio", 111, "opus/48000/2")
        } else {
            ("video", 96, "VP8/90000")
        };
        sdp += &format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\na=sendonly\r\n\
             a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=setup:actpass\r\n\
             a=fingerprint:sha-256 {FINGERPRINT}\r\na=rtcp-mux\r\na=rtpmap:{pt} {codec}\r\n{extra}"
        );
    }
    sdp
}

/// Issue 26, item 3: a 65 KB WHIP offer of 215 m-sections got a 47 KB answer and cost 1.6 MB
/// per session, and 1,500 rids were accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_of_215_sections_or_1500_rids_are_refused_saying_which_bound() {
    let s = server().await;
    let sdp = "Content-Type: application/sdp\r\n";
    let wide = shaped_offer(215, "");
    assert!(wide.len() < 64 * 1024);
    let r = s.http("POST", "/whip/r", sdp, &wide).await;
    let said = &r.body[..r.body.len().min(300)];
    assert_eq!(r.status, 400, "{said}");
    assert!(
        said.contains("at most 3 m-sections; this one has 215"),
        "{said}"
    );
    // The encoder joined (the room went live) before the media plane refused the offer; the
    // refusal ends its session, and with it the room.
    assert_eq!(s.health().await["rooms"], 0);

    // A publisher on a seat, over the WebSocket: the same bounds, as `bad_sdp`.
    let anchor = Member::join(&s.url, "q", "anchor", Role::Anchor).await;
    let rids: String = (0..1500).map(|i| format!("a=rid:r{i} send\r\n")).collect();
    let reply = anchor
        .request(Request::Publish {
            sdp: shaped_offer(2, &rids),
        })
        .await;
    let error = reply.error.expect("refused");
    assert_eq!(error.code, miclink_protocol::ErrorCode::BadSdp);
    assert!(
        error.message.contains("attribute lines"),
        "{}",
        error.message
    );
    let four: String = (0..4).map(|i| format!("a=rid:r{i} send\r\n")).collect();
    let reply = anchor
        .request(Request::Publish {
            sdp: shaped_offer(2, &four),
        })
        .await;
    let error = reply.error.expect("refused");
    assert!(
        error.message.contains("4 rids; at most 3"),
        "{}",
        error.message
    );
    assert_eq!(
        s.health().await["media"]["peers"],
        0,
        "no connection was built"
    );
    anchor.close().await;
}

/// Review of issue 26: a client that goes away before its answer must not take its session's
/// place in the caps along: the session is set up all the same, and holds its place until it
/// ends (here, at the connect deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_post_abandoned_mid_way_still_holds_its_place_until_its_session_ends() {
    use tokio::io::AsyncWriteExt;
    let s = server_with(|c| {
        c.signaling.http_media_per_ip_on_loopback = true;
        c.signaling.http_media_per_ip = 2;
    })
    .await;
    let (anchor, viewer) = live_room(&s, "viewer").await;
    let offer = abandoned_offer().await;
    for _ in 0..3 {
        let mut c = tokio::net::TcpStream::connect(s.http)
            .await
            .expect("connect");
        let request = format!(
            "POST /whep/r HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
            offer.len()
        );
        c.write_all(request.as_bytes()).await.expect("write");
        // Gone before the answer.
        drop(c);
    }
    // Whatever the server made of them before they went (nothing, or a whole session), every
    // WHEP session there is holds one of the address's two places: it takes POSTs until a 429,
    // and then there are exactly two besides the anchor's and the viewer's sessions.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    for _ in 0..3 {
        if post_whep(&s, "r", &offer).await == 429 {
            break;
        }
    }
    assert_eq!(post_whep(&s, "r", &offer).await, 429);
    assert_eq!(
        s.health().await["sessions"],
        4,
        "a session without its place"
    );
    viewer.close().await;
    anchor.close().await;
}
