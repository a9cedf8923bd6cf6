//! The media plane end to end: real `webrtc` clients over loopback (ICE, DTLS, SRTP), driven
//! through the signaling protocol exactly as a third-party client would.

mod common;

use common::*;
use miclink_protocol::{ErrorCode, Ident, Request, Role};

/// Media tests run one at a time: each pushes thousands of packets a second through two cores,
/// and running them side by side would make them measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn key(who: &str, kind: Kind) -> (String, Kind) {
    (who.to_owned(), kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_receives_the_anchors_audio_and_video() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let (anchor, viewer) = live_room(&s, "viewer").await;
    viewer
        .wait_received("anchor's audio and video", |r| {
            r.get(&key("anchor", Kind::Video))
                .is_some_and(|s| s.seqs.len() >= 10)
                && r.get(&key("anchor", Kind::Audio))
                    .is_some_and(|s| s.seqs.len() >= 10)
        })
        .await;
    let got = viewer.received().await;
    let video = &got[&key("anchor", Kind::Video)];
    assert_eq!(
        first_is_keyframe(video),
        Some(true),
        "video starts at a keyframe"
    );
    for stream in got.values() {
        assert!(
            stream.marked_by.iter().all(|w| w == "anchor"),
            "msid stream id names the publisher"
        );
        assert!(
            stream.seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
            "continuous sequence numbers: {:?}",
            &stream.seqs[..stream.seqs.len().min(20)]
        );
    }
    let _ = Ident::new("x");
    viewer.close().await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_may_not_publish() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let _anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    let reply = viewer
        .request(Request::Publish {
            sdp: "v=0\r\n".into(),
        })
        .await;
    assert_eq!(reply.error.map(|e| e.code), Some(ErrorCode::NotLinked));
}

