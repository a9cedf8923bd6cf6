//! Relays between two nodes' media cores on one fake clock ([`Pair`]): real ICE, DTLS and SRTP
//! on every leg (client to node, node to node), signaling by direct calls. The cases
//! `tests/cluster.rs` runs through Redis and real processes, in milliseconds here.

use miclink_sfu::sim::{ClientId, Codec, Net, Pair};
use miclink_sfu::{MediaCommand, PcKind};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

mod common;
use common::*;

const A: usize = 0;
const B: usize = 1;

/// The hub's part on node `n`: the room is held by the other node (sent before its first
/// member subscribes).
fn fed_from_other(pair: &mut Pair, n: usize) {
    pair.command(
        n,
        MediaCommand::RelayFrom {
            room: id("r"),
            node: miclink_sfu::sim::NODES[1 - n].to_owned(),
        },
    );
}

/// Node `from` opens its relay of room "r" to node `to` (the origin for an edge's members;
/// an edge pushing its publishers to the origin).
fn relay(pair: &mut Pair, from: usize, to: usize) {
    pair.command(
        from,
        MediaCommand::RelayOpen {
            room: id("r"),
            node: miclink_sfu::sim::NODES[to].to_owned(),
        },
    );
}

/// `user` of node `n`, allowed on `seat`, publishing Opus and VP8 there, connected.
fn publisher(pair: &mut Pair, n: usize, user: &str, seat: u32) -> Pub {
    let net = &mut pair.nodes[n];
    net.allow("r", user, seat, true, true);
    let c = net.enter("r", user);
    net.publish(c, &[Codec::Opus, Codec::Vp8]).expect("publish");
    let mut p = Pub::new(c, Codec::Vp8);
    for _ in 0..250 {
        if pair.nodes[n].clients[c].publisher_connected {
            return p;
        }
        p.frame(&mut pair.nodes[n]);
        pair.step(FRAME);
    }
    panic!("{user}'s publish connection on node {n} never connected");
}

/// Every publisher in `pubs` (each with its node) sends one frame, `frames` times.
fn run_pair(pair: &mut Pair, pubs: &mut [(usize, &mut Pub)], frames: usize) {
    for _ in 0..frames {
        for (n, p) in pubs.iter_mut() {
            p.frame(&mut pair.nodes[*n]);
        }
        pair.step(FRAME);
    }
}

/// Node `n` has a publish connection (its own or a stand-in) for `user`.
fn publishes(pair: &mut Pair, n: usize, user: &str) -> bool {
    let now = pair.nodes[n].now;
    pair.nodes[n]
        .core
        .peer_stats(now)
        .iter()
        .any(|p| p.user.as_str() == user && p.kind == PcKind::Publish)
}

fn received(net: &Net, c: ClientId, publisher: &str, kind: RtpCodecKind) -> usize {
    stream(net, c, publisher, kind).len()
}

/// The anchor publishing on the origin "a", a viewer on node "b" fed by the relay.
fn room_on_two_nodes() -> (Pair, Pub, ClientId) {
    let mut pair = Pair::new();
    let mut anchor = publisher(&mut pair, A, "anchor", 0);
    fed_from_other(&mut pair, B);
    let viewer = pair.nodes[B].enter("r", "viewer");
    relay(&mut pair, A, B);
    run_pair(&mut pair, &mut [(A, &mut anchor)], 100);
    (pair, anchor, viewer)
}

#[test]
fn a_viewer_on_another_node_gets_the_origins_publisher_over_the_relay() {
    let (mut pair, mut anchor, viewer) = room_on_two_nodes();
    run_pair(&mut pair, &mut [(A, &mut anchor)], 100);
    let net = &pair.nodes[B];
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        let got = stream(net, viewer, "anchor", kind);
        assert!(got.len() > 50, "{kind}: {} packets", got.len());
        assert_contiguous(&got, &format!("the anchor's {kind} on b"));
    }
    // The origin has one connection for node b's viewer: the relay.
    let a = pair.nodes[A].core.stats(pair.nodes[A].now);
    assert!(a.rtp_relayed > 0, "{a:?}");
    assert_eq!(pair.nodes[A].core.peers(), 2, "the anchor's and the relay");
}

/// A WHEP player on a node fed by the origin is served there from the relay: its place
/// shows the anchor, whose tracks arrived after it posted its offer.
#[test]
fn a_whep_player_on_another_node_is_served_from_the_relay() {
    let mut pair = Pair::new();
    let mut anchor = publisher(&mut pair, A, "anchor", 0);
    fed_from_other(&mut pair, B);
    let player = pair.nodes[B].player("r", "player", 1).expect("watch");
    relay(&mut pair, A, B);
    run_pair(&mut pair, &mut [(A, &mut anchor)], 200);
    let net = &pair.nodes[B];
    assert!(
        net.clients[player].subscriber_connected,
        "the player connected"
    );
    // A player's tracks are named by place, not by publisher.
    let video: Vec<_> = net.clients[player]
        .received
        .iter()
        .filter(|r| r.kind == RtpCodecKind::Video)
        .collect();
    assert!(video.len() > 50, "{} video packets", video.len());
    assert_contiguous(&video, "the anchor's video in the player's place");
    assert_eq!(pair.nodes[A].core.peers(), 2, "the anchor's and the relay");
}

