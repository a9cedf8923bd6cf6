//! One WebSocket: reads and polices frames, writes what the hub queues for it.
//!
//! Frames that cannot become requests (too big, binary, not JSON, over the rate) are answered
//! here without bothering the hub. Everything else goes to the hub in arrival order.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use miclink_protocol::{ErrorCode, Event, MAX_FRAME_BYTES, ParseError, Reply, parse_request};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, info_span};

use crate::hub::{ConnId, HubMsg};
use crate::ratelimit::{RateLimiter, Verdict};

/// What the hub asks a socket to do.
#[derive(Debug)]
pub(crate) enum Outbound {
    Text(Utf8Bytes),
    Close(u16, &'static str),
}

/// WebSocket close code for "policy violation".
pub(crate) const CLOSE_POLICY: u16 = 1008;
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Application close code: a newer session of the same user took over.
pub(crate) const CLOSE_REPLACED: u16 = 4001;

pub(crate) fn encode(msg: &impl Serialize) -> Utf8Bytes {
    serde_json::to_string(msg)
        .expect("protocol messages hold only string-keyed maps and always serialize")
        .into()
}

fn error_event(message: impl Into<String>) -> Utf8Bytes {
    encode(&Event::Error {
        code: ErrorCode::BadRequest,
        message: message.into(),
    })
}

pub(crate) async fn run(
    socket: WebSocket,
    hub: mpsc::Sender<HubMsg>,
    conn: ConnId,
    keepalive: Duration,
    queue: usize,
) {
    let span = info_span!("conn", conn);
    async move {
        let (tx, rx) = mpsc::channel(queue.max(1));
        if hub.send(HubMsg::Connect { conn, tx }).await.is_err() {
            return;
        }
        debug!("connected");
        serve(socket, &hub, conn, rx, keepalive).await;
        let _ = hub.send(HubMsg::Closed { conn }).await;
        debug!("closed");
    }
    .instrument(span)
    .await
}

async fn serve(
    socket: WebSocket,
    hub: &mpsc::Sender<HubMsg>,
    conn: ConnId,
    mut rx: mpsc::Receiver<Outbound>,
    keepalive: Duration,
) {
    let (mut sink, mut stream) = socket.split();
    let mut limiter = RateLimiter::new(Instant::now());
    let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { return };
                last_heard = Instant::now();
                let answer = match frame {
                    Message::Text(text) => {
                        match limiter.check(last_heard) {
                            Verdict::Close => {
                                return close(sink, stream, CLOSE_POLICY, "rate limit exceeded").await;
                            }
                            verdict => on_text(hub, conn, &text, verdict == Verdict::Limited).await,
                        }
                    }
                    Message::Binary(_) => match limiter.check(last_heard) {
                        Verdict::Close => {
                            return close(sink, stream, CLOSE_POLICY, "rate limit exceeded").await;
                        }
                        _ => Some(error_event("binary frames are not accepted; send JSON text")),
                    },
                    Message::Close(_) => return,
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(text) = answer
                    && sink.send(Message::Text(text)).await.is_err()
                {
                    return;
                }
            }
            out = rx.recv() => match out {
                Some(Outbound::Text(text)) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Outbound::Close(code, reason)) => {
                    return close(sink, stream, code, reason).await;
                }
                // The hub dropped us (too slow to keep up, or shutting down).
                None => return close(sink, stream, CLOSE_GOING_AWAY, "dropped").await,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > keepalive * 3 {
                    debug!("silent for three keepalive intervals");
                    return;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Send a close frame and wait (briefly) for the peer's. Dropping the socket while the peer's
/// frames sit unread would make the kernel answer with a reset, and the peer would never see
/// why it was closed.
async fn close(
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    code: u16,
    reason: &'static str,
) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    if sink.send(frame).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Turn a text frame into a request for the hub, or into the answer to send back at once.
async fn on_text(
    hub: &mpsc::Sender<HubMsg>,
    conn: ConnId,
    text: &str,
    limited: bool,
) -> Option<Utf8Bytes> {
    if text.len() > MAX_FRAME_BYTES {
        return Some(error_event(format!(
            "frame of {} bytes is over the {MAX_FRAME_BYTES}-byte limit",
            text.len()
        )));
    }
    match parse_request(text) {
        Err(ParseError::Frame(message)) => Some(error_event(message)),
        Err(ParseError::Fields { id, message }) => {
            Some(encode(&Reply::err(id, ErrorCode::BadRequest, message)))
        }
        Ok((id, _)) if limited => Some(encode(&Reply::err(
            id,
            ErrorCode::RateLimited,
            "more than 50 frames a second; slow down",
        ))),
        Ok((id, request)) => {
            // A full hub queue makes this socket wait: back-pressure instead of unbounded memory.
            hub.send(HubMsg::Request { conn, id, request }).await.ok()?;
            None
        }
    }
}
