//! Descriptions in the core: answering a client's offer (a publish connection, a WHEP
//! player, a relay), applying a subscriber's answer to the core's offer, what an answer
//! settled for each sender, and the adjustments rtc needs to read a browser's SDP.

use std::time::Instant;

use rtc::peer_connection::sdp::RTCSessionDescription;

use crate::ids::PeerId;
use crate::peer::CONNECT_DEADLINE;
use crate::sdp::{Purpose, Sdp};
use crate::track::Negotiated;
use crate::{MediaCore, PcKind, SfuError, extensions};
use miclink_protocol::Ident;

impl MediaCore {
    /// Answer connection `id`'s remote offer (applying `offer` first, when given); a
    /// connection that cannot answer is closed.
    pub(crate) fn answer_offer(
        &mut self,
        now: Instant,
        id: PeerId,
        offer: Option<RTCSessionDescription>,
    ) -> Result<String, SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoOffer)?;
        let answer = (|| {
            if let Some(offer) = offer {
                peer.pc.set_remote_description(now, offer)?;
            }
            let answer = peer.pc.create_answer(None)?;
            peer.pc.set_local_description(now, answer.clone())?;
            Ok::<_, rtc::shared::error::Error>(answer.sdp)
        })();
        if answer.is_ok() {
            peer.negotiated(now, CONNECT_DEADLINE);
        }
        answer.map_err(|e| {
            self.remove_peer(id);
            SfuError::BadSdp(e.to_string())
        })
    }

    pub(crate) fn subscribe_answer(
        &mut self,
        now: Instant,
        room: &Ident,
        user: &Ident,
        answer: String,
        offer_id: Option<u64>,
    ) -> Result<(), SfuError> {
        let id = self
            .room_peer(room, user, PcKind::Subscribe)
            .ok_or(SfuError::NoOffer)?;
        self.apply_answer(now, id, answer, offer_id)
    }

    /// The answer to subscribe connection `id`'s pending offer (`offer_id`, when the answer
    /// names it).
    pub(crate) fn apply_answer(
        &mut self,
        now: Instant,
        id: crate::ids::PeerId,
        answer: String,
        offer_id: Option<u64>,
    ) -> Result<(), SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoOffer)?;
        peer.role
            .subscriber()
            .ok_or(SfuError::NoOffer)?
            .check_answer(offer_id)?;
        Sdp::checked(&answer, Purpose::Answer)?;
        let answer = RTCSessionDescription::answer(for_rtc(&answer))
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        peer.pc
            .set_remote_description(now, answer)
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        // A member whose connections keep missing the deadline gets longer each time.
        let missed = self
            .unconnected
            .get(&(peer.room.clone(), peer.user.clone()))
            .copied()
            .unwrap_or(0);
        peer.negotiated(now, CONNECT_DEADLINE * (1 + missed.min(2)));
        let Some(sub) = peer.role.subscriber_mut() else {
            return Err(SfuError::NoOffer);
        };
        let early = sub.answered();
        // What the answer settled: payload types and extension ids, once, not per packet.
        for (_, out) in sub.outs_mut() {
            if out.offered
                && let Some(n) = negotiated(&mut peer.pc, out.sender, &out.mime, &out.fmtp)
            {
                out.negotiated = Some(n);
            }
        }
        self.settle_extensions(id);
        let renegotiate = self
            .peers
            .get_mut(&id)
            .and_then(|p| p.role.subscriber_mut())
            .is_some_and(|s| s.take_renegotiation());
        if renegotiate {
            self.negotiate(now, id);
        }
        self.process(now, id);
        for (data, from, to) in early.into_iter().flatten() {
            self.input(now, from, to, &data);
        }
        Ok(())
    }
}

