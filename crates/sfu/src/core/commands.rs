//! Commands from signaling, applied by the core: seat changes, publish offers, subscribe
//! answers, rejoin, resume, resubscribe and trickled candidates.

use std::time::Instant;

use miclink_protocol::Ident;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tracing::{debug, info, warn};

use crate::core::answers::for_rtc;
use crate::core::{MAX_REMOTE_CANDIDATES, Output, Permit};
use crate::ids::PeerId;
use crate::sdp::{Purpose, Sdp};
use crate::{MediaChange, MediaCommand, MediaCore, MediaEvent, PcKind, SfuError};

impl MediaCore {
    pub(crate) fn command(&mut self, now: Instant, command: MediaCommand) {
        match command {
            MediaCommand::Seats(change) => self.seats(now, change),
            MediaCommand::Rejoin { room, user } => {
                info!(%room, %user, "rejoined: new connections");
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.own_offers.remove(&user);
                }
                // A stand-in for a publisher on a relay is the origin's to end, not this
                // node's: the member publishes there.
                if let Some(id) = self.room_peer(&room, &user, PcKind::Publish)
                    && self
                        .peers
                        .get(&id)
                        .is_some_and(|p| p.role.stand_in().is_none())
                {
                    self.remove_peer(id);
                }
                self.renew_subscribe(now, &room, &user);
            }
            MediaCommand::Resumed { room, user } => {
                let Some(sub) = self
                    .room_peer(&room, &user, PcKind::Subscribe)
                    .and_then(|id| self.peers.get(&id))
                    .and_then(|p| p.role.subscriber())
                else {
                    return;
                };
                if let Some(offer) = sub.pending_offer() {
                    self.outputs
                        .push_back(Output::Event(MediaEvent::SubscribeOffer {
                            room,
                            user,
                            sdp: offer.sdp.to_owned(),
                            new_connection: offer.new_connection,
                            offer_id: offer.offer_id,
                        }));
                }
            }
            MediaCommand::Publish {
                room,
                user,
                offer,
                reply,
            } => {
                let result = self.publish(now, &room, &user, offer);
                self.outputs
                    .push_back(Output::Event(MediaEvent::PublishAnswer { reply, result }));
            }
            MediaCommand::SubscribeAnswer {
                room,
                user,
                answer,
                offer_id,
                reply,
            } => {
                let result = self.subscribe_answer(now, &room, &user, answer, offer_id);
                self.outputs
                    .push_back(Output::Event(MediaEvent::Done { reply, result }));
            }
            MediaCommand::Resubscribe { room, user, reply } => {
                let member = self
                    .rooms
                    .get(&room)
                    .is_some_and(|r| r.members.contains(&user));
                let result = if member {
                    self.stats.subscribe_rebuilt += 1;
                    self.renew_subscribe(now, &room, &user);
                    Ok(())
                } else {
                    Err(SfuError::NotInRoom)
                };
                self.outputs
                    .push_back(Output::Event(MediaEvent::Done { reply, result }));
            }
            MediaCommand::SetSubscription {
                room,
                user,
                publisher,
                video,
                reply,
            } => {
                let result = self.set_subscription(now, &room, &user, &publisher, video);
                self.outputs
                    .push_back(Output::Event(MediaEvent::Done { reply, result }));
            }
            MediaCommand::Watch {
                room,
                user,
                offer,
                reply,
            } => {
                let result = self.watch(now, &room, &user, offer);
                self.outputs
                    .push_back(Output::Event(MediaEvent::PublishAnswer { reply, result }));
            }
            MediaCommand::OwnOffers { room, user } => {
                info!(%room, %user, "HTTP client: no subscribe offers");
                self.rooms
                    .entry(room.clone())
                    .or_default()
                    .own_offers
                    .insert(user.clone());
                if let Some(id) = self.room_peer(&room, &user, PcKind::Subscribe) {
                    self.remove_peer(id);
                }
                self.rebuilds
                    .retain(|(_, r, u)| !(*r == room && *u == user));
            }
            MediaCommand::RelayOpen { room, node } => {
                if let Err(e) = self.relay_open(now, &room, node.clone()) {
                    warn!(%room, %node, error = %e, "could not open a relay");
                    // The other node asks again a little later.
                    self.outputs
                        .push_back(Output::Event(MediaEvent::RelayEnded {
                            room,
                            node,
                            sending: true,
                        }));
                }
            }
            MediaCommand::RelayAnswer {
                room,
                node,
                sdp,
                offer_id,
            } => {
                if let Err(e) = self.relay_answer(now, &room, &node, sdp, offer_id) {
                    debug!(%room, %node, error = %e, "relay answer refused");
                }
            }
            MediaCommand::RelayOffer {
                room,
                node,
                sdp,
                offer_id,
                fresh,
            } => match self.relay_offer(now, &room, &node, &sdp, fresh) {
                Ok(sdp) => self
                    .outputs
                    .push_back(Output::Event(MediaEvent::RelayAnswer {
                        room,
                        node,
                        sdp,
                        offer_id,
                    })),
                Err(e) => {
                    warn!(%room, %node, error = %e, "relay offer refused");
                    // The other end must not wait for an answer that never comes.
                    self.outputs
                        .push_back(Output::Event(MediaEvent::RelayEnded {
                            room,
                            node,
                            sending: false,
                        }));
                }
            },
            MediaCommand::RelayClose { room, node } => self.relay_close(now, &room, &node),
            MediaCommand::RelayFrom { room, node } => {
                self.rooms.entry(room).or_default().origin = Some(node);
            }
            MediaCommand::SubscribeElsewhere {
                room,
                user,
                elsewhere,
                encoder,
            } => {
                let r = self.rooms.entry(room.clone()).or_default();
                if elsewhere {
                    // Never a connection offered from here, whatever a rejoin asks.
                    r.elsewhere.insert(user.clone());
                    if let Some(id) = self.room_peer(&room, &user, PcKind::Subscribe) {
                        self.remove_peer(id);
                    }
                    // Its stand-in (fed by the node now serving it) stays; the seats' permit
                    // stays for that stand-in. So does an encoder's connection.
                    if !encoder
                        && let Some(id) = self.room_peer(&room, &user, PcKind::Publish)
                        && self
                            .peers
                            .get(&id)
                            .is_some_and(|p| p.role.stand_in().is_none())
                    {
                        self.remove_peer(id);
                    }
                    self.rebuilds
                        .retain(|(_, r, u)| !(*r == room && *u == user));
                } else if r.elsewhere.remove(&user) {
                    // The client's subscribe connection was with the other node: the one
                    // offered here is a new one.
                    r.subscribed_before.insert(user.clone());
                    self.ensure_subscribe(now, &room, &user);
                }
            }
            MediaCommand::NewConnection { room, user } => {
                self.rooms
                    .entry(room)
                    .or_default()
                    .subscribed_before
                    .insert(user);
            }
            MediaCommand::Candidate {
                room,
                user,
                pc,
                candidate,
            } => {
                let Some(p) = self
                    .room_peer(&room, &user, pc)
                    .and_then(|id| self.peers.get_mut(&id))
                else {
                    return;
                };
                if p.remote_candidates >= MAX_REMOTE_CANDIDATES {
                    return;
                }
                p.remote_candidates += 1;
                let init = RTCIceCandidateInit {
                    candidate,
                    ..Default::default()
                };
                if let Err(e) = p.pc.add_remote_candidate(init) {
                    debug!(parent: &p.span, error = %e, "remote candidate refused");
                }
            }
        }
    }

    pub(crate) fn seats(&mut self, now: Instant, change: MediaChange) {
        match change {
            MediaChange::AllowPublish {
                room,
                user,
                seat,
                audio,
                video,
                link,
            } => {
                // A pushed publisher's stream may wait for this permit (see `take_up`).
                self.waiting = true;
                let r = self.rooms.entry(room).or_default();
                let before = r.allowed.insert(
                    user.clone(),
                    Permit {
                        audio,
                        video,
                        seat,
                        link,
                        relayed: false,
                    },
                );
                // A kind muted now: each subscriber's stream of it pauses, so that when it comes
                // back it restarts at a keyframe with continuous numbers instead of a gap that
                // reads as loss (rule 12: nothing muted is forwarded, whatever keeps arriving).
                let (was_audio, was_video) = before.map_or((false, false), |p| (p.audio, p.video));
                let subs: Vec<PeerId> = r.subscribe.values().copied().collect();
                let relays: Vec<PeerId> = r.relays.values().copied().collect();
                for (kind, was, is) in [
                    (RtpCodecKind::Audio, was_audio, audio),
                    (RtpCodecKind::Video, was_video, video),
                ] {
                    if was && !is {
                        // Muted audio is not heard: out of the speakers at the next look.
                        if kind == RtpCodecKind::Audio {
                            r.speakers.remove(&user);
                        }
                        for sid in &subs {
                            if let Some(out) = self.peers.get_mut(sid).and_then(|p| {
                                p.role
                                    .subscriber_mut()?
                                    .out_mut(&(user.clone(), kind, None))
                            }) {
                                out.munger.pause();
                            }
                        }
                        // A relay carries each layer as a stream of its own.
                        for sid in &relays {
                            if let Some(sending) = self
                                .peers
                                .get_mut(sid)
                                .and_then(|p| p.role.subscriber_mut())
                            {
                                for ((p, k, _), out) in sending.outs_mut() {
                                    if *p == user && *k == kind {
                                        out.munger.pause();
                                    }
                                }
                            }
                        }
                    }
                }
            }
            MediaChange::RevokePublish { room, user } => self.revoke(now, &room, &user),
            MediaChange::Subscribe { room, user } => {
                self.rooms
                    .entry(room.clone())
                    .or_default()
                    .members
                    .insert(user.clone());
                self.ensure_subscribe(now, &room, &user);
            }
            MediaChange::Unsubscribe { room, user } => {
                self.revoke(now, &room, &user);
                if let Some(id) = self.room_peer(&room, &user, PcKind::Subscribe) {
                    self.remove_peer(id);
                }
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.leave(&user);
                }
                self.rebuilds
                    .retain(|(_, r, u)| !(*r == room && *u == user));
                self.unconnected.remove(&(room.clone(), user.clone()));
                self.last_rebuild.remove(&(room, user));
            }
            MediaChange::CloseRoom { room } => {
                if let Some(r) = self.rooms.remove(&room) {
                    for id in r
                        .publish
                        .into_values()
                        .chain(r.subscribe.into_values())
                        .chain(r.relays.into_values())
                        .chain(r.relays_in.into_values())
                    {
                        self.remove_peer(id);
                    }
                }
                self.rebuilds.retain(|(_, r, _)| *r != room);
                self.last_rebuild.retain(|(r, _), _| *r != room);
                self.unconnected.retain(|(r, _), _| *r != room);
            }
        }
    }

    pub(crate) fn revoke(&mut self, now: Instant, room: &Ident, user: &Ident) {
        // On a node fed by a relay the origin decides who publishes: a member served here who
        // publishes there keeps their stand-in when their media here ends.
        let fed = self.rooms.get(room).is_some_and(|r| r.origin.is_some());
        if fed
            && self
                .room_peer(room, user, PcKind::Publish)
                .is_some_and(|id| {
                    self.peers
                        .get(&id)
                        .is_some_and(|p| p.role.stand_in().is_some())
                })
        {
            return;
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.revoke(user);
        let publish = r.publish.get(user).copied();
        let subs = r.receivers();
        if let Some(id) = publish {
            self.remove_peer(id);
        }
        // Their tracks leave every subscribe connection; WHEP viewers' places pass on.
        for sid in subs {
            if self
                .peers
                .get(&sid)
                .is_some_and(|p| p.role.slots().is_some())
            {
                continue;
            }
            if self.remove_out_tracks(sid, user, None) {
                self.negotiate(now, sid);
            }
        }
        self.rewire_watchers(now, room);
    }

    pub(crate) fn publish(
        &mut self,
        now: Instant,
        room: &Ident,
        user: &Ident,
        offer: String,
    ) -> Result<String, SfuError> {
        let allowed = self
            .rooms
            .get(room)
            .is_some_and(|r| r.allowed.contains_key(user));
        if !allowed {
            return Err(SfuError::NotAllowed);
        }
        let shape = Sdp::checked(&offer, Purpose::Publish)?;
        let (audio, video) = shape.sending();
        let kinds = (audio > 0, video > 0);
        let simulcast = shape.layers_sent();
        let offer = RTCSessionDescription::offer(for_rtc(&offer))
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let republish = self.room_peer(room, user, PcKind::Publish).is_some();
        let link = self
            .rooms
            .get(room)
            .and_then(|r| r.allowed.get(user))
            .map_or(0, |p| p.link);
        let id = self.new_peer(now, room, user, PcKind::Publish, republish)?;
        if let Some(publisher) = self.peers.get_mut(&id).and_then(|p| p.role.publisher_mut()) {
            publisher.set_up(link, simulcast);
        }
        let sdp = self.answer_offer(now, id, Some(offer))?;
        let old = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.publish.insert(user.clone(), id));
        if let Some(old) = old {
            // A republish: the old connection goes; subscribers keep their senders and carry on
            // from the new connection's first keyframe, except for kinds no longer offered.
            self.stats.republished += 1;
            self.remove_peer(old);
            let subs = self
                .rooms
                .get(room)
                .map_or_else(Vec::new, |r| r.receivers());
            for sid in subs {
                let mut changed = false;
                for (kind, offered) in [
                    (RtpCodecKind::Audio, kinds.0),
                    (RtpCodecKind::Video, kinds.1),
                ] {
                    if !offered {
                        changed |= self.remove_out_tracks(sid, user, Some(kind));
                    }
                }
                if changed {
                    self.negotiate(now, sid);
                }
            }
        }
        self.outputs.push_back(Output::Event(MediaEvent::Published {
            room: room.clone(),
            user: user.clone(),
            audio: kinds.0,
            video: kinds.1,
            link,
        }));
        self.process(now, id);
        Ok(sdp)
    }
}
