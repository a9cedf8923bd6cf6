//! Several miclink nodes as one, coordinated through Redis.
//!
//! Redis holds three things, under one key prefix:
//! - **The node registry**: `{prefix}:node:{id}` is a node's [`NodeInfo`] (its public addresses and
//!   load), written with an expiry that the node's heartbeat renews; `{prefix}:nodes` is the set
//!   of ids, pruned of those whose key expired. A node that stops heartbeating (it died, or lost
//!   Redis) disappears within one [`ClusterConfig::ttl`], and [`Membership`] tells the others.
//! - **The room directory**: `{prefix}:room:{room}` names the room's origin, the node where its
//!   anchor went live and its seats live. The first node to claim a room gets it
//!   (`SET NX`); the origin renews its rooms with the heartbeat, and only the origin can renew or
//!   release one (compare-and-set scripts), so a node that lost its claim (it stalled past the
//!   expiry and another took the room) learns so at its next renewal instead of overwriting.
//! - **Node inboxes**: one pub/sub channel per node, `{prefix}:inbox:{id}`, for what nodes tell
//!   each other (relayed requests and events). A message is bytes of at most [`MAX_MESSAGE`];
//!   bigger ones are dropped on both ends.
//!
//! Nothing else is shared: without a Redis URL a node is the single-process server.
//!
//! Redis is not trusted to say who wrote what ([`seal`]): every inbox message, registry entry
//! and room claim is signed with the cluster secret over its writer, its time and its content.
//! A registry entry that is unsigned, forged or older than its expiry plus the clocks' allowance
//! ([`seal::MAX_SKEW_MS`]) is no node; a claim that is, or that names no live node, is no claim
//! (the next node to claim the room takes it over); an inbox message is taken only from a live
//! node with the boot it registered, within [`seal::MAX_SKEW_MS`] of now, with a sequence number
//! past the last one this node took from that boot (remembered whatever the registry or the
//! subscription does meanwhile). What is refused is dropped and counted ([`Refused`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

pub mod seal;
pub mod testing;

pub use seal::Refusal;
use seal::{Key, Sender};

/// The largest inbox message: a relayed frame of the WebSocket's 64 KiB, escaped once more as
/// a string inside the envelope, fits.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// How long one Redis command may take, and one connection attempt: a Redis that stopped
/// answering fails the beat (the node then serves alone) instead of stalling it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Nodes a registry may list: the set is written only by nodes, but a registry that somebody
/// filled with junk must not make every node read all of it every second. A bigger one is an
/// error (a sample of it would make live nodes look lost).
pub const MAX_NODES: usize = 1024;

/// Rooms one renewal passes over at once (one round trip each batch).
const RENEW_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("node id {0:?}: 1 to 64 letters, digits, '-' or '_'")]
    BadNodeId(String),
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("the registry lists {0} nodes, over the {MAX_NODES} this node reads")]
    TooManyNodes(usize),
    #[error("reading the Redis CA file {0}: {1}")]
    CaFile(PathBuf, std::io::Error),
    #[error("the claim on room {0} keeps changing under this node (no valid claim holds)")]
    Contended(String),
}

/// How this node joins the cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS.
    pub redis_url: String,
    /// PEM file of the certificate authority a `rediss://` server's certificate must chain to;
    /// `None`: the system's roots.
    pub redis_ca: Option<PathBuf>,
    /// The secret every node of the cluster shares: it signs what each writes to Redis.
    /// `None` only for a Redis on this machine (the key is then empty).
    pub secret: Option<String>,
    pub node_id: String,
    /// Where clients reach this node's HTTP and WebSocket listener (e.g. `https://b.example`).
    pub http_url: String,
    /// Addresses clients and other nodes reach its media port at.
    pub media: Vec<SocketAddr>,
    /// How long a node's entry and its rooms' claims outlive its last heartbeat; it beats three
    /// times in that span.
    pub ttl: Duration,
    /// Prefix of every key and channel, so clusters (or tests) can share one Redis.
    pub prefix: String,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password, the secret is one.
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("http_url", &self.http_url)
            .field("media", &self.media)
            .field("ttl", &self.ttl)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ClusterConfig {
    pub fn new(redis_url: &str, node_id: &str, http_url: &str) -> ClusterConfig {
        ClusterConfig {
            redis_url: redis_url.to_owned(),
            redis_ca: None,
            secret: None,
            node_id: node_id.to_owned(),
            http_url: http_url.to_owned(),
            media: Vec::new(),
            ttl: Duration::from_secs(3),
            prefix: "miclink".to_owned(),
        }
    }

    /// How often [`Cluster::heartbeat`] should run.
    pub fn heartbeat_interval(&self) -> Duration {
        self.ttl / 3
    }
}

