//! A session: a member's presence in a room, which outlives any one socket (resume).

use std::collections::VecDeque;

use axum::extract::ws::Utf8Bytes;
use miclink_protocol::Ident;

use crate::wire::ConnId;

pub(crate) type SessionId = u64;

/// Events kept for a session whose socket dropped, replayed on `resume`. Past this many the
/// oldest go: the resume reply carries the full room state anyway.
pub(crate) const BACKLOG: usize = 256;

pub(crate) struct Session {
    /// The secret a client resumes with.
    pub(crate) token: String,
    pub(crate) room: Ident,
    pub(crate) user: Ident,
    /// The socket serving it, if one does now.
    pub(crate) conn: Option<ConnId>,
    /// In a cluster: the node whose socket it had last, when that was another node's (it
    /// serves the member's media, and hears the seats' permits), whether or not a socket is
    /// there now.
    pub(crate) node: Option<String>,
    /// Its room messages' rate (`send_message`), from its first message on.
    pub(crate) messages: Option<crate::ratelimit::Bucket>,
    backlog: VecDeque<Utf8Bytes>,
}

impl Session {
    pub(crate) fn new(token: String, room: Ident, user: Ident, conn: ConnId) -> Session {
        Session {
            token,
            room,
            user,
            conn: Some(conn),
            node: None,
            messages: None,
            backlog: VecDeque::new(),
        }
    }

    /// Keep an event for the socket that resumes this session.
    pub(crate) fn keep(&mut self, text: Utf8Bytes) {
        if self.backlog.len() == BACKLOG {
            self.backlog.pop_front();
        }
        self.backlog.push_back(text);
    }

    /// The kept events, oldest first.
    pub(crate) fn take_backlog(&mut self) -> VecDeque<Utf8Bytes> {
        std::mem::take(&mut self.backlog)
    }
}

/// An unguessable session token: 128 random bits from a CSPRNG, hex.
pub(crate) fn new_token() -> String {
    use rand::RngExt;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_keeps_the_newest_events() {
        let id = Ident::new("x").expect("id");
        let mut s = Session::new(new_token(), id.clone(), id, 1);
        for i in 0..BACKLOG + 10 {
            s.keep(Utf8Bytes::from(i.to_string()));
        }
        let kept = s.take_backlog();
        assert_eq!(kept.len(), BACKLOG);
        assert_eq!(kept.front().map(|t| t.as_str()), Some("10"));
        assert!(s.take_backlog().is_empty());
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
