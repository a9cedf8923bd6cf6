//! Requests, replies, events and the objects they carry, as serde types of `docs/protocol.md`.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::{ErrorCode, Ident, Name};

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Anchor,
    Audience,
}

/// One user as every other client sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub user: Ident,
    pub name: Name,
    pub role: Role,
    /// `None` for a viewer; 0 for the anchor; 1.. for linked audience members.
    pub seat: Option<u32>,
    /// Audio of this user reaches the room now: a track published, not muted by the user, not
    /// muted by the anchor and not locked by the seat (version 2: exact).
    pub mic: bool,
    /// Video of this user reaches the room now, on the same terms as `mic`.
    pub camera: bool,
    /// Added to the contract: the anchor or the seat keeps this user's mic off (as
    /// `media_state.mic_blocked`), so a client that joins or reloads knows it. Absent = false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mic_blocked: bool,
    /// Added to the contract: the same for the camera.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub camera_blocked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    pub index: u32,
    pub user: Option<UserInfo>,
    /// Nobody can take the seat (apply, invite, accept, move); whoever sits on it stays.
    pub locked: bool,
    /// Version 2: no audio is forwarded from whoever sits on the seat.
    #[serde(default)]
    pub audio_locked: bool,
    /// Version 2: no video is forwarded from whoever sits on the seat.
    #[serde(default)]
    pub video_locked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomState {
    pub room: Ident,
    pub anchor: Ident,
    /// Counts the anchor's seat 0.
    pub max_seats: u32,
    pub seats: Vec<Seat>,
    pub audience_count: u32,
}

