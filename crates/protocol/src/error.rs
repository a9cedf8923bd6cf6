//! The error codes of failed replies and `error` events.

use serde::{Deserialize, Serialize};

/// The `code` of a failed reply or of an `error` event.
///
/// Clients must treat codes they do not know as a generic failure: new codes may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    RoomNotFound,
    RoomExists,
    AlreadyJoined,
    SessionExpired,
    NotInRoom,
    NotFound,
    AlreadyLinked,
    RequestPending,
    SeatsFull,
    SeatTaken,
    NotAllowed,
    NotLinked,
    BadSdp,
    RateLimited,
    /// The request is part of the protocol but this server build does not serve it yet.
    NotImplemented,
    /// The server is shutting down or overloaded; try again later.
    Unavailable,
    /// Added to the contract: the server failed to do what was asked, through no fault of the
    /// request (for example it could not set up a media connection).
    Internal,
    /// Version 2: the seat is locked.
    SeatLocked,
    /// Version 2: `set_media` tried to turn on what the anchor or a seat lock keeps off.
    MutedByAnchor,
    /// Version 2: the user was kicked from this room with a ban that has not ended.
    Banned,
    /// A code this build of the crate does not know (sent by a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire spelling, e.g. `"seats_full"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RoomNotFound => "room_not_found",
            ErrorCode::RoomExists => "room_exists",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyLinked => "already_linked",
            ErrorCode::RequestPending => "request_pending",
            ErrorCode::SeatsFull => "seats_full",
            ErrorCode::SeatTaken => "seat_taken",
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::NotLinked => "not_linked",
            ErrorCode::BadSdp => "bad_sdp",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::SeatLocked => "seat_locked",
            ErrorCode::MutedByAnchor => "muted_by_anchor",
            ErrorCode::Banned => "banned",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde_spelling() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::RoomNotFound,
            ErrorCode::RoomExists,
            ErrorCode::AlreadyJoined,
            ErrorCode::SessionExpired,
            ErrorCode::NotInRoom,
            ErrorCode::NotFound,
            ErrorCode::AlreadyLinked,
            ErrorCode::RequestPending,
            ErrorCode::SeatsFull,
            ErrorCode::SeatTaken,
            ErrorCode::NotAllowed,
            ErrorCode::NotLinked,
            ErrorCode::BadSdp,
            ErrorCode::RateLimited,
            ErrorCode::NotImplemented,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
            ErrorCode::SeatLocked,
            ErrorCode::MutedByAnchor,
            ErrorCode::Banned,
        ] {
            let json = serde_json::to_string(&code).expect("serializes");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn unknown_codes_from_newer_servers_still_parse() {
        let code: ErrorCode = serde_json::from_str("\"brand_new_code\"").expect("parses");
        assert_eq!(code, ErrorCode::Unknown);
    }
}
