//! The media core on a fake clock with in-memory peers: real ICE, DTLS and SRTP between rtc
//! clients and the core, no sockets and no sleeping. Each test runs in well under a second of
//! real time however much simulated time it covers.

use std::time::Duration;

use miclink_sfu::sim::{ClientId, Codec, Net};
use miclink_sfu::{MediaCommand, MediaEvent, PcKind, ReplyTo, SfuError};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

mod common;
use common::*;

/// Room "r" with the anchor publishing audio alone, connected.
fn audio_anchor(net: &mut Net) -> Pub {
    net.allow("r", "anchor", 0, true, true);
    let a = net.enter("r", "anchor");
    net.publish(a, &[Codec::Opus]).expect("publish");
    let mut anchor = Pub::new(a, Codec::Vp8);
    for _ in 0..250 {
        if net.clients[a].publisher_connected {
            return anchor;
        }
        anchor.send(net, Codec::Opus, true);
        net.step(FRAME);
    }
    panic!("the anchor's publish connection never connected");
}

/// Room "r": the anchor publishing `video` and Opus, connected; then a viewer connected.
fn live(net: &mut Net, video: Codec) -> (Pub, ClientId) {
    net.allow("r", "anchor", 0, true, true);
    let a = net.enter("r", "anchor");
    net.publish(a, &[Codec::Opus, video]).expect("publish");
    let mut anchor = Pub::new(a, video);
    let v = net.enter("r", "viewer");
    for _ in 0..250 {
        if net.clients[v].subscriber_connected && !net.clients[v].received.is_empty() {
            break;
        }
        run(net, &mut [&mut anchor], 1);
    }
    assert!(net.clients[v].subscriber_connected, "the viewer connected");
    (anchor, v)
}

/// [`live`], then a guest on seat 1 publishing Opus and VP8, everyone run for `frames` frames.
fn live_with_guest(net: &mut Net, frames: usize) -> (Pub, Pub, ClientId, ClientId) {
    let (mut anchor, v) = live(net, Codec::Vp8);
    net.allow("r", "guest", 1, true, true);
    let g = net.enter("r", "guest");
    net.publish(g, &[Codec::Opus, Codec::Vp8]).expect("publish");
    let mut guest = Pub::new(g, Codec::Vp8);
    run(net, &mut [&mut anchor, &mut guest], frames);
    (anchor, guest, v, g)
}

#[test]
fn a_viewer_gets_the_anchors_media_rewritten_and_starting_at_a_keyframe() {
    let mut net = Net::new();
    let (mut anchor, v) = live(&mut net, Codec::Vp8);
    run(&mut net, &mut [&mut anchor], 50);
    let video = stream(&net, v, "anchor", RtpCodecKind::Video);
    let audio = stream(&net, v, "anchor", RtpCodecKind::Audio);
    assert!(
        video.len() >= 40 && audio.len() >= 40,
        "{} / {}",
        video.len(),
        audio.len()
    );
    assert_eq!(video[0].payload[1] & 0x01, 0, "video starts at a keyframe");
    assert_contiguous(&video, "video");
    assert_contiguous(&audio, "audio");
    assert_ne!(
        video[0].ssrc, 0x5000_0001,
        "the subscriber leg has its own SSRC"
    );
    assert!(video.iter().all(|r| r.ssrc == video[0].ssrc));
    // Counters step by one: nothing lost, nothing twice.
    for w in video.windows(2) {
        assert_eq!(counter(w[1]), counter(w[0]) + 1);
    }
    assert!(
        net.clients[anchor.c].received.is_empty(),
        "no echo to the publisher"
    );
}

/// The regression test of the sequence-wrap bug at the core: a subscriber's stream stopped
/// after 32,768 packets for the next 32,768.
#[test]
fn seventy_thousand_packets_stay_contiguous_across_both_wraps() {
    let mut net = Net::new();
    net.allow("r", "anchor", 0, true, true);
    let a = net.enter("r", "anchor");
    net.publish(a, &[Codec::Vp8]).expect("publish");
    // The publisher itself wraps early on, too.
    let mut anchor = Pub::new(a, Codec::Vp8).starting_at(0, 65_000);
    anchor.audio = false;
    let v = net.enter("r", "viewer");
    while stream(&net, v, "anchor", RtpCodecKind::Video).is_empty() {
        run(&mut net, &mut [&mut anchor], 1);
        assert!(anchor.sent[1] < 500, "the viewer never got video");
    }
    let first = counter(stream(&net, v, "anchor", RtpCodecKind::Video)[0]);
    for _ in 0..1_400 {
        for _ in 0..50 {
            anchor.send(&mut net, Codec::Vp8, false);
        }
        net.step(Duration::from_millis(1));
    }
    net.step(FRAME);
    let video = stream(&net, v, "anchor", RtpCodecKind::Video);
    assert_eq!(
        video.len() as u32,
        anchor.sent[1] - first,
        "every packet arrived"
    );
    assert!(video.len() > 70_000);
    assert_contiguous(&video, "video across 16-bit wraps");
    for (i, r) in video.iter().enumerate() {
        assert_eq!(counter(r), first + i as u32, "in order, none missing");
    }
}

