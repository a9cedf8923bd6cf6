//! One peer connection as the SFU holds it ([`Peer`]): the rtc connection, whose it is, its
//! addresses and connect deadline, and what it is for ([`Role`]), each role's state in a type
//! of its own ([`crate::publisher`], [`crate::subscriber`], [`crate::relay::RelayIn`]).
//!
//! Nothing here routes or forwards; that is the core's job.

use std::time::{Duration, Instant};

use miclink_protocol::Ident;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

use crate::PcKind;
use crate::ids::PeerId;
use crate::publisher::{Publisher, StandIn};
use crate::remote::Remote;
use crate::stats::PeerStats;
use crate::subscriber::Subscriber;

/// Remote addresses one connection may use at once: a client switches networks now and then,
/// but a handful covers every honest case, and each address costs a map entry and a socket.
pub(crate) const MAX_ADDRS: usize = 4;

/// How long a connection may take to connect (ICE, then DTLS) once its offer and answer were
/// exchanged. A browser on a bad network takes a few seconds; a connection nobody completes
/// (an abandoned WHEP or WHIP offer, a client that vanished) would otherwise hold its place
/// until ICE gives up, a minute or more.
pub(crate) const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

pub(crate) struct Peer {
    pub(crate) pc: RTCPeerConnection,
    pub(crate) room: Ident,
    pub(crate) user: Ident,
    pub(crate) ufrag: String,
    /// Remote addresses learned from the client's checks, at most [`MAX_ADDRS`].
    pub(crate) addrs: Vec<Remote>,
    pub(crate) connected: bool,
    /// Set once descriptions were exchanged: a connection not connected (ICE and DTLS) by then
    /// is closed as failed ([`CONNECT_DEADLINE`]).
    pub(crate) connect_by: Option<Instant>,
    /// Trickled candidates taken so far (they are capped).
    pub(crate) remote_candidates: usize,
    /// What the connection is for, and the state that comes with it.
    pub(crate) role: Role,
    pub(crate) counters: PeerStats,
    pub(crate) span: tracing::Span,
}

/// What a connection is for. Each role's state is its own type; a connection changes role only
/// as it is set up (a subscribe connection becomes a WHEP player's or a relay's, a publish
/// connection a stand-in or a relay's receiving end).
pub(crate) enum Role {
    /// A member's (or an encoder's) publish connection: the client offered it.
    Publisher(Publisher),
    /// A publisher on a relay from another node: its tracks, fed from the relay; never
    /// connected itself.
    StandIn(Publisher, StandIn),
    /// A member's subscribe connection: the server offers it, and offers again when the
    /// tracks change.
    Subscriber(Subscriber),
    /// A WHEP player's: made from its own receive-only offer, answered once; its places
    /// change hands instead of being offered again.
    Player(Subscriber, Vec<crate::whep::Slot>),
    /// At a room's origin: the relay carrying the room to another node (its senders pinned,
    /// every layer a stream of its own).
    RelayOut(Subscriber, String),
    /// At another node: the relay from the room's origin, a client connection of this core;
    /// what it carries feeds the stand-ins.
    RelayIn(crate::relay::RelayIn),
}

impl Role {
    /// Which of the two kinds of connection the client sees it as.
    pub(crate) fn kind(&self) -> PcKind {
        match self {
            Role::Subscriber(_) | Role::Player(..) | Role::RelayOut(..) => PcKind::Subscribe,
            Role::Publisher(_) | Role::StandIn(..) | Role::RelayIn(_) => PcKind::Publish,
        }
    }

