//! The Janus target: the same simulated publishers and viewers against Janus's videoroom plugin
//! over its HTTP API (<https://janus.conf.meetecho.com/docs/rest.html>). One Janus session per
//! participant, long-polled for its events; a publisher handle per publisher; one multistream
//! subscriber handle per receiver, carrying every other feed of the room.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify, oneshot};

use crate::peer::{Peer, Publisher, Sent, StreamSpec};
use crate::recv::Recv;

const TIMEOUT: Duration = Duration::from_secs(20);

fn transaction() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One Janus session: requests, and a long-poll task routing asynchronous events to whoever
/// waits for their transaction.
struct JanusSession {
    http: reqwest::Client,
    base: String,
    id: u64,
    waiting: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    closed: Notify,
}

impl JanusSession {
    async fn create(http: &reqwest::Client, base: &str) -> anyhow::Result<Arc<JanusSession>> {
        let r: Value = http
            .post(base)
            .json(&json!({"janus": "create", "transaction": transaction()}))
            .send()
            .await?
            .json()
            .await?;
        let id = r["data"]["id"].as_u64().context("no session id")?;
        let s = Arc::new(JanusSession {
            http: http.clone(),
            base: base.to_owned(),
            id,
            waiting: Mutex::new(HashMap::new()),
            closed: Notify::new(),
        });
        let poller = s.clone();
        tokio::spawn(async move { poller.poll().await });
        Ok(s)
    }

    async fn poll(self: Arc<JanusSession>) {
        let url = format!("{}/{}?maxev=10", self.base, self.id);
        loop {
            let got = tokio::select! {
                r = self.http.get(&url).send() => r,
                _ = self.closed.notified() => return,
            };
            let Ok(resp) = got else { return };
            let Ok(body) = resp.json::<Value>().await else {
                return;
            };
            let events = match body {
                Value::Array(a) => a,
                one => vec![one],
            };
            for e in events {
                if let Some(t) = e["transaction"].as_str()
                    && let Some(tx) = self.waiting.lock().await.remove(t)
                {
                    let _ = tx.send(e);
                }
            }
        }
    }

    async fn attach(&self) -> anyhow::Result<u64> {
        let r: Value = self
            .http
            .post(format!("{}/{}", self.base, self.id))
            .json(&json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": transaction()}))
            .send()
            .await?
            .json()
            .await?;
        r["data"]["id"].as_u64().context("attach failed")
    }

    /// A plugin request answered in the HTTP response itself (create, destroy).
    async fn sync(&self, handle: u64, body: Value) -> anyhow::Result<Value> {
        let r: Value = self
            .http
            .post(format!("{}/{}/{}", self.base, self.id, handle))
            .json(&json!({"janus": "message", "body": body, "transaction": transaction()}))
            .send()
            .await?
            .json()
            .await?;
        let data = r["plugindata"]["data"].clone();
        if data.get("error").is_some() {
            bail!("janus: {}", data["error"]);
        }
        Ok(data)
    }

    /// A plugin request whose outcome comes as an event (join, configure, start).
    async fn request(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let t = transaction();
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().await.insert(t.clone(), tx);
        let mut msg = json!({"janus": "message", "body": body, "transaction": t});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let r: Value = self
            .http
            .post(format!("{}/{}/{}", self.base, self.id, handle))
            .json(&msg)
            .send()
            .await?
            .json()
            .await?;
        if r["janus"] != "ack" && r["janus"] != "success" {
            bail!("janus refused: {r}");
        }
        let event = tokio::time::timeout(TIMEOUT, rx)
            .await
            .context("no event from janus")??;
        let data = &event["plugindata"]["data"];
        if data.get("error").is_some() {
            bail!("janus: {}", data["error"]);
        }
        Ok(event)
    }

    async fn destroy(&self) {
        self.closed.notify_waiters();
        let _ = self
            .http
            .post(format!("{}/{}", self.base, self.id))
            .json(&json!({"janus": "destroy", "transaction": transaction()}))
            .send()
            .await;
    }
}

/// A videoroom created for one room of a scenario.
#[derive(Clone)]
pub(crate) struct Room {
    http: reqwest::Client,
    base: String,
    room: u64,
    /// Publisher feed ids, known once the publishers joined.
    feeds: Arc<Mutex<Vec<u64>>>,
    admin: Arc<JanusSession>,
    admin_handle: u64,
}

/// A participant: its session and the connections it holds.
pub(crate) struct Participant {
    session: Arc<JanusSession>,
    feed: Option<u64>,
    publisher: Option<Publisher>,
    subscriber: Option<Peer>,
    recv: Arc<Recv>,
}

impl Participant {
    pub(crate) async fn close(self) {
        if let Some(p) = &self.publisher {
            p.peer.close().await;
        }
        if let Some(s) = &self.subscriber {
            s.close().await;
        }
        self.session.destroy().await;
    }
}

impl Room {
    pub(crate) async fn create(base: &str, index: usize) -> anyhow::Result<Room> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        let admin = JanusSession::create(&http, base)
            .await
            .context("janus session")?;
        let admin_handle = admin.attach().await?;
        let room = 1_000_000 + u64::from(std::process::id()) * 100 + index as u64;
        admin
            .sync(
                admin_handle,
                json!({
                    "request": "create",
                    "room": room,
                    "publishers": 10,
                    "audiocodec": "opus",
                    "videocodec": "vp8",
                    "bitrate": 2_000_000,
                    "notify_joining": false,
                }),
            )
            .await
            .context("create videoroom")?;
        Ok(Room {
            http,
            base: base.to_owned(),
            room,
            feeds: Arc::new(Mutex::new(Vec::new())),
            admin,
            admin_handle,
        })
    }