/// Whether `id` may name a node: it becomes part of keys and channel names.
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether a Redis URL points at this machine (loopback or a Unix socket): the only place a
/// cluster may run without a secret, since only this machine's processes can write there.
pub fn redis_is_local(url: &str) -> Result<bool, ClusterError> {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    let info = url.into_connection_info()?;
    let host_is_local = |host: &str| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    Ok(match &info.addr {
        ConnectionAddr::Tcp(host, _) => host_is_local(host),
        ConnectionAddr::TcpTls { host, .. } => host_is_local(host),
        ConnectionAddr::Unix(_) => true,
    })
}

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// Random per start: a node that restarts with the same id within the expiry is a new
    /// node, and its predecessor was lost.
    pub boot: u64,
    pub http: String,
    pub media: Vec<SocketAddr>,
    pub load: Load,
}

/// A node's load, for spreading new viewers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub rooms: u32,
    pub members: u32,
}

/// The outcome of claiming a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node is (now, or already) the room's origin.
    Origin,
    /// Another node is.
    Elsewhere(String),
}

/// Renew `KEYS[1]` for `ARGV[3]` ms with the fresh claim `ARGV[2]`, if it still names node
/// `ARGV[1]` (a claim starts with its node's id and a space).
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) and 1 or 0
end
return 0";

/// Delete `KEYS[1]` if it still names node `ARGV[1]`.
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Replace `KEYS[1]` with `ARGV[2]` for `ARGV[3]` ms if it still holds `ARGV[1]`: a claim found
/// to be no claim is taken over, unless somebody changed it meanwhile.
const TAKE_OVER: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// Records refused, by what they were and why: read by `/metrics`.
#[derive(Debug, Default)]
pub struct Refused {
    /// Inbox messages, by [`Refusal`].
    messages: [AtomicU64; 5],
    /// Registry entries and room claims, by [`Refusal`].
    records: [AtomicU64; 5],
}

impl Refused {
    const ALL: [Refusal; 5] = [
        Refusal::Unsigned,
        Refusal::BadSignature,
        Refusal::Stale,
        Refusal::UnknownNode,
        Refusal::Replayed,
    ];

