//! The SFU's reader of the session descriptions clients send, and the shape it holds them to
//! before the WebRTC stack sees them; and what the SFU learns from one (the kinds a publisher
//! sends, its simulcast layers, the places a WHEP player receives).
//!
//! A description is parsed once with webrtc-rs's `sdp` crate into [`Sdp`]; its sections are
//! then counted against the bounds of what the description is for ([`Purpose`]). rtc would build
//! a transceiver, a codec table and an answer section for every m-section it is offered, so an
//! offer of a few hundred sections costs a megabyte and an answer of tens of kilobytes: those are
//! refused here with a `bad_sdp` saying which bound they broke, never handed on.

use std::collections::HashSet;
use std::io::Cursor;

use rtc::sdp::{MediaDescription, SessionDescription};

use crate::SfuError;

/// Simulcast streams one video section may announce (rule 14).
pub(crate) const MAX_RIDS: usize = 3;
/// Distinct SSRCs one section may name: three simulcast streams, their repair streams, FEC.
pub(crate) const MAX_SSRCS: usize = 8;
/// `a=ssrc:` lines of one section (a browser writes up to four per SSRC).
pub(crate) const MAX_SSRC_LINES: usize = 48;
/// ICE candidates of one section (or of the session level) rtc is given. The server is
/// ICE-lite and learns a client's addresses from its checks, so candidates are hints: past
/// this many (a host with many interfaces, each with UDP and TCP candidates) the rest are left
/// out (`for_rtc`, where the core hands descriptions to rtc), not refused.
pub(crate) const MAX_CANDIDATES: usize = 16;
/// Payload types one section may list: a browser's video section lists about 40.
pub(crate) const MAX_FORMATS: usize = 64;
/// Header extensions of one section.
pub(crate) const MAX_EXTMAPS: usize = 32;
/// Attribute lines of one section: a browser's video section has about 150.
pub(crate) const MAX_ATTRIBUTES: usize = 400;
/// Sections of an answer to the server's own offers: a relay carries a room's every seat with
/// every simulcast layer (10 × 4), a subscriber at most two per seat.
pub(crate) const MAX_ANSWER_SECTIONS: usize = 64;

/// What a description is for, and so how many sections of each kind it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A publisher's offer (`publish`, WHIP): one audio and one video section at most, and
    /// room for one more (a data channel, or a section the client stopped).
    Publish,
    /// A WHEP player's offer: an audio and a video section per seat it asks for.
    Watch { seats: usize },
    /// An answer to one of the server's offers, or another node's relay description.
    Answer,
}

/// A parsed description.
pub struct Sdp {
    description: SessionDescription,
}

impl std::fmt::Debug for Sdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sdp")
            .field("sections", &self.description.media_descriptions.len())
            .finish()
    }
}

fn bad(why: String) -> SfuError {
    SfuError::BadSdp(why)
}

impl Sdp {
    /// Parse `text`.
    pub fn parse(text: &str) -> Result<Sdp, SfuError> {
        let description = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
            .map_err(|e| bad(format!("not a session description: {e}")))?;
        Ok(Sdp { description })
    }

    /// Parse `text` and hold it to the bounds of `purpose`.
    pub fn checked(text: &str, purpose: Purpose) -> Result<Sdp, SfuError> {
        let sdp = Sdp::parse(text)?;
        sdp.check(purpose)?;
        Ok(sdp)
    }

    pub fn sections(&self) -> &[MediaDescription] {
        &self.description.media_descriptions
    }

    /// The sections in use: those with a port, and those with port 0 that are `a=bundle-only`
    /// (RFC 8843 section 6: a client with the max-bundle policy, such as GStreamer's webrtcbin,
    /// offers every section but the first that way; it is not rejected).
    fn in_use(&self) -> impl Iterator<Item = &MediaDescription> {
        self.sections()
            .iter()
            .filter(|m| m.media_name.port.value != 0 || m.has_attribute("bundle-only"))
    }

    /// How many sections in use of each kind (audio, video) send media to the server.
    pub(crate) fn sending(&self) -> (usize, usize) {
        self.count(|m| !m.has_attribute("recvonly") && !m.has_attribute("inactive"))
    }

    /// How many sections in use of each kind (audio, video) receive media from the server.
    pub(crate) fn receiving(&self) -> (usize, usize) {
        self.count(|m| !m.has_attribute("sendonly") && !m.has_attribute("inactive"))
    }

