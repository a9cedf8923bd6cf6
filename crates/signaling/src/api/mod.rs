//! The server API (`/api/v1`, contract version 3): the integrator's backend lists the live
//! rooms, ends one, sets its metadata, sends it a message, removes, unlinks or mutes a member,
//! and makes join tokens.
//!
//! Every request passes one guard first: a rate limit per client address (before anything is
//! read, so a flood costs a map lookup), then the caller: an admin token signed with the
//! server's secret, or, on a server without one, a loopback address. Bodies are capped; every
//! refusal is `{"error": {"code", "message"}}`. The calls themselves are the hub's ([`call`]):
//! in a cluster, a room held by another node is asked there, and the room list gathers every
//! node's.
//!
//! It must not change seats or sessions itself: the hub does, as for a member's request.

pub mod call;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use miclink_protocol::api::{
    ApiError, ApiErrorBody, RoomList, TokenRequest, TokenResult, TokenRole,
};
use miclink_protocol::{Ident, check_message};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{info, warn};

pub use call::{ApiAnswer, ApiCall};

use crate::Signaling;
use crate::auth::{bearer, sign_token};
use crate::ratelimit::Bucket;

/// The largest request body read: 4 KiB of metadata fits even JSON-escaped (a control
/// character takes six bytes as `\u00XX`).
pub const MAX_BODY: usize = 32 * 1024;
/// How long a call to another node of the cluster may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// Client addresses tracked by the rate limit at once; idle ones make room.
const TRACKED: usize = 16_384;
/// A join token's life when the request names none, and the longest one.
const TOKEN_TTL_S: u64 = 3600;
const TOKEN_TTL_MAX_S: u64 = 24 * 3600;

/// Per client address, a token bucket.
#[derive(Default)]
pub(crate) struct Limits {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    /// When the table was last swept of idle addresses (at most once a second).
    swept: Mutex<Option<Instant>>,
}

impl Limits {
    fn admit(&self, ip: IpAddr, rate: f64, now: Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .expect("no code panics holding the lock");
        if buckets.len() >= TRACKED && !buckets.contains_key(&ip) {
            let mut swept = self.swept.lock().expect("no code panics holding the lock");
            if swept.is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1)) {
                *swept = Some(now);
                buckets.retain(|_, b| !b.is_idle(now));
            }
            if buckets.len() >= TRACKED {
                // Every tracked address is busy (thousands of them): a new one goes on untracked
                // rather than locking the integrator's backend out; the caller check still holds.
                return true;
            }
        }
        buckets
            .entry(ip)
            .or_insert_with(|| Bucket::new(rate, 2.0, now))
            .take(now)
    }
}

/// The `/api/v1` routes, guarded.
pub(crate) fn routes(sig: Signaling) -> Router {
    let api = Router::new()
        .route("/rooms", get(list_rooms))
        .route("/rooms/{room}", get(get_room).delete(end_room))
        .route("/rooms/{room}/metadata", put(set_metadata))
        .route("/rooms/{room}/messages", post(send_message))
        .route("/rooms/{room}/users/{user}/kick", post(kick))
        .route("/rooms/{room}/users/{user}/unlink", post(unlink))
        .route("/rooms/{room}/users/{user}/mute", post(mute))
        .route("/tokens", post(token))
        .fallback(unknown)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(sig.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(sig);
    Router::new().nest("/api/v1", api)
}

/// A refusal in the contract's shape.
pub(crate) fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ApiError {
        error: ApiErrorBody {
            code: code.to_owned(),
            message: message.into(),
        },
    };
    (status, Json(body)).into_response()
}

