//! Webhooks: the milestones of every room held here, POSTed to the integrator's URLs, signed.
//!
//! The hub hands each event over with [`Webhooks::push`], which only locks a queue and never
//! waits: a slow or dead receiver costs a bounded queue, never the hub's time or the media's.
//! Each URL has lanes, each a task delivering one event at a time; a room's events all go
//! through one lane (by a hash of the room), so they arrive in order per room, and other rooms
//! go on in the other lanes. An event is retried with backoff until a 2xx answer or until it
//! has waited `retry_for`. A URL's lanes share one cap: past it, the longest lane drops its
//! oldest event. Both drops are counted.
//!
//! It must not know rooms or seats: the hub says what happened ([`event_of`]), this carries it.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use miclink_protocol::Ident;
use miclink_seats::{KickBy, Milestone};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, timeout};
use tracing::{debug, warn};

/// Where the events go and how hard delivery tries.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Every event goes to each of these.
    pub urls: Vec<String>,
    /// Signs every delivery (`Miclink-Signature`); at least 16 bytes.
    pub secret: String,
    /// Events waiting per URL, at most; past this the oldest is dropped.
    pub queue: usize,
    /// How long an event is retried before it is dropped.
    pub retry_for: Duration,
    /// An attempt with no answer in this long failed.
    pub attempt_timeout: Duration,
    /// The first wait after a failed attempt; it doubles up to `backoff_max`.
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// Rooms delivered side by side per URL (each lane one event at a time, so with a
    /// receiver 50 ms away a lane carries about 20 events a second).
    pub lanes: usize,
}

