//! A miclink member as a client application would be: the protocol over the server's WebSocket
//! (`docs/protocol.md`), a subscribe connection that answers the server's offers in order (and
//! is replaced when an offer says `new_connection`), and optionally a publish connection. The
//! load tool's members and the end-to-end tests are this one client.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use miclink_protocol::{
    ClientMessage, Event, Ident, JoinResult, Reply, Request, Role, ServerMessage,
};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::peer::{Peer, Publisher, Route, Sent, StreamSpec};
use crate::recv::Recv;

const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// A rewrite of a session description before it is applied (tests route media through a
/// proxy by rewriting the server's candidate).
pub type SdpRewrite = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// How a member behaves beyond the protocol's defaults.
#[derive(Clone, Default)]
pub struct Options {
    /// Accept every link request received (the load tool's anchor).
    pub auto_accept: bool,
    /// Applied to every subscribe offer before it is answered.
    pub offer_rewrite: Option<SdpRewrite>,
    /// Ask for a new subscribe connection (`resubscribe`) when the current one has been down
    /// (not yet connected, disconnected or failed) this long, as the demo does.
    pub resubscribe_after: Option<Duration>,
    /// Reach the server only through the TURN servers of the join reply, with its credentials
    /// (relay candidates only, as a browser's `iceTransportPolicy: "relay"`).
    pub relay_only: bool,
    /// Connect over ICE-TCP only (no UDP socket), as a client behind a UDP-blocking firewall.
    pub tcp_only: bool,
    /// Receive through a narrow, lossy downlink (replaces `offer_rewrite`).
    pub shape: Option<crate::shaper::Shape>,
    /// The join token (rule 10) for a server that checks them.
    pub token: Option<String>,
}

struct Shared {
    user: String,
    out: mpsc::UnboundedSender<String>,
    replies: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    /// Subscribe offers answered, those that started a new connection, and the last offer.
    offers: AtomicU64,
    new_connections: AtomicU64,
    last_offer: Mutex<String>,
    subscriber: Mutex<Option<Arc<Peer>>>,
    /// How this member's connections reach the server: known at once, or (relay only) once the
    /// join reply has named the TURN servers.
    route: tokio::sync::watch::Sender<Option<Route>>,
}

impl Shared {
    /// The route, waiting for the join reply when it comes from there.
    async fn route(&self) -> anyhow::Result<Route> {
        let mut rx = self.route.subscribe();
        let route = tokio::time::timeout(REPLY_TIMEOUT, rx.wait_for(Option::is_some))
            .await
            .context("no route: the join reply never came")??
            .clone();
        Ok(route.unwrap_or_default())
    }

