//! Seat control on the media path (contract version 2): mutes and seat locks stop packets at the
//! server while the publisher keeps sending, lifting them lets media resume with continuous
//! numbers, and the room hears who talks. Real `webrtc` clients over loopback, as in media.rs.

mod common;

use std::time::Duration;

use common::*;
use miclink_protocol::{ErrorCode, Event, Ident, Request, Role};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn key(who: &str, kind: Kind) -> (String, Kind) {
    (who.to_owned(), kind)
}

fn id(s: &str) -> Ident {
    Ident::new(s).expect("valid id")
}

/// How many packets of `who`'s `kind` `m` received so far.
async fn count(m: &Member, who: &str, kind: Kind) -> usize {
    m.received()
        .await
        .get(&key(who, kind))
        .map_or(0, |s| s.seqs.len())
}

/// Sequence numbers that count on by one: nothing lost, nothing skipped.
fn contiguous(seqs: &[u16]) -> bool {
    seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1))
}

/// The sender's counters skip at least `n` somewhere: packets it sent that were not forwarded.
fn has_gap(counters: &[u32], n: u32) -> bool {
    counters.windows(2).any(|w| w[1].wrapping_sub(w[0]) > n)
}

/// Room "r": the anchor publishing, `guest` linked with the camera and publishing, a viewer;
/// returns them once the viewer and the anchor receive the guest's audio and video.
async fn room_with_guest(s: &Server) -> (Member, Member, Member) {
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let mut guest = Member::join(&s.url, "r", "guest", Role::Audience).await;
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    guest.link_via(&mut anchor, true).await;
    guest.publish(false).await;
    for m in [&viewer, &anchor] {
        m.wait_received("the guest's audio and video", |r| {
            r.get(&key("guest", Kind::Audio))
                .is_some_and(|a| a.seqs.len() >= 20)
                && r.get(&key("guest", Kind::Video))
                    .is_some_and(|v| v.seqs.len() >= 10)
        })
        .await;
    }
    (anchor, guest, viewer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchor_muted_member_is_silent_everywhere_until_lifted_and_unmuted() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let (anchor, mut guest, mut viewer) = room_with_guest(&s).await;
    let reply = anchor
        .request(Request::MuteMember {
            user: id("guest"),
            mic: Some(false),
            camera: None,
        })
        .await;
    assert!(reply.ok, "{reply:?}");
    for m in [&mut viewer, &mut guest] {
        m.wait_media_state("guest", |mic, camera, blocked| !mic && camera && blocked)
            .await;
    }
    // What was in flight lands; from then on nothing of the guest's audio arrives anywhere,
    // while the guest keeps sending it and its video still flows.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dropped = s.media_counter("rtp_dropped_not_allowed").await;
    let audio = [
        count(&viewer, "guest", Kind::Audio).await,
        count(&anchor, "guest", Kind::Audio).await,
    ];
    let video = count(&viewer, "guest", Kind::Video).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        [
            count(&viewer, "guest", Kind::Audio).await,
            count(&anchor, "guest", Kind::Audio).await
        ],
        audio,
        "muted audio was forwarded"
    );
    assert!(count(&viewer, "guest", Kind::Video).await > video + 10);
    assert!(
        s.media_counter("rtp_dropped_not_allowed").await >= dropped + 25,
        "the guest's audio still reaches the server and is dropped there"
    );
    // The guest cannot undo the anchor's mute.
    let refused = guest
        .request(Request::SetMedia {
            mic: Some(true),
            camera: None,
        })
        .await;
    assert_eq!(
        refused.error.map(|e| e.code),
        Some(ErrorCode::MutedByAnchor)
    );
    // Lifted, the mic stays off until the guest turns it on.
    let lifted = anchor
        .request(Request::MuteMember {
            user: id("guest"),
            mic: Some(true),
            camera: None,
        })
        .await;
    assert!(lifted.ok);
    guest
        .wait_media_state("guest", |mic, _, blocked| !mic && !blocked)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&viewer, "guest", Kind::Audio).await, audio[0]);
    let on = guest
        .request(Request::SetMedia {
            mic: Some(true),
            camera: None,
        })
        .await;
    assert!(on.ok, "{on:?}");
    viewer.wait_media_state("guest", |mic, _, _| mic).await;
    viewer
        .wait_received("the guest's audio again", |r| {
            r.get(&key("guest", Kind::Audio))
                .is_some_and(|a| a.seqs.len() >= audio[0] + 25)
        })
        .await;
    // The viewer's stream of the guest's audio counts on across the mute, as if nothing had
    // been lost, though the guest's own counters show what the server held back.
    let got = viewer.received().await;
    let a = &got[&key("guest", Kind::Audio)];
    assert!(contiguous(&a.seqs), "a gap in the forwarded numbers");
    assert!(has_gap(&a.counters, 25), "nothing was held back");
    guest.close().await;
    viewer.close().await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_locked_seat_forwards_no_video_and_restarts_at_a_keyframe() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let (anchor, guest, mut viewer) = room_with_guest(&s).await;
    // The join reply predates the link: the guest holds the first audience seat.
    assert_eq!(guest.join.me.seat, None);
    let seat = 1;
    let lock = |on| Request::LockSeat {
        seat,
        lock: None,
        lock_audio: None,
        lock_video: Some(on),
    };
    assert!(anchor.request(lock(true)).await.ok);
    viewer
        .wait_media_state("guest", |mic, camera, _| mic && !camera)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let video = count(&viewer, "guest", Kind::Video).await;
    let audio = count(&viewer, "guest", Kind::Audio).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&viewer, "guest", Kind::Video).await, video);
    assert!(count(&viewer, "guest", Kind::Audio).await > audio + 25);
    let refused = guest
        .request(Request::SetMedia {
            mic: None,
            camera: Some(true),
        })
        .await;
    assert_eq!(
        refused.error.map(|e| e.code),
        Some(ErrorCode::MutedByAnchor)
    );
    assert!(anchor.request(lock(false)).await.ok);
    let on = guest
        .request(Request::SetMedia {
            mic: None,
            camera: Some(true),
        })
        .await;
    assert!(on.ok, "{on:?}");
    viewer
        .wait_received("the guest's video again", |r| {
            r.get(&key("guest", Kind::Video))
                .is_some_and(|v| v.seqs.len() >= video + 10)
        })
        .await;
    let got = viewer.received().await;
    let v = &got[&key("guest", Kind::Video)];
    assert!(
        v.keyframes[video],
        "the first video after the lock is a keyframe"
    );
    assert!(contiguous(&v.seqs));
    guest.close().await;
    viewer.close().await;
    anchor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_hears_who_talks() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = server().await;
    let (mut anchor, guest, mut viewer) = room_with_guest(&s).await;
    let speakers = |e: Event| match e {
        Event::ActiveSpeakers { speakers } => speakers
            .into_iter()
            .map(|s| s.user.to_string())
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    guest.talk(miclink_loadtest::peer::TALKING_DBOV);
    assert_eq!(
        speakers(viewer.wait_event("active_speakers").await),
        vec!["guest"]
    );
    assert_eq!(
        speakers(anchor.wait_event("active_speakers").await),
        vec!["guest"]
    );
    guest.talk(miclink_loadtest::peer::QUIET_DBOV);
    assert!(speakers(viewer.wait_event("active_speakers").await).is_empty());
    // A muted speaker is not heard, so not named.
    guest.talk(miclink_loadtest::peer::TALKING_DBOV);
    assert_eq!(
        speakers(viewer.wait_event("active_speakers").await),
        vec!["guest"]
    );
    let muted = guest
        .request(Request::SetMedia {
            mic: Some(false),
            camera: None,
        })
        .await;
    assert!(muted.ok);
    assert!(speakers(viewer.wait_event("active_speakers").await).is_empty());
    guest.close().await;
    viewer.close().await;
    anchor.close().await;
}
