//! miclink's media plane: a selective forwarding unit on webrtc-rs's sans-IO core (`rtc`).
//!
//! Two layers, as in quinn (`quinn-proto` under `quinn`) and str0m:
//! - [`MediaCore`] is the SFU without I/O: it is handed datagrams, commands and the time, and
//!   answers with datagrams to send, sockets to connect, events for signaling and its next
//!   deadline. Routing, forwarding, rewriting, NACK, PLI and overload shedding all live there,
//!   and tests drive it with in-memory peers (`sim`, with the `test-support` feature) and a
//!   fake clock.
//! - [`Sfu`] starts the driver: a fixed number of event-loop threads sharing one UDP port, each
//!   owning a socket of the port's `SO_REUSEPORT` group, the rooms pinned to it and one
//!   `MediaCore`. The driver is the only code that touches sockets or reads the clock.
//!
//! Each member has up to two connections: *publish* (offered by the client, anchor and linked
//! members only) and *subscribe* (offered by the server, re-offered when the room's published
//! tracks change). The media plane obeys the seat state machine's [`MediaChange`]s and never
//! decides admission: media from anyone not allowed is dropped at packet level.

mod budget;
mod bwe;
mod codec;
mod core;
mod driver;
mod error;
mod extensions;
mod factory;
mod feedback;
mod handle;
mod ids;
mod keyframe;
mod layers;
mod munger;
mod peer;
mod pii;
mod probe;
mod publisher;
mod relay;
mod remote;
mod resend;
mod sdp;
mod seq;
mod shed;
#[cfg(feature = "test-support")]
pub mod sim;
mod speakers;
mod stats;
mod stun;
mod subscriber;
mod tcp;
mod track;
mod twcc;
mod vp8;
mod whep;

pub use crate::codec::Codec;
pub use crate::core::{CoreConfig, MediaCore, Output, Remote, Route, Transmit, Transport};
pub use error::SfuError;
pub use feedback::{RtcpToApplication, is_keyframe_request};
pub use handle::{Sfu, SfuConfig};
pub use miclink_protocol::PeerConnectionKind as PcKind;
pub use miclink_seats::MediaChange;
pub use pii::Pii;
pub use sdp::{Purpose as SdpPurpose, Sdp};
pub use speakers::SPEAKERS_INTERVAL;
pub use stats::{PeerStats, SfuStats};

use miclink_protocol::Ident;

/// Where the answer to a request goes: the signaling socket and the request id. Opaque here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub conn: u64,
    pub id: u64,
}

/// What signaling asks of the media plane. Seat changes come as the seat state machine's own
/// [`MediaChange`]s; the rest are the media requests of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaCommand {
    /// Who may publish, who is in the room, which room ended: obeyed at once.
    Seats(MediaChange),
    /// The same user joined again (a reload, rule 9): their connections close, they get a new
    /// subscribe connection at once and may publish again.
    Rejoin { room: Ident, user: Ident },
    /// The user's session resumed on a new socket: an unanswered subscribe offer is sent again.
    Resumed { room: Ident, user: Ident },
    /// The client's publish offer; a new one replaces the user's publish connection.
    Publish {
        room: Ident,
        user: Ident,
        offer: String,
        reply: ReplyTo,
    },
    /// The client's answer to the last subscribe offer.
    SubscribeAnswer {
        room: Ident,
        user: Ident,
        answer: String,
        /// The offer the client answers, when it says (an older offer's answer is refused).
        offer_id: Option<u64>,
        reply: ReplyTo,
    },
    /// The client wants a new subscribe connection (its own broke).
    Resubscribe {
        room: Ident,
        user: Ident,
        reply: ReplyTo,
    },
    /// A trickled client candidate (`RTCIceCandidateInit.candidate`).
    Candidate {
        room: Ident,
        user: Ident,
        pc: PcKind,
        candidate: String,
    },
    /// `user` wants at most `video` of `publisher`'s video (rule 14).
    SetSubscription {
        room: Ident,
        user: Ident,
        publisher: Ident,
        video: miclink_protocol::VideoQuality,
        reply: ReplyTo,
    },
    /// `user` is an HTTP client (WHIP or WHEP, rule 15) that makes every connection from its own
    /// offer: the server never offers it a subscribe connection, until it joins again
    /// ([`MediaCommand::Rejoin`]) or leaves.
    OwnOffers { room: Ident, user: Ident },
    /// WHEP: `user` (a member) watches through a connection made from its receive-only `offer`;
    /// answered with [`MediaEvent::PublishAnswer`].
    Watch {
        room: Ident,
        user: Ident,
        offer: String,
        reply: ReplyTo,
    },
    /// Origin of `room` in a cluster: node `node` wants every stream of the room, every
    /// simulcast layer, over one relay connection (a new one; that node's older relay of the
    /// room goes). Offered with [`MediaEvent::RelayOffer`].
    RelayOpen { room: Ident, node: String },
    /// Origin: node `node`'s answer to relay offer `offer_id`.
    RelayAnswer {
        room: Ident,
        node: String,
        sdp: String,
        offer_id: u64,
    },
    /// Another node: the origin `node`'s offer for this node's relay of `room` (`fresh`: of a
    /// new connection). Answered with [`MediaEvent::RelayAnswer`]; its streams feed this
    /// node's subscribers of the room as if their publishers were here.
    RelayOffer {
        room: Ident,
        node: String,
        sdp: String,
        offer_id: u64,
        fresh: bool,
    },
    /// Either end: the relay of `room` with `node` goes.
    RelayClose { room: Ident, node: String },
    /// Another node: `room` is held by `node`, whose relay will feed its members here (sent
    /// before the first member's `Subscribe`).
    RelayFrom { room: Ident, node: String },
    /// Origin: member `user`'s subscribe connection is another node's to make (`elsewhere`:
    /// the member's socket is relayed from there; a rejoin does not change that), or, when it
    /// was, this one's again (a new connection). A member's media served elsewhere is
    /// published there too: a publish connection it had here (before it moved) goes, unless
    /// an encoder publishes for the member here (`encoder`, WHIP attached to its session).
    SubscribeElsewhere {
        room: Ident,
        user: Ident,
        elsewhere: bool,
        encoder: bool,
    },
    /// The next subscribe connection offered to `user` is a new one for the client
    /// (`new_connection: true`): its connection, if any, was with another node.
    NewConnection { room: Ident, user: Ident },
}

