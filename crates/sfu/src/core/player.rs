//! WHEP players, as the core serves them (`crate::whep` says what a player's places are).

use crate::core::answers::{for_rtc, negotiated};
use crate::ids::PeerId;
use crate::peer::Peer;
use crate::track::OutTrack;
use crate::whep::{MAX_SLOTS, Slot, placeholder, watch_reserve};
use crate::{MediaCore, PcKind, SfuError};
use miclink_protocol::Ident;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use std::time::Instant;
use tracing::info;

impl MediaCore {
    /// The publishers of `room` a WHEP viewer's slots show, in order: seat order (the anchor
    /// first), those with a track published, never the viewer itself.
    fn seat_order(&self, room: &Ident, viewer: &Ident) -> Vec<Ident> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut order: Vec<(u32, Ident)> = r
            .allowed
            .iter()
            .filter(|(u, _)| *u != viewer)
            .filter(|(u, _)| {
                r.publish
                    .get(*u)
                    .and_then(|id| self.peers.get(id))
                    .is_some_and(|p| p.role.publisher().is_some_and(|p| p.has_tracks()))
            })
            .map(|(u, p)| (p.seat, u.clone()))
            .collect();
        order.sort();
        order.into_iter().map(|(_, u)| u).collect()
    }

    /// The codec of `publisher`'s published track of `kind`, if any.
    fn published_codec(
        &self,
        room: &Ident,
        publisher: &Ident,
        kind: RtpCodecKind,
    ) -> Option<RTCRtpCodec> {
        let pid = self.rooms.get(room)?.publish.get(publisher)?;
        let p = self.peers.get(pid)?;
        p.role
            .publisher()?
            .track_of(kind)
            .map(|(_, t)| t.codec.clone())
    }

    /// `MediaCommand::Watch`: answer a WHEP viewer's offer with one sender per receiving
    /// m-section, fed as its slot says.
    pub(crate) fn watch(
        &mut self,
        now: Instant,
        room: &Ident,
        user: &Ident,
        offer: String,
    ) -> Result<String, SfuError> {
        if !self
            .rooms
            .get(room)
            .is_some_and(|r| r.members.contains(user))
        {
            return Err(SfuError::NotInRoom);
        }
        let shape =
            crate::sdp::Sdp::checked(&offer, crate::sdp::Purpose::Watch { seats: MAX_SLOTS })?;
        let (audio, video) = shape.receiving();
        let slots = audio.max(video).min(MAX_SLOTS);
        if slots == 0 {
            return Err(SfuError::BadSdp("the offer receives nothing".into()));
        }
        let offer = RTCSessionDescription::offer(for_rtc(&offer))
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        if let Some(r) = self.rooms.get_mut(room) {
            r.own_offers.insert(user.clone());
        }
        if let Some(old) = self.room_peer(room, user, PcKind::Subscribe) {
            self.remove_peer(old);
        }
        // Players take their places from a share of the loop's connections, so that however
        // many post offers, an anchor can still go live and members can still join.
        if self.peers.len()
            >= self
                .config
                .max_peers
                .saturating_sub(watch_reserve(self.config.max_peers))
        {
            self.stats.watch_refused += 1;
            return Err(SfuError::AtCapacity);
        }
        let id = self.new_peer(now, room, user, PcKind::Subscribe, false)?;
        let order = self.seat_order(room, user);
        let applied = self
            .peers
            .get_mut(&id)
            .expect("the peer was just inserted")
            .pc
            .set_remote_description(now, offer);
        if let Err(e) = applied {
            self.remove_peer(id);
            return Err(SfuError::BadSdp(e.to_string()));
        }
        let mut places: Vec<Slot> = (0..slots).map(|_| Slot::default()).collect();
        // Kind by kind and slot by slot, so the k-th sender of a kind takes the k-th
        // transceiver of that kind (rtc gives a new track the first one without a sender).
        for (kind, count) in [(RtpCodecKind::Audio, audio), (RtpCodecKind::Video, video)] {
            for (k, place) in places.iter_mut().enumerate().take(count) {
                let publisher = order.get(k);
                let codec = publisher.and_then(|p| self.published_codec(room, p, kind));
                let key_codec = codec.clone().unwrap_or_else(|| placeholder(kind));
                let stream = format!("slot{k}");
                let Some(out) = self.new_out_track(id, &stream, kind, &key_codec, |ssrc| {
                    format!("{stream}-{kind}-{ssrc:08x}")
                }) else {
                    continue;
                };
                match (publisher, codec) {
                    (Some(p), Some(_)) => {
                        if let Some(sending) = self
                            .peers
                            .get_mut(&id)
                            .and_then(|p| p.role.subscriber_mut())
                        {
                            sending.insert_out((p.clone(), kind, None), out);
                        }
                    }
                    _ => place.parked.push(out),
                }
                place.publisher = publisher.cloned();
            }
        }
        let sdp = self.answer_offer(now, id, None)?;
        let peer = self.peers.get_mut(&id).expect("the peer answered");
        let Peer { pc, role, .. } = peer;
        if let Some(sending) = role.subscriber_mut() {
            for out in sending
                .outs_mut()
                .map(|(_, out)| out)
                .chain(places.iter_mut().flat_map(|p| p.parked.iter_mut()))
            {
                out.offered = true;
                out.negotiated = negotiated(pc, out.sender, &out.mime, &out.fmtp);
            }
        }
        let early = role.subscriber_mut().and_then(|s| s.take_early());
        role.play(places);
        if let Some(r) = self.rooms.get_mut(room) {
            r.subscribe.insert(user.clone(), id);
        }
        info!(%room, %user, slots, "WHEP viewer watching");
        self.settle_extensions(id);
        self.allocate_subscriber(now, id);
        self.process(now, id);
        for (data, from, to) in early.into_iter().flatten() {
            self.input(now, from, to, &data);
        }
        Ok(sdp)
    }

    /// Hand every WHEP viewer's slots in `room` to whoever holds each place now (a publisher
    /// came, left or changed codec).
    pub(crate) fn rewire_watchers(&mut self, now: Instant, room: &Ident) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let watchers: Vec<(Ident, PeerId)> = r
            .subscribe
            .iter()
            .filter(|(_, id)| self.peers.get(id).is_some_and(|p| p.role.slots().is_some()))
            .map(|(u, id)| (u.clone(), *id))
            .collect();
        for (viewer, sid) in watchers {
            let order = self.seat_order(room, &viewer);
            let codecs: Vec<Vec<(RtpCodecKind, RTCRtpCodec)>> = order
                .iter()
                .map(|p| {
                    [RtpCodecKind::Audio, RtpCodecKind::Video]
                        .into_iter()
                        .filter_map(|k| Some((k, self.published_codec(room, p, k)?)))
                        .collect()
                })
                .collect();
            let Some(peer) = self.peers.get_mut(&sid) else {
                continue;
            };
            let Peer { pc, role, span, .. } = peer;
            let Some(mut places) = role.slots_mut().map(std::mem::take) else {
                continue;
            };
            let Some(sending) = role.subscriber_mut() else {
                continue;
            };
            let mut changed = false;
            // Free every place whose publisher or codec changed, then fill them: a publisher
            // moving up a place leaves one before it takes the other.
            let stale = |k: usize, out: &OutTrack| {
                let codec = codecs
                    .get(k)
                    .and_then(|c| c.iter().find(|(kind, _)| *kind == out.kind));
                codec.is_none_or(|(_, c)| !c.mime_type.eq_ignore_ascii_case(&out.mime))
            };
            for (k, place) in places.iter_mut().enumerate() {
                let want = order.get(k);
                let Some(old) = place.publisher.clone() else {
                    continue;
                };
                for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
                    let key = (old.clone(), kind, None);
                    let moved =
                        Some(&old) != want || sending.out(&key).is_some_and(|out| stale(k, out));
                    if moved && let Some(out) = sending.remove_out(&key) {
                        place.parked.push(out);
                        changed = true;
                    }
                }
                if Some(&old) != want {
                    place.publisher = None;
                }
            }
            for (k, place) in places.iter_mut().enumerate() {
                let Some(want) = order.get(k) else {
                    continue;
                };
                place.publisher = Some(want.clone());
                let mut still = Vec::new();
                for mut out in place.parked.drain(..) {
                    let key = (want.clone(), out.kind, None);
                    let codec = codecs[k].iter().find(|(kind, _)| *kind == out.kind);
                    let fed = match codec {
                        Some((_, codec)) if !sending.has_out(&key) => {
                            negotiated(pc, out.sender, &codec.mime_type, &codec.sdp_fmtp_line)
                                .map(|n| (n, codec))
                        }
                        _ => None,
                    };
                    match fed {
                        Some((n, codec)) => {
                            out.negotiated = Some(n);
                            out.mime = codec.mime_type.clone();
                            out.fmtp = codec.sdp_fmtp_line.clone();
                            out.clock_rate = codec.clock_rate.max(1);
                            // Chosen again below; the stream continues from the new
                            // publisher's keyframe.
                            out.target = None;
                            out.reported = None;
                            out.downgraded = None;
                            sending.insert_out(key, out);
                            changed = true;
                        }
                        None => still.push(out),
                    }
                }
                place.parked = still;
            }
            if let Some(slots) = role.slots_mut() {
                *slots = places;
            }
            if changed {
                info!(parent: &*span, "WHEP slots handed on");
                self.settle_extensions(sid);
                self.allocate_subscriber(now, sid);
            }
        }
    }
}
