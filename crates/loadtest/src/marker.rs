//! The payload every simulated publisher sends, so receivers can account for each packet.
//!
//! `[codec header: 2 bytes for video][MARK][kind u8][flags u8][seq u32][sent ns u64]
//! [publisher length u8][publisher id][padding]`. `seq` counts the stream's packets from 0,
//! `sent` is this process's monotonic clock (one-way delay over loopback is exact), `flags` bit 0
//! says the packet starts a keyframe, and the publisher id names the sender whatever stream id
//! the server gave the track.

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
}

/// Append the marker (after any codec header already in `p`).
pub fn write(p: &mut Vec<u8>, publisher: &str, kind: Kind, seq: u32, keyframe: bool) {
    p.extend_from_slice(MARK);
    p.push(kind as u8);
    p.push(u8::from(keyframe));
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&now_ns().to_be_bytes());
    let id = &publisher.as_bytes()[..publisher.len().min(64)];
    p.push(id.len() as u8);
    p.extend_from_slice(id);
}

/// The marker of a payload, if it carries one (audio at offset 0, video after its 2-byte codec
/// header).
pub fn read(payload: &[u8]) -> Option<Marker> {
    let p = if payload.get(..4)? == MARK {
        payload
    } else {
        payload.get(2..)?
    };
    if p.get(..4)? != MARK {
        return None;
    }
    let kind = match p.get(4)? {
        0 => Kind::Audio,
        1 => Kind::Video,
        _ => return None,
    };
    let keyframe = p.get(5)? & 1 == 1;
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
        assert!(read(b"not a marker at all").is_none());
        assert!(read(b"MLDT\x01").is_none(), "cut short");
    }
}
