//! Counters of the media plane, declared once: each has its name and help text here, and
//! `/healthz` and `/metrics` list them from [`SfuStats::counters`].

use miclink_protocol::Ident;

use crate::PcKind;

macro_rules! counters {
    ($($(#[doc = $help:literal])+ $name:ident,)+) => {
        /// Totals of the whole media plane (every loop summed), kept cheaply on the hot path.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct SfuStats {
            /// Peer connections open now.
            pub peers: u64,
            /// How many of the current overload shedding units (a subscriber's video track) are
            /// paused, summed over the loops: 0 when no loop is behind.
            pub shed_level: u64,
            /// The longest time any loop has been behind its sockets, in milliseconds.
            pub backlog_ms: u64,
            $($(#[doc = $help])+ pub $name: u64,)+
        }

        impl SfuStats {
            /// Every monotonic counter as (name, help, value), for `/healthz` and `/metrics`.
            pub fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), concat!($($help),+).trim(), self.$name),)+]
            }
        }

        impl std::ops::AddAssign for SfuStats {
            fn add_assign(&mut self, o: SfuStats) {
                self.peers += o.peers;
                self.shed_level += o.shed_level;
                self.backlog_ms = self.backlog_ms.max(o.backlog_ms);
                $(self.$name += o.$name;)+
            }
        }
    };
}

counters! {
    /// Datagrams received on the media port.
    datagrams_in,
    /// Datagrams dropped: unknown sender, or refused by their connection.
    datagrams_dropped,
    /// Datagrams and TCP connections from another machine, dropped because the media plane
    /// serves only this one (the embedded defaults; `media_addr` unset).
    dropped_foreign,
    /// RTP packets received from publishers.
    rtp_in,
    /// RTP packets dropped because the sender holds no seat (or not for that kind).
    rtp_dropped_not_allowed,
    /// RTP packets forwarded to subscribers.
    rtp_out,
    /// Of those, packets forwarded to other nodes of the cluster (one relay per room and
    /// node, whatever the number of viewers there).
    rtp_relayed,
    /// Video packets not forwarded because the loop was overloaded (shed before any audio).
    video_shed,
    /// Audio packets not forwarded because the loop was overloaded even with no video left.
    audio_shed,
    /// Packets a subscriber's connection refused to send (not negotiated on that leg).
    rtp_write_errors,
    /// Keyframe requests sent to publishers.
    plis_sent,
    /// NACK packets received from subscribers.
    nacks_received,
    /// NACK packets sent to publishers for what the server lost on their leg.
    nacks_to_publishers,
    /// Packets sent again from a published track's buffer.
    retransmitted,
    /// NACKed packets no longer in the buffer.
    retransmit_misses,
    /// NACKed packets not sent again: already sent again less than 100 ms before.
    retransmit_repeats,
    /// NACKed packets not sent again: the subscriber's track had used its retransmission budget
    /// (half its own packet rate, bursts of 64).
    retransmit_over_budget,
    /// Transport-wide congestion control feedback packets read.
    twcc_feedback,
    /// RTP packets of a stream the track did not take (a simulcast layer past three).
    rtp_unknown_stream,
    /// Times a subscriber's stream of a video track moved to another simulcast layer (or a
    /// republished stream), each at a keyframe.
    layer_switches,
    /// `subscription_state` events sent to subscribers.
    subscription_changes,
    /// `publisher_layers` events sent to publishers.
    publisher_layer_changes,
    /// Probes of a subscriber's path begun (padding sent to prove room for a higher layer).
    probes,
    /// Probes stopped because the path's queue grew or it lost packets.
    probes_failed,
    /// Padding packets sent by probes.
    padding_sent,
    /// Datagrams a loop received for a connection another loop owns (first packets of a flow).
    handed_over,
    /// Datagrams dropped between loops because the receiving loop's queue was full.
    handover_dropped,
    /// Datagrams the kernel would not take (full send buffer).
    send_errors,
    /// TCP connections accepted on the media port (ICE-TCP).
    tcp_accepted,
    /// TCP connections closed before they proved to belong to a connection here: no valid
    /// check in time, a frame too long, garbage, or too many such connections at once.
    tcp_refused,
    /// Video packets a TCP connection dropped because its client reads too slowly (its
    /// publisher is then asked for a keyframe).
    tcp_video_dropped,
    /// Other packets (audio, RTCP, DTLS) a TCP connection dropped: its queue was full even
    /// without video.
    tcp_dropped,
    /// Subscribe connections rebuilt after they failed or the client asked (`resubscribe`).
    subscribe_rebuilt,
    /// Publish connections replaced by a new publish offer of the same user.
    republished,
    /// Connections refused because a loop held as many as the open file limit leaves room for.
    peers_refused,
    /// Connections closed because ICE and DTLS had not completed within the connect deadline
    /// (10 s) of their description exchange: an abandoned offer frees its place.
    connect_timeouts,
    /// WHEP viewers refused because the loop's connections were at the share kept for
    /// publishers and members (so a flood of players never keeps an anchor from going live).
    watch_refused,
}

/// Counters of one peer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub room: Ident,
    pub user: Ident,
    pub kind: PcKind,
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// RTP packets received (publish connections).
    pub rtp_in: u64,
    /// RTP packets forwarded (subscribe connections).
    pub rtp_out: u64,
    pub retransmitted: u64,
    /// Keyframe requests sent (publish connections).
    pub plis: u64,
    /// NACK packets: received from this subscriber, or sent to this publisher.
    pub nacks: u64,
    /// RTP packets lost: on this publisher's leg, the sequence numbers skipped on arrival (counted
    /// even when a retransmission repairs them later); on this subscriber's leg, what its
    /// receiver reports say.
    pub packets_lost: u64,
}

impl PeerStats {
    pub(crate) fn new(room: Ident, user: Ident, kind: PcKind) -> PeerStats {
        PeerStats {
            room,
            user,
            kind,
            datagrams_in: 0,
            bytes_in: 0,
            datagrams_out: 0,
            bytes_out: 0,
            rtp_in: 0,
            rtp_out: 0,
            retransmitted: 0,
            plis: 0,
            nacks: 0,
            packets_lost: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_listed_with_their_help_and_summed() {
        let mut a = SfuStats {
            rtp_out: 3,
            backlog_ms: 5,
            ..Default::default()
        };
        a += SfuStats {
            rtp_out: 4,
            backlog_ms: 2,
            peers: 1,
            ..Default::default()
        };
        assert_eq!((a.rtp_out, a.backlog_ms, a.peers), (7, 5, 1));
        let listed = a.counters();
        let (_, help, value) = listed
            .iter()
            .find(|(name, _, _)| *name == "rtp_out")
            .expect("listed");
        assert_eq!(*value, 7);
        assert_eq!(*help, "RTP packets forwarded to subscribers.");
        assert!(listed.iter().all(|(_, help, _)| !help.trim().is_empty()));
    }
}
