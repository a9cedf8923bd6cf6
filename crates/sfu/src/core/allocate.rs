//! Which stream of each publisher's track each subscriber gets (rule 14), what subscribers are
//! told about it (`subscription_state`), and which simulcast layers publishers are told anyone
//! watches (`publisher_layers`, dynacast).
//!
//! A subscriber's wish per publisher (`set_subscription`, default "high") is its ceiling; the
//! stream chosen is the best one sending within it ([`layers::select`]). The choice is made
//! again when a stream opens or a simulcast layer starts sending, a wish changes, an answer is
//! applied, and every [`ALLOCATE_INTERVAL`] (layers stop, estimates move). A new choice takes
//! effect at the next keyframe of the chosen stream, which is asked for at once (unless one is
//! arriving). A changed wish reaches the publisher (dynacast) at once.

use std::time::{Duration, Instant};

use miclink_protocol::{Ident, SubscriptionReason, VideoQuality};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

use crate::budget::{self, Want};
use crate::ids::PeerId;
use crate::{MediaCore, MediaEvent, Output, PcKind, SfuError, layers};

/// How often every subscriber's streams are chosen again.
pub(crate) const ALLOCATE_INTERVAL: Duration = Duration::from_millis(500);

/// After a subscriber was moved down for bandwidth, it is not moved up again for this long: a
/// path that just proved too narrow is not tried again at once.
pub(crate) const UPGRADE_HOLD: Duration = Duration::from_secs(5);

/// Wishes one subscriber may hold: one per seat is all an honest client needs; more would let
/// one client grow the server's state with every member of a large room.
pub(crate) const MAX_WISHES: usize = 16;

impl MediaCore {
    /// `set_subscription`: `user` wants at most `video` of `publisher`'s video.
    pub(crate) fn set_subscription(
        &mut self,
        now: Instant,
        room: &Ident,
        user: &Ident,
        publisher: &Ident,
        video: VideoQuality,
    ) -> Result<(), SfuError> {
        let r = self.rooms.get_mut(room).ok_or(SfuError::NotInRoom)?;
        if !r.members.contains(user) {
            return Err(SfuError::NotInRoom);
        }
        // A node fed by a relay knows the room's other members only once they publish; the
        // wish stands for whoever it names (wishes are capped).
        let known = r.members.contains(publisher) || r.origin.is_some();
        if !known || publisher == user {
            return Err(SfuError::UnknownUser);
        }
        let wishes = r.wishes.entry(user.clone()).or_default();
        match wishes.iter_mut().find(|(p, _)| p == publisher) {
            Some(w) => w.1 = video,
            None => {
                if wishes.len() >= MAX_WISHES {
                    // The oldest wish about somebody without a seat goes first, else the oldest.
                    let stale = wishes
                        .iter()
                        .position(|(p, _)| !r.allowed.contains_key(p))
                        .unwrap_or(0);
                    wishes.remove(stale);
                }
                wishes.push((publisher.clone(), video));
            }
        }
        if let Some(sid) = self.room_peer(room, user, PcKind::Subscribe) {
            self.allocate_subscriber(now, sid);
        }
        Ok(())
    }