/// The `RTCIceServer` dictionary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The `RTCIceCandidateInit` dictionary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// Which of a member's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerConnectionKind {
    Publish,
    Subscribe,
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A client request without its envelope `id`. See [`parse_request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Join {
        room: Ident,
        user: Ident,
        role: Role,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<Name>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    Resume {
        session: String,
    },
    RequestLink {
        /// Absent or `""`: an application to the anchor. Set: the anchor's invitation.
        #[serde(
            default,
            deserialize_with = "empty_as_none",
            skip_serializing_if = "Option::is_none"
        )]
        user: Option<Ident>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seat: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_s: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        open_camera: Option<bool>,
    },
    CancelLink {
        #[serde(
            default,
            deserialize_with = "empty_as_none",
            skip_serializing_if = "Option::is_none"
        )]
        user: Option<Ident>,
    },
    RespondLink {
        user: Ident,
        accept: bool,
    },
    DisconnectUser {
        user: Ident,
    },
    TerminateLink,
    Leave,
    Publish {
        sdp: String,
    },
    SubscribeAnswer {
        sdp: String,
        /// Added to the contract: the `offer_id` of the offer this answers. With it, an answer
        /// to an offer the server has since replaced is refused (`bad_sdp`) instead of being
        /// applied to the newer one, whose own answer then still fits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offer_id: Option<u64>,
    },
    /// Added to the contract: the client's subscribe connection is broken (or it lost track of
    /// it); the server closes it and offers a new one (`subscribe_offer` with `new_connection`).
    Resubscribe,
    /// Added to the contract: the ICE servers with credentials made now, for a connection the
    /// client is about to make (TURN credentials let a relay start only for `turn_ttl_s` after
    /// they are made; a relay started in time lasts).
    IceServers,
    Ice {
        pc: PeerConnectionKind,
        candidate: IceCandidate,
    },
    /// Added to the contract: the anchor pages through the viewers to pick one to invite.
    ListAudience {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Version 2, anchor: lock a seat against being taken, and/or its audio or video. Absent
    /// fields stay as they are.
    LockSeat {
        seat: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lock: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lock_audio: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lock_video: Option<bool>,
    },
    /// Version 2: a linked member moves to another seat; the anchor moves `user`.
    MoveSeat {
        seat: u32,
        #[serde(
            default,
            deserialize_with = "empty_as_none",
            skip_serializing_if = "Option::is_none"
        )]
        user: Option<Ident>,
    },
    /// Version 2, anchor: `false` mutes a linked member's mic or camera, `true` lifts that.
    MuteMember {
        user: Ident,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mic: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        camera: Option<bool>,
    },
    /// Version 2: the sender's own mute state (`true` = on).
    SetMedia {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mic: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        camera: Option<bool>,
    },
    /// Version 2, anchor: remove an audience member from the room, barred from joining again
    /// for `ban_s` seconds.
    KickUser {
        user: Ident,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ban_s: Option<u32>,
    },
    /// Version 2: the highest video layer of `user` this subscriber wants (rule 14).
    SetSubscription {
        user: Ident,
        video: VideoQuality,
    },
    /// Version 3: a message to everyone in the room (`room_message`): chat lines, likes, gifts.
    SendMessage {
        topic: String,
        data: String,
    },
}

impl Request {
    /// Every request `type` this version knows.
    pub const TYPES: &'static [&'static str] = &[
        "join",
        "resume",
        "request_link",
        "cancel_link",
        "respond_link",
        "disconnect_user",
        "terminate_link",
        "leave",
        "publish",
        "subscribe_answer",
        "resubscribe",
        "ice_servers",
        "ice",
        "list_audience",
        "lock_seat",
        "move_seat",
        "mute_member",
        "set_media",
        "kick_user",
        "set_subscription",
        "send_message",
    ];

    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Join { .. } => "join",
            Request::Resume { .. } => "resume",
            Request::RequestLink { .. } => "request_link",
            Request::CancelLink { .. } => "cancel_link",
            Request::RespondLink { .. } => "respond_link",
            Request::DisconnectUser { .. } => "disconnect_user",
            Request::TerminateLink => "terminate_link",
            Request::Leave => "leave",
            Request::Publish { .. } => "publish",
            Request::SubscribeAnswer { .. } => "subscribe_answer",
            Request::Resubscribe => "resubscribe",
            Request::IceServers => "ice_servers",
            Request::Ice { .. } => "ice",
            Request::ListAudience { .. } => "list_audience",
            Request::LockSeat { .. } => "lock_seat",
            Request::MoveSeat { .. } => "move_seat",
            Request::MuteMember { .. } => "mute_member",
            Request::SetMedia { .. } => "set_media",
            Request::KickUser { .. } => "kick_user",
            Request::SetSubscription { .. } => "set_subscription",
            Request::SendMessage { .. } => "send_message",
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ident>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => Ident::new(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A request with its envelope, as a client writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientMessage {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

/// Why a frame could not be turned into a request. Each maps to one answer of the contract.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    /// Not JSON, not an object, no usable `id`, or an unknown `type`: answered with an `error`
    /// event because there is no id to reply to (or the type is unknown).
    Frame(String),
    /// A known request with a usable id whose fields are wrong: answered with a failed reply.
    Fields { id: u64, message: String },
}

/// Parse one text frame into `(id, request)`.
///
/// Unknown fields are ignored so newer clients can talk to this server.
pub fn parse_request(text: &str) -> Result<(u64, Request), ParseError> {
    let map: Map<String, Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(ParseError::Frame("frame is not a JSON object".into())),
        Err(e) => return Err(ParseError::Frame(format!("frame is not JSON: {e}"))),
    };
    let Some(id) = map.get("id").and_then(Value::as_u64) else {
        return Err(ParseError::Frame(
            "request has no usable \"id\" (an unsigned integer)".into(),
        ));
    };
    match map.get("type").and_then(Value::as_str) {
        Some(t) if Request::TYPES.contains(&t) => {}
        Some(t) => {
            return Err(ParseError::Frame(format!(
                "unknown request type {:?}",
                truncate(t, 64)
            )));
        }
        None => return Err(ParseError::Frame("request has no \"type\" string".into())),
    }
    match Request::deserialize(Value::Object(map)) {
        Ok(req) => Ok((id, req)),
        Err(e) => Err(ParseError::Fields {
            id,
            // serde names the offending value (`unknown variant ...`): cut it, so a bad frame
            // cannot make the server send (or log) back as much as the client sent.
            message: bounded(e.to_string()),
        }),
    }
}

/// The longest error message a bad field gets, in characters.
const MAX_FIELD_ERROR_CHARS: usize = 200;

/// At most [`MAX_FIELD_ERROR_CHARS`] characters, control characters replaced: JSON writes each
/// of those as six bytes (`\u0001`), which would let 200 characters become 1.2 KB again.
fn bounded(message: String) -> String {
    let kept = truncate(&message, MAX_FIELD_ERROR_CHARS);
    let mut out: String = kept
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if kept.len() < message.len() {
        out.push_str("...");
    }
    out
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// `{"type":"reply","id":..,"ok":..,"result"|"error":..}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(rename = "type")]
    pub kind: ReplyTag,
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// The constant `"reply"` type tag, so a [`ServerMessage`] can tell replies from events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyTag {
    Reply,
}

