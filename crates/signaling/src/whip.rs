//! WHIP ingest and WHEP playback (RFC 9725, contract rule 15): `POST /whip/{room}` with an SDP
//! offer makes the sender the room's anchor and the room live; `POST /whep/{room}` with a
//! receive-only offer makes the sender a viewer. `DELETE` on the resource a POST names ends the
//! live (WHIP) or leaves (WHEP).
//!
//! A resource is a session like a socket's, driven from HTTP: the handler introduces itself to
//! the hub as a connection and joins with the same request a WebSocket client sends, so
//! admission, seats, tokens and counts are exactly those of the protocol; then it publishes
//! (WHIP) or watches (WHEP). What the hub sends the resource (room events) is read and dropped by
//! a small task until the session ends. The member makes its own offers (the hub tells the media
//! plane so). A WHIP anchor's publish connection ending counts as its connection lost (rule 8's
//! grace applies: an encoder that reconnects posts again as the same user and takes its place
//! back); a WHEP viewer's ending is its leave.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use miclink_protocol::{
    ErrorCode, IceCandidate, IceServer, Ident, Name, PeerConnectionKind, PublishResult, Reply,
    Request, Role,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::Signaling;
use crate::auth::AuthError;
use crate::wire::{ConnId, HubMsg, Outbound};

/// The largest offer taken: a browser's offer with three simulcast layers is under 10 KiB; the
/// cap is the WebSocket frame limit's.
pub(crate) const MAX_SDP: usize = miclink_protocol::MAX_FRAME_BYTES;

/// How long a step (join, publish) may wait for the hub and the media plane.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The user a WHIP anchor is when the server checks no tokens and its bearer names none:
/// posting again to the same room is then the same anchor coming back, as with a token.
const OPEN_USER: &str = "whip";

/// Which of the two endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Whip,
    Whep,
}

impl Kind {
    fn role(self) -> Role {
        match self {
            Kind::Whip => Role::Anchor,
            Kind::Whep => Role::Audience,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }

    fn pc(self) -> PeerConnectionKind {
        match self {
            Kind::Whip => PeerConnectionKind::Publish,
            Kind::Whep => PeerConnectionKind::Subscribe,
        }
    }
}

/// The live WHIP and WHEP resources: resource id -> its session's connection; and what each
/// client address and each room holds of them.
#[derive(Default)]
pub(crate) struct Resources {
    map: Mutex<HashMap<String, Resource>>,
    held: Arc<Mutex<Held>>,
}

/// Sessions held (or being set up) per client address and WHEP viewers per room.
#[derive(Default)]
struct Held {
    by_ip: HashMap<IpAddr, usize>,
    by_room: HashMap<Ident, usize>,
}

/// A session's place in the caps, given back when the resource goes (or its set-up failed).
struct Place {
    held: Arc<Mutex<Held>>,
    ip: Option<IpAddr>,
    room: Option<Ident>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = self.ip
            && let Some(n) = held.by_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                held.by_ip.remove(&ip);
            }
        }
        if let Some(room) = &self.room
            && let Some(n) = held.by_room.get_mut(room)
        {
            *n -= 1;
            if *n == 0 {
                held.by_room.remove(room);
            }
        }
    }
}

#[derive(Clone)]
struct Resource {
    kind: Kind,
    /// A WHIP encoder publishing for an anchor on a socket, not a session of its own.
    attached: bool,
    room: Ident,
    user: Ident,
    conn: ConnId,
    etag: String,
    /// Its place in the caps, given back with the last clone.
    _place: Arc<Place>,
}

impl Resources {
    fn get(&self, id: &str) -> Option<Resource> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resource>> {
        // Every update under the lock is one statement: a poisoned map is still whole.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, id: String, r: Resource) {
        self.lock().insert(id, r);
    }