    /// Choose again for every subscriber of `publisher` (each subscriber's tracks share its
    /// bandwidth, so all of them are chosen again).
    pub(crate) fn allocate_publisher(&mut self, now: Instant, room: &Ident, publisher: &Ident) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let subscribers: Vec<PeerId> = r
            .subscribe
            .iter()
            .filter(|(member, _)| *member != publisher)
            .map(|(_, sid)| *sid)
            .collect();
        let mut rewished = vec![publisher.clone()];
        for sid in subscribers {
            rewished.extend(self.choose_streams(now, sid));
        }
        // Each publisher's layers are counted once, however many subscribers changed a wish.
        rewished.sort_unstable();
        rewished.dedup();
        for p in rewished {
            self.dynacast(room, &p);
        }
    }

    /// Every subscriber and publisher of the loop, every [`ALLOCATE_INTERVAL`]; whether it
    /// was time.
    pub(crate) fn allocate_all(&mut self, now: Instant) -> bool {
        if self
            .allocated_at
            .is_some_and(|t| now.saturating_duration_since(t) < ALLOCATE_INTERVAL)
        {
            return false;
        }
        self.allocated_at = Some(now);
        let rooms: Vec<Ident> = self.rooms.keys().cloned().collect();
        for room in rooms {
            let Some(r) = self.rooms.get(&room) else {
                continue;
            };
            let subscribers: Vec<PeerId> = r.subscribe.values().copied().collect();
            let publishers: Vec<Ident> = r.publish.keys().cloned().collect();
            // Every publisher's layers are counted below: changed wishes need no pass of their own.
            for sid in subscribers {
                self.choose_streams(now, sid);
            }
            for publisher in publishers {
                self.dynacast(&room, &publisher);
            }
        }
        true
    }

    /// [`Self::choose_streams`] for subscribe connection `sid`, then a changed wish reaches its
    /// publisher now rather than at the next round: a publisher nobody watched has paused its
    /// video, and a new viewer's first frame waits for it to start again.
    pub(crate) fn allocate_subscriber(&mut self, now: Instant, sid: PeerId) {
        let Some(room) = self.peers.get(&sid).map(|p| p.room.clone()) else {
            return;
        };
        for publisher in self.choose_streams(now, sid) {
            self.dynacast(&room, &publisher);
        }
    }

    /// Choose the stream of every track of subscribe connection `sid` within its estimated
    /// bandwidth ([`budget`]), tell the subscriber what changed, and ask publishers for the
    /// keyframes the switches wait for. Returns the publishers whose video this subscriber now
    /// wishes otherwise (for [`Self::dynacast`]).
    fn choose_streams(&mut self, now: Instant, sid: PeerId) -> Vec<Ident> {
        let Some(sub) = self.peers.get(&sid) else {
            return Vec::new();
        };
        let Some(r) = self.rooms.get(&sub.room) else {
            return Vec::new();
        };
        let Some(sending) = sub.role.subscriber() else {
            return Vec::new();
        };
        let figures = sending.figures();
        let estimate = figures.estimate;
        let speaking = r.speakers.current();
        let mut wants = Vec::with_capacity(sending.out_count());
        for (key, out) in sending.outs() {
            let (publisher, kind, _) = key;
            let Some((pid, track_id, track)) = r.publish.get(publisher).and_then(|pid| {
                let p = self.peers.get(pid)?;
                let (id, t) = p.role.publisher()?.track_of(*kind)?;
                Some((*pid, id.clone(), t))
            }) else {
                continue;
            };
            let ceiling = match kind {
                RtpCodecKind::Video => r
                    .wishes
                    .get(&sub.user)
                    .and_then(|w| w.iter().find(|(p, _)| p == publisher))
                    .map_or(VideoQuality::High, |w| w.1),
                _ => VideoQuality::High,
            };
            let qualities = track.qualities();
            let seat = r.allowed.get(publisher).map_or(u32::MAX, |p| p.seat);
            let speaker = speaking.iter().position(|u| u == publisher);
            wants.push(Want {
                key: key.clone(),
                pid,
                track_id,
                ceiling,
                // The anchor, then who speaks (loudest first), then seat order.
                priority: (seat != 0, speaker.unwrap_or(usize::MAX), seat),
                ladder: budget::ladder(&track.layers, &qualities, ceiling, now),
                audio: *kind != RtpCodecKind::Video,
                current: out.munger.source(),
                held: out
                    .downgraded
                    .is_some_and(|t| now.saturating_duration_since(t) < UPGRADE_HOLD),
                quality: out.reported.map(|r| r.0),
            });
        }
        let plan = budget::plan(&mut wants, estimate);
        let (room, user) = (sub.room.clone(), sub.user.clone());
        let mut chosen = Vec::with_capacity(wants.len());
        for (want, step) in wants.iter().zip(&plan.steps) {
            let Some(track) = self
                .peers
                .get(&want.pid)
                .and_then(|p| p.role.publisher()?.track(&want.track_id))
            else {
                continue;
            };
            let qualities = track.qualities();
            let sending = track.layers.iter().any(|l| l.active(now));
            let (wish, state) = match step {
                _ if want.ceiling == VideoQuality::Off => (
                    VideoQuality::Off,
                    (VideoQuality::Off, SubscriptionReason::Requested),
                ),
                _ if !sending && !want.audio => (
                    want.ceiling,
                    (VideoQuality::Off, SubscriptionReason::Unavailable),
                ),
                budget::Step::Paused => (
                    VideoQuality::Off,
                    (VideoQuality::Off, SubscriptionReason::Bandwidth),
                ),
                budget::Step::Layer { quality, limited } => {
                    let reason = if *limited {
                        SubscriptionReason::Bandwidth
                    } else {
                        SubscriptionReason::Requested
                    };
                    (*quality, (*quality, reason))
                }
            };
            // What the publisher should send for this subscriber (dynacast): all its wish when
            // everything within it fit, what fitted when bandwidth limits it; not merely what
            // is sending now (a layer nobody asked for yet is paused, and would stay so).
            let asked = match step {
                budget::Step::Layer { limited: true, .. } | budget::Step::Paused => wish,
                _ => want.ceiling,
            };
            let target = layers::select(&track.layers, &qualities, wish, want.current, now);
            let state = match target {
                // What select settled on (it may be below the wish while a layer warms up).
                Some(t) if state.0 != VideoQuality::Off => {
                    let at = track.layers.iter().position(|l| l.source == t);
                    (at.map_or(state.0, |i| qualities[i]), state.1)
                }
                _ => state,
            };
            chosen.push((
                want.key.clone(),
                target,
                asked,
                state,
                want.pid,
                want.track_id.clone(),
            ));
        }
        let Some(sub) = self
            .peers
            .get_mut(&sid)
            .and_then(|p| p.role.subscriber_mut())
        else {
            return Vec::new();
        };
        sub.planned(plan.short, plan.desired);
        let mut keyframes = Vec::new();
        let mut rewished = Vec::new();
        for (key, target, wish, state, pid, track_id) in chosen {
            let Some(out) = sub.out_mut(&key) else {
                continue;
            };
            if out.target != target {
                tracing::debug!(subscriber = %user, publisher = %key.0, ?target, was = ?out.target, ?figures, "target stream");
                out.target = target;
                match target {
                    None => out.munger.pause(),
                    Some(t) if out.munger.source() != Some(t) => {
                        keyframes.push((pid, track_id, t));
                    }
                    Some(_) => {}
                }
            }
            if key.1 == RtpCodecKind::Video && out.wish != wish {
                rewished.push(key.0.clone());
            }
            out.wish = wish;
            if key.1 != RtpCodecKind::Video || out.reported == Some(state) {
                continue;
            }
            if out.reported.is_some_and(|(q, _)| state.0 < q)
                && state.1 == SubscriptionReason::Bandwidth
            {
                out.downgraded = Some(now);
            }
            out.reported = Some(state);
            self.stats.subscription_changes += 1;
            self.outputs
                .push_back(Output::Event(MediaEvent::SubscriptionState {
                    room: room.clone(),
                    user: user.clone(),
                    publisher: key.0.clone(),
                    video: state.0,
                    reason: state.1,
                }));
        }
        for (pid, track_id, source) in keyframes {
            self.request_keyframe(now, pid, &track_id, source);
        }
        rewished
    }

    /// Tell `publisher` which layers of its video anyone watches or is about to, when that
    /// changed: what each subscriber is on, and what its wish would get were every layer
    /// sending (so a layer the publisher paused comes back when somebody wants it).
    pub(crate) fn dynacast(&mut self, room: &Ident, publisher: &Ident) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let Some(pid) = r.publish.get(publisher).copied() else {
            return;
        };
        // A relayed publisher hears from its origin, which counts this node's relay.
        if self
            .peers
            .get(&pid)
            .is_some_and(|p| p.role.stand_in().is_some())
        {
            return;
        }
        let Some(track) = self.peers.get(&pid).and_then(|p| {
            p.role
                .publisher()?
                .track_of(RtpCodecKind::Video)
                .map(|(_, t)| t)
        }) else {
            return;
        };
        let qualities = track.qualities();
        // A publisher whose offer named its layers is asked for them by name, seen or not: a
        // browser starts its top layer only once its own estimate allows, and one paused
        // before the server saw it would never be seen.
        let possible = if track.simulcast.is_empty() {
            &qualities
        } else {
            &track.simulcast
        };
        let key = (publisher.clone(), RtpCodecKind::Video, None);
        let mut watched: Vec<VideoQuality> = Vec::new();
        for (member, sid) in &r.subscribe {
            if member == publisher {
                continue;
            }
            let Some(out) = self
                .peers
                .get(sid)
                .and_then(|s| s.role.subscriber()?.out(&key))
            else {
                continue;
            };
            // Off by request or paused for bandwidth. A subscriber waiting because nothing
            // sends still counts: its wish is what brings a paused publisher back.
            if out.wish == VideoQuality::Off {
                continue;
            }
            let on = out
                .target
                .and(out.munger.source())
                .and_then(|s| track.layers.iter().position(|l| l.source == s))
                .map(|i| qualities[i]);
            let wished = possible
                .iter()
                .copied()
                .filter(|q| *q <= out.wish)
                .max()
                .or_else(|| possible.iter().copied().min());
            watched.extend(on.into_iter().chain(wished));
        }
        // Relays to other nodes carry every layer: their subscribers choose there.
        if !r.relays.is_empty() {
            watched.extend(possible.iter().copied());
        }
        watched.sort_unstable();
        watched.dedup();
        let Some(track) = self
            .peers
            .get_mut(&pid)
            .and_then(|p| p.role.publisher_mut()?.track_of_mut(RtpCodecKind::Video))
        else {
            return;
        };
        if track.watched.as_ref() == Some(&watched) {
            return;
        }
        track.watched = Some(watched.clone());
        self.stats.publisher_layer_changes += 1;
        self.outputs
            .push_back(Output::Event(MediaEvent::PublisherLayers {
                room: room.clone(),
                user: publisher.clone(),
                video: watched,
            }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CoreConfig, MediaChange, MediaCommand, ReplyTo};

    fn id(s: &str) -> Ident {
        Ident::new(s).expect("id")
    }

    fn core() -> MediaCore {
        MediaCore::new(CoreConfig {
            loop_index: 0,
            loops: 1,
            public: vec!["127.0.0.1:9".parse().expect("addr")],
            max_peers: 100,
            tcp_port: None,
        })
        .expect("core")
    }

    fn join(core: &mut MediaCore, now: Instant, user: &str) {
        core.handle_command(
            now,
            MediaCommand::Seats(MediaChange::Subscribe {
                room: id("r"),
                user: id(user),
            }),
        );
    }

    fn wish(
        core: &mut MediaCore,
        now: Instant,
        user: &str,
        publisher: &str,
    ) -> Result<(), SfuError> {
        core.handle_command(
            now,
            MediaCommand::SetSubscription {
                room: id("r"),
                user: id(user),
                publisher: id(publisher),
                video: VideoQuality::Low,
                reply: ReplyTo { conn: 1, id: 1 },
            },
        );
        loop {
            match core.poll_output() {
                Some(Output::Event(MediaEvent::Done { result, .. })) => return result,
                Some(_) => continue,
                None => panic!("no reply"),
            }
        }
    }

    #[test]
    fn one_subscriber_holds_a_bounded_number_of_wishes_about_members_only() {
        let now = Instant::now();
        let mut core = core();
        join(&mut core, now, "viewer");
        for i in 0..100 {
            join(&mut core, now, &format!("m{i}"));
        }
        for i in 0..100 {
            wish(&mut core, now, "viewer", &format!("m{i}")).expect("a member");
        }
        let r = &core.rooms[&id("r")];
        let wishes = &r.wishes[&id("viewer")];
        assert_eq!(wishes.len(), MAX_WISHES);
        assert_eq!(
            wishes.last().map(|w| w.0.as_str()),
            Some("m99"),
            "the newest kept"
        );
        assert_eq!(
            wish(&mut core, now, "viewer", "stranger"),
            Err(SfuError::UnknownUser)
        );
        assert_eq!(
            wish(&mut core, now, "viewer", "viewer"),
            Err(SfuError::UnknownUser)
        );
        assert_eq!(
            wish(&mut core, now, "stranger", "m1"),
            Err(SfuError::NotInRoom)
        );
        // A member who leaves takes their wishes and everybody's wishes about them along.
        core.handle_command(
            now,
            MediaCommand::Seats(MediaChange::Unsubscribe {
                room: id("r"),
                user: id("m99"),
            }),
        );
        let wishes = &core.rooms[&id("r")].wishes[&id("viewer")];
        assert!(wishes.iter().all(|w| w.0.as_str() != "m99"));
        assert_eq!(wishes.len(), MAX_WISHES - 1);
    }
}
