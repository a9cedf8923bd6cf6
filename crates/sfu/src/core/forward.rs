//! The packet path of the core: a publisher's RTP to every subscriber (permission, keyframe
//! gating, rewrite, extensions), subscribers' RTCP (NACKs answered from the track's buffer,
//! keyframe requests relayed), and keyframe requests to publishers.

use std::time::Instant;

use miclink_protocol::Ident;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp::Packet;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

use crate::MediaCore;
use crate::ids::PeerId;
use crate::keyframe::Detector;
use crate::layers::SourceId;
use crate::resend::Refused;
use crate::speakers;
use crate::subscriber::Sent;
use crate::track::Incoming;

/// Sequence numbers one NACK packet may ask for; a receiver never honestly misses more at once,
/// and a forged NACK naming the same packets hundreds of times must not cost hundreds of sends.
const MAX_NACKED: usize = 128;

impl MediaCore {
    /// One RTP packet from publish connection `from`, out to every subscriber that may have it:
    /// classified once ([`Self::classify`]), then each subscriber's track decides and writes
    /// ([`crate::subscriber::Subscriber::write`]).
    pub(crate) fn forward(&mut self, now: Instant, from: PeerId, track_id: &str, packet: Packet) {
        self.stats.rtp_in += 1;
        let Some(incoming) = self.classify(now, from, track_id, packet) else {
            return;
        };
        if self.fan_out(now, from, track_id, &incoming) {
            self.request_keyframe(now, from, track_id, incoming.source);
        }
    }

    /// What a packet of `from`'s track is, for everyone: its layer (one that starts sending
    /// gets the streams chosen again first), whether its publisher may be forwarded, its audio
    /// level; `None` when it goes nowhere.
    fn classify(
        &mut self,
        now: Instant,
        from: PeerId,
        track_id: &str,
        mut packet: Packet,
    ) -> Option<Incoming> {
        let publisher = self.peers.get_mut(&from)?;
        let track = publisher.role.publisher_mut()?.track_mut(track_id)?;
        let Some(index) = track.layer_index(packet.header.ssrc) else {
            // A stream rtc bound but the track did not take (past its layer cap).
            self.stats.rtp_unknown_stream += 1;
            return None;
        };
        // A simulcast layer that starts sending (new, or resumed after its publisher paused it):
        // choose again before this packet goes out, so a subscriber waiting for a sending layer
        // takes this one from the keyframe a starting encoding opens with, not one round and a
        // keyframe request later.
        if track.layers.len() > 1 && !track.layers[index].active(now) {
            let opens_with_key = track.keyframes.is_keyframe(&packet.payload);
            let layer = &mut track.layers[index];
            layer.meter(now, 0);
            if opens_with_key {
                // The choice below would ask for a keyframe; this packet starts one.
                layer.keyframe_arrives(now);
            }
            let (room, user) = (publisher.room.clone(), publisher.user.clone());
            self.allocate_publisher(now, &room, &user);
        }
        let publisher = self.peers.get_mut(&from)?;
        let track = publisher.role.publisher_mut()?.track_mut(track_id)?;
        let room = self.rooms.get_mut(&publisher.room)?;
        let kind = track.kind;
        let allowed = room
            .allowed
            .get(&publisher.user)
            .is_some_and(|p| p.forwards(kind));
        if !allowed {
            // Seats rule media: nobody unseated, nothing muted is forwarded, whatever keeps
            // arriving.
            self.stats.rtp_dropped_not_allowed += 1;
            track.layers[index].held(now, &packet);
            return None;
        }
        publisher.counters.rtp_in += 1;
        if kind == RtpCodecKind::Audio
            && let Some(dbov) = speakers::level(&packet.header.extensions, &track.extensions)
        {
            room.speakers.observe(&publisher.user, now, dbov);
        }
        let is_key = track.keyframes.is_keyframe(&packet.payload);
        let vp8 = track.keyframes == Detector::Vp8;
        // The publisher's extensions, in its id space; each subscriber gets its own numbering.
        let extensions = std::mem::take(&mut packet.header.extensions);
        packet.header.extension = false;
        packet.header.extension_profile = 0;
        packet.header.extensions_padding = 0;
        let layer = &mut track.layers[index];
        let (ext, skipped) = layer.receive(now, &packet);
        publisher.counters.packets_lost += skipped;
        Some(Incoming {
            source: layer.source,
            header: packet.header,
            payload: packet.payload,
            extensions,
            ext,
            is_key,
            vp8,
        })
    }

