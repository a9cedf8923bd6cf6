//! Whether an RTP payload starts a keyframe, for the codecs the SFU forwards.

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

/// How keyframes of a track's codec are recognised; chosen once when the track opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detector {
    Vp8,
    H264,
    /// Audio, or a codec we cannot parse: every packet may start a subscriber's stream.
    Any,
}

impl Detector {
    pub(crate) fn for_codec(kind: RtpCodecKind, mime: &str) -> Detector {
        let mime = mime.to_ascii_lowercase();
        match kind {
            RtpCodecKind::Video if mime.ends_with("/vp8") => Detector::Vp8,
            RtpCodecKind::Video if mime.ends_with("/h264") => Detector::H264,
            _ => Detector::Any,
        }
    }

    pub(crate) fn is_keyframe(self, payload: &[u8]) -> bool {
        match self {
            Detector::Vp8 => vp8(payload),
            Detector::H264 => h264(payload),
            Detector::Any => true,
        }
    }
}

/// VP8 (RFC 7741): the first packet of a key frame.
pub(crate) fn vp8(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let partition = first & 0x07;
    if !start || partition != 0 {
        return false;
    }
    let mut at = 1;
    if extended {
        let Some(&x) = payload.get(1) else {
            return false;
        };
        at = 2;
        if x & 0x80 != 0 {
            // PictureID: one or two bytes.
            let Some(&pid) = payload.get(at) else {
                return false;
            };
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID / KEYIDX
        }
    }
    // VP8 payload header: the P bit is 0 for a key frame.
    payload.get(at).is_some_and(|b| b & 0x01 == 0)
}

/// H.264 (RFC 6184): an IDR slice or SPS, alone, aggregated (STAP-A) or starting a fragment (FU-A).
pub(crate) fn h264(payload: &[u8]) -> bool {
    let is_key = |nal: u8| matches!(nal & 0x1f, 5 | 7);
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        24 => {
            let mut at = 1;
            while let (Some(&hi), Some(&lo)) = (payload.get(at), payload.get(at + 1)) {
                let len = u16::from_be_bytes([hi, lo]) as usize;
                match payload.get(at + 2) {
                    Some(&nal) if is_key(nal) => return true,
                    Some(_) => at += 2 + len,
                    None => return false,
                }
            }
            false
        }
        28 => payload
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && is_key(fu)),
        _ => is_key(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_key_and_delta_frames() {
        // S=1, PID=0, no extension; payload header P=0 (key) / P=1 (delta).
        assert!(vp8(&[0x10, 0x00, 0x9d, 0x01, 0x2a]));
        assert!(!vp8(&[0x10, 0x01]));
        // Not the start of a partition.
        assert!(!vp8(&[0x00, 0x00]));
        // Extended with a two-byte picture id.
        assert!(vp8(&[0x90, 0x80, 0x81, 0x23, 0x00]));
        assert!(!vp8(&[]));
        assert!(!vp8(&[0x90]));
    }

    #[test]
    fn h264_key_nal_units() {
        assert!(h264(&[0x65]));
        assert!(h264(&[0x67]));
        assert!(!h264(&[0x41]));
        assert!(h264(&[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]));
        assert!(h264(&[0x7c, 0x85]));
        assert!(!h264(&[0x7c, 0x05]));
        assert!(!h264(&[0x78, 0xff]));
    }
}
