//! Wire types of the miclink signaling protocol, versions 1 to 3 (`docs/protocol.md`).
//!
//! This crate owns the JSON shapes that cross the WebSocket and the rules that are purely
//! syntactic (identifier alphabet, name length, frame size). It does no I/O and holds no state,
//! so the server, the load tool, the tests and the fuzzers all parse exactly the same way.

pub mod api;
mod error;
mod ident;
mod message;

pub use error::ErrorCode;
pub use ident::{Ident, IdentError, Name};
pub use message::*;

/// Largest text frame the server accepts; larger ones are answered with `bad_request`.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Version 3: a `send_message` topic's length in characters, at most.
pub const MAX_TOPIC_CHARS: usize = 64;
/// Version 3: a room message's `data`, at most, in bytes.
pub const MAX_MESSAGE_DATA_BYTES: usize = 2 * 1024;
/// Version 3: a room's metadata, at most, in bytes.
pub const MAX_METADATA_BYTES: usize = 4 * 1024;

/// Whether a room message is within the contract's shape: a topic of 1 to 64 characters, none
/// of them control characters, and data of at most 2 KiB. The error says what is wrong.
pub fn check_message(topic: &str, data: &str) -> Result<(), &'static str> {
    let chars = topic.chars().count();
    if chars == 0 || chars > MAX_TOPIC_CHARS {
        return Err("topic must be 1 to 64 characters");
    }
    if topic.chars().any(char::is_control) {
        return Err("topic must not hold control characters");
    }
    if data.len() > MAX_MESSAGE_DATA_BYTES {
        return Err("data must be at most 2048 bytes");
    }
    Ok(())
}