    fn count(counters: &[AtomicU64; 5], why: Refusal) {
        let i = Self::ALL.iter().position(|r| *r == why).unwrap_or(0);
        counters[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every count: (`"message"` or `"record"`, the reason, how many).
    pub fn counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (what, counters) in [("message", &self.messages), ("record", &self.records)] {
            for (why, n) in Self::ALL.iter().zip(counters) {
                out.push((what, why.as_str(), n.load(Ordering::Relaxed)));
            }
        }
        out
    }

    /// Inbox messages refused for `why` so far.
    pub fn messages(&self, why: Refusal) -> u64 {
        let i = Self::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.messages[i].load(Ordering::Relaxed)
    }

    /// Registry entries and claims refused for `why` so far.
    pub fn records(&self, why: Refusal) -> u64 {
        let i = Self::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.records[i].load(Ordering::Relaxed)
    }
}

/// The time as records carry it.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One node's handle on the cluster. Cheap to clone: clones share one connection, which
/// reconnects by itself when Redis comes back, the live nodes last read, and the counters.
#[derive(Clone)]
pub struct Cluster {
    client: redis::Client,
    con: ConnectionManager,
    config: ClusterConfig,
    boot: u64,
    key: Key,
    /// The live nodes of the last registry read.
    live: Arc<Mutex<BTreeMap<String, NodeInfo>>>,
    /// This node's inbox messages so far, to every node.
    sent: Arc<AtomicU64>,
    /// The last sequence number taken from each sender ([`Heard`]), whatever inbox took it.
    heard: Arc<Mutex<Heard>>,
    refused: Arc<Refused>,
}

/// The last sequence number taken from each sender (node and boot) and when, kept by the node,
/// not by one inbox subscription, and kept while the sender is out of the registry: a copy of
/// its messages played again later must still be refused. An entry is dropped once nothing it
/// could refuse is fresh any more ([`seal::MAX_SKEW_MS`] after its last message), and the map
/// holds [`MAX_NODES`] senders at most (the stalest goes first).
#[derive(Default)]
struct Heard(HashMap<(String, u64), (u64, u64)>);

impl Heard {
    /// Take sequence number `seq` of `sender` at `now` (unix ms): whether it goes forward.
    fn take(&mut self, sender: &Sender, now: u64) -> bool {
        self.0
            .retain(|_, (_, at)| now.saturating_sub(*at) <= 2 * seal::MAX_SKEW_MS);
        let key = (sender.node.clone(), sender.boot);
        if let Some((last, at)) = self.0.get_mut(&key) {
            if sender.seq <= *last {
                return false;
            }
            *last = sender.seq;
            *at = now;
            return true;
        }
        if self.0.len() >= MAX_NODES
            && let Some(stalest) = self
                .0
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            self.0.remove(&stalest);
        }
        self.0.insert(key, (sender.seq, now));
        true
    }
}