    /// Forget `id` if it is still `conn`'s.
    fn remove(&self, id: &str, conn: ConnId) {
        let mut map = self.lock();
        if map.get(id).is_some_and(|r| r.conn == conn) {
            map.remove(id);
        }
    }

    /// A place for a new session of `kind` in `room` from client `ip` (`None`: not counted per
    /// address), or the answer refusing it.
    // The refusal is the handler's whole answer, returned at once: boxing it would buy nothing.
    #[allow(clippy::result_large_err)]
    fn admit(
        &self,
        config: &crate::SignalingConfig,
        ip: Option<IpAddr>,
        kind: Kind,
        room: &Ident,
    ) -> Result<Place, Response> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = ip
            && config.http_media_per_ip > 0
            && held.by_ip.get(&ip).copied().unwrap_or(0) >= config.http_media_per_ip
        {
            return Err(answer(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this address holds {} WHIP and WHEP sessions, the most it may: end one \
                     (DELETE its resource) first\n",
                    config.http_media_per_ip
                ),
            ));
        }
        let room = (kind == Kind::Whep).then(|| room.clone());
        if let Some(room) = &room
            && held.by_room.get(room).copied().unwrap_or(0) >= config.whep_per_room
        {
            return Err(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this room has {} WHEP viewers, the most it takes\n",
                    config.whep_per_room
                ),
            ));
        }
        if let Some(ip) = ip {
            *held.by_ip.entry(ip).or_default() += 1;
        }
        if let Some(room) = &room {
            *held.by_room.entry(room.clone()).or_default() += 1;
        }
        Ok(Place {
            held: self.held.clone(),
            ip,
            room,
        })
    }
}

pub(crate) fn routes() -> Router<Signaling> {
    let mut router = Router::new();
    for kind in [Kind::Whip, Kind::Whep] {
        let p = kind.path();
        router = router
            .route(
                &format!("/{p}/{{room}}"),
                post(move |s, p, r, h, b| create(kind, s, p, r, h, b)).options(preflight),
            )
            .route(
                &format!("/{p}/{{room}}/{{resource}}"),
                axum::routing::delete(move |s, r, h| end(kind, s, r, h))
                    .patch(move |s, r, h, b| patch(kind, s, r, h, b))
                    .options(preflight),
            );
    }
    router
}

/// An HTTP answer with the CORS headers every WHIP answer carries (browser players and
/// publishers run on other origins).
fn answer(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = (status, body.into()).into_response();
    cors(r.headers_mut());
    r
}

fn cors(h: &mut HeaderMap) {
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("Location, Link, ETag, Accept-Post"),
    );
}

async fn preflight() -> Response {
    let mut r = answer(StatusCode::NO_CONTENT, "");
    let h = r.headers_mut();
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
    h.insert("accept-post", HeaderValue::from_static("application/sdp"));
    r
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

fn unauthorized(why: impl std::fmt::Display) -> Response {
    let mut r = answer(StatusCode::UNAUTHORIZED, format!("{why}\n"));
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Whether an offer carries a codec the server forwards (Opus, VP8, H.264) in some m-section.
fn has_forwarded_codec(sdp: &str) -> bool {
    sdp.lines().any(|line| {
        line.strip_prefix("a=rtpmap:")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|enc| enc.split('/').next())
            .is_some_and(|name| {
                ["opus", "vp8", "h264"]
                    .iter()
                    .any(|c| name.eq_ignore_ascii_case(c))
            })
    })
}

/// The HTTP status for a refused join or publish.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Banned => StatusCode::FORBIDDEN,
        ErrorCode::RoomExists | ErrorCode::AlreadyJoined => StatusCode::CONFLICT,
        ErrorCode::RoomNotFound | ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::BadRequest | ErrorCode::BadSdp => StatusCode::BAD_REQUEST,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// One `Link` value per ICE server URL (RFC 9725 section 4.6; one header line each, which
/// every client parses).
fn links(servers: &[IceServer]) -> Vec<HeaderValue> {
    // A configured value with a quote or a backslash could not be quoted plainly; none the
    // server makes has one.
    let quoted = |s: &str| s.replace(['"', '\\'], "");
    servers
        .iter()
        .flat_map(|s| s.urls.iter().map(move |url| (s, url)))
        .filter_map(|(s, url)| {
            let mut v = format!("<{}>; rel=\"ice-server\"", quoted(url));
            if let (Some(u), Some(c)) = (&s.username, &s.credential) {
                v += &format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    quoted(u),
                    quoted(c)
                );
            }
            HeaderValue::from_str(&v).ok()
        })
        .collect()
}

