//! The media plane end to end: real `webrtc` clients over loopback (ICE, DTLS, SRTP), driven
//! through the signaling protocol exactly as a third-party client would.

mod common;

use common::*;
use miclink_protocol::{ErrorCode, Ident, Request, Role};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

fn key(who: &str, kind: RtpCodecKind) -> (String, RtpCodecKind) {
    (who.to_owned(), kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_receives_the_anchors_audio_and_video() {
    let s = server().await;
    let mut anchor = Member::join(&s.url, "r", "anchor", Role::Anchor).await;
    anchor.publish(false).await;
    let viewer = Member::join(&s.url, "r", "viewer", Role::Audience).await;
    viewer
        .wait_received("anchor's audio and video", |r| {
            r.get(&key("anchor", RtpCodecKind::Video))
                .is_some_and(|s| s.seqs.len() >= 10)
                && r.get(&key("anchor", RtpCodecKind::Audio))
                    .is_some_and(|s| s.seqs.len() >= 10)
        })
        .await;
    let got = viewer.received().await;
    let video = &got[&key("anchor", RtpCodecKind::Video)];
    assert_eq!(
        video.first_is_keyframe,
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
