//! WHEP playback (rule 15): a viewer's subscribe connection made from its own receive-only
//! offer, answered once and never renegotiated.
//!
//! The offer's audio and video m-sections pair up into slots, in order: slot 0 shows the
//! anchor, slot k the k-th publisher in seat order. When the seats change, a slot's senders are
//! handed to the publisher that now holds its place, without a new offer: the subscriber's
//! stream keeps its SSRC and numbering and continues from the new publisher's keyframe, as a
//! republished stream does. A slot with nobody to show keeps its senders parked, silent.

use miclink_protocol::Ident;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};

use crate::track::OutTrack;

/// Slots one viewer may open: one per seat.
pub(crate) const MAX_SLOTS: usize = 10;

/// Connections of a loop that WHEP players and members' subscribe connections may not take: an
/// eighth, kept for publish connections (and relays).
pub(crate) fn watch_reserve(max_peers: usize) -> usize {
    max_peers / 8
}

/// One place of a WHEP viewer's offer: an audio and a video transceiver.
#[derive(Default)]
pub(crate) struct Slot {
    /// Whom it shows now.
    pub(crate) publisher: Option<Ident>,
    /// Its senders that carry nothing now (nobody in the place, or that publisher has no track
    /// of the sender's kind or codec); the others are in the connection's `outs`.
    pub(crate) parked: Vec<OutTrack>,
}

/// What an idle slot's sender is created with (it is renegotiated to nothing: the answer lists
/// every codec of the kind both sides have, and a publisher's codec is looked up there).
pub(crate) fn placeholder(kind: RtpCodecKind) -> RTCRtpCodec {
    match kind {
        RtpCodecKind::Audio => RTCRtpCodec {
            mime_type: "audio/opus".into(),
            clock_rate: 48_000,
            channels: 2,
            ..Default::default()
        },
        _ => RTCRtpCodec {
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            ..Default::default()
        },
    }
}