/// A member publishing on node "b" is pushed to the origin, whose seats have not allowed it
/// (yet): no stand-in, nothing forwarded to the origin's members. The permit, when it comes,
/// takes the waiting stream up.
#[test]
fn a_pushed_publisher_waits_for_the_origins_permit() {
    let (mut pair, mut anchor, _) = room_on_two_nodes();
    let mut member = publisher(&mut pair, B, "member", 1);
    relay(&mut pair, B, A);
    run_pair(&mut pair, &mut [(A, &mut anchor), (B, &mut member)], 100);
    let a = &pair.nodes[A];
    let anchor_c = anchor.c;
    assert_eq!(received(a, anchor_c, "member", RtpCodecKind::Video), 0);
    assert!(
        !publishes(&mut pair, A, "member"),
        "no stand-in without a permit"
    );

    pair.nodes[A].allow("r", "member", 1, true, true);
    run_pair(&mut pair, &mut [(A, &mut anchor), (B, &mut member)], 150);
    let a = &pair.nodes[A];
    let got = stream(a, anchor_c, "member", RtpCodecKind::Video);
    assert!(got.len() > 50, "{} packets once allowed", got.len());
    assert_contiguous(&got, "the member's video at the origin");
}

/// A member who published on the origin moves to node "b" and publishes there: its stream,
/// pushed to the origin while its old publish connection still stands, waits; once the old
/// place goes (the hub says its media is served elsewhere now), the stream is taken up and
/// the anchor sees the member again, its numbering continued.
#[test]
fn a_publisher_who_moved_is_taken_up_once_its_old_place_goes() {
    let (mut pair, mut anchor, _) = room_on_two_nodes();
    let mut old = publisher(&mut pair, A, "member", 1);
    run_pair(&mut pair, &mut [(A, &mut anchor), (A, &mut old)], 100);
    let anchor_c = anchor.c;
    let before = received(&pair.nodes[A], anchor_c, "member", RtpCodecKind::Video);
    assert!(before > 50, "{before} packets from the member on a");

    // It moves: publishes on b (allowed there by the seats), pushed to the origin.
    let mut moved = publisher(&mut pair, B, "member", 1).starting_at(40_000, 50_000);
    relay(&mut pair, B, A);
    run_pair(&mut pair, &mut [(A, &mut anchor), (B, &mut moved)], 100);
    assert_eq!(
        received(&pair.nodes[A], anchor_c, "member", RtpCodecKind::Video),
        before,
        "the pushed stream waits while the old place stands"
    );

    pair.command(
        A,
        MediaCommand::SubscribeElsewhere {
            room: id("r"),
            user: id("member"),
            elsewhere: true,
            encoder: false,
        },
    );
    run_pair(&mut pair, &mut [(A, &mut anchor), (B, &mut moved)], 150);
    let a = &pair.nodes[A];
    let got = stream(a, anchor_c, "member", RtpCodecKind::Video);
    assert!(got.len() > before + 50, "{} then {}", before, got.len());
    assert_contiguous(&got, "the member's video before and after the move");
}

/// The push from "b" to the origin is renewed (a new relay connection: the old one goes)
/// while the origin's relay to "b" carries on: b's viewer misses nothing, and the origin
/// gets the pushed member again on the new connection.
#[test]
fn renewing_one_direction_of_a_relay_leaves_the_other_alone() {
    let (mut pair, mut anchor, viewer) = room_on_two_nodes();
    let mut member = publisher(&mut pair, B, "member", 1);
    pair.nodes[A].allow("r", "member", 1, true, true);
    relay(&mut pair, B, A);
    run_pair(&mut pair, &mut [(A, &mut anchor), (B, &mut member)], 100);
    let anchor_c = anchor.c;
    let before = received(&pair.nodes[A], anchor_c, "member", RtpCodecKind::Video);
    assert!(before > 50, "{before} packets from the pushed member");

    relay(&mut pair, B, A);
    run_pair(&mut pair, &mut [(A, &mut anchor), (B, &mut member)], 150);
    let got = received(&pair.nodes[A], anchor_c, "member", RtpCodecKind::Video);
    assert!(got > before + 50, "{before} then {got}");
    let on_b = stream(&pair.nodes[B], viewer, "anchor", RtpCodecKind::Video);
    assert_contiguous(&on_b, "the anchor's video on b across the renewal");
    assert!(pair.relay_ended.is_empty(), "{:?}", pair.relay_ended);
}

/// The other node's relay closing takes the stand-ins with it: b's viewer gets nothing more
/// of the anchor, b's core holds only its own connections, and nothing is left waiting.
#[test]
fn a_closed_relay_takes_its_stand_ins_away() {
    let (mut pair, mut anchor, viewer) = room_on_two_nodes();
    let had = received(&pair.nodes[B], viewer, "anchor", RtpCodecKind::Video);
    assert!(had > 0);
    pair.command(
        B,
        MediaCommand::RelayClose {
            room: id("r"),
            node: "a".to_owned(),
        },
    );
    pair.command(
        A,
        MediaCommand::RelayClose {
            room: id("r"),
            node: "b".to_owned(),
        },
    );
    run_pair(&mut pair, &mut [(A, &mut anchor)], 50);
    assert!(
        !publishes(&mut pair, B, "anchor"),
        "the anchor's stand-in went with the relay"
    );
    assert_eq!(pair.nodes[A].core.peers(), 1, "only the anchor's, on a");
}
