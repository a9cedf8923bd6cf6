//! The lifecycle of peer connections in the core: building and closing them, tracks
//! opening, subscribe connections and their offers, rebuilds after failures.

use std::time::Instant;

use miclink_protocol::Ident;
use rand::RngExt;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use tracing::{debug, info, warn};

use crate::core::{Output, REBUILD_INTERVAL, Transmit, Transport};
use crate::ids::{OutKey, PeerId};
use crate::peer::Peer;
use crate::track::{InTrack, OutTrack};
use crate::{MediaCore, MediaEvent, PcKind, SfuError, extensions};

impl MediaCore {
    pub(crate) fn room_peer(&self, room: &Ident, user: &Ident, kind: PcKind) -> Option<PeerId> {
        let r = self.rooms.get(room)?;
        match kind {
            PcKind::Publish => r.publish.get(user),
            PcKind::Subscribe => r.subscribe.get(user),
        }
        .copied()
    }

    /// Drain one peer's events and media after it was fed.
    pub(crate) fn process(&mut self, now: Instant, id: PeerId) {
        self.dirty.insert(id);
        loop {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            if let Some(event) = peer.pc.poll_event() {
                self.peer_event(now, id, event);
                continue;
            }
            if let Some(TaggedRTCMessage { message, .. }) = peer.pc.poll_read() {
                match message {
                    RTCMessage::RtpPacket(track_id, packet) => match peer.role.relay_in() {
                        // A relayed stream belongs to its publisher's stand-in.
                        Some(relay) => {
                            if let Some((sid, key)) = relay.tracks.get(&track_id).cloned() {
                                self.forward(now, sid, &key, packet);
                            }
                        }
                        None => self.forward(now, id, &track_id, packet),
                    },
                    RTCMessage::RtcpPacket(_, packets) => self.rtcp(now, id, packets),
                    _ => {}
                }
                continue;
            }
            return;
        }
    }