/// The server's media port, from the host candidate of `m`'s last subscribe offer.
async fn media_port(m: &Member) -> u16 {
    m.last_offer()
        .await
        .lines()
        .find(|l| l.starts_with("a=candidate:"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|p| p.parse().ok())
        .expect("host candidate port")
}

/// Sorted, unique and without gaps: every packet arrived exactly once.
fn complete(seqs: &[u16]) -> bool {
    let mut s: Vec<u32> = seqs.iter().map(|&x| u32::from(x)).collect();
    s.sort_unstable();
    let unique = s.windows(2).all(|w| w[0] != w[1]);
    // No wrap in a test this short: sequence numbers start at a random 16-bit value, so widen
    // by checking the span in modular arithmetic instead.
    let span = seqs
        .iter()
        .map(|&x| x.wrapping_sub(seqs[0]))
        .max()
        .unwrap_or(0) as usize;
    unique && span + 1 == seqs.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_forwards_every_publisher_to_everyone_else() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let mut members = Vec::new();
    for i in 1..=9 {
        let mut m = Member::join(&s.url, "r", &format!("guest{i}"), Role::Audience).await;
        m.link_via(&mut anchor, true).await;
        m.publish(false).await;
        members.push(m);
    }
    let mut viewers = Vec::new();
    for i in 1..=3 {
        viewers.push(Member::join(&s.url, "r", &format!("viewer{i}"), Role::Audience).await);
    }
    let publishers: Vec<String> = std::iter::once("anchor".to_owned())
        .chain((1..=9).map(|i| format!("guest{i}")))
        .collect();
    let everyone: Vec<&Member> = std::iter::once(&anchor)
        .chain(members.iter())
        .chain(viewers.iter())
        .collect();
    for m in &everyone {
        let expected: Vec<&String> = publishers.iter().filter(|p| **p != m.user).collect();
        m.wait_received("every other publisher's audio and video", |r| {
            expected.iter().all(|p| {
                [Kind::Audio, Kind::Video]
                    .iter()
                    .all(|k| r.get(&key(p, *k)).is_some_and(|s| s.seqs.len() >= 20))
            })
        })
        .await;
        let got = m.received().await;
        assert!(
            !got.keys().any(|(p, _)| *p == m.user),
            "{} receives no echo of itself",
            m.user
        );
        for ((p, kind), stream) in &got {
            assert!(
                stream.marked_by.iter().all(|w| w == p),
                "{}: {p} {kind}: stream id names the sender",
                m.user
            );
            assert!(
                stream.counters.windows(2).all(|w| w[0] != w[1]),
                "{}: {p} {kind}: no duplicates",
                m.user
            );
            if !complete(&stream.seqs) {
                let mut seqs: Vec<u16> = stream
                    .seqs
                    .iter()
                    .map(|x| x.wrapping_sub(stream.seqs[0]))
                    .collect();
                seqs.sort_unstable();
                let gaps: Vec<(u16, u16)> = seqs
                    .windows(2)
                    .filter(|w| w[1] != w[0] + 1)
                    .map(|w| (w[0], w[1]))
                    .collect();
                panic!(
                    "{}: {p} {kind}: continuous sequence numbers; gaps {gaps:?} of {}; server {}",
                    m.user,
                    seqs.len(),
                    s.health().await
                );
            }
        }
    }
    // Steady state: every flow arrives at the loop that owns it (its connected socket), so no
    // datagram is handed from one loop to another any more.
    let handed = s.media_counter("handed_over").await;
    let received = s.media_counter("datagrams_in").await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(s.media_counter("datagrams_in").await > received + 500);
    assert_eq!(
        s.media_counter("handed_over").await,
        handed,
        "no per-packet hop between loops"
    );
    for m in members.into_iter().chain(viewers) {
        m.close().await;
    }
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_member_is_cut_off_at_once_and_leaves_every_offer() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let mut fan = Member::join(&s.url, "r", "fan", Role::Audience).await;
    fan.link_via(&mut anchor, true).await;
    fan.publish(false).await;
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    for m in [&anchor, &viewer] {
        m.wait_received("fan's media", |r| {
            r.get(&key("fan", Kind::Video))
                .is_some_and(|s| s.seqs.len() >= 10)
        })
        .await;
    }
    let offers_before = viewer.offers_answered();
    let r = anchor
        .request(Request::DisconnectUser {
            user: Ident::new("fan").expect("id"),
        })
        .await;
    assert!(r.ok);
    // The fan keeps sending: its RTP task runs until the fan closes.
    fan.wait_event("link_terminated").await;
    async fn count(m: &Member) -> usize {
        let got = m.received().await;
        [Kind::Audio, Kind::Video]
            .iter()
            .map(|k| got.get(&key("fan", *k)).map_or(0, |s| s.seqs.len()))
            .sum()
    }
    // Packets already on the wire when the link ended may still land; nothing after.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (a0, v0) = (count(&anchor).await, count(&viewer).await);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        count(&anchor).await,
        a0,
        "the anchor got the fan's media after the disconnect"
    );
    assert_eq!(
        count(&viewer).await,
        v0,
        "a viewer got the fan's media after the disconnect"
    );
    viewer.wait_offers_above(offers_before).await;
    let offer = viewer.last_offer().await;
    assert!(
        !offer.contains("msid:fan "),
        "the re-offer still carries the fan's tracks:\n{offer}"
    );
    assert!(offer.contains("msid:anchor "), "the anchor's tracks stay");
    // The anchor's media keeps flowing to the viewer.
    let before = viewer.received().await[&key("anchor", Kind::Audio)]
        .seqs
        .len();
    viewer
        .wait_received("more of the anchor's audio", |r| {
            r[&key("anchor", Kind::Audio)].seqs.len() > before + 10
        })
        .await;
    fan.close().await;
    viewer.close().await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_only_link_publishes_audio_alone() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let mut guest = Member::join(&s.url, "r", "guest", Role::Audience).await;
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    guest.link_via(&mut anchor, false).await;
    match anchor.wait_event("connected_users_updated").await {
        miclink_protocol::Event::ConnectedUsersUpdated { joined, .. } => {
            assert!(
                !joined[0].mic && !joined[0].camera,
                "nothing is published yet"
            );
        }
        _ => unreachable!(),
    }
    guest.publish(true).await;
    // Published: everyone hears the mic is on, the camera off.
    anchor
        .wait_media_state("guest", |mic, camera, _| mic && !camera)
        .await;
    viewer
        .wait_received("the guest's audio", |r| {
            r.get(&key("guest", Kind::Audio))
                .is_some_and(|s| s.seqs.len() >= 20)
        })
        .await;
    assert!(
        !viewer
            .received()
            .await
            .contains_key(&key("guest", Kind::Video))
    );
    guest.close().await;
    viewer.close().await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_viewer_starts_at_a_keyframe() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    // Well into the anchor's 30-frame group of pictures.
    tokio::time::sleep(std::time::Duration::from_millis(1400)).await;
    let viewer = Member::join(&s.url, "r", "late", Role::Audience).await;
    viewer
        .wait_received("the anchor's video", |r| {
            r.get(&key("anchor", Kind::Video))
                .is_some_and(|s| s.seqs.len() >= 5)
        })
        .await;
    let got = viewer.received().await;
    let video = &got[&key("anchor", Kind::Video)];
    assert_eq!(first_is_keyframe(video), Some(true));
    assert!(
        video.keyframes[0],
        "the first forwarded frame is one the sender keyed"
    );
    viewer.close().await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_media_port_does_not_disturb_established_connections() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let (anchor, viewer) = live_room(&s, "viewer").await;
    viewer
        .wait_received("the anchor's audio", |r| {
            r.get(&key("anchor", Kind::Audio))
                .is_some_and(|s| s.seqs.len() >= 10)
        })
        .await;
    let port = media_port(&viewer).await;
    let dropped_before = s.media_counter("datagrams_dropped").await;
    let rogue = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = ("127.0.0.1", port);
    let mut junk = Vec::new();
    // Random bytes of every length, including empty.
    let mut x: u32 = 0x9e37_79b9;
    for len in 0..200usize {
        junk.push(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect::<Vec<u8>>(),
        );
    }
    // A STUN binding request naming a ufrag no connection has.
    let mut stun = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[1; 12]);
    stun.extend_from_slice(&[0x00, 0x06, 0x00, 0x08]);
    stun.extend_from_slice(b"nobody:x");
    junk.push(stun);
    // SRTP-looking packets under no negotiated key, and a DTLS-looking record.
    for seq in 0..50u16 {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        p.extend_from_slice(&[0xab; 100]);
        junk.push(p);
    }
    junk.push(vec![
        0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4,
    ]);
    let sent = junk.len() as u64;
    for j in &junk {
        rogue.send_to(j, target).await.expect("send");
    }
    let before = viewer.received().await[&key("anchor", Kind::Audio)]
        .seqs
        .len();
    viewer
        .wait_received("the anchor's audio going on", |r| {
            r[&key("anchor", Kind::Audio)].seqs.len() >= before + 25
        })
        .await;
    let dropped = s.media_counter("datagrams_dropped").await - dropped_before;
    // Empty datagrams may never reach us; everything else is counted and dropped.
    assert!(
        dropped + 1 >= sent,
        "dropped {dropped} of {sent} junk datagrams"
    );
    for ((p, kind), stream) in viewer.received().await {
        assert!(complete(&stream.seqs), "{p} {kind}: still complete");
    }
    viewer.close().await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_are_answered_from_the_servers_buffer_not_by_the_publisher() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let viewer = Member::join_lossy(&s.url, "r", "lossy", dropped.clone()).await;
    viewer
        .wait_received("150 video packets", |r| {
            r.get(&key("anchor", Kind::Video))
                .is_some_and(|s| s.seqs.len() >= 150)
        })
        .await;
    // Give the last NACKs a moment, then look at everything but the newest second.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let got = viewer.received().await;
    let video = &got[&key("anchor", Kind::Video)];
    let first = video.seqs[0];
    let mut offsets: Vec<u16> = video.seqs.iter().map(|s| s.wrapping_sub(first)).collect();
    offsets.sort_unstable();
    offsets.dedup();
    let newest = *offsets.last().expect("packets");
    let settled = newest.saturating_sub(30);
    let missing: Vec<u16> = (0..=settled)
        .filter(|o| offsets.binary_search(o).is_err())
        .collect();
    let lost_on_the_path = dropped.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        lost_on_the_path >= 5,
        "the proxy dropped only {lost_on_the_path}"
    );
    assert!(missing.is_empty(), "never recovered: {missing:?}");
    let nacks = s.media_counter("nacks_received").await;
    let resent = s.media_counter("retransmitted").await;
    assert!(nacks > 0, "the subscriber sent NACKs");
    assert!(
        resent >= lost_on_the_path.saturating_sub(2),
        "{resent} resent for {lost_on_the_path} lost"
    );
    assert_eq!(
        s.media_counter("nacks_to_publishers").await,
        0,
        "the publisher was never asked to resend"
    );
    assert!(
        s.peer_metric("nacks", "lossy", "subscribe").await > 0,
        "per-participant NACKs"
    );
    assert_eq!(s.peer_metric("nacks", "anchor", "publish").await, 0);
    assert!(s.peer_metric("rtp_out", "lossy", "subscribe").await >= 150);
    assert!(s.peer_metric("bytes_in", "anchor", "publish").await > 0);
    viewer.close().await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_bound_to_every_interface_advertises_them_and_works() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server_with(|config| {
        let media = config.media.as_mut().expect("media plane");
        media.udp_addr = "0.0.0.0:0".parse().expect("addr");
        media.public_ips.clear();
    })
    .await;
    let (anchor, viewer) = live_room(&s, "viewer").await;
    viewer
        .wait_received("the anchor's media", |r| {
            r.get(&key("anchor", Kind::Video))
                .is_some_and(|s| s.seqs.len() >= 10)
        })
        .await;
    let offer = viewer.last_offer().await;
    let candidates: Vec<&str> = offer
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert!(
        candidates[0].contains(" 127.0.0.1 "),
        "loopback first: {candidates:?}"
    );
    assert!(
        candidates.iter().all(|c| !c.contains(" 0.0.0.0 ")),
        "never the wildcard"
    );
    viewer.close().await;
    anchor.close().await;
}

