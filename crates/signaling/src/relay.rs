//! One room across nodes, for signaling: a client may connect to any node, and a node whose
//! client joins a room held by another node (its origin, in the cluster's room directory) relays
//! the connection to that node. The origin's hub serves the relayed connection as one of its own
//! sockets (its sessions, seats and media commands stay there); the edge node only carries its
//! requests there and the answers and events back.
//!
//! The hub says what must cross ([`RelayOut`]); the server's cluster glue carries it through the
//! node inboxes and hands what arrives back with [`crate::Signaling::deliver`]. Nothing here
//! knows Redis.

use miclink_protocol::{Ident, Request};
use serde::{Deserialize, Serialize};

/// What one node tells another about a relayed connection (`conn` is the edge node's id of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Relay {
    /// Edge to origin: the connection's next request; `n` counts the requests the edge
    /// relayed for the socket (from 1, never reset), so an `Unbound` can say which it follows.
    Request {
        conn: u64,
        #[serde(default)]
        n: u64,
        id: u64,
        request: Request,
    },
    /// Edge to origin: the connection closed, or stopped being relayed.
    Closed { conn: u64 },
    /// Origin to edge: text for the connection's socket.
    Text { conn: u64, text: String },
    /// Origin to edge: the reply to a join or resume that succeeded, and the member it made
    /// (whose media the edge serves; `None` from an older node that does not say, whose members
    /// get no media there).
    Joined {
        conn: u64,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<Member>,
    },
    /// Origin to edge: the connection's session ended; the socket stays. `upto` is the last
    /// request (`n`) the origin had taken on it: an edge that has relayed a later one (a join
    /// sent before this arrived, which the origin serves as a new connection) keeps relaying.
    Unbound {
        conn: u64,
        #[serde(default)]
        upto: u64,
    },
    /// Origin to edge: close the socket.
    Close {
        conn: u64,
        code: u16,
        reason: String,
    },
    /// Edge to origin: this node serves members of `room` and wants its media over one relay
    /// connection (a new one: an older relay of this node's goes).
    MediaOpen { room: Ident },
    /// Edge to origin: no member of `room` is served here any more.
    MediaClose { room: Ident },
    /// Origin to edge: the relay connection's offer (`fresh`: of a new connection).
    MediaOffer {
        room: Ident,
        sdp: String,
        offer_id: u64,
        fresh: bool,
    },
    /// Edge to origin: the answer to relay offer `offer_id`.
    MediaAnswer {
        room: Ident,
        sdp: String,
        offer_id: u64,
    },
    /// Either way: the relay of `room` failed at the sender's end (the edge asks again).
    /// `push`: the relay from the edge to the origin (`Some(false)`: the one from the origin;
    /// `None`, from an older node that does not say: either, so both are renewed).
    MediaEnded {
        room: Ident,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        push: Option<bool>,
    },
    /// Origin to edge: what the seats let member `user`, whose media the edge serves,
    /// publish now (`None`: nothing); its publish connection is on the edge.
    MediaSeat {
        room: Ident,
        user: Ident,
        allow: Option<SeatPermit>,
    },
    /// Edge to origin: what member `user` publishes now on the edge, under seating `link`.
    MediaPublished {
        room: Ident,
        user: Ident,
        audio: bool,
        video: bool,
        link: u64,
    },
    /// Any node to another: a server API call the receiver answers as its own
    /// ([`Relay::ApiAnswer`] with the same `id`).
    Api { id: u64, call: crate::api::ApiCall },
    /// The answer to [`Relay::Api`] `id`.
    ApiAnswer {
        id: u64,
        answer: crate::api::ApiAnswer,
    },
}

/// A member of a room, as a join or resume reply names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub room: Ident,
    pub user: Ident,
}

/// A seat's permission to publish, as [`miclink_seats::MediaChange::AllowPublish`] says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatPermit {
    pub seat: u32,
    pub audio: bool,
    pub video: bool,
    pub link: u64,
}