/// The rate limit, then the caller.
async fn guard(
    State(sig): State<Signaling>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
    next: Next,
) -> Response {
    let ip = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let key = ip.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), crate::client_key);
    let rate = sig.inner.config.api_rate_per_s;
    if !sig.inner.api_limits.admit(key, rate, Instant::now()) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests from this address; slow down",
        );
    }
    let caller = match &sig.inner.auth {
        Some(auth) => match bearer(request.headers()).map(|t| auth.admin(t)) {
            Some(Ok(sub)) => sub,
            Some(Err(why)) => {
                return refuse(StatusCode::UNAUTHORIZED, "unauthorized", why.to_string());
            }
            None => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "an admin token is needed (Authorization: Bearer <JWT with role \"admin\">)",
                );
            }
        },
        // A browser on this machine is on loopback too: a request a web page made (it carries
        // the page's Origin, or says it is cross-site) is not the operator's.
        None if from_a_web_page(request.headers()) => {
            return refuse(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this server has no jwt_secret: its API does not answer requests made by web pages",
            );
        }
        None if ip.is_some_and(|ip| ip.to_canonical().is_loopback()) => "loopback".to_owned(),
        None => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server has no jwt_secret: its API answers callers on this machine only",
            );
        }
    };
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    info!(%caller, %method, %path, status = response.status().as_u16(), "server API");
    response
}

/// Whether a browser made this request for a web page: it names the page's origin, or says the
/// request is not the user's own (`Sec-Fetch-Site` other than `none`).
fn from_a_web_page(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key(axum::http::header::ORIGIN)
        || headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() != b"none")
}

/// Ask the hub; in a cluster, the node holding the room when that is another.
pub(crate) async fn call(sig: &Signaling, call: ApiCall) -> ApiAnswer {
    match sig.api(call.clone()).await {
        Some(ApiAnswer::NotHere) => {}
        Some(answer) => return answer,
        None => return ApiAnswer::refused(503, "unavailable", "the server is shutting down"),
    }
    let Some(room) = call.room().cloned() else {
        return ApiAnswer::refused(503, "unavailable", "the server is shutting down");
    };
    match sig.origin_of(&room).await {
        Some(node) => {
            match tokio::time::timeout(NODE_TIMEOUT, sig.api_at(node.clone(), call)).await {
                // It ended, or moved, since the directory named that node.
                Ok(Some(ApiAnswer::NotHere)) => {
                    ApiAnswer::refused(404, "not_found", "no live room with that id")
                }
                Ok(None) | Err(_) => {
                    warn!(%node, %room, "the node holding the room did not answer the server API");
                    ApiAnswer::refused(
                        503,
                        "unavailable",
                        "the node holding the room did not answer",
                    )
                }
                Ok(Some(answer)) => answer,
            }
        }
        None => ApiAnswer::refused(404, "not_found", "no live room with that id"),
    }
}

fn respond(answer: ApiAnswer) -> Response {
    match answer {
        ApiAnswer::Done => Json(serde_json::json!({})).into_response(),
        ApiAnswer::Rooms { rooms } => Json(RoomList {
            rooms,
            missing_nodes: Vec::new(),
        })
        .into_response(),
        ApiAnswer::Room { room } => Json(room).into_response(),
        ApiAnswer::NotHere => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "no live room with that id",
        ),
        ApiAnswer::Refused {
            status,
            code,
            message,
        } => refuse(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            &code,
            message,
        ),
    }
}

/// A path's id, or the 400 that says it is not one.
fn ident(what: &str, s: &str) -> Result<Ident, ApiAnswer> {
    Ident::new(s).map_err(|e| ApiAnswer::refused(400, "bad_request", format!("{what}: {e}")))
}

/// A JSON body of type `T` (an empty body reads as `{}` when `empty_ok`).
fn read<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    empty_ok: bool,
) -> Result<T, ApiAnswer> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiAnswer::refused(
                413,
                "too_large",
                format!("the body may be at most {MAX_BODY} bytes"),
            )
        } else {
            ApiAnswer::refused(400, "bad_request", "the body could not be read")
        }
    })?;
    let bytes: &[u8] = if body.is_empty() && empty_ok {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(bytes).map_err(|e| {
        ApiAnswer::refused(
            400,
            "bad_request",
            format!("the body is not the JSON this endpoint takes: {e}"),
        )
    })
}