impl Cluster {
    /// Connect to Redis (the node registers with its first [`Cluster::heartbeat`]).
    pub async fn connect(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        if !valid_node_id(&config.node_id) {
            return Err(ClusterError::BadNodeId(config.node_id));
        }
        let client = match &config.redis_ca {
            Some(path) if config.redis_url.starts_with("rediss://") => {
                let pem = std::fs::read(path).map_err(|e| ClusterError::CaFile(path.clone(), e))?;
                redis::Client::build_with_tls(
                    config.redis_url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )?
            }
            _ => redis::Client::open(config.redis_url.as_str())?,
        };
        let con = client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new()
                    .set_response_timeout(RESPONSE_TIMEOUT)
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_number_of_retries(2)
                    .set_max_delay(1_000),
            )
            .await?;
        let boot = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            ^ u64::from(std::process::id()).rotate_left(32);
        let key = Key::new(config.secret.as_deref().unwrap_or_default().as_bytes());
        Ok(Cluster {
            client,
            con,
            config,
            boot,
            key,
            live: Arc::default(),
            sent: Arc::default(),
            heard: Arc::default(),
            refused: Arc::default(),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// What this node refused to believe so far (shared with every clone).
    pub fn refused(&self) -> Arc<Refused> {
        self.refused.clone()
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.config.prefix)
    }

    fn ttl_ms(&self) -> u64 {
        self.config.ttl.as_millis().max(1) as u64
    }

    /// How old a registry entry or a claim may be: its expiry, and the clocks' difference.
    fn max_age(&self) -> u64 {
        self.ttl_ms() + seal::MAX_SKEW_MS
    }

    fn claim_value(&self, room: &str) -> String {
        seal::seal_claim(&self.key, room, &self.config.node_id, unix_ms())
    }

    /// Write this node's entry with `load`, renew its expiry, and renew the claims on `rooms`
    /// (the rooms it is the origin of); returns the rooms whose claim it no longer holds.
    pub async fn heartbeat(
        &self,
        load: Load,
        rooms: &[String],
    ) -> Result<Vec<String>, ClusterError> {
        let info = NodeInfo {
            id: self.config.node_id.clone(),
            boot: self.boot,
            http: self.config.http_url.clone(),
            media: self.config.media.clone(),
            load,
        };
        let json = serde_json::to_string(&info).unwrap_or_default();
        let entry = seal::seal_entry(&self.key, &info.id, unix_ms(), &json);
        let mut con = self.con.clone();
        redis::pipe()
            .cmd("SET")
            .arg(self.key("node", &info.id))
            .arg(entry)
            .arg("PX")
            .arg(self.ttl_ms())
            .ignore()
            .cmd("SADD")
            .arg(format!("{}:nodes", self.config.prefix))
            .arg(&info.id)
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        self.renew_rooms(rooms).await
    }

    async fn renew_rooms(&self, rooms: &[String]) -> Result<Vec<String>, ClusterError> {
        let mut lost = Vec::new();
        let mut con = self.con.clone();
        for batch in rooms.chunks(RENEW_BATCH) {
            let mut pipe = redis::pipe();
            // The scripts are short: sent whole (EVAL), nothing depends on a script cache.
            for room in batch {
                pipe.cmd("EVAL")
                    .arg(RENEW)
                    .arg(1)
                    .arg(self.key("room", room))
                    .arg(&self.config.node_id)
                    .arg(self.claim_value(room))
                    .arg(self.ttl_ms());
            }
            let renewed: Vec<i64> = pipe.query_async(&mut con).await?;
            lost.extend(
                batch
                    .iter()
                    .zip(renewed)
                    .filter(|(_, r)| *r == 0)
                    .map(|(room, _)| room.clone()),
            );
        }
        Ok(lost)
    }

    /// Leave the cluster now rather than at the expiry: the entry goes, and the rooms in
    /// `rooms` are released.
    pub async fn leave(&self, rooms: &[String]) -> Result<(), ClusterError> {
        for room in rooms {
            self.release_room(room).await?;
        }
        let mut con = self.con.clone();
        redis::pipe()
            .del(self.key("node", &self.config.node_id))
            .ignore()
            .srem(
                format!("{}:nodes", self.config.prefix),
                &self.config.node_id,
            )
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// Every node alive now (this one included once it beat), by id: those whose entry is
    /// signed with the cluster secret, for that id, and fresh. Ids whose entry expired are
    /// pruned from the set on the way; entries refused are counted and left for their expiry
    /// (or their node's next beat) to replace.
    pub async fn nodes(&self) -> Result<BTreeMap<String, NodeInfo>, ClusterError> {
        let mut con = self.con.clone();
        let set = format!("{}:nodes", self.config.prefix);
        let listed: usize = con.scard(&set).await?;
        if listed > MAX_NODES {
            return Err(ClusterError::TooManyNodes(listed));
        }
        let listed: Vec<String> = con.smembers(&set).await?;
        let (ids, mut gone): (Vec<String>, Vec<String>) =
            listed.into_iter().partition(|id| valid_node_id(id));
        let mut nodes = BTreeMap::new();
        if !ids.is_empty() {
            let keys: Vec<String> = ids.iter().map(|id| self.key("node", id)).collect();
            let entries: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query_async(&mut con).await?;
            let now = unix_ms();
            for (id, entry) in ids.into_iter().zip(entries) {
                let Some(entry) = entry else {
                    gone.push(id);
                    continue;
                };
                let info = seal::open_entry(&self.key, &id, &entry, now, self.max_age()).and_then(
                    |json| serde_json::from_str::<NodeInfo>(json).map_err(|_| Refusal::Unsigned),
                );
                match info {
                    Ok(info) if info.id == id => {
                        nodes.insert(id, info);
                    }
                    Ok(_) => Refused::count(&self.refused.records, Refusal::BadSignature),
                    Err(why) => {
                        Refused::count(&self.refused.records, why);
                        tracing::debug!(node = %id, why = why.as_str(), "registry entry refused");
                    }
                }
            }
        }
        if !gone.is_empty() {
            let _: () = con.srem(&set, gone).await?;
        }
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = nodes.clone();
        Ok(nodes)
    }

    /// Whether `node` is live (with `boot`, when given) as the registry read last, or, when it
    /// is not there, as it reads now.
    async fn is_live(&self, node: &str, boot: Option<u64>) -> Result<bool, ClusterError> {
        let known = |live: &BTreeMap<String, NodeInfo>| {
            live.get(node)
                .is_some_and(|n| boot.is_none_or(|b| n.boot == b))
        };
        if known(&self.live.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(true);
        }
        Ok(known(&self.nodes().await?))
    }

    /// The node a directory value names, if it is a claim signed for `room` by a live node.
    async fn holder(&self, room: &str, value: &str) -> Result<Option<String>, ClusterError> {
        let node = match seal::open_claim(&self.key, room, value, unix_ms(), self.max_age()) {
            Ok(node) => node,
            Err(why) => {
                Refused::count(&self.refused.records, why);
                tracing::warn!(%room, why = why.as_str(), "a claim on a room was refused");
                return Ok(None);
            }
        };
        if node == self.config.node_id || self.is_live(node, None).await? {
            return Ok(Some(node.to_owned()));
        }
        Refused::count(&self.refused.records, Refusal::UnknownNode);
        tracing::warn!(%room, %node, "a claim on a room names no live node");
        Ok(None)
    }

    /// Claim `room` for this node, unless another live node holds it. A directory value that is
    /// no valid claim (unsigned, forged, stale, or of a node that is gone) is taken over.
    pub async fn claim_room(&self, room: &str) -> Result<Claim, ClusterError> {
        let mut con = self.con.clone();
        let key = self.key("room", room);
        // Twice at most: a value taken over can change under us only by another node's claim.
        for _ in 0..2 {
            let mine = self.claim_value(room);
            // SET NX GET: the holder, if any, in the same step as the claim.
            let found: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&mine)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(self.ttl_ms())
                .query_async(&mut con)
                .await?;
            let Some(found) = found else {
                return Ok(Claim::Origin);
            };
            match self.holder(room, &found).await? {
                Some(node) if node == self.config.node_id => return Ok(Claim::Origin),
                Some(node) => return Ok(Claim::Elsewhere(node)),
                None => {
                    let taken: i64 = redis::cmd("EVAL")
                        .arg(TAKE_OVER)
                        .arg(1)
                        .arg(&key)
                        .arg(&found)
                        .arg(&mine)
                        .arg(self.ttl_ms())
                        .query_async(&mut con)
                        .await?;
                    if taken == 1 {
                        return Ok(Claim::Origin);
                    }
                }
            }
        }
        // Changed under us twice: somebody keeps rewriting the key. Whoever holds a valid claim
        // now is the origin; with none, the room is not this node's either.
        match self.origin(room).await? {
            Some(node) if node != self.config.node_id => Ok(Claim::Elsewhere(node)),
            Some(_) => Ok(Claim::Origin),
            None => Err(ClusterError::Contended(room.to_owned())),
        }
    }

    /// Give `room` up, if this node holds it; whether it did.
    pub async fn release_room(&self, room: &str) -> Result<bool, ClusterError> {
        let mut con = self.con.clone();
        let n: i64 = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(self.key("room", room))
            .arg(&self.config.node_id)
            .query_async(&mut con)
            .await?;
        Ok(n == 1)
    }

    /// The node holding `room`, if a live node holds a valid claim on it.
    pub async fn origin(&self, room: &str) -> Result<Option<String>, ClusterError> {
        let mut con = self.con.clone();
        let value: Option<String> = con.get(self.key("room", room)).await?;
        match value {
            Some(value) => self.holder(room, &value).await,
            None => Ok(None),
        }
    }

    /// Put `message` in `node`'s inbox, signed. Delivered at most once, and only if that node
    /// listens now (pub/sub keeps nothing for later): what needs an answer times out on its own.
    pub async fn send(&self, node: &str, message: &[u8]) -> Result<(), ClusterError> {
        if message.len() > MAX_MESSAGE {
            return Err(ClusterError::TooLarge(message.len()));
        }
        let sender = Sender {
            node: self.config.node_id.clone(),
            boot: self.boot,
            seq: self.sent.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let sealed = seal::seal_message(&self.key, node, &sender, unix_ms(), message);
        let mut con = self.con.clone();
        let _: i64 = con.publish(self.key("inbox", node), sealed).await?;
        Ok(())
    }

    /// This node's inbox: every message sent to it from now on.
    pub async fn inbox(&self) -> Result<Inbox, ClusterError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub
            .subscribe(self.key("inbox", &self.config.node_id))
            .await?;
        Ok(Inbox {
            stream: Box::pin(pubsub.into_on_message()),
            cluster: self.clone(),
            logged: None,
            dropped: 0,
        })
    }
}

/// A message another node sent this one, as its signature vouches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub from: String,
    pub body: Vec<u8>,
}

