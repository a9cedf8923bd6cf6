//! The receiving side of a publish connection: what a member (or an encoder, or a stand-in
//! for a member publishing on another node) publishes.

use std::collections::HashMap;

use crate::ids::PeerId;
use crate::track::InTrack;

/// The receiving side of a publish connection.
#[derive(Default)]
pub(crate) struct Publisher {
    /// The seating it publishes under ([`crate::MediaChange::AllowPublish`]'s `link`).
    pub(crate) link: u64,
    /// The simulcast layers its offer announced by name (rids `q`, `h`, `f`), seen or not yet;
    /// empty without simulcast or with other rids.
    pub(crate) simulcast: Vec<miclink_protocol::VideoQuality>,
    /// Tracks by track id.
    pub(crate) tracks: HashMap<String, InTrack>,
}

/// A stand-in's link to the relay it is fed from.
pub(crate) struct StandIn {
    /// The relay connection (keyframe requests go up it).
    pub(crate) via: PeerId,
    /// The node it comes from.
    pub(crate) node: String,
}
