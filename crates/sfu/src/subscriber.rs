//! The sending side of a subscribe connection (a member's, a WHEP player's, a relay's): its
//! senders, its offers, its bandwidth estimate and probe, and how one packet goes out on it.

use std::collections::HashMap;
use std::time::Instant;

use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

use crate::bwe;
use crate::ids::OutKey;
use crate::remote::Remote;
use crate::track::{Incoming, OutTrack, Verdict};

/// A datagram kept before a subscribe connection's first answer: its bytes, its source, and
/// the local address it came to.
pub(crate) type Early = (Vec<u8>, Remote, Option<std::net::IpAddr>);

/// Datagrams kept per subscribe connection while its first answer is awaited.
pub(crate) const EARLY_DATAGRAMS: usize = 16;

/// What became of one packet on one subscribe connection ([`Subscriber::write`]).
pub(crate) enum Sent {
    /// Written to the connection; `switched`: the first of a new source.
    Written { switched: bool },
    /// Not for this connection (not its stream, not negotiated, too old).
    Skipped,
    /// Its track is paused by overload shedding.
    Shed,
    /// It waits for a keyframe of the stream.
    WaitKeyframe,
    /// rtc refused it.
    Failed(rtc::shared::error::Error),
}

/// The sending side of a subscribe connection (a member's, a player's, a relay's).
pub(crate) struct Subscriber {
    /// (publisher, kind, layer) -> sender.
    pub(crate) outs: HashMap<OutKey, OutTrack>,
    /// The SDP of an offer that is out and unanswered.
    pub(crate) pending_offer: Option<String>,
    /// The number of the last offer made.
    pub(crate) offer_id: u64,
    /// The offer starts a new connection (the client must make one).
    pub(crate) new_connection: bool,
    /// The track set changed while an offer was out.
    pub(crate) renegotiate: bool,
    /// Before the first answer: the client's first connectivity checks race its answer (UDP
    /// beats the WebSocket and the hub) and rtc refuses a check it cannot yet attribute, so
    /// they are kept (a few) and fed again once the answer is in, instead of leaving the client
    /// to its retransmission schedule.
    pub(crate) early: Option<Vec<Early>>,
    /// The bandwidth estimator, fed from the TWCC feedback.
    pub(crate) bwe: bwe::Estimator,
    /// Transport-wide numbers and the send history.
    pub(crate) twcc: crate::twcc::Twcc,
    /// How many bits a second more than the estimate its tracks' best layers would take (0
    /// when everything fits): what a probe would have to prove.
    pub(crate) wants_more: u64,
    /// What its tracks' best layers would take, bits a second.
    pub(crate) desired: u64,
    pub(crate) probe: crate::probe::Probe,
}

impl Subscriber {
    pub(crate) fn new() -> Subscriber {
        Subscriber {
            outs: HashMap::new(),
            pending_offer: None,
            offer_id: 0,
            new_connection: false,
            renegotiate: false,
            early: Some(Vec::new()),
            bwe: bwe::Estimator::new(),
            twcc: crate::twcc::Twcc::new(),
            wants_more: 0,
            desired: 0,
            probe: Default::default(),
        }
    }

    pub(crate) fn offer_pending(&self) -> bool {
        self.pending_offer.is_some()
    }

    /// A running probe's `count` padding packets, on the first video stream that just ended a
    /// frame (numbered in it: its munger makes room); how many went out.
    pub(crate) fn pad(&mut self, pc: &mut RTCPeerConnection, count: u16, now: Instant) -> u64 {
        let mut sent = 0u64;
        for out in self.outs.values_mut() {
            if out.kind != RtpCodecKind::Video || out.paused {
                continue;
            }
            let Some((pt, twcc_id)) = out.negotiated.as_ref().map(|n| (n.payload_type, n.twcc))
            else {
                continue;
            };
            let Some((first, timestamp)) = out.munger.padding(count) else {
                continue;
            };
            let Some(mut sender) = pc.rtp_sender(out.sender) else {
                continue;
            };
            for i in 0..count {
                let mut packet = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        padding: true,
                        payload_type: pt,
                        sequence_number: first.wrapping_add(i),
                        timestamp,
                        ssrc: out.ssrc,
                        ..Default::default()
                    },
                    payload: Default::default(),
                };
                if let Some(id) = twcc_id {
                    self.twcc.stamp(id, &mut packet, now);
                }
                if sender.write_rtp(now, packet).is_ok() {
                    sent += 1;
                }
            }
            break;
        }
        if sent > 0 {
            self.probe.padded(now);
        }
        sent
    }

    /// One packet of `key`'s track to this connection: its track decides and rewrites it
    /// ([`OutTrack::write`]), then it takes its transport-wide number and goes out on `pc`.
    /// `pinned`: a relay's track.
    pub(crate) fn write(
        &mut self,
        pc: &mut RTCPeerConnection,
        key: &OutKey,
        incoming: &Incoming,
        pinned: bool,
        now: Instant,
    ) -> Sent {
        let Some(out) = self.outs.get_mut(key) else {
            return Sent::Skipped;
        };
        let (mut packet, switched) = match out.write(incoming, pinned, now) {
            Verdict::Send { packet, switched } => (packet, switched),
            Verdict::Skip => return Sent::Skipped,
            Verdict::Shed => return Sent::Shed,
            Verdict::WaitKeyframe => return Sent::WaitKeyframe,
        };
        if let Some(id) = out.negotiated.as_ref().and_then(|n| n.twcc) {
            self.twcc.stamp(id, &mut packet, now);
        }
        let Some(mut sender) = pc.rtp_sender(out.sender) else {
            return Sent::Skipped;
        };
        match sender.write_rtp(now, packet) {
            Ok(()) => {
                out.resends.forwarded();
                Sent::Written { switched }
            }
            Err(e) => Sent::Failed(e),
        }
    }
}