async fn list_rooms(State(sig): State<Signaling>) -> Response {
    let mut rooms = match sig.api(ApiCall::ListRooms).await {
        Some(ApiAnswer::Rooms { rooms }) => rooms,
        _ => {
            return respond(ApiAnswer::refused(
                503,
                "unavailable",
                "the server is shutting down",
            ));
        }
    };
    // Every node's rooms: each asked at once; one that does not answer in time is named.
    let asks = sig.other_nodes().await.into_iter().map(|node| {
        let sig = sig.clone();
        async move {
            let answer =
                tokio::time::timeout(NODE_TIMEOUT, sig.api_at(node.clone(), ApiCall::ListRooms))
                    .await;
            match answer {
                Ok(Some(ApiAnswer::Rooms { rooms })) => Ok(rooms),
                _ => {
                    warn!(%node, "a node did not list its rooms for the server API");
                    Err(node)
                }
            }
        }
    });
    let mut missing_nodes = Vec::new();
    for answer in futures_util::future::join_all(asks).await {
        match answer {
            Ok(more) => rooms.extend(more),
            Err(node) => missing_nodes.push(node),
        }
    }
    rooms.sort_by(|a, b| a.room.as_str().cmp(b.room.as_str()));
    rooms.dedup_by(|a, b| a.room == b.room);
    Json(RoomList {
        rooms,
        missing_nodes,
    })
    .into_response()
}

async fn get_room(State(sig): State<Signaling>, Path(room): Path<String>) -> Response {
    match ident("room", &room) {
        Ok(room) => respond(call(&sig, ApiCall::GetRoom { room }).await),
        Err(r) => respond(r),
    }
}

async fn end_room(State(sig): State<Signaling>, Path(room): Path<String>) -> Response {
    match ident("room", &room) {
        Ok(room) => respond(call(&sig, ApiCall::EndRoom { room }).await),
        Err(r) => respond(r),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataBody {
    metadata: String,
}

async fn set_metadata(
    State(sig): State<Signaling>,
    Path(room): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (room, body) = match (ident("room", &room), read::<MetadataBody>(body, false)) {
        (Ok(room), Ok(body)) => (room, body),
        (Err(r), _) | (_, Err(r)) => return respond(r),
    };
    if body.metadata.len() > miclink_protocol::MAX_METADATA_BYTES {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "metadata is at most 4096 bytes",
        );
    }
    let metadata = body.metadata;
    respond(call(&sig, ApiCall::SetMetadata { room, metadata }).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    topic: String,
    data: String,
}

async fn send_message(
    State(sig): State<Signaling>,
    Path(room): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (room, body) = match (ident("room", &room), read::<MessageBody>(body, false)) {
        (Ok(room), Ok(body)) => (room, body),
        (Err(r), _) | (_, Err(r)) => return respond(r),
    };
    if let Err(why) = check_message(&body.topic, &body.data) {
        return refuse(StatusCode::BAD_REQUEST, "bad_request", why);
    }
    let (topic, data) = (body.topic, body.data);
    respond(call(&sig, ApiCall::SendMessage { room, topic, data }).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KickBody {
    #[serde(default)]
    ban_s: u32,
}

async fn kick(
    State(sig): State<Signaling>,
    Path((room, user)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (room, user, body) = match (
        ident("room", &room),
        ident("user", &user),
        read::<KickBody>(body, true),
    ) {
        (Ok(room), Ok(user), Ok(body)) => (room, user, body),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return respond(r),
    };
    let ban_s = body.ban_s;
    respond(call(&sig, ApiCall::Kick { room, user, ban_s }).await)
}

async fn unlink(
    State(sig): State<Signaling>,
    Path((room, user)): Path<(String, String)>,
) -> Response {
    match (ident("room", &room), ident("user", &user)) {
        (Ok(room), Ok(user)) => respond(call(&sig, ApiCall::Unlink { room, user }).await),
        (Err(r), _) | (_, Err(r)) => respond(r),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    #[serde(default)]
    mic: Option<bool>,
    #[serde(default)]
    camera: Option<bool>,
}

async fn mute(
    State(sig): State<Signaling>,
    Path((room, user)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (room, user, body) = match (
        ident("room", &room),
        ident("user", &user),
        read::<MuteBody>(body, false),
    ) {
        (Ok(room), Ok(user), Ok(body)) => (room, user, body),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return respond(r),
    };
    if body.mic.is_none() && body.camera.is_none() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name mic or camera (or both)",
        );
    }
    let (mic, camera) = (body.mic, body.camera);
    respond(
        call(
            &sig,
            ApiCall::Mute {
                room,
                user,
                mic,
                camera,
            },
        )
        .await,
    )
}

async fn token(State(sig): State<Signaling>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match read::<TokenRequest>(body, false) {
        Ok(body) => body,
        Err(r) => return respond(r),
    };
    let Some(secret) = &sig.inner.config.jwt_secret else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "this server has no jwt_secret: joins need no token",
        );
    };
    let ttl = body.ttl_s.unwrap_or(TOKEN_TTL_S);
    if !(1..=TOKEN_TTL_MAX_S).contains(&ttl) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "ttl_s must be 1 to 86400",
        );
    }
    let role = match body.role {
        miclink_protocol::Role::Anchor => TokenRole::Anchor,
        miclink_protocol::Role::Audience => TokenRole::Audience,
    };
    let token = sign_token(secret, Some(&body.room), body.user.as_str(), role, ttl);
    Json(TokenResult { token }).into_response()
}

async fn wrong_method() -> Response {
    refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint takes another method (docs/api.md)",
    )
}

