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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

pub mod testing;

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
}

/// How this node joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://host:port/db`.
    pub redis_url: String,
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

impl ClusterConfig {
    pub fn new(redis_url: &str, node_id: &str, http_url: &str) -> ClusterConfig {
        ClusterConfig {
            redis_url: redis_url.to_owned(),
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

/// Renew `KEYS[1]` for `ARGV[2]` ms if it still names `ARGV[1]`.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Delete `KEYS[1]` if it still names `ARGV[1]`.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// One node's handle on the cluster. Cheap to clone: clones share one connection, which
/// reconnects by itself when Redis comes back.
#[derive(Clone)]
pub struct Cluster {
    client: redis::Client,
    con: ConnectionManager,
    config: ClusterConfig,
    boot: u64,
}

impl Cluster {
    /// Connect to Redis (the node registers with its first [`Cluster::heartbeat`]).
    pub async fn connect(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        if !valid_node_id(&config.node_id) {
            return Err(ClusterError::BadNodeId(config.node_id));
        }
        let client = redis::Client::open(config.redis_url.as_str())?;
        let con = client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new()
                    .set_response_timeout(RESPONSE_TIMEOUT)
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_number_of_retries(2)
                    .set_max_delay(1_000),
            )
            .await?;
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            ^ u64::from(std::process::id()).rotate_left(32);
        Ok(Cluster {
            client,
            con,
            config,
            boot,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.config.prefix)
    }

    fn ttl_ms(&self) -> u64 {
        self.config.ttl.as_millis().max(1) as u64
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
        let mut con = self.con.clone();
        redis::pipe()
            .cmd("SET")
            .arg(self.key("node", &info.id))
            .arg(json)
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

    /// Every node alive now (this one included once it beat), by id. Ids whose entry expired
    /// are pruned from the set on the way.
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
        if ids.is_empty() {
            if !gone.is_empty() {
                let _: () = con.srem(&set, gone).await?;
            }
            return Ok(BTreeMap::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key("node", id)).collect();
        let entries: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut con).await?;
        let mut nodes = BTreeMap::new();
        for (id, entry) in ids.into_iter().zip(entries) {
            match entry.and_then(|e| serde_json::from_str::<NodeInfo>(&e).ok()) {
                Some(info) if info.id == id => {
                    nodes.insert(id, info);
                }
                _ => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let _: () = con.srem(&set, gone).await?;
        }
        Ok(nodes)
    }

    /// Claim `room` for this node, unless another node holds it.
    pub async fn claim_room(&self, room: &str) -> Result<Claim, ClusterError> {
        let mut con = self.con.clone();
        let key = self.key("room", room);
        // SET NX GET: the holder, if any, in the same step as the claim.
        let holder: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&self.config.node_id)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(self.ttl_ms())
            .query_async(&mut con)
            .await?;
        Ok(match holder {
            None => Claim::Origin,
            Some(node) if node == self.config.node_id => Claim::Origin,
            Some(node) => Claim::Elsewhere(node),
        })
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

    /// The node holding `room`, if any.
    pub async fn origin(&self, room: &str) -> Result<Option<String>, ClusterError> {
        let mut con = self.con.clone();
        Ok(con.get(self.key("room", room)).await?)
    }

    /// Put `message` in `node`'s inbox. Delivered at most once, and only if that node listens
    /// now (pub/sub keeps nothing for later): what needs an answer times out on its own.
    pub async fn send(&self, node: &str, message: &[u8]) -> Result<(), ClusterError> {
        if message.len() > MAX_MESSAGE {
            return Err(ClusterError::TooLarge(message.len()));
        }
        let mut con = self.con.clone();
        let _: i64 = con.publish(self.key("inbox", node), message).await?;
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
            dropped: 0,
        })
    }
}

/// The messages sent to one node ([`Cluster::inbox`]).
pub struct Inbox {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = redis::Msg> + Send>>,
    /// Messages dropped for their size.
    pub dropped: u64,
}

impl Inbox {
    /// The next message; `None` when the connection to Redis is gone.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            let msg = self.stream.next().await?;
            let payload = msg.get_payload_bytes();
            if payload.len() > MAX_MESSAGE {
                self.dropped += 1;
                tracing::warn!(
                    bytes = payload.len(),
                    "inbox message over the limit dropped"
                );
                continue;
            }
            return Some(payload.to_vec());
        }
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
