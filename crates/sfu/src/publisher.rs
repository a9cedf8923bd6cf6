//! The receiving side of a publish connection: what a member (or an encoder, or a stand-in
//! for a member publishing on another node) publishes. Its fields are its own; the core reads
//! and changes them through the methods here.

use std::collections::HashMap;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

use crate::ids::PeerId;
use crate::track::InTrack;

/// The receiving side of a publish connection.
#[derive(Default)]
pub(crate) struct Publisher {
    /// The seating it publishes under ([`crate::MediaChange::AllowPublish`]'s `link`).
    link: u64,
    /// The simulcast layers its offer announced by name (rids `q`, `h`, `f`), seen or not yet;
    /// empty without simulcast or with other rids.
    simulcast: Vec<miclink_protocol::VideoQuality>,
    /// Tracks by track id.
    tracks: HashMap<String, InTrack>,
}

impl Publisher {
    /// What its offer was taken under: the seating's `link`, and the simulcast layers the
    /// offer announced.
    pub(crate) fn set_up(&mut self, link: u64, simulcast: Vec<miclink_protocol::VideoQuality>) {
        self.link = link;
        self.simulcast = simulcast;
    }

    /// The seating it publishes under.
    pub(crate) fn link(&self) -> u64 {
        self.link
    }

    /// The simulcast layers its offer announced by name.
    pub(crate) fn simulcast(&self) -> &[miclink_protocol::VideoQuality] {
        &self.simulcast
    }

    pub(crate) fn track(&self, track_id: &str) -> Option<&InTrack> {
        self.tracks.get(track_id)
    }

    pub(crate) fn track_mut(&mut self, track_id: &str) -> Option<&mut InTrack> {
        self.tracks.get_mut(track_id)
    }

    /// Its track of `kind` (it publishes one of each), with its track id.
    pub(crate) fn track_of(&self, kind: RtpCodecKind) -> Option<(&String, &InTrack)> {
        self.tracks.iter().find(|(_, t)| t.kind == kind)
    }

    pub(crate) fn track_of_mut(&mut self, kind: RtpCodecKind) -> Option<&mut InTrack> {
        self.tracks.values_mut().find(|t| t.kind == kind)
    }

    pub(crate) fn tracks(&self) -> impl Iterator<Item = &InTrack> {
        self.tracks.values()
    }

    pub(crate) fn has_tracks(&self) -> bool {
        !self.tracks.is_empty()
    }

    /// Add (or replace) the track `track_id`.
    pub(crate) fn insert_track(&mut self, track_id: String, track: InTrack) {
        self.tracks.insert(track_id, track);
    }

    pub(crate) fn remove_track(&mut self, track_id: &str) -> Option<InTrack> {
        self.tracks.remove(track_id)
    }
}

/// A stand-in's link to the relay it is fed from.
pub(crate) struct StandIn {
    /// The relay connection (keyframe requests go up it).
    via: PeerId,
    /// The node it comes from.
    node: String,
}

impl StandIn {
    pub(crate) fn new(via: PeerId, node: String) -> StandIn {
        StandIn { via, node }
    }

    /// The relay connection it is fed from (keyframe requests go up it).
    pub(crate) fn via(&self) -> PeerId {
        self.via
    }

    /// The node its publisher publishes on.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }
}