/// The resource's connection to the hub while the handler drives it.
struct Session {
    sig: Signaling,
    conn: ConnId,
    rx: mpsc::Receiver<Outbound>,
}

impl Session {
    async fn open(sig: &Signaling) -> Option<Session> {
        let conn = sig.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(sig.inner.config.outbound_queue.max(16));
        sig.inner
            .hub
            .send(HubMsg::Connect {
                conn,
                tx,
                http: true,
            })
            .await
            .ok()?;
        Some(Session {
            sig: sig.clone(),
            conn,
            rx,
        })
    }

    /// Send `request` as request `id` and wait for its reply.
    async fn call(&mut self, id: u64, request: Request) -> Result<Reply, Response> {
        let conn = self.conn;
        self.send(id, HubMsg::Request { conn, id, request }).await
    }

    /// Send `msg`, whose reply is numbered `id`, and wait for that reply.
    async fn send(&mut self, id: u64, msg: HubMsg) -> Result<Reply, Response> {
        let unavailable = || answer(StatusCode::SERVICE_UNAVAILABLE, "server unavailable\n");
        self.sig
            .inner
            .hub
            .send(msg)
            .await
            .map_err(|_| unavailable())?;
        let wait = async {
            while let Some(out) = self.rx.recv().await {
                match out {
                    Outbound::Text(t) | Outbound::Joined(t) => {
                        if let Ok(r) = serde_json::from_str::<Reply>(&t)
                            && r.id == id
                        {
                            return Some(r);
                        }
                    }
                    Outbound::Close(..) => return None,
                    Outbound::Unbound | Outbound::Relay(_) => {}
                }
            }
            None
        };
        match tokio::time::timeout(STEP_TIMEOUT, wait).await {
            Ok(Some(r)) => Ok(r),
            _ => Err(unavailable()),
        }
    }

    /// End the session (the anchor leaves: the live ends) and the connection.
    async fn close(self) {
        leave(&self.sig, self.conn).await;
    }
}

async fn leave(sig: &Signaling, conn: ConnId) {
    let hub = &sig.inner.hub;
    let _ = hub
        .send(HubMsg::Request {
            conn,
            id: 0,
            request: Request::Leave,
        })
        .await;
    let _ = hub.send(HubMsg::Closed { conn }).await;
}

fn refused(reply: &Reply) -> Option<Response> {
    if reply.ok {
        return None;
    }
    let (code, message) = reply
        .error
        .as_ref()
        .map_or((ErrorCode::Internal, String::new()), |e| {
            (e.code, e.message.clone())
        });
    Some(match code {
        ErrorCode::Unauthorized => unauthorized(message),
        code => answer(status_of(code), format!("{}: {message}\n", code.as_str())),
    })
}

/// The answer a publish or watch reply carries, or the refusal.
// The refusal is the handler's whole answer, returned at once: boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn answered(reply: Reply) -> Result<String, Response> {
    if let Some(resp) = refused(&reply) {
        return Err(resp);
    }
    reply
        .result
        .and_then(|v| serde_json::from_value::<PublishResult>(v).ok())
        .map(|p| p.sdp)
        .ok_or_else(|| answer(StatusCode::INTERNAL_SERVER_ERROR, "no answer\n"))
}