#[test]
fn lost_packets_are_resent_from_the_tracks_buffer() {
    let mut net = Net::new();
    let (mut anchor, v) = live(&mut net, Codec::Vp8);
    let mut n = 0u32;
    // Every 10th large datagram (video) toward the viewer is lost.
    net.set_loss(
        v,
        Some(Box::new(move |d: &[u8]| {
            if d.len() < 500 {
                return false;
            }
            n += 1;
            n.is_multiple_of(10)
        })),
    );
    run(&mut net, &mut [&mut anchor], 200);
    net.set_loss(v, None);
    run(&mut net, &mut [&mut anchor], 50);
    let stats = net.core.stats(net.now);
    assert!(stats.nacks_received > 0, "the viewer sent NACKs");
    assert!(stats.retransmitted >= 15, "resent {}", stats.retransmitted);
    let mut got: Vec<u32> = stream(&net, v, "anchor", RtpCodecKind::Video)
        .iter()
        .map(|r| counter(r))
        .collect();
    got.sort_unstable();
    got.dedup();
    let (lo, hi) = (got[0], *got.last().expect("some"));
    assert_eq!(got.len() as u32, hi - lo + 1, "every lost packet came back");
}

/// One NACK of 500 pairs naming the same packets, and then a NACK of 128 distinct recent
/// numbers every frame: without a budget each would be thousands of retransmissions.
#[test]
fn nack_amplification_costs_at_most_the_tracks_budget() {
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    let mut net = Net::new();
    let (mut anchor, v) = live(&mut net, Codec::Vp8);
    run(&mut net, &mut [&mut anchor], 100);
    let video = stream(&net, v, "anchor", RtpCodecKind::Video);
    let ssrc = video[0].ssrc;
    let newest = video.last().map(|r| r.seq).expect("video");
    let nack = |first: u16, pairs: usize| -> Vec<Box<dyn rtc::rtcp::Packet>> {
        vec![Box::new(TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: ssrc,
            nacks: vec![
                NackPair {
                    packet_id: first,
                    lost_packets: 0xffff,
                };
                pairs
            ],
        })]
    };
    let before = net.core.stats(net.now);
    // 500 copies of the same 17 numbers: each is sent once.
    net.inject_rtcp(v, nack(newest.wrapping_sub(40), 500));
    let once = net.core.stats(net.now);
    assert_eq!(once.retransmitted - before.retransmitted, 17);
    // The same NACK again at once: a repeat within a round trip, nothing sent.
    net.inject_rtcp(v, nack(newest.wrapping_sub(40), 1));
    let again = net.core.stats(net.now);
    assert_eq!(again.retransmitted, once.retransmitted);
    assert_eq!(again.retransmit_repeats - once.retransmit_repeats, 17);
    // A flood: every frame a NACK of 136 numbers (8 pairs of 17), cut to 128, of what was sent.
    // The newest number is read after each frame, so it is a fresh packet, not a resent one.
    for _ in 0..50 {
        let newest = stream(&net, v, "anchor", RtpCodecKind::Video)
            .last()
            .map(|r| r.seq)
            .expect("video");
        let pairs: Vec<NackPair> = (0..8u16)
            .map(|i| NackPair {
                packet_id: newest.wrapping_sub(400).wrapping_add(i * 17),
                lost_packets: 0xffff,
            })
            .collect();
        net.inject_rtcp(
            v,
            vec![Box::new(TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc: ssrc,
                nacks: pairs,
            })],
        );
        run(&mut net, &mut [&mut anchor], 1);
    }
    let after = net.core.stats(net.now);
    let resent = after.retransmitted - again.retransmitted;
    let forwarded = after.rtp_out - again.rtp_out;
    assert!(
        resent as f64 <= 64.0 + 0.5 * forwarded as f64,
        "{resent} retransmissions for {forwarded} packets forwarded"
    );
    assert!(after.retransmit_over_budget > 0, "the budget was hit");
}