/// What the hub needs the cluster glue to do.
#[derive(Debug)]
pub enum RelayOut {
    /// Which node holds `room`? Claim it for this node when nobody does. Answer with
    /// [`crate::Signaling::resolved`].
    Resolve { conn: u64, room: Ident },
    /// Put `relay` in `node`'s inbox.
    Send { node: String, relay: Relay },
    /// The public URL of the node holding `room`, if another node does (`claim`: claim it for
    /// this node when nobody does); `None`: served here.
    Locate {
        room: Ident,
        claim: bool,
        reply: tokio::sync::oneshot::Sender<Option<String>>,
    },
    /// The id of the node holding `room`, if another node does (nothing is claimed).
    Origin {
        room: Ident,
        reply: tokio::sync::oneshot::Sender<Option<String>>,
    },
}

/// A message between nodes: who sent it, and what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: String,
    pub relay: Relay,
}

/// Close reasons an origin may name, as the edge's socket states them (anything else is
/// "closed").
pub(crate) fn close_reason(reason: &str) -> &'static str {
    // The reasons the hub closes sockets with.
    const KNOWN: [&str; 5] = [
        "server shutdown",
        "replaced",
        "another encoder",
        "the anchor left",
        "media ended",
    ];
    KNOWN.into_iter().find(|k| *k == reason).unwrap_or("closed")
}

/// The node a session token was made on: tokens of a clustered node start with its id and a
/// dot, so a `resume` that reaches another node is relayed to it.
pub(crate) fn token_node(token: &str) -> Option<&str> {
    let (node, _) = token.split_once('.')?;
    // A node id as the cluster allows them, nothing a client could aim elsewhere with.
    ((1..=64).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_round_trip_as_json() {
        let e = Envelope {
            from: "b".into(),
            relay: Relay::Request {
                conn: 7,
                n: 2,
                id: 3,
                request: Request::Leave,
            },
        };
        let json = serde_json::to_string(&e).expect("json");
        assert_eq!(serde_json::from_str::<Envelope>(&json).expect("back"), e);
        let e = Envelope {
            from: "a".into(),
            relay: Relay::Close {
                conn: 7,
                code: 1001,
                reason: "server shutdown".into(),
            },
        };
        let json = serde_json::to_string(&e).expect("json");
        assert_eq!(serde_json::from_str::<Envelope>(&json).expect("back"), e);
        // Which relay failed: said by this version, unknown (both renewed) from an older one.
        let e = Envelope {
            from: "a".into(),
            relay: Relay::MediaEnded {
                room: Ident::new("r").expect("id"),
                push: Some(true),
            },
        };
        let json = serde_json::to_string(&e).expect("json");
        assert_eq!(serde_json::from_str::<Envelope>(&json).expect("back"), e);
        let older = r#"{"from":"a","relay":{"type":"media_ended","room":"r"}}"#;
        assert!(matches!(
            serde_json::from_str::<Envelope>(older).expect("read").relay,
            Relay::MediaEnded { push: None, .. }
        ));
    }

    #[test]
    fn a_join_reply_carries_its_member_and_one_of_an_older_node_reads_without() {
        let e = Envelope {
            from: "a".into(),
            relay: Relay::Joined {
                conn: 7,
                text: "{}".into(),
                member: Some(Member {
                    room: Ident::new("r").expect("id"),
                    user: Ident::new("u").expect("id"),
                }),
            },
        };
        let json = serde_json::to_string(&e).expect("json");
        assert_eq!(serde_json::from_str::<Envelope>(&json).expect("back"), e);
        let older = r#"{"from":"a","relay":{"type":"joined","conn":7,"text":"{}"}}"#;
        assert!(matches!(
            serde_json::from_str::<Envelope>(older).expect("read").relay,
            Relay::Joined { member: None, .. }
        ));
    }

    #[test]
    fn close_reasons_are_from_a_fixed_set_and_tokens_name_their_node() {
        assert_eq!(close_reason("replaced"), "replaced");
        assert_eq!(close_reason("anything a node made up"), "closed");
        assert_eq!(token_node("a-1.0123abcd"), Some("a-1"));
        assert_eq!(token_node("0123abcd"), None);
        assert_eq!(token_node("a:b.x"), None);
        assert_eq!(token_node(".x"), None);
    }
}
