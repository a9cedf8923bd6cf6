//! Media that lasts: streams long enough to wrap RTP's 16-bit sequence numbers, over real
//! `webrtc` clients on loopback (ICE, DTLS, SRTP), driven through the signaling protocol.

mod common;

use std::time::Duration;

use common::*;
use miclink_protocol::Role;

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
    let burst = Burst::new(TOTAL, 8);
    anchor.publish_burst(burst.clone()).await;
    let video = key("anchor", Kind::Video);
    viewer
        .wait_received("the first video packet", |r| {
            r.get(&video).is_some_and(|s| !s.counters.is_empty())
        })
        .await;
    burst.go();
    viewer
        .wait_received_within(Duration::from_secs(120), "every packet of the burst", |r| {
            r.get(&video).is_some_and(|s| {
                s.counters.first().is_some_and(|&first| {
                    distinct_from_first(&s.counters) == (TOTAL - first) as usize
                })
            })
        })
        .await;
    let got = viewer.received().await;
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