/// ICE role: whatever the clients claim (here every client says it is ICE-lite too, which
/// would make the server the controlling, checking side) or name in candidates, the server
/// stays ICE-lite and controlled, and sends nothing to (nor resolves) an address a client only
/// supplied.
#[test]
fn ice_role_the_server_stays_lite_and_never_contacts_a_supplied_address() {
    let mut net = Net::new();
    net.claim_ice_lite = true;
    let (mut anchor, v) = live(&mut net, Codec::Vp8);
    let sdps: Vec<&str> = net
        .events
        .iter()
        .filter_map(|e| match e {
            MediaEvent::PublishAnswer {
                result: Ok(sdp), ..
            } => Some(sdp.as_str()),
            MediaEvent::SubscribeOffer { sdp, .. } => Some(sdp.as_str()),
            _ => None,
        })
        .collect();
    assert!(sdps.len() >= 2, "a publish answer and a subscribe offer");
    for sdp in sdps {
        assert!(sdp.contains("a=ice-lite"), "{sdp}");
    }
    for i in 0..40 {
        net.trickle(
            v,
            PcKind::Subscribe,
            &format!(
                "candidate:{i} 1 udp 2130706431 10.9.{i}.9 {} typ host",
                9000 + i
            ),
        );
        net.trickle(
            0,
            PcKind::Publish,
            &format!("candidate:{i} 1 udp 2130706431 {i}-host.local 9 typ host"),
        );
    }
    let before = stream(&net, v, "anchor", RtpCodecKind::Video).len();
    run(&mut net, &mut [&mut anchor], 200);
    assert!(
        net.stray.is_empty(),
        "sent to {:?}",
        &net.stray[..net.stray.len().min(5)]
    );
    assert!(
        stream(&net, v, "anchor", RtpCodecKind::Video).len() > before,
        "media still flows"
    );
}

/// Near the file limit: past the loop's connection budget a publish is refused with
/// `AtCapacity` (signaling answers `unavailable`) and a viewer waits without an offer; once a
/// connection closes, the waiting viewer gets its offer at the next retry.
#[test]
fn connections_past_the_loops_budget_are_refused_cleanly_and_retried() {
    // The anchor's publish connection and two viewers' subscribe connections fill it.
    let mut net = Net::with_max_peers(3);
    let (mut anchor, v1) = live(&mut net, Codec::Vp8);
    let v2 = net.enter("r", "viewer2");
    run(&mut net, &mut [&mut anchor], 50);
    assert!(net.clients[v2].subscriber_connected);
    let v3 = net.enter("r", "viewer3");
    run(&mut net, &mut [&mut anchor], 50);
    assert_eq!(net.clients[v3].offers, 0, "no room for a third viewer yet");
    net.allow("r", "guest", 1, true, true);
    let g = net.enter("r", "guest");
    assert!(matches!(
        net.publish(g, &[Codec::Opus]),
        Err(miclink_sfu::SfuError::AtCapacity)
    ));
    assert!(net.core.stats(net.now).peers_refused >= 2);
    // At capacity, the anchor may still republish (a new device replaces the old one's place).
    net.publish(0, &[Codec::Opus, Codec::Vp8])
        .expect("a republish is never refused for capacity");
    // The guest gives up and leaves; then a viewer leaves, and its place is the waiting one's.
    for who in ["guest", "viewer2"] {
        net.send_command(MediaCommand::Seats(miclink_sfu::MediaChange::Unsubscribe {
            room: id("r"),
            user: id(who),
        }));
    }
    run(&mut net, &mut [&mut anchor], 150);
    assert!(
        net.clients[v3].subscriber_connected,
        "the freed place went to the waiting viewer"
    );
    assert!(!stream(&net, v3, "anchor", RtpCodecKind::Video).is_empty());
    assert!(
        net.clients[v1].subscriber_connected,
        "the first viewer never noticed"
    );
}

#[test]
fn a_late_viewer_waits_for_a_keyframe_and_the_publisher_is_asked_for_one() {
    let mut net = Net::new();
    let (mut anchor, _) = live(&mut net, Codec::H264);
    // Into the group of pictures: the next scheduled keyframe is far off.
    run(&mut net, &mut [&mut anchor], 60);
    let asked_before = net.clients[anchor.c].keyframe_requests;
    let late = net.enter("r", "late");
    net.run_until(CONNECT, FRAME, |n| n.clients[late].subscriber_connected);
    run(&mut net, &mut [&mut anchor], 20);
    assert!(
        net.clients[anchor.c].keyframe_requests > asked_before,
        "a PLI reached the publisher"
    );
    let video = stream(&net, late, "anchor", RtpCodecKind::Video);
    assert!(!video.is_empty());
    assert_eq!(video[0].payload[0] & 0x1f, 5, "starts at an IDR");
    assert!(
        !counter(video[0]).is_multiple_of(50),
        "the keyframe was the requested one"
    );
    assert_contiguous(&video, "late viewer's video");
}

