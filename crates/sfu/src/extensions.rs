//! RTP header extensions carried from a publisher to its subscribers.
//!
//! Only extensions that describe the media itself travel ([`FORWARDED`]): the rest describe one
//! leg (transport-wide sequence numbers, send times, mid, rid) and are the sending stack's to
//! write. Each side negotiates its own ids, so every forwarded packet is renumbered to the
//! subscriber's ids; an id the subscriber did not negotiate would make it refuse the packet.

use rtc::rtp::header::{EXTENSION_PROFILE_ONE_BYTE, EXTENSION_PROFILE_TWO_BYTE, Extension, Header};

/// The extensions forwarded, by URI.
pub(crate) const FORWARDED: [&str; 2] = [
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "urn:3gpp:video-orientation",
];

/// A publisher track's forwarded extensions: (its id, URI).
pub(crate) type Forwarded = std::sync::Arc<[(u8, &'static str)]>;

/// The forwarded extensions among negotiated (id, URI) pairs.
pub(crate) fn forwarded<'a>(negotiated: impl Iterator<Item = (u16, &'a str)>) -> Forwarded {
    negotiated
        .filter_map(|(id, uri)| {
            let uri = FORWARDED.iter().find(|u| **u == uri)?;
            Some((u8::try_from(id).ok()?, *uri))
        })
        .collect()
}

/// Publisher id -> subscriber id for the extensions both sides negotiated.
pub(crate) fn mapping(
    publisher: &[(u8, &'static str)],
    subscriber: &[(u8, &'static str)],
) -> Vec<(u8, u8)> {
    publisher
        .iter()
        .filter_map(|&(from, uri)| {
            let &(to, _) = subscriber.iter().find(|(_, u)| *u == uri)?;
            Some((from, to))
        })
        .collect()
}

/// Rewrite `header`'s extension block from the publisher's `original` extensions, keeping those
/// in `ids` (publisher id -> subscriber id) under the subscriber's ids.
///
/// The block is rebuilt whole so it is always well formed: the one-byte profile when every kept
/// element fits it (ids 1 to 14, 1 to 16 bytes), else the two-byte one; empty elements are
/// dropped (the one-byte form cannot carry them, and nothing forwarded is ever empty).
pub(crate) fn renumber(header: &mut Header, original: &[Extension], ids: &[(u8, u8)]) {
    header.extensions.clear();
    header.extensions_padding = 0;
    let mut one_byte = true;
    for &(from, to) in ids {
        let Some(ext) = original.iter().find(|e| e.id == from) else {
            continue;
        };
        let len = ext.payload.len();
        if len == 0 || len > 255 || to == 0 {
            continue;
        }
        one_byte &= to <= 14 && len <= 16;
        header.extensions.push(Extension {
            id: to,
            payload: ext.payload.clone(),
        });
    }
    header.extension = !header.extensions.is_empty();
    header.extension_profile = match (header.extension, one_byte) {
        (false, _) => 0,
        (true, true) => EXTENSION_PROFILE_ONE_BYTE,
        (true, false) => EXTENSION_PROFILE_TWO_BYTE,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use rtc::shared::marshal::{Marshal, Unmarshal};

    fn ext(id: u8, payload: &[u8]) -> Extension {
        Extension {
            id,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn carrying(extensions: &[Extension]) -> Header {
        Header {
            version: 2,
            extension: true,
            extension_profile: EXTENSION_PROFILE_ONE_BYTE,
            extensions: extensions.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn extensions_are_renumbered_and_the_rest_dropped() {
        // Publisher ids: 1 = audio level, 3 = transport-wide cc, 4 = mid.
        let original = [ext(1, &[0x85]), ext(3, &[0, 7]), ext(4, b"0")];
        let mut header = carrying(&original);
        renumber(&mut header, &original, &[(1, 9)]);
        let wire = header.marshal().expect("marshal");
        let back = Header::unmarshal(&mut wire.as_ref()).expect("unmarshal");
        assert!(back.extension);
        assert_eq!(back.get_extension(9), Some(Bytes::from_static(&[0x85])));
        assert_eq!(back.get_extension(1), None);
        assert_eq!(back.get_extension(3), None);
        assert_eq!(back.get_extension(4), None);
    }

    #[test]
    fn no_common_extension_leaves_a_plain_header() {
        let original = [ext(3, &[0, 7])];
        let mut header = carrying(&original);
        renumber(&mut header, &original, &[(1, 9)]);
        let wire = header.marshal().expect("marshal");
        assert_eq!(wire.len(), 12, "a fixed header without an extension block");
        let back = Header::unmarshal(&mut wire.as_ref()).expect("unmarshal");
        assert!(!back.extension);
    }

    /// A publisher's two-byte block may hold an empty element; the one-byte form cannot say
    /// "zero bytes", so copying it into a one-byte block wrote a corrupt length.
    #[test]
    fn an_empty_element_is_dropped_not_written_malformed() {
        let original = [ext(20, &[]), ext(21, &[0x05])];
        let mut header = carrying(&original);
        renumber(&mut header, &original, &[(20, 1), (21, 2)]);
        let wire = header.marshal().expect("marshal");
        let back = Header::unmarshal(&mut wire.as_ref()).expect("unmarshal");
        assert_eq!(back.extensions.len(), 1);
        assert_eq!(back.get_extension(2), Some(Bytes::from_static(&[0x05])));
    }

    #[test]
    fn a_large_id_or_element_takes_the_two_byte_form() {
        let original = [ext(1, &[1; 20]), ext(2, &[2])];
        let mut header = carrying(&original);
        renumber(&mut header, &original, &[(1, 3), (2, 4)]);
        assert_eq!(header.extension_profile, EXTENSION_PROFILE_TWO_BYTE);
        let wire = header.marshal().expect("marshal");
        let back = Header::unmarshal(&mut wire.as_ref()).expect("unmarshal");
        assert_eq!(back.get_extension(3).map(|b| b.len()), Some(20));
        assert_eq!(back.get_extension(4), Some(Bytes::from_static(&[2])));
    }

    proptest! {
        /// Whatever a publisher sends and however ids map, the rewritten header marshals,
        /// parses back, and carries exactly the mapped non-empty elements.
        #[test]
        fn any_renumbering_round_trips(
            original in proptest::collection::vec((1u8..=255, proptest::collection::vec(any::<u8>(), 0..40)), 0..6),
            ids in proptest::collection::vec((1u8..=255, 0u8..=255), 0..6),
        ) {
            let mut seen = std::collections::HashSet::new();
            let original: Vec<Extension> = original
                .into_iter()
                .filter(|(id, _)| seen.insert(*id))
                .map(|(id, p)| ext(id, &p))
                .collect();
            let mut targets = std::collections::HashSet::new();
            let ids: Vec<(u8, u8)> = ids.into_iter().filter(|(_, to)| targets.insert(*to)).collect();
            let mut header = carrying(&original);
            renumber(&mut header, &original, &ids);
            let wire = header.marshal().expect("a rewritten header always marshals");
            let back = Header::unmarshal(&mut wire.as_ref()).expect("and parses back");
            let expected: Vec<(u8, Vec<u8>)> = ids
                .iter()
                .filter_map(|&(from, to)| {
                    let e = original.iter().find(|e| e.id == from)?;
                    (to != 0 && !e.payload.is_empty()).then(|| (to, e.payload.to_vec()))
                })
                .collect();
            let got: Vec<(u8, Vec<u8>)> =
                back.extensions.iter().map(|e| (e.id, e.payload.to_vec())).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
