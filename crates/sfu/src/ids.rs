//! The names the media plane's parts use for each other's things: a connection's number, and
//! which publisher's track (and, on a relay, which of its layers) a subscriber's sender carries.

use miclink_protocol::Ident;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

/// A peer connection of one core: numbered from 1, never reused.
pub(crate) type PeerId = u64;

/// A subscribe connection's outgoing track: the publisher, the kind, and on a relay (which
/// carries every simulcast layer) the layer's rid; `None` for a subscriber's one stream of a
/// track, and on a relay for a track's only stream.
pub(crate) type OutKey = (Ident, RtpCodecKind, Option<String>);