/// The messages sent to one node ([`Cluster::inbox`]).
pub struct Inbox {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = redis::Msg> + Send>>,
    cluster: Cluster,
    /// When a refusal was last logged (one line a second at most, whatever a flood sends).
    logged: Option<Instant>,
    /// Messages dropped for their size.
    pub dropped: u64,
}

impl Inbox {
    /// The next message; `None` when the connection to Redis is gone. What is refused is
    /// counted ([`Cluster::refused`]) and skipped.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            let msg = self.stream.next().await?;
            let payload = msg.get_payload_bytes();
            // A sealed message carries at most a header of ~150 bytes more than its body.
            if payload.len() > MAX_MESSAGE + 512 {
                self.dropped += 1;
                tracing::warn!(
                    bytes = payload.len(),
                    "inbox message over the limit dropped"
                );
                continue;
            }
            match self.open(payload).await {
                Ok(message) => return Some(message),
                Err(why) => {
                    Refused::count(&self.cluster.refused.messages, why);
                    if self
                        .logged
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                    {
                        self.logged = Some(Instant::now());
                        tracing::warn!(
                            why = why.as_str(),
                            "an inbox message was refused (counted in /metrics)"
                        );
                    }
                }
            }
        }
    }

    async fn open(&mut self, payload: &[u8]) -> Result<Message, Refusal> {
        let c = &self.cluster;
        let now = unix_ms();
        let (sender, body) = seal::open_message(&c.key, &c.config.node_id, payload, now)?;
        let live = c
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&sender.node)
            .map(|n| n.boot);
        // A node that joined (or restarted) since the last read is read again. Only a holder
        // of the secret gets this far, so this costs nobody else a registry read.
        if live != Some(sender.boot)
            && !c
                .is_live(&sender.node, Some(sender.boot))
                .await
                .unwrap_or(false)
        {
            return Err(Refusal::UnknownNode);
        }
        if !c
            .heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(&sender, now)
        {
            return Err(Refusal::Replayed);
        }
        Ok(Message {
            from: sender.node,
            body: body.to_vec(),
        })
    }
}

