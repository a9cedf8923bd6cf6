//! The miclink target: members speaking docs/protocol.md over the server's WebSocket. Guests get
//! their seat through the real apply/accept flow; every member answers the server's subscribe
//! offers on one receiving connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use miclink_protocol::{ClientMessage, Event, Ident, Reply, Request, Role, ServerMessage};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::media::{Peer, Publisher, Recv, Sent, StreamSpec};

const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

struct Shared {
    out: mpsc::UnboundedSender<String>,
    replies: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
}

impl Shared {
    async fn request(&self, request: Request) -> anyhow::Result<serde_json::Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.replies.lock().await.insert(id, tx);
        self.out
            .send(serde_json::to_string(&ClientMessage { id, request })?)
            .map_err(|_| anyhow::anyhow!("socket closed"))?;
        let reply = tokio::time::timeout(REPLY_TIMEOUT, rx)
            .await
            .context("no reply")?
            .context("socket closed")?;
        if !reply.ok {
            bail!("refused: {:?}", reply.error);
        }
        Ok(reply.result.unwrap_or_default())
    }
}

pub(crate) struct Member {
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    subscriber: Arc<Peer>,
    publisher: Option<Publisher>,
}

impl Member {
    /// Connect, join, and answer subscribe offers from then on. An anchor accepts every
    /// application it receives.
    pub(crate) async fn join(
        url: &str,
        room: &str,
        user: &str,
        role: Role,
        recv: Arc<Recv>,
    ) -> anyhow::Result<Member> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .context("connect")?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        });
        let shared = Arc::new(Shared {
            out,
            replies: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let subscriber = Arc::new(Peer::new(Some(recv)).await?);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (offers_tx, mut offers_rx) = mpsc::unbounded_channel::<String>();
        {
            // Offers are answered in order, one at a time: the server re-offers only after an
            // answer.
            let (shared, subscriber) = (shared.clone(), subscriber.clone());
            tokio::spawn(async move {
                while let Some(offer) = offers_rx.recv().await {
                    let Ok(sdp) = subscriber.answer(offer).await else {
                        return;
                    };
                    if shared
                        .request(Request::SubscribeAnswer { sdp })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        {
            let shared = shared.clone();
            let anchor = role == Role::Anchor;
            tokio::spawn(async move {
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
                        ServerMessage::Event(Event::SubscribeOffer { sdp }) => {
                            let _ = offers_tx.send(sdp);
                        }
                        ServerMessage::Event(Event::LinkRequest { from, .. }) if anchor => {
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
        shared
            .request(Request::Join {
                room: Ident::new(room)?,
                user: Ident::new(user)?,
                role,
                name: None,
                token: None,
            })
            .await
            .context("join")?;
        Ok(Member {
            shared,
            events,
            subscriber,
            publisher: None,
        })
    }

    /// Apply for a seat and wait until the anchor (which accepts everyone) has accepted.
    pub(crate) async fn apply(&mut self, open_camera: bool) -> anyhow::Result<()> {
        self.shared
            .request(Request::RequestLink {
                user: None,
                seat: None,
                timeout_s: None,
                open_camera: Some(open_camera),
            })
            .await
            .context("request_link")?;
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

    /// Publish `streams` and start sending; returns the per-stream counters.
    pub(crate) async fn publish(
        &mut self,
        publisher: u16,
        stream_id: &str,
        streams: &[StreamSpec],
        stop: Arc<Notify>,
    ) -> anyhow::Result<Vec<Arc<Sent>>> {
        let (p, sdp) = Publisher::offer(publisher, stream_id, streams).await?;
        let result = self
            .shared
            .request(Request::Publish { sdp })
            .await
            .context("publish")?;
        let answer = result
            .get("sdp")
            .and_then(|s| s.as_str())
            .context("publish result without sdp")?
            .to_owned();
        p.start(answer, stop).await?;
        let sent = p.sent.clone();
        self.publisher = Some(p);
        Ok(sent)
    }

    pub(crate) async fn close(self) {
        let _ = self.shared.request(Request::Leave).await;
        if let Some(p) = &self.publisher {
            p.peer.close().await;
        }
        self.subscriber.close().await;
    }
}