impl std::fmt::Debug for WebhookConfig {
    // The secret and the URLs (which may carry credentials or a token) stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("urls", &self.urls.len())
            .field("queue", &self.queue)
            .field("retry_for", &self.retry_for)
            .field("lanes", &self.lanes)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    pub fn new(urls: Vec<String>, secret: String) -> WebhookConfig {
        WebhookConfig {
            urls,
            secret,
            queue: 10_000,
            retry_for: Duration::from_secs(15 * 60),
            attempt_timeout: Duration::from_secs(5),
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            lanes: 32,
        }
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookCounts {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dropped_overflow: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub queued: AtomicU64,
}

struct Event {
    /// The JSON body, sent as is and signed.
    body: Arc<str>,
    /// When it was queued, for `retry_for`.
    at: Instant,
    /// Its place in the lane, so a delivery that crossed an overflow drop removes itself only.
    seq: u64,
}

#[derive(Default)]
struct Lane {
    queue: Mutex<VecDeque<Event>>,
    ready: Notify,
}

/// One URL's lanes and what they hold in all.
struct Sink {
    lanes: Vec<Arc<Lane>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// The running webhook sender: cheap to clone.
#[derive(Clone)]
pub(crate) struct Webhooks {
    /// Per URL, its lanes.
    sinks: Arc<[Sink]>,
    /// Events one URL's lanes hold at most, in all.
    cap: usize,
    counts: Arc<WebhookCounts>,
    seq: Arc<AtomicU64>,
    /// This node, for each event's `node`, and the start of its event ids.
    node: Arc<str>,
    ids: Arc<AtomicU64>,
    boot: u64,
}

impl Webhooks {
    /// Start one delivery task per lane of every URL on the current runtime.
    pub(crate) fn start(config: WebhookConfig, node: &str) -> Webhooks {
        let lanes_per_url = config.lanes.max(1);
        let cap = config.queue.max(1);
        let client = reqwest::Client::builder()
            .timeout(config.attempt_timeout)
            // A receiver's redirect is not followed: the signed body goes where it was told.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("miclink/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds with its default TLS roots");
        let counts = Arc::new(WebhookCounts::default());
        let secret: Arc<[u8]> = config.secret.as_bytes().into();
        let sinks: Vec<Sink> = config
            .urls
            .iter()
            .map(|url| {
                let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let lanes = (0..lanes_per_url)
                    .map(|_| {
                        let lane = Arc::new(Lane::default());
                        tokio::spawn(deliver(
                            lane.clone(),
                            Target {
                                client: client.clone(),
                                url: url.clone(),
                                host: log_host(url),
                                secret: secret.clone(),
                                queued: queued.clone(),
                            },
                            config.clone(),
                            counts.clone(),
                        ));
                        lane
                    })
                    .collect();
                Sink { lanes, queued }
            })
            .collect();
        Webhooks {
            sinks: sinks.into(),
            cap,
            counts,
            seq: Arc::new(AtomicU64::new(0)),
            node: node.into(),
            ids: Arc::new(AtomicU64::new(0)),
            boot: unix_ms(),
        }
    }

    pub(crate) fn counts(&self) -> Arc<WebhookCounts> {
        self.counts.clone()
    }

    /// Queue `event` of `room` with its `fields` for every URL. Never waits.
    pub(crate) fn push(&self, room: &Ident, event: &str, fields: Value) {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let mut body = json!({
            "id": format!("{}-{:x}-{n}", self.node, self.boot),
            "event": event,
            "room": room,
            "at": unix_ms(),
            "node": &*self.node,
        });
        if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), fields) {
            body.extend(fields);
        }
        let body: Arc<str> = body.to_string().into();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        room.hash(&mut hasher);
        let at = Instant::now();
        for sink in self.sinks.iter() {
            if sink.queued.load(Ordering::Relaxed) >= self.cap {
                self.drop_oldest(sink);
            }
            let lane = &sink.lanes[(hasher.finish() % sink.lanes.len() as u64) as usize];
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            {
                let mut queue = lane.queue.lock().expect("no code panics holding the lock");
                // Counted before a delivery can take it off, so the counts never go below 0.
                sink.queued.fetch_add(1, Ordering::Relaxed);
                self.counts.queued.fetch_add(1, Ordering::Relaxed);
                queue.push_back(Event {
                    body: body.clone(),
                    at,
                    seq,
                });
            }
            lane.ready.notify_one();
        }
    }

    /// The URL's queue is full: the oldest event of all its lanes goes (it may be mid-delivery;
    /// it is dropped all the same, and its delivery then removes nothing).
    fn drop_oldest(&self, sink: &Sink) {
        let oldest = sink.lanes.iter().min_by_key(|l| {
            l.queue
                .lock()
                .expect("no code panics holding the lock")
                .front()
                .map_or(u64::MAX, |e| e.seq)
        });
        if let Some(lane) = oldest
            && lane
                .queue
                .lock()
                .expect("no code panics holding the lock")
                .pop_front()
                .is_some()
        {
            sink.queued.fetch_sub(1, Ordering::Relaxed);
            self.counts.queued.fetch_sub(1, Ordering::Relaxed);
            self.counts.dropped_overflow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wait until every queue is empty or `deadline` passes (shutdown: the last rooms' ends
    /// go out if their receivers take them).
    pub(crate) async fn flush(&self, deadline: Instant) {
        while self.counts.queued.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Target {
    client: reqwest::Client,
    url: String,
    /// The URL's scheme, host and port, for logs (its path or query may carry a token).
    host: String,
    secret: Arc<[u8]>,
    /// What this URL's lanes hold in all.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// One lane's task: the oldest event first, retried until delivered or too old.
async fn deliver(
    lane: Arc<Lane>,
    target: Target,
    config: WebhookConfig,
    counts: Arc<WebhookCounts>,
) {
    let mut backoff = config.backoff_first;
    loop {
        let next = {
            let queue = lane.queue.lock().expect("no code panics holding the lock");
            queue.front().map(|e| (e.body.clone(), e.at, e.seq))
        };
        let Some((body, at, seq)) = next else {
            lane.ready.notified().await;
            continue;
        };
        // Past its retry time it goes without another attempt (against a silent receiver each
        // costs the attempt's timeout).
        let too_old = at.elapsed() >= config.retry_for;
        let delivered = !too_old && attempt(&target, &body, config.attempt_timeout).await;
        let expired = !delivered && (too_old || at.elapsed() >= config.retry_for);
        if delivered || expired {
            let mut queue = lane.queue.lock().expect("no code panics holding the lock");
            // An overflow may have dropped it meanwhile: remove this one only.
            if queue.front().is_some_and(|e| e.seq == seq) {
                queue.pop_front();
                target.queued.fetch_sub(1, Ordering::Relaxed);
                counts.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if delivered {
            counts.delivered.fetch_add(1, Ordering::Relaxed);
            backoff = config.backoff_first;
            continue;
        }
        counts.failed_attempts.fetch_add(1, Ordering::Relaxed);
        if expired {
            counts.dropped_expired.fetch_add(1, Ordering::Relaxed);
            warn!(url = %target.host, "a webhook event was dropped after its retry time");
            continue;
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// One POST; whether a 2xx came back in time.
async fn attempt(target: &Target, body: &Arc<str>, limit: Duration) -> bool {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let request = target
        .client
        .post(&target.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Miclink-Signature", signature(&target.secret, t, body))
        .body(body.to_string());
    match timeout(limit, request.send()).await {
        Ok(Ok(r)) if r.status().is_success() => true,
        Ok(Ok(r)) => {
            debug!(url = %target.host, status = %r.status(), "webhook refused");
            false
        }
        Ok(Err(e)) => {
            debug!(url = %target.host, error = %e.without_url(), "webhook not delivered");
            false
        }
        Err(_) => false,
    }
}

/// `Miclink-Signature`: `t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], t: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

/// A milestone as a webhook: its event name and fields. `via` says how a room started.
pub(crate) fn event_of(milestone: &Milestone, via: &str) -> (&'static str, Value) {
    match milestone {
        Milestone::RoomStarted { anchor } => {
            ("room_started", json!({"anchor": anchor, "via": via}))
        }
        Milestone::RoomEnded { reason } => ("room_ended", json!({"reason": reason})),
        Milestone::UserJoined { user } => ("user_joined", json!({"user": user})),
        Milestone::UserLeft { user } => ("user_left", json!({"user": user})),
        Milestone::LinkStarted { user } => ("link_started", json!({"user": user})),
        Milestone::LinkEnded { user, reason } => (
            "link_ended",
            json!({"user": user, "reason": reason.as_str()}),
        ),
        Milestone::UserKicked { user, by, ban_s } => (
            "user_kicked",
            json!({
                "user": user,
                "by": match by { KickBy::Anchor => "anchor", KickBy::Server => "server" },
                "ban_s": ban_s,
            }),
        ),
    }
}

fn log_host(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(not a URL)".to_owned(),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // The test vector of docs/api.md (computed there with Python's hmac and openssl).
        let body = r#"{"id":"5f0c2a9e7d41b3c8","event":"user_joined","room":"r1","at":1767225600123,"node":"node-a","user":{"user":"bob","name":"Bob","role":"audience","seat":null,"mic":false,"camera":false}}"#;
        assert_eq!(
            signature(b"miclink-sample-webhook-secret", 1_767_225_600, body),
            "t=1767225600,v1=efc71c120485423d1d2344d05504dbdaee54054030106ff0fa744a2c62189081"
        );
        // Another body or time, another signature.
        let other = signature(b"miclink-sample-webhook-secret", 1_767_225_601, body);
        assert!(
            !other.ends_with("efc71c120485423d1d2344d05504dbdaee54054030106ff0fa744a2c62189081")
        );
    }

    #[tokio::test]
    async fn a_full_lane_drops_its_oldest_event_and_counts_it() {
        // A URL nothing listens on (a port of this machine's discard range that refuses):
        // nothing is delivered, and the queue stays at its cap however much is pushed.
        let mut config = WebhookConfig::new(vec!["http://127.0.0.1:9/".into()], "s".repeat(16));
        config.queue = 8;
        config.lanes = 3;
        config.backoff_first = Duration::from_secs(3600);
        let hooks = Webhooks::start(config, "n1");
        let room = Ident::new("r").expect("id");
        for _ in 0..100 {
            hooks.push(&room, "user_joined", json!({}));
        }
        let counts = hooks.counts();
        assert_eq!(
            counts.queued.load(Ordering::Relaxed),
            8,
            "the URL's cap, in one lane"
        );
        assert_eq!(counts.dropped_overflow.load(Ordering::Relaxed), 92);
        // Rooms spread over the lanes share the cap.
        for i in 0..50 {
            hooks.push(
                &Ident::new(&format!("r{i}")).expect("id"),
                "user_joined",
                json!({}),
            );
        }
        assert_eq!(counts.queued.load(Ordering::Relaxed), 8);
        assert_eq!(counts.dropped_overflow.load(Ordering::Relaxed), 142);
    }
}