#[test]
fn checks_that_beat_the_answer_are_kept_and_fed_after_it() {
    let mut net = Net::new();
    let mut anchor = audio_anchor(&mut net);
    net.hold_answers = true;
    let v = net.enter("r", "viewer");
    anchor.send(&mut net, Codec::Opus, true);
    net.step(FRAME);
    // The viewer has the offer and is checking; the core has no answer yet.
    net.step(Duration::from_millis(200));
    assert!(!net.clients[v].subscriber_connected);
    net.hold_answers = false;
    net.release_answers();
    // Fed the kept checks, the connection is up at the client's next DTLS step (200 ms here);
    // refused, it waits for the client's next round of checks as well (400 ms).
    let mut ms = 0;
    while !net.clients[v].subscriber_connected && ms < 2000 {
        net.step(Duration::from_millis(1));
        ms += 1;
    }
    assert!(
        ms < 300,
        "connected {ms} ms after the answer: the early checks were not fed"
    );
}

#[test]
fn a_revoked_publisher_is_cut_off_at_once_and_leaves_the_offer() {
    let mut net = Net::new();
    let (mut anchor, _, v, g) = live_with_guest(&mut net, 50);
    assert!(!stream(&net, v, "guest", RtpCodecKind::Video).is_empty());
    let offers = net.clients[v].offers;
    net.revoke("r", "guest");
    let before = stream(&net, v, "guest", RtpCodecKind::Audio).len();
    // The guest keeps sending (its connection is gone on the server, so nothing arrives).
    for _ in 0..20 {
        net.send(
            g,
            Codec::Opus,
            60_000,
            0,
            Codec::Opus.payload(true, &[0; 8]),
        );
        anchor.frame(&mut net);
        net.step(FRAME);
    }
    assert_eq!(stream(&net, v, "guest", RtpCodecKind::Audio).len(), before);
    assert!(
        net.clients[v].offers > offers,
        "a re-offer without the guest"
    );
    let last_offer = net
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            MediaEvent::SubscribeOffer { user, sdp, .. } if user.as_str() == "viewer" => Some(sdp),
            _ => None,
        })
        .expect("an offer");
    assert!(!last_offer.contains("msid:guest "), "{last_offer}");
    assert!(last_offer.contains("msid:anchor "));
}

#[test]
fn a_republished_stream_continues_contiguous_from_the_new_keyframe() {
    let mut net = Net::new();
    let (mut anchor, v) = live(&mut net, Codec::Vp8);
    run(&mut net, &mut [&mut anchor], 40);
    let offers = net.clients[v].offers;
    // A reload: a new publish connection, new SSRCs, new sequence and timestamp bases.
    net.publish(anchor.c, &[Codec::Opus, Codec::Vp8])
        .expect("republish");
    let mut again = Pub::new(anchor.c, Codec::Vp8).starting_at(40_000, 7);
    again.ts = [123, 456];
    again.sent = [1_000_000, 1_000_001]; // mid-GOP: the server must ask for the keyframe
    run(&mut net, &mut [&mut again], 60);
    assert_eq!(
        net.clients[v].offers, offers,
        "same codecs: no renegotiation"
    );
    assert!(
        net.clients[anchor.c].keyframe_requests > 0,
        "PLI sent to the new connection"
    );
    let video = stream(&net, v, "anchor", RtpCodecKind::Video);
    assert_contiguous(&video, "video across the republish");
    let switch = video
        .iter()
        .position(|r| counter(r) >= 1_000_000)
        .expect("the new stream arrived");
    assert_eq!(video[switch].payload[1] & 0x01, 0, "resumes at a keyframe");
    let before = video[switch - 1];
    let gap = video[switch].timestamp.wrapping_sub(before.timestamp);
    assert!(
        (1800..=90_000).contains(&gap),
        "timestamps advance by the time between, not jump: {gap}"
    );
    assert_contiguous(&stream(&net, v, "anchor", RtpCodecKind::Audio), "audio");
    assert_eq!(net.core.stats(net.now).republished, 1);
}

