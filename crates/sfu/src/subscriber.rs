//! The sending side of a subscribe connection (a member's, a WHEP player's, a relay's): its
//! senders, its offers, its bandwidth estimate and probe, and how one packet goes out on it.

use std::collections::HashMap;
use std::time::Instant;

use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

use crate::bwe;
use crate::error::SfuError;
use crate::ids::OutKey;
use crate::probe::Tick;
use crate::remote::Remote;
use crate::track::{Incoming, OutTrack, Verdict};

/// A datagram kept before a subscribe connection's first answer: its bytes, its source, and
/// the local address it came to.
pub(crate) type Early = (Vec<u8>, Remote, Option<std::net::IpAddr>);

/// Datagrams kept per subscribe connection while its first answer is awaited.
const EARLY_DATAGRAMS: usize = 16;

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

/// The sending side of a subscribe connection (a member's, a player's, a relay's). Its fields
/// are its own: the core asks for what it needs through the methods below, so that the rules
/// of an offer's life (made, answered, made again later) and of the estimate live in one place.
pub(crate) struct Subscriber {
    /// (publisher, kind, layer) -> sender.
    outs: HashMap<OutKey, OutTrack>,
    /// The SDP of an offer that is out and unanswered.
    pending_offer: Option<String>,
    /// The number of the last offer made.
    offer_id: u64,
    /// The offer starts a new connection (the client must make one).
    new_connection: bool,
    /// The track set changed while an offer was out.
    renegotiate: bool,
    /// Before the first answer: the client's first connectivity checks race its answer (UDP
    /// beats the WebSocket and the hub) and rtc refuses a check it cannot yet attribute, so
    /// they are kept (a few) and fed again once the answer is in, instead of leaving the client
    /// to its retransmission schedule.
    early: Option<Vec<Early>>,
    /// The bandwidth estimator, fed from the TWCC feedback.
    bwe: bwe::Estimator,
    /// Transport-wide numbers and the send history.
    twcc: crate::twcc::Twcc,
    /// How many bits a second more than the estimate its tracks' best layers would take (0
    /// when everything fits): what a probe would have to prove.
    wants_more: u64,
    /// What its tracks' best layers would take, bits a second.
    desired: u64,
    probe: crate::probe::Probe,
}