impl Reply {
    pub fn ok(id: u64, result: impl Serialize) -> Reply {
        Reply {
            kind: ReplyTag::Reply,
            id,
            ok: true,
            // Serializing our own result types cannot fail: they hold no maps with non-string
            // keys and no failing Serialize impls.
            result: Some(serde_json::to_value(result).unwrap_or(Value::Null)),
            error: None,
        }
    }

    pub fn err(id: u64, code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply {
            kind: ReplyTag::Reply,
            id,
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinResult {
    pub room: RoomState,
    pub me: UserInfo,
    pub ice_servers: Vec<IceServer>,
    pub session: String,
    /// Added to the contract: the pending link requests this user sent or received, so a client
    /// that resumes (or joins again) loses none that were in flight on its old socket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<PendingLink>,
    /// Version 3: the room's metadata, set through the server API ("" until then).
    #[serde(default)]
    pub metadata: String,
}

/// A pending link request, as listed in the `join` and `resume` replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingLink {
    pub request: String,
    /// Who sent it (the applicant, or the anchor for an invitation).
    pub from: UserInfo,
    /// Who must answer it.
    pub to: Ident,
    pub seat: Option<u32>,
    pub open_camera: bool,
    /// Whole seconds left before it times out (rounded up); 0 = it never does.
    pub timeout_s: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLinkResult {
    pub request: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResult {
    pub sdp: String,
}

/// The result of `ice_servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServersResult {
    pub ice_servers: Vec<IceServer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAudienceResult {
    /// Viewers (audience members without a seat) in the order they joined.
    pub users: Vec<UserInfo>,
    /// How many viewers there are in all, for paging.
    pub total: u32,
    pub offset: u32,
}

/// The `{}` result of requests that return nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    Cancelled,
    Timeout,
    Left,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    Rejected,
    SeatsFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    AnchorLeft,
    AnchorLost,
    ServerShutdown,
    /// Version 2, clusters: the node holding the room stopped (a member connected through
    /// another node).
    NodeLost,
    /// Version 3: the server API ended the live (`DELETE /api/v1/rooms/{room}`).
    EndedByServer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KickReason {
    Replaced,
    /// Version 2: the anchor removed the user (`kick_user`).
    KickedByAnchor,
    /// Version 3: the server API removed the user.
    KickedByServer,
}

/// Who changed a user's media state (`media_state.by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaBy {
    /// The user: `set_media`, or a track published or gone.
    #[serde(rename = "self")]
    User,
    Anchor,
    Seat,
}

/// A simulcast layer, or none (`set_subscription.video`, `subscription_state.video`,
/// `publisher_layers.video`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoQuality {
    Off,
    Low,
    Medium,
    High,
}

/// Why a subscriber receives the layer it does (`subscription_state.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionReason {
    /// What it asked for (or the highest layer there is below that).
    Requested,
    /// Less than it asked for: the server's estimate of its bandwidth does not fit more.
    Bandwidth,
    /// Nothing: the publisher sends no video now.
    Unavailable,
}

/// One entry of `active_speakers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speaker {
    pub user: Ident,
    /// Smoothed loudness, 0 (silence) to 1 (full scale).
    pub level: f32,
}

