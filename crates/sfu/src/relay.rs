//! Media relays between the nodes of a cluster: one room, several nodes.
//!
//! The room's origin forwards every track of the room, every simulcast layer, once to each
//! other node with members there, over one *relay* connection per room and node:
//! - **At the origin** the relay is a subscribe connection (offered by the origin, answered by
//!   the other node) whose outgoing tracks are pinned: one sender per published stream, each
//!   simulcast layer its own, never chosen by bandwidth, never shed. Its track ids say the
//!   publisher's seat and the layer's rid (`relay.{seat}.{rid}.{ssrc}`), its msid streams the
//!   publishers.
//! - **At the other node** it is a client connection of this core (a full ICE agent and DTLS
//!   client, as a browser is) to the origin's media port. Each publisher on it gets a *stand-in*
//!   publish connection here, never connected itself, that holds the publisher's tracks with
//!   their layers: so the node's own subscribers are fed, allocated, asked keyframes for and
//!   answered NACKs as if the publishers were local. Keyframe requests go up the relay.
//!
//! The origin still decides who is forwarded: a revoked or muted publisher stops at the origin
//! at once, and the next relay offer takes its tracks away here.

use std::collections::HashMap;
use std::net::SocketAddr;

use miclink_protocol::Ident;

use crate::SfuError;
use crate::ids::PeerId;

/// Publishers one relay may bring into a room: a room has at most ten seats; an origin that
/// offers more streams than that (a bug) must not grow this node's state.
pub(crate) const MAX_STAND_INS: usize = 16;

/// Streams one relay may carry: audio and three video layers for each of its publishers.
pub(crate) const MAX_RELAY_STREAMS: usize = MAX_STAND_INS * 4;

/// The edge's end of a relay: where its tracks go.
pub(crate) struct RelayIn {
    pub(crate) node: String,
    /// Its local candidate: what its datagrams are tagged with.
    pub(crate) local: SocketAddr,
    /// rtc's track id on the relay -> the stand-in publish connection and its track's key.
    pub(crate) tracks: HashMap<String, (PeerId, String)>,
    /// Every stream the relay carries, taken up by a stand-in or not: what taking it up
    /// (again) needs. A publisher who moved between nodes may still publish here, or through
    /// another relay, when its stream arrives; the stream waits until that one is gone.
    pub(crate) streams: HashMap<String, Carried>,
}

/// A stream a relay carries, as rtc opened it, and what its track id says.
#[derive(Clone)]
pub(crate) struct Carried {
    pub(crate) publisher: Ident,
    pub(crate) seat: u32,
    pub(crate) rid: Option<String>,
    pub(crate) receiver: rtc::rtp_transceiver::RTCRtpReceiverId,
    pub(crate) ssrc: u32,
}

/// The user id a relay connection is labelled with (in logs and `/metrics`).
pub(crate) fn relay_label(node: &str) -> Result<Ident, SfuError> {
    Ident::new(&format!("relay.{node}")).map_err(|_| SfuError::UnknownUser)
}

/// A relay track's id: the publisher's seat (for priority at the other end), the layer's rid
/// (`-` for a track's only stream) and the SSRC (ids are never reused on a connection).
pub(crate) fn relay_track_id(seat: u32, rid: Option<&str>, ssrc: u32) -> String {
    format!("relay.{seat}.{}.{ssrc:08x}", rid.unwrap_or("-"))
}

/// The seat and rid a relay track id names.
pub(crate) fn parse_relay_track_id(id: &str) -> Option<(u32, Option<String>)> {
    let mut parts = id.split('.');
    if parts.next()? != "relay" {
        return None;
    }
    let seat = parts.next()?.parse().ok()?;
    let rid = parts.next()?;
    // rids are short tokens (RFC 8851); anything else is not ours.
    if rid.is_empty()
        || rid.len() > 16
        || !rid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return None;
    }
    Some((seat, (rid != "-").then(|| rid.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_track_ids_carry_the_seat_and_the_rid() {
        let id = relay_track_id(3, Some("h"), 0xabc);
        assert_eq!(parse_relay_track_id(&id), Some((3, Some("h".into()))));
        let id = relay_track_id(0, None, 7);
        assert_eq!(parse_relay_track_id(&id), Some((0, None)));
        assert_eq!(parse_relay_track_id("alice-video-0001"), None);
        assert_eq!(parse_relay_track_id("relay.x.h.1"), None);
        assert_eq!(parse_relay_track_id("relay.1.a b.1"), None);
    }
}
