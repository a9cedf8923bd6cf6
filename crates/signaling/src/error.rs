//! The one place where failures become protocol error codes.

use miclink_protocol::ErrorCode;
use miclink_seats::SeatError;
use miclink_sfu::SfuError;

pub(crate) fn seat_error_code(e: &SeatError) -> ErrorCode {
    match e {
        SeatError::RoomNotFound => ErrorCode::RoomNotFound,
        SeatError::RoomExists => ErrorCode::RoomExists,
        SeatError::NotInRoom => ErrorCode::NotInRoom,
        SeatError::NotFound(_) => ErrorCode::NotFound,
        SeatError::AlreadyLinked => ErrorCode::AlreadyLinked,
        SeatError::RequestPending => ErrorCode::RequestPending,
        SeatError::Full => ErrorCode::SeatsFull,
        SeatError::SeatTaken(_) => ErrorCode::SeatTaken,
        SeatError::NotAllowed(_) => ErrorCode::NotAllowed,
        SeatError::NotLinked(_) => ErrorCode::NotLinked,
        SeatError::SeatLocked(_) => ErrorCode::SeatLocked,
        SeatError::MutedByAnchor(_) => ErrorCode::MutedByAnchor,
        SeatError::Banned { .. } => ErrorCode::Banned,
        SeatError::WrongRole(_)
        | SeatError::NoSuchSeat { .. }
        | SeatError::TimeoutTooLong { .. }
        | SeatError::BanTooLong { .. }
        | SeatError::TooLong(_) => ErrorCode::BadRequest,
        // SeatError is non_exhaustive: a new variant is a bad request until it gets its own code.
        _ => ErrorCode::BadRequest,
    }
}

pub(crate) fn media_error_code(e: &SfuError) -> ErrorCode {
    match e {
        SfuError::BadSdp(_) | SfuError::NoOffer | SfuError::StaleAnswer { .. } => ErrorCode::BadSdp,
        // The seats revoked the permission between the request and the media plane's turn.
        SfuError::NotAllowed => ErrorCode::NotLinked,
        SfuError::NotInRoom => ErrorCode::NotInRoom,
        SfuError::UnknownUser => ErrorCode::NotFound,
        // The server's own failures are never blamed on the request.
        SfuError::Unavailable | SfuError::AtCapacity => ErrorCode::Unavailable,
        SfuError::Internal(_) => ErrorCode::Internal,
        // SfuError is non_exhaustive: a new variant is the server's fault until it has a code.
        _ => ErrorCode::Internal,
    }
}