    fn count(&self, direction: impl Fn(&MediaDescription) -> bool) -> (usize, usize) {
        let of = |kind: &str| {
            self.in_use()
                .filter(|m| m.media_name.media == kind && direction(m))
                .count()
        };
        (of("audio"), of("video"))
    }

    /// The simulcast layers a publish offer announces for its video (`a=rid:<id> send` in the
    /// first sending video section), when there are several and each is named `q`, `h` or `f`;
    /// empty otherwise. A browser starts its top layers only once its estimate allows, so what
    /// the server has seen so far is not all the publisher can send.
    pub(crate) fn layers_sent(&self) -> Vec<miclink_protocol::VideoQuality> {
        let Some(video) = self.in_use().find(|m| {
            m.media_name.media == "video"
                && !m.has_attribute("recvonly")
                && !m.has_attribute("inactive")
        }) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for rid in values(video, "rid") {
            let mut fields = rid.split_whitespace();
            if fields.nth(1) != Some("send") {
                continue;
            }
            match rid.split_whitespace().next().and_then(crate::layers::named) {
                Some(q) if out.len() < MAX_RIDS => out.push(q),
                // Other names are ranked by their measured rate once seen.
                _ => return Vec::new(),
            }
        }
        out.sort_unstable();
        out.dedup();
        if out.len() < 2 {
            out.clear();
        }
        out
    }

    /// Whether the description's sections and their contents stay within the bounds of
    /// `purpose`; the error names the bound.
    pub fn check(&self, purpose: Purpose) -> Result<(), SfuError> {
        let sections = self.sections();
        let count = |kind: &str| self.in_use().filter(|m| m.media_name.media == kind).count();
        let (audio, video) = (count("audio"), count("video"));
        let (max_each, max_all, what) = match purpose {
            Purpose::Publish => (1, 3, "a publish offer"),
            Purpose::Watch { seats } => (seats, 2 * seats + 1, "a WHEP offer"),
            Purpose::Answer => (MAX_ANSWER_SECTIONS, MAX_ANSWER_SECTIONS, "an answer"),
        };
        if sections.len() > max_all {
            return Err(bad(format!(
                "{what} may have at most {max_all} m-sections; this one has {}",
                sections.len()
            )));
        }
        if audio > max_each || video > max_each {
            return Err(bad(format!(
                "{what} may have at most {max_each} audio and {max_each} video m-sections; \
                 this one has {audio} and {video}"
            )));
        }
        for (i, m) in sections.iter().enumerate() {
            let formats = m.media_name.formats.len();
            if formats > MAX_FORMATS {
                return Err(bad(format!(
                    "m-section {i} lists {formats} payload types; at most {MAX_FORMATS}"
                )));
            }
            if m.attributes.len() > MAX_ATTRIBUTES {
                return Err(bad(format!(
                    "m-section {i} has {} attribute lines; at most {MAX_ATTRIBUTES}",
                    m.attributes.len()
                )));
            }
            let rids: HashSet<&str> = values(m, "rid")
                .filter_map(|v| v.split_whitespace().next())
                .collect();
            if rids.len() > MAX_RIDS {
                return Err(bad(format!(
                    "m-section {i} announces {} rids; at most {MAX_RIDS} simulcast layers",
                    rids.len()
                )));
            }
            let ssrc_lines: Vec<&str> = values(m, "ssrc").collect();
            if ssrc_lines.len() > MAX_SSRC_LINES {
                return Err(bad(format!(
                    "m-section {i} has {} a=ssrc lines; at most {MAX_SSRC_LINES}",
                    ssrc_lines.len()
                )));
            }
            let ssrcs: HashSet<&str> = ssrc_lines
                .iter()
                .filter_map(|v| v.split_whitespace().next())
                .collect();
            if ssrcs.len() > MAX_SSRCS {
                return Err(bad(format!(
                    "m-section {i} names {} SSRCs; at most {MAX_SSRCS}",
                    ssrcs.len()
                )));
            }
            let extmaps = values(m, "extmap").count();
            if extmaps > MAX_EXTMAPS {
                return Err(bad(format!(
                    "m-section {i} has {extmaps} header extensions; at most {MAX_EXTMAPS}"
                )));
            }
        }
        Ok(())
    }
}

