//! A WHIP or WHEP resource's connection to the hub while its handler sets it up: it introduces
//! itself as a connection, sends the same requests a WebSocket client sends (join, publish) or
//! the HTTP-only ones (attach to an anchor's socket session, watch), and waits for their replies.
//!
//! It turns replies into HTTP answers; it does not hold the resource table or read HTTP requests.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use miclink_protocol::{ErrorCode, Ident, Name, PublishResult, Reply, Request};
use tokio::sync::mpsc;

use super::Kind;
use super::http::{answer, status_of, unauthorized};
use crate::Signaling;
use crate::wire::{ConnId, HubMsg, Outbound};

/// How long a step (join, publish) may wait for the hub and the media plane.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The resource's connection to the hub while the handler drives it.
pub(super) struct HubConn {
    sig: Signaling,
    pub(super) conn: ConnId,
    pub(super) rx: mpsc::Receiver<Outbound>,
}

impl HubConn {
    pub(super) async fn open(sig: &Signaling) -> Option<HubConn> {
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
        Some(HubConn {
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
                    Outbound::Text(t) | Outbound::Joined { text: t, .. } => {
                        if let Ok(r) = serde_json::from_str::<Reply>(&t)
                            && r.id == id
                        {
                            return Some(r);
                        }
                    }
                    Outbound::Close(..) => return None,
                    Outbound::Unbound | Outbound::ToNode(_) => {}
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
    pub(super) async fn close(self) {
        leave(&self.sig, self.conn).await;
    }
}

pub(super) async fn leave(sig: &Signaling, conn: ConnId) {
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
pub(super) async fn start(
    kind: Kind,
    s: &mut HubConn,
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