/// The sender's packet counters, from the first one received (where this subscriber started) up
/// to a second before the newest, that never arrived (the newest second may still have
/// retransmissions on the way).
fn never_arrived(counters: &[u32]) -> Vec<u32> {
    let Some(&first) = counters.first() else {
        return Vec::new();
    };
    let mut seen = counters.to_vec();
    seen.sort_unstable();
    seen.dedup();
    let last = seen.last().copied().unwrap_or(first);
    assert!(
        seen[0] >= first,
        "a packet from before the subscriber's start was forwarded"
    );
    (first..last.saturating_sub(30))
        .filter(|c| seen.binary_search(c).is_err())
        .take(20)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_asks_the_publisher_for_what_it_lost() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    anchor.publish_lossy(dropped.clone()).await;
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    viewer
        .wait_received("150 video packets", |r| {
            r.get(&key("anchor", Kind::Video))
                .is_some_and(|s| s.seqs.len() >= 150)
        })
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let got = viewer.received().await;
    let lost_upstream = dropped.load(std::sync::atomic::Ordering::SeqCst);
    assert!(lost_upstream >= 5, "the proxy dropped only {lost_upstream}");
    let missing = never_arrived(&got[&key("anchor", Kind::Video)].counters);
    assert!(missing.is_empty(), "the viewer never got {missing:?}");
    assert!(
        s.media_counter("nacks_to_publishers").await > 0,
        "the server asked the publisher"
    );
    assert!(
        s.peer_metric("nacks", "anchor", "publish").await > 0,
        "per-participant NACKs"
    );
    assert!(
        s.peer_metric("packets_lost", "anchor", "publish").await > 0,
        "losses on the publisher's leg are counted"
    );
    viewer.close().await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_is_forwarded_and_starts_at_an_idr() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish_h264().await;
    // Into the group of pictures, so the server must wait for (and ask for) the next IDR.
    tokio::time::sleep(std::time::Duration::from_millis(1400)).await;
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    viewer
        .wait_received("the anchor's H.264", |r| {
            r.get(&key("anchor", Kind::Video))
                .is_some_and(|s| s.seqs.len() >= 10)
        })
        .await;
    assert!(
        viewer.last_offer().await.contains("H264/90000"),
        "H.264 offered to the viewer"
    );
    let got = viewer.received().await;
    let video = &got[&key("anchor", Kind::Video)];
    assert!(
        is_h264_idr(video.first_payload.as_deref().expect("video")),
        "starts at an IDR"
    );
    assert!(complete(&video.seqs));
    viewer.close().await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_unexpected_sdp_gets_bad_sdp() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    let code = |r: miclink_protocol::Reply| r.error.map(|e| e.code);
    let garbage = anchor
        .request(Request::Publish {
            sdp: "this is not a session description".into(),
        })
        .await;
    assert_eq!(code(garbage), Some(ErrorCode::BadSdp));
    let unasked = anchor
        .request(Request::SubscribeAnswer {
            sdp: "v=0\r\n".into(),
            offer_id: None,
        })
        .await;
    assert_eq!(
        code(unasked),
        Some(ErrorCode::BadSdp),
        "no offer awaits an answer"
    );
    // The connection is fine afterwards: a real publish still works.
    let mut anchor = anchor;
    anchor.publish(false).await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_room_and_user_ids_only_to_the_token() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let (anchor, viewer) = live_room(&s, "viewer").await;
    viewer
        .wait_received("anchor's video", |r| {
            r.contains_key(&key("anchor", Kind::Video))
        })
        .await;
    let auth = format!("Authorization: Bearer {METRICS_TOKEN}\r\n");
    let (_, full) = s.get_with("/metrics", &auth).await;
    assert!(
        full.contains("user=\"anchor\",pc=\"publish\""),
        "the token shows per-connection series:\n{full}"
    );
    let (status, anonymous) = s.get("/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        anonymous.contains("miclink_media_rtp_in_total"),
        "{anonymous}"
    );
    for (what, body) in [
        ("anonymous", anonymous),
        (
            "wrong token",
            s.get_with("/metrics", "Authorization: Bearer not-the-token-at-all\r\n")
                .await
                .1,
        ),
        ("healthz", s.get("/healthz").await.1),
    ] {
        assert!(
            !body.contains("room=") && !body.contains("user=") && !body.contains("\"r\""),
            "{what} shows no room or user id:\n{body}"
        );
    }
    viewer.close().await;
    anchor.close().await;
}