    async fn request(&self, request: Request) -> anyhow::Result<Reply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.replies.lock().await.insert(id, tx);
        self.out
            .send(serde_json::to_string(&ClientMessage { id, request })?)
            .map_err(|_| anyhow::anyhow!("{}: socket closed", self.user))?;
        tokio::time::timeout(REPLY_TIMEOUT, rx)
            .await
            .with_context(|| format!("{}: no reply to request {id}", self.user))?
            .context("socket closed")
    }

    /// Answer one subscribe offer, on a new connection when asked or when there is none.
    async fn answer(
        &self,
        recv: &Arc<Recv>,
        offer: String,
        new_connection: bool,
        offer_id: u64,
        rewrite: Option<&SdpRewrite>,
    ) -> anyhow::Result<()> {
        let offer = match rewrite {
            Some(f) => f(&offer),
            None => offer,
        };
        *self.last_offer.lock().await = offer.clone();
        let peer = {
            let mut sub = self.subscriber.lock().await;
            if new_connection || sub.is_none() {
                if let Some(old) = sub.take() {
                    old.close().await;
                }
                if new_connection {
                    self.new_connections.fetch_add(1, Ordering::SeqCst);
                }
                let route = self.route().await?;
                *sub = Some(Arc::new(
                    Peer::with_route(Some(recv.clone()), &route).await?,
                ));
            }
            sub.clone().expect("just made")
        };
        let sdp = peer.answer(offer).await?;
        let offer_id = (offer_id != 0).then_some(offer_id);
        let r = self
            .request(Request::SubscribeAnswer { sdp, offer_id })
            .await?;
        if !r.ok {
            bail!("{}: subscribe_answer refused: {:?}", self.user, r.error);
        }
        self.offers.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub struct Member {
    pub user: String,
    shared: Arc<Shared>,
    /// Every event but subscribe offers (answered here).
    pub events: mpsc::UnboundedReceiver<Event>,
    pub join: JoinResult,
    pub recv: Arc<Recv>,
    publisher: Option<Publisher>,
    /// The socket's reader and writer tasks (and the subscribe watchdog): aborted, the socket
    /// closes without a word. Dropped with the member (or with a failed join).
    socket: Tasks,
}

impl Member {
    /// Connect, join, and answer subscribe offers from then on.
    pub async fn join(
        url: &str,
        room: &str,
        user: &str,
        role: Role,
        recv: Arc<Recv>,
        options: Options,
    ) -> anyhow::Result<Member> {
        let join = Request::Join {
            room: Ident::new(room)?,
            user: Ident::new(user)?,
            role,
            name: None,
            token: options.token.clone(),
        };
        Member::connect(url, user, join, recv, options).await
    }

    /// Connect and take back the session of a member whose socket was lost (`resume`).
    pub async fn resume(
        url: &str,
        user: &str,
        session: &str,
        recv: Arc<Recv>,
        options: Options,
    ) -> anyhow::Result<Member> {
        let resume = Request::Resume {
            session: session.to_owned(),
        };
        Member::connect(url, user, resume, recv, options).await
    }

    /// Connect, send `first` (a join or a resume) and answer subscribe offers from then on.
    async fn connect(
        url: &str,
        user: &str,
        first: Request,
        recv: Arc<Recv>,
        options: Options,
    ) -> anyhow::Result<Member> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .context("connect")?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        });
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            out,
            replies: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            offers: AtomicU64::new(0),
            new_connections: AtomicU64::new(0),
            last_offer: Mutex::new(String::new()),
            subscriber: Mutex::new(None),
            route: tokio::sync::watch::Sender::new(match (options.relay_only, options.tcp_only) {
                (true, _) => None,
                (false, true) => Some(Route::Tcp),
                (false, false) => Some(Route::Direct),
            }),
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let (offers_tx, mut offers_rx) = mpsc::unbounded_channel::<(String, bool, u64)>();
        let reader;
        {
            // Offers are answered in order, one at a time: the server re-offers only after an
            // answer.
            let (shared, recv) = (shared.clone(), recv.clone());
            let rewrite = match &options.shape {
                Some(shape) => Some(shape.rewrite()),
                None => options.offer_rewrite.clone(),
            };
            tokio::spawn(async move {
                while let Some((offer, new_connection, offer_id)) = offers_rx.recv().await {
                    // An answer that fails (the offer was withdrawn, the socket closed) leaves
                    // the next offer to be answered, as an application would.
                    if let Err(e) = shared
                        .answer(&recv, offer, new_connection, offer_id, rewrite.as_ref())
                        .await
                    {
                        eprintln!("{e:#} (new_connection: {new_connection})");
                    }
                }
                // The socket is gone: a connection made for an offer answered too late would
                // otherwise be left open.
                if let Some(p) = shared.subscriber.lock().await.take() {
                    p.close().await;
                }
            });
        }
        {
            let shared = shared.clone();
            let auto_accept = options.auto_accept;
            reader = tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else {
                        continue;
                    };
                    match msg {
                        ServerMessage::Reply(r) => {
                            if let Some(tx) = shared.replies.lock().await.remove(&r.id) {
                                let _ = tx.send(r);
                            }
                        }
                        ServerMessage::Event(Event::SubscribeOffer {
                            sdp,
                            new_connection,
                            offer_id,
                        }) => {
                            let _ = offers_tx.send((sdp, new_connection, offer_id));
                        }
                        ServerMessage::Event(Event::LinkRequest { from, .. }) if auto_accept => {
                            let shared = shared.clone();
                            tokio::spawn(async move {
                                let _ = shared
                                    .request(Request::RespondLink {
                                        user: from.user,
                                        accept: true,
                                    })
                                    .await;
                            });
                        }
                        ServerMessage::Event(e) => {
                            let _ = events_tx.send(e);
                        }
                    }
                }
            });
        }
        // From here every early return (no reply, a refusal, an unreadable result) drops the
        // guard and with it the socket.
        let mut socket = Tasks(vec![reader.abort_handle(), writer.abort_handle()]);
        if let Some(limit) = options.resubscribe_after {
            socket
                .0
                .push(tokio::spawn(watch_subscriber(shared.clone(), limit)).abort_handle());
        }
        let kind = first.type_name();
        let reply = shared.request(first).await.context(kind)?;
        if !reply.ok {
            bail!("{user}: {kind} refused: {:?}", reply.error);
        }
        let join: JoinResult =
            serde_json::from_value(reply.result.unwrap_or_default()).context("join result")?;
        if options.relay_only {
            shared
                .route
                .send_replace(Some(Route::Relay(join.ice_servers.clone())));
        }
        Ok(Member {
            user: user.to_owned(),
            shared,
            events,
            join,
            recv,
            publisher: None,
            socket,
        })
    }

    /// Send a request and wait for its reply, whatever it says.
    pub async fn request(&self, request: Request) -> anyhow::Result<Reply> {
        self.shared.request(request).await
    }

    /// Send a request; its result, or an error if it was refused.
    pub async fn call(&self, request: Request) -> anyhow::Result<serde_json::Value> {
        let kind = request.type_name();
        let reply = self.request(request).await?;
        if !reply.ok {
            bail!("{}: {kind} refused: {:?}", self.user, reply.error);
        }
        Ok(reply.result.unwrap_or_default())
    }

    /// The next event named `kind`, skipping others, within `limit`.
    pub async fn wait_event(&mut self, kind: &str, limit: Duration) -> anyhow::Result<Event> {
        let user = self.user.clone();
        tokio::time::timeout(limit, async {
            while let Some(e) = self.events.recv().await {
                if e.type_name() == kind {
                    return Ok(e);
                }
            }
            bail!("{user}: socket closed while waiting for {kind}")
        })
        .await
        .with_context(|| format!("{user}: no {kind} event"))?
    }

    /// Apply for a seat and wait until the anchor accepts.
    pub async fn apply(&mut self, open_camera: bool) -> anyhow::Result<()> {
        self.call(Request::RequestLink {
            user: None,
            seat: None,
            timeout_s: None,
            open_camera: Some(open_camera),
        })
        .await?;
        let wait = async {
            while let Some(e) = self.events.recv().await {
                match e {
                    Event::LinkAccepted { .. } => return Ok(()),
                    Event::LinkRejected { .. } | Event::LinkTimeout { .. } => {
                        bail!("not admitted: {e:?}")
                    }
                    _ => {}
                }
            }
            bail!("socket closed while applying")
        };
        tokio::time::timeout(REPLY_TIMEOUT, wait)
            .await
            .context("no answer to the application")?
    }

    /// Publish `streams` (replacing any earlier publish connection) and start sending until
    /// `stop`; returns the per-stream counters.
    pub async fn publish(
        &mut self,
        streams: &[StreamSpec],
        stop: Arc<Notify>,
        answer_rewrite: Option<SdpRewrite>,
    ) -> anyhow::Result<Vec<Arc<Sent>>> {
        let route = self.shared.route().await?;
        let (p, sdp) = Publisher::offer_via(&self.user, streams, &route).await?;
        let result = self.call(Request::Publish { sdp }).await?;
        let answer = result
            .get("sdp")
            .and_then(|s| s.as_str())
            .context("publish result without sdp")?;
        let answer = match &answer_rewrite {
            Some(f) => f(answer),
            None => answer.to_owned(),
        };
        p.start(answer, stop).await?;
        let sent = p.sent.clone();
        if let Some(old) = self.publisher.replace(p) {
            old.peer.close().await;
        }
        Ok(sent)
    }

    /// Subscribe offers answered so far.
    pub fn offers_answered(&self) -> u64 {
        self.shared.offers.load(Ordering::SeqCst)
    }

    /// Offers that started a new subscribe connection.
    pub fn new_connections(&self) -> u64 {
        self.shared.new_connections.load(Ordering::SeqCst)
    }

    /// The last subscribe offer the server sent (as rewritten).
    pub async fn last_offer(&self) -> String {
        self.shared.last_offer.lock().await.clone()
    }

    /// The subscribe connection's local description (its candidates show the route taken).
    pub async fn subscriber_sdp(&self) -> Option<String> {
        let peer = self.shared.subscriber.lock().await.clone()?;
        peer.pc.local_description().await.map(|d| d.sdp)
    }

    /// Whether the subscribe connection is up.
    pub async fn subscribed(&self) -> bool {
        self.shared
            .subscriber
            .lock()
            .await
            .as_ref()
            .is_some_and(|p| p.connected())
    }

    /// Close the subscribe connection without a word to the server, as a crashed client would.
    pub async fn drop_subscriber(&self) {
        if let Some(p) = self.shared.subscriber.lock().await.take() {
            p.close().await;
        }
    }

    /// The member's device dies: the socket closes without a `leave` and the media connections
    /// go silent (closed here, unannounced to the server).
    pub async fn kill(self) {
        self.socket
            .0
            .iter()
            .for_each(tokio::task::AbortHandle::abort);
        if let Some(p) = &self.publisher {
            p.peer.close().await;
        }
        self.drop_subscriber().await;
    }

    /// Leave the room and close every connection, the socket last.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.request(Request::Leave)).await;
        self.kill().await;
    }
}

/// Ask for a new subscribe connection whenever the current one has been down for `limit` (at
/// most once per `limit`): the server's own detection of a connection that never came up takes
/// its ICE failure timeout, a client notices sooner.
async fn watch_subscriber(shared: Arc<Shared>, limit: Duration) {
    let mut down_since: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let up = match shared.subscriber.lock().await.as_ref() {
            Some(p) => p.connected(),
            // No offer answered yet: nothing to watch.
            None => true,
        };
        if up {
            down_since = None;
            continue;
        }
        let since = *down_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= limit {
            down_since = None;
            let _ = shared.request(Request::Resubscribe).await;
        }
    }
}

/// Tasks that end when this is dropped.
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::AbortHandle::abort);
    }
}
