//! Per-track state: a published track as it arrives ([`InTrack`]: its layers, extended
//! sequence numbers, the retransmission buffer, keyframe requests), a packet of it classified
//! once for all its subscribers ([`Incoming`]), and one publisher's track as one subscriber
//! receives it ([`OutTrack`]: its sender, what was negotiated, and the [`Munger`] that keeps
//! its sequence numbers and timestamps continuous across sources, pauses and wraps).
//!
//! [`OutTrack::write`] decides, for one subscriber, what becomes of an incoming packet and
//! rewrites it; nothing here touches a peer connection: the subscriber's connection sends.

use std::time::Instant;

use miclink_protocol::{SubscriptionReason, VideoQuality};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};

use crate::extensions::Forwarded;
use crate::extensions::renumber;
use crate::keyframe::Detector;
pub(crate) use crate::layers::{HISTORY, Layer, MAX_LAYERS, SourceId};
use crate::munger::{Munger, Rewrite};
use crate::resend::Resends;
use crate::vp8::Pictures;
use bytes::Bytes;
use rtc::rtp::Packet;
use rtc::rtp::header::{Extension, Header};

/// A track arriving on a publish connection: one m-section, carrying one stream, or up to
/// [`MAX_LAYERS`] simulcast ones (rule 14), each a [`Layer`] with a source of its own.
pub(crate) struct InTrack {
    pub(crate) kind: RtpCodecKind,
    pub(crate) codec: RTCRtpCodec,
    pub(crate) keyframes: Detector,
    pub(crate) receiver: RTCRtpReceiverId,
    /// The forwarded header extensions with this publisher's ids.
    pub(crate) extensions: Forwarded,
    pub(crate) layers: Vec<Layer>,
    /// The layers last told to the publisher as watched (`publisher_layers`).
    pub(crate) watched: Option<Vec<VideoQuality>>,
    /// Video: the layers the publisher's offer named (rids `q`, `h`, `f`), seen or not yet;
    /// empty without simulcast or with other rids.
    pub(crate) simulcast: Vec<VideoQuality>,
}

impl InTrack {
    pub(crate) fn new(
        kind: RtpCodecKind,
        codec: RTCRtpCodec,
        receiver: RTCRtpReceiverId,
        extensions: Forwarded,
    ) -> InTrack {
        InTrack {
            kind,
            keyframes: Detector::for_codec(kind, &codec.mime_type),
            codec,
            receiver,
            extensions,
            layers: Vec::new(),
            watched: None,
            simulcast: Vec::new(),
        }
    }

    /// The quality each layer stands for ([`crate::layers::qualities`]); named by rid even
    /// while only one layer has been seen when the offer named several.
    pub(crate) fn qualities(&self) -> Vec<VideoQuality> {
        crate::layers::qualities(&self.layers, !self.simulcast.is_empty())
    }

    /// Take a stream of this track in: `false` when the track has all the layers it may have,
    /// or has this SSRC already.
    pub(crate) fn add_layer(&mut self, rid: &str, ssrc: u32, source: SourceId) -> bool {
        if self.layers.len() >= MAX_LAYERS || self.layers.iter().any(|l| l.ssrc == ssrc) {
            return false;
        }
        // Audio is not retransmitted: a late audio packet is worse than a lost one.
        let history = if self.kind == RtpCodecKind::Video {
            HISTORY
        } else {
            0
        };
        self.layers.push(Layer::new(rid, ssrc, source, history));
        true
    }

    /// The layer carrying SSRC `ssrc`.
    pub(crate) fn layer_index(&self, ssrc: u32) -> Option<usize> {
        self.layers.iter().position(|l| l.ssrc == ssrc)
    }

    pub(crate) fn layer_of(&self, source: SourceId) -> Option<&Layer> {
        self.layers.iter().find(|l| l.source == source)
    }
}

/// What a subscriber's answer settled for one outgoing track: looked up once per answer, never
/// per packet.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    pub(crate) payload_type: u8,
    /// The subscriber's ids of the forwarded extensions: (id, URI).
    pub(crate) extensions: Vec<(u8, &'static str)>,
    /// The subscriber's id of the transport-wide sequence number extension, if negotiated.
    pub(crate) twcc: Option<u8>,
}

