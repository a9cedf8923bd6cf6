//! A room's media state in the core ([`RoomMedia`]): who the seats allow to publish
//! ([`Permit`]), its members, their connections, wishes and speakers, and its relays.

use std::collections::{HashMap, HashSet};

use miclink_protocol::Ident;

use crate::ids::PeerId;
use crate::speakers::Speakers;

#[derive(Default)]
pub(crate) struct RoomMedia {
    /// Who the seats allow to publish, and on what terms.
    pub(crate) allowed: HashMap<Ident, Permit>,
    pub(crate) members: HashSet<Ident>,
    /// Members who had a subscribe connection: their next one is a new connection.
    pub(crate) subscribed_before: HashSet<Ident>,
    /// HTTP clients ([`crate::MediaCommand::OwnOffers`]): never a server-offered connection.
    pub(crate) own_offers: HashSet<Ident>,
    /// Members whose subscribe connection another node of the cluster makes
    /// ([`crate::MediaCommand::SubscribeElsewhere`]).
    pub(crate) elsewhere: HashSet<Ident>,
    pub(crate) publish: HashMap<Ident, PeerId>,
    pub(crate) subscribe: HashMap<Ident, PeerId>,
    pub(crate) speakers: Speakers,
    /// `set_subscription` wishes: subscriber -> (publisher, highest layer wanted), oldest
    /// first, at most [`crate::core::allocate::MAX_WISHES`] each.
    pub(crate) wishes: HashMap<Ident, Vec<(Ident, miclink_protocol::VideoQuality)>>,
    /// Origin: relay connections to other nodes, by node.
    pub(crate) relays: HashMap<String, PeerId>,
    /// Relay connections from other nodes, by node: at another node, the one from the room's
    /// origin; at the origin, those pushing the publishers of members linked elsewhere.
    pub(crate) relays_in: HashMap<String, PeerId>,
    /// Another node: the room's origin, whose relay feeds it ([`crate::MediaCommand::RelayFrom`]).
    pub(crate) origin: Option<String>,
}

/// What the seats allow one publisher ([`crate::MediaChange::AllowPublish`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Permit {
    /// What may be forwarded now.
    pub(crate) audio: bool,
    pub(crate) video: bool,
    /// Lower seats come first when video must be shed.
    pub(crate) seat: u32,
    /// The seats' number of this seating, echoed in publish reports.
    pub(crate) link: u64,
    /// Given to a stand-in on a node fed by the origin (everything relayed may be
    /// forwarded), not by the seats: it goes with the stand-in, and never overrides theirs.
    pub(crate) relayed: bool,
}

impl Permit {
    pub(crate) fn forwards(&self, kind: rtc::rtp_transceiver::rtp_sender::RtpCodecKind) -> bool {
        use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
        match kind {
            RtpCodecKind::Audio => self.audio,
            RtpCodecKind::Video => self.video,
            _ => false,
        }
    }
}

impl RoomMedia {
    /// `user`'s connection of `kind` in the room, if any.
    pub(crate) fn connection(&self, user: &Ident, kind: crate::PcKind) -> Option<PeerId> {
        match kind {
            crate::PcKind::Publish => self.publish.get(user),
            crate::PcKind::Subscribe => self.subscribe.get(user),
        }
        .copied()
    }

    /// The members but `user`.
    pub(crate) fn others(&self, user: &Ident) -> Vec<Ident> {
        self.members
            .iter()
            .filter(|m| *m != user)
            .cloned()
            .collect()
    }

    /// Every connection that sends the room's media on: members' subscribe connections and
    /// relays to other nodes.
    pub(crate) fn receivers(&self) -> Vec<PeerId> {
        self.subscribe
            .values()
            .chain(self.relays.values())
            .copied()
            .collect()
    }

    /// `user` may no longer publish: its permit and its place among the speakers go.
    pub(crate) fn revoke(&mut self, user: &Ident) {
        self.allowed.remove(user);
        self.speakers.remove(user);
    }

    /// `user` left the room: everything the room knew of them as a member goes, their
    /// wishes and everybody's wishes about them too.
    pub(crate) fn leave(&mut self, user: &Ident) {
        self.members.remove(user);
        self.subscribed_before.remove(user);
        self.own_offers.remove(user);
        self.elsewhere.remove(user);
        self.wishes.remove(user);
        for wishes in self.wishes.values_mut() {
            wishes.retain(|(p, _)| p != user);
        }
    }

    /// Connection `id` (`user`'s of `kind`, or the relay to or from `node`) closed; whether it
    /// was the member's current one (not one a newer connection replaced).
    pub(crate) fn closed(
        &mut self,
        id: PeerId,
        user: &Ident,
        kind: crate::PcKind,
        relay: Option<(&str, bool)>,
    ) -> bool {
        let map = match (relay, kind) {
            (Some((node, true)), _) => {
                if self.relays.get(node) == Some(&id) {
                    self.relays.remove(node);
                }
                return false;
            }
            (Some((node, false)), _) => {
                if self.relays_in.get(node) == Some(&id) {
                    self.relays_in.remove(node);
                }
                return false;
            }
            (None, crate::PcKind::Publish) => &mut self.publish,
            (None, crate::PcKind::Subscribe) => &mut self.subscribe,
        };
        if map.get(user) == Some(&id) {
            map.remove(user);
            return true;
        }
        false
    }
}