/// Which nodes this node has seen, to tell when one is lost: a node present at one registry read
/// and absent at the next stopped heartbeating (or left).
#[derive(Debug, Default)]
pub struct Membership {
    /// Id and boot of each node seen at the last read.
    seen: BTreeMap<String, u64>,
}

/// What changed between two registry reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub joined: Vec<String>,
    pub lost: Vec<String>,
}

impl Membership {
    /// Take a registry read; what joined and what was lost since the last one. A node seen
    /// again with another boot restarted: it was lost, and joined again.
    pub fn update(&mut self, now: &BTreeMap<String, NodeInfo>) -> Changes {
        let mut changes = Changes::default();
        for (id, boot) in &self.seen {
            if now.get(id).is_none_or(|n| n.boot != *boot) {
                changes.lost.push(id.clone());
            }
        }
        for (id, n) in now {
            if self.seen.get(id) != Some(&n.boot) {
                changes.joined.push(id.clone());
            }
        }
        self.seen = now.iter().map(|(id, n)| (id.clone(), n.boot)).collect();
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_senders_sequence_is_remembered_past_a_gap_and_forgotten_when_nothing_could_be_fresh() {
        let mut heard = Heard::default();
        let a = |seq| Sender {
            node: "a".into(),
            boot: 1,
            seq,
        };
        let t = 1_800_000_000_000;
        assert!(heard.take(&a(1), t));
        assert!(heard.take(&a(5), t + 10));
        assert!(!heard.take(&a(5), t + 20), "the same number again");
        assert!(!heard.take(&a(3), t + 20), "an older one");
        // Another boot of the same node counts from its own start.
        assert!(heard.take(&Sender { boot: 2, ..a(1) }, t + 30));
        // A copy of 5 thirty seconds on is still refused (and would be stale too); a minute
        // after a's last message its entry goes.
        assert!(!heard.take(&a(5), t + seal::MAX_SKEW_MS));
        assert!(heard.take(&a(2), t + 2 * seal::MAX_SKEW_MS + 11));
        // Bounded, the stalest first.
        for i in 0..(MAX_NODES as u64 + 10) {
            let s = Sender {
                node: format!("n{i}"),
                boot: 1,
                seq: 1,
            };
            assert!(heard.take(&s, t + 2 * seal::MAX_SKEW_MS + 12 + i));
        }
        assert_eq!(heard.0.len(), MAX_NODES);
    }

    #[test]
    fn only_loopback_and_unix_sockets_are_local() {
        for local in [
            "redis://127.0.0.1:6379/",
            "redis://localhost/",
            "redis://user:pw@[::1]:6379/0",
            "rediss://127.0.0.2/",
            "redis+unix:///run/redis.sock",
        ] {
            assert!(redis_is_local(local).expect(local), "{local}");
        }
        for remote in [
            "redis://10.0.0.5:6379/",
            "rediss://redis.example/",
            "redis://127.0.0.1.example/",
        ] {
            assert!(!redis_is_local(remote).expect(remote), "{remote}");
        }
        assert!(redis_is_local("http://x").is_err());
    }

    #[test]
    fn node_ids_are_safe_in_keys() {
        for ok in ["a", "node-1", "B_2", &"x".repeat(64)] {
            assert!(valid_node_id(ok), "{ok}");
        }
        for bad in ["", "a:b", "a b", "ü", "a*", &"x".repeat(65)] {
            assert!(!valid_node_id(bad), "{bad}");
        }
    }

    #[test]
    fn membership_names_who_joined_and_who_was_lost_and_a_restart_is_both() {
        let mut m = Membership::default();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let read = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(id, boot)| {
                    let info = NodeInfo {
                        id: id.to_string(),
                        boot: *boot,
                        http: String::new(),
                        media: Vec::new(),
                        load: Load::default(),
                    };
                    (id.to_string(), info)
                })
                .collect::<BTreeMap<_, _>>()
        };
        let c = m.update(&read(&[("a", 1), ("b", 1)]));
        assert_eq!(c.joined, ids(&["a", "b"]));
        assert!(c.lost.is_empty());
        let c = m.update(&read(&[("b", 1), ("c", 1)]));
        assert_eq!(c.joined, ids(&["c"]));
        assert_eq!(c.lost, ids(&["a"]));
        assert_eq!(m.update(&read(&[("b", 1), ("c", 1)])), Changes::default());
        // b restarted with the same id before its entry expired.
        let c = m.update(&read(&[("b", 2), ("c", 1)]));
        assert_eq!(c.lost, ids(&["b"]));
        assert_eq!(c.joined, ids(&["b"]));
        assert_eq!(m.seen.len(), 2);
    }
}