/// One publisher's track as sent on one subscribe connection.
pub(crate) struct OutTrack {
    pub(crate) sender: RTCRtpSenderId,
    pub(crate) ssrc: u32,
    pub(crate) kind: RtpCodecKind,
    pub(crate) mime: String,
    pub(crate) fmtp: String,
    pub(crate) clock_rate: u32,
    /// Part of a subscribe offer already sent.
    pub(crate) offered: bool,
    /// Set once an answer listing the track is applied. Nothing is forwarded before: a browser
    /// that gets packets of an SSRC its description does not list yet binds them by payload
    /// type to another track with the same codec, and keeps them there after the answer.
    pub(crate) negotiated: Option<Negotiated>,
    /// Publisher id -> subscriber id of the forwarded extensions: settled when an answer is
    /// applied or the publisher's track changes, never per packet.
    pub(crate) ext_ids: Vec<(u8, u8)>,
    /// Paused by overload shedding: nothing is sent until the shedding lifts, then the track
    /// restarts at a keyframe.
    pub(crate) paused: bool,
    /// The publisher's stream (simulcast layer) this subscriber should be on: the munger's
    /// current one, or the one it switches to at that stream's next keyframe. `None`: none
    /// (video turned off, or nothing published yet).
    pub(crate) target: Option<SourceId>,
    /// The highest layer this subscriber wants (its `set_subscription`, default high).
    pub(crate) wish: VideoQuality,
    /// When this subscriber was last moved down for bandwidth.
    pub(crate) downgraded: Option<Instant>,
    /// The `subscription_state` last told the subscriber (video only).
    pub(crate) reported: Option<(VideoQuality, SubscriptionReason)>,
    pub(crate) munger: Munger,
    /// VP8 picture numbering kept continuous across switches.
    pub(crate) pictures: Pictures,
    /// What this subscriber may still have retransmitted.
    pub(crate) resends: Resends,
}

impl OutTrack {
    pub(crate) fn new(
        sender: RTCRtpSenderId,
        ssrc: u32,
        kind: RtpCodecKind,
        codec: &RTCRtpCodec,
        first_seq: u16,
    ) -> OutTrack {
        OutTrack {
            sender,
            ssrc,
            kind,
            mime: codec.mime_type.clone(),
            fmtp: codec.sdp_fmtp_line.clone(),
            clock_rate: codec.clock_rate.max(1),
            offered: false,
            negotiated: None,
            ext_ids: Vec::new(),
            paused: false,
            target: None,
            wish: VideoQuality::High,
            downgraded: None,
            reported: None,
            munger: Munger::new(first_seq),
            pictures: Pictures::default(),
            resends: Resends::default(),
        }
    }
}

/// One packet of a published stream, classified once for every subscriber: its header with
/// the publisher's extensions taken out (each subscriber gets its own numbering of them), and
/// what its layer made of it.
pub(crate) struct Incoming {
    pub(crate) header: Header,
    pub(crate) payload: Bytes,
    /// The publisher's extensions, in its id space.
    pub(crate) extensions: Vec<Extension>,
    /// The stream (layer) it belongs to.
    pub(crate) source: SourceId,
    /// Its extended sequence number in that stream.
    pub(crate) ext: u64,
    pub(crate) is_key: bool,
    /// VP8: picture numbering is rewritten per subscriber.
    pub(crate) vp8: bool,
}

/// What becomes of one incoming packet on one subscriber's track ([`OutTrack::write`]).
pub(crate) enum Verdict {
    /// Send this packet (rewritten for the subscriber); `switched`: the first of a new source.
    Send { packet: Packet, switched: bool },
    /// Not the stream this subscriber is on or switches to, not negotiated yet, or too old.
    Skip,
    /// The track is paused by overload shedding.
    Shed,
    /// The subscriber switches to this stream at its next keyframe: one is wanted.
    WaitKeyframe,
}

impl OutTrack {
    /// Decide what `incoming` is to this subscriber and, if it goes, rewrite it: sequence
    /// number and timestamp continued, SSRC and payload type the subscriber's, VP8 pictures
    /// renumbered, extensions in the subscriber's ids. `pinned`: a relay's track, which takes
    /// its own stream whatever the choice of layers.
    pub(crate) fn write(&mut self, incoming: &Incoming, pinned: bool, now: Instant) -> Verdict {
        let Some(negotiated) = &self.negotiated else {
            return Verdict::Skip;
        };
        let source = incoming.source;
        // Only the stream this subscriber is on, or the one it switches to (at a keyframe).
        let target = match (pinned, self.target) {
            (true, _) => source,
            (false, Some(target)) => target,
            (false, None) => return Verdict::Skip,
        };
        let on = self.munger.source() == Some(source);
        if !on && target != source {
            return Verdict::Skip;
        }
        if self.paused {
            return Verdict::Shed;
        }
        let (seq, timestamp) = match self.munger.rewrite_marked(
            source,
            incoming.ext,
            incoming.header.timestamp,
            incoming.is_key,
            incoming.header.marker,
            self.clock_rate,
            now,
        ) {
            Rewrite::Forward { seq, timestamp } => (seq, timestamp),
            Rewrite::WaitKeyframe => return Verdict::WaitKeyframe,
            Rewrite::Drop => return Verdict::Skip,
        };
        let mut header = incoming.header.clone();
        header.ssrc = self.ssrc;
        header.payload_type = negotiated.payload_type;
        header.sequence_number = seq;
        header.timestamp = timestamp;
        if !incoming.extensions.is_empty() {
            renumber(&mut header, &incoming.extensions, &self.ext_ids);
        }
        let payload = if incoming.vp8 {
            self.pictures.rewrite(source, &incoming.payload)
        } else {
            incoming.payload.clone()
        };
        Verdict::Send {
            packet: Packet { header, payload },
            switched: !on,
        }
    }
}
