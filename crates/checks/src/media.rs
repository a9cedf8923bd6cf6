//! Datagrams into the media core from a connected client and from strangers: raw bytes on the
//! client's addresses (garbage, forged STUN, DTLS records into an established association), RTCP
//! of any shape inside the client's real SRTCP context, RTP with any header values, trickled
//! candidates, and time passing.
//!
//! Invariants: nothing panics; the core sends nothing to an address no client has (no
//! reflection); no connection is added; and another room's members, whom the input never
//! touches, still get their media.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use miclink_sfu::PcKind;
use miclink_sfu::sim::{ClientId, Codec, Net};

use crate::{Broken, Input, ensure};

const FRAME: Duration = Duration::from_millis(20);

/// The two rooms, set up once per input (a real ICE and DTLS handshake each).
struct Rooms {
    net: Net,
    /// Room "r": the anchor publishing Opus and VP8, a viewer subscribed. The input acts as
    /// either of them, or as a stranger.
    anchor: ClientId,
    viewer: ClientId,
    /// Room "q": an anchor publishing Opus, a viewer; the input never acts as them.
    other_anchor: ClientId,
    other_viewer: ClientId,
    /// Next sequence number and timestamp of room q's audio.
    other_seq: u16,
}

impl Rooms {
    fn new() -> Result<Rooms, Broken> {
        let mut net = Net::new();
        net.allow("r", "anchor", 0, true, true);
        net.allow("q", "anchor", 0, true, false);
        let anchor = net.enter("r", "anchor");
        let other_anchor = net.enter("q", "anchor");
        net.publish(anchor, &[Codec::Opus, Codec::Vp8])
            .map_err(|e| format!("publish in r: {e}"))?;
        net.publish(other_anchor, &[Codec::Opus])
            .map_err(|e| format!("publish in q: {e}"))?;
        let viewer = net.enter("r", "viewer");
        let other_viewer = net.enter("q", "viewer");
        let mut rooms = Rooms {
            net,
            anchor,
            viewer,
            other_anchor,
            other_viewer,
            other_seq: 0,
        };
        for n in 0..250u16 {
            let r = &rooms.net.clients;
            if r[viewer].subscriber_connected && r[other_viewer].subscriber_connected {
                return Ok(rooms);
            }
            let payload = Codec::Vp8.payload(true, &[0; 8]);
            rooms
                .net
                .send(anchor, Codec::Vp8, n, u32::from(n) * 3000, payload);
            rooms.other_frame();
            rooms.net.step(FRAME);
        }
        Err("the rooms never connected".into())
    }

    /// One audio packet from room q's anchor.
    fn other_frame(&mut self) {
        let seq = self.other_seq;
        self.other_seq = seq.wrapping_add(1);
        let payload = Codec::Opus.payload(false, &seq.to_be_bytes());
        self.net.send(
            self.other_anchor,
            Codec::Opus,
            seq,
            u32::from(seq) * 960,
            payload,
        );
    }
}

/// One operation of the input.
fn act(rooms: &mut Rooms, input: &mut Input<'_>) {
    let tag = input.byte();
    let (c, pc) = if tag & 0x80 == 0 {
        (rooms.anchor, PcKind::Publish)
    } else {
        (rooms.viewer, PcKind::Subscribe)
    };
    let net = &mut rooms.net;
    match tag & 0x07 {
        0 => {
            let data = input.chunk();
            net.raw(c, pc, data);
        }
        1 => {
            // A stranger: an address no client has, on the same network or another.
            let from = SocketAddr::from(([10, 0, 9, input.byte()], input.u16()));
            let data = input.chunk();
            net.raw_from(from, data);
        }
        2 => {
            // Whatever of the chunk parses as RTCP goes out through the real SRTCP context.
            let mut data = input.chunk();
            if let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut data) {
                net.write_rtcp(c, pc, packets);
            }
        }
        3 => {
            let codec = if input.byte().is_multiple_of(2) {
                Codec::Opus
            } else {
                Codec::Vp8
            };
            let (seq, timestamp) = (input.u16(), input.u32());
            let payload = Bytes::copy_from_slice(input.chunk());
            if net.clients[rooms.anchor].publisher_connected {
                net.send(rooms.anchor, codec, seq, timestamp, payload);
                net.pump();
            }
        }
        4 => {
            let candidate = String::from_utf8_lossy(input.chunk()).into_owned();
            net.trickle(c, pc, &candidate);
        }
        _ => net.step(Duration::from_millis(u64::from(input.byte()) * 4)),
    }
}

/// Run one input: set up the rooms, apply every operation, check the invariants.
pub fn check(data: &[u8]) -> Result<(), Broken> {
    let mut rooms = Rooms::new()?;
    let peers = rooms.net.core.peers();
    let mut input = Input::new(data);
    // A bound on work per input keeps the fuzzer's executions short.
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        act(&mut rooms, &mut input);
        // Room q goes on as it would, 20 ms of audio per operation.
        rooms.other_frame();
        rooms.net.step(FRAME);
    }
    let net = &rooms.net;
    ensure!(
        net.stray.is_empty(),
        "the core sent to addresses no client has: {:?}",
        net.stray
    );
    ensure!(
        net.core.peers() <= peers,
        "{} connections after the input, {peers} before",
        net.core.peers()
    );
    let before = net.clients[rooms.other_viewer].received.len();
    for _ in 0..10 {
        rooms.other_frame();
        rooms.net.step(FRAME);
    }
    let got = rooms.net.clients[rooms.other_viewer].received.len() - before;
    ensure!(
        got >= 9,
        "room q's viewer got {got} of 10 packets after the input"
    );
    Ok(())
}
