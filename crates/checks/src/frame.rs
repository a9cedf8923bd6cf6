//! One WebSocket text frame from a client, as the signaling connection handles it before the
//! hub sees anything: the size limit, then [`parse_request`].

use miclink_protocol::{
    ClientMessage, ErrorCode, Event, MAX_FRAME_BYTES, ParseError, Reply, parse_request,
};
use serde_json::Value;

use crate::{Broken, ensure, ensure_eq};

/// The longest answer a bad frame may cause: an error names the problem, it does not echo the
/// frame (a client must not get more bytes back than the limit on what it sends allows).
const MAX_ANSWER_BYTES: usize = 1024;

/// Frames arrive as bytes; a WebSocket text frame that is not UTF-8 is refused by the socket
/// layer before this point, so such input checks nothing.
pub fn check_bytes(data: &[u8]) -> Result<(), Broken> {
    match std::str::from_utf8(data) {
        Ok(text) => check(text),
        Err(_) => Ok(()),
    }
}

/// A frame is a request with its id, a field error that keeps the id, or a frame error; what
/// parses writes back and parses again to the same request; every answer to a bad frame is
/// short and serializes.
pub fn check(text: &str) -> Result<(), Broken> {
    if text.len() > MAX_FRAME_BYTES {
        // Refused by size before parsing (conn.rs); parsing it anyway must still not panic.
        let _ = parse_request(text);
        return Ok(());
    }
    let id = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("id").and_then(Value::as_u64));
    let answer = match parse_request(text) {
        Ok((got, request)) => {
            ensure_eq!(Some(got), id, "the id of a request");
            let again = serde_json::to_string(&ClientMessage {
                id: got,
                request: request.clone(),
            })
            .map_err(|e| format!("a parsed request does not serialize: {e}"))?;
            let (_, reparsed) =
                parse_request(&again).map_err(|e| format!("{again} does not parse: {e:?}"))?;
            ensure_eq!(reparsed, request, "round trip through {again}");
            return Ok(());
        }
        Err(ParseError::Fields { id: got, message }) => {
            ensure_eq!(Some(got), id, "the id a field error keeps");
            serde_json::to_string(&Reply::err(got, ErrorCode::BadRequest, message))
        }
        Err(ParseError::Frame(message)) => serde_json::to_string(&Event::Error {
            code: ErrorCode::BadRequest,
            message,
        }),
    }
    .map_err(|e| format!("an error answer does not serialize: {e}"))?;
    ensure!(
        answer.len() <= MAX_ANSWER_BYTES,
        "a {}-byte frame gets a {}-byte answer: {answer:.200}",
        text.len(),
        answer.len()
    );
    Ok(())
}