#[test]
fn a_republish_with_another_codec_is_renegotiated() {
    let mut net = Net::new();
    let (mut anchor, v) = live(&mut net, Codec::Vp8);
    run(&mut net, &mut [&mut anchor], 10);
    let offers = net.clients[v].offers;
    net.publish(anchor.c, &[Codec::Opus, Codec::H264])
        .expect("republish");
    let mut again = Pub::new(anchor.c, Codec::H264);
    run(&mut net, &mut [&mut again], 60);
    assert!(net.clients[v].offers > offers, "re-offered");
    let h264 = stream(&net, v, "anchor", RtpCodecKind::Video)
        .into_iter()
        .filter(|r| r.payload[0] & 0x1f == 5 || r.payload[0] & 0x1f == 1)
        .count();
    assert!(h264 >= 20, "H.264 arrives after the switch: {h264}");
}

fn resubscribe(net: &mut Net, user: &str) {
    net.send_command(MediaCommand::Resubscribe {
        room: id("r"),
        user: id(user),
        reply: ReplyTo { conn: 0, id: 99 },
    });
}

#[test]
fn resubscribe_gives_a_new_connection_and_media_comes_back() {
    let mut net = Net::new();
    let (mut anchor, v) = live(&mut net, Codec::Vp8);
    run(&mut net, &mut [&mut anchor], 10);
    resubscribe(&mut net, "viewer");
    assert_eq!(
        net.clients[v].new_connections, 1,
        "the offer says: new connection"
    );
    let before = net.clients[v].received.len();
    run(&mut net, &mut [&mut anchor], 60);
    assert!(net.clients[v].subscriber_connected);
    assert!(net.clients[v].received.len() > before + 50);
    assert!(net.events.iter().any(|e| matches!(
        e,
        MediaEvent::Done { reply, result: Ok(()) } if reply.id == 99
    )));
}

/// A client that vanishes without a word (a crashed tab, a dead network): the server's
/// connection fails when ICE hears nothing for its failure timeout, and is rebuilt.
#[test]
fn a_subscribe_connection_that_fails_is_rebuilt() {
    let mut net = Net::new();
    let (mut anchor, v) = live(&mut net, Codec::Vp8);
    run(&mut net, &mut [&mut anchor], 10);
    net.kill_subscriber(v);
    let mut frames = 0;
    while net.clients[v].new_connections == 0 {
        run(&mut net, &mut [&mut anchor], 50);
        frames += 50;
        assert!(frames < 100 * 50, "no new offer after 100 s");
    }
    let before = net.clients[v].received.len();
    run(&mut net, &mut [&mut anchor], 60);
    assert!(net.clients[v].received.len() > before + 50, "media is back");
    assert!(net.core.stats(net.now).subscribe_rebuilt >= 1);
}

#[test]
fn rejoin_closes_the_old_connections_and_offers_a_new_one() {
    let mut net = Net::new();
    let (mut anchor, v) = live(&mut net, Codec::Vp8);
    run(&mut net, &mut [&mut anchor], 10);
    let peers = net.core.peers();
    net.send_command(MediaCommand::Rejoin {
        room: id("r"),
        user: id("anchor"),
    });
    assert_eq!(
        net.core.peers(),
        peers - 1,
        "the anchor's publish connection closed"
    );
    net.send_command(MediaCommand::Rejoin {
        room: id("r"),
        user: id("viewer"),
    });
    assert_eq!(
        net.clients[v].new_connections, 0,
        "nothing is published: no offer yet"
    );
    net.publish(anchor.c, &[Codec::Opus, Codec::Vp8])
        .expect("publish again");
    run(&mut net, &mut [&mut anchor], 60);
    assert_eq!(net.clients[v].new_connections, 1);
    assert!(net.clients[v].subscriber_connected);
}

#[test]
fn a_resumed_session_gets_its_unanswered_offer_again() {
    let mut net = Net::new();
    let mut anchor = audio_anchor(&mut net);
    net.hold_answers = true;
    net.enter("r", "viewer");
    anchor.send(&mut net, Codec::Opus, true);
    net.step(FRAME);
    let offers = |net: &Net| {
        net.events
            .iter()
            .filter(|e| matches!(e, MediaEvent::SubscribeOffer { user, .. } if user.as_str() == "viewer"))
            .count()
    };
    assert_eq!(offers(&net), 1);
    net.send_command(MediaCommand::Resumed {
        room: id("r"),
        user: id("viewer"),
    });
    assert_eq!(offers(&net), 2, "the pending offer went out again");
}

