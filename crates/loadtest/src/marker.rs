//! The payload every simulated publisher sends, so receivers can account for each packet.
//!
//! `[codec header: 2, 4 or 5 bytes for video][MARK][kind u8][flags u8][seq u32][sent ns u64]
//! [publisher length u8][publisher id][padding]`. `seq` counts the stream's packets from 0 (all
//! simulcast layers of a track share the count), `sent` is this process's monotonic clock
//! (one-way delay over loopback is exact), `flags` bit 0 says the packet starts a keyframe and
//! bits 1-2 give the simulcast layer (0 low, 2 high; 0 without simulcast), and the publisher id
//! names the sender whatever stream id the server gave the track.

use std::sync::OnceLock;
use std::time::Instant;

const MARK: &[u8; 4] = b"MLDT";

/// Nanoseconds on this process's monotonic clock.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Audio = 0,
    Video = 1,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        })
    }
}

/// What a receiver reads back from a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub publisher: String,
    pub kind: Kind,
    pub seq: u32,
    pub sent_ns: u64,
    pub keyframe: bool,
    pub layer: u8,
}

/// Append the marker (after any codec header already in `p`).
pub fn write(p: &mut Vec<u8>, publisher: &str, kind: Kind, seq: u32, keyframe: bool) {
    write_layer(p, publisher, kind, seq, keyframe, 0);
}

/// [`write`] for simulcast layer `layer` (0 to 3).
pub fn write_layer(
    p: &mut Vec<u8>,
    publisher: &str,
    kind: Kind,
    seq: u32,
    keyframe: bool,
    layer: u8,
) {
    p.extend_from_slice(MARK);
    p.push(kind as u8);
    p.push(u8::from(keyframe) | (layer & 3) << 1);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&now_ns().to_be_bytes());
    let id = &publisher.as_bytes()[..publisher.len().min(64)];
    p.push(id.len() as u8);
    p.extend_from_slice(id);
}

/// The marker of a payload, if it carries one (audio at offset 0, video after its codec header:
/// 2 bytes for H.264, 4 or 5 for VP8 with a picture id).
pub fn read(payload: &[u8]) -> Option<Marker> {
    let at = [0, 2, 4, 5]
        .into_iter()
        .find(|&at| payload.get(at..at + 4) == Some(&MARK[..]))?;
    let p = &payload[at..];
    let kind = match p.get(4)? {
        0 => Kind::Audio,
        1 => Kind::Video,
        _ => return None,
    };
    let flags = *p.get(5)?;
    let keyframe = flags & 1 == 1;
    let layer = (flags >> 1) & 3;
    let seq = u32::from_be_bytes(p.get(6..10)?.try_into().ok()?);
    let sent_ns = u64::from_be_bytes(p.get(10..18)?.try_into().ok()?);
    let len = *p.get(18)? as usize;
    let publisher = std::str::from_utf8(p.get(19..19 + len)?).ok()?.to_owned();
    Some(Marker {
        publisher,
        kind,
        seq,
        sent_ns,
        keyframe,
        layer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_for_both_kinds() {
        for (kind, header) in [(Kind::Audio, &[][..]), (Kind::Video, &[0x10, 0x00][..])] {
            let mut p = header.to_vec();
            write(&mut p, "guest7", kind, 123_456, kind == Kind::Video);
            p.resize(200, 0);
            let m = read(&p).expect("marker");
            assert_eq!(
                (m.publisher.as_str(), m.kind, m.seq, m.keyframe),
                ("guest7", kind, 123_456, kind == Kind::Video)
            );
        }
        let mut p = vec![0x90, 0x80, 0x81, 0x02, 0x00];
        write_layer(&mut p, "anchor", Kind::Video, 9, true, 2);
        let m = read(&p).expect("marker after a VP8 descriptor with a picture id");
        assert_eq!((m.seq, m.keyframe, m.layer), (9, true, 2));
        assert!(read(b"not a marker at all").is_none());
        assert!(read(b"MLDT\x01").is_none(), "cut short");
    }
}
