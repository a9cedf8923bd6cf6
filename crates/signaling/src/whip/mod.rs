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
//!
//! | module | owns | must not |
//! | --- | --- | --- |
//! | `mod.rs` | the routes and handlers (POST, DELETE, PATCH), who the client is | keep state of its own |
//! | `resources` | the table of live resources and the per-address and per-room caps | talk to the hub |
//! | `hub_conn` | a resource's connection to the hub while it is set up, replies as HTTP answers | read HTTP requests |
//! | `http` | CORS, content types, codecs, refusal statuses, `Link` headers | hold state |

mod http;
mod hub_conn;
mod resources;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use miclink_protocol::{IceCandidate, Ident, PeerConnectionKind, Request, Role};
use tracing::{info, warn};

use crate::Signaling;
use crate::auth::AuthError;
use crate::auth::bearer;
use crate::wire::{HubMsg, Outbound};
use http::{answer, content_type_is, has_forwarded_codec, links, preflight, unauthorized};
use hub_conn::{HubConn, leave, start};
use resources::{Place, Resource};

pub(crate) use resources::Resources;

/// The largest offer taken: a browser's offer with three simulcast layers is under 10 KiB; the
/// cap is the WebSocket frame limit's.
pub(crate) const MAX_SDP: usize = miclink_protocol::MAX_FRAME_BYTES;

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
    let described = match miclink_sfu::Sdp::parse(offer) {
        Ok(d) if !d.sections().is_empty() => d,
        _ => return answer(StatusCode::BAD_REQUEST, "the body is not an SDP offer\n"),
    };
    if !has_forwarded_codec(&described) {
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
    let Some(mut s) = HubConn::open(&sig).await else {
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
    // A trickle fragment (RFC 8840) is not a session description (no version, origin or
    // timing lines), so the SDP parser cannot read it: its few attribute lines are read here.
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
