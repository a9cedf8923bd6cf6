//! The room, seat and link-request state machine of miclink.
//!
//! This crate decides who is live, who applied or was invited, who holds which seat and so who may
//! publish media. It is pure: no sockets, no tasks, no clock. Time comes in as an argument, timers
//! go out through [`Seats::poll_timeout`], and everything the world must hear about (protocol
//! events for users, media permission changes for the SFU, the milestones of a room's life the
//! webhooks report) is drained from [`Seats::poll_output`]. The server API acts on rooms through
//! [`Seats::serve`] and reads them with [`Seats::summary`].
//! It must not learn about sessions, sockets or SDP: those belong to signaling and the SFU.

mod error;
mod room;
mod seats;

pub use error::SeatError;
pub use room::Kinds;
pub use seats::{
    Action, Joined, KickBy, LinkEnd, MAX_BAN_S, MAX_BANS, MAX_REQUEST_TIMEOUT_S, MediaChange,
    Milestone, Output, Reply, Seats, SeatsConfig, ServerAction, Summary,
};