    /// `incoming` (from `from`) to every subscriber of the room and every relay to another
    /// node; whether a subscriber waits for a keyframe of its stream.
    fn fan_out(&mut self, now: Instant, from: PeerId, track_id: &str, incoming: &Incoming) -> bool {
        let Some(publisher) = self.peers.get(&from) else {
            return false;
        };
        let Some(room) = self.rooms.get(&publisher.room) else {
            return false;
        };
        let Some(track) = publisher.role.publisher().and_then(|p| p.track(track_id)) else {
            return false;
        };
        let kind = track.kind;
        let key = (publisher.user.clone(), kind, None);
        // Relays to other nodes carry each layer as a stream of its own, keyed by its rid;
        // never back to the node a relayed publisher's stream came from.
        let (relay_key, came_from) = if room.relays.is_empty() {
            (None, None)
        } else {
            let rid = track
                .layer_of(incoming.source)
                .map(|l| l.rid.clone())
                .filter(|rid| !rid.is_empty());
            (
                Some((key.0.clone(), kind, rid)),
                publisher.role.stand_in().map(|s| s.node().to_owned()),
            )
        };
        let mut want_keyframe = false;
        // Disjoint borrows of the core's fields: the room's subscriber list is read while
        // subscriber connections are written, with no list copied per packet.
        let subscribers = room.subscribe.iter().map(|(m, sid)| (Some(m), *sid));
        let relays = room.relays.values().map(|sid| (None, *sid));
        for (member, sid) in subscribers.chain(relays) {
            if member == Some(&key.0) {
                continue;
            }
            let Some(sub) = self.peers.get_mut(&sid) else {
                continue;
            };
            if !sub.connected {
                continue;
            }
            if came_from.is_some() && sub.role.relay_to() == came_from.as_deref() {
                continue;
            }
            let out_key = match (member, &relay_key) {
                (Some(_), _) => &key,
                (None, Some(relay_key)) => relay_key,
                (None, None) => continue,
            };
            let Some(sending) = sub.role.subscriber_mut() else {
                continue;
            };
            // A relay's streams are pinned: each takes its layer, whatever its source.
            match sending.write(&mut sub.pc, out_key, incoming, member.is_none(), now) {
                Sent::Written { switched } => {
                    if switched {
                        self.stats.layer_switches += 1;
                        tracing::debug!(subscriber = ?member, publisher = %key.0, ?kind, source = incoming.source, "stream starts from this source");
                    }
                    self.stats.rtp_out += 1;
                    if member.is_none() {
                        self.stats.rtp_relayed += 1;
                    }
                    sub.counters.rtp_out += 1;
                    self.dirty.insert(sid);
                }
                Sent::Skipped => {}
                Sent::Shed => match kind {
                    RtpCodecKind::Video => self.stats.video_shed += 1,
                    _ => self.stats.audio_shed += 1,
                },
                Sent::WaitKeyframe => want_keyframe = true,
                Sent::Failed(e) => {
                    self.stats.rtp_write_errors += 1;
                    tracing::debug!(parent: &sub.span, error = %e, "packet refused by the subscriber leg");
                }
            }
        }
        want_keyframe
    }

    /// Ask publisher `from` for a keyframe of `track_id`'s stream `source`, at most once per
    /// PLI interval per stream.
    pub(crate) fn request_keyframe(
        &mut self,
        now: Instant,
        from: PeerId,
        track_id: &str,
        source: SourceId,
    ) {
        let Some(publisher) = self.peers.get_mut(&from) else {
            return;
        };
        // A relayed publisher's stand-in asks up the relay, whose connection has the streams.
        let via = publisher.role.stand_in().map_or(from, |s| s.via());
        let Some(track) = publisher
            .role
            .publisher_mut()
            .and_then(|p| p.track_mut(track_id))
        else {
            return;
        };
        let receiver = track.receiver;
        let Some(layer) = track.layers.iter_mut().find(|l| l.source == source) else {
            return;
        };
        if !layer.pli_due(now) {
            return;
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: layer.ssrc,
        };
        let Some(conn) = self.peers.get_mut(&via) else {
            return;
        };
        if let Some(mut r) = conn.pc.rtp_receiver(receiver)
            && r.write_rtcp(now, vec![Box::new(pli)]).is_ok()
        {
            self.stats.plis_sent += 1;
            tracing::debug!(parent: &conn.span, source, "keyframe requested");
            self.dirty.insert(via);
            if let Some(p) = self.peers.get_mut(&from) {
                p.counters.plis += 1;
            }
        }
    }