/// A server event (a message without `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    LinkRequest {
        from: UserInfo,
        request: String,
        /// The seat asked for; `None` when any free seat will do.
        seat: Option<u32>,
        open_camera: bool,
        timeout_s: u32,
    },
    LinkCancelled {
        user: Ident,
        reason: CancelReason,
    },
    LinkAccepted {
        user: Ident,
    },
    LinkRejected {
        user: Ident,
        reason: RejectReason,
    },
    LinkTimeout {
        user: Ident,
    },
    ConnectedUsersUpdated {
        users: Vec<UserInfo>,
        joined: Vec<UserInfo>,
        left: Vec<UserInfo>,
    },
    LinkTerminated {
        by: Ident,
    },
    LinkExited {
        user: UserInfo,
    },
    RoomEnded {
        reason: EndReason,
    },
    AudienceCount {
        count: u32,
    },
    Kicked {
        reason: KickReason,
    },
    SubscribeOffer {
        sdp: String,
        /// Added to the contract: the offer belongs to a new subscribe connection (after
        /// `resubscribe`, a rejoin, or a connection the server found broken). Close the old
        /// RTCPeerConnection and answer on a new one. Absent (false): a re-offer for the current
        /// connection.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        new_connection: bool,
        /// Added to the contract: this offer's number, to send back with the answer
        /// (`subscribe_answer.offer_id`). 0 when absent (an older server).
        #[serde(default, skip_serializing_if = "is_zero")]
        offer_id: u64,
    },
    Ice {
        pc: PeerConnectionKind,
        candidate: IceCandidate,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Version 2: a seat lock changed or a member moved.
    SeatsUpdated {
        seats: Vec<Seat>,
    },
    /// Version 2: whether `user`'s audio and video reach the room now, and who changed it.
    MediaState {
        user: Ident,
        mic: bool,
        camera: bool,
        by: MediaBy,
        /// Added to the contract: the anchor or the seat keeps the mic off, so `set_media`
        /// cannot turn it on (`muted_by_anchor`) until they lift it.
        #[serde(default)]
        mic_blocked: bool,
        /// Added to the contract: the same for the camera.
        #[serde(default)]
        camera_blocked: bool,
    },
    /// Version 2: who is talking now, loudest first.
    ActiveSpeakers {
        speakers: Vec<Speaker>,
    },
    /// Version 2, to a publisher: the simulcast layers somebody watches now (dynacast).
    PublisherLayers {
        video: Vec<VideoQuality>,
    },
    /// Version 2, to a subscriber: which layer of `user`'s video it receives now, and why.
    SubscriptionState {
        user: Ident,
        video: VideoQuality,
        reason: SubscriptionReason,
    },
    /// Version 3: a message to everyone in the room, the sender too; `from` is `None` when the
    /// server API sent it.
    RoomMessage {
        from: Option<UserInfo>,
        topic: String,
        data: String,
        /// Unix milliseconds.
        at: u64,
    },
    /// Version 3: the server API changed the room's metadata.
    RoomMetadata {
        metadata: String,
    },
}

impl Event {
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::LinkRequest { .. } => "link_request",
            Event::LinkCancelled { .. } => "link_cancelled",
            Event::LinkAccepted { .. } => "link_accepted",
            Event::LinkRejected { .. } => "link_rejected",
            Event::LinkTimeout { .. } => "link_timeout",
            Event::ConnectedUsersUpdated { .. } => "connected_users_updated",
            Event::LinkTerminated { .. } => "link_terminated",
            Event::LinkExited { .. } => "link_exited",
            Event::RoomEnded { .. } => "room_ended",
            Event::AudienceCount { .. } => "audience_count",
            Event::Kicked { .. } => "kicked",
            Event::SubscribeOffer { .. } => "subscribe_offer",
            Event::Ice { .. } => "ice",
            Event::Error { .. } => "error",
            Event::SeatsUpdated { .. } => "seats_updated",
            Event::MediaState { .. } => "media_state",
            Event::ActiveSpeakers { .. } => "active_speakers",
            Event::PublisherLayers { .. } => "publisher_layers",
            Event::SubscriptionState { .. } => "subscription_state",
            Event::RoomMessage { .. } => "room_message",
            Event::RoomMetadata { .. } => "room_metadata",
        }
    }
}

/// Anything the server sends: a reply or an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerMessage {
    Reply(Reply),
    Event(Event),
}

impl From<Reply> for ServerMessage {
    fn from(r: Reply) -> Self {
        ServerMessage::Reply(r)
    }
}

impl From<Event> for ServerMessage {
    fn from(e: Event) -> Self {
        ServerMessage::Event(e)
    }
}

#[cfg(test)]
mod tests;