impl MediaCommand {
    /// The room the command concerns: every connection of a room lives on one loop.
    pub fn room(&self) -> &Ident {
        match self {
            MediaCommand::Seats(change) => match change {
                MediaChange::AllowPublish { room, .. }
                | MediaChange::RevokePublish { room, .. }
                | MediaChange::Subscribe { room, .. }
                | MediaChange::Unsubscribe { room, .. }
                | MediaChange::CloseRoom { room } => room,
            },
            MediaCommand::Rejoin { room, .. }
            | MediaCommand::Resumed { room, .. }
            | MediaCommand::Publish { room, .. }
            | MediaCommand::SubscribeAnswer { room, .. }
            | MediaCommand::Resubscribe { room, .. }
            | MediaCommand::Candidate { room, .. }
            | MediaCommand::SetSubscription { room, .. }
            | MediaCommand::OwnOffers { room, .. }
            | MediaCommand::Watch { room, .. }
            | MediaCommand::RelayOpen { room, .. }
            | MediaCommand::RelayAnswer { room, .. }
            | MediaCommand::RelayOffer { room, .. }
            | MediaCommand::RelayClose { room, .. }
            | MediaCommand::RelayFrom { room, .. }
            | MediaCommand::SubscribeElsewhere { room, .. }
            | MediaCommand::NewConnection { room, .. } => room,
        }
    }
}

/// What the media plane tells signaling.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// The answer SDP to a [`MediaCommand::Publish`] or a [`MediaCommand::Watch`].
    PublishAnswer {
        reply: ReplyTo,
        result: Result<String, SfuError>,
    },
    /// The outcome of a [`MediaCommand::SubscribeAnswer`] or [`MediaCommand::Resubscribe`].
    Done {
        reply: ReplyTo,
        result: Result<(), SfuError>,
    },
    /// An offer for `user`'s subscribe connection; `new_connection` when it starts a new one.
    SubscribeOffer {
        room: Ident,
        user: Ident,
        sdp: String,
        new_connection: bool,
        /// Numbers every offer of this core (unique per loop, never 0).
        offer_id: u64,
    },
    /// What `user` publishes now: sent when a publish connection is set up or goes. `link` is
    /// the seating the connection was made under ([`MediaChange::AllowPublish`]): a report that
    /// crosses the end of that seating must not describe the next one.
    Published {
        room: Ident,
        user: Ident,
        audio: bool,
        video: bool,
        link: u64,
    },
    /// Who talks in `room` now, loudest first; sent when the list or its order changes, at most
    /// every [`SPEAKERS_INTERVAL`].
    ActiveSpeakers {
        room: Ident,
        speakers: Vec<miclink_protocol::Speaker>,
    },
    /// An event loop died (a bug): the media plane cannot serve its rooms any more.
    /// The simulcast layers of `user`'s video somebody watches now; sent when that changes.
    PublisherLayers {
        room: Ident,
        user: Ident,
        video: Vec<miclink_protocol::VideoQuality>,
    },
    /// The layer of `publisher`'s video subscriber `user` receives now; sent when it changes.
    SubscriptionState {
        room: Ident,
        user: Ident,
        publisher: Ident,
        video: miclink_protocol::VideoQuality,
        reason: miclink_protocol::SubscriptionReason,
    },
    /// A WHEP viewer's connection ended (failed or closed): it cannot come back on it.
    WatchEnded {
        room: Ident,
        user: Ident,
    },
    LoopFailed {
        index: usize,
    },
    /// Origin: an offer for node `node`'s relay of `room`, to be carried there.
    RelayOffer {
        room: Ident,
        node: String,
        sdp: String,
        offer_id: u64,
        fresh: bool,
    },
    /// Another node: the answer to the origin `node`'s relay offer `offer_id`.
    RelayAnswer {
        room: Ident,
        node: String,
        sdp: String,
        offer_id: u64,
    },
    /// Either end: the relay of `room` with `node` failed and is gone (the other node may
    /// ask for a new one). `sending`: this node was its sending end (it offered the relay).
    RelayEnded {
        room: Ident,
        node: String,
        sending: bool,
    },
}