/// Join (or, for WHIP, attach to the anchor's socket session) and publish or watch; the answer,
/// and whether the encoder attached.
async fn start(
    kind: Kind,
    s: &mut Session,
    room: &Ident,
    user: &Ident,
    token: Option<&str>,
    offer: &str,
) -> Result<(String, bool), Response> {
    let conn = s.conn;
    let sdp = offer.to_owned();
    if kind == Kind::Whip {
        // An anchor in the room with the demo (the controls) and an encoder (the media).
        let attach = HubMsg::Attach {
            conn,
            id: 1,
            room: room.clone(),
            user: user.clone(),
            sdp: sdp.clone(),
        };
        let reply = s.send(1, attach).await?;
        let not_there = reply
            .error
            .as_ref()
            .is_some_and(|e| e.code == ErrorCode::NotInRoom);
        if !not_there {
            return answered(reply).map(|sdp| (sdp, true));
        }
    }
    let join = Request::Join {
        room: room.clone(),
        user: user.clone(),
        role: kind.role(),
        name: Name::new(match kind {
            Kind::Whip => "WHIP",
            Kind::Whep => "WHEP viewer",
        })
        .ok(),
        token: token.map(str::to_owned),
    };
    let joined = s.call(2, join).await?;
    if let Some(resp) = refused(&joined) {
        return Err(resp);
    }
    let media = match kind {
        Kind::Whip => s.call(3, Request::Publish { sdp }).await?,
        Kind::Whep => s.send(3, HubMsg::Watch { conn, id: 3, sdp }).await?,
    };
    answered(media).map(|sdp| (sdp, false))
}

/// `POST /whip/{room}`, `POST /whep/{room}`.
async fn create(
    kind: Kind,
    State(sig): State<Signaling>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !content_type_is(&headers, "application/sdp") {
        return answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an SDP offer (application/sdp) is expected\n",
        );
    }
    if body.len() > MAX_SDP {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "the offer is too large\n");
    }
    let Ok(room) = Ident::new(&room) else {
        return answer(StatusCode::NOT_FOUND, "no such room\n");
    };
    let Ok(offer) = std::str::from_utf8(&body) else {
        return answer(StatusCode::BAD_REQUEST, "the offer is not UTF-8\n");
    };
    if !offer.starts_with("v=0") || !offer.lines().any(|l| l.starts_with("m=")) {
        return answer(StatusCode::BAD_REQUEST, "the body is not an SDP offer\n");
    }
    if !has_forwarded_codec(offer) {
        return answer(
            StatusCode::NOT_ACCEPTABLE,
            "the offer has none of the codecs this server forwards (Opus, VP8, H.264)\n",
        );
    }
    let token = bearer(&headers);
    let user = match (&sig.inner.auth, kind) {
        (Some(auth), _) => match auth.subject(token, &room, kind.role()) {
            Ok(user) => user,
            Err(why) => return unauthorized(why),
        },
        // Without tokens, clients name themselves: a bearer value that is a user id names the
        // anchor (so an encoder can publish for the demo's anchor), else every encoder is one.
        (None, Kind::Whip) => token
            .and_then(|t| Ident::new(t).ok())
            .unwrap_or_else(|| Ident::new(OPEN_USER).expect("a valid id")),
        // Every player is a viewer of its own.
        (None, Kind::Whep) => {
            Ident::new(&format!("whep-{}", &crate::session::new_token()[..12])).expect("a valid id")
        }
    };
    // In a cluster, an encoder for a room another node holds publishes there: it is sent on
    // (RFC 9725 clients follow a 307 with the same request). A player is served where it
    // landed, from the room's relay, as a socket's viewer is.
    if kind == Kind::Whip
        && let Some(origin) = sig.locate(&room, true).await
    {
        let location = format!("{}/{}/{room}", origin.trim_end_matches('/'), kind.path());
        let mut resp = answer(
            StatusCode::TEMPORARY_REDIRECT,
            format!("the room is served at {location}\n"),
        );
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(axum::http::header::LOCATION, v);
        }
        return resp;
    }
    // A session outlives its request: each address and each room hold a bounded number.
    let config = &sig.inner.config;
    let ip = peer
        .map(|Extension(ConnectInfo(addr))| crate::client_key(addr.ip()))
        .filter(|ip| config.http_media_per_ip_on_loopback || !ip.is_loopback());
    let place = match sig.inner.whip.admit(config, ip, kind, &room) {
        Ok(place) => Arc::new(place),
        Err(resp) => return resp,
    };
    // From here the session is set up whatever the client does: a client that goes away
    // mid-way cancels this handler, and a session half made (joined, its connection built)
    // would then hold its room place and media connection without its place in these caps.
    // Once made, it ends as any other does (DELETE, its connection failing, the room ending).
    let (token, offer) = (token.map(str::to_owned), offer.to_owned());
    let made = tokio::spawn(open_session(kind, sig, room, user, token, offer, place));
    made.await
        .unwrap_or_else(|_| answer(StatusCode::INTERNAL_SERVER_ERROR, "failed\n"))
}