/// Shedding past every video copy takes audio too, the guest's before the anchor's, and gives
/// it back first.
#[test]
fn deep_overload_sheds_audio_only_after_every_video_copy() {
    let mut net = Net::new();
    let (mut anchor, mut guest, v, _) = live_with_guest(&mut net, 60);
    // Eight copies: each publisher's audio and video to each of the two others. Five steps behind
    // pause the four video copies and one audio copy: a guest's.
    for _ in 0..5 {
        net.core.handle_backlog(net.now, Duration::from_millis(500));
        net.step(Duration::from_millis(100));
    }
    assert_eq!(net.core.stats(net.now).shed_level, 5);
    let count = |net: &Net, who: &str, kind| stream(net, v, who, kind).len();
    let before = [
        count(&net, "anchor", RtpCodecKind::Audio),
        count(&net, "guest", RtpCodecKind::Audio),
        count(&net, "anchor", RtpCodecKind::Video),
    ];
    run(&mut net, &mut [&mut anchor, &mut guest], 20);
    // The viewer's subscribe connection is older than the anchor's, so its copy goes first.
    assert_eq!(
        count(&net, "guest", RtpCodecKind::Audio),
        before[1],
        "the guest's audio to the viewer is paused"
    );
    assert_eq!(
        count(&net, "anchor", RtpCodecKind::Audio),
        before[0] + 20,
        "the anchor's audio goes last"
    );
    assert_eq!(
        count(&net, "anchor", RtpCodecKind::Video),
        before[2],
        "no video at all"
    );
    assert!(net.core.stats(net.now).audio_shed >= 20);
}

#[test]
fn overload_sheds_guests_video_first_keeps_audio_and_recovers_at_a_keyframe() {
    let mut net = Net::new();
    let (mut anchor, mut guest, v, _) = live_with_guest(&mut net, 60);
    // The driver reports it is behind: the first step pauses one of the four video copies
    // (each publisher's video to each other member), a guest's before the anchor's.
    net.core.handle_backlog(net.now, Duration::from_millis(80));
    let counts = |net: &Net| {
        (
            stream(net, v, "guest", RtpCodecKind::Video).len(),
            stream(net, v, "guest", RtpCodecKind::Audio).len(),
            stream(net, v, "anchor", RtpCodecKind::Video).len(),
        )
    };
    let (gv, ga, av) = counts(&net);
    run(&mut net, &mut [&mut anchor, &mut guest], 25);
    let (gv2, ga2, av2) = counts(&net);
    assert_eq!(gv2, gv, "the guest's video to the viewer is shed");
    assert_eq!(ga2, ga + 25, "audio is never shed");
    assert_eq!(av2, av + 25, "the anchor's video is shed last");
    assert!(net.core.stats(net.now).video_shed >= 25);
    // Caught up for a second: shedding lifts, the video resumes at a keyframe, numbering on.
    for _ in 0..60 {
        net.core.handle_backlog(net.now, Duration::ZERO);
        run(&mut net, &mut [&mut anchor, &mut guest], 1);
    }
    let video = stream(&net, v, "guest", RtpCodecKind::Video);
    assert!(video.len() > gv + 5, "resumed");
    assert_eq!(video[gv].payload[1] & 0x01, 0, "at a keyframe");
    assert_contiguous(&video, "guest video across the pause");
}

/// After its timers ran and its output was taken, the core's next deadline is in the future: a
/// deadline left in the past made the driver run every timer of every peer on every turn.
#[test]
fn the_next_deadline_is_never_left_in_the_past() {
    let mut net = Net::new();
    let (mut anchor, _) = live(&mut net, Codec::Vp8);
    for _ in 0..100 {
        run(&mut net, &mut [&mut anchor], 1);
        let now = net.now;
        net.core.handle_timeout(now);
        net.pump();
        let next = net.core.poll_timeout().expect("peers need time");
        assert!(next > now, "next deadline {:?} before now", now - next);
    }
}

