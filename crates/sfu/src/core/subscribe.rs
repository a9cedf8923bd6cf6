//! Subscribe connections in the core: a member's made when there is something to receive,
//! a sender per publisher track (added, replaced on a codec change, removed), offers made
//! and made again when the senders change, and the forwarded extensions mapped per answer.

use std::time::Instant;

use miclink_protocol::Ident;
use rand::RngExt;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tracing::warn;

use crate::core::Output;
use crate::ids::{OutKey, PeerId};
use crate::track::OutTrack;
use crate::{MediaCore, MediaEvent, PcKind, SfuError, extensions};

impl MediaCore {
    /// `user` publishes a new track of `kind` in `room` (here, or on a relay): every other
    /// member receives it, and so does every relay to another node.
    pub(crate) fn track_added(
        &mut self,
        now: Instant,
        room: &Ident,
        user: &Ident,
        kind: RtpCodecKind,
        codec: &RTCRtpCodec,
    ) {
        let (room, user) = (room.clone(), user.clone());
        // Every other member receives it.
        let members: Vec<Ident> = self
            .rooms
            .get(&room)
            .map(|r| r.others(&user))
            .unwrap_or_default();
        for member in members {
            let Some(sid) = self.room_peer(&room, &member, PcKind::Subscribe) else {
                self.ensure_subscribe(now, &room, &member);
                continue;
            };
            if self
                .peers
                .get(&sid)
                .is_some_and(|p| p.role.slots().is_some())
            {
                continue;
            }
            // A republish with another codec needs a new sender; the same codec keeps the one
            // the subscriber has, and its stream continues from the new source's keyframe.
            let stale = self
                .peers
                .get(&sid)
                .and_then(|s| s.role.subscriber()?.out(&(user.clone(), kind, None)))
                .is_some_and(|o| {
                    !o.mime.eq_ignore_ascii_case(&codec.mime_type) || o.fmtp != codec.sdp_fmtp_line
                });
            let removed = stale && self.remove_out_tracks(sid, &user, Some(kind));
            if self.add_out_track(sid, &user, kind, codec) || removed {
                self.negotiate(now, sid);
            }
            self.settle_extensions(sid);
        }
        // Relays: a republish with another codec needs new senders there too.
        for sid in self.relays_of(&room) {
            let stale = self
                .peers
                .get(&sid)
                .and_then(|s| s.role.subscriber())
                .is_some_and(|sending| {
                    sending.outs().any(|((p, k, _), o)| {
                        *p == user
                            && *k == kind
                            && (!o.mime.eq_ignore_ascii_case(&codec.mime_type)
                                || o.fmtp != codec.sdp_fmtp_line)
                    })
                });
            let removed = stale && self.remove_out_tracks(sid, &user, Some(kind));
            if self.relay_publisher(sid, &room, &user) || removed {
                self.negotiate(now, sid);
            }
            self.settle_extensions(sid);
        }
        self.rewire_watchers(now, &room);
        self.allocate_publisher(now, &room, &user);
    }

    /// Map each of `sid`'s answered tracks' forwarded extensions from its publisher's current
    /// ids to the subscriber's.
    pub(crate) fn settle_extensions(&mut self, sid: PeerId) {
        let Some(sub) = self.peers.get(&sid) else {
            return;
        };
        let Some(room) = self.rooms.get(&sub.room) else {
            return;
        };
        let Some(sending) = sub.role.subscriber() else {
            return;
        };
        let mappings: Vec<(OutKey, Vec<(u8, u8)>)> = sending
            .outs()
            .filter_map(|(key, out)| {
                let negotiated = out.negotiated.as_ref()?;
                let publisher = self.peers.get(room.publish.get(&key.0)?)?;
                let (_, track) = publisher.role.publisher()?.track_of(key.1)?;
                Some((
                    key.clone(),
                    extensions::mapping(&track.extensions, &negotiated.extensions),
                ))
            })
            .collect();
        if let Some(sending) = self
            .peers
            .get_mut(&sid)
            .and_then(|s| s.role.subscriber_mut())
        {
            for (key, ids) in mappings {
                if let Some(out) = sending.out_mut(&key) {
                    out.ext_ids = ids;
                }
            }
        }
    }