    pub(crate) async fn publish(
        &self,
        name: &str,
        streams: &[StreamSpec],
        recv: Arc<Recv>,
        stop: Arc<Notify>,
    ) -> anyhow::Result<(Participant, Vec<Arc<Sent>>)> {
        let session = JanusSession::create(&self.http, &self.base).await?;
        let handle = session.attach().await?;
        let (p, sdp) = Publisher::offer(name, streams).await?;
        let event = session
            .request(
                handle,
                json!({"request": "joinandconfigure", "room": self.room, "ptype": "publisher",
                       "display": name, "audio": true, "video": true}),
                Some(json!({"type": "offer", "sdp": sdp})),
            )
            .await
            .context("joinandconfigure")?;
        let feed = event["plugindata"]["data"]["id"]
            .as_u64()
            .context("no publisher id")?;
        let answer = event["jsep"]["sdp"]
            .as_str()
            .context("no answer from janus")?
            .to_owned();
        p.start(answer, stop).await?;
        self.feeds.lock().await.push(feed);
        let sent = p.sent.clone();
        Ok((
            Participant {
                session,
                feed: Some(feed),
                publisher: Some(p),
                subscriber: None,
                recv,
            },
            sent,
        ))
    }

    /// A subscriber handle on `session` for `feeds`, answered on a new receiving connection.
    async fn subscribe(
        &self,
        session: &JanusSession,
        feeds: &[u64],
        recv: Arc<Recv>,
    ) -> anyhow::Result<Peer> {
        let handle = session.attach().await?;
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        // Janus lists a feed only once its publisher's connection is up, a moment after the
        // publish answer: retry while it says the feed does not exist yet.
        let mut tries = 0;
        let event = loop {
            match session
                .request(
                    handle,
                    json!({"request": "join", "room": self.room, "ptype": "subscriber", "streams": streams}),
                    None,
                )
                .await
            {
                Ok(e) => break e,
                Err(e) if tries < 100 && e.to_string().contains("No such feed") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.context("subscriber join")),
            }
        };
        let offer = event["jsep"]["sdp"]
            .as_str()
            .context("no offer from janus")?
            .to_owned();
        let peer = Peer::new(Some(recv)).await?;
        let answer = peer.answer(offer).await?;
        session
            .request(
                handle,
                json!({"request": "start"}),
                Some(json!({"type": "answer", "sdp": answer})),
            )
            .await
            .context("subscriber start")?;
        Ok(peer)
    }

    /// A publisher of the room receives every other one, as miclink's members do through their
    /// subscribe connection.
    pub(crate) async fn link_publisher(&self, j: &mut Participant) -> anyhow::Result<()> {
        let feeds = self.feeds.lock().await.clone();
        let (Some(own), None) = (j.feed, &j.subscriber) else {
            return Ok(());
        };
        let others: Vec<u64> = feeds.iter().copied().filter(|f| *f != own).collect();
        if !others.is_empty() {
            j.subscriber = Some(self.subscribe(&j.session, &others, j.recv.clone()).await?);
        }
        Ok(())
    }

    /// A viewer: a session with one subscriber handle for every feed.
    pub(crate) async fn view(&self, _name: &str, recv: Arc<Recv>) -> anyhow::Result<Participant> {
        let session = JanusSession::create(&self.http, &self.base).await?;
        let feeds = self.feeds.lock().await.clone();
        let peer = self.subscribe(&session, &feeds, recv.clone()).await?;
        Ok(Participant {
            session,
            feed: None,
            publisher: None,
            subscriber: Some(peer),
            recv,
        })
    }

    pub(crate) async fn destroy(&self) {
        let _ = self
            .admin
            .sync(
                self.admin_handle,
                json!({"request": "destroy", "room": self.room}),
            )
            .await;
        self.admin.destroy().await;
    }
}
