//! The lifecycle of peer connections in the core: building and closing them, draining their
//! events, tracks opening on publish connections, the connect deadline, and subscribe
//! connections rebuilt after failures (made and offered in [`super::subscribe`]).

use std::time::Instant;

use miclink_protocol::Ident;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use rtc::sansio::Protocol;
use tracing::{debug, info, warn};

use crate::core::{Output, REBUILD_INTERVAL, Transmit, Transport};
use crate::ids::PeerId;
use crate::peer::{Peer, Role};
use crate::track::InTrack;
use crate::{MediaCore, MediaEvent, PcKind, SfuError, extensions};

impl MediaCore {
    pub(crate) fn room_peer(&self, room: &Ident, user: &Ident, kind: PcKind) -> Option<PeerId> {
        self.rooms.get(room)?.connection(user, kind)
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
        if let Some(track) = publisher.track_mut(&track_id) {
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
            track.simulcast = publisher.simulcast().to_vec();
        }
        track.add_layer(rid, ssrc, source);
        publisher.insert_track(track_id, track);
        self.track_added(now, &room, &user, kind, &codec);
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
        let relay = match (peer.role.relay_to(), peer.role.relay_in()) {
            (Some(node), _) => Some((node, true)),
            (_, Some(from)) => Some((from.node.as_str(), false)),
            _ => None,
        };
        // The member's publish connection is gone, not replaced by a newer one. (A stand-in's
        // publisher publishes on another node: nothing to report here.)
        if let Some(r) = self.rooms.get_mut(&peer.room)
            && r.closed(id, &peer.user, peer.kind(), relay)
            && let Role::Publisher(publisher) = &peer.role
        {
            self.outputs.push_back(Output::Event(MediaEvent::Published {
                room: peer.room.clone(),
                user: peer.user.clone(),
                audio: false,
                video: false,
                link: publisher.link(),
            }));
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
