//! What the server API asks the hub, and what it answers: the same whether the room is held
//! here or the call crossed to the node that holds it (as `Relay::Api`, between nodes).

use miclink_protocol::Ident;
use miclink_protocol::api::{RoomDetail, RoomSummary};
use serde::{Deserialize, Serialize};

/// One call of the server API, after its HTTP request was read and its caller checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum ApiCall {
    /// The rooms this node holds.
    ListRooms,
    GetRoom {
        room: Ident,
    },
    EndRoom {
        room: Ident,
    },
    SetMetadata {
        room: Ident,
        metadata: String,
    },
    SendMessage {
        room: Ident,
        topic: String,
        data: String,
    },
    Kick {
        room: Ident,
        user: Ident,
        ban_s: u32,
    },
    Unlink {
        room: Ident,
        user: Ident,
    },
    Mute {
        room: Ident,
        user: Ident,
        mic: Option<bool>,
        camera: Option<bool>,
    },
}

impl ApiCall {
    /// The room the call is about, if one.
    pub fn room(&self) -> Option<&Ident> {
        match self {
            ApiCall::ListRooms => None,
            ApiCall::GetRoom { room }
            | ApiCall::EndRoom { room }
            | ApiCall::SetMetadata { room, .. }
            | ApiCall::SendMessage { room, .. }
            | ApiCall::Kick { room, .. }
            | ApiCall::Unlink { room, .. }
            | ApiCall::Mute { room, .. } => Some(room),
        }
    }
}

/// The hub's answer to an [`ApiCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum ApiAnswer {
    Done,
    Rooms {
        rooms: Vec<RoomSummary>,
    },
    Room {
        room: Box<RoomDetail>,
    },
    /// The room is not held on this node (in a cluster: ask the node that holds it).
    NotHere,
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

impl ApiAnswer {
    pub(crate) fn refused(status: u16, code: &str, message: impl Into<String>) -> ApiAnswer {
        ApiAnswer::Refused {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }
}