/// What the SFU, the signaling plane and the load tool read in a description, all through
/// the one parser (never by scanning its lines).
impl Sdp {
    /// The values of every `key` attribute, at the session level and in every section.
    fn all_values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.description
            .attributes
            .iter()
            .filter(move |a| a.key == key)
            .filter_map(|a| a.value.as_deref())
            .chain(self.sections().iter().flat_map(move |m| values(m, key)))
    }

    /// The candidates (`a=candidate:` values), session level and sections, in order.
    pub fn candidates(&self) -> impl Iterator<Item = &str> {
        self.all_values("candidate")
    }

    /// The addresses of the host candidates of `transport` (`udp` or `tcp`), each once, in
    /// order.
    pub fn host_candidates(&self, transport: &str) -> Vec<std::net::SocketAddr> {
        let mut addrs = Vec::new();
        for c in self.candidates() {
            let f: Vec<&str> = c.split_whitespace().collect();
            if f.len() >= 8
                && f[2].eq_ignore_ascii_case(transport)
                && f[7] == "host"
                && let Ok(ip) = f[4].parse()
                && let Ok(port) = f[5].parse()
            {
                let addr = std::net::SocketAddr::new(ip, port);
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        addrs
    }

    /// The track ids (`a=msid:<stream> <track>`) of the sections that send.
    pub fn sent_track_ids(&self) -> HashSet<String> {
        self.sections()
            .iter()
            .filter(|m| !m.has_attribute("recvonly") && !m.has_attribute("inactive"))
            .filter_map(|m| values(m, "msid").next()?.split_whitespace().nth(1))
            .map(str::to_owned)
            .collect()
    }

    /// The mid of the first section of `kind` (`audio` or `video`).
    pub fn mid(&self, kind: &str) -> Option<&str> {
        let m = self
            .sections()
            .iter()
            .find(|m| m.media_name.media == kind)?;
        values(m, "mid").next()
    }

    /// The id the description gives header extension `uri` (its first `a=extmap` naming it).
    pub fn extension_id(&self, uri: &str) -> Option<u8> {
        self.all_values("extmap").find_map(|v| {
            let (id, rest) = v.split_once(' ')?;
            let id = id.split('/').next()?;
            (rest.split_whitespace().next()? == uri).then(|| id.parse().ok())?
        })
    }

    /// The codecs of every section: (payload type, encoding name as written, its fmtp).
    fn codecs(&self) -> impl Iterator<Item = (&MediaDescription, u8, &str)> {
        self.sections().iter().flat_map(|m| {
            values(m, "rtpmap").filter_map(move |v| {
                let (pt, codec) = v.split_once(' ')?;
                Some((m, pt.parse().ok()?, codec.split('/').next()?))
            })
        })
    }

    /// Whether some section lists a codec named one of `names` (case aside).
    pub fn lists_codec(&self, names: &[&str]) -> bool {
        self.codecs()
            .any(|(_, _, name)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }

    /// The payload type given codec `mime` (`video/H264`) whose fmtp contains `fmtp` (any
    /// fmtp when empty).
    pub fn payload_type(&self, mime: &str, fmtp: &str) -> Option<u8> {
        let name = mime.split('/').nth(1)?;
        self.codecs().find_map(|(m, pt, codec)| {
            if !codec.eq_ignore_ascii_case(name) {
                return None;
            }
            let line = values(m, "fmtp")
                .find(|v| v.split_once(' ').is_some_and(|(p, _)| p.parse() == Ok(pt)))
                .unwrap_or_default();
            (fmtp.is_empty() || line.contains(fmtp)).then_some(pt)
        })
    }
}

/// The values of `key`'s attributes in section `m`.
fn values<'a>(m: &'a MediaDescription, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    m.attributes
        .iter()
        .filter(move |a| a.key == key)
        .filter_map(|a| a.value.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n";

    fn section(kind: &str, mid: usize, extra: &str) -> String {
        let pt = if kind == "audio" { 111 } else { 96 };
        let codec = if kind == "audio" {
            "opus/48000/2"
        } else {
            "VP8/90000"
        };
        format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=sendonly\r\na=rtpmap:{pt} {codec}\r\n{extra}"
        )
    }

    fn offer(sections: &[(&str, &str)]) -> String {
        let mut s = HEAD.to_owned();
        for (i, (kind, extra)) in sections.iter().enumerate() {
            s += &section(kind, i, extra);
        }
        s
    }

    fn refused(sdp: &str, purpose: Purpose) -> String {
        match Sdp::checked(sdp, purpose) {
            Err(SfuError::BadSdp(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_browser_shaped_offer_passes_and_a_publish_offer_has_one_section_of_each_kind() {
        let simulcast =
            "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n";
        let ok = offer(&[("audio", ""), ("video", simulcast)]);
        Sdp::checked(&ok, Purpose::Publish).expect("a browser's publish offer");
        let two_videos = offer(&[("audio", ""), ("video", ""), ("video", "")]);
        let why = refused(&two_videos, Purpose::Publish);
        assert!(why.contains("1 audio and 1 video"), "{why}");
        let many: Vec<(&str, &str)> = (0..215)
            .map(|i| {
                if i % 2 == 0 {
                    ("audio", "")
                } else {
                    ("video", "")
                }
            })
            .collect();
        let why = refused(&offer(&many), Purpose::Publish);
        assert!(
            why.contains("at most 3 m-sections; this one has 215"),
            "{why}"
        );
        assert!(Sdp::checked("garbage", Purpose::Publish).is_err());
    }

    #[test]
    fn a_whep_offer_has_a_pair_per_seat_at_most() {
        let pairs = |n: usize| -> Vec<(&str, &str)> {
            (0..2 * n)
                .map(|i| {
                    if i % 2 == 0 {
                        ("video", "")
                    } else {
                        ("audio", "")
                    }
                })
                .collect()
        };
        Sdp::checked(&offer(&pairs(10)), Purpose::Watch { seats: 10 }).expect("ten seats");
        let why = refused(&offer(&pairs(11)), Purpose::Watch { seats: 10 });
        assert!(why.contains("WHEP"), "{why}");
    }

    fn sdp(text: &str) -> Sdp {
        Sdp::parse(&format!("{HEAD}{text}")).expect("parses")
    }

    #[test]
    fn the_kinds_a_description_sends_and_receives() {
        let both = sdp("m=audio 9 X 111\r\na=sendonly\r\nm=video 9 X 96\r\na=sendonly\r\n");
        assert_eq!(both.sending(), (1, 1));
        assert_eq!(both.receiving(), (0, 0));
        let audio = sdp("m=audio 9 X 111\r\na=sendrecv\r\nm=video 0 X 96\r\n");
        assert_eq!(audio.sending(), (1, 0), "a rejected section sends nothing");
        let places = sdp(
            "m=audio 9 X 111\r\na=recvonly\r\nm=video 9 X 96\r\na=recvonly\r\n\
             m=audio 9 X 111\r\na=sendrecv\r\nm=video 9 X 96\r\nm=application 9 X webrtc-datachannel\r\n",
        );
        assert_eq!(places.receiving(), (2, 2));
        // Issue 33: webrtcbin (max-bundle) offers every section but the first with port 0 and
        // a=bundle-only; each is a place all the same.
        let bundled = sdp(
            "m=video 9 X 101\r\na=recvonly\r\nm=audio 0 X 96\r\na=bundle-only\r\na=recvonly\r\n",
        );
        assert_eq!(bundled.receiving(), (1, 1));
        let publisher = sdp("m=audio 9 X 111\r\nm=video 0 X 96\r\na=bundle-only\r\n");
        assert_eq!(publisher.sending(), (1, 1));
        assert!(Sdp::parse("garbage").is_err());
    }

    #[test]
    fn the_simulcast_layers_an_offer_announces() {
        use miclink_protocol::VideoQuality::{High, Low, Medium};
        let browser = sdp(
            "m=audio 9 X 111\r\na=rid:x send\r\nm=video 9 X 96\r\na=rid:q send\r\n\
             a=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n",
        );
        assert_eq!(browser.layers_sent(), vec![Low, Medium, High]);
        let two = sdp("m=video 9 X 96\r\na=rid:f send\r\na=rid:q send\r\n");
        assert_eq!(two.layers_sent(), vec![Low, High]);
        // Other names are ranked by rate once seen; one layer is no simulcast; recv rids and
        // rejected sections are not sent.
        let other = sdp("m=video 9 X 96\r\na=rid:lo send\r\na=rid:hi send\r\n");
        assert!(other.layers_sent().is_empty());
        let one = sdp("m=video 9 X 96\r\na=rid:f send\r\na=rid:q recv\r\n");
        assert!(one.layers_sent().is_empty());
        let rejected = sdp("m=video 0 X 96\r\na=rid:q send\r\na=rid:f send\r\n");
        assert!(rejected.layers_sent().is_empty());
        let many: String = std::iter::repeat_n("a=rid:q send\r\n", 100).collect();
        assert_eq!(
            sdp(&format!("m=video 9 X 96\r\n{many}")).layers_sent(),
            Vec::new()
        );
    }

    #[test]
    fn rids_ssrcs_candidates_and_formats_are_bounded() {
        let rids: String = (0..4).map(|i| format!("a=rid:r{i} send\r\n")).collect();
        let why = refused(&offer(&[("video", &rids)]), Purpose::Publish);
        assert!(why.contains("4 rids"), "{why}");
        let rids: String = (0..1500).map(|i| format!("a=rid:r{i} send\r\n")).collect();
        let why = refused(&offer(&[("video", &rids)]), Purpose::Publish);
        assert!(why.contains("1503 attribute lines"), "{why}");
        let ssrcs: String = (0..9).map(|i| format!("a=ssrc:{i} cname:x\r\n")).collect();
        let why = refused(&offer(&[("video", &ssrcs)]), Purpose::Publish);
        assert!(why.contains("9 SSRCs"), "{why}");
        let lines: String = (0..49).map(|_| "a=ssrc:1 cname:x\r\n").collect();
        let why = refused(&offer(&[("video", &lines)]), Purpose::Publish);
        assert!(why.contains("49 a=ssrc lines"), "{why}");
        // Candidates are hints to an ICE-lite server: many pass (rtc gets the first few).
        let cands: String = (0..40)
            .map(|i| format!("a=candidate:{i} 1 udp 1 198.51.100.{i} 9 typ host\r\n"))
            .collect();
        Sdp::checked(
            &offer(&[("audio", &cands), ("video", &cands)]),
            Purpose::Publish,
        )
        .expect("a host with many interfaces");
        let formats: String = (0..65).map(|i| format!(" {}", 30 + i)).collect();
        let wide = format!("{HEAD}m=video 9 UDP/TLS/RTP/SAVPF{formats}\r\na=mid:0\r\n");
        let why = refused(&wide, Purpose::Publish);
        assert!(why.contains("65 payload types"), "{why}");
        let exts: String = (1..=33)
            .map(|i| format!("a=extmap:{i} urn:x:{i}\r\n"))
            .collect();
        let why = refused(&offer(&[("audio", &exts)]), Purpose::Publish);
        assert!(why.contains("33 header extensions"), "{why}");
    }

    #[test]
    fn what_the_readers_find_in_a_description() {
        let text = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
            a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
            a=sendonly\r\na=msid:alice relay.0.-.00000001\r\na=rtpmap:111 opus/48000/2\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 102\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=inactive\r\n\
            a=msid:bob relay.1.q.00000002\r\na=rtpmap:96 VP8/90000\r\n\
            a=rtpmap:102 H264/90000\r\n\
            a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n\
            a=candidate:2 1 tcp 1 127.0.0.1 7882 typ host tcptype passive\r\n\
            a=extmap:4/sendonly http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
            a=msid:alice relay.0.f.00000003\r\na=rtpmap:96 VP8/90000\r\n";
        let d = Sdp::parse(text).expect("parses");
        let sent = d.sent_track_ids();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(sent.contains("relay.0.-.00000001") && sent.contains("relay.0.f.00000003"));
        assert_eq!(
            d.host_candidates("udp"),
            vec!["127.0.0.1:7882".parse::<std::net::SocketAddr>().unwrap()]
        );
        assert_eq!(
            d.host_candidates("tcp"),
            vec!["127.0.0.1:7882".parse::<std::net::SocketAddr>().unwrap()]
        );
        assert_eq!(d.mid("video"), Some("1"));
        assert_eq!(d.mid("application"), None);
        assert_eq!(
            d.extension_id("urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
            Some(1)
        );
        assert_eq!(
            d.extension_id(
                "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
            ),
            Some(4)
        );
        assert!(d.lists_codec(&["opus", "vp8"]) && !d.lists_codec(&["av1"]));
        assert_eq!(
            d.payload_type("video/H264", "packetization-mode=1"),
            Some(102)
        );
        assert_eq!(d.payload_type("video/H264", "packetization-mode=0"), None);
        assert_eq!(d.payload_type("audio/opus", ""), Some(111));
    }
}
