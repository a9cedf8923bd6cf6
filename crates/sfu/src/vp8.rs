//! VP8 picture numbering across stream switches (RFC 7741 payload descriptor).
//!
//! Each simulcast layer (and each republished stream) numbers its pictures on its own:
//! PictureID and TL0PICIDX jump when a subscriber is moved to another stream, and a receiver's
//! frame-reference bookkeeping (libwebrtc's) takes a jump backwards for old frames and drops
//! them. So each subscriber's stream continues the numbering it was sending, as its sequence
//! numbers do: at a switch, the new stream's numbers get an offset that puts its first picture
//! one after the last one sent.

use bytes::{Bytes, BytesMut};

use crate::layers::SourceId;

/// PictureID is 7 or 15 bits; offsets are kept in the 15-bit space and applied modulo the
/// field's own width.
const PICTURE_SPACE: u16 = 1 << 15;

/// Where a payload descriptor's numbers sit, and their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Descriptor {
    /// Offset of the PictureID field, its value, and whether it is the 15-bit form.
    picture: Option<(usize, u16, bool)>,
    /// Offset and value of TL0PICIDX.
    tl0: Option<(usize, u8)>,
}

fn parse(payload: &[u8]) -> Option<Descriptor> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let flags = *payload.get(1)?;
    let mut at = 2;
    let mut picture = None;
    if flags & 0x80 != 0 {
        let b = *payload.get(at)?;
        if b & 0x80 != 0 {
            let low = *payload.get(at + 1)?;
            picture = Some((at, (u16::from(b & 0x7f) << 8) | u16::from(low), true));
            at += 2;
        } else {
            picture = Some((at, u16::from(b), false));
            at += 1;
        }
    }
    let tl0 = if flags & 0x40 != 0 {
        Some((at, *payload.get(at)?))
    } else {
        None
    };
    Some(Descriptor { picture, tl0 })
}

/// One subscriber's picture numbering of one VP8 track.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pictures {
    source: Option<SourceId>,
    picture_offset: u16,
    tl0_offset: u8,
    /// The last numbers sent (PictureID in the 15-bit space).
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
}

impl Pictures {
    /// The payload of a packet of `source` as this subscriber gets it. The first packet of a
    /// new source (a keyframe: switches happen only there) sets the offsets.
    pub(crate) fn rewrite(&mut self, source: SourceId, payload: &Bytes) -> Bytes {
        let Some(d) = parse(payload) else {
            return payload.clone();
        };
        if self.source != Some(source) {
            self.source = Some(source);
            self.picture_offset = match (self.last_picture, d.picture) {
                (Some(last), Some((_, id, _))) => {
                    (last.wrapping_add(1).wrapping_sub(id)) % PICTURE_SPACE
                }
                _ => 0,
            };
            self.tl0_offset = match (self.last_tl0, d.tl0) {
                (Some(last), Some((_, idx))) => last.wrapping_add(1).wrapping_sub(idx),
                _ => 0,
            };
        }
        let out = self.write(payload, d);
        if let Some((_, id, _)) = d.picture {
            self.last_picture = Some(id.wrapping_add(self.picture_offset) % PICTURE_SPACE);
        }
        if let Some((_, idx)) = d.tl0 {
            self.last_tl0 = Some(idx.wrapping_add(self.tl0_offset));
        }
        out
    }

    /// The payload with the current offsets, changing nothing (a retransmission).
    pub(crate) fn apply(&self, payload: &Bytes) -> Bytes {
        match parse(payload) {
            Some(d) => self.write(payload, d),
            None => payload.clone(),
        }
    }

    fn write(&self, payload: &Bytes, d: Descriptor) -> Bytes {
        if self.picture_offset == 0 && self.tl0_offset == 0 {
            // The common case (no switch yet): the publisher's bytes, shared, not copied.
            return payload.clone();
        }
        let mut out = BytesMut::from(&payload[..]);
        if let Some((at, id, long)) = d.picture {
            if long {
                let id = id.wrapping_add(self.picture_offset) % PICTURE_SPACE;
                out[at] = 0x80 | (id >> 8) as u8;
                out[at + 1] = id as u8;
            } else {
                out[at] = (id.wrapping_add(self.picture_offset) % 128) as u8;
            }
        }
        if let Some((at, idx)) = d.tl0 {
            out[at] = idx.wrapping_add(self.tl0_offset);
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor with a 15-bit PictureID and TL0PICIDX, then a byte of payload.
    fn payload(picture: u16, tl0: u8) -> Bytes {
        Bytes::from(vec![
            0x90,
            0xc0,
            0x80 | (picture >> 8) as u8,
            picture as u8,
            tl0,
            0x42,
        ])
    }

    fn numbers(p: &Bytes) -> (u16, u8) {
        let d = parse(p).unwrap();
        (d.picture.unwrap().1, d.tl0.unwrap().1)
    }

    #[test]
    fn a_switch_continues_the_numbering_and_the_first_stream_passes_untouched() {
        let mut pics = Pictures::default();
        let first = payload(32_760, 254);
        let out = pics.rewrite(1, &first);
        assert_eq!(out.as_ptr(), first.as_ptr(), "no copy before any switch");
        pics.rewrite(1, &payload(32_767, 255));
        // Another layer, numbered far away: continues one on, across both wraps.
        let out = pics.rewrite(2, &payload(100, 7));
        assert_eq!(numbers(&out), (0, 0));
        let out = pics.rewrite(2, &payload(101, 8));
        assert_eq!(numbers(&out), (1, 1));
        assert_eq!(
            out[5], 0x42,
            "the payload after the descriptor is untouched"
        );
        // A retransmission of the same packet gets the same numbers.
        assert_eq!(numbers(&pics.apply(&payload(101, 8))), (1, 1));
        // Back to the first layer, which moved on meanwhile.
        let out = pics.rewrite(1, &payload(5, 3));
        assert_eq!(numbers(&out), (2, 2));
    }

    #[test]
    fn seven_bit_ids_wrap_at_128_and_short_or_plain_payloads_pass() {
        let mut pics = Pictures::default();
        let short = |id: u8| Bytes::from(vec![0x90, 0x80, id, 0x00]);
        pics.rewrite(1, &short(126));
        let out = pics.rewrite(2, &short(40));
        assert_eq!(out[2], 127);
        let out = pics.rewrite(2, &short(41));
        assert_eq!(out[2], 0, "wrapped at 7 bits, the M bit clear");
        for odd in [&[][..], &[0x90][..], &[0x90, 0x80][..], &[0x10, 0x00][..]] {
            let p = Bytes::copy_from_slice(odd);
            assert_eq!(pics.rewrite(3, &p), p);
        }
    }
}
