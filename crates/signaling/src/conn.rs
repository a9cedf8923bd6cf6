//! One WebSocket: reads and polices frames, writes what the hub queues for it.
//!
//! Frames that cannot become requests (too big, binary, not JSON, over the rate) are answered
//! here without bothering the hub. Everything else goes to the hub in arrival order. The task
//! is written against any `Sink`/`Stream` of WebSocket messages, so tests drive it with channels.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use miclink_protocol::{ErrorCode, Event, MAX_FRAME_BYTES, ParseError, Reply, parse_request};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, info_span};

use crate::ratelimit::{RateLimiter, Verdict};
use crate::wire::{CLOSE_GOING_AWAY, CLOSE_POLICY, ConnId, HubMsg, Outbound, encode};

fn error_event(message: impl Into<String>) -> Utf8Bytes {
    encode(&Event::Error {
        code: ErrorCode::BadRequest,
        message: message.into(),
    })
}

pub(crate) async fn run<S, E>(
    socket: S,
    hub: mpsc::Sender<HubMsg>,
    conn: ConnId,
    keepalive: Duration,
    queue: usize,
) where
    S: Sink<Message> + Stream<Item = Result<Message, E>> + Send,
{
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

async fn serve<S, E>(
    socket: S,
    hub: &mpsc::Sender<HubMsg>,
    conn: ConnId,
    mut rx: mpsc::Receiver<Outbound>,
    keepalive: Duration,
) where
    S: Sink<Message> + Stream<Item = Result<Message, E>>,
{
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
async fn close<S, E>(
    mut sink: impl Sink<Message, Error = S> + Unpin,
    mut stream: impl Stream<Item = Result<Message, E>> + Unpin,
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// One end of an in-memory WebSocket: what the test sends comes out of the stream, what the
    /// task sends goes to the test.
    struct Duplex {
        from_client: mpsc::UnboundedReceiver<Message>,
        to_client: mpsc::UnboundedSender<Message>,
    }

    impl Stream for Duplex {
        type Item = Result<Message, std::convert::Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_client.poll_recv(cx).map(|m| m.map(Ok))
        }
    }

    impl Sink<Message> for Duplex {
        type Error = ();
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), ()> {
            self.to_client.send(item).map_err(|_| ())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Harness {
        send: mpsc::UnboundedSender<Message>,
        recv: mpsc::UnboundedReceiver<Message>,
        hub: mpsc::Receiver<HubMsg>,
        outbound: mpsc::Sender<Outbound>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn harness(keepalive: Duration) -> Harness {
        let (send, from_client) = mpsc::unbounded_channel();
        let (to_client, recv) = mpsc::unbounded_channel();
        let (hub_tx, mut hub) = mpsc::channel(16);
        let socket = Duplex {
            from_client,
            to_client,
        };
        let task = tokio::spawn(run(socket, hub_tx, 7, keepalive, 8));
        let Some(HubMsg::Connect { conn: 7, tx }) = hub.recv().await else {
            panic!("the task introduces itself first");
        };
        Harness {
            send,
            recv,
            hub,
            outbound: tx,
            task,
        }
    }

    async fn next_text(h: &mut Harness) -> String {
        match h.recv.recv().await {
            Some(Message::Text(t)) => t.to_string(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_frames_are_answered_here_and_never_reach_the_hub() {
        let mut h = harness(Duration::from_secs(20)).await;
        let big = format!(
            "{{\"id\":1,\"type\":\"leave\",\"x\":\"{}\"}}",
            "a".repeat(70_000)
        );
        for frame in [
            Message::Text(big.into()),
            Message::Binary(vec![1, 2, 3].into()),
            Message::Text("not json".into()),
            Message::Text("{\"type\":\"leave\"}".into()),
        ] {
            h.send.send(frame).expect("send");
            let answer = next_text(&mut h).await;
            assert!(answer.contains("\"bad_request\""), "{answer}");
        }
        assert!(h.hub.try_recv().is_err(), "the hub heard nothing");
    }

    #[tokio::test]
    async fn a_request_goes_to_the_hub_and_its_answer_comes_back() {
        let mut h = harness(Duration::from_secs(20)).await;
        h.send
            .send(Message::Text("{\"id\":5,\"type\":\"leave\"}".into()))
            .expect("send");
        match h.hub.recv().await {
            Some(HubMsg::Request { conn: 7, id: 5, .. }) => {}
            _ => panic!("the request reaches the hub"),
        }
        h.outbound
            .send(Outbound::Text("hello".into()))
            .await
            .expect("queue");
        assert_eq!(next_text(&mut h).await, "hello");
        h.outbound
            .send(Outbound::Close(CLOSE_GOING_AWAY, "bye"))
            .await
            .expect("queue");
        match h.recv.recv().await {
            Some(Message::Close(Some(f))) => assert_eq!(f.code, CLOSE_GOING_AWAY),
            other => panic!("a close frame, not {other:?}"),
        }
        h.send.send(Message::Close(None)).expect("send");
        h.task.await.expect("the task ends");
    }

    #[tokio::test]
    async fn a_flood_is_closed_as_a_policy_violation() {
        let mut h = harness(Duration::from_secs(20)).await;
        for _ in 0..1_200 {
            if h.send.send(Message::Text("{}".into())).is_err() {
                break;
            }
        }
        loop {
            match h.recv.recv().await {
                Some(Message::Close(Some(f))) => {
                    assert_eq!(f.code, CLOSE_POLICY);
                    break;
                }
                Some(_) => continue,
                None => panic!("closed without a close frame"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_dropped_after_three_keepalives() {
        let mut h = harness(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(45)).await;
        h.task.await.expect("the task ended");
        let mut closed = false;
        while let Ok(msg) = h.hub.try_recv() {
            closed |= matches!(msg, HubMsg::Closed { conn: 7 });
        }
        assert!(closed, "the hub was told");
        let mut pings = 0;
        while let Ok(m) = h.recv.try_recv() {
            pings += usize::from(matches!(m, Message::Ping(_)));
        }
        assert!(pings >= 3, "pinged {pings} times first");
    }
}