    /// Give `member` a subscribe connection carrying every track published in the room but
    /// their own, if there is any and they have none yet.
    pub(crate) fn ensure_subscribe(&mut self, now: Instant, room: &Ident, member: &Ident) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        if r.subscribe.contains_key(member)
            || !r.members.contains(member)
            || r.own_offers.contains(member)
            || r.elsewhere.contains(member)
        {
            return;
        }
        let published: Vec<(Ident, RtpCodecKind, RTCRtpCodec)> = r
            .publish
            .iter()
            .filter(|(u, _)| *u != member)
            .filter_map(|(u, id)| self.peers.get(id).map(|p| (u, p)))
            .flat_map(|(u, p)| {
                p.role
                    .publisher()
                    .into_iter()
                    .flat_map(|p| p.tracks())
                    .map(move |t| (u.clone(), t.kind, t.codec.clone()))
            })
            .collect();
        if published.is_empty() {
            return;
        }
        // Viewers leave the loop's last places to publishers, as WHEP players do: however many
        // join, an anchor can still go live. A viewer kept out waits, tried again every
        // rebuild interval.
        let reserve = crate::whep::watch_reserve(self.config.max_peers);
        if self.peers.len() >= self.config.max_peers.saturating_sub(reserve) {
            self.stats.peers_refused += 1;
            self.schedule_rebuild(now, room.clone(), member.clone());
            return;
        }
        let id = match self.new_peer(now, room, member, PcKind::Subscribe, false) {
            Ok(id) => id,
            Err(SfuError::AtCapacity) => {
                // Tried again every rebuild interval until a connection closes somewhere.
                self.schedule_rebuild(now, room.clone(), member.clone());
                return;
            }
            Err(e) => {
                warn!(%room, user = %member, error = %e, "could not create a subscribe connection");
                return;
            }
        };
        if let Some(r) = self.rooms.get_mut(room) {
            r.subscribe.insert(member.clone(), id);
            let before = !r.subscribed_before.insert(member.clone());
            if let Some(s) = self
                .peers
                .get_mut(&id)
                .and_then(|p| p.role.subscriber_mut())
            {
                s.set_new_connection(before);
            }
        }
        for (publisher, kind, codec) in published {
            self.add_out_track(id, &publisher, kind, &codec);
        }
        self.allocate_subscriber(now, id);
        self.negotiate(now, id);
    }

    /// Add `publisher`'s track of `kind` to subscribe connection `sid`; false if it was there.
    pub(crate) fn add_out_track(
        &mut self,
        sid: PeerId,
        publisher: &Ident,
        kind: RtpCodecKind,
        codec: &RTCRtpCodec,
    ) -> bool {
        let key = (publisher.clone(), kind, None);
        if self
            .peers
            .get(&sid)
            .is_none_or(|s| s.role.subscriber().is_none_or(|o| o.has_out(&key)))
        {
            return false;
        }
        // The msid stream id is the publisher's user id (contract rule 7).
        let Some(out) = self.new_out_track(sid, publisher.as_str(), kind, codec, |ssrc| {
            format!("{publisher}-{kind}-{ssrc:08x}")
        }) else {
            return false;
        };
        if let Some(sub) = self.peers.get_mut(&sid) {
            // Offer every forwarded codec of the kind, not only this track's (see
            // `register_forwarded_codecs`). A connection answering the client's offer (WHEP)
            // keeps the codecs that offer listed instead.
            if let Some(mut t) = sub.pc.rtp_transceiver(out.sender.into()) {
                let _ = t.set_codec_preferences(Vec::new());
            }
            if let Some(sending) = sub.role.subscriber_mut() {
                sending.insert_out(key, out);
            }
        }
        true
    }

    /// A new sender of `kind` on subscribe connection `sid`, in msid stream `stream`, not yet
    /// fed by anyone.
    pub(crate) fn new_out_track(
        &mut self,
        sid: PeerId,
        stream: &str,
        kind: RtpCodecKind,
        codec: &RTCRtpCodec,
        track_id: impl FnOnce(u32) -> String,
    ) -> Option<OutTrack> {
        let sub = self.peers.get_mut(&sid)?;
        let ssrc: u32 = rand::rng().random();
        // Track ids are never reused on a connection: a replaced sender's id may still be in
        // its transceiver.
        let track = MediaStreamTrack::new(
            stream.to_owned(),
            track_id(ssrc),
            format!("{stream} {kind}"),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.clone(),
                ..Default::default()
            }],
        );
        match sub.pc.add_track(track) {
            Ok(sender) => {
                let first_seq = rand::rng().random();
                Some(OutTrack::new(sender, ssrc, kind, codec, first_seq))
            }
            Err(e) => {
                warn!(parent: &sub.span, error = %e, "could not add a track");
                None
            }
        }
    }

    /// Remove `publisher`'s tracks (of `kind`, or all) from subscribe connection `sid`; true if
    /// any was there (the connection then needs a new offer).
    pub(crate) fn remove_out_tracks(
        &mut self,
        sid: PeerId,
        publisher: &Ident,
        kind: Option<RtpCodecKind>,
    ) -> bool {
        let Some(sub) = self.peers.get_mut(&sid) else {
            return false;
        };
        let Some(sending) = sub.role.subscriber_mut() else {
            return false;
        };
        let gone: Vec<OutKey> = sending
            .outs()
            .map(|(key, _)| key)
            .filter(|(p, k, _)| p == publisher && kind.is_none_or(|kind| kind == *k))
            .cloned()
            .collect();
        for key in &gone {
            if let Some(out) = sending.remove_out(key) {
                let _ = sub.pc.remove_track(out.sender);
            }
        }
        !gone.is_empty()
    }

    /// Send `sid` a new subscribe offer, or note that one is due once the pending one is
    /// answered.
    pub(crate) fn negotiate(&mut self, now: Instant, sid: PeerId) {
        let Some(peer) = self.peers.get_mut(&sid) else {
            return;
        };
        // A WHEP connection was answered once; its slots change hands instead.
        if peer.role.slots().is_some() {
            return;
        }
        let relay_to = peer.role.relay_to().map(str::to_owned);
        let Some(sub) = peer.role.subscriber_mut() else {
            return;
        };
        if sub.offer_pending() {
            sub.renegotiate_later();
            return;
        }
        let pc = &mut peer.pc;
        let offer = (|| {
            let offer = pc.create_offer(None)?;
            pc.set_local_description(now, offer.clone())?;
            Ok::<_, rtc::shared::error::Error>(offer.sdp)
        })();
        match offer {
            Ok(sdp) => {
                self.offers_made += 1;
                let offer = sub.offer_made(sdp.clone(), self.offers_made);
                let (offer_id, new_connection) = (offer.offer_id, offer.new_connection);
                let event = match relay_to {
                    Some(node) => MediaEvent::RelayOffer {
                        room: peer.room.clone(),
                        node,
                        sdp,
                        offer_id,
                        fresh: new_connection,
                    },
                    None => MediaEvent::SubscribeOffer {
                        room: peer.room.clone(),
                        user: peer.user.clone(),
                        sdp,
                        new_connection,
                        offer_id,
                    },
                };
                self.outputs.push_back(Output::Event(event));
                self.dirty.insert(sid);
            }
            Err(e) => warn!(parent: &peer.span, error = %e, "could not create a subscribe offer"),
        }
    }
}