    /// The receiving side of a publisher or a stand-in.
    pub(crate) fn publisher(&self) -> Option<&Publisher> {
        match self {
            Role::Publisher(p) | Role::StandIn(p, _) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn publisher_mut(&mut self) -> Option<&mut Publisher> {
        match self {
            Role::Publisher(p) | Role::StandIn(p, _) => Some(p),
            _ => None,
        }
    }

    /// The sending side of a subscriber, a player or a relay out.
    pub(crate) fn subscriber(&self) -> Option<&Subscriber> {
        match self {
            Role::Subscriber(s) | Role::Player(s, _) | Role::RelayOut(s, _) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn subscriber_mut(&mut self) -> Option<&mut Subscriber> {
        match self {
            Role::Subscriber(s) | Role::Player(s, _) | Role::RelayOut(s, _) => Some(s),
            _ => None,
        }
    }

    /// The node a relay out carries the room to.
    pub(crate) fn relay_to(&self) -> Option<&str> {
        match self {
            Role::RelayOut(_, node) => Some(node),
            _ => None,
        }
    }

    pub(crate) fn relay_in(&self) -> Option<&crate::relay::RelayIn> {
        match self {
            Role::RelayIn(r) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn relay_in_mut(&mut self) -> Option<&mut crate::relay::RelayIn> {
        match self {
            Role::RelayIn(r) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn stand_in(&self) -> Option<&StandIn> {
        match self {
            Role::StandIn(_, s) => Some(s),
            _ => None,
        }
    }

    /// A WHEP player's places.
    pub(crate) fn slots(&self) -> Option<&Vec<crate::whep::Slot>> {
        match self {
            Role::Player(_, slots) => Some(slots),
            _ => None,
        }
    }

    pub(crate) fn slots_mut(&mut self) -> Option<&mut Vec<crate::whep::Slot>> {
        match self {
            Role::Player(_, slots) => Some(slots),
            _ => None,
        }
    }

    /// Whether this is a relay between nodes (either end).
    pub(crate) fn is_relay(&self) -> bool {
        matches!(self, Role::RelayOut(..) | Role::RelayIn(_))
    }

    /// A subscriber's connection becomes a WHEP player's, with these places.
    pub(crate) fn play(&mut self, slots: Vec<crate::whep::Slot>) {
        if let Role::Subscriber(s) = std::mem::replace(self, Role::Publisher(Publisher::default()))
        {
            *self = Role::Player(s, slots);
        }
    }

    /// A subscriber's connection becomes the relay to `node`.
    pub(crate) fn relay_out(&mut self, node: String) {
        if let Role::Subscriber(s) = std::mem::replace(self, Role::Publisher(Publisher::default()))
        {
            *self = Role::RelayOut(s, node);
        }
    }

    /// A publisher's connection becomes a stand-in fed by relay `via` from `node`.
    pub(crate) fn stand_in_for(&mut self, via: PeerId, node: String) {
        if let Role::Publisher(p) = std::mem::replace(self, Role::Publisher(Publisher::default())) {
            *self = Role::StandIn(p, StandIn::new(via, node));
        }
    }
}

impl Peer {
    /// Which of the two kinds of connection the client sees it as.
    pub(crate) fn kind(&self) -> PcKind {
        self.role.kind()
    }

    /// Descriptions were exchanged at `now`: the connection has `allowed` to connect, unless it
    /// is connected already (a renegotiation) or its time is running (a second exchange before
    /// connecting).
    pub(crate) fn negotiated(&mut self, now: Instant, allowed: Duration) {
        if !self.connected && self.connect_by.is_none() {
            self.connect_by = Some(now + allowed);
        }
    }

    /// NACKs this publish connection sent since the last read (none for a subscribe one).
    pub(crate) fn read_nacks(&mut self, now: Instant) -> u64 {
        if self.kind() != PcKind::Publish {
            return 0;
        }
        let sent = nacks_sent(&mut self.pc, now);
        let new = sent.saturating_sub(self.counters.nacks);
        self.counters.nacks = sent;
        new
    }
}

/// The SSRC of `packet` when it is a video RTP packet this subscribe connection sends: on a
/// congested TCP connection such packets go first. The RTP header (RFC 3550) is clear text
/// under SRTP; RTCP (payload types 192 to 223 in the second byte, RFC 5761) is never video.
pub(crate) fn video_ssrc(peer: &Peer, packet: &[u8]) -> Option<u32> {
    if peer.kind() != PcKind::Subscribe || packet.len() < 12 || !(128..=191).contains(&packet[0]) {
        return None;
    }
    if (192..=223).contains(&packet[1]) {
        return None;
    }
    let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
    peer.role
        .subscriber()?
        .outs()
        .any(|(_, o)| o.ssrc == ssrc && o.kind == RtpCodecKind::Video)
        .then_some(ssrc)
}

/// One figure summed over a connection's rtc statistics (read when asked, never on the packet
/// path).
fn stats_sum(
    pc: &mut RTCPeerConnection,
    now: Instant,
    pick: impl Fn(&rtc::statistics::report::RTCStatsReportEntry) -> Option<u64>,
) -> u64 {
    pc.get_stats(now, rtc::statistics::StatsSelector::None)
        .iter()
        .filter_map(pick)
        .sum()
}

/// Packets lost on a subscribe connection's leg, as the subscriber's receiver reports say.
pub(crate) fn subscriber_losses(pc: &mut RTCPeerConnection, now: Instant) -> u64 {
    use rtc::statistics::report::RTCStatsReportEntry;
    stats_sum(pc, now, |entry| match entry {
        RTCStatsReportEntry::RemoteInboundRtp(s) => {
            Some(s.received_rtp_stream_stats.packets_lost.max(0) as u64)
        }
        _ => None,
    })
}

/// NACKs a publish connection has sent its publisher.
fn nacks_sent(pc: &mut RTCPeerConnection, now: Instant) -> u64 {
    use rtc::statistics::report::RTCStatsReportEntry;
    stats_sum(pc, now, |entry| match entry {
        RTCStatsReportEntry::InboundRtp(s) => Some(u64::from(s.nack_count)),
        _ => None,
    })
}
