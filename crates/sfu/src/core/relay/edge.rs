//! A relay's other end: a node fed by the room's origin answers its relay offer, and each
//! stream the relay carries feeds a stand-in publish connection for its publisher here (made
//! on its first stream, gone with its last), unless that publisher publishes here or through
//! another relay: then the stream waits until the place is free.

use crate::core::{Output, Permit, Remote, Transport};
use crate::ids::PeerId;
use crate::peer::{MAX_ADDRS, Role};
use crate::relay::{
    Carried, MAX_RELAY_STREAMS, MAX_STAND_INS, RelayIn, parse_relay_track_id, relay_label,
};
use crate::sdp::{Purpose, Sdp};
use crate::track::InTrack;
use crate::{MediaCore, PcKind, SfuError, layers};
use miclink_protocol::Ident;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;
use tracing::{debug, info, warn};

impl MediaCore {
    /// The origin `node`'s offer for this node's relay of `room` (`fresh`: for a new
    /// connection): applied, answered; tracks it no longer sends leave the stand-ins.
    pub(crate) fn relay_offer(
        &mut self,
        now: Instant,
        room: &Ident,
        node: &str,
        sdp: &str,
        fresh: bool,
    ) -> Result<String, SfuError> {
        let described = Sdp::checked(sdp, Purpose::Answer)?;
        let current = self
            .rooms
            .get(room)
            .and_then(|r| r.relays_in.get(node))
            .copied();
        let id = match current {
            Some(id) if !fresh => id,
            // A renegotiation of a connection this node no longer has: the other end opens a
            // new one when told so.
            None if !fresh => return Err(SfuError::NoOffer),
            other => {
                if let Some(old) = other {
                    self.close_relay_in(now, old);
                }
                self.new_relay_in(now, room, node, &described)?
            }
        };
        let answer = RTCSessionDescription::offer(sdp.to_owned())
            .map_err(|e| SfuError::BadSdp(e.to_string()))
            .and_then(|offer| self.answer_offer(now, id, Some(offer)));
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                // The connection is gone (or useless): so are its publishers here.
                self.close_relay_in(now, id);
                return Err(e);
            }
        };
        // Stand-ins' tracks the origin no longer sends (a revoked or gone publisher).
        let sent = described.sent_track_ids();
        let gone: Vec<String> = self
            .peers
            .get(&id)
            .and_then(|p| p.role.relay_in())
            // Every stream taken up (`tracks`) is one the relay carries (`streams`).
            .map(|r| {
                r.streams
                    .keys()
                    .filter(|t| !sent.contains(*t))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for track in gone {
            self.relay_track_closed(now, id, &track);
        }
        self.process(now, id);
        Ok(answer)
    }

    fn new_relay_in(
        &mut self,
        now: Instant,
        room: &Ident,
        node: &str,
        sdp: &Sdp,
    ) -> Result<PeerId, SfuError> {
        if self.peers.len() >= self.config.max_peers {
            self.stats.peers_refused += 1;
            return Err(SfuError::AtCapacity);
        }
        let origin: Vec<SocketAddr> = sdp
            .host_candidates("udp")
            .into_iter()
            .take(MAX_ADDRS)
            .collect();
        let first = origin.first().copied().ok_or_else(|| {
            SfuError::BadSdp("the relay offer names no UDP host candidate".into())
        })?;
        // The local candidate of the origin's kind: loopback to loopback, else a routable one.
        let local = self
            .config
            .public
            .iter()
            .copied()
            .find(|a| {
                a.is_ipv4() == first.is_ipv4() && a.ip().is_loopback() == first.ip().is_loopback()
            })
            .unwrap_or(self.local);
        let label = relay_label(node)?;
        let mut peer = self.factory.build_client(now, room, &label, local)?;
        peer.role = Role::RelayIn(RelayIn {
            node: node.to_owned(),
            local,
            tracks: HashMap::new(),
            streams: HashMap::new(),
        });
        let id = self.next_peer;
        self.next_peer += 1;
        for addr in origin {
            // A socket of its own for each of the origin's addresses (see `Transport::Relay`).
            let remote = Remote {
                addr,
                transport: Transport::Relay(id),
            };
            peer.addrs.push(remote);
            self.by_addr.insert(remote, id);
            self.outputs.push_back(Output::Connect { remote, local });
        }
        self.peers.insert(id, peer);
        self.rooms
            .entry(room.clone())
            .or_default()
            .relays_in
            .insert(node.to_owned(), id);
        info!(%room, %node, "relay from the origin opened");
        Ok(id)
    }

    /// A stream opened on relay `id`: a track (or layer) of the stand-in for its publisher.
    pub(crate) fn relay_track_opened(
        &mut self,
        now: Instant,
        id: PeerId,
        stream: Option<&str>,
        track_id: String,
        receiver: rtc::rtp_transceiver::RTCRtpReceiverId,
        ssrc: u32,
    ) {
        let Some((seat, rid)) = parse_relay_track_id(&track_id) else {
            debug!(track_id, "a relay track with an id not ours");
            return;
        };
        let Some(publisher) = stream.and_then(|s| Ident::new(s).ok()) else {
            return;
        };
        let Some(relay) = self.peers.get_mut(&id) else {
            return;
        };
        if let Some(r) = relay.role.relay_in_mut() {
            if r.streams.len() >= MAX_RELAY_STREAMS && !r.streams.contains_key(&track_id) {
                warn!(
                    track_id,
                    "the relay carries more streams than a room can publish"
                );
                return;
            }
            let carried = Carried {
                publisher,
                seat,
                rid,
                receiver,
                ssrc,
            };
            r.streams.insert(track_id.clone(), carried.clone());
            self.take_up(now, id, track_id, carried);
        }
    }

    /// Feed relayed stream `track_id` to the stand-in for its publisher here, unless the
    /// publisher publishes here or through another relay still: then it waits (`streams`) until
    /// [`MediaCore::take_up_waiting`] finds the place free.
    fn take_up(&mut self, now: Instant, id: PeerId, track_id: String, carried: Carried) {
        let Carried {
            publisher,
            seat,
            rid,
            receiver,
            ssrc,
        } = carried;
        let Some(relay) = self.peers.get_mut(&id) else {
            return;
        };
        let room = relay.room.clone();
        let relay_node = relay.role.relay_in().map(|r| r.node.clone());
        let Some((kind, codec, forwarded)) =
            crate::core::lifecycle::received_stream(&mut relay.pc, receiver, ssrc)
        else {
            return;
        };
        // The stand-in publish connection for the publisher: made on its first track.
        let existing = self
            .rooms
            .get(&room)
            .and_then(|r| r.publish.get(&publisher))
            .copied();
        // A stand-in left from a relay that is gone makes way for this one's.
        if let Some(pid) = existing
            && let Some(via) = self
                .peers
                .get(&pid)
                .and_then(|p| p.role.stand_in().map(|s| s.via()))
            && via != id
            && !self.peers.contains_key(&via)
        {
            self.drop_stand_in(now, pid);
        }
        let existing = self
            .rooms
            .get(&room)
            .and_then(|r| r.publish.get(&publisher))
            .copied();
        let sid = match existing {
            Some(pid)
                if self
                    .peers
                    .get(&pid)
                    .is_some_and(|p| p.role.stand_in().is_some_and(|s| s.via() == id)) =>
            {
                pid
            }
            // Taken up when that place goes (`remove_peer` of a publish connection sets
            // `waiting`).
            Some(_) => {
                debug!(%room, %publisher, track_id, "a relayed publisher publishes here too, or through another relay: its stream waits");
                return;
            }
            // At the origin a pushed publisher the seats do not allow (revoked, or gone, while
            // its node has not yet taken its streams away) gets no stand-in: its tracks would
            // be offered to every subscriber only to be withdrawn at the next relay offer. A
            // permit given later takes the stream up.
            None if self
                .rooms
                .get(&room)
                .is_some_and(|r| r.origin.is_none() && !r.allowed.contains_key(&publisher)) =>
            {
                debug!(%room, %publisher, track_id, "a pushed publisher the seats do not allow: its stream waits");
                return;
            }
            None if self
                .rooms
                .get(&room)
                .is_some_and(|r| r.publish.len() >= MAX_STAND_INS) =>
            {
                warn!(%room, %publisher, "the relay brings more publishers than a room has seats");
                return;
            }
            None => {
                let mut stand_in = match self.factory.build(now, &room, &publisher, PcKind::Publish)
                {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(%room, %publisher, error = %e, "no stand-in for a relayed publisher");
                        return;
                    }
                };
                stand_in
                    .role
                    .stand_in_for(id, relay_node.clone().unwrap_or_default());
                let pid = self.next_peer;
                self.next_peer += 1;
                self.peers.insert(pid, stand_in);
                let r = self.rooms.entry(room.clone()).or_default();
                r.publish.insert(publisher.clone(), pid);
                // On a node fed by the origin, the origin forwards only what may be: everything
                // it relays may be. At the origin, a member linked on another node publishes
                // there and the seats here say what may be forwarded.
                if r.origin.is_some() {
                    r.allowed.entry(publisher.clone()).or_insert(Permit {
                        audio: true,
                        video: true,
                        seat,
                        link: 0,
                        relayed: true,
                    });
                }
                pid
            }
        };
        let source = self.next_source;
        let key = format!("{kind}");
        let Some(receiving) = self
            .peers
            .get_mut(&sid)
            .and_then(|p| p.role.publisher_mut())
        else {
            return;
        };
        let rid_str = rid.clone().unwrap_or_default();
        let new_track = match receiving.track_mut(&key) {
            Some(track) if track.codec.mime_type.eq_ignore_ascii_case(&codec.mime_type) => {
                if !track.add_layer(&rid_str, ssrc, source) {
                    return;
                }
                if let Some(q) = layers::named(&rid_str)
                    && !track.simulcast.contains(&q)
                {
                    track.simulcast.push(q);
                }
                false
            }
            _ => {
                let mut track = InTrack::new(kind, codec.clone(), receiver, forwarded);
                track.add_layer(&rid_str, ssrc, source);
                if let Some(q) = layers::named(&rid_str) {
                    track.simulcast.push(q);
                }
                receiving.insert_track(key.clone(), track);
                true
            }
        };
        self.next_source += 1;
        if let Some(relay) = self.peers.get_mut(&id).and_then(|p| p.role.relay_in_mut()) {
            relay.tracks.insert(track_id, (sid, key));
        }
        debug!(%room, %publisher, ?kind, ?rid, "relayed stream opened");
        if new_track {
            self.track_added(now, &room, &publisher, kind, &codec);
        } else {
            self.allocate_publisher(now, &room, &publisher);
        }
    }

    /// Relayed streams no stand-in feeds (their publisher published here, or through another
    /// relay, when they arrived; or a local publisher took their stand-in's place since) are
    /// taken up where the place is free now. Run at a tick after a stream waited or a publish
    /// connection went.
    pub(crate) fn take_up_waiting(&mut self, now: Instant) {
        if !std::mem::take(&mut self.waiting) {
            return;
        }
        let mut unfed = Vec::new();
        for (id, p) in &self.peers {
            let Some(r) = p.role.relay_in() else {
                continue;
            };
            for (track, carried) in &r.streams {
                let fed = r
                    .tracks
                    .get(track)
                    .is_some_and(|(sid, _)| self.peers.contains_key(sid));
                if !fed {
                    unfed.push((*id, track.clone(), carried.clone()));
                }
            }
        }
        for (id, track, carried) in unfed {
            if let Some(r) = self.peers.get_mut(&id).and_then(|p| p.role.relay_in_mut()) {
                r.tracks.remove(&track);
            }
            self.take_up(now, id, track, carried);
        }
    }

    /// Relay `id` no longer carries rtc track `track`: its layer leaves the stand-in, and a
    /// stand-in track with no layer left leaves the node's subscribers.
    fn relay_track_closed(&mut self, now: Instant, id: PeerId, track: &str) {
        let Some((sid, key)) = self
            .peers
            .get_mut(&id)
            .and_then(|p| p.role.relay_in_mut())
            .and_then(|r| {
                r.streams.remove(track);
                r.tracks.remove(track)
            })
        else {
            return;
        };
        let still = self
            .peers
            .get(&id)
            .and_then(|p| p.role.relay_in())
            .is_some_and(|r| r.tracks.values().any(|(s, k)| *s == sid && *k == key));
        if still {
            // Another layer of the track goes on; the gone one simply stops sending.
            return;
        }
        let Some(stand_in) = self.peers.get_mut(&sid) else {
            return;
        };
        let (room, publisher) = (stand_in.room.clone(), stand_in.user.clone());
        let Some(receiving) = stand_in.role.publisher_mut() else {
            return;
        };
        let kind = receiving.remove_track(&key).map(|t| t.kind);
        let empty = !receiving.has_tracks();
        if kind.is_some() || empty {
            self.withdraw(now, &room, &publisher, kind, empty.then_some(sid));
        }
    }

    /// `publisher`'s tracks (of `kind`, or all) leave every subscriber and relay here; with
    /// `stand_in`, the stand-in goes too, and the permit this node gave it.
    fn withdraw(
        &mut self,
        now: Instant,
        room: &Ident,
        publisher: &Ident,
        kind: Option<RtpCodecKind>,
        stand_in: Option<PeerId>,
    ) {
        let subs = self
            .rooms
            .get(room)
            .map(|r| r.receivers())
            .unwrap_or_default();
        for s in subs {
            if self.remove_out_tracks(s, publisher, kind) {
                self.negotiate(now, s);
            }
        }
        if let Some(pid) = stand_in {
            if let Some(r) = self.rooms.get_mut(room) {
                // Only the permit given to the stand-in: the seats' (at the origin, or sent for
                // a member publishing on this node) is theirs to end.
                if r.allowed.get(publisher).is_some_and(|p| p.relayed) {
                    r.revoke(publisher);
                } else {
                    r.speakers.remove(publisher);
                }
            }
            self.remove_peer(pid);
        }
        self.rewire_watchers(now, room);
    }

    /// Close relay `id` here and take its publishers' tracks away from the node's subscribers.
    pub(crate) fn close_relay_in(&mut self, now: Instant, id: PeerId) {
        let tracks: Vec<String> = self
            .peers
            .get(&id)
            .and_then(|p| p.role.relay_in())
            .map(|r| r.tracks.keys().cloned().collect())
            .unwrap_or_default();
        for t in tracks {
            self.relay_track_closed(now, id, &t);
        }
        self.remove_peer(id);
        // Whatever stand-in is left of it (the connection was gone already).
        let left: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.role.stand_in().is_some_and(|s| s.via() == id))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in left {
            self.drop_stand_in(now, pid);
        }
    }

    /// A stand-in goes with its tracks: out of every subscriber here.
    fn drop_stand_in(&mut self, now: Instant, pid: PeerId) {
        let Some(p) = self.peers.get(&pid) else {
            return;
        };
        let (room, publisher) = (p.room.clone(), p.user.clone());
        self.withdraw(now, &room, &publisher, None, Some(pid));
    }
}
