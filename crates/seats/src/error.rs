//! Why a seat action was refused; signaling turns these into protocol error codes.

use thiserror::Error;

/// Why a command was refused. A refused command changes no state.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SeatError {
    #[error("no live room with that id")]
    RoomNotFound,
    #[error("the room is live with another anchor")]
    RoomExists,
    #[error("{0}")]
    WrongRole(&'static str),
    #[error("you are not in this room")]
    NotInRoom,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("already linked")]
    AlreadyLinked,
    #[error("a link request for this audience member is already pending")]
    RequestPending,
    #[error("every seat is taken")]
    Full,
    #[error("seat {0} is taken")]
    SeatTaken(u32),
    #[error("seat {index} does not exist: seats for audience are 1 to {max}")]
    NoSuchSeat { index: u32, max: u32 },
    #[error("timeout_s may be at most {max}")]
    TimeoutTooLong { max: u32 },
    #[error("{0}")]
    NotAllowed(&'static str),
    #[error("{0}")]
    NotLinked(&'static str),
    #[error("seat {0} is locked")]
    SeatLocked(u32),
    #[error("{0}")]
    MutedByAnchor(&'static str),
    #[error("you were removed from this room; you may join again in {seconds} s")]
    Banned { seconds: u64 },
    #[error("ban_s may be at most {max}")]
    BanTooLong { max: u32 },
    #[error("{0}")]
    TooLong(&'static str),
}