async fn unknown() -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint of the server API",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn status_from(sig: &Signaling, peer: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut request = axum::http::Request::get("/api/v1/rooms");
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let mut request = request.body(Body::empty()).expect("request");
        let peer: SocketAddr = peer.parse().expect("address");
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = routes(sig.clone()).oneshot(request).await.expect("answer");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn without_a_secret_only_this_machine_calls_the_api() {
        let sig = Signaling::start(crate::SignalingConfig::default(), None);
        assert_eq!(
            status_from(&sig, "127.0.0.1:5000", None).await.0,
            StatusCode::OK
        );
        assert_eq!(
            status_from(&sig, "[::1]:5000", None).await.0,
            StatusCode::OK
        );
        // An IPv4 loopback caller on a dual-stack listener.
        assert_eq!(
            status_from(&sig, "[::ffff:127.0.0.1]:5000", None).await.0,
            StatusCode::OK
        );
        for other in ["192.0.2.7:5000", "[2001:db8::1]:5000", "10.0.0.1:1"] {
            let (status, body) = status_from(&sig, other, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{other}");
            assert!(body.contains(r#""code":"unauthorized""#), "{body}");
        }
    }

    #[tokio::test]
    async fn with_a_secret_every_caller_needs_an_admin_token() {
        let secret = "api-unit-secret-0123456789";
        let sig = Signaling::start(
            crate::SignalingConfig {
                jwt_secret: Some(secret.into()),
                ..Default::default()
            },
            None,
        );
        let admin = sign_token(secret, None, "ops", TokenRole::Admin, 60);
        assert_eq!(
            status_from(&sig, "127.0.0.1:5000", None).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status_from(&sig, "192.0.2.7:5000", Some(&admin)).await.0,
            StatusCode::OK
        );
    }

    #[test]
    fn the_rate_limit_tracks_a_bounded_number_of_addresses() {
        let limits = Limits::default();
        let now = Instant::now();
        for i in 0..TRACKED as u32 {
            assert!(limits.admit(IpAddr::V4(Ipv4Addr::from(i)), 20.0, now));
        }
        // Every tracked address is busy at this instant: a new one goes on untracked (the
        // table does not grow), and a known one is still limited.
        let new = IpAddr::V4(Ipv4Addr::from(u32::MAX));
        assert!(limits.admit(new, 20.0, now));
        assert_eq!(limits.buckets.lock().expect("lock").len(), TRACKED);
        let known = IpAddr::V4(Ipv4Addr::from(1));
        let passed = (0..100).filter(|_| limits.admit(known, 20.0, now)).count();
        assert_eq!(passed, 39, "a burst of 40, one taken above");
        // Later the idle ones make room and the new address is tracked.
        let later = now + Duration::from_secs(5);
        assert!(limits.admit(new, 20.0, later));
        assert!(limits.buckets.lock().expect("lock").len() < TRACKED);
    }
}