/// What the description exchanged on `pc` settled for `sender` carrying `mime` (`fmtp`): its
/// payload type (the same codec with the same parameters, H.264 profile and packetization mode,
/// if the subscriber has it, else the same codec), transport-wide and forwarded extension ids.
pub(crate) fn negotiated(
    pc: &mut rtc::peer_connection::RTCPeerConnection,
    sender: rtc::rtp_transceiver::RTCRtpSenderId,
    mime: &str,
    fmtp: &str,
) -> Option<Negotiated> {
    let mut sender = pc.rtp_sender(sender)?;
    let parameters = sender.get_parameters();
    let codecs = &parameters.rtp_parameters.codecs;
    let same_mime = |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
        c.rtp_codec.mime_type.eq_ignore_ascii_case(mime)
    };
    let payload_type = codecs
        .iter()
        .filter(same_mime)
        .find(|c| c.rtp_codec.sdp_fmtp_line == fmtp)
        .or_else(|| codecs.iter().find(same_mime))
        .map(|c| c.payload_type)?;
    let headers = &parameters.rtp_parameters.header_extensions;
    let twcc = headers
        .iter()
        .find(|h| h.uri == rtc::sdp::extmap::TRANSPORT_CC_URI)
        .and_then(|h| u8::try_from(h.id).ok());
    Some(Negotiated {
        payload_type,
        twcc,
        extensions: extensions::forwarded(headers.iter().map(|h| (h.id, h.uri.as_str()))).to_vec(),
    })
}

/// A client's description as rtc is given it:
/// - without `a=ice-lite`. The server is ICE-lite and must stay the controlled side: given a
///   client that also claims to be lite, rtc makes the offering side controlling, and a lite
///   agent that controls falls back to a full one that checks every candidate the client
///   listed, which would let a client aim the server's checks at any address. Clients are never
///   lite in fact (browsers, OBS, GStreamer, our load tool), so the claim is dropped.
/// - with Opus's channel count. RFC 7587 writes Opus as `opus/48000/2` whatever the client
///   sends; some (GStreamer's webrtcbin, so whepsrc) leave the `/2` out, and rtc's answer copies
///   the offer's line.
/// - with at most [`crate::sdp::MAX_CANDIDATES`] candidates in each section (and at the session
///   level): they are hints to an ICE-lite server, which learns addresses from the checks.
pub(crate) fn for_rtc(sdp: &str) -> String {
    let mut candidates = 0;
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "a=ice-lite" {
            continue;
        }
        if bare.starts_with("m=") {
            candidates = 0;
        } else if bare.starts_with("a=candidate:") {
            candidates += 1;
            if candidates > crate::sdp::MAX_CANDIDATES {
                continue;
            }
        }
        match opus_without_channels(line) {
            Some(end) => {
                out.push_str(&line[..end]);
                out.push_str("/2");
                out.push_str(&line[end..]);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// Where `/2` goes in an `a=rtpmap:<pt> opus/48000` line that lacks it (the end of the clock
/// rate), or `None` for any other line.
fn opus_without_channels(line: &str) -> Option<usize> {
    let rest = line.strip_prefix("a=rtpmap:")?;
    let (_, encoding) = rest.split_once(' ')?;
    let encoding = encoding.trim_end();
    encoding
        .eq_ignore_ascii_case("opus/48000")
        .then(|| line.trim_end().len())
}

#[cfg(test)]
mod tests {
    use super::for_rtc;

    #[test]
    fn rtc_reads_no_ice_lite_claim_and_opus_with_its_channels() {
        let given = "v=0\r\na=ice-lite\r\nm=audio 9 X 96 111\r\na=rtpmap:96 OPUS/48000\r\n\
                     a=rtpmap:111 opus/48000/2\r\na=rtpmap:97 opus/480000\r\n";
        assert_eq!(
            for_rtc(given),
            "v=0\r\nm=audio 9 X 96 111\r\na=rtpmap:96 OPUS/48000/2\r\n\
             a=rtpmap:111 opus/48000/2\r\na=rtpmap:97 opus/480000\r\n"
        );
        assert_eq!(
            for_rtc("a=rtpmap:96 opus/48000"),
            "a=rtpmap:96 opus/48000/2"
        );
    }

    #[test]
    fn rtc_gets_the_first_candidates_of_each_section() {
        let cands: String = (0..20)
            .map(|i| format!("a=candidate:{i} 1 udp 1 198.51.100.1 {i} typ host\r\n"))
            .collect();
        let given = format!("v=0\r\nm=audio 9 X 111\r\n{cands}m=video 9 X 96\r\n{cands}");
        let kept = for_rtc(&given);
        assert_eq!(kept.matches("a=candidate:").count(), 32);
        assert!(kept.contains("a=candidate:15 ") && !kept.contains("a=candidate:16 "));
    }
}