/// Set the session up: join (or attach) and publish or watch; the 201 with its answer, or the
/// refusal (the session closed again).
async fn open_session(
    kind: Kind,
    sig: Signaling,
    room: Ident,
    user: Ident,
    token: Option<String>,
    offer: String,
    place: Arc<Place>,
) -> Response {
    let Some(mut s) = Session::open(&sig).await else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "server unavailable\n");
    };
    let (sdp, attached) = match start(kind, &mut s, &room, &user, token.as_deref(), &offer).await {
        Ok(started) => started,
        Err(resp) => {
            s.close().await;
            return resp;
        }
    };
    let ice_servers = crate::turn::ice_servers_for(
        &sig.inner.config.ice_servers,
        sig.inner.config.turn.as_ref(),
        user.as_str(),
        std::time::SystemTime::now(),
    );
    let id = crate::session::new_token();
    let etag = format!("\"{}\"", &id[..16]);
    let resource = Resource {
        kind,
        attached,
        room: room.clone(),
        user: user.clone(),
        conn: s.conn,
        etag: etag.clone(),
        _place: place,
    };
    sig.inner.whip.insert(id.clone(), resource);
    info!(%room, %user, ?kind, attached, "HTTP media session");
    // The session's events are read until it ends (left, replaced, room ended, media lost).
    let (sig2, id2, conn) = (sig.clone(), id.clone(), s.conn);
    let mut rx = s.rx;
    tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            if matches!(out, Outbound::Unbound | Outbound::Close(..)) {
                break;
            }
        }
        sig2.inner.whip.remove(&id2, conn);
        let _ = sig2.inner.hub.send(HubMsg::Closed { conn }).await;
    });
    let mut r = answer(StatusCode::CREATED, sdp);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/{}/{room}/{id}", kind.path())) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    for link in links(&ice_servers) {
        h.append(header::LINK, link);
    }
    r
}

/// The live resource `id` of `room`, if the request may act on it; else the answer saying why
/// not. The resource's URL is its capability (unguessable); with tokens checked, the request
/// must also carry one for the same anchor.
// The refusal is the handler's whole answer, returned at once: boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn resource(
    kind: Kind,
    sig: &Signaling,
    headers: &HeaderMap,
    room: &str,
    id: &str,
) -> Result<Resource, Response> {
    let r = sig
        .inner
        .whip
        .get(id)
        .filter(|r| r.room.as_str() == room && r.kind == kind)
        .ok_or_else(|| answer(StatusCode::NOT_FOUND, "no such session\n"))?;
    match &sig.inner.auth {
        Some(auth) => match auth.subject(bearer(headers), &r.room, kind.role()) {
            Ok(user) if user == r.user => Ok(r),
            Ok(_) => Err(unauthorized(AuthError::OtherUser)),
            Err(why) => Err(unauthorized(why)),
        },
        None => Ok(r),
    }
}

