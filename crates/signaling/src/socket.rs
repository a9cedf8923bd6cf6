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

/// How long a socket may take to do what it must; from the signaling configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// The server pings this often and drops a socket silent for three intervals.
    pub(crate) keepalive: Duration,
    /// Messages the hub may queue for the socket before it counts as too slow.
    pub(crate) queue: usize,
    /// A socket without a session this long after it opened is closed.
    pub(crate) join_timeout: Duration,
    /// A frame the peer has not taken in this long means it stopped reading; it is dropped.
    pub(crate) send_timeout: Duration,
}

pub(crate) async fn run<S, E>(socket: S, hub: mpsc::Sender<HubMsg>, conn: ConnId, timing: Timing)
where
    S: Sink<Message> + Stream<Item = Result<Message, E>> + Send,
{
    let span = info_span!("conn", conn);
    async move {
        let (tx, rx) = mpsc::channel(timing.queue.max(1));
        if hub
            .send(HubMsg::Connect {
                conn,
                tx,
                http: false,
            })
            .await
            .is_err()
        {
            return;
        }
        debug!("connected");
        serve(socket, &hub, conn, rx, timing).await;
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
    timing: Timing,
) where
    S: Sink<Message> + Stream<Item = Result<Message, E>>,
{
    let (mut sink, mut stream) = socket.split();
    let keepalive = timing.keepalive;
    let mut limiter = RateLimiter::new(Instant::now());
    let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // A socket only costs a session's worth of memory once it joins; one that never does is
    // closed soon, so idle sockets cannot be piled up for free.
    let join_deadline = tokio::time::sleep(timing.join_timeout);
    tokio::pin!(join_deadline);
    let mut joined = false;
    loop {
        let outgoing = tokio::select! {
            // In this order: a join reply that is ready wins over the join deadline.
            biased;
            out = rx.recv() => match out {
                Some(Outbound::Text(text)) => Some(Message::Text(text)),
                Some(Outbound::Joined { text, .. }) => {
                    joined = true;
                    Some(Message::Text(text))
                }
                Some(Outbound::Unbound) => {
                    joined = false;
                    join_deadline
                        .as_mut()
                        .reset(Instant::now() + timing.join_timeout);
                    None
                }
                Some(Outbound::Close(code, reason)) => {
                    return close(sink, stream, code, reason).await;
                }
                Some(Outbound::ToNode(_)) => None,
                // The hub dropped us (too slow to keep up, or shutting down).
                None => return close(sink, stream, CLOSE_GOING_AWAY, "dropped").await,
            },
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { return };
                last_heard = Instant::now();
                // Every frame counts against the rate, control frames too: a ping flood costs
                // the server a pong each.
                let verdict = limiter.check(last_heard);
                if verdict == Verdict::Close {
                    return close(sink, stream, CLOSE_POLICY, "rate limit exceeded").await;
                }
                match frame {
                    Message::Text(text) => {
                        on_text(hub, conn, &text, verdict == Verdict::Limited).await
                    }
                    Message::Binary(_) => {
                        Some(error_event("binary frames are not accepted; send JSON text"))
                    }
                    Message::Close(_) => return,
                    Message::Ping(_) | Message::Pong(_) => None,
                }
                .map(Message::Text)
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > keepalive * 3 {
                    debug!("silent for three keepalive intervals");
                    return;
                }
                Some(Message::Ping(Default::default()))
            }
            () = &mut join_deadline, if !joined => {
                debug!("no join in time");
                return close(sink, stream, CLOSE_POLICY, "join or resume first").await;
            }
        };
        if let Some(message) = outgoing {
            match tokio::time::timeout(timing.send_timeout, sink.send(message)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    debug!("the peer stopped reading");
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
    // A peer that stopped reading would hold the send forever.
    if !matches!(
        tokio::time::timeout(CLOSE_WAIT, sink.send(frame)).await,
        Ok(Ok(()))
    ) {
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
        /// Set: the client stopped reading, so nothing more can be written.
        stuck: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
            if self.stuck.load(std::sync::atomic::Ordering::SeqCst) {
                // A full TCP window: never ready (the task's own timer must end the wait).
                return Poll::Pending;
            }
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
        stuck: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    const TIMING: Timing = Timing {
        keepalive: Duration::from_secs(20),
        queue: 8,
        join_timeout: Duration::from_secs(10),
        send_timeout: Duration::from_secs(10),
    };

    async fn harness(keepalive: Duration) -> Harness {
        let (send, from_client) = mpsc::unbounded_channel();
        let (to_client, recv) = mpsc::unbounded_channel();
        let (hub_tx, mut hub) = mpsc::channel(16);
        let stuck = std::sync::Arc::default();
        let socket = Duplex {
            from_client,
            to_client,
            stuck: std::sync::Arc::clone(&stuck),
        };
        let timing = Timing {
            keepalive,
            ..TIMING
        };
        let task = tokio::spawn(run(socket, hub_tx, 7, timing));
        let Some(HubMsg::Connect { conn: 7, tx, .. }) = hub.recv().await else {
            panic!("the task introduces itself first");
        };
        Harness {
            send,
            recv,
            hub,
            outbound: tx,
            task,
            stuck,
        }
    }

    /// The hub answers a join: the socket has a session and sends the reply.
    async fn join(h: &mut Harness) {
        h.outbound
            .send(Outbound::Joined {
                text: "joined".into(),
                member: None,
            })
            .await
            .expect("queue");
        assert_eq!(next_text(h).await, "joined");
    }

    /// Whether the hub was told the socket closed.
    fn hub_heard_closed(hub: &mut mpsc::Receiver<HubMsg>) -> bool {
        let mut closed = false;
        while let Ok(msg) = hub.try_recv() {
            closed |= matches!(msg, HubMsg::Closed { conn: 7 });
        }
        closed
    }

    /// The close frame the task sent, skipping anything before it.
    async fn close_code(h: &mut Harness) -> u16 {
        loop {
            match h.recv.recv().await {
                Some(Message::Close(Some(f))) => return f.code,
                Some(_) => continue,
                None => panic!("closed without a close frame"),
            }
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
        assert_eq!(close_code(&mut h).await, CLOSE_POLICY);
    }

    #[tokio::test]
    async fn a_ping_flood_counts_against_the_rate_limit() {
        let mut h = harness(Duration::from_secs(20)).await;
        for _ in 0..1_200 {
            if h.send.send(Message::Ping(Default::default())).is_err() {
                break;
            }
        }
        assert_eq!(close_code(&mut h).await, CLOSE_POLICY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_never_joins_is_closed_after_the_join_timeout() {
        let mut h = harness(Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(h.recv.try_recv().is_err(), "still open before the timeout");
        assert_eq!(close_code(&mut h).await, CLOSE_POLICY);
        h.send.send(Message::Close(None)).expect("send");
        h.task.await.expect("the task ends");
        assert!(hub_heard_closed(&mut h.hub));
    }

    #[tokio::test(start_paused = true)]
    async fn a_joined_socket_outlives_the_join_timeout() {
        let mut h = harness(Duration::from_secs(20)).await;
        join(&mut h).await;
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert!(h.recv.try_recv().is_err(), "no close frame");
        assert!(!h.task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_whose_session_ended_is_held_to_the_join_timeout_again() {
        let mut h = harness(Duration::from_secs(20)).await;
        join(&mut h).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        h.outbound.send(Outbound::Unbound).await.expect("queue");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!h.task.is_finished(), "a fresh 10 s from the session's end");
        assert_eq!(close_code(&mut h).await, CLOSE_POLICY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_stops_reading_is_dropped_after_the_send_timeout() {
        let mut h = harness(Duration::from_secs(20)).await;
        join(&mut h).await;
        h.stuck.store(true, std::sync::atomic::Ordering::SeqCst);
        h.outbound
            .send(Outbound::Text("event".into()))
            .await
            .expect("queue");
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(h.task.is_finished(), "the task gave up on the socket");
        assert!(hub_heard_closed(&mut h.hub));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_dropped_after_three_keepalives() {
        let mut h = harness(Duration::from_secs(10)).await;
        join(&mut h).await;
        tokio::time::sleep(Duration::from_secs(45)).await;
        h.task.await.expect("the task ended");
        assert!(hub_heard_closed(&mut h.hub), "the hub was told");
        let mut pings = 0;
        while let Ok(m) = h.recv.try_recv() {
            pings += usize::from(matches!(m, Message::Ping(_)));
        }
        assert!(pings >= 3, "pinged {pings} times first");
    }
}
