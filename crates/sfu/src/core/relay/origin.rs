//! A relay's origin end: the room's node opens a relay connection to another node that wants
//! the room, carries every published stream on it (each layer pinned to a stream of its own)
//! and offers it again when the streams change.

use crate::core::MAX_RELAYS;
use crate::ids::PeerId;
use crate::layers;
use crate::relay::{relay_label, relay_track_id};
use crate::{MediaCore, PcKind, SfuError};
use miclink_protocol::Ident;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use std::time::Instant;
use tracing::info;

impl MediaCore {
    /// Node `node` wants `room`'s media: a new relay connection carrying every published
    /// stream (an older one of that node goes), offered with [`MediaEvent::RelayOffer`].
    pub(crate) fn relay_open(
        &mut self,
        now: Instant,
        room: &Ident,
        node: String,
    ) -> Result<(), SfuError> {
        let label = relay_label(&node)?;
        let old = self
            .rooms
            .get(room)
            .and_then(|r| r.relays.get(&node))
            .copied();
        if let Some(old) = old {
            self.remove_peer(old);
        } else if self
            .rooms
            .get(room)
            .is_some_and(|r| r.relays.len() >= MAX_RELAYS)
        {
            return Err(SfuError::AtCapacity);
        }
        let id = self.new_peer(now, room, &label, PcKind::Subscribe, old.is_some())?;
        if let Some(p) = self.peers.get_mut(&id) {
            p.role.relay_out(node.clone());
            if let Some(s) = p.role.subscriber_mut() {
                s.set_new_connection(true);
            }
        }
        info!(%room, %node, "relay to another node opened");
        self.rooms
            .entry(room.clone())
            .or_default()
            .relays
            .insert(node, id);
        let publishers: Vec<Ident> = self
            .rooms
            .get(room)
            .map(|r| r.publish.keys().cloned().collect())
            .unwrap_or_default();
        let mut any = false;
        for publisher in publishers {
            any |= self.relay_publisher(id, room, &publisher);
        }
        // An offer with nothing to carry names no candidate: the first track makes one.
        if any {
            self.negotiate(now, id);
        }
        Ok(())
    }

    /// Give relay `sid` a pinned sender for every stream of `publisher`'s tracks it lacks;
    /// whether any was added.
    pub(crate) fn relay_publisher(&mut self, sid: PeerId, room: &Ident, publisher: &Ident) -> bool {
        let Some(r) = self.rooms.get(room) else {
            return false;
        };
        let seat = r.allowed.get(publisher).map_or(u32::MAX, |p| p.seat);
        let Some(p) = r.publish.get(publisher).and_then(|pid| self.peers.get(pid)) else {
            return false;
        };
        // A publisher that came from that node (its stand-in here is fed by a relay from
        // there) is not sent back.
        let to = self.peers.get(&sid).and_then(|s| s.role.relay_to());
        let from = p
            .role
            .stand_in()
            .and_then(|s| self.peers.get(&s.via()))
            .and_then(|v| v.role.relay_in())
            .map(|r| r.node.as_str());
        if to.is_some() && to == from {
            return false;
        }
        let mut streams: Vec<(RtpCodecKind, RTCRtpCodec, Option<String>)> = Vec::new();
        for t in p.role.publisher().into_iter().flat_map(|p| p.tracks()) {
            let mut rids: Vec<Option<String>> = t
                .layers
                .iter()
                .map(|l| (!l.rid.is_empty()).then(|| l.rid.clone()))
                .collect();
            // Announced layers the origin has not seen yet: carried from the start, so the
            // other node can ask for them (dynacast) before they first send.
            for q in &t.simulcast {
                let rid = Some(layers::rid_of(*q).to_owned());
                if !rids.contains(&rid) {
                    rids.push(rid);
                }
            }
            for rid in rids {
                streams.push((t.kind, t.codec.clone(), rid));
            }
        }
        let mut added = false;
        for (kind, codec, rid) in streams {
            let key = (publisher.clone(), kind, rid.clone());
            if self
                .peers
                .get(&sid)
                .is_none_or(|s| s.role.subscriber().is_none_or(|o| o.has_out(&key)))
            {
                continue;
            }
            let Some(out) = self.new_out_track(sid, publisher.as_str(), kind, &codec, |ssrc| {
                relay_track_id(seat, rid.as_deref(), ssrc)
            }) else {
                continue;
            };
            if let Some(sending) = self
                .peers
                .get_mut(&sid)
                .and_then(|s| s.role.subscriber_mut())
            {
                sending.insert_out(key, out);
                added = true;
            }
        }
        added
    }

    /// Every relay of `room` carries `publisher`'s streams; those that changed get an offer.
    pub(crate) fn relay_all(&mut self, now: Instant, room: &Ident, publisher: &Ident) {
        for sid in self.relays_of(room) {
            if self.relay_publisher(sid, room, publisher) {
                self.negotiate(now, sid);
            }
        }
    }

    pub(crate) fn relays_of(&self, room: &Ident) -> Vec<PeerId> {
        self.rooms
            .get(room)
            .map(|r| r.relays.values().copied().collect())
            .unwrap_or_default()
    }

    /// Node `node`'s answer to its relay's offer.
    pub(crate) fn relay_answer(
        &mut self,
        now: Instant,
        room: &Ident,
        node: &str,
        sdp: String,
        offer_id: u64,
    ) -> Result<(), SfuError> {
        let id = self
            .rooms
            .get(room)
            .and_then(|r| r.relays.get(node))
            .copied()
            .ok_or(SfuError::NoOffer)?;
        self.apply_answer(now, id, sdp, Some(offer_id))
    }
}