    pub(crate) fn peer_event(&mut self, now: Instant, id: PeerId, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(peer) = self.peers.get_mut(&id) else {
                    return;
                };
                debug!(parent: &peer.span, %state, "connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
                        peer.connected = true;
                        if peer.kind() == PcKind::Subscribe {
                            let key = (peer.room.clone(), peer.user.clone());
                            self.unconnected.remove(&key);
                        }
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                        if peer.role.relay_to().is_some() || peer.role.relay_in().is_some() =>
                    {
                        self.relay_failed(now, id);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        let (room, user, kind) =
                            (peer.room.clone(), peer.user.clone(), peer.kind());
                        info!(parent: &peer.span, %state, "connection ended");
                        // A WHEP player's connection ending on its own is the player gone (one
                        // replaced or closed by a command is not: its successor stays).
                        let watch_ended = peer.role.slots().is_some()
                            && self.room_peer(&room, &user, PcKind::Subscribe) == Some(id);
                        self.remove_peer(id);
                        if watch_ended {
                            self.outputs
                                .push_back(Output::Event(MediaEvent::WatchEnded {
                                    room: room.clone(),
                                    user: user.clone(),
                                }));
                        }
                        if kind == PcKind::Subscribe {
                            self.schedule_rebuild(now, room, user);
                        }
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if self
                    .peers
                    .get(&id)
                    .is_some_and(|p| p.role.relay_in().is_some()) =>
            {
                let stream = init.stream_ids.first().map(String::as_str);
                self.relay_track_opened(
                    now,
                    id,
                    stream,
                    init.track_id,
                    init.receiver_id,
                    init.ssrc,
                );
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                let rid = init.rid.unwrap_or_default();
                self.track_opened(now, id, init.track_id, init.receiver_id, &rid, init.ssrc);
            }
            _ => {}
        }
    }

    /// Close the connections whose connect deadline passed before they connected, as if ICE
    /// had failed: a WHEP player is gone, a subscriber's connection is rebuilt, a relay asked
    /// for again, a publisher's seat stays for its next offer.
    pub(crate) fn expire_unconnected(&mut self, now: Instant) {
        let late: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.connected && p.connect_by.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.stats.connect_timeouts += 1;
            if let Some(p) = self.peers.get(&id) {
                info!(parent: &p.span, "not connected by the connect deadline; closed");
                // A member's subscribe connection is rebuilt, later each time it misses.
                if p.kind() == PcKind::Subscribe
                    && p.role.relay_to().is_none()
                    && p.role.slots().is_none()
                {
                    let member = self
                        .rooms
                        .get(&p.room)
                        .is_some_and(|r| r.members.contains(&p.user));
                    if member {
                        *self
                            .unconnected
                            .entry((p.room.clone(), p.user.clone()))
                            .or_default() += 1;
                    }
                }
            }
            self.peer_event(
                now,
                id,
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    RTCPeerConnectionState::Failed,
                ),
            );
        }
    }

    pub(crate) fn schedule_rebuild(&mut self, now: Instant, room: Ident, user: Ident) {
        let member = self
            .rooms
            .get(&room)
            .is_some_and(|r| r.members.contains(&user));
        if !member
            || self
                .rebuilds
                .iter()
                .any(|(_, r, u)| *r == room && *u == user)
        {
            return;
        }
        // 2 s after the last rebuild, doubling (to 32 s) while connections miss the deadline.
        let missed = self
            .unconnected
            .get(&(room.clone(), user.clone()))
            .copied()
            .unwrap_or(0);
        let interval = REBUILD_INTERVAL * (1 << missed.min(4));
        let at = self
            .last_rebuild
            .get(&(room.clone(), user.clone()))
            .map_or(now, |t| now.max(*t + interval));
        self.rebuilds.push((at, room, user));
    }

    /// Close `user`'s subscribe connection, if any, and give them a new one.
    pub(crate) fn renew_subscribe(&mut self, now: Instant, room: &Ident, user: &Ident) {
        if let Some(id) = self.room_peer(room, user, PcKind::Subscribe) {
            self.remove_peer(id);
        }
        self.last_rebuild.insert((room.clone(), user.clone()), now);
        self.ensure_subscribe(now, room, user);
    }

    /// A stream arrived on a publish connection: a new track, or another simulcast layer of
    /// one it has.
    pub(crate) fn track_opened(
        &mut self,
        now: Instant,
        id: PeerId,
        track_id: String,
        receiver: rtc::rtp_transceiver::RTCRtpReceiverId,
        rid: &str,
        ssrc: u32,
    ) {
        let source = self.next_source;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Peer {
            pc,
            role,
            room,
            user,
            span,
            ..
        } = peer;
        let (room, user) = (room.clone(), user.clone());
        let Some(publisher) = role.publisher_mut() else {
            return;
        };
        if let Some(track) = publisher.tracks.get_mut(&track_id) {
            if track.add_layer(rid, ssrc, source) {
                self.next_source += 1;
                info!(parent: &*span, rid, ssrc, source, "simulcast layer published");
                self.allocate_publisher(now, &room, &user);
                self.relay_all(now, &room, &user);
            } else {
                warn!(parent: &*span, rid, ssrc, "stream refused: the track has all its layers");
            }
            return;
        }
        let Some((kind, codec, forwarded)) = received_stream(pc, receiver, ssrc) else {
            return;
        };
        info!(parent: &*span, ?kind, mime = %codec.mime_type, rid, source, "track published");
        self.next_source += 1;
        let mut track = InTrack::new(kind, codec.clone(), receiver, forwarded);
        if kind == RtpCodecKind::Video {
            track.simulcast = publisher.simulcast.clone();
        }
        track.add_layer(rid, ssrc, source);
        publisher.tracks.insert(track_id, track);
        self.track_added(now, &room, &user, kind, &codec);
    }

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
            .map(|r| r.members.iter().filter(|m| **m != user).cloned().collect())
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
                .and_then(|s| s.role.outs()?.get(&(user.clone(), kind, None)))
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
                .and_then(|s| s.role.outs())
                .is_some_and(|outs| {
                    outs.iter().any(|((p, k, _), o)| {
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
        let Some(outs) = sub.role.outs() else {
            return;
        };
        let mappings: Vec<(OutKey, Vec<(u8, u8)>)> = outs
            .iter()
            .filter_map(|(key, out)| {
                let negotiated = out.negotiated.as_ref()?;
                let publisher = self.peers.get(room.publish.get(&key.0)?)?;
                let track = publisher
                    .role
                    .tracks()?
                    .values()
                    .find(|t| t.kind == key.1)?;
                Some((
                    key.clone(),
                    extensions::mapping(&track.extensions, &negotiated.extensions),
                ))
            })
            .collect();
        if let Some(outs) = self.peers.get_mut(&sid).and_then(|s| s.role.outs_mut()) {
            for (key, ids) in mappings {
                if let Some(out) = outs.get_mut(&key) {
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
                    .tracks()
                    .into_iter()
                    .flat_map(|t| t.values())
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
                s.new_connection = before;
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
            .is_none_or(|s| s.role.outs().is_none_or(|o| o.contains_key(&key)))
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
            if let Some(outs) = sub.role.outs_mut() {
                outs.insert(key, out);
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
        let Some(outs) = sub.role.outs_mut() else {
            return false;
        };
        let gone: Vec<OutKey> = outs
            .keys()
            .filter(|(p, k, _)| p == publisher && kind.is_none_or(|kind| kind == *k))
            .cloned()
            .collect();
        for key in &gone {
            if let Some(out) = outs.remove(key) {
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
            sub.renegotiate = true;
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
                sub.pending_offer = Some(sdp.clone());
                self.offers_made += 1;
                sub.offer_id = self.offers_made;
                for out in sub.outs.values_mut() {
                    out.offered = true;
                }
                let event = match relay_to {
                    Some(node) => MediaEvent::RelayOffer {
                        room: peer.room.clone(),
                        node,
                        sdp,
                        offer_id: sub.offer_id,
                        fresh: sub.new_connection,
                    },
                    None => MediaEvent::SubscribeOffer {
                        room: peer.room.clone(),
                        user: peer.user.clone(),
                        sdp,
                        new_connection: sub.new_connection,
                        offer_id: sub.offer_id,
                    },
                };
                self.outputs.push_back(Output::Event(event));
                self.dirty.insert(sid);
            }
            Err(e) => warn!(parent: &peer.span, error = %e, "could not create a subscribe offer"),
        }
    }

    pub(crate) fn new_peer(
        &mut self,
        now: Instant,
        room: &Ident,
        user: &Ident,
        kind: PcKind,
        replaces: bool,
    ) -> Result<PeerId, SfuError> {
        // A connection that replaces one (a republish) may go one over for the moment of the
        // swap: a member's new device must not be refused for the old one's place.
        if !replaces && self.peers.len() >= self.config.max_peers {
            self.stats.peers_refused += 1;
            return Err(SfuError::AtCapacity);
        }
        let peer = self.factory.build(now, room, user, kind)?;
        let id = self.next_peer;
        self.next_peer += 1;
        self.by_ufrag.insert(peer.ufrag.clone(), id);
        self.outputs.push_back(Output::Ufrag {
            ufrag: peer.ufrag.clone(),
            live: true,
        });
        self.peers.insert(id, peer);
        Ok(id)
    }

    /// Close a connection and forget it everywhere; its close alerts still go out first.
    pub(crate) fn remove_peer(&mut self, id: PeerId) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        // Its place may be the one a relayed stream waits for.
        self.waiting |= peer.kind() == PcKind::Publish && peer.role.relay_in().is_none();
        // The last NACKs of a publisher count too, however soon after the last read it leaves.
        if let Some(now) = self.clock {
            self.stats.nacks_to_publishers += peer.read_nacks(now);
        }
        if let Some(r) = self.rooms.get_mut(&peer.room) {
            if let Some(node) = peer.role.relay_to()
                && r.relays.get(node) == Some(&id)
            {
                r.relays.remove(node);
            }
            if let Some(from) = peer.role.relay_in()
                && r.relays_in.get(&from.node) == Some(&id)
            {
                r.relays_in.remove(&from.node);
            }
        }
        if let Some(r) = self.rooms.get_mut(&peer.room)
            && peer.role.relay_to().is_none()
            && peer.role.relay_in().is_none()
        {
            let map = match peer.kind() {
                PcKind::Publish => &mut r.publish,
                PcKind::Subscribe => &mut r.subscribe,
            };
            if map.get(&peer.user) == Some(&id) {
                map.remove(&peer.user);
                // The member's publish connection is gone, not replaced by a newer one. (A
                // stand-in's publisher publishes on another node: nothing to report here.)
                if peer.kind() == PcKind::Publish && peer.role.stand_in().is_none() {
                    self.outputs.push_back(Output::Event(MediaEvent::Published {
                        room: peer.room.clone(),
                        user: peer.user.clone(),
                        audio: false,
                        video: false,
                        link: peer.role.publisher().map_or(0, |p| p.link),
                    }));
                }
            }
        }
        let _ = peer.pc.close();
        while let Some(msg) = peer.pc.poll_write() {
            // The last words (DTLS close) are never video.
            let transport = match msg.transport.transport_protocol {
                rtc::shared::TransportProtocol::TCP => Transport::Tcp,
                _ if peer.role.relay_in().is_some() => Transport::Relay(id),
                _ => Transport::Udp,
            };
            self.outputs.push_back(Output::Transmit(Transmit {
                to: msg.transport.peer_addr,
                from: msg.transport.local_addr,
                transport,
                data: msg.message,
                video: None,
            }));
        }
        if self.by_ufrag.remove(&peer.ufrag).is_some() {
            self.outputs.push_back(Output::Ufrag {
                ufrag: peer.ufrag.clone(),
                live: false,
            });
        }
        for a in &peer.addrs {
            if self.by_addr.get(a) == Some(&id) {
                self.by_addr.remove(a);
                self.outputs.push_back(Output::Forget { remote: *a });
            }
        }
        self.dirty.remove(&id);
        if self.flushing == Some(id) {
            self.flushing = None;
        }
    }
}

/// What a stream `receiver` took in carries: its kind, its codec and the forwarded header
/// extensions with their ids on this connection.
pub(crate) fn received_stream(
    pc: &mut rtc::peer_connection::RTCPeerConnection,
    receiver: rtc::rtp_transceiver::RTCRtpReceiverId,
    ssrc: u32,
) -> Option<(RtpCodecKind, RTCRtpCodec, extensions::Forwarded)> {
    let mut r = pc.rtp_receiver(receiver)?;
    let kind = r.track().kind();
    let parameters = r.get_parameters().rtp_parameters.clone();
    // The codec of the stream's first packet (its payload type), not merely the first one the
    // m-section lists: a publisher offering VP8 and H.264 may send either.
    let codec = r
        .track()
        .codec(ssrc)
        .cloned()
        .or_else(|| parameters.codecs.first().map(|c| c.rtp_codec.clone()))?;
    let forwarded = extensions::forwarded(
        parameters
            .header_extensions
            .iter()
            .map(|h| (h.id, h.uri.as_str())),
    );
    Some((kind, codec, forwarded))
}