/// Loop steering: checks whose ufrag prefix names another loop, but whose ufrag no connection
/// has, are dropped where they land instead of being queued for that loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ufrag_prefixes_are_not_handed_between_loops() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server_with(|c| {
        if let Some(m) = &mut c.media {
            m.loops = 2;
        }
    })
    .await;
    let (anchor, viewer) = live_room(&s, "viewer").await;
    viewer
        .wait_received("the anchor's audio", |r| {
            r.contains_key(&key("anchor", Kind::Audio))
        })
        .await;
    let port = media_port(&viewer).await;
    let handed = s.media_counter("handed_over").await;
    let dropped = s.media_counter("datagrams_dropped").await;
    // From many source ports (the kernel spreads them over both loops' sockets), binding
    // requests naming loop 0 and loop 1 with made-up ufrags.
    for i in 0..50u8 {
        let rogue = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        for prefix in [b"00", b"01"] {
            let mut username = prefix.to_vec();
            username.extend_from_slice(format!("forged{i:02}:x").as_bytes());
            let padded = username.len().div_ceil(4) * 4;
            let mut stun = vec![0x00, 0x01];
            stun.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
            stun.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
            stun.extend_from_slice(&[i; 12]);
            stun.extend_from_slice(&[0x00, 0x06]);
            stun.extend_from_slice(&(username.len() as u16).to_be_bytes());
            stun.extend_from_slice(&username);
            stun.resize(20 + 4 + padded, 0);
            rogue
                .send_to(&stun, ("127.0.0.1", port))
                .await
                .expect("send");
        }
    }
    let mut settled = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if s.media_counter("datagrams_dropped").await >= dropped + 100 {
            settled = true;
            break;
        }
    }
    assert!(settled, "every forged check is dropped and counted");
    assert_eq!(
        s.media_counter("handed_over").await,
        handed,
        "none was handed to the other loop"
    );
    viewer.close().await;
    anchor.close().await;
}