/// Found by the chaos test: a client's answer to an offer the server had since replaced (here by
/// a resubscribe while the answer was on its way) was applied to the newer offer, whose mids it
/// matched, leaving a connection with a closed client's credentials; the client's answer to the
/// newer offer was then refused and the member never got media again.
#[test]
fn an_answer_to_a_replaced_offer_is_refused_and_the_latest_connects() {
    let mut net = Net::new();
    let mut anchor = audio_anchor(&mut net);
    net.hold_answers = true;
    let v = net.enter("r", "viewer");
    anchor.send(&mut net, Codec::Opus, true);
    net.step(FRAME);
    net.send_command(MediaCommand::Resubscribe {
        room: id("r"),
        user: id("viewer"),
        reply: ReplyTo { conn: 0, id: 999 },
    });
    anchor.send(&mut net, Codec::Opus, true);
    net.step(FRAME);
    assert_eq!(
        net.clients[v].offers, 2,
        "two offers, both answered and held"
    );
    net.hold_answers = false;
    net.release_answers();
    let refused: Vec<_> = net
        .events
        .iter()
        .filter_map(|e| match e {
            MediaEvent::Done { result: Err(e), .. } => Some(e.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("replaced by offer"), "{refused:?}");
    for _ in 0..100 {
        if net.clients[v].subscriber_connected && !net.clients[v].received.is_empty() {
            break;
        }
        anchor.send(&mut net, Codec::Opus, false);
        net.step(FRAME);
    }
    assert!(
        !stream(&net, v, "anchor", RtpCodecKind::Audio).is_empty(),
        "the answer to the latest offer connected"
    );
}

/// A kind muted by the seats (rule 12) is held back at the server while its packets keep
/// arriving; muted for longer than half the 16-bit sequence space (11 minutes of audio), it comes
/// back contiguous at every subscriber, and the held span is not counted as lost.
#[test]
fn audio_muted_past_half_the_sequence_space_resumes_contiguous_and_is_not_counted_lost() {
    let mut net = Net::new();
    let mut anchor = audio_anchor(&mut net);
    let v = net.enter("r", "viewer");
    while stream(&net, v, "anchor", RtpCodecKind::Audio).len() < 20 {
        anchor.send(&mut net, Codec::Opus, true);
        net.step(FRAME);
        assert!(anchor.sent[0] < 2_000, "the viewer never got audio");
    }
    // Under half the sequence space (a wrong baseline would count it all as lost), then over
    // it (a wrong baseline would read the first packet after as an old one).
    for muted in [20_000u32, 40_000] {
        let before = stream(&net, v, "anchor", RtpCodecKind::Audio).len();
        net.allow("r", "anchor", 0, false, true);
        for _ in 0..muted / 50 {
            for _ in 0..50 {
                anchor.send(&mut net, Codec::Opus, true);
            }
            net.step(Duration::from_millis(1));
        }
        net.step(FRAME);
        assert_eq!(
            stream(&net, v, "anchor", RtpCodecKind::Audio).len(),
            before,
            "nothing muted was forwarded"
        );
        net.allow("r", "anchor", 0, true, true);
        for _ in 0..100 {
            anchor.send(&mut net, Codec::Opus, true);
            net.step(FRAME);
        }
        let audio = stream(&net, v, "anchor", RtpCodecKind::Audio);
        assert_eq!(
            audio.len(),
            before + 100,
            "every packet after the mute arrived"
        );
        assert_contiguous(&audio, "audio across a mute");
        let held = counter(audio[before]) - counter(audio[before - 1]);
        assert_eq!(held, muted + 1, "the muted packets were sent and held back");
        let now = net.now;
        let lost: u64 = net
            .core
            .peer_stats(now)
            .iter()
            .filter(|p| p.user == "anchor" && p.kind == PcKind::Publish)
            .map(|p| p.packets_lost)
            .sum();
        assert_eq!(lost, 0, "a mute of {muted} packets is not loss");
    }
}

/// Publish reports name the seating they belong to, so signaling can drop a report about an
/// earlier seating that arrives after the next one began.
#[test]
fn publish_reports_carry_the_seating_they_belong_to() {
    let mut net = Net::new();
    let seat = |net: &mut Net, link| {
        net.send_command(MediaCommand::Seats(
            miclink_sfu::MediaChange::AllowPublish {
                room: id("r"),
                user: id("guest"),
                seat: 1,
                audio: true,
                video: true,
                link,
            },
        ));
    };
    let reports = |net: &Net| -> Vec<(bool, bool, u64)> {
        net.events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Published {
                    user,
                    audio,
                    video,
                    link,
                    ..
                } if *user == "guest" => Some((*audio, *video, *link)),
                _ => None,
            })
            .collect()
    };
    seat(&mut net, 7);
    let g = net.enter("r", "guest");
    net.publish(g, &[Codec::Opus]).expect("publish");
    assert_eq!(reports(&net), vec![(true, false, 7)]);
    net.revoke("r", "guest");
    assert_eq!(reports(&net), vec![(true, false, 7), (false, false, 7)]);
    seat(&mut net, 8);
    net.publish(g, &[Codec::Opus, Codec::Vp8])
        .expect("publish again");
    assert_eq!(reports(&net).last(), Some(&(true, true, 8)));
}