    /// RTCP from a peer. Subscribers' NACKs are answered from the published track's buffer and
    /// their keyframe requests go to the publisher; nothing else is passed upstream.
    pub(crate) fn rtcp(
        &mut self,
        now: Instant,
        id: PeerId,
        packets: Vec<Box<dyn rtc::rtcp::Packet>>,
    ) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.kind() != crate::PcKind::Subscribe {
            return;
        }
        for packet in packets {
            let any = packet.as_any();
            if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.stats.nacks_received += 1;
                if let Some(p) = self.peers.get_mut(&id) {
                    p.counters.nacks += 1;
                }
                let mut lost: Vec<u16> = nack.nacks.iter().flat_map(|p| p.packet_list()).collect();
                lost.sort_unstable();
                lost.dedup();
                lost.truncate(MAX_NACKED);
                self.retransmit(now, id, nack.media_ssrc, &lost);
            } else if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                self.keyframe_for_subscriber(now, id, pli.media_ssrc);
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                self.keyframe_for_subscriber(now, id, fir.media_ssrc);
            } else if let Some(feedback) = any.downcast_ref::<TransportLayerCc>() {
                self.stats.twcc_feedback += 1;
                // A relay's streams are pinned, nothing chooses them: its estimate would only
                // cost time.
                if let Some(s) = self
                    .peers
                    .get_mut(&id)
                    .filter(|p| !p.role.is_relay())
                    .and_then(|p| p.role.subscriber_mut())
                {
                    s.on_feedback(now, feedback);
                }
            }
        }
    }

    /// The publisher and kind a subscriber's outgoing SSRC carries.
    fn out_key(&self, sid: PeerId, ssrc: u32) -> Option<crate::ids::OutKey> {
        let sub = self.peers.get(&sid)?;
        sub.role
            .subscriber()?
            .outs()
            .find(|(_, o)| o.ssrc == ssrc)
            .map(|(k, _)| k.clone())
    }

    /// The publish connection and track id of `publisher`'s current track of `kind` in the room
    /// of subscriber `sid`.
    fn source_track(
        &self,
        sid: PeerId,
        publisher: &Ident,
        kind: RtpCodecKind,
    ) -> Option<(PeerId, String)> {
        let room = &self.peers.get(&sid)?.room;
        let pid = *self.rooms.get(room)?.publish.get(publisher)?;
        let track_id = self
            .peers
            .get(&pid)?
            .role
            .publisher()?
            .track_of(kind)
            .map(|(id, _)| id.clone())?;
        Some((pid, track_id))
    }

    /// A subscriber lost its picture: a keyframe of the stream it is on (or switching to).
    pub(crate) fn keyframe_for_subscriber(&mut self, now: Instant, sid: PeerId, ssrc: u32) {
        let Some(key) = self.out_key(sid, ssrc) else {
            return;
        };
        let Some(source) = self
            .peers
            .get(&sid)
            .and_then(|s| s.role.subscriber()?.out(&key))
            .and_then(|o| o.munger.source().or(o.target))
        else {
            return;
        };
        if let Some((pid, track_id)) = self.source_track(sid, &key.0, key.1) {
            self.request_keyframe(now, pid, &track_id, source);
        }
    }

    fn retransmit(&mut self, now: Instant, sid: PeerId, ssrc: u32, lost: &[u16]) {
        let Some(key) = self.out_key(sid, ssrc) else {
            return;
        };
        let Some((pid, track_id)) = self.source_track(sid, &key.0, key.1) else {
            return;
        };
        for &seq in lost {
            let Some(out) = self
                .peers
                .get_mut(&sid)
                .and_then(|s| s.role.subscriber_mut()?.out_mut(&key))
            else {
                return;
            };
            let Some(payload_type) = out.negotiated.as_ref().map(|n| n.payload_type) else {
                return;
            };
            match out.resends.allow(now, seq) {
                Ok(()) => {}
                Err(Refused::Repeat) => {
                    self.stats.retransmit_repeats += 1;
                    continue;
                }
                Err(Refused::OverBudget) => {
                    self.stats.retransmit_over_budget += 1;
                    continue;
                }
            }
            let (ssrc, sender) = (out.ssrc, out.sender);
            let twcc_id = out.negotiated.as_ref().and_then(|n| n.twcc);
            let stored = out
                .munger
                .original(seq)
                .and_then(|(source, ext, ts_offset)| {
                    let track = self.peers.get(&pid)?.role.publisher()?.track(&track_id)?;
                    let mut p = track.layer_of(source)?.stored(ext)?.clone();
                    p.header.timestamp = p.header.timestamp.wrapping_add(ts_offset);
                    Some((p, track.keyframes == Detector::Vp8))
                });
            let Some((mut packet, vp8)) = stored else {
                self.stats.retransmit_misses += 1;
                continue;
            };
            packet.header.ssrc = ssrc;
            packet.header.payload_type = payload_type;
            packet.header.sequence_number = seq;
            let Some(sub) = self.peers.get_mut(&sid) else {
                return;
            };
            let Some(sending) = sub.role.subscriber_mut() else {
                return;
            };
            if vp8 && let Some(out) = sending.out(&key) {
                // The same picture numbering as when it was first sent: the packet is from the
                // current segment, whose offsets still stand.
                packet.payload = out.pictures.apply(&packet.payload);
            }
            if let Some(id) = twcc_id {
                sending.stamp(id, &mut packet, now);
            }
            if let Some(mut s) = sub.pc.rtp_sender(sender)
                && s.write_rtp(now, packet).is_ok()
            {
                self.stats.retransmitted += 1;
                sub.counters.retransmitted += 1;
                self.dirty.insert(sid);
            }
        }
    }
}