/// The offer that is out and unanswered, as the client is told of it.
pub(crate) struct PendingOffer<'a> {
    pub(crate) sdp: &'a str,
    pub(crate) offer_id: u64,
    /// It starts a new connection (the client must make one).
    pub(crate) new_connection: bool,
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

    /// The offer that is out and unanswered, if one is.
    pub(crate) fn pending_offer(&self) -> Option<PendingOffer<'_>> {
        self.pending_offer.as_deref().map(|sdp| PendingOffer {
            sdp,
            offer_id: self.offer_id,
            new_connection: self.new_connection,
        })
    }

    /// Whether the next offer starts a new connection (the client must make one): a
    /// connection made again for a member subscribed before, or a relay's.
    pub(crate) fn set_new_connection(&mut self, fresh: bool) {
        self.new_connection = fresh;
    }

    /// Offer `sdp`, numbered `offer_id`, went out: it awaits its answer, and every sender is
    /// now in an offer.
    pub(crate) fn offer_made(&mut self, sdp: String, offer_id: u64) -> PendingOffer<'_> {
        self.offer_id = offer_id;
        for out in self.outs.values_mut() {
            out.offered = true;
        }
        PendingOffer {
            sdp: self.pending_offer.insert(sdp),
            offer_id,
            new_connection: self.new_connection,
        }
    }

    /// Whether an answer naming `offer_id` (when it names one) answers the pending offer.
    pub(crate) fn check_answer(&self, offer_id: Option<u64>) -> Result<(), SfuError> {
        let pending = if self.offer_pending() {
            self.offer_id
        } else {
            0
        };
        if pending == 0 {
            return Err(SfuError::NoOffer);
        }
        // The offer was replaced (a rebuilt connection, a rejoin) while this answer was on its
        // way: applied to the newer offer it would pass (same mids) and leave a connection whose
        // ICE and DTLS credentials belong to a closed client connection.
        // 0 is no offer's number (offers count from 1): a client that sends it names none.
        if let Some(answered) = offer_id.filter(|&n| n != 0)
            && answered != pending
        {
            return Err(SfuError::StaleAnswer {
                answered,
                latest: pending,
            });
        }
        Ok(())
    }

    /// The pending offer was answered: no offer is out and the connection exists; the
    /// datagrams kept until the first answer, to be fed again.
    pub(crate) fn answered(&mut self) -> Option<Vec<Early>> {
        self.pending_offer = None;
        self.new_connection = false;
        self.take_early()
    }

    /// The track set changed while an offer is out: offer again once it is answered.
    pub(crate) fn renegotiate_later(&mut self) {
        self.renegotiate = true;
    }

    /// Whether an offer is due because the track set changed while the last was out (asked
    /// once: the answer clears it).
    pub(crate) fn take_renegotiation(&mut self) -> bool {
        std::mem::take(&mut self.renegotiate)
    }

    /// Whether datagrams are still kept for the first answer ([`Subscriber::keep_early`]).
    pub(crate) fn awaits_first_answer(&self) -> bool {
        self.early.is_some()
    }

    /// Keep a datagram that came before the first answer; false when too many are kept
    /// already (it is dropped) or the answer is in.
    pub(crate) fn keep_early(
        &mut self,
        data: &[u8],
        from: Remote,
        to: Option<std::net::IpAddr>,
    ) -> bool {
        match &mut self.early {
            Some(kept) if kept.len() < EARLY_DATAGRAMS => {
                kept.push((data.to_vec(), from, to));
                true
            }
            _ => false,
        }
    }

    /// The datagrams kept until the first answer; none are kept from now on.
    pub(crate) fn take_early(&mut self) -> Option<Vec<Early>> {
        self.early.take()
    }

    /// The sender for `key`.
    pub(crate) fn out(&self, key: &OutKey) -> Option<&OutTrack> {
        self.outs.get(key)
    }

    pub(crate) fn out_mut(&mut self, key: &OutKey) -> Option<&mut OutTrack> {
        self.outs.get_mut(key)
    }

    pub(crate) fn has_out(&self, key: &OutKey) -> bool {
        self.outs.contains_key(key)
    }

    pub(crate) fn outs(&self) -> impl Iterator<Item = (&OutKey, &OutTrack)> {
        self.outs.iter()
    }

    pub(crate) fn outs_mut(&mut self) -> impl Iterator<Item = (&OutKey, &mut OutTrack)> {
        self.outs.iter_mut()
    }

    pub(crate) fn out_count(&self) -> usize {
        self.outs.len()
    }

    /// Add (or replace) the sender for `key`; the one it replaced.
    pub(crate) fn insert_out(&mut self, key: OutKey, out: OutTrack) -> Option<OutTrack> {
        self.outs.insert(key, out)
    }

    pub(crate) fn remove_out(&mut self, key: &OutKey) -> Option<OutTrack> {
        self.outs.remove(key)
    }

    /// The bandwidth estimate and what it rests on.
    pub(crate) fn figures(&self) -> bwe::Figures {
        self.bwe.figures()
    }

    /// TWCC feedback from the client, fed to the estimate.
    pub(crate) fn on_feedback(&mut self, now: Instant, feedback: &TransportLayerCc) {
        let reports = self.twcc.feedback(feedback);
        self.bwe.on_reports(now, &reports);
    }

    /// Give `packet` its transport-wide number (extension `id`) and note it sent.
    pub(crate) fn stamp(&mut self, id: u8, packet: &mut rtc::rtp::Packet, now: Instant) {
        self.twcc.stamp(id, packet, now);
    }

    /// What the allocation found: its tracks' best layers would take `desired` bits a
    /// second, `short` more than the estimate.
    pub(crate) fn planned(&mut self, short: u64, desired: u64) {
        self.wants_more = short;
        self.desired = desired;
    }

    /// How many bits a second more than the estimate its tracks' best layers would take.
    pub(crate) fn wants_more(&self) -> u64 {
        self.wants_more
    }

    /// Whether it wants more than the estimate and its probe may start now.
    pub(crate) fn may_probe(&self, now: Instant) -> bool {
        self.wants_more > 0 && self.probe.may_start(now)
    }

    /// Start a probe toward what its tracks' best layers would take; the rate it probes at.
    pub(crate) fn start_probe(&mut self, now: Instant) -> u64 {
        let f = self.bwe.figures();
        self.probe.start(now, &f, self.desired)
    }

    /// One tick of its probe, and the figures it was judged on.
    pub(crate) fn probe_tick(&mut self, now: Instant, connected: bool) -> (Tick, bwe::Figures) {
        let figures = self.bwe.figures();
        (self.probe.tick(now, Some(figures), connected), figures)
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