/// `DELETE` on a resource: a WHIP anchor leaves and the live ends (`room_ended`); a WHEP viewer
/// leaves.
async fn end(
    kind: Kind,
    State(sig): State<Signaling>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let r = match resource(kind, &sig, &headers, &room, &id) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    sig.inner.whip.remove(&id, r.conn);
    if r.attached {
        let hub = &sig.inner.hub;
        let (conn, room, user) = (r.conn, r.room.clone(), r.user.clone());
        let _ = hub.send(HubMsg::EndLive { conn, room, user }).await;
        let _ = hub.send(HubMsg::Closed { conn }).await;
    } else {
        leave(&sig, r.conn).await;
    }
    info!(room = %r.room, user = %r.user, ?kind, "HTTP media session deleted");
    answer(StatusCode::OK, "")
}

/// `PATCH /whip/{room}/{resource}` with `application/trickle-ice-sdpfrag`: trickled candidates
/// are taken (the server is ICE-lite and learns the client's addresses from its checks, so
/// they are hints); an ICE restart is not supported (422, RFC 9725 section 4.3.2).
async fn patch(
    kind: Kind,
    State(sig): State<Signaling>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = match resource(kind, &sig, &headers, &room, &id) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !content_type_is(&headers, "application/trickle-ice-sdpfrag") {
        return answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an SDP fragment (application/trickle-ice-sdpfrag) is expected\n",
        );
    }
    if body.len() > MAX_SDP {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "the fragment is too large\n");
    }
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    if if_match == Some("*") {
        return answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ICE restarts are not supported: post a new offer\n",
        );
    }
    if if_match.is_some_and(|v| v != r.etag) {
        return answer(StatusCode::PRECONDITION_FAILED, "stale ETag\n");
    }
    let Ok(frag) = std::str::from_utf8(&body) else {
        return answer(StatusCode::BAD_REQUEST, "the fragment is not UTF-8\n");
    };
    let ufrag = frag
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_owned());
    let mut mid = None;
    let mut sent = 0;
    for line in frag.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if let Some(c) = line.strip_prefix("a=candidate:") {
            // The server caps candidates per connection; this bounds one request's work.
            if sent >= 64 {
                break;
            }
            sent += 1;
            let request = Request::Ice {
                pc: kind.pc(),
                candidate: IceCandidate {
                    candidate: format!("candidate:{c}"),
                    sdp_mid: mid.clone(),
                    sdp_m_line_index: None,
                    username_fragment: ufrag.clone(),
                },
            };
            if sig
                .inner
                .hub
                .send(HubMsg::Request {
                    conn: r.conn,
                    id: 0,
                    request,
                })
                .await
                .is_err()
            {
                warn!("hub gone");
                return answer(StatusCode::SERVICE_UNAVAILABLE, "server unavailable\n");
            }
        }
    }
    answer(StatusCode::NO_CONTENT, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_and_links() {
        assert!(has_forwarded_codec(
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n"
        ));
        assert!(!has_forwarded_codec(
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 AV1/90000\r\n"
        ));
        let servers = vec![
            IceServer {
                urls: vec!["stun:127.0.0.1:3478".into()],
                username: None,
                credential: None,
            },
            IceServer {
                urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
                username: Some("1700000000:anchor".into()),
                credential: Some("c\"x".into()),
            },
        ];
        let links: Vec<String> = links(&servers)
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect();
        assert_eq!(
            links,
            vec![
                "<stun:127.0.0.1:3478>; rel=\"ice-server\"".to_owned(),
                "<turn:127.0.0.1:3478?transport=udp>; rel=\"ice-server\"; username=\"1700000000:anchor\"; credential=\"cx\"; credential-type=\"password\"".to_owned(),
            ]
        );
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer "));
        assert_eq!(bearer(&h), None);
    }
}
