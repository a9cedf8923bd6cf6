//! The codecs the server forwards, with the parameters a sender registers them with: what
//! simulated and load-generating publishers send.

use bytes::Bytes;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};

/// A codec the server forwards, as a sender (a test's, the load tool's) registers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Opus,
    Vp8,
    H264,
}

impl Codec {
    pub fn kind(self) -> RtpCodecKind {
        match self {
            Codec::Opus => RtpCodecKind::Audio,
            Codec::Vp8 | Codec::H264 => RtpCodecKind::Video,
        }
    }

    /// The codec as a sender registers it: the parameters the server forwards (H.264 is
    /// constrained baseline with packetization mode 1).
    pub fn rtp_codec(self) -> RTCRtpCodec {
        let (mime, clock_rate, channels, fmtp) = match self {
            Codec::Opus => ("audio/opus", 48_000, 2, ""),
            Codec::Vp8 => ("video/VP8", 90_000, 0, ""),
            Codec::H264 => (
                "video/H264",
                90_000,
                0,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            ),
        };
        RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: vec![],
        }
    }

    /// A payload of this codec that is (or is not) the start of a keyframe, followed by `body`.
    pub fn payload(self, keyframe: bool, body: &[u8]) -> Bytes {
        let mut p = match self {
            Codec::Opus => Vec::new(),
            // VP8 descriptor (S=1, partition 0), then the payload header's P bit (0 = key).
            Codec::Vp8 => vec![0x10, if keyframe { 0x00 } else { 0x01 }],
            // A single NAL unit: IDR slice (5) or non-IDR slice (1).
            Codec::H264 => vec![if keyframe { 0x65 } else { 0x41 }, 0x88],
        };
        p.extend_from_slice(body);
        p.into()
    }
}
