//! Why a media request failed. Signaling turns these into protocol error codes in one place.

/// Why a media request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The client's session description was refused (malformed, or one the connection cannot
    /// take in its state).
    #[error("the session description was refused: {0}")]
    BadSdp(String),
    /// The seats do not (or no longer) allow this user to publish.
    #[error("not allowed to publish")]
    NotAllowed,
    /// An answer came with no subscribe offer waiting for one.
    #[error("no subscribe offer is waiting for an answer")]
    NoOffer,
    /// An answer named an offer that a newer one has replaced.
    #[error("the answer is for offer {answered}, replaced by offer {latest}: answer the latest")]
    StaleAnswer { answered: u64, latest: u64 },
    /// The user is not a member of the room on the media plane.
    #[error("not in the room")]
    NotInRoom,
    /// A request named a publisher who is not a member of the room.
    #[error("no such user in the room")]
    UnknownUser,
    /// The server could not build a connection: its own fault, not the request's.
    #[error("the media plane failed: {0}")]
    Internal(String),
    /// The media plane is down (an event loop died).
    #[error("the media plane is unavailable")]
    Unavailable,
    /// The loop holds as many connections as the process's file limit leaves room for.
    #[error("the server has no room for another media connection; try again later")]
    AtCapacity,
}
