//! Wire types of the miclink signaling protocol, version 1 (`docs/protocol.md`).
//!
//! This crate owns the JSON shapes that cross the WebSocket and the rules that are purely
//! syntactic (identifier alphabet, name length, frame size). It does no I/O and holds no state,
//! so the server, the load tool, the tests and the fuzzers all parse exactly the same way.

mod error;
mod ident;
mod message;

pub use error::ErrorCode;
pub use ident::{Ident, IdentError, Name};
pub use message::*;

/// Largest text frame the server accepts; larger ones are answered with `bad_request`.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