/// A receive-only offer (an audio and a video section) from a player that will never connect.
fn abandoned_whep_offer() -> String {
    let section = |kind: &str, mid: u32, pt: u32, codec: &str| {
        format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\n\
             a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 \
             AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\r\n\
             a=setup:actpass\r\na=mid:{mid}\r\na=recvonly\r\na=rtcp-mux\r\na=rtpmap:{pt} {codec}\r\n"
        )
    };
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n{}{}",
        section("audio", 0, 111, "opus/48000/2"),
        section("video", 1, 96, "VP8/90000")
    )
}

/// A player of `room` (`user`): a member making its own offers, watching with `offer`.
fn watch(net: &mut Net, room: &str, user: &str, offer: &str) -> Result<String, SfuError> {
    net.send_command(MediaCommand::Seats(miclink_sfu::MediaChange::Subscribe {
        room: id(room),
        user: id(user),
    }));
    net.send_command(MediaCommand::OwnOffers {
        room: id(room),
        user: id(user),
    });
    let reply = ReplyTo { conn: 7, id: 7 };
    net.send_command(MediaCommand::Watch {
        room: id(room),
        user: id(user),
        offer: offer.to_owned(),
        reply,
    });
    net.events
        .iter()
        .rev()
        .find_map(|e| match e {
            MediaEvent::PublishAnswer { reply: r, result } if *r == reply => Some(result.clone()),
            _ => None,
        })
        .expect("the watch was answered")
}

#[test]
fn whep_players_leave_publishers_a_share_of_the_loop() {
    // 16 places, 2 (an eighth) kept from players.
    let mut net = Net::with_max_peers(16);
    let (mut anchor, _viewer) = live(&mut net, Codec::Vp8);
    run(&mut net, &mut [&mut anchor], 20);
    let held = net.core.peers();
    let offer = abandoned_whep_offer();
    let mut answered = 0;
    for n in 0..20 {
        match watch(&mut net, "r", &format!("player{n}"), &offer) {
            Ok(_) => answered += 1,
            Err(SfuError::AtCapacity) => break,
            Err(e) => panic!("player {n}: {e}"),
        }
    }
    assert_eq!(held + answered, 14, "players stop at 16 less the 2 kept");
    assert_eq!(net.core.stats(net.now).watch_refused, 1);
    // A member going on a seat still gets a publish connection.
    net.allow("r", "guest", 1, true, false);
    let guest = net.enter("r", "guest");
    net.publish(guest, &[Codec::Opus])
        .expect("a publisher takes a place kept from players");
}

#[test]
fn a_connection_that_never_connects_is_closed_at_the_connect_deadline() {
    let mut net = Net::new();
    let (mut anchor, _viewer) = live(&mut net, Codec::Vp8);
    run(&mut net, &mut [&mut anchor], 20);
    let before = net.core.peers();
    watch(&mut net, "r", "player", &abandoned_whep_offer()).expect("answered");
    assert_eq!(net.core.peers(), before + 1);
    // Still there just before the deadline...
    run(&mut net, &mut [&mut anchor], 9_500 / 20);
    assert_eq!(net.core.peers(), before + 1);
    // ... and gone after it, the player's session told it ended; the connected ones stay.
    run(&mut net, &mut [&mut anchor], 1_000 / 20);
    assert_eq!(net.core.peers(), before);
    assert_eq!(net.core.stats(net.now).connect_timeouts, 1);
    assert!(
        net.events
            .iter()
            .any(|e| matches!(e, MediaEvent::WatchEnded { user, .. } if user.as_str() == "player"))
    );
}

#[test]
fn a_subscriber_that_never_connects_is_rebuilt_less_and_less_often() {
    let mut net = Net::new();
    let (mut anchor, _viewer) = live(&mut net, Codec::Vp8);
    // A member whose network loses everything the server sends it: it answers every offer
    // (over signaling) and its connections never come up.
    let lost = net.enter("r", "lost");
    net.set_loss(lost, Some(Box::new(|_| true)));
    run(&mut net, &mut [&mut anchor], 120_000 / 20);
    let timeouts = net.core.stats(net.now).connect_timeouts;
    let offers = net.clients[lost].offers;
    // A rebuild every 12 s would be 10 in two minutes; each next one waits and lasts longer
    // (10 s, then 20 s and 30 s to connect; 2 s, doubling, between them).
    assert!(timeouts >= 3, "{timeouts} connect timeouts");
    assert!(offers <= 6, "{offers} subscribe offers in two minutes");
    // Its network comes back: the next connection comes up.
    net.set_loss(lost, None);
    net.run_until(Duration::from_secs(90), FRAME, |n| {
        n.clients[lost].subscriber_connected
    });
    assert!(net.clients[lost].subscriber_connected);
}
